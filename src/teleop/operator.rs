//! Operator commands and the operators that issue them: the scripted
//! operator (the simulator's expert with noise, reaction delay and hesitation)
//! stands in for a person in tests and benchmarks; keyboard and ROS 2 inputs
//! produce the same [`OperatorCommand`].

use std::collections::VecDeque;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::io::env_adapter::EnvAdapter;
use crate::io::Observation;

use super::{Driver, Mode};
pub(crate) use crate::runtime::operator::nan_json;
pub use crate::runtime::operator::{OperatorCommand, OperatorFeed, OperatorInbox};

/// What an operator knows about the run at a tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatorContext {
    /// The mode of the run.
    pub mode: Mode,
    /// Who drove the previous tick.
    pub driver: Driver,
    /// Control time of this tick (s).
    pub t: f64,
    /// Time since the subtask started (s).
    pub subtask_elapsed_s: f64,
}

/// A source of operator commands, polled once per control tick.
pub trait Operator: Send {
    /// A short name for logs and reports (`scripted`, `keyboard`, …).
    fn name(&self) -> String;
    /// A new subtask: `task` is the oracle's name, `instruction` the sentence.
    fn reset(&mut self, task: &str, instruction: &str) -> Result<()>;
    /// The message that arrived by this tick, if any (`None`: nothing new; the
    /// arbiter keeps the last one until it goes stale). `env` is the simulator,
    /// for operators that use privileged state (the scripted one).
    fn poll(
        &mut self,
        ctx: &OperatorContext,
        obs: &Observation,
        env: &mut EnvAdapter,
    ) -> Result<Option<OperatorCommand>>;
}

/// How the scripted operator deviates from the expert, and when it
/// intervenes in takeover mode. YAML keys are the field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptedOperatorConfig {
    /// Gaussian noise added to every motion component (CALVIN units, std).
    pub noise_std: f64,
    /// Reaction delay (control ticks): the command issued at tick k is what
    /// the expert said at tick k − delay_steps.
    pub delay_steps: usize,
    /// Probability per tick of starting a hesitation (0–1).
    pub hesitation_prob: f64,
    /// Length of one hesitation (s): zero motion, gripper untouched.
    pub hesitation_s: f64,
    /// Takeover mode: how long the policy may drive a subtask without solving
    /// it before the operator takes over (s).
    pub intervene_after_s: f64,
    /// Takeover mode: how long the operator drives before letting go (s).
    pub intervene_for_s: f64,
    /// Stop sending after this many messages (tests of a stale stream).
    pub stop_after: Option<u64>,
    /// Seed of the noise and hesitation draws.
    pub seed: u64,
}

impl Default for ScriptedOperatorConfig {
    fn default() -> Self {
        Self {
            noise_std: 0.0,
            delay_steps: 0,
            hesitation_prob: 0.0,
            hesitation_s: 0.5,
            intervene_after_s: 4.0,
            intervene_for_s: 3.0,
            stop_after: None,
            seed: 0,
        }
    }
}

impl ScriptedOperatorConfig {
    /// Checks ranges; the message names the field, what was expected and what was found.
    pub fn validate(&self) -> Result<()> {
        let checks: [(&str, f64, bool); 5] = [
            (
                "noise_std",
                self.noise_std,
                self.noise_std >= 0.0 && self.noise_std.is_finite(),
            ),
            (
                "hesitation_prob",
                self.hesitation_prob,
                (0.0..=1.0).contains(&self.hesitation_prob),
            ),
            (
                "hesitation_s",
                self.hesitation_s,
                self.hesitation_s >= 0.0 && self.hesitation_s.is_finite(),
            ),
            (
                "intervene_after_s",
                self.intervene_after_s,
                self.intervene_after_s >= 0.0 && self.intervene_after_s.is_finite(),
            ),
            (
                "intervene_for_s",
                self.intervene_for_s,
                self.intervene_for_s > 0.0 && self.intervene_for_s.is_finite(),
            ),
        ];
        for (name, v, ok) in checks {
            anyhow::ensure!(
                ok,
                "scripted operator: {name}: expected a finite value in range, found {v}"
            );
        }
        Ok(())
    }
}

/// The simulator's scripted expert as an operator, with noise, delay and
/// hesitation; in takeover mode a supervisor that lets the policy try for
/// `intervene_after_s` and then drives for `intervene_for_s`.
pub struct ScriptedOperator {
    cfg: ScriptedOperatorConfig,
    rate_hz: f64,
    task: String,
    rng: rand::rngs::StdRng,
    /// Expert actions not yet issued (the reaction delay).
    pending: VecDeque<[f64; 7]>,
    /// Ticks left in the current hesitation.
    hesitating: usize,
    /// Takeover: control time the current intervention started (s).
    intervening_since: Option<f64>,
    /// Takeover: when the policy got (back) the subtask (s since it started).
    policy_since_s: f64,
    sent: u64,
}

impl ScriptedOperator {
    /// An operator for a `rate_hz` control loop.
    pub fn new(cfg: ScriptedOperatorConfig, rate_hz: f64) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
            cfg,
            rate_hz,
            task: String::new(),
            pending: VecDeque::new(),
            hesitating: 0,
            intervening_since: None,
            policy_since_s: 0.0,
            sent: 0,
        })
    }

    fn gaussian(&mut self) -> f64 {
        // Box–Muller; 1 − u keeps the logarithm finite.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        let v: f64 = self.rng.random::<f64>();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Whether the supervisor wants the controls at this tick (takeover mode):
    /// it lets the policy drive for `intervene_after_s` (counted from the
    /// subtask's start or from the last hand-back), then drives for
    /// `intervene_for_s` and lets go.
    fn wants_control(&mut self, ctx: &OperatorContext) -> bool {
        const EPS: f64 = 1e-9;
        if ctx.mode != Mode::Takeover {
            return true;
        }
        if let Some(since) = self.intervening_since {
            if ctx.t - since < self.cfg.intervene_for_s - EPS {
                return true;
            }
            self.intervening_since = None;
        }
        if ctx.driver == Driver::Operator {
            // Released, waiting for the hand-back.
            self.policy_since_s = ctx.subtask_elapsed_s;
            return false;
        }
        if ctx.subtask_elapsed_s - self.policy_since_s >= self.cfg.intervene_after_s - EPS {
            self.intervening_since = Some(ctx.t);
            return true;
        }
        false
    }
}

impl Operator for ScriptedOperator {
    fn name(&self) -> String {
        let c = &self.cfg;
        format!(
            "scripted(noise={}, delay={}, hesitation={}x{}s)",
            c.noise_std, c.delay_steps, c.hesitation_prob, c.hesitation_s
        )
    }

    fn reset(&mut self, task: &str, _instruction: &str) -> Result<()> {
        self.task = task.into();
        self.pending.clear();
        self.hesitating = 0;
        self.intervening_since = None;
        self.policy_since_s = 0.0;
        Ok(())
    }

    fn poll(
        &mut self,
        ctx: &OperatorContext,
        _obs: &Observation,
        env: &mut EnvAdapter,
    ) -> Result<Option<OperatorCommand>> {
        if self.cfg.stop_after.is_some_and(|n| self.sent >= n) {
            return Ok(None);
        }
        self.sent += 1;
        let idle = OperatorCommand {
            t: ctx.t,
            motion: [0.0; 6],
            gripper: None,
        };
        if !self.wants_control(ctx) {
            self.pending.clear();
            return Ok(Some(idle));
        }
        self.pending.push_back(env.expert_action(&self.task)?);
        if self.pending.len() <= self.cfg.delay_steps {
            return Ok(Some(idle));
        }
        let a = self.pending.pop_front().expect("non-empty");
        if self.hesitating > 0 {
            self.hesitating -= 1;
            return Ok(Some(idle));
        }
        if self.cfg.hesitation_prob > 0.0 && self.rng.random_bool(self.cfg.hesitation_prob) {
            self.hesitating = (self.cfg.hesitation_s * self.rate_hz).round() as usize;
            if self.hesitating > 0 {
                self.hesitating -= 1;
                return Ok(Some(idle));
            }
        }
        let mut motion = [0.0; 6];
        for (m, v) in motion.iter_mut().zip(&a[..6]) {
            *m = *v;
        }
        if self.cfg.noise_std > 0.0 {
            for m in &mut motion {
                *m += self.cfg.noise_std * self.gaussian();
            }
        }
        Ok(Some(OperatorCommand {
            t: ctx.t,
            motion,
            gripper: Some(a[6]),
        }))
    }
}

/// Replays recorded operator messages by tick index (`None` where none arrived).
#[derive(Debug, Clone)]
pub struct RecordedOperator {
    messages: Vec<Option<OperatorCommand>>,
    next: usize,
}

impl RecordedOperator {
    /// An operator that returns `messages[k]` at its k-th poll.
    pub fn new(messages: Vec<Option<OperatorCommand>>) -> Self {
        Self { messages, next: 0 }
    }
}

impl Operator for RecordedOperator {
    fn name(&self) -> String {
        "recorded".into()
    }
    fn reset(&mut self, _task: &str, _instruction: &str) -> Result<()> {
        Ok(())
    }
    fn poll(
        &mut self,
        _ctx: &OperatorContext,
        _obs: &Observation,
        _env: &mut EnvAdapter,
    ) -> Result<Option<OperatorCommand>> {
        let m = self.messages.get(self.next).copied().flatten();
        self.next += 1;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twist_round_trips_through_calvin_units() {
        let c = OperatorCommand::from_twist(1.0, [0.3, -0.6, 0.0], [0.0, 0.0, 1.5], None, 30.0);
        // 0.3 m/s for 1/30 s is 0.01 m: half a CALVIN unit.
        assert!((c.motion[0] - 0.5).abs() < 1e-12);
        assert!((c.motion[1] + 1.0).abs() < 1e-12);
        assert!((c.motion[5] - 1.0).abs() < 1e-12);
        let (lin, ang) = c.twist(30.0);
        assert!((lin[0] - 0.3).abs() < 1e-12 && (lin[1] + 0.6).abs() < 1e-12);
        assert!((ang[2] - 1.5).abs() < 1e-12);
        assert_eq!(c.magnitude(), 1.0);
    }

    #[test]
    fn gripper_defaults_to_the_commanded_state_and_nan_is_named() {
        let mut c = OperatorCommand {
            t: 0.0,
            motion: [0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
            gripper: None,
        };
        assert_eq!(c.calvin_action(-1.0)[6], -1.0);
        c.gripper = Some(0.3);
        assert_eq!(c.calvin_action(-1.0)[6], 1.0);
        assert_eq!(c.non_finite_field(), None);
        c.motion[2] = f64::NAN;
        assert_eq!(c.non_finite_field(), Some("operator.motion"));
        c.motion[2] = 0.0;
        c.gripper = Some(f64::INFINITY);
        assert_eq!(c.non_finite_field(), Some("operator.gripper"));
    }

    #[test]
    fn non_finite_values_survive_the_json_log() {
        let c = OperatorCommand {
            t: 0.5,
            motion: [f64::NAN, 1.0, f64::INFINITY, 0.0, 0.0, f64::NEG_INFINITY],
            gripper: Some(f64::NAN),
        };
        let j = serde_json::to_string(&c).unwrap();
        let back: OperatorCommand = serde_json::from_str(&j).unwrap();
        assert!(back.motion[0].is_nan() && back.motion[2] == f64::INFINITY);
        assert_eq!(back.motion[5], f64::NEG_INFINITY);
        assert!(back.gripper.unwrap().is_nan() && back.t == 0.5);
        let none: OperatorCommand =
            serde_json::from_str(r#"{"t":1.0,"motion":[0,0,0,0,0,0],"gripper":null}"#).unwrap();
        assert_eq!(none.gripper, None);
    }

    #[test]
    fn config_rejects_out_of_range_values_by_name() {
        let cfg = ScriptedOperatorConfig {
            hesitation_prob: 1.5,
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("hesitation_prob") && e.contains("1.5"), "{e}");
        let e = serde_yaml::from_str::<ScriptedOperatorConfig>("noise: 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("noise"), "{e}");
    }
}
