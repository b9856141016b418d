//! The trainers on tiny datasets: gradients reach every parameter, the ldm
//! loss goes down, a killed run resumes exactly, label subsets are
//! episode-level and seeded, the ldm stage never reads actions, and a
//! fine-tuned bundle loads and runs in closed loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use vw2_policy::data::npy::NpyArray;
use vw2_policy::data::npz::{NpzReader, NpzWriter};
use vw2_policy::data::{CalvinDataset, CalvinFrame, CalvinWriter, Image};
use vw2_policy::io::RgbImage;
use vw2_policy::policy::{
    create_random_policy, LoadedPolicy, Policy, PolicyOptions, RandomPolicySizes,
};
use vw2_policy::train::ar::{encoded_dataset, ArStage};
use vw2_policy::train::config::{
    ArStageConfig, GripperLoss, HeadStageConfig, LdmStageConfig, TrainConfig,
};
use vw2_policy::train::data::{label_subset, segments, split_episodes};
use vw2_policy::train::head::{finetune_head, head_windows, HeadStage, HeadTrainOptions};
use vw2_policy::train::ldm::{train_ldm, LdmStage, LdmTrainOptions};
use vw2_policy::train::optim::{gradient_magnitudes, named_vars, OptimConfig};
use vw2_policy::train::run::RunOptions;
use vw2_policy::train::DldmSource;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A dataset recorded with `vw2 record --backend fake` (3 episodes of 7 frames), shared.
fn fake_dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
            .args(["record", "--backend", "fake", "--episodes", "3", "--out"])
            .arg(d.path())
            .args(["--max-steps", "20"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        d
    })
    .path()
}

/// A tiny deterministic pseudo-random generator for test data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
}

/// Writes a synthetic CALVIN split: `episodes` episodes of `len` frames, 40×40
/// static images with a square moving with the (random) relative actions.
fn synthetic_dataset(dir: &Path, episodes: usize, len: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let mut w = CalvinWriter::create(dir).unwrap();
    let mut idx = 0;
    for ep in 0..episodes {
        let start = idx;
        let (mut x, mut y) = (8.0 + 10.0 * rng.next(), 8.0 + 10.0 * rng.next());
        for _ in 0..len {
            let mut rel = [0.0; 7];
            for v in rel.iter_mut().take(6) {
                *v = rng.next() * 2.0 - 1.0;
            }
            rel[6] = if rng.next() > 0.5 { 1.0 } else { -1.0 };
            let (cx, cy) = (x as usize, y as usize);
            let img = Image::from_fn(40, 40, |r, c| {
                if r.abs_diff(cy) < 5 && c.abs_diff(cx) < 5 {
                    [250, 40, 40]
                } else {
                    [20, 20 + (ep * 10) as u8, 90]
                }
            });
            let mut robot_obs = [0.0; 15];
            robot_obs[0] = x / 40.0;
            robot_obs[1] = y / 40.0;
            robot_obs[14] = rel[6];
            let frame = CalvinFrame {
                actions: [x, y, 0.0, 0.0, 0.0, 0.0, rel[6]],
                rel_actions: rel,
                robot_obs,
                scene_obs: [0.0; 24],
                rgb_static: img,
                rgb_gripper: Image::zeros(8, 8),
            };
            w.write_frame(idx, &frame).unwrap();
            idx += 1;
            x = (x + 2.0 * rel[0]).clamp(5.0, 34.0);
            y = (y + 2.0 * rel[1]).clamp(5.0, 34.0);
        }
        w.add_language(start, idx - 1, "move", format!("move the square {ep}"))
            .unwrap();
        w.finish_episode(start, idx - 1).unwrap();
    }
    w.finish().unwrap();
}

fn tiny_train(steps: u64, batch: usize, ckpt: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: batch,
        checkpoint_every: ckpt,
        keep_checkpoints: 2,
        log_every: 0,
        optim: OptimConfig {
            lr: 3e-3,
            warmup_steps: 2,
            ..Default::default()
        },
    }
}

fn ldm_cfg(steps: u64, batch: usize, ckpt: u64) -> LdmStageConfig {
    LdmStageConfig {
        clip_latent_steps: 1, // T = 5 frames: the fake episodes hold 7
        train: tiny_train(steps, batch, ckpt),
        ..Default::default()
    }
}

fn quiet() -> RunOptions {
    RunOptions::default()
}

fn random_policy(dir: &Path) -> PathBuf {
    create_random_policy(dir, "tiny", 5, &RandomPolicySizes::tiny()).unwrap()
}

fn load_st(path: &Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn assert_all_gradients(varmap: &candle_nn::VarMap, loss: &Tensor, stage: &str) {
    let vars = named_vars(varmap);
    assert!(!vars.is_empty());
    let grads = loss.backward().unwrap();
    let mags = gradient_magnitudes(&vars, &grads).unwrap();
    let zero: Vec<&String> = mags
        .iter()
        .filter(|(_, g)| !(*g > 0.0 && g.is_finite()))
        .map(|(n, _)| n)
        .collect();
    assert!(
        zero.is_empty(),
        "{stage}: zero or missing gradient for {zero:?}"
    );
}

// ---------------------------------------------------------------------------------------
/// Every variable the optimizer updates must be one the forward reads *now*:
/// a copy taken at construction (e.g. conv taps sliced once) would get
/// gradients, be updated, and never change the output. Perturbs each variable
/// in turn and checks that the loss moves.
fn assert_forward_reads_every_variable(
    varmap: &candle_nn::VarMap,
    loss: impl Fn() -> f32,
    stage: &str,
) {
    let base = loss();
    let mut frozen = vec![];
    for (name, var) in named_vars(varmap) {
        let old = var.as_tensor().copy().unwrap();
        let bumped = ((&old * 1.5).unwrap() + 0.25).unwrap();
        var.set(&bumped).unwrap();
        if loss() == base {
            frozen.push(name);
        }
        var.set(&old).unwrap();
    }
    assert!(
        frozen.is_empty(),
        "{stage}: the forward ignores updates of {frozen:?}"
    );
    assert_eq!(
        loss(),
        base,
        "{stage}: restoring the variables restores the loss"
    );
}

// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn every_parameter_gets_a_gradient_in_every_stage() {
    let dev = Device::Cpu;
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path(), 3, 9, 1);

    // ldm: the whole dLDM (encoder, QFormer, quantizer convs, decoder).
    let ldm = LdmStage::new(data.path(), &ldm_cfg(1, 2, 0), 0, &dev).unwrap();
    assert_eq!(
        ldm.num_items(),
        3 * 2,
        "two 5-frame clips per 9-frame episode"
    );
    let loss = ldm.loss(&[0, 3]).unwrap();
    assert_all_gradients(ldm.varmap(), &loss, "ldm");
    // Attention is invariant to some of the dLDM's variables (key biases, and
    // queries over a single key), so instead of perturbing one variable at a
    // time: after an update of every variable, the training model must compute
    // what a model built afresh on the updated variables computes.
    for (_, var) in named_vars(ldm.varmap()) {
        let bumped = ((var.as_tensor() * 1.1).unwrap() + 0.01).unwrap();
        var.set(&bumped).unwrap();
    }
    let fresh = vw2_policy::model::dldm::Dldm::new(
        &ldm.config().model,
        candle_nn::VarBuilder::from_varmap(ldm.varmap(), candle_core::DType::F32, &dev),
    )
    .unwrap();
    let x = ldm.batch(&[0, 3]).unwrap();
    let trained = ldm.loss(&[0, 3]).unwrap().to_scalar::<f32>().unwrap();
    let rebuilt = vw2_policy::train::ldm::reconstruction_loss(&fresh, &x)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(
        trained, rebuilt,
        "ldm: the training model ignores variable updates"
    );
    assert_ne!(trained, loss.to_scalar::<f32>().unwrap());
    let n_ldm = named_vars(ldm.varmap()).len();
    assert!(n_ldm > 100, "only {n_ldm} dLDM tensors");

    // ar: on the codes of a (random) frozen dLDM.
    let pol = tempfile::tempdir().unwrap();
    let src = DldmSource::resolve(&random_policy(pol.path())).unwrap();
    let ar_cfg = ArStageConfig {
        window_latent_steps: 1, // exercises the sliding-window encoding too
        train: tiny_train(1, 2, 0),
        ..Default::default()
    };
    let model_cfg = ar_cfg.resolved_model(&src.component.config).unwrap();
    let enc = encoded_dataset(
        data.path(),
        &src,
        1,
        Some(model_cfg.num_visual_tokens),
        16,
        None,
        false,
        &dev,
    )
    .unwrap();
    assert_eq!(enc.len(), 3);
    assert!(enc.iter().all(|e| e.steps == 2 && e.codes.len() == 8));
    let ar = ArStage::from_encoded(&ar_cfg, &model_cfg, enc, 0, &dev).unwrap();
    let loss = ar.loss(&[0, 1, 2]).unwrap();
    assert_all_gradients(ar.varmap(), &loss, "ar");
    assert_forward_reads_every_variable(
        ar.varmap(),
        || ar.loss(&[0, 1, 2]).unwrap().to_scalar::<f32>().unwrap(),
        "ar",
    );

    // head, with MSE and with BCE on the gripper.
    let bundle = LoadedPolicy::load(pol.path(), &dev).unwrap();
    let head_cfg = bundle.spec.components.head.config.clone().unwrap();
    let ds = CalvinDataset::open(data.path()).unwrap();
    let enc = encoded_dataset(data.path(), &src, 8, None, 16, None, false, &dev).unwrap();
    let norm = bundle.spec.normalization.clone();
    let windows = head_windows(&ds, &enc, None, &head_cfg, &norm, 4).unwrap();
    assert_eq!(windows.len(), 6);
    for gripper_loss in [GripperLoss::Mse, GripperLoss::Bce] {
        let cfg = HeadStageConfig {
            gripper_loss,
            train: tiny_train(1, 4, 0),
            ..Default::default()
        };
        let head = HeadStage::new(
            &cfg,
            &head_cfg,
            windows.clone(),
            vec![],
            norm.clone(),
            0,
            &dev,
        )
        .unwrap();
        let loss = head.loss(&[0, 1, 2, 3]).unwrap();
        assert_all_gradients(head.varmap(), &loss, &format!("head ({gripper_loss:?})"));
        assert_forward_reads_every_variable(
            head.varmap(),
            || {
                head.loss(&[0, 1, 2, 3])
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            },
            "head",
        );
    }
}

#[test]
fn cached_codes_and_features_mirror_the_closed_loop() {
    // 1 episode of 13 frames = 3 latent steps; W = 1 makes steps 2 and 3 use
    // sliding windows, W = 8 one causal pass.
    let dev = Device::Cpu;
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path(), 1, 13, 6);
    let pol = tempfile::tempdir().unwrap();
    let src = DldmSource::resolve(&random_policy(pol.path())).unwrap();
    let ds = CalvinDataset::open(data.path()).unwrap();
    for window in [1, 8] {
        let enc = encoded_dataset(data.path(), &src, window, None, 16, None, false, &dev).unwrap();
        assert_eq!(enc.len(), 1);
        let e = &enc[0];
        assert_eq!(e.steps, 3);
        let bundle = LoadedPolicy::load(pol.path(), &dev).unwrap();
        let f = bundle.dldm.config().feature_channels();
        let opts = PolicyOptions {
            window_latent_steps: window,
            ..Default::default()
        };
        let mut p = Policy::new(bundle, opts, dev.clone()).unwrap();
        p.reset("move the square 0").unwrap();
        let mut k = 0;
        for i in 0..13 {
            let fr = ds.frame(i).unwrap();
            let Some(plan) = p
                .observe(&fr.rgb_static, &fr.robot_obs, i as f64 / 30.0)
                .unwrap()
            else {
                continue;
            };
            if k > 0 {
                assert_eq!(
                    plan.observed_codes,
                    e.codes[(k - 1) * 4..k * 4],
                    "W {window}, step {k}: codes differ from the closed loop's"
                );
            }
            let pooled = vw2_policy::model::head::pool_features(
                &plan.current_features,
                vw2_policy::model::head::VisualPool::Keypoints,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            let f3 = 3 * f;
            let cached = &e.pooled[k * f3..(k + 1) * f3];
            assert_eq!(pooled.len(), f3);
            let d = pooled
                .iter()
                .zip(cached)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-4, "W {window}, step {k}: features differ by {d}");
            k += 1;
        }
        assert_eq!(k, 4);
    }
}

#[test]
fn ldm_loss_decreases_on_the_fake_dataset() {
    let out = tempfile::tempdir().unwrap();
    let r = train_ldm(&LdmTrainOptions {
        dataset: fake_dataset().to_path_buf(),
        out: out.path().to_path_buf(),
        config: ldm_cfg(30, 2, 0),
        seed: 3,
        run: quiet(),
    })
    .unwrap();
    assert!(r.report.completed);
    assert_eq!(r.report.losses.len(), 30);
    let first = r.report.losses[0];
    let last: f64 = r.report.losses[27..].iter().sum::<f64>() / 3.0;
    assert!(
        last < 0.5 * first,
        "loss {first} → {last}: {:?}",
        r.report.losses
    );
    // The code-usage monitor counted the codes of the sampled clips.
    let usage = r
        .code_usage
        .as_ref()
        .expect("code usage of a completed run");
    assert!(usage.clips > 0 && usage.latent_steps >= usage.clips);
    assert!(usage.distinct >= 1 && usage.distinct <= 1000);
    assert_eq!(usage.distinct_per_query.len(), 4);
    assert!(usage
        .distinct_per_query
        .iter()
        .all(|&d| d >= 1 && d <= usage.distinct));
    assert!(usage.mse_own_codes.is_finite() && usage.mse_own_codes > 0.0);
    assert!(usage.mse_other_codes.is_finite() && usage.mse_other_codes > 0.0);
    assert_eq!(usage.level_std_per_dim.len(), 4);
    assert!(usage
        .level_std_per_dim
        .iter()
        .all(|s| s.is_finite() && *s >= 0.0));
    // Outputs: weights, the description for the next stage, a 30-row CSV.
    assert!(out.path().join("dldm.safetensors").is_file());
    assert!(out.path().join("ldm_output.yaml").is_file());
    let csv = std::fs::read_to_string(out.path().join("loss.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "step,epoch,lr,loss,grad_norm,elapsed_s"
    );
    assert_eq!(lines.count(), 30);
}

#[test]
fn a_killed_run_resumes_exactly() {
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path(), 3, 9, 2);
    let opts = |out: &Path, run: RunOptions| LdmTrainOptions {
        dataset: data.path().to_path_buf(),
        out: out.to_path_buf(),
        config: ldm_cfg(6, 2, 2),
        seed: 11,
        run,
    };
    let a = tempfile::tempdir().unwrap();
    let full = train_ldm(&opts(a.path(), quiet())).unwrap();
    assert!(full.report.completed);

    // Killed after 5 updates: the newest checkpoint is step 4, update 5 is lost.
    let b = tempfile::tempdir().unwrap();
    let halted = train_ldm(&opts(
        b.path(),
        RunOptions {
            halt_after: Some(5),
            ..Default::default()
        },
    ))
    .unwrap();
    assert!(!halted.report.completed);
    assert_eq!(halted.report.steps_done, 5);
    assert!(!b.path().join("dldm.safetensors").exists());
    let ckpts = b.path().join("checkpoints");
    let latest = std::fs::read_to_string(ckpts.join("latest.json")).unwrap();
    assert!(latest.contains("step-00000004"), "{latest}");
    for f in ["model.safetensors", "optimizer.safetensors", "state.json"] {
        assert!(ckpts.join("step-00000004").join(f).is_file(), "{f}");
    }
    assert!(ckpts.join("step-00000002").is_dir());
    drop(halted);

    let resumed = train_ldm(&opts(b.path(), quiet())).unwrap();
    assert_eq!(resumed.report.resumed_from, Some(4));
    assert_eq!(resumed.report.losses.len(), 2);
    assert!(resumed.report.completed);
    // keep_checkpoints = 2: steps 4 and 6 remain.
    assert!(!ckpts.join("step-00000002").exists());
    assert!(ckpts.join("step-00000006").is_dir());

    let wa = load_st(&a.path().join("dldm.safetensors"));
    let wb = load_st(&b.path().join("dldm.safetensors"));
    assert_eq!(wa.len(), wb.len());
    for (k, ta) in &wa {
        let tb = &wb[k];
        let d = (ta - tb)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{k} differs by {d} after resume");
    }
    // The loss curve is the same, row for row (update 5 appears once).
    let rows = |p: &Path| -> Vec<(String, String)> {
        std::fs::read_to_string(p.join("loss.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split(',').collect();
                (c[0].to_string(), c[3].to_string())
            })
            .collect()
    };
    assert_eq!(rows(a.path()), rows(b.path()));
    // A resume with another config is refused.
    let mut other = opts(b.path(), quiet());
    other.config.train.optim.lr = 1e-2;
    let err = train_ldm(&other).unwrap_err().to_string();
    assert!(err.contains("different config"), "{err}");
}

#[test]
fn label_subsets_are_episode_level_and_seeded() {
    let pool: Vec<usize> = (0..40).filter(|e| e % 5 != 0).collect(); // 32 episodes
    let a = label_subset(&pool, 0.1, 1).unwrap();
    assert_eq!(a.len(), 3); // round(3.2)
    assert!(a.iter().all(|e| pool.contains(e)));
    assert_eq!(
        label_subset(&pool, 0.1, 1).unwrap(),
        a,
        "same seed, same subset"
    );
    let others: Vec<Vec<usize>> = (2..6)
        .map(|s| label_subset(&pool, 0.1, s).unwrap())
        .collect();
    assert!(
        others.iter().all(|o| *o != a),
        "another seed gives another subset"
    );
    assert_eq!(label_subset(&pool, 1.0, 9).unwrap(), pool);
    assert_eq!(
        label_subset(&pool, 0.001, 9).unwrap().len(),
        1,
        "at least one"
    );
    assert!(label_subset(&pool, 0.0, 9).is_err());

    // Through the trainer: 10 episodes, 2 held out, 0.25 of the other 8 = 2
    // episodes, and every window of those episodes (and no other) is used.
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path(), 10, 13, 3);
    let pol = tempfile::tempdir().unwrap();
    random_policy(pol.path());
    let (train_pool, val) = split_episodes(10, 0.2, 0);
    assert_eq!(val.len(), 2);
    let run = |seed: u64, fraction: f64| -> serde_json::Value {
        let out = tempfile::tempdir().unwrap();
        let r = finetune_head(&HeadTrainOptions {
            source: vw2_policy::teleop::record::EpisodeSource::All,
            name: None,
            dataset: data.path().to_path_buf(),
            val_dataset: None,
            policy: pol.path().to_path_buf(),
            label_fraction: fraction,
            seed,
            out: out.path().to_path_buf(),
            config: HeadStageConfig {
                train: tiny_train(2, 4, 0),
                ..Default::default()
            },
            run: quiet(),
        })
        .unwrap();
        assert!(r.report.completed);
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap()
    };
    let ids = |m: &serde_json::Value, k: &str| -> Vec<usize> {
        m[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let m1 = run(1, 0.25);
    let l1 = ids(&m1, "label_episode_ids");
    assert_eq!(l1.len(), 2);
    assert_eq!(l1, label_subset(&train_pool, 0.25, 1).unwrap());
    assert!(l1.iter().all(|e| !val.contains(e)));
    assert_eq!(ids(&m1, "val_episode_ids"), val);
    // 13 frames = 3 latent steps = 3 labelled windows per episode.
    assert_eq!(m1["label_windows"], 2 * 3);
    assert_eq!(m1["val_windows"], 2 * 3);
    let m2 = run(2, 0.25);
    assert_ne!(ids(&m2, "label_episode_ids"), l1);
    let all = run(1, 1.0);
    assert_eq!(ids(&all, "label_episode_ids"), train_pool);
    assert_eq!(all["label_windows"], 8 * 3);
}

#[test]
fn ldm_never_reads_actions() {
    let orig = tempfile::tempdir().unwrap();
    synthetic_dataset(orig.path(), 2, 9, 4);
    // Copy 1: random garbage actions (finite). Copy 2: no action, proprio or
    // scene arrays at all (only the images remain).
    let garbage = tempfile::tempdir().unwrap();
    let images_only = tempfile::tempdir().unwrap();
    let mut rng = Lcg(99);
    for entry in std::fs::read_dir(orig.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_dir() {
            for dst in [garbage.path(), images_only.path()] {
                let d = dst.join(&name);
                std::fs::create_dir_all(&d).unwrap();
                for f in std::fs::read_dir(entry.path()).unwrap() {
                    let f = f.unwrap();
                    std::fs::copy(f.path(), d.join(f.file_name())).unwrap();
                }
            }
            continue;
        }
        if !name.ends_with(".npz") || !name.starts_with("episode_") {
            std::fs::copy(entry.path(), garbage.path().join(&name)).unwrap();
            std::fs::copy(entry.path(), images_only.path().join(&name)).unwrap();
            continue;
        }
        let npz = NpzReader::open(entry.path()).unwrap();
        let mut g = NpzWriter::new();
        let mut i = NpzWriter::new();
        for key in npz.names() {
            let a = npz.array(key).unwrap();
            if key == "actions" || key == "rel_actions" {
                let v: Vec<f64> = (0..7).map(|_| rng.next() * 1e3 - 5e2).collect();
                g.add(key, &NpyArray::from_f64(&[7], &v));
            } else {
                g.add(key, &a);
            }
            if key.starts_with("rgb_") {
                i.add(key, &a);
            }
        }
        std::fs::write(garbage.path().join(&name), g.to_bytes().unwrap()).unwrap();
        std::fs::write(images_only.path().join(&name), i.to_bytes().unwrap()).unwrap();
    }
    // The full-frame reader fails on the images-only copy: nothing can read actions there.
    assert!(CalvinDataset::open(images_only.path())
        .unwrap()
        .frame(0)
        .is_err());
    let train = |ds: &Path| {
        let out = tempfile::tempdir().unwrap();
        let r = train_ldm(&LdmTrainOptions {
            dataset: ds.to_path_buf(),
            out: out.path().to_path_buf(),
            config: ldm_cfg(3, 2, 0),
            seed: 5,
            run: quiet(),
        })
        .unwrap();
        assert!(r.report.completed);
        load_st(&out.path().join("dldm.safetensors"))
    };
    let w0 = train(orig.path());
    for ds in [garbage.path(), images_only.path()] {
        let w = train(ds);
        for (k, t) in &w0 {
            let same = (t - &w[k])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                == 0.0;
            assert!(same, "{k} depends on the actions");
        }
    }
}

#[test]
fn finetuned_bundle_loads_and_runs_in_closed_loop() {
    let dev = Device::Cpu;
    let pol = tempfile::tempdir().unwrap();
    random_policy(pol.path());
    let out = tempfile::tempdir().unwrap();
    let r = finetune_head(&HeadTrainOptions {
        source: vw2_policy::teleop::record::EpisodeSource::All,
        name: None,
        dataset: fake_dataset().to_path_buf(),
        val_dataset: None,
        policy: pol.path().to_path_buf(),
        label_fraction: 1.0,
        seed: 0,
        out: out.path().to_path_buf(),
        config: HeadStageConfig {
            gripper_loss: GripperLoss::Bce,
            train: tiny_train(20, 2, 10),
            ..Default::default()
        },
        run: quiet(),
    })
    .unwrap();
    assert!(r.report.completed);
    assert!(r.report.last_loss < r.report.first_loss);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("metrics.json")).unwrap())
            .unwrap();
    for key in [
        "train_loss",
        "initial_train_loss",
        "val_loss",
        "action_dims",
        "val_action_mae",
        "val_gripper_accuracy",
        "train_gripper_accuracy",
        "label_fraction",
        "seed",
        "label_windows",
        "label_episodes",
        "label_episode_ids",
        "train_pool_episodes",
        "val_windows",
        "val_episodes",
        "val_episode_ids",
        "steps",
    ] {
        assert!(m.get(key).is_some(), "metrics.json lacks {key}: {m}");
    }
    // 3 episodes: 1 held out, 2 labelled, one 4-step window each.
    assert_eq!(m["label_episodes"], 2);
    assert_eq!(m["label_windows"], 2);
    assert_eq!(m["val_windows"], 1);
    assert_eq!(m["val_action_mae"].as_array().unwrap().len(), 7);
    let acc = m["val_gripper_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));

    // The new bundle: its own copies of the frozen parts, the new head.
    for f in [
        "policy.yaml",
        "dldm.safetensors",
        "ar.safetensors",
        "head.safetensors",
    ] {
        assert!(out.path().join(f).is_file(), "{f}");
    }
    assert_eq!(
        std::fs::read(out.path().join("ar.safetensors")).unwrap(),
        std::fs::read(pol.path().join("ar.safetensors")).unwrap()
    );
    let bundle = LoadedPolicy::load(out.path(), &dev).unwrap();
    // The tcp angles enter as sin/cos: 18 proprio features, each with its statistics.
    assert_eq!(bundle.spec.normalization.proprio_std.len(), 18);
    assert_eq!(
        bundle.spec.normalization.proprio_encoding,
        vw2_policy::policy::proprio::ProprioEncoding::EulerSincos
    );
    let mut p = Policy::new(bundle, PolicyOptions::default(), dev).unwrap();
    p.reset("pull the handle to open the drawer").unwrap();
    let ds = CalvinDataset::open(fake_dataset()).unwrap();
    let mut plans = 0;
    for i in 0..7 {
        let f = ds.frame(i).unwrap();
        let img = RgbImage {
            height: f.rgb_static.height,
            width: f.rgb_static.width,
            data: f.rgb_static.data.clone(),
        };
        if let Some(plan) = p.observe(&img, &f.robot_obs, i as f64 / 30.0).unwrap() {
            assert_eq!(plan.actions.len(), 4);
            plans += 1;
        }
    }
    assert_eq!(plans, 2);
    // The segments of the recorded dataset carry its instructions.
    let segs = segments(&ds);
    assert_eq!(segs.len(), 3);
    assert_eq!(segs[0].instruction, "pull the handle to open the drawer");
}

#[test]
fn train_all_cli_chains_the_stages_into_a_bundle() {
    let out = tempfile::tempdir().unwrap();
    let cfg = out.path().join("all.yaml");
    std::fs::write(
        &cfg,
        "ldm:\n  train: {steps: 3, batch_size: 2, log_every: 0}\n\
         ar:\n  train: {steps: 3, batch_size: 2}\nhead:\n  train: {steps: 3, batch_size: 2}\n",
    )
    .unwrap();
    let policy = out.path().join("policy");
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["train", "all", "--dataset"])
        .arg(fake_dataset())
        .arg("--out")
        .arg(&policy)
        .arg("--config")
        .arg(&cfg)
        .args(["--seed", "4"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["ldm"]["report"]["steps_done"], 3);
    // The default clips (9 frames) do not fit the 7-frame episodes: 5-frame clips are used.
    assert_eq!(summary["ldm"]["clip_frames"], 5);
    assert_eq!(summary["ar"]["report"]["steps_done"], 3);
    assert_eq!(summary["head"]["report"]["steps_done"], 3);
    for f in [
        "train/ldm/dldm.safetensors",
        "train/ar/ar.safetensors",
        "train/ar/bundle/policy.yaml",
        "train/head/loss.csv",
        "metrics.json",
    ] {
        assert!(policy.join(f).is_file(), "{f}");
    }
    // The trained dLDM and AR made it into the bundle, which loads.
    assert_eq!(
        std::fs::read(policy.join("dldm.safetensors")).unwrap(),
        std::fs::read(policy.join("train/ldm/dldm.safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read(policy.join("ar.safetensors")).unwrap(),
        std::fs::read(policy.join("train/ar/ar.safetensors")).unwrap()
    );
    LoadedPolicy::load(&policy, &Device::Cpu).unwrap();
    // `vw2 eval codes` scores the AR on the same codes the AR stage cached.
    let report = out.path().join("codes.json");
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["eval", "codes", "--policy"])
        .arg(&policy)
        .arg("--dataset")
        .arg(fake_dataset())
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let cache = load_st(&policy.join("train/ar/code_cache.safetensors"));
    let mut cached = std::collections::BTreeSet::new();
    let mut cached_steps = 0;
    for (k, t) in &cache {
        if k.ends_with(".codes") {
            let v = t.to_vec1::<u32>().unwrap();
            cached_steps += v.len() / 4;
            cached.extend(v);
        }
    }
    assert_eq!(r["steps"], cached_steps);
    assert_eq!(r["distinct_codes"], cached.len());
    assert_eq!(r["top1_per_query"].as_array().unwrap().len(), 4);
    for k in ["top1", "step_exact", "first_step_top1"] {
        let v = r[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    assert!(r["step_exact"].as_f64() <= r["top1"].as_f64());
    assert!(r["dldm"]["clips"].as_u64().unwrap() > 0);
    for k in ["mse_own_codes", "mse_other_codes"] {
        let v = r["dldm"][k].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{k} = {v}");
    }
    // A bad config key is refused with the file name.
    std::fs::write(&cfg, "ldm:\n  bogus: 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["train", "all", "--dataset"])
        .arg(fake_dataset())
        .arg("--out")
        .arg(&policy)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("all.yaml") && err.contains("bogus"), "{err}");
}

#[test]
fn e2e_baseline_trains_on_the_labelled_episodes_and_plans_as_trained() {
    use vw2_policy::eval::policy::E2eEvalPolicy;
    use vw2_policy::io::Observation;
    use vw2_policy::train::config::E2eStageConfig;
    use vw2_policy::train::e2e::{train_e2e, E2eStage, E2eTrainOptions, LoadedE2e};
    let dev = Device::Cpu;
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path(), 10, 9, 5);
    let cfg = E2eStageConfig {
        image_size: [32, 32],
        hidden: vec![32],
        train: tiny_train(40, 8, 0),
        ..Default::default()
    };
    let out = tempfile::tempdir().unwrap();
    let r = train_e2e(&E2eTrainOptions {
        dataset: data.path().to_path_buf(),
        out: out.path().to_path_buf(),
        config: cfg.clone(),
        label_fraction: 0.25,
        seed: 3,
        run: quiet(),
    })
    .unwrap();
    assert!(r.report.completed);
    // The head's labelled subset for the same seed and split: 2 of the 8
    // training episodes, 6 windows of 4 actions in each 9-frame episode.
    let (pool, val) = split_episodes(10, cfg.val_fraction, cfg.val_seed);
    let labelled = label_subset(&pool, 0.25, 3).unwrap();
    let split: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("split.json")).unwrap()).unwrap();
    assert_eq!(split["labelled_episodes"], serde_json::json!(labelled));
    assert_eq!(split["val_episodes"], serde_json::json!(val));
    assert_eq!(r.labelled_episodes, 2);
    assert_eq!(r.train_windows, 2 * 6);
    let m = r.metrics.as_ref().expect("held-out episodes are scored");
    assert_eq!(m.windows, 2 * 6);
    assert_eq!(m.mae.len(), 7);
    let losses = &r.report.losses;
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.8 * losses[0], "loss {} → {last}", losses[0]);

    // Gradients reach the encoder's first conv and every other variable.
    let ds = CalvinDataset::open(data.path()).unwrap();
    let loaded = LoadedE2e::load(out.path(), &dev).unwrap();
    let windows = vw2_policy::train::e2e::e2e_windows(
        &ds,
        &labelled,
        &loaded.spec.model,
        &loaded.spec.normalization,
    )
    .unwrap();
    let stage = E2eStage::new(
        ds,
        &cfg,
        &loaded.spec.model,
        windows.clone(),
        vec![],
        0,
        &dev,
    )
    .unwrap();
    let loss = stage.loss(&[0, 5, 7]).unwrap();
    let vars = named_vars(stage.varmap());
    let grads = loss.backward().unwrap();
    let mags = gradient_magnitudes(&vars, &grads).unwrap();
    assert!(mags
        .iter()
        .any(|(n, g)| n.starts_with("encoder.conv_in") && *g > 0.0));
    // With one frame the causal temporal attention (`attn_*.1`) attends to a
    // single key, so its query and key projections cannot change the output;
    // every other variable must get a gradient.
    let inert = |n: &str| n.contains("attn_1.1.q.") || n.contains("attn_1.1.k.");
    let zero: Vec<&String> = mags
        .iter()
        .filter(|(n, g)| !(inert(n) || (*g > 0.0 && g.is_finite())))
        .map(|(n, _)| n)
        .collect();
    assert!(
        zero.is_empty(),
        "e2e: zero or missing gradient for {zero:?}"
    );
    assert!(mags.iter().filter(|(n, _)| !inert(n)).count() > 40);

    // Run time sees what training saw: the closed-loop plan for a recorded
    // frame equals the trained network on the training path's input.
    let w = &windows[3];
    let ds = CalvinDataset::open(data.path()).unwrap();
    let frame = CalvinFrame::read(ds.frame_path(w.frame)).unwrap();
    let obs = Observation {
        rgb_static: frame.rgb_static.clone(),
        rgb_gripper: frame.rgb_gripper.clone(),
        robot_obs: frame.robot_obs.to_vec(),
        scene_obs: frame.scene_obs.to_vec(),
    };
    let mut policy = E2eEvalPolicy::load(out.path()).unwrap();
    let ins = segments(&ds)
        .into_iter()
        .find(|s| s.start <= w.frame && w.frame <= s.end)
        .unwrap()
        .instruction;
    vw2_policy::eval::policy::EvalPolicy::reset(&mut policy, "move", &ins).unwrap();
    let planned = policy.plan(&obs).unwrap();
    let frames = vw2_policy::train::data::StaticFrames::new(ds, [32, 32], 0)
        .clips(&[vec![w.frame]], &dev)
        .unwrap();
    let p = Tensor::from_vec(w.proprio.clone(), (1, w.proprio.len()), &dev).unwrap();
    let i = Tensor::from_vec(w.instruction.clone(), (1, w.instruction.len()), &dev).unwrap();
    let trained = loaded.model.forward(&frames, &p, &i).unwrap();
    let rows = vw2_policy::model::head::chunk_rows(&trained, 0).unwrap();
    let want = vw2_policy::model::head::postprocess_calvin(&rows).unwrap();
    assert_eq!(planned, want);
    assert_eq!(planned.len(), 4);
}

/// One preprocessing: the bytes a policy was trained on for a recorded frame
/// equal what the runtime's ingest (the path of `vw2 run` and the ROS node)
/// and the closed-loop eval hand it for the same frame, whatever the camera's
/// encoding and row padding.
#[test]
fn training_and_run_time_see_the_same_bytes_for_a_frame() {
    use vw2_policy::io::robot::{Encoding, RawFrame};
    use vw2_policy::runtime::ingest::to_rgb_resized;
    let data = tempfile::tempdir().unwrap();
    synthetic_dataset(data.path(), 1, 3, 11);
    let ds = CalvinDataset::open(data.path()).unwrap();
    let size = [24, 32];
    let frames = vw2_policy::train::data::StaticFrames::new(ds, size, 0);
    let raw = frames.read_raw(1).unwrap();
    assert_eq!((raw.height, raw.width), (40, 40));
    let trained = frames.frame(1).unwrap();
    assert_eq!(trained.len(), 24 * 32 * 3);

    // rgb8, tightly packed.
    let rgb = RawFrame::rgb(&raw);
    assert_eq!(
        *trained,
        to_rgb_resized(&rgb, size[0], size[1]).unwrap().data
    );
    // bgr8 with two bytes of row padding.
    let step = raw.width * 3 + 2;
    let mut bgr = vec![0u8; raw.height * step];
    for y in 0..raw.height {
        for x in 0..raw.width {
            let s = (y * raw.width + x) * 3;
            let d = y * step + x * 3;
            bgr[d] = raw.data[s + 2];
            bgr[d + 1] = raw.data[s + 1];
            bgr[d + 2] = raw.data[s];
        }
    }
    let bgr = RawFrame {
        encoding: Encoding::Bgr8,
        height: raw.height,
        width: raw.width,
        step,
        data: bgr,
    };
    assert_eq!(
        *trained,
        to_rgb_resized(&bgr, size[0], size[1]).unwrap().data
    );
    // The closed-loop eval and the end-to-end baseline go through the same function.
    assert_eq!(
        *trained,
        vw2_policy::base::image::preprocess(&raw, size).data
    );
    // The frames really were resized (the check is not vacuous).
    assert_ne!(trained.len(), raw.data.len());
}
