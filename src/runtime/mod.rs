//! The real-time runtime: a staged pipeline on crossbeam channels.
//!
//! - **Ingest** reads observations from the robot, converts and resizes frames
//!   (OpenCV) and stamps the watchdog clock.
//! - **Plan** runs the [`Planner`] (the closed-loop policy) on every frame.
//! - **Actuate** plays the newest action chunk and sends every command through
//!   the [`SafetyLayer`]. On a real robot it ticks at the control rate; on a
//!   simulator or a replay (lockstep) it acts once per frame, after that frame's plan.
//! - **Monitor** renders imagined futures from plans; its queue is bounded and
//!   drops the oldest, so it never blocks plan or actuate.
//!
//! Every stage has a lifecycle (start, process, stop), and every message
//! carries the capture time of the frame it derives from.

pub mod actuate;
pub mod cli;
/// The process clock lives in [`crate::base::clock`]; re-exported for the stages.
pub use crate::base::clock;
pub mod ingest;
pub mod metrics;
pub mod stages;

pub use stages::{
    run, BusyRenderer, DecoderRenderer, NullPlanner, PhaseAligner, Planner, Renderer, RunReport,
    RuntimeConfig, TeleopLink, TeleopStats,
};
