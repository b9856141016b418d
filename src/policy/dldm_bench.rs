//! `vw2 bench dldm`: the dLDM encoder and coarse decoder on one clip (by default the
//! official size on a 93-frame 240×416 clip), with time and peak memory per stage.
//! `--save DIR` also writes the weights, the clip and the outputs, so that a peer
//! implementation (`benches/dldm_torch.py`, PyTorch) can run the same work and
//! compare.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::model::dldm::{Dldm, DldmConfig};
use crate::policy::weights::{save_safetensors_atomic, seeded_var_builder, SeededInit};

/// What one `vw2 bench dldm` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DldmBench {
    /// The sizes benchmarked.
    pub config: DldmConfig,
    /// Clip length (frames) and size (px).
    pub frames: usize,
    /// Clip height (px).
    pub height: usize,
    /// Clip width (px).
    pub width: usize,
    /// Scalar parameters of the dLDM.
    pub parameters: usize,
    /// Threads candle's CPU kernels ran on.
    pub threads: usize,
    /// Encoder, QFormer and FSQ on the whole clip (s).
    pub encode_s: f64,
    /// Peak resident memory during the encode (MiB; VmHWM reset before the stage).
    pub encode_peak_mib: f64,
    /// Encoder on frame 0 alone (the decoder's starting features) (s).
    pub first_frame_s: f64,
    /// Coarse decoder from the first frame's features and every code (s).
    pub decode_s: f64,
    /// Peak resident memory during the decode (MiB).
    pub decode_peak_mib: f64,
    /// Resident memory of the process before the first stage (weights loaded) (MiB).
    pub baseline_mib: f64,
    /// Code indices `[steps, queries]` of the clip.
    pub indices: Vec<Vec<u32>>,
}

fn status_kib(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets the peak resident set (VmHWM) where the kernel allows it.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mib() -> f64 {
    status_kib("VmHWM:").unwrap_or(f64::NAN) / 1024.0
}

/// A deterministic clip in [−1, 1], `[1, T, 3, H, W]`: a bright square moving over a gradient.
pub fn synthetic_clip(frames: usize, height: usize, width: usize) -> candle_core::Result<Tensor> {
    let mut v = Vec::with_capacity(frames * 3 * height * width);
    for t in 0..frames {
        let cx = (t * width) / frames.max(1);
        for c in 0..3 {
            for y in 0..height {
                for x in 0..width {
                    let inside = x.abs_diff(cx) < width / 10 && y.abs_diff(height / 2) < height / 8;
                    let base = (x + y + 17 * c) as f32 / (width + height) as f32;
                    v.push(if inside { 1.0 } else { 2.0 * base - 1.0 });
                }
            }
        }
    }
    Tensor::from_vec(v, (1, frames, 3, height, width), &Device::Cpu)
}

/// Runs the benchmark; with `save`, writes `dldm.safetensors`, `clip.safetensors`
/// and `outputs.safetensors` (features, indices, decoded frames) and `config.json` there.
pub fn bench_dldm(
    config: &DldmConfig,
    frames: usize,
    height: usize,
    width: usize,
    seed: u64,
    save: Option<&Path>,
) -> anyhow::Result<DldmBench> {
    let s = config.spatial_compression();
    if frames % config.patch_size != 1 || !height.is_multiple_of(s) || !width.is_multiple_of(s) {
        anyhow::bail!(
            "clip {frames}×{height}×{width}: expected 1 + {}k frames and sizes divisible by {s}",
            config.patch_size
        );
    }
    let dev = Device::Cpu;
    let init = Arc::new(SeededInit::new(seed));
    let dldm = Dldm::new(config, seeded_var_builder(init.clone(), &dev))?;
    let parameters = init.tensors().values().map(|t| t.elem_count()).sum();
    let clip = synthetic_clip(frames, height, width)?;
    if let Some(dir) = save {
        std::fs::create_dir_all(dir)?;
        init.save(&dir.join("dldm.safetensors"))?;
        let mut m = BTreeMap::new();
        m.insert("frames".to_string(), clip.clone());
        save_safetensors_atomic(&m, &dir.join("clip.safetensors"))?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(config)?,
        )?;
    }
    drop(init);
    let baseline_mib = status_kib("VmRSS:").unwrap_or(f64::NAN) / 1024.0;

    reset_peak();
    let t0 = Instant::now();
    let out = dldm.encode(&clip)?;
    let encode_s = t0.elapsed().as_secs_f64();
    let encode_peak_mib = peak_mib();

    reset_peak();
    let t0 = Instant::now();
    let first = dldm.encode_features(&clip.narrow(1, 0, 1)?)?;
    let first_frame_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let decoded = dldm.decode(&first, &out.codes)?;
    let decode_s = t0.elapsed().as_secs_f64();
    let decode_peak_mib = peak_mib();

    let indices: Vec<Vec<u32>> = out.indices.squeeze(0)?.to_vec2()?;
    if let Some(dir) = save {
        let mut m = BTreeMap::new();
        m.insert("features".to_string(), out.features.clone());
        m.insert("first_features".to_string(), first);
        m.insert("indices".to_string(), out.indices.to_dtype(DType::I64)?);
        m.insert("decoded".to_string(), decoded);
        save_safetensors_atomic(&m, &dir.join("outputs.safetensors"))?;
    }
    Ok(DldmBench {
        config: config.clone(),
        frames,
        height,
        width,
        parameters,
        threads: candle_core::utils::get_num_threads(),
        encode_s,
        encode_peak_mib,
        first_frame_s,
        decode_s,
        decode_peak_mib,
        baseline_mib,
        indices,
    })
}
