//! Weight files: safetensors (mmap), PyTorch pickles with the official
//! VideoWorld 2 key map, validation, and a seeded random initializer.
//!
//! Every error names the file, the key, and the expected and found shapes.
//!
//! ## Key map for official PyTorch checkpoints
//! | checkpoint key                   | our key                  |
//! |----------------------------------|--------------------------|
//! | `network.encoder.*`              | `encoder.*`              |
//! | `network.qformer.*`              | `qformer.*`              |
//! | `network.outproj_ldm.*`          | `outproj_ldm.*`          |
//! | `network.quant_conv.*`           | `quant_conv.*`           |
//! | `network.post_quant_conv.*`      | `post_quant_conv.*`      |
//! | `network.decoder.*`              | `decoder.*`              |
//! | `network.quant_to_dit_dim.*`     | ignored (DiT connector)  |
//! | anything without `network.`      | ignored (optimizer, EMA) |
//!
//! Convs keep the official `*.conv3d.{weight,bias}` names and norms
//! `*.norm.{weight,bias}`, so nothing below the prefix is renamed.

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

/// Maps an official checkpoint key to ours; `None` means "ignore this key".
pub fn map_official_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("network.")?;
    if rest.starts_with("quant_to_dit_dim.") {
        return None;
    }
    Some(rest.to_string())
}

enum Source {
    Mmap(candle_core::safetensors::MmapedSafetensors),
    Map(HashMap<String, Tensor>),
}

/// A validated weight file that serves tensors to a `VarBuilder`, with errors
/// that name the file, the key and the shapes. Tracks which keys were read.
pub struct WeightFile {
    path: PathBuf,
    source: Source,
    keys: Vec<String>,
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
        let (source, keys) = match format {
            WeightFormat::Safetensors => {
                // SAFETY: the file is mapped read-only; we never write to it while mapped.
                let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                    .map_err(|e| err(format!("{shown}: not a readable safetensors file: {e}")))?;
                let keys = st.tensors().into_iter().map(|(k, _)| k).collect();
                (Source::Mmap(st), keys)
            }
            WeightFormat::Pytorch => {
                let all = candle_core::pickle::read_all_with_key(path, state_key)
                    .map_err(|e| err(format!("{shown}: not a readable PyTorch checkpoint: {e}")))?;
                let mut map = HashMap::new();
                for (k, t) in all {
                    match map_official_key(&k) {
                        Some(ours) => {
                            map.insert(ours, t);
                        }
                        None => tracing::debug!(file = %shown, key = %k, "ignoring checkpoint key"),
                    }
                }
                if map.is_empty() {
                    return Err(err(format!(
                        "{shown}: no key starts with 'network.' (expected an official VideoWorld 2 dLDM checkpoint)"
                    )));
                }
                let keys = map.keys().cloned().collect();
                (Source::Map(map), keys)
            }
            WeightFormat::Onnx => {
                return Err(err(format!(
                    "{shown}: ONNX files hold whole graphs; load them as an ONNX action head"
                )))
            }
        };
        let mut keys: Vec<String> = keys;
        keys.sort();
        Ok(Self {
            path: path.to_path_buf(),
            source,
            keys,
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
            Source::Mmap(st) => {
                if !self.keys.iter().any(|k| k == name) {
                    return Err(err(format!("{shown}: missing key '{name}'")));
                }
                st.load(name, &Device::Cpu)
                    .map_err(|e| err(format!("{shown}: key '{name}' cannot be read: {e}")))
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
            Some(s) if !self.keys.iter().any(|k| k == name) => err(format!(
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
        self.keys.iter().any(|k| k == name)
    }
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

struct ArcBackend(std::sync::Arc<WeightFile>);

impl SimpleBackend for ArcBackend {
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

/// Writes tensors to `path` as safetensors, via a temp file and a rename.
pub fn save_safetensors_atomic(
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> candle_core::Result<()> {
    let tmp = tmp_path(path);
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    candle_core::safetensors::save(&map, &tmp)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| err(format!("{}: cannot rename into place: {e}", path.display())))?;
    Ok(())
}

/// The temp-file sibling used for atomic writes of `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}
