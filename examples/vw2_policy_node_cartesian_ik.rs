//! `vw2_policy_node` for a Cartesian (gantry) arm with a roll-pitch-yaw wrist, the
//! template for linking your robot's IK into the node so that the joint command
//! modes (`joint_forward`, `joint_trajectory`) work.
//!
//! The robot: three prismatic joints that move the TCP along the base frame's x, y,
//! z (m), then three revolute joints roll, pitch, yaw (rad, extrinsic xyz, as the
//! safety layer's Euler angles). Its IK is exact and unique up to 2π per wrist
//! joint; each wrist angle is taken nearest to the seed so that the arm never
//! spins a full turn. The ROS integration test (`tests/ros_live`) drives it.
//!
//! Run: `cargo run --features ros2 --example vw2_policy_node_cartesian_ik -- --ros-args --params-file my.yaml`
//! with `command_mode: joint_forward` and six `joint_names`.

// The IK is compiled (and its test runs) in the doc-only build too; only `main` differs.
#[cfg_attr(feature = "ros2-check", allow(dead_code))]
mod node {
    use std::f64::consts::{PI, TAU};
    use vw2_policy::ros::convert::JointIk;
    use vw2_policy::safety::TcpPose;

    /// IK of a Cartesian arm: joints = [x, y, z (m), roll, pitch, yaw (rad)].
    pub struct CartesianIk;

    /// `angle` shifted by whole turns to lie within π of `near`.
    fn nearest_turn(angle: f64, near: f64) -> f64 {
        angle + TAU * ((near - angle + PI) / TAU).floor()
    }

    impl JointIk for CartesianIk {
        fn solve(&mut self, target: &TcpPose, seed: &[f64]) -> anyhow::Result<Vec<f64>> {
            if seed.len() != 6 {
                anyhow::bail!(
                    "the Cartesian arm has 6 joints (x, y, z, roll, pitch, yaw); got a seed of {} (check joint_names)",
                    seed.len()
                );
            }
            let p = target.position;
            let e = target.euler;
            Ok(vec![
                p.x,
                p.y,
                p.z,
                nearest_turn(e.x, seed[3]),
                nearest_turn(e.y, seed[4]),
                nearest_turn(e.z, seed[5]),
            ])
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn wrist_angles_stay_near_the_seed() {
            let t = TcpPose::new([0.4, -0.1, 0.3], [PI - 0.01, 0.2, -3.1]);
            let q = CartesianIk
                .solve(&t, &[0.0, 0.0, 0.0, -PI + 0.01, 0.0, 3.1])
                .unwrap();
            assert_eq!(&q[..3], &[0.4, -0.1, 0.3]);
            assert!((q[3] - (-PI - 0.01)).abs() < 1e-12, "{q:?}");
            assert!((q[4] - 0.2).abs() < 1e-12);
            assert!((q[5] - (TAU - 3.1)).abs() < 1e-12, "{q:?}");
            assert!(CartesianIk.solve(&t, &[0.0; 7]).is_err());
        }
    }
}

#[cfg(not(feature = "ros2-check"))]
fn main() {
    vw2_policy::ros::node::node_main(Some(Box::new(node::CartesianIk)))
}

/// Built with r2r's doc-only bindings (`--features ros2-check`): cannot run.
#[cfg(feature = "ros2-check")]
fn main() {
    eprintln!("vw2_policy_node_cartesian_ik was built with --features ros2-check: it cannot run (see docs/ros.md)");
    std::process::exit(2);
}
