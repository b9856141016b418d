//! `vw2 import-dldm`: reads a dLDM checkpoint (an official VideoWorld 2 `.pt`, or any
//! `.safetensors` in the official layout), infers its sizes from the tensor shapes,
//! checks every key strictly, and writes our bundle's form of it: `dldm.safetensors`
//! (the official names below `network.`) and `dldm.yaml`, the `components.dldm`
//! section of a `policy.yaml`.

use crate::base::fs::write_atomic;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use serde::Serialize;

use super::bundle::{DldmSpec, WeightsSpec};
use super::weights::{
    expected_keys, save_safetensors_atomic, KeyReport, WeightDtype, WeightFile, WeightFormat,
    DLDM_SKIPPED_PREFIXES,
};
use crate::model::dldm::{Dldm, DldmConfig};

/// Choices that the tensor shapes cannot tell (the official values by default).
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// QFormer attention heads (the shapes give only heads × head width): 4.
    pub qformer_heads: usize,
    /// FSQ levels (the shapes give only their count): [8, 5, 5, 5].
    pub levels: Vec<u32>,
    /// Nested state-dict key of a PyTorch file (e.g. `model`).
    pub state_key: Option<String>,
    /// The dtype to store the weights in; `None` keeps the checkpoint's.
    pub dtype: Option<WeightDtype>,
    /// The compute dtype written to `dldm.yaml` (f32: candle has no CPU bf16 matmul).
    pub compute_dtype: WeightDtype,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            qformer_heads: 4,
            levels: vec![8, 5, 5, 5],
            state_key: None,
            dtype: None,
            compute_dtype: WeightDtype::F32,
        }
    }
}

/// What [`infer_dldm_config`] found.
#[derive(Debug, Clone, Serialize)]
pub struct InferredDldm {
    /// The sizes.
    pub config: DldmConfig,
    /// What was assumed rather than read off a shape.
    pub assumptions: Vec<String>,
}

fn dims<'a>(file: &'a WeightFile, key: &str, what: &str) -> Result<&'a [usize]> {
    file.shape_of(key).ok_or_else(|| {
        anyhow!(
            "{}: cannot infer {what}: key '{key}' not found (is this a VideoWorld 2 dLDM checkpoint?)",
            file.path().display()
        )
    })
}

fn count(file: &WeightFile, key: impl Fn(usize) -> String) -> usize {
    (0..)
        .take_while(|&i| file.shape_of(&key(i)).is_some())
        .count()
}

/// Encoder levels (0 = full resolution) that hold attention under `cfg`.
fn encoder_attention_levels(cfg: &DldmConfig) -> Vec<usize> {
    let mut res = cfg.resolution / cfg.patch_size;
    let mut out = Vec::new();
    for i in 0..cfg.channels_mult.len() {
        if cfg.attn_resolutions.contains(&res) {
            out.push(i);
        }
        res /= 2;
    }
    out
}

/// Infers the dLDM sizes from the shapes in `file` (keys after the `network.` map).
pub fn infer_dldm_config(file: &WeightFile, opts: &ImportOptions) -> Result<InferredDldm> {
    let mut assumptions = Vec::new();
    let conv_in = dims(file, "encoder.conv_in.0.conv3d.weight", "the base width")?;
    if conv_in.len() != 5 {
        bail!(
            "{}: key 'encoder.conv_in.0.conv3d.weight': expected a conv3d weight [out, in, kt, kh, kw], found {conv_in:?}",
            file.path().display()
        );
    }
    let channels = conv_in[0];
    let patched = conv_in[1];
    // 3 RGB channels, 8 Haar bands per level: 3·8^k channels for patch size 2^k.
    let (in_channels, patch_size) = {
        let mut k = 0u32;
        let mut c = patched / 3;
        while c > 1 && c % 8 == 0 {
            c /= 8;
            k += 1;
        }
        if patched % 3 != 0 || c != 1 || k == 0 {
            bail!(
                "{}: key 'encoder.conv_in.0.conv3d.weight': expected 3·8^k patched input channels (RGB, Haar patch 2^k), found {patched}",
                file.path().display()
            );
        }
        (3, 1usize << k)
    };
    assumptions.push(format!(
        "in_channels {in_channels} (RGB) and patch_size {patch_size}, from {patched} patched channels"
    ));
    let levels_n = count(file, |i| {
        format!("encoder.down.{i}.block.0.conv1.0.conv3d.weight")
    });
    if levels_n == 0 {
        bail!(
            "{}: cannot infer channels_mult: no 'encoder.down.0.block.0.conv1.0.conv3d.weight'",
            file.path().display()
        );
    }
    let mut channels_mult = Vec::new();
    for i in 0..levels_n {
        let key = format!("encoder.down.{i}.block.0.conv1.0.conv3d.weight");
        let out = dims(file, &key, "channels_mult")?[0];
        if out % channels != 0 {
            bail!(
                "{}: key '{key}': expected a multiple of the base width {channels}, found {out}",
                file.path().display()
            );
        }
        channels_mult.push(out / channels);
    }
    let num_res_blocks = count(file, |j| {
        format!("encoder.down.0.block.{j}.norm1.norm.weight")
    });
    let z_channels = dims(file, "encoder.outproj_ldm.conv3d.weight", "z_channels")?[0];
    let code_dim = dims(file, "quant_conv.conv3d.weight", "the code dimension")?[0];
    if code_dim != opts.levels.len() {
        bail!(
            "{}: key 'quant_conv.conv3d.weight': {code_dim} code channels, but the FSQ levels {:?} have {}; pass the levels",
            file.path().display(),
            opts.levels,
            opts.levels.len()
        );
    }
    assumptions.push(format!(
        "FSQ levels {:?} (the shapes give only their count, {code_dim})",
        opts.levels
    ));
    let num_queries = dims(file, "encoder.act.weight", "the number of queries")?[0];
    let qf = "encoder.qformer_ldm.qformer";
    let qformer_depth = count(file, |i| format!("{qf}.layers.{i}.norm2.weight"));
    let inner = dims(
        file,
        &format!("{qf}.final_attn_token_to_image.q_proj.weight"),
        "the QFormer attention width",
    )?[0];
    if opts.qformer_heads == 0 || inner % opts.qformer_heads != 0 {
        bail!(
            "{}: QFormer attention width {inner} does not split into {} heads",
            file.path().display(),
            opts.qformer_heads
        );
    }
    assumptions.push(format!(
        "{} QFormer heads of {} (the shapes give only their product, {inner})",
        opts.qformer_heads,
        inner / opts.qformer_heads
    ));
    let qformer_mlp_dim = if qformer_depth > 0 {
        dims(
            file,
            &format!("{qf}.layers.0.mlp.lin1.weight"),
            "the QFormer MLP width",
        )?[0]
    } else {
        DldmConfig::videoworld2().qformer_mlp_dim
    };
    let official = DldmConfig::videoworld2();
    let mut config = DldmConfig {
        in_channels,
        patch_size,
        channels,
        channels_mult,
        num_res_blocks,
        resolution: official.resolution,
        attn_resolutions: official.attn_resolutions.clone(),
        z_channels,
        levels: opts.levels.clone(),
        num_queries,
        qformer_depth,
        qformer_heads: opts.qformer_heads,
        qformer_head_dim: inner / opts.qformer_heads,
        qformer_mlp_dim,
    };
    // Attention beyond the mid block (and the decoder's deepest level) sits where the
    // checkpoint has `encoder.down.{i}.attn.*`; keep the official placement if it fits.
    let observed: Vec<usize> = (0..levels_n)
        .filter(|i| {
            file.shape_of(&format!("encoder.down.{i}.attn.0.0.norm.norm.weight"))
                .is_some()
        })
        .collect();
    if encoder_attention_levels(&config) != observed {
        config.attn_resolutions = observed
            .iter()
            .map(|i| (config.resolution / config.patch_size) >> i)
            .collect();
        assumptions.push(format!(
            "attention at encoder/decoder levels {observed:?}: resolution {}, attn_resolutions {:?}",
            config.resolution, config.attn_resolutions
        ));
    }
    config
        .validate()
        .map_err(|e| anyhow!("{}: inferred an invalid config: {e}", file.path().display()))?;
    Ok(InferredDldm {
        config,
        assumptions,
    })
}

/// The result of [`import_dldm`].
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The checkpoint read.
    pub checkpoint: PathBuf,
    /// The inferred sizes and what was assumed.
    pub inferred: InferredDldm,
    /// How the keys were placed.
    pub keys: KeyReport,
    /// Scalar parameters written.
    pub parameters: usize,
    /// The dtype the weights were stored in.
    pub dtype: WeightDtype,
    /// The compute dtype written to `dldm.yaml`.
    pub compute_dtype: WeightDtype,
    /// The files written.
    pub written: Vec<PathBuf>,
}

fn dtype_of(t: DType) -> WeightDtype {
    match t {
        DType::F16 => WeightDtype::F16,
        DType::BF16 => WeightDtype::Bf16,
        _ => WeightDtype::F32,
    }
}

/// Imports `checkpoint` into `out`: `dldm.safetensors` and `dldm.yaml`. A checkpoint
/// whose keys cannot all be placed is refused with the list of those keys.
pub fn import_dldm(checkpoint: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let format = WeightFormat::from_path(checkpoint).ok_or_else(|| {
        anyhow!(
            "{}: unknown checkpoint format: expected .pt, .pth, .ckpt or .safetensors",
            checkpoint.display()
        )
    })?;
    let file = Arc::new(WeightFile::open(
        checkpoint,
        format,
        opts.state_key.as_deref(),
    )?);
    let inferred = infer_dldm_config(&file, opts)?;
    let expected = expected_keys(DType::F32, |vb| Dldm::new(&inferred.config, vb))?;
    let keys = KeyReport::compare(&file, &expected, DLDM_SKIPPED_PREFIXES);
    if !keys.is_ok(false) {
        bail!(
            "{}: cannot place every key with the inferred config {:?}: {}",
            checkpoint.display(),
            inferred.config,
            keys.describe()
        );
    }
    let mut tensors = BTreeMap::new();
    let mut file_dtype = None;
    let mut parameters = 0;
    for key in expected.keys() {
        let t: Tensor = file
            .tensor(key)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("reading '{key}'"))?;
        file_dtype.get_or_insert(t.dtype());
        parameters += t.elem_count();
        tensors.insert(key.clone(), t);
    }
    let dtype = opts
        .dtype
        .unwrap_or_else(|| dtype_of(file_dtype.unwrap_or(DType::F32)));
    for t in tensors.values_mut() {
        *t = t.to_dtype(dtype.dtype())?;
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create folder", out.display()))?;
    let weights = out.join("dldm.safetensors");
    save_safetensors_atomic(&tensors, &weights)?;
    let spec = DldmSpec {
        config: inferred.config.clone(),
        weights: WeightsSpec {
            weights: PathBuf::from("dldm.safetensors"),
            format: Some(WeightFormat::Safetensors),
            dtype: opts.compute_dtype,
            state_key: None,
            allow_unexpected_keys: false,
        },
    };
    let yaml = out.join("dldm.yaml");
    let text = format!(
        "# components.dldm of a policy.yaml, imported from {} by `vw2 import-dldm`\n{}",
        checkpoint.display(),
        serde_yaml::to_string(&spec)?
    );
    write_atomic(&yaml, text.as_bytes())?;
    Ok(ImportReport {
        checkpoint: checkpoint.to_path_buf(),
        inferred,
        keys,
        parameters,
        dtype,
        compute_dtype: opts.compute_dtype,
        written: vec![weights, yaml],
    })
}
