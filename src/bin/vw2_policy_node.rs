//! `vw2_policy_node`: the ROS 2 node (see `docs/ros.md`).
//!
//! Start it with `ros2 launch vw2_policy arm.launch.py policy:=… calibration:=…`,
//! or `ros2 run vw2_policy vw2_policy_node --ros-args --params-file <file>`.
//! Parameter errors exit with status 2, other start-up errors with 1.

#[cfg(not(feature = "ros2-check"))]
fn main() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = vw2_policy::ros::node::run_node(&args, None) {
        eprintln!("vw2_policy_node: {e:#}");
        let params = e.chain().any(|c| c.to_string().contains("parameter"));
        std::process::exit(if params { 2 } else { 1 });
    }
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
