//! `vw2 demo`, the main job: the bundled policy closed-loop on the built-in
//! simulator, over the first few CALVIN evaluation chains with the official
//! protocol. It prints each subtask's outcome, SR(1..5) and Avg. Len., and
//! writes a real-versus-imagined PNG strip per subtask.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

use super::cli::{print_results, run_calvin, CalvinArgs};
use super::runner::EP_LEN;
use super::store::{CHAINS_FILE, RESULTS_JSON, RESULTS_TXT, RUN_FILE, SUMMARY_JSON};
use crate::io::env_adapter::EnvConfig;

/// The bundled policy, relative to the repository root.
pub const BUNDLED_POLICY: &str = "policies/playtable-small";

/// `vw2 demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Policy bundle (default: the bundled `policies/playtable-small`).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// CALVIN evaluation chains to run (the first N of the official 1000).
    #[arg(long, default_value_t = 4)]
    pub chains: usize,
    /// Simulator backend.
    #[arg(long, default_value = "playtable")]
    pub backend: String,
    /// Parallel simulator processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Output folder (results and `strips/`); a previous demo's files in it are replaced.
    #[arg(long, default_value = "vw2_demo")]
    pub out: PathBuf,
    /// Step budget per subtask (CALVIN: 360).
    #[arg(long, default_value_t = EP_LEN)]
    pub ep_len: usize,
    /// Seed of the policy's sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Re-planning and temporal ensembling.
    #[command(flatten)]
    pub replan: crate::policy::ReplanArgs,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// The bundle to run: `--policy`, else the bundled one (looked up in the
/// working directory, then beside the crate's sources).
pub fn resolve_policy(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.to_path_buf());
    }
    let candidates = [
        PathBuf::from(BUNDLED_POLICY),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_POLICY),
    ];
    for c in &candidates {
        if c.join("policy.yaml").is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "no --policy given and the bundled policy was not found (looked for {} and {})",
        candidates[0].join("policy.yaml").display(),
        candidates[1].join("policy.yaml").display()
    )
}

/// Removes what an earlier demo wrote to `dir` (only the demo's own files).
fn clear_previous(dir: &Path) -> Result<()> {
    for f in [
        CHAINS_FILE,
        RUN_FILE,
        RESULTS_JSON,
        RESULTS_TXT,
        SUMMARY_JSON,
    ] {
        let p = dir.join(f);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        }
    }
    for sub in ["strips", "failures"] {
        let d = dir.join(sub);
        if !d.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&d)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "png") {
                std::fs::remove_file(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// Runs the demo; prints the outcome.
pub fn run(a: DemoArgs) -> Result<()> {
    if a.chains == 0 {
        bail!("--chains: expected at least 1");
    }
    let policy_path = resolve_policy(a.policy.as_deref())?;
    clear_previous(&a.out)?;
    println!(
        "vw2 demo: {} on {} ({} CALVIN chains, {} steps per subtask)",
        policy_path.display(),
        a.backend,
        a.chains,
        a.ep_len
    );
    let report = run_calvin(CalvinArgs {
        policy: policy_path.to_string_lossy().into_owned(),
        backend: a.backend,
        chains: a.chains,
        start: 0,
        shard: None,
        workers: a.workers,
        out: a.out.clone(),
        sim_args: vec![],
        save_failures: false,
        save_strips: true,
        ep_len: a.ep_len,
        seed: a.seed,
        replan: a.replan,
        chains_file: None,
        retry_env_errors: false,
        env_timeout: EnvConfig::new("").timeout_s,
        epoch: None,
        safety: None,
        no_progress: a.no_progress,
    })?;
    for rec in report.records.values() {
        let mut line = format!("chain {:>3}:", rec.index);
        if rec.env_error {
            line.push_str(" simulator error (not counted)");
        }
        for st in &rec.subtasks {
            let mark = if st.success { "ok" } else { "FAIL" };
            line.push_str(&format!(" {} {mark} ({} steps);", st.task, st.steps));
        }
        for t in rec.tasks.iter().skip(rec.subtasks.len()) {
            line.push_str(&format!(" {t} -;"));
        }
        println!("{}", line.trim_end_matches(';'));
    }
    println!();
    print_results(&a.out);
    println!(
        "{} env steps in {:.1} s; real (top) vs imagined (bottom) strips in {}",
        report.steps,
        report.wall_s,
        a.out.join("strips").display()
    );
    Ok(())
}
