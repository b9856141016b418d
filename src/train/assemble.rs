//! Putting trained stage outputs together as a policy bundle that
//! [`LoadedPolicy::load`](crate::policy::LoadedPolicy::load) and
//! [`Policy`](crate::policy::Policy) run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};

use super::config::ActionNormalization;
use super::ldm::{LdmOutput, LDM_OUTPUT};
use crate::data::CalvinDataset;
use crate::model::ar::ArConfig;
use crate::model::dldm::{Dldm, DldmConfig};
use crate::model::head::{HeadConfig, ACTION_DIM};
use crate::policy::bundle::{
    ActionKind, ActionSpace, ArSpec, Components, DldmSpec, HeadKind, HeadSpec, Normalization,
    PolicySpec, WeightsSpec,
};
use crate::policy::proprio::ProprioEncoding;
use crate::policy::weights::{
    build_strict, WeightDtype, WeightFile, WeightFormat, DLDM_SKIPPED_PREFIXES,
};

/// One component's sizes and weight file.
#[derive(Debug, Clone)]
pub struct ComponentSource<C> {
    /// Model sizes.
    pub config: C,
    /// The weight file (absolute, or relative to the working folder).
    pub weights: PathBuf,
    /// Its format (guessed from the extension when `None`).
    pub format: Option<WeightFormat>,
    /// Compute dtype.
    pub dtype: WeightDtype,
    /// Nested state-dict key (PyTorch files).
    pub state_key: Option<String>,
    /// Accept keys the model does not read (see [`WeightsSpec::allow_unexpected_keys`]).
    pub allow_unexpected_keys: bool,
}

impl<C> ComponentSource<C> {
    /// A safetensors file in f32.
    pub fn safetensors(config: C, weights: impl Into<PathBuf>) -> Self {
        Self {
            config,
            weights: weights.into(),
            format: Some(WeightFormat::Safetensors),
            dtype: WeightDtype::F32,
            state_key: None,
            allow_unexpected_keys: false,
        }
    }

    /// The component of a bundle in folder `dir` described by `w`.
    pub fn from_spec(config: C, dir: &Path, w: &WeightsSpec) -> Self {
        Self {
            config,
            weights: dir.join(&w.weights),
            format: w.format,
            dtype: w.dtype,
            state_key: w.state_key.clone(),
            allow_unexpected_keys: w.allow_unexpected_keys,
        }
    }
}

/// Everything [`assemble_bundle`] needs.
#[derive(Debug, Clone)]
pub struct BundleParts {
    /// Bundle name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Model input `[height, width]`.
    pub image_size: [usize; 2],
    /// Control rate (Hz); CALVIN 30.
    pub control_rate_hz: f64,
    /// The head's action space.
    pub action_space: ActionSpace,
    /// Normalization statistics.
    pub normalization: Normalization,
    /// The dLDM.
    pub dldm: ComponentSource<DldmConfig>,
    /// The AR transformer.
    pub ar: ComponentSource<ArConfig>,
    /// The MLP action head.
    pub head: ComponentSource<HeadConfig>,
}

/// CALVIN's relative action space (xyz·0.02 m, euler·0.05 rad, gripper ±1).
pub fn calvin_relative_space() -> ActionSpace {
    ActionSpace {
        kind: ActionKind::Relative,
        scale_xyz_m: 0.02,
        scale_euler_rad: 0.05,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Copies `src` to `dst` through a temp file and a rename (no-op when they are
/// the same file).
pub fn copy_atomic(src: &Path, dst: &Path) -> Result<()> {
    if same_file(src, dst) {
        return Ok(());
    }
    let bytes = std::fs::read(src).with_context(|| format!("{}: cannot read", src.display()))?;
    crate::base::fs::write_atomic(dst, &bytes)
}

fn place<C>(out: &Path, stem: &str, src: &ComponentSource<C>) -> Result<WeightsSpec> {
    let ext = src
        .weights
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .unwrap_or_else(|| "safetensors".into());
    let name = PathBuf::from(format!("{stem}.{ext}"));
    if !src.weights.is_file() {
        bail!("{}: weight file not found", src.weights.display());
    }
    copy_atomic(&src.weights, &out.join(&name))?;
    Ok(WeightsSpec {
        weights: name,
        format: src.format.or_else(|| WeightFormat::from_path(&src.weights)),
        dtype: src.dtype,
        state_key: src.state_key.clone(),
        allow_unexpected_keys: src.allow_unexpected_keys,
    })
}

/// Writes a bundle folder `out`: copies the three weight files in as
/// `dldm.*`, `ar.*`, `head.*`, writes `policy.yaml` (validated, via
/// [`PolicySpec::save`]) and returns its path.
pub fn assemble_bundle(out: &Path, parts: &BundleParts) -> Result<PathBuf> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create folder", out.display()))?;
    let spec = PolicySpec {
        name: parts.name.clone(),
        description: parts.description.clone(),
        image_size: parts.image_size,
        control_rate_hz: parts.control_rate_hz,
        steps_per_latent: parts.dldm.config.patch_size,
        action_space: parts.action_space.clone(),
        normalization: parts.normalization.clone(),
        components: Components {
            dldm: DldmSpec {
                config: parts.dldm.config.clone(),
                weights: place(out, "dldm", &parts.dldm)?,
            },
            ar: ArSpec {
                config: parts.ar.config.clone(),
                weights: place(out, "ar", &parts.ar)?,
            },
            head: HeadSpec {
                kind: HeadKind::Mlp,
                config: Some(parts.head.config.clone()),
                chunk: None,
                weights: place(out, "head", &parts.head)?,
            },
        },
    };
    spec.validate()
        .map_err(|e| anyhow!("{}: assembled policy is invalid: {e}", out.display()))?;
    let yaml = out.join("policy.yaml");
    spec.save(&yaml)?;
    Ok(yaml)
}

/// Replaces tiny or missing standard deviations by 1 (a constant dimension is
/// then only centred).
fn safe_std(v: f64) -> f32 {
    if v.is_finite() && v > 1e-6 {
        v as f32
    } else {
        1.0
    }
}

/// Per-dimension mean and std of vectors (population std).
fn mean_std(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let d = rows.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += v / n;
        }
    }
    let mut var = vec![0f64; d];
    for r in rows {
        for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
            *s += (v - m) * (v - m) / n;
        }
    }
    (mean, var.into_iter().map(f64::sqrt).collect())
}

/// Normalization statistics for a bundle trained on `ds`: proprio features (of
/// `encoding`) computed over `frames` (or every frame), or for the raw encoding
/// read from `statistics.yaml` when present; actions as `action_norm` says
/// (identity, or the `rel_actions` statistics for xyz/euler with the gripper
/// kept at mean 0, std 1). `proprio_dim` 0 leaves the proprio statistics empty.
pub fn normalization_for(
    ds: &CalvinDataset,
    proprio_dim: usize,
    encoding: ProprioEncoding,
    action_norm: ActionNormalization,
    frames: Option<&[usize]>,
) -> Result<Normalization> {
    let stats = ds.statistics();
    let raw_stats = stats.filter(|_| encoding == ProprioEncoding::Raw);
    let need_proprio = proprio_dim > 0 && raw_stats.is_none();
    let need_actions = action_norm == ActionNormalization::Dataset
        && stats.and_then(|s| s.rel_actions.as_ref()).is_none();
    let mut proprio_rows = Vec::new();
    let mut action_rows = Vec::new();
    if need_proprio || need_actions {
        let all: Vec<usize> = match frames {
            Some(f) => f.to_vec(),
            None => ds.episodes().iter().flat_map(|&(s, e)| s..=e).collect(),
        };
        for i in all {
            let (p, a) = super::data::read_proprio_and_action(&ds.frame_path(i))?;
            proprio_rows.push(
                encoding
                    .features(&p)
                    .map_err(|e| anyhow!("{}: {e}", ds.frame_path(i).display()))?,
            );
            action_rows.push(a);
        }
    }
    let (pm, ps) = if proprio_dim == 0 {
        (vec![], vec![])
    } else if let Some(s) = raw_stats {
        (s.robot_obs.mean.clone(), s.robot_obs.std.clone())
    } else {
        mean_std(&proprio_rows)
    };
    if proprio_dim > 0 && pm.len() != proprio_dim {
        bail!(
            "{}: proprio statistics have {} dims, the head's proprio_dim is {proprio_dim}",
            ds.dir().display(),
            pm.len()
        );
    }
    let (am, asd) = match action_norm {
        ActionNormalization::Identity => (vec![0.0; ACTION_DIM], vec![1.0; ACTION_DIM]),
        ActionNormalization::Dataset => {
            let (mut m, mut s) = match stats.and_then(|s| s.rel_actions.as_ref()) {
                Some(r) => (r.mean.clone(), r.std.clone()),
                None => mean_std(&action_rows),
            };
            if m.len() != ACTION_DIM {
                bail!(
                    "{}: rel_actions statistics have {} dims, expected {ACTION_DIM}",
                    ds.dir().display(),
                    m.len()
                );
            }
            m[6] = 0.0;
            s[6] = 1.0;
            (m, s)
        }
    };
    Ok(Normalization {
        action_mean: am.iter().map(|&v| v as f32).collect(),
        action_std: asd.into_iter().map(safe_std).collect(),
        proprio_mean: pm.iter().map(|&v| v as f32).collect(),
        proprio_std: ps.into_iter().map(safe_std).collect(),
        proprio_encoding: encoding,
    })
}

/// A trained (or given) dLDM: where its weights are and how to load them.
#[derive(Debug, Clone)]
pub struct DldmSource {
    /// Model input `[height, width]`.
    pub image_size: [usize; 2],
    /// Sizes and weight file.
    pub component: ComponentSource<DldmConfig>,
}

impl DldmSource {
    /// Resolves `path`: an ldm run folder (with `ldm_output.yaml`), or a policy
    /// bundle (`policy.yaml` or its folder).
    pub fn resolve(path: &Path) -> Result<Self> {
        let ldm_yaml = path.join(LDM_OUTPUT);
        if ldm_yaml.is_file() {
            let text = std::fs::read_to_string(&ldm_yaml)?;
            let out: LdmOutput =
                serde_yaml::from_str(&text).map_err(|e| anyhow!("{}: {e}", ldm_yaml.display()))?;
            return Ok(Self {
                image_size: out.image_size,
                component: ComponentSource::safetensors(out.config, path.join(out.weights)),
            });
        }
        let yaml = if path.is_dir() {
            path.join("policy.yaml")
        } else {
            path.to_path_buf()
        };
        if !yaml.is_file() {
            bail!(
                "{}: expected an ldm run folder (with {LDM_OUTPUT}, written when `vw2 train ldm` completes) or a policy bundle",
                path.display()
            );
        }
        let spec = PolicySpec::from_file(&yaml)?;
        let dir = yaml.parent().map(Path::to_path_buf).unwrap_or_default();
        let w = &spec.components.dldm.weights;
        Ok(Self {
            image_size: spec.image_size,
            component: ComponentSource::from_spec(spec.components.dldm.config.clone(), &dir, w),
        })
    }

    /// Loads the (frozen) model.
    pub fn load(&self, dev: &Device) -> Result<Dldm> {
        let c = &self.component;
        let format = c
            .format
            .or_else(|| WeightFormat::from_path(&c.weights))
            .ok_or_else(|| anyhow!("{}: unknown weight format", c.weights.display()))?;
        let file = Arc::new(WeightFile::open(
            &c.weights,
            format,
            c.state_key.as_deref(),
        )?);
        // Training-time encoding always runs in f32, whatever the bundle's dtype.
        let (dldm, _) = build_strict(
            &file,
            DLDM_SKIPPED_PREFIXES,
            c.allow_unexpected_keys,
            DType::F32,
            dev,
            |vb| Dldm::new(&c.config, vb),
        )
        .map_err(|e| anyhow!("loading the dLDM from {}: {e}", c.weights.display()))?;
        Ok(dldm)
    }
}
