//! Reading and writing datasets in the on-disk format of the CALVIN benchmark.
//!
//! A CALVIN split directory (e.g. `task_D_D/training/`) holds:
//!
//! - `episode_XXXXXXX.npz`, one file per frame, `XXXXXXX` the 7-digit zero-padded global
//!   frame index. Keys read and written here:
//!   - `actions`: `float64 [7]`, absolute end-effector target: TCP position x, y, z (m),
//!     orientation as Euler angles x, y, z (rad), gripper command (-1 close, +1 open);
//!   - `rel_actions`: `float64 [7]`, relative action: position delta / 0.02 m, Euler delta /
//!     0.05 rad (both clipped to [-1, 1]), gripper command (+-1);
//!   - `robot_obs`: `float64 [15]` proprioception (TCP pos (m), TCP Euler (rad), gripper
//!     opening width (m), 7 joint angles (rad), gripper action (+-1));
//!   - `scene_obs`: `float64 [24]` object and articulation state;
//!   - `rgb_static`: `uint8 [200, 200, 3]` static camera; `rgb_gripper`: `uint8 [84, 84, 3]`
//!     gripper camera.
//!
//!   Other keys of real CALVIN files (`rgb_tactile`, `depth_static`, `depth_gripper`,
//!   `depth_tactile`, ...) are ignored. Both stored (`np.savez`) and deflate-compressed
//!   (`np.savez_compressed`) archives are read; frames are written stored.
//! - `ep_start_end_ids.npy`: `int64 [E, 2]`, inclusive first and last frame index of each
//!   episode.
//! - `statistics.yaml`: normalization statistics (see [`Statistics`]).
//! - `lang_annotations/auto_lang_ann.npy`: a 0-d numpy object array holding the pickled dict
//!   `{'language': {'ann': [str], 'task': [str], 'emb': float32 [N, 1, 384]},
//!   'info': {'episodes': [], 'indx': [(start, end)]}}` (see [`LangAnnotations`]).
//!
//! [`CalvinDataset`] reads such a directory; [`CalvinWriter`] writes one, resumably.
//! Every error names the file and, where it applies, the key, and says what was expected and
//! what was found.

use super::npy::{parse_header, NpyArray, NpyDtype};
use super::npz::{NpzReader, NpzWriter};
use super::pickle::{read_pickle, write_pickle, NdArray, NdData, PyValue};
use super::Image;
use anyhow::{anyhow, bail, ensure, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Length of `actions` and `rel_actions` (xyz, Euler xyz, gripper).
pub const ACTION_DIM: usize = 7;
/// Length of `robot_obs`.
pub const ROBOT_OBS_DIM: usize = 15;
/// Length of `scene_obs`.
pub const SCENE_OBS_DIM: usize = 24;
/// Side of CALVIN's static camera image `rgb_static` (pixels).
pub const STATIC_IMAGE_SIZE: usize = 200;
/// Side of CALVIN's gripper camera image `rgb_gripper` (pixels).
pub const GRIPPER_IMAGE_SIZE: usize = 84;
/// Size of CALVIN's language embeddings (`emb` is `float32 [N, 1, 384]`).
pub const LANG_EMB_DIM: usize = 384;
/// Episode table file name.
pub const EP_IDS_FILE: &str = "ep_start_end_ids.npy";
/// Statistics file name.
pub const STATISTICS_FILE: &str = "statistics.yaml";
/// Language annotation file, relative to the split directory.
pub const LANG_FILE: &str = "lang_annotations/auto_lang_ann.npy";
/// `_target_` of the normalization entries written to `statistics.yaml`.
pub const NORMALIZE_TARGET: &str = "calvin_models.calvin_agent.utils.transforms.NormalizeVector";

/// File name of frame `idx`: `episode_{idx:07}.npz`.
pub fn frame_file_name(idx: usize) -> String {
    format!("episode_{idx:07}.npz")
}

/// Parses a frame file name `episode_<digits>.npz` back to its index.
pub fn parse_frame_file_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("episode_")?.strip_suffix(".npz")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The npz keys of a CALVIN frame written here.
pub const CALVIN_KEYS: [&str; 6] = [
    "actions",
    "rel_actions",
    "robot_obs",
    "scene_obs",
    "rgb_static",
    "rgb_gripper",
];

/// One CALVIN frame (the keys of one `episode_XXXXXXX.npz` that are used here).
#[derive(Debug, Clone, PartialEq)]
pub struct CalvinFrame {
    /// Absolute action: TCP position xyz (m), Euler xyz (rad), gripper (-1 close / +1 open).
    pub actions: [f64; ACTION_DIM],
    /// Relative action: xyz delta / 0.02 m, Euler delta / 0.05 rad, clipped to [-1, 1];
    /// gripper (+-1).
    pub rel_actions: [f64; ACTION_DIM],
    /// Robot proprioception (15 values; see the module docs).
    pub robot_obs: [f64; ROBOT_OBS_DIM],
    /// Scene state (24 values).
    pub scene_obs: [f64; SCENE_OBS_DIM],
    /// Static camera image, usually 200x200.
    pub rgb_static: Image,
    /// Gripper camera image, usually 84x84.
    pub rgb_gripper: Image,
}

fn read_vector<const N: usize>(npz: &NpzReader, key: &str) -> Result<[f64; N]> {
    let a = npz.array(key)?;
    let p = npz.path().display();
    ensure!(
        matches!(a.dtype, NpyDtype::F64 | NpyDtype::F32),
        "{p}: key '{key}': expected float64 values, found dtype {}",
        a.dtype.name()
    );
    ensure!(
        a.elem_count() == N,
        "{p}: key '{key}': expected {N} values, found {} (shape {:?})",
        a.elem_count(),
        a.shape
    );
    let v = a.to_f64_vec()?;
    Ok(v.try_into().expect("length checked"))
}

fn read_image(npz: &NpzReader, key: &str) -> Result<Image> {
    let a = npz.array(key)?;
    let p = npz.path().display();
    ensure!(
        a.dtype == NpyDtype::U8,
        "{p}: key '{key}': expected a uint8 image, found dtype {} (shape {:?})",
        a.dtype.name(),
        a.shape
    );
    ensure!(
        a.shape.len() == 3 && a.shape[2] == 3,
        "{p}: key '{key}': expected shape [H, W, 3], found {:?}",
        a.shape
    );
    Ok(Image {
        height: a.shape[0],
        width: a.shape[1],
        data: a.data,
    })
}

fn check_image(path: &Path, key: &str, img: &Image) -> Result<()> {
    ensure!(
        img.height > 0 && img.width > 0 && img.data.len() == img.height * img.width * 3,
        "{}: key '{key}': image {}x{}x3 needs {} bytes, has {}",
        path.display(),
        img.height,
        img.width,
        img.height * img.width * 3,
        img.data.len()
    );
    Ok(())
}

impl CalvinFrame {
    /// Reads a frame file (`episode_XXXXXXX.npz`), ignoring keys not used here.
    pub fn read(path: impl AsRef<Path>) -> Result<CalvinFrame> {
        let npz = NpzReader::open(path)?;
        Self::from_npz(&npz)
    }

    /// Decodes a frame from an opened archive.
    pub fn from_npz(npz: &NpzReader) -> Result<CalvinFrame> {
        Ok(CalvinFrame {
            actions: read_vector(npz, "actions")?,
            rel_actions: read_vector(npz, "rel_actions")?,
            robot_obs: read_vector(npz, "robot_obs")?,
            scene_obs: read_vector(npz, "scene_obs")?,
            rgb_static: read_image(npz, "rgb_static")?,
            rgb_gripper: read_image(npz, "rgb_gripper")?,
        })
    }

    /// The `.npz` archive bytes of this frame (stored members, CALVIN key names and dtypes).
    /// `path` is only used in error messages.
    pub fn to_npz_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        self.to_npz_bytes_with(path, &[])
    }

    /// [`to_npz_bytes`](Self::to_npz_bytes) plus `extra` members (keys outside CALVIN's,
    /// which CALVIN's loaders ignore), after the CALVIN ones.
    pub fn to_npz_bytes_with(&self, path: &Path, extra: &[(&str, NpyArray)]) -> Result<Vec<u8>> {
        check_image(path, "rgb_static", &self.rgb_static)?;
        check_image(path, "rgb_gripper", &self.rgb_gripper)?;
        let mut w = NpzWriter::new();
        w.add("actions", &NpyArray::from_f64(&[ACTION_DIM], &self.actions));
        w.add(
            "rel_actions",
            &NpyArray::from_f64(&[ACTION_DIM], &self.rel_actions),
        );
        w.add(
            "robot_obs",
            &NpyArray::from_f64(&[ROBOT_OBS_DIM], &self.robot_obs),
        );
        w.add(
            "scene_obs",
            &NpyArray::from_f64(&[SCENE_OBS_DIM], &self.scene_obs),
        );
        for (key, img) in [
            ("rgb_static", &self.rgb_static),
            ("rgb_gripper", &self.rgb_gripper),
        ] {
            w.add(
                key,
                &NpyArray::from_u8(&[img.height, img.width, 3], img.data.clone()),
            );
        }
        for (key, a) in extra {
            ensure!(
                !CALVIN_KEYS.contains(key),
                "{}: extra key '{key}' would replace a CALVIN key",
                path.display()
            );
            w.add(key, a);
        }
        w.to_bytes()
            .map_err(|e| anyhow!("{}: cannot encode: {e}", path.display()))
    }

    /// Writes this frame to `path` atomically (temporary file, fsync, rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        write_atomic(path, &self.to_npz_bytes(path)?)
    }
}

use crate::base::fs::write_atomic;

// ---------------------------------------------------------------------------------------
// ep_start_end_ids.npy
// ---------------------------------------------------------------------------------------

/// Reads `ep_start_end_ids.npy`: an integer `[E, 2]` array of inclusive (start, end) frame
/// indices.
pub fn read_episode_ids(path: impl AsRef<Path>) -> Result<Vec<(usize, usize)>> {
    let path = path.as_ref();
    let p = path.display();
    let bytes = fs::read(path).map_err(|e| anyhow!("{p}: cannot read: {e}"))?;
    let a = NpyArray::parse(&bytes).map_err(|e| anyhow!("{p}: {e}"))?;
    ensure!(
        a.shape.len() == 2 && a.shape[1] == 2 || a.shape == [0],
        "{p}: expected an [E, 2] array of (start, end) frame indices, found shape {:?}",
        a.shape
    );
    let v = a
        .to_i64_vec()
        .map_err(|e| anyhow!("{p}: expected int64 values: {e}"))?;
    v.chunks_exact(2)
        .enumerate()
        .map(|(i, c)| {
            ensure!(
                c[0] >= 0 && c[1] >= c[0],
                "{p}: episode {i}: expected 0 <= start <= end, found ({}, {})",
                c[0],
                c[1]
            );
            Ok((c[0] as usize, c[1] as usize))
        })
        .collect()
}

/// Writes `ep_start_end_ids.npy` (`int64 [E, 2]`) atomically.
pub fn write_episode_ids(path: impl AsRef<Path>, episodes: &[(usize, usize)]) -> Result<()> {
    let flat: Vec<i64> = episodes
        .iter()
        .flat_map(|&(s, e)| [s as i64, e as i64])
        .collect();
    write_atomic(
        path.as_ref(),
        &NpyArray::from_i64(&[episodes.len(), 2], &flat).to_bytes(),
    )
}

// ---------------------------------------------------------------------------------------
// statistics.yaml
// ---------------------------------------------------------------------------------------

/// Per-dimension normalization statistics of one vector key.
#[derive(Debug, Clone, PartialEq)]
pub struct NormStats {
    /// Mean of each dimension (same unit as the key).
    pub mean: Vec<f64>,
    /// Population standard deviation (numpy `std`, ddof = 0) of each dimension.
    pub std: Vec<f64>,
}

/// Contents of `statistics.yaml`.
///
/// Written as CALVIN does: each key maps to a list holding one
/// `{_target_: calvin_models.calvin_agent.utils.transforms.NormalizeVector, mean, std}`
/// entry; `act_min_bound` / `act_max_bound` are plain lists. Reading is tolerant: other keys
/// and other list entries (image transforms, ...) are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Statistics {
    /// `robot_obs` statistics (15 dims; required when reading).
    pub robot_obs: NormStats,
    /// `scene_obs` statistics (24 dims; required when reading).
    pub scene_obs: NormStats,
    /// `actions` statistics (7 dims; optional, CALVIN's own files have none).
    pub actions: Option<NormStats>,
    /// `rel_actions` statistics (7 dims; optional).
    pub rel_actions: Option<NormStats>,
    /// `act_min_bound`: per-dimension minimum of the absolute `actions` (7 values).
    pub act_min_bound: Option<Vec<f64>>,
    /// `act_max_bound`: per-dimension maximum of the absolute `actions` (7 values).
    pub act_max_bound: Option<Vec<f64>>,
    /// `num_frames`: number of frames the statistics were computed over (written by
    /// [`CalvinWriter`]; absent from CALVIN's files).
    pub num_frames: Option<usize>,
}

/// Formats a float so that both YAML 1.2 (serde_yaml) and YAML 1.1 (PyYAML, used by
/// CALVIN's OmegaConf) read it back as the same float: always a '.', signed exponent.
fn yaml_float(v: f64) -> String {
    if v.is_nan() {
        return ".nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    let s = format!("{v:?}");
    match s.split_once('e') {
        None => s,
        Some((mant, exp)) => {
            let mant = if mant.contains('.') {
                mant.to_owned()
            } else {
                format!("{mant}.0")
            };
            let exp = if exp.starts_with('-') {
                exp.to_owned()
            } else {
                format!("+{exp}")
            };
            format!("{mant}e{exp}")
        }
    }
}

fn yaml_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|&x| yaml_float(x)).collect();
    format!("[{}]", items.join(", "))
}

fn yaml_numbers(v: &serde_yaml::Value) -> Option<Vec<f64>> {
    v.as_sequence()?
        .iter()
        .map(|x| {
            x.as_f64().or_else(|| match x {
                serde_yaml::Value::String(s) => match s.as_str() {
                    ".nan" | ".NaN" | ".NAN" => Some(f64::NAN),
                    ".inf" | ".Inf" | ".INF" | "+.inf" => Some(f64::INFINITY),
                    "-.inf" | "-.Inf" | "-.INF" => Some(f64::NEG_INFINITY),
                    _ => s.parse().ok(),
                },
                _ => None,
            })
        })
        .collect()
}

impl Statistics {
    /// Reads `statistics.yaml`.
    pub fn read(path: impl AsRef<Path>) -> Result<Statistics> {
        let path = path.as_ref();
        let text = fs::read_to_string(path)
            .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses statistics YAML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Statistics> {
        let p = path.display();
        let doc: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| anyhow!("{p}: invalid YAML: {e}"))?;
        ensure!(doc.is_mapping(), "{p}: expected a mapping at the top level");
        let norm = |key: &str, dim: usize, required: bool| -> Result<Option<NormStats>> {
            let Some(v) = doc.get(key) else {
                ensure!(!required, "{p}: missing key '{key}'");
                return Ok(None);
            };
            // CALVIN: a list of transforms; use the entry holding mean and std. A bare
            // {mean, std} mapping is accepted too.
            let entry = match v {
                serde_yaml::Value::Sequence(items) => items
                    .iter()
                    .find(|it| it.get("mean").is_some() && it.get("std").is_some()),
                m if m.get("mean").is_some() && m.get("std").is_some() => Some(m),
                _ => None,
            }
            .ok_or_else(|| {
                anyhow!("{p}: key '{key}': expected a NormalizeVector entry with 'mean' and 'std'")
            })?;
            let mut out = Vec::new();
            for field in ["mean", "std"] {
                let vals = yaml_numbers(&entry[field]).ok_or_else(|| {
                    anyhow!("{p}: key '{key}.{field}': expected a list of numbers")
                })?;
                ensure!(
                    vals.len() == dim,
                    "{p}: key '{key}.{field}': expected {dim} values, found {}",
                    vals.len()
                );
                out.push(vals);
            }
            let std = out.pop().unwrap();
            let mean = out.pop().unwrap();
            Ok(Some(NormStats { mean, std }))
        };
        let bound = |key: &str| -> Result<Option<Vec<f64>>> {
            let Some(v) = doc.get(key) else {
                return Ok(None);
            };
            let vals = yaml_numbers(v)
                .ok_or_else(|| anyhow!("{p}: key '{key}': expected a list of numbers"))?;
            ensure!(
                vals.len() == ACTION_DIM,
                "{p}: key '{key}': expected {ACTION_DIM} values, found {}",
                vals.len()
            );
            Ok(Some(vals))
        };
        let num_frames =
            match doc.get("num_frames") {
                None => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    anyhow!("{p}: key 'num_frames': expected a non-negative integer")
                })? as usize),
            };
        Ok(Statistics {
            robot_obs: norm("robot_obs", ROBOT_OBS_DIM, true)?.unwrap(),
            scene_obs: norm("scene_obs", SCENE_OBS_DIM, true)?.unwrap(),
            actions: norm("actions", ACTION_DIM, false)?,
            rel_actions: norm("rel_actions", ACTION_DIM, false)?,
            act_min_bound: bound("act_min_bound")?,
            act_max_bound: bound("act_max_bound")?,
            num_frames,
        })
    }

    /// The YAML text (CALVIN layout; floats formatted for both YAML 1.1 and 1.2 readers,
    /// exact round trip).
    pub fn to_yaml(&self) -> String {
        let mut s = String::from(
            "# Normalization statistics: per-dimension mean and population std (ddof=0).\n",
        );
        let mut norm = |key: &str, st: &NormStats| {
            let _ = writeln!(s, "{key}:");
            let _ = writeln!(s, "- _target_: {NORMALIZE_TARGET}");
            let _ = writeln!(s, "  mean: {}", yaml_list(&st.mean));
            let _ = writeln!(s, "  std: {}", yaml_list(&st.std));
        };
        norm("robot_obs", &self.robot_obs);
        norm("scene_obs", &self.scene_obs);
        if let Some(a) = &self.actions {
            norm("actions", a);
        }
        if let Some(a) = &self.rel_actions {
            norm("rel_actions", a);
        }
        if let Some(b) = &self.act_min_bound {
            let _ = writeln!(s, "act_min_bound: {}", yaml_list(b));
        }
        if let Some(b) = &self.act_max_bound {
            let _ = writeln!(s, "act_max_bound: {}", yaml_list(b));
        }
        if let Some(n) = self.num_frames {
            let _ = writeln!(s, "num_frames: {n}");
        }
        s
    }

    /// Writes `statistics.yaml` atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_yaml().as_bytes())
    }
}

/// Running mean / variance / min / max of fixed-length vectors (Welford, mergeable).
#[derive(Debug, Clone)]
struct Acc {
    n: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
}

impl Acc {
    fn new(dim: usize) -> Acc {
        Acc {
            n: 0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
            min: vec![f64::INFINITY; dim],
            max: vec![f64::NEG_INFINITY; dim],
        }
    }
    fn add(&mut self, x: &[f64]) {
        self.n += 1;
        let n = self.n as f64;
        for (i, &v) in x.iter().enumerate() {
            let d = v - self.mean[i];
            self.mean[i] += d / n;
            self.m2[i] += d * (v - self.mean[i]);
            self.min[i] = self.min[i].min(v);
            self.max[i] = self.max[i].max(v);
        }
    }
    fn merge(&mut self, o: &Acc) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = o.clone();
            return;
        }
        let (na, nb) = (self.n as f64, o.n as f64);
        let n = na + nb;
        for i in 0..self.mean.len() {
            let d = o.mean[i] - self.mean[i];
            self.mean[i] += d * nb / n;
            self.m2[i] += o.m2[i] + d * d * na * nb / n;
            self.min[i] = self.min[i].min(o.min[i]);
            self.max[i] = self.max[i].max(o.max[i]);
        }
        self.n += o.n;
    }
    fn stats(&self) -> NormStats {
        let n = self.n.max(1) as f64;
        NormStats {
            mean: self.mean.clone(),
            std: self.m2.iter().map(|m| (m / n).max(0.0).sqrt()).collect(),
        }
    }
    fn restore(st: &NormStats, n: usize) -> Acc {
        let dim = st.mean.len();
        Acc {
            n,
            mean: st.mean.clone(),
            m2: st.std.iter().map(|s| s * s * n as f64).collect(),
            min: vec![f64::INFINITY; dim],
            max: vec![f64::NEG_INFINITY; dim],
        }
    }
}

/// Accumulated statistics over the four vector keys of frames.
#[derive(Debug, Clone)]
struct FrameStats {
    robot_obs: Acc,
    scene_obs: Acc,
    actions: Acc,
    rel_actions: Acc,
}

/// The vector part of a frame (what statistics are computed from).
#[derive(Debug, Clone)]
struct FrameVectors {
    actions: [f64; ACTION_DIM],
    rel_actions: [f64; ACTION_DIM],
    robot_obs: [f64; ROBOT_OBS_DIM],
    scene_obs: [f64; SCENE_OBS_DIM],
}

impl FrameVectors {
    fn of(f: &CalvinFrame) -> FrameVectors {
        FrameVectors {
            actions: f.actions,
            rel_actions: f.rel_actions,
            robot_obs: f.robot_obs,
            scene_obs: f.scene_obs,
        }
    }
    fn read(path: &Path) -> Result<FrameVectors> {
        let npz = NpzReader::open(path)?;
        Ok(FrameVectors {
            actions: read_vector(&npz, "actions")?,
            rel_actions: read_vector(&npz, "rel_actions")?,
            robot_obs: read_vector(&npz, "robot_obs")?,
            scene_obs: read_vector(&npz, "scene_obs")?,
        })
    }
}

impl FrameStats {
    fn new() -> FrameStats {
        FrameStats {
            robot_obs: Acc::new(ROBOT_OBS_DIM),
            scene_obs: Acc::new(SCENE_OBS_DIM),
            actions: Acc::new(ACTION_DIM),
            rel_actions: Acc::new(ACTION_DIM),
        }
    }
    fn add(&mut self, v: &FrameVectors) {
        self.robot_obs.add(&v.robot_obs);
        self.scene_obs.add(&v.scene_obs);
        self.actions.add(&v.actions);
        self.rel_actions.add(&v.rel_actions);
    }
    fn merge(&mut self, o: &FrameStats) {
        self.robot_obs.merge(&o.robot_obs);
        self.scene_obs.merge(&o.scene_obs);
        self.actions.merge(&o.actions);
        self.rel_actions.merge(&o.rel_actions);
    }
    /// Restores accumulators from a statistics file written by [`CalvinWriter`] over
    /// exactly `n` frames.
    fn restore(s: &Statistics, n: usize) -> Option<FrameStats> {
        let (Some(actions), Some(rel), Some(lo), Some(hi)) = (
            &s.actions,
            &s.rel_actions,
            &s.act_min_bound,
            &s.act_max_bound,
        ) else {
            return None;
        };
        if s.num_frames != Some(n) {
            return None;
        }
        let mut a = Acc::restore(actions, n);
        if n > 0 {
            a.min = lo.clone();
            a.max = hi.clone();
        }
        Some(FrameStats {
            robot_obs: Acc::restore(&s.robot_obs, n),
            scene_obs: Acc::restore(&s.scene_obs, n),
            actions: a,
            rel_actions: Acc::restore(rel, n),
        })
    }
    fn statistics(&self) -> Statistics {
        let bounds = |v: &Vec<f64>| {
            if self.actions.n == 0 {
                vec![0.0; ACTION_DIM]
            } else {
                v.clone()
            }
        };
        Statistics {
            robot_obs: self.robot_obs.stats(),
            scene_obs: self.scene_obs.stats(),
            actions: Some(self.actions.stats()),
            rel_actions: Some(self.rel_actions.stats()),
            act_min_bound: Some(bounds(&self.actions.min)),
            act_max_bound: Some(bounds(&self.actions.max)),
            num_frames: Some(self.actions.n),
        }
    }
}

// ---------------------------------------------------------------------------------------
// lang_annotations/auto_lang_ann.npy
// ---------------------------------------------------------------------------------------

/// CALVIN language annotations (`lang_annotations/auto_lang_ann.npy`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LangAnnotations {
    /// `language.ann`: the instruction sentence of each annotation.
    pub ann: Vec<String>,
    /// `language.task`: the task id of each annotation (e.g. `"open_drawer"`).
    pub task: Vec<String>,
    /// `info.indx`: inclusive (start, end) frame indices of each annotated window.
    pub indx: Vec<(usize, usize)>,
    /// Shape of `language.emb` when present (CALVIN: `[N, 1, 384]`); its values are not
    /// loaded. Ignored when writing (zeros of `[N, 1, 384]` are written).
    pub emb_shape: Option<Vec<usize>>,
}

/// One language annotation to write: a task id and sentence for frames `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LangEntry {
    /// First annotated frame index (inclusive).
    pub start: usize,
    /// Last annotated frame index (inclusive).
    pub end: usize,
    /// Task id (`language.task`).
    pub task: String,
    /// Instruction sentence (`language.ann`).
    pub ann: String,
}

fn string_list(v: &PyValue, p: &str, key: &str) -> Result<Vec<String>> {
    let items: &[PyValue] = match v {
        PyValue::List(items) | PyValue::Tuple(items) => items,
        PyValue::Array(NdArray {
            data: NdData::Objects(items),
            ..
        }) => items,
        other => bail!(
            "{p}: key '{key}': expected a list of strings, found {}",
            other.type_name()
        ),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, it)| match it {
            PyValue::Str(s) => Ok(s.clone()),
            other => bail!(
                "{p}: key '{key}': entry {i}: expected a string, found {}",
                other.type_name()
            ),
        })
        .collect()
}

fn index_pairs(v: &PyValue, p: &str, key: &str) -> Result<Vec<(usize, usize)>> {
    let as_index = |x: &PyValue, i: usize| -> Result<usize> {
        match x {
            PyValue::Int(n) if *n >= 0 => Ok(*n as usize),
            other => bail!(
                "{p}: key '{key}': entry {i}: expected a non-negative integer, found {other:?}"
            ),
        }
    };
    match v {
        PyValue::List(items) | PyValue::Tuple(items) => items
            .iter()
            .enumerate()
            .map(|(i, it)| match it {
                PyValue::Tuple(pair) | PyValue::List(pair) if pair.len() == 2 => {
                    Ok((as_index(&pair[0], i)?, as_index(&pair[1], i)?))
                }
                other => bail!(
                    "{p}: key '{key}': entry {i}: expected a (start, end) pair, found {}",
                    other.type_name()
                ),
            })
            .collect(),
        PyValue::Array(NdArray {
            descr,
            shape,
            data: NdData::Raw(bytes),
            ..
        }) if shape.len() == 2 && shape[1] == 2 => {
            let (dtype, big) = NpyDtype::parse_descr(descr)?;
            let mut data = bytes.clone();
            if big {
                data.chunks_exact_mut(dtype.size())
                    .for_each(|c| c.reverse());
            }
            let vals = NpyArray {
                dtype,
                shape: shape.clone(),
                data,
            }
            .to_i64_vec()
            .map_err(|e| anyhow!("{p}: key '{key}': {e}"))?;
            vals.chunks_exact(2)
                .enumerate()
                .map(|(i, c)| {
                    Ok((
                        as_index(&PyValue::Int(c[0]), i)?,
                        as_index(&PyValue::Int(c[1]), i)?,
                    ))
                })
                .collect()
        }
        other => bail!(
            "{p}: key '{key}': expected a list of (start, end) pairs, found {}",
            other.type_name()
        ),
    }
}

impl LangAnnotations {
    /// Reads `auto_lang_ann.npy` (a pickled 0-d object array, any pickle protocol 2-5).
    pub fn read(path: impl AsRef<Path>) -> Result<LangAnnotations> {
        let path = path.as_ref();
        let p = path.display().to_string();
        let bytes = fs::read(path).map_err(|e| anyhow!("{p}: cannot read: {e}"))?;
        let h = parse_header(&bytes).map_err(|e| anyhow!("{p}: {e}"))?;
        ensure!(
            h.dtype == NpyDtype::Object,
            "{p}: expected a pickled object array (dtype '|O'), found dtype {} {:?}",
            h.dtype.name(),
            h.shape
        );
        let value =
            read_pickle(&bytes[h.data_offset..], h.data_offset).map_err(|e| anyhow!("{p}: {e}"))?;
        Self::from_value(value.item(), &p)
    }

    /// Interprets the annotation dict (the `.item()` of the object array); `path` is only
    /// used in error messages.
    pub fn from_value(d: &PyValue, path: &str) -> Result<LangAnnotations> {
        let p = path;
        ensure!(
            matches!(d, PyValue::Dict(_)),
            "{p}: expected a dict with keys 'language' and 'info', found {}",
            d.type_name()
        );
        let get = |v: &PyValue, parent: &str, key: &str| -> Result<PyValue> {
            v.get(key)
                .cloned()
                .ok_or_else(|| anyhow!("{p}: missing key '{parent}{key}'"))
        };
        let language = get(d, "", "language")?;
        let info = get(d, "", "info")?;
        let ann = string_list(&get(&language, "language.", "ann")?, p, "language.ann")?;
        let task = string_list(&get(&language, "language.", "task")?, p, "language.task")?;
        let indx = index_pairs(&get(&info, "info.", "indx")?, p, "info.indx")?;
        ensure!(
            ann.len() == task.len() && ann.len() == indx.len(),
            "{p}: key 'language.ann' has {} entries, 'language.task' {}, 'info.indx' {}; \
             expected equal counts",
            ann.len(),
            task.len(),
            indx.len()
        );
        for (i, &(s, e)) in indx.iter().enumerate() {
            ensure!(
                s <= e,
                "{p}: key 'info.indx': entry {i}: expected start <= end, found ({s}, {e})"
            );
        }
        let emb_shape = match language.get("emb") {
            Some(PyValue::Array(a)) => Some(a.shape.clone()),
            _ => None,
        };
        Ok(LangAnnotations {
            ann,
            task,
            indx,
            emb_shape,
        })
    }

    /// Number of annotations.
    pub fn len(&self) -> usize {
        self.ann.len()
    }

    /// True when there are no annotations.
    pub fn is_empty(&self) -> bool {
        self.ann.is_empty()
    }

    /// The annotations as entries.
    pub fn entries(&self) -> Vec<LangEntry> {
        self.indx
            .iter()
            .zip(&self.task)
            .zip(&self.ann)
            .map(|((&(start, end), task), ann)| LangEntry {
                start,
                end,
                task: task.clone(),
                ann: ann.clone(),
            })
            .collect()
    }

    /// Builds annotations from entries (with `emb_shape` `[N, 1, 384]`, as written).
    pub fn from_entries(entries: &[LangEntry]) -> LangAnnotations {
        LangAnnotations {
            ann: entries.iter().map(|e| e.ann.clone()).collect(),
            task: entries.iter().map(|e| e.task.clone()).collect(),
            indx: entries.iter().map(|e| (e.start, e.end)).collect(),
            emb_shape: Some(vec![entries.len(), 1, LANG_EMB_DIM]),
        }
    }

    /// The Python value numpy stores: a 0-d object array holding
    /// `{'language': {'ann', 'task', 'emb'}, 'info': {'episodes': [], 'indx'}}`, where
    /// `emb` is a zero `float32 [N, 1, 384]` array.
    pub fn to_value(&self) -> PyValue {
        let s = |x: &str| PyValue::Str(x.to_owned());
        let strs = |v: &[String]| PyValue::List(v.iter().map(|x| s(x)).collect());
        let n = self.ann.len();
        let emb = PyValue::Array(NdArray {
            descr: "<f4".into(),
            shape: vec![n, 1, LANG_EMB_DIM],
            fortran_order: false,
            data: NdData::Raw(vec![0; n * LANG_EMB_DIM * 4]),
        });
        let indx = PyValue::List(
            self.indx
                .iter()
                .map(|&(a, b)| PyValue::Tuple(vec![PyValue::Int(a as i64), PyValue::Int(b as i64)]))
                .collect(),
        );
        let d = PyValue::Dict(vec![
            (
                s("language"),
                PyValue::Dict(vec![
                    (s("ann"), strs(&self.ann)),
                    (s("task"), strs(&self.task)),
                    (s("emb"), emb),
                ]),
            ),
            (
                s("info"),
                PyValue::Dict(vec![
                    (s("episodes"), PyValue::List(vec![])),
                    (s("indx"), indx),
                ]),
            ),
        ]);
        PyValue::Array(NdArray {
            descr: "|O".into(),
            shape: vec![],
            fortran_order: false,
            data: NdData::Objects(vec![d]),
        })
    }

    /// The `.npy` file bytes (object array header + protocol 3 pickle), loadable with
    /// `np.load(path, allow_pickle=True).item()`.
    pub fn to_npy_bytes(&self) -> Result<Vec<u8>> {
        ensure!(
            self.ann.len() == self.task.len() && self.ann.len() == self.indx.len(),
            "language annotations: ann, task and indx must have equal lengths ({}, {}, {})",
            self.ann.len(),
            self.task.len(),
            self.indx.len()
        );
        let mut out = super::npy::encode_header(NpyDtype::Object, &[]);
        out.extend(write_pickle(&self.to_value())?);
        Ok(out)
    }

    /// Writes the annotation file atomically (creating its directory).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| anyhow!("{}: cannot create: {e}", dir.display()))?;
        }
        let bytes = self
            .to_npy_bytes()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        write_atomic(path, &bytes)
    }
}

// ---------------------------------------------------------------------------------------
// Dataset reader
// ---------------------------------------------------------------------------------------

/// A CALVIN split directory opened for reading.
#[derive(Debug, Clone)]
pub struct CalvinDataset {
    dir: PathBuf,
    episodes: Vec<(usize, usize)>,
    statistics: Option<Statistics>,
    language: Option<LangAnnotations>,
}

impl CalvinDataset {
    /// Opens a split directory: reads `ep_start_end_ids.npy` (required), `statistics.yaml`
    /// and `lang_annotations/auto_lang_ann.npy` (both optional; present but malformed is an
    /// error). Frames are read on demand.
    pub fn open(dir: impl AsRef<Path>) -> Result<CalvinDataset> {
        let dir = dir.as_ref().to_path_buf();
        ensure!(
            dir.is_dir(),
            "{}: not a directory (expected a CALVIN split such as task_D_D/training)",
            dir.display()
        );
        let ep_path = dir.join(EP_IDS_FILE);
        ensure!(
            ep_path.is_file(),
            "{}: missing (every CALVIN split has an episode table)",
            ep_path.display()
        );
        let episodes = read_episode_ids(&ep_path)?;
        let stats_path = dir.join(STATISTICS_FILE);
        let statistics = if stats_path.exists() {
            Some(Statistics::read(&stats_path)?)
        } else {
            None
        };
        let lang_path = dir.join(LANG_FILE);
        let language = if lang_path.exists() {
            Some(LangAnnotations::read(&lang_path)?)
        } else {
            None
        };
        Ok(CalvinDataset {
            dir,
            episodes,
            statistics,
            language,
        })
    }

    /// The split directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Inclusive (start, end) frame indices of every episode, as in `ep_start_end_ids.npy`.
    pub fn episodes(&self) -> &[(usize, usize)] {
        &self.episodes
    }

    /// Total number of frames over all episodes.
    pub fn num_frames(&self) -> usize {
        self.episodes.iter().map(|&(s, e)| e - s + 1).sum()
    }

    /// Path of frame `idx` (`episode_XXXXXXX.npz`).
    pub fn frame_path(&self, idx: usize) -> PathBuf {
        self.dir.join(frame_file_name(idx))
    }

    /// Reads frame `idx`.
    pub fn frame(&self, idx: usize) -> Result<CalvinFrame> {
        CalvinFrame::read(self.frame_path(idx))
    }

    /// The frames of episode `ep` (an index into [`CalvinDataset::episodes`]), in order,
    /// read lazily.
    pub fn episode_frames(
        &self,
        ep: usize,
    ) -> Result<impl Iterator<Item = Result<CalvinFrame>> + '_> {
        let &(start, end) = self.episodes.get(ep).ok_or_else(|| {
            anyhow!(
                "{}: episode {ep} does not exist ({} episodes)",
                self.dir.join(EP_IDS_FILE).display(),
                self.episodes.len()
            )
        })?;
        Ok((start..=end).map(move |i| self.frame(i)))
    }

    /// Language annotations, if the split has `lang_annotations/auto_lang_ann.npy`.
    pub fn language(&self) -> Option<&LangAnnotations> {
        self.language.as_ref()
    }

    /// Normalization statistics, if the split has `statistics.yaml`.
    pub fn statistics(&self) -> Option<&Statistics> {
        self.statistics.as_ref()
    }
}

// ---------------------------------------------------------------------------------------
// Dataset writer
// ---------------------------------------------------------------------------------------

/// Writes a CALVIN split directory, frame by frame and episode by episode, resumably.
///
/// Protocol: [`write_frame`](Self::write_frame) each frame of an episode (any order), then
/// [`finish_episode`](Self::finish_episode) with its inclusive index range. Finishing an
/// episode commits it: `lang_annotations/auto_lang_ann.npy`, `statistics.yaml` (recomputed
/// over all finished frames) and finally `ep_start_end_ids.npy` are rewritten atomically
/// (temporary file + fsync + rename), so an interruption at any point loses no finished
/// episode. Frame files are written atomically too.
///
/// [`create`](Self::create) on an existing directory resumes: finished episodes (those in
/// `ep_start_end_ids.npy`) are kept; frame files after the last finished episode (an
/// unfinished episode) and leftover temporary files are deleted; language entries outside
/// finished episodes are dropped; and [`next_frame_index`](Self::next_frame_index) is the
/// frame after the last finished episode. A `statistics.yaml` not written by this writer (no
/// matching `num_frames`) is recomputed from the finished frames and replaced.
///
/// Language annotations ([`add_language`](Self::add_language)) are persisted with the next
/// commit ([`finish_episode`](Self::finish_episode), [`flush`](Self::flush) or
/// [`finish`](Self::finish)); add an episode's annotations before finishing it to commit them
/// together with the episode.
#[derive(Debug)]
pub struct CalvinWriter {
    dir: PathBuf,
    episodes: Vec<(usize, usize)>,
    /// Language entries committed (inside finished episodes) or pending (inside the
    /// unfinished range), in insertion order.
    lang: Vec<LangEntry>,
    /// Statistics over the frames of finished episodes.
    stats: FrameStats,
    /// Frames written after the last finished episode.
    pending: BTreeMap<usize, FrameVectors>,
}

impl CalvinWriter {
    /// Creates the split directory `dir` (and parents) or resumes writing into it.
    pub fn create(dir: impl AsRef<Path>) -> Result<CalvinWriter> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: cannot create: {e}", dir.display()))?;
        let ep_path = dir.join(EP_IDS_FILE);
        let episodes = if ep_path.exists() {
            read_episode_ids(&ep_path)?
        } else {
            Vec::new()
        };
        for w in episodes.windows(2) {
            ensure!(
                w[1].0 > w[0].1,
                "{}: episodes must be in increasing frame order to append, found {:?} then {:?}",
                ep_path.display(),
                w[0],
                w[1]
            );
        }
        let last_end = episodes.last().map(|e| e.1);
        // Remove the unfinished tail and leftover temporary files.
        let lang_dir = dir.join(LANG_FILE).parent().unwrap().to_path_buf();
        for d in [&dir, &lang_dir] {
            let Ok(rd) = fs::read_dir(d) else { continue };
            for entry in rd {
                let entry = entry.map_err(|e| anyhow!("{}: cannot list: {e}", d.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let unfinished =
                    parse_frame_file_name(&name).is_some_and(|i| last_end.is_none_or(|l| i > l));
                let temp = crate::base::fs::is_tmp_name(&name);
                if (unfinished && d == &dir) || temp {
                    let path = entry.path();
                    fs::remove_file(&path)
                        .map_err(|e| anyhow!("{}: cannot remove: {e}", path.display()))?;
                }
            }
        }
        let mut w = CalvinWriter {
            dir,
            episodes,
            lang: Vec::new(),
            stats: FrameStats::new(),
            pending: BTreeMap::new(),
        };
        // Language annotations: keep those inside finished episodes.
        let lang_path = w.dir.join(LANG_FILE);
        let mut lang_dirty = false;
        if lang_path.exists() {
            let all = LangAnnotations::read(&lang_path)?.entries();
            let n = all.len();
            w.lang = all
                .into_iter()
                .filter(|e| w.episode_containing(e.start, e.end).is_some())
                .collect();
            lang_dirty = w.lang.len() != n;
        }
        // Statistics: restore from our own statistics.yaml when it covers exactly the
        // finished frames, otherwise recompute from the frame files.
        let n_frames: usize = w.episodes.iter().map(|&(s, e)| e - s + 1).sum();
        let stats_path = w.dir.join(STATISTICS_FILE);
        let restored = Statistics::read(&stats_path)
            .ok()
            .and_then(|s| FrameStats::restore(&s, n_frames));
        let stats_dirty = restored.is_none();
        w.stats = match restored {
            Some(s) => s,
            None => {
                let mut acc = FrameStats::new();
                for &(s, e) in &w.episodes {
                    for i in s..=e {
                        acc.add(&FrameVectors::read(&w.dir.join(frame_file_name(i)))?);
                    }
                }
                acc
            }
        };
        if !ep_path.exists() || lang_dirty || stats_dirty {
            w.commit()?;
        }
        Ok(w)
    }

    /// The split directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finished episodes (inclusive frame ranges), as recorded in `ep_start_end_ids.npy`.
    pub fn episodes(&self) -> &[(usize, usize)] {
        &self.episodes
    }

    /// The index to write next: one past the highest frame written or finished (0 for an
    /// empty dataset). After a resume this is the frame after the last finished episode.
    pub fn next_frame_index(&self) -> usize {
        let finished = self.episodes.last().map_or(0, |e| e.1 + 1);
        let pending = self.pending.keys().next_back().map_or(0, |&i| i + 1);
        finished.max(pending)
    }

    /// Indices of frames written after the last finished episode.
    pub fn unfinished_frames(&self) -> Vec<usize> {
        self.pending.keys().copied().collect()
    }

    fn episode_containing(&self, start: usize, end: usize) -> Option<usize> {
        self.episodes
            .iter()
            .position(|&(s, e)| s <= start && end <= e)
    }

    /// Writes frame `idx` as `episode_{idx:07}.npz` (atomically). `idx` must lie after the
    /// last finished episode; rewriting a frame of the unfinished episode replaces it.
    pub fn write_frame(&mut self, idx: usize, frame: &CalvinFrame) -> Result<()> {
        self.write_frame_with(idx, frame, &[])
    }

    /// [`write_frame`](Self::write_frame) with `extra` npz members beside CALVIN's keys.
    pub fn write_frame_with(
        &mut self,
        idx: usize,
        frame: &CalvinFrame,
        extra: &[(&str, NpyArray)],
    ) -> Result<()> {
        let path = self.dir.join(frame_file_name(idx));
        if let Some(&(s, e)) = self.episodes.last() {
            ensure!(
                idx > e,
                "{}: frame {idx} is not after the last finished episode ({s}..={e}); \
                 finished episodes are immutable",
                path.display()
            );
        }
        write_atomic(&path, &frame.to_npz_bytes_with(&path, extra)?)?;
        self.pending.insert(idx, FrameVectors::of(frame));
        Ok(())
    }

    /// Finishes the episode of frames `start..=end` (inclusive), which must all have been
    /// written since the previous finished episode, and commits it to disk.
    pub fn finish_episode(&mut self, start: usize, end: usize) -> Result<()> {
        let ep_path = self.dir.join(EP_IDS_FILE);
        let p = ep_path.display();
        ensure!(start <= end, "{p}: episode ({start}, {end}): start > end");
        if let Some(&(s, e)) = self.episodes.last() {
            ensure!(
                start > e,
                "{p}: episode ({start}, {end}) overlaps or precedes the last finished \
                 episode ({s}, {e})"
            );
        }
        let missing: Vec<usize> = (start..=end)
            .filter(|i| !self.pending.contains_key(i))
            .take(10)
            .collect();
        ensure!(
            missing.is_empty(),
            "{p}: episode ({start}, {end}): frames not written: {missing:?}{}",
            if missing.len() == 10 { " ..." } else { "" }
        );
        if let Some((&first, _)) = self.pending.first_key_value() {
            ensure!(
                first >= start,
                "{p}: episode ({start}, {end}): frame {first} was written before its start \
                 and would be orphaned"
            );
        }
        let mut ep_stats = FrameStats::new();
        for i in start..=end {
            let v = self.pending.remove(&i).expect("checked above");
            ep_stats.add(&v);
        }
        let before = self.stats.clone();
        self.stats.merge(&ep_stats);
        self.episodes.push((start, end));
        if let Err(e) = self.commit() {
            // Keep the in-memory state consistent with disk (the episode is not committed).
            self.episodes.pop();
            self.stats = before;
            for i in start..=end {
                if let Ok(v) = FrameVectors::read(&self.dir.join(frame_file_name(i))) {
                    self.pending.insert(i, v);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Adds a language annotation for frames `start..=end`, which must lie inside one
    /// finished episode or entirely after the last finished episode (then it is committed
    /// when an episode containing it is finished).
    pub fn add_language(
        &mut self,
        start: usize,
        end: usize,
        task: impl Into<String>,
        ann: impl Into<String>,
    ) -> Result<()> {
        let lp = self.dir.join(LANG_FILE);
        ensure!(
            start <= end,
            "{}: annotation ({start}, {end}): start > end",
            lp.display()
        );
        let after_last = self.episodes.last().is_none_or(|&(_, e)| start > e);
        ensure!(
            after_last || self.episode_containing(start, end).is_some(),
            "{}: annotation ({start}, {end}) is not inside one episode",
            lp.display()
        );
        self.lang.push(LangEntry {
            start,
            end,
            task: task.into(),
            ann: ann.into(),
        });
        Ok(())
    }

    /// Rewrites the metadata files (language entries inside finished episodes,
    /// statistics, episode table), atomically.
    pub fn flush(&mut self) -> Result<()> {
        self.commit()
    }

    fn commit(&mut self) -> Result<()> {
        let committed: Vec<LangEntry> = self
            .lang
            .iter()
            .filter(|e| self.episode_containing(e.start, e.end).is_some())
            .cloned()
            .collect();
        let lang_path = self.dir.join(LANG_FILE);
        if !committed.is_empty() || lang_path.exists() {
            LangAnnotations::from_entries(&committed).write(&lang_path)?;
        }
        self.stats
            .statistics()
            .write(self.dir.join(STATISTICS_FILE))?;
        write_episode_ids(self.dir.join(EP_IDS_FILE), &self.episodes)
    }

    /// Deletes the frames written after the last finished episode (and drops language
    /// entries that were waiting for them).
    pub fn discard_unfinished(&mut self) -> Result<()> {
        for &i in self.pending.keys() {
            let path = self.dir.join(frame_file_name(i));
            fs::remove_file(&path)
                .map_err(|e| anyhow!("{}: cannot remove: {e}", path.display()))?;
        }
        self.pending.clear();
        let eps = self.episodes.clone();
        self.lang
            .retain(|e| eps.iter().any(|&(s, t)| s <= e.start && e.end <= t));
        Ok(())
    }

    /// Commits everything and checks nothing is left unfinished: frames written after the
    /// last finished episode, or language entries outside finished episodes, are an error
    /// (call [`finish_episode`](Self::finish_episode) or
    /// [`discard_unfinished`](Self::discard_unfinished) first).
    pub fn finish(mut self) -> Result<()> {
        let p = self.dir.display();
        if let (Some(first), Some(last)) = (
            self.pending.keys().next().copied(),
            self.pending.keys().next_back().copied(),
        ) {
            bail!(
                "{p}: {} frame(s) ({first}..={last}) written after the last finished episode; \
                 call finish_episode or discard_unfinished",
                self.pending.len()
            );
        }
        if let Some(e) = self
            .lang
            .iter()
            .find(|e| self.episode_containing(e.start, e.end).is_none())
        {
            bail!(
                "{p}: language annotation ({}, {}) '{}' is not inside a finished episode",
                e.start,
                e.end,
                e.task
            );
        }
        self.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_floats_are_yaml11_compatible() {
        for (v, s) in [
            (1.0, "1.0"),
            (-0.25, "-0.25"),
            (1e-7, "1.0e-7"),
            (1.5e20, "1.5e+20"),
            (f64::NAN, ".nan"),
        ] {
            assert_eq!(yaml_float(v), s);
        }
    }

    #[test]
    fn frame_names() {
        assert_eq!(frame_file_name(12), "episode_0000012.npz");
        assert_eq!(parse_frame_file_name("episode_0000012.npz"), Some(12));
        assert_eq!(parse_frame_file_name("episode_.npz"), None);
        assert_eq!(parse_frame_file_name(".episode_0000012.npz.1.tmp"), None);
    }

    #[test]
    fn welford_merge_matches_direct() {
        let xs: Vec<[f64; 2]> = (0..10).map(|i| [i as f64, (i * i) as f64 * 0.5]).collect();
        let mut all = Acc::new(2);
        xs.iter().for_each(|x| all.add(x));
        let (mut a, mut b) = (Acc::new(2), Acc::new(2));
        xs[..3].iter().for_each(|x| a.add(x));
        xs[3..].iter().for_each(|x| b.add(x));
        a.merge(&b);
        for i in 0..2 {
            assert!((a.mean[i] - all.mean[i]).abs() < 1e-12);
            assert!((a.m2[i] - all.m2[i]).abs() < 1e-9);
        }
    }
}
