//! Policy bundles: save → load round trip, the bundled fixture, and every
//! bad-weights case giving an error that names file, key and shapes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

mod common;
use common::max_abs_diff;

use candle_core::{DType, Device, Tensor};
use vw2_policy::model::ar::ArTransformer;
use vw2_policy::model::dldm::Dldm;
use vw2_policy::model::head::ActionHead;
use vw2_policy::policy::bundle::Head;
use vw2_policy::policy::weights::{seeded_var_builder, SeededInit};
use vw2_policy::policy::{create_random_policy, LoadedPolicy, RandomPolicySizes};

fn fresh_policy(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = create_random_policy(dir.path(), "t", seed, &RandomPolicySizes::tiny()).unwrap();
    (dir, yaml)
}

fn load_err(path: &Path) -> String {
    format!("{:#}", LoadedPolicy::load(path, &Device::Cpu).unwrap_err())
}

fn rewrite(path: &Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut map = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    f(&mut map);
    candle_core::safetensors::save(&map, path).unwrap();
}

fn clip() -> Tensor {
    let data: Vec<f32> = (0..5 * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    Tensor::from_vec(data, (1, 5, 3, 32, 32), &Device::Cpu).unwrap()
}

#[test]
fn save_load_round_trip_gives_identical_outputs() {
    let sizes = RandomPolicySizes::tiny();
    let (_d, yaml) = fresh_policy(11);
    // The in-memory models that were saved (same seeds as create_random_policy).
    let dev = Device::Cpu;
    let dldm = Dldm::new(
        &sizes.dldm,
        seeded_var_builder(Arc::new(SeededInit::new(11)), &dev),
    )
    .unwrap();
    let ar = ArTransformer::new(
        &sizes.ar,
        seeded_var_builder(Arc::new(SeededInit::new(12)), &dev),
    )
    .unwrap();
    let head = ActionHead::new(
        &sizes.head,
        seeded_var_builder(Arc::new(SeededInit::new(13)), &dev),
    )
    .unwrap();
    let loaded = LoadedPolicy::load(&yaml, &dev).unwrap();

    let a = dldm.encode(&clip()).unwrap();
    let b = loaded.dldm.encode(&clip()).unwrap();
    assert_eq!(
        a.features.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.features.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert_eq!(
        a.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        b.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap()
    );
    let first = a.features.narrow(1, 0, 1).unwrap();
    let ra = dldm.decode(&first, &a.codes).unwrap();
    let rb = loaded.dldm.decode(&first, &a.codes).unwrap();
    assert_eq!(
        ra.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        rb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    let instr = Tensor::ones((1, sizes.ar.instruction_dim), DType::F32, &dev).unwrap();
    let vis = Tensor::ones((1, 16, sizes.ar.visual_feature_dim), DType::F32, &dev).unwrap();
    let codes = Tensor::new(&[[3u32, 1, 4, 1, 5, 9, 2, 6]], &dev).unwrap();
    let la = ar.forward_full(&instr, &vis, &codes).unwrap();
    let lb = loaded.ar.forward_full(&instr, &vis, &codes).unwrap();
    assert_eq!(
        la.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        lb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    let idx = Tensor::new(&[[1u32, 2, 3, 4]], &dev).unwrap();
    let visual = Tensor::ones((1, 16), DType::F32, &dev).unwrap();
    let proprio = Tensor::ones((1, 18), DType::F32, &dev).unwrap();
    let ha = head.forward(&idx, &visual, Some(&proprio), None).unwrap();
    let hb = loaded
        .head_forward(&idx, &visual, Some(&proprio), None)
        .unwrap();
    assert_eq!(
        ha.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        hb.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert!(matches!(loaded.head, Head::Mlp(_)));
    // Every key in every file was read by some layer.
    for r in &loaded.reports {
        assert!(
            r.unused_keys.is_empty(),
            "{}: unused {:?}",
            r.component,
            r.unused_keys
        );
        assert!(r.parameters > 0);
    }
}

#[test]
fn bundled_fixture_loads_and_matches_its_generator() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-policy");
    let loaded = LoadedPolicy::load(&fixture, &Device::Cpu).unwrap();
    assert_eq!(loaded.spec.name, "tiny-random");
    // The fixture is `vw2 make-random-policy --seed 7`: regenerate and compare bytes.
    let (_d, yaml) = fresh_policy(7);
    for f in ["dldm.safetensors", "ar.safetensors", "head.safetensors"] {
        let a = std::fs::read(fixture.join(f)).unwrap();
        let b = std::fs::read(yaml.parent().unwrap().join(f)).unwrap();
        assert!(a == b, "{f} differs from a fresh seed-7 generation");
    }
}

#[test]
fn missing_key_names_file_key_and_shape() {
    let (d, yaml) = fresh_policy(1);
    let f = d.path().join("dldm.safetensors");
    rewrite(&f, |m| {
        m.remove("encoder.conv_in.0.conv3d.weight");
    });
    let e = load_err(&yaml);
    assert!(e.contains("dldm.safetensors"), "{e}");
    assert!(
        e.contains("missing     encoder.conv_in.0.conv3d.weight (expected [8, 192, 1, 3, 3])"),
        "{e}"
    );
}

#[test]
fn shape_mismatch_names_expected_and_found() {
    let (d, yaml) = fresh_policy(1);
    let f = d.path().join("ar.safetensors");
    rewrite(&f, |m| {
        m.insert(
            "norm.weight".into(),
            Tensor::zeros(31, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&yaml);
    assert!(e.contains("ar.safetensors"), "{e}");
    assert!(
        e.contains("mis-shaped  norm.weight: expected [32], found [31]"),
        "{e}"
    );
}

#[test]
fn nan_and_inf_weights_are_refused() {
    for bad in [f32::NAN, f32::INFINITY] {
        let (d, yaml) = fresh_policy(1);
        let f = d.path().join("head.safetensors");
        rewrite(&f, |m| {
            let w = m.get("mlp.0.bias").unwrap().clone();
            let mut v = w.to_vec1::<f32>().unwrap();
            v[3] = bad;
            m.insert(
                "mlp.0.bias".into(),
                Tensor::new(v.as_slice(), &Device::Cpu).unwrap(),
            );
        });
        let e = load_err(&yaml);
        assert!(
            e.contains("head.safetensors")
                && e.contains("'mlp.0.bias'")
                && e.contains("NaN or Inf"),
            "{e}"
        );
    }
}

#[test]
fn truncated_and_missing_files_are_clear_errors() {
    let (d, yaml) = fresh_policy(1);
    let f = d.path().join("dldm.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&yaml);
    assert!(
        e.contains("dldm.safetensors") && e.contains("not a readable safetensors file"),
        "{e}"
    );
    std::fs::remove_file(&f).unwrap();
    let e = load_err(&yaml);
    assert!(e.contains("dldm.safetensors: weight file not found"), "{e}");
}

#[test]
fn policy_yaml_errors_name_the_field() {
    let (_d, yaml) = fresh_policy(1);
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("{text}\nsurprise_key: 3\n")).unwrap();
    let e = load_err(&yaml);
    assert!(
        e.contains("policy.yaml") && e.contains("surprise_key"),
        "{e}"
    );

    std::fs::write(
        &yaml,
        text.replace("control_rate_hz: 30.0", "control_rate_hz: -1.0"),
    )
    .unwrap();
    let e = load_err(&yaml);
    assert!(e.contains("control_rate_hz: expected > 0, found -1"), "{e}");

    std::fs::write(&yaml, text.replace("visual_dim: 16", "visual_dim: 17")).unwrap();
    let e = load_err(&yaml);
    assert!(
        e.contains("components.head.config.visual_dim") && e.contains("found 17"),
        "{e}"
    );
}

#[test]
fn inspect_cli_reports_and_fails_on_bad_weights() {
    let bin = env!("CARGO_BIN_EXE_vw2");
    let (d, yaml) = fresh_policy(3);
    let out = Command::new(bin)
        .args(["inspect", yaml.to_str().unwrap(), "--forward"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("dldm") && stdout.contains("209060"),
        "{stdout}"
    );
    assert!(stdout.contains("forward ok"), "{stdout}");

    rewrite(&d.path().join("dldm.safetensors"), |m| {
        m.remove("quant_conv.conv3d.bias");
    });
    let out = Command::new(bin)
        .args(["inspect", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing     quant_conv.conv3d.bias (expected [4])"),
        "{stderr}"
    );
}

#[test]
fn onnx_head_bundle_loads_and_matches_the_mlp() {
    use vw2_policy::model::onnx_export::export_mlp_head_onnx;
    let (d, yaml) = fresh_policy(5);
    let dev = Device::Cpu;
    // An ONNX head over (codes, visual, proprio) with weights we know.
    let w1 = Tensor::randn(0f32, 0.3, (32, 16 + 16 + 15), &dev).unwrap();
    let b1 = Tensor::randn(0f32, 0.3, 32, &dev).unwrap();
    let w2 = Tensor::randn(0f32, 0.3, (4 * 7, 32), &dev).unwrap();
    let b2 = Tensor::randn(0f32, 0.3, 4 * 7, &dev).unwrap();
    let onnx = d.path().join("head.onnx");
    export_mlp_head_onnx(
        &onnx,
        &[(w1.clone(), b1.clone()), (w2.clone(), b2.clone())],
        16,
        16,
        Some(15),
        4,
        17,
    )
    .unwrap();
    let text = std::fs::read_to_string(&yaml).unwrap();
    let start = text.find("  head:").unwrap();
    let onnx_head = "  head:\n    kind: onnx\n    chunk: 4\n    weights: head.onnx\n";
    std::fs::write(&yaml, format!("{}{}", &text[..start], onnx_head)).unwrap();
    let loaded = LoadedPolicy::load(&yaml, &dev).unwrap();
    let r = loaded
        .reports
        .iter()
        .find(|r| r.component == "head")
        .unwrap();
    assert_eq!(r.kind, "onnx");
    assert_eq!(r.parameters, 32 * 47 + 32 + 28 * 32 + 28);

    let idx = Tensor::new(&[[1u32, 2, 3, 4]], &dev).unwrap();
    let visual = Tensor::ones((1, 16), DType::F32, &dev).unwrap();
    let proprio = Tensor::zeros((1, 15), DType::F32, &dev).unwrap();
    let out = loaded
        .head_forward(&idx, &visual, Some(&proprio), None)
        .unwrap();
    // Same MLP by hand: the codes input is the FSQ code values of the indices.
    let codes = loaded
        .dldm
        .fsq()
        .indices_to_codes(&idx)
        .unwrap()
        .reshape((1, 16))
        .unwrap();
    let x = Tensor::cat(&[&codes, &visual, &proprio], 1).unwrap();
    let h = x
        .matmul(&w1.t().unwrap())
        .unwrap()
        .broadcast_add(&b1)
        .unwrap()
        .relu()
        .unwrap();
    let y = h
        .matmul(&w2.t().unwrap())
        .unwrap()
        .broadcast_add(&b2)
        .unwrap()
        .reshape((1, 4, 7))
        .unwrap();
    let diff = max_abs_diff(&out, &y);
    assert!(diff < 1e-5, "{diff}");

    // An opset-18 export is refused when the bundle loads.
    export_mlp_head_onnx(&onnx, &[(w1, b1), (w2, b2)], 16, 16, Some(15), 4, 18).unwrap();
    let e = load_err(&yaml);
    assert!(e.contains("head.onnx") && e.contains("opset 18"), "{e}");
}

/// An official-style PyTorch checkpoint (`network.` prefix, nested under
/// `model`, with the DiT connector and non-network keys) loads through the key
/// map and gives the same outputs as the safetensors file it was made from.
#[test]
fn pytorch_checkpoint_with_official_keys_matches_safetensors() {
    let (d, yaml) = fresh_policy(21);
    let pt = d.path().join("dldm.pt");
    let status = Command::new("python3")
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "vw2_sim_tools.torch_ckpt", "--from-safetensors"])
        .arg(d.path().join("dldm.safetensors"))
        .arg("--out")
        .arg(&pt)
        .args(["--prefix", "network.", "--nest", "model"])
        .args(["--extra-key", "network.quant_to_dit_dim.weight=8x4"])
        .args(["--extra-key", "ema.step=1"])
        .status()
        .expect("python3 is required (scripts/setup.sh installs it)");
    assert!(status.success());
    let st = LoadedPolicy::load(&yaml, &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(&yaml).unwrap();
    let text = text.replacen(
        "weights: dldm.safetensors\n    format: safetensors",
        "weights: dldm.pt\n    format: pytorch\n    state_key: model",
        1,
    );
    assert!(text.contains("dldm.pt"));
    std::fs::write(&yaml, text).unwrap();
    let pt_policy = LoadedPolicy::load(&yaml, &Device::Cpu).unwrap();
    let r = &pt_policy.reports[0];
    assert_eq!(r.file, pt);
    assert!(r.unused_keys.is_empty(), "{:?}", r.unused_keys);
    // The DiT connector and the EMA entry outside `network.` are skipped and counted.
    assert_eq!(r.skipped_keys, 2);
    assert_eq!(r.parameters, st.reports[0].parameters);
    let a = st.dldm.encode(&clip()).unwrap();
    let b = pt_policy.dldm.encode(&clip()).unwrap();
    assert_eq!(
        a.features.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.features.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );

    // Without the `network.` prefix the keys are read as they are (our own layout).
    let plain = d.path().join("plain.pt");
    let status = Command::new("python3")
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "vw2_sim_tools.torch_ckpt", "--from-safetensors"])
        .arg(d.path().join("dldm.safetensors"))
        .arg("--out")
        .arg(&plain)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&yaml)
        .unwrap()
        .replace("dldm.pt", "plain.pt")
        .replace("    state_key: model\n", "");
    std::fs::write(&yaml, text).unwrap();
    let plain_policy = LoadedPolicy::load(&yaml, &Device::Cpu).unwrap();
    assert_eq!(plain_policy.reports[0].skipped_keys, 0);
    let c = plain_policy.dldm.encode(&clip()).unwrap();
    assert_eq!(
        a.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
        c.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap()
    );

    // A stray key inside the model's namespace is refused unless the bundle allows it.
    rewrite(&d.path().join("ar.safetensors"), |m| {
        m.insert(
            "layers.0.extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(&yaml);
    assert!(
        e.contains("ar.safetensors") && e.contains("unexpected  layers.0.extra.weight (found [3])"),
        "{e}"
    );
    let text = std::fs::read_to_string(&yaml).unwrap().replacen(
        "weights: ar.safetensors",
        "weights: ar.safetensors\n    allow_unexpected_keys: true",
        1,
    );
    std::fs::write(&yaml, text).unwrap();
    let allowed = LoadedPolicy::load(&yaml, &Device::Cpu).unwrap();
    assert_eq!(
        allowed.reports[1].unused_keys,
        vec!["layers.0.extra.weight".to_string()]
    );
}

#[test]
fn the_bundled_default_policy_loads_runs_and_fits_the_size_budget() {
    use vw2_policy::policy::{Policy, PolicyOptions};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/playtable-small");
    let bundle = LoadedPolicy::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(bundle.spec.name, "playtable-small");
    let c = &bundle.spec.components;
    let weights: u64 = [&c.dldm.weights, &c.ar.weights, &c.head.weights]
        .iter()
        .map(|w| std::fs::metadata(dir.join(&w.weights)).unwrap().len())
        .sum();
    assert!(weights <= 20 * 1024 * 1024, "{weights} bytes of weights");
    // It was trained: the head's validation metrics and the recipe that made it ship with it.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["label_fraction"], 0.1);
    assert!(m["val_loss"].as_f64().unwrap() < m["initial_train_loss"].as_f64().unwrap());
    let recipe = std::fs::read_to_string(dir.join("recipe.sh")).unwrap();
    assert!(recipe.contains("--config policies/playtable-small/train.yaml"));
    assert!(recipe.contains("--label-fraction 0.1"));
    // Closed loop on CALVIN-sized frames: a plan every 4 steps, finite actions in range.
    let mut p = Policy::new(bundle, PolicyOptions::default(), Device::Cpu).unwrap();
    p.reset("open the drawer").unwrap();
    let mut plans = 0;
    for i in 0..9usize {
        let data = (0..200 * 200 * 3)
            .map(|k| ((k * 7 + i * 13) % 256) as u8)
            .collect();
        let img = vw2_policy::io::RgbImage {
            height: 200,
            width: 200,
            data,
        };
        if let Some(plan) = p.observe(&img, &[0.0; 15], i as f64 / 30.0).unwrap() {
            plans += 1;
            assert_eq!(plan.actions.len(), 4);
            assert!(plan
                .actions
                .iter()
                .all(|a| a[..6].iter().all(|v| (-1.0..=1.0).contains(v))));
        }
    }
    assert_eq!(plans, 3);
}

#[test]
fn proprio_encoding_and_head_width_must_agree() {
    let (_d, yaml) = fresh_policy(4);
    let text = std::fs::read_to_string(&yaml).unwrap();
    assert!(text.contains("proprio_encoding: euler_sincos"), "{text}");
    // A raw encoding makes 15 features: an 18-wide head and 18 statistics do not fit.
    std::fs::write(
        &yaml,
        text.replace("proprio_encoding: euler_sincos", "proprio_encoding: raw"),
    )
    .unwrap();
    let e = load_err(&yaml);
    assert!(
        e.contains(
            "normalization.proprio_mean: expected 15 values (proprio_encoding Raw), found 18"
        ),
        "{e}"
    );
}
