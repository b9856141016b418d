//! Messages in and out of the safety layer. Every message carries its time of
//! validity `t` (s, monotonic clock).

use nalgebra::Vector3;

use super::limiter::wrap_pi;
use super::Seconds;

/// CALVIN's relative-action scale for x, y, z: 1.0 action unit = 0.02 m.
pub const CALVIN_SCALE_XYZ_M: f64 = crate::base::units::REL_XYZ_M;
/// CALVIN's relative-action scale for roll, pitch, yaw: 1.0 action unit = 0.05 rad.
pub const CALVIN_SCALE_EULER_RAD: f64 = crate::base::units::REL_EULER_RAD;

/// Pose of the tool centre point (TCP) in the robot base frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpPose {
    /// Position x, y, z (m).
    pub position: Vector3<f64>,
    /// Orientation as extrinsic xyz Euler angles roll, pitch, yaw (rad).
    pub euler: Vector3<f64>,
}

impl TcpPose {
    /// Pose from position (m) and Euler angles roll, pitch, yaw (rad).
    pub fn new(position: [f64; 3], euler: [f64; 3]) -> Self {
        Self {
            position: Vector3::from(position),
            euler: Vector3::from(euler),
        }
    }

    /// `true` when every component is finite (no NaN, no ±Inf).
    pub fn is_finite(&self) -> bool {
        self.position
            .iter()
            .chain(self.euler.iter())
            .all(|x| x.is_finite())
    }

    /// Component `i` of `[x, y, z, roll, pitch, yaw]` (m for 0–2, rad for 3–5).
    pub fn axis(&self, i: usize) -> f64 {
        if i < 3 {
            self.position[i]
        } else {
            self.euler[i - 3]
        }
    }

    /// Sets component `i` of `[x, y, z, roll, pitch, yaw]` (m for 0–2, rad for 3–5).
    pub fn set_axis(&mut self, i: usize, value: f64) {
        if i < 3 {
            self.position[i] = value;
        } else {
            self.euler[i - 3] = value;
        }
    }
}

/// What a request asks the arm to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActionKind {
    /// Move by `delta = [dx, dy, dz (m), droll, dpitch, dyaw (rad)]` from the
    /// pose chosen by [`RelativeBase`](super::RelativeBase). CALVIN units must
    /// already be scaled (× 0.02 m, × 0.05 rad), e.g. by
    /// [`ActionRequest::from_calvin_relative`].
    Relative {
        /// `[dx, dy, dz]` in m, then `[droll, dpitch, dyaw]` in rad.
        delta: [f64; 6],
    },
    /// Move to an absolute TCP pose in the base frame.
    Absolute {
        /// Target pose (m, rad).
        pose: TcpPose,
    },
}

/// A policy's request for one control tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActionRequest {
    /// Time of validity (s, monotonic clock): when the observation this action
    /// was computed from was taken. Older than `stale_timeout_s` → hold.
    pub t: Seconds,
    /// Relative or absolute motion.
    pub kind: ActionKind,
    /// Gripper command by sign: > 0 open, ≤ 0 close (unitless; CALVIN uses ±1).
    pub gripper: f64,
}

impl ActionRequest {
    /// Relative request: `delta` in m (x, y, z) and rad (roll, pitch, yaw).
    pub fn relative(t: Seconds, delta: [f64; 6], gripper: f64) -> Self {
        Self {
            t,
            kind: ActionKind::Relative { delta },
            gripper,
        }
    }

    /// Absolute request: target pose in m and rad.
    pub fn absolute(t: Seconds, pose: TcpPose, gripper: f64) -> Self {
        Self {
            t,
            kind: ActionKind::Absolute { pose },
            gripper,
        }
    }

    /// Relative request from a 7-D CALVIN action `[x, y, z, roll, pitch, yaw,
    /// gripper]` in CALVIN units: the first three are multiplied by
    /// `scale_xyz_m` (m per unit, CALVIN: 0.02), the next three by
    /// `scale_euler_rad` (rad per unit, CALVIN: 0.05). Values are not clipped
    /// here: the safety layer clamps them.
    pub fn from_calvin_relative(
        t: Seconds,
        action: [f64; 7],
        scale_xyz_m: f64,
        scale_euler_rad: f64,
    ) -> Self {
        let mut delta = [0.0; 6];
        for (i, d) in delta.iter_mut().enumerate() {
            let scale = if i < 3 { scale_xyz_m } else { scale_euler_rad };
            *d = action[i] * scale;
        }
        Self::relative(t, delta, action[6])
    }
}

/// Commanded gripper state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GripperState {
    /// Fingers open (CALVIN +1).
    Open,
    /// Fingers closed (CALVIN −1).
    Close,
}

impl GripperState {
    /// State from a signal: > 0 open, otherwise (≤ 0) close. NaN maps to
    /// close here, but the safety layer never lets a NaN request get this far.
    pub fn from_signal(x: f64) -> Self {
        if x > 0.0 {
            Self::Open
        } else {
            Self::Close
        }
    }

    /// CALVIN value: exactly +1.0 for open, −1.0 for close.
    pub fn as_calvin(self) -> f64 {
        match self {
            Self::Open => 1.0,
            Self::Close => -1.0,
        }
    }
}

/// Whether a command moves the arm or holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// Go to `target` (one velocity- and acceleration-limited step).
    Move,
    /// Stay at the last safe target with zero velocity.
    Hold,
}

/// A command that passed the safety layer: target inside the workspace and
/// orientation limits, velocity and acceleration within limits, all finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafeCommand {
    /// Time of validity (s): the `now` of the tick that produced it.
    pub t: Seconds,
    /// Move or hold.
    pub kind: CommandKind,
    /// Pose to reach by the next tick (m, rad), base frame.
    pub target: TcpPose,
    /// Commanded TCP velocity per axis (m/s); zero for a hold.
    pub linear_velocity: Vector3<f64>,
    /// Commanded Euler-angle rates roll, pitch, yaw (rad/s) — not the body
    /// angular velocity; zero for a hold.
    pub angular_velocity: Vector3<f64>,
    /// Gripper state to command.
    pub gripper: GripperState,
}

impl SafeCommand {
    /// `true` when target and velocities are all finite.
    pub fn is_finite(&self) -> bool {
        self.t.is_finite()
            && self.target.is_finite()
            && self
                .linear_velocity
                .iter()
                .chain(self.angular_velocity.iter())
                .all(|x| x.is_finite())
    }

    /// The command as a 7-D CALVIN relative action from the measured pose
    /// `current`: `(target − current) / scale` per axis (Euler differences
    /// wrapped to [−π, π) first), clipped to [−1, 1], gripper exactly ±1.
    /// `scale_xyz_m` is m per unit (CALVIN: 0.02), `scale_euler_rad` rad per
    /// unit (CALVIN: 0.05). An axis whose value cannot be computed (non-finite
    /// `current` or non-positive scale) is 0.0, i.e. "do not move", never NaN.
    pub fn relative_action(
        &self,
        current: &TcpPose,
        scale_xyz_m: f64,
        scale_euler_rad: f64,
    ) -> [f64; 7] {
        let mut out = [0.0; 7];
        for (i, o) in out.iter_mut().take(6).enumerate() {
            let (d, scale) = if i < 3 {
                (self.target.axis(i) - current.axis(i), scale_xyz_m)
            } else {
                (
                    wrap_pi(self.target.axis(i) - current.axis(i)),
                    scale_euler_rad,
                )
            };
            let u = d / scale;
            *o = if u.is_finite() && scale > 0.0 {
                u.clamp(-1.0, 1.0)
            } else {
                0.0
            };
        }
        out[6] = self.gripper.as_calvin();
        out
    }
}

/// Which input a timing event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// Camera frames ([`on_frame`](super::SafetyLayer::on_frame)).
    Frame,
    /// Action requests passed to [`process`](super::SafetyLayer::process).
    Request,
    /// Measured TCP pose ([`on_proprio`](super::SafetyLayer::on_proprio)).
    Proprio,
    /// A teleoperator's command stream (see [`crate::teleop`]).
    Operator,
}

/// What happened, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SafetyEventKind {
    /// The goal position was clamped into the workspace box on `axis` (0 = x, 1 = y, 2 = z).
    ClampedPosition {
        /// 0 = x, 1 = y, 2 = z.
        axis: usize,
    },
    /// The goal orientation was clamped into the Euler limits on `axis` (0 = roll, 1 = pitch, 2 = yaw).
    ClampedOrientation {
        /// 0 = roll, 1 = pitch, 2 = yaw.
        axis: usize,
    },
    /// The goal was more than one tick away at the speed limit on `axis`
    /// (0–2: x, y, z in m/s; 3–5: roll, pitch, yaw in rad/s).
    VelocityLimited {
        /// 0–2: x, y, z; 3–5: roll, pitch, yaw.
        axis: usize,
    },
    /// The acceleration limit (or braking to stay inside the limits)
    /// shortened the step on `axis` (0–2: x, y, z; 3–5: roll, pitch, yaw).
    AccelLimited {
        /// 0–2: x, y, z; 3–5: roll, pitch, yaw.
        axis: usize,
    },
    /// A gripper flip was requested sooner than `gripper_debounce_s` after
    /// the last one; the gripper keeps its state.
    GripperDebounced,
    /// A NaN or ±Inf was found in `field` (e.g. `"request.delta"`,
    /// `"proprio.position"`, `"now"`); the layer holds.
    NonFinite {
        /// Name of the offending field.
        field: &'static str,
    },
    /// `input` is older than `stale_timeout_s`: `age_s` (s) is `now − t`,
    /// +∞ when that input was never received; the layer holds.
    Stale {
        /// Which input.
        input: InputKind,
        /// Age in s (+∞: never received).
        age_s: f64,
    },
    /// `input`'s time of validity lies `ahead_s` (s) after `now`: clocks
    /// disagree, the layer holds.
    FromFuture {
        /// Which input.
        input: InputKind,
        /// How far ahead, in s.
        ahead_s: f64,
    },
    /// `now` (s) went backwards by `by_s` (s) since the previous tick; the layer holds.
    ClockWentBackwards {
        /// How far back, in s.
        by_s: f64,
    },
    /// No action request to follow (none yet, or dropped at the last hold); the layer holds.
    NoRequest,
    /// [`process`](super::SafetyLayer::process) was called before a
    /// successful [`reset`](super::SafetyLayer::reset): nothing is emitted.
    NotInitialized,
    /// The e-stop was latched by [`estop`](super::SafetyLayer::estop)
    /// (and, while latched, each tick that holds or stays quiet).
    EStop,
    /// The e-stop was cleared by [`reset_estop`](super::SafetyLayer::reset_estop).
    EStopCleared,
    /// The layer sent its last hold command and goes quiet until it can move.
    Silenced,
}

/// A diagnostic event with its time (s, monotonic clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SafetyEvent {
    /// When it happened (s): the tick's `now`, or the latest time the layer
    /// had seen for events raised outside `process` (e.g. `estop`).
    pub t: Seconds,
    /// What happened.
    pub kind: SafetyEventKind,
}

/// State of the hold machine (watchdog, e-stop, non-finite input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchdogState {
    /// Moving normally (or nothing happened yet).
    Ok,
    /// Holding: `sent` hold commands sent in this episode (≤ `hold_repeats`).
    Holding {
        /// Hold commands sent so far in this episode.
        sent: u32,
    },
    /// All `hold_repeats` holds were sent; `process` returns `None` until the
    /// layer can move again.
    Silent,
}
