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

    /// Reconstruction loss of clips `items`: the (motion-weighted) MSE of the
    /// decoded frames 1..T−1.
    pub fn loss(&self, items: &[usize]) -> Result<Tensor> {
        let x = self.batch(items)?;
        weighted_reconstruction_loss(
            &self.model,
            &x,
            self.cfg.motion_weight,
            self.cfg.residual_decoder,
        )
    }
}

/// Encodes `x` `[B, T, 3, H, W]`, decodes from frame 0's features and the codes,
/// and returns the mean squared error over frames 1..T−1.
pub fn reconstruction_loss(model: &Dldm, x: &Tensor) -> Result<Tensor> {
    weighted_reconstruction_loss(model, x, 0.0, false)
}

/// Per-pixel weights `[B, T−1, 1, H, W]` of the future frames of `x`
/// `[B, T, 3, H, W]`: `1 + motion_weight · mean_c |x_t − x_0|`, divided by their
/// mean so the loss keeps the scale of a plain MSE. Constant: no gradient.
pub fn motion_weights(x: &Tensor, motion_weight: f64) -> Result<Tensor> {
    let t = x.dim(1)?;
    let first = x.narrow(1, 0, 1)?;
    let future = x.narrow(1, 1, t - 1)?;
    let change = future
        .broadcast_sub(&first)?
        .abs()?
        .mean_keepdim(2)?
        .detach();
    let w = ((change * motion_weight)? + 1.0)?;
    let mean = w.mean_all()?;
    Ok(w.broadcast_div(&mean)?)
}

/// [`reconstruction_loss`] with the pixels that changed since frame 0 weighted
/// by [`motion_weights`] (`motion_weight` 0: the plain MSE). With `residual`
/// the decoder's output is read as the change from frame 0 (the prediction is
/// `x_0 + decode(…)`), so copying the first frame costs nothing to learn and
/// every gradient goes to the change.
pub fn weighted_reconstruction_loss(
    model: &Dldm,
    x: &Tensor,
    motion_weight: f64,
    residual: bool,
) -> Result<Tensor> {
    let enc = model.encode(x)?;
    let first = enc.features.narrow(1, 0, 1)?;
    let rec = model.decode(&first, &enc.codes)?;
    let t = x.dim(1)?;
    let target = x.narrow(1, 1, t - 1)?;
    let mut pred = rec.narrow(1, 1, t - 1)?;
    if residual {
        pred = pred.broadcast_add(&x.narrow(1, 0, 1)?)?;
    }
    let sq = (pred - &target)?.sqr()?;
    if motion_weight == 0.0 {
        return Ok(sq.mean_all()?);
    }
    let w = motion_weights(x, motion_weight)?;
    Ok(sq.broadcast_mul(&w)?.mean_all()?)
}

/// How many codes the encoder uses on a sample of clips (code-usage monitor).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeUsage {
    /// Clips encoded.
    pub clips: usize,
    /// Latent steps encoded (clips × steps per clip).
    pub latent_steps: usize,
    /// Distinct code indices over all queries.
    pub distinct: usize,
    /// Distinct code indices of each query.
    pub distinct_per_query: Vec<usize>,
    /// Plain reconstruction MSE of the future frames with each clip's own codes.
    pub mse_own_codes: f64,
    /// The same with every clip decoded from another clip's codes (rolled by
    /// one within each batch of 8): how much the decoder relies on the codes.
    /// Equal to `mse_own_codes` when the codes carry nothing the decoder uses.
    pub mse_other_codes: f64,
    /// Spread of each code dimension before rounding, in FSQ levels (1.0 =
    /// one level apart): the std over latent steps of each query's value,
    /// averaged over the queries. Below about 0.5 nearly every step of a query
    /// rounds to the same level.
    pub level_std_per_dim: Vec<f64>,
}

impl LdmStage {
    /// Encodes up to `max_clips` clips spread evenly over the dataset and
    /// counts the distinct codes (a collapsed codebook uses a handful).
    pub fn code_usage(&self, max_clips: usize) -> Result<CodeUsage> {
        code_usage(
            &self.model,
            &self.frames,
            &self.clips,
            self.clip_frames,
            self.cfg.residual_decoder,
            max_clips,
            &self.device,
        )
    }
}

/// [`CodeUsage`] of `model` on up to `max_clips` of the clips starting at
/// `starts` (`clip_frames` frames each), spread evenly; `residual`: the
/// decoder renders the change from frame 0.
pub fn code_usage(
    model: &Dldm,
    frames: &StaticFrames,
    starts: &[usize],
    clip_frames: usize,
    residual: bool,
    max_clips: usize,
    dev: &Device,
) -> Result<CodeUsage> {
    anyhow::ensure!(!starts.is_empty(), "code usage: no clip to encode");
    let n = starts.len().min(max_clips).max(1);
    let picks: Vec<usize> = (0..n).map(|i| starts[i * starts.len() / n]).collect();
    let queries = model.config().num_queries;
    let mut all = std::collections::BTreeSet::new();
    let mut per_query = vec![std::collections::BTreeSet::new(); queries];
    let mut steps = 0;
    let (mut own, mut other, mut batches) = (0f64, 0f64, 0usize);
    let code_dim = model.fsq().dim();
    // Pre-rounding values per (query, dim).
    let mut bounded_vals: Vec<Vec<f64>> = vec![Vec::new(); queries * code_dim];
    for chunk in picks.chunks(8) {
        let clips: Vec<Vec<usize>> = chunk
            .iter()
            .map(|&s| (s..s + clip_frames).collect())
            .collect();
        let x = frames.clips(&clips, dev)?;
        let enc = model.encode(&x)?;
        let bounded = model.fsq().bound(&model.latents(&enc.features)?)?;
        for (i, v) in bounded
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .enumerate()
        {
            let (token, d) = (i / code_dim, i % code_dim);
            bounded_vals[(token % queries) * code_dim + d].push(v as f64);
        }
        let first = enc.features.narrow(1, 0, 1)?;
        let t = x.dim(1)?;
        let target = x.narrow(1, 1, t - 1)?;
        let x0 = x.narrow(1, 0, 1)?;
        let mse = |codes: &Tensor| -> Result<f64> {
            let mut rec = model.decode(&first, codes)?;
            if residual {
                rec = rec.broadcast_add(&x0)?;
            }
            let d = (rec.narrow(1, 1, t - 1)? - &target)?;
            Ok(d.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
        };
        own += mse(&enc.codes)?;
        let b = enc.codes.dim(0)?;
        let rolled = if b > 1 {
            Tensor::cat(
                &[enc.codes.narrow(0, 1, b - 1)?, enc.codes.narrow(0, 0, 1)?],
                0,
            )?
        } else {
            enc.codes.clone()
        };
        other += mse(&rolled)?;
        batches += 1;
        let idx = enc.indices;
        let (b, l, q) = idx.dims3()?;
        steps += b * l;
        let flat = idx.flatten_all()?.to_vec1::<u32>()?;
        for (i, &c) in flat.iter().enumerate() {
            all.insert(c);
            per_query[i % q].insert(c);
        }
    }
    Ok(CodeUsage {
        clips: n,
        latent_steps: steps,
        distinct: all.len(),
        distinct_per_query: per_query.iter().map(|s| s.len()).collect(),
        mse_own_codes: own / batches.max(1) as f64,
        mse_other_codes: other / batches.max(1) as f64,
        level_std_per_dim: (0..code_dim)
            .map(|d| {
                let std = |v: &[f64]| {
                    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
                    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
                };
                (0..queries)
                    .map(|q| std(&bounded_vals[q * code_dim + d]))
                    .sum::<f64>()
                    / queries as f64
            })
            .collect(),
    })
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
    /// Codes used on up to 512 clips after training (only when the run completed).
    pub code_usage: Option<CodeUsage>,
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
    let mut code_usage = None;
    if report.completed {
        let usage = stage.code_usage(512)?;
        tracing::info!(
            distinct = usage.distinct,
            per_query = ?usage.distinct_per_query,
            mse_own_codes = usage.mse_own_codes,
            mse_other_codes = usage.mse_other_codes,
            latent_steps = usage.latent_steps,
            "ldm code usage"
        );
        code_usage = Some(usage);
        let path = opts.out.join(LDM_WEIGHTS);
        save_safetensors_atomic(&varmap_tensors(stage.varmap()), &path)?;
        let output = LdmOutput {
            image_size: opts.config.image_size,
            config: opts.config.model.clone(),
            weights: PathBuf::from(LDM_WEIGHTS),
        };
        crate::base::fs::write_atomic(
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
        code_usage,
    };
    crate::base::fs::write_atomic(
        &opts.out.join("summary.json"),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )
    .context("writing summary.json")?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn motion_weights_favour_the_pixels_that_moved() {
        // One clip of 3 frames of 1×4 pixels; pixel 2 changes in frame 2 only.
        let mut v = vec![0f32; 3 * 3 * 4];
        for c in 0..3 {
            v[2 * 12 + c * 4 + 2] = 1.0;
        }
        let x = Tensor::from_vec(v, (1, 3, 3, 1, 4), &Device::Cpu).unwrap();
        let w = motion_weights(&x, 9.0).unwrap();
        assert_eq!(w.dims(), &[1, 2, 1, 1, 4]);
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Raw weights: 1 everywhere, 10 at (frame 2, pixel 2); mean 17/8.
        let unit = 8.0 / 17.0;
        for (i, &wi) in w.iter().enumerate() {
            let want = if i == 6 { 10.0 * unit } else { unit };
            assert!((wi - want).abs() < 1e-6, "weight {i}: {wi} vs {want}");
        }
        let mean: f32 = w.iter().sum::<f32>() / w.len() as f32;
        assert!((mean - 1.0).abs() < 1e-6);
        // A static clip weighs every pixel alike.
        let still = Tensor::ones((1, 3, 3, 1, 4), DType::F32, &Device::Cpu).unwrap();
        let w = motion_weights(&still, 9.0).unwrap();
        let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(w.iter().all(|&v| (v - 1.0).abs() < 1e-6), "{w:?}");
    }

    #[test]
    fn motion_weighted_loss_reduces_to_mse_and_differs_on_motion() {
        let cfg = crate::model::dldm::DldmConfig::tiny();
        let (_, model) = seeded_varmap(7, &Device::Cpu, |vb| Dldm::new(&cfg, vb)).unwrap();
        let s = cfg.patch_size;
        let r = cfg.resolution;
        let x = Tensor::rand(-1f32, 1f32, (1, 1 + s, 3, r, r), &Device::Cpu).unwrap();
        let plain = reconstruction_loss(&model, &x)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let zero = weighted_reconstruction_loss(&model, &x, 0.0, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(plain, zero);
        let weighted = weighted_reconstruction_loss(&model, &x, 20.0, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(weighted.is_finite() && weighted > 0.0);
        assert!((weighted - plain).abs() > 1e-6, "{weighted} vs {plain}");
        let residual = weighted_reconstruction_loss(&model, &x, 0.0, true)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(residual.is_finite() && residual > 0.0);
        assert!((residual - plain).abs() > 1e-6, "{residual} vs {plain}");
    }
}
