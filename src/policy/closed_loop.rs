//! The closed-loop policy (see `design/policy-loop.md` in the shared notes):
//! observe → encode the observed codes → AR predicts the next step's codes →
//! action head → an action chunk; the current frame's features travel with the
//! plan so the monitor can imagine the future with the coarse decoder.
//!
//! One latent step is `s` control steps (s = 4; 133 ms at 30 Hz). The AR is
//! conditioned on the codes the encoder *observed*, never on its own earlier
//! predictions: predictions are sampled from a clone of the KV cache that is
//! then thrown away.

use std::collections::VecDeque;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::bundle::{ActionKind, Head, LoadedPolicy};
use super::instruction::instruction_tensor;
use crate::io::RgbImage;
use crate::model::ar::{KvCache, Sampler, Sampling};
use crate::model::dldm::EncoderStream;
use crate::model::head::{postprocess_calvin, ACTION_DIM};

/// Run-time options of the closed loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOptions {
    /// How the next codes are drawn from the AR's logits.
    #[serde(default)]
    pub sampling: Sampling,
    /// Seed of the sampler (reset with every `reset`).
    #[serde(default)]
    pub seed: u64,
    /// Latent steps of history the encoder sees (its window is `1 + s·W` frames),
    /// with `encoder: window`.
    #[serde(default = "d_window")]
    pub window_latent_steps: usize,
    /// How the encoder sees the episode: `window` re-encodes the last
    /// `window_latent_steps` at every latent step (what `vw2 train` mirrors by
    /// default); `stream` encodes only the new frames, continuing the causal
    /// encoder's state from frame 0 (the whole episode is its history, as one
    /// encode of the episode would see it; cost per step independent of its length).
    #[serde(default)]
    pub encoder: EncoderMode,
    /// Re-plan every k control steps (1 ≤ k ≤ s). Between latent steps the
    /// codes and visual features stay; the head re-runs with fresh proprio.
    #[serde(default)]
    pub replan_every: Option<usize>,
    /// Temporal ensembling (ACT, Zhao et al. 2023) with decay `m`: the action
    /// for a control step is the weighted mean of every chunk made in the
    /// current latent step that covers it, weight `exp(−m·i)` with `i = 0` the
    /// oldest chunk (gripper: the sign of the weighted mean; absolute euler
    /// angles are averaged on the circle). `m = 0` is a plain mean. Only useful
    /// with re-planning (`replan_every: 1`); `None`: the newest chunk alone.
    #[serde(default)]
    pub ensemble_decay: Option<f64>,
}

/// How the policy runs the dLDM encoder over an episode (see [`PolicyOptions::encoder`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EncoderMode {
    /// Re-encode a sliding window of `window_latent_steps` latent steps.
    #[default]
    Window,
    /// Encode only the new frames, continuing from the episode's start.
    Stream,
}

fn d_window() -> usize {
    8
}

impl Default for PolicyOptions {
    fn default() -> Self {
        Self {
            sampling: Sampling::Greedy,
            seed: 0,
            window_latent_steps: d_window(),
            encoder: EncoderMode::Window,
            replan_every: None,
            ensemble_decay: None,
        }
    }
}

/// What the policy decided at one observation.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Capture time of the frame this plan was made from (s, monotonic).
    pub t: f64,
    /// Control step index of that frame since `reset` (0-based).
    pub control_step: usize,
    /// Latent step the predicted codes belong to (1-based: step 1 follows frame 0).
    pub latent_step: usize,
    /// Codes the encoder observed for the step just completed (empty at step 0).
    pub observed_codes: Vec<u32>,
    /// Codes the AR predicts for the next latent step (N of them).
    pub predicted_codes: Vec<u32>,
    /// The action chunk, `C × 7`, in the bundle's action space (CALVIN relative
    /// units for relative bundles: clipped to [−1, 1], gripper exactly ±1).
    pub actions: Vec<[f32; ACTION_DIM]>,
    /// Whether `actions` are relative.
    pub relative: bool,
    /// Encoder features of the current frame `[1, 1, F, h, w]`, the starting
    /// state for imagining the predicted step with the coarse decoder.
    pub current_features: Tensor,
}

/// A policy bundle run in closed loop, one episode at a time.
pub struct Policy {
    bundle: LoadedPolicy,
    options: PolicyOptions,
    device: Device,
    frames: VecDeque<Tensor>,
    control_step: usize,
    latent_step: usize,
    instruction: Option<Tensor>,
    /// The instruction as the head sees it (`None`: the head does not).
    head_instruction: Option<Tensor>,
    cache: Option<KvCache>,
    visual_prefix: Option<Tensor>,
    observed: Vec<Vec<u32>>,
    predicted: Vec<u32>,
    current_features: Option<Tensor>,
    /// The encoder's state with `encoder: stream`.
    stream: EncoderStream,
    sampler: Sampler,
    /// Chunks made in the current latent step (oldest first), rows from its first control step.
    step_chunks: Vec<Vec<[f32; ACTION_DIM]>>,
}

impl Policy {
    /// Wraps a loaded bundle.
    pub fn new(bundle: LoadedPolicy, options: PolicyOptions, device: Device) -> Result<Self> {
        options
            .sampling
            .validate()
            .map_err(|e| anyhow!("sampling: {e}"))?;
        let s = bundle.spec.steps_per_latent;
        if let Some(k) = options.replan_every {
            ensure!(
                (1..=s).contains(&k),
                "replan_every: expected 1..={s}, found {k}"
            );
        }
        ensure!(
            options.window_latent_steps >= 1,
            "window_latent_steps: expected ≥ 1, found 0"
        );
        if let Some(m) = options.ensemble_decay {
            ensure!(
                m.is_finite() && m >= 0.0,
                "ensemble_decay: expected a finite value ≥ 0, found {m}"
            );
        }
        let vocab = bundle.ar.config().vocab_size;
        let sampler = Sampler::new(options.sampling, options.seed).with_vocab_size(vocab);
        Ok(Self {
            bundle,
            options,
            device,
            frames: VecDeque::new(),
            control_step: 0,
            latent_step: 0,
            instruction: None,
            head_instruction: None,
            cache: None,
            visual_prefix: None,
            observed: vec![],
            predicted: vec![],
            current_features: None,
            stream: EncoderStream::default(),
            sampler,
            step_chunks: vec![],
        })
    }

    /// The loaded bundle.
    pub fn bundle(&self) -> &LoadedPolicy {
        &self.bundle
    }

    /// Control steps per latent step (s).
    pub fn steps_per_latent(&self) -> usize {
        self.bundle.spec.steps_per_latent
    }

    /// Starts an episode with a new instruction: clears history and the KV cache.
    pub fn reset(&mut self, instruction: &str) -> Result<()> {
        let dim = self.bundle.ar.config().instruction_dim;
        self.instruction = Some(instruction_tensor(instruction, dim, &self.device)?);
        self.head_instruction = self.bundle.head_instruction(instruction, &self.device)?;
        self.frames.clear();
        self.control_step = 0;
        self.latent_step = 0;
        self.cache = None;
        self.visual_prefix = None;
        self.observed.clear();
        self.predicted.clear();
        self.current_features = None;
        self.stream = EncoderStream::default();
        self.step_chunks.clear();
        self.sampler = Sampler::new(self.options.sampling, self.options.seed)
            .with_vocab_size(self.bundle.ar.config().vocab_size);
        Ok(())
    }

    /// Feeds the frame of one control step (static camera, any size: resized
    /// bilinearly to the bundle's `image_size`), the proprio vector
    /// (CALVIN `robot_obs`, when the head uses it) and its capture time `t` (s).
    /// Returns a plan at frame 0, at every latent-step boundary, and every
    /// `replan_every` steps in between.
    pub fn observe(&mut self, frame: &RgbImage, proprio: &[f64], t: f64) -> Result<Option<Plan>> {
        let instruction = self
            .instruction
            .clone()
            .ok_or_else(|| anyhow!("observe before reset: call reset(instruction) first"))?;
        ensure!(
            t.is_finite(),
            "frame time: expected a finite time, found {t}"
        );
        frame.validate("frame").map_err(|e| anyhow!(e))?;
        let proprio = self.proprio_tensor(proprio)?;
        let x = self.frame_tensor(frame)?;
        let s = self.steps_per_latent();
        let n = self.control_step;
        self.control_step += 1;
        self.frames.push_back(x);
        let cap = 1 + s * self.options.window_latent_steps;
        while self.frames.len() > cap {
            self.frames.pop_front();
        }
        let mut observed = vec![];
        if n == 0 {
            let clip = self.frames[0].unsqueeze(1)?; // [1, 1, 3, H, W]
            let feats = match self.options.encoder {
                EncoderMode::Window => self.bundle.dldm.encode_features(&clip)?,
                EncoderMode::Stream => self.bundle.dldm.stream_first(&mut self.stream, &clip)?,
            };
            let (_, _, f, h, w) = feats.dims5()?;
            let prefix = feats
                .reshape((1, f, h * w))?
                .transpose(1, 2)?
                .contiguous()?;
            let mut cache = self.bundle.ar.new_cache();
            self.bundle.ar.prefill(&mut cache, &instruction, &prefix)?;
            self.cache = Some(cache);
            self.visual_prefix = Some(prefix);
            self.current_features = Some(feats);
            self.predict_next()?;
        } else if n.is_multiple_of(s) {
            observed = self.encode_latest_step()?;
            self.observed.push(observed.clone());
            self.ensure_cache_room()?;
            let codes = Tensor::new(observed.as_slice(), &self.device)?.unsqueeze(0)?;
            let cache = self.cache.as_mut().expect("prefilled at frame 0");
            self.bundle.ar.step(cache, &codes)?;
            self.predict_next()?;
        } else if self
            .options
            .replan_every
            .is_none_or(|k| !(n % s).is_multiple_of(k))
        {
            return Ok(None);
        }
        // Head rows start at the latent step's first control step; a plan made
        // `offset` steps into it acts from its own frame on.
        let offset = n % s;
        let rows = self.run_head(proprio.as_ref())?;
        if offset == 0 {
            self.step_chunks.clear();
        }
        let actions = match self.options.ensemble_decay {
            Some(m) => {
                self.step_chunks.push(rows);
                ensemble(
                    &self.step_chunks,
                    offset,
                    m,
                    self.bundle.spec.action_space.kind,
                )
            }
            None => rows.get(offset..).unwrap_or_default().to_vec(),
        };
        Ok(Some(Plan {
            t,
            control_step: n,
            latent_step: self.latent_step + 1,
            observed_codes: observed,
            predicted_codes: self.predicted.clone(),
            actions,
            relative: self.bundle.spec.action_space.kind == ActionKind::Relative,
            current_features: self.current_features.clone().expect("set at frame 0"),
        }))
    }

    /// Samples the next step's codes from a throw-away clone of the cache.
    fn predict_next(&mut self) -> Result<()> {
        let mut speculative = self.cache.clone().expect("prefilled");
        let codes = self
            .bundle
            .ar
            .generate_step_codes(&mut speculative, &mut self.sampler)?;
        self.predicted = codes.into_iter().next().unwrap_or_default();
        Ok(())
    }

    /// Encodes the frame window and returns the codes of its newest latent step.
    fn encode_latest_step(&mut self) -> Result<Vec<u32>> {
        let s = self.steps_per_latent();
        if self.options.encoder == EncoderMode::Stream {
            // The s frames of the step just completed.
            let frames: Vec<&Tensor> = self.frames.iter().skip(self.frames.len() - s).collect();
            let out = self
                .bundle
                .dldm
                .stream_step(&mut self.stream, &Tensor::stack(&frames, 1)?)?;
            self.current_features = Some(out.features);
            self.latent_step += 1;
            return Ok(out.indices.flatten_all()?.to_vec1::<u32>()?);
        }
        // The window holds 1 + s·m frames ending at the newest one.
        let m = (self.frames.len() - 1) / s;
        let skip = self.frames.len() - (1 + s * m);
        let frames: Vec<&Tensor> = self.frames.iter().skip(skip).collect();
        let clip = Tensor::stack(&frames, 1)?; // [1, T, 3, H, W]
        let enc = self.bundle.dldm.encode(&clip)?;
        let t = enc.features.dim(1)?;
        self.current_features = Some(enc.features.narrow(1, t - 1, 1)?);
        self.latent_step += 1;
        let steps = enc.indices.dim(1)?;
        Ok(enc.indices.get(0)?.get(steps - 1)?.to_vec1::<u32>()?)
    }

    /// Rebuilds the KV cache from the prefix and the last W observed steps when
    /// the next step would not fit.
    fn ensure_cache_room(&mut self) -> Result<()> {
        let n = self.bundle.dldm.config().num_queries;
        let cache = self.cache.as_ref().expect("prefilled");
        if cache.remaining() >= 2 * n {
            return Ok(());
        }
        let mut fresh = self.bundle.ar.new_cache();
        let instruction = self.instruction.as_ref().expect("reset");
        let prefix = self.visual_prefix.as_ref().expect("frame 0");
        self.bundle.ar.prefill(&mut fresh, instruction, prefix)?;
        let keep = (fresh.remaining() / n)
            .saturating_sub(2)
            .min(self.options.window_latent_steps);
        let history: Vec<u32> = self
            .observed
            .iter()
            .rev()
            .skip(1) // the newest step is fed by the caller
            .take(keep)
            .rev()
            .flatten()
            .copied()
            .collect();
        if !history.is_empty() {
            let codes = Tensor::new(history.as_slice(), &self.device)?.unsqueeze(0)?;
            self.bundle.ar.step(&mut fresh, &codes)?;
        }
        tracing::debug!(
            kept_steps = keep,
            "AR cache rebuilt from the prefix and recent observed codes"
        );
        self.cache = Some(fresh);
        Ok(())
    }

    fn run_head(&self, proprio: Option<&Tensor>) -> Result<Vec<[f32; ACTION_DIM]>> {
        let feats = self.current_features.as_ref().expect("set at frame 0");
        let visual = self.bundle.head_visual(feats)?;
        let codes = Tensor::new(self.predicted.as_slice(), &self.device)?.unsqueeze(0)?;
        let out =
            self.bundle
                .head_forward(&codes, &visual, proprio, self.head_instruction.as_ref())?;
        let rows = crate::model::head::chunk_rows(&out, 0)?;
        let norm = &self.bundle.spec.normalization;
        let rows: Vec<[f32; ACTION_DIM]> = rows
            .into_iter()
            .map(|mut r| {
                if !norm.action_std.is_empty() {
                    for ((v, sd), m) in r.iter_mut().zip(&norm.action_std).zip(&norm.action_mean) {
                        *v = *v * sd + m;
                    }
                }
                r
            })
            .collect();
        match self.bundle.spec.action_space.kind {
            ActionKind::Relative => postprocess_calvin(&rows).map_err(|e| anyhow!("head output: {e}")),
            ActionKind::Absolute => rows
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    if let Some(d) = r.iter().position(|v| !v.is_finite()) {
                        bail!("head output: action step {i}, dim {d}: expected a finite value, found {}", r[d]);
                    }
                    r[6] = if r[6] > 0.0 { 1.0 } else { -1.0 };
                    Ok(r)
                })
                .collect(),
        }
    }

    fn proprio_tensor(&self, proprio: &[f64]) -> Result<Option<Tensor>> {
        let want = match &self.bundle.head {
            Head::Mlp(h) => h.config().proprio_dim,
            Head::Onnx(h) => h.proprio_dim().unwrap_or(0),
        };
        if want == 0 {
            return Ok(None);
        }
        if let Some(i) = proprio.iter().position(|v| !v.is_finite()) {
            bail!(
                "proprio[{i}]: expected a finite value, found {}",
                proprio[i]
            );
        }
        let norm = &self.bundle.spec.normalization;
        let v = norm
            .proprio_encoding
            .normalized(proprio, &norm.proprio_mean, &norm.proprio_std)
            .map_err(|e| anyhow!("proprio: {e}"))?;
        ensure!(
            v.len() == want,
            "proprio: the head takes {want} features, the encoding {:?} makes {}",
            norm.proprio_encoding,
            v.len()
        );
        Ok(Some(Tensor::from_vec(v, (1, want), &self.device)?))
    }

    /// `[1, 3, H, W]` in [−1, 1] at the bundle's image size.
    fn frame_tensor(&self, frame: &RgbImage) -> Result<Tensor> {
        let [h, w] = self.bundle.spec.image_size;
        let img = crate::base::image::preprocess(frame, [h, w]);
        let t = Tensor::from_slice(&img.data, (1, h, w, 3), &self.device)
            .context("frame tensor")?
            .permute((0, 3, 1, 2))?
            .to_dtype(DType::F32)?;
        Ok(((t / 127.5)? - 1.0)?)
    }
}

/// Temporal ensembling: rows `from..` of the weighted mean of `chunks`
/// (oldest first, each with rows from the same first control step), weight
/// `exp(−decay·i)` for chunk `i`. Relative xyz/euler: weighted mean; absolute
/// euler: weighted circular mean about the oldest chunk's angle; gripper: the
/// sign of the weighted mean (the newest chunk's on a tie).
pub fn ensemble(
    chunks: &[Vec<[f32; ACTION_DIM]>],
    from: usize,
    decay: f64,
    kind: ActionKind,
) -> Vec<[f32; ACTION_DIM]> {
    let len = chunks.iter().map(Vec::len).min().unwrap_or(0);
    let weights: Vec<f64> = (0..chunks.len())
        .map(|i| (-decay * i as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    (from..len)
        .map(|j| {
            let mut out = [0f32; ACTION_DIM];
            for d in 0..ACTION_DIM {
                let reference = f64::from(chunks[0][j][d]);
                let circular = kind == ActionKind::Absolute && (3..6).contains(&d);
                let mean = chunks
                    .iter()
                    .zip(&weights)
                    .map(|(c, w)| {
                        let v = f64::from(c[j][d]);
                        w * if circular {
                            crate::base::angle::wrap_pi(v - reference)
                        } else {
                            v
                        }
                    })
                    .sum::<f64>()
                    / total;
                out[d] = if d == ACTION_DIM - 1 {
                    if mean > 0.0 {
                        1.0
                    } else if mean < 0.0 {
                        -1.0
                    } else {
                        chunks[chunks.len() - 1][j][d]
                    }
                } else if circular {
                    crate::base::angle::wrap_pi(reference + mean) as f32
                } else {
                    mean as f32
                };
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensembling_absolute_angles_averages_across_the_wrap() {
        let pi = std::f32::consts::PI;
        let a = vec![[0.5, 0.0, 0.0, pi - 0.1, 0.0, 0.0, 1.0]];
        let b = vec![[0.7, 0.0, 0.0, -pi + 0.1, 0.0, 0.0, -1.0]];
        let out = ensemble(&[a.clone(), b.clone()], 0, 0.0, ActionKind::Absolute);
        assert!((out[0][0] - 0.6).abs() < 1e-6);
        // The mean of π − 0.1 and −π + 0.1 on the circle is π, not 0.
        assert!((out[0][3].abs() - pi).abs() < 1e-5, "{}", out[0][3]);
        // A tie on the gripper keeps the newest chunk's command.
        assert_eq!(out[0][6], -1.0);
        // Relative actions are plain means.
        let rel = ensemble(&[a, b], 0, 0.0, ActionKind::Relative);
        assert!(rel[0][3].abs() < 1e-6);
    }

    #[test]
    fn ensembling_weights_decay_from_the_oldest_chunk() {
        let chunks = vec![vec![[1.0; 7]; 2], vec![[0.0; 7]; 2]];
        let m = 0.5f64;
        let out = ensemble(&chunks, 1, m, ActionKind::Relative);
        assert_eq!(out.len(), 1);
        let want = 1.0 / (1.0 + (-m).exp());
        assert!((f64::from(out[0][0]) - want).abs() < 1e-6);
        assert_eq!(out[0][6], 1.0);
    }
}
