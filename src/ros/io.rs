//! The ROS-free half of the node: a [`RobotIo`] fed by subscription callbacks
//! ([`RosInputs`]) that publishes through a [`CommandOutput`], the
//! enable / e-stop [`Supervisor`], and planner / renderer wrappers that survive
//! from one run to the next and count what they do.
//!
//! The r2r node (`node.rs`) only moves messages between ROS and these types, so
//! everything here is tested without ROS, the full pipeline included.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::convert::{robot_obs_from, JointSample};
use crate::base::clock::now_s;
use crate::io::robot::{CommandSink, ObservationSource, RawFrame, RawObservation, RobotIo};
use crate::io::RgbImage;
use crate::policy::Plan;
use crate::runtime::{Planner, Renderer};
use crate::safety::{CommandKind, GripperState, SafeCommand, TcpPose};

/// Why a camera frame was not delivered to the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameDrop {
    /// The TCP pose (or the arm joints) never arrived, or is older than the
    /// stale timeout: the frame is not paired with old proprioception; the camera
    /// watchdog then holds.
    NoProprio(String),
}

/// Latest measured state, with monotonic receipt times (s, runtime clock).
#[derive(Debug, Clone, Default)]
struct Proprio {
    tcp: Option<(f64, TcpPose)>,
    arm: Option<(f64, Vec<f64>)>,
    gripper_width: Option<f64>,
    last_gripper_action: f64,
}

/// Counters shared by the source, the sink and the node.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames delivered to the pipeline.
    pub frames: AtomicU64,
    /// Frames dropped for missing/stale proprioception.
    pub frames_dropped: AtomicU64,
    /// Frames refused by conversion (encoding, size).
    pub frames_refused: AtomicU64,
    /// Commands published.
    pub commands: AtomicU64,
    /// Holds published.
    pub holds: AtomicU64,
    /// Plans made.
    pub plans: AtomicU64,
    /// Total planner time (ns) over `plan_calls`.
    pub plan_ns: AtomicU64,
    /// Planner calls.
    pub plan_calls: AtomicU64,
}

struct Inner {
    frames_tx: Sender<RawObservation>,
    frames_rx: Receiver<RawObservation>,
    proprio: Mutex<Proprio>,
    running: AtomicBool,
    closed: AtomicBool,
    seq: AtomicU64,
    /// Capture time (runtime clock) of the newest delivered frame, f64 bits.
    newest_frame_t: AtomicU64,
    last_command: Mutex<Option<(f64, CommandKind, GripperState)>>,
    stale_timeout_s: f64,
    needs_arm: bool,
    counters: Counters,
}

/// Inputs shared between the ROS callbacks (writers) and the pipeline
/// (reader). Cheap to clone.
#[derive(Clone)]
pub struct RosInputs {
    inner: Arc<Inner>,
}

impl RosInputs {
    /// Inputs whose proprioception expires after `stale_timeout_s` (s, the safety
    /// config's). With `needs_arm` a frame also needs fresh arm joints.
    pub fn new(stale_timeout_s: f64, needs_arm: bool) -> Self {
        let (frames_tx, frames_rx) = crossbeam_channel::bounded(1);
        Self {
            inner: Arc::new(Inner {
                frames_tx,
                frames_rx,
                proprio: Mutex::new(Proprio {
                    last_gripper_action: 1.0,
                    ..Default::default()
                }),
                running: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                seq: AtomicU64::new(0),
                newest_frame_t: AtomicU64::new(f64::NAN.to_bits()),
                last_command: Mutex::new(None),
                stale_timeout_s,
                needs_arm,
                counters: Counters::default(),
            }),
        }
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// A TCP pose measured now (receipt time on the runtime clock).
    pub fn on_tcp_pose(&self, pose: TcpPose) {
        self.on_tcp_pose_at(pose, now_s());
    }

    /// A TCP pose received at `t` (s, runtime clock).
    pub fn on_tcp_pose_at(&self, pose: TcpPose, t: f64) {
        self.inner.proprio.lock().expect("proprio poisoned").tcp = Some((t, pose));
    }

    /// A joint sample received now.
    pub fn on_joints(&self, s: JointSample) {
        self.on_joints_at(s, now_s());
    }

    /// A joint sample received at `t` (s, runtime clock).
    pub fn on_joints_at(&self, s: JointSample, t: f64) {
        let mut p = self.inner.proprio.lock().expect("proprio poisoned");
        if let Some(arm) = s.arm {
            p.arm = Some((t, arm));
        }
        if let Some(w) = s.gripper_width {
            p.gripper_width = Some(w);
        }
    }

    /// A refused input message (counted).
    pub fn on_refused_frame(&self) {
        self.inner
            .counters
            .frames_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The latest measured TCP pose.
    pub fn tcp(&self) -> Option<TcpPose> {
        self.inner
            .proprio
            .lock()
            .expect("proprio poisoned")
            .tcp
            .map(|(_, p)| p)
    }

    /// The latest measured arm joints (rad).
    pub fn arm_joints(&self) -> Option<Vec<f64>> {
        self.inner
            .proprio
            .lock()
            .expect("proprio poisoned")
            .arm
            .as_ref()
            .map(|(_, q)| q.clone())
    }

    /// What is still missing before a run can start (`None`: ready). `t` is now
    /// (s, runtime clock).
    pub fn missing_at(&self, t: f64) -> Option<String> {
        let p = self.inner.proprio.lock().expect("proprio poisoned");
        self.proprio_problem(&p, t)
    }

    fn proprio_problem(&self, p: &Proprio, t: f64) -> Option<String> {
        let stale = self.inner.stale_timeout_s;
        match p.tcp {
            None => return Some("no TCP pose received".into()),
            Some((rt, _)) if t - rt > stale => {
                return Some(format!(
                    "TCP pose is {:.3} s old (stale after {stale} s)",
                    t - rt
                ))
            }
            _ => {}
        }
        if self.inner.needs_arm {
            match &p.arm {
                None => return Some("no arm joint states received".into()),
                Some((rt, _)) if t - *rt > stale => {
                    return Some(format!(
                        "arm joint states are {:.3} s old (stale after {stale} s)",
                        t - rt
                    ))
                }
                _ => {}
            }
        }
        None
    }

    /// A camera frame captured at `t` (s, runtime clock; see
    /// [`frame_time_on_runtime_clock`](super::convert::frame_time_on_runtime_clock)),
    /// received at `recv_t` (s, runtime clock). Paired with the newest
    /// proprioception and kept as the newest frame (one waits at most: a run
    /// that starts picks it up at once, an older one is dropped).
    pub fn on_frame(&self, frame: RawFrame, t: f64, recv_t: f64) -> Result<(), FrameDrop> {
        let robot_obs = {
            let p = self.inner.proprio.lock().expect("proprio poisoned");
            if let Some(why) = self.proprio_problem(&p, recv_t) {
                if self.inner.running.load(Ordering::Acquire) {
                    self.inner
                        .counters
                        .frames_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Err(FrameDrop::NoProprio(why));
            }
            let (_, tcp) = p.tcp.expect("checked");
            let arm = p.arm.as_ref().map(|(_, q)| q.as_slice()).unwrap_or(&[]);
            robot_obs_from(
                &tcp,
                arm,
                p.gripper_width.unwrap_or(0.0),
                p.last_gripper_action,
            )
        };
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let obs = RawObservation {
            t,
            seq,
            frame,
            robot_obs,
        };
        // Keep only the newest frame: drop a waiting one.
        while self.inner.frames_rx.try_recv().is_ok() {}
        let _ = self.inner.frames_tx.try_send(obs);
        Ok(())
    }

    /// True while a run reads the frames.
    pub fn running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Starts a run (the waiting frame, if any, is its first).
    fn begin_run(&self) {
        self.inner.closed.store(false, Ordering::Release);
        self.inner.running.store(true, Ordering::Release);
        *self.inner.last_command.lock().expect("poisoned") = None;
        self.inner
            .newest_frame_t
            .store(f64::NAN.to_bits(), Ordering::Release);
    }

    fn end_run(&self) {
        self.inner.running.store(false, Ordering::Release);
        self.inner.closed.store(true, Ordering::Release);
    }

    /// The last command sent: time (s, runtime clock), kind and gripper state.
    pub fn last_command(&self) -> Option<(f64, CommandKind, GripperState)> {
        *self.inner.last_command.lock().expect("poisoned")
    }

    /// Capture time (s, runtime clock) of the newest frame handed to the pipeline.
    pub fn newest_frame_t(&self) -> Option<f64> {
        let t = f64::from_bits(self.inner.newest_frame_t.load(Ordering::Acquire));
        t.is_finite().then_some(t)
    }
}

/// Publishes safe commands (the r2r publishers, or a recorder in tests).
pub trait CommandOutput: Send {
    /// Publishes one command (twist / joint command, and the gripper).
    fn publish(&mut self, cmd: &SafeCommand) -> Result<()>;
    /// The run ended (after its last hold); nothing is published after this.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The robot as seen through ROS topics: real time (not lockstep); the source
/// is fed by [`RosInputs`], the sink publishes through a [`CommandOutput`].
pub struct RosIo {
    inputs: RosInputs,
    output: Box<dyn CommandOutput>,
    rate_hz: f64,
    initial_tcp: TcpPose,
    stop: Arc<AtomicBool>,
}

impl RosIo {
    /// An io for one run at `rate_hz`, starting from the latest measured TCP pose
    /// (an error when none is known). `stop` ends the source (the pipeline's stop flag).
    pub fn new(
        inputs: RosInputs,
        output: Box<dyn CommandOutput>,
        rate_hz: f64,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let Some(initial_tcp) = inputs.tcp() else {
            bail!("cannot start: no TCP pose measured yet");
        };
        inputs.begin_run();
        Ok(Self {
            inputs,
            output,
            rate_hz,
            initial_tcp,
            stop,
        })
    }
}

struct RosSource {
    inputs: RosInputs,
    stop: Arc<AtomicBool>,
}

impl ObservationSource for RosSource {
    fn next(&mut self, timeout: Duration) -> Result<Option<RawObservation>> {
        let slice = Duration::from_millis(20);
        let mut waited = Duration::ZERO;
        loop {
            if self.stop.load(Ordering::Relaxed) || self.inputs.inner.closed.load(Ordering::Acquire)
            {
                return Ok(None);
            }
            match self.inputs.inner.frames_rx.recv_timeout(slice) {
                Ok(obs) => {
                    self.inputs
                        .inner
                        .newest_frame_t
                        .store(obs.t.to_bits(), Ordering::Release);
                    self.inputs
                        .inner
                        .counters
                        .frames
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(obs));
                }
                Err(RecvTimeoutError::Timeout) => {
                    waited += slice;
                    if waited >= timeout {
                        bail!(
                            "no usable camera frame within {:.1} s",
                            timeout.as_secs_f64()
                        );
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }
}

struct RosSink {
    inputs: RosInputs,
    output: Box<dyn CommandOutput>,
}

impl CommandSink for RosSink {
    fn send(&mut self, cmd: &SafeCommand) -> Result<()> {
        self.output.publish(cmd)?;
        let c = &self.inputs.inner.counters;
        c.commands.fetch_add(1, Ordering::Relaxed);
        if cmd.kind == CommandKind::Hold {
            c.holds.fetch_add(1, Ordering::Relaxed);
        }
        *self.inputs.inner.last_command.lock().expect("poisoned") =
            Some((cmd.t, cmd.kind, cmd.gripper));
        self.inputs
            .inner
            .proprio
            .lock()
            .expect("proprio poisoned")
            .last_gripper_action = cmd.gripper.as_calvin();
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.inputs.end_run();
        self.output.finish()
    }
}

impl Drop for RosSink {
    /// A pipeline that failed before closing its sink still ends the run.
    fn drop(&mut self) {
        self.inputs.end_run();
    }
}

impl RobotIo for RosIo {
    fn lockstep(&self) -> bool {
        false
    }
    fn control_rate_hz(&self) -> f64 {
        self.rate_hz
    }
    fn initial_tcp(&self) -> TcpPose {
        self.initial_tcp
    }
    fn split(self: Box<Self>) -> (Box<dyn ObservationSource>, Box<dyn CommandSink>) {
        (
            Box::new(RosSource {
                inputs: self.inputs.clone(),
                stop: self.stop,
            }),
            Box::new(RosSink {
                inputs: self.inputs,
                output: self.output,
            }),
        )
    }
}

// ---------------------------------------------------------------- supervisor

/// What the node should do about the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Start a run with this instruction.
    Start(String),
    /// Stop the current run (its exit publishes the hold commands).
    Stop(String),
}

/// The reason of a stop for a new instruction (the node stays enabled).
pub const RESTART: &str = "new instruction";

/// Enable / e-stop / instruction state machine.
///
/// - Starts disabled. `enable: true` enables, unless the e-stop is pressed.
/// - `estop: true` latches the e-stop and disables; a running pipeline stops
///   (publishing `hold_repeats` holds, then going quiet). `estop: false` only
///   releases the button: moving again takes a new `enable: true`.
/// - `enable: false` stops a run the same way.
/// - A run that ends by itself (stale camera → safety silent, an error) leaves the
///   node disabled: a new `enable: true` is needed, never an automatic restart.
/// - A new instruction during a run stops it; it restarts (new episode) with
///   the new instruction once the old one has halted.
/// - A run starts when enabled, not latched, an instruction is set and the
///   inputs are ready.
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    enabled: bool,
    estop_pressed: bool,
    estop_latched: bool,
    instruction: String,
    episode_instruction: Option<String>,
    /// Why the last run ended.
    pub last_end: String,
    /// Messages for the log (drained by the node).
    pub log: VecDeque<String>,
}

impl Supervisor {
    /// Disabled, with a default instruction.
    pub fn new(instruction: &str) -> Self {
        Self {
            instruction: instruction.to_string(),
            ..Default::default()
        }
    }

    /// Enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// E-stop latched.
    pub fn estop_latched(&self) -> bool {
        self.estop_latched
    }

    /// The instruction for the next run.
    pub fn instruction(&self) -> &str {
        &self.instruction
    }

    /// `~/enable` message.
    pub fn on_enable(&mut self, on: bool) {
        if on {
            if self.estop_pressed {
                self.log.push_back(
                    "enable refused: the e-stop is pressed (publish estop: false first)".into(),
                );
                return;
            }
            if self.estop_latched {
                self.log.push_back("e-stop latch cleared by enable".into());
            }
            self.estop_latched = false;
            self.enabled = true;
        } else {
            self.enabled = false;
        }
    }

    /// `~/estop` message.
    pub fn on_estop(&mut self, pressed: bool) {
        self.estop_pressed = pressed;
        if pressed {
            if !self.estop_latched {
                self.log.push_back("E-STOP latched".into());
            }
            self.estop_latched = true;
            self.enabled = false;
        }
    }

    /// `~/instruction` message.
    pub fn on_instruction(&mut self, text: &str) {
        self.instruction = text.trim().to_string();
    }

    /// The run ended (`why`: its `ended_by` or error). `restart`: it was stopped
    /// for a new instruction (see [`Action::Stop`] with [`RESTART`]); the node then
    /// stays enabled and starts the next episode. Otherwise it is disabled.
    pub fn on_run_ended(&mut self, why: &str, restart: bool) {
        self.episode_instruction = None;
        self.last_end = why.to_string();
        if restart {
            return;
        }
        if self.enabled {
            self.log
                .push_back(format!("run ended ({why}): disabled until the next enable"));
        }
        self.enabled = false;
    }

    /// What to do now. `running`: a run is in progress; `missing`: what the
    /// inputs lack (`None` when ready).
    pub fn decide(&mut self, running: bool, missing: Option<&str>) -> Action {
        if running {
            if self.estop_latched {
                return Action::Stop("e-stop".into());
            }
            if !self.enabled {
                return Action::Stop("disabled".into());
            }
            if self
                .episode_instruction
                .as_deref()
                .is_some_and(|i| i != self.instruction)
            {
                return Action::Stop(RESTART.into());
            }
            return Action::None;
        }
        if !self.enabled || self.estop_latched || self.instruction.is_empty() || missing.is_some() {
            return Action::None;
        }
        self.episode_instruction = Some(self.instruction.clone());
        Action::Start(self.instruction.clone())
    }

    /// The node's state in words.
    pub fn state(&self, running: bool, missing: Option<&str>) -> String {
        if self.estop_latched {
            "estop".into()
        } else if running {
            "running".into()
        } else if !self.enabled {
            "idle (disabled)".into()
        } else if self.instruction.is_empty() {
            "waiting: no instruction".into()
        } else if let Some(m) = missing {
            format!("waiting: {m}")
        } else {
            "starting".into()
        }
    }
}

// ---------------------------------------------------------------- shared planner / renderer

/// A planner shared across runs (`run` consumes its planner; the policy is
/// loaded once). Counts plans and planner time.
pub struct SharedPlanner {
    inner: Arc<Mutex<Box<dyn Planner>>>,
    inputs: RosInputs,
}

impl SharedPlanner {
    /// Wraps `planner`; counters go to `inputs`.
    pub fn new(planner: Arc<Mutex<Box<dyn Planner>>>, inputs: RosInputs) -> Self {
        Self {
            inner: planner,
            inputs,
        }
    }
}

impl Planner for SharedPlanner {
    fn reset(&mut self, instruction: &str) -> Result<()> {
        self.inner
            .lock()
            .expect("planner poisoned")
            .reset(instruction)
    }
    fn image_size(&self) -> [usize; 2] {
        self.inner.lock().expect("planner poisoned").image_size()
    }
    fn control_rate_hz(&self) -> f64 {
        self.inner
            .lock()
            .expect("planner poisoned")
            .control_rate_hz()
    }
    fn action_scale(&self) -> crate::runtime::actuate::ActionScale {
        self.inner.lock().expect("planner poisoned").action_scale()
    }
    fn observe(&mut self, frame: &RgbImage, proprio: &[f64], t: f64) -> Result<Option<Plan>> {
        let t0 = std::time::Instant::now();
        let out = self
            .inner
            .lock()
            .expect("planner poisoned")
            .observe(frame, proprio, t);
        let c = self.inputs.counters();
        c.plan_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.plan_calls.fetch_add(1, Ordering::Relaxed);
        if matches!(out, Ok(Some(_))) {
            c.plans.fetch_add(1, Ordering::Relaxed);
        }
        out
    }
}

/// The newest imagined strip `(plan control step, image)`, waiting to be published.
pub type StripSlot = Arc<Mutex<Option<(usize, RgbImage)>>>;

/// A renderer shared across runs that also leaves each strip in a slot for the
/// node to publish.
pub struct PublishingRenderer {
    inner: Arc<Mutex<Box<dyn Renderer>>>,
    slot: StripSlot,
}

impl PublishingRenderer {
    /// Wraps `renderer`; strips go to `slot`.
    pub fn new(renderer: Arc<Mutex<Box<dyn Renderer>>>, slot: StripSlot) -> Self {
        Self {
            inner: renderer,
            slot,
        }
    }
}

impl Renderer for PublishingRenderer {
    fn render(&mut self, plan: &Plan) -> Result<RgbImage> {
        let img = self.inner.lock().expect("renderer poisoned").render(plan)?;
        *self.slot.lock().expect("strip slot poisoned") = Some((plan.control_step, img.clone()));
        Ok(img)
    }
}

/// Rates from monotonically increasing counters, between two reads.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(f64, u64)>,
}

impl RateMeter {
    /// Events per second since the previous call (0 on the first call).
    pub fn rate(&mut self, t: f64, count: u64) -> f64 {
        let r = match self.last {
            Some((t0, c0)) if t > t0 => count.saturating_sub(c0) as f64 / (t - t0),
            _ => 0.0,
        };
        self.last = Some((t, count));
        r
    }
}
