//! Safety layer between a learned policy and a robot arm.
//!
//! Rule of the product: **a robot command never leaves this layer unclamped.
//! A stale camera frame, a NaN, or an e-stop means hold, never guess.**
//!
//! The layer is a small state machine in the style of copper-rs tasks: inputs
//! arrive as timestamped messages ([`SafetyLayer::on_frame`],
//! [`SafetyLayer::on_proprio`]), and [`SafetyLayer::process`] is called once
//! per control tick (at [`SafetyConfig::control_rate_hz`], the policy bundle's rate) with the policy's
//! latest [`ActionRequest`], returning at most one [`SafeCommand`]. Every
//! message carries its time of validity in [`Seconds`] on one monotonic clock.
//!
//! Units: positions in m, angles in rad (extrinsic xyz Euler angles roll,
//! pitch, yaw of the TCP in the robot base frame), speeds in m/s and rad/s,
//! accelerations in m/s² and rad/s², times in s, rates in Hz. Actions follow
//! CALVIN's 7-D layout: x, y, z, roll, pitch, yaw, gripper.
//!
//! Rules of [`SafetyLayer::process`], in order (the first that applies wins):
//!
//! 1. not initialized by [`SafetyLayer::reset`] → `None` (no pose to hold);
//! 2. e-stop latched → hold;
//! 3. `now` non-finite or earlier than the previous tick → hold;
//! 4. no camera frame, or the last one older than `stale_timeout_s` (or
//!    stamped after `now`) → hold;
//! 5. last measured pose non-finite → hold;
//! 6. request non-finite anywhere → hold; request older than
//!    `stale_timeout_s` (or stamped after `now`) → hold; no request and no
//!    fresh earlier goal → hold; relative request on a measured base that is
//!    missing or stale → hold;
//! 7. otherwise: goal = base + delta (relative) or pose (absolute), clamped
//!    into the workspace box and Euler limits; one step toward it limited per
//!    axis in speed (`|Δ| ≤ v_max·dt`) and acceleration
//!    (`|v − v_prev| ≤ a_max·dt`), never to a state that could not brake to
//!    rest inside the limits; gripper debounced; → `Move`.
//!
//! A hold repeats the last safe target with zero velocity; after
//! `hold_repeats` consecutive holds the layer goes quiet (`None`) until it
//! can move again. A hold also drops the current goal: moving again needs a
//! new request.
//!
//! ```
//! use vw2_policy::safety::*;
//!
//! let mut layer = SafetyLayer::new(SafetyConfig::calvin_default()).unwrap();
//! let home = TcpPose::new([0.0, -0.1, 0.5], [std::f64::consts::PI, 0.0, 1.5]);
//! layer.reset(home, GripperState::Open, 0.0).unwrap();
//! layer.on_frame(0.0);
//! let req = ActionRequest::from_calvin_relative(
//!     0.0,
//!     [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
//!     CALVIN_SCALE_XYZ_M,
//!     CALVIN_SCALE_EULER_RAD,
//! );
//! let cmd = layer.process(0.0, Some(&req)).unwrap();
//! assert_eq!(cmd.kind, CommandKind::Move);
//! assert!((cmd.target.position.x - 0.01).abs() < 1e-12);
//! ```

mod config;
mod layer;
mod limiter;
mod types;

use std::path::PathBuf;

pub use config::{RelativeBase, SafetyConfig, CALVIN_RATE_HZ};
pub use layer::SafetyLayer;
pub use types::{
    ActionKind, ActionRequest, CommandKind, GripperState, InputKind, SafeCommand, SafetyEvent,
    SafetyEventKind, TcpPose, WatchdogState, CALVIN_SCALE_EULER_RAD, CALVIN_SCALE_XYZ_M,
};

/// Time in seconds (s) on a monotonic clock shared by all inputs.
pub type Seconds = f64;

/// Errors of the safety layer's set-up (never of a control tick: a tick
/// that cannot move holds instead).
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// A configuration value is out of range.
    #[error("invalid safety config: field `{field}`: expected {expected}, found {found}")]
    InvalidConfig {
        /// The field, with its index for arrays (e.g. `workspace_min[2]`).
        field: String,
        /// What a valid value looks like.
        expected: String,
        /// The value found.
        found: String,
    },
    /// The YAML did not parse (syntax, type, missing or unknown key).
    #[error("invalid safety config YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// The config file could not be read.
    #[error("cannot read safety config {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A NaN or ±Inf where a finite value is required (e.g. the pose passed to `reset`).
    #[error("non-finite value in `{field}`")]
    NonFinite {
        /// The offending field.
        field: &'static str,
    },
}
