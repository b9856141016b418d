//! `vw2 bench models`: each model stage of a policy bundle on this machine — the
//! dLDM encoder per latent step (a re-encoded window of W = 2, 8, 22 steps, and the
//! streaming encoder at the same history), the AR's prefill and per-token decode, the
//! action head and the coarse decoder — with the arithmetic (FLOP) and memory traffic
//! (bytes) each must do, and the fraction of this machine's limit it reaches. The
//! limits are measured in the same run: a large f32 matmul (GFLOP/s) and a large copy
//! (GB/s).
//!
//! FLOPs count multiply-adds as 2. Bytes are the weights read once per call plus
//! every layer's input and output activations (f32), a lower bound on the traffic.
//! The fraction of the limit is `max(flop / peak_flop, bytes / peak_bandwidth) / time`:
//! 1.0 means the stage runs at the roofline.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::bundle::LoadedPolicy;
use super::instruction::instruction_tensor;
use crate::model::ar::{ArConfig, Sampler, Sampling};
use crate::model::dldm::{Dldm, DldmConfig, EncoderStream};
use crate::runtime::metrics::Histogram;

/// The machine's limits, measured in the run.
#[derive(Debug, Clone, Serialize)]
pub struct MachineLimits {
    /// f32 matmul throughput, best of the tries (GFLOP/s).
    pub matmul_gflops: f64,
    /// Matmul size n (n×n by n×n).
    pub matmul_n: usize,
    /// Copy bandwidth, read + write bytes per second, best of the tries (GB/s).
    pub copy_gbps: f64,
    /// Bytes copied per try (MiB).
    pub copy_mib: usize,
    /// Threads candle's CPU kernels use.
    pub threads: usize,
}

/// One stage's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct StageBench {
    /// What ran.
    pub stage: String,
    /// Samples timed (runs × iterations).
    pub samples: usize,
    /// Median time (ms).
    pub p50_ms: f64,
    /// 99th percentile time (ms).
    pub p99_ms: f64,
    /// Median of each run's median (ms), one per run.
    pub run_p50_ms: Vec<f64>,
    /// Arithmetic per call (MFLOP); `None` where not counted.
    pub mflop: Option<f64>,
    /// Memory traffic per call, lower bound (MB); `None` where not counted.
    pub mbytes: Option<f64>,
    /// Fraction of the machine's limit reached at the median time.
    pub fraction_of_limit: Option<f64>,
}

/// What `vw2 bench models` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModelsBench {
    /// The bundle.
    pub policy: String,
    /// The machine's limits.
    pub limits: MachineLimits,
    /// One entry per stage.
    pub stages: Vec<StageBench>,
}

/// Measures the machine's limits: the best of `tries` f32 `n`×`n` matmuls, and the
/// best of `tries` copies of a `mib` MiB buffer.
pub fn machine_limits(n: usize, mib: usize, tries: usize) -> Result<MachineLimits> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let mut best = f64::INFINITY;
    for _ in 0..tries.max(1) {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        c.sum_all()?.to_scalar::<f32>()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let matmul_gflops = 2.0 * (n as f64).powi(3) / best / 1e9;
    let len = mib * (1 << 20) / 4;
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let mut best_copy = f64::INFINITY;
    for i in 0..tries.max(1) {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best_copy = best_copy.min(t.elapsed().as_secs_f64());
        dst[i % len] += 1.0;
    }
    let copy_gbps = 2.0 * (len * 4) as f64 / best_copy / 1e9;
    Ok(MachineLimits {
        matmul_gflops,
        matmul_n: n,
        copy_gbps,
        copy_mib: mib,
        threads: candle_core::utils::get_num_threads(),
    })
}

/// FLOP and byte counts of one call of a stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Work {
    /// Arithmetic (FLOP).
    pub flop: f64,
    /// Memory traffic (bytes).
    pub bytes: f64,
}

impl Work {
    fn add(&mut self, flop: f64, bytes: f64) {
        self.flop += flop;
        self.bytes += bytes;
    }
}

/// Work of the dLDM encoder for `t_new` new latent frames at latent size `h`×`w`
/// with `t_hist` earlier frames in its temporal attention (all f32).
pub fn encoder_work(cfg: &DldmConfig, h: usize, w: usize, t_new: usize, t_hist: usize) -> Work {
    let mut wk = Work::default();
    let t = t_new as f64;
    let (mut h, mut w) = (h, w);
    // A conv (kt·k·k taps) from cin to cout at h×w, per new frame.
    let conv = |wk: &mut Work, cin: usize, cout: usize, taps: usize, hw: usize| {
        let (cin, cout, taps, hw) = (cin as f64, cout as f64, taps as f64, hw as f64);
        wk.add(
            2.0 * taps * cin * cout * hw * t,
            4.0 * (taps * cin * cout + (cin + cout) * hw * t),
        );
    };
    let factorized = |wk: &mut Work, cin: usize, cout: usize, hw: usize| {
        conv(wk, cin, cout, 9, hw);
        conv(wk, cout, cout, 3, hw);
    };
    let res_block = |wk: &mut Work, cin: usize, cout: usize, hw: usize| {
        factorized(wk, cin, cout, hw);
        factorized(wk, cout, cout, hw);
        if cin != cout {
            conv(wk, cin, cout, 1, hw);
        }
    };
    let space_time = |wk: &mut Work, c: usize, hw: usize| {
        // Projections (q, k, v, out) of both attentions.
        for _ in 0..2 {
            conv(wk, c, 4 * c, 1, hw);
        }
        let (c, hw) = (c as f64, hw as f64);
        // Spatial: scores and weighted sum over the frame's hw tokens.
        wk.add(4.0 * hw * hw * c * t, 4.0 * hw * hw * t);
        // Temporal: each new position attends to its history and the new frames.
        let keys = t_hist as f64 + t;
        wk.add(4.0 * keys * c * hw * t, 8.0 * keys * c * hw);
    };
    let patched = cfg.in_channels * 8usize.pow(cfg.patch_size.trailing_zeros());
    let ch = cfg.channels;
    factorized(&mut wk, patched, ch, h * w);
    let mut block_in = ch;
    let mut res = cfg.resolution / cfg.patch_size;
    for (i, mult) in cfg.channels_mult.iter().enumerate() {
        let out = ch * mult;
        for _ in 0..cfg.num_res_blocks {
            res_block(&mut wk, block_in, out, h * w);
            block_in = out;
            if cfg.attn_resolutions.contains(&res) {
                space_time(&mut wk, block_in, h * w);
            }
        }
        if i + 1 != cfg.channels_mult.len() {
            h /= 2;
            w /= 2;
            res /= 2;
            conv(&mut wk, block_in, block_in, 9, h * w);
            conv(&mut wk, block_in, block_in, 1, h * w);
        }
    }
    res_block(&mut wk, block_in, block_in, h * w);
    space_time(&mut wk, block_in, h * w);
    res_block(&mut wk, block_in, block_in, h * w);
    wk
}

/// Weights of the AR that every position multiplies by: the layers' projections
/// and MLP, and the LM head (embeddings and norms excluded).
fn ar_matmul_weights(cfg: &ArConfig) -> f64 {
    let h = cfg.hidden_size as f64;
    let q = (cfg.num_heads * cfg.head_dim()) as f64;
    let kv = (cfg.num_kv_heads * cfg.head_dim()) as f64;
    let per_layer = 2.0 * h * q + 2.0 * h * kv + 3.0 * h * cfg.intermediate_size as f64;
    cfg.num_layers as f64 * per_layer + h * cfg.vocab_size as f64
}

/// Work of one AR decode step (one token) with `ctx` positions in the cache.
pub fn ar_decode_work(cfg: &ArConfig, ctx: usize) -> Work {
    let weights = ar_matmul_weights(cfg);
    let q = (cfg.num_heads * cfg.head_dim()) as f64;
    let kv = (cfg.num_kv_heads * cfg.head_dim()) as f64;
    let layers = cfg.num_layers as f64;
    let ctx = ctx as f64;
    Work {
        flop: 2.0 * weights + layers * 4.0 * ctx * q,
        bytes: 4.0 * (weights + layers * 2.0 * ctx * kv),
    }
}

/// Work of the AR prefill over `p` prefix positions (causal attention over them).
pub fn ar_prefill_work(cfg: &ArConfig, p: usize) -> Work {
    let q = (cfg.num_heads * cfg.head_dim()) as f64;
    let p = p as f64;
    Work {
        flop: 2.0 * ar_matmul_weights(cfg) * p + cfg.num_layers as f64 * 2.0 * p * p * q,
        bytes: ar_decode_work(cfg, p as usize).bytes,
    }
}

fn time_stage(
    name: &str,
    runs: usize,
    iters: usize,
    work: Option<Work>,
    limits: &MachineLimits,
    mut f: impl FnMut() -> Result<()>,
) -> Result<StageBench> {
    f()?; // warm-up
    let mut all = Histogram::default();
    let mut run_p50_ms = Vec::new();
    for _ in 0..runs {
        let mut h = Histogram::default();
        for _ in 0..iters {
            let t = Instant::now();
            f()?;
            let s = t.elapsed().as_secs_f64();
            h.record(s);
            all.record(s);
        }
        run_p50_ms.push(h.quantile(0.5) * 1e3);
    }
    let p50 = all.quantile(0.5);
    let bound = work
        .map(|w| (w.flop / (limits.matmul_gflops * 1e9)).max(w.bytes / (limits.copy_gbps * 1e9)));
    Ok(StageBench {
        stage: name.to_string(),
        samples: all.len(),
        p50_ms: p50 * 1e3,
        p99_ms: all.quantile(0.99) * 1e3,
        run_p50_ms,
        mflop: work.map(|w| w.flop / 1e6),
        mbytes: work.map(|w| w.bytes / 1e6),
        fraction_of_limit: bound.filter(|_| p50 > 0.0).map(|b| b / p50),
    })
}

/// Deterministic frames in [−1, 1], `[1, t, 3, h, w]`.
fn frames(t: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    let n = t * 3 * h * w;
    let data: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 251) as f32 / 125.0) - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (1, t, 3, h, w), dev)?)
}

/// Runs every stage of the bundle at `policy`: `runs` runs of `iters` calls each.
pub fn bench_models(
    policy: &Path,
    runs: usize,
    iters: usize,
    windows: &[usize],
) -> Result<ModelsBench> {
    let dev = Device::Cpu;
    let bundle = LoadedPolicy::load(policy, &dev)?;
    let limits = machine_limits(1024, 256, 5)?;
    let dldm: &Dldm = &bundle.dldm;
    let cfg = dldm.config().clone();
    let [ih, iw] = bundle.spec.image_size;
    let (lh, lw) = (ih / cfg.patch_size, iw / cfg.patch_size);
    let s = cfg.patch_size;
    let mut stages = Vec::new();
    for &wn in windows {
        let clip = frames(1 + s * wn, ih, iw, &dev)?;
        // A window re-encode: every latent frame of the window, for its newest step.
        let work = encoder_work(&cfg, lh, lw, 1 + wn, 0);
        stages.push(time_stage(
            &format!("encoder step, window W={wn} (re-encode)"),
            runs,
            iters,
            Some(work),
            &limits,
            || {
                dldm.encode(&clip)?;
                Ok(())
            },
        )?);
        // The stream at the same history: only the 4 new frames.
        let mut stream = EncoderStream::default();
        dldm.stream_first(&mut stream, &clip.narrow(1, 0, 1)?)?;
        for k in 0..wn.saturating_sub(1) {
            dldm.stream_step(&mut stream, &clip.narrow(1, 1 + s * k, s)?)?;
        }
        let newest = clip.narrow(1, 1 + s * (wn - 1), s)?;
        let base = stream.clone();
        let work = encoder_work(&cfg, lh, lw, 1, wn);
        stages.push(time_stage(
            &format!("encoder step, stream at history {wn}"),
            runs,
            iters,
            Some(work),
            &limits,
            || {
                let mut st = base.clone();
                dldm.stream_step(&mut st, &newest)?;
                Ok(())
            },
        )?);
    }

    // AR: prefill, then per-token decode at the context of one step after the prefix.
    let ar = &bundle.ar;
    let acfg = ar.config().clone();
    let instruction = instruction_tensor("open the drawer", acfg.instruction_dim, &dev)?;
    let f0 = dldm.encode_features(&frames(1, ih, iw, &dev)?)?;
    let (_, _, f, fh, fw) = f0.dims5()?;
    let prefix = f0.reshape((1, f, fh * fw))?.transpose(1, 2)?.contiguous()?;
    let p = acfg.prefix_len();
    stages.push(time_stage(
        "AR prefill",
        runs,
        iters,
        Some(ar_prefill_work(&acfg, p)),
        &limits,
        || {
            let mut cache = ar.new_cache();
            ar.prefill(&mut cache, &instruction, &prefix)?;
            Ok(())
        },
    )?);
    let mut primed = ar.new_cache();
    ar.prefill(&mut primed, &instruction, &prefix)?;
    let n = acfg.codes_per_step;
    let mut sampler = Sampler::new(Sampling::Greedy, 0).with_vocab_size(acfg.vocab_size);
    let decode = time_stage(
        &format!("AR decode, one step of {n} tokens"),
        runs,
        iters,
        Some({
            let one = ar_decode_work(&acfg, p + n / 2);
            Work {
                flop: one.flop * n as f64,
                bytes: one.bytes * n as f64,
            }
        }),
        &limits,
        || {
            let mut cache = primed.clone();
            ar.generate_step_codes(&mut cache, &mut sampler)?;
            Ok(())
        },
    )?;
    stages.push(StageBench {
        stage: "AR decode, per token".into(),
        p50_ms: decode.p50_ms / n as f64,
        p99_ms: decode.p99_ms / n as f64,
        run_p50_ms: decode.run_p50_ms.iter().map(|v| v / n as f64).collect(),
        mflop: decode.mflop.map(|v| v / n as f64),
        mbytes: decode.mbytes.map(|v| v / n as f64),
        ..decode.clone()
    });
    stages.push(decode);

    // Head on the predicted codes and the newest features.
    let codes = Tensor::new(vec![1u32; n].as_slice(), &dev)?.unsqueeze(0)?;
    let visual = bundle.head_visual(&f0)?;
    let proprio_dim = match &bundle.head {
        super::bundle::Head::Mlp(h) => h.config().proprio_dim,
        super::bundle::Head::Onnx(_) => 0,
    };
    let proprio = (proprio_dim > 0)
        .then(|| Tensor::zeros((1, proprio_dim), DType::F32, &dev))
        .transpose()?;
    let head_instruction = bundle.head_instruction("open the drawer", &dev)?;
    let head_params = bundle
        .reports
        .iter()
        .find(|r| r.component == "head")
        .map_or(0, |r| r.parameters) as f64;
    stages.push(time_stage(
        "action head",
        runs,
        iters,
        Some(Work {
            flop: 2.0 * head_params,
            bytes: 4.0 * head_params,
        }),
        &limits,
        || {
            bundle.head_forward(&codes, &visual, proprio.as_ref(), head_instruction.as_ref())?;
            Ok(())
        },
    )?);

    // Coarse decoder: frame 0's features and one step of codes → 1 + 4 frames.
    let idx = Tensor::new(vec![1u32; n].as_slice(), &dev)?.reshape((1, 1, n))?;
    stages.push(time_stage(
        "coarse decoder, one step",
        runs,
        iters,
        None, // not counted layer by layer
        &limits,
        || {
            dldm.decode_indices(&f0, &idx)?;
            Ok(())
        },
    )?);
    Ok(ModelsBench {
        policy: policy.display().to_string(),
        limits,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_work_walks_the_tiny_encoder() {
        // Counted by hand for DldmConfig::tiny() at 8×8 latents, one new frame:
        // conv_in 1 769 472 + 24 576; level 0 block 196 608, downsample 18 432 + 2 048;
        // level 1 block 163 840; mid blocks 393 216; mid attention projections 65 536,
        // spatial 16 384, temporal 1 024 (one key).
        let cfg = DldmConfig::tiny();
        let w = encoder_work(&cfg, 8, 8, 1, 0);
        assert_eq!(w.flop, 2_651_136.0);
        // History only adds the temporal attention's 4·keys·C·hw per new frame.
        let w9 = encoder_work(&cfg, 8, 8, 1, 8);
        assert_eq!(w9.flop - w.flop, 4.0 * 8.0 * 16.0 * 16.0);
        // Nine new frames cost nine times the convs.
        let w_all = encoder_work(&cfg, 8, 8, 9, 0);
        assert!(w_all.flop > 8.9 * w.flop && w_all.flop < 9.5 * w.flop);
    }
}
