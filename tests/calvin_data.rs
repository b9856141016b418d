//! CALVIN dataset format: write/read round trip, numpy cross-checks in both directions,
//! error messages for bad input, and writer resumability.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use vw2_policy::data::calvin::{frame_file_name, LANG_FILE};
use vw2_policy::data::npy::NpyArray;
use vw2_policy::data::npz::NpzWriter;
use vw2_policy::data::{
    CalvinDataset, CalvinFrame, CalvinWriter, Image, LangAnnotations, NormStats, Statistics,
};

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");

/// Runs `script` with the project's venv Python (warnings are errors) and returns stdout.
fn run_python(script: &str, args: &[&Path]) -> String {
    assert!(
        Path::new(PYTHON).exists(),
        "the numpy cross-check needs the Python virtualenv at {PYTHON} (with numpy installed); \
         it is missing"
    );
    let out = Command::new(PYTHON)
        .arg("-W")
        .arg("error")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("cannot run the venv python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A deterministic, varied frame for global index `idx`.
fn synth_frame(idx: usize) -> CalvinFrame {
    let f = |k: usize| ((idx * 31 + k * 7) as f64 * 0.37).sin() * (1.0 + k as f64 * 0.1);
    let mut actions = [0.0; 7];
    let mut rel_actions = [0.0; 7];
    for k in 0..7 {
        actions[k] = f(k);
        rel_actions[k] = f(k + 100).clamp(-1.0, 1.0);
    }
    actions[6] = if idx.is_multiple_of(3) { -1.0 } else { 1.0 };
    rel_actions[6] = actions[6];
    let robot_obs = std::array::from_fn(|k| f(k + 200));
    let scene_obs = std::array::from_fn(|k| f(k + 300) * 1e-3 + 1e-9 * idx as f64);
    let img = |h: usize, w: usize, salt: usize| {
        Image::from_fn(h, w, |y, x| {
            [
                ((y * 7 + x * 3 + idx * 11 + salt) % 256) as u8,
                ((y * x + idx) % 251) as u8,
                ((x * 13 + salt * 5 + idx * y) % 256) as u8,
            ]
        })
    };
    CalvinFrame {
        actions,
        rel_actions,
        robot_obs,
        scene_obs,
        rgb_static: img(200, 200, 1),
        rgb_gripper: img(84, 84, 2),
    }
}

/// Expected statistics (two-pass mean / population std) over the given frames.
fn expected_stats(frames: &[CalvinFrame], get: impl Fn(&CalvinFrame) -> Vec<f64>) -> NormStats {
    let rows: Vec<Vec<f64>> = frames.iter().map(get).collect();
    let n = rows.len() as f64;
    let dim = rows[0].len();
    let mean: Vec<f64> = (0..dim)
        .map(|d| rows.iter().map(|r| r[d]).sum::<f64>() / n)
        .collect();
    let std = (0..dim)
        .map(|d| (rows.iter().map(|r| (r[d] - mean[d]).powi(2)).sum::<f64>() / n).sqrt())
        .collect();
    NormStats { mean, std }
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

fn check_statistics(stats: &Statistics, frames: &[CalvinFrame]) {
    let pairs: [(&str, &NormStats, NormStats); 4] = [
        (
            "robot_obs",
            &stats.robot_obs,
            expected_stats(frames, |f| f.robot_obs.to_vec()),
        ),
        (
            "scene_obs",
            &stats.scene_obs,
            expected_stats(frames, |f| f.scene_obs.to_vec()),
        ),
        (
            "actions",
            stats.actions.as_ref().expect("actions stats"),
            expected_stats(frames, |f| f.actions.to_vec()),
        ),
        (
            "rel_actions",
            stats.rel_actions.as_ref().expect("rel_actions stats"),
            expected_stats(frames, |f| f.rel_actions.to_vec()),
        ),
    ];
    for (name, got, want) in pairs {
        assert_close(&got.mean, &want.mean, &format!("{name}.mean"));
        assert_close(&got.std, &want.std, &format!("{name}.std"));
    }
    let min: Vec<f64> = (0..7)
        .map(|d| {
            frames
                .iter()
                .map(|f| f.actions[d])
                .fold(f64::INFINITY, f64::min)
        })
        .collect();
    let max: Vec<f64> = (0..7)
        .map(|d| {
            frames
                .iter()
                .map(|f| f.actions[d])
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    assert_eq!(stats.act_min_bound.as_ref().unwrap(), &min);
    assert_eq!(stats.act_max_bound.as_ref().unwrap(), &max);
    assert_eq!(stats.num_frames, Some(frames.len()));
}

const EP1: (usize, usize) = (100, 104);
const EP2: (usize, usize) = (105, 109);

fn lang_entries() -> Vec<(usize, usize, &'static str, &'static str)> {
    vec![
        (100, 103, "open_drawer", "open the drawer"),
        (101, 104, "lift_red_block_table", "pick up the red block"),
        (105, 109, "push_blöck", "push the blöck → left ✓"),
    ]
}

/// Writes 2 episodes x 5 frames (frames 100..=109) with language annotations.
fn write_tiny_dataset(dir: &Path) -> Vec<CalvinFrame> {
    let mut w = CalvinWriter::create(dir).unwrap();
    assert_eq!(w.next_frame_index(), 0);
    let mut frames = Vec::new();
    for (s, e) in [EP1, EP2] {
        for i in s..=e {
            let f = synth_frame(i);
            w.write_frame(i, &f).unwrap();
            frames.push(f);
        }
        w.finish_episode(s, e).unwrap();
    }
    for (s, e, task, ann) in lang_entries() {
        w.add_language(s, e, task, ann).unwrap();
    }
    assert_eq!(w.next_frame_index(), 110);
    w.finish().unwrap();
    frames
}

#[test]
fn write_then_read_back_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("task_D_D/training");
    let frames = write_tiny_dataset(&dir);

    let ds = CalvinDataset::open(&dir).unwrap();
    assert_eq!(ds.episodes(), &[EP1, EP2]);
    assert_eq!(ds.num_frames(), 10);
    for (i, want) in (100..110).zip(&frames) {
        assert_eq!(&ds.frame(i).unwrap(), want, "frame {i}");
        assert!(ds.frame_path(i).ends_with(format!("episode_{i:07}.npz")));
    }
    let ep2: Vec<CalvinFrame> = ds
        .episode_frames(1)
        .unwrap()
        .collect::<anyhow::Result<_>>()
        .unwrap();
    assert_eq!(ep2, frames[5..]);
    assert!(ds.episode_frames(2).is_err());

    let lang = ds.language().expect("language annotations");
    let want = lang_entries();
    assert_eq!(
        lang.ann,
        want.iter().map(|e| e.3.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        lang.task,
        want.iter().map(|e| e.2.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        lang.indx,
        want.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>()
    );
    assert_eq!(lang.emb_shape, Some(vec![3, 1, 384]));

    check_statistics(ds.statistics().expect("statistics"), &frames);

    // The YAML must be readable by PyYAML (YAML 1.1, used by CALVIN via OmegaConf): every
    // float needs a '.' and a signed exponent.
    let yaml = std::fs::read_to_string(dir.join("statistics.yaml")).unwrap();
    assert!(yaml.contains("_target_: calvin_models.calvin_agent.utils.transforms.NormalizeVector"));
    for line in yaml.lines().filter(|l| l.contains('[')) {
        let list = &line[line.find('[').unwrap() + 1..line.rfind(']').unwrap()];
        for tok in list.split(", ") {
            let ok = tok == ".nan"
                || tok.ends_with(".inf")
                || (tok.contains('.')
                    && tok
                        .split_once('e')
                        .is_none_or(|(_, e)| e.starts_with('-') || e.starts_with('+')));
            assert!(
                ok,
                "float {tok:?} is not YAML 1.1 compatible in line {line:?}"
            );
            tok.parse::<f64>().unwrap();
        }
    }
}

const NUMPY_READS_OURS: &str = r#"
import json, sys, glob, os
import numpy as np
d = sys.argv[1]
out = {"frames": {}}
bits = lambda a: np.ascontiguousarray(a, dtype=np.float64).view(np.uint64).ravel().tolist()
for p in sorted(glob.glob(os.path.join(d, "episode_*.npz"))):
    with np.load(p) as z:
        fr = {"keys": sorted(z.files), "dtypes": {}, "shapes": {}, "values": {}}
        for k in z.files:
            a = z[k]
            fr["dtypes"][k] = str(a.dtype)
            fr["shapes"][k] = list(a.shape)
            fr["values"][k] = bits(a) if a.dtype == np.float64 else a.ravel().tolist()
    out["frames"][os.path.basename(p)] = fr
e = np.load(os.path.join(d, "ep_start_end_ids.npy"))
out["ep"] = {"dtype": str(e.dtype), "shape": list(e.shape), "values": e.tolist()}
obj = np.load(os.path.join(d, "lang_annotations", "auto_lang_ann.npy"), allow_pickle=True)
assert obj.dtype == object and obj.shape == (), (obj.dtype, obj.shape)
l = obj.item()
assert type(l) is dict and sorted(l) == ["info", "language"], l.keys()
lang = l["language"]
out["lang"] = {
    "language_keys": sorted(lang), "info_keys": sorted(l["info"]),
    "ann": lang["ann"], "task": lang["task"],
    "ann_type": type(lang["ann"]).__name__,
    "indx": [list(t) for t in l["info"]["indx"]],
    "indx_types": sorted({type(t).__name__ for t in l["info"]["indx"]}),
    "episodes": l["info"]["episodes"],
    "emb_dtype": str(lang["emb"].dtype), "emb_shape": list(lang["emb"].shape),
    "emb_abs_sum": float(np.abs(lang["emb"]).sum()),
}
print(json.dumps(out))
"#;

#[test]
fn numpy_loads_our_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("training");
    let frames = write_tiny_dataset(&dir);
    let v: Value = serde_json::from_str(&run_python(NUMPY_READS_OURS, &[&dir])).unwrap();

    let fr = v["frames"].as_object().unwrap();
    assert_eq!(fr.len(), 10);
    for (i, want) in (100..110).zip(&frames) {
        let f = &fr[&frame_file_name(i)];
        let keys: Vec<&str> = f["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "actions",
                "rel_actions",
                "rgb_gripper",
                "rgb_static",
                "robot_obs",
                "scene_obs"
            ]
        );
        for (k, dtype, shape, vals) in [
            ("actions", "float64", vec![7], want.actions.to_vec()),
            ("rel_actions", "float64", vec![7], want.rel_actions.to_vec()),
            ("robot_obs", "float64", vec![15], want.robot_obs.to_vec()),
            ("scene_obs", "float64", vec![24], want.scene_obs.to_vec()),
        ] {
            assert_eq!(f["dtypes"][k], dtype, "frame {i} key {k}");
            assert_eq!(
                f["shapes"][k],
                serde_json::json!(shape),
                "frame {i} key {k}"
            );
            let got: Vec<f64> = f["values"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| f64::from_bits(b.as_u64().unwrap()))
                .collect();
            assert_eq!(got, vals, "frame {i} key {k}");
        }
        for (k, img, side) in [
            ("rgb_static", &want.rgb_static, 200),
            ("rgb_gripper", &want.rgb_gripper, 84),
        ] {
            assert_eq!(f["dtypes"][k], "uint8");
            assert_eq!(f["shapes"][k], serde_json::json!([side, side, 3]));
            let got: Vec<u8> = f["values"][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert!(got == img.data, "frame {i} key {k}: pixels differ");
        }
    }

    assert_eq!(v["ep"]["dtype"], "int64");
    assert_eq!(v["ep"]["shape"], serde_json::json!([2, 2]));
    assert_eq!(
        v["ep"]["values"],
        serde_json::json!([[100, 104], [105, 109]])
    );

    let l = &v["lang"];
    let want = lang_entries();
    assert_eq!(
        l["language_keys"],
        serde_json::json!(["ann", "emb", "task"])
    );
    assert_eq!(l["info_keys"], serde_json::json!(["episodes", "indx"]));
    assert_eq!(l["ann_type"], "list");
    assert_eq!(
        l["ann"],
        serde_json::json!(want.iter().map(|e| e.3).collect::<Vec<_>>())
    );
    assert_eq!(
        l["task"],
        serde_json::json!(want.iter().map(|e| e.2).collect::<Vec<_>>())
    );
    assert_eq!(
        l["indx"],
        serde_json::json!(want.iter().map(|e| [e.0, e.1]).collect::<Vec<_>>())
    );
    assert_eq!(l["indx_types"], serde_json::json!(["tuple"]));
    assert_eq!(l["episodes"], serde_json::json!([]));
    assert_eq!(l["emb_dtype"], "float32");
    assert_eq!(l["emb_shape"], serde_json::json!([3, 1, 384]));
    assert_eq!(l["emb_abs_sum"], 0.0);
}

/// Writes a CALVIN-like split the way CALVIN's tooling does (numpy), and prints the
/// expected values as JSON.
const NUMPY_WRITES_CALVIN: &str = r#"
import json, sys, os, pickle
import numpy as np
d = sys.argv[1]
os.makedirs(os.path.join(d, "lang_annotations"), exist_ok=True)
bits = lambda a: np.ascontiguousarray(a, dtype=np.float64).view(np.uint64).ravel().tolist()
exp = {"frames": {}}
for i in range(6):
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:200, 0:200]
    smooth = np.stack([(yy + xx + i) % 256, (yy * 2) % 256, (xx // 3 + 7 * i) % 256], -1)
    noise = rng.integers(0, 256, (200, 200, 3))
    rgb_static = np.where(yy[..., None] < 120, smooth, noise).astype(np.uint8)
    rgb_gripper = rng.integers(0, 8, (84, 84, 3)).astype(np.uint8) * 30
    f = dict(
        actions=rng.normal(size=7),
        rel_actions=np.clip(rng.normal(size=7), -1, 1),
        robot_obs=rng.normal(size=15),
        scene_obs=rng.normal(size=24),
        rgb_static=rgb_static,
        rgb_gripper=rgb_gripper,
        rgb_tactile=rng.integers(0, 256, (160, 120, 6)).astype(np.uint8),
        depth_static=rng.random((200, 200)).astype(np.float32),
        depth_gripper=rng.random((84, 84)).astype(np.float32),
        depth_tactile=rng.random((160, 120, 2)).astype(np.float32),
    )
    p = os.path.join(d, "episode_%07d.npz" % i)
    (np.savez_compressed if i % 2 == 0 else np.savez)(p, **f)
    exp["frames"][str(i)] = {k: (bits(v) if v.dtype == np.float64 else v.ravel().tolist())
                             for k, v in f.items() if k in
                             ("actions", "rel_actions", "robot_obs", "scene_obs", "rgb_static", "rgb_gripper")}
np.save(os.path.join(d, "ep_start_end_ids.npy"), np.array([[0, 2], [3, 5]], dtype=np.int64))
ann = ["open the drawer", "lift the red block ✓", "turn on the led"]
task = ["open_drawer", "lift_red_block_table", "turn_on_led"]
indx = [(0, 2), (np.int64(1), np.int64(2)), (3, 5)]
lang = {"language": {"ann": ann, "task": task,
                     "emb": np.random.default_rng(9).random((3, 1, 384)).astype(np.float32)},
        "info": {"episodes": [], "indx": indx}}
np.save(os.path.join(d, "lang_annotations", "auto_lang_ann.npy"), lang)
# Variants: older pickle protocols, and numpy 1.x module names (numpy.core).
arr = np.empty((), dtype=object); arr[()] = lang
for proto in (2, 3, 5):
    with open(os.path.join(d, "lang_annotations", "p%d.npy" % proto), "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(arr))
        pickle.dump(arr, fh, protocol=proto)
with open(os.path.join(d, "lang_annotations", "p3.npy"), "rb") as fh:
    b = fh.read()
assert b"numpy._core" in b
with open(os.path.join(d, "lang_annotations", "numpy1.npy"), "wb") as fh:
    fh.write(b.replace(b"numpy._core", b"numpy.core"))
exp["lang"] = {"ann": ann, "task": task, "indx": [[int(a), int(b)] for a, b in indx]}
print(json.dumps(exp))
"#;

const CALVIN_STATISTICS_YAML: &str = "\
robot_obs:
  - _target_: calvin_models.calvin_agent.utils.transforms.NormalizeVector
    mean: [0.039233, -0.118554, 0.507826, 1.079174, -0.083069, 1.579753, 0.054622, -0.736859, 1.017769,
           1.792879, -2.099604, -0.993738, 1.790842, 0.586534, 0.095367]
    std: [0.150769, 0.1104 , 0.06253 , 2.883517, 0.126405, 0.377196, 0.030152, 0.334392, 0.172714,
          0.240513, 0.3842 , 0.198596, 0.158712, 0.346865, 0.995442]
scene_obs:
  - _target_: calvin_models.calvin_agent.utils.transforms.NormalizeVector
    mean: [0.150934, 0.119917, 0.000239, 0.042049, 0.487755, 0.47448 , 0.057482, -0.088074, 0.431237,
           0.046034, 0.030599, 0.027333, 0.062103, -0.092833, 0.430236, -0.054962, 0.019381, 0.096546,
           0.064944, -0.093058, 0.428381, 0.024941, 0.002746, -0.031589]
    std: [0.125757, 0.09654 , 0.002148, 0.041916, 0.49985 , 0.499348, 0.209267, 0.245377, 0.010103,
          0.236604, 0.028484, 0.205432, 0.22113 , 0.232474, 0.007855, 0.258883, 0.031181, 0.212566,
          0.212828, 0.226072, 0.006813, 0.241948, 0.031188, 0.29082 ]
rgb_static:
  - _target_: torchvision.transforms.Resize
    size: 200
  - _target_: calvin_models.calvin_agent.utils.transforms.ScaleImageTensor
act_min_bound: [-0.432188, -0.545456,  0.293439, -3.141593, -0.811348, -3.141573, -1.      ]
act_max_bound: [0.42977 , 0.139396, 0.796262, 3.141592, 0.638583, 3.141551, 1.      ]
";

#[test]
fn reads_numpy_written_calvin_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("validation");
    std::fs::create_dir_all(&dir).unwrap();
    let exp: Value = serde_json::from_str(&run_python(NUMPY_WRITES_CALVIN, &[&dir])).unwrap();
    std::fs::write(dir.join("statistics.yaml"), CALVIN_STATISTICS_YAML).unwrap();

    let ds = CalvinDataset::open(&dir).unwrap();
    assert_eq!(ds.episodes(), &[(0, 2), (3, 5)]);
    for i in 0..6usize {
        let f = ds.frame(i).unwrap();
        let e = &exp["frames"][i.to_string()];
        let floats = |k: &str| -> Vec<f64> {
            e[k].as_array()
                .unwrap()
                .iter()
                .map(|b| f64::from_bits(b.as_u64().unwrap()))
                .collect()
        };
        let bytes = |k: &str| -> Vec<u8> {
            e[k].as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect()
        };
        assert_eq!(f.actions.to_vec(), floats("actions"), "frame {i}");
        assert_eq!(f.rel_actions.to_vec(), floats("rel_actions"), "frame {i}");
        assert_eq!(f.robot_obs.to_vec(), floats("robot_obs"), "frame {i}");
        assert_eq!(f.scene_obs.to_vec(), floats("scene_obs"), "frame {i}");
        assert_eq!((f.rgb_static.height, f.rgb_static.width), (200, 200));
        assert_eq!((f.rgb_gripper.height, f.rgb_gripper.width), (84, 84));
        assert!(
            f.rgb_static.data == bytes("rgb_static"),
            "frame {i} rgb_static"
        );
        assert!(
            f.rgb_gripper.data == bytes("rgb_gripper"),
            "frame {i} rgb_gripper"
        );
    }

    let want_ann: Vec<String> = serde_json::from_value(exp["lang"]["ann"].clone()).unwrap();
    let want_task: Vec<String> = serde_json::from_value(exp["lang"]["task"].clone()).unwrap();
    let want_indx: Vec<(usize, usize)> =
        serde_json::from_value::<Vec<[usize; 2]>>(exp["lang"]["indx"].clone())
            .unwrap()
            .into_iter()
            .map(|[a, b]| (a, b))
            .collect();
    let lang = ds.language().unwrap();
    assert_eq!(lang.ann, want_ann);
    assert_eq!(lang.task, want_task);
    assert_eq!(lang.indx, want_indx);
    assert_eq!(lang.emb_shape, Some(vec![3, 1, 384]));
    for variant in ["p2.npy", "p3.npy", "p5.npy", "numpy1.npy"] {
        let l = LangAnnotations::read(dir.join("lang_annotations").join(variant))
            .unwrap_or_else(|e| panic!("{variant}: {e}"));
        assert_eq!(
            (&l.ann, &l.task, &l.indx),
            (&want_ann, &want_task, &want_indx),
            "{variant}"
        );
        assert_eq!(l.emb_shape, Some(vec![3, 1, 384]), "{variant}");
    }

    let st = ds.statistics().unwrap();
    assert_eq!(st.robot_obs.mean.len(), 15);
    assert_eq!(st.robot_obs.mean[0], 0.039233);
    assert_eq!(st.robot_obs.std[14], 0.995442);
    assert_eq!(st.scene_obs.std[23], 0.29082);
    assert_eq!(st.actions, None);
    // CALVIN's own rounded values (-3.141593 is not meant to be π).
    #[allow(clippy::approx_constant)]
    let want_min = [
        -0.432188, -0.545456, 0.293439, -3.141593, -0.811348, -3.141573, -1.0,
    ];
    assert_eq!(st.act_min_bound.as_deref(), Some(&want_min[..]));
    assert_eq!(st.act_max_bound.as_ref().unwrap()[6], 1.0);
    assert_eq!(st.num_frames, None);
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    let msg = format!("{}", r.expect_err("expected an error"));
    eprintln!("error message: {msg}");
    msg
}

/// Writes an npz holding the given frame's arrays, with `edit` applied to the member list.
fn write_npz_with(path: &Path, edit: impl Fn(&mut Vec<(&'static str, NpyArray)>)) {
    let f = synth_frame(12);
    let mut members = vec![
        ("actions", NpyArray::from_f64(&[7], &f.actions)),
        ("rel_actions", NpyArray::from_f64(&[7], &f.rel_actions)),
        ("robot_obs", NpyArray::from_f64(&[15], &f.robot_obs)),
        ("scene_obs", NpyArray::from_f64(&[24], &f.scene_obs)),
        (
            "rgb_static",
            NpyArray::from_u8(&[200, 200, 3], f.rgb_static.data.clone()),
        ),
        (
            "rgb_gripper",
            NpyArray::from_u8(&[84, 84, 3], f.rgb_gripper.data.clone()),
        ),
    ];
    edit(&mut members);
    let mut w = NpzWriter::new();
    for (k, a) in &members {
        w.add(k, a);
    }
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
}

#[test]
fn bad_input_errors_name_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = d.join("episode_0000012.npz");

    // Sanity: the unmodified file reads.
    write_npz_with(&p, |_| {});
    assert_eq!(CalvinFrame::read(&p).unwrap(), synth_frame(12));

    // Truncated archive.
    let good = std::fs::read(&p).unwrap();
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = err_of(CalvinFrame::read(&p));
    assert!(
        e.contains("episode_0000012.npz") && e.contains("truncated"),
        "{e}"
    );
    // Truncated at the very end (central directory intact up to the last bytes).
    std::fs::write(&p, &good[..good.len() - 3]).unwrap();
    let e = err_of(CalvinFrame::read(&p));
    assert!(e.contains("episode_0000012.npz"), "{e}");

    // Corrupted pixel data: CRC mismatch, naming the key.
    let mut bad = good.clone();
    let pos = bad.len() / 2; // inside rgb_static
    bad[pos] ^= 0x55;
    std::fs::write(&p, &bad).unwrap();
    let e = err_of(CalvinFrame::read(&p));
    assert!(
        e.contains("episode_0000012.npz") && e.contains("key 'rgb_static'") && e.contains("CRC"),
        "{e}"
    );

    // Missing key.
    write_npz_with(&p, |m| m.retain(|(k, _)| *k != "rgb_static"));
    let e = err_of(CalvinFrame::read(&p));
    assert!(
        e.ends_with("episode_0000012.npz: missing key 'rgb_static'"),
        "{e}"
    );

    // Wrong-length vector.
    write_npz_with(&p, |m| {
        m[2].1 = NpyArray::from_f64(&[14], &[0.5; 14]);
    });
    let e = err_of(CalvinFrame::read(&p));
    assert!(
        e.contains("episode_0000012.npz: key 'robot_obs': expected 15 values, found 14"),
        "{e}"
    );

    // Wrong dtypes.
    write_npz_with(&p, |m| {
        m[0].1 = NpyArray::from_i64(&[7], &[1; 7]);
    });
    let e = err_of(CalvinFrame::read(&p));
    assert!(
        e.contains(
            "episode_0000012.npz: key 'actions': expected float64 values, found dtype int64"
        ),
        "{e}"
    );
    write_npz_with(&p, |m| {
        m[5].1 = NpyArray::from_f32(&[84, 84, 3], &vec![0.0; 84 * 84 * 3]);
    });
    let e = err_of(CalvinFrame::read(&p));
    assert!(
        e.contains("key 'rgb_gripper': expected a uint8 image, found dtype float32"),
        "{e}"
    );
    write_npz_with(&p, |m| {
        m[4].1 = NpyArray::from_u8(&[200, 600], vec![0; 120000]);
    });
    let e = err_of(CalvinFrame::read(&p));
    assert!(
        e.contains("key 'rgb_static': expected shape [H, W, 3], found [200, 600]"),
        "{e}"
    );

    // A real dataset with bad pieces.
    let dir = d.join("ds");
    write_tiny_dataset(&dir);
    let lang_path = dir.join(LANG_FILE);
    let lang_good = std::fs::read(&lang_path).unwrap();
    let header_len = 10 + u16::from_le_bytes([lang_good[8], lang_good[9]]) as usize;
    assert_eq!(&lang_good[header_len..header_len + 2], &[0x80, 3]);

    // Unsupported opcode in the pickle (offset is the byte offset in the file).
    let mut bad = lang_good.clone();
    bad[header_len + 2] = 0xff;
    std::fs::write(&lang_path, &bad).unwrap();
    let e = err_of(CalvinDataset::open(&dir));
    assert!(
        e.contains("auto_lang_ann.npy")
            && e.contains(&format!(
                "unsupported pickle opcode 0xff at byte {}",
                header_len + 2
            )),
        "{e}"
    );
    // Truncated pickle.
    std::fs::write(&lang_path, &lang_good[..lang_good.len() - 40]).unwrap();
    let e = err_of(LangAnnotations::read(&lang_path));
    assert!(
        e.contains("auto_lang_ann.npy") && e.contains("truncated"),
        "{e}"
    );
    // Not an object array.
    std::fs::write(&lang_path, NpyArray::from_i64(&[2], &[1, 2]).to_bytes()).unwrap();
    let e = err_of(LangAnnotations::read(&lang_path));
    assert!(
        e.contains(
            "auto_lang_ann.npy: expected a pickled object array (dtype '|O'), found dtype int64"
        ),
        "{e}"
    );
    // Missing keys and inconsistent counts (written by numpy).
    let script = r#"
import sys, numpy as np
np.save(sys.argv[1], {"language": {"ann": ["a"], "emb": np.zeros((1, 1, 384), np.float32)},
                      "info": {"episodes": [], "indx": [(100, 101)]}})
np.save(sys.argv[2], {"language": {"ann": ["a", "b"], "task": ["t", "u"]},
                      "info": {"episodes": [], "indx": [(100, 101)]}})
"#;
    let (no_task, counts) = (d.join("no_task.npy"), d.join("counts.npy"));
    run_python(script, &[&no_task, &counts]);
    let e = err_of(LangAnnotations::read(&no_task));
    assert!(
        e.contains("no_task.npy: missing key 'language.task'"),
        "{e}"
    );
    let e = err_of(LangAnnotations::read(&counts));
    assert!(
        e.contains(
            "counts.npy: key 'language.ann' has 2 entries, 'language.task' 2, 'info.indx' 1"
        ),
        "{e}"
    );
    std::fs::write(&lang_path, &lang_good).unwrap();
    CalvinDataset::open(&dir).unwrap();

    // Statistics with a missing key / a wrong length.
    let stats_path = dir.join("statistics.yaml");
    let stats_good = std::fs::read_to_string(&stats_path).unwrap();
    std::fs::write(
        &stats_path,
        stats_good.replacen("robot_obs:", "robot_obz:", 1),
    )
    .unwrap();
    let e = err_of(CalvinDataset::open(&dir));
    assert!(
        e.contains("statistics.yaml: missing key 'robot_obs'"),
        "{e}"
    );
    std::fs::write(
        &stats_path,
        CALVIN_STATISTICS_YAML.replacen("0.29082 ]", "]", 1),
    )
    .unwrap();
    let e = err_of(CalvinDataset::open(&dir));
    assert!(
        e.contains("statistics.yaml: key 'scene_obs.std': expected 24 values, found 23"),
        "{e}"
    );
    std::fs::write(&stats_path, &stats_good).unwrap();

    // Episode table: wrong shape, then missing.
    let ep_path = dir.join("ep_start_end_ids.npy");
    std::fs::write(&ep_path, NpyArray::from_i64(&[3], &[1, 2, 3]).to_bytes()).unwrap();
    let e = err_of(CalvinDataset::open(&dir));
    assert!(
        e.contains("ep_start_end_ids.npy: expected an [E, 2] array"),
        "{e}"
    );
    std::fs::remove_file(&ep_path).unwrap();
    let e = err_of(CalvinDataset::open(&dir));
    assert!(e.contains("ep_start_end_ids.npy: missing"), "{e}");

    // A frame listed in the table but absent on disk.
    let dir2 = d.join("ds2");
    write_tiny_dataset(&dir2);
    std::fs::remove_file(dir2.join(frame_file_name(103))).unwrap();
    let ds = CalvinDataset::open(&dir2).unwrap();
    let e = err_of(ds.frame(103));
    assert!(e.contains("episode_0000103.npz: cannot read"), "{e}");
}

#[test]
fn writer_resumes_after_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("training");
    let all: Vec<CalvinFrame> = (0..10).map(synth_frame).collect();
    {
        let mut w = CalvinWriter::create(&dir).unwrap();
        for (i, f) in all.iter().enumerate().take(5) {
            w.write_frame(i, f).unwrap();
        }
        // Finishing with a missing frame is refused.
        let e = err_of(w.finish_episode(0, 5));
        assert!(e.contains("frames not written: [5]"), "{e}");
        // Annotations added before finish_episode are committed together with it.
        w.add_language(1, 4, "open_drawer", "open the drawer")
            .unwrap();
        w.finish_episode(0, 4).unwrap();
        // The next episode, interrupted after 3 frames (with an annotation waiting for it).
        for (i, f) in all.iter().enumerate().take(8).skip(5) {
            w.write_frame(i, f).unwrap();
        }
        w.add_language(5, 7, "lift", "lift it").unwrap();
        // Finished frames are immutable.
        let e = err_of(w.write_frame(3, &all[3]));
        assert!(e.contains("not after the last finished episode"), "{e}");
        assert_eq!(w.next_frame_index(), 8);
        assert_eq!(w.unfinished_frames(), vec![5, 6, 7]);
        // Dropping the writer here simulates the interruption.
    }
    assert!(dir.join(frame_file_name(7)).exists());

    // Between episodes the dataset is readable and holds the finished episode only.
    let ds = CalvinDataset::open(&dir).unwrap();
    assert_eq!(ds.episodes(), &[(0, 4)]);
    assert_eq!(ds.language().unwrap().indx, vec![(1, 4)]);
    check_statistics(ds.statistics().unwrap(), &all[..5]);

    // Reopen: the partial episode is discarded.
    let mut w = CalvinWriter::create(&dir).unwrap();
    assert_eq!(w.episodes(), &[(0, 4)]);
    assert_eq!(w.next_frame_index(), 5);
    assert!(w.unfinished_frames().is_empty());
    for i in 5..8 {
        assert!(
            !dir.join(frame_file_name(i)).exists(),
            "frame {i} not removed"
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Continue and finish.
    for (i, f) in all.iter().enumerate().skip(5) {
        w.write_frame(i, f).unwrap();
    }
    w.finish_episode(5, 9).unwrap();
    w.add_language(5, 9, "lift", "lift it").unwrap();
    let e = err_of(w.add_language(3, 6, "x", "spans two episodes"));
    assert!(e.contains("not inside one episode"), "{e}");
    w.finish().unwrap();

    let ds = CalvinDataset::open(&dir).unwrap();
    assert_eq!(ds.episodes(), &[(0, 4), (5, 9)]);
    for (i, want) in all.iter().enumerate() {
        assert_eq!(&ds.frame(i).unwrap(), want, "frame {i}");
    }
    let lang = ds.language().unwrap();
    assert_eq!(lang.indx, vec![(1, 4), (5, 9)]);
    assert_eq!(lang.task, vec!["open_drawer", "lift"]);
    // Statistics cover all 10 frames (restored from statistics.yaml on resume).
    check_statistics(ds.statistics().unwrap(), &all);

    // Resume again with a foreign statistics.yaml: statistics are recomputed from frames.
    std::fs::write(dir.join("statistics.yaml"), CALVIN_STATISTICS_YAML).unwrap();
    let mut w = CalvinWriter::create(&dir).unwrap();
    assert_eq!(w.next_frame_index(), 10);
    check_statistics(
        CalvinDataset::open(&dir).unwrap().statistics().unwrap(),
        &all,
    );
    // finish() with an unfinished frame is an error.
    w.write_frame(10, &synth_frame(10)).unwrap();
    let e = format!("{}", w.finish().unwrap_err());
    assert!(e.contains("written after the last finished episode"), "{e}");
    let w = CalvinWriter::create(&dir).unwrap();
    assert!(!dir.join(frame_file_name(10)).exists());
    w.finish().unwrap();
    assert_eq!(CalvinDataset::open(&dir).unwrap().num_frames(), 10);
}

#[test]
fn writer_output_is_deterministic_path_layout() {
    // The split layout CALVIN's loaders expect.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    write_tiny_dataset(&dir);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| PathBuf::from(e.unwrap().file_name()))
        .collect();
    names.sort();
    let mut want: Vec<PathBuf> = (100..110)
        .map(|i| PathBuf::from(frame_file_name(i)))
        .collect();
    want.extend(
        [
            "ep_start_end_ids.npy",
            "lang_annotations",
            "statistics.yaml",
        ]
        .map(PathBuf::from),
    );
    want.sort();
    assert_eq!(names, want);
    assert!(dir.join("lang_annotations/auto_lang_ann.npy").is_file());
}
