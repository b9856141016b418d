# shellcheck shell=bash
# Source this (`. scripts/ros-env.sh`) to use .venv-ros (scripts/setup-ros.sh) as a
# ROS 2 Jazzy installation, the way `source /opt/ros/jazzy/setup.bash` does for a
# system install: cargo builds the real node (--features ros2), rclpy imports, and the
# node runs. Set VW2_ROS_VENV to use another venv.
_vw2_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_vw2_venv=$(cd "${VW2_ROS_VENV:-$_vw2_root/.venv-ros}" && pwd)
export VW2_ROS_VENV=$_vw2_venv
export ROS_DISTRO=jazzy
export ROS_VERSION=2
export ROS_PYTHON_VERSION=3
export AMENT_PREFIX_PATH=$_vw2_venv
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
# Bindings only for the packages the node uses (r2r generates code for each).
export IDL_PACKAGE_FILTER="builtin_interfaces;std_msgs;sensor_msgs;geometry_msgs;trajectory_msgs;diagnostic_msgs;rcl_interfaces;action_msgs;unique_identifier_msgs;rosgraph_msgs"
# The wheels' own run paths are wrong once installed: the venv's lib and every
# site-packages/ros_*.libs (their vendored libraries) go on the loader path.
_vw2_ld=$_vw2_venv/lib
for _d in "$_vw2_venv"/lib/python3.*/site-packages/ros_*.libs; do
  [ -d "$_d" ] && _vw2_ld=$_vw2_ld:$_d
done
export LD_LIBRARY_PATH=$_vw2_ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# librcl from the wheels pulls in libraries that need libpython: build.rs adds it to the
# node's NEEDED entries (and run path) when this is set.
VW2_LINK_LIBPYTHON=$("$_vw2_venv/bin/python" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))')
export VW2_LINK_LIBPYTHON
export PATH=$_vw2_venv/bin:$PATH
# CMAKE_PREFIX_PATH (colcon/CMake) is set by scripts/colcon-build.sh only: cargo must not
# see it, or the opencv crate's build script re-runs and rebuilds everything above it.
unset _vw2_root _vw2_venv _vw2_ld _d
