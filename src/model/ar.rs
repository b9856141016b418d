//! The autoregressive transformer of VideoWorld 2 (Llama / Cosmos-AR family).
//!
//! The sequence fed to the decoder is
//! `[instruction token] + [num_visual_tokens visual tokens] + [code tokens...]`:
//!
//! * the instruction embedding `[B, instruction_dim]` goes through
//!   `instruction_proj` to a single hidden token;
//! * the first-frame visual features `[B, n, visual_feature_dim]` are pooled
//!   (adaptive average pooling over the token axis) to exactly
//!   `num_visual_tokens` tokens and projected by `visual_proj`;
//! * latent-action code tokens are embedded by `embed_tokens`.
//!
//! The decoder is a pre-norm Llama stack (RMSNorm, rotate-half RoPE, GQA,
//! optional per-head QK RMSNorm, SwiGLU MLP) and `lm_head` only covers the code
//! vocabulary. Every op used here has a backward pass, so `forward_full` can be
//! trained directly.
//!
//! Checkpoint keys mirror a Llama checkpoint: `embed_tokens.weight`,
//! `layers.{i}.self_attn.{q_proj,k_proj,v_proj,o_proj}.weight`,
//! `layers.{i}.self_attn.{q_norm,k_norm}.weight` (only with `qk_norm`),
//! `layers.{i}.mlp.{gate_proj,up_proj,down_proj}.weight`,
//! `layers.{i}.input_layernorm.weight`, `layers.{i}.post_attention_layernorm.weight`,
//! `norm.weight`, `lm_head.weight`, plus `instruction_proj.{weight,bias}` and
//! `visual_proj.{weight,bias}`.

use candle_core::{bail, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::nn::{attention, causal_mask_with_offset, Linear, RmsNorm};

fn default_vocab_size() -> usize {
    1000
}
fn default_rms_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_codes_per_step() -> usize {
    4
}

/// Hyper-parameters of the AR transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArConfig {
    /// Size of the code vocabulary (default 1000 = FSQ levels [8, 5, 5, 5]).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (GQA); must divide `num_heads`.
    pub num_kv_heads: usize,
    /// Per-head width; `hidden_size / num_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Per-head RMSNorm on queries and keys (before RoPE).
    #[serde(default)]
    pub qk_norm: bool,
    /// Maximum total sequence length (prefix + codes).
    pub max_seq_len: usize,
    /// Width of the first-frame visual features fed in.
    pub visual_feature_dim: usize,
    /// Number of visual tokens in the prefix.
    pub num_visual_tokens: usize,
    /// Width of the instruction embedding vector.
    pub instruction_dim: usize,
    /// Number of codes emitted per control step.
    #[serde(default = "default_codes_per_step")]
    pub codes_per_step: usize,
}

/// A configuration problem: which field, what was expected, what was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid AR config: `{field}` expected {expected}, found {found}")]
pub struct ArConfigError {
    /// Name of the offending field.
    pub field: &'static str,
    /// What a valid value looks like.
    pub expected: String,
    /// The value that was found.
    pub found: String,
}

impl ArConfig {
    /// Per-head width (given, or `hidden_size / num_heads`).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_heads.max(1))
    }

    /// Number of prefix tokens: one instruction token plus the visual tokens.
    pub fn prefix_len(&self) -> usize {
        1 + self.num_visual_tokens
    }

    /// Checks every field; the error names the field, the expectation and the value.
    pub fn validate(&self) -> std::result::Result<(), ArConfigError> {
        fn err(
            field: &'static str,
            expected: impl Into<String>,
            found: impl ToString,
        ) -> ArConfigError {
            ArConfigError {
                field,
                expected: expected.into(),
                found: found.to_string(),
            }
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("visual_feature_dim", self.visual_feature_dim),
            ("num_visual_tokens", self.num_visual_tokens),
            ("instruction_dim", self.instruction_dim),
            ("codes_per_step", self.codes_per_step),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(err(field, "a value >= 1", v));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(err(
                "num_kv_heads",
                format!("a divisor of num_heads = {}", self.num_heads),
                self.num_kv_heads,
            ));
        }
        match self.head_dim {
            Some(0) => return Err(err("head_dim", "a value >= 2", 0)),
            Some(_) => {}
            None => {
                if !self.hidden_size.is_multiple_of(self.num_heads) {
                    return Err(err(
                        "hidden_size",
                        format!(
                            "a multiple of num_heads = {} (or set head_dim)",
                            self.num_heads
                        ),
                        self.hidden_size,
                    ));
                }
            }
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(2) {
            return Err(err("head_dim", "an even value (RoPE rotates pairs)", hd));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(err("rms_norm_eps", "a finite value > 0", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(err("rope_theta", "a finite value > 0", self.rope_theta));
        }
        if self.max_seq_len < self.prefix_len() + 1 {
            return Err(err(
                "max_seq_len",
                format!(
                    "at least prefix_len + 1 = {} (1 instruction + {} visual tokens + 1 code)",
                    self.prefix_len() + 1,
                    self.num_visual_tokens
                ),
                self.max_seq_len,
            ));
        }
        Ok(())
    }
}

/// Repeats each of the `n_kv` key/value heads `n_rep` times: [B, n_kv, T, d] → [B, n_kv·n_rep, T, d].
pub fn repeat_kv(xs: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs.clone());
    }
    let (b, n_kv, t, d) = xs.dims4()?;
    // cat along T then reshape keeps each kv head's copies adjacent (head h uses kv head h / n_rep).
    Tensor::cat(&vec![xs; n_rep], 2)?.reshape((b, n_kv * n_rep, t, d))
}

/// Averaging matrix [m, n] of adaptive average pooling from `n` to `m` tokens.
fn adaptive_pool_matrix(n: usize, m: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; m * n];
    for i in 0..m {
        let start = (i * n) / m;
        let end = ((i + 1) * n).div_ceil(m);
        let w = 1.0 / (end - start) as f32;
        for j in start..end {
            data[i * n + j] = w;
        }
    }
    Tensor::from_vec(data, (m, n), dev)?.to_dtype(dtype)
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &ArConfig, vb: VarBuilder) -> Result<Self> {
        let hd = cfg.head_dim();
        let h = cfg.hidden_size;
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("q_norm"))?),
                Some(RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("k_norm"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            q_proj: Linear::new_no_bias(h, cfg.num_heads * hd, vb.pp("q_proj"))?,
            k_proj: Linear::new_no_bias(h, cfg.num_kv_heads * hd, vb.pp("k_proj"))?,
            v_proj: Linear::new_no_bias(h, cfg.num_kv_heads * hd, vb.pp("v_proj"))?,
            o_proj: Linear::new_no_bias(cfg.num_heads * hd, h, vb.pp("o_proj"))?,
            q_norm,
            k_norm,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
        })
    }

    /// `x` [B, T, H] at positions `offset..offset+T`; `past` holds cached (k, v)
    /// [B, n_kv, offset, d]. Returns the output and the full (k, v) including `x`.
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        past: Option<&(Tensor, Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (b, t, _) = x.dims3()?;
        let hd = self.head_dim;
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, t, self.num_heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self
            .k_proj
            .forward(x)?
            .reshape((b, t, self.num_kv_heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, t, self.num_kv_heads, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        };
        let q = rope.apply(&q, offset)?;
        let k = rope.apply(&k, offset)?;
        let (k, v) = match past {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        let n_rep = self.num_heads / self.num_kv_heads;
        let kr = repeat_kv(&k, n_rep)?;
        let vr = repeat_kv(&v, n_rep)?;
        let y = attention(&q, &kr, &vr, 1.0 / (hd as f64).sqrt(), mask)?;
        let y = y.transpose(1, 2)?.reshape((b, t, self.num_heads * hd))?;
        Ok((self.o_proj.forward(&y)?, (k, v)))
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &ArConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::new_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: Linear::new_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: Linear::new_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(g * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl Block {
    fn new(cfg: &ArConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        offset: usize,
        past: Option<&(Tensor, Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (a, kv) =
            self.self_attn
                .forward(&self.input_layernorm.forward(x)?, rope, offset, past, mask)?;
        let h = (x + a)?;
        let out = (&h
            + self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&h)?)?)?;
        Ok((out, kv))
    }
}

/// Precomputed rotate-half RoPE tables [max_seq_len, head_dim / 2].
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(cfg: &ArConfig, dtype: DType, dev: &Device) -> Result<Self> {
        let hd = cfg.head_dim();
        let inv_freq: Vec<f32> = (0..hd / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, hd / 2), dev)?;
        let pos = Tensor::arange(0u32, cfg.max_seq_len as u32, dev)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_seq_len, 1))?;
        let freqs = pos.broadcast_mul(&inv_freq)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
        })
    }

    /// Rotates `x` [B, h, T, d] as if it sat at positions `offset..offset+T`.
    fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        candle_nn::rotary_emb::rope_slow(x, &cos, &sin)
    }
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    max_seq_len: usize,
    last_logits: Option<Tensor>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers holding at most `max_seq_len` positions.
    pub fn new(num_layers: usize, max_seq_len: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            len: 0,
            max_seq_len,
            last_logits: None,
        }
    }

    /// Empties the cache (keeps its capacity settings).
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
        self.last_logits = None;
    }

    /// Number of positions currently cached (prefix + codes).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions this cache accepts.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Positions still available before `max_seq_len` is reached.
    pub fn remaining(&self) -> usize {
        self.max_seq_len.saturating_sub(self.len)
    }

    /// Logits [B, vocab] predicting the next code, from the last `prefill` / `step`.
    pub fn last_logits(&self) -> Option<&Tensor> {
        self.last_logits.as_ref()
    }

    /// Batch size of the cached sequences, if any.
    pub fn batch_size(&self) -> Option<usize> {
        self.layers
            .iter()
            .flatten()
            .next()
            .and_then(|(k, _)| k.dim(0).ok())
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.max_seq_len {
            bail!(
                "KV cache overflow: {} cached + {} new positions exceeds max_seq_len = {} \
                 (reset the cache or raise max_seq_len)",
                self.len,
                n,
                self.max_seq_len
            )
        }
        Ok(())
    }
}

/// The VideoWorld 2 AR transformer: conditioning prefix + Llama decoder over code tokens.
#[derive(Debug, Clone)]
pub struct ArTransformer {
    embed_tokens: Embedding,
    instruction_proj: Linear,
    visual_proj: Linear,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    cfg: ArConfig,
    device: Device,
    dtype: DType,
}

impl ArTransformer {
    /// Builds (or loads) the model from `vb`; validates `cfg` first.
    pub fn new(cfg: &ArConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let h = cfg.hidden_size;
        let layers = (0..cfg.num_layers)
            .map(|i| Block::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed_tokens: candle_nn::embedding(cfg.vocab_size, h, vb.pp("embed_tokens"))?,
            instruction_proj: Linear::new(cfg.instruction_dim, h, vb.pp("instruction_proj"))?,
            visual_proj: Linear::new(cfg.visual_feature_dim, h, vb.pp("visual_proj"))?,
            layers,
            norm: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("norm"))?,
            lm_head: Linear::new_no_bias(h, cfg.vocab_size, vb.pp("lm_head"))?,
            rope: Rope::new(cfg, vb.dtype(), vb.device())?,
            cfg: cfg.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ArConfig {
        &self.cfg
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_layers, self.cfg.max_seq_len)
    }

    /// Embeds the conditioning prefix: [B, prefix_len, hidden].
    fn embed_prefix(&self, instruction: &Tensor, visual: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, idim) = match instruction.dims() {
            &[b, d] => (b, d),
            d => bail!(
                "instruction must be [B, instruction_dim = {}], got {d:?}",
                cfg.instruction_dim
            ),
        };
        if idim != cfg.instruction_dim {
            bail!(
                "instruction width: expected instruction_dim = {}, found {idim}",
                cfg.instruction_dim
            )
        }
        let (vb_, n, vdim) = match visual.dims() {
            &[b, n, d] => (b, n, d),
            d => bail!(
                "visual features must be [B, n, visual_feature_dim = {}], got {d:?}",
                cfg.visual_feature_dim
            ),
        };
        if vdim != cfg.visual_feature_dim {
            bail!(
                "visual feature width: expected visual_feature_dim = {}, found {vdim}",
                cfg.visual_feature_dim
            )
        }
        if vb_ != b {
            bail!("batch mismatch: instruction has B = {b}, visual features have B = {vb_}")
        }
        let m = cfg.num_visual_tokens;
        if n < m {
            bail!("visual features have {n} tokens, fewer than num_visual_tokens = {m}")
        }
        let instruction = instruction.to_device(&self.device)?.to_dtype(self.dtype)?;
        let visual = visual.to_device(&self.device)?.to_dtype(self.dtype)?;
        let visual = if n == m {
            visual
        } else {
            adaptive_pool_matrix(n, m, self.dtype, &self.device)?
                .broadcast_left(b)?
                .matmul(&visual.contiguous()?)?
        };
        let ins = self.instruction_proj.forward(&instruction)?.unsqueeze(1)?;
        let vis = self.visual_proj.forward(&visual)?;
        Tensor::cat(&[ins, vis], 1)
    }

    /// Embeds code ids (u32 [B, L], each < vocab_size): [B, L, hidden].
    fn embed_codes(&self, codes: &Tensor) -> Result<Tensor> {
        if codes.dtype() != DType::U32 {
            bail!("codes must be u32, got {:?}", codes.dtype())
        }
        if codes.rank() != 2 {
            bail!("codes must be [B, L], got {:?}", codes.dims())
        }
        let codes = codes.to_device(&self.device)?;
        if codes.elem_count() > 0 {
            let max = codes.flatten_all()?.max(0)?.to_scalar::<u32>()?;
            if max as usize >= self.cfg.vocab_size {
                bail!(
                    "code id {max} out of range: vocab_size = {}",
                    self.cfg.vocab_size
                )
            }
        }
        self.embed_tokens.forward(&codes)
    }

    /// Runs the decoder stack on `x` [B, T, H] at positions `offset..`; returns
    /// the final-normed hidden states and every layer's full (k, v).
    fn run_layers(
        &self,
        x: Tensor,
        offset: usize,
        cache: Option<&KvCache>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let t = x.dim(1)?;
        let mask = if t > 1 {
            Some(causal_mask_with_offset(
                t,
                offset,
                self.dtype,
                &self.device,
            )?)
        } else {
            None
        };
        let mut x = x;
        let mut kvs = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let past = cache.and_then(|c| c.layers[i].as_ref());
            let (y, kv) = layer.forward(&x, &self.rope, offset, past, mask.as_ref())?;
            x = y;
            kvs.push(kv);
        }
        Ok((self.norm.forward(&x)?, kvs))
    }

    /// Full causal pass for training: logits [B, L+1, vocab] where row `i`
    /// (taken at sequence position `prefix_len - 1 + i`) predicts code `i`.
    /// `codes` is u32 [B, L]; `prefix_len + L` must not exceed `max_seq_len`.
    pub fn forward_full(
        &self,
        instruction: &Tensor,
        visual: &Tensor,
        codes: &Tensor,
    ) -> Result<Tensor> {
        let prefix = self.embed_prefix(instruction, visual)?;
        let (b, p, _) = prefix.dims3()?;
        let (cb, l) = codes.dims2()?;
        if cb != b {
            bail!("batch mismatch: prefix has B = {b}, codes have B = {cb}")
        }
        if p + l > self.cfg.max_seq_len {
            bail!(
                "sequence too long: prefix {p} + {l} codes exceeds max_seq_len = {}",
                self.cfg.max_seq_len
            )
        }
        let x = if l == 0 {
            prefix
        } else {
            Tensor::cat(&[prefix, self.embed_codes(codes)?], 1)?
        };
        let (h, _) = self.run_layers(x, 0, None)?;
        self.lm_head.forward(&h.narrow(1, p - 1, l + 1)?)
    }

    /// Runs the prefix into an empty `cache`; returns logits [B, vocab] for the
    /// first code (also kept as `cache.last_logits()`).
    pub fn prefill(
        &self,
        cache: &mut KvCache,
        instruction: &Tensor,
        visual: &Tensor,
    ) -> Result<Tensor> {
        if !cache.is_empty() {
            bail!(
                "prefill needs an empty KV cache, it holds {} positions (call reset())",
                cache.len()
            )
        }
        if cache.layers.len() != self.layers.len() {
            bail!(
                "KV cache has {} layers, model has {}",
                cache.layers.len(),
                self.layers.len()
            )
        }
        let prefix = self.embed_prefix(instruction, visual)?;
        let p = prefix.dim(1)?;
        cache.check_room(p)?;
        let (h, kvs) = self.run_layers(prefix, 0, None)?;
        let logits = self.lm_head.forward(&h.i((.., p - 1, ..))?)?;
        for (slot, kv) in cache.layers.iter_mut().zip(kvs) {
            *slot = Some(kv);
        }
        cache.len = p;
        cache.last_logits = Some(logits.clone());
        Ok(logits)
    }

    /// Appends `codes` (u32 [B, n], n ≥ 1) after a `prefill`; returns logits
    /// [B, n, vocab] (row `j` predicts the code after `codes[:, j]`). Errors,
    /// leaving the cache untouched, when `max_seq_len` would be exceeded.
    pub fn step(&self, cache: &mut KvCache, codes: &Tensor) -> Result<Tensor> {
        if cache.is_empty() {
            bail!("step called on an empty KV cache: call prefill first")
        }
        let (b, n) = codes.dims2()?;
        if n == 0 {
            bail!(
                "step needs at least one code, got codes of shape {:?}",
                codes.dims()
            )
        }
        if let Some(cb) = cache.batch_size() {
            if cb != b {
                bail!("batch mismatch: KV cache has B = {cb}, codes have B = {b}")
            }
        }
        cache.check_room(n)?;
        let x = self.embed_codes(codes)?;
        let (h, kvs) = self.run_layers(x, cache.len, Some(cache))?;
        let logits = self.lm_head.forward(&h)?;
        for (slot, kv) in cache.layers.iter_mut().zip(kvs) {
            *slot = Some(kv);
        }
        cache.len += n;
        cache.last_logits = Some(logits.i((.., n - 1, ..))?);
        Ok(logits)
    }

    /// Samples `n_codes` codes autoregressively from `cache.last_logits()`,
    /// feeding each back with `step`. Returns `[batch][code]`; afterwards the
    /// cache holds every sampled code and `last_logits` predicts the next one.
    /// Sampling is restricted to ids `< vocab_size`.
    pub fn generate_codes(
        &self,
        cache: &mut KvCache,
        sampler: &mut Sampler,
        n_codes: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let Some(mut logits) = cache.last_logits.clone() else {
            bail!("generate_codes needs logits in the KV cache: call prefill first")
        };
        cache.check_room(n_codes)?;
        let b = logits.dim(0)?;
        let mut out = vec![Vec::with_capacity(n_codes); b];
        for _ in 0..n_codes {
            let ids = sampler.sample_in_vocab(&logits, self.cfg.vocab_size)?;
            for (row, &id) in out.iter_mut().zip(&ids) {
                row.push(id);
            }
            let codes = Tensor::from_vec(ids, (b, 1), &self.device)?;
            self.step(cache, &codes)?;
            logits = cache
                .last_logits
                .clone()
                .expect("step always stores last_logits");
        }
        Ok(out)
    }

    /// Samples the `codes_per_step` codes of one control step (see [`Self::generate_codes`]).
    pub fn generate_step_codes(
        &self,
        cache: &mut KvCache,
        sampler: &mut Sampler,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_codes(cache, sampler, self.cfg.codes_per_step)
    }
}

/// How the next code is drawn from the logits.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Sampling {
    /// Always the argmax (lowest id on ties).
    #[default]
    Greedy,
    /// Softmax of `logits / temperature` over the whole code vocabulary.
    Temperature {
        /// Softmax temperature (> 0).
        temperature: f64,
    },
    /// Softmax of `logits / temperature` over the `k` largest logits only.
    TopK {
        /// Number of candidates kept (≥ 1).
        k: usize,
        /// Softmax temperature (> 0).
        temperature: f64,
    },
}

impl Sampling {
    /// Checks the parameters (temperature finite and > 0, k ≥ 1).
    pub fn validate(&self) -> Result<()> {
        let t = match *self {
            Sampling::Greedy => return Ok(()),
            Sampling::Temperature { temperature } => temperature,
            Sampling::TopK { k, temperature } => {
                if k == 0 {
                    bail!("sampling: top-k `k` expected >= 1, found 0")
                }
                temperature
            }
        };
        if !(t.is_finite() && t > 0.0) {
            bail!(
                "sampling: `temperature` expected a finite value > 0 (use greedy for 0), found {t}"
            )
        }
        Ok(())
    }
}

/// A seeded sampler: the same seed and logits give the same codes.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
    vocab_size: Option<usize>,
}

impl Sampler {
    /// A sampler using `sampling`, seeded with `seed`, over the full logits width.
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Self {
            sampling,
            rng: StdRng::seed_from_u64(seed),
            vocab_size: None,
        }
    }

    /// Restricts `sample` to ids `< vocab_size` (wider logits are ignored past it).
    pub fn with_vocab_size(mut self, vocab_size: usize) -> Self {
        self.vocab_size = Some(vocab_size);
        self
    }

    /// The sampling rule in use.
    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// One id per row of `logits` ([vocab] or [B, vocab]), restricted to the
    /// vocabulary set with [`Self::with_vocab_size`] if any.
    pub fn sample(&mut self, logits: &Tensor) -> Result<Vec<u32>> {
        let limit = self.vocab_size.unwrap_or(usize::MAX);
        self.sample_in_vocab(logits, limit)
    }

    /// One id per row of `logits` ([vocab] or [B, vocab]), only among ids `< vocab_size`.
    pub fn sample_in_vocab(&mut self, logits: &Tensor, vocab_size: usize) -> Result<Vec<u32>> {
        self.sampling.validate()?;
        let rows: Vec<Vec<f32>> = match logits.rank() {
            1 => vec![logits.to_dtype(DType::F32)?.to_vec1()?],
            2 => logits.to_dtype(DType::F32)?.to_vec2()?,
            _ => bail!(
                "logits must be [vocab] or [B, vocab], got {:?}",
                logits.dims()
            ),
        };
        rows.iter()
            .map(|row| {
                let n = row.len().min(vocab_size);
                if n == 0 {
                    bail!("cannot sample from empty logits (vocab_size = {vocab_size})")
                }
                self.sample_row(&row[..n])
            })
            .collect()
    }

    fn sample_row(&mut self, row: &[f32]) -> Result<u32> {
        if let Some(i) = row.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
            bail!("logits contain a non-finite value {} at id {i}", row[i])
        }
        let mut idx: Vec<usize> = (0..row.len()).collect();
        // Descending by logit, ascending by id on ties (stable sort).
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let (cands, t) = match self.sampling {
            Sampling::Greedy => return Ok(idx[0] as u32),
            Sampling::Temperature { temperature } => (&idx[..], temperature),
            Sampling::TopK { k, temperature } => (&idx[..k.min(idx.len())], temperature),
        };
        let max = row[cands[0]] as f64;
        if max == f64::NEG_INFINITY {
            bail!("every candidate logit is -inf")
        }
        let weights: Vec<f64> = cands
            .iter()
            .map(|&i| ((row[i] as f64 - max) / t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let u = self.rng.random::<f64>() * total;
        let mut acc = 0.0;
        for (&i, w) in cands.iter().zip(&weights) {
            acc += w;
            if u < acc {
                return Ok(i as u32);
            }
        }
        // Rounding: fall back to the last candidate with non-zero weight.
        let last = cands
            .iter()
            .zip(&weights)
            .rev()
            .find(|(_, &w)| w > 0.0)
            .map(|(&i, _)| i)
            .unwrap_or(cands[0]);
        Ok(last as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;
    use candle_nn::VarMap;

    fn tiny_cfg() -> ArConfig {
        ArConfig {
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            qk_norm: true,
            max_seq_len: 24,
            visual_feature_dim: 12,
            num_visual_tokens: 3,
            instruction_dim: 10,
            codes_per_step: 4,
        }
    }

    fn build(cfg: &ArConfig) -> (VarMap, ArTransformer) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ArTransformer::new(cfg, vb).unwrap();
        (varmap, model)
    }

    fn inputs(cfg: &ArConfig, b: usize, n_vis: usize, l: usize) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let ins = Tensor::randn(0f32, 1.0, (b, cfg.instruction_dim), &dev).unwrap();
        let vis = Tensor::randn(0f32, 1.0, (b, n_vis, cfg.visual_feature_dim), &dev).unwrap();
        let codes: Vec<u32> = (0..b * l)
            .map(|i| ((i * 7 + 3) % cfg.vocab_size) as u32)
            .collect();
        let codes = Tensor::from_vec(codes, (b, l), &dev).unwrap();
        (ins, vis, codes)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn kv_cache_matches_full_forward() {
        let cfg = tiny_cfg();
        let (_vm, model) = build(&cfg);
        let (b, l) = (2, 8);
        // 7 visual tokens pooled to 3.
        let (ins, vis, codes) = inputs(&cfg, b, 7, l);
        let full = model.forward_full(&ins, &vis, &codes).unwrap();
        assert_eq!(full.dims(), &[b, l + 1, cfg.vocab_size]);

        // Prefill + one token at a time.
        let mut cache = model.new_cache();
        let first = model.prefill(&mut cache, &ins, &vis).unwrap();
        assert_eq!(cache.len(), cfg.prefix_len());
        let mut rows = vec![first.unsqueeze(1).unwrap()];
        for j in 0..l {
            rows.push(
                model
                    .step(&mut cache, &codes.narrow(1, j, 1).unwrap())
                    .unwrap(),
            );
        }
        let inc = Tensor::cat(&rows, 1).unwrap();
        let d = max_abs_diff(&full, &inc);
        assert!(d < 1e-4, "one-by-one step differs from forward_full by {d}");
        assert_eq!(cache.len(), cfg.prefix_len() + l);
        let last = cache.last_logits().unwrap();
        let d = max_abs_diff(last, &full.i((.., l, ..)).unwrap());
        assert!(d < 1e-4, "last_logits differs by {d}");

        // Prefill + multi-token steps (3 then 5).
        cache.reset();
        assert!(cache.is_empty());
        let first = model.prefill(&mut cache, &ins, &vis).unwrap();
        let a = model
            .step(&mut cache, &codes.narrow(1, 0, 3).unwrap())
            .unwrap();
        let c = model
            .step(&mut cache, &codes.narrow(1, 3, 5).unwrap())
            .unwrap();
        let inc = Tensor::cat(&[first.unsqueeze(1).unwrap(), a, c], 1).unwrap();
        let d = max_abs_diff(&full, &inc);
        assert!(
            d < 1e-4,
            "multi-token step differs from forward_full by {d}"
        );

        // Sanity: the comparison is sensitive (different codes give different logits).
        let shifted: Vec<u32> = codes
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .map(|c| (c + 1) % cfg.vocab_size as u32)
            .collect();
        let other = Tensor::from_vec(shifted, (b, l), &Device::Cpu).unwrap();
        let full2 = model.forward_full(&ins, &vis, &other).unwrap();
        assert!(max_abs_diff(&full, &full2) > 1e-3);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        let cfg = tiny_cfg();
        let (varmap, model) = build(&cfg);
        let (b, l) = (2, 6);
        let (ins, vis, codes) = inputs(&cfg, b, 5, l);
        let logits = model.forward_full(&ins, &vis, &codes).unwrap();
        let pred = logits
            .narrow(1, 0, l)
            .unwrap()
            .reshape((b * l, cfg.vocab_size))
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&pred, &codes.flatten_all().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let grad_abs = |name: &str| -> f32 {
            let var = data
                .get(name)
                .unwrap_or_else(|| panic!("no variable named {name}"));
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        for name in [
            "embed_tokens.weight",
            "instruction_proj.weight",
            "visual_proj.weight",
            "layers.0.self_attn.q_proj.weight",
            "layers.0.self_attn.q_norm.weight",
            "layers.0.self_attn.k_norm.weight",
        ] {
            assert!(grad_abs(name) > 0.0, "zero gradient for {name}");
        }
        // 2 embed/lm_head + 2 proj × 2 + final norm + per layer (4 attn + 2 qk norm + 3 mlp + 2 norms).
        assert_eq!(data.len(), 2 + 4 + 1 + cfg.num_layers * 11);
        for name in data.keys() {
            assert!(grad_abs(name) > 0.0, "zero gradient for {name}");
        }
    }

    #[test]
    fn checkpoint_key_names() {
        let cfg = tiny_cfg();
        let (varmap, _) = build(&cfg);
        let data = varmap.data().lock().unwrap();
        for k in [
            "embed_tokens.weight",
            "layers.1.self_attn.k_proj.weight",
            "layers.1.self_attn.k_norm.weight",
            "layers.1.mlp.gate_proj.weight",
            "layers.1.input_layernorm.weight",
            "layers.1.post_attention_layernorm.weight",
            "norm.weight",
            "lm_head.weight",
            "instruction_proj.weight",
            "visual_proj.weight",
        ] {
            assert!(data.contains_key(k), "missing {k}");
        }
        assert_eq!(
            data["layers.0.self_attn.k_proj.weight"].as_tensor().dims(),
            &[2 * 8, 32]
        );
    }

    #[test]
    fn sampling_rules() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[0.1f32, 2.0, -1.0, 1.9, 0.5], &dev).unwrap();
        // Greedy picks the argmax, per row.
        let mut g = Sampler::new(Sampling::Greedy, 0);
        assert_eq!(g.sample(&logits).unwrap(), vec![1]);
        let batch = Tensor::new(&[[0f32, 1.0, 5.0], [9.0, 1.0, 5.0]], &dev).unwrap();
        assert_eq!(g.sample(&batch).unwrap(), vec![2, 0]);

        // Same seed → same sequence; different seeds → different sequences.
        let flat = Tensor::zeros(100, DType::F32, &dev).unwrap();
        let draw = |seed: u64, s: Sampling| -> Vec<u32> {
            let mut sm = Sampler::new(s, seed);
            (0..64).flat_map(|_| sm.sample(&flat).unwrap()).collect()
        };
        let t = Sampling::Temperature { temperature: 1.0 };
        assert_eq!(draw(7, t), draw(7, t));
        assert_ne!(draw(7, t), draw(8, t));
        let distinct: std::collections::HashSet<u32> = draw(7, t).into_iter().collect();
        assert!(distinct.len() > 10, "temperature sampling looks degenerate");

        // Top-k never leaves the top k.
        let vals: Vec<f32> = (0..30).map(|i| ((i * 13) % 30) as f32 * 0.1).collect();
        let wide = Tensor::from_vec(vals.clone(), 30, &dev).unwrap();
        let mut order: Vec<usize> = (0..30).collect();
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let top: std::collections::HashSet<u32> = order[..5].iter().map(|&i| i as u32).collect();
        let mut tk = Sampler::new(
            Sampling::TopK {
                k: 5,
                temperature: 10.0,
            },
            3,
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let id = tk.sample(&wide).unwrap()[0];
            assert!(top.contains(&id), "top-k returned {id}, outside the top 5");
            seen.insert(id);
        }
        assert_eq!(seen.len(), 5, "high temperature top-k should visit all 5");

        // Logits wider than the vocabulary: never an id >= vocab_size, even
        // when the largest logits lie beyond it.
        let mut wide_vals = vec![0f32; 20];
        for v in wide_vals.iter_mut().skip(10) {
            *v = 100.0;
        }
        let wide = Tensor::from_vec(wide_vals, (1, 20), &dev).unwrap();
        for s in [
            Sampling::Greedy,
            Sampling::Temperature { temperature: 1.0 },
            Sampling::TopK {
                k: 15,
                temperature: 1.0,
            },
        ] {
            let mut sm = Sampler::new(s, 1).with_vocab_size(10);
            for _ in 0..200 {
                let id = sm.sample(&wide).unwrap()[0];
                assert!(id < 10, "{s:?} returned {id} >= vocab_size");
            }
            let id = Sampler::new(s, 1).sample_in_vocab(&wide, 10).unwrap()[0];
            assert!(id < 10);
        }

        // Invalid parameters are errors.
        let mut bad = Sampler::new(Sampling::Temperature { temperature: 0.0 }, 0);
        assert!(bad.sample(&logits).is_err());
        let mut bad = Sampler::new(
            Sampling::TopK {
                k: 0,
                temperature: 1.0,
            },
            0,
        );
        assert!(bad.sample(&logits).is_err());
    }

    #[test]
    fn sampling_serde_roundtrip() {
        for s in [
            Sampling::Greedy,
            Sampling::Temperature { temperature: 0.7 },
            Sampling::TopK {
                k: 40,
                temperature: 1.0,
            },
        ] {
            let j = serde_json::to_string(&s).unwrap();
            let back: Sampling = serde_json::from_str(&j).unwrap();
            assert_eq!(s, back);
        }
        let y: Sampling = serde_yaml::from_str("kind: top_k\nk: 5\ntemperature: 0.9\n").unwrap();
        assert_eq!(
            y,
            Sampling::TopK {
                k: 5,
                temperature: 0.9
            }
        );
        assert!(serde_json::from_str::<Sampling>(
            r#"{"kind":"temperature","temperature":1.0,"k":3}"#
        )
        .is_err());
    }

    #[test]
    fn config_validation_and_serde() {
        let mut cfg = tiny_cfg();
        cfg.validate().unwrap();
        cfg.num_kv_heads = 3;
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field, "num_kv_heads");
        let msg = e.to_string();
        assert!(
            msg.contains("num_kv_heads") && msg.contains('3') && msg.contains('4'),
            "{msg}"
        );
        // `new` refuses it too, with the same message.
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let err = ArTransformer::new(&cfg, vb).unwrap_err().to_string();
        assert!(err.contains("num_kv_heads"), "{err}");

        let mut cfg = tiny_cfg();
        cfg.hidden_size = 30; // not a multiple of 4 heads
        assert_eq!(cfg.validate().unwrap_err().field, "hidden_size");
        let mut cfg = tiny_cfg();
        cfg.max_seq_len = cfg.prefix_len();
        assert_eq!(cfg.validate().unwrap_err().field, "max_seq_len");

        // Defaults and unknown fields.
        let yaml = "hidden_size: 32\nintermediate_size: 48\nnum_layers: 2\nnum_heads: 4\n\
                    num_kv_heads: 2\nmax_seq_len: 24\nvisual_feature_dim: 12\n\
                    num_visual_tokens: 3\ninstruction_dim: 10\n";
        let c: ArConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(c.vocab_size, 1000);
        assert_eq!(c.codes_per_step, 4);
        assert_eq!(c.head_dim(), 8);
        assert!(serde_yaml::from_str::<ArConfig>(&format!("{yaml}bogus: 1\n")).is_err());
    }

    #[test]
    fn exceeding_max_seq_len_is_an_error() {
        let cfg = tiny_cfg(); // prefix 4, max 24 → room for 20 codes
        let (_vm, model) = build(&cfg);
        let room = cfg.max_seq_len - cfg.prefix_len();
        let (ins, vis, codes) = inputs(&cfg, 1, 3, room + 1);
        assert!(model.forward_full(&ins, &vis, &codes).is_err());
        assert!(model
            .forward_full(&ins, &vis, &codes.narrow(1, 0, room).unwrap())
            .is_ok());

        let mut cache = model.new_cache();
        model.prefill(&mut cache, &ins, &vis).unwrap();
        model
            .step(&mut cache, &codes.narrow(1, 0, room - 1).unwrap())
            .unwrap();
        // Two more would overflow: error, and the cache is unchanged.
        let err = model
            .step(&mut cache, &codes.narrow(1, 0, 2).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_seq_len"), "{err}");
        assert_eq!(cache.len(), cfg.max_seq_len - 1);
        model
            .step(&mut cache, &codes.narrow(1, 0, 1).unwrap())
            .unwrap();
        assert_eq!(cache.remaining(), 0);
        assert!(model
            .step(&mut cache, &codes.narrow(1, 0, 1).unwrap())
            .is_err());
        let mut s = Sampler::new(Sampling::Greedy, 0);
        assert!(model.generate_step_codes(&mut cache, &mut s).is_err());
        // Prefill on a non-empty cache is an error too.
        assert!(model.prefill(&mut cache, &ins, &vis).is_err());
        // Too few visual tokens is an error.
        let few = Tensor::zeros((1, 2, cfg.visual_feature_dim), DType::F32, &Device::Cpu).unwrap();
        cache.reset();
        assert!(model.prefill(&mut cache, &ins, &few).is_err());
        // Out-of-vocabulary code ids are an error.
        let oov = Tensor::new(&[[cfg.vocab_size as u32]], &Device::Cpu).unwrap();
        model.prefill(&mut cache, &ins, &vis).unwrap();
        assert!(model.step(&mut cache, &oov).is_err());
    }

    #[test]
    fn generate_step_codes_is_deterministic_and_consistent() {
        let cfg = tiny_cfg();
        let (_vm, model) = build(&cfg);
        let (ins, vis, _) = inputs(&cfg, 2, 3, 0);
        let run = |seed: u64| {
            let mut cache = model.new_cache();
            model.prefill(&mut cache, &ins, &vis).unwrap();
            let mut s = Sampler::new(
                Sampling::TopK {
                    k: 10,
                    temperature: 1.0,
                },
                seed,
            );
            let a = model.generate_step_codes(&mut cache, &mut s).unwrap();
            let b = model.generate_step_codes(&mut cache, &mut s).unwrap();
            (a, b, cache)
        };
        let (a1, b1, cache) = run(11);
        let (a2, b2, _) = run(11);
        assert_eq!((&a1, &b1), (&a2, &b2));
        assert_eq!(a1.len(), 2);
        assert!(a1.iter().all(|r| r.len() == cfg.codes_per_step));
        assert_eq!(cache.len(), cfg.prefix_len() + 2 * cfg.codes_per_step);

        // Greedy generation equals the argmax of forward_full on the generated codes.
        let mut cache = model.new_cache();
        model.prefill(&mut cache, &ins, &vis).unwrap();
        let mut g = Sampler::new(Sampling::Greedy, 0);
        let codes = model.generate_codes(&mut cache, &mut g, 6).unwrap();
        let flat: Vec<u32> = codes.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (2, 6), &Device::Cpu).unwrap();
        let full = model.forward_full(&ins, &vis, &t).unwrap();
        let argmax = full.narrow(1, 0, 6).unwrap().argmax(D::Minus1).unwrap();
        assert_eq!(argmax.to_vec2::<u32>().unwrap(), codes);
    }
}
