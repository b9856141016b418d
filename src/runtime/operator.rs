//! The operator's side of the robot path: the message a teleoperator sends
//! ([`OperatorCommand`], in the policy's action space), and the feed the
//! actuator polls each tick ([`OperatorFeed`], [`OperatorInbox`]). The
//! operators that issue them live in [`crate::teleop`].

use serde::{Deserialize, Serialize};

use crate::base::units::{REL_EULER_RAD, REL_XYZ_M};

/// One operator message, in the policy's action space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OperatorCommand {
    /// Time of validity (s, the run's clock): when the operator issued it.
    #[serde(with = "nan_json::scalar")]
    pub t: f64,
    /// Relative motion in CALVIN units: xyz × 0.02 m, roll/pitch/yaw × 0.05 rad
    /// per control tick (unclipped here; the safety layer clamps).
    #[serde(with = "nan_json::array6")]
    pub motion: [f64; 6],
    /// Gripper input by sign (> 0 open, ≤ 0 close); `None`: the operator did
    /// not touch the gripper (the commanded state is kept).
    #[serde(with = "nan_json::option")]
    pub gripper: Option<f64>,
}

/// JSON for floats that may be NaN or ±Inf (a corrupt operator message is
/// logged as it came): finite values as numbers, the others as the strings
/// `"NaN"`, `"inf"`, `"-inf"`.
pub(crate) mod nan_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum F {
        N(f64),
        S(String),
    }

    fn to(v: f64) -> F {
        if v.is_finite() {
            F::N(v)
        } else {
            F::S(format!("{v}"))
        }
    }

    fn from<E: serde::de::Error>(f: F) -> Result<f64, E> {
        match f {
            F::N(v) => Ok(v),
            F::S(s) => s.parse().map_err(|_| {
                E::custom(format!("expected a number, NaN, inf or -inf, found {s:?}"))
            }),
        }
    }

    pub mod scalar {
        use super::*;
        pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
            to(*v).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
            from(F::deserialize(d)?)
        }
    }

    pub mod array6 {
        use super::*;
        pub fn serialize<S: Serializer>(v: &[f64; 6], s: S) -> Result<S::Ok, S::Error> {
            v.map(to).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 6], D::Error> {
            let v = <[F; 6]>::deserialize(d)?;
            let mut out = [0.0; 6];
            for (o, f) in out.iter_mut().zip(v) {
                *o = from(f)?;
            }
            Ok(out)
        }
    }

    /// `Option<[f64; 7]>` (a policy's action).
    pub mod option7 {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<[f64; 7]>, s: S) -> Result<S::Ok, S::Error> {
            v.map(|a| a.map(to)).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 7]>, D::Error> {
            let Some(v) = Option::<[F; 7]>::deserialize(d)? else {
                return Ok(None);
            };
            let mut out = [0.0; 7];
            for (o, f) in out.iter_mut().zip(v) {
                *o = from(f)?;
            }
            Ok(Some(out))
        }
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            v.map(to).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<F>::deserialize(d)?.map(from).transpose()
        }
    }
}

impl OperatorCommand {
    /// A command from a twist, the `geometry_msgs/TwistStamped` convention:
    /// `linear` in m/s and `angular` (roll, pitch, yaw rates) in rad/s, held for
    /// one control period of a `rate_hz` loop.
    pub fn from_twist(
        t: f64,
        linear: [f64; 3],
        angular: [f64; 3],
        gripper: Option<f64>,
        rate_hz: f64,
    ) -> Self {
        let dt = 1.0 / rate_hz;
        let mut motion = [0.0; 6];
        for i in 0..3 {
            motion[i] = linear[i] * dt / REL_XYZ_M;
            motion[i + 3] = angular[i] * dt / REL_EULER_RAD;
        }
        Self { t, motion, gripper }
    }

    /// The motion as a twist at `rate_hz`: (linear m/s, angular rad/s).
    pub fn twist(&self, rate_hz: f64) -> ([f64; 3], [f64; 3]) {
        let mut lin = [0.0; 3];
        let mut ang = [0.0; 3];
        for i in 0..3 {
            lin[i] = self.motion[i] * REL_XYZ_M * rate_hz;
            ang[i] = self.motion[i + 3] * REL_EULER_RAD * rate_hz;
        }
        (lin, ang)
    }

    /// Largest absolute motion component (CALVIN units).
    pub fn magnitude(&self) -> f64 {
        self.motion.iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    /// The first non-finite field, named (`"operator.t"`, `"operator.motion"`,
    /// `"operator.gripper"`), or `None` when everything is finite.
    pub fn non_finite_field(&self) -> Option<&'static str> {
        if !self.t.is_finite() {
            Some("operator.t")
        } else if self.motion.iter().any(|v| !v.is_finite()) {
            Some("operator.motion")
        } else if self.gripper.is_some_and(|g| !g.is_finite()) {
            Some("operator.gripper")
        } else {
            None
        }
    }

    /// The 7-D CALVIN relative action this command asks for, with
    /// `gripper_now` (±1) where the operator left the gripper alone.
    pub fn calvin_action(&self, gripper_now: f64) -> [f64; 7] {
        let mut a = [0.0; 7];
        a[..6].copy_from_slice(&self.motion);
        a[6] = match self.gripper {
            Some(g) if g > 0.0 => 1.0,
            Some(_) => -1.0,
            None => gripper_now,
        };
        a
    }
}

/// Operator messages for the real-time pipeline (`runtime::run`), polled once
/// per actuate tick.
pub trait OperatorFeed: Send + Sync {
    /// The newest message that arrived since the last poll, if any.
    fn poll(&self, now: f64) -> Option<OperatorCommand>;
}

/// The newest operator message, written by a subscriber (the ROS node's
/// `~/teleop_cmd` and `~/teleop_gripper`) and taken by the actuate tick.
#[derive(Debug, Default)]
pub struct OperatorInbox {
    latest: std::sync::Mutex<Option<OperatorCommand>>,
    /// A gripper input waiting for the next motion message.
    gripper: std::sync::Mutex<Option<f64>>,
}

impl OperatorInbox {
    /// A motion message (with any gripper input that came before it).
    pub fn push(&self, mut c: OperatorCommand) {
        if c.gripper.is_none() {
            c.gripper = self.gripper.lock().expect("inbox poisoned").take();
        }
        *self.latest.lock().expect("inbox poisoned") = Some(c);
    }

    /// A gripper input (> 0 open, ≤ 0 close), sent with the next motion message.
    pub fn push_gripper(&self, g: f64) {
        *self.gripper.lock().expect("inbox poisoned") = Some(g);
    }
}

impl OperatorFeed for OperatorInbox {
    fn poll(&self, _now: f64) -> Option<OperatorCommand> {
        self.latest.lock().expect("inbox poisoned").take()
    }
}
