//! `vw2 train e2e`: the end-to-end baseline ([`crate::model::e2e`]) on the
//! labelled episodes only — the same labelled subset and validation episodes
//! the head stage takes for the same seed, label fraction and `val_*`
//! settings, and no unlabelled video at all.
//!
//! A window is any frame f of a labelled segment with `chunk` recorded
//! actions from it: the frame (resized as the other stages resize it), its
//! `robot_obs` (tcp angles as sin/cos, normalized with the labelled frames'
//! statistics), the segment's instruction, and the target `rel_actions`
//! f..f+chunk−1. Loss: mean squared error of the chunk (CALVIN units).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::assemble::normalization_for;
use super::config::{ActionNormalization, E2eStageConfig};
use super::data::{label_subset, read_proprio_and_action, segments, split_episodes, StaticFrames};
use super::head::TRAINED_PROPRIO_ENCODING;
use super::ldm::{init_seed, seeded_varmap};
use super::run::{train_loop, varmap_tensors, RunOptions, TrainReport};
use crate::base::fs::write_atomic;
use crate::data::CalvinDataset;
use crate::model::e2e::{EndToEndConfig, EndToEndPolicyNet};
use crate::model::head::ACTION_DIM;
use crate::policy::bundle::Normalization;
use crate::policy::instruction::embed_instruction;
use crate::policy::weights::save_safetensors_atomic;

/// File name of a baseline's description in its folder.
pub const E2E_SPEC: &str = "e2e.yaml";
/// File name of a baseline's weights in its folder.
pub const E2E_WEIGHTS: &str = "e2e.safetensors";

/// `e2e.yaml`: what it takes to run a trained baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eSpec {
    /// Short name.
    pub name: String,
    /// How it was made.
    pub description: String,
    /// Model input `[height, width]` (px).
    pub image_size: [usize; 2],
    /// Control rate the actions were recorded at (Hz).
    pub control_rate_hz: f64,
    /// Network sizes.
    pub model: EndToEndConfig,
    /// Proprio statistics and encoding (actions are CALVIN relative units, identity).
    pub normalization: Normalization,
    /// Weights, relative to the folder.
    pub weights: PathBuf,
}

impl E2eSpec {
    /// Reads `e2e.yaml` (or the folder holding it).
    pub fn from_path(path: &Path) -> Result<(Self, PathBuf)> {
        let yaml = if path.is_dir() {
            path.join(E2E_SPEC)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&yaml)
            .with_context(|| format!("{}: cannot read the baseline description", yaml.display()))?;
        let spec: Self =
            serde_yaml::from_str(&text).map_err(|e| anyhow!("{}: {e}", yaml.display()))?;
        let dir = yaml.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((spec, dir))
    }
}

/// One labelled training window.
#[derive(Debug, Clone, PartialEq)]
pub struct E2eWindow {
    /// Episode index.
    pub episode: usize,
    /// Current frame index.
    pub frame: usize,
    /// Normalized proprio.
    pub proprio: Vec<f32>,
    /// Instruction embedding.
    pub instruction: Vec<f32>,
    /// Recorded relative actions of frames `frame..frame + chunk`, `chunk · 7`.
    pub target: Vec<f32>,
}

/// The windows of the segments of `episodes`.
pub fn e2e_windows(
    ds: &CalvinDataset,
    episodes: &[usize],
    model: &EndToEndConfig,
    norm: &Normalization,
) -> Result<Vec<E2eWindow>> {
    let c = model.chunk;
    let mut out = Vec::new();
    for seg in segments(ds) {
        if !episodes.contains(&seg.episode) || seg.end + 1 < seg.start + c {
            continue;
        }
        let instruction = embed_instruction(&seg.instruction, model.instruction_dim);
        let mut rows = Vec::with_capacity(seg.end + 1 - seg.start);
        for f in seg.start..=seg.end {
            rows.push(read_proprio_and_action(&ds.frame_path(f))?);
        }
        for (i, f) in (seg.start..=seg.end + 1 - c).enumerate() {
            let proprio = norm
                .proprio_encoding
                .normalized(&rows[i].0, &norm.proprio_mean, &norm.proprio_std)
                .map_err(|e| anyhow!("{}: {e}", ds.frame_path(f).display()))?;
            if proprio.len() != model.proprio_dim {
                bail!(
                    "{}: the proprio encoding makes {} features, the model takes {}",
                    ds.frame_path(f).display(),
                    proprio.len(),
                    model.proprio_dim
                );
            }
            let target = rows[i..i + c]
                .iter()
                .flat_map(|(_, a)| a.iter().map(|&v| v as f32))
                .collect();
            out.push(E2eWindow {
                episode: seg.episode,
                frame: f,
                proprio,
                instruction: instruction.clone(),
                target,
            });
        }
    }
    Ok(out)
}

/// The baseline's training state: network, frames and windows.
pub struct E2eStage {
    model_cfg: EndToEndConfig,
    model: EndToEndPolicyNet,
    varmap: VarMap,
    frames: StaticFrames,
    train: Vec<E2eWindow>,
    val: Vec<E2eWindow>,
    device: Device,
}

/// Validation figures of a trained baseline (CALVIN relative units).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct E2eMetrics {
    /// Validation windows.
    pub windows: usize,
    /// Mean squared error over the chunk.
    pub loss: f64,
    /// Mean absolute error of each action dimension (predictions clipped to [−1, 1]).
    pub mae: Vec<f64>,
    /// Fraction of gripper signs right.
    pub gripper_accuracy: f64,
}

impl E2eStage {
    /// A fresh network (initialized from `seed`) over `train` / `val` windows.
    pub fn new(
        ds: CalvinDataset,
        cfg: &E2eStageConfig,
        model_cfg: &EndToEndConfig,
        train: Vec<E2eWindow>,
        val: Vec<E2eWindow>,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        let (varmap, model) = seeded_varmap(init_seed(seed, "e2e"), dev, |vb| {
            EndToEndPolicyNet::new(model_cfg, vb)
        })?;
        Ok(Self {
            model_cfg: model_cfg.clone(),
            model,
            varmap,
            frames: StaticFrames::new(ds, cfg.image_size, cfg.frame_cache_mb),
            train,
            val,
            device: dev.clone(),
        })
    }

    /// The trainable variables.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The network.
    pub fn model(&self) -> &EndToEndPolicyNet {
        &self.model
    }

    /// Training windows.
    pub fn train_windows(&self) -> &[E2eWindow] {
        &self.train
    }

    /// Predicted `[B, C, 7]` and target `[B, C, 7]` of `windows`.
    fn predict(&self, windows: &[&E2eWindow]) -> Result<(Tensor, Tensor)> {
        let b = windows.len();
        let m = &self.model_cfg;
        let dev = &self.device;
        let clips: Vec<Vec<usize>> = windows.iter().map(|w| vec![w.frame]).collect();
        let frames = self.frames.clips(&clips, dev)?;
        let proprio: Vec<f32> = windows.iter().flat_map(|w| w.proprio.clone()).collect();
        let ins: Vec<f32> = windows.iter().flat_map(|w| w.instruction.clone()).collect();
        let target: Vec<f32> = windows.iter().flat_map(|w| w.target.clone()).collect();
        let proprio = Tensor::from_vec(proprio, (b, m.proprio_dim), dev)?;
        let ins = Tensor::from_vec(ins, (b, m.instruction_dim), dev)?;
        let target = Tensor::from_vec(target, (b, m.chunk, ACTION_DIM), dev)?;
        Ok((self.model.forward(&frames, &proprio, &ins)?, target))
    }

    /// Mean squared error of training windows `items`.
    pub fn loss(&self, items: &[usize]) -> Result<Tensor> {
        let ws: Vec<&E2eWindow> = items.iter().map(|&i| &self.train[i]).collect();
        let (pred, target) = self.predict(&ws)?;
        Ok((pred - target)?.sqr()?.mean_all()?)
    }

    /// Validation figures over the held-out windows (`None` without any).
    pub fn evaluate(&self) -> Result<Option<E2eMetrics>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let (mut sq, mut n) = (0f64, 0usize);
        let mut abs = [0f64; ACTION_DIM];
        let (mut grip_ok, mut rows) = (0usize, 0usize);
        for chunk in self.val.chunks(128) {
            let ws: Vec<&E2eWindow> = chunk.iter().collect();
            let (pred, target) = self.predict(&ws)?;
            let p = pred.flatten_all()?.to_vec1::<f32>()?;
            let t = target.flatten_all()?.to_vec1::<f32>()?;
            for (i, (&pv, &tv)) in p.iter().zip(&t).enumerate() {
                sq += ((pv - tv) as f64).powi(2);
                n += 1;
                let d = i % ACTION_DIM;
                abs[d] += (pv.clamp(-1.0, 1.0) - tv).abs() as f64;
                if d == ACTION_DIM - 1 {
                    grip_ok += ((pv > 0.0) == (tv > 0.0)) as usize;
                    rows += 1;
                }
            }
        }
        Ok(Some(E2eMetrics {
            windows: self.val.len(),
            loss: sq / n.max(1) as f64,
            mae: abs.iter().map(|a| a / rows.max(1) as f64).collect(),
            gripper_accuracy: grip_ok as f64 / rows.max(1) as f64,
        }))
    }
}

/// Options of [`train_e2e`].
#[derive(Debug, Clone)]
pub struct E2eTrainOptions {
    /// The CALVIN-format split.
    pub dataset: PathBuf,
    /// Output folder (`e2e.yaml`, `e2e.safetensors`, `metrics.json`, `split.json`; the run in `train/`).
    pub out: PathBuf,
    /// Stage config.
    pub config: E2eStageConfig,
    /// Fraction of the training episodes that are labelled, in (0, 1].
    pub label_fraction: f64,
    /// Seed of the labelled subset, the initialization and the data order.
    pub seed: u64,
    /// Loop behaviour.
    pub run: RunOptions,
}

/// What [`train_e2e`] did.
#[derive(Debug, Clone, Serialize)]
pub struct E2eTrainResult {
    /// The loop's report.
    pub report: TrainReport,
    /// Labelled episodes.
    pub labelled_episodes: usize,
    /// Training windows.
    pub train_windows: usize,
    /// Validation figures (when the run completed and episodes were held out).
    pub metrics: Option<E2eMetrics>,
    /// The description written (when the run completed).
    pub spec: Option<PathBuf>,
}

/// Trains the baseline into `opts.out`.
pub fn train_e2e(opts: &E2eTrainOptions) -> Result<E2eTrainResult> {
    let dev = Device::Cpu;
    let cfg = &opts.config;
    cfg.validate().map_err(|e| anyhow!("e2e config: {e}"))?;
    let model_cfg = EndToEndConfig {
        encoder: cfg.encoder.clone(),
        proprio_dim: TRAINED_PROPRIO_ENCODING.dim(),
        instruction_dim: cfg.instruction_dim,
        hidden: cfg.hidden.clone(),
        chunk: cfg.chunk,
    };
    let ds = CalvinDataset::open(&opts.dataset)?;
    let (pool, val_eps) = split_episodes(ds.episodes().len(), cfg.val_fraction, cfg.val_seed);
    let labelled = label_subset(&pool, opts.label_fraction, opts.seed)?;
    let label_frames: Vec<usize> = labelled
        .iter()
        .flat_map(|&e| {
            let (s, t) = ds.episodes()[e];
            s..=t
        })
        .collect();
    let norm = normalization_for(
        &ds,
        model_cfg.proprio_dim,
        TRAINED_PROPRIO_ENCODING,
        ActionNormalization::Identity,
        Some(&label_frames),
    )?;
    let train = e2e_windows(&ds, &labelled, &model_cfg, &norm)?;
    let val = e2e_windows(&ds, &val_eps, &model_cfg, &norm)?;
    if train.is_empty() {
        bail!(
            "{}: the labelled episodes hold no window of {} frames",
            opts.dataset.display(),
            cfg.chunk
        );
    }
    tracing::info!(
        labelled_episodes = labelled.len(),
        train_windows = train.len(),
        val_windows = val.len(),
        "e2e baseline"
    );
    let stage = E2eStage::new(ds, cfg, &model_cfg, train, val, opts.seed, &dev)?;
    let run_dir = opts.out.join("train");
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("{}: cannot create folder", run_dir.display()))?;
    let identity = serde_yaml::to_string(&serde_json::json!({
        "stage": "e2e",
        "seed": opts.seed,
        "label_fraction": opts.label_fraction,
        "dataset": opts.dataset,
        "config": cfg,
    }))?;
    let report = train_loop(
        "e2e",
        &run_dir,
        &identity,
        stage.varmap(),
        &cfg.train,
        opts.seed,
        stage.train_windows().len(),
        &opts.run,
        |items| stage.loss(items),
    )?;
    let (mut metrics, mut spec_path) = (None, None);
    if report.completed {
        save_safetensors_atomic(&varmap_tensors(stage.varmap()), &opts.out.join(E2E_WEIGHTS))?;
        metrics = stage.evaluate()?;
        write_atomic(
            &opts.out.join("metrics.json"),
            serde_json::to_string_pretty(&metrics)?.as_bytes(),
        )?;
        write_atomic(
            &opts.out.join("split.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "labelled_episodes": labelled,
                "val_episodes": val_eps,
            }))?
            .as_bytes(),
        )?;
        let spec = E2eSpec {
            name: "e2e-baseline".into(),
            description: format!(
                "end-to-end baseline on {:.0}% of the training episodes of {} (seed {})",
                100.0 * opts.label_fraction,
                opts.dataset.display(),
                opts.seed
            ),
            image_size: cfg.image_size,
            control_rate_hz: 30.0,
            model: model_cfg.clone(),
            normalization: norm,
            weights: PathBuf::from(E2E_WEIGHTS),
        };
        let p = opts.out.join(E2E_SPEC);
        write_atomic(&p, serde_yaml::to_string(&spec)?.as_bytes())?;
        spec_path = Some(p);
    }
    Ok(E2eTrainResult {
        report,
        labelled_episodes: labelled.len(),
        train_windows: stage.train_windows().len(),
        metrics,
        spec: spec_path,
    })
}

/// A trained baseline loaded for inference.
#[derive(Debug, Clone)]
pub struct LoadedE2e {
    /// Its description.
    pub spec: E2eSpec,
    /// The network.
    pub model: EndToEndPolicyNet,
}

impl LoadedE2e {
    /// Loads `e2e.yaml` (or its folder) and the weights it names; a missing or
    /// misshapen key is an error.
    pub fn load(path: &Path, dev: &Device) -> Result<Self> {
        let (spec, dir) = E2eSpec::from_path(path)?;
        let w = dir.join(&spec.weights);
        let tensors = candle_core::safetensors::load(&w, dev)
            .with_context(|| format!("{}: cannot read the baseline's weights", w.display()))?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, dev);
        let model =
            EndToEndPolicyNet::new(&spec.model, vb).map_err(|e| anyhow!("{}: {e}", w.display()))?;
        Ok(Self { spec, model })
    }
}
