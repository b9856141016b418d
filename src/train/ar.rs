//! Stage 2, the AR transformer: next-code prediction on the frozen encoder's
//! codes. Each segment is encoded once (as the closed loop would see it, see
//! [`encode_segments`]) and the result cached in the run folder; a training
//! item is a window of up to `seq_steps` consecutive latent steps of one
//! segment, conditioned on the segment's instruction embedding and the visual
//! tokens of its first frame. Loss: cross-entropy of every code of the window
//! given the prefix and the codes before it (`ArTransformer::forward_full`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::assemble::{
    assemble_bundle, calvin_relative_space, normalization_for, BundleParts, ComponentSource,
    DldmSource,
};
use super::config::{ActionNormalization, ArStageConfig};
use super::data::{
    encode_segments, segments, EncodeOptions, EncodedSegment, Segment, StaticFrames,
};
use super::ldm::{init_seed, seeded_varmap};
use super::run::{train_loop, varmap_tensors, RunOptions, TrainReport};
use crate::base::fs::write_atomic;
use crate::data::CalvinDataset;
use crate::model::ar::{ArConfig, ArTransformer};
use crate::model::head::{ActionHead, HeadConfig};
use crate::policy::instruction::embed_instruction;
use crate::policy::weights::save_safetensors_atomic;
use crate::policy::RandomPolicySizes;

/// File name of the trained AR weights in a run folder.
pub const AR_WEIGHTS: &str = "ar.safetensors";
/// File name of the code cache in a run folder.
pub const CODE_CACHE: &str = "code_cache.safetensors";

/// One training sequence: steps `first..first + len` of segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArItem {
    /// Index into the encoded segments.
    pub segment: usize,
    /// First latent step (0-based: step 1 of the segment is 0).
    pub first: usize,
    /// Steps in the window.
    pub len: usize,
}

/// Windows of `seq_steps` steps every `stride` steps over a segment of `k`
/// steps (the last window ends at the segment's end); a shorter segment is one
/// window.
pub fn sequence_windows(k: usize, seq_steps: usize, stride: usize) -> Vec<(usize, usize)> {
    if k <= seq_steps {
        return if k == 0 { vec![] } else { vec![(0, k)] };
    }
    let mut out = Vec::new();
    let mut s = 0;
    while s + seq_steps <= k {
        out.push((s, seq_steps));
        s += stride.max(1);
    }
    if out.last().is_some_and(|&(s, l)| s + l < k) {
        out.push((k - seq_steps, seq_steps));
    }
    out
}

/// Masked mean cross-entropy: `logits` `[B, L, V]`, `targets` u32 `[B, L]`,
/// `mask` f32 `[B, L]` (1 = counts). Differentiable.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, l, v) = logits.dims3()?;
    let logp = candle_nn::ops::log_softmax(&logits.reshape((b * l, v))?, D::Minus1)?;
    let picked = logp
        .gather(&targets.reshape((b * l, 1))?, 1)?
        .reshape((b, l))?;
    let m = mask.to_dtype(picked.dtype())?;
    let count = m.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((picked * m)?.sum_all()?.neg()? / count as f64)?)
}

/// The AR stage: a trainable transformer over cached codes.
pub struct ArStage {
    cfg: ArStageConfig,
    model_cfg: ArConfig,
    model: ArTransformer,
    varmap: VarMap,
    encoded: Vec<EncodedSegment>,
    instructions: Vec<Vec<f32>>,
    items: Vec<ArItem>,
    device: Device,
}

impl ArStage {
    /// Builds the stage from already encoded segments (`prefix_tokens` must be set).
    pub fn from_encoded(
        cfg: &ArStageConfig,
        model_cfg: &ArConfig,
        encoded: Vec<EncodedSegment>,
        seed: u64,
        dev: &Device,
    ) -> Result<Self> {
        cfg.validate().map_err(|e| anyhow!("ar config: {e}"))?;
        let n = model_cfg.codes_per_step;
        let room = (model_cfg.max_seq_len - model_cfg.prefix_len()) / n;
        if cfg.seq_steps > room {
            bail!(
                "ar config: seq_steps: expected at most (max_seq_len − prefix_len) / codes_per_step = {room}, found {}",
                cfg.seq_steps
            );
        }
        let mut items = Vec::new();
        for (i, e) in encoded.iter().enumerate() {
            if e.prefix_tokens.is_none() {
                bail!("segment {i} was encoded without AR visual tokens");
            }
            for (first, len) in sequence_windows(e.steps, cfg.seq_steps, cfg.seq_stride) {
                items.push(ArItem {
                    segment: i,
                    first,
                    len,
                });
            }
        }
        let instructions = encoded
            .iter()
            .map(|e| embed_instruction(&e.segment.instruction, model_cfg.instruction_dim))
            .collect();
        let (varmap, model) = seeded_varmap(init_seed(seed, "ar"), dev, |vb| {
            ArTransformer::new(model_cfg, vb)
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            model_cfg: model_cfg.clone(),
            model,
            varmap,
            encoded,
            instructions,
            items,
            device: dev.clone(),
        })
    }

    /// The trainable variables.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The model.
    pub fn model(&self) -> &ArTransformer {
        &self.model
    }

    /// The training sequences.
    pub fn items(&self) -> &[ArItem] {
        &self.items
    }

    /// The encoded segments.
    pub fn encoded(&self) -> &[EncodedSegment] {
        &self.encoded
    }

    /// Number of training sequences.
    pub fn num_items(&self) -> usize {
        self.items.len()
    }

    /// Mean next-code cross-entropy over the sequences `items` (padded to the
    /// longest; padding is masked out and, being after the real codes, never
    /// seen by them through the causal mask).
    pub fn loss(&self, items: &[usize]) -> Result<Tensor> {
        let n = self.model_cfg.codes_per_step;
        let m = self.model_cfg.num_visual_tokens;
        let f = self.model_cfg.visual_feature_dim;
        let idim = self.model_cfg.instruction_dim;
        let b = items.len();
        let lmax = items.iter().map(|&i| self.items[i].len).max().unwrap_or(0) * n;
        let mut ins = Vec::with_capacity(b * idim);
        let mut vis = Vec::with_capacity(b * m * f);
        let mut codes = vec![0u32; b * lmax];
        let mut mask = vec![0f32; b * lmax];
        for (r, &i) in items.iter().enumerate() {
            let it = self.items[i];
            let e = &self.encoded[it.segment];
            ins.extend_from_slice(&self.instructions[it.segment]);
            vis.extend_from_slice(e.prefix_tokens.as_ref().expect("checked"));
            let src = &e.codes[it.first * n..(it.first + it.len) * n];
            codes[r * lmax..r * lmax + src.len()].copy_from_slice(src);
            mask[r * lmax..r * lmax + src.len()].fill(1.0);
        }
        let dev = &self.device;
        let ins = Tensor::from_vec(ins, (b, idim), dev)?;
        let vis = Tensor::from_vec(vis, (b, m, f), dev)?;
        let codes = Tensor::from_vec(codes, (b, lmax), dev)?;
        let mask = Tensor::from_vec(mask, (b, lmax), dev)?;
        let logits = self.model.forward_full(&ins, &vis, &codes)?;
        masked_cross_entropy(&logits.narrow(1, 0, lmax)?, &codes, &mask)
    }

    /// The stage config.
    pub fn config(&self) -> &ArStageConfig {
        &self.cfg
    }
}

/// Saves encoded segments (with the metadata that identifies them) to `path`.
pub fn save_code_cache(path: &Path, key: &str, encoded: &[EncodedSegment]) -> Result<()> {
    let mut tensors = BTreeMap::new();
    let dev = Device::Cpu;
    for (i, e) in encoded.iter().enumerate() {
        let n = e.codes.len();
        tensors.insert(
            format!("{i}.codes"),
            Tensor::from_vec(e.codes.clone(), n, &dev)?,
        );
        let p = e.pooled.len();
        tensors.insert(
            format!("{i}.pooled"),
            Tensor::from_vec(e.pooled.clone(), p, &dev)?,
        );
        if let Some(t) = &e.prefix_tokens {
            tensors.insert(
                format!("{i}.prefix_tokens"),
                Tensor::from_vec(t.clone(), t.len(), &dev)?,
            );
        }
    }
    save_safetensors_atomic(&tensors, path)?;
    let meta = serde_json::json!({
        "key": key,
        "segments": encoded.iter().map(|e| (&e.segment, e.steps)).collect::<Vec<_>>(),
    });
    write_atomic(
        &path.with_extension("json"),
        serde_json::to_string(&meta)?.as_bytes(),
    )
}

/// Loads a cache written by [`save_code_cache`] when its key matches.
pub fn load_code_cache(path: &Path, key: &str) -> Result<Option<Vec<EncodedSegment>>> {
    let meta_path = path.with_extension("json");
    let Ok(text) = std::fs::read_to_string(&meta_path) else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    struct Meta {
        key: String,
        segments: Vec<(Segment, usize)>,
    }
    let meta: Meta = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    if meta.key != key || !path.is_file() {
        return Ok(None);
    }
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read code cache", path.display()))?;
    let mut out = Vec::new();
    for (i, (segment, steps)) in meta.segments.into_iter().enumerate() {
        let get = |k: &str| t.get(&format!("{i}.{k}"));
        let codes = get("codes")
            .ok_or_else(|| anyhow!("{}: missing {i}.codes", path.display()))?
            .to_vec1::<u32>()?;
        let pooled = get("pooled")
            .ok_or_else(|| anyhow!("{}: missing {i}.pooled", path.display()))?
            .to_vec1::<f32>()?;
        let prefix_tokens = get("prefix_tokens")
            .map(|x| x.to_vec1::<f32>())
            .transpose()?;
        out.push(EncodedSegment {
            segment,
            steps,
            codes,
            pooled,
            prefix_tokens,
        });
    }
    Ok(Some(out))
}

/// A cache key: what the cached encodings depend on.
pub fn cache_key(
    dataset: &Path,
    weights: &Path,
    window: usize,
    visual_tokens: Option<usize>,
    image: [usize; 2],
) -> String {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{}:{t}", m.len())
            })
            .unwrap_or_default()
    };
    let ds = CalvinDataset::open(dataset).ok();
    let ep = ds
        .map(|d| format!("{:?}", d.episodes()))
        .unwrap_or_default();
    format!(
        "dataset={} episodes={ep} weights={}@{} window={window} visual_tokens={visual_tokens:?} image={image:?} pooled=mean+keypoints",
        dataset.display(),
        weights.display(),
        stamp(weights)
    )
}

/// Encodes (or loads from `cache`) the segments of `dataset` with the frozen dLDM.
#[allow(clippy::too_many_arguments)]
pub fn encoded_dataset(
    dataset: &Path,
    dldm: &DldmSource,
    window: usize,
    visual_tokens: Option<usize>,
    frame_cache_mb: usize,
    cache: Option<&Path>,
    progress: bool,
    dev: &Device,
) -> Result<Vec<EncodedSegment>> {
    let key = cache_key(
        dataset,
        &dldm.component.weights,
        window,
        visual_tokens,
        dldm.image_size,
    );
    if let Some(c) = cache {
        if let Some(enc) = load_code_cache(c, &key)? {
            tracing::info!(cache = %c.display(), segments = enc.len(), "codes loaded from cache");
            return Ok(enc);
        }
    }
    let ds = CalvinDataset::open(dataset)?;
    let segs = segments(&ds);
    let model = dldm.load(dev)?;
    let frames = StaticFrames::new(ds, dldm.image_size, frame_cache_mb);
    let start = std::time::Instant::now();
    let enc = encode_segments(
        &model,
        &frames,
        &segs,
        EncodeOptions {
            window_latent_steps: window,
            visual_tokens,
        },
        dev,
        progress,
    )?;
    tracing::info!(
        segments = enc.len(),
        seconds = start.elapsed().as_secs_f64(),
        "codes extracted with the frozen encoder"
    );
    if let Some(c) = cache {
        save_code_cache(c, &key, &enc)?;
    }
    Ok(enc)
}

/// Options of [`train_ar`].
#[derive(Debug, Clone)]
pub struct ArTrainOptions {
    /// The CALVIN-format split.
    pub dataset: PathBuf,
    /// The trained dLDM: an ldm run folder or a policy bundle.
    pub dldm: PathBuf,
    /// Run folder.
    pub out: PathBuf,
    /// Stage config.
    pub config: ArStageConfig,
    /// Seed.
    pub seed: u64,
    /// Loop behaviour.
    pub run: RunOptions,
}

/// What [`train_ar`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ArTrainResult {
    /// The loop's report.
    pub report: TrainReport,
    /// Segments with at least one latent step.
    pub segments: usize,
    /// Training sequences.
    pub sequences: usize,
    /// The AR weights (when the run completed).
    pub weights: Option<PathBuf>,
    /// A loadable bundle: the dLDM, this AR and an untrained head (when completed).
    pub bundle: Option<PathBuf>,
}

/// Trains the AR stage into `opts.out`. On completion writes `ar.safetensors`
/// and `bundle/` (the dLDM + this AR + a seeded untrained MLP head + the
/// dataset's normalization), ready for `vw2 finetune-head --policy`.
pub fn train_ar(opts: &ArTrainOptions) -> Result<ArTrainResult> {
    let dev = Device::Cpu;
    let src = DldmSource::resolve(&opts.dldm)?;
    let model_cfg = opts
        .config
        .resolved_model(&src.component.config)
        .map_err(|e| anyhow!("ar config: {e}"))?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create run folder", opts.out.display()))?;
    let encoded = encoded_dataset(
        &opts.dataset,
        &src,
        opts.config.window_latent_steps,
        Some(model_cfg.num_visual_tokens),
        opts.config.frame_cache_mb,
        Some(&opts.out.join(CODE_CACHE)),
        opts.run.progress,
        &dev,
    )?;
    let stage = ArStage::from_encoded(&opts.config, &model_cfg, encoded, opts.seed, &dev)?;
    let identity = serde_yaml::to_string(&serde_json::json!({
        "stage": "ar",
        "seed": opts.seed,
        "config": opts.config,
        "model": model_cfg,
    }))?;
    let report = train_loop(
        "ar",
        &opts.out,
        &identity,
        stage.varmap(),
        &opts.config.train,
        opts.seed,
        stage.num_items(),
        &opts.run,
        |items| stage.loss(items),
    )?;
    let (mut weights, mut bundle) = (None, None);
    if report.completed {
        let path = opts.out.join(AR_WEIGHTS);
        save_safetensors_atomic(&varmap_tensors(stage.varmap()), &path)?;
        weights = Some(path.clone());
        bundle = Some(write_untrained_bundle(
            &opts.out.join("bundle"),
            &opts.dataset,
            &src,
            ComponentSource::safetensors(model_cfg.clone(), path),
            opts.seed,
        )?);
    }
    let result = ArTrainResult {
        report,
        segments: stage.encoded().len(),
        sequences: stage.num_items(),
        weights,
        bundle,
    };
    write_atomic(
        &opts.out.join("summary.json"),
        serde_json::to_string_pretty(&result)?.as_bytes(),
    )?;
    Ok(result)
}

/// The default head sizes for a dLDM (the tiny head with its widths).
pub fn default_head_config(dldm: &crate::model::dldm::DldmConfig) -> HeadConfig {
    let mut h = RandomPolicySizes::tiny().head;
    h.vocab_size = dldm.codebook_size();
    h.codes_per_step = dldm.num_queries;
    h.visual_dim = dldm.feature_channels();
    h.chunk = dldm.patch_size;
    h
}

/// Writes a bundle of the dLDM, a trained AR and a seeded untrained head.
fn write_untrained_bundle(
    out: &Path,
    dataset: &Path,
    dldm: &DldmSource,
    ar: ComponentSource<ArConfig>,
    seed: u64,
) -> Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let head_cfg = default_head_config(&dldm.component.config);
    let (varmap, _) = seeded_varmap(init_seed(seed, "head"), &Device::Cpu, |vb| {
        ActionHead::new(&head_cfg, vb)
    })?;
    let head_path = out.join("untrained_head.safetensors");
    save_safetensors_atomic(&varmap_tensors(&varmap), &head_path)?;
    let ds = CalvinDataset::open(dataset)?;
    let normalization = normalization_for(
        &ds,
        head_cfg.proprio_dim,
        super::head::TRAINED_PROPRIO_ENCODING,
        ActionNormalization::Identity,
        None,
    )?;
    let yaml = assemble_bundle(
        out,
        &BundleParts {
            name: "vw2-trained-no-head".into(),
            description: format!(
                "dLDM + AR trained on {} (seed {seed}); the action head is untrained (run vw2 finetune-head)",
                dataset.display()
            ),
            image_size: dldm.image_size,
            control_rate_hz: 30.0,
            action_space: calvin_relative_space(),
            normalization,
            dldm: dldm.component.clone(),
            ar,
            head: ComponentSource::safetensors(head_cfg, head_path.clone()),
        },
    )?;
    let _ = std::fs::remove_file(&head_path);
    Ok(yaml)
}

/// Teacher-forced next-code accuracy of a bundle's AR on the segments of a
/// dataset it did not train on (`vw2 eval codes`), beside the codebook usage
/// and the accuracy of repeating the previous step's codes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextCodeAccuracy {
    /// Segments with at least one latent step.
    pub segments: usize,
    /// Latent steps scored.
    pub steps: usize,
    /// Top-1 accuracy over every code.
    pub top1: f64,
    /// Top-1 accuracy of each query's code.
    pub top1_per_query: Vec<f64>,
    /// Fraction of steps whose N codes are all right.
    pub step_exact: f64,
    /// Top-1 accuracy over the codes of each segment's first step (what the AR
    /// predicts from the first frame and the instruction alone).
    pub first_step_top1: f64,
    /// Top-1 accuracy of the AR over the steps after the first.
    pub later_steps_top1: f64,
    /// Accuracy of repeating the previous step's codes, over the steps after the first.
    pub repeat_previous_top1: f64,
    /// Distinct codes the encoder gave over these segments.
    pub distinct_codes: usize,
    /// Distinct codes of each query.
    pub distinct_per_query: Vec<usize>,
    /// The dLDM on 9-frame clips of the dataset: codebook usage and how much
    /// its decoder relies on the codes (own codes against another clip's).
    pub dldm: super::ldm::CodeUsage,
}

/// Scores `policy`'s AR on `dataset` (encoded with the bundle's dLDM, a window
/// of `window` latent steps, in non-overlapping sequences of `seq_steps` as
/// the AR was trained).
pub fn next_code_accuracy(
    policy: &Path,
    dataset: &Path,
    window: usize,
    seq_steps: usize,
    progress: bool,
) -> Result<NextCodeAccuracy> {
    let dev = Device::Cpu;
    let loaded = crate::policy::bundle::LoadedPolicy::load(policy, &dev)?;
    let cfg = loaded.ar.config().clone();
    let src = DldmSource::resolve(policy)?;
    let encoded = encoded_dataset(
        dataset,
        &src,
        window,
        Some(cfg.num_visual_tokens),
        512,
        None,
        progress,
        &dev,
    )?;
    let n = cfg.codes_per_step;
    let room = (cfg.max_seq_len - cfg.prefix_len()) / n;
    let seq_steps = seq_steps.clamp(1, room.max(1));
    let (mut hits, mut total) = (vec![0usize; n], vec![0usize; n]);
    let (mut exact, mut steps) = (0usize, 0usize);
    let (mut first_hits, mut first_total) = (0usize, 0usize);
    let (mut later_hits, mut later_total) = (0usize, 0usize);
    let mut repeat_hits = 0usize;
    let mut all = std::collections::BTreeSet::new();
    let mut per_query = vec![std::collections::BTreeSet::new(); n];
    let mut segments = 0;
    for e in &encoded {
        if e.steps == 0 {
            continue;
        }
        segments += 1;
        let prefix = e.prefix_tokens.as_ref().ok_or_else(|| {
            anyhow!(
                "segment of episode {} has no visual tokens",
                e.segment.episode
            )
        })?;
        let ins = Tensor::from_vec(
            embed_instruction(&e.segment.instruction, cfg.instruction_dim),
            (1, cfg.instruction_dim),
            &dev,
        )?;
        let vis = Tensor::from_vec(
            prefix.clone(),
            (1, cfg.num_visual_tokens, cfg.visual_feature_dim),
            &dev,
        )?;
        let mut first = 0;
        while first < e.steps {
            let len = seq_steps.min(e.steps - first);
            let src = &e.codes[first * n..(first + len) * n];
            let codes = Tensor::from_vec(src.to_vec(), (1, len * n), &dev)?;
            let logits = loaded.ar.forward_full(&ins, &vis, &codes)?;
            let pred = logits
                .narrow(1, 0, len * n)?
                .argmax(D::Minus1)?
                .flatten_all()?
                .to_vec1::<u32>()?;
            for j in 0..len {
                let step = first + j;
                let mut all_right = true;
                for q in 0..n {
                    let want = src[j * n + q];
                    let ok = pred[j * n + q] == want;
                    all.insert(want);
                    per_query[q].insert(want);
                    hits[q] += ok as usize;
                    total[q] += 1;
                    all_right &= ok;
                    if step == 0 {
                        first_hits += ok as usize;
                        first_total += 1;
                    } else {
                        later_hits += ok as usize;
                        later_total += 1;
                        repeat_hits += (e.codes[(step - 1) * n + q] == want) as usize;
                    }
                }
                exact += all_right as usize;
                steps += 1;
            }
            first += len;
        }
    }
    if steps == 0 {
        bail!(
            "{}: no segment has a latent step to score",
            dataset.display()
        );
    }
    let ds = CalvinDataset::open(dataset)?;
    let s = src.component.config.patch_size;
    let mut k = 2;
    let mut starts = super::data::clip_starts(ds.episodes(), 1 + s * k, 4);
    if starts.is_empty() {
        k = 1;
        starts = super::data::clip_starts(ds.episodes(), 1 + s * k, 4);
    }
    let frames = StaticFrames::new(ds, src.image_size, 256);
    let dldm = super::ldm::code_usage(&loaded.dldm, &frames, &starts, 1 + s * k, false, 512, &dev)?;
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(NextCodeAccuracy {
        segments,
        steps,
        top1: ratio(hits.iter().sum(), total.iter().sum()),
        top1_per_query: hits
            .iter()
            .zip(&total)
            .map(|(&h, &t)| ratio(h, t))
            .collect(),
        step_exact: ratio(exact, steps),
        first_step_top1: ratio(first_hits, first_total),
        later_steps_top1: ratio(later_hits, later_total),
        repeat_previous_top1: ratio(repeat_hits, later_total),
        distinct_codes: all.len(),
        distinct_per_query: per_query.iter().map(|s| s.len()).collect(),
        dldm,
    })
}
