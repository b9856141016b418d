//! The pipeline: [`run`] wires the stages (ingest → plan → actuate, monitor on
//! the side) on threads and channels, and hands back what the run measured.
//!
//! ```text
//!  camera + proprio ──▶ ingest ──▶ plan (Policy) ──▶ actuate (Actuator: chunk → safety) ──▶ robot
//!                                       └──▶ monitor (imagined futures, lowest priority)
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;

use super::actuate::{check_control_rate, Actuator};
use super::arbiter::{Control, Decision, Switch, TakeoverConfig};
use super::metrics::{Histogram, Summary};
use super::operator::OperatorFeed;
use super::planner::{Planner, Renderer};
use super::queue::DropOldest;
use super::realtime::PhaseAligner;
use super::stages::{
    drive, ActuateStage, Clock, IngestStage, MonitorReport, MonitorStage, PlanReport, PlanStage,
    RealTimeClock,
};
use crate::base::clock::now_s;
use crate::io::robot::RobotIo;
use crate::io::RgbImage;
use crate::policy::Plan;
use crate::safety::{GripperState, SafetyConfig};

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The safety envelope.
    pub safety: SafetyConfig,
    /// Instruction given to the planner.
    pub instruction: String,
    /// Stop after this many actuate ticks (None: until the source ends or stop is set).
    pub max_steps: Option<u64>,
    /// Monitor queue capacity (plans); the oldest is dropped when full.
    pub monitor_queue: usize,
    /// Imagined strips kept in the report (the newest ones).
    pub keep_imagined: usize,
    /// How long ingest waits for an observation before failing (s).
    pub frame_timeout_s: f64,
    /// Real time: phase-align the actuate clock with the camera. After each
    /// plan the clock is delayed (never advanced: periods only lengthen, so the
    /// safety layer's per-tick limits stay conservative) until ticks land this
    /// long after plans become ready (s). `None`: a free-running clock.
    pub phase_lead_s: Option<f64>,
    /// Real time: run the actuate loop under SCHED_FIFO at this priority
    /// (1–99) while the run lasts, when the process may (CAP_SYS_NICE or root;
    /// otherwise it logs and keeps the normal priority). `None`: never.
    pub actuate_rt_priority: Option<i32>,
    /// Teleop (shadow or takeover): the operator's stream and how control is
    /// shared, arbitrated every actuate tick before the safety layer.
    /// `None`: the policy alone.
    pub teleop: Option<TeleopLink>,
}

/// The operator's side of a run: see [`super::arbiter`].
#[derive(Clone)]
pub struct TeleopLink {
    /// How control is shared (shadow or takeover).
    pub control: Control,
    /// Deadband and release time.
    pub takeover: TakeoverConfig,
    /// Where operator messages come from (the ROS subscription's inbox).
    pub feed: Arc<dyn OperatorFeed>,
}

impl std::fmt::Debug for TeleopLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeleopLink")
            .field("control", &self.control)
            .field("takeover", &self.takeover)
            .finish_non_exhaustive()
    }
}

/// Who drove the ticks of a teleop run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TeleopStats {
    /// Ticks the policy's request went to the safety layer.
    pub policy_ticks: u64,
    /// Ticks the operator's command went to the safety layer.
    pub operator_ticks: u64,
    /// Ticks held by the arbiter (stale or corrupt operator stream).
    pub held_ticks: u64,
    /// Takeovers (takeover mode).
    pub interventions: u64,
    /// Hand-backs to the policy.
    pub hand_backs: u64,
}

impl TeleopStats {
    /// Counts one arbitrated tick: who drove it, and a change of driver.
    pub fn count(&mut self, decision: Decision, switch: Option<Switch>) {
        match switch {
            Some(Switch::TakeOver) => self.interventions += 1,
            Some(Switch::HandBack) => self.hand_backs += 1,
            None => {}
        }
        match decision {
            Decision::Policy => self.policy_ticks += 1,
            Decision::Operator(_) => self.operator_ticks += 1,
            Decision::Hold(_) => self.held_ticks += 1,
        }
    }
}

impl RuntimeConfig {
    /// Defaults around a safety config and an instruction.
    pub fn new(safety: SafetyConfig, instruction: &str) -> Self {
        Self {
            safety,
            instruction: instruction.into(),
            max_steps: None,
            monitor_queue: 4,
            keep_imagined: 16,
            frame_timeout_s: 30.0,
            phase_lead_s: Some(0.001),
            actuate_rt_priority: Some(80),
            teleop: None,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Actuate ticks.
    pub ticks: u64,
    /// Commands sent (Move or Hold).
    pub commands: u64,
    /// Of which Hold.
    pub holds: u64,
    /// Plans made.
    pub plans: u64,
    /// Frames ingested.
    pub frames: u64,
    /// Capture → command that first used the plan made from that frame.
    pub obs_to_command: Summary,
    /// Capture → plan ready for actuate (ingest + plan + hand-off).
    pub obs_to_plan: Summary,
    /// Planner time per frame.
    pub plan_time: Summary,
    /// Actuate tick lateness against its deadline (real-time mode only).
    pub actuate_jitter: Summary,
    /// Monitor renders done.
    pub monitor_frames: u64,
    /// Plans the monitor dropped because its queue was full.
    pub dropped_monitor_frames: u64,
    /// Monitor render time.
    pub render_time: Summary,
    /// Safety events by kind.
    pub safety_events: std::collections::BTreeMap<String, u64>,
    /// Teleop runs: who drove.
    pub teleop: Option<TeleopStats>,
    /// Why the run ended.
    pub ended_by: String,
    /// Newest imagined strips `(plan control step, image)`.
    #[serde(skip)]
    pub imagined: Vec<(usize, RgbImage)>,
}

/// Runs the pipeline until the source ends, `cfg.max_steps` ticks pass, or
/// `stop` is set (Ctrl-C). The robot is held on the way out. The policy
/// bundle owns the control rate: an io at another rate is refused at start.
pub fn run(
    io: Box<dyn RobotIo>,
    mut planner: Box<dyn Planner>,
    renderer: Option<Box<dyn Renderer>>,
    cfg: RuntimeConfig,
    stop: Arc<AtomicBool>,
) -> Result<RunReport> {
    let lockstep = io.lockstep();
    let rate = planner.control_rate_hz();
    check_control_rate(rate, io.control_rate_hz(), "robot io")?;
    let initial_tcp = io.initial_tcp();
    let (source, sink) = io.split();
    let mut actuator = Actuator::new(
        cfg.safety.clone(),
        rate,
        planner.action_scale(),
        cfg.teleop.as_ref(),
    )?;
    actuator.reset(
        if lockstep { 0.0 } else { now_s() },
        initial_tcp,
        GripperState::Open,
    )?;
    planner.reset(&cfg.instruction)?;
    let size = planner.image_size();

    // Channels: lockstep keeps every message; real time keeps the newest frame.
    let (ingest_tx, ingest_rx) = if lockstep {
        crossbeam_channel::unbounded()
    } else {
        crossbeam_channel::bounded(1)
    };
    let (plan_tx, plan_rx) = crossbeam_channel::unbounded();
    let monitor = Arc::new(DropOldest::<Arc<Plan>>::new(cfg.monitor_queue));
    let last_frame_t = Arc::new(AtomicU64::new(f64::NAN.to_bits()));
    let failed = Mutex::new(None::<anyhow::Error>);

    let ingest = IngestStage {
        source,
        last_frame_t: last_frame_t.clone(),
        out: ingest_tx,
        latest: (!lockstep).then(|| ingest_rx.clone()),
        size,
        timeout: Duration::from_secs_f64(cfg.frame_timeout_s),
        frames: 0,
    };
    let plan = PlanStage {
        planner,
        input: ingest_rx,
        out: plan_tx,
        monitor: renderer.is_some().then(|| monitor.clone()),
        report: PlanReport::default(),
    };
    let monitor_stage = renderer.map(|renderer| MonitorStage {
        renderer,
        queue: monitor.clone(),
        keep: cfg.keep_imagined,
        report: MonitorReport {
            render_time: Histogram::default(),
            rendered: 0,
            imagined: Default::default(),
        },
    });
    let clock = if lockstep {
        Clock::Lockstep
    } else {
        Clock::RealTime(Box::new(RealTimeClock {
            rt_priority: cfg.actuate_rt_priority,
            phase: PhaseAligner::new(1.0 / rate, cfg.phase_lead_s),
            last_frame_t,
            start: 0.0,
            k: 0,
            source_ended: false,
            thread: None,
        }))
    };
    let actuate = ActuateStage {
        actuator,
        sink,
        input: plan_rx,
        clock,
        max_steps: cfg.max_steps,
        report: RunReport::default(),
        latency: Histogram::default(),
        jitter: Histogram::default(),
        pending_latency: None,
    };

    std::thread::scope(|scope| -> Result<RunReport> {
        let (stop, failed) = (&*stop, &failed);
        let ingest = std::thread::Builder::new()
            .name("vw2-ingest".into())
            .spawn_scoped(scope, move || drive(ingest, Some(stop), failed))?;
        let plan = std::thread::Builder::new()
            .name("vw2-plan".into())
            .spawn_scoped(scope, move || drive(plan, None, failed))?;
        let monitor_thread = monitor_stage
            .map(|m| {
                std::thread::Builder::new()
                    .name("vw2-monitor".into())
                    .spawn_scoped(scope, move || drive(m, None, failed))
            })
            .transpose()?;
        // Actuate on this thread. Its stop holds the robot and closes the
        // sink; dropping its plan receiver ends the planner.
        let ended = drive(actuate, Some(stop), failed);
        stop.store(true, Ordering::Relaxed);
        let mut report = ended.report;
        report.ended_by = ended.why.to_string();
        report.frames = ingest
            .join()
            .map_err(|_| anyhow!("ingest thread panicked"))?
            .report;
        let p = plan
            .join()
            .map_err(|_| anyhow!("plan thread panicked"))?
            .report;
        report.plan_time = p.plan_time.summary();
        report.obs_to_plan = p.obs_to_plan.summary();
        report.plans = p.plans;
        if let Some(h) = monitor_thread {
            let m = h
                .join()
                .map_err(|_| anyhow!("monitor thread panicked"))?
                .report;
            report.render_time = m.render_time.summary();
            report.monitor_frames = m.rendered;
            report.imagined = m.imagined.into_iter().collect();
        }
        report.dropped_monitor_frames = monitor.dropped.load(Ordering::Relaxed);
        if let Some(e) = failed.lock().expect("poisoned").take() {
            return Err(e);
        }
        Ok(report)
    })
}
