//! The run folder: `chains.jsonl` (one line per finished chain, appended,
//! flushed and fsynced as each chain finishes), `run.json` (what is being
//! evaluated, checked on resume), and the atomically written `results.json`,
//! `results.txt` and `summary.json`.
//!
//! A killed run leaves at most one torn last line; it is dropped (and cut off
//! the file) when the folder is opened again. A torn line anywhere else is
//! corruption and an error.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::metrics::{ChainRecord, Metrics};

/// The per-chain log.
pub const CHAINS_FILE: &str = "chains.jsonl";
/// The run's identity, checked when resuming.
pub const RUN_FILE: &str = "run.json";
/// CALVIN's results layout.
pub const RESULTS_JSON: &str = "results.json";
/// The human-readable table.
pub const RESULTS_TXT: &str = "results.txt";
/// Counts, env errors and timing.
pub const SUMMARY_JSON: &str = "summary.json";

/// What a run evaluates; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// The policy (see `PolicySpec::describe`).
    pub policy: String,
    /// Simulator backend.
    pub backend: String,
    /// Step budget per subtask.
    pub ep_len: usize,
    /// Where the chains come from: `calvin` or `file:<path> sha:<fnv>`.
    pub chains: String,
}

/// Reads `chains.jsonl`, dropping (and truncating away) a torn last line.
/// Returns the records by chain index; a later line for a chain replaces an
/// earlier env-error line (a retry), other duplicates must agree.
pub fn read_chain_log(path: &Path, repair: bool) -> Result<BTreeMap<usize, ChainRecord>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut out = BTreeMap::new();
    let mut good_end = 0usize;
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| start + p);
        let (line, next, complete) = match end {
            Some(e) => (&bytes[start..e], e + 1, true),
            None => (&bytes[start..], bytes.len(), false),
        };
        let parsed = if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice::<ChainRecord>(line))
        };
        match parsed {
            None => {}
            Some(Ok(rec)) if complete => insert_record(&mut out, rec)
                .with_context(|| format!("{}: line {line_no}", path.display()))?,
            Some(r) => {
                // A torn line is tolerated only at the end of the file.
                if next < bytes.len() {
                    let err = r.err().map(|e| e.to_string()).unwrap_or_default();
                    bail!(
                        "{}: line {line_no} is not a chain record ({err}); the log is corrupt",
                        path.display()
                    );
                }
                tracing::warn!(
                    file = %path.display(),
                    line = line_no,
                    "dropping a torn last line (an interrupted write)"
                );
                break;
            }
        }
        good_end = next;
        start = next;
    }
    if repair && good_end < bytes.len() {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("{}: cannot open to repair", path.display()))?;
        f.set_len(good_end as u64)?;
        f.sync_all()?;
    }
    Ok(out)
}

/// Adds `rec` to `map`: replaces an env-error record of the same chain,
/// refuses a disagreeing duplicate.
pub fn insert_record(map: &mut BTreeMap<usize, ChainRecord>, rec: ChainRecord) -> Result<()> {
    match map.get(&rec.index) {
        None => {
            map.insert(rec.index, rec);
        }
        Some(old) if old.same_outcome(&rec) => {}
        Some(old) if old.env_error => {
            map.insert(rec.index, rec);
        }
        Some(_) if rec.env_error => {}
        Some(old) => bail!(
            "chain {} appears twice with different outcomes ({} vs {} completed subtasks)",
            rec.index,
            old.completed,
            rec.completed
        ),
    }
    Ok(())
}

/// The append-only chain log of a run folder.
#[derive(Debug)]
pub struct ChainLog {
    path: PathBuf,
    file: File,
}

impl ChainLog {
    /// Opens (creating) `dir/chains.jsonl` for appending.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(CHAINS_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        Ok(Self { path, file })
    }

    /// Appends one record as a line, then flushes and fsyncs.
    pub fn append(&mut self, rec: &ChainRecord) -> Result<()> {
        let mut line = serde_json::to_vec(rec)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("{}: cannot append", self.path.display()))
    }
}

use crate::base::fs::write_atomic;

/// Reads `dir/run.json`, if any.
pub fn read_run_info(dir: &Path) -> Result<Option<RunInfo>> {
    let p = dir.join(RUN_FILE);
    match std::fs::read_to_string(&p) {
        Ok(t) => {
            Ok(Some(serde_json::from_str(&t).with_context(|| {
                format!("{}: not a run file", p.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", p.display())),
    }
}

/// Records `info` in `dir/run.json`, or checks that it matches the recorded one.
pub fn claim_run_dir(dir: &Path, info: &RunInfo) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    match read_run_info(dir)? {
        Some(old) if &old != info => bail!(
            "{}: this folder holds a run of {:?} on backend '{}' (ep_len {}, chains {}); \
             refusing to mix in {:?} on '{}' (ep_len {}, chains {}). Use another --out",
            dir.display(),
            old.policy,
            old.backend,
            old.ep_len,
            old.chains,
            info.policy,
            info.backend,
            info.ep_len,
            info.chains
        ),
        Some(_) => Ok(()),
        None => write_atomic(
            &dir.join(RUN_FILE),
            serde_json::to_string_pretty(info)?.as_bytes(),
        ),
    }
}

/// Counts and timing written next to the results.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run.
    pub run: Option<RunInfo>,
    /// Chains with a policy result.
    pub chains: usize,
    /// Chains that ended in an env error (not in the metrics).
    pub env_errors: usize,
    /// Their indices.
    pub env_error_chains: Vec<usize>,
    /// Chains whose first attempt hit a simulator failure and whose retry succeeded.
    pub retried_chains: Vec<usize>,
    /// Mean completed subtasks.
    pub avg_seq_len: f64,
    /// SR(1..5).
    pub chain_sr: Vec<f64>,
    /// Total env steps over all chains.
    pub steps: usize,
    /// Sum of the chains' wall times (s).
    pub chain_wall_s: f64,
}

/// Writes `results.json`, `results.txt` and `summary.json` for `records`.
pub fn write_results(
    dir: &Path,
    records: &BTreeMap<usize, ChainRecord>,
    epoch: Option<&str>,
    run: Option<&RunInfo>,
) -> Result<Metrics> {
    let recs: Vec<ChainRecord> = records.values().cloned().collect();
    let m = Metrics::compute(&recs);
    let json = serde_json::to_string_pretty(&m.results_json(epoch))?;
    write_atomic(&dir.join(RESULTS_JSON), json.as_bytes())?;
    let title = match run {
        Some(r) => format!(
            "CALVIN long-horizon evaluation: policy {}, backend {}, EP_LEN {}",
            r.policy, r.backend, r.ep_len
        ),
        None => "CALVIN long-horizon evaluation".into(),
    };
    let mut txt = m.results_txt(&title);
    let errs: Vec<usize> = recs
        .iter()
        .filter(|r| r.env_error)
        .map(|r| r.index)
        .collect();
    if !errs.is_empty() {
        txt.push_str(&format!(
            "\nenv errors (simulator failed twice; not policy failures) in chains: {errs:?}\n"
        ));
    }
    write_atomic(&dir.join(RESULTS_TXT), txt.as_bytes())?;
    let summary = Summary {
        run: run.cloned(),
        chains: m.chains,
        env_errors: m.env_errors,
        env_error_chains: errs,
        retried_chains: recs
            .iter()
            .filter(|r| !r.env_error && r.attempts > 1)
            .map(|r| r.index)
            .collect(),
        avg_seq_len: m.avg_seq_len,
        chain_sr: m.chain_sr.to_vec(),
        steps: recs
            .iter()
            .flat_map(|r| r.subtasks.iter().map(|s| s.steps))
            .sum(),
        chain_wall_s: recs.iter().map(|r| r.wall_s).sum(),
    };
    write_atomic(
        &dir.join(SUMMARY_JSON),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(m)
}

/// `vw2 eval merge`: the union of shard folders' chain logs into `out`
/// (refusing duplicates that disagree), with fresh results.
pub fn merge_runs(dirs: &[PathBuf], out: &Path, epoch: Option<&str>) -> Result<Metrics> {
    let mut all = BTreeMap::new();
    let mut run: Option<RunInfo> = None;
    for d in dirs {
        let info = read_run_info(d)?;
        match (&run, &info) {
            (Some(a), Some(b)) if a != b => bail!(
                "{}: a run of {:?} on '{}' cannot be merged with one of {:?} on '{}'",
                d.display(),
                b.policy,
                b.backend,
                a.policy,
                a.backend
            ),
            (None, Some(_)) => run = info.clone(),
            _ => {}
        }
        let recs = read_chain_log(&d.join(CHAINS_FILE), false)?;
        if recs.is_empty() && !d.join(CHAINS_FILE).exists() {
            bail!("{}: no {CHAINS_FILE} here", d.display());
        }
        for (_, r) in recs {
            insert_record(&mut all, r).with_context(|| format!("merging {}", d.display()))?;
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    if let Some(r) = &run {
        claim_run_dir(out, r)?;
    }
    let existing = read_chain_log(&out.join(CHAINS_FILE), true)?;
    for (_, r) in existing {
        insert_record(&mut all, r).context("merging the output folder's own chains")?;
    }
    let mut text = Vec::new();
    for r in all.values() {
        text.extend(serde_json::to_vec(r)?);
        text.push(b'\n');
    }
    write_atomic(&out.join(CHAINS_FILE), &text)?;
    write_results(out, &all, epoch, run.as_ref())
}
