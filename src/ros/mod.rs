//! ROS 2 adapter (feature `ros2`, r2r 0.9): the `vw2_policy_node` node.
//!
//! The node subscribes to a camera, joint states, the measured TCP pose, an
//! instruction, enable and e-stop; it runs the runtime's pipeline
//! ([`crate::runtime::run`]) with a [`RobotIo`](crate::io::robot::RobotIo)
//! fed by those subscriptions, and publishes the safe commands to MoveIt Servo
//! (`TwistStamped`) or a ros2_control controller (`Float64MultiArray` /
//! `JointTrajectory`), a gripper command, imagined futures and diagnostics.
//! See `docs/ros.md`.
//!
//! Layout: [`params`] (the parameter file, plain Rust), [`convert`] (message ↔
//! runtime conversions, pure), [`joints`] (joint modes) and [`diagnostics`] (pure too), [`io`] (the ROS-free `RosIo`, the enable/e-stop
//! supervisor), [`node`] (the thin r2r layer). Everything but `node` is tested
//! without ROS with `--features ros2-check` (r2r's pre-generated bindings).

pub mod convert;
pub mod diagnostics;
pub mod io;
pub mod joints;
pub mod node;
pub mod params;
