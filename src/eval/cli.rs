//! `vw2 eval …`: the CALVIN long-horizon evaluation, its chains, and shard merging.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::chains::{calvin_chains, load_chains, official_chains, NUM_CHAINS};
use super::policy::PolicySpec;
use super::runner::{evaluate, select_jobs, EvalOptions, EP_LEN};
use super::store::{merge_runs, RunInfo};
use crate::io::env_adapter::EnvConfig;

/// `vw2 eval` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// CALVIN's long-horizon protocol: chains of 5 subtasks, SR(1..5) and Avg. Len.
    Calvin(CalvinArgs),
    /// Write CALVIN's evaluation chains (with start states) as JSON.
    CalvinChains {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// How many chains `get_sequences` is asked for (CALVIN: 1000).
        #[arg(long, default_value_t = NUM_CHAINS)]
        num: usize,
    },
    /// Merge shard folders of one evaluation into one (refusing disagreeing duplicates).
    Merge {
        /// The shard folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The merged folder.
        #[arg(long)]
        out: PathBuf,
        /// Key of `results.json` (CALVIN's epoch; default `null`).
        #[arg(long)]
        epoch: Option<String>,
    },
    /// Instruction sensitivity: from each chain's start state, the bundle's first
    /// plan for each of CALVIN's 34 instructions (distinct codes and actions).
    Instructions {
        /// A policy bundle (`policy.yaml` or its folder).
        #[arg(long)]
        policy: PathBuf,
        /// Simulator backend: playtable (built in), calvin or fake.
        #[arg(long, default_value = "playtable")]
        backend: String,
        /// Start states: this many chains from `--start` (CALVIN's official list).
        #[arg(long, default_value_t = 10)]
        chains: usize,
        /// First chain index.
        #[arg(long, default_value_t = 0)]
        start: usize,
        /// JSON report (written atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// What a bundle's codes carry on a dataset it did not train on: the AR's
    /// teacher-forced next-code accuracy (all codes, first step, later steps,
    /// against repeating the previous step) and the encoder's codebook usage.
    Codes {
        /// A policy bundle (`policy.yaml` or its folder).
        #[arg(long)]
        policy: PathBuf,
        /// A CALVIN-format split the bundle did not train on.
        #[arg(long)]
        dataset: PathBuf,
        /// Encoder window in latent steps (as trained: train.yaml `ar.window_latent_steps`).
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Latent steps per AR sequence (as trained: `ar.seq_steps`).
        #[arg(long, default_value_t = 16)]
        seq_steps: usize,
        /// JSON report (written atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `vw2 eval calvin`.
#[derive(Debug, Args)]
pub struct CalvinArgs {
    /// `random`, `scripted` (the backend's expert), `noop`, or a policy bundle (`policy.yaml` or its folder).
    #[arg(long)]
    pub policy: String,
    /// Simulator backend: playtable (built in), calvin (a calvin_env checkout) or fake.
    #[arg(long, default_value = "playtable")]
    pub backend: String,
    /// Number of chains to evaluate (from `--start`).
    #[arg(long, default_value_t = NUM_CHAINS)]
    pub chains: usize,
    /// First chain index.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Evaluate only chains with index % n == i, given as `i/n`.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// Parallel simulator processes (one policy instance each).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Run folder: chains.jsonl, results.json, results.txt, summary.json (a rerun resumes).
    #[arg(long)]
    pub out: PathBuf,
    /// Extra argument for the simulator server (repeatable), e.g. `--sim-arg=--calvin-env=/path`.
    #[arg(long = "sim-arg", allow_hyphen_values = true)]
    pub sim_args: Vec<String>,
    /// Save a PNG strip of the static camera for every failed subtask under DIR/failures/.
    #[arg(long)]
    pub save_failures: bool,
    /// Save a real-versus-imagined PNG strip per subtask under DIR/strips/ (VideoWorld 2 bundles).
    #[arg(long)]
    pub save_strips: bool,
    /// Step budget per subtask (CALVIN: 360).
    #[arg(long, default_value_t = EP_LEN)]
    pub ep_len: usize,
    /// Seed of the random policy (chain i uses seed + i) or of a bundle's sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Re-planning and temporal ensembling (bundles).
    #[command(flatten)]
    pub replan: crate::policy::ReplanArgs,
    /// Evaluate the chains of this JSON file (as written by `calvin-chains`) instead of CALVIN's.
    #[arg(long)]
    pub chains_file: Option<PathBuf>,
    /// Run again the chains recorded as env errors.
    #[arg(long)]
    pub retry_env_errors: bool,
    /// Seconds without a simulator reply before it is declared hung.
    #[arg(long, default_value_t = 10.0)]
    pub env_timeout: f64,
    /// Key of `results.json` (CALVIN's epoch; default `null`).
    #[arg(long)]
    pub epoch: Option<String>,
    /// Safety envelope YAML every command goes through (default: CALVIN's,
    /// which passes every valid CALVIN action); clamps and holds are counted
    /// in results.json.
    #[arg(long)]
    pub safety: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("expected i/n, found {s:?}"))?;
    let i: usize = i.trim().parse().map_err(|e| format!("shard index: {e}"))?;
    let n: usize = n.trim().parse().map_err(|e| format!("shard count: {e}"))?;
    if n == 0 || i >= n {
        return Err(format!("expected 0 <= i < n, found {i}/{n}"));
    }
    Ok((i, n))
}

/// Runs a `vw2 eval` subcommand.
pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::CalvinChains { out, num } => {
            let chains = if num == NUM_CHAINS {
                official_chains().to_vec()
            } else {
                calvin_chains(num)
            };
            let text = serde_json::to_string(&chains)?;
            crate::base::fs::write_atomic(&out, text.as_bytes())?;
            println!("wrote {} chains to {}", chains.len(), out.display());
            Ok(())
        }
        EvalCommand::Merge { dirs, out, epoch } => {
            let m = merge_runs(&dirs, &out, epoch.as_deref())?;
            print!(
                "{}",
                std::fs::read_to_string(out.join(super::store::RESULTS_TXT)).unwrap_or_default()
            );
            println!(
                "merged {} chains ({} env errors) into {}",
                m.chains + m.env_errors,
                m.env_errors,
                out.display()
            );
            Ok(())
        }
        EvalCommand::Calvin(a) => calvin(a),
        EvalCommand::Instructions {
            policy,
            backend,
            chains,
            start,
            out,
        } => {
            let jobs: Vec<_> = select_jobs(official_chains(), start, chains, None)?
                .into_iter()
                .map(|j| (j.index, j.chain))
                .collect();
            let p = super::probe::probe_instructions(&policy, &EnvConfig::new(&backend), &jobs)?;
            crate::base::fs::write_atomic(&out, serde_json::to_string_pretty(&p)?.as_bytes())?;
            println!(
                "{} start states × {} instructions: distinct code tuples {:.2}, distinct action chunks {:.2}, mean pairwise chunk L2 {:.3} (CALVIN units); wrote {}",
                p.starts.len(),
                p.instructions,
                p.mean_distinct_codes,
                p.mean_distinct_actions,
                p.mean_pairwise_action_l2,
                out.display()
            );
            Ok(())
        }
        EvalCommand::Codes {
            policy,
            dataset,
            window,
            seq_steps,
            out,
        } => {
            let r =
                crate::train::ar::next_code_accuracy(&policy, &dataset, window, seq_steps, true)?;
            crate::base::fs::write_atomic(&out, serde_json::to_string_pretty(&r)?.as_bytes())?;
            println!(
                "{} segments, {} latent steps: AR next-code top-1 {:.3} (first step {:.3}, later steps {:.3}; repeating the previous step {:.3}), all {} codes of a step right {:.3}; the encoder used {} codes {:?}; decoder MSE with own codes {:.5} vs another clip's {:.5}; pre-rounding spread {:.3?} levels; wrote {}",
                r.segments,
                r.steps,
                r.top1,
                r.first_step_top1,
                r.later_steps_top1,
                r.repeat_previous_top1,
                r.top1_per_query.len(),
                r.step_exact,
                r.distinct_codes,
                r.distinct_per_query,
                r.dldm.mse_own_codes,
                r.dldm.mse_other_codes,
                r.dldm.level_std_per_dim,
                out.display()
            );
            Ok(())
        }
    }
}

fn calvin(a: CalvinArgs) -> Result<()> {
    let out = a.out.clone();
    let report = run_calvin(a)?;
    print_results(&out);
    println!(
        "selected {} chains: {} already recorded, {} run now in {:.1} s ({} env steps, {:.1} steps/s); results in {}",
        report.resumed + report.ran,
        report.resumed,
        report.ran,
        report.wall_s,
        report.steps,
        report.steps as f64 / report.wall_s.max(1e-9),
        out.display()
    );
    Ok(())
}

/// Prints the run folder's `results.txt` (SR(1..5), Avg. Len., per-task rates).
pub fn print_results(out: &std::path::Path) {
    print!(
        "{}",
        std::fs::read_to_string(out.join(super::store::RESULTS_TXT)).unwrap_or_default()
    );
}

/// Runs `vw2 eval calvin` (also the core of `vw2 demo`) and returns its report.
pub fn run_calvin(a: CalvinArgs) -> Result<super::runner::EvalReport> {
    if a.workers == 0 {
        bail!("--workers: expected at least 1");
    }
    if a.ep_len == 0 {
        bail!("--ep-len: expected at least 1");
    }
    let mut policy = PolicySpec::parse(&a.policy, a.seed)?;
    if let PolicySpec::Bundle { options, .. } = &mut policy {
        *options = a.replan.apply(options.clone());
    }
    let (chains, source) = match &a.chains_file {
        Some(p) => {
            let c = load_chains(p)?;
            let bytes = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
            let digest = super::mt19937::fnv1_32(&bytes, 0x811c_9dc5);
            (c, format!("file:{} fnv1:{digest:08x}", p.display()))
        }
        None => (official_chains().to_vec(), "calvin".to_string()),
    };
    let jobs = select_jobs(&chains, a.start, a.chains, a.shard)?;
    let mut env = EnvConfig::new(&a.backend);
    env.args = a.sim_args;
    env.timeout_s = a.env_timeout;
    let run = RunInfo {
        policy: policy.describe(),
        backend: a.backend.clone(),
        ep_len: a.ep_len,
        chains: source,
    };
    let opts = EvalOptions {
        ep_len: a.ep_len,
        workers: a.workers,
        progress: !a.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        save_failures: a.save_failures,
        save_strips: a.save_strips,
        retry_env_errors: a.retry_env_errors,
        epoch: a.epoch,
        safety: crate::runtime::cli::safety_config(a.safety.as_deref())?,
    };
    evaluate(&env, &policy, jobs, &a.out, &run, &opts)
}
