//! The action head: maps the codes of one latent step, the current visual
//! features, (optionally) proprioception and (optionally) the instruction to
//! an action chunk of `C × 7` (xyz, euler, gripper).

use candle_core::{bail, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::nn::Mlp;

/// Action dimensions: xyz (3), euler (3), gripper (1).
pub const ACTION_DIM: usize = 7;

/// Sizes of the MLP action head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Number of codes in the vocabulary (1000).
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Codes per latent step (N = 4).
    #[serde(default = "d_codes")]
    pub codes_per_step: usize,
    /// Width of each learned code embedding.
    pub code_embed_dim: usize,
    /// Width of the visual vector: [`VisualPool::width`] of the dLDM's
    /// `feature_channels()` (F for `mean`, 3F for `keypoints`).
    pub visual_dim: usize,
    /// How the current frame's feature map `[F, h, w]` becomes the visual vector.
    #[serde(default)]
    pub visual_pool: VisualPool,
    /// Width of the proprioception vector; 0 disables it (CALVIN robot_obs: 15).
    #[serde(default)]
    pub proprio_dim: usize,
    /// Width of the instruction embedding the head sees (the hashed embedding
    /// of `policy::instruction`); 0: the head does not see the instruction.
    #[serde(default)]
    pub instruction_dim: usize,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
    /// Action chunk length C, in control steps (s = 4 per latent step).
    pub chunk: usize,
}

fn d_vocab() -> usize {
    1000
}
fn d_codes() -> usize {
    4
}

impl HeadConfig {
    /// Width of the MLP input.
    pub fn input_dim(&self) -> usize {
        self.codes_per_step * self.code_embed_dim
            + self.visual_dim
            + self.proprio_dim
            + self.instruction_dim
    }
}

/// How a feature map `[F, h, w]` becomes the head's visual vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisualPool {
    /// The global mean of each channel (F values): no position.
    #[default]
    Mean,
    /// The mean of each channel, then the expected x and the expected y of a
    /// spatial softmax over each channel (Levine et al.'s keypoints, in
    /// [−1, 1] of the map's width and height): 3F values that keep where
    /// things are.
    Keypoints,
}

impl VisualPool {
    /// Width of the visual vector from `f` feature channels.
    pub fn width(self, f: usize) -> usize {
        match self {
            VisualPool::Mean => f,
            VisualPool::Keypoints => 3 * f,
        }
    }
}

/// MLP action head (keys `code_embed.weight`, `mlp.{i}.{weight,bias}`).
#[derive(Debug, Clone)]
pub struct ActionHead {
    cfg: HeadConfig,
    code_embed: candle_nn::Embedding,
    mlp: Mlp,
}

impl ActionHead {
    /// Loads the head.
    pub fn new(cfg: &HeadConfig, vb: VarBuilder) -> Result<Self> {
        let code_embed =
            candle_nn::embedding(cfg.vocab_size, cfg.code_embed_dim, vb.pp("code_embed"))?;
        let mut dims = vec![cfg.input_dim()];
        dims.extend(&cfg.hidden);
        dims.push(cfg.chunk * ACTION_DIM);
        Ok(Self {
            cfg: cfg.clone(),
            code_embed,
            mlp: Mlp::new(&dims, vb.pp("mlp"))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// `indices` `[B, N]` (u32), `visual` `[B, visual_dim]`, `proprio` `[B, P]`,
    /// `instruction` `[B, instruction_dim]` → normalized actions `[B, C, 7]`.
    pub fn forward(
        &self,
        indices: &Tensor,
        visual: &Tensor,
        proprio: Option<&Tensor>,
        instruction: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, n) = indices.dims2()?;
        if n != self.cfg.codes_per_step {
            bail!(
                "action head expects {} codes per step, found {n}",
                self.cfg.codes_per_step
            );
        }
        let emb = candle_core::Module::forward(&self.code_embed, indices)?
            .reshape((b, n * self.cfg.code_embed_dim))?;
        let mut parts = vec![emb, visual.to_dtype(visual.dtype())?];
        match (proprio, self.cfg.proprio_dim) {
            (Some(p), d) if d > 0 => parts.push(p.clone()),
            (None, 0) => {}
            (Some(_), 0) => bail!("action head has no proprioception input (proprio_dim 0)"),
            (None, d) => bail!("action head expects proprioception of width {d}, found none"),
            _ => unreachable!(),
        }
        // A head without an instruction input ignores one it is given.
        if self.cfg.instruction_dim > 0 {
            match instruction {
                Some(t) => parts.push(t.clone()),
                None => bail!(
                    "action head expects an instruction embedding of width {}, found none",
                    self.cfg.instruction_dim
                ),
            }
        }
        let x = Tensor::cat(&parts, D::Minus1)?;
        self.mlp
            .forward(&x)?
            .reshape((b, self.cfg.chunk, ACTION_DIM))
    }
}

/// Pools dLDM features `[B, 1, F, h, w]` (or `[B, F, h, w]`) to a visual vector `[B, F]`.
pub fn pool_visual(features: &Tensor) -> Result<Tensor> {
    pool_features(features, VisualPool::Mean)
}

/// Pools dLDM features `[B, 1, F, h, w]` (or `[B, F, h, w]`) to the visual
/// vector `[B, pool.width(F)]` (see [`VisualPool`]).
pub fn pool_features(features: &Tensor, pool: VisualPool) -> Result<Tensor> {
    let map = match features.rank() {
        5 => features.squeeze(1)?,
        4 => features.clone(),
        r => bail!("visual features must be [B,1,F,h,w] or [B,F,h,w], found rank {r}"),
    };
    let mean = map.mean(D::Minus1)?.mean(D::Minus1)?;
    match pool {
        VisualPool::Mean => Ok(mean),
        VisualPool::Keypoints => {
            let (b, f, h, w) = map.dims4()?;
            let dev = map.device();
            let dt = map.dtype();
            // Pixel centres in [−1, 1]; a 1-pixel axis sits at 0.
            let axis = |n: usize| -> Result<Tensor> {
                let v: Vec<f32> = (0..n)
                    .map(|i| {
                        if n > 1 {
                            2.0 * i as f32 / (n - 1) as f32 - 1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                Tensor::from_vec(v, n, dev)?.to_dtype(dt)
            };
            let xs = axis(w)?.reshape((1, 1, 1, w))?.broadcast_as((1, 1, h, w))?;
            let ys = axis(h)?.reshape((1, 1, h, 1))?.broadcast_as((1, 1, h, w))?;
            // `ops::softmax` (not the fused last-dim kernel) keeps a backward.
            let prob = candle_nn::ops::softmax(&map.reshape((b, f, h * w))?, D::Minus1)?
                .reshape((b, f, h, w))?;
            let kx = prob.broadcast_mul(&xs)?.sum(D::Minus1)?.sum(D::Minus1)?;
            let ky = prob.broadcast_mul(&ys)?.sum(D::Minus1)?.sum(D::Minus1)?;
            Tensor::cat(&[mean, kx, ky], D::Minus1)
        }
    }
}

/// CALVIN post-processing of a relative action chunk `[.., 7]`: xyz and euler
/// clipped to [−1, 1], gripper mapped to exactly +1 (open, value > 0) or −1
/// (close). Any NaN or Inf is an error: a robot command is never guessed.
pub fn postprocess_calvin(
    actions: &[[f32; ACTION_DIM]],
) -> std::result::Result<Vec<[f32; ACTION_DIM]>, String> {
    actions
        .iter()
        .enumerate()
        .map(|(step, a)| {
            if let Some(i) = a.iter().position(|v| !v.is_finite()) {
                return Err(format!(
                    "action step {step}, dim {i}: expected a finite value, found {}",
                    a[i]
                ));
            }
            let mut out = [0f32; ACTION_DIM];
            for i in 0..6 {
                out[i] = a[i].clamp(-1.0, 1.0);
            }
            out[6] = if a[6] > 0.0 { 1.0 } else { -1.0 };
            Ok(out)
        })
        .collect()
}

/// Converts a `[B, C, 7]` tensor to per-step arrays for batch element `b`.
pub fn chunk_rows(actions: &Tensor, b: usize) -> Result<Vec<[f32; ACTION_DIM]>> {
    let rows = actions
        .get(b)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?;
    rows.into_iter()
        .map(|r| {
            r.try_into().map_err(|r: Vec<f32>| {
                candle_core::Error::msg(format!("expected 7 action dims, found {}", r.len()))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypoints_follow_a_bright_spot() {
        // One channel with a peak at (row 1, col 3) of a 4×4 map, one flat channel.
        let mut v = vec![0f32; 2 * 16];
        v[4 + 3] = 50.0;
        let t = Tensor::from_vec(v, (1, 2, 4, 4), &candle_core::Device::Cpu).unwrap();
        let out = pool_features(&t, VisualPool::Keypoints).unwrap();
        assert_eq!(out.dims(), &[1, 6]);
        let o = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // [mean0, mean1, x0, x1, y0, y1]
        assert!((o[0] - 50.0 / 16.0).abs() < 1e-5 && o[1] == 0.0, "{o:?}");
        assert!((o[2] - 1.0).abs() < 1e-4, "peak at the right edge: {o:?}");
        assert!((o[4] + 1.0 / 3.0).abs() < 1e-4, "peak on row 1 of 4: {o:?}");
        assert!(
            o[3].abs() < 1e-6 && o[5].abs() < 1e-6,
            "flat map centred: {o:?}"
        );
        let mean = pool_features(&t, VisualPool::Mean).unwrap();
        assert_eq!(mean.dims(), &[1, 2]);
        assert_eq!(VisualPool::Keypoints.width(16), 48);
    }

    #[test]
    fn calvin_postprocess_clips_and_binarizes() {
        let out = postprocess_calvin(&[
            [2.0, -3.0, 0.5, 0.0, 1.5, -0.2, 0.3],
            [0.0; 7],
            [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -1e-6],
        ])
        .unwrap();
        assert_eq!(out[0], [1.0, -1.0, 0.5, 0.0, 1.0, -0.2, 1.0]);
        assert_eq!(out[1][6], -1.0);
        assert_eq!(out[2][6], -1.0);
        for a in &out {
            assert!(a[6] == 1.0 || a[6] == -1.0);
        }
    }

    #[test]
    fn calvin_postprocess_refuses_nan() {
        let err = postprocess_calvin(&[[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 1.0]]).unwrap_err();
        assert!(err.contains("dim 1"), "{err}");
        assert!(postprocess_calvin(&[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, f32::INFINITY]]).is_err());
    }
}
