//! Language annotations (`lang_annotations/auto_lang_ann.npy`).

use super::*;
use crate::base::fs::write_atomic;
use crate::data::npy::{parse_header, NpyArray, NpyDtype};
use crate::data::pickle::{read_pickle, write_pickle, NdArray, NdData, PyValue};
use anyhow::{anyhow, bail, ensure, Result};
use std::fs;
use std::path::Path;

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
        let mut out = crate::data::npy::encode_header(NpyDtype::Object, &[]);
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
