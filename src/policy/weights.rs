//! Weight files: safetensors (mmap), PyTorch pickles with the official
//! VideoWorld 2 key map, validation, and a seeded random initializer.
//!
//! Every error names the file, the key, and the expected and found shapes.
//!
//! ## Key names
//! Our dLDM's parameter names are the official VideoWorld 2 names below the
//! checkpoint's `network.` prefix (`encoder.*` with the QFormer inside it,
//! `quant_conv.*`, `post_quant_conv.*`, `decoder.*`; `tests/official_dldm.rs` checks the full
//! list). A file whose keys carry `network.` (an official checkpoint, `.pt` or
//! `.safetensors`) is read with the prefix stripped, and its keys without the
//! prefix (optimizer, EMA, trainer state) are outside the model: skipped and
//! counted. A file without the prefix (our bundles) is read as it is.
//!
//! Loading is strict ([`build_strict`]): the model is first built on a backend
//! that only records what it asks for, the file is compared with that, and one
//! error lists every missing, unexpected and mis-shaped key, grouped by module.
//! Keys a component never uses (for the dLDM: the DiT connector
//! `quant_to_dit_dim.*` and the Haar patchers' fixed buffers) are skipped and
//! counted, never an error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The on-disk format of a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// A `.safetensors` file, memory-mapped.
    Safetensors,
    /// A PyTorch `.pt`/`.pth` pickle (state dict), read with candle's pickle reader.
    Pytorch,
    /// An ONNX graph (action heads only).
    Onnx,
}

impl WeightFormat {
    /// Guesses the format from the file extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "safetensors" => Some(Self::Safetensors),
            "pt" | "pth" | "ckpt" => Some(Self::Pytorch),
            "onnx" => Some(Self::Onnx),
            _ => None,
        }
    }
}

/// The floating-point type weights are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 32-bit float.
    #[default]
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

impl WeightDtype {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// The prefix of the dLDM's keys in official VideoWorld 2 checkpoints.
pub const OFFICIAL_PREFIX: &str = "network.";

/// Key prefixes (after `network.`) that the dLDM never reads: the DiT connector
/// and the fixed Haar buffers of the patcher and unpatcher.
pub const DLDM_SKIPPED_PREFIXES: &[&str] = &[
    "quant_to_dit_dim.",
    "encoder.patcher3d.",
    "decoder.unpatcher3d.",
];

/// Places the keys of a file: with `official` (some key starts with `network.`),
/// `network.X` becomes `X` and every other key is outside the model (`None`).
fn place_key(key: &str, official: bool) -> Option<&str> {
    if official {
        key.strip_prefix(OFFICIAL_PREFIX)
    } else {
        Some(key)
    }
}

enum Source {
    /// Memory-mapped safetensors, with our key → the file's key.
    Mmap(
        candle_core::safetensors::MmapedSafetensors,
        HashMap<String, String>,
    ),
    Map(HashMap<String, Tensor>),
}

/// A validated weight file that serves tensors to a `VarBuilder`, with errors
/// that name the file, the key and the shapes. Tracks which keys were read.
pub struct WeightFile {
    path: PathBuf,
    source: Source,
    keys: Vec<String>,
    shapes: HashMap<String, Vec<usize>>,
    outside: Vec<String>,
    used: Mutex<HashSet<String>>,
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

impl WeightFile {
    /// Opens `path` in `format`. For PyTorch files, `state_key` selects a
    /// nested state dict (e.g. `model`), and the official key map is applied.
    pub fn open(
        path: &Path,
        format: WeightFormat,
        state_key: Option<&str>,
    ) -> candle_core::Result<Self> {
        let shown = path.display();
        if !path.exists() {
            return Err(err(format!("{shown}: weight file not found")));
        }
        let mut shapes = HashMap::new();
        let mut outside = Vec::new();
        let source = match format {
            WeightFormat::Safetensors => {
                // SAFETY: the file is mapped read-only; we never write to it while mapped.
                let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                    .map_err(|e| err(format!("{shown}: not a readable safetensors file: {e}")))?;
                let all = st.tensors();
                let official = all.iter().any(|(k, _)| k.starts_with(OFFICIAL_PREFIX));
                let mut names = HashMap::new();
                for (k, view) in all {
                    match place_key(&k, official) {
                        Some(ours) => {
                            shapes.insert(ours.to_string(), view.shape().to_vec());
                            names.insert(ours.to_string(), k.clone());
                        }
                        None => outside.push(k.clone()),
                    }
                }
                Source::Mmap(st, names)
            }
            WeightFormat::Pytorch => {
                let all = candle_core::pickle::read_all_with_key(path, state_key)
                    .map_err(|e| err(format!("{shown}: not a readable PyTorch checkpoint: {e}")))?;
                let official = all.iter().any(|(k, _)| k.starts_with(OFFICIAL_PREFIX));
                let mut map = HashMap::new();
                for (k, t) in all {
                    match place_key(&k, official) {
                        Some(ours) => {
                            shapes.insert(ours.to_string(), t.dims().to_vec());
                            map.insert(ours.to_string(), t);
                        }
                        None => outside.push(k),
                    }
                }
                Source::Map(map)
            }
            WeightFormat::Onnx => {
                return Err(err(format!(
                    "{shown}: ONNX files hold whole graphs; load them as an ONNX action head"
                )))
            }
        };
        if shapes.is_empty() {
            return Err(err(format!(
                "{shown}: holds no tensor{}",
                if outside.is_empty() {
                    String::new()
                } else {
                    format!(
                        " under '{OFFICIAL_PREFIX}' (found {} keys outside it)",
                        outside.len()
                    )
                }
            )));
        }
        let mut keys: Vec<String> = shapes.keys().cloned().collect();
        keys.sort();
        outside.sort();
        Ok(Self {
            path: path.to_path_buf(),
            source,
            keys,
            shapes,
            outside,
            used: Mutex::new(HashSet::new()),
        })
    }

    /// Opens a file, guessing the format from its extension.
    pub fn open_auto(path: &Path) -> candle_core::Result<Self> {
        let format = WeightFormat::from_path(path).ok_or_else(|| {
            err(format!(
                "{}: unknown weight format: expected .safetensors, .pt or .pth",
                path.display()
            ))
        })?;
        Self::open(path, format, None)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key in the file (after the key map), sorted.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The shape of `key` (after the key map), if the file holds it.
    pub fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.shapes.get(key).map(Vec::as_slice)
    }

    /// The tensor stored under `key` (after the key map), in its stored dtype.
    pub fn tensor(&self, key: &str) -> candle_core::Result<Tensor> {
        self.raw(key)
    }

    /// Keys of an official checkpoint outside `network.` (optimizer, EMA, trainer state).
    pub fn outside_keys(&self) -> &[String] {
        &self.outside
    }

    /// Keys that the model never asked for (usually a key-map mistake).
    pub fn unused_keys(&self) -> Vec<String> {
        let used = self.used.lock().expect("weight key set poisoned");
        self.keys
            .iter()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect()
    }

    /// Number of scalar parameters the model read from this file.
    pub fn used_parameter_count(&self) -> candle_core::Result<usize> {
        let used: Vec<String> = self
            .used
            .lock()
            .expect("weight key set poisoned")
            .iter()
            .cloned()
            .collect();
        let mut n = 0;
        for k in used {
            n += self.raw(&k)?.elem_count();
        }
        Ok(n)
    }

    fn raw(&self, name: &str) -> candle_core::Result<Tensor> {
        let shown = self.path.display();
        match &self.source {
            Source::Mmap(st, names) => {
                let Some(file_key) = names.get(name) else {
                    return Err(err(format!("{shown}: missing key '{name}'")));
                };
                st.load(file_key, &Device::Cpu)
                    .map_err(|e| err(format!("{shown}: key '{file_key}' cannot be read: {e}")))
            }
            Source::Map(m) => m
                .get(name)
                .cloned()
                .ok_or_else(|| err(format!("{shown}: missing key '{name}'"))),
        }
    }

    fn checked(
        &self,
        name: &str,
        expected: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let shown = self.path.display();
        let t = self.raw(name).map_err(|e| match expected {
            Some(s) if !self.shapes.contains_key(name) => err(format!(
                "{shown}: missing key '{name}' (expected shape {:?})",
                s.dims()
            )),
            _ => e,
        })?;
        if let Some(s) = expected {
            if t.shape() != s {
                return Err(err(format!(
                    "{shown}: key '{name}': expected shape {:?}, found {:?}",
                    s.dims(),
                    t.dims()
                )));
            }
        }
        if t.dtype().is_float() {
            let finite = t
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                return Err(err(format!(
                    "{shown}: key '{name}': contains NaN or Inf values"
                )));
            }
        }
        self.used
            .lock()
            .expect("weight key set poisoned")
            .insert(name.to_string());
        t.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for WeightFile {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.checked(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.checked(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

/// What a model asks of its weights: key → shape, in the order of the keys.
pub type ExpectedKeys = BTreeMap<String, Vec<usize>>;

/// A `VarBuilder` backend that serves zeros (without allocating them) and records
/// the name and shape of every tensor asked for.
struct ShapeRecorder {
    seen: Mutex<ExpectedKeys>,
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.seen
            .lock()
            .expect("shape recorder poisoned")
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(err(format!(
            "'{name}': the model asked for a tensor without a shape"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Every key and shape that `build` reads from its `VarBuilder`, found by building
/// it on zeros that are never allocated (cheap even at the official size).
pub fn expected_keys<T>(
    dtype: DType,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<ExpectedKeys> {
    let rec = std::sync::Arc::new(ShapeRecorder {
        seen: Mutex::new(BTreeMap::new()),
    });
    let vb = VarBuilder::from_backend(Box::new(ArcBackend(rec.clone())), dtype, Device::Cpu);
    build(vb)?;
    let seen = rec.seen.lock().expect("shape recorder poisoned").clone();
    Ok(seen)
}

/// How a weight file's keys compare with what a model reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeyReport {
    /// Keys the model reads that the file lacks, with the expected shape.
    pub missing: Vec<(String, Vec<usize>)>,
    /// Keys in the file that the model does not read (and no skip rule covers), with their shape.
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// Keys in both whose shapes differ: (key, expected, found).
    pub misshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
    /// Keys skipped by rule, counted per rule (`network.`-less keys under `outside network.`).
    pub skipped: BTreeMap<String, usize>,
    /// Keys placed: read by the model with the right shape.
    pub placed: usize,
}

/// The module a key belongs to, for grouping: its path without the last two parts
/// (`encoder.down.0.block.1.conv1.0.conv3d.weight` → `encoder.down.0.block.1.conv1`),
/// at most five parts deep.
fn module_of(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let keep = parts.len().saturating_sub(2).clamp(1, 5);
    parts[..keep].join(".")
}

impl KeyReport {
    /// Compares `file` with `expected`; keys under `skip_prefixes` are counted, not checked.
    pub fn compare(file: &WeightFile, expected: &ExpectedKeys, skip_prefixes: &[&str]) -> Self {
        let mut r = KeyReport::default();
        if !file.outside_keys().is_empty() {
            r.skipped.insert(
                format!("outside {OFFICIAL_PREFIX}"),
                file.outside_keys().len(),
            );
        }
        for key in file.keys() {
            if expected.contains_key(key) {
                continue;
            }
            match skip_prefixes.iter().find(|p| key.starts_with(*p)) {
                Some(p) => *r.skipped.entry(format!("{p}*")).or_insert(0) += 1,
                None => r
                    .unexpected
                    .push((key.clone(), file.shape_of(key).unwrap_or_default().to_vec())),
            }
        }
        for (key, want) in expected {
            match file.shape_of(key) {
                None => r.missing.push((key.clone(), want.clone())),
                Some(found) if found != want.as_slice() => {
                    r.misshaped
                        .push((key.clone(), want.clone(), found.to_vec()))
                }
                Some(_) => r.placed += 1,
            }
        }
        r
    }

    /// True when nothing is missing or mis-shaped, and nothing unexpected unless allowed.
    pub fn is_ok(&self, allow_unexpected: bool) -> bool {
        self.missing.is_empty()
            && self.misshaped.is_empty()
            && (allow_unexpected || self.unexpected.is_empty())
    }

    /// Keys skipped by rule, in all.
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    /// The problems, grouped by module, one line each.
    pub fn describe(&self) -> String {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, s) in &self.missing {
            groups
                .entry(module_of(k))
                .or_default()
                .push(format!("missing     {k} (expected {s:?})"));
        }
        for (k, s) in &self.unexpected {
            groups
                .entry(module_of(k))
                .or_default()
                .push(format!("unexpected  {k} (found {s:?})"));
        }
        for (k, want, found) in &self.misshaped {
            groups.entry(module_of(k)).or_default().push(format!(
                "mis-shaped  {k}: expected {want:?}, found {found:?}"
            ));
        }
        let mut out = format!(
            "{} missing, {} unexpected, {} mis-shaped ({} placed, {} skipped)",
            self.missing.len(),
            self.unexpected.len(),
            self.misshaped.len(),
            self.placed,
            self.skipped_total()
        );
        for (module, lines) in groups {
            out.push_str(&format!("\n  {module}:"));
            for l in lines {
                out.push_str(&format!("\n    {l}"));
            }
        }
        out
    }
}

/// Builds a model from `file` strictly: every key the model reads must be there
/// with its shape, and (unless `allow_unexpected`) every key in the file must be
/// read or skipped by `skip_prefixes`. On failure one error lists every problem.
pub fn build_strict<T>(
    file: &std::sync::Arc<WeightFile>,
    skip_prefixes: &[&str],
    allow_unexpected: bool,
    dtype: DType,
    dev: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> candle_core::Result<(T, KeyReport)> {
    let expected = expected_keys(dtype, &build)?;
    let report = KeyReport::compare(file, &expected, skip_prefixes);
    if !report.is_ok(allow_unexpected) {
        return Err(err(format!(
            "{}: the weights do not fit the model: {}",
            file.path().display(),
            report.describe()
        )));
    }
    let model = build(var_builder(file.clone(), dtype, dev))?;
    Ok((model, report))
}

/// A `VarBuilder` over a validated weight file. Keep the `Arc` to ask which
/// keys were used afterwards.
pub fn var_builder(
    file: std::sync::Arc<WeightFile>,
    dtype: DType,
    dev: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(ArcBackend(file)), dtype, dev.clone())
}

/// A backend shared behind an `Arc`, so its owner can ask it things after the
/// `VarBuilder` that took it is gone.
struct ArcBackend<B>(std::sync::Arc<B>);

impl<B: SimpleBackend> SimpleBackend for ArcBackend<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// A `VarBuilder` backend that creates every tensor from a seeded RNG (following
/// the init hint) and remembers it, so a random model is reproducible and can
/// be saved. Used for test policies.
pub struct SeededInit {
    rng: Mutex<rand::rngs::StdRng>,
    tensors: Mutex<BTreeMap<String, Tensor>>,
}

impl SeededInit {
    /// A new initializer with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            tensors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every tensor created so far, by key.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.tensors.lock().expect("init map poisoned").clone()
    }

    /// Saves every tensor created so far to a safetensors file, atomically.
    pub fn save(&self, path: &Path) -> candle_core::Result<()> {
        save_safetensors_atomic(&self.tensors(), path)
    }
}

/// The `VarBuilder` backend over a shared [`SeededInit`].
struct SeededBackend(std::sync::Arc<SeededInit>);

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(t) = self.0.tensors.lock().expect("init map poisoned").get(name) {
            return t.to_dtype(dtype)?.to_device(dev);
        }
        let n = s.elem_count();
        let data: Vec<f32> = {
            let mut rng = self.0.rng.lock().expect("init rng poisoned");
            match h {
                Init::Const(c) => vec![c as f32; n],
                Init::Uniform { lo, up } => {
                    (0..n).map(|_| rng.random_range(lo..up) as f32).collect()
                }
                Init::Randn { mean, stdev } => (0..n)
                    .map(|_| (mean + stdev * gauss(&mut *rng)) as f32)
                    .collect(),
                Init::Kaiming { .. } => {
                    let fan_in: usize = s.dims().iter().skip(1).product::<usize>().max(1);
                    let std = (1.0 / fan_in as f64).sqrt();
                    (0..n).map(|_| (std * gauss(&mut *rng)) as f32).collect()
                }
            }
        };
        let t = Tensor::from_vec(data, s, &Device::Cpu)?;
        self.0
            .tensors
            .lock()
            .expect("init map poisoned")
            .insert(name.to_string(), t.clone());
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.tensors.lock().expect("init map poisoned").get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(err(format!("seeded init: '{name}' needs a shape"))),
        }
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` that draws every tensor from `init`.
pub fn seeded_var_builder(init: std::sync::Arc<SeededInit>, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SeededBackend(init)), DType::F32, dev.clone())
}

fn gauss(rng: &mut impl Rng) -> f64 {
    // Box–Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The safetensors bytes of `tensors` (keys in order).
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> candle_core::Result<Vec<u8>> {
    safetensors::serialize(tensors.iter(), None)
        .map_err(|e| err(format!("cannot serialize safetensors: {e}")))
}

/// Writes tensors to `path` as safetensors, atomically ([`crate::base::fs::write_atomic`]:
/// temp file, fsync, rename).
pub fn save_safetensors_atomic(
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> candle_core::Result<()> {
    let bytes = safetensors_bytes(tensors)?;
    crate::base::fs::write_atomic(path, &bytes).map_err(|e| err(format!("{e:#}")))
}
