//! Stages of the pipeline and the function that wires them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serde::Serialize;

use super::actuate::{Actuator, Chunk};
use super::ingest::to_rgb_resized;
use super::metrics::{Histogram, Summary};
use crate::base::clock::{instant_at, now_s, seconds_at, sleep_until};
use crate::io::robot::{CommandSink, ObservationSource, RobotIo};
use crate::io::RgbImage;
use crate::model::dldm::Dldm;
use crate::model::head::ACTION_DIM;
use crate::policy::{Plan, Policy};
use crate::safety::{CommandKind, GripperState, SafetyConfig};
use crate::teleop::arbiter::{Control, TakeoverConfig};
use crate::teleop::operator::OperatorFeed;

/// Something that turns frames into plans (the closed-loop policy, or a
/// model-free stand-in for measuring the runtime itself).
pub trait Planner: Send {
    /// Starts an episode.
    fn reset(&mut self, instruction: &str) -> Result<()>;
    /// Model input size `[h, w]` (px).
    fn image_size(&self) -> [usize; 2];
    /// The control rate the policy was trained at (Hz): the run's rate.
    fn control_rate_hz(&self) -> f64;
    /// One frame (RGB at `image_size`), proprio and its capture time (s).
    fn observe(&mut self, frame: &RgbImage, proprio: &[f64], t: f64) -> Result<Option<Plan>>;
}

impl Planner for Policy {
    fn reset(&mut self, instruction: &str) -> Result<()> {
        Policy::reset(self, instruction)
    }
    fn image_size(&self) -> [usize; 2] {
        self.bundle().spec.image_size
    }
    fn control_rate_hz(&self) -> f64 {
        self.bundle().spec.control_rate_hz
    }
    fn observe(&mut self, frame: &RgbImage, proprio: &[f64], t: f64) -> Result<Option<Plan>> {
        Policy::observe(self, frame, proprio, t)
    }
}

/// A model-free planner: every `steps_per_latent` frames it returns a chunk of
/// zero-motion actions (gripper open) at once. Measures the runtime's overhead.
pub struct NullPlanner {
    /// Input size `[h, w]`.
    pub image_size: [usize; 2],
    /// Control steps per plan.
    pub steps_per_latent: usize,
    /// Control rate (Hz); 30 Hz unless set.
    pub control_rate_hz: f64,
    step: usize,
}

impl NullPlanner {
    /// A planner for `image_size` that plans every `steps_per_latent` frames.
    pub fn new(image_size: [usize; 2], steps_per_latent: usize) -> Self {
        Self {
            image_size,
            steps_per_latent,
            control_rate_hz: 30.0,
            step: 0,
        }
    }
}

impl Planner for NullPlanner {
    fn reset(&mut self, _instruction: &str) -> Result<()> {
        self.step = 0;
        Ok(())
    }
    fn image_size(&self) -> [usize; 2] {
        self.image_size
    }
    fn control_rate_hz(&self) -> f64 {
        self.control_rate_hz
    }
    fn observe(&mut self, _frame: &RgbImage, _proprio: &[f64], t: f64) -> Result<Option<Plan>> {
        let n = self.step;
        self.step += 1;
        if !n.is_multiple_of(self.steps_per_latent) {
            return Ok(None);
        }
        let mut hold = [0f32; ACTION_DIM];
        hold[6] = 1.0;
        Ok(Some(Plan {
            t,
            control_step: n,
            latent_step: n / self.steps_per_latent + 1,
            observed_codes: vec![],
            predicted_codes: vec![0; 4],
            actions: vec![hold; self.steps_per_latent],
            relative: true,
            current_features: Tensor::zeros((1, 1, 1, 1, 1), DType::F32, &Device::Cpu)?,
        }))
    }
}

/// Renders a plan's imagined future as an RGB strip.
pub trait Renderer: Send {
    /// One image for the plan (e.g. the predicted frames side by side).
    fn render(&mut self, plan: &Plan) -> Result<RgbImage>;
}

/// The coarse decoder: renders the frames implied by the predicted codes,
/// starting from the current frame's features, as a horizontal strip.
pub struct DecoderRenderer {
    dldm: Dldm,
    num_queries: usize,
}

impl DecoderRenderer {
    /// Uses the bundle's dLDM (shares its weights).
    pub fn new(dldm: Dldm) -> Self {
        let num_queries = dldm.config().num_queries;
        Self { dldm, num_queries }
    }
}

impl Renderer for DecoderRenderer {
    fn render(&mut self, plan: &Plan) -> Result<RgbImage> {
        let idx = Tensor::new(
            plan.predicted_codes.as_slice(),
            plan.current_features.device(),
        )?
        .reshape((1, 1, self.num_queries))?;
        let frames = self.dldm.decode_indices(&plan.current_features, &idx)?; // [1, T, 3, H, W]
        frames_to_strip(&frames.narrow(1, 1, frames.dim(1)? - 1)?)
    }
}

/// `[1, T, 3, H, W]` in [−1, 1] → an RGB strip `H × (T·W)`.
pub fn frames_to_strip(frames: &Tensor) -> Result<RgbImage> {
    let (_, t, _, h, w) = frames.dims5()?;
    let px = ((frames.squeeze(0)?.clamp(-1.0, 1.0)? + 1.0)? * 127.5)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((2, 0, 3, 1))? // [H, T, W, 3]
        .contiguous()?
        .flatten_all()?
        .to_vec1::<u8>()?;
    Ok(RgbImage {
        height: h,
        width: t * w,
        data: px,
    })
}

/// A renderer that only burns CPU for a fixed time (benchmarks).
pub struct BusyRenderer {
    /// Time spent per render (s).
    pub seconds: f64,
}

impl Renderer for BusyRenderer {
    fn render(&mut self, _plan: &Plan) -> Result<RgbImage> {
        let until = Instant::now() + Duration::from_secs_f64(self.seconds);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        Ok(RgbImage {
            height: 1,
            width: 1,
            data: vec![(x & 0xff) as u8; 3],
        })
    }
}

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

/// The operator's side of a run: see [`crate::teleop::arbiter`].
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

/// A frame after ingest.
struct Ingested {
    seq: u64,
    t: f64,
    wall: Instant,
    image: RgbImage,
    robot_obs: Vec<f64>,
}

/// The planner's answer for one frame.
struct PlanUpdate {
    t: f64,
    wall: Instant,
    /// When the planner finished with this frame.
    ready: Instant,
    robot_obs: Vec<f64>,
    plan: Option<Arc<Plan>>,
}

/// A bounded queue that drops its oldest item when full (never blocks the producer).
struct DropOldest<T> {
    q: Mutex<(VecDeque<T>, bool)>,
    cv: Condvar,
    cap: usize,
    dropped: AtomicU64,
}

impl<T> DropOldest<T> {
    fn new(cap: usize) -> Self {
        Self {
            q: Mutex::new((VecDeque::new(), false)),
            cv: Condvar::new(),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
        }
    }
    fn push(&self, item: T) {
        let mut g = self.q.lock().expect("monitor queue poisoned");
        if g.0.len() == self.cap {
            g.0.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        g.0.push_back(item);
        self.cv.notify_one();
    }
    fn close(&self) {
        self.q.lock().expect("monitor queue poisoned").1 = true;
        self.cv.notify_all();
    }
    fn pop(&self) -> Option<T> {
        let mut g = self.q.lock().expect("monitor queue poisoned");
        loop {
            if let Some(x) = g.0.pop_front() {
                return Some(x);
            }
            if g.1 {
                return None;
            }
            g = self.cv.wait(g).expect("monitor queue poisoned");
        }
    }
}

/// Ingest stage: source → RGB at the model size → plan channel.
struct IngestStage {
    source: Box<dyn ObservationSource>,
    /// Capture time of the newest frame (f64 bits), read by the watchdog.
    last_frame_t: Arc<AtomicU64>,
    out: Sender<Ingested>,
    latest: Option<Receiver<Ingested>>,
    size: [usize; 2],
    timeout: Duration,
}

impl IngestStage {
    /// One observation; `false` at the end of the stream.
    fn process(&mut self) -> Result<bool> {
        let Some(obs) = self.source.next(self.timeout)? else {
            return Ok(false);
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
        Ok(self.out.send(msg).is_ok())
    }
}

/// Runs the pipeline until the source ends, `cfg.max_steps` ticks pass, or
/// `stop` is set (Ctrl-C). The robot is held on the way out.
pub fn run(
    io: Box<dyn RobotIo>,
    mut planner: Box<dyn Planner>,
    renderer: Option<Box<dyn Renderer>>,
    cfg: RuntimeConfig,
    stop: Arc<AtomicBool>,
) -> Result<RunReport> {
    let lockstep = io.lockstep();
    // The policy bundle owns the control rate: a robot or simulator at
    // another rate is refused before anything moves.
    let rate = planner.control_rate_hz();
    let io_rate = io.control_rate_hz();
    anyhow::ensure!(
        (io_rate - rate).abs() < 1e-9,
        "control rate: the policy was trained at {rate} Hz but the robot io runs at {io_rate} Hz; \
         run the robot (or simulator) at the policy's rate"
    );
    let initial_tcp = io.initial_tcp();
    let (source, sink) = io.split();
    let mut actuator = Actuator::new(cfg.safety.clone(), rate, cfg.teleop.as_ref())?;
    actuator.reset(
        if lockstep { 0.0 } else { now_s() },
        initial_tcp,
        GripperState::Open,
    )?;
    planner.reset(&cfg.instruction)?;
    let size = planner.image_size();

    // Channels: lockstep keeps every message; real time keeps the newest.
    let (ingest_tx, ingest_rx) = if lockstep {
        crossbeam_channel::unbounded()
    } else {
        crossbeam_channel::bounded(1)
    };
    let (plan_tx, plan_rx) = crossbeam_channel::unbounded::<PlanUpdate>();
    let monitor = Arc::new(DropOldest::<Arc<Plan>>::new(cfg.monitor_queue));
    let last_frame_t = Arc::new(AtomicU64::new(f64::NAN.to_bits()));
    let failed = Arc::new(Mutex::new(None::<anyhow::Error>));

    std::thread::scope(|scope| -> Result<RunReport> {
        // --- ingest
        let ingest = {
            let mut stage = IngestStage {
                source,
                last_frame_t: last_frame_t.clone(),
                out: ingest_tx,
                latest: if lockstep {
                    None
                } else {
                    Some(ingest_rx.clone())
                },
                size,
                timeout: Duration::from_secs_f64(cfg.frame_timeout_s),
            };
            let stop = stop.clone();
            let failed = failed.clone();
            std::thread::Builder::new()
                .name("vw2-ingest".into())
                .spawn_scoped(scope, move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        match stage.process() {
                            Ok(true) => n += 1,
                            Ok(false) => break,
                            Err(e) => {
                                failed
                                    .lock()
                                    .expect("poisoned")
                                    .get_or_insert(e.context("ingest"));
                                break;
                            }
                        }
                    }
                    n
                })?
        };
        // --- plan
        let plan_thread = {
            let failed = failed.clone();
            let monitor = monitor.clone();
            let with_monitor = renderer.is_some();
            std::thread::Builder::new()
                .name("vw2-plan".into())
                .spawn_scoped(scope, move || {
                    let mut plan_time = Histogram::default();
                    let mut obs_to_plan = Histogram::default();
                    let mut plans = 0u64;
                    for msg in ingest_rx.iter() {
                        let t0 = Instant::now();
                        let plan = match planner.observe(&msg.image, &msg.robot_obs, msg.t) {
                            Ok(p) => p.map(Arc::new),
                            Err(e) => {
                                failed
                                    .lock()
                                    .expect("poisoned")
                                    .get_or_insert(e.context(format!("plan, frame {}", msg.seq)));
                                break;
                            }
                        };
                        plan_time.record(t0.elapsed().as_secs_f64());
                        if let Some(p) = &plan {
                            plans += 1;
                            obs_to_plan.record(msg.wall.elapsed().as_secs_f64());
                            if with_monitor {
                                monitor.push(p.clone());
                            }
                        }
                        let upd = PlanUpdate {
                            t: msg.t,
                            wall: msg.wall,
                            ready: Instant::now(),
                            robot_obs: msg.robot_obs,
                            plan,
                        };
                        if plan_tx.send(upd).is_err() {
                            break;
                        }
                    }
                    monitor.close();
                    (plan_time, obs_to_plan, plans)
                })?
        };
        // --- monitor
        let monitor_thread = renderer.map(|mut r| {
            let monitor = monitor.clone();
            let keep = cfg.keep_imagined;
            std::thread::Builder::new()
                .name("vw2-monitor".into())
                .spawn_scoped(scope, move || {
                    lower_thread_priority();
                    keep_off_actuate_cpu();
                    let mut render_time = Histogram::default();
                    let mut imagined: VecDeque<(usize, RgbImage)> = VecDeque::new();
                    let mut n = 0u64;
                    while let Some(plan) = monitor.pop() {
                        let t0 = Instant::now();
                        match r.render(&plan) {
                            Ok(img) => {
                                n += 1;
                                if imagined.len() == keep {
                                    imagined.pop_front();
                                }
                                imagined.push_back((plan.control_step, img));
                            }
                            Err(e) => tracing::warn!(error = %e, "monitor render failed"),
                        }
                        render_time.record(t0.elapsed().as_secs_f64());
                    }
                    (render_time, n, imagined)
                })
                .expect("spawn monitor")
        });

        // --- actuate (this thread)
        let mut act = Actuate {
            actuator,
            sink,
            report: RunReport::default(),
            latency: Histogram::default(),
            jitter: Histogram::default(),
            pending_latency: None,
        };
        let ended_by = if lockstep {
            act.run_lockstep(&plan_rx, &cfg, &stop)
        } else {
            act.run_realtime(&plan_rx, &cfg, &stop, &last_frame_t)
        };
        // Hold on the way out, then let the other stages finish: dropping the
        // sink and the plan receiver ends lockstep sources and the planner.
        act.halt();
        let _ = act.sink.close();
        stop.store(true, Ordering::Relaxed);
        let mut report = std::mem::take(&mut act.report);
        report.obs_to_command = act.latency.summary();
        report.actuate_jitter = act.jitter.summary();
        report.teleop = act.actuator.teleop_stats().cloned();
        report.safety_events = act.actuator.take_events();
        drop(act);
        drop(plan_rx);
        report.frames = ingest
            .join()
            .map_err(|_| anyhow!("ingest thread panicked"))?;
        let (plan_time, obs_to_plan, plans) = plan_thread
            .join()
            .map_err(|_| anyhow!("plan thread panicked"))?;
        report.plan_time = plan_time.summary();
        report.obs_to_plan = obs_to_plan.summary();
        report.plans = plans;
        if let Some(h) = monitor_thread {
            let (render_time, n, imagined) =
                h.join().map_err(|_| anyhow!("monitor thread panicked"))?;
            report.render_time = render_time.summary();
            report.monitor_frames = n;
            report.imagined = imagined.into_iter().collect();
        }
        report.dropped_monitor_frames = monitor.dropped.load(Ordering::Relaxed);
        report.ended_by = ended_by?;
        if let Some(e) = failed.lock().expect("poisoned").take() {
            return Err(e);
        }
        Ok(report)
    })
}

/// Gives the calling thread the lowest CPU priority, so rendering imagined
/// futures yields to ingest, plan and actuate on a busy machine: Linux's
/// SCHED_IDLE (any runnable normal thread preempts it at once; no privilege
/// needed), else nice 19.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pthread_self is the calling thread; SCHED_IDLE takes priority 0.
        let idle = unsafe {
            let p = libc::sched_param { sched_priority: 0 };
            libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_IDLE, &p)
        };
        if idle == 0 {
            return;
        }
        // SAFETY: gettid has no preconditions; setpriority on our own thread id
        // only changes this thread's nice value.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19)
        };
        if rc != 0 {
            tracing::debug!("could not lower the monitor thread's priority");
        }
    }
}

/// The CPU the real-time actuate loop runs on (the last one); the monitor
/// stays off it. Only with two CPUs or more.
fn actuate_cpu() -> Option<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n >= 2).then_some(n - 1)
}

/// Sets the calling thread's CPU affinity to `cpus`; returns the old set, or
/// `None` when it could not be read or changed.
#[cfg(target_os = "linux")]
fn set_affinity(cpus: impl IntoIterator<Item = usize>) -> Option<libc::cpu_set_t> {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the sets are zeroed before use and filled with valid CPU
    // indices; pid 0 is the calling thread.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut old) != 0 {
            return None;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        (libc::sched_setaffinity(0, size, &set) == 0).then_some(old)
    }
}

/// Keeps the calling thread (the monitor) off the actuate CPU.
fn keep_off_actuate_cpu() {
    #[cfg(target_os = "linux")]
    if let Some(cpu) = actuate_cpu() {
        if set_affinity(0..cpu).is_none() {
            tracing::debug!("could not keep the monitor off the actuate CPU");
        }
    }
}

/// The calling thread set up for the real-time actuate loop while this lives
/// (Linux): pinned to [`actuate_cpu`] and, with a priority, under SCHED_FIFO
/// (without the privilege it logs and keeps the normal scheduler). The old
/// affinity and policy come back on drop.
struct ActuateThread {
    #[cfg(target_os = "linux")]
    affinity: Option<libc::cpu_set_t>,
    #[cfg(target_os = "linux")]
    sched: Option<(libc::c_int, libc::sched_param)>,
}

impl ActuateThread {
    fn enter(rt_priority: Option<i32>) -> Self {
        #[cfg(target_os = "linux")]
        {
            let affinity = actuate_cpu().and_then(|c| set_affinity([c]));
            let sched = rt_priority.and_then(|priority| {
                // SAFETY: pthread_self is always valid for the calling thread; the
                // get/set calls only read or change this thread's scheduling.
                unsafe {
                    let me = libc::pthread_self();
                    let mut policy = 0;
                    let mut old: libc::sched_param = std::mem::zeroed();
                    if libc::pthread_getschedparam(me, &mut policy, &mut old) != 0 {
                        return None;
                    }
                    let new = libc::sched_param {
                        sched_priority: priority.clamp(1, 99),
                    };
                    let rc = libc::pthread_setschedparam(me, libc::SCHED_FIFO, &new);
                    if rc != 0 {
                        tracing::info!(
                            errno = rc,
                            "actuate keeps the normal scheduler (SCHED_FIFO needs CAP_SYS_NICE)"
                        );
                        return None;
                    }
                    Some((policy, old))
                }
            });
            Self { affinity, sched }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = rt_priority;
            Self {}
        }
    }
}

impl Drop for ActuateThread {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        {
            if let Some((policy, old)) = self.sched.take() {
                // SAFETY: as in `enter`, on the same (calling) thread.
                unsafe {
                    libc::pthread_setschedparam(libc::pthread_self(), policy, &old);
                }
            }
            if let Some(old) = self.affinity.take() {
                // SAFETY: restores the set read in `enter` on the same thread.
                unsafe {
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old);
                }
            }
        }
    }
}

/// Phase alignment of the fixed-rate actuate clock with plan arrivals: a
/// tick that finds a plan ready more than a tolerance before it moves the
/// clock later by at most `slew` per plan, until ticks land `lead` after plans
/// are ready. It only ever delays, so every period is at least the nominal one.
#[derive(Debug, Clone)]
pub struct PhaseAligner {
    period: f64,
    lead: Option<f64>,
    tolerance: f64,
    slew: f64,
}

impl PhaseAligner {
    /// Aligner for a clock of `period` (s); `lead` (s) after plans, or none.
    pub fn new(period: f64, lead: Option<f64>) -> Self {
        let lead = lead.filter(|l| l.is_finite() && *l >= 0.0);
        Self {
            period,
            lead,
            tolerance: lead.unwrap_or(0.0) + 0.001_f64.min(0.1 * period),
            slew: 0.1 * period,
        }
    }

    /// The delay (s, ≥ 0) to add to the clock after the tick with deadline
    /// `tick` found a plan that became ready at `ready` (both on the runtime
    /// clock). `first`: no plan was playing yet (the arm holds), so the whole
    /// correction is made at once instead of at most `slew`.
    pub fn delay(&self, tick: f64, ready: f64, first: bool) -> f64 {
        let Some(lead) = self.lead else {
            return 0.0;
        };
        let late = tick - (ready + lead);
        if !(late > self.tolerance && late < self.period) {
            return 0.0;
        }
        // Delaying by `period − late` puts the previous tick `lead` after the plan.
        let needed = self.period - late;
        if first {
            needed
        } else {
            needed.min(self.slew)
        }
    }
}

/// Actuate stage state: the [`Actuator`] and the robot's command sink.
struct Actuate {
    actuator: Actuator,
    sink: Box<dyn CommandSink>,
    report: RunReport,
    latency: Histogram,
    jitter: Histogram,
    /// Wall time of the frame behind the newest plan, until a command uses it.
    pending_latency: Option<Instant>,
}

impl Actuate {
    fn absorb(&mut self, upd: PlanUpdate) {
        self.actuator.observe(upd.t, &upd.robot_obs);
        if let Some(p) = upd.plan {
            self.actuator.set_chunk(Chunk::of_plan(&p));
            self.pending_latency = Some(upd.wall);
        }
    }

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

    fn run_lockstep(
        &mut self,
        rx: &Receiver<PlanUpdate>,
        cfg: &RuntimeConfig,
        stop: &AtomicBool,
    ) -> Result<String> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok("stopped".into());
            }
            if cfg.max_steps.is_some_and(|m| self.report.ticks >= m) {
                return Ok("max_steps".into());
            }
            let Ok(upd) = rx.recv() else {
                return Ok("end of stream".into());
            };
            let t = upd.t;
            self.absorb(upd);
            if !self.tick(t)? {
                // The safety layer went silent: the robot will not advance.
                return Ok("safety silent".into());
            }
        }
    }

    fn run_realtime(
        &mut self,
        rx: &Receiver<PlanUpdate>,
        cfg: &RuntimeConfig,
        stop: &AtomicBool,
        last_frame_t: &AtomicU64,
    ) -> Result<String> {
        let period = 1.0 / self.actuator.rate_hz();
        let _thread = ActuateThread::enter(cfg.actuate_rt_priority);
        let phase = PhaseAligner::new(period, cfg.phase_lead_s);
        let mut start = now_s();
        let mut k = 0u64;
        let mut source_ended = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok("stopped".into());
            }
            if cfg.max_steps.is_some_and(|m| k >= m) {
                return Ok("max_steps".into());
            }
            let deadline = start + k as f64 * period;
            sleep_until(instant_at(deadline));
            let now = now_s();
            self.jitter.record(now - deadline);
            k += 1;
            loop {
                match rx.try_recv() {
                    Ok(upd) => {
                        if upd.plan.is_some() {
                            // Before the first plan the arm only holds: align at once.
                            let first = !self.actuator.has_chunk();
                            start += phase.delay(deadline, seconds_at(upd.ready), first);
                        }
                        self.absorb(upd)
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        source_ended = true;
                        break;
                    }
                }
            }
            let f = f64::from_bits(last_frame_t.load(Ordering::Acquire));
            if f.is_finite() {
                self.actuator.on_frame(f);
            }
            // A quiet safety layer sends nothing. Before the first plan (a cold
            // model) the loop keeps ticking so the plan can move the arm; once the
            // camera is gone or stale (no frame for longer than the watchdog
            // timeout) the holds have been sent and the run ends.
            let camera_stale =
                f.is_finite() && now - f > self.actuator.safety().config().stale_timeout_s;
            if !self.tick(now)? && (source_ended || camera_stale) {
                return Ok("safety silent".into());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::PhaseAligner;

    /// Simulates a 30 Hz clock and a 30 Hz camera whose plans (one per 4
    /// frames) are ready `latency` after capture; returns (late of each plan's
    /// first tick, tick times).
    fn simulate(
        aligner: &PhaseAligner,
        camera_phase: f64,
        latency: f64,
        first_at_once: bool,
    ) -> (Vec<f64>, Vec<f64>) {
        let period = 1.0 / 30.0;
        let mut start = 0.0;
        let mut ticks = vec![];
        let mut lates = vec![];
        let mut next_plan = 0usize;
        let ready = |i: usize| camera_phase + (4 * i) as f64 * period + latency;
        for k in 0..600u64 {
            let deadline = start + k as f64 * period;
            ticks.push(deadline);
            while ready(next_plan) <= deadline {
                let r = ready(next_plan);
                lates.push(deadline - r);
                start += aligner.delay(deadline, r, next_plan == 0 && first_at_once);
                next_plan += 1;
            }
        }
        (lates, ticks)
    }

    #[test]
    fn aligns_ticks_just_after_plans_and_never_shortens_a_period() {
        let period = 1.0 / 30.0;
        let lead = 0.0005;
        let aligner = PhaseAligner::new(period, Some(lead));
        for phase in [0.001, 0.005, 0.0167, 0.03, 0.0333] {
            let (lates, ticks) = simulate(&aligner, phase, 0.002, false);
            // Free-running, the command waits up to a period for the next tick.
            let (free, _) = simulate(&PhaseAligner::new(period, None), phase, 0.002, false);
            // Aligning at once on the first plan: every later plan is on time.
            let (at_once, _) = simulate(&aligner, phase, 0.002, true);
            for &l in &at_once[1..] {
                assert!(
                    (-1e-9..=lead + 0.0021).contains(&l),
                    "phase {phase}: late {l}"
                );
            }
            let tail = &lates[lates.len() - 50..];
            for &l in tail {
                assert!(
                    (-1e-9..=lead + 0.0021).contains(&l),
                    "phase {phase}: late {l}"
                );
            }
            assert!(free[free.len() - 1] > tail[tail.len() - 1] - 1e-12);
            for w in ticks.windows(2) {
                assert!(w[1] - w[0] >= period - 1e-12, "a period shrank");
                assert!(
                    w[1] - w[0] <= 1.1 * period + 1e-12,
                    "a delay beyond the slew"
                );
            }
        }
    }

    #[test]
    fn no_lead_means_a_free_running_clock() {
        let a = PhaseAligner::new(1.0 / 30.0, None);
        assert_eq!(a.delay(1.0, 0.99, true), 0.0);
        let a = PhaseAligner::new(1.0 / 30.0, Some(0.0005));
        // Ready 10 ms before the tick: delay by the slew (3.3 ms), not more…
        assert!((a.delay(1.0, 0.99, false) - 0.1 / 30.0).abs() < 1e-12);
        // …unless nothing is playing yet: then the whole 23.8 ms at once.
        assert!((a.delay(1.0, 0.99, true) - (1.0 / 30.0 - 0.0095)).abs() < 1e-12);
        // Ready just before the tick (within the tolerance): no change.
        assert_eq!(a.delay(1.0, 0.999, false), 0.0);
        // Ready after the tick's deadline (the tick woke late): no change.
        assert_eq!(a.delay(1.0, 1.001, false), 0.0);
    }
}
