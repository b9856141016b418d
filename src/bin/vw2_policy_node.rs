//! `vw2_policy_node`: the ROS 2 node (see `docs/ros.md`).
//!
//! Start it with `ros2 launch vw2_policy arm.launch.py policy:=… calibration:=…`,
//! or `ros2 run vw2_policy vw2_policy_node --ros-args --params-file <file>`.
//! Parameter errors exit with status 2, other start-up errors with 1.

#[cfg(not(feature = "ros2-check"))]
fn main() {
    vw2_policy::ros::node::node_main(None)
}

/// Built against r2r's pre-generated bindings (`--features ros2-check`, no ROS
/// installed): the library type-checks and its tests run, but this binary
/// cannot talk to ROS, so it only explains itself.
#[cfg(feature = "ros2-check")]
fn main() {
    eprintln!(
        "vw2_policy_node was built with --features ros2-check (r2r doc-only bindings): it cannot run. \
         Build it with --features ros2 in a sourced ROS 2 environment (colcon build), see docs/ros.md."
    );
    std::process::exit(2);
}
