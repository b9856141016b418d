//! Re-expressing relative action chunks in another frame.
//!
//! An action step is `[dx, dy, dz, droll, dpitch, dyaw, gripper]`: a
//! translation delta of the TCP (m), a rotation delta of the TCP as Euler
//! angles (rad) and a gripper command (passed through unchanged).
//!
//! Euler convention (the one of pybullet / CALVIN and of nalgebra's
//! `Rotation3::from_euler_angles`): extrinsic X-Y-Z, i.e.
//! `R(droll, dpitch, dyaw) = Rz(dyaw) · Ry(dpitch) · Rx(droll)`.
//!
//! Both deltas are free vectors / rotations about the TCP, so only the
//! *rotation* between frames matters: with `R_to_from` mapping `from`-frame
//! vectors to the `to` frame, a step becomes
//! `d_to = R_to_from · d_from` and `ΔR_to = R_to_from · ΔR_from · R_to_fromᵀ`
//! (exact rotation conjugation, not a small-angle approximation).

use nalgebra::{Rotation3, Vector3};

use super::error::CalibrationError;
use super::types::{Calibration, Transform};

/// Frames an action chunk can be expressed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The camera optical frame (OpenCV: x right, y down, z forward), placed
    /// by [`Calibration::camera_to_base`].
    Camera,
    /// The robot base frame.
    Base,
    /// The tool (TCP) frame at its current pose in base.
    Tool,
}

/// Number of values per action step: xyz delta (m), Euler delta (rad), gripper.
pub const ACTION_DIM: usize = 7;

/// Re-expresses a chunk of relative actions given in frame `from` in frame
/// `to`. `calib.camera_to_base` places [`Frame::Camera`];
/// `current_tool_pose_in_base` (`T_base_tool`, the current TCP pose; see
/// [`Calibration::tool_pose_from_flange`] if your controller reports the
/// flange) places [`Frame::Tool`]. The gripper value passes through.
pub fn convert_chunk(
    chunk: &[[f64; ACTION_DIM]],
    from: Frame,
    to: Frame,
    calib: &Calibration,
    current_tool_pose_in_base: &Transform,
) -> Result<Vec<[f64; ACTION_DIM]>, CalibrationError> {
    if from == to {
        return Ok(chunk.to_vec());
    }
    let base_from = rotation_in_base(from, calib, current_tool_pose_in_base)?;
    let base_to = rotation_in_base(to, calib, current_tool_pose_in_base)?;
    let r = base_to.inverse() * base_from;
    Ok(chunk.iter().map(|a| rotate_action(a, &r)).collect())
}

/// Applies the frame rotation `r` (maps `from` vectors to `to` vectors) to one
/// action step.
pub fn rotate_action(action: &[f64; ACTION_DIM], r: &Rotation3<f64>) -> [f64; ACTION_DIM] {
    let d = r * Vector3::new(action[0], action[1], action[2]);
    let delta = Rotation3::from_euler_angles(action[3], action[4], action[5]);
    let (roll, pitch, yaw) = (r * delta * r.inverse()).euler_angles();
    [d.x, d.y, d.z, roll, pitch, yaw, action[6]]
}

/// `R_base_frame` for `frame`.
fn rotation_in_base(
    frame: Frame,
    calib: &Calibration,
    tool_pose_in_base: &Transform,
) -> Result<Rotation3<f64>, CalibrationError> {
    match frame {
        Frame::Base => Ok(Rotation3::identity()),
        Frame::Camera => calib.camera_to_base.rotation(),
        Frame::Tool => tool_pose_in_base.rotation(),
    }
}
