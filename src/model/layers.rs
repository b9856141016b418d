//! Causal 3-D building blocks of the dLDM, on frames-major tensors `[B, T, C, H, W]`.
//!
//! candle has no conv3d, so a causal conv3d is a sum of conv2d over its temporal
//! taps, with time padded on the left by replicating frame 0 (`k_t − 1` copies).
//! Output frame `t` therefore only sees input frames `≤ t`.
//! Key names follow the official checkpoints: convs hold `conv3d.{weight,bias}`
//! with weight `[out, in, kt, kh, kw]`; norms hold `norm.{weight,bias}`.

use candle_core::{Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::nn::{attention, causal_mask_with_offset, Linear};

/// A causal 3-D convolution with kernel `(kt, kh, kw)` and spatial stride.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// `[out, in, kt, kh, kw]`. Taps are sliced from it in every forward:
    /// copies made once at construction would detach training updates.
    weight: Tensor,
    bias: Tensor,
    out_channels: usize,
    stride: usize,
    padding: usize,
}

impl CausalConv3d {
    /// Loads `conv3d.weight` `[out, in, kt, kh, kw]` and `conv3d.bias` `[out]`.
    /// `padding` is the zero padding applied on each spatial side.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize, usize),
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv3d");
        let (kt, kh, kw) = kernel;
        let fan_in = (in_channels * kt * kh * kw) as f64;
        let bound = 1.0 / fan_in.sqrt();
        let weight = vb.get_with_hints(
            (out_channels, in_channels, kt, kh, kw),
            "weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = vb.get_with_hints(
            out_channels,
            "bias",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight,
            bias,
            out_channels,
            stride,
            padding,
        })
    }

    /// A "same" conv: kernel `(kt, k, k)`, stride 1, padding `k/2`.
    pub fn same(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize, usize),
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::new(in_channels, out_channels, kernel, 1, kernel.1 / 2, vb)
    }

    /// `[B, T, C, H, W]` → `[B, T, out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kt = self.weight.dim(2)?;
        let padded = if kt > 1 {
            Tensor::cat(&[&Self::replicate_first(x, kt - 1)?, x], 1)?
        } else {
            x.clone()
        };
        self.forward_padded(&padded, x.dim(1)?)
    }

    /// Like [`Self::forward`] on frames that continue a stream: the last `kt − 1`
    /// input frames of the previous call (kept in `state`'s next slot) stand in for
    /// the left padding, which is frame 0 replicated on the stream's first call. The
    /// outputs equal those of one [`Self::forward`] over the whole stream.
    pub fn forward_stream(&self, x: &Tensor, state: &mut StreamState) -> Result<Tensor> {
        let kt = self.weight.dim(2)?;
        if kt == 1 {
            return self.forward(x);
        }
        let slot = state.slot();
        let history = match slot.take() {
            Some(h) => h,
            None => Self::replicate_first(x, kt - 1)?,
        };
        let padded = Tensor::cat(&[&history, x], 1)?;
        let len = padded.dim(1)?;
        *slot = Some(padded.narrow(1, len - (kt - 1), kt - 1)?.contiguous()?);
        self.forward_padded(&padded, x.dim(1)?)
    }

    /// Frame 0 of `x` repeated `n` times, `[B, n, C, H, W]`.
    fn replicate_first(x: &Tensor, n: usize) -> Result<Tensor> {
        let (b, _, c, h, w) = x.dims5()?;
        x.narrow(1, 0, 1)?
            .broadcast_as((b, n, c, h, w))?
            .contiguous()
    }

    /// The taps over `padded` (`t + kt − 1` frames) → `t` output frames.
    fn forward_padded(&self, padded: &Tensor, t: usize) -> Result<Tensor> {
        let (b, _, c, h, w) = padded.dims5()?;
        let kt = self.weight.dim(2)?;
        let cfg = Conv2dConfig {
            padding: self.padding,
            stride: self.stride,
            ..Default::default()
        };
        let mut acc: Option<Tensor> = None;
        for k in 0..kt {
            let tap = self.weight.narrow(2, k, 1)?.squeeze(2)?.contiguous()?;
            let frames = padded
                .narrow(1, k, t)?
                .contiguous()?
                .reshape((b * t, c, h, w))?;
            let y = frames.conv2d(&tap, cfg.padding, cfg.stride, 1, 1)?;
            acc = Some(match acc {
                None => y,
                Some(a) => (a + y)?,
            });
        }
        let y = acc.expect("a conv has at least one temporal tap");
        let y = y.broadcast_add(&self.bias.reshape((1, self.out_channels, 1, 1))?)?;
        let (_, o, ho, wo) = y.dims4()?;
        y.reshape((b, t, o, ho, wo))
    }
}

/// The factorized block conv: a `(1,3,3)` conv then a `(3,1,1)` conv
/// (keys `0.*` and `1.*`, as an `nn.Sequential`).
#[derive(Debug, Clone)]
pub struct FactorizedConv {
    spatial: CausalConv3d,
    temporal: CausalConv3d,
}

impl FactorizedConv {
    /// Loads `0.conv3d.*` (in → out, 1×3×3) and `1.conv3d.*` (out → out, 3×1×1).
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            spatial: CausalConv3d::same(in_channels, out_channels, (1, 3, 3), vb.pp("0"))?,
            temporal: CausalConv3d::same(out_channels, out_channels, (3, 1, 1), vb.pp("1"))?,
        })
    }

    /// `[B, T, in, H, W]` → `[B, T, out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.temporal.forward(&self.spatial.forward(x)?)
    }

    /// [`Self::forward`] on the next frames of a stream (see [`StreamState`]).
    pub fn forward_stream(&self, x: &Tensor, state: &mut StreamState) -> Result<Tensor> {
        self.temporal
            .forward_stream(&self.spatial.forward(x)?, state)
    }
}

/// GroupNorm with one group (eps 1e-6) applied per frame; keys `norm.{weight,bias}`.
#[derive(Debug, Clone)]
pub struct FrameNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl FrameNorm {
    /// Loads the norm of `channels` channels.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("norm");
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
            eps: 1e-6,
        })
    }

    /// Normalizes each frame of `[B, T, C, H, W]` over (C, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let flat = x.reshape((b * t, c * h * w))?;
        let mean = flat.mean_keepdim(D::Minus1)?;
        let centered = flat.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .reshape((b, t, c, h, w))?
            .broadcast_mul(&self.weight.reshape((1, 1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, 1, c, 1, 1))?)
    }
}

/// Factorized causal residual block: norm → SiLU → conv → norm → SiLU → conv,
/// plus a 1×1×1 `nin_shortcut` when the width changes.
#[derive(Debug, Clone)]
pub struct ResBlock {
    norm1: FrameNorm,
    conv1: FactorizedConv,
    norm2: FrameNorm,
    conv2: FactorizedConv,
    nin_shortcut: Option<CausalConv3d>,
}

impl ResBlock {
    /// Loads `norm1`, `conv1`, `norm2`, `conv2` and optionally `nin_shortcut`.
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let nin_shortcut = if in_channels != out_channels {
            Some(CausalConv3d::same(
                in_channels,
                out_channels,
                (1, 1, 1),
                vb.pp("nin_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: FrameNorm::new(in_channels, vb.pp("norm1"))?,
            conv1: FactorizedConv::new(in_channels, out_channels, vb.pp("conv1"))?,
            norm2: FrameNorm::new(out_channels, vb.pp("norm2"))?,
            conv2: FactorizedConv::new(out_channels, out_channels, vb.pp("conv2"))?,
            nin_shortcut,
        })
    }

    /// `[B, T, in, H, W]` → `[B, T, out, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        self.add_skip(x, h)
    }

    /// [`Self::forward`] on the next frames of a stream (see [`StreamState`]).
    pub fn forward_stream(&self, x: &Tensor, state: &mut StreamState) -> Result<Tensor> {
        let h = self
            .conv1
            .forward_stream(&self.norm1.forward(x)?.silu()?, state)?;
        let h = self
            .conv2
            .forward_stream(&self.norm2.forward(&h)?.silu()?, state)?;
        self.add_skip(x, h)
    }

    fn add_skip(&self, x: &Tensor, h: Tensor) -> Result<Tensor> {
        let skip = match &self.nin_shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}

/// Spatial ×½ downsampling: zero-pad right/bottom by 1, then a stride-2 valid
/// (1,3,3) conv plus a 2×2 average pool of the same padded tensor, then 1×1.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv1: CausalConv3d,
    conv3: CausalConv3d,
}

impl Downsample {
    /// Loads `conv1` (1×3×3, stride 2) and `conv3` (1×1×1).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: CausalConv3d::new(channels, channels, (1, 3, 3), 2, 0, vb.pp("conv1"))?,
            conv3: CausalConv3d::same(channels, channels, (1, 1, 1), vb.pp("conv3"))?,
        })
    }

    /// `[B, T, C, H, W]` → `[B, T, C, H/2, W/2]` (H and W even).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, _, _) = x.dims5()?;
        let padded = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(4, 0, 1)?;
        let conv = self.conv1.forward(&padded)?;
        let (_, _, _, hp, wp) = padded.dims5()?;
        let pooled = padded.reshape((b * t, c, hp, wp))?.avg_pool2d(2)?;
        let (_, _, ho, wo) = pooled.dims4()?;
        let pooled = pooled.reshape((b, t, c, ho, wo))?;
        self.conv3.forward(&(conv + pooled)?)
    }
}

/// Spatial ×2 upsampling: nearest ×2, then `x + conv2(x)`, then a 1×1 `conv3`
/// (the official key names: there is no `conv1`).
#[derive(Debug, Clone)]
pub struct Upsample {
    conv2: CausalConv3d,
    conv3: CausalConv3d,
}

impl Upsample {
    /// Loads `conv2` (1×3×3) and `conv3` (1×1×1).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv2: CausalConv3d::same(channels, channels, (1, 3, 3), vb.pp("conv2"))?,
            conv3: CausalConv3d::same(channels, channels, (1, 1, 1), vb.pp("conv3"))?,
        })
    }

    /// `[B, T, C, H, W]` → `[B, T, C, 2H, 2W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let up = x
            .reshape((b * t, c, h, w))?
            .upsample_nearest2d(2 * h, 2 * w)?
            .reshape((b, t, c, 2 * h, 2 * w))?;
        let up = (&up + self.conv2.forward(&up)?)?;
        self.conv3.forward(&up)
    }
}

/// Single-head VAE attention projections (`norm`, `q`, `k`, `v`, `proj_out`).
#[derive(Debug, Clone)]
struct AttnProjections {
    norm: FrameNorm,
    q: CausalConv3d,
    k: CausalConv3d,
    v: CausalConv3d,
    proj_out: CausalConv3d,
    channels: usize,
}

impl AttnProjections {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let one = |name: &str| CausalConv3d::same(channels, channels, (1, 1, 1), vb.pp(name));
        Ok(Self {
            norm: FrameNorm::new(channels, vb.pp("norm"))?,
            q: one("q")?,
            k: one("k")?,
            v: one("v")?,
            proj_out: one("proj_out")?,
            channels,
        })
    }

    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let h = self.norm.forward(x)?;
        Ok((
            self.q.forward(&h)?,
            self.k.forward(&h)?,
            self.v.forward(&h)?,
        ))
    }

    fn scale(&self) -> f64 {
        1.0 / (self.channels as f64).sqrt()
    }
}

/// Spatial self-attention within each frame (single head over all channels).
#[derive(Debug, Clone)]
pub struct SpatialAttention {
    p: AttnProjections,
}

impl SpatialAttention {
    /// Loads `norm`, `q`, `k`, `v`, `proj_out`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            p: AttnProjections::new(channels, vb)?,
        })
    }

    /// Residual spatial attention on `[B, T, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let (q, k, v) = self.p.qkv(x)?;
        let tokens = |z: Tensor| z.reshape((b * t, c, h * w))?.transpose(1, 2);
        let o = attention(&tokens(q)?, &tokens(k)?, &tokens(v)?, self.p.scale(), None)?;
        let o = o.transpose(1, 2)?.reshape((b, t, c, h, w))?;
        x + self.p.proj_out.forward(&o)?
    }
}

/// Causal temporal self-attention per pixel (frame `t` attends frames `≤ t`).
#[derive(Debug, Clone)]
pub struct TemporalAttention {
    p: AttnProjections,
}

impl TemporalAttention {
    /// Loads `norm`, `q`, `k`, `v`, `proj_out`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            p: AttnProjections::new(channels, vb)?,
        })
    }

    /// Residual causal temporal attention on `[B, T, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.attend(x, None)
    }

    /// [`Self::forward`] on the next frames of a stream: the keys and values of
    /// every earlier frame are kept in `state` (two slots), so each new frame
    /// attends to the whole stream, as in one forward over it.
    pub fn forward_stream(&self, x: &Tensor, state: &mut StreamState) -> Result<Tensor> {
        self.attend(x, Some(state))
    }

    fn attend(&self, x: &Tensor, state: Option<&mut StreamState>) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let (q, k, v) = self.p.qkv(x)?;
        // [B, T, C, H, W] → [B·H·W, T, C]
        let tokens = |z: Tensor| {
            z.permute((0, 3, 4, 1, 2))?
                .contiguous()?
                .reshape((b * h * w, t, c))
        };
        let (q, mut k, mut v) = (tokens(q)?, tokens(k)?, tokens(v)?);
        let mut past = 0;
        if let Some(state) = state {
            let (ks, vs) = state.slot_pair();
            if let (Some(pk), Some(pv)) = (ks.as_ref(), vs.as_ref()) {
                past = pk.dim(1)?;
                k = Tensor::cat(&[pk, &k], 1)?;
                v = Tensor::cat(&[pv, &v], 1)?;
            }
            *ks = Some(k.clone());
            *vs = Some(v.clone());
        }
        let mask = causal_mask_with_offset(t, past, x.dtype(), x.device())?;
        let o = attention(&q, &k, &v, self.p.scale(), Some(&mask))?;
        let o = o
            .reshape((b, h, w, t, c))?
            .permute((0, 3, 4, 1, 2))?
            .contiguous()?;
        x + self.p.proj_out.forward(&o)?
    }
}

/// Causal cross-attention from latent frames to code tokens: latent frame `k`
/// attends only to the first `codes_per_step · k` code tokens; frame 0 attends
/// to none and passes through. Keys `norm`, `q_proj` (1×1×1 conv), `kv_proj` (one
/// Linear `[2C, code_dim]`, the K rows first, then V) and `proj_out`.
#[derive(Debug, Clone)]
pub struct CodeCrossAttention {
    norm: FrameNorm,
    q_proj: CausalConv3d,
    kv_proj: Linear,
    proj_out: CausalConv3d,
    channels: usize,
    codes_per_step: usize,
}

impl CodeCrossAttention {
    /// `channels`: width of the latent frames; `code_dim`: width of the code embeddings.
    pub fn new(
        channels: usize,
        code_dim: usize,
        codes_per_step: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            norm: FrameNorm::new(channels, vb.pp("norm"))?,
            q_proj: CausalConv3d::same(channels, channels, (1, 1, 1), vb.pp("q_proj"))?,
            kv_proj: Linear::new(code_dim, 2 * channels, vb.pp("kv_proj"))?,
            proj_out: CausalConv3d::same(channels, channels, (1, 1, 1), vb.pp("proj_out"))?,
            channels,
            codes_per_step,
        })
    }

    /// `x` `[B, T, C, H, W]`, `codes` `[B, L, code_dim]` → `[B, T, C, H, W]`.
    pub fn forward(&self, x: &Tensor, codes: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let l = codes.dim(1)?;
        let q = self.q_proj.forward(&self.norm.forward(x)?)?;
        let q = q.reshape((b, t, c, h * w))?.transpose(2, 3)?; // [B, T, HW, C]
        let kv = self.kv_proj.forward(codes)?; // [B, L, 2C]: K then V
        let k = kv.narrow(2, 0, c)?.contiguous()?.unsqueeze(1)?; // [B, 1, L, C]
        let v = kv.narrow(2, c, c)?.contiguous()?.unsqueeze(1)?;
        let mut mask = Vec::with_capacity(t * l);
        let mut gate = Vec::with_capacity(t);
        for frame in 0..t {
            let visible = (self.codes_per_step * frame).min(l);
            gate.push(if visible > 0 { 1f32 } else { 0f32 });
            mask.extend((0..l).map(|j| if j < visible { 0f32 } else { -1e9 }));
        }
        let dev = x.device();
        let mask = Tensor::from_vec(mask, (1, t, 1, l), dev)?.to_dtype(x.dtype())?;
        let gate = Tensor::from_vec(gate, (1, t, 1, 1, 1), dev)?.to_dtype(x.dtype())?;
        let scale = 1.0 / (self.channels as f64).sqrt();
        let k = k.broadcast_as((b, t, l, c))?;
        let v = v.broadcast_as((b, t, l, c))?;
        let o = attention(&q, &k, &v, scale, Some(&mask))?; // [B, T, HW, C]
        let o = o.transpose(2, 3)?.reshape((b, t, c, h, w))?;
        let o = self.proj_out.forward(&o)?.broadcast_mul(&gate)?;
        x + o
    }
}

/// The temporal state of a causal stack run as a stream: what each temporal
/// layer must remember of earlier frames (the last `kt − 1` inputs of a causal
/// conv, the keys and values of a causal temporal attention). Layers take their
/// slots in forward order; call [`StreamState::begin`] before each pass.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    slots: Vec<Option<Tensor>>,
    cursor: usize,
}

impl StreamState {
    /// Starts a pass over the stack: the next slot taken is the first layer's.
    pub fn begin(&mut self) {
        self.cursor = 0;
    }

    /// Frames' worth of state held, summed over the slots (a size check for tests
    /// and benchmarks: scalar elements).
    pub fn elements(&self) -> usize {
        self.slots.iter().flatten().map(|t| t.elem_count()).sum()
    }

    fn slot(&mut self) -> &mut Option<Tensor> {
        if self.cursor == self.slots.len() {
            self.slots.push(None);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }

    fn slot_pair(&mut self) -> (&mut Option<Tensor>, &mut Option<Tensor>) {
        self.slot();
        self.slot();
        let (a, b) = self.slots[self.cursor - 2..self.cursor].split_at_mut(1);
        (&mut a[0], &mut b[0])
    }
}
