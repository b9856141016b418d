//! The real-time runtime: a staged pipeline on crossbeam channels.
//!
//! - **Ingest** reads observations from the robot, converts frames to RGB and
//!   preprocesses them as training did ([`crate::base::image::preprocess`]),
//!   and stamps the watchdog clock.
//! - **Plan** runs the [`Planner`] (the closed-loop policy) on every frame.
//! - **Actuate** ticks the [`actuate::Actuator`]: it plays the newest action
//!   chunk and sends every command through the safety layer. On a real robot
//!   it ticks at the control rate; on a simulator or a replay (lockstep) it
//!   acts once per frame, after that frame's plan. CALVIN evaluation and the
//!   teleop comparison tick the same actuator.
//! - **Monitor** renders imagined futures from plans; its queue is bounded and
//!   drops the oldest, so it never blocks plan or actuate.
//!
//! Every stage is a [`stages::Stage`] (start, process, stop), and every
//! message carries the capture time of the frame it derives from. The policy
//! bundle owns the control rate; [`run`] refuses a robot at another rate.

pub mod actuate;
pub mod arbiter;
pub mod cli;
/// The process clock lives in [`crate::base::clock`]; re-exported for the stages.
pub use crate::base::clock;
pub mod ingest;
pub mod metrics;
pub mod operator;
pub mod pipeline;
pub mod planner;
mod queue;
pub mod realtime;
pub mod stages;

pub use pipeline::{run, RunReport, RuntimeConfig, TeleopLink, TeleopStats};
pub use planner::{BusyRenderer, DecoderRenderer, NullPlanner, Planner, Renderer};
pub use realtime::PhaseAligner;
