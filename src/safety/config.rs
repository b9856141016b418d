//! [`SafetyConfig`]: the limits the safety layer enforces, loadable from YAML.

use std::f64::consts::PI;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SafetyError;

/// Which pose a [`Relative`](super::ActionKind::Relative) request is added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelativeBase {
    /// The last safe target the layer emitted (like CALVIN's
    /// `use_target_pose: true`): deltas accumulate on the commanded pose, so
    /// tracking lag does not make the arm drift.
    #[default]
    LastTarget,
    /// The latest measured TCP pose from [`on_proprio`](super::SafetyLayer::on_proprio)
    /// (like CALVIN's `use_target_pose: false`). A missing, non-finite or stale
    /// (older than `stale_timeout_s`) measurement means hold.
    Measured,
}

/// Limits enforced by the [`SafetyLayer`](super::SafetyLayer).
///
/// All positions are of the tool centre point (TCP) in the robot base frame,
/// all times are seconds on the same monotonic clock as the input messages.
/// Velocity and acceleration limits are per axis (a box, not a norm).
///
/// Load from YAML with [`SafetyConfig::from_yaml_str`] or
/// [`SafetyConfig::from_yaml_file`]; both reject unknown keys and run
/// [`SafetyConfig::validate`]. Example for a real 7-DoF arm (Franka Panda
/// class, base frame at the robot foot, table top at z = 0), conservative for a
/// first deployment:
///
/// ```yaml
/// workspace_min: [0.25, -0.40, 0.02]   # m; z ≥ 2 cm keeps the fingers off the table
/// workspace_max: [0.75,  0.40, 0.60]   # m
/// euler_min: [2.2, -0.6, -2.0]         # rad; roll centred on π (gripper pointing down)
/// euler_max: [4.1,  0.6,  2.0]         # rad
/// max_linear_speed: 0.25               # m/s per axis
/// max_angular_speed: 0.8               # rad/s per axis
/// max_linear_accel: 2.0                # m/s² per axis
/// max_angular_accel: 6.0               # rad/s² per axis
/// gripper_debounce_s: 0.5              # s between two gripper flips
/// stale_timeout_s: 0.25                # s without a camera frame before holding
/// hold_repeats: 3                      # hold commands sent before going quiet
/// control_rate_hz: 30.0                # Hz; optional: the policy bundle's rate (must agree when given)
/// relative_base: last_target           # or `measured`
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// Lower corner of the TCP position box in the robot base frame (m), per axis x, y, z.
    pub workspace_min: [f64; 3],
    /// Upper corner of the TCP position box in the robot base frame (m), per axis x, y, z.
    pub workspace_max: [f64; 3],
    /// Lower orientation limit (rad): roll, pitch, yaw (extrinsic xyz Euler
    /// angles of the TCP in the base frame). Angles are compared modulo 2π
    /// relative to the interval centre, so an interval may straddle ±π
    /// (e.g. roll ∈ [2.2, 4.1]); an interval 2π wide or wider leaves that
    /// axis free (wrap-around only).
    pub euler_min: [f64; 3],
    /// Upper orientation limit (rad): roll, pitch, yaw; see `euler_min`.
    pub euler_max: [f64; 3],
    /// Maximum TCP speed per linear axis (m/s), > 0.
    pub max_linear_speed: f64,
    /// Maximum Euler-angle rate per axis (rad/s), > 0.
    pub max_angular_speed: f64,
    /// Maximum change of linear speed per axis (m/s²), > 0.
    pub max_linear_accel: f64,
    /// Maximum change of Euler-angle rate per axis (rad/s²), > 0.
    pub max_angular_accel: f64,
    /// Minimum time between two gripper state changes (s), ≥ 0. A flip
    /// requested sooner is delayed: the gripper keeps its state.
    pub gripper_debounce_s: f64,
    /// Watchdog timeout on input frames and requests (s), > 0; default 0.25 s.
    #[serde(default = "default_stale_timeout_s")]
    pub stale_timeout_s: f64,
    /// Number of hold commands sent once a hold condition (stale input,
    /// e-stop, non-finite value) appears, before going quiet (≥ 1); default 3.
    #[serde(default = "default_hold_repeats")]
    pub hold_repeats: u32,
    /// Control rate (Hz), > 0. `process` must be called at this rate: per-tick
    /// limits use `dt = 1 / control_rate_hz` (s). The policy bundle owns the
    /// rate: leave it out and the runtime sets it from the bundle
    /// ([`SafetyConfig::with_control_rate`]); a value given here must agree
    /// with the bundle's or the run is refused at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_rate_hz: Option<f64>,
    /// What relative deltas are added to; default [`RelativeBase::LastTarget`].
    #[serde(default)]
    pub relative_base: RelativeBase,
}

fn default_stale_timeout_s() -> f64 {
    0.25
}

fn default_hold_repeats() -> u32 {
    3
}

/// CALVIN's control rate (Hz): PyBullet at 240 Hz, an action every 8 substeps.
pub const CALVIN_RATE_HZ: f64 = 30.0;

const AXES: [&str; 3] = ["x", "y", "z"];
const ANGLES: [&str; 3] = ["roll", "pitch", "yaw"];

fn invalid(
    field: impl Into<String>,
    expected: impl Into<String>,
    found: impl ToString,
) -> SafetyError {
    SafetyError::InvalidConfig {
        field: field.into(),
        expected: expected.into(),
        found: found.to_string(),
    }
}

fn check_finite(field: &str, x: f64) -> Result<(), SafetyError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(invalid(field, "a finite number", x))
    }
}

fn check_positive(field: &str, unit: &str, x: f64) -> Result<(), SafetyError> {
    check_finite(field, x)?;
    if x > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, format!("a positive value ({unit})"), x))
    }
}

fn check_box(
    min_name: &str,
    max_name: &str,
    names: [&str; 3],
    min: &[f64; 3],
    max: &[f64; 3],
) -> Result<(), SafetyError> {
    for i in 0..3 {
        check_finite(&format!("{min_name}[{i}]"), min[i])?;
        check_finite(&format!("{max_name}[{i}]"), max[i])?;
        if min[i] >= max[i] {
            return Err(invalid(
                format!("{min_name}[{i}]"),
                format!(
                    "{min_name}[{i}] < {max_name}[{i}] ({}: min < max, and {max_name}[{i}] = {})",
                    names[i], max[i]
                ),
                min[i],
            ));
        }
    }
    Ok(())
}

impl SafetyConfig {
    /// Generous limits for the CALVIN simulator (Franka Panda in PyBullet).
    ///
    /// CALVIN evaluation runs through this envelope, so it must not clip any
    /// valid CALVIN action (every component in [−1, 1], gripper ±1): the
    /// official protocol's numbers stay those of the policy.
    ///
    /// CALVIN reports the TCP in its world frame, which plays the role of the
    /// base frame here. calvin_env clips no TCP target to a workspace, so
    /// neither does this envelope: the box holds every TCP position the arm
    /// can reach (the Panda's base sits at (−0.34, −0.46, 0.24) m in CALVIN's
    /// scene D and PlayTable, and its TCP stays within 1.5 m of it: the
    /// shoulder is 0.333 m above the base, the stretched arm and hand about
    /// 1.1 m): x ∈ [−1.9, 1.2] m, y ∈ [−2.0, 1.1] m, z ∈ [−1.3, 1.8] m; it catches
    /// only goals no arm could take. Roll, pitch and yaw are left free (only
    /// wrapped). A relative action is added to the measured pose, but the
    /// layer steps from its last target, which the simulated arm lags by its
    /// tracking error, and Euler angles jump near gimbal lock (pitch ±π/2:
    /// roll and yaw swing for a small turn). The limits let one tick cover a
    /// full CALVIN step plus nearly 1 m of tracking error and any wrapped
    /// angle change (≤ π), and reverse it at once: 30 m/s, 100 rad/s,
    /// 1 800 m/s², 6 000 rad/s². (With 3 m/s and 6 rad/s, 100 acceptance
    /// chains had 11 velocity-limited ticks in 39 094.) No gripper debounce (a CALVIN policy
    /// may flip it on any step), watchdog 0.25 s, 3 holds, at CALVIN's 30 Hz
    /// (a bundle trained at another rate is refused with it).
    ///
    /// Relative requests are added to the **measured** pose, as PlayTable (and
    /// calvin_env) apply a relative action: an action inside the envelope then
    /// reaches the simulator unchanged. On the last target, a delta the arm
    /// cannot follow (pressing on a button, a drawer at its stop) piles up in
    /// the target, and every later action is re-expressed from a pose the arm
    /// is not at.
    pub fn calvin_default() -> Self {
        Self {
            workspace_min: [-1.9, -2.0, -1.3],
            workspace_max: [1.2, 1.1, 1.8],
            euler_min: [-PI, -PI, -PI],
            euler_max: [PI, PI, PI],
            max_linear_speed: 30.0,
            max_angular_speed: 100.0,
            max_linear_accel: 1800.0,
            max_angular_accel: 6000.0,
            gripper_debounce_s: 0.0,
            stale_timeout_s: default_stale_timeout_s(),
            hold_repeats: default_hold_repeats(),
            control_rate_hz: Some(CALVIN_RATE_HZ),
            relative_base: RelativeBase::Measured,
        }
    }

    /// Parses YAML (unknown keys are rejected) and validates the result.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, SafetyError> {
        let cfg: Self = serde_yaml::from_str(yaml)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a YAML file.
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Self, SafetyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SafetyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// The envelope at the control rate `hz` (Hz) of `owner` (the policy
    /// bundle, which owns it): the rate is filled in when the config leaves it
    /// out, and a config that states another rate is refused, naming both.
    pub fn with_control_rate(mut self, hz: f64, owner: &str) -> Result<Self, SafetyError> {
        match self.control_rate_hz {
            Some(own) if (own - hz).abs() > 1e-9 => Err(invalid(
                "control_rate_hz",
                format!(
                    "{hz} Hz, the control rate of {owner}, or no value (then {owner}'s is used)"
                ),
                format!("{own} Hz"),
            )),
            _ => {
                self.control_rate_hz = Some(hz);
                Ok(self)
            }
        }
    }

    /// The control rate (Hz); NaN while unset (see [`SafetyConfig::with_control_rate`]).
    pub fn rate_hz(&self) -> f64 {
        self.control_rate_hz.unwrap_or(f64::NAN)
    }

    /// Control period `dt = 1 / control_rate_hz` (s); NaN while the rate is unset.
    pub fn dt(&self) -> f64 {
        1.0 / self.rate_hz()
    }

    /// Checks every field; the error names the field, what was expected and
    /// what was found. Rules: all values finite; `workspace_min < workspace_max`
    /// and `euler_min < euler_max` per axis; speeds, accelerations,
    /// `stale_timeout_s` and `control_rate_hz` > 0; `gripper_debounce_s` ≥ 0;
    /// `hold_repeats` ≥ 1.
    pub fn validate(&self) -> Result<(), SafetyError> {
        check_box(
            "workspace_min",
            "workspace_max",
            AXES,
            &self.workspace_min,
            &self.workspace_max,
        )?;
        check_box(
            "euler_min",
            "euler_max",
            ANGLES,
            &self.euler_min,
            &self.euler_max,
        )?;
        check_positive("max_linear_speed", "m/s", self.max_linear_speed)?;
        check_positive("max_angular_speed", "rad/s", self.max_angular_speed)?;
        check_positive("max_linear_accel", "m/s²", self.max_linear_accel)?;
        check_positive("max_angular_accel", "rad/s²", self.max_angular_accel)?;
        check_finite("gripper_debounce_s", self.gripper_debounce_s)?;
        if self.gripper_debounce_s < 0.0 {
            return Err(invalid(
                "gripper_debounce_s",
                "a value ≥ 0 (s)",
                self.gripper_debounce_s,
            ));
        }
        check_positive("stale_timeout_s", "s", self.stale_timeout_s)?;
        if self.hold_repeats == 0 {
            return Err(invalid("hold_repeats", "at least 1", self.hold_repeats));
        }
        if let Some(hz) = self.control_rate_hz {
            check_positive("control_rate_hz", "Hz", hz)?;
        }
        Ok(())
    }
}
