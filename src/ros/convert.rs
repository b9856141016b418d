//! Pure conversions between r2r message structs and the runtime's types.
//!
//! Nothing here talks to ROS: every function takes and returns plain values, so
//! all of it is tested without a ROS installation (`--features ros2-check`).
//! Messages are always built field by field: r2r's `Default` impls call into
//! the ROS C libraries.
//!
//! Units: m, rad, s, m/s, rad/s; poses in the robot base frame; Euler angles
//! are extrinsic x-y-z (roll, pitch, yaw), `R = Rz(yaw)·Ry(pitch)·Rx(roll)`, as
//! everywhere in the crate.

use anyhow::{anyhow, bail, Result};
use nalgebra::{Isometry3, Quaternion, Translation3, UnitQuaternion, Vector3};
use r2r::builtin_interfaces::msg::{Duration as RosDuration, Time};
use r2r::geometry_msgs::msg::{PoseStamped, Twist, TwistStamped, Vector3 as RosVector3};
use r2r::sensor_msgs::msg::{CameraInfo, Image, JointState};
use r2r::std_msgs::msg::{Float64, Float64MultiArray, Header};

use super::params::TwistUnits;
use crate::calibration::{Calibration, CameraIntrinsics, DistortionModel, Transform};
use crate::io::robot::{Encoding, RawFrame};
use crate::io::{RgbImage, ROBOT_OBS_DIM};
use crate::safety::{CommandKind, GripperState, SafeCommand, SafetyConfig, TcpPose};

// ---------------------------------------------------------------- time

/// A `builtin_interfaces/Time` in seconds (s).
pub fn stamp_to_seconds(t: &Time) -> f64 {
    f64::from(t.sec) + f64::from(t.nanosec) * 1e-9
}

/// Seconds (s, ≥ 0) as a `builtin_interfaces/Time`; negative or non-finite → zero.
pub fn seconds_to_stamp(s: f64) -> Time {
    if !(s.is_finite() && s > 0.0) {
        return Time { sec: 0, nanosec: 0 };
    }
    let sec = s.floor();
    let mut nanosec = ((s - sec) * 1e9).round() as u32;
    let mut sec = sec.min(f64::from(i32::MAX)) as i32;
    if nanosec >= 1_000_000_000 {
        sec = sec.saturating_add(1);
        nanosec -= 1_000_000_000;
    }
    Time { sec, nanosec }
}

/// True for an unset stamp (0 s): the time of receipt is used instead.
pub fn stamp_is_zero(t: &Time) -> bool {
    t.sec == 0 && t.nanosec == 0
}

/// Seconds (s) as a `builtin_interfaces/Duration`.
pub fn seconds_to_duration(s: f64) -> RosDuration {
    let t = seconds_to_stamp(s);
    RosDuration {
        sec: t.sec,
        nanosec: t.nanosec,
    }
}

/// The capture time of a frame on the runtime's monotonic clock
/// ([`crate::base::clock::now_s`]): its age measured on the ROS clock
/// (`ros_now_s − stamp_s`, s) is subtracted from the monotonic time of receipt
/// `mono_now_s`. A frame stamped in the future (clocks disagree) stays in the
/// future, and the safety layer holds on it. Without a stamp (`None`) the time
/// of receipt is used.
pub fn frame_time_on_runtime_clock(stamp_s: Option<f64>, ros_now_s: f64, mono_now_s: f64) -> f64 {
    match stamp_s {
        Some(s) => mono_now_s - (ros_now_s - s),
        None => mono_now_s,
    }
}

/// An operator's `TwistStamped` (m/s, rad/s; the convention of
/// `teleop_twist_joy`, `spacenav` and MoveIt Servo) as an operator command for
/// a `rate_hz` control loop, stamped on the runtime clock (a zero stamp: now).
pub fn twist_to_operator_command(
    m: &TwistStamped,
    ros_now_s: f64,
    mono_now_s: f64,
    rate_hz: f64,
) -> crate::runtime::operator::OperatorCommand {
    let stamp = (!stamp_is_zero(&m.header.stamp)).then(|| stamp_to_seconds(&m.header.stamp));
    let l = &m.twist.linear;
    let a = &m.twist.angular;
    crate::runtime::operator::OperatorCommand::from_twist(
        frame_time_on_runtime_clock(stamp, ros_now_s, mono_now_s),
        [l.x, l.y, l.z],
        [a.x, a.y, a.z],
        None,
        rate_hz,
    )
}

pub(crate) fn header(stamp: Time, frame_id: &str) -> Header {
    Header {
        stamp,
        frame_id: frame_id.to_string(),
    }
}

// ---------------------------------------------------------------- images

/// A `sensor_msgs/Image` as a raw frame. Accepted encodings: rgb8, bgr8, mono8
/// (`is_bigendian` does not matter for 8-bit data). Refused, with the field
/// named: other encodings, an empty image, `step < width·channels`,
/// `data.len() ≠ height·step`.
pub fn image_to_raw_frame(msg: &Image) -> Result<RawFrame> {
    let encoding =
        Encoding::parse(&msg.encoding).map_err(|e| anyhow!("sensor_msgs/Image.encoding: {e}"))?;
    let frame = RawFrame {
        encoding,
        height: msg.height as usize,
        width: msg.width as usize,
        step: msg.step as usize,
        data: msg.data.clone(),
    };
    frame.validate().map_err(|e| {
        anyhow!(
            "sensor_msgs/Image ({}×{} {}): {e}",
            msg.width,
            msg.height,
            msg.encoding
        )
    })?;
    Ok(frame)
}

/// An RGB image (e.g. the imagined-future strip) as an rgb8 `sensor_msgs/Image`.
pub fn strip_to_image(img: &RgbImage, stamp: Time, frame_id: &str) -> Result<Image> {
    if img.data.len() != img.height * img.width * 3 {
        bail!(
            "imagined strip: expected height·width·3 = {} bytes, found {}",
            img.height * img.width * 3,
            img.data.len()
        );
    }
    let dim = |v: usize, name: &str| {
        u32::try_from(v).map_err(|_| anyhow!("imagined strip: {name} {v} does not fit a u32"))
    };
    Ok(Image {
        header: header(stamp, frame_id),
        height: dim(img.height, "height")?,
        width: dim(img.width, "width")?,
        encoding: "rgb8".to_string(),
        is_bigendian: 0,
        step: dim(img.width * 3, "step")?,
        data: img.data.clone(),
    })
}

/// A `sensor_msgs/CameraInfo` as intrinsics (plumb_bob / rational_polynomial).
pub fn camera_info_to_intrinsics(msg: &CameraInfo) -> Result<CameraIntrinsics> {
    if msg.k.len() != 9 {
        bail!(
            "sensor_msgs/CameraInfo.k: expected 9 values, found {}",
            msg.k.len()
        );
    }
    match msg.distortion_model.as_str() {
        "plumb_bob" | "rational_polynomial" | "" => {}
        other => bail!("sensor_msgs/CameraInfo.distortion_model: expected plumb_bob or rational_polynomial, found {other:?}"),
    }
    let mut distortion = msg.d.clone();
    if distortion.is_empty() {
        distortion = vec![0.0; 5];
    }
    let intr = CameraIntrinsics {
        width: msg.width,
        height: msg.height,
        fx: msg.k[0],
        fy: msg.k[4],
        cx: msg.k[2],
        cy: msg.k[5],
        distortion,
        model: DistortionModel::PlumbBob,
    };
    intr.validate_named("sensor_msgs/CameraInfo")
        .map_err(|e| anyhow!("{e}"))?;
    Ok(intr)
}

/// Compares the camera's intrinsics with the calibration's (scaled to the
/// stream's size first). `None` when they agree within `rel_tol` (relative, on
/// fx, fy, cx, cy) and distortion within 1e-3; otherwise what differs.
pub fn intrinsics_mismatch(
    calib: &CameraIntrinsics,
    camera: &CameraIntrinsics,
    rel_tol: f64,
) -> Option<String> {
    let c = calib.scaled_to(camera.width, camera.height);
    let mut diffs = Vec::new();
    for (name, a, b, scale) in [
        ("fx", c.fx, camera.fx, c.fx),
        ("fy", c.fy, camera.fy, c.fy),
        ("cx", c.cx, camera.cx, f64::from(camera.width)),
        ("cy", c.cy, camera.cy, f64::from(camera.height)),
    ] {
        if (a - b).abs() > rel_tol * scale.abs() {
            diffs.push(format!(
                "{name}: calibration {a:.2} px, camera_info {b:.2} px"
            ));
        }
    }
    let n = c.distortion.len().max(camera.distortion.len());
    let get = |v: &Vec<f64>, i: usize| v.get(i).copied().unwrap_or(0.0);
    if (0..n).any(|i| (get(&c.distortion, i) - get(&camera.distortion, i)).abs() > 1e-3) {
        diffs.push(format!(
            "distortion: calibration {:?}, camera_info {:?}",
            c.distortion, camera.distortion
        ));
    }
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

// ---------------------------------------------------------------- proprioception

/// What one `sensor_msgs/JointState` says about the arm and the gripper.
#[derive(Debug, Clone, PartialEq)]
pub struct JointSample {
    /// Arm joint positions (rad) in `joint_names` order, when the message has all of them.
    pub arm: Option<Vec<f64>>,
    /// Gripper opening (m): sum of the finger joints, when the message has all of them.
    pub gripper_width: Option<f64>,
}

/// Reads the arm joints (`arm_names`, in that order) and the finger joints
/// (`gripper_names`, summed to the opening width) out of a `JointState`.
/// A message may carry all arm joints, all finger joints, or both (arm and
/// gripper often publish separately); one that carries only some of a group,
/// none of either group, a `position` array of the wrong length, or a NaN/Inf
/// position of a needed joint is refused, naming the joint.
pub fn joint_state_to_proprio(
    msg: &JointState,
    arm_names: &[String],
    gripper_names: &[String],
) -> Result<JointSample> {
    if msg.position.len() != msg.name.len() {
        bail!(
            "sensor_msgs/JointState: expected one position per name ({} names), found {} positions",
            msg.name.len(),
            msg.position.len()
        );
    }
    let lookup = |want: &str| -> Result<Option<f64>> {
        match msg.name.iter().position(|n| n == want) {
            None => Ok(None),
            Some(i) => {
                let v = msg.position[i];
                if !v.is_finite() {
                    bail!("sensor_msgs/JointState: joint `{want}`: expected a finite position, found {v}");
                }
                Ok(Some(v))
            }
        }
    };
    let group = |names: &[String], what: &str| -> Result<Option<Vec<f64>>> {
        let found: Vec<Option<f64>> = names.iter().map(|n| lookup(n)).collect::<Result<_>>()?;
        let present = found.iter().filter(|v| v.is_some()).count();
        if present == 0 || names.is_empty() {
            return Ok(None);
        }
        if present < names.len() {
            let missing: Vec<&str> = names
                .iter()
                .zip(&found)
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| n.as_str())
                .collect();
            bail!(
                "sensor_msgs/JointState: {what} joints missing: {} (it has {:?})",
                missing.join(", "),
                msg.name
            );
        }
        Ok(Some(found.into_iter().map(|v| v.unwrap_or(0.0)).collect()))
    };
    let arm = group(arm_names, "arm")?;
    let gripper_width = group(gripper_names, "gripper")?.map(|v| v.iter().sum());
    if arm.is_none() && gripper_width.is_none() {
        bail!(
            "sensor_msgs/JointState: none of the configured joints ({}) in {:?}",
            arm_names
                .iter()
                .chain(gripper_names)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            msg.name
        );
    }
    Ok(JointSample { arm, gripper_width })
}

/// A `geometry_msgs/PoseStamped` as a TCP pose (m, extrinsic xyz Euler rad).
/// Refused: non-finite values, or a quaternion whose norm is not 1 ± 1e-3.
pub fn pose_to_tcp(msg: &PoseStamped) -> Result<TcpPose> {
    let p = &msg.pose.position;
    let q = &msg.pose.orientation;
    let vals = [
        ("position.x", p.x),
        ("position.y", p.y),
        ("position.z", p.z),
        ("orientation.x", q.x),
        ("orientation.y", q.y),
        ("orientation.z", q.z),
        ("orientation.w", q.w),
    ];
    if let Some((name, v)) = vals.iter().find(|(_, v)| !v.is_finite()) {
        bail!("geometry_msgs/PoseStamped.pose.{name}: expected a finite value, found {v}");
    }
    let quat = Quaternion::new(q.w, q.x, q.y, q.z);
    let norm = quat.norm();
    if (norm - 1.0).abs() > 1e-3 {
        bail!("geometry_msgs/PoseStamped.pose.orientation: expected a unit quaternion, found norm {norm}");
    }
    let (roll, pitch, yaw) = UnitQuaternion::from_quaternion(quat).euler_angles();
    Ok(TcpPose::new([p.x, p.y, p.z], [roll, pitch, yaw]))
}

/// The TCP pose from a measured flange pose (both in the base frame) with the
/// calibration's `tool_to_flange`: `T_base_tool = T_base_flange · T_flange_tool`.
pub fn flange_pose_to_tool(calib: &Calibration, flange: &TcpPose) -> Result<TcpPose> {
    let iso = Isometry3::from_parts(
        Translation3::new(flange.position[0], flange.position[1], flange.position[2]),
        UnitQuaternion::from_euler_angles(flange.euler[0], flange.euler[1], flange.euler[2]),
    );
    let tool = calib
        .tool_pose_from_flange(&Transform::from_isometry(&iso, "base", "flange"))
        .and_then(|t| t.isometry())
        .map_err(|e| anyhow!("tool_to_flange: {e}"))?;
    let (r, p, y) = tool.rotation.euler_angles();
    Ok(TcpPose::new(
        [tool.translation.x, tool.translation.y, tool.translation.z],
        [r, p, y],
    ))
}

/// CALVIN's 15-value `robot_obs` from the measured state: TCP xyz (m), TCP
/// Euler (rad), gripper width (m), 7 arm joints (rad; fewer joints are
/// zero-padded), last gripper action (±1).
pub fn robot_obs_from(
    tcp: &TcpPose,
    arm: &[f64],
    gripper_width: f64,
    last_gripper_action: f64,
) -> Vec<f64> {
    let mut v = Vec::with_capacity(ROBOT_OBS_DIM);
    v.extend(tcp.position.iter());
    v.extend(tcp.euler.iter());
    v.push(gripper_width);
    v.extend((0..7).map(|i| arm.get(i).copied().unwrap_or(0.0)));
    v.push(last_gripper_action);
    v
}

// ---------------------------------------------------------------- twist (MoveIt Servo)

/// The body-independent angular velocity ω (rad/s, base frame) of Euler-angle
/// rates `rates` (roll, pitch, yaw rates, rad/s) at Euler angles `euler` (rad),
/// for `R = Rz(ψ)·Ry(θ)·Rx(φ)`:
/// `ω = ψ̇·ẑ + θ̇·Rz(ψ)ŷ + φ̇·Rz(ψ)Ry(θ)x̂`.
pub fn euler_rates_to_angular_velocity(euler: &Vector3<f64>, rates: &Vector3<f64>) -> Vector3<f64> {
    let (theta, psi) = (euler[1], euler[2]);
    let (sp, cp) = psi.sin_cos();
    let (st, ct) = theta.sin_cos();
    Vector3::new(
        cp * ct * rates[0] - sp * rates[1],
        sp * ct * rates[0] + cp * rates[1],
        -st * rates[0] + rates[2],
    )
}

/// Units and limits for [`safe_command_to_twist`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwistSettings {
    /// Speed units or unitless.
    pub units: TwistUnits,
    /// Servo `scale.linear` (m/s at 1.0), unitless only.
    pub scale_linear: f64,
    /// Servo `scale.rotational` (rad/s at 1.0), unitless only.
    pub scale_rotational: f64,
    /// Proportional gain (1/s) toward the target from the measured pose; 0 = off.
    pub position_gain: f64,
    /// Per-axis linear speed limit (m/s) after the correction (the safety config's).
    pub max_linear_speed: f64,
    /// Per-axis angular speed limit (rad/s) after the correction.
    pub max_angular_speed: f64,
}

impl TwistSettings {
    /// Settings from the node parameters and the safety envelope.
    pub fn new(
        units: TwistUnits,
        scale_linear: f64,
        scale_rotational: f64,
        position_gain: f64,
        safety: &SafetyConfig,
    ) -> Self {
        Self {
            units,
            scale_linear,
            scale_rotational,
            position_gain,
            max_linear_speed: safety.max_linear_speed,
            max_angular_speed: safety.max_angular_speed,
        }
    }
}

/// A safe command as a `TwistStamped` for MoveIt Servo, in `frame_id` (the
/// base frame of the safety workspace).
///
/// - `Move`: linear = the commanded TCP velocity (m/s); angular = the
///   commanded Euler-angle rates turned into an angular velocity (rad/s) at the
///   target orientation. With `position_gain > 0` and a measured pose, `gain ·
///   (target − measured)` (Euler differences wrapped) is added, then each axis is
///   clipped to the safety speed limits, so the correction never exceeds the
///   envelope's speeds.
/// - `Hold`: all zero (Servo halts).
///
/// Unitless twists are divided by Servo's scales and clipped to [−1, 1].
/// A non-finite result is an error (never published).
pub fn safe_command_to_twist(
    cmd: &SafeCommand,
    frame_id: &str,
    settings: &TwistSettings,
    measured: Option<&TcpPose>,
    stamp: Time,
) -> Result<TwistStamped> {
    let (mut lin, mut euler_rates) = match cmd.kind {
        CommandKind::Hold => (Vector3::zeros(), Vector3::zeros()),
        CommandKind::Move => (cmd.linear_velocity, cmd.angular_velocity),
    };
    if cmd.kind == CommandKind::Move && settings.position_gain > 0.0 {
        if let Some(m) = measured.filter(|m| m.is_finite()) {
            for i in 0..3 {
                lin[i] = (lin[i]
                    + settings.position_gain * (cmd.target.position[i] - m.position[i]))
                    .clamp(-settings.max_linear_speed, settings.max_linear_speed);
                let d = wrap_pi(cmd.target.euler[i] - m.euler[i]);
                euler_rates[i] = (euler_rates[i] + settings.position_gain * d)
                    .clamp(-settings.max_angular_speed, settings.max_angular_speed);
            }
        }
    }
    let mut ang = euler_rates_to_angular_velocity(&cmd.target.euler, &euler_rates);
    if settings.units == TwistUnits::Unitless {
        lin = (lin / settings.scale_linear).map(|x| x.clamp(-1.0, 1.0));
        ang = (ang / settings.scale_rotational).map(|x| x.clamp(-1.0, 1.0));
    }
    if lin.iter().chain(ang.iter()).any(|x| !x.is_finite()) {
        bail!(
            "twist for the command at t = {} s is not finite: linear {lin:?}, angular {ang:?}",
            cmd.t
        );
    }
    let v = |v: Vector3<f64>| RosVector3 {
        x: v[0],
        y: v[1],
        z: v[2],
    };
    Ok(TwistStamped {
        header: header(stamp, frame_id),
        twist: Twist {
            linear: v(lin),
            angular: v(ang),
        },
    })
}

use crate::base::angle::wrap_pi;

// ---------------------------------------------------------------- gripper

/// The gripper command position for a state (`open` / `closed` in the
/// gripper controller's unit, e.g. m of finger travel).
pub fn gripper_position(state: GripperState, open: f64, closed: f64) -> f64 {
    match state {
        GripperState::Open => open,
        GripperState::Close => closed,
    }
}

/// The gripper state as a `std_msgs/Float64` position.
pub fn gripper_to_float64(state: GripperState, open: f64, closed: f64) -> Float64 {
    Float64 {
        data: gripper_position(state, open, closed),
    }
}

/// The gripper state as a one-value `std_msgs/Float64MultiArray` (forward controller).
pub fn gripper_to_float64_array(state: GripperState, open: f64, closed: f64) -> Float64MultiArray {
    float64_array(&[gripper_position(state, open, closed)], "gripper")
}

pub use super::diagnostics::*;
pub use super::joints::*;
