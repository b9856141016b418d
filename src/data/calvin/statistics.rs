//! `statistics.yaml`: normalization statistics, read, computed and written.

use super::*;
use crate::base::fs::write_atomic;
use crate::data::npz::NpzReader;
use anyhow::{anyhow, ensure, Result};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

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
pub(super) struct FrameStats {
    robot_obs: Acc,
    scene_obs: Acc,
    actions: Acc,
    rel_actions: Acc,
}

/// The vector part of a frame (what statistics are computed from).
#[derive(Debug, Clone)]
pub(super) struct FrameVectors {
    actions: [f64; ACTION_DIM],
    rel_actions: [f64; ACTION_DIM],
    robot_obs: [f64; ROBOT_OBS_DIM],
    scene_obs: [f64; SCENE_OBS_DIM],
}

impl FrameVectors {
    pub(super) fn of(f: &CalvinFrame) -> FrameVectors {
        FrameVectors {
            actions: f.actions,
            rel_actions: f.rel_actions,
            robot_obs: f.robot_obs,
            scene_obs: f.scene_obs,
        }
    }
    pub(super) fn read(path: &Path) -> Result<FrameVectors> {
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
    pub(super) fn new() -> FrameStats {
        FrameStats {
            robot_obs: Acc::new(ROBOT_OBS_DIM),
            scene_obs: Acc::new(SCENE_OBS_DIM),
            actions: Acc::new(ACTION_DIM),
            rel_actions: Acc::new(ACTION_DIM),
        }
    }
    pub(super) fn add(&mut self, v: &FrameVectors) {
        self.robot_obs.add(&v.robot_obs);
        self.scene_obs.add(&v.scene_obs);
        self.actions.add(&v.actions);
        self.rel_actions.add(&v.rel_actions);
    }
    pub(super) fn merge(&mut self, o: &FrameStats) {
        self.robot_obs.merge(&o.robot_obs);
        self.scene_obs.merge(&o.scene_obs);
        self.actions.merge(&o.actions);
        self.rel_actions.merge(&o.rel_actions);
    }
    /// Restores accumulators from a statistics file written by [`CalvinWriter`] over
    /// exactly `n` frames.
    pub(super) fn restore(s: &Statistics, n: usize) -> Option<FrameStats> {
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
    pub(super) fn statistics(&self) -> Statistics {
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
