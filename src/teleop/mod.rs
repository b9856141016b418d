//! Teleop comparison: a learned policy beside a human operator, through the
//! same safety layer as every other command (`vw2 teleop`).
//!
//! - [`operator`]: the operator command type (CALVIN relative units, or a
//!   twist in m/s and rad/s), the [`operator::Operator`] trait and the
//!   scripted operator (the simulator's expert with noise, delay and
//!   hesitation) that stands in for a person in tests and benchmarks;
//!   [`keyboard`]: keyboard teleop of a simulator in a terminal;
//!   [`gamepad`]: gamepad teleop (gilrs);
//! - [`arbiter`]: who drives each tick (shadow, takeover with a deadband and
//!   a release time, either party alone), a stale or corrupt operator stream
//!   means hold;
//! - [`session`]: the lockstep loop over CALVIN chains, its per-tick log and
//!   per-subtask measures, and [`session::replay`] of a recorded run;
//! - [`record`]: `ticks.jsonl`, the CALVIN-format dataset of what was
//!   executed and who issued it, thumbnails; [`bag`]: the MCAP bag;
//! - [`report`]: `vw2 teleop report` (`report.json`, a self-contained `report.html`);
//! - [`run`] and [`cli`]: the runs of the three modes and their subcommands.

/// The arbiter lives with the actuator that ticks it.
pub use crate::runtime::arbiter;
pub use crate::runtime::arbiter::Driver;
pub mod bag;
pub mod cli;
pub mod gamepad;
pub mod keyboard;
pub mod operator;
pub mod record;
pub mod report;
pub mod run;
pub mod session;

use serde::{Deserialize, Serialize};

/// How the policy and the operator share a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The operator drives; the policy plans on the same observations every
    /// tick and its would-be command is logged, never executed.
    Shadow,
    /// The policy drives; operator input beyond a deadband takes over at once,
    /// and control returns after the operator released for a while.
    Takeover,
    /// The same start states run once by the policy and once by the operator.
    Paired,
}

impl Mode {
    /// The mode's name in files (`shadow`, `takeover`, `paired`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::Takeover => "takeover",
            Self::Paired => "paired",
        }
    }
}
