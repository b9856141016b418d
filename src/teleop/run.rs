//! The runs of `vw2 teleop run`: one simulator, one policy, one operator,
//! CALVIN chains in order; in paired mode each chain is run by both parties
//! from the same start state. Everything lands in one run folder:
//! `run.json` (rewritten atomically after every chain), `ticks.jsonl`, the
//! dataset, the bag and the thumbnails.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::arbiter::{Control, TakeoverConfig};
use super::operator::{Operator, ScriptedOperator, ScriptedOperatorConfig};
use super::record::{RecorderOptions, RunRecorder, Thumbnail};
use super::session::{run_chain, ChainRun, SessionConfig};
use super::Mode;
use crate::eval::chains::Chain;
use crate::eval::policy::PolicySpec;
use crate::io::env_adapter::{EnvAdapter, EnvConfig};
use crate::safety::SafetyConfig;

/// The file with a run's outcome.
pub const RUN_FILE: &str = "run.json";

/// Which party of a pair goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PairOrder {
    /// The policy, then the operator, on every chain.
    PolicyFirst,
    /// The operator, then the policy.
    OperatorFirst,
    /// Alternating: the policy first on even chains.
    Alternate,
}

/// Who the operator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OperatorInput {
    /// The scripted operator (the expert with noise, delay, hesitation).
    Scripted,
    /// A person at this terminal's keyboard (the run is paced in real time).
    Keyboard,
    /// A person on the first gamepad gilrs finds (the run is paced in real time).
    Gamepad,
}

impl OperatorInput {
    /// Whether a person operates: the run is then paced at the control rate.
    pub fn is_person(self) -> bool {
        !matches!(self, Self::Scripted)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct TeleopOptions {
    /// Who the operator is.
    pub input: OperatorInput,
    /// The mode.
    pub mode: Mode,
    /// The policy.
    pub policy: PolicySpec,
    /// The scripted operator's settings.
    pub operator: ScriptedOperatorConfig,
    /// The simulator.
    pub env: EnvConfig,
    /// `(index, chain)` to run, in order.
    pub chains: Vec<(usize, Chain)>,
    /// Paired mode: who goes first.
    pub order: PairOrder,
    /// Takeover settings.
    pub takeover: TakeoverConfig,
    /// The safety envelope.
    pub safety: SafetyConfig,
    /// Step budget per subtask.
    pub ep_len: usize,
    /// The run folder.
    pub out: PathBuf,
    /// Write the CALVIN dataset.
    pub dataset: bool,
    /// Write the MCAP bag.
    pub bag: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// One party's chain, as stored in `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyChain {
    /// `shadow`, `takeover`, `policy` or `operator`.
    pub party: String,
    /// The chain's outcome and measures.
    #[serde(flatten)]
    pub run: ChainRun,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The mode.
    pub mode: Mode,
    /// The policy.
    pub policy: String,
    /// The operator.
    pub operator: String,
    /// The simulator backend.
    pub backend: String,
    /// Control rate (Hz).
    pub control_rate_hz: f64,
    /// Step budget per subtask.
    pub ep_len: usize,
    /// Takeover settings.
    pub takeover: TakeoverConfig,
    /// Every party's chains, in the order they ran.
    pub chains: Vec<PartyChain>,
    /// Frames the report shows.
    pub thumbnails: Vec<Thumbnail>,
    /// Wall time (s).
    pub wall_s: f64,
    /// `true` once every chain ran.
    pub complete: bool,
}

fn controls(mode: Mode, order: PairOrder, k: usize) -> Vec<Control> {
    match mode {
        Mode::Shadow => vec![Control::Shadow],
        Mode::Takeover => vec![Control::Takeover],
        Mode::Paired => {
            let policy_first = match order {
                PairOrder::PolicyFirst => true,
                PairOrder::OperatorFirst => false,
                PairOrder::Alternate => k.is_multiple_of(2),
            };
            if policy_first {
                vec![Control::PolicyOnly, Control::OperatorOnly]
            } else {
                vec![Control::OperatorOnly, Control::PolicyOnly]
            }
        }
    }
}

/// Runs every chain and writes the run folder; returns `run.json`'s content.
pub fn run_teleop(o: &TeleopOptions) -> Result<RunSummary> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("{}: cannot create", o.out.display()))?;
    o.takeover.validate()?;
    let mut env = EnvAdapter::spawn(&o.env)?;
    let rate = env.hello().control_hz;
    let safety = o
        .safety
        .clone()
        .with_control_rate(rate, &format!("the simulator '{}'", o.env.backend))
        .map_err(|e| anyhow::anyhow!("safety envelope: {e}"))?;
    let mut policy = o.policy.instantiate()?;
    crate::runtime::actuate::check_control_rate(
        policy.control_rate_hz().unwrap_or(rate),
        rate,
        "simulator",
    )?;
    let mut operator: Box<dyn Operator> = match o.input {
        OperatorInput::Scripted => Box::new(ScriptedOperator::new(o.operator.clone(), rate)?),
        OperatorInput::Keyboard => Box::new(super::keyboard::KeyboardOperator::new()?),
        OperatorInput::Gamepad => Box::new(super::gamepad::GamepadOperator::new()?),
    };
    let mut rec = RunRecorder::create(RecorderOptions {
        dir: o.out.clone(),
        mode: o.mode,
        dataset: o.dataset,
        bag: o.bag,
        thumbnails: 6,
        rate_hz: rate,
    })?;
    let mut summary = RunSummary {
        mode: o.mode,
        policy: o.policy.describe(),
        operator: operator.name(),
        backend: o.env.backend.clone(),
        control_rate_hz: rate,
        ep_len: o.ep_len,
        takeover: o.takeover,
        chains: vec![],
        thumbnails: vec![],
        wall_s: 0.0,
        complete: false,
    };
    let bar = if o.progress && !o.input.is_person() {
        indicatif::ProgressBar::new(o.chains.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} chains {elapsed} {msg}")
            .expect("template"),
    );
    let run_path = o.out.join(RUN_FILE);
    for (k, (index, chain)) in o.chains.iter().enumerate() {
        for control in controls(o.mode, o.order, k) {
            let cfg = SessionConfig {
                mode: o.mode,
                control,
                takeover: o.takeover,
                safety: safety.clone(),
                ep_len: o.ep_len,
                realtime: o.input.is_person(),
            };
            let run = run_chain(
                &mut env,
                Some(policy.as_mut()),
                Some(operator.as_mut()),
                chain,
                *index,
                &cfg,
                &mut rec,
            )
            .with_context(|| format!("chain {index} ({})", cfg.party()))?;
            tracing::info!(
                chain = index,
                party = cfg.party(),
                completed = run.completed,
                "chain done"
            );
            summary.chains.push(PartyChain {
                party: cfg.party().into(),
                run,
            });
        }
        summary.wall_s = t0.elapsed().as_secs_f64();
        crate::base::fs::write_atomic(
            &run_path,
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = env.close();
    summary.thumbnails = rec.finish()?;
    summary.wall_s = t0.elapsed().as_secs_f64();
    summary.complete = true;
    crate::base::fs::write_atomic(
        &run_path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}
