//! `vw2 teleop run | report | replay`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::arbiter::{Control, TakeoverConfig};
use super::operator::ScriptedOperatorConfig;
use super::record::read_ticks;
use super::run::{run_teleop, OperatorInput, PairOrder, TeleopOptions};
use super::session::{replay, SessionConfig, TickLog};
use super::Mode;
use crate::eval::chains::official_chains;
use crate::eval::policy::PolicySpec;
use crate::io::env_adapter::EnvConfig;

/// `vw2 teleop` subcommands.
#[derive(Debug, Subcommand)]
pub enum TeleopCommand {
    /// Run the policy beside an operator on CALVIN chains (shadow, takeover or paired).
    Run(RunArgs),
    /// Compare runs: `report.json` and a self-contained `report.html`.
    Report {
        /// Run folders (as written by `vw2 teleop run`).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Feed a run's recorded inputs through the pipeline again and compare the outputs.
    Replay {
        /// A run folder.
        run: PathBuf,
        /// Safety envelope YAML the run used (default: CALVIN's).
        #[arg(long)]
        safety: Option<PathBuf>,
    },
}

/// `vw2 teleop run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// shadow: the operator drives, the policy is logged; takeover: the policy drives
    /// until the operator takes over; paired: each chain once by each.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// `random`, `scripted`, `noop`, or a policy bundle.
    #[arg(long, default_value = "policies/playtable-small")]
    pub policy: String,
    /// Simulator backend: playtable (built in) or fake.
    #[arg(long, default_value = "playtable")]
    pub backend: String,
    /// Chains to run, from `--start` (CALVIN's official list).
    #[arg(long, default_value_t = 5)]
    pub chains: usize,
    /// First chain index.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Paired mode: who goes first.
    #[arg(long, value_enum, default_value = "policy-first")]
    pub order: PairOrder,
    /// Who operates: the scripted operator, or you at this terminal's keyboard
    /// or on a gamepad (real-time pace; the key or button map is printed).
    #[arg(long, value_enum, default_value = "scripted")]
    pub input: OperatorInput,
    /// Scripted operator settings (YAML: noise_std, delay_steps, hesitation_prob,
    /// hesitation_s, intervene_after_s, intervene_for_s, stop_after, seed).
    #[arg(long)]
    pub operator: Option<PathBuf>,
    /// Takeover: operator motion at or below this is no input (CALVIN units).
    #[arg(long, default_value_t = TakeoverConfig::default().deadband)]
    pub deadband: f64,
    /// Takeover: seconds inside the deadband before the policy drives again.
    #[arg(long, default_value_t = TakeoverConfig::default().release_s)]
    pub release_s: f64,
    /// Safety envelope YAML (default: CALVIN's).
    #[arg(long)]
    pub safety: Option<PathBuf>,
    /// Step budget per subtask (CALVIN: 360).
    #[arg(long, default_value_t = crate::eval::EP_LEN)]
    pub ep_len: usize,
    /// Run folder (must be new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Do not write the CALVIN dataset.
    #[arg(long)]
    pub no_dataset: bool,
    /// Do not write the MCAP bag.
    #[arg(long)]
    pub no_bag: bool,
    /// Seed of a bundle's sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Extra argument for the simulator server (repeatable).
    #[arg(long = "sim-arg", allow_hyphen_values = true)]
    pub sim_args: Vec<String>,
}

/// Reads a scripted operator YAML (unknown keys are refused).
pub fn operator_config(path: Option<&std::path::Path>) -> Result<ScriptedOperatorConfig> {
    let Some(p) = path else {
        return Ok(ScriptedOperatorConfig::default());
    };
    let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let cfg: ScriptedOperatorConfig =
        serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    Ok(cfg)
}

/// The options of `vw2 teleop run`.
pub fn options(a: &RunArgs) -> Result<TeleopOptions> {
    if a.out.exists() && std::fs::read_dir(&a.out)?.next().is_some() {
        bail!(
            "--out {}: the folder is not empty; give a new one (runs are not overwritten)",
            a.out.display()
        );
    }
    let all = official_chains();
    if a.start + a.chains > all.len() || a.chains == 0 {
        bail!(
            "--start {} --chains {}: expected 1 or more chains within CALVIN's {}",
            a.start,
            a.chains,
            all.len()
        );
    }
    let mut env = EnvConfig::new(&a.backend);
    env.args = a.sim_args.clone();
    Ok(TeleopOptions {
        input: a.input,
        mode: a.mode,
        policy: PolicySpec::parse(&a.policy, a.seed)?,
        operator: operator_config(a.operator.as_deref())?,
        env,
        chains: (a.start..a.start + a.chains)
            .map(|i| (i, all[i].clone()))
            .collect(),
        order: a.order,
        takeover: TakeoverConfig {
            deadband: a.deadband,
            release_s: a.release_s,
        },
        safety: crate::runtime::cli::safety_config(a.safety.as_deref())?,
        ep_len: a.ep_len,
        out: a.out.clone(),
        dataset: !a.no_dataset,
        bag: !a.no_bag,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
}

/// Runs a `vw2 teleop` subcommand.
pub fn run(cmd: TeleopCommand) -> Result<()> {
    match cmd {
        TeleopCommand::Run(a) => {
            let o = options(&a)?;
            let s = run_teleop(&o)?;
            let r = super::report::build(std::slice::from_ref(&o.out))?;
            for (party, p) in &r.parties {
                println!(
                    "{party:>9}: {} chains, Avg. Len. {:.2}, SR(1..5) {}",
                    p.chains,
                    p.avg_len,
                    p.sr.iter()
                        .map(|v| format!("{:.0}%", v * 100.0))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            if let Some(sh) = &r.shadow {
                println!(
                    "   shadow: translation cosine {:.3}, MAE xyz {:.3} {:.3} {:.3}, gripper agreement {:.1}%",
                    sh.mean_cosine,
                    sh.mae[0],
                    sh.mae[1],
                    sh.mae[2],
                    sh.gripper_agreement * 100.0
                );
            }
            if let Some(t) = &r.takeover {
                println!(
                    " takeover: {} interventions ({:.2}/min), autonomy {:.1}%",
                    t.interventions,
                    t.interventions_per_minute,
                    t.autonomy_ratio * 100.0
                );
            }
            println!("{:.1} s; run folder {}", s.wall_s, o.out.display());
            Ok(())
        }
        TeleopCommand::Report { runs, out } => {
            let r = super::report::write(&runs, &out)?;
            println!(
                "report over {} runs ({} parties, {} tasks): {}",
                r.runs.len(),
                r.parties.len(),
                r.tasks.len(),
                out.join("report.html").display()
            );
            Ok(())
        }
        TeleopCommand::Replay { run, safety } => {
            let summary = super::report::read_run(&run)?;
            let ticks = read_ticks(&run)?;
            let safety = crate::runtime::cli::safety_config(safety.as_deref())?;
            let mut mismatches = 0usize;
            let mut total = 0usize;
            for party in ["shadow", "takeover", "policy", "operator"] {
                let mine: Vec<TickLog> =
                    ticks.iter().filter(|t| t.party == party).cloned().collect();
                if mine.is_empty() {
                    continue;
                }
                let cfg = SessionConfig {
                    mode: summary.mode,
                    control: control_of(party),
                    takeover: summary.takeover,
                    safety: safety.clone(),
                    ep_len: summary.ep_len,
                    realtime: false,
                };
                let again = replay(&mine, &cfg)?;
                total += mine.len();
                mismatches += mine.iter().zip(&again).filter(|(a, b)| a != b).count();
            }
            println!("replayed {total} ticks: {mismatches} differ from the log");
            if mismatches > 0 {
                bail!(
                    "{}: {mismatches} of {total} replayed ticks differ",
                    run.display()
                );
            }
            Ok(())
        }
    }
}

/// The control of a party name.
pub fn control_of(party: &str) -> Control {
    match party {
        "shadow" => Control::Shadow,
        "takeover" => Control::Takeover,
        "operator" => Control::OperatorOnly,
        _ => Control::PolicyOnly,
    }
}
