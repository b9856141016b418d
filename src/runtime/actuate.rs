//! The one path from a policy's plans to the robot: [`Actuator`] plays the
//! newest action chunk at the control rate, lets an operator share control
//! (teleop), and sends every request through the [`SafetyLayer`]. The real-time
//! runtime ([`super::run`], `vw2 run`, the ROS node), CALVIN evaluation
//! (`vw2 eval calvin`, `vw2 demo`) and the teleop comparison all tick it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use super::arbiter::{Arbiter, Decision, Switch};
use super::operator::{OperatorCommand, OperatorFeed};
use super::pipeline::{TeleopLink, TeleopStats};
use crate::base::units::{REL_EULER_RAD, REL_XYZ_M};
pub use crate::io::robot::sim_action;
use crate::model::head::ACTION_DIM;
use crate::policy::Plan;
use crate::safety::{
    ActionRequest, GripperState, SafeCommand, SafetyConfig, SafetyEvent, SafetyLayer, TcpPose,
};

/// An action chunk and its time of validity: what a policy hands the actuator.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Capture time of the observation the chunk was planned from (s); row `i`
    /// plays at control time `t + i / rate`.
    pub t: f64,
    /// Rows of 7-D CALVIN actions (relative: units of 0.02 m / 0.05 rad,
    /// absolute: TCP pose in m and rad), gripper ±1.
    pub actions: Vec<[f64; ACTION_DIM]>,
    /// Whether the rows are relative actions.
    pub relative: bool,
}

impl Chunk {
    /// The chunk of a plan.
    pub fn of_plan(plan: &Plan) -> Self {
        Self {
            t: plan.t,
            actions: plan.actions.iter().map(|a| a.map(f64::from)).collect(),
            relative: plan.relative,
        }
    }

    /// A one-row chunk valid at `t` (s) (baselines that act every step).
    pub fn single(t: f64, action: [f64; 7], relative: bool) -> Self {
        Self {
            t,
            actions: vec![action],
            relative,
        }
    }

    /// The row that plays at control time `now` (s) at `rate_hz`; past the
    /// end, "no motion" with the last gripper command (relative) or the last
    /// pose (absolute). `None` for an empty chunk.
    pub fn action_at(&self, now: f64, rate_hz: f64) -> Option<[f64; 7]> {
        let last = self.actions.last()?;
        let idx = ((now - self.t) * rate_hz + 1e-6).floor().max(0.0) as usize;
        Some(match self.actions.get(idx) {
            Some(a) => *a,
            None if self.relative => {
                let mut hold = [0.0; 7];
                hold[6] = last[6];
                hold
            }
            None => *last,
        })
    }

    /// The safety layer's request for control time `now` (s); relative rows
    /// are scaled by the policy's `scale` (m and rad per unit).
    pub fn request_at(&self, now: f64, rate_hz: f64, scale: ActionScale) -> Option<ActionRequest> {
        let a = self.action_at(now, rate_hz)?;
        Some(if self.relative {
            ActionRequest::from_calvin_relative(self.t, a, scale.xyz_m, scale.euler_rad)
        } else {
            let pose = TcpPose::new([a[0], a[1], a[2]], [a[3], a[4], a[5]]);
            ActionRequest::absolute(self.t, pose, a[6])
        })
    }
}

/// The bundle owns the control rate: a robot or simulator (`what`) at
/// another rate than the policy's is refused, naming both rates (Hz).
pub fn check_control_rate(policy_hz: f64, io_hz: f64, what: &str) -> Result<()> {
    anyhow::ensure!(
        (io_hz - policy_hz).abs() < 1e-9,
        "control rate: the policy was trained at {policy_hz} Hz but the {what} runs at \
         {io_hz} Hz; run the {what} at the policy's rate"
    );
    Ok(())
}

/// What one unit of a policy's relative action means: the bundle's
/// `action_space` scales (CALVIN's by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActionScale {
    /// Metres per unit of relative x, y, z.
    pub xyz_m: f64,
    /// Radians per unit of relative roll, pitch, yaw.
    pub euler_rad: f64,
}

impl Default for ActionScale {
    fn default() -> Self {
        Self {
            xyz_m: REL_XYZ_M,
            euler_rad: REL_EULER_RAD,
        }
    }
}

impl ActionScale {
    /// The scales of a bundle's action space.
    pub fn of(space: &crate::policy::bundle::ActionSpace) -> Self {
        Self {
            xyz_m: space.scale_xyz_m,
            euler_rad: space.scale_euler_rad,
        }
    }
}

/// A safety event's kind without its fields (`ClampedPosition`, `StaleInput`, …):
/// the key under which runs count events.
pub fn event_name(e: &SafetyEvent) -> String {
    let name = format!("{:?}", e.kind);
    name.split([' ', '{', '(']).next().unwrap_or("").to_string()
}

/// One arbitrated tick: the arbiter decides who drives at `now` (s) given the
/// operator's message, and the choice goes through the safety layer: the
/// policy's request `policy`, the operator's command (CALVIN relative units,
/// holding the current gripper when it names none), or a hold. Returns the
/// decision, a change of driver, and the layer's command (`None`: quiet).
/// The runtime's [`Actuator`] and the teleop comparison both tick this.
pub fn arbitrate(
    safety: &mut SafetyLayer,
    arbiter: &mut Arbiter,
    now: f64,
    policy: Option<&ActionRequest>,
    operator: Option<OperatorCommand>,
) -> (Decision, Option<Switch>, Option<SafeCommand>) {
    let gripper = safety.gripper();
    let (decision, switch) = arbiter.tick(now, operator, gripper);
    let command = match decision {
        Decision::Policy => safety.process(now, policy),
        Decision::Operator(c) => {
            let a = c.calvin_action(gripper.as_calvin());
            let op = ActionRequest::from_calvin_relative(c.t, a, REL_XYZ_M, REL_EULER_RAD);
            safety.process(now, Some(&op))
        }
        Decision::Hold(cause) => safety.process_hold(now, cause.event_kind()),
    };
    (decision, switch, command)
}

/// Chunk playing + teleop arbitration + safety layer, one tick at a time.
pub struct Actuator {
    safety: SafetyLayer,
    rate: f64,
    scale: ActionScale,
    chunk: Option<Chunk>,
    teleop: Option<(Arbiter, Arc<dyn OperatorFeed>)>,
    teleop_stats: Option<TeleopStats>,
    events: BTreeMap<String, u64>,
}

impl std::fmt::Debug for Actuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actuator")
            .field("rate", &self.rate)
            .field("chunk", &self.chunk)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Actuator {
    /// An actuator at the policy bundle's control rate `rate_hz` (Hz) and
    /// action `scale` under the `safety` envelope (its rate is filled from
    /// `rate_hz`, or must agree).
    pub fn new(
        safety: SafetyConfig,
        rate_hz: f64,
        scale: ActionScale,
        teleop: Option<&TeleopLink>,
    ) -> Result<Self> {
        let safety = safety
            .with_control_rate(rate_hz, "the policy")
            .map_err(|e| anyhow!("safety config: {e}"))?;
        let stale = safety.stale_timeout_s;
        let safety = SafetyLayer::new(safety).map_err(|e| anyhow!("safety config: {e}"))?;
        Ok(Self {
            safety,
            rate: rate_hz,
            scale,
            chunk: None,
            teleop: teleop.map(|t| (Arbiter::new(t.control, t.takeover, stale), t.feed.clone())),
            teleop_stats: None,
            events: BTreeMap::new(),
        })
    }

    /// A new episode from the measured pose and gripper at time `t` (s): the
    /// layer is re-initialized and the chunk dropped.
    pub fn reset(&mut self, t: f64, tcp: TcpPose, gripper: GripperState) -> Result<()> {
        self.collect_events();
        self.safety
            .reset(tcp, gripper, t)
            .map_err(|e| anyhow!("safety reset: {e}"))?;
        self.chunk = None;
        if let Some((arbiter, _)) = &mut self.teleop {
            arbiter.reset();
        }
        Ok(())
    }

    /// Forgets the chunk (a new instruction): the arm holds until the next plan.
    pub fn clear_chunk(&mut self) {
        self.chunk = None;
    }

    /// An observation captured at `t` (s): camera liveness and the measured pose.
    pub fn observe(&mut self, t: f64, robot_obs: &[f64]) {
        self.safety.on_frame(t);
        self.safety
            .on_proprio(t, crate::io::robot::tcp_from_robot_obs(robot_obs));
    }

    /// Camera liveness only: a frame was captured at `t` (s).
    pub fn on_frame(&mut self, t: f64) {
        self.safety.on_frame(t);
    }

    /// A newer plan arrived: its chunk replaces the current one.
    pub fn set_chunk(&mut self, chunk: Chunk) {
        self.chunk = Some(chunk);
    }

    /// Whether a chunk has arrived since the last reset.
    pub fn has_chunk(&self) -> bool {
        self.chunk.is_some()
    }

    /// The control rate (Hz).
    pub fn rate_hz(&self) -> f64 {
        self.rate
    }

    /// The safety layer (its config and state).
    pub fn safety(&self) -> &SafetyLayer {
        &self.safety
    }

    /// The safety layer's command for control time `now` (s): the chunk's
    /// request, or the arbiter's choice when an operator is in the loop.
    /// `None`: the layer is quiet.
    pub fn tick(&mut self, now: f64) -> Option<SafeCommand> {
        let req = self
            .chunk
            .as_ref()
            .and_then(|c| c.request_at(now, self.rate, self.scale));
        let command = match &mut self.teleop {
            None => self.safety.process(now, req.as_ref()),
            Some((arbiter, feed)) => {
                let operator = feed.poll(now);
                let (decision, switch, command) =
                    arbitrate(&mut self.safety, arbiter, now, req.as_ref(), operator);
                let stats = self.teleop_stats.get_or_insert_with(Default::default);
                stats.count(decision, switch);
                command
            }
        };
        // Counted as they happen: the layer's own buffer keeps only the newest 4 096.
        self.collect_events();
        command
    }

    /// E-stop: latches the layer and returns the holds it sends before going
    /// quiet (at most `hold_repeats`).
    pub fn halt(&mut self, now: f64) -> Vec<SafeCommand> {
        self.safety.estop();
        let mut out = vec![];
        for _ in 0..self.safety.config().hold_repeats {
            match self.safety.process(now, None) {
                Some(cmd) => out.push(cmd),
                None => break,
            }
        }
        self.collect_events();
        out
    }

    fn collect_events(&mut self) {
        for e in self.safety.drain_events() {
            *self.events.entry(event_name(&e)).or_default() += 1;
        }
    }

    /// Safety events by kind since the last call (clamps, holds and their causes).
    pub fn take_events(&mut self) -> BTreeMap<String, u64> {
        self.collect_events();
        std::mem::take(&mut self.events)
    }

    /// Who drove the ticks (teleop runs).
    pub fn teleop_stats(&self) -> Option<&TeleopStats> {
        self.teleop_stats.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_plays_by_time_and_holds_past_its_end() {
        let c = Chunk {
            t: 1.0,
            actions: vec![
                [0.5, 0., 0., 0., 0., 0., -1.],
                [0.25, 0., 0., 0., 0., 0., 1.],
            ],
            relative: true,
        };
        assert_eq!(c.action_at(1.0, 30.0).unwrap()[0], 0.5);
        assert_eq!(c.action_at(1.0 + 1.0 / 30.0, 30.0).unwrap()[0], 0.25);
        assert_eq!(
            c.action_at(1.0 + 2.0 / 30.0, 30.0).unwrap(),
            [0., 0., 0., 0., 0., 0., 1.]
        );
        let abs = Chunk {
            relative: false,
            ..c.clone()
        };
        assert_eq!(abs.action_at(5.0, 30.0).unwrap()[0], 0.25);
        let empty = Chunk {
            actions: vec![],
            ..c
        };
        assert!(empty.action_at(1.0, 30.0).is_none());
    }

    #[test]
    fn the_bundles_action_scale_is_what_reaches_the_simulator() {
        // A bundle whose relative unit is 0.01 m / 0.025 rad (half CALVIN's):
        // one unit of its action is half a unit of the simulator's.
        let scale = ActionScale {
            xyz_m: 0.01,
            euler_rad: 0.025,
        };
        let mut act = Actuator::new(SafetyConfig::calvin_default(), 30.0, scale, None).unwrap();
        let tcp = TcpPose::new([0.0, -0.1, 0.5], [std::f64::consts::PI, 0.0, 1.5]);
        act.reset(0.0, tcp, GripperState::Open).unwrap();
        let mut obs = vec![0.0; 15];
        obs[..3].copy_from_slice(&[0.0, -0.1, 0.5]);
        obs[3..6].copy_from_slice(&[std::f64::consts::PI, 0.0, 1.5]);
        act.observe(0.0, &obs);
        act.set_chunk(Chunk::single(
            0.0,
            [1.0, -0.5, 0.0, 1.0, 0.0, 0.0, 1.0],
            true,
        ));
        let cmd = act.tick(0.0).unwrap();
        assert!((cmd.target.position.x - 0.01).abs() < 1e-12);
        let a = sim_action(Some(&cmd), &tcp, 1.0);
        let want = [0.5, -0.25, 0.0, 0.5, 0.0, 0.0, 1.0];
        for (x, w) in a.iter().zip(want) {
            assert!((x - w).abs() < 1e-9, "{a:?}");
        }
        assert!(act.take_events().is_empty());
    }

    #[test]
    fn every_safety_event_is_counted_even_past_the_layers_buffer() {
        // A box that clamps x on every tick, for more ticks than the layer buffers.
        let mut cfg = SafetyConfig::calvin_default();
        cfg.workspace_max[0] = 0.0;
        let mut act = Actuator::new(cfg, 30.0, ActionScale::default(), None).unwrap();
        let tcp = TcpPose::new([0.0, -0.1, 0.5], [std::f64::consts::PI, 0.0, 1.5]);
        act.reset(0.0, tcp, GripperState::Open).unwrap();
        let mut obs = vec![0.0; 15];
        obs[..3].copy_from_slice(&[0.0, -0.1, 0.5]);
        obs[3..6].copy_from_slice(&[std::f64::consts::PI, 0.0, 1.5]);
        let n = 5000;
        for k in 0..n {
            let t = k as f64 / 30.0;
            act.observe(t, &obs);
            act.set_chunk(Chunk::single(t, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], true));
            assert!(act.tick(t).is_some());
        }
        assert_eq!(act.take_events().get("ClampedPosition"), Some(&n));
    }
}
