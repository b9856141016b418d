//! The policy bundle: a folder `policies/<name>/` with `policy.yaml` and weight
//! files. `policy.yaml` names every component, its config, weight file, format
//! and dtype, plus normalization statistics, image size, control rate and
//! action space. Unknown keys are rejected.

use crate::base::fs::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::proprio::ProprioEncoding;
use super::weights::{
    build_strict, save_safetensors_atomic, seeded_var_builder, SeededInit, WeightDtype, WeightFile,
    WeightFormat, DLDM_SKIPPED_PREFIXES,
};
use crate::model::ar::{ArConfig, ArTransformer};
use crate::model::dldm::{Dldm, DldmConfig};
use crate::model::head::{ActionHead, HeadConfig, ACTION_DIM};
use crate::model::onnx_head::OnnxActionHead;

/// Whether the head's actions are deltas or absolute targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// CALVIN relative actions: xyz·`scale_xyz_m`, euler·`scale_euler_rad`, gripper ±1.
    Relative,
    /// Absolute TCP targets: xyz (m), euler (rad), gripper ±1.
    Absolute,
}

/// The action space of the head's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpace {
    /// Relative or absolute.
    pub kind: ActionKind,
    /// Metres per unit of relative xyz action (CALVIN: 0.02 m).
    #[serde(default = "d_xyz")]
    pub scale_xyz_m: f64,
    /// Radians per unit of relative euler action (CALVIN: 0.05 rad).
    #[serde(default = "d_euler")]
    pub scale_euler_rad: f64,
}

fn d_xyz() -> f64 {
    0.02
}
fn d_euler() -> f64 {
    0.05
}

/// Per-dimension statistics that un-normalize head outputs and normalize proprio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Mean of each of the 7 action dims (added after scaling by `action_std`).
    #[serde(default)]
    pub action_mean: Vec<f32>,
    /// Std of each of the 7 action dims.
    #[serde(default)]
    pub action_std: Vec<f32>,
    /// Mean of each proprio dim (subtracted before the head).
    #[serde(default)]
    pub proprio_mean: Vec<f32>,
    /// Std of each proprio dim.
    #[serde(default)]
    pub proprio_std: Vec<f32>,
    /// How `robot_obs` becomes the proprio features that `proprio_mean`/`proprio_std`
    /// normalize and the head reads (`raw` when absent: bundles made before angles
    /// were encoded).
    #[serde(default)]
    pub proprio_encoding: ProprioEncoding,
}

/// Where a component's weights live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsSpec {
    /// Path of the weight file, relative to the policy folder.
    pub weights: PathBuf,
    /// File format; guessed from the extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WeightFormat>,
    /// Compute dtype.
    #[serde(default)]
    pub dtype: WeightDtype,
    /// For PyTorch pickles: the nested state-dict key (e.g. `model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    /// Accept keys that the model does not read (they are reported, not loaded).
    /// By default such a key is an error: it usually means a layout mismatch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unexpected_keys: bool,
}

/// The dLDM component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DldmSpec {
    /// Model sizes.
    pub config: DldmConfig,
    /// Weights.
    #[serde(flatten)]
    pub weights: WeightsSpec,
}

/// The AR transformer component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArSpec {
    /// Model sizes.
    pub config: ArConfig,
    /// Weights.
    #[serde(flatten)]
    pub weights: WeightsSpec,
}

/// How the action head is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Our MLP head in candle (needs `config`).
    Mlp,
    /// An ONNX graph evaluated by candle-onnx (opset ≤ 17).
    Onnx,
}

/// The action head component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// MLP or ONNX.
    pub kind: HeadKind,
    /// MLP sizes (required for `mlp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<HeadConfig>,
    /// Action chunk length C (required for `onnx`; taken from `config` for `mlp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<usize>,
    /// Weights.
    #[serde(flatten)]
    pub weights: WeightsSpec,
}

/// The three components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Components {
    /// Latent dynamics model.
    pub dldm: DldmSpec,
    /// AR code predictor.
    pub ar: ArSpec,
    /// Codes → actions.
    pub head: HeadSpec,
}

/// `policy.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Bundle name.
    pub name: String,
    /// Free-text description.
    #[serde(default)]
    pub description: String,
    /// Model input size `[height, width]` in pixels (frames are resized to it).
    pub image_size: [usize; 2],
    /// Control rate of the actuate loop (Hz); CALVIN: 30.
    pub control_rate_hz: f64,
    /// Control steps per latent step (the temporal compression, 4).
    #[serde(default = "d_steps")]
    pub steps_per_latent: usize,
    /// Output action space.
    pub action_space: ActionSpace,
    /// Normalization statistics.
    #[serde(default)]
    pub normalization: Normalization,
    /// The components.
    pub components: Components,
}

fn d_steps() -> usize {
    4
}

impl PolicySpec {
    /// Reads and validates `policy.yaml`; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read policy file", path.display()))?;
        let spec: PolicySpec =
            serde_yaml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        spec.validate()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(spec)
    }

    /// Checks the fields against each other; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let [h, w] = self.image_size;
        let c = &self.components;
        let s = c.dldm.config.spatial_compression();
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 {
            return Err(format!(
                "image_size: expected positive multiples of the dLDM's spatial compression {s}, found [{h}, {w}]"
            ));
        }
        if !(self.control_rate_hz.is_finite() && self.control_rate_hz > 0.0) {
            return Err(format!(
                "control_rate_hz: expected > 0, found {}",
                self.control_rate_hz
            ));
        }
        if self.steps_per_latent != c.dldm.config.patch_size {
            return Err(format!(
                "steps_per_latent: expected the dLDM's temporal compression {}, found {}",
                c.dldm.config.patch_size, self.steps_per_latent
            ));
        }
        c.dldm
            .config
            .validate()
            .map_err(|e| format!("components.dldm.config.{e}"))?;
        let n = &self.normalization;
        for (field, v) in [
            ("action_mean", &n.action_mean),
            ("action_std", &n.action_std),
        ] {
            if !v.is_empty() && v.len() != ACTION_DIM {
                return Err(format!(
                    "normalization.{field}: expected {ACTION_DIM} values, found {}",
                    v.len()
                ));
            }
        }
        if n.action_mean.len() != n.action_std.len() {
            return Err(format!(
                "normalization.action_std: expected {} values (as action_mean), found {}",
                n.action_mean.len(),
                n.action_std.len()
            ));
        }
        if n.action_std
            .iter()
            .chain(&n.proprio_std)
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err("normalization: every std must be finite and > 0".into());
        }
        if n.proprio_mean.len() != n.proprio_std.len() {
            return Err(format!(
                "normalization.proprio_std: expected {} values (as proprio_mean), found {}",
                n.proprio_mean.len(),
                n.proprio_std.len()
            ));
        }
        let features = n.proprio_encoding.dim();
        if !n.proprio_mean.is_empty() && n.proprio_mean.len() != features {
            return Err(format!(
                "normalization.proprio_mean: expected {features} values (proprio_encoding {:?}), found {}",
                n.proprio_encoding,
                n.proprio_mean.len()
            ));
        }
        if let Some(hc) = &c.head.config {
            if hc.proprio_dim != 0 && hc.proprio_dim != features {
                return Err(format!(
                    "components.head.config.proprio_dim: expected 0 or {features} (proprio_encoding {:?}), found {}",
                    n.proprio_encoding, hc.proprio_dim
                ));
            }
        }
        let codebook = c.dldm.config.codebook_size();
        if c.ar.config.vocab_size != codebook {
            return Err(format!(
                "components.ar.config.vocab_size: expected the dLDM codebook size {codebook}, found {}",
                c.ar.config.vocab_size
            ));
        }
        match c.head.kind {
            HeadKind::Mlp => {
                let hc = c
                    .head
                    .config
                    .as_ref()
                    .ok_or("components.head.config: required for kind mlp")?;
                let want = hc.visual_pool.width(c.dldm.config.feature_channels());
                if hc.visual_dim != want {
                    return Err(format!(
                        "components.head.config.visual_dim: expected {want} (visual_pool {:?} of the dLDM feature_channels {}), found {}",
                        hc.visual_pool, c.dldm.config.feature_channels(), hc.visual_dim
                    ));
                }
                if hc.codes_per_step != c.dldm.config.num_queries {
                    return Err(format!(
                        "components.head.config.codes_per_step: expected the dLDM num_queries {}, found {}",
                        c.dldm.config.num_queries, hc.codes_per_step
                    ));
                }
                if !n.proprio_mean.is_empty() && n.proprio_mean.len() != hc.proprio_dim {
                    return Err(format!(
                        "normalization.proprio_mean: expected {} values (head proprio_dim), found {}",
                        hc.proprio_dim,
                        n.proprio_mean.len()
                    ));
                }
            }
            HeadKind::Onnx => {
                if c.head.chunk.is_none() {
                    return Err("components.head.chunk: required for kind onnx".into());
                }
            }
        }
        Ok(())
    }

    /// Writes the spec as YAML to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, serde_yaml::to_string(self)?.as_bytes())
    }
}

/// The loaded action head.
#[derive(Debug)]
pub enum Head {
    /// Candle MLP.
    Mlp(ActionHead),
    /// ONNX graph (boxed: it holds the whole parsed model).
    Onnx(Box<OnnxActionHead>),
}

/// One line of `vw2 inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    /// `dldm`, `ar` or `head`.
    pub component: String,
    /// Model kind.
    pub kind: String,
    /// Weight file path.
    pub file: PathBuf,
    /// Compute dtype.
    pub dtype: String,
    /// Parameters read from the file.
    pub parameters: usize,
    /// Keys in the file that no layer read.
    pub unused_keys: Vec<String>,
    /// Keys skipped by rule (outside `network.`, the DiT connector, fixed buffers).
    pub skipped_keys: usize,
}

/// A bundle with every component loaded.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The parsed `policy.yaml`.
    pub spec: PolicySpec,
    /// The folder holding it.
    pub dir: PathBuf,
    /// The dLDM.
    pub dldm: Dldm,
    /// The AR transformer.
    pub ar: ArTransformer,
    /// The action head.
    pub head: Head,
    /// What was loaded from where.
    pub reports: Vec<ComponentReport>,
}

fn open_weights(dir: &Path, w: &WeightsSpec) -> Result<(PathBuf, Arc<WeightFile>)> {
    let path = dir.join(&w.weights);
    let format = match w.format {
        Some(f) => f,
        None => WeightFormat::from_path(&path).ok_or_else(|| {
            anyhow!(
                "{}: unknown weight format: expected .safetensors, .pt or .pth (or set `format`)",
                path.display()
            )
        })?,
    };
    let file = WeightFile::open(&path, format, w.state_key.as_deref())?;
    Ok((path, Arc::new(file)))
}

/// One component to load: its report names, and what an error calls it.
struct ComponentName {
    component: &'static str,
    kind: &'static str,
    what: &'static str,
}

/// Opens a component's weights, builds it strictly (see [`build_strict`]) and
/// reports what was loaded from where.
fn load_component<T>(
    dir: &Path,
    w: &WeightsSpec,
    skip_prefixes: &[&str],
    device: &Device,
    name: ComponentName,
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> Result<(T, ComponentReport)> {
    if w.dtype == WeightDtype::Bf16 && device.is_cpu() {
        bail!(
            "{}: dtype bf16: candle cannot compute in bf16 on the CPU (no bf16 matmul); set `dtype: f32` or `f16` (bf16 weights load into either), or run on CUDA",
            dir.join(&w.weights).display()
        );
    }
    let (path, file) = open_weights(dir, w)?;
    let (model, keys) = build_strict(
        &file,
        skip_prefixes,
        w.allow_unexpected_keys,
        w.dtype.dtype(),
        device,
        build,
    )
    .map_err(|e| anyhow!("{e}"))
    .with_context(|| format!("loading {} from {}", name.what, path.display()))?;
    let report = ComponentReport {
        component: name.component.into(),
        kind: name.kind.into(),
        file: path,
        dtype: format!("{:?}", w.dtype).to_lowercase(),
        parameters: file.used_parameter_count()?,
        unused_keys: keys.unexpected.iter().map(|(k, _)| k.clone()).collect(),
        skipped_keys: keys.skipped_total(),
    };
    Ok((model, report))
}

impl LoadedPolicy {
    /// Loads `policy.yaml` (or the folder holding it) and every component.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let yaml = if path.is_dir() {
            path.join("policy.yaml")
        } else {
            path.to_path_buf()
        };
        let spec = PolicySpec::from_file(&yaml)?;
        let dir = yaml.parent().map(Path::to_path_buf).unwrap_or_default();
        let c = &spec.components;
        let mut reports = Vec::new();

        let (dldm, r) = load_component(
            &dir,
            &c.dldm.weights,
            DLDM_SKIPPED_PREFIXES,
            device,
            ComponentName {
                component: "dldm",
                kind: "dldm",
                what: "the dLDM",
            },
            |vb| Dldm::new(&c.dldm.config, vb),
        )?;
        reports.push(r);

        let (ar, r) = load_component(
            &dir,
            &c.ar.weights,
            &[],
            device,
            ComponentName {
                component: "ar",
                kind: "ar-transformer",
                what: "the AR transformer",
            },
            |vb| ArTransformer::new(&c.ar.config, vb),
        )?;
        reports.push(r);

        let head = match c.head.kind {
            HeadKind::Mlp => {
                let hc = c.head.config.as_ref().expect("validated");
                let (head, r) = load_component(
                    &dir,
                    &c.head.weights,
                    &[],
                    device,
                    ComponentName {
                        component: "head",
                        kind: "mlp",
                        what: "the action head",
                    },
                    |vb| ActionHead::new(hc, vb),
                )?;
                reports.push(r);
                Head::Mlp(head)
            }
            HeadKind::Onnx => {
                let p = dir.join(&c.head.weights.weights);
                let head = OnnxActionHead::load(&p)?;
                reports.push(ComponentReport {
                    component: "head".into(),
                    kind: "onnx".into(),
                    file: p,
                    dtype: "f32".into(),
                    parameters: onnx_parameter_count(&head),
                    unused_keys: vec![],
                    skipped_keys: 0,
                });
                Head::Onnx(Box::new(head))
            }
        };
        Ok(Self {
            spec,
            dir,
            dldm,
            ar,
            head,
            reports,
        })
    }

    /// The head's visual vector `[B, visual_dim]` from current dLDM features
    /// `[B, 1, F, h, w]`, pooled as the head was trained (an ONNX head: the mean).
    pub fn head_visual(&self, features: &Tensor) -> Result<Tensor> {
        let pool = match &self.head {
            Head::Mlp(h) => h.config().visual_pool,
            Head::Onnx(_) => crate::model::head::VisualPool::Mean,
        };
        Ok(crate::model::head::pool_features(features, pool)?)
    }

    /// The head's instruction input `[1, instruction_dim]`, or `None` for a
    /// head that does not see the instruction.
    pub fn head_instruction(&self, instruction: &str, device: &Device) -> Result<Option<Tensor>> {
        match &self.head {
            Head::Mlp(h) if h.config().instruction_dim > 0 => {
                Ok(Some(super::instruction::instruction_tensor(
                    instruction,
                    h.config().instruction_dim,
                    device,
                )?))
            }
            _ => Ok(None),
        }
    }

    /// Runs the head on the codes of one step → normalized actions `[B, C, 7]`.
    pub fn head_forward(
        &self,
        indices: &Tensor,
        visual: &Tensor,
        proprio: Option<&Tensor>,
        instruction: Option<&Tensor>,
    ) -> Result<Tensor> {
        Ok(match &self.head {
            Head::Mlp(h) => h.forward(indices, visual, proprio, instruction)?,
            Head::Onnx(h) => {
                let (b, n) = indices.dims2()?;
                let codes = self
                    .dldm
                    .fsq()
                    .indices_to_codes(indices)?
                    .reshape((b, n * self.dldm.config().code_dim()))?;
                h.forward(&codes, &visual.to_dtype(DType::F32)?, proprio)?
            }
        })
    }
}

/// Scalar parameters held by an ONNX head's floating-point initializers
/// (integer initializers such as reshape targets are not parameters).
fn onnx_parameter_count(head: &OnnxActionHead) -> usize {
    head.model()
        .graph
        .as_ref()
        .map(|g| {
            g.initializer
                .iter()
                // FLOAT, FLOAT16, DOUBLE, BFLOAT16
                .filter(|t| matches!(t.data_type, 1 | 10 | 11 | 16))
                .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
                .sum()
        })
        .unwrap_or(0)
}

/// Sizes for [`create_random_policy`].
#[derive(Debug, Clone)]
pub struct RandomPolicySizes {
    /// dLDM sizes.
    pub dldm: DldmConfig,
    /// AR sizes.
    pub ar: ArConfig,
    /// Head sizes.
    pub head: HeadConfig,
    /// Model input size `[h, w]` (px).
    pub image_size: [usize; 2],
}

impl RandomPolicySizes {
    /// The tiny sizes used by tests and `vw2 make-random-policy`.
    pub fn tiny() -> Self {
        let dldm = DldmConfig::tiny();
        let ar = ArConfig {
            vocab_size: dldm.codebook_size(),
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            qk_norm: true,
            max_seq_len: 256,
            visual_feature_dim: dldm.feature_channels(),
            num_visual_tokens: 4,
            instruction_dim: 32,
            codes_per_step: dldm.num_queries,
        };
        let head = HeadConfig {
            vocab_size: dldm.codebook_size(),
            codes_per_step: dldm.num_queries,
            code_embed_dim: 8,
            visual_dim: dldm.feature_channels(),
            visual_pool: Default::default(),
            proprio_dim: ProprioEncoding::EulerSincos.dim(),
            instruction_dim: 0,
            hidden: vec![64],
            chunk: 4,
        };
        Self {
            dldm,
            ar,
            head,
            image_size: [32, 32],
        }
    }
}

/// Writes a random-weight policy (seeded, reproducible) to `dir`: `policy.yaml`,
/// `dldm.safetensors`, `ar.safetensors`, `head.safetensors`. Returns the yaml path.
pub fn create_random_policy(
    dir: &Path,
    name: &str,
    seed: u64,
    sizes: &RandomPolicySizes,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let dev = Device::Cpu;
    let init = Arc::new(SeededInit::new(seed));
    Dldm::new(&sizes.dldm, seeded_var_builder(init.clone(), &dev))?;
    init.save(&dir.join("dldm.safetensors"))?;
    let init = Arc::new(SeededInit::new(seed.wrapping_add(1)));
    ArTransformer::new(&sizes.ar, seeded_var_builder(init.clone(), &dev))?;
    init.save(&dir.join("ar.safetensors"))?;
    let init = Arc::new(SeededInit::new(seed.wrapping_add(2)));
    ActionHead::new(&sizes.head, seeded_var_builder(init.clone(), &dev))?;
    save_safetensors_atomic(&init.tensors(), &dir.join("head.safetensors"))?;
    let w = |f: &str| WeightsSpec {
        weights: PathBuf::from(f),
        format: Some(WeightFormat::Safetensors),
        dtype: WeightDtype::F32,
        state_key: None,
        allow_unexpected_keys: false,
    };
    let spec = PolicySpec {
        name: name.into(),
        description: format!("random weights (seed {seed}) for tests; it does not solve any task"),
        image_size: sizes.image_size,
        control_rate_hz: 30.0,
        steps_per_latent: sizes.dldm.patch_size,
        action_space: ActionSpace {
            kind: ActionKind::Relative,
            scale_xyz_m: 0.02,
            scale_euler_rad: 0.05,
        },
        normalization: Normalization {
            action_mean: vec![0.0; ACTION_DIM],
            action_std: vec![1.0; ACTION_DIM],
            proprio_mean: vec![0.0; sizes.head.proprio_dim],
            proprio_std: vec![1.0; sizes.head.proprio_dim],
            proprio_encoding: ProprioEncoding::EulerSincos,
        },
        components: Components {
            dldm: DldmSpec {
                config: sizes.dldm.clone(),
                weights: w("dldm.safetensors"),
            },
            ar: ArSpec {
                config: sizes.ar.clone(),
                weights: w("ar.safetensors"),
            },
            head: HeadSpec {
                kind: HeadKind::Mlp,
                config: Some(sizes.head.clone()),
                chunk: None,
                weights: w("head.safetensors"),
            },
        },
    };
    spec.validate()
        .map_err(|e| anyhow!("generated policy is invalid: {e}"))?;
    let yaml = dir.join("policy.yaml");
    spec.save(&yaml)?;
    Ok(yaml)
}

/// Fails when `cond` is false, with a message; small helper for the CLI.
pub fn ensure_finite(t: &Tensor, what: &str) -> Result<()> {
    let ok = t
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .all(|v| v.is_finite());
    if !ok {
        bail!("{what}: expected finite values, found NaN or Inf");
    }
    Ok(())
}
