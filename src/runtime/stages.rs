//! The stages of the pipeline, each a [`Stage`] with the lifecycle of a
//! copper-rs `CuTask`: built by its constructor, `start`ed once on its thread,
//! `process`ed once per unit of work (one observation, one frame, one plan,
//! one control tick), `stop`ped once, when it hands back what it measured.
//! Messages between stages carry their time of validity: the capture time of
//! the frame they derive from.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::actuate::{Actuator, Chunk};
use super::ingest::to_rgb_resized;
use super::metrics::Histogram;
use super::pipeline::RunReport;
use super::planner::{Planner, Renderer};
use super::queue::DropOldest;
use super::realtime::{keep_off_actuate_cpu, lower_thread_priority, ActuateThread, PhaseAligner};
use crate::base::clock::{instant_at, now_s, seconds_at, sleep_until};
use crate::io::robot::{CommandSink, ObservationSource};
use crate::io::RgbImage;
use crate::policy::Plan;
use crate::safety::CommandKind;

/// What a stage's [`Stage::process`] tells its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// More work may come.
    Continue,
    /// The stage is done; the reason ends up in the run report.
    Done(&'static str),
}

/// A pipeline stage.
pub trait Stage {
    /// What the stage measured, handed back by [`Stage::stop`].
    type Report;
    /// The stage's name in errors.
    fn name(&self) -> &'static str;
    /// Once, on the stage's own thread, before the first `process`.
    fn start(&mut self) -> Result<()> {
        Ok(())
    }
    /// One unit of work.
    fn process(&mut self) -> Result<Flow>;
    /// Once, after the last `process`.
    fn stop(self) -> Self::Report;
}

/// How a driven stage ended.
pub struct Ended<R> {
    /// Why: the stage's own reason, `"stopped"` (the stop flag) or `"error"`.
    pub why: &'static str,
    /// The stage's report.
    pub report: R,
}

/// Runs `stage` on the calling thread until it is done, `stop` (when given)
/// is set, or it fails (the first failure of a run is kept in `failed`, with
/// the stage's name). Stages fed by a channel take no stop flag: they finish
/// the work queued for them and end when their input closes.
pub fn drive<S: Stage>(
    mut stage: S,
    stop: Option<&AtomicBool>,
    failed: &Mutex<Option<anyhow::Error>>,
) -> Ended<S::Report> {
    let fail = |e: anyhow::Error, name: &'static str| {
        failed
            .lock()
            .expect("poisoned")
            .get_or_insert(e.context(name));
    };
    let why = match stage.start() {
        Err(e) => {
            fail(e, stage.name());
            "error"
        }
        Ok(()) => loop {
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                break "stopped";
            }
            match stage.process() {
                Ok(Flow::Continue) => {}
                Ok(Flow::Done(why)) => break why,
                Err(e) => {
                    fail(e, stage.name());
                    break "error";
                }
            }
        },
    };
    Ended {
        why,
        report: stage.stop(),
    }
}

/// A frame after ingest; valid at `t`, its capture time (s, runtime clock).
pub(crate) struct Ingested {
    pub seq: u64,
    pub t: f64,
    pub wall: Instant,
    pub image: RgbImage,
    pub robot_obs: Vec<f64>,
}

/// The planner's answer for one frame; valid at `t`, that frame's capture time.
pub(crate) struct PlanUpdate {
    pub t: f64,
    pub wall: Instant,
    /// When the planner finished with this frame.
    pub ready: Instant,
    pub robot_obs: Vec<f64>,
    pub plan: Option<Arc<Plan>>,
}

/// Ingest: source → RGB at the model size ([`crate::base::image::preprocess`]) → plan.
pub(crate) struct IngestStage {
    pub source: Box<dyn ObservationSource>,
    /// Capture time of the newest frame (f64 bits), read by the watchdog.
    pub last_frame_t: Arc<AtomicU64>,
    pub out: Sender<Ingested>,
    /// Real time: the plan channel's receiving end, to keep only the newest frame.
    pub latest: Option<Receiver<Ingested>>,
    pub size: [usize; 2],
    pub timeout: Duration,
    pub frames: u64,
}

impl Stage for IngestStage {
    type Report = u64;
    fn name(&self) -> &'static str {
        "ingest"
    }
    fn process(&mut self) -> Result<Flow> {
        let Some(obs) = self.source.next(self.timeout)? else {
            return Ok(Flow::Done("end of stream"));
        };
        let wall = Instant::now();
        // The watchdog sees camera liveness here, not when the planner gets to it.
        self.last_frame_t.store(obs.t.to_bits(), Ordering::Release);
        let image = to_rgb_resized(&obs.frame, self.size[0], self.size[1])
            .with_context(|| format!("frame {}", obs.seq))?;
        let msg = Ingested {
            seq: obs.seq,
            t: obs.t,
            wall,
            image,
            robot_obs: obs.robot_obs,
        };
        // Real time: keep only the newest frame waiting for the planner.
        if let Some(rx) = &self.latest {
            while rx.try_recv().is_ok() {}
        }
        if self.out.send(msg).is_err() {
            return Ok(Flow::Done("plan stage gone"));
        }
        self.frames += 1;
        Ok(Flow::Continue)
    }
    fn stop(self) -> u64 {
        self.frames
    }
}

/// What the plan stage measured.
#[derive(Default)]
pub(crate) struct PlanReport {
    pub plan_time: Histogram,
    pub obs_to_plan: Histogram,
    pub plans: u64,
}

/// Plan: every ingested frame through the [`Planner`]; new plans to actuate
/// and (when there is a renderer) to the monitor's queue.
pub(crate) struct PlanStage {
    pub planner: Box<dyn Planner>,
    pub input: Receiver<Ingested>,
    pub out: Sender<PlanUpdate>,
    /// The monitor's queue, when imagined futures are rendered.
    pub monitor: Option<Arc<DropOldest<Arc<Plan>>>>,
    pub report: PlanReport,
}

impl Stage for PlanStage {
    type Report = PlanReport;
    fn name(&self) -> &'static str {
        "plan"
    }
    fn process(&mut self) -> Result<Flow> {
        let Ok(msg) = self.input.recv() else {
            return Ok(Flow::Done("end of stream"));
        };
        let t0 = Instant::now();
        let plan = self
            .planner
            .observe(&msg.image, &msg.robot_obs, msg.t)
            .with_context(|| format!("frame {}", msg.seq))?
            .map(Arc::new);
        self.report.plan_time.record(t0.elapsed().as_secs_f64());
        if let Some(p) = &plan {
            self.report.plans += 1;
            self.report
                .obs_to_plan
                .record(msg.wall.elapsed().as_secs_f64());
            if let Some(m) = &self.monitor {
                m.push(p.clone());
            }
        }
        let upd = PlanUpdate {
            t: msg.t,
            wall: msg.wall,
            ready: Instant::now(),
            robot_obs: msg.robot_obs,
            plan,
        };
        Ok(if self.out.send(upd).is_ok() {
            Flow::Continue
        } else {
            Flow::Done("actuate gone")
        })
    }
    fn stop(self) -> PlanReport {
        if let Some(m) = &self.monitor {
            m.close();
        }
        self.report
    }
}

/// What the monitor rendered.
pub(crate) struct MonitorReport {
    pub render_time: Histogram,
    pub rendered: u64,
    /// The newest imagined strips `(plan control step, image)`.
    pub imagined: VecDeque<(usize, RgbImage)>,
}

/// Monitor: renders imagined futures at the lowest priority, off the actuate CPU.
pub(crate) struct MonitorStage {
    pub renderer: Box<dyn Renderer>,
    pub queue: Arc<DropOldest<Arc<Plan>>>,
    pub keep: usize,
    pub report: MonitorReport,
}

impl Stage for MonitorStage {
    type Report = MonitorReport;
    fn name(&self) -> &'static str {
        "monitor"
    }
    fn start(&mut self) -> Result<()> {
        lower_thread_priority();
        keep_off_actuate_cpu();
        Ok(())
    }
    fn process(&mut self) -> Result<Flow> {
        let Some(plan) = self.queue.pop() else {
            return Ok(Flow::Done("end of stream"));
        };
        let t0 = Instant::now();
        match self.renderer.render(&plan) {
            Ok(img) => {
                self.report.rendered += 1;
                if self.report.imagined.len() == self.keep {
                    self.report.imagined.pop_front();
                }
                self.report.imagined.push_back((plan.control_step, img));
            }
            Err(e) => tracing::warn!(error = %e, "monitor render failed"),
        }
        self.report.render_time.record(t0.elapsed().as_secs_f64());
        Ok(Flow::Continue)
    }
    fn stop(self) -> MonitorReport {
        self.report
    }
}

/// The fixed-rate clock of a real robot, phase-aligned with plan arrivals.
pub(crate) struct RealTimeClock {
    /// Scheduling priority (SCHED_FIFO) of the loop, when allowed.
    pub rt_priority: Option<i32>,
    /// Phase alignment of the clock.
    pub phase: PhaseAligner,
    /// Capture time of the newest frame (f64 bits), set by ingest.
    pub last_frame_t: Arc<AtomicU64>,
    /// Start of the clock (s, runtime clock).
    pub start: f64,
    /// Ticks since the start.
    pub k: u64,
    /// The plan stage is gone.
    pub source_ended: bool,
    /// Pinning and scheduling while the loop runs.
    pub thread: Option<ActuateThread>,
}

/// How actuate is clocked.
pub(crate) enum Clock {
    /// Simulator or replay: one tick per frame, after that frame's plan.
    Lockstep,
    /// A real robot: a fixed-rate clock.
    RealTime(Box<RealTimeClock>),
}

/// Actuate: the [`Actuator`] (chunk → safety) and the robot's command sink,
/// one control tick per `process`.
pub(crate) struct ActuateStage {
    pub actuator: Actuator,
    pub sink: Box<dyn CommandSink>,
    pub input: Receiver<PlanUpdate>,
    pub clock: Clock,
    pub max_steps: Option<u64>,
    pub report: RunReport,
    pub latency: Histogram,
    pub jitter: Histogram,
    /// Wall time of the frame behind the newest plan, until a command uses it.
    pub pending_latency: Option<Instant>,
}

/// An update from the plan stage reaches the actuator: the observation it
/// derives from (camera liveness, measured pose) and, when it has one, its plan,
/// whose frame's wall time waits in `pending` for the command that uses it.
fn absorb(actuator: &mut Actuator, pending: &mut Option<Instant>, upd: PlanUpdate) {
    actuator.observe(upd.t, &upd.robot_obs);
    if let Some(p) = upd.plan {
        actuator.set_chunk(Chunk::of_plan(&p));
        *pending = Some(upd.wall);
    }
}

impl ActuateStage {
    /// One command at control time `now` (s); `false` when the safety layer is quiet.
    fn tick(&mut self, now: f64) -> Result<bool> {
        self.report.ticks += 1;
        match self.actuator.tick(now) {
            Some(cmd) => {
                self.sink.send(&cmd)?;
                if let Some(w) = self.pending_latency.take() {
                    self.latency.record(w.elapsed().as_secs_f64());
                }
                self.report.commands += 1;
                if cmd.kind == CommandKind::Hold {
                    self.report.holds += 1;
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn process_lockstep(&mut self) -> Result<Flow> {
        let Ok(upd) = self.input.recv() else {
            return Ok(Flow::Done("end of stream"));
        };
        let t = upd.t;
        absorb(&mut self.actuator, &mut self.pending_latency, upd);
        // A quiet safety layer: the robot will not advance.
        Ok(if self.tick(t)? {
            Flow::Continue
        } else {
            Flow::Done("safety silent")
        })
    }

    fn process_realtime(&mut self) -> Result<Flow> {
        let Clock::RealTime(clock) = &mut self.clock else {
            unreachable!("real-time tick on a lockstep clock");
        };
        let RealTimeClock {
            phase,
            last_frame_t,
            start,
            k,
            source_ended,
            ..
        } = &mut **clock;
        let period = 1.0 / self.actuator.rate_hz();
        let deadline = *start + *k as f64 * period;
        sleep_until(instant_at(deadline));
        let now = now_s();
        self.jitter.record(now - deadline);
        *k += 1;
        loop {
            match self.input.try_recv() {
                Ok(upd) => {
                    if upd.plan.is_some() {
                        // Before the first plan the arm only holds: align at once.
                        let first = !self.actuator.has_chunk();
                        *start += phase.delay(deadline, seconds_at(upd.ready), first);
                    }
                    absorb(&mut self.actuator, &mut self.pending_latency, upd);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    *source_ended = true;
                    break;
                }
            }
        }
        let f = f64::from_bits(last_frame_t.load(Ordering::Acquire));
        let ended = *source_ended;
        if f.is_finite() {
            self.actuator.on_frame(f);
        }
        // A quiet safety layer sends nothing. Before the first plan (a cold
        // model) the loop keeps ticking so the plan can move the arm; once the
        // camera is gone or stale (no frame for longer than the watchdog
        // timeout) the holds have been sent and the run ends.
        let camera_stale =
            f.is_finite() && now - f > self.actuator.safety().config().stale_timeout_s;
        Ok(if !self.tick(now)? && (ended || camera_stale) {
            Flow::Done("safety silent")
        } else {
            Flow::Continue
        })
    }

    /// Sends hold commands until the safety layer goes quiet (e-stop path).
    fn halt(&mut self) {
        for cmd in self.actuator.halt(now_s()) {
            if self.sink.send(&cmd).is_err() {
                break;
            }
            self.report.holds += 1;
            self.report.commands += 1;
        }
    }
}

impl Stage for ActuateStage {
    type Report = RunReport;
    fn name(&self) -> &'static str {
        "actuate"
    }
    fn start(&mut self) -> Result<()> {
        if let Clock::RealTime(clock) = &mut self.clock {
            clock.thread = Some(ActuateThread::enter(clock.rt_priority));
            clock.start = now_s();
        }
        Ok(())
    }
    fn process(&mut self) -> Result<Flow> {
        if self.max_steps.is_some_and(|m| self.report.ticks >= m) {
            return Ok(Flow::Done("max_steps"));
        }
        match self.clock {
            Clock::Lockstep => self.process_lockstep(),
            Clock::RealTime(_) => self.process_realtime(),
        }
    }
    /// Holds the robot on the way out and closes the sink (which ends
    /// lockstep sources); the report has the commands, latency and events.
    fn stop(mut self) -> RunReport {
        self.halt();
        let _ = self.sink.close();
        if let Clock::RealTime(clock) = &mut self.clock {
            clock.thread.take();
        }
        let mut report = std::mem::take(&mut self.report);
        report.obs_to_command = self.latency.summary();
        report.actuate_jitter = self.jitter.summary();
        report.teleop = self.actuator.teleop_stats().cloned();
        report.safety_events = self.actuator.take_events();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its lifecycle calls; done after `n` units, or fails at unit `fail_at`.
    struct Counter {
        n: usize,
        fail_at: Option<usize>,
        started: usize,
        processed: usize,
    }

    impl Stage for Counter {
        type Report = (usize, usize);
        fn name(&self) -> &'static str {
            "counter"
        }
        fn start(&mut self) -> Result<()> {
            self.started += 1;
            Ok(())
        }
        fn process(&mut self) -> Result<Flow> {
            if self.fail_at == Some(self.processed) {
                anyhow::bail!("unit {} failed", self.processed);
            }
            self.processed += 1;
            Ok(if self.processed == self.n {
                Flow::Done("counted")
            } else {
                Flow::Continue
            })
        }
        fn stop(self) -> (usize, usize) {
            (self.started, self.processed)
        }
    }

    fn counter(n: usize, fail_at: Option<usize>) -> Counter {
        Counter {
            n,
            fail_at,
            started: 0,
            processed: 0,
        }
    }

    #[test]
    fn a_stage_starts_once_processes_until_done_and_stops_with_its_report() {
        let failed = Mutex::new(None);
        let ended = drive(counter(5, None), Some(&AtomicBool::new(false)), &failed);
        assert_eq!((ended.why, ended.report), ("counted", (1, 5)));
        assert!(failed.lock().unwrap().is_none());

        // The stop flag ends it before any work; stop still runs.
        let ended = drive(counter(5, None), Some(&AtomicBool::new(true)), &failed);
        assert_eq!((ended.why, ended.report), ("stopped", (1, 0)));

        // A failure ends it, is kept with the stage's name, and stop still runs.
        let ended = drive(counter(5, Some(2)), None, &failed);
        assert_eq!((ended.why, ended.report), ("error", (1, 2)));
        let e = format!("{:#}", failed.lock().unwrap().take().unwrap());
        assert_eq!(e, "counter: unit 2 failed");
    }
}
