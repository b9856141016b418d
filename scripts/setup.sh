#!/usr/bin/env bash
# Installs everything a fresh Debian machine needs to build, test and run vw2_policy.
# Idempotent: when everything is already there it only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the teleop report is checked in a real headless browser (tests/teleop_report.rs).
# libudev-dev, pkg-config: gilrs (gamepad teleop) links libudev.
# iproute2: the ROS 2 integration test brings up `lo` in its own network namespace.
APT_PACKAGES=(protobuf-compiler libopencv-dev clang libclang-dev python3 python3-venv cmake ament-cmake python3-ament-index python3-catkin-pkg chromium libudev-dev pkg-config iproute2)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Python side (simulators, tools) lives in a virtualenv the project owns.
VENV=.venv
PY_REQ=python/requirements.txt
stamp="$VENV/.requirements.sha256"
want=$(sha256sum "$PY_REQ" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python requirements"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$PY_REQ"
  echo "$want" > "$stamp"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
echo "setup: ok"
