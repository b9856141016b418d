//! Stage 1, the dLDM warm-up: encoder + QFormer + FSQ + coarse decoder learn
//! codes from **unlabelled** clips. For a clip of T = 1 + s·k frames the
//! encoder gives features and k·N codes; the decoder renders the clip from
//! frame 0's features and the codes, and the loss is the mean squared error
//! over the future frames 1..T−1 (in the model's [−1, 1] pixel space).
//!
//! Clips are read through [`StaticFrames`], which decodes `rgb_static` only:
//! this stage never reads actions, proprioception or language.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::config::LdmStageConfig;
use super::data::{clip_starts, StaticFrames};
use super::run::{train_loop, varmap_tensors, RunOptions, TrainReport};
use crate::data::CalvinDataset;
use crate::model::dldm::{Dldm, DldmConfig};
use crate::policy::weights::{save_safetensors_atomic, seeded_var_builder, SeededInit};

/// File name of the trained dLDM weights in a run folder.
pub const LDM_WEIGHTS: &str = "dldm.safetensors";
/// File name of the stage's output description in a run folder.
pub const LDM_OUTPUT: &str = "ldm_output.yaml";

/// `RUN/ldm_output.yaml`: what the next stages need to load the trained dLDM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdmOutput {
    /// Model input `[height, width]`.
    pub image_size: [usize; 2],
    /// dLDM sizes.
    pub config: DldmConfig,
    /// Weights, relative to the run folder.
    pub weights: PathBuf,
}

/// Seed of a stage's weight initialization, derived from the run seed.
pub fn init_seed(seed: u64, stage: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stage.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ h
}

/// A `VarMap` holding a seeded random initialization of whatever `build`
/// creates (so a run's initial weights depend on the seed only), plus the
/// model built on those variables.
pub fn seeded_varmap<M>(
    seed: u64,
    dev: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<M>,
) -> Result<(VarMap, M)> {
    let init = Arc::new(SeededInit::new(seed));
    build(seeded_var_builder(init.clone(), &Device::Cpu))?;
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap poisoned");
        for (name, t) in init.tensors() {
            data.insert(name, Var::from_tensor(&t.to_device(dev)?)?);
        }
    }
    let model = build(VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    Ok((varmap, model))
}

/// The warm-up stage: a trainable dLDM and the dataset's clips.
pub struct LdmStage {
    cfg: LdmStageConfig,
    model: Dldm,
    varmap: VarMap,
    frames: StaticFrames,
    clips: Vec<usize>,
    clip_frames: usize,
    device: Device,
}

impl LdmStage {
    /// A fresh model (initialized from `seed`) over the clips of `dataset`.
    pub fn new(dataset: &Path, cfg: &LdmStageConfig, seed: u64, dev: &Device) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!("ldm config: {e}"))?;
        let ds = CalvinDataset::open(dataset)?;
        // Clips of `clip_latent_steps` latent steps; when no episode is that
        // long, the longest clips that fit (at least one latent step).
        let s = cfg.model.patch_size;
        let mut k = cfg.clip_latent_steps;
        let mut clips = clip_starts(ds.episodes(), 1 + s * k, cfg.clip_stride);
        while clips.is_empty() && k > 1 {
            k -= 1;
            clips = clip_starts(ds.episodes(), 1 + s * k, cfg.clip_stride);
        }
        if clips.is_empty() {
            anyhow::bail!(
                "{}: no episode has the {} frames a clip of one latent step needs",
                dataset.display(),
                1 + s
            );
        }
        if k != cfg.clip_latent_steps {
            tracing::warn!(
                configured = cfg.clip_latent_steps,
                used = k,
                "no episode holds a clip of clip_latent_steps latent steps; using shorter clips"
            );
        }
        let (varmap, model) =
            seeded_varmap(init_seed(seed, "ldm"), dev, |vb| Dldm::new(&cfg.model, vb))?;
        Ok(Self {
            cfg: cfg.clone(),
            model,
            varmap,
            frames: StaticFrames::new(ds, cfg.image_size, cfg.frame_cache_mb),
            clips,
            clip_frames: 1 + s * k,
            device: dev.clone(),
        })
    }

    /// The trainable variables.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The stage config.
    pub fn config(&self) -> &LdmStageConfig {
        &self.cfg
    }

    /// The model.
    pub fn model(&self) -> &Dldm {
        &self.model
    }

    /// Number of clips.
    pub fn num_items(&self) -> usize {
        self.clips.len()
    }

    /// Start frame of every clip.
    pub fn clip_starts(&self) -> &[usize] {
        &self.clips
    }

    /// Frames per clip (`1 + s·k`; k is `clip_latent_steps`, or less when no
    /// episode is that long).
    pub fn clip_frames(&self) -> usize {
        self.clip_frames
    }

    /// Model input for clips `items`: `[B, T, 3, H, W]` in [−1, 1].
    pub fn batch(&self, items: &[usize]) -> Result<Tensor> {
        let t = self.clip_frames;
        let clips: Vec<Vec<usize>> = items
            .iter()
            .map(|&i| (self.clips[i]..self.clips[i] + t).collect())
            .collect();
        self.frames.clips(&clips, &self.device)
    }

    /// Reconstruction loss of clips `items`: MSE of the decoded frames 1..T−1.
    pub fn loss(&self, items: &[usize]) -> Result<Tensor> {
        let x = self.batch(items)?;
        reconstruction_loss(&self.model, &x)
    }
}

/// Encodes `x` `[B, T, 3, H, W]`, decodes from frame 0's features and the codes,
/// and returns the mean squared error over frames 1..T−1.
pub fn reconstruction_loss(model: &Dldm, x: &Tensor) -> Result<Tensor> {
    let enc = model.encode(x)?;
    let first = enc.features.narrow(1, 0, 1)?;
    let rec = model.decode(&first, &enc.codes)?;
    let t = x.dim(1)?;
    let target = x.narrow(1, 1, t - 1)?;
    let pred = rec.narrow(1, 1, t - 1)?;
    Ok((pred - target)?.sqr()?.mean_all()?)
}

/// Options of [`train_ldm`].
#[derive(Debug, Clone)]
pub struct LdmTrainOptions {
    /// The CALVIN-format split.
    pub dataset: PathBuf,
    /// Run folder.
    pub out: PathBuf,
    /// Stage config.
    pub config: LdmStageConfig,
    /// Seed of the initialization and the data order.
    pub seed: u64,
    /// Loop behaviour.
    pub run: RunOptions,
}

/// What [`train_ldm`] did.
#[derive(Debug, Clone, Serialize)]
pub struct LdmTrainResult {
    /// The loop's report.
    pub report: TrainReport,
    /// Clips in the dataset.
    pub clips: usize,
    /// Frames per clip.
    pub clip_frames: usize,
    /// The weights written (only when the run completed).
    pub weights: Option<PathBuf>,
}

/// Trains the warm-up stage into `opts.out`; on completion writes
/// `dldm.safetensors`, `ldm_output.yaml` and `summary.json`.
pub fn train_ldm(opts: &LdmTrainOptions) -> Result<LdmTrainResult> {
    let dev = Device::Cpu;
    let stage = LdmStage::new(&opts.dataset, &opts.config, opts.seed, &dev)?;
    let identity = serde_yaml::to_string(&serde_json::json!({
        "stage": "ldm",
        "seed": opts.seed,
        "config": opts.config,
    }))?;
    tracing::info!(
        clips = stage.num_items(),
        frames_per_clip = stage.clip_frames(),
        "ldm warm-up"
    );
    let report = train_loop(
        "ldm",
        &opts.out,
        &identity,
        stage.varmap(),
        &opts.config.train,
        opts.seed,
        stage.num_items(),
        &opts.run,
        |items| stage.loss(items),
    )?;
    let mut weights = None;
    if report.completed {
        let path = opts.out.join(LDM_WEIGHTS);
        save_safetensors_atomic(&varmap_tensors(stage.varmap()), &path)?;
        let output = LdmOutput {
            image_size: opts.config.image_size,
            config: opts.config.model.clone(),
            weights: PathBuf::from(LDM_WEIGHTS),
        };
        super::run::write_atomic(
            &opts.out.join(LDM_OUTPUT),
            serde_yaml::to_string(&output)?.as_bytes(),
        )?;
        weights = Some(path);
    }
    let result = LdmTrainResult {
        report,
        clips: stage.num_items(),
        clip_frames: stage.clip_frames(),
        weights,
    };
    super::run::write_atomic(
        &opts.out.join("summary.json"),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )
    .context("writing summary.json")?;
    Ok(result)
}
