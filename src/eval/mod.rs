//! Policy evaluation: CALVIN's long-horizon protocol (`vw2 eval calvin`).
//!
//! - [`chains`]: CALVIN's 1000 evaluation chains, generated exactly as the
//!   official code does (numpy's legacy MT19937 ported in [`mt19937`]);
//! - [`sentences`]: CALVIN's validation instruction per task;
//! - [`policy`]: the [`policy::EvalPolicy`] trait, the `random`, `scripted`
//!   and `noop` baselines and VideoWorld 2 bundles in closed loop;
//! - [`runner`]: the rollout (reset once per chain, EP_LEN steps per subtask,
//!   oracle after every step, stop at the first failure), parallel workers,
//!   env-error retry and resumable `chains.jsonl`;
//! - [`metrics`] and [`store`]: SR(1..5), Avg. Len., per-task rates, CALVIN's
//!   `results.json` layout, shard merging;
//! - [`failures`]: PNG strips of failed subtasks;
//! - [`probe`]: instruction sensitivity of a bundle's first plan;
//! - [`cli`]: the `vw2 eval` subcommands.

pub mod chains;
pub mod cli;
pub mod demo;
pub mod failures;
pub mod metrics;
pub mod mt19937;
pub mod policy;
pub mod probe;
pub mod runner;
pub mod sentences;
pub mod store;
pub mod strips;

pub use chains::{calvin_chains, official_chains, Chain, InitialCondition};
pub use metrics::{ChainRecord, Metrics, SubtaskRecord, TaskInfo};
pub use policy::{EvalPolicy, PolicySpec};
pub use runner::{evaluate, rollout_chain, Capture, EvalJob, EvalOptions, EvalReport, EP_LEN};
