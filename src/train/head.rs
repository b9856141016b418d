//! Stage 3, `vw2 finetune-head`: the action head on a labelled fraction.
//!
//! The encoder and the AR stay frozen; the encoder's outputs are computed once
//! per segment (as the closed loop would see them, see [`encode_segments`]).
//! A labelled window is latent step k of a segment (current frame `s·k`):
//!
//! - input codes: the encoder's codes of the real next step k+1 (teacher
//!   forcing; at run time the AR's prediction takes their place);
//! - visual: the pooled features of the current frame (the newest latent
//!   frame of the window ending at it, as `Policy::observe`), channel means or
//!   means and spatial-softmax keypoints (`visual_pool`);
//! - instruction: the episode's instruction, embedded (when `instruction_dim` > 0);
//! - proprio: the current frame's `robot_obs`, normalized;
//! - target: the s recorded `rel_actions` of frames `s·k .. s·k + s − 1`,
//!   normalized with the bundle's action statistics.
//!
//! Labelled episodes are a seeded, episode-level subset of the training
//! episodes ([`label_subset`]); validation uses held-out episodes
//! ([`split_episodes`]) or a separate split.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::Serialize;

use super::ar::{default_head_config, encoded_dataset};
use super::assemble::{
    assemble_bundle, normalization_for, BundleParts, ComponentSource, DldmSource,
};
use super::config::{GripperLoss, HeadStageConfig};
use crate::policy::proprio::ProprioEncoding;

/// The proprio encoding of the heads this trainer makes: the tcp angles as sin/cos.
pub const TRAINED_PROPRIO_ENCODING: ProprioEncoding = ProprioEncoding::EulerSincos;
use super::data::{
    label_subset, read_proprio_and_action, split_episodes, EncodedSegment, POOLED_PER_CHANNEL,
};
use super::ldm::{init_seed, seeded_varmap};
use super::run::{train_loop, varmap_tensors, RunOptions, TrainReport};
use crate::base::fs::write_atomic;
use crate::data::CalvinDataset;
use crate::model::head::{ActionHead, HeadConfig, ACTION_DIM};
use crate::policy::bundle::{Normalization, PolicySpec};
use crate::policy::instruction::embed_instruction;
use crate::policy::weights::save_safetensors_atomic;

/// Names of the 7 action dimensions, in order.
pub const ACTION_DIM_NAMES: [&str; ACTION_DIM] =
    ["x", "y", "z", "euler_x", "euler_y", "euler_z", "gripper"];

/// One labelled window, ready for the head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadWindow {
    /// Episode (index in `ep_start_end_ids.npy` of its split).
    pub episode: usize,
    /// Current frame index.
    pub frame: usize,
    /// Codes of the next latent step (N).
    pub codes: Vec<u32>,
    /// Pooled visual features of the current frame (`visual_dim`).
    pub visual: Vec<f32>,
    /// The instruction embedding (`instruction_dim`, empty when the head has none).
    pub instruction: Vec<f32>,
    /// Normalized proprio (P, empty when the head has none).
    pub proprio: Vec<f32>,
    /// Normalized targets, `chunk · 7`.
    pub target: Vec<f32>,
    /// Raw recorded relative actions, `chunk · 7`.
    pub raw_target: Vec<f32>,
}

/// Builds the labelled windows of `encoded` segments whose episode is in
/// `episodes` (all when `None`), reading `robot_obs` and `rel_actions`.
pub fn head_windows(
    ds: &CalvinDataset,
    encoded: &[EncodedSegment],
    episodes: Option<&[usize]>,
    head: &HeadConfig,
    norm: &Normalization,
    steps_per_latent: usize,
) -> Result<Vec<HeadWindow>> {
    let n = head.codes_per_step;
    let s = steps_per_latent;
    if head.chunk != s {
        bail!(
            "head config: chunk: expected the {s} control steps of one latent step, found {}",
            head.chunk
        );
    }
    let mut out = Vec::new();
    for e in encoded {
        if episodes.is_some_and(|eps| !eps.contains(&e.segment.episode)) {
            continue;
        }
        // Per step: POOLED_PER_CHANNEL · F values, the head takes the first visual_dim.
        let per_step = e.pooled.len() / (e.steps + 1);
        let f = per_step / POOLED_PER_CHANNEL;
        if head.visual_pool.width(f) != head.visual_dim {
            bail!(
                "head config: visual_dim: expected {} (visual_pool {:?} of {f} feature channels), found {}",
                head.visual_pool.width(f),
                head.visual_pool,
                head.visual_dim
            );
        }
        let instruction = embed_instruction(&e.segment.instruction, head.instruction_dim);
        for k in 0..e.steps {
            let frame = e.segment.start + s * k;
            let mut raw = Vec::with_capacity(s * ACTION_DIM);
            let mut proprio = Vec::new();
            for c in 0..s {
                let (obs, act) = read_proprio_and_action(&ds.frame_path(frame + c))?;
                if c == 0 && head.proprio_dim > 0 {
                    proprio = norm
                        .proprio_encoding
                        .normalized(&obs, &norm.proprio_mean, &norm.proprio_std)
                        .map_err(|e| anyhow!("{}: {e}", ds.frame_path(frame).display()))?;
                    if proprio.len() != head.proprio_dim {
                        bail!(
                            "{}: the proprio encoding {:?} makes {} features, the head's proprio_dim is {}",
                            ds.frame_path(frame).display(),
                            norm.proprio_encoding,
                            proprio.len(),
                            head.proprio_dim
                        );
                    }
                }
                raw.extend(act.iter().map(|&a| a as f32));
            }
            let target = raw
                .iter()
                .enumerate()
                .map(|(i, &a)| {
                    let d = i % ACTION_DIM;
                    match (norm.action_mean.get(d), norm.action_std.get(d)) {
                        (Some(m), Some(sd)) => (a - m) / sd,
                        _ => a,
                    }
                })
                .collect();
            out.push(HeadWindow {
                episode: e.segment.episode,
                frame,
                codes: e.codes[k * n..(k + 1) * n].to_vec(),
                visual: e.pooled[k * per_step..k * per_step + head.visual_dim].to_vec(),
                instruction: instruction.clone(),
                proprio,
                target,
                raw_target: raw,
            });
        }
    }
    Ok(out)
}

/// The head stage: a trainable MLP head over cached windows.
pub struct HeadStage {
    cfg: HeadStageConfig,
    head_cfg: HeadConfig,
    model: ActionHead,
    varmap: VarMap,
    train: Vec<HeadWindow>,
    val: Vec<HeadWindow>,
    norm: Normalization,
    device: Device,
}

/// Tensors of a batch of windows.
struct Batch {
    codes: Tensor,
    visual: Tensor,
    proprio: Option<Tensor>,
    instruction: Option<Tensor>,
    /// `[B, C, 7]`.
    target: Tensor,
}

impl Batch {
    fn predict(&self, model: &ActionHead) -> candle_core::Result<Tensor> {
        model.forward(
            &self.codes,
            &self.visual,
            self.proprio.as_ref(),
            self.instruction.as_ref(),
        )
    }
}

impl HeadStage {
    /// A fresh head (initialized from `seed`) over `train` / `val` windows.
    pub fn new(
        cfg: &HeadStageConfig,
        head_cfg: &HeadConfig,
        train: Vec<HeadWindow>,
        val: Vec<HeadWindow>,
        norm: Normalization,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!("head config: {e}"))?;
        let (varmap, model) = seeded_varmap(init_seed(seed, "head"), dev, |vb| {
            ActionHead::new(head_cfg, vb)
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            head_cfg: head_cfg.clone(),
            model,
            varmap,
            train,
            val,
            norm,
            device: dev.clone(),
        })
    }

    /// The trainable variables.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Training windows.
    pub fn train_windows(&self) -> &[HeadWindow] {
        &self.train
    }

    /// Validation windows.
    pub fn val_windows(&self) -> &[HeadWindow] {
        &self.val
    }

    fn batch(&self, windows: &[&HeadWindow]) -> Result<Batch> {
        let b = windows.len();
        let h = &self.head_cfg;
        let dev = &self.device;
        let codes: Vec<u32> = windows.iter().flat_map(|w| w.codes.clone()).collect();
        let visual: Vec<f32> = windows.iter().flat_map(|w| w.visual.clone()).collect();
        let target: Vec<f32> = windows.iter().flat_map(|w| w.target.clone()).collect();
        let proprio = if h.proprio_dim > 0 {
            let p: Vec<f32> = windows.iter().flat_map(|w| w.proprio.clone()).collect();
            Some(Tensor::from_vec(p, (b, h.proprio_dim), dev)?)
        } else {
            None
        };
        let instruction = if h.instruction_dim > 0 {
            let v: Vec<f32> = windows.iter().flat_map(|w| w.instruction.clone()).collect();
            Some(Tensor::from_vec(v, (b, h.instruction_dim), dev)?)
        } else {
            None
        };
        Ok(Batch {
            codes: Tensor::from_vec(codes, (b, h.codes_per_step), dev)?,
            visual: Tensor::from_vec(visual, (b, h.visual_dim), dev)?,
            proprio,
            instruction,
            target: Tensor::from_vec(target, (b, h.chunk, ACTION_DIM), dev)?,
        })
    }

    fn loss_of(&self, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
        match self.cfg.gripper_loss {
            GripperLoss::Mse => Ok((pred - target)?.sqr()?.mean_all()?),
            GripperLoss::Bce => {
                let arm = (pred.narrow(2, 0, 6)? - target.narrow(2, 0, 6)?)?
                    .sqr()?
                    .mean_all()?;
                let x = pred.narrow(2, 6, 1)?;
                let y = ((target.narrow(2, 6, 1)? + 1.0)? * 0.5)?;
                // Stable BCE with logits: max(x, 0) − x·y + log(1 + e^(−|x|)).
                let bce = ((x.relu()? - (&x * &y)?)? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?))?
                    .mean_all()?;
                Ok((arm + (bce * self.cfg.gripper_weight)?)?)
            }
        }
    }

    /// Loss of training windows `items`.
    pub fn loss(&self, items: &[usize]) -> Result<Tensor> {
        let ws: Vec<&HeadWindow> = items.iter().map(|&i| &self.train[i]).collect();
        let batch = self.batch(&ws)?;
        let pred = batch.predict(&self.model)?;
        self.loss_of(&pred, &batch.target)
    }

    /// Evaluates `windows`: mean loss, per-dimension mean absolute error of the
    /// un-normalized actions (relative units), gripper sign accuracy.
    pub fn evaluate(&self, windows: &[HeadWindow]) -> Result<Option<Evaluation>> {
        if windows.is_empty() {
            return Ok(None);
        }
        let mut loss_sum = 0f64;
        let mut abs = [0f64; ACTION_DIM];
        let mut count = 0usize;
        let mut grip_ok = 0usize;
        for chunk in windows.chunks(256) {
            let ws: Vec<&HeadWindow> = chunk.iter().collect();
            let batch = self.batch(&ws)?;
            let target = &batch.target;
            let pred = batch.predict(&self.model)?.detach();
            let l = self.loss_of(&pred, target)?.to_scalar::<f32>()? as f64;
            loss_sum += l * chunk.len() as f64;
            let p = pred.flatten_all()?.to_vec1::<f32>()?;
            for (w, prow) in chunk.iter().zip(p.chunks(self.head_cfg.chunk * ACTION_DIM)) {
                for (i, (&pv, &rv)) in prow.iter().zip(&w.raw_target).enumerate() {
                    let d = i % ACTION_DIM;
                    let mean = self.norm.action_mean.get(d).copied().unwrap_or(0.0);
                    let sd = self.norm.action_std.get(d).copied().unwrap_or(1.0);
                    let a = pv * sd + mean;
                    abs[d] += (a - rv).abs() as f64;
                    if d == 6 {
                        let open = a > 0.0;
                        if open == (rv > 0.0) {
                            grip_ok += 1;
                        }
                        count += 1;
                    }
                }
            }
        }
        let n = windows.len() as f64;
        let per_dim: Vec<f64> = abs.iter().map(|s| s / count.max(1) as f64).collect();
        Ok(Some(Evaluation {
            loss: loss_sum / n,
            action_mae: per_dim,
            gripper_accuracy: grip_ok as f64 / count.max(1) as f64,
        }))
    }
}

/// Results of [`HeadStage::evaluate`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f64,
    /// Mean absolute error per action dimension, in relative action units.
    pub action_mae: Vec<f64>,
    /// Fraction of control steps whose gripper sign matches the recording.
    pub gripper_accuracy: f64,
}

/// Options of [`finetune_head`].
#[derive(Debug, Clone)]
pub struct HeadTrainOptions {
    /// The labelled CALVIN-format split.
    pub dataset: PathBuf,
    /// Validate on this split instead of held-out episodes of `dataset`.
    pub val_dataset: Option<PathBuf>,
    /// The input bundle (its dLDM and AR are frozen and copied).
    pub policy: PathBuf,
    /// Fraction of training episodes whose windows are labelled, in (0, 1].
    pub label_fraction: f64,
    /// Which episodes of a teleop dataset to learn from (`All` for any dataset).
    pub source: crate::teleop::record::EpisodeSource,
    /// Seed of the label subset, the initialization and the data order.
    pub seed: u64,
    /// Output bundle folder (the run's state goes to `OUT/train/head`).
    pub out: PathBuf,
    /// Name of the output bundle (default: the input's, `-no-head` replaced by `-head`).
    pub name: Option<String>,
    /// Stage config.
    pub config: HeadStageConfig,
    /// Loop behaviour.
    pub run: RunOptions,
}

/// `metrics.json` of a finetune-head run.
#[derive(Debug, Clone, Serialize)]
pub struct HeadMetrics {
    /// Mean loss over all labelled training windows after training.
    pub train_loss: f64,
    /// Loss of the first update.
    pub initial_train_loss: f64,
    /// Mean loss over the validation windows (null without validation data).
    pub val_loss: Option<f64>,
    /// Names of the action dimensions, in the order of the per-dimension lists.
    pub action_dims: Vec<String>,
    /// Mean absolute error per action dimension on validation (relative units).
    pub val_action_mae: Option<Vec<f64>>,
    /// Gripper sign accuracy on validation.
    pub val_gripper_accuracy: Option<f64>,
    /// Gripper sign accuracy on the training windows.
    pub train_gripper_accuracy: f64,
    /// Requested label fraction.
    pub label_fraction: f64,
    /// Which episodes of a teleop dataset were used (`all`, `operator`, `interventions`).
    pub source: String,
    /// Seed.
    pub seed: u64,
    /// Labelled windows used for training (the label count).
    pub label_windows: usize,
    /// Labelled episodes used for training.
    pub label_episodes: usize,
    /// Their indices in the training split.
    pub label_episode_ids: Vec<usize>,
    /// Episodes the subset was drawn from.
    pub train_pool_episodes: usize,
    /// Validation windows.
    pub val_windows: usize,
    /// Validation episodes.
    pub val_episodes: usize,
    /// Their indices (in the validation split when it is separate).
    pub val_episode_ids: Vec<usize>,
    /// Whether validation used a separate split.
    pub val_separate_dataset: bool,
    /// Updates.
    pub steps: u64,
    /// Training wall time of the last invocation (s).
    pub train_seconds: f64,
}

/// What [`finetune_head`] did.
#[derive(Debug, Clone, Serialize)]
pub struct HeadTrainResult {
    /// The loop's report.
    pub report: TrainReport,
    /// The metrics (when the run completed).
    pub metrics: Option<HeadMetrics>,
    /// The new bundle's `policy.yaml` (when completed).
    pub bundle: Option<PathBuf>,
}

/// Head sizes for a bundle: the configured ones, else the bundle's own MLP
/// head sizes, else the defaults; checked against the dLDM.
fn resolve_head_config(cfg: &HeadStageConfig, spec: &PolicySpec) -> Result<HeadConfig> {
    let dldm = &spec.components.dldm.config;
    let h = match (&cfg.model, &spec.components.head.config) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => default_head_config(dldm),
    };
    for (field, want, found) in [
        ("vocab_size", dldm.codebook_size(), h.vocab_size),
        ("codes_per_step", dldm.num_queries, h.codes_per_step),
        (
            "visual_dim",
            h.visual_pool.width(dldm.feature_channels()),
            h.visual_dim,
        ),
        ("chunk", spec.steps_per_latent, h.chunk),
    ] {
        if want != found {
            bail!("head config: model.{field}: expected {want} (from the bundle), found {found}");
        }
    }
    let features = TRAINED_PROPRIO_ENCODING.dim();
    if h.proprio_dim != 0 && h.proprio_dim != features {
        bail!(
            "head config: model.proprio_dim: expected 0 or {features} (robot_obs with the tcp angles as sin/cos), found {}",
            h.proprio_dim
        );
    }
    Ok(h)
}

/// Trains the head and writes a new bundle to `opts.out`: `policy.yaml`,
/// `dldm.*` and `ar.*` (copied), `head.safetensors`, `metrics.json`,
/// `split.json`; the run's state (loss.csv, checkpoints) goes to `OUT/train/head`.
pub fn finetune_head(opts: &HeadTrainOptions) -> Result<HeadTrainResult> {
    let dev = Device::Cpu;
    let yaml = if opts.policy.is_dir() {
        opts.policy.join("policy.yaml")
    } else {
        opts.policy.clone()
    };
    let spec = PolicySpec::from_file(&yaml)?;
    let head_cfg = resolve_head_config(&opts.config, &spec)?;
    let src = DldmSource::resolve(&yaml)?;
    let run_dir = opts.out.join("train").join("head");
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("{}: cannot create folder", run_dir.display()))?;

    let ds = CalvinDataset::open(&opts.dataset)?;
    let split = episode_split(opts, &ds)?;
    let data = head_data(opts, &ds, &split, &src, &spec, &head_cfg, &run_dir, &dev)?;
    write_atomic(
        &opts.out.join("split.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "label_fraction": opts.label_fraction,
            "seed": opts.seed,
            "train_pool_episodes": split.pool,
            "label_episodes": data.labelled,
            "val_episodes": split.val_eps,
            "val_dataset": opts.val_dataset,
        }))?
        .as_bytes(),
    )?;
    let stage = HeadStage::new(
        &opts.config,
        &head_cfg,
        data.train,
        data.val,
        data.norm.clone(),
        opts.seed,
        &dev,
    )?;
    tracing::info!(
        label_windows = stage.train_windows().len(),
        label_episodes = data.labelled.len(),
        val_windows = stage.val_windows().len(),
        "finetune head"
    );
    let identity = serde_yaml::to_string(&serde_json::json!({
        "stage": "head",
        "seed": opts.seed,
        "label_fraction": opts.label_fraction,
        "config": opts.config,
        "model": head_cfg,
        "label_episodes": data.labelled,
    }))?;
    let report = train_loop(
        "head",
        &run_dir,
        &identity,
        stage.varmap(),
        &opts.config.train,
        opts.seed,
        stage.train_windows().len(),
        &opts.run,
        |items| stage.loss(items),
    )?;
    if !report.completed {
        return Ok(HeadTrainResult {
            report,
            metrics: None,
            bundle: None,
        });
    }
    let head_path = run_dir.join("head.safetensors");
    save_safetensors_atomic(&varmap_tensors(stage.varmap()), &head_path)?;
    let bundle = assemble_head_bundle(opts, &yaml, &spec, head_cfg, data.norm, head_path)?;
    let metrics = head_metrics(opts, &stage, &report, &split, data.labelled)?;
    write_atomic(
        &opts.out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    Ok(HeadTrainResult {
        report,
        metrics: Some(metrics),
        bundle: Some(bundle),
    })
}

/// Which episodes the head may learn from (`pool`) and which validate it.
struct EpisodeSplit {
    /// Training pool (the labelled subset is drawn from it).
    pool: Vec<usize>,
    /// Validation episodes (of `val_ds` when given, else of the training set).
    val_eps: Vec<usize>,
    /// A separate validation dataset.
    val_ds: Option<CalvinDataset>,
}

/// The episode split: a held-out validation dataset or a seeded fraction of
/// the training set, then (teleop datasets) the episodes of the chosen source.
fn episode_split(opts: &HeadTrainOptions, ds: &CalvinDataset) -> Result<EpisodeSplit> {
    let (pool, val_eps, val_ds) = match &opts.val_dataset {
        Some(v) => {
            let vds = CalvinDataset::open(v)?;
            let all: Vec<usize> = (0..vds.episodes().len()).collect();
            ((0..ds.episodes().len()).collect(), all, Some(vds))
        }
        None => {
            let (p, v) = split_episodes(
                ds.episodes().len(),
                opts.config.val_fraction,
                opts.config.val_seed,
            );
            (p, v, None)
        }
    };
    // A teleop dataset's episodes filtered by who drove them (train and validation alike).
    let Some(keep) = opts.source.episodes(&opts.dataset, ds.episodes().len())? else {
        return Ok(EpisodeSplit {
            pool,
            val_eps,
            val_ds,
        });
    };
    let pool: Vec<usize> = pool.into_iter().filter(|e| keep.contains(e)).collect();
    let val_eps = if val_ds.is_some() {
        val_eps
    } else {
        val_eps.into_iter().filter(|e| keep.contains(e)).collect()
    };
    anyhow::ensure!(
        !pool.is_empty(),
        "{}: no training episode has source '{}'",
        opts.dataset.display(),
        opts.source.name()
    );
    Ok(EpisodeSplit {
        pool,
        val_eps,
        val_ds,
    })
}

/// What the head trains on.
struct HeadData {
    /// The labelled episodes (a seeded fraction of the pool).
    labelled: Vec<usize>,
    /// Normalization from the labelled frames.
    norm: Normalization,
    /// Training and validation windows.
    train: Vec<HeadWindow>,
    val: Vec<HeadWindow>,
}

/// Draws the labelled subset, encodes the frames (cached) and cuts windows.
#[allow(clippy::too_many_arguments)]
fn head_data(
    opts: &HeadTrainOptions,
    ds: &CalvinDataset,
    split: &EpisodeSplit,
    src: &DldmSource,
    spec: &PolicySpec,
    head_cfg: &HeadConfig,
    run_dir: &Path,
    dev: &Device,
) -> Result<HeadData> {
    let labelled = label_subset(&split.pool, opts.label_fraction, opts.seed)?;
    let window = opts.config.window_latent_steps;
    let encoded = encoded_dataset(
        &opts.dataset,
        src,
        window,
        None,
        256,
        Some(&run_dir.join("feature_cache.safetensors")),
        opts.run.progress,
        dev,
    )?;
    let label_frames: Vec<usize> = labelled
        .iter()
        .flat_map(|&e| {
            let (s, t) = ds.episodes()[e];
            s..=t
        })
        .collect();
    let norm = normalization_for(
        ds,
        head_cfg.proprio_dim,
        TRAINED_PROPRIO_ENCODING,
        opts.config.action_normalization,
        Some(&label_frames),
    )?;
    let s = spec.steps_per_latent;
    let train = head_windows(ds, &encoded, Some(&labelled), head_cfg, &norm, s)?;
    let val = match (&opts.val_dataset, &split.val_ds) {
        (Some(v), Some(vds)) => {
            let venc = encoded_dataset(
                v,
                src,
                window,
                None,
                256,
                Some(&run_dir.join("val_feature_cache.safetensors")),
                opts.run.progress,
                dev,
            )?;
            head_windows(vds, &venc, None, head_cfg, &norm, s)?
        }
        _ => head_windows(ds, &encoded, Some(&split.val_eps), head_cfg, &norm, s)?,
    };
    if train.is_empty() {
        bail!(
            "{}: the labelled episodes {labelled:?} hold no window of {} frames",
            opts.dataset.display(),
            s + 1
        );
    }
    Ok(HeadData {
        labelled,
        norm,
        train,
        val,
    })
}

/// The bundle: the source bundle's dLDM and AR with the trained head.
fn assemble_head_bundle(
    opts: &HeadTrainOptions,
    yaml: &Path,
    spec: &PolicySpec,
    head_cfg: HeadConfig,
    norm: Normalization,
    head_path: PathBuf,
) -> Result<PathBuf> {
    let policy_dir = yaml.parent().map(Path::to_path_buf).unwrap_or_default();
    let c = &spec.components;
    assemble_bundle(
        &opts.out,
        &BundleParts {
            name: opts
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-head", spec.name.trim_end_matches("-no-head"))),
            description: format!(
                "{}; action head fine-tuned on {:.0}% of the training episodes of {} (seed {})",
                spec.name,
                opts.label_fraction * 100.0,
                opts.dataset.display(),
                opts.seed
            ),
            image_size: spec.image_size,
            control_rate_hz: spec.control_rate_hz,
            action_space: spec.action_space.clone(),
            normalization: norm,
            dldm: ComponentSource::from_spec(c.dldm.config.clone(), &policy_dir, &c.dldm.weights),
            ar: ComponentSource::from_spec(c.ar.config.clone(), &policy_dir, &c.ar.weights),
            head: ComponentSource::safetensors(head_cfg, head_path),
        },
    )
}

/// `metrics.json`: losses, validation errors and what the head saw.
fn head_metrics(
    opts: &HeadTrainOptions,
    stage: &HeadStage,
    report: &TrainReport,
    split: &EpisodeSplit,
    labelled: Vec<usize>,
) -> Result<HeadMetrics> {
    let train_eval = stage
        .evaluate(stage.train_windows())?
        .expect("train windows are not empty");
    let val_eval = stage.evaluate(stage.val_windows())?;
    Ok(HeadMetrics {
        train_loss: train_eval.loss,
        initial_train_loss: report.first_loss,
        val_loss: val_eval.as_ref().map(|e| e.loss),
        action_dims: ACTION_DIM_NAMES.iter().map(|s| s.to_string()).collect(),
        val_action_mae: val_eval.as_ref().map(|e| e.action_mae.clone()),
        val_gripper_accuracy: val_eval.as_ref().map(|e| e.gripper_accuracy),
        train_gripper_accuracy: train_eval.gripper_accuracy,
        label_fraction: opts.label_fraction,
        source: opts.source.name().into(),
        seed: opts.seed,
        label_windows: stage.train_windows().len(),
        label_episodes: labelled.len(),
        label_episode_ids: labelled,
        train_pool_episodes: split.pool.len(),
        val_windows: stage.val_windows().len(),
        val_episodes: split.val_eps.len(),
        val_episode_ids: split.val_eps.clone(),
        val_separate_dataset: opts.val_dataset.is_some(),
        steps: report.steps_done,
        train_seconds: report.seconds,
    })
}
