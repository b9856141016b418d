//! The action head: maps the codes of one latent step, the current visual
//! features and (optionally) proprioception to an action chunk of `C × 7`
//! (xyz, euler, gripper).

use candle_core::{bail, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::nn::Linear;

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
    /// Width of the pooled visual feature vector (the dLDM `feature_channels`).
    pub visual_dim: usize,
    /// Width of the proprioception vector; 0 disables it (CALVIN robot_obs: 15).
    #[serde(default)]
    pub proprio_dim: usize,
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
        self.codes_per_step * self.code_embed_dim + self.visual_dim + self.proprio_dim
    }
}

/// MLP action head (keys `code_embed.weight`, `mlp.{i}.{weight,bias}`).
#[derive(Debug, Clone)]
pub struct ActionHead {
    cfg: HeadConfig,
    code_embed: candle_nn::Embedding,
    layers: Vec<Linear>,
}

impl ActionHead {
    /// Loads the head.
    pub fn new(cfg: &HeadConfig, vb: VarBuilder) -> Result<Self> {
        let code_embed =
            candle_nn::embedding(cfg.vocab_size, cfg.code_embed_dim, vb.pp("code_embed"))?;
        let mut dims = vec![cfg.input_dim()];
        dims.extend(&cfg.hidden);
        dims.push(cfg.chunk * ACTION_DIM);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(w[0], w[1], vb.pp("mlp").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            code_embed,
            layers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// `indices` `[B, N]` (u32), `visual` `[B, visual_dim]`, `proprio` `[B, P]`
    /// → normalized actions `[B, C, 7]`.
    pub fn forward(
        &self,
        indices: &Tensor,
        visual: &Tensor,
        proprio: Option<&Tensor>,
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
        let mut x = Tensor::cat(&parts, D::Minus1)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.gelu()?;
            }
        }
        x.reshape((b, self.cfg.chunk, ACTION_DIM))
    }
}

/// Pools dLDM features `[B, 1, F, h, w]` (or `[B, F, h, w]`) to a visual vector `[B, F]`.
pub fn pool_visual(features: &Tensor) -> Result<Tensor> {
    match features.rank() {
        5 => features.squeeze(1)?.mean(D::Minus1)?.mean(D::Minus1),
        4 => features.mean(D::Minus1)?.mean(D::Minus1),
        r => bail!("visual features must be [B,1,F,h,w] or [B,F,h,w], found rank {r}"),
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
