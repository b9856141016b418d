//! `vw2 train …` and `vw2 finetune-head`.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::ar::{train_ar, ArTrainOptions};
use super::config::{
    load_or_default, load_stage, AllStagesConfig, ArStageConfig, HeadStageConfig, LdmStageConfig,
};
use super::head::{finetune_head, HeadTrainOptions};
use super::ldm::{train_ldm, LdmTrainOptions};
use super::run::RunOptions;
use crate::policy::bundle::PolicySpec;

/// Settings every trainer accepts.
#[derive(Debug, Clone, Args)]
pub struct LoopArgs {
    /// Seed of the initialization and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override `train.steps` of the config.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Override `train.batch_size` of the config.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Delete the run's checkpoints and start over (default: resume from the newest).
    #[arg(long)]
    pub restart: bool,
    /// Never show a progress bar (default: shown when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

impl LoopArgs {
    fn run_options(&self) -> RunOptions {
        RunOptions {
            progress: !self.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            restart: self.restart,
            halt_after: None,
        }
    }

    fn apply(&self, train: &mut super::config::TrainConfig) {
        if let Some(s) = self.steps {
            train.steps = s;
        }
        if let Some(b) = self.batch_size {
            train.batch_size = b;
        }
    }
}

/// `vw2 train …`.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// dLDM warm-up: encoder + QFormer + FSQ + coarse decoder on unlabelled clips.
    Ldm(LdmArgs),
    /// AR transformer: next-code prediction on the frozen encoder's codes.
    Ar(ArArgs),
    /// Chain ldm → ar → finetune-head into one policy bundle.
    All(AllArgs),
    /// The end-to-end baseline: image + proprio + instruction → action chunk,
    /// trained on the labelled episodes only (no codes, no unlabelled video).
    E2e(E2eArgs),
}

/// `vw2 train e2e`.
#[derive(Debug, Clone, Args)]
pub struct E2eArgs {
    /// CALVIN-format split.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Output folder (e2e.yaml, e2e.safetensors, metrics.json, split.json; the run in train/).
    #[arg(long)]
    pub out: PathBuf,
    /// Stage config YAML (see `E2eStageConfig`), or a `train all` file (its `e2e:` section).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fraction of the training episodes that are labelled, in (0, 1] (the same
    /// subset `finetune-head` takes for the same seed).
    #[arg(long, default_value_t = 0.1)]
    pub label_fraction: f64,
    /// Loop settings.
    #[command(flatten)]
    pub run: LoopArgs,
}

/// `vw2 train ldm`.
#[derive(Debug, Clone, Args)]
pub struct LdmArgs {
    /// CALVIN-format split (only `rgb_static` is read).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Run folder (checkpoints, loss.csv, dldm.safetensors, ldm_output.yaml).
    #[arg(long)]
    pub out: PathBuf,
    /// Stage config YAML (see `LdmStageConfig`; default: tiny sizes), or a `train all` file (its `ldm:` section).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Take the dLDM sizes and image size from this policy.yaml instead.
    #[arg(long)]
    pub policy_config: Option<PathBuf>,
    /// Loop settings.
    #[command(flatten)]
    pub run: LoopArgs,
}

/// `vw2 train ar`.
#[derive(Debug, Clone, Args)]
pub struct ArArgs {
    /// CALVIN-format split (language annotations give the instructions).
    #[arg(long)]
    pub dataset: PathBuf,
    /// The trained dLDM: a `vw2 train ldm` run folder or a policy bundle.
    #[arg(long)]
    pub dldm: PathBuf,
    /// Run folder (checkpoints, loss.csv, ar.safetensors, bundle/).
    #[arg(long)]
    pub out: PathBuf,
    /// Stage config YAML (see `ArStageConfig`), or a `train all` file (its `ar:` section).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Loop settings.
    #[command(flatten)]
    pub run: LoopArgs,
}

/// `vw2 finetune-head`.
#[derive(Debug, Clone, Args)]
pub struct FinetuneHeadArgs {
    /// Labelled CALVIN-format split.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Input policy bundle (its dLDM and AR are frozen and copied).
    #[arg(long)]
    pub policy: PathBuf,
    /// Fraction of the training episodes whose windows are labelled, in (0, 1].
    #[arg(long, default_value_t = 0.1)]
    pub label_fraction: f64,
    /// Output bundle folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Name of the output bundle (default: the input's name with `-head`).
    #[arg(long)]
    pub name: Option<String>,
    /// Validate on this split instead of held-out episodes of --dataset.
    #[arg(long)]
    pub val_dataset: Option<PathBuf>,
    /// Teleop datasets (`vw2 teleop run`): learn from the operator's episodes
    /// (`operator`), only its takeovers (`interventions`), or everything (`all`).
    #[arg(long, value_enum, default_value = "all")]
    pub source: crate::teleop::record::EpisodeSource,
    /// Stage config YAML (see `HeadStageConfig`), or a `train all` file (its `head:` section).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Loop settings.
    #[command(flatten)]
    pub run: LoopArgs,
}

/// `vw2 train all`.
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    /// CALVIN-format split.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Output policy bundle folder (stage runs go to OUT/train/{ldm,ar,head}).
    #[arg(long)]
    pub out: PathBuf,
    /// Config YAML with optional `ldm:`, `ar:` and `head:` sections.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Label fraction of the head stage.
    #[arg(long, default_value_t = 1.0)]
    pub label_fraction: f64,
    /// Name of the output bundle (default: `vw2-trained-head`).
    #[arg(long)]
    pub name: Option<String>,
    /// Validation split for the head stage.
    #[arg(long)]
    pub val_dataset: Option<PathBuf>,
    /// Loop settings (--steps and --batch-size apply to every stage).
    #[command(flatten)]
    pub run: LoopArgs,
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn ldm_config(args: &LdmArgs) -> Result<LdmStageConfig> {
    let mut cfg: LdmStageConfig = load_stage(args.config.as_deref(), "ldm")?;
    if let Some(p) = &args.policy_config {
        let yaml = if p.is_dir() {
            p.join("policy.yaml")
        } else {
            p.clone()
        };
        let spec = PolicySpec::from_file(&yaml)?;
        cfg.model = spec.components.dldm.config;
        cfg.image_size = spec.image_size;
    }
    args.run.apply(&mut cfg.train);
    Ok(cfg)
}

/// Runs `vw2 train …`; prints a JSON summary.
pub fn run_train(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Ldm(a) => {
            let config = ldm_config(&a)?;
            let r = train_ldm(&LdmTrainOptions {
                dataset: a.dataset,
                out: a.out,
                config,
                seed: a.run.seed,
                run: a.run.run_options(),
            })?;
            print_json(&r)
        }
        TrainCommand::Ar(a) => {
            let mut config: ArStageConfig = load_stage(a.config.as_deref(), "ar")?;
            a.run.apply(&mut config.train);
            let r = train_ar(&ArTrainOptions {
                dataset: a.dataset,
                dldm: a.dldm,
                out: a.out,
                config,
                seed: a.run.seed,
                run: a.run.run_options(),
            })?;
            print_json(&r)
        }
        TrainCommand::All(a) => print_json(&train_all(&a)?),
        TrainCommand::E2e(a) => {
            let mut config: super::config::E2eStageConfig = load_stage(a.config.as_deref(), "e2e")?;
            a.run.apply(&mut config.train);
            let r = super::e2e::train_e2e(&super::e2e::E2eTrainOptions {
                dataset: a.dataset,
                out: a.out,
                config,
                label_fraction: a.label_fraction,
                seed: a.run.seed,
                run: a.run.run_options(),
            })?;
            print_json(&r)
        }
    }
}

/// Runs `vw2 finetune-head`; prints a JSON summary.
pub fn run_finetune_head(a: FinetuneHeadArgs) -> Result<()> {
    let mut config: HeadStageConfig = load_stage(a.config.as_deref(), "head")?;
    a.run.apply(&mut config.train);
    let r = finetune_head(&HeadTrainOptions {
        dataset: a.dataset,
        val_dataset: a.val_dataset,
        policy: a.policy,
        label_fraction: a.label_fraction,
        source: a.source,
        seed: a.run.seed,
        out: a.out,
        name: a.name,
        config,
        run: a.run.run_options(),
    })?;
    print_json(&r)
}

/// What `vw2 train all` did.
#[derive(Debug, Serialize)]
pub struct AllResult {
    /// The ldm stage.
    pub ldm: super::ldm::LdmTrainResult,
    /// The AR stage.
    pub ar: super::ar::ArTrainResult,
    /// The head stage.
    pub head: super::head::HeadTrainResult,
}

/// ldm → ar → finetune-head; the final bundle is `args.out`.
pub fn train_all(a: &AllArgs) -> Result<AllResult> {
    let mut cfg: AllStagesConfig = load_or_default(a.config.as_deref())?;
    a.run.apply(&mut cfg.ldm.train);
    a.run.apply(&mut cfg.ar.train);
    a.run.apply(&mut cfg.head.train);
    let runs = a.out.join("train");
    let ldm_dir = runs.join("ldm");
    let ar_dir = runs.join("ar");
    let run = a.run.run_options();
    let ldm = train_ldm(&LdmTrainOptions {
        dataset: a.dataset.clone(),
        out: ldm_dir.clone(),
        config: cfg.ldm,
        seed: a.run.seed,
        run: run.clone(),
    })?;
    let ar = train_ar(&ArTrainOptions {
        dataset: a.dataset.clone(),
        dldm: ldm_dir,
        out: ar_dir,
        config: cfg.ar,
        seed: a.run.seed,
        run: run.clone(),
    })?;
    let bundle = ar
        .bundle
        .clone()
        .ok_or_else(|| anyhow!("the AR stage did not complete"))?;
    let head = finetune_head(&HeadTrainOptions {
        dataset: a.dataset.clone(),
        val_dataset: a.val_dataset.clone(),
        policy: bundle,
        label_fraction: a.label_fraction,
        source: crate::teleop::record::EpisodeSource::All,
        seed: a.run.seed,
        out: a.out.clone(),
        name: a.name.clone(),
        config: cfg.head,
        run,
    })?;
    Ok(AllResult { ldm, ar, head })
}
