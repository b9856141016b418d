//! The robot boundary: observations in, safe commands out.
//!
//! A [`RobotIo`] splits into an [`ObservationSource`] (read by the ingest stage)
//! and a [`CommandSink`] (written by the actuate stage), so the two stages run
//! on their own threads. Implementations: [`SimIo`] (a simulator behind the env
//! adapter, in lockstep), [`ReplayIo`] (a recorded CALVIN-format dataset at its
//! recorded times) and [`SyntheticIo`] (real-time frames for benchmarks).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::env_adapter::{EnvAdapter, EnvConfig};
use super::{Observation, RgbImage};
use crate::data::CalvinDataset;
use crate::safety::{SafeCommand, TcpPose};

/// Pixel encodings accepted from cameras (ROS `sensor_msgs/Image` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 3 bytes per pixel, R G B.
    Rgb8,
    /// 3 bytes per pixel, B G R.
    Bgr8,
    /// 1 byte per pixel, grey.
    Mono8,
}

impl Encoding {
    /// Parses a ROS encoding name; anything else is refused with the list of accepted ones.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "rgb8" => Ok(Self::Rgb8),
            "bgr8" => Ok(Self::Bgr8),
            "mono8" => Ok(Self::Mono8),
            other => {
                bail!("image encoding '{other}' is not supported: expected rgb8, bgr8 or mono8")
            }
        }
    }

    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            Self::Rgb8 | Self::Bgr8 => 3,
            Self::Mono8 => 1,
        }
    }
}

/// A camera frame as it arrives, before colour conversion and resizing.
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// Pixel encoding.
    pub encoding: Encoding,
    /// Rows (px).
    pub height: usize,
    /// Columns (px).
    pub width: usize,
    /// Bytes per row (≥ width · channels).
    pub step: usize,
    /// `height · step` bytes.
    pub data: Vec<u8>,
}

impl RawFrame {
    /// An rgb8 frame from an image.
    pub fn rgb(img: &RgbImage) -> Self {
        Self {
            encoding: Encoding::Rgb8,
            height: img.height,
            width: img.width,
            step: img.width * 3,
            data: img.data.clone(),
        }
    }

    /// Checks sizes; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let row = self.width * self.encoding.channels();
        if self.height == 0 || self.width == 0 {
            bail!(
                "image: expected a non-empty image, found {}×{}",
                self.width,
                self.height
            );
        }
        if self.step < row {
            bail!(
                "image.step: expected ≥ width·channels = {row}, found {}",
                self.step
            );
        }
        if self.data.len() != self.height * self.step {
            bail!(
                "image.data: expected height·step = {} bytes, found {}",
                self.height * self.step,
                self.data.len()
            );
        }
        Ok(())
    }
}

/// One observation with its time of validity.
#[derive(Debug, Clone)]
pub struct RawObservation {
    /// Capture time of the frame (s; simulators: step / control rate).
    pub t: f64,
    /// Sequence number (control step for simulators and replay).
    pub seq: u64,
    /// The static camera frame.
    pub frame: RawFrame,
    /// Proprioception in CALVIN's `robot_obs` layout (15 values).
    pub robot_obs: Vec<f64>,
}

/// Where observations come from.
pub trait ObservationSource: Send {
    /// The next observation, or `None` at the end of the stream; waits at most `timeout`.
    fn next(&mut self, timeout: Duration) -> Result<Option<RawObservation>>;
}

/// Where commands go.
pub trait CommandSink: Send {
    /// Sends one command that has passed the safety layer.
    fn send(&mut self, cmd: &SafeCommand) -> Result<()>;
    /// Stops the robot side (end of run).
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A robot or simulator, split into its two halves by the pipeline.
pub trait RobotIo {
    /// True when the robot only advances when commanded (simulators, replay):
    /// the actuate stage then waits for each frame's plan instead of ticking on a clock.
    fn lockstep(&self) -> bool;
    /// Control rate (Hz).
    fn control_rate_hz(&self) -> f64;
    /// The measured TCP pose at start (for the safety layer's reset).
    fn initial_tcp(&self) -> TcpPose;
    /// Splits into the observation source and the command sink.
    fn split(self: Box<Self>) -> (Box<dyn ObservationSource>, Box<dyn CommandSink>);
}

/// The TCP pose in a CALVIN `robot_obs` (xyz m, euler rad).
pub fn tcp_from_robot_obs(robot_obs: &[f64]) -> TcpPose {
    let g = |i: usize| robot_obs.get(i).copied().unwrap_or(f64::NAN);
    TcpPose::new([g(0), g(1), g(2)], [g(3), g(4), g(5)])
}

/// The CALVIN relative action a simulator is stepped with for the safety
/// layer's command `cmd`, from the measured pose `tcp`; when the layer is
/// quiet, no motion with the `gripper` command (±1) it holds.
pub fn sim_action(cmd: Option<&SafeCommand>, tcp: &TcpPose, gripper: f64) -> [f64; 7] {
    match cmd {
        Some(c) => c.relative_action(
            tcp,
            crate::base::units::REL_XYZ_M,
            crate::base::units::REL_EULER_RAD,
        ),
        None => {
            let mut a = [0.0; 7];
            a[6] = gripper;
            a
        }
    }
}

/// A simulator behind the env adapter, in lockstep: every command steps it once
/// (1/30 s of sim time) and the resulting observation goes to the source.
pub struct SimIo {
    env: EnvAdapter,
    first: Observation,
    rate: f64,
}

impl SimIo {
    /// Starts the simulator and resets it (to `robot_obs`/`scene_obs` when given).
    pub fn start(
        cfg: &EnvConfig,
        robot_obs: Option<&[f64]>,
        scene_obs: Option<&[f64]>,
    ) -> Result<Self> {
        let mut env = EnvAdapter::spawn(cfg)?;
        let rate = env.hello().control_hz;
        let first = env.reset(robot_obs, scene_obs)?;
        Ok(Self { env, first, rate })
    }

    /// The adapter (for oracle queries before the run starts).
    pub fn env_mut(&mut self) -> &mut EnvAdapter {
        &mut self.env
    }
}

struct SimSource {
    rx: Receiver<RawObservation>,
}

struct SimSink {
    env: EnvAdapter,
    tx: Sender<RawObservation>,
    current: TcpPose,
    seq: u64,
    rate: f64,
}

fn raw_from_obs(obs: &Observation, seq: u64, rate: f64) -> RawObservation {
    RawObservation {
        t: seq as f64 / rate,
        seq,
        frame: RawFrame::rgb(&obs.rgb_static),
        robot_obs: obs.robot_obs.clone(),
    }
}

impl ObservationSource for SimSource {
    fn next(&mut self, timeout: Duration) -> Result<Option<RawObservation>> {
        match self.rx.recv_timeout(timeout) {
            Ok(o) => Ok(Some(o)),
            Err(RecvTimeoutError::Timeout) => bail!(
                "simulator: no observation within {:.1} s",
                timeout.as_secs_f64()
            ),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
        }
    }
}

impl CommandSink for SimSink {
    fn send(&mut self, cmd: &SafeCommand) -> Result<()> {
        let a = sim_action(Some(cmd), &self.current, cmd.gripper.as_calvin());
        let obs = self.env.step(&a, true)?;
        self.seq += 1;
        self.current = tcp_from_robot_obs(&obs.robot_obs);
        // The source may already be gone at shutdown; that is not an error.
        let _ = self.tx.send(raw_from_obs(&obs, self.seq, self.rate));
        Ok(())
    }
}

impl RobotIo for SimIo {
    fn lockstep(&self) -> bool {
        true
    }
    fn control_rate_hz(&self) -> f64 {
        self.rate
    }
    fn initial_tcp(&self) -> TcpPose {
        tcp_from_robot_obs(&self.first.robot_obs)
    }
    fn split(self: Box<Self>) -> (Box<dyn ObservationSource>, Box<dyn CommandSink>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(raw_from_obs(&self.first, 0, self.rate))
            .expect("receiver alive");
        let current = tcp_from_robot_obs(&self.first.robot_obs);
        (
            Box::new(SimSource { rx }),
            Box::new(SimSink {
                env: self.env,
                tx,
                current,
                seq: 0,
                rate: self.rate,
            }),
        )
    }
}

/// Replays one episode of a CALVIN-format dataset at its recorded times
/// (frame i at i / rate s), in lockstep; commands are collected for comparison.
pub struct ReplayIo {
    frames: Vec<RawObservation>,
    rate: f64,
    commands: Sender<SafeCommand>,
}

impl ReplayIo {
    /// Loads episode `episode` of the dataset at `dir`. Returns the io and a
    /// receiver of every command the pipeline sends.
    pub fn open(
        dir: &std::path::Path,
        episode: usize,
        rate: f64,
    ) -> Result<(Self, Receiver<SafeCommand>)> {
        let ds = CalvinDataset::open(dir)?;
        let &(start, end) = ds.episodes().get(episode).ok_or_else(|| {
            anyhow!(
                "{}: episode {episode} does not exist ({} episodes)",
                dir.display(),
                ds.episodes().len()
            )
        })?;
        let mut frames = Vec::with_capacity(end - start + 1);
        for (k, idx) in (start..=end).enumerate() {
            let f = ds.frame(idx)?;
            frames.push(RawObservation {
                t: k as f64 / rate,
                seq: k as u64,
                frame: RawFrame::rgb(&f.rgb_static),
                robot_obs: f.robot_obs.to_vec(),
            });
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        Ok((
            Self {
                frames,
                rate,
                commands: tx,
            },
            rx,
        ))
    }
}

struct ReplaySource {
    frames: std::vec::IntoIter<RawObservation>,
    gate: Receiver<()>,
    first: bool,
}

impl ObservationSource for ReplaySource {
    fn next(&mut self, timeout: Duration) -> Result<Option<RawObservation>> {
        // Frame k + 1 is released once the command for frame k was sent (lockstep).
        if !self.first {
            match self.gate.recv_timeout(timeout) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {
                    bail!("replay: no command within {:.1} s", timeout.as_secs_f64())
                }
            }
        }
        self.first = false;
        Ok(self.frames.next())
    }
}

struct ReplaySink {
    gate: Sender<()>,
    commands: Sender<SafeCommand>,
}

impl CommandSink for ReplaySink {
    fn send(&mut self, cmd: &SafeCommand) -> Result<()> {
        let _ = self.commands.send(*cmd);
        let _ = self.gate.send(());
        Ok(())
    }
}

impl RobotIo for ReplayIo {
    fn lockstep(&self) -> bool {
        true
    }
    fn control_rate_hz(&self) -> f64 {
        self.rate
    }
    fn initial_tcp(&self) -> TcpPose {
        tcp_from_robot_obs(&self.frames[0].robot_obs)
    }
    fn split(self: Box<Self>) -> (Box<dyn ObservationSource>, Box<dyn CommandSink>) {
        let (gate_tx, gate_rx) = crossbeam_channel::unbounded();
        (
            Box::new(ReplaySource {
                frames: self.frames.into_iter(),
                gate: gate_rx,
                first: true,
            }),
            Box::new(ReplaySink {
                gate: gate_tx,
                commands: self.commands,
            }),
        )
    }
}

/// Synthetic frames for `vw2 bench runtime`. In real-time mode a camera emits
/// frames at `rate` without waiting for the robot; in lockstep mode frame k + 1
/// is emitted as soon as the command for frame k was sent (no waiting at all),
/// which measures the runtime's own obs→command overhead.
pub struct SyntheticIo {
    /// Frame rate (Hz) of the real-time camera.
    pub rate: f64,
    /// The frame sent every time.
    pub frame: RawFrame,
    /// Stop after this many frames.
    pub frames: u64,
    /// Lockstep (true) or real-time (false).
    pub lockstep: bool,
}

struct SyntheticSource {
    rate: f64,
    frame: RawFrame,
    left: u64,
    seq: u64,
    start: Instant,
    gate: Option<Receiver<()>>,
}

impl ObservationSource for SyntheticSource {
    fn next(&mut self, timeout: Duration) -> Result<Option<RawObservation>> {
        if self.left == 0 {
            return Ok(None);
        }
        match &self.gate {
            Some(gate) if self.seq > 0 => match gate.recv_timeout(timeout) {
                Ok(()) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "synthetic io: no command within {:.1} s",
                    timeout.as_secs_f64()
                ),
            },
            Some(_) => {}
            None => {
                let due = self.start + Duration::from_secs_f64(self.seq as f64 / self.rate);
                crate::base::clock::sleep_until(due);
            }
        }
        self.left -= 1;
        let mut robot_obs = vec![0.0; 15];
        robot_obs[2] = 0.5;
        robot_obs[3] = std::f64::consts::PI;
        robot_obs[14] = 1.0;
        let t = if self.gate.is_some() {
            self.seq as f64 / self.rate
        } else {
            crate::base::clock::now_s()
        };
        let obs = RawObservation {
            t,
            seq: self.seq,
            frame: self.frame.clone(),
            robot_obs,
        };
        self.seq += 1;
        Ok(Some(obs))
    }
}

struct GateSink {
    gate: Option<Sender<()>>,
}

impl CommandSink for GateSink {
    fn send(&mut self, _cmd: &SafeCommand) -> Result<()> {
        if let Some(g) = &self.gate {
            let _ = g.send(());
        }
        Ok(())
    }
}

impl RobotIo for SyntheticIo {
    fn lockstep(&self) -> bool {
        self.lockstep
    }
    fn control_rate_hz(&self) -> f64 {
        self.rate
    }
    fn initial_tcp(&self) -> TcpPose {
        TcpPose::new([0.0, 0.0, 0.5], [std::f64::consts::PI, 0.0, 0.0])
    }
    fn split(self: Box<Self>) -> (Box<dyn ObservationSource>, Box<dyn CommandSink>) {
        let (tx, rx) = if self.lockstep {
            let (tx, rx) = crossbeam_channel::unbounded();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        (
            Box::new(SyntheticSource {
                rate: self.rate,
                frame: self.frame,
                left: self.frames,
                seq: 0,
                start: Instant::now(),
                gate: rx,
            }),
            Box::new(GateSink { gate: tx }),
        )
    }
}
