//! The end-to-end baseline (the paper's "Transformer (Oracle)" row, in our
//! sizes): the dLDM's encoder architecture, trained from scratch on labelled
//! episodes only, reads the current frame; spatial-softmax keypoints of its
//! features, proprioception and the instruction embedding go through an MLP to
//! an action chunk. No latent codes, no AR, no unlabelled video.
//!
//! Keys: `encoder.*` (as the dLDM's encoder) and `mlp.{i}.{weight,bias}`.

use candle_core::{bail, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::dldm::{DldmConfig, Encoder};
use super::head::{pool_features, VisualPool, ACTION_DIM};
use super::nn::Mlp;
use super::patcher::HaarPatcher;

/// Sizes of the end-to-end baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndToEndConfig {
    /// The visual encoder's sizes (only the dLDM's encoder part is built).
    pub encoder: DldmConfig,
    /// Width of the proprioception vector (robot_obs with the tcp angles as sin/cos: 18).
    pub proprio_dim: usize,
    /// Width of the hashed instruction embedding (`policy::instruction`).
    pub instruction_dim: usize,
    /// Hidden layer widths of the MLP.
    pub hidden: Vec<usize>,
    /// Action chunk length, in control steps.
    pub chunk: usize,
}

impl EndToEndConfig {
    /// Width of the MLP input: keypoints (3F) + proprio + instruction.
    pub fn input_dim(&self) -> usize {
        VisualPool::Keypoints.width(self.encoder.feature_channels())
            + self.proprio_dim
            + self.instruction_dim
    }
}

/// Image + proprio + instruction → action chunk.
#[derive(Debug, Clone)]
pub struct EndToEndPolicyNet {
    cfg: EndToEndConfig,
    patcher: HaarPatcher,
    encoder: Encoder,
    mlp: Mlp,
}

impl EndToEndPolicyNet {
    /// Builds (or loads) the network from `vb`.
    pub fn new(cfg: &EndToEndConfig, vb: VarBuilder) -> Result<Self> {
        cfg.encoder.validate().map_err(candle_core::Error::msg)?;
        if cfg.chunk == 0 {
            bail!("end-to-end config: chunk: expected ≥ 1, found 0");
        }
        let mut dims = vec![cfg.input_dim()];
        dims.extend(&cfg.hidden);
        dims.push(cfg.chunk * ACTION_DIM);
        Ok(Self {
            cfg: cfg.clone(),
            patcher: HaarPatcher::new(cfg.encoder.patch_size)?,
            encoder: Encoder::new(&cfg.encoder, vb.pp("encoder"))?,
            mlp: Mlp::new(&dims, vb.pp("mlp"))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EndToEndConfig {
        &self.cfg
    }

    /// The visual vector `[B, 3F]` of frames `[B, 1, 3, H, W]` in [−1, 1].
    pub fn visual(&self, frames: &Tensor) -> Result<Tensor> {
        let (_, t, _, _, _) = frames.dims5()?;
        if t != 1 {
            bail!("end-to-end baseline: expected one frame per sample, found {t}");
        }
        let features = self.encoder.forward(&self.patcher.patch_frames(frames)?)?;
        pool_features(&features, VisualPool::Keypoints)
    }

    /// Frames `[B, 1, 3, H, W]` in [−1, 1], normalized proprio `[B, P]` and
    /// instruction embeddings `[B, I]` → normalized actions `[B, C, 7]`.
    pub fn forward(
        &self,
        frames: &Tensor,
        proprio: &Tensor,
        instruction: &Tensor,
    ) -> Result<Tensor> {
        let b = frames.dim(0)?;
        let mut parts = vec![self.visual(frames)?];
        if self.cfg.proprio_dim > 0 {
            parts.push(proprio.clone());
        }
        if self.cfg.instruction_dim > 0 {
            parts.push(instruction.clone());
        }
        let x = Tensor::cat(&parts, D::Minus1)?;
        self.mlp
            .forward(&x)?
            .reshape((b, self.cfg.chunk, ACTION_DIM))
    }
}
