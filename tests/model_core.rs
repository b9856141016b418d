//! dLDM core: shapes, causality, decoding and gradient flow on a tiny config.

use std::sync::Arc;

mod common;
use common::max_abs_diff;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use vw2_policy::model::dldm::{Dldm, DldmConfig};
use vw2_policy::model::head::{pool_features, ActionHead, HeadConfig, VisualPool};
use vw2_policy::policy::weights::{seeded_var_builder, SeededInit};

fn tiny_model(seed: u64) -> Dldm {
    let init = Arc::new(SeededInit::new(seed));
    Dldm::new(&DldmConfig::tiny(), seeded_var_builder(init, &Device::Cpu)).unwrap()
}

fn clip(t: usize, seed: u64) -> Tensor {
    // Deterministic pseudo-random frames in [-1, 1], [1, T, 3, 32, 32].
    let n = t * 3 * 32 * 32;
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, (1, t, 3, 32, 32), &Device::Cpu).unwrap()
}

#[test]
fn encode_shapes_and_code_range() {
    let m = tiny_model(1);
    let out = m.encode(&clip(9, 3)).unwrap();
    // 9 frames → 3 latent frames → 2 steps × 4 codes.
    assert_eq!(out.features.dims(), &[1, 3, 16, 4, 4]);
    assert_eq!(out.codes.dims(), &[1, 8, 4]);
    assert_eq!(out.indices.dims(), &[1, 2, 4]);
    for i in out.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap() {
        assert!(i < 1000);
    }
    // Indices and codes agree.
    let back = m
        .fsq()
        .indices_to_codes(&out.indices)
        .unwrap()
        .reshape((1, 8, 4))
        .unwrap();
    assert!(max_abs_diff(&back, &out.codes) < 1e-6);
}

#[test]
fn encoder_is_causal() {
    let m = tiny_model(2);
    let a = clip(13, 5);
    // Change only the frames of latent step 3 (raw frames 9..=12).
    let changed = Tensor::cat(&[a.narrow(1, 0, 9).unwrap(), clip(4, 99)], 1).unwrap();
    let ea = m.encode(&a).unwrap();
    let eb = m.encode(&changed).unwrap();
    // Latent frames 0..=2 and the codes of steps 1..=2 (pairs (0,1), (1,2)) are unchanged.
    let fa = ea.features.narrow(1, 0, 3).unwrap();
    let fb = eb.features.narrow(1, 0, 3).unwrap();
    assert!(
        max_abs_diff(&fa, &fb) < 1e-5,
        "features of steps ≤ 2 changed"
    );
    assert!(
        max_abs_diff(
            &ea.codes.narrow(1, 0, 8).unwrap(),
            &eb.codes.narrow(1, 0, 8).unwrap()
        ) < 1e-6
    );
    // ...and the change does show up at step 3, so the test can fail.
    assert!(
        max_abs_diff(
            &ea.features.narrow(1, 3, 1).unwrap(),
            &eb.features.narrow(1, 3, 1).unwrap()
        ) > 1e-4
    );
}

#[test]
fn decoder_is_causal_in_the_codes() {
    let m = tiny_model(3);
    let enc = m.encode(&clip(5, 1)).unwrap();
    let first = enc.features.narrow(1, 0, 1).unwrap();
    let idx_a = Tensor::new(
        &[[[1u32, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]],
        &Device::Cpu,
    )
    .unwrap();
    let idx_b = Tensor::new(
        &[[[1u32, 2, 3, 4], [5, 6, 7, 8], [900, 800, 700, 600]]],
        &Device::Cpu,
    )
    .unwrap();
    let fa = m.decode_indices(&first, &idx_a).unwrap();
    let fb = m.decode_indices(&first, &idx_b).unwrap();
    // 3 steps → 1 + 4·3 = 13 frames of 32×32.
    assert_eq!(fa.dims(), &[1, 13, 3, 32, 32]);
    // Frames of steps ≤ 2 (frames 0..=8) do not depend on the codes of step 3.
    assert!(max_abs_diff(&fa.narrow(1, 0, 9).unwrap(), &fb.narrow(1, 0, 9).unwrap()) < 1e-5);
    assert!(max_abs_diff(&fa.narrow(1, 9, 4).unwrap(), &fb.narrow(1, 9, 4).unwrap()) > 1e-4);
}

#[test]
fn decoder_uses_the_first_frame_features() {
    let m = tiny_model(4);
    let e1 = m.encode(&clip(5, 1)).unwrap();
    let e2 = m.encode(&clip(5, 2)).unwrap();
    let idx = Tensor::new(&[[[1u32, 2, 3, 4]]], &Device::Cpu).unwrap();
    let a = m
        .decode_indices(&e1.features.narrow(1, 0, 1).unwrap(), &idx)
        .unwrap();
    let b = m
        .decode_indices(&e2.features.narrow(1, 0, 1).unwrap(), &idx)
        .unwrap();
    assert!(max_abs_diff(&a, &b) > 1e-4);
}

/// Every trainable parameter of the dLDM (encoder → FSQ → decoder) gets a
/// non-zero gradient from a reconstruction loss, the first conv included.
///
/// The weights are seeded: with an unseeded init the four codes of a step are
/// sometimes all equal, the code cross-attention's keys are then identical and its
/// query gets an exactly zero gradient, which made this test flaky.
#[test]
fn gradients_reach_every_dldm_parameter() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let m = Dldm::new(&DldmConfig::tiny(), vb).unwrap();
    let init = Arc::new(SeededInit::new(3));
    Dldm::new(
        &DldmConfig::tiny(),
        seeded_var_builder(init.clone(), &Device::Cpu),
    )
    .unwrap();
    {
        let vars = varmap.data().lock().unwrap();
        for (name, t) in init.tensors() {
            vars[&name].set(&t).unwrap();
        }
    }
    let x = clip(5, 7);
    let enc = m.encode(&x).unwrap();
    let idx = enc.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    assert!(
        idx.iter().any(|&i| i != idx[0]),
        "the test needs distinct codes, found {idx:?}"
    );
    let first = enc.features.narrow(1, 0, 1).unwrap();
    let recon = m.decode(&first, &enc.codes).unwrap();
    let loss = (recon - &x).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let mut missing = vec![];
    for (name, var) in vars.iter() {
        if name.ends_with("positional_encoding_gaussian_matrix") {
            continue; // a fixed buffer in the official model
        }
        let g = grads.get(var.as_tensor());
        let nz = g
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            })
            .unwrap_or(false);
        if !nz {
            missing.push(name.clone());
        }
    }
    assert!(vars.contains_key("encoder.conv_in.0.conv3d.weight"));
    assert!(missing.is_empty(), "no gradient for: {missing:?}");
}

#[test]
fn gradients_reach_the_action_head_inputs() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = HeadConfig {
        vocab_size: 1000,
        codes_per_step: 4,
        code_embed_dim: 8,
        visual_dim: 48,
        visual_pool: VisualPool::Keypoints,
        proprio_dim: 15,
        instruction_dim: 8,
        hidden: vec![32, 32],
        chunk: 4,
    };
    let head = ActionHead::new(&cfg, vb).unwrap();
    let idx = Tensor::new(&[[1u32, 2, 3, 4], [5, 6, 7, 8]], &Device::Cpu).unwrap();
    // Gradients reach the feature map through the spatial-softmax keypoints.
    let map =
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 16, 3, 3), &Device::Cpu).unwrap()).unwrap();
    let visual = pool_features(map.as_tensor(), VisualPool::Keypoints).unwrap();
    let proprio = Tensor::ones((2, 15), DType::F32, &Device::Cpu).unwrap();
    let instruction = Tensor::ones((2, 8), DType::F32, &Device::Cpu).unwrap();
    let out = head
        .forward(&idx, &visual, Some(&proprio), Some(&instruction))
        .unwrap();
    assert_eq!(out.dims(), &[2, 4, 7]);
    let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(abs_sum(g) > 0.0, "{name}");
    }
    let gmap = grads
        .get(map.as_tensor())
        .expect("gradient at the feature map");
    assert!(abs_sum(gmap) > 0.0, "no gradient at the feature map");
    // Wrong proprio or instruction presence is a clear error.
    let err = head
        .forward(&idx, &visual, None, Some(&instruction))
        .unwrap_err()
        .to_string();
    assert!(err.contains("proprioception"), "{err}");
    let err = head
        .forward(&idx, &visual, Some(&proprio), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("instruction"), "{err}");
}

#[test]
fn frames_from_u8_maps_to_unit_range() {
    let px = Tensor::new(&[0u8, 255, 127], &Device::Cpu)
        .unwrap()
        .reshape((1, 1, 1, 1, 3))
        .unwrap();
    let x = Dldm::frames_from_u8(&px, DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(x[0], -1.0);
    assert_eq!(x[1], 1.0);
    assert!((x[2] - (127.0 / 127.5 - 1.0)).abs() < 1e-6);
}

/// Sum of |t| over every element.
fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

// ------------------------------------------------------------------ streaming encoder

#[test]
fn the_streaming_encoder_equals_a_full_reencode_of_the_clip() {
    use vw2_policy::model::dldm::EncoderStream;
    // Attention at both levels and in the mid block: every temporal layer kind streams.
    let cfg = DldmConfig {
        attn_resolutions: vec![8, 4],
        ..DldmConfig::tiny()
    };
    let init = Arc::new(SeededInit::new(11));
    let m = Dldm::new(&cfg, seeded_var_builder(init, &Device::Cpu)).unwrap();
    // 12 latent steps: longer than the policy's default frame window (8 steps).
    let steps = 12;
    let x = clip(1 + 4 * steps, 5);
    let full = m.encode(&x).unwrap();
    let mut stream = EncoderStream::default();
    let f0 = m
        .stream_first(&mut stream, &x.narrow(1, 0, 1).unwrap())
        .unwrap();
    assert!(max_abs_diff(&f0, &full.features.narrow(1, 0, 1).unwrap()) < 1e-5);
    let mut sizes = vec![stream.state_elements()];
    for k in 0..steps {
        let new = x.narrow(1, 1 + 4 * k, 4).unwrap();
        let out = m.stream_step(&mut stream, &new).unwrap();
        let want = full.features.narrow(1, k + 1, 1).unwrap();
        let d = max_abs_diff(&out.features, &want);
        assert!(d < 1e-5, "step {k}: features differ by {d}");
        assert_eq!(
            out.indices.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            full.indices
                .narrow(1, k, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap(),
            "step {k}: indices"
        );
        let dc = max_abs_diff(&out.codes, &full.codes.narrow(1, 4 * k, 4).unwrap());
        assert!(dc < 1e-6, "step {k}: codes differ by {dc}");
        sizes.push(stream.state_elements());
    }
    // The state grows by one latent frame's attention keys and values per step.
    let growth: Vec<usize> = sizes.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        growth[0] > 0 && growth.iter().all(|g| *g == growth[0]),
        "{growth:?}"
    );
    assert_eq!(stream.latent_frames(), 1 + steps);
    // Wrong step sizes are refused by name.
    let e = m
        .stream_step(&mut stream, &x.narrow(1, 0, 3).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("takes 4 new frames, found 3"), "{e}");
}
