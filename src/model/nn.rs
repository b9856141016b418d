//! Small building blocks shared by every model, all of them differentiable.
//!
//! candle's fused kernels (`softmax_last_dim`, `ops::rms_norm`, `ops::layer_norm`,
//! `rope`) have no backward pass, so a model built on them silently freezes
//! everything upstream during training. Every block here uses the slow,
//! differentiable formulations instead.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Softmax over the last dimension, differentiable (unlike `softmax_last_dim`).
pub fn softmax_last(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(xs, D::Minus1)
}

/// A multilayer perceptron: dense layers of widths `dims` (input first), GELU
/// between them, none after the last (keys `{i}.weight`, `{i}.bias`).
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Loads `dims.len() − 1` layers from `vb`.
    pub fn new(dims: &[usize], vb: VarBuilder) -> Result<Self> {
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(w[0], w[1], vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Applies the layers to the last dimension of `xs`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut x = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.gelu()?;
            }
        }
        Ok(x)
    }
}

/// A dense layer `y = x Wᵀ + b` with the PyTorch key names `weight` / `bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// Loads `weight` [out, in] and `bias` [out] from `vb`.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::linear(in_dim, out_dim, vb)?,
        })
    }

    /// Loads `weight` [out, in] only.
    pub fn new_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: candle_nn::linear_no_bias(in_dim, out_dim, vb)?,
        })
    }

    /// Applies the layer to the last dimension of `xs`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.inner.forward(xs)
    }
}

/// LayerNorm over the last dimension (keys `weight`, `bias`), differentiable.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads a LayerNorm of width `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
        })
    }

    /// Normalizes the last dimension of `xs`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, self.eps)
    }
}

/// RMSNorm over the last dimension (key `weight`), differentiable.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads an RMSNorm of width `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self {
            weight,
            eps: eps as f32,
        })
    }

    /// Normalizes the last dimension of `xs`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm_slow(xs, &self.weight, self.eps)
    }
}

/// Scaled dot-product attention `softmax(q kᵀ · scale + mask) v`.
///
/// `q` [.., Lq, d], `k` [.., Lk, d], `v` [.., Lk, dv]; `mask` (optional) is
/// additive and broadcast to [.., Lq, Lk]. Differentiable.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    softmax_last(&scores)?.matmul(&v.contiguous()?)
}

/// An additive causal mask `[n, offset + n]` for `n` new positions after `offset`
/// cached ones: 0 where column ≤ offset + row, `-1e9` elsewhere.
pub fn causal_mask_with_offset(
    n: usize,
    offset: usize,
    dtype: DType,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    if offset == 0 {
        return causal_mask(n, dtype, dev);
    }
    let total = offset + n;
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j <= offset + i { 0.0 } else { -1e9 }))
        .collect();
    Tensor::from_vec(data, (n, total), dev)?.to_dtype(dtype)
}

/// An additive causal mask [len, len]: 0 where column ≤ row, `-1e9` elsewhere.
pub fn causal_mask(len: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j <= i { 0.0 } else { -1e9 }))
        .collect();
    Tensor::from_vec(data, (len, len), device)?.to_dtype(dtype)
}
