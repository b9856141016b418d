//! Training data from a CALVIN-format split ([`CalvinDataset`]).
//!
//! - [`StaticFrames`] reads **only** the `rgb_static` member of a frame file
//!   (no action, proprio or scene array is decoded) and resizes it to the
//!   model's image size exactly as [`Policy`](crate::policy::Policy) does.
//!   The dLDM warm-up and the code extraction read frames through it alone.
//! - [`segments`] cuts the split into instruction segments (one per language
//!   annotation inside an episode, or the whole episode with an empty
//!   instruction when it has none).
//! - [`encode_segments`] runs the frozen encoder over each segment the way the
//!   closed loop does (windows of at most `1 + s·W` frames ending at each
//!   latent-step boundary) and keeps the codes of every step and the features
//!   of every step's current frame.
//! - [`split_episodes`] and [`label_subset`] choose validation episodes and the
//!   labelled fraction, at the episode level, from seeded shuffles.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::npy::NpyDtype;
use crate::data::npz::NpzReader;
use crate::data::{CalvinDataset, Image};
use crate::model::dldm::Dldm;
use crate::model::head::{pool_features, VisualPool};

/// Reads static-camera frames of a split, resized to the model's image size,
/// with an optional in-memory cache. Only `rgb_static` is ever decoded.
pub struct StaticFrames {
    dataset: CalvinDataset,
    size: [usize; 2],
    cache: Mutex<HashMap<usize, Arc<Vec<u8>>>>,
    cache_capacity: usize,
}

impl StaticFrames {
    /// Frames of `dataset` at `size` = `[height, width]`; keeps up to
    /// `cache_mb` MiB of resized frames in memory.
    pub fn new(dataset: CalvinDataset, size: [usize; 2], cache_mb: usize) -> Self {
        let per_frame = (size[0] * size[1] * 3).max(1);
        Self {
            dataset,
            size,
            cache: Mutex::new(HashMap::new()),
            cache_capacity: cache_mb * 1024 * 1024 / per_frame,
        }
    }

    /// The split.
    pub fn dataset(&self) -> &CalvinDataset {
        &self.dataset
    }

    /// `[height, width]` of the returned frames.
    pub fn size(&self) -> [usize; 2] {
        self.size
    }

    /// Reads `rgb_static` of frame `idx` as stored (no resize).
    pub fn read_raw(&self, idx: usize) -> Result<Image> {
        read_static_image(&self.dataset.frame_path(idx))
    }

    /// Frame `idx` resized to the model size, HWC RGB bytes.
    pub fn frame(&self, idx: usize) -> Result<Arc<Vec<u8>>> {
        if let Some(f) = self.cache.lock().expect("frame cache").get(&idx) {
            return Ok(f.clone());
        }
        let img = self.read_raw(idx)?;
        let size = self.size;
        let data = crate::base::image::preprocess(&img, size).into_owned().data;
        let data = Arc::new(data);
        let mut cache = self.cache.lock().expect("frame cache");
        if cache.len() < self.cache_capacity {
            cache.insert(idx, data.clone());
        }
        Ok(data)
    }

    /// Frames `idxs` as model input `[1, T, 3, H, W]` in [−1, 1].
    pub fn clip(&self, idxs: &[usize], dev: &Device) -> Result<Tensor> {
        let clips = self.clips(&[idxs.to_vec()], dev)?;
        Ok(clips)
    }

    /// Several clips of equal length as model input `[B, T, 3, H, W]` in [−1, 1].
    pub fn clips(&self, clips: &[Vec<usize>], dev: &Device) -> Result<Tensor> {
        let b = clips.len();
        ensure!(b > 0, "no clips to load");
        let t = clips[0].len();
        ensure!(
            clips.iter().all(|c| c.len() == t),
            "clips of a batch must have equal lengths"
        );
        let [h, w] = self.size;
        let mut bytes = Vec::with_capacity(b * t * h * w * 3);
        for c in clips {
            for &i in c {
                bytes.extend_from_slice(&self.frame(i)?);
            }
        }
        let u8s = Tensor::from_vec(bytes, (b, t, h, w, 3), dev)?;
        Ok(Dldm::frames_from_u8(&u8s, DType::F32)?)
    }
}

/// Reads the `rgb_static` member of one frame file and nothing else.
pub fn read_static_image(path: &Path) -> Result<Image> {
    let npz = NpzReader::open(path)?;
    let a = npz.array("rgb_static")?;
    ensure!(
        a.dtype == NpyDtype::U8 && a.shape.len() == 3 && a.shape[2] == 3,
        "{}: key 'rgb_static': expected a uint8 [H, W, 3] image, found {} {:?}",
        path.display(),
        a.dtype.name(),
        a.shape
    );
    Ok(Image {
        height: a.shape[0],
        width: a.shape[1],
        data: a.data,
    })
}

/// Reads `robot_obs` and `rel_actions` of one frame file (labelled data only).
pub fn read_proprio_and_action(path: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let npz = NpzReader::open(path)?;
    let get = |key: &str, n: usize| -> Result<Vec<f64>> {
        let a = npz.array(key)?;
        let v = a.to_f64_vec()?;
        ensure!(
            v.len() == n,
            "{}: key '{key}': expected {n} values, found {}",
            path.display(),
            v.len()
        );
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: key '{key}': value {i} is {} (expected finite)",
                path.display(),
                v[i]
            );
        }
        Ok(v)
    };
    Ok((
        get("robot_obs", crate::data::calvin::ROBOT_OBS_DIM)?,
        get("rel_actions", crate::data::calvin::ACTION_DIM)?,
    ))
}

/// Start frames of the unlabelled clips of `frames` frames each, every
/// `stride` frames inside each episode.
pub fn clip_starts(episodes: &[(usize, usize)], frames: usize, stride: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for &(s, e) in episodes {
        let mut start = s;
        while start + frames <= e + 1 {
            out.push(start);
            start += stride.max(1);
        }
    }
    out
}

/// A stretch of an episode with one instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Index of the episode in `ep_start_end_ids.npy`.
    pub episode: usize,
    /// First frame (inclusive).
    pub start: usize,
    /// Last frame (inclusive).
    pub end: usize,
    /// The language annotation (empty when there is none).
    pub instruction: String,
}

impl Segment {
    /// Frames in the segment.
    pub fn len(&self) -> usize {
        self.end + 1 - self.start
    }

    /// True when the segment has no frame (never, for valid segments).
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// The segments of a split: each language annotation that lies inside an
/// episode is a segment (recorded datasets annotate whole episodes; CALVIN
/// annotates windows of its long play episodes); an episode without any
/// annotation is one segment with an empty instruction.
pub fn segments(ds: &CalvinDataset) -> Vec<Segment> {
    let lang = ds.language();
    let mut out = Vec::new();
    for (ep, &(s, e)) in ds.episodes().iter().enumerate() {
        let mut inside: Vec<Segment> = lang
            .map(|l| {
                l.indx
                    .iter()
                    .zip(&l.ann)
                    .filter(|((a, b), _)| s <= *a && *a <= *b && *b <= e)
                    .map(|(&(a, b), ann)| Segment {
                        episode: ep,
                        start: a,
                        end: b,
                        instruction: ann.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        inside.sort_by_key(|g| (g.start, g.end));
        if inside.is_empty() {
            out.push(Segment {
                episode: ep,
                start: s,
                end: e,
                instruction: String::new(),
            });
        } else {
            out.extend(inside);
        }
    }
    out
}

/// What the frozen encoder made of one segment.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    /// The segment.
    pub segment: Segment,
    /// Latent steps K = ⌊(len − 1) / s⌋.
    pub steps: usize,
    /// Codes of steps 1..=K, N each (`steps · N` values).
    pub codes: Vec<u32>,
    /// Pooled features of the current frame at steps 0..=K (frame `s·k`),
    /// [`POOLED_PER_CHANNEL`]` · F` values per step ([`VisualPool::Keypoints`]:
    /// the channel means, then the keypoints; a `mean` head takes the first F);
    /// step 0 is frame 0 alone.
    pub pooled: Vec<f32>,
    /// First-frame visual tokens `[M, F]` (adaptive-average-pooled from the
    /// `h·w` feature tokens as the AR does), when asked for.
    pub prefix_tokens: Option<Vec<f32>>,
}

/// Values per feature channel in [`EncodedSegment::pooled`] (mean, x, y).
pub const POOLED_PER_CHANNEL: usize = 3;

/// Options of [`encode_segments`].
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Latent steps of history the encoder sees (`PolicyOptions::window_latent_steps`).
    pub window_latent_steps: usize,
    /// Pool the first frame's feature tokens to this many AR visual tokens.
    pub visual_tokens: Option<usize>,
}

/// Adaptive average pooling of `[n, f]` tokens to `[m, f]` (rows
/// `⌊i·n/m⌋..⌈(i+1)·n/m⌉`), as the AR pools its visual prefix.
pub fn adaptive_pool_tokens(tokens: &[f32], n: usize, f: usize, m: usize) -> Vec<f32> {
    if n == m {
        return tokens.to_vec();
    }
    let mut out = vec![0f32; m * f];
    for i in 0..m {
        let start = (i * n) / m;
        let end = ((i + 1) * n).div_ceil(m);
        let w = 1.0 / (end - start) as f32;
        for j in start..end {
            for c in 0..f {
                out[i * f + c] += w * tokens[j * f + c];
            }
        }
    }
    out
}

/// Runs the frozen encoder over every segment, mirroring the closed loop: the
/// codes of step j come from the window of frames `[s·max(0, j − W), s·j]`
/// (its newest step), the current features at step j from the newest latent
/// frame of that window, and step 0 from frame 0 alone. The encoder is causal,
/// so the windows that start at frame 0 (j ≤ W) share one pass. Segments
/// shorter than `1 + s` frames are skipped.
pub fn encode_segments(
    dldm: &Dldm,
    frames: &StaticFrames,
    segs: &[Segment],
    opts: EncodeOptions,
    dev: &Device,
    progress: bool,
) -> Result<Vec<EncodedSegment>> {
    let s = dldm.config().patch_size;
    let n = dldm.config().num_queries;
    let w = opts.window_latent_steps.max(1);
    let bar = if progress {
        indicatif::ProgressBar::new(segs.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "encode {bar:30} {pos}/{len} segments [{elapsed} < {eta}]",
        )
        .expect("valid template"),
    );
    let mut out = Vec::new();
    for seg in segs {
        bar.inc(1);
        let k_total = (seg.len() - 1) / s;
        if k_total == 0 {
            continue;
        }
        let mut codes = Vec::with_capacity(k_total * n);
        let mut pooled: Vec<f32> = Vec::new();
        // One pass over the windows that start at frame 0.
        let k1 = k_total.min(w);
        let idxs: Vec<usize> = (seg.start..=seg.start + s * k1).collect();
        let enc = dldm.encode(&frames.clip(&idxs, dev)?)?;
        let feats = enc.features.detach();
        let (_, t_lat, f, fh, fw) = feats.dims5()?;
        for j in 0..t_lat {
            let pj = pool_features(&feats.narrow(1, j, 1)?, VisualPool::Keypoints)?;
            pooled.extend(pj.flatten_all()?.to_vec1::<f32>()?);
        }
        codes.extend(enc.indices.flatten_all()?.to_vec1::<u32>()?);
        let prefix_tokens = match opts.visual_tokens {
            Some(m) => {
                let toks = feats
                    .narrow(1, 0, 1)?
                    .reshape((f, fh * fw))?
                    .t()?
                    .contiguous()?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if fh * fw < m {
                    bail!(
                        "the first frame has {} feature tokens, fewer than the AR's num_visual_tokens = {m}",
                        fh * fw
                    );
                }
                Some(adaptive_pool_tokens(&toks, fh * fw, f, m))
            }
            None => None,
        };
        // Later steps: a sliding window of W latent steps.
        for j in (w + 1)..=k_total {
            let idxs: Vec<usize> = (seg.start + s * (j - w)..=seg.start + s * j).collect();
            let enc = dldm.encode(&frames.clip(&idxs, dev)?)?;
            let steps = enc.indices.dim(1)?;
            codes.extend(enc.indices.get(0)?.get(steps - 1)?.to_vec1::<u32>()?);
            let last = enc.features.dim(1)? - 1;
            let pj = pool_features(&enc.features.narrow(1, last, 1)?, VisualPool::Keypoints)?;
            pooled.extend(pj.flatten_all()?.to_vec1::<f32>()?);
        }
        debug_assert_eq!(codes.len(), k_total * n);
        debug_assert_eq!(pooled.len(), (k_total + 1) * POOLED_PER_CHANNEL * f);
        out.push(EncodedSegment {
            segment: seg.clone(),
            steps: k_total,
            codes,
            pooled,
            prefix_tokens,
        });
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Splits episodes `0..n` into (training pool, validation) with a shuffle
/// seeded by `val_seed`: `round(val_fraction · n)` validation episodes, at
/// least one when `val_fraction > 0` and `n ≥ 2`, never all of them. Both sorted.
pub fn split_episodes(n: usize, val_fraction: f64, val_seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(val_seed));
    let mut n_val = (val_fraction * n as f64).round() as usize;
    if val_fraction > 0.0 && n >= 2 {
        n_val = n_val.max(1);
    }
    n_val = n_val.min(n.saturating_sub(1));
    let mut val = order[..n_val].to_vec();
    let mut pool = order[n_val..].to_vec();
    val.sort_unstable();
    pool.sort_unstable();
    (pool, val)
}

/// The labelled episodes: `round(fraction · |pool|)` of them (at least one),
/// the first ones of a shuffle of `pool` seeded by `seed`; sorted. `fraction`
/// must be in (0, 1]; 1 gives the whole pool.
pub fn label_subset(pool: &[usize], fraction: f64, seed: u64) -> Result<Vec<usize>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("label fraction: expected 0 < fraction ≤ 1, found {fraction}");
    }
    if pool.is_empty() {
        return Err(anyhow!(
            "label fraction: no training episodes to choose from"
        ));
    }
    let mut order = pool.to_vec();
    order.sort_unstable();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let k = ((fraction * pool.len() as f64).round() as usize).clamp(1, pool.len());
    let mut chosen = order[..k].to_vec();
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_fit_inside_episodes() {
        assert_eq!(clip_starts(&[(0, 8), (9, 12)], 5, 4), vec![0, 4]);
        assert_eq!(clip_starts(&[(0, 3)], 5, 4), Vec::<usize>::new());
        assert_eq!(clip_starts(&[(10, 20)], 9, 2), vec![10, 12]);
    }

    #[test]
    fn adaptive_pool_matches_torch() {
        // 5 tokens → 2: rows 0..3 and 2..5.
        let t: Vec<f32> = (0..5).map(|i| i as f32).collect();
        assert_eq!(adaptive_pool_tokens(&t, 5, 1, 2), vec![1.0, 3.0]);
    }

    #[test]
    fn splits_are_episode_level_and_seeded() {
        let (pool, val) = split_episodes(10, 0.2, 0);
        assert_eq!(val.len(), 2);
        assert_eq!(pool.len(), 8);
        assert!(val.iter().all(|v| !pool.contains(v)));
        assert_eq!(split_episodes(10, 0.2, 0), (pool.clone(), val));
        assert_eq!(split_episodes(1, 0.2, 0).1.len(), 0);
        assert_eq!(split_episodes(2, 0.01, 0).1.len(), 1);
        let a = label_subset(&pool, 0.25, 1).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(label_subset(&pool, 1.0, 1).unwrap(), pool);
        assert!(label_subset(&pool, 0.0, 1).is_err());
        assert!(label_subset(&pool, 1.5, 1).is_err());
    }
}
