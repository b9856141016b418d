#!/usr/bin/env bash
# Builds and installs the vw2_policy ROS 2 package with colcon, the way a ROS user does,
# against the ROS 2 Jazzy of .venv-ros (scripts/setup-ros.sh), in the workspace
# target/ros-ws (build/, install/, log/).
#
# By default cargo reuses this checkout's dev build (profile dev, target dir ./target)
# and also builds the node with the Cartesian test IK (the integration test's joint
# modes). Extra arguments go to colcon's --cmake-args, e.g. -DVW2_CARGO_PROFILE=colcon
# for a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ -n "${VW2_ROS_VENV:-}" ] && [ "${ROS_DISTRO:-}" = jazzy ] || . scripts/ros-env.sh
ws=${VW2_ROS_WS:-$root/target/ros-ws}
mkdir -p "$ws"
touch "$ws/COLCON_IGNORE"
# CMake finds ament_cmake and the ROS packages in the venv; the cargo step unsets it.
export CMAKE_PREFIX_PATH=$VW2_ROS_VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
colcon --log-base "$ws/log" build \
  --paths "$root" \
  --build-base "$ws/build" --install-base "$ws/install" \
  --event-handlers console_direct+ \
  --cmake-args -DPython3_EXECUTABLE="$VW2_ROS_VENV/bin/python" \
    -DVW2_CARGO_PROFILE=dev -DVW2_CARGO_TARGET_DIR="$root/target" -DVW2_CARGO_EXAMPLES=ON "$@"
echo "colcon-build: installed $ws/install/vw2_policy (source $ws/install/setup.bash)"
