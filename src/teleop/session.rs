//! The teleop control loop: per tick, the policy plans on the observation,
//! the operator's message is polled, the [`Arbiter`] decides who drives, and
//! the chosen request goes through the [`SafetyLayer`] to the simulator, in
//! lockstep (one tick per frame, like `vw2 run` on a simulator).
//!
//! [`Pipeline`] is the part without the simulator (arbiter + safety +
//! conversion to the env's action): the live loop and [`replay`] share it,
//! so a recorded run fed its recorded inputs gives the same log.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use super::arbiter::{Arbiter, Control, Decision, HoldCause, Switch, TakeoverConfig};
use super::operator::{Operator, OperatorCommand, OperatorContext};
use super::{Driver, Mode};
use crate::base::units::{REL_EULER_RAD, REL_XYZ_M};
use crate::eval::chains::Chain;
use crate::eval::policy::EvalPolicy;
use crate::eval::sentences::validation_sentence;
use crate::io::env_adapter::EnvAdapter;
use crate::io::robot::tcp_from_robot_obs;
use crate::io::Observation;
use crate::runtime::actuate::{arbitrate, event_name};
use crate::safety::{
    ActionRequest, CommandKind, GripperState, SafeCommand, SafetyConfig, SafetyEvent, SafetyLayer,
    TcpPose,
};

/// Who issued what reached the env this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Issuer {
    /// The policy's request (through the safety layer).
    Policy,
    /// The operator's command (through the safety layer).
    Operator,
    /// A hold decided by the arbiter (stale or corrupt operator stream).
    Arbiter,
}

/// The command the safety layer emitted, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CommandLog {
    /// `true` for a hold, `false` for a move.
    pub hold: bool,
    /// Target pose x, y, z (m), roll, pitch, yaw (rad).
    pub target: [f64; 6],
    /// Commanded gripper (±1).
    pub gripper: f64,
    /// Commanded velocity x, y, z (m/s), roll, pitch, yaw rates (rad/s).
    pub velocity: [f64; 6],
}

impl CommandLog {
    fn from_command(c: &SafeCommand) -> Self {
        let target = pose6(&c.target);
        let mut velocity = [0.0; 6];
        for i in 0..3 {
            velocity[i] = c.linear_velocity[i];
            velocity[i + 3] = c.angular_velocity[i];
        }
        Self {
            hold: c.kind == CommandKind::Hold,
            target,
            gripper: c.gripper.as_calvin(),
            velocity,
        }
    }
}

/// One control tick, as logged (`ticks.jsonl`). The inputs (`t`, `tcp`,
/// `policy`, `operator`) are enough to recompute the outputs ([`replay`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TickLog {
    /// Which party's run this is (`shadow`, `takeover`, `policy`, `operator`).
    pub party: String,
    /// Chain index in the run's chain list.
    pub chain: usize,
    /// Subtask index in the chain.
    pub subtask: usize,
    /// Step in the subtask.
    pub step: usize,
    /// Control time (s) since the chain started.
    pub t: f64,
    /// Measured TCP pose x, y, z (m), roll, pitch, yaw (rad).
    pub tcp: [f64; 6],
    /// Measured gripper: CALVIN's last gripper action (`robot_obs[14]`, ±1).
    pub gripper_obs: f64,
    /// The policy's action this tick (CALVIN relative units), when it planned.
    #[serde(with = "super::operator::nan_json::option7")]
    pub policy: Option<[f64; 7]>,
    /// The operator message that arrived this tick, if any.
    pub operator: Option<OperatorCommand>,
    /// Who drove.
    pub issuer: Issuer,
    /// Why the arbiter held, when it did.
    pub hold_cause: Option<HoldCause>,
    /// The operator took over (`take_over`) or handed back (`hand_back`) this tick.
    pub switch: Option<String>,
    /// The safety layer's command; `None` when it was quiet.
    pub command: Option<CommandLog>,
    /// The CALVIN relative action the env was stepped with.
    pub executed: [f64; 7],
    /// Safety events of this tick (`Debug` names).
    pub events: Vec<String>,
}

/// One takeover, start to end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intervention {
    /// Chain index.
    pub chain: usize,
    /// Subtask index in the chain.
    pub subtask: usize,
    /// The subtask's task.
    pub task: String,
    /// Step (in the subtask) of the first operator tick.
    pub start_step: usize,
    /// Step of the hand-back, or the subtask's last step.
    pub end_step: usize,
    /// Control time of the takeover (s).
    pub start_t: f64,
    /// Control time of the hand-back or of the subtask's end (s).
    pub end_t: f64,
    /// Why it started.
    pub reason: String,
    /// How it ended: `released` or `subtask_ended`.
    pub ended_by: String,
    /// Mean of the policy's actions over the 0.5 s before the takeover (CALVIN units).
    pub policy_before: [f64; 7],
    /// Mean TCP speed over the 0.5 s before the takeover (m/s).
    pub speed_before_m_s: f64,
}

/// Shadow-mode agreement of one subtask.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Ticks with both a policy action and an operator command.
    pub ticks: usize,
    /// Ticks where both translations were non-negligible (norm > 0.05 units).
    pub cosine_ticks: usize,
    /// Mean cosine between policy and operator translation over those ticks.
    pub mean_cosine: f64,
    /// Mean absolute error per motion axis (CALVIN units).
    pub mae: [f64; 6],
    /// Share of ticks where both asked for the same gripper state (0–1).
    pub gripper_agreement: f64,
}

/// One subtask's outcome and measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubtaskRun {
    /// Subtask index in the chain.
    pub subtask: usize,
    /// The oracle's task name.
    pub task: String,
    /// The oracle reported success.
    pub success: bool,
    /// Control ticks taken.
    pub steps: usize,
    /// Time taken (s).
    pub time_s: f64,
    /// Path length of the measured TCP (m).
    pub path_length_m: f64,
    /// RMS jerk of the measured TCP position (m/s³).
    pub jerk_rms: f64,
    /// Changes of the executed gripper command.
    pub gripper_toggles: usize,
    /// Ticks driven by the policy, the operator, held by the arbiter.
    pub ticks_policy: usize,
    /// See `ticks_policy`.
    pub ticks_operator: usize,
    /// See `ticks_policy`.
    pub ticks_held: usize,
    /// Shadow mode only.
    pub agreement: Option<Agreement>,
}

/// One chain of one party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainRun {
    /// Chain index in the run's chain list.
    pub chain: usize,
    /// The chain's tasks.
    pub tasks: Vec<String>,
    /// Subtasks completed in a row.
    pub completed: usize,
    /// Per attempted subtask.
    pub subtasks: Vec<SubtaskRun>,
    /// Takeovers (takeover mode).
    pub interventions: Vec<Intervention>,
    /// Safety events by kind.
    pub safety_events: std::collections::BTreeMap<String, u64>,
}

/// Where the loop sends each tick (log files, datasets, bags).
pub trait TickSink {
    /// One tick, with the observation the tick acted on.
    fn tick(&mut self, log: &TickLog, obs: &Observation) -> Result<()>;
    /// A subtask ended (`instruction` is what the party was told).
    fn end_subtask(
        &mut self,
        party: &str,
        chain: usize,
        run: &SubtaskRun,
        instruction: &str,
    ) -> Result<()>;
    /// A takeover or hand-back, with the frame it happened on.
    fn switch(&mut self, _log: &TickLog, _obs: &Observation) -> Result<()> {
        Ok(())
    }
}

/// What one [`Pipeline::tick`] did.
#[derive(Debug, Clone)]
pub struct TickOutcome {
    /// Who drove.
    pub issuer: Issuer,
    /// Why the arbiter held.
    pub hold_cause: Option<HoldCause>,
    /// A driver change this tick.
    pub switch: Option<Switch>,
    /// The safety layer's command.
    pub command: Option<SafeCommand>,
    /// The env action (CALVIN relative units).
    pub executed: [f64; 7],
    /// Safety events of this tick.
    pub events: Vec<SafetyEvent>,
}

/// Arbiter + safety layer + conversion to the env's action: everything
/// between the two parties' requests and the simulator.
#[derive(Debug, Clone)]
pub struct Pipeline {
    arbiter: Arbiter,
    safety: SafetyLayer,
}

impl Pipeline {
    /// A pipeline for `control` under the `safety` envelope.
    pub fn new(control: Control, takeover: TakeoverConfig, safety: SafetyConfig) -> Result<Self> {
        takeover.validate()?;
        let stale = safety.stale_timeout_s;
        let safety = SafetyLayer::new(safety).map_err(|e| anyhow!("safety config: {e}"))?;
        Ok(Self {
            arbiter: Arbiter::new(control, takeover, stale),
            safety,
        })
    }

    /// Who drives now.
    pub fn driver(&self) -> Driver {
        self.arbiter.driver()
    }

    /// The safety layer (its config and state).
    pub fn safety(&self) -> &SafetyLayer {
        &self.safety
    }

    /// A chain starts at control time `t` (s) from the measured pose and gripper.
    pub fn begin_chain(&mut self, t: f64, tcp: TcpPose, gripper: GripperState) -> Result<()> {
        self.safety
            .reset(tcp, gripper, t)
            .map_err(|e| anyhow!("safety reset: {e}"))?;
        self.arbiter.reset();
        Ok(())
    }

    /// A subtask starts: the mode's initial driver.
    pub fn begin_subtask(&mut self) {
        self.arbiter.reset();
    }

    /// One tick at control time `t` (s) with the measured pose, the policy's
    /// action (CALVIN relative units; `None` when the policy is not asked) and
    /// the operator message that arrived this tick.
    pub fn tick(
        &mut self,
        t: f64,
        tcp: TcpPose,
        policy: Option<[f64; 7]>,
        operator: Option<OperatorCommand>,
    ) -> TickOutcome {
        self.safety.on_frame(t);
        self.safety.on_proprio(t, tcp);
        let gripper = self.safety.gripper();
        // A party that has not planned yet (or a missing policy) holds.
        let req =
            policy.map(|a| ActionRequest::from_calvin_relative(t, a, REL_XYZ_M, REL_EULER_RAD));
        let (decision, switch, command) = arbitrate(
            &mut self.safety,
            &mut self.arbiter,
            t,
            req.as_ref(),
            operator,
        );
        let (issuer, hold_cause) = match decision {
            Decision::Policy => (Issuer::Policy, None),
            Decision::Operator(_) => (Issuer::Operator, None),
            Decision::Hold(cause) => (Issuer::Arbiter, Some(cause)),
        };
        // A quiet layer: the simulated arm gets no motion.
        let executed =
            crate::runtime::actuate::sim_action(command.as_ref(), &tcp, gripper.as_calvin());
        TickOutcome {
            issuer,
            hold_cause,
            switch,
            command,
            executed,
            events: self.safety.drain_events(),
        }
    }
}

/// Settings of one party's run over chains.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The run's mode.
    pub mode: Mode,
    /// How this party's run shares control.
    pub control: Control,
    /// Takeover settings.
    pub takeover: TakeoverConfig,
    /// The safety envelope (owns the control rate and the stale timeout).
    pub safety: SafetyConfig,
    /// Step budget per subtask (CALVIN: 360).
    pub ep_len: usize,
    /// Pace ticks at the control rate in wall time (a person at the keys);
    /// `false`: as fast as the simulator steps.
    pub realtime: bool,
}

impl SessionConfig {
    /// The party name of this run in logs and reports.
    pub fn party(&self) -> &'static str {
        match self.control {
            Control::Shadow => "shadow",
            Control::Takeover => "takeover",
            Control::PolicyOnly => "policy",
            Control::OperatorOnly => "operator",
        }
    }
}

fn pose6(p: &TcpPose) -> [f64; 6] {
    let mut out = [0.0; 6];
    for (i, o) in out.iter_mut().enumerate() {
        *o = p.axis(i);
    }
    out
}

fn switch_name(s: Switch) -> String {
    match s {
        Switch::TakeOver => "take_over".into(),
        Switch::HandBack => "hand_back".into(),
    }
}

/// Path length (m), RMS jerk (m/s³) of positions sampled every `dt` s.
pub fn path_and_jerk(positions: &[[f64; 3]], dt: f64) -> (f64, f64) {
    let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let path = positions
        .windows(2)
        .map(|w| norm([w[1][0] - w[0][0], w[1][1] - w[0][1], w[1][2] - w[0][2]]))
        .sum();
    let mut sq = 0.0;
    let mut n = 0usize;
    for w in positions.windows(4) {
        let mut j = [0.0; 3];
        for (a, ja) in j.iter_mut().enumerate() {
            *ja = (w[3][a] - 3.0 * w[2][a] + 3.0 * w[1][a] - w[0][a]) / dt.powi(3);
        }
        let m = norm(j);
        sq += m * m;
        n += 1;
    }
    (path, if n > 0 { (sq / n as f64).sqrt() } else { 0.0 })
}

/// Accumulates shadow-mode agreement.
#[derive(Debug, Default)]
struct AgreementAcc {
    ticks: usize,
    cos_ticks: usize,
    cos_sum: f64,
    abs: [f64; 6],
    gripper_same: usize,
}

impl AgreementAcc {
    fn add(&mut self, policy: &[f64; 7], op: &OperatorCommand, gripper_now: f64) {
        self.ticks += 1;
        let o = op.calvin_action(gripper_now);
        for i in 0..6 {
            self.abs[i] += (policy[i] - o[i]).abs();
        }
        if (policy[6] > 0.0) == (o[6] > 0.0) {
            self.gripper_same += 1;
        }
        let dot: f64 = (0..3).map(|i| policy[i] * o[i]).sum();
        let np = (0..3).map(|i| policy[i] * policy[i]).sum::<f64>().sqrt();
        let no = (0..3).map(|i| o[i] * o[i]).sum::<f64>().sqrt();
        if np > 0.05 && no > 0.05 {
            self.cos_ticks += 1;
            self.cos_sum += dot / (np * no);
        }
    }
    fn finish(&self) -> Agreement {
        let n = self.ticks.max(1) as f64;
        Agreement {
            ticks: self.ticks,
            cosine_ticks: self.cos_ticks,
            mean_cosine: if self.cos_ticks > 0 {
                self.cos_sum / self.cos_ticks as f64
            } else {
                0.0
            },
            mae: self.abs.map(|a| a / n),
            gripper_agreement: self.gripper_same as f64 / n,
        }
    }
}

/// One party's run of one chain with CALVIN's protocol (one reset, up to
/// `ep_len` ticks per subtask, the oracle after every step, stop at the first
/// failure). `policy` is required unless the control is operator-only;
/// `operator` unless it is policy-only.
#[allow(clippy::too_many_arguments)]
pub fn run_chain(
    env: &mut EnvAdapter,
    mut policy: Option<&mut dyn EvalPolicy>,
    mut operator: Option<&mut dyn Operator>,
    chain: &Chain,
    index: usize,
    cfg: &SessionConfig,
    sink: &mut dyn TickSink,
) -> Result<ChainRun> {
    let needs_policy = cfg.control != Control::OperatorOnly;
    let needs_operator = cfg.control != Control::PolicyOnly;
    anyhow::ensure!(
        !needs_policy || policy.is_some(),
        "{} run: no policy given",
        cfg.party()
    );
    anyhow::ensure!(
        !needs_operator || operator.is_some(),
        "{} run: no operator given",
        cfg.party()
    );
    let dt = cfg.safety.dt();
    let party = cfg.party().to_string();
    let mut pipe = Pipeline::new(cfg.control, cfg.takeover, cfg.safety.clone())?;
    let mut obs = env
        .reset(Some(&chain.robot_obs), Some(&chain.scene_obs))
        .with_context(|| format!("chain {index}: reset"))?;
    if let Some(p) = policy.as_deref_mut() {
        p.begin_chain(index)?;
    }
    let tcp0 = tcp_from_robot_obs(&obs.robot_obs);
    let gripper0 = GripperState::from_signal(obs.robot_obs.get(14).copied().unwrap_or(1.0));
    pipe.begin_chain(0.0, tcp0, gripper0)?;
    let mut out = ChainRun {
        chain: index,
        tasks: chain.tasks.clone(),
        completed: 0,
        subtasks: vec![],
        interventions: vec![],
        safety_events: Default::default(),
    };
    let mut tick = 0usize;
    let wall0 = std::time::Instant::now();
    for (k, task) in chain.tasks.iter().enumerate() {
        let instruction = validation_sentence(task).unwrap_or(task.as_str());
        if let Some(p) = policy.as_deref_mut().filter(|_| needs_policy) {
            p.reset(task, instruction)?;
        }
        if let Some(o) = operator.as_deref_mut().filter(|_| needs_operator) {
            o.reset(task, instruction)?;
        }
        pipe.begin_subtask();
        // The policy's newest chunk, played by control time as the runtime plays it.
        let mut chunk: Option<crate::runtime::actuate::Chunk> = None;
        let start_info = env.info()?;
        let mut positions = vec![];
        let mut counts = [0usize; 3];
        let mut toggles = 0usize;
        let mut last_gripper: Option<f64> = None;
        let mut agreement = AgreementAcc::default();
        let mut recent: std::collections::VecDeque<([f64; 7], [f64; 3])> = Default::default();
        let mut open: Option<Intervention> = None;
        let mut success = false;
        let mut steps = 0usize;
        let recent_len = ((0.5 / dt).round() as usize).max(1);
        while steps < cfg.ep_len {
            let t = tick as f64 * dt;
            if cfg.realtime {
                let ahead = t - wall0.elapsed().as_secs_f64();
                if ahead > 0.0 {
                    std::thread::sleep(std::time::Duration::from_secs_f64(ahead));
                }
            }
            let tcp = tcp_from_robot_obs(&obs.robot_obs);
            positions.push([tcp.axis(0), tcp.axis(1), tcp.axis(2)]);
            if let Some(p) = policy.as_deref_mut().filter(|_| needs_policy) {
                if let Some(c) = p.step(&obs, t, env)? {
                    chunk = Some(c);
                }
            }
            let policy_action = chunk.as_ref().and_then(|c| c.action_at(t, 1.0 / dt));
            let ctx = OperatorContext {
                mode: cfg.mode,
                driver: pipe.driver(),
                t,
                subtask_elapsed_s: steps as f64 * dt,
            };
            let msg = match operator.as_deref_mut().filter(|_| needs_operator) {
                Some(o) => o.poll(&ctx, &obs, env)?,
                None => None,
            };
            let gripper_before = pipe.safety().gripper().as_calvin();
            let o = pipe.tick(t, tcp, policy_action, msg);
            counts[match o.issuer {
                Issuer::Policy => 0,
                Issuer::Operator => 1,
                Issuer::Arbiter => 2,
            }] += 1;
            if let (Control::Shadow, Some(pa), Some(m)) = (cfg.control, policy_action, msg) {
                if m.non_finite_field().is_none() {
                    agreement.add(&pa, &m, gripper_before);
                }
            }
            if last_gripper.is_some_and(|g| g != o.executed[6]) {
                toggles += 1;
            }
            last_gripper = Some(o.executed[6]);
            for e in &o.events {
                *out.safety_events.entry(event_name(e)).or_default() += 1;
            }
            let log = TickLog {
                party: party.clone(),
                chain: index,
                subtask: k,
                step: steps,
                t,
                tcp: pose6(&tcp),
                gripper_obs: obs.robot_obs.get(14).copied().unwrap_or(1.0),
                policy: policy_action,
                operator: msg,
                issuer: o.issuer,
                hold_cause: o.hold_cause,
                switch: o.switch.map(switch_name),
                command: o.command.as_ref().map(CommandLog::from_command),
                executed: o.executed,
                events: o.events.iter().map(|e| format!("{:?}", e.kind)).collect(),
            };
            match o.switch {
                Some(Switch::TakeOver) => {
                    let n = recent.len().max(1) as f64;
                    let mut before = [0.0; 7];
                    for (a, _) in &recent {
                        for i in 0..7 {
                            before[i] += a[i] / n;
                        }
                    }
                    let speed = match (recent.front(), recent.back()) {
                        (Some(a), Some(b)) if recent.len() > 1 => {
                            let d: f64 = (0..3)
                                .map(|i| (b.1[i] - a.1[i]).powi(2))
                                .sum::<f64>()
                                .sqrt();
                            d / ((recent.len() - 1) as f64 * dt)
                        }
                        _ => 0.0,
                    };
                    open = Some(Intervention {
                        chain: index,
                        subtask: k,
                        task: task.clone(),
                        start_step: steps,
                        end_step: steps,
                        start_t: t,
                        end_t: t,
                        reason: "operator input beyond the deadband".into(),
                        ended_by: String::new(),
                        policy_before: before,
                        speed_before_m_s: speed,
                    });
                    sink.switch(&log, &obs)?;
                }
                Some(Switch::HandBack) => {
                    if let Some(mut iv) = open.take() {
                        iv.end_step = steps;
                        iv.end_t = t;
                        iv.ended_by = "released".into();
                        out.interventions.push(iv);
                    }
                    sink.switch(&log, &obs)?;
                }
                None => {}
            }
            if let Some(pa) = policy_action {
                if recent.len() == recent_len {
                    recent.pop_front();
                }
                recent.push_back((pa, [tcp.axis(0), tcp.axis(1), tcp.axis(2)]));
            }
            sink.tick(&log, &obs)?;
            obs = env.step(&o.executed, true)?;
            steps += 1;
            tick += 1;
            let done = env.task_success(&start_info, &[task.as_str()])?;
            if done.iter().any(|d| d == task) {
                success = true;
                break;
            }
        }
        let tcp = tcp_from_robot_obs(&obs.robot_obs);
        positions.push([tcp.axis(0), tcp.axis(1), tcp.axis(2)]);
        if let Some(mut iv) = open.take() {
            iv.end_step = steps;
            iv.end_t = tick as f64 * dt;
            iv.ended_by = "subtask_ended".into();
            out.interventions.push(iv);
        }
        let (path_length_m, jerk_rms) = path_and_jerk(&positions, dt);
        let run = SubtaskRun {
            subtask: k,
            task: task.clone(),
            success,
            steps,
            time_s: steps as f64 * dt,
            path_length_m,
            jerk_rms,
            gripper_toggles: toggles,
            ticks_policy: counts[0],
            ticks_operator: counts[1],
            ticks_held: counts[2],
            agreement: (cfg.control == Control::Shadow).then(|| agreement.finish()),
        };
        sink.end_subtask(&party, index, &run, instruction)?;
        out.subtasks.push(run);
        if !success {
            break;
        }
        out.completed += 1;
    }
    Ok(out)
}

/// Recomputes the outputs of recorded ticks from their inputs (dora-style:
/// feed the recorded inputs, compare the outputs). `ticks` are one party's
/// ticks in order; chain and subtask boundaries restart the pipeline as the
/// live loop does.
pub fn replay(ticks: &[TickLog], cfg: &SessionConfig) -> Result<Vec<TickLog>> {
    let mut out = Vec::with_capacity(ticks.len());
    let mut pipe: Option<Pipeline> = None;
    let mut at: Option<(usize, usize)> = None;
    for rec in ticks {
        let tcp = TcpPose::new(
            [rec.tcp[0], rec.tcp[1], rec.tcp[2]],
            [rec.tcp[3], rec.tcp[4], rec.tcp[5]],
        );
        if at.map(|(c, _)| c) != Some(rec.chain) {
            let mut p = Pipeline::new(cfg.control, cfg.takeover, cfg.safety.clone())?;
            p.begin_chain(rec.t, tcp, GripperState::from_signal(rec.gripper_obs))?;
            pipe = Some(p);
        } else if at.map(|(_, s)| s) != Some(rec.subtask) {
            pipe.as_mut().expect("set above").begin_subtask();
        }
        at = Some((rec.chain, rec.subtask));
        let p = pipe.as_mut().expect("set above");
        let o = p.tick(rec.t, tcp, rec.policy, rec.operator);
        out.push(TickLog {
            issuer: o.issuer,
            hold_cause: o.hold_cause,
            switch: o.switch.map(switch_name),
            command: o.command.as_ref().map(CommandLog::from_command),
            executed: o.executed,
            events: o.events.iter().map(|e| format!("{:?}", e.kind)).collect(),
            ..rec.clone()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_jerk_of_a_line_and_a_constant_acceleration() {
        let dt = 0.1;
        // Constant velocity 1 m/s along x: path 0.9 m over 10 samples, no jerk.
        let line: Vec<[f64; 3]> = (0..10).map(|k| [k as f64 * dt, 0.0, 0.0]).collect();
        let (p, j) = path_and_jerk(&line, dt);
        assert!((p - 0.9).abs() < 1e-12 && j.abs() < 1e-6, "{p} {j}");
        // x = t³: jerk 6 m/s³ everywhere.
        let cubic: Vec<[f64; 3]> = (0..10)
            .map(|k| [(k as f64 * dt).powi(3), 0.0, 0.0])
            .collect();
        let (_, j) = path_and_jerk(&cubic, dt);
        assert!((j - 6.0).abs() < 1e-6, "{j}");
    }

    fn tcp() -> TcpPose {
        TcpPose::new([0.0, 0.0, 0.5], [std::f64::consts::PI, 0.0, 0.0])
    }

    #[test]
    fn shadow_pipeline_executes_only_the_operator() {
        let mut p = Pipeline::new(
            Control::Shadow,
            TakeoverConfig::default(),
            SafetyConfig::calvin_default(),
        )
        .unwrap();
        p.begin_chain(0.0, tcp(), GripperState::Open).unwrap();
        let dt = 1.0 / 30.0;
        for k in 0..20 {
            let t = k as f64 * dt;
            let op = OperatorCommand {
                t,
                motion: [0.0, 0.5, 0.0, 0.0, 0.0, 0.0],
                gripper: Some(1.0),
            };
            let o = p.tick(
                t,
                tcp(),
                Some([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]),
                Some(op),
            );
            assert_eq!(o.issuer, Issuer::Operator);
            // The policy asks for +x and a closed gripper; neither is executed.
            assert!(o.executed[0].abs() < 1e-9, "{:?}", o.executed);
            assert!(o.executed[1] >= 0.0);
            assert_eq!(o.executed[6], 1.0);
        }
    }

    #[test]
    fn the_switch_is_bumpless_and_a_stale_operator_holds() {
        let cfg = SafetyConfig::calvin_default();
        let accel = cfg.max_linear_accel;
        let mut p = Pipeline::new(Control::Takeover, TakeoverConfig::default(), cfg).unwrap();
        p.begin_chain(0.0, tcp(), GripperState::Open).unwrap();
        let dt = 1.0 / 30.0;
        let mut last_v: Option<[f64; 6]> = None;
        let mut switched = 0;
        let mut pose = tcp();
        for k in 0..120 {
            let t = k as f64 * dt;
            // Policy: full speed +x. Operator: full speed −x from tick 30 to 60.
            let motion = if (30..60).contains(&k) { -1.0 } else { 0.0 };
            let op = OperatorCommand {
                t,
                motion: [motion, 0.0, 0.0, 0.0, 0.0, 0.0],
                gripper: None,
            };
            let o = p.tick(t, pose, Some([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), Some(op));
            if o.switch.is_some() {
                switched += 1;
            }
            let c = o.command.expect("a command every tick");
            let v = CommandLog::from_command(&c).velocity;
            if let (Some(lv), false) = (last_v, c.kind == CommandKind::Hold) {
                let dv = (v[0] - lv[0]).abs();
                assert!(dv <= accel * dt + 1e-9, "tick {k}: Δv {dv} m/s");
            }
            last_v = Some(v);
            pose = c.target;
        }
        assert_eq!(switched, 2, "take over, then hand back");
        // The stream stops: holds, then quiet, and never the policy.
        let mut held = 0;
        for k in 120..200 {
            let t = k as f64 * dt;
            let o = p.tick(t, pose, Some([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), None);
            if (k as f64 - 119.0) * dt > 0.25 + 1e-9 {
                assert_eq!(o.issuer, Issuer::Arbiter);
                if let Some(c) = o.command {
                    assert_eq!(c.kind, CommandKind::Hold);
                    held += 1;
                }
                assert!(o.executed[..6].iter().all(|v| v.abs() < 1e-9));
            }
            // The arm follows every command (policy moves until the hold).
            if let Some(c) = &o.command {
                pose = c.target;
            }
        }
        assert!(held >= 1);
    }
}
