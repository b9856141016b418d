//! Official VideoWorld 2 dLDM checkpoints: our names and shapes are the official ones
//! (`shared/design/dldm-official-keys.tsv`), official-layout `.pt` checkpoints load
//! with every key placed, `import-dldm` infers their sizes, and a bad key is reported
//! with every other bad key at once.
//!
//! The checkpoints are made here: every name of the official list, with the official
//! shapes scaled down (every width that is a multiple of 128 divided by 16, so 512 →
//! 32 and the structure stays), seeded values, written as `torch.save` zip files by
//! `python/vw2_sim_tools/torch_ckpt.py` (python3, standard library only).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use vw2_policy::model::dldm::{Dldm, DldmConfig, DldmPreset};
use vw2_policy::policy::import::{import_dldm, infer_dldm_config, ImportOptions};
use vw2_policy::policy::weights::{
    build_strict, expected_keys, KeyReport, WeightDtype, WeightFile, WeightFormat,
    DLDM_SKIPPED_PREFIXES,
};

fn official_keys_tsv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/design/dldm-official-keys.tsv")
}

/// The official list: full checkpoint name → shape, in file order.
fn official_keys() -> Vec<(String, Vec<usize>)> {
    let path = official_keys_tsv();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (../shared must sit beside the checkout)",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l.split_once('\t').expect("name<TAB>shape");
            let dims = shape
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|d| d.trim().parse::<usize>().expect("a dimension"))
                .collect();
            (name.to_string(), dims)
        })
        .collect()
}

fn is_skipped(key: &str) -> bool {
    DLDM_SKIPPED_PREFIXES.iter().any(|p| key.starts_with(p))
}

#[test]
fn official_size_model_reads_exactly_the_official_keys_and_shapes() {
    let expected =
        expected_keys(DType::F32, |vb| Dldm::new(&DldmConfig::videoworld2(), vb)).unwrap();
    let official: BTreeMap<String, Vec<usize>> = official_keys()
        .into_iter()
        .map(|(k, s)| {
            (
                k.strip_prefix("network.")
                    .expect("network. prefix")
                    .to_string(),
                s,
            )
        })
        .filter(|(k, _)| !is_skipped(k))
        .collect();
    let ours: BTreeMap<String, Vec<usize>> = expected.into_iter().collect();
    let missing: Vec<_> = official.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !official.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "official keys our model does not read: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "keys our model reads that no official checkpoint has: {extra:?}"
    );
    for (k, s) in &official {
        assert_eq!(&ours[k], s, "{k}: shape");
    }
    // What the rules skip is exactly the DiT connector and the patchers' buffers.
    let skipped = official_keys()
        .iter()
        .filter(|(k, _)| is_skipped(&k[8..]))
        .count();
    assert_eq!(skipped, 14 + 3 + 2);
}

#[test]
fn preset_in_yaml_sets_the_official_sizes_and_fields_override_them() {
    let cfg: DldmConfig = serde_yaml::from_str("preset: videoworld2").unwrap();
    assert_eq!(cfg, DldmConfig::videoworld2());
    assert_eq!(cfg.feature_channels(), 512);
    assert_eq!(cfg.qformer_mlp_dim, 512);
    let cfg: DldmConfig = serde_yaml::from_str("{preset: videoworld2, channels: 64}").unwrap();
    assert_eq!(cfg.channels, 64);
    assert_eq!(cfg.feature_channels(), 256);
    assert_eq!(cfg.z_channels, 256);
    let cfg: DldmConfig = serde_yaml::from_str("{preset: tiny}").unwrap();
    assert_eq!(cfg, DldmConfig::preset(DldmPreset::Tiny));
    // Written out in full, read back the same.
    let text = serde_yaml::to_string(&DldmConfig::tiny()).unwrap();
    assert!(!text.contains("preset"));
    assert_eq!(
        serde_yaml::from_str::<DldmConfig>(&text).unwrap(),
        DldmConfig::tiny()
    );
    let e = serde_yaml::from_str::<DldmConfig>("{feature_channels: 16}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("feature_channels"), "{e}");
    let e = serde_yaml::from_str::<DldmConfig>("{preset: huge}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("huge"), "{e}");
}

/// The small official-structure config: the official one with every width / 16.
fn small_config() -> DldmConfig {
    DldmConfig {
        channels: 8,
        z_channels: 16,
        qformer_head_dim: 4,
        qformer_mlp_dim: 32,
        ..DldmConfig::videoworld2()
    }
}

fn scale(shape: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .map(|&d| if d % 128 == 0 { d / 16 } else { d })
        .collect()
}

/// Seeded values in [−0.25, 0.25) (a 64-bit LCG).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
        })
        .collect()
}

/// Every official key at the small size (full names, with `network.`).
fn small_official_tensors() -> BTreeMap<String, Tensor> {
    official_keys()
        .into_iter()
        .enumerate()
        .map(|(i, (k, s))| {
            let s = scale(&s);
            let n = s.iter().product();
            (
                k,
                Tensor::from_vec(values(n, i as u64), s, &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

/// Writes `tensors` (names as given) as a torch zip checkpoint at `out`, in `dtype`,
/// with an optimizer entry outside `network.`.
fn write_pt(tensors: &BTreeMap<String, Tensor>, dtype: DType, dir: &Path, out: &Path) {
    let st = dir.join(format!(
        "{}.safetensors",
        out.file_stem().unwrap().to_string_lossy()
    ));
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&map, &st).unwrap();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let o = Command::new("python3")
        .args(["-m", "vw2_sim_tools.torch_ckpt", "--from-safetensors"])
        .arg(&st)
        .arg("--out")
        .arg(out)
        .args(["--extra-key", "optimizer.state.0.exp_avg=4x2"])
        .env("PYTHONPATH", python)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 (standard library only) is needed to write torch checkpoints");
    assert!(
        o.status.success(),
        "torch_ckpt failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds a dLDM of `cfg` from `file` strictly, with the dLDM's skip rules.
fn load_dldm(
    file: &Arc<WeightFile>,
    cfg: &DldmConfig,
    dtype: DType,
    allow_unexpected: bool,
) -> candle_core::Result<(Dldm, KeyReport)> {
    build_strict(
        file,
        DLDM_SKIPPED_PREFIXES,
        allow_unexpected,
        dtype,
        &Device::Cpu,
        |vb| Dldm::new(cfg, vb),
    )
}

fn clip(t: usize, h: usize, w: usize) -> Tensor {
    let n = t * 3 * h * w;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (1, t, 3, h, w), &Device::Cpu).unwrap()
}

#[test]
fn official_layout_pt_loads_with_every_key_placed_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("official.pt");
    let tensors = small_official_tensors();
    write_pt(&tensors, DType::F32, dir.path(), &pt);

    let file = Arc::new(WeightFile::open(&pt, WeightFormat::Pytorch, None).unwrap());
    let cfg = small_config();
    let (dldm, report) = load_dldm(&file, &cfg, DType::F32, false).unwrap();
    assert!(
        report.missing.is_empty() && report.unexpected.is_empty() && report.misshaped.is_empty()
    );
    assert_eq!(report.placed, tensors.len() - 19);
    assert_eq!(report.skipped["quant_to_dit_dim.*"], 14);
    assert_eq!(report.skipped["encoder.patcher3d.*"], 3);
    assert_eq!(report.skipped["decoder.unpatcher3d.*"], 2);
    assert_eq!(report.skipped["outside network."], 1);
    assert_eq!(
        file.unused_keys().len(),
        19,
        "only the skipped keys stay unread"
    );

    // It computes: 9 frames at 32×32 → 2 latent steps × 4 codes, and decodes back.
    let out = dldm.encode(&clip(9, 32, 32)).unwrap();
    assert_eq!(out.features.dims(), &[1, 3, 32, 2, 2]);
    assert_eq!(out.indices.dims(), &[1, 2, 4]);
    let idx = out.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    assert!(idx.iter().all(|&i| i < 1000));
    let first = out.features.narrow(1, 0, 1).unwrap();
    let frames = dldm.decode(&first, &out.codes).unwrap();
    assert_eq!(frames.dims(), &[1, 9, 3, 32, 32]);

    // import-dldm infers the sizes, writes our form, and the bundle gives the same codes.
    let inferred = infer_dldm_config(&file, &ImportOptions::default()).unwrap();
    assert_eq!(inferred.config, cfg);
    let dst = dir.path().join("imported");
    let r = import_dldm(&pt, &dst, &ImportOptions::default()).unwrap();
    assert_eq!(r.inferred.config, cfg);
    assert_eq!(r.keys.placed, report.placed);
    assert_eq!(r.dtype, WeightDtype::F32);
    let yaml = std::fs::read_to_string(dst.join("dldm.yaml")).unwrap();
    let spec: vw2_policy::policy::bundle::DldmSpec = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(spec.config, cfg);
    let ours = Arc::new(WeightFile::open_auto(&dst.join("dldm.safetensors")).unwrap());
    assert!(ours.outside_keys().is_empty());
    assert!(ours.keys().iter().all(|k| !k.starts_with("network.")));
    let (again, rep2) = load_dldm(&ours, &spec.config, DType::F32, false).unwrap();
    assert_eq!(rep2.skipped_total(), 0);
    let out2 = again.encode(&clip(9, 32, 32)).unwrap();
    assert_eq!(
        out2.indices
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap(),
        idx
    );
}

#[test]
fn bf16_checkpoint_loads_in_the_bundles_dtype_and_import_keeps_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("official_bf16.pt");
    write_pt(&small_official_tensors(), DType::BF16, dir.path(), &pt);
    let file = Arc::new(WeightFile::open(&pt, WeightFormat::Pytorch, None).unwrap());
    assert_eq!(
        file.tensor("encoder.act.weight").unwrap().dtype(),
        DType::BF16
    );
    let cfg = small_config();
    // bf16 weights compute in f32 or f16 on the CPU (candle has no CPU bf16 matmul).
    for dtype in [DType::F32, DType::F16] {
        let (dldm, _) = load_dldm(&file, &cfg, dtype, false).unwrap();
        let out = dldm
            .encode(&clip(5, 32, 32).to_dtype(dtype).unwrap())
            .unwrap();
        assert_eq!(out.features.dtype(), dtype);
        assert_eq!(out.indices.dims(), &[1, 1, 4]);
    }
    let r = import_dldm(&pt, &dir.path().join("imp"), &ImportOptions::default()).unwrap();
    assert_eq!(r.dtype, WeightDtype::Bf16);
    assert_eq!(
        r.compute_dtype,
        WeightDtype::F32,
        "bf16 is stored, f32 computed on the CPU"
    );
    let st = WeightFile::open_auto(&dir.path().join("imp/dldm.safetensors")).unwrap();
    assert_eq!(
        st.tensor("encoder.act.weight").unwrap().dtype(),
        DType::BF16
    );
}

#[test]
fn renamed_missing_and_misshaped_keys_are_all_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = small_official_tensors();
    let renamed = "network.encoder.qformer_ldm.qformer.layers.0.norm2.weight";
    let v = t.remove(renamed).unwrap();
    t.insert(
        "network.encoder.qformer_ldm.qformer.layers.0.norm_2.weight".into(),
        v,
    );
    t.remove("network.decoder.up.2.attn.0.0.kv_proj.bias")
        .unwrap();
    let bad = "network.decoder.up.1.upsample.conv2.conv3d.weight";
    t.insert(
        bad.into(),
        Tensor::zeros((32, 32, 1, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let pt = dir.path().join("broken.pt");
    write_pt(&t, DType::F32, dir.path(), &pt);

    let file = Arc::new(WeightFile::open(&pt, WeightFormat::Pytorch, None).unwrap());
    let cfg = small_config();
    let e = load_dldm(&file, &cfg, DType::F32, false)
        .expect_err("a broken checkpoint must not load")
        .to_string();
    assert!(e.contains("broken.pt"), "{e}");
    assert!(e.contains("2 missing, 1 unexpected, 1 mis-shaped"), "{e}");
    assert!(
        e.contains("missing     encoder.qformer_ldm.qformer.layers.0.norm2.weight (expected [32])"),
        "{e}"
    );
    assert!(
        e.contains("unexpected  encoder.qformer_ldm.qformer.layers.0.norm_2.weight (found [32])"),
        "{e}"
    );
    assert!(
        e.contains("missing     decoder.up.2.attn.0.0.kv_proj.bias (expected [64])"),
        "{e}"
    );
    assert!(
        e.contains(
            "mis-shaped  decoder.up.1.upsample.conv2.conv3d.weight: expected [32, 32, 1, 3, 3], found [32, 32, 1, 1, 1]"
        ),
        "{e}"
    );
    // Grouped by module: the module line comes before its keys.
    let module = e
        .find("\n  encoder.qformer_ldm.qformer.layers.0:")
        .expect("module header");
    assert!(module < e.find("norm_2.weight").unwrap(), "{e}");

    // Allowing unexpected keys still refuses missing and mis-shaped ones.
    assert!(load_dldm(&file, &cfg, DType::F32, true).is_err());
    // import-dldm refuses it with the same list.
    let e = import_dldm(&pt, &dir.path().join("imp"), &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot place every key"), "{e}");
    assert!(e.contains("norm_2.weight"), "{e}");
    assert!(!dir.path().join("imp/dldm.safetensors").exists());
}

#[test]
fn old_layout_keys_are_refused_with_the_whole_list() {
    // A checkpoint in the pre-official layout (top-level qformer, conv_out) is refused
    // with every key that does not fit, not just the first.
    let mut expected = expected_keys(DType::F32, |vb| Dldm::new(&DldmConfig::tiny(), vb)).unwrap();
    expected.insert(
        "encoder.conv_out.0.conv3d.weight".into(),
        vec![16, 16, 1, 3, 3],
    );
    let moved: Vec<String> = expected
        .keys()
        .filter(|k| k.starts_with("encoder.qformer_ldm."))
        .cloned()
        .collect();
    for k in &moved {
        let s = expected.remove(k).unwrap();
        expected.insert(k.replace("encoder.qformer_ldm.qformer.", "qformer."), s);
    }
    let tensors: HashMap<String, Tensor> = expected
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let file = Arc::new(WeightFile::open_auto(&path).unwrap());
    let want = expected_keys(DType::F32, |vb| Dldm::new(&DldmConfig::tiny(), vb)).unwrap();
    let r = KeyReport::compare(&file, &want, DLDM_SKIPPED_PREFIXES);
    assert_eq!(r.missing.len(), moved.len());
    assert_eq!(r.unexpected.len(), moved.len() + 1);
    assert!(r
        .describe()
        .contains("unexpected  encoder.conv_out.0.conv3d.weight"));
}

#[test]
fn import_dldm_cli_prints_what_it_found() {
    let dir = tempfile::tempdir().unwrap();
    let pt = dir.path().join("official.pt");
    write_pt(&small_official_tensors(), DType::F32, dir.path(), &pt);
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .arg("import-dldm")
        .arg(&pt)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains(
            "channels 8, channels_mult [2, 4, 4], num_res_blocks 2, z_channels 16, features 32"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("4 queries, QFormer depth 2, 4 heads × 4, MLP 32"),
        "{stdout}"
    );
    assert!(stdout.contains("448 placed, 20 skipped"), "{stdout}");
    assert!(out.join("dldm.safetensors").is_file() && out.join("dldm.yaml").is_file());

    // Not a dLDM checkpoint: a clear error naming the key it looked for.
    let bogus = dir.path().join("bogus.safetensors");
    let m: HashMap<String, Tensor> = [(
        "w".to_string(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&m, &bogus).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .arg("import-dldm")
        .arg(&bogus)
        .arg("--out")
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bogus.safetensors") && err.contains("encoder.conv_in.0.conv3d.weight"),
        "{err}"
    );
}

#[test]
fn official_layout_safetensors_gets_the_same_key_map_as_pt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("official.safetensors");
    let mut tensors: HashMap<String, Tensor> = small_official_tensors().into_iter().collect();
    tensors.insert(
        "ema.encoder.act.weight".into(),
        Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let file = Arc::new(WeightFile::open_auto(&path).unwrap());
    assert_eq!(file.outside_keys(), ["ema.encoder.act.weight".to_string()]);
    let (_, report) = load_dldm(&file, &small_config(), DType::F32, false).unwrap();
    assert_eq!(report.placed, tensors.len() - 20);
    assert_eq!(report.skipped_total(), 20);
    let inferred = infer_dldm_config(&file, &ImportOptions::default()).unwrap();
    assert_eq!(inferred.config, small_config());
}
