//! Joint command modes: the IK hook, the joint commander (TCP target → joint
//! positions and velocities within the limits) and its ros2_control messages.
//! Pure values, tested without ROS (`--features ros2-check`).

use anyhow::{anyhow, bail, Result};
use r2r::builtin_interfaces::msg::Time;
use r2r::std_msgs::msg::{Float64MultiArray, MultiArrayDimension, MultiArrayLayout};
use r2r::trajectory_msgs::msg::{JointTrajectory, JointTrajectoryPoint};

use super::convert::{header, seconds_to_duration};
use crate::safety::{CommandKind, SafeCommand, TcpPose};

/// Inverse kinematics for the joint command modes: the joint positions (rad,
/// in the controller's joint order) that put the TCP at `target` (m, rad, base
/// frame), starting from `seed` (the last commanded or measured joints).
///
/// The policy and the safety layer work in TCP space, and this crate carries no
/// robot model: joint modes need an IK that matches the robot's URDF/kinematics
/// (an analytic solver, KDL/TRAC-IK behind FFI, …). The stock node has none and
/// refuses joint modes; link one in with `vw2_policy::ros::node::run_node`.
pub trait JointIk: Send {
    /// Joint positions for `target`, or an error when unreachable.
    fn solve(&mut self, target: &TcpPose, seed: &[f64]) -> Result<Vec<f64>>;
}

/// A joint-space command: positions (rad) and velocities (rad/s) in `names` order.
#[derive(Debug, Clone, PartialEq)]
pub struct JointTarget {
    /// Joint names (controller order).
    pub names: Vec<String>,
    /// Positions (rad).
    pub positions: Vec<f64>,
    /// Velocities (rad/s); zero for a hold.
    pub velocities: Vec<f64>,
}

/// Turns safe TCP commands into joint targets: `Hold` → the last commanded
/// joint positions (or, before any, the measured ones) with zero velocity;
/// `Move` → the IK solution, checked finite, of the right length, and within
/// `max_joint_speed · dt` per joint of the previous command (a jump in joint
/// space, e.g. an IK branch flip, is refused: the caller then holds).
pub struct JointCommander {
    names: Vec<String>,
    ik: Option<Box<dyn JointIk>>,
    max_step: f64,
    dt: f64,
    last: Option<Vec<f64>>,
}

impl JointCommander {
    /// A commander for `names`, at `dt` s per command, with joint speed limit
    /// `max_joint_speed` (rad/s).
    pub fn new(
        names: Vec<String>,
        ik: Option<Box<dyn JointIk>>,
        max_joint_speed: f64,
        dt: f64,
    ) -> Self {
        Self {
            names,
            ik,
            max_step: max_joint_speed * dt,
            dt,
            last: None,
        }
    }

    /// True when an IK is attached (moves possible).
    pub fn has_ik(&self) -> bool {
        self.ik.is_some()
    }

    /// Forgets the last command (a new run starts from the measured joints).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// The hold target: the last commanded positions, else `measured`.
    pub fn hold(&mut self, measured: Option<&[f64]>) -> Result<JointTarget> {
        let q = match (&self.last, measured) {
            (Some(q), _) => q.clone(),
            (None, Some(m)) => m.to_vec(),
            (None, None) => bail!("joint hold: no joint positions measured yet"),
        };
        self.check_len(&q, "hold")?;
        self.last = Some(q.clone());
        Ok(JointTarget {
            names: self.names.clone(),
            velocities: vec![0.0; q.len()],
            positions: q,
        })
    }

    fn check_len(&self, q: &[f64], what: &str) -> Result<()> {
        if q.len() != self.names.len() {
            bail!(
                "joint {what}: expected {} positions ({}), found {}",
                self.names.len(),
                self.names.join(", "),
                q.len()
            );
        }
        Ok(())
    }

    /// The joint target for one safe command; see the type's docs.
    pub fn command(&mut self, cmd: &SafeCommand, measured: Option<&[f64]>) -> Result<JointTarget> {
        if cmd.kind == CommandKind::Hold {
            return self.hold(measured);
        }
        let seed = match (&self.last, measured) {
            (Some(q), _) => q.clone(),
            (None, Some(m)) => m.to_vec(),
            (None, None) => bail!("joint move: no joint positions measured yet"),
        };
        let ik = self
            .ik
            .as_mut()
            .ok_or_else(|| anyhow!("joint move: no IK solver (the policy commands TCP poses)"))?;
        let q = ik.solve(&cmd.target, &seed)?;
        self.check_len(&q, "IK solution")?;
        for (i, (a, b)) in q.iter().zip(&seed).enumerate() {
            if !a.is_finite() {
                bail!("IK solution: joint `{}` is {a}", self.names[i]);
            }
            if (a - b).abs() > self.max_step + 1e-12 {
                bail!(
                    "IK solution: joint `{}` jumps {:.4} rad in one step, limit {:.4} rad (max_joint_speed · dt)",
                    self.names[i],
                    (a - b).abs(),
                    self.max_step
                );
            }
        }
        let velocities = q
            .iter()
            .zip(&seed)
            .map(|(a, b)| (a - b) / self.dt)
            .collect();
        self.last = Some(q.clone());
        Ok(JointTarget {
            names: self.names.clone(),
            positions: q,
            velocities,
        })
    }
}

/// Joint positions as `std_msgs/Float64MultiArray` for a ros2_control
/// `forward_command_controller` (one dimension labelled `joints`; the order is
/// the controller's `joints` parameter, which `joint_names` must match).
pub fn joint_target_to_float64_array(target: &JointTarget) -> Float64MultiArray {
    float64_array(&target.positions, "joints")
}

/// One safe command as a forward-controller message (through `commander`).
pub fn safe_command_to_float64_array(
    cmd: &SafeCommand,
    commander: &mut JointCommander,
    measured: Option<&[f64]>,
) -> Result<Float64MultiArray> {
    Ok(joint_target_to_float64_array(
        &commander.command(cmd, measured)?,
    ))
}

/// Joint target as a one-point `trajectory_msgs/JointTrajectory`: reach
/// `positions` with `velocities` at `time_from_start` (s) after the header
/// stamp (zero stamp = "start now" for the joint_trajectory_controller).
pub fn joint_target_to_joint_trajectory(
    target: &JointTarget,
    time_from_start_s: f64,
    stamp: Time,
) -> JointTrajectory {
    JointTrajectory {
        header: header(stamp, ""),
        joint_names: target.names.clone(),
        points: vec![JointTrajectoryPoint {
            positions: target.positions.clone(),
            velocities: target.velocities.clone(),
            accelerations: vec![],
            effort: vec![],
            time_from_start: seconds_to_duration(time_from_start_s),
        }],
    }
}

/// One safe command as a trajectory message (through `commander`).
pub fn safe_command_to_joint_trajectory(
    cmd: &SafeCommand,
    commander: &mut JointCommander,
    measured: Option<&[f64]>,
    time_from_start_s: f64,
    stamp: Time,
) -> Result<JointTrajectory> {
    Ok(joint_target_to_joint_trajectory(
        &commander.command(cmd, measured)?,
        time_from_start_s,
        stamp,
    ))
}

pub(crate) fn float64_array(data: &[f64], label: &str) -> Float64MultiArray {
    let n = data.len() as u32;
    Float64MultiArray {
        layout: MultiArrayLayout {
            dim: vec![MultiArrayDimension {
                label: label.to_string(),
                size: n,
                stride: n,
            }],
            data_offset: 0,
        },
        data: data.to_vec(),
    }
}
