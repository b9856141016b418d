//! The closed-loop policy on the bundled tiny policy: plan timing, shapes,
//! determinism, observed-vs-predicted codes, and refusals of bad input.

use std::path::Path;

mod common;
use common::max_abs_diff;

use candle_core::Device;
use vw2_policy::base::image::resize_bilinear;
use vw2_policy::io::RgbImage;
use vw2_policy::model::ar::Sampling;
use vw2_policy::policy::{LoadedPolicy, Policy, PolicyOptions};

fn policy(options: PolicyOptions) -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-policy");
    let bundle = LoadedPolicy::load(&dir, &Device::Cpu).unwrap();
    Policy::new(bundle, options, Device::Cpu).unwrap()
}

fn frame(i: usize) -> RgbImage {
    // 200×200 like CALVIN's static camera; the policy resizes to 32×32.
    let data = (0..200 * 200 * 3)
        .map(|k| ((k * 31 + i * 17) % 251) as u8)
        .collect();
    RgbImage {
        height: 200,
        width: 200,
        data,
    }
}

fn run(p: &mut Policy, steps: usize) -> Vec<vw2_policy::policy::Plan> {
    p.reset("open the drawer").unwrap();
    (0..steps)
        .filter_map(|i| p.observe(&frame(i), &[0.1; 15], i as f64 / 30.0).unwrap())
        .collect()
}

#[test]
fn plans_at_frame_zero_and_every_latent_step() {
    let mut p = policy(PolicyOptions::default());
    let plans = run(&mut p, 13);
    let steps: Vec<usize> = plans.iter().map(|p| p.control_step).collect();
    assert_eq!(steps, vec![0, 4, 8, 12]);
    for (k, plan) in plans.iter().enumerate() {
        assert_eq!(plan.latent_step, k + 1);
        assert_eq!(plan.predicted_codes.len(), 4);
        assert!(plan.predicted_codes.iter().all(|&c| c < 1000));
        assert_eq!(plan.observed_codes.len(), if k == 0 { 0 } else { 4 });
        assert_eq!(plan.actions.len(), 4);
        assert!(plan.relative);
        for a in &plan.actions {
            assert!(a[..6].iter().all(|v| (-1.0..=1.0).contains(v)));
            assert!(a[6] == 1.0 || a[6] == -1.0);
        }
        assert_eq!(plan.current_features.dims(), &[1, 1, 16, 4, 4]);
        assert!((plan.t - plan.control_step as f64 / 30.0).abs() < 1e-12);
    }
}

#[test]
fn same_seed_same_plans_and_reset_restarts() {
    let opts = PolicyOptions {
        sampling: Sampling::TopK {
            k: 50,
            temperature: 1.0,
        },
        seed: 3,
        ..Default::default()
    };
    let mut a = policy(opts.clone());
    let mut b = policy(opts);
    let pa = run(&mut a, 9);
    let pb = run(&mut b, 9);
    for (x, y) in pa.iter().zip(&pb) {
        assert_eq!(x.predicted_codes, y.predicted_codes);
        assert_eq!(x.actions, y.actions);
    }
    // A reset replays the episode exactly.
    let again = run(&mut a, 9);
    for (x, y) in pa.iter().zip(&again) {
        assert_eq!(x.predicted_codes, y.predicted_codes);
        assert_eq!(x.observed_codes, y.observed_codes);
    }
}

#[test]
fn observed_codes_match_encoding_the_whole_clip() {
    // With a window covering the episode, the codes observed at step k are the
    // encoder's codes of step k on the whole clip (the encoder is causal).
    let mut p = policy(PolicyOptions {
        window_latent_steps: 8,
        ..Default::default()
    });
    let plans = run(&mut p, 9);
    let frames: Vec<candle_core::Tensor> = (0..9)
        .map(|i| {
            let f = resize_bilinear(&frame(i), 32, 32);
            let t = candle_core::Tensor::from_slice(&f.data, (1, 32, 32, 3), &Device::Cpu).unwrap();
            let t = t
                .permute((0, 3, 1, 2))
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            ((t / 127.5).unwrap() - 1.0).unwrap()
        })
        .collect();
    let clip = candle_core::Tensor::stack(&frames, 1).unwrap();
    let enc = p.bundle().dldm.encode(&clip).unwrap();
    let idx = enc.indices.get(0).unwrap().to_vec2::<u32>().unwrap();
    assert_eq!(plans[1].observed_codes, idx[0]);
    assert_eq!(plans[2].observed_codes, idx[1]);
}

#[test]
fn replan_every_step_between_latent_boundaries() {
    let mut p = policy(PolicyOptions {
        replan_every: Some(1),
        ..Default::default()
    });
    let plans = run(&mut p, 6);
    assert_eq!(
        plans.iter().map(|p| p.control_step).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    // Codes only change at latent boundaries.
    assert_eq!(plans[1].predicted_codes, plans[0].predicted_codes);
    assert_eq!(plans[3].predicted_codes, plans[0].predicted_codes);
}

#[test]
fn long_episodes_rebuild_the_cache_instead_of_failing() {
    // The tiny AR holds 256 positions: 5 prefix tokens + 4 codes per step would
    // overflow after ~62 latent steps; a 90-step CALVIN subtask needs 360 frames.
    let mut p = policy(PolicyOptions {
        window_latent_steps: 2,
        ..Default::default()
    });
    let plans = run(&mut p, 361);
    assert_eq!(plans.len(), 91);
}

#[test]
fn bad_input_is_refused_clearly() {
    let mut p = policy(PolicyOptions::default());
    let e = p
        .observe(&frame(0), &[0.0; 15], 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("reset"), "{e}");
    p.reset("lift the red block").unwrap();
    let e = p
        .observe(&frame(0), &[0.0; 14], 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("robot_obs: expected 15 values, found 14"), "{e}");
    let mut bad = [0.0; 15];
    bad[7] = f64::NAN;
    let e = p.observe(&frame(0), &bad, 0.0).unwrap_err().to_string();
    assert!(e.contains("proprio[7]"), "{e}");
    let short = RgbImage {
        height: 10,
        width: 10,
        data: vec![0; 20],
    };
    let e = p.observe(&short, &[0.0; 15], 0.0).unwrap_err().to_string();
    assert!(
        e.contains("frame: expected 10×10×3 = 300 bytes, found 20"),
        "{e}"
    );
    let e = p
        .observe(&frame(0), &[0.0; 15], f64::INFINITY)
        .unwrap_err()
        .to_string();
    assert!(e.contains("frame time"), "{e}");
    let refused = |options: PolicyOptions| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-policy");
        let bundle = LoadedPolicy::load(&dir, &Device::Cpu).unwrap();
        Policy::new(bundle, options, Device::Cpu)
            .err()
            .unwrap()
            .to_string()
    };
    let e = refused(PolicyOptions {
        replan_every: Some(5),
        ..Default::default()
    });
    assert!(e.contains("replan_every: expected 1..=4, found 5"), "{e}");
    let e = refused(PolicyOptions {
        ensemble_decay: Some(f64::NAN),
        ..Default::default()
    });
    assert!(
        e.contains("ensemble_decay: expected a finite value ≥ 0, found NaN"),
        "{e}"
    );
}

#[test]
fn bilinear_resize_preserves_constants_and_identity() {
    let img = RgbImage {
        height: 3,
        width: 2,
        data: (0..18).map(|i| i as u8 * 10).collect(),
    };
    assert_eq!(resize_bilinear(&img, 3, 2), img);
    let flat = RgbImage {
        height: 7,
        width: 9,
        data: vec![77; 7 * 9 * 3],
    };
    assert!(resize_bilinear(&flat, 4, 5).data.iter().all(|&v| v == 77));
}

/// Plans from a run whose proprio changes every step (so chunks made inside
/// one latent step differ).
fn run_moving(p: &mut Policy, steps: usize) -> Vec<vw2_policy::policy::Plan> {
    p.reset("open the drawer").unwrap();
    (0..steps)
        .filter_map(|i| {
            let proprio: Vec<f64> = (0..15).map(|d| 0.3 * i as f64 - 0.05 * d as f64).collect();
            p.observe(&frame(i), &proprio, i as f64 / 30.0).unwrap()
        })
        .collect()
}

#[test]
fn a_mid_step_replan_acts_from_its_own_frame() {
    let mut p = policy(PolicyOptions {
        replan_every: Some(1),
        ..Default::default()
    });
    let plans = run_moving(&mut p, 8);
    // The head's rows start at the latent step's first frame: a plan made o
    // steps in keeps the last s − o of them.
    let lens: Vec<usize> = plans.iter().map(|p| p.actions.len()).collect();
    assert_eq!(lens, vec![4, 3, 2, 1, 4, 3, 2, 1]);
}

#[test]
fn temporal_ensembling_averages_the_chunks_of_a_latent_step() {
    let base = PolicyOptions {
        replan_every: Some(1),
        ..Default::default()
    };
    let plain = run_moving(&mut policy(base.clone()), 8);
    let mean = run_moving(
        &mut policy(PolicyOptions {
            ensemble_decay: Some(0.0),
            ..base.clone()
        }),
        8,
    );
    let oldest = run_moving(
        &mut policy(PolicyOptions {
            ensemble_decay: Some(60.0),
            ..base
        }),
        8,
    );
    // The chunks really differ inside a latent step (else the test proves nothing).
    assert_ne!(plain[1].actions[0], plain[0].actions[1]);
    for n in 0..8 {
        let (b, o) = (n - n % 4, n % 4);
        assert_eq!(mean[n].actions.len(), 4 - o);
        for (j, got) in mean[n].actions.iter().enumerate() {
            // Chunk made at b + i holds the action for step n + j at row o + j − i.
            let rows: Vec<&[f32; 7]> = (0..=o).map(|i| &plain[b + i].actions[o + j - i]).collect();
            for d in 0..6 {
                let want = rows.iter().map(|r| r[d]).sum::<f32>() / rows.len() as f32;
                assert!(
                    (got[d] - want).abs() < 1e-5,
                    "step {n} row {j} dim {d}: {} vs {want}",
                    got[d]
                );
            }
            let g: f32 = rows.iter().map(|r| r[6]).sum();
            if g != 0.0 {
                assert_eq!(got[6], g.signum());
            }
            // A steep decay keeps the oldest chunk's action.
            let first = &plain[b].actions[o + j];
            for (x, y) in oldest[n].actions[j].iter().zip(first) {
                assert!((x - y).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn a_head_with_the_instruction_and_keypoints_acts_on_the_instruction() {
    use vw2_policy::model::head::VisualPool;
    use vw2_policy::policy::{create_random_policy, RandomPolicySizes};
    let d = tempfile::tempdir().unwrap();
    let mut sizes = RandomPolicySizes::tiny();
    let f = sizes.dldm.feature_channels();
    sizes.head.visual_pool = VisualPool::Keypoints;
    sizes.head.visual_dim = VisualPool::Keypoints.width(f);
    sizes.head.instruction_dim = 16;
    create_random_policy(d.path(), "instr", 3, &sizes).unwrap();
    let bundle = LoadedPolicy::load(d.path(), &Device::Cpu).unwrap();
    // The head itself: same codes and visual input, two instructions, two actions.
    let dev = Device::Cpu;
    let idx = candle_core::Tensor::new(&[[1u32, 2, 3, 4]], &dev).unwrap();
    let map = candle_core::Tensor::randn(0f32, 1.0, (1, 1, f, 4, 4), &dev).unwrap();
    let visual = bundle.head_visual(&map).unwrap();
    assert_eq!(visual.dims(), &[1, 3 * f]);
    let proprio = candle_core::Tensor::zeros((1, 18), candle_core::DType::F32, &dev).unwrap();
    let act = |text: &str| {
        let ins = bundle.head_instruction(text, &dev).unwrap();
        assert_eq!(ins.as_ref().map(|t| t.dims().to_vec()), Some(vec![1, 16]));
        bundle
            .head_forward(&idx, &visual, Some(&proprio), ins.as_ref())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_ne!(act("open the drawer"), act("close the drawer"));
    assert_eq!(act("open the drawer"), act("Open the drawer."));
    // Through the closed loop: the first plan follows the instruction.
    let mut p = Policy::new(bundle, PolicyOptions::default(), Device::Cpu).unwrap();
    let mut first = |text: &str| {
        p.reset(text).unwrap();
        p.observe(&frame(0), &[0.1; 15], 0.0)
            .unwrap()
            .expect("a plan at frame 0")
            .actions
    };
    let open = first("open the drawer");
    assert_eq!(open, first("open the drawer"));
    assert_ne!(open, first("close the drawer"));
}

#[test]
fn the_streaming_encoder_gives_the_plans_of_a_window_covering_the_episode() {
    use vw2_policy::policy::closed_loop::EncoderMode;
    // 41 frames = 10 latent steps. A window of 10 steps never slides, so it sees
    // what the stream sees: the same observed codes, features and actions.
    let mut window = policy(PolicyOptions {
        window_latent_steps: 10,
        ..Default::default()
    });
    let mut stream = policy(PolicyOptions {
        encoder: EncoderMode::Stream,
        window_latent_steps: 2,
        ..Default::default()
    });
    let pw = run(&mut window, 41);
    let ps = run(&mut stream, 41);
    assert_eq!(pw.len(), 11);
    assert_eq!(ps.len(), pw.len());
    for (w, s) in pw.iter().zip(&ps) {
        assert_eq!(w.observed_codes, s.observed_codes, "step {}", w.latent_step);
        assert_eq!(
            w.predicted_codes, s.predicted_codes,
            "step {}",
            w.latent_step
        );
        let d = max_abs_diff(&w.current_features, &s.current_features);
        assert!(d < 1e-5, "step {}: features differ by {d}", w.latent_step);
    }
    // A 2-step window slides after step 2 and then sees less than the stream.
    let mut short = policy(PolicyOptions {
        window_latent_steps: 2,
        ..Default::default()
    });
    let p2 = run(&mut short, 41);
    assert_eq!(p2[2].observed_codes, ps[2].observed_codes);
    let differ = p2
        .iter()
        .zip(&ps)
        .skip(3)
        .filter(|(a, b)| max_abs_diff(&a.current_features, &b.current_features) > 1e-4)
        .count();
    assert!(
        differ > 0,
        "a sliding window must differ from the stream once it slides"
    );
}
