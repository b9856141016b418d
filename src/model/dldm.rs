//! The discrete latent dynamics model (dLDM) of VideoWorld 2: Haar patcher →
//! causal 3-D conv encoder → QFormer over adjacent latent-frame pairs → FSQ,
//! and the coarse decoder that renders frames from first-frame features + codes.

use candle_core::{bail, DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::fsq::Fsq;
use super::layers::{
    CausalConv3d, CodeCrossAttention, Downsample, FactorizedConv, FrameNorm, ResBlock,
    SpatialAttention, StreamState, TemporalAttention, Upsample,
};
use super::nn::{attention, LayerNorm, Linear};
use super::patcher::HaarPatcher;

/// Named dLDM sizes (`preset:` in a `dldm` config); every field set beside it overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DldmPreset {
    /// The official VideoWorld 2 sizes (channels 128, mults [2, 4, 4], 2 res blocks,
    /// z 256, resolution 1024, attention resolutions [32], QFormer MLP 512).
    #[default]
    Videoworld2,
    /// A tiny model for tests (see [`DldmConfig::tiny`]).
    Tiny,
}

/// dLDM sizes. Without a preset the official VideoWorld 2 sizes apply; tests use tiny ones.
///
/// In YAML a config is read through [`DldmConfigSpec`]: `preset:` picks the base sizes
/// and every field given beside it overrides one of them. It is always written out in full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DldmConfigSpec")]
pub struct DldmConfig {
    /// Input image channels (RGB: 3).
    pub in_channels: usize,
    /// Haar patch size (spatial and temporal compression of the patcher): 4.
    pub patch_size: usize,
    /// Base width of the conv trunk: 128.
    pub channels: usize,
    /// Width multipliers per level: [2, 4, 4]. Every level but the last halves H and W.
    /// The encoder features are `channels · channels_mult.last()` wide (512).
    pub channels_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more): 2.
    pub num_res_blocks: usize,
    /// Nominal input resolution (px) that places attention, with `attn_resolutions`: 1024.
    pub resolution: usize,
    /// Level resolutions (px at that level, nominal) that get attention: [32].
    pub attn_resolutions: Vec<usize>,
    /// Width between `outproj_ldm` and `quant_conv`: 256.
    pub z_channels: usize,
    /// FSQ levels; their count is the code dimension: [8, 5, 5, 5].
    pub levels: Vec<u32>,
    /// Learned queries per latent step: 4.
    pub num_queries: usize,
    /// QFormer cross-attention layers: 2.
    pub qformer_depth: usize,
    /// QFormer attention heads: 4.
    pub qformer_heads: usize,
    /// QFormer per-head width: 64 (so 256 inside).
    pub qformer_head_dim: usize,
    /// QFormer MLP hidden width: 512.
    pub qformer_mlp_dim: usize,
}

/// The YAML form of a [`DldmConfig`]: a preset plus overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DldmConfigSpec {
    /// Base sizes (default `videoworld2`).
    #[serde(default)]
    pub preset: DldmPreset,
    /// Overrides [`DldmConfig::in_channels`].
    pub in_channels: Option<usize>,
    /// Overrides [`DldmConfig::patch_size`].
    pub patch_size: Option<usize>,
    /// Overrides [`DldmConfig::channels`].
    pub channels: Option<usize>,
    /// Overrides [`DldmConfig::channels_mult`].
    pub channels_mult: Option<Vec<usize>>,
    /// Overrides [`DldmConfig::num_res_blocks`].
    pub num_res_blocks: Option<usize>,
    /// Overrides [`DldmConfig::resolution`].
    pub resolution: Option<usize>,
    /// Overrides [`DldmConfig::attn_resolutions`].
    pub attn_resolutions: Option<Vec<usize>>,
    /// Overrides [`DldmConfig::z_channels`].
    pub z_channels: Option<usize>,
    /// Overrides [`DldmConfig::levels`].
    pub levels: Option<Vec<u32>>,
    /// Overrides [`DldmConfig::num_queries`].
    pub num_queries: Option<usize>,
    /// Overrides [`DldmConfig::qformer_depth`].
    pub qformer_depth: Option<usize>,
    /// Overrides [`DldmConfig::qformer_heads`].
    pub qformer_heads: Option<usize>,
    /// Overrides [`DldmConfig::qformer_head_dim`].
    pub qformer_head_dim: Option<usize>,
    /// Overrides [`DldmConfig::qformer_mlp_dim`].
    pub qformer_mlp_dim: Option<usize>,
}

impl TryFrom<DldmConfigSpec> for DldmConfig {
    type Error = String;

    fn try_from(s: DldmConfigSpec) -> std::result::Result<Self, String> {
        let b = DldmConfig::preset(s.preset);
        let cfg = DldmConfig {
            in_channels: s.in_channels.unwrap_or(b.in_channels),
            patch_size: s.patch_size.unwrap_or(b.patch_size),
            channels: s.channels.unwrap_or(b.channels),
            channels_mult: s.channels_mult.unwrap_or(b.channels_mult),
            num_res_blocks: s.num_res_blocks.unwrap_or(b.num_res_blocks),
            resolution: s.resolution.unwrap_or(b.resolution),
            attn_resolutions: s.attn_resolutions.unwrap_or(b.attn_resolutions),
            z_channels: s.z_channels.unwrap_or(b.z_channels),
            levels: s.levels.unwrap_or(b.levels),
            num_queries: s.num_queries.unwrap_or(b.num_queries),
            qformer_depth: s.qformer_depth.unwrap_or(b.qformer_depth),
            qformer_heads: s.qformer_heads.unwrap_or(b.qformer_heads),
            qformer_head_dim: s.qformer_head_dim.unwrap_or(b.qformer_head_dim),
            qformer_mlp_dim: s.qformer_mlp_dim.unwrap_or(b.qformer_mlp_dim),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Default for DldmConfig {
    fn default() -> Self {
        Self::videoworld2()
    }
}

impl DldmConfig {
    /// The official VideoWorld 2 sizes (see `design/dldm-official-facts.md`).
    pub fn videoworld2() -> Self {
        Self {
            in_channels: 3,
            patch_size: 4,
            channels: 128,
            channels_mult: vec![2, 4, 4],
            num_res_blocks: 2,
            resolution: 1024,
            attn_resolutions: vec![32],
            z_channels: 256,
            levels: vec![8, 5, 5, 5],
            num_queries: 4,
            qformer_depth: 2,
            qformer_heads: 4,
            qformer_head_dim: 64,
            qformer_mlp_dim: 512,
        }
    }

    /// The sizes of a preset.
    pub fn preset(p: DldmPreset) -> Self {
        match p {
            DldmPreset::Videoworld2 => Self::videoworld2(),
            DldmPreset::Tiny => Self::tiny(),
        }
    }

    /// A tiny configuration for tests (32×32 input, 16-wide features on a 4×4 grid).
    pub fn tiny() -> Self {
        Self {
            in_channels: 3,
            patch_size: 4,
            channels: 8,
            channels_mult: vec![1, 2],
            num_res_blocks: 1,
            resolution: 32,
            attn_resolutions: vec![],
            z_channels: 8,
            levels: vec![8, 5, 5, 5],
            num_queries: 4,
            qformer_depth: 2,
            qformer_heads: 2,
            qformer_head_dim: 4,
            qformer_mlp_dim: 32,
        }
    }

    /// Checks that the sizes fit together; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.channels_mult.is_empty() {
            return Err("channels_mult: expected at least one level, found none".into());
        }
        if self.channels == 0 || self.channels_mult.contains(&0) {
            return Err(format!(
                "channels, channels_mult: expected widths ≥ 1, found {} and {:?}",
                self.channels, self.channels_mult
            ));
        }
        if !self.feature_channels().is_multiple_of(2) {
            return Err(format!(
                "channels·channels_mult.last(): expected an even feature width (sin/cos positional encoding), found {}",
                self.feature_channels()
            ));
        }
        if !self.patch_size.is_power_of_two() {
            return Err(format!(
                "patch_size: expected a power of two, found {}",
                self.patch_size
            ));
        }
        if self.levels.is_empty() || self.levels.iter().any(|&l| l < 2) {
            return Err(format!(
                "levels: expected FSQ levels ≥ 2, found {:?}",
                self.levels
            ));
        }
        if self.num_queries == 0 {
            return Err("num_queries: expected ≥ 1, found 0".into());
        }
        Ok(())
    }

    /// Width of the encoder features read by the QFormer and the decoder:
    /// `channels · channels_mult.last()` (512 at the official size).
    pub fn feature_channels(&self) -> usize {
        self.channels * self.channels_mult.last().copied().unwrap_or(0)
    }

    /// Code dimension (number of FSQ channels, 4).
    pub fn code_dim(&self) -> usize {
        self.levels.len()
    }

    /// Total spatial compression from pixels to feature grid.
    pub fn spatial_compression(&self) -> usize {
        self.patch_size * (1 << (self.channels_mult.len() - 1))
    }

    /// Number of codes in the vocabulary (product of the levels, 1000).
    pub fn codebook_size(&self) -> usize {
        self.levels.iter().map(|&l| l as usize).product()
    }
}

/// Encoder attention pair: spatial then causal temporal (keys `0.*`, `1.*`).
#[derive(Debug, Clone)]
struct SpaceTimeAttention {
    spatial: SpatialAttention,
    temporal: TemporalAttention,
}

impl SpaceTimeAttention {
    fn new(ch: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            spatial: SpatialAttention::new(ch, vb.pp("0"))?,
            temporal: TemporalAttention::new(ch, vb.pp("1"))?,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.temporal.forward(&self.spatial.forward(x)?)
    }
    fn forward_stream(&self, x: &Tensor, state: &mut StreamState) -> Result<Tensor> {
        self.temporal
            .forward_stream(&self.spatial.forward(x)?, state)
    }
}

#[derive(Debug, Clone)]
struct EncoderLevel {
    blocks: Vec<ResBlock>,
    attns: Vec<Option<SpaceTimeAttention>>,
    downsample: Option<Downsample>,
}

/// The factorized causal 3-D conv encoder (keys under `encoder.`). It has no output
/// conv: its features are SiLU(norm_out(h)) from the mid block.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: FactorizedConv,
    levels: Vec<EncoderLevel>,
    mid_block_1: ResBlock,
    mid_attn_1: SpaceTimeAttention,
    mid_block_2: ResBlock,
    norm_out: FrameNorm,
}

impl Encoder {
    /// Loads `conv_in`, `down.{i}.{block,attn,downsample}`, `mid.*` and `norm_out`.
    pub fn new(cfg: &DldmConfig, vb: VarBuilder) -> Result<Self> {
        let patched = cfg.in_channels * 8usize.pow(cfg.patch_size.trailing_zeros());
        let ch = cfg.channels;
        let conv_in = FactorizedConv::new(patched, ch, vb.pp("conv_in"))?;
        let mut levels = Vec::new();
        let mut curr_res = cfg.resolution / cfg.patch_size;
        let mut block_in = ch;
        let n = cfg.channels_mult.len();
        for (i, mult) in cfg.channels_mult.iter().enumerate() {
            let vbl = vb.pp("down").pp(i);
            let block_out = ch * mult;
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResBlock::new(block_in, block_out, vbl.pp("block").pp(j))?);
                block_in = block_out;
                attns.push(if cfg.attn_resolutions.contains(&curr_res) {
                    Some(SpaceTimeAttention::new(block_in, vbl.pp("attn").pp(j))?)
                } else {
                    None
                });
            }
            let downsample = if i + 1 != n {
                curr_res /= 2;
                Some(Downsample::new(block_in, vbl.pp("downsample"))?)
            } else {
                None
            };
            levels.push(EncoderLevel {
                blocks,
                attns,
                downsample,
            });
        }
        let mid = vb.pp("mid");
        Ok(Self {
            conv_in,
            levels,
            mid_block_1: ResBlock::new(block_in, block_in, mid.pp("block_1"))?,
            mid_attn_1: SpaceTimeAttention::new(block_in, mid.pp("attn_1"))?,
            mid_block_2: ResBlock::new(block_in, block_in, mid.pp("block_2"))?,
            norm_out: FrameNorm::new(block_in, vb.pp("norm_out"))?,
        })
    }

    /// Patched frames `[B, T, 192, H/4, W/4]` → features `[B, T, F, h, w]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, None)
    }

    /// [`Self::forward`] on the next latent frames of a stream: every temporal
    /// layer continues from `state`, so the features equal those of one forward
    /// over the whole stream, at the cost of the new frames only.
    pub fn forward_stream(&self, x: &Tensor, state: &mut StreamState) -> Result<Tensor> {
        state.begin();
        self.run(x, Some(state))
    }

    fn run(&self, x: &Tensor, mut state: Option<&mut StreamState>) -> Result<Tensor> {
        let conv = |c: &FactorizedConv, h: &Tensor, st: &mut Option<&mut StreamState>| match st {
            Some(st) => c.forward_stream(h, st),
            None => c.forward(h),
        };
        let block = |b: &ResBlock, h: &Tensor, st: &mut Option<&mut StreamState>| match st {
            Some(st) => b.forward_stream(h, st),
            None => b.forward(h),
        };
        let attn = |a: &SpaceTimeAttention, h: &Tensor, st: &mut Option<&mut StreamState>| match st
        {
            Some(st) => a.forward_stream(h, st),
            None => a.forward(h),
        };
        let mut h = conv(&self.conv_in, x, &mut state)?;
        for level in &self.levels {
            for (b, a) in level.blocks.iter().zip(&level.attns) {
                h = block(b, &h, &mut state)?;
                if let Some(a) = a {
                    h = attn(a, &h, &mut state)?;
                }
            }
            if let Some(d) = &level.downsample {
                h = d.forward(&h)?;
            }
        }
        h = block(&self.mid_block_1, &h, &mut state)?;
        h = attn(&self.mid_attn_1, &h, &mut state)?;
        h = block(&self.mid_block_2, &h, &mut state)?;
        self.norm_out.forward(&h)?.silu()
    }
}

/// Multi-head cross-attention with an inner width (`q_proj`, `k_proj`, `v_proj`, `out_proj`).
#[derive(Debug, Clone)]
struct CrossAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl CrossAttention {
    fn new(dim: usize, heads: usize, head_dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            q_proj: Linear::new(dim, inner, vb.pp("q_proj"))?,
            k_proj: Linear::new(dim, inner, vb.pp("k_proj"))?,
            v_proj: Linear::new(dim, inner, vb.pp("v_proj"))?,
            out_proj: Linear::new(inner, dim, vb.pp("out_proj"))?,
            heads,
            head_dim,
        })
    }

    /// `q` [N, Lq, D], `k`/`v` [N, Lk, D] → [N, Lq, D].
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let split = |x: Tensor| -> Result<Tensor> {
            let (n, l, _) = x.dims3()?;
            x.reshape((n, l, self.heads, self.head_dim))?
                .transpose(1, 2)
        };
        let qh = split(self.q_proj.forward(q)?)?;
        let kh = split(self.k_proj.forward(k)?)?;
        let vh = split(self.v_proj.forward(v)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let o = attention(&qh, &kh, &vh, scale, None)?;
        let (n, _, lq, _) = o.dims4()?;
        let o = o
            .transpose(1, 2)?
            .reshape((n, lq, self.heads * self.head_dim))?;
        self.out_proj.forward(&o)
    }
}

#[derive(Debug, Clone)]
struct QFormerLayer {
    cross_attn_token_to_image: CrossAttention,
    norm2: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    norm3: LayerNorm,
}

/// The QFormer: `num_queries` learned queries read each adjacent latent-frame
/// pair (t−1, t) by cross-attention. It lives inside the encoder (keys under
/// `encoder.`), as in the official checkpoints.
#[derive(Debug, Clone)]
pub struct QFormer {
    act: Tensor,
    gaussian: Tensor,
    layers: Vec<QFormerLayer>,
    final_attn_token_to_image: CrossAttention,
    norm_final_attn: LayerNorm,
    num_queries: usize,
}

impl QFormer {
    /// Loads, below the encoder's prefix, `act.weight` [N, F] (the queries),
    /// `pos_embedding.positional_encoding_gaussian_matrix` [2, F/2] and, under
    /// `qformer_ldm.qformer.`, `layers.{i}.{cross_attn_token_to_image,norm2,mlp.lin1,
    /// mlp.lin2,norm3}`, `final_attn_token_to_image` and `norm_final_attn`.
    pub fn new(cfg: &DldmConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.feature_channels();
        let act = vb.pp("act").get_with_hints(
            (cfg.num_queries, d),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let gaussian = vb.pp("pos_embedding").get_with_hints(
            (2, d / 2),
            "positional_encoding_gaussian_matrix",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let qf = vb.pp("qformer_ldm").pp("qformer");
        let attn =
            |vb: VarBuilder| CrossAttention::new(d, cfg.qformer_heads, cfg.qformer_head_dim, vb);
        let mut layers = Vec::new();
        for i in 0..cfg.qformer_depth {
            let vbl = qf.pp("layers").pp(i);
            layers.push(QFormerLayer {
                cross_attn_token_to_image: attn(vbl.pp("cross_attn_token_to_image"))?,
                norm2: LayerNorm::new(d, 1e-5, vbl.pp("norm2"))?,
                lin1: Linear::new(d, cfg.qformer_mlp_dim, vbl.pp("mlp").pp("lin1"))?,
                lin2: Linear::new(cfg.qformer_mlp_dim, d, vbl.pp("mlp").pp("lin2"))?,
                norm3: LayerNorm::new(d, 1e-5, vbl.pp("norm3"))?,
            });
        }
        Ok(Self {
            act,
            gaussian,
            layers,
            final_attn_token_to_image: attn(qf.pp("final_attn_token_to_image"))?,
            norm_final_attn: LayerNorm::new(d, 1e-5, qf.pp("norm_final_attn"))?,
            num_queries: cfg.num_queries,
        })
    }

    /// SAM-style random Fourier encoding of an h×w grid: `[h·w, F]`, (sin, cos).
    pub fn positional_encoding(&self, h: usize, w: usize) -> Result<Tensor> {
        let mut coords = Vec::with_capacity(h * w * 2);
        for i in 0..h {
            for j in 0..w {
                coords.push(2.0 * (j as f32 + 0.5) / w as f32 - 1.0);
                coords.push(2.0 * (i as f32 + 0.5) / h as f32 - 1.0);
            }
        }
        let c = Tensor::from_vec(coords, (h * w, 2), self.act.device())?
            .to_dtype(self.gaussian.dtype())?;
        let proj = (c.matmul(&self.gaussian)? * (2.0 * std::f64::consts::PI))?;
        Tensor::cat(&[proj.sin()?, proj.cos()?], 1)
    }

    /// Features `[B, T, F, h, w]` → query outputs `[B, (T−1)·N, F]`, pair-major.
    pub fn forward(&self, feats: &Tensor) -> Result<Tensor> {
        let (b, t, f, h, w) = feats.dims5()?;
        if t < 2 {
            bail!("the QFormer needs at least 2 latent frames, found {t}");
        }
        let pairs = t - 1;
        // Tokens per frame in (h, w) order: [B, T, hw, F].
        let tokens = feats.reshape((b, t, f, h * w))?.transpose(2, 3)?;
        let prev = tokens.narrow(1, 0, pairs)?;
        let next = tokens.narrow(1, 1, pairs)?;
        let keys = Tensor::cat(&[prev, next], 2)?.reshape((b * pairs, 2 * h * w, f))?;
        let pe = self.positional_encoding(h, w)?;
        let pe = Tensor::cat(&[&pe, &pe], 0)?.unsqueeze(0)?;
        let k = keys.broadcast_add(&pe)?;
        let mut q = self
            .act
            .unsqueeze(0)?
            .broadcast_as((b * pairs, self.num_queries, f))?
            .contiguous()?;
        for layer in &self.layers {
            let a = layer.cross_attn_token_to_image.forward(&q, &k, &keys)?;
            q = layer.norm2.forward(&(q + a)?)?;
            let m = layer.lin2.forward(&layer.lin1.forward(&q)?.relu()?)?;
            q = layer.norm3.forward(&(q + m)?)?;
        }
        let a = self
            .final_attn_token_to_image
            .forward(&(&q + &q)?, &k, &keys)?;
        let q = self.norm_final_attn.forward(&(q + a)?)?;
        q.reshape((b, pairs * self.num_queries, f))
    }
}

#[derive(Debug, Clone)]
struct DecoderAttention {
    cross: CodeCrossAttention,
    spatial: SpatialAttention,
    temporal: TemporalAttention,
}

impl DecoderAttention {
    /// `ch`: the level's width; `code_width`: the code embeddings' width (the features').
    fn new(ch: usize, code_width: usize, n: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            cross: CodeCrossAttention::new(ch, code_width, n, vb.pp("0"))?,
            spatial: SpatialAttention::new(ch, vb.pp("1"))?,
            temporal: TemporalAttention::new(ch, vb.pp("2"))?,
        })
    }
    fn forward(&self, x: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let x = self.cross.forward(x, codes)?;
        self.temporal.forward(&self.spatial.forward(&x)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLevel {
    blocks: Vec<ResBlock>,
    attns: Vec<Option<DecoderAttention>>,
    upsample: Option<Upsample>,
}

/// The coarse decoder (LDM_V2): renders latent frames from the first frame's
/// features and the codes. Keys under `decoder.` (and `post_quant_conv.` outside).
#[derive(Debug, Clone)]
pub struct CoarseDecoder {
    conv_in: FactorizedConv,
    mid_block_1: ResBlock,
    mid_attn_1: DecoderAttention,
    mid_block_2: ResBlock,
    levels: Vec<DecoderLevel>,
    norm_out: FrameNorm,
    conv_out: FactorizedConv,
    num_queries: usize,
}

impl CoarseDecoder {
    /// Loads `conv_in`, `mid.*`, `up.{i}.{block,attn,upsample}`, `norm_out`, `conv_out`.
    pub fn new(cfg: &DldmConfig, vb: VarBuilder) -> Result<Self> {
        let patched = cfg.in_channels * 8usize.pow(cfg.patch_size.trailing_zeros());
        let n = cfg.channels_mult.len();
        let code_width = cfg.feature_channels();
        let mut block_in = code_width;
        let conv_in = FactorizedConv::new(cfg.z_channels, block_in, vb.pp("conv_in"))?;
        let q = cfg.num_queries;
        let mid = vb.pp("mid");
        let mid_block_1 = ResBlock::new(block_in, block_in, mid.pp("block_1"))?;
        let mid_attn_1 = DecoderAttention::new(block_in, code_width, q, mid.pp("attn_1"))?;
        let mid_block_2 = ResBlock::new(block_in, block_in, mid.pp("block_2"))?;
        let mut curr_res = cfg.resolution / cfg.spatial_compression();
        let mut levels: Vec<(usize, DecoderLevel)> = Vec::new();
        for i in (0..n).rev() {
            let vbl = vb.pp("up").pp(i);
            let block_out = cfg.channels * cfg.channels_mult[i];
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for j in 0..=cfg.num_res_blocks {
                blocks.push(ResBlock::new(block_in, block_out, vbl.pp("block").pp(j))?);
                block_in = block_out;
                let with_attn = i == n - 1 || cfg.attn_resolutions.contains(&curr_res);
                attns.push(if with_attn {
                    Some(DecoderAttention::new(
                        block_in,
                        code_width,
                        q,
                        vbl.pp("attn").pp(j),
                    )?)
                } else {
                    None
                });
            }
            let upsample = if i != 0 {
                curr_res *= 2;
                Some(Upsample::new(block_in, vbl.pp("upsample"))?)
            } else {
                None
            };
            levels.push((
                i,
                DecoderLevel {
                    blocks,
                    attns,
                    upsample,
                },
            ));
        }
        Ok(Self {
            conv_in,
            mid_block_1,
            mid_attn_1,
            mid_block_2,
            levels: levels.into_iter().map(|(_, l)| l).collect(),
            norm_out: FrameNorm::new(block_in, vb.pp("norm_out"))?,
            conv_out: FactorizedConv::new(block_in, patched, vb.pp("conv_out"))?,
            num_queries: q,
        })
    }

    /// Code tokens `[B, L, z]` → code embeddings `[B, L, F]`; `conv_in` treats
    /// the code index as time, so embedding `j` sees codes `≤ j` only.
    pub fn embed_codes(&self, z: &Tensor) -> Result<Tensor> {
        let (b, l, c) = z.dims3()?;
        let e = self.conv_in.forward(&z.reshape((b, l, c, 1, 1))?)?;
        let f = e.dim(2)?;
        e.reshape((b, l, f))
    }

    /// First-frame features `[B, 1, F, h, w]` + code tokens `[B, L, z]`
    /// (L = N·S) → patched latent frames `[B, S + 1, 192, h·s, w·s]`.
    pub fn forward(&self, first: &Tensor, z: &Tensor) -> Result<Tensor> {
        let (b, one, f, h, w) = first.dims5()?;
        if one != 1 {
            bail!("decoder expects the features of one frame, found {one} frames");
        }
        let l = z.dim(1)?;
        if l % self.num_queries != 0 {
            bail!(
                "decoder expects a multiple of {} codes, found {l}",
                self.num_queries
            );
        }
        let t = l / self.num_queries + 1;
        let codes = self.embed_codes(z)?;
        let mut x = first.broadcast_as((b, t, f, h, w))?.contiguous()?;
        x = self.mid_block_1.forward(&x)?;
        x = self.mid_attn_1.forward(&x, &codes)?;
        x = self.mid_block_2.forward(&x)?;
        for level in &self.levels {
            for (block, attn) in level.blocks.iter().zip(&level.attns) {
                x = block.forward(&x)?;
                if let Some(a) = attn {
                    x = a.forward(&x, &codes)?;
                }
            }
            if let Some(u) = &level.upsample {
                x = u.forward(&x)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&x)?.silu()?)
    }
}

/// The encoder run as a stream over a clip that grows by one latent step (4
/// frames) at a time: the temporal state of every causal layer and the newest
/// latent frame's features. See [`Dldm::stream_first`] and [`Dldm::stream_step`].
#[derive(Debug, Clone, Default)]
pub struct EncoderStream {
    state: StreamState,
    newest: Option<Tensor>,
    latent_frames: usize,
}

impl EncoderStream {
    /// Latent frames encoded so far (frame 0 counts as one).
    pub fn latent_frames(&self) -> usize {
        self.latent_frames
    }

    /// Scalar elements of temporal state held (grows with the attention history).
    pub fn state_elements(&self) -> usize {
        self.state.elements() + self.newest.as_ref().map_or(0, |t| t.elem_count())
    }
}

/// What the encoder side produces for a clip.
#[derive(Debug, Clone)]
pub struct EncodeOutput {
    /// Encoder features `[B, T_lat, F, h, w]`.
    pub features: Tensor,
    /// Normalized FSQ codes `[B, (T_lat − 1)·N, code_dim]`, pair-major.
    pub codes: Tensor,
    /// Code indices `[B, T_lat − 1, N]` (u32, < 1000).
    pub indices: Tensor,
}

/// The whole dLDM. Its keys are the official ones below `network.`: `encoder.*`
/// (with the QFormer and `encoder.outproj_ldm`), `quant_conv.*`, `post_quant_conv.*`
/// and `decoder.*`, so a bundle we train loads into the official module too.
#[derive(Debug, Clone)]
pub struct Dldm {
    cfg: DldmConfig,
    patcher: HaarPatcher,
    encoder: Encoder,
    qformer: QFormer,
    outproj_ldm: CausalConv3d,
    quant_conv: CausalConv3d,
    fsq: Fsq,
    post_quant_conv: CausalConv3d,
    decoder: CoarseDecoder,
}

impl Dldm {
    /// Loads the whole dLDM from `vb`.
    pub fn new(cfg: &DldmConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let f = cfg.feature_channels();
        let z = cfg.z_channels;
        let e = cfg.code_dim();
        let enc = vb.pp("encoder");
        Ok(Self {
            cfg: cfg.clone(),
            patcher: HaarPatcher::new(cfg.patch_size)?,
            encoder: Encoder::new(cfg, enc.clone())?,
            qformer: QFormer::new(cfg, enc.clone())?,
            outproj_ldm: CausalConv3d::same(f, z, (1, 1, 1), enc.pp("outproj_ldm"))?,
            quant_conv: CausalConv3d::same(z, e, (1, 1, 1), vb.pp("quant_conv"))?,
            fsq: Fsq::new(&cfg.levels),
            post_quant_conv: CausalConv3d::same(e, z, (1, 1, 1), vb.pp("post_quant_conv"))?,
            decoder: CoarseDecoder::new(cfg, vb.pp("decoder"))?,
        })
    }

    /// The configuration this model was built with.
    pub fn config(&self) -> &DldmConfig {
        &self.cfg
    }

    /// The quantizer.
    pub fn fsq(&self) -> &Fsq {
        &self.fsq
    }

    /// The Haar patcher.
    pub fn patcher(&self) -> &HaarPatcher {
        &self.patcher
    }

    /// Frames `[B, T, 3, H, W]` in [−1, 1] (T = 1 + 4k) → features `[B, 1 + k, F, h, w]`.
    pub fn encode_features(&self, frames: &Tensor) -> Result<Tensor> {
        self.encoder.forward(&self.patcher.patch_frames(frames)?)
    }

    /// Features → pre-quantization latents `[B, (T−1)·N, code_dim]`.
    pub fn latents(&self, features: &Tensor) -> Result<Tensor> {
        let q = self.qformer.forward(features)?;
        let (b, l, f) = q.dims3()?;
        let tok = q.reshape((b, l, f, 1, 1))?;
        let z = self.quant_conv.forward(&self.outproj_ldm.forward(&tok)?)?;
        z.reshape((b, l, self.cfg.code_dim()))
    }

    /// Frames → features, normalized codes and indices.
    pub fn encode(&self, frames: &Tensor) -> Result<EncodeOutput> {
        let features = self.encode_features(frames)?;
        let codes = self.fsq.quantize(&self.latents(&features)?)?;
        let (b, l, _) = codes.dims3()?;
        let indices = self.fsq.codes_to_indices(&codes)?.reshape((
            b,
            l / self.cfg.num_queries,
            self.cfg.num_queries,
        ))?;
        Ok(EncodeOutput {
            features,
            codes,
            indices,
        })
    }

    /// Starts a stream at frame 0 `[B, 1, 3, H, W]` (in [−1, 1]): its features
    /// `[B, 1, F, h, w]`, equal to latent frame 0 of [`Self::encode_features`].
    pub fn stream_first(&self, stream: &mut EncoderStream, frame0: &Tensor) -> Result<Tensor> {
        *stream = EncoderStream::default();
        let patched = self.patcher.patch_frames(frame0)?;
        let features = self.encoder.forward_stream(&patched, &mut stream.state)?;
        stream.newest = Some(features.clone());
        stream.latent_frames = 1;
        Ok(features)
    }

    /// The next latent step of a stream from its `patch` (4) new frames
    /// `[B, 4, 3, H, W]`: the new latent frame's features `[B, 1, F, h, w]`, its codes
    /// `[B, N, code_dim]` and indices `[B, 1, N]`, equal to the last step of
    /// [`Self::encode`] over the whole clip so far, at the cost of the new frames only.
    pub fn stream_step(&self, stream: &mut EncoderStream, frames: &Tensor) -> Result<EncodeOutput> {
        let p = self.patcher.patch();
        let (_, t, _, _, _) = frames.dims5()?;
        if t != p {
            bail!("a latent step takes {p} new frames, found {t}");
        }
        let prev = stream
            .newest
            .clone()
            .ok_or_else(|| candle_core::Error::msg("stream_step before stream_first"))?;
        let patched = self.patcher.patch_groups(frames)?;
        let features = self.encoder.forward_stream(&patched, &mut stream.state)?;
        let pair = Tensor::cat(&[&prev, &features], 1)?;
        let codes = self.fsq.quantize(&self.latents(&pair)?)?;
        let (b, n, _) = codes.dims3()?;
        let indices = self.fsq.codes_to_indices(&codes)?.reshape((b, 1, n))?;
        stream.newest = Some(features.clone());
        stream.latent_frames += 1;
        Ok(EncodeOutput {
            features,
            codes,
            indices,
        })
    }

    /// First-frame features `[B, 1, F, h, w]` + normalized codes `[B, N·S, code_dim]`
    /// → frames `[B, 4·S + 1, 3, H, W]` (frame 0 is the reconstruction of the first frame).
    pub fn decode(&self, first: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let (b, l, e) = codes.dims3()?;
        let z = self
            .post_quant_conv
            .forward(&codes.to_dtype(first.dtype())?.reshape((b, l, e, 1, 1))?)?;
        let z = z.reshape((b, l, self.cfg.z_channels))?;
        let latent = self.decoder.forward(first, &z)?;
        self.patcher.unpatch_frames(&latent)
    }

    /// Like [`Self::decode`], from indices `[B, S, N]`.
    pub fn decode_indices(&self, first: &Tensor, indices: &Tensor) -> Result<Tensor> {
        let (b, s, n) = indices.dims3()?;
        let codes = self
            .fsq
            .indices_to_codes(indices)?
            .reshape((b, s * n, self.cfg.code_dim()))?;
        self.decode(first, &codes.to_dtype(first.dtype())?)
    }

    /// Converts uint8 frames `[B, T, H, W, 3]` (HWC) to model input `[B, T, 3, H, W]` in [−1, 1].
    pub fn frames_from_u8(frames: &Tensor, dtype: DType) -> Result<Tensor> {
        (frames.permute((0, 1, 4, 2, 3))?.to_dtype(dtype)? / 127.5)? - 1.0
    }
}
