//! Who drives this tick: the [`Arbiter`] picks the policy, the operator, or a
//! hold, from the mode, the operator's newest message and its age.
//!
//! Rules, in order, every tick:
//! 1. A message with a NaN or ±Inf field is dropped with an error logged, and
//!    the tick holds (never a command from a corrupt message).
//! 2. Modes that listen to the operator (shadow, takeover, the operator's run
//!    of a pair) hold while the operator stream is stale: no message yet, or
//!    the newest is older than the safety layer's `stale_timeout_s`. In
//!    takeover mode this holds whoever drives: the policy only drives under a
//!    live supervisor, and control is never handed back silently.
//! 3. Takeover: operator input beyond the deadband (a motion component above
//!    `deadband`, or a gripper input that differs from the commanded state)
//!    takes over on this very tick; control returns to the policy once the
//!    operator has been inside the deadband for `release_s`.

use serde::{Deserialize, Serialize};

use super::operator::OperatorCommand;
use crate::safety::{GripperState, InputKind, SafetyEventKind};

/// Who drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// The learned policy.
    Policy,
    /// The operator.
    Operator,
}

/// Takeover settings. YAML keys are the field names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TakeoverConfig {
    /// Operator motion at or below this (CALVIN units, largest component) is
    /// no input: stick noise, a hand resting on the spacemouse.
    pub deadband: f64,
    /// How long the operator must stay inside the deadband before the policy
    /// gets control back (s).
    pub release_s: f64,
}

impl Default for TakeoverConfig {
    fn default() -> Self {
        Self {
            deadband: 0.1,
            release_s: 1.0,
        }
    }
}

impl TakeoverConfig {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.deadband >= 0.0 && self.deadband.is_finite(),
            "takeover: deadband: expected a finite value ≥ 0 (CALVIN units), found {}",
            self.deadband
        );
        anyhow::ensure!(
            self.release_s >= 0.0 && self.release_s.is_finite(),
            "takeover: release_s: expected a finite value ≥ 0 (s), found {}",
            self.release_s
        );
        Ok(())
    }
}

/// How the arbiter shares control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// The operator drives; the policy is only logged.
    Shadow,
    /// The policy drives; the operator takes over beyond the deadband.
    Takeover,
    /// The policy alone (the policy's run of a pair).
    PolicyOnly,
    /// The operator alone (the operator's run of a pair).
    OperatorOnly,
}

/// Why a tick holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "cause")]
pub enum HoldCause {
    /// The operator stream is stale: the newest message is `age_s` old (+∞: none yet).
    OperatorStale {
        /// Age of the newest operator message (s).
        #[serde(with = "super::operator::nan_json::scalar")]
        age_s: f64,
    },
    /// The operator's message had a non-finite `field`.
    OperatorNonFinite {
        /// The offending field.
        field: &'static str,
    },
}

impl HoldCause {
    /// The safety event a hold for this cause records.
    pub fn event_kind(self) -> SafetyEventKind {
        match self {
            Self::OperatorStale { age_s } => SafetyEventKind::Stale {
                input: InputKind::Operator,
                age_s,
            },
            Self::OperatorNonFinite { field } => SafetyEventKind::NonFinite { field },
        }
    }
}

/// [`HoldCause`] as read back from a log.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", tag = "cause")]
enum HoldCauseLog {
    OperatorStale {
        #[serde(with = "super::operator::nan_json::scalar")]
        age_s: f64,
    },
    OperatorNonFinite {
        field: String,
    },
}

impl<'de> Deserialize<'de> for HoldCause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match HoldCauseLog::deserialize(d)? {
            HoldCauseLog::OperatorStale { age_s } => Self::OperatorStale { age_s },
            HoldCauseLog::OperatorNonFinite { field } => Self::OperatorNonFinite {
                // The names `OperatorCommand::non_finite_field` gives.
                field: ["operator.t", "operator.motion", "operator.gripper"]
                    .into_iter()
                    .find(|f| *f == field)
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!("unknown operator field {field:?}"))
                    })?,
            },
        })
    }
}

/// What drives this tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Send the policy's request.
    Policy,
    /// Send this operator command.
    Operator(OperatorCommand),
    /// Hold, for this reason.
    Hold(HoldCause),
}

/// A change of driver this tick (takeover mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Switch {
    /// The operator took over (input beyond the deadband).
    TakeOver,
    /// The operator released for `release_s`: the policy drives again.
    HandBack,
}

/// The per-tick control arbiter; see the [module docs](self) for its rules.
#[derive(Debug, Clone)]
pub struct Arbiter {
    control: Control,
    cfg: TakeoverConfig,
    stale_timeout_s: f64,
    driver: Driver,
    last: Option<OperatorCommand>,
    /// Time of the operator's last input beyond the deadband (s).
    last_input_t: f64,
}

impl Arbiter {
    /// An arbiter; `stale_timeout_s` is the safety layer's (one owner).
    pub fn new(control: Control, cfg: TakeoverConfig, stale_timeout_s: f64) -> Self {
        Self {
            control,
            cfg,
            stale_timeout_s,
            driver: Self::initial_driver(control),
            last: None,
            last_input_t: f64::NEG_INFINITY,
        }
    }

    fn initial_driver(control: Control) -> Driver {
        match control {
            Control::Takeover | Control::PolicyOnly => Driver::Policy,
            Control::Shadow | Control::OperatorOnly => Driver::Operator,
        }
    }

    /// How control is shared.
    pub fn control(&self) -> Control {
        self.control
    }

    /// Who drives (after the last tick).
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// A new subtask: the mode's initial driver; the operator stream's last
    /// message is kept (it is one stream over the whole run).
    pub fn reset(&mut self) {
        self.driver = Self::initial_driver(self.control);
        self.last_input_t = f64::NEG_INFINITY;
    }

    /// Whether `c` is input beyond the deadband, given the commanded gripper.
    pub fn is_input(&self, c: &OperatorCommand, gripper: GripperState) -> bool {
        c.magnitude() > self.cfg.deadband
            || c.gripper
                .is_some_and(|g| GripperState::from_signal(g) != gripper)
    }

    /// One tick at control time `now` (s) with the message that arrived this
    /// tick, if any, and the commanded gripper state.
    pub fn tick(
        &mut self,
        now: f64,
        msg: Option<OperatorCommand>,
        gripper: GripperState,
    ) -> (Decision, Option<Switch>) {
        if self.control == Control::PolicyOnly {
            return (Decision::Policy, None);
        }
        if let Some(m) = msg {
            if let Some(field) = m.non_finite_field() {
                tracing::error!(
                    field,
                    t = now,
                    "operator message with a non-finite value dropped; holding"
                );
                return (Decision::Hold(HoldCause::OperatorNonFinite { field }), None);
            }
            self.last = Some(m);
        }
        let age = self.last.map_or(f64::INFINITY, |m| now - m.t);
        let Some(cmd) = self.last.filter(|_| age <= self.stale_timeout_s) else {
            if self.driver == Driver::Operator {
                // Time without a stream is not time released.
                self.last_input_t = now;
            }
            return (
                Decision::Hold(HoldCause::OperatorStale { age_s: age }),
                None,
            );
        };
        // A fresh message counts as input; a kept one only keeps what it said.
        let input = msg.is_some() && self.is_input(&cmd, gripper);
        match self.control {
            Control::Shadow | Control::OperatorOnly => (Decision::Operator(cmd), None),
            Control::PolicyOnly => unreachable!("returned above"),
            Control::Takeover => {
                if input {
                    self.last_input_t = now;
                }
                match self.driver {
                    Driver::Policy if input => {
                        self.driver = Driver::Operator;
                        (Decision::Operator(cmd), Some(Switch::TakeOver))
                    }
                    Driver::Policy => (Decision::Policy, None),
                    Driver::Operator if now - self.last_input_t >= self.cfg.release_s => {
                        self.driver = Driver::Policy;
                        (Decision::Policy, Some(Switch::HandBack))
                    }
                    Driver::Operator => (Decision::Operator(cmd), None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DT: f64 = 1.0 / 30.0;

    fn msg(t: f64, x: f64) -> OperatorCommand {
        OperatorCommand {
            t,
            motion: [x, 0.0, 0.0, 0.0, 0.0, 0.0],
            gripper: None,
        }
    }

    fn arbiter(control: Control) -> Arbiter {
        Arbiter::new(control, TakeoverConfig::default(), 0.2)
    }

    #[test]
    fn takeover_switches_on_the_first_tick_beyond_the_deadband_and_back_after_release() {
        let mut a = arbiter(Control::Takeover);
        let open = GripperState::Open;
        let mut t = 0.0;
        // Inside the deadband: the policy drives.
        for _ in 0..10 {
            assert_eq!(
                a.tick(t, Some(msg(t, 0.05)), open),
                (Decision::Policy, None)
            );
            t += DT;
        }
        // The first tick with input takes over.
        let (d, s) = a.tick(t, Some(msg(t, 0.5)), open);
        assert_eq!(s, Some(Switch::TakeOver));
        assert!(matches!(d, Decision::Operator(c) if c.motion[0] == 0.5));
        let input_t = t;
        t += DT;
        // Released: the operator keeps control (its zero command) for release_s.
        let mut back = None;
        for k in 0..60 {
            let (d, s) = a.tick(t, Some(msg(t, 0.0)), open);
            if s == Some(Switch::HandBack) {
                assert_eq!(d, Decision::Policy);
                back = Some((k, t));
                break;
            }
            assert!(matches!(d, Decision::Operator(_)));
            t += DT;
        }
        let (_, back_t) = back.expect("control returns");
        assert!(back_t - input_t >= 1.0 - 1e-9 && back_t - input_t < 1.0 + DT + 1e-9);
        assert_eq!(a.driver(), Driver::Policy);
    }

    #[test]
    fn a_gripper_input_takes_over_only_when_it_changes_the_gripper() {
        let mut a = arbiter(Control::Takeover);
        let mut m = msg(0.0, 0.0);
        m.gripper = Some(1.0);
        assert_eq!(a.tick(0.0, Some(m), GripperState::Open).0, Decision::Policy);
        m.t = DT;
        m.gripper = Some(-1.0);
        assert_eq!(
            a.tick(DT, Some(m), GripperState::Open).1,
            Some(Switch::TakeOver)
        );
    }

    #[test]
    fn a_stale_operator_holds_and_never_hands_back_silently() {
        let mut a = arbiter(Control::Takeover);
        let open = GripperState::Open;
        // No message yet: hold, even though the policy would drive.
        assert!(matches!(
            a.tick(0.0, None, open).0,
            Decision::Hold(HoldCause::OperatorStale { age_s }) if age_s.is_infinite()
        ));
        assert_eq!(
            a.tick(DT, Some(msg(DT, 0.9)), open).1,
            Some(Switch::TakeOver)
        );
        // The stream stops: within the timeout the last command is kept…
        assert!(matches!(
            a.tick(4.0 * DT, None, open).0,
            Decision::Operator(_)
        ));
        // …then hold, tick after tick, with the operator still in charge.
        for k in 8..200 {
            let t = k as f64 * DT;
            let (d, s) = a.tick(t, None, open);
            assert!(
                matches!(d, Decision::Hold(HoldCause::OperatorStale { .. })),
                "{d:?}"
            );
            assert_eq!(s, None);
        }
        assert_eq!(a.driver(), Driver::Operator);
        // The stream returns released: the operator must still release for
        // release_s before the policy gets control.
        let t = 200.0 * DT;
        assert!(matches!(
            a.tick(t, Some(msg(t, 0.0)), open).0,
            Decision::Operator(_)
        ));
    }

    #[test]
    fn a_non_finite_message_holds_and_is_not_kept() {
        for control in [Control::Takeover, Control::Shadow, Control::OperatorOnly] {
            let mut a = arbiter(control);
            let open = GripperState::Open;
            a.tick(0.0, Some(msg(0.0, 0.0)), open);
            let (d, _) = a.tick(DT, Some(msg(DT, f64::NAN)), open);
            assert_eq!(
                d,
                Decision::Hold(HoldCause::OperatorNonFinite {
                    field: "operator.motion"
                })
            );
            // The next tick uses the last good message, not the NaN.
            match a.tick(2.0 * DT, None, open).0 {
                Decision::Operator(c) => assert_eq!(c.motion[0], 0.0),
                Decision::Policy => assert_eq!(control, Control::Takeover),
                d => panic!("{control:?}: {d:?}"),
            }
        }
    }

    #[test]
    fn shadow_always_sends_the_operator_and_policy_only_never_listens() {
        let mut s = arbiter(Control::Shadow);
        let (d, sw) = s.tick(0.0, Some(msg(0.0, 0.0)), GripperState::Open);
        assert!(matches!(d, Decision::Operator(_)) && sw.is_none());
        let mut p = arbiter(Control::PolicyOnly);
        assert_eq!(p.tick(0.0, None, GripperState::Open).0, Decision::Policy);
        assert_eq!(
            p.tick(1.0, Some(msg(1.0, f64::NAN)), GripperState::Open).0,
            Decision::Policy
        );
    }
}
