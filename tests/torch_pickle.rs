//! Loading `torch.save` (zip format) checkpoints through candle's pickle reader.
//!
//! There is no torch on our machines, so the checkpoints are produced by the pure-Python
//! writer in `python/vw2_sim_tools/torch_ckpt.py`, converting a safetensors file written
//! here. `python3` is part of the project set-up: if it is missing this test fails.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Runs `python3 -m vw2_sim_tools.torch_ckpt ARGS`, panicking with a clear message when
/// python3 is not available or the conversion fails.
fn run_converter(args: &[&str]) {
    let output = Command::new("python3")
        .arg("-m")
        .arg("vw2_sim_tools.torch_ckpt")
        .args(args)
        .env("PYTHONPATH", python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run `python3` ({e}); python3 (>= 3.8, standard library only) is \
                 required by this test to write torch checkpoints — install it / put it on PATH"
            )
        });
    assert!(
        output.status.success(),
        "python3 -m vw2_sim_tools.torch_ckpt {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The deterministic fill of `--extra-key` tensors (see `pattern_values` in torch_ckpt.py).
fn pattern_f32(numel: usize) -> Vec<f32> {
    (0..numel)
        .map(|i| ((7 * i) % 17) as f32 / 16.0 - 0.5)
        .collect()
}

fn source_tensors(dev: &Device) -> HashMap<String, Tensor> {
    // Values that are not exactly representable in decimal, to make sure the bytes are
    // carried over bit for bit.
    let vals = |n: usize, scale: f32, shift: f32| -> Vec<f32> {
        (0..n).map(|i| (i as f32 * scale + shift).sin()).collect()
    };
    let mut m = HashMap::new();
    m.insert(
        "patch_embed.weight".to_string(),
        Tensor::from_vec(vals(2 * 3 * 3 * 3, 0.37, 0.1), (2, 3, 1, 3, 3), dev).unwrap(),
    );
    m.insert(
        "patch_embed.bias".to_string(),
        Tensor::from_vec(vec![0.1f32, -2.5e-3], 2, dev).unwrap(),
    );
    m.insert(
        "blocks.0.proj.weight".to_string(),
        Tensor::from_vec(vals(4 * 5, -1.3, 0.7), (4, 5), dev).unwrap(),
    );
    m.insert(
        "blocks.0.norm.scale".to_string(),
        Tensor::from_vec(vals(3 * 2 * 4, 0.11, -0.2), (3, 2, 4), dev).unwrap(),
    );
    m.insert(
        "counts".to_string(),
        Tensor::from_vec(vec![-3i64, 0, 1 << 40], 3, dev).unwrap(),
    );
    m
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    match want.dtype() {
        DType::F32 => {
            let g: Vec<u32> = got
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            let w: Vec<u32> = want
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(g, w, "{name}: values");
        }
        DType::I64 => {
            let g = got.flatten_all().unwrap().to_vec1::<i64>().unwrap();
            let w = want.flatten_all().unwrap().to_vec1::<i64>().unwrap();
            assert_eq!(g, w, "{name}: values");
        }
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Checks a checkpoint converted with `--prefix network.` and the two extra keys.
fn check_loaded(loaded: Vec<(String, Tensor)>, source: &HashMap<String, Tensor>) {
    let n_loaded = loaded.len();
    let loaded: HashMap<String, Tensor> = loaded.into_iter().collect();
    assert_eq!(loaded.len(), n_loaded, "duplicate tensor names");

    let mut want_keys: BTreeSet<String> = source.keys().map(|k| format!("network.{k}")).collect();
    want_keys.insert("network.quant_to_dit_dim.weight".to_string());
    want_keys.insert("ema.foo".to_string());
    let got_keys: BTreeSet<String> = loaded.keys().cloned().collect();
    assert_eq!(got_keys, want_keys);

    for (name, want) in source {
        let key = format!("network.{name}");
        assert_same(&key, &loaded[&key], want);
    }

    let extra = &loaded["network.quant_to_dit_dim.weight"];
    assert_eq!(extra.dtype(), DType::F32);
    assert_eq!(extra.dims(), &[2, 3]);
    assert_eq!(
        extra.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        pattern_f32(6)
    );

    let ema = &loaded["ema.foo"];
    assert_eq!(ema.dtype(), DType::F32);
    assert_eq!(ema.dims(), &[4]);
    assert_eq!(ema.to_vec1::<f32>().unwrap(), pattern_f32(4));
}

#[test]
fn torch_zip_checkpoints_load_through_candle_pickle() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let st_path = dir.path().join("policy.safetensors");
    let source = source_tensors(&dev);
    candle_core::safetensors::save(&source, &st_path).unwrap();
    let st = st_path.to_str().unwrap();

    // (1) Nested like the official dLDM checkpoints: {"model": {"network.…": tensor}}.
    let nested = dir.path().join("dldm_nested.pt");
    run_converter(&[
        "--from-safetensors",
        st,
        "--out",
        nested.to_str().unwrap(),
        "--prefix",
        "network.",
        "--nest",
        "model",
        "--extra-key",
        "network.quant_to_dit_dim.weight=2x3",
        "--extra-key",
        "ema.foo=4",
    ]);
    let loaded = candle_core::pickle::read_all_with_key(&nested, Some("model")).unwrap();
    check_loaded(loaded, &source);

    // Without the key the top-level dict only holds a dict, no tensors; a wrong key errors.
    assert!(candle_core::pickle::read_all_with_key(&nested, None)
        .unwrap()
        .is_empty());
    assert!(candle_core::pickle::read_all_with_key(&nested, Some("state_dict")).is_err());

    // (2) A flat state dict.
    let flat = dir.path().join("dldm_flat.pt");
    run_converter(&[
        "--from-safetensors",
        st,
        "--out",
        flat.to_str().unwrap(),
        "--prefix",
        "network.",
        "--extra-key",
        "network.quant_to_dit_dim.weight=2x3",
        "--extra-key",
        "ema.foo=4",
    ]);
    check_loaded(
        candle_core::pickle::read_all_with_key(&flat, None).unwrap(),
        &source,
    );
    check_loaded(candle_core::pickle::read_all(&flat).unwrap(), &source);
}

#[test]
fn torch_converter_rejects_colliding_extra_key() {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    let st_path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(&source_tensors(&dev), &st_path).unwrap();
    let out = dir.path().join("w.pt");
    let output = Command::new("python3")
        .args(["-m", "vw2_sim_tools.torch_ckpt", "--from-safetensors"])
        .arg(&st_path)
        .arg("--out")
        .arg(&out)
        .args(["--prefix", "network.", "--extra-key", "network.counts=3"])
        .env("PYTHONPATH", python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("could not run `python3` ({e}); python3 is required"));
    assert!(!output.status.success(), "collision must be an error");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("collides"),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!out.exists(), "nothing may be written on error");
}
