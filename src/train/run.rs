//! The training loop shared by every stage: seeded per-epoch data order,
//! learning-rate schedule, AdamW, loss CSV, progress bar, and atomic
//! checkpoints from which a killed run resumes exactly.
//!
//! Run folder layout:
//!
//! ```text
//! RUN/config.yaml                     the resolved stage config (+ seed); a resume must match it
//! RUN/loss.csv                        step,epoch,lr,loss,grad_norm,elapsed_s (one row per update)
//! RUN/checkpoints/latest.json         {"step": S, "dir": "step-0000000S"}, replaced atomically
//! RUN/checkpoints/step-0000000S/      renamed into place once complete:
//!     model.safetensors               every trainable tensor, by parameter name
//!     optimizer.safetensors           AdamW moments `m.NAME`, `v.NAME`
//!     state.json                      step, epoch, seed, items, batch_size, first loss
//! ```
//!
//! The data order needs no saved RNG state: epoch `e` shuffles the items with a
//! `StdRng` seeded from `(seed, e)`, and update `i` takes batch `i mod B` of
//! epoch `i div B` (B batches per epoch). The step counter says it all.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::optim::{named_vars, AdamW};

/// How one invocation of a trainer behaves (not part of the run's identity).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
    /// Ignore (delete) existing checkpoints and start over.
    pub restart: bool,
    /// Stop after this many updates in this invocation, without a final
    /// checkpoint, as if the process were killed (tests use it).
    pub halt_after: Option<u64>,
}

/// What a training loop did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainReport {
    /// Updates done in total (including those before a resume).
    pub steps_done: u64,
    /// Updates the run asks for.
    pub total_steps: u64,
    /// Whether `steps_done == total_steps`.
    pub completed: bool,
    /// Step of the checkpoint this invocation resumed from.
    pub resumed_from: Option<u64>,
    /// Loss of the very first update of the run.
    pub first_loss: f64,
    /// Loss of the last update done.
    pub last_loss: f64,
    /// Losses of the updates done in this invocation, in order (not
    /// serialized: `loss.csv` has the curve).
    #[serde(skip)]
    pub losses: Vec<f64>,
    /// Wall time of this invocation's updates (s).
    pub seconds: f64,
}

impl TrainReport {
    /// Seconds per update in this invocation.
    pub fn seconds_per_step(&self) -> f64 {
        if self.losses.is_empty() {
            0.0
        } else {
            self.seconds / self.losses.len() as f64
        }
    }
}

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Updates done.
    pub step: u64,
    /// Epoch of the next update.
    pub epoch: u64,
    /// Seed of the data order.
    pub seed: u64,
    /// Items in the dataset (a resume on other data is refused).
    pub items: usize,
    /// Items per update.
    pub batch_size: usize,
    /// Loss of the first update of the run.
    pub first_loss: f64,
    /// Loss of the update just done.
    pub last_loss: f64,
}

/// `checkpoints/latest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Latest {
    step: u64,
    dir: String,
}

/// Batches per epoch: `items / batch_size` (the last partial batch is dropped),
/// or one batch with every item when there are fewer items than a batch.
pub fn batches_per_epoch(items: usize, batch_size: usize) -> usize {
    (items / batch_size.max(1)).max(1)
}

/// The item order of `epoch`: a permutation of `0..items` from a `StdRng`
/// seeded with `(seed, epoch)`.
pub fn epoch_order(items: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mixed = seed ^ (epoch.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = StdRng::seed_from_u64(mixed);
    let mut order: Vec<usize> = (0..items).collect();
    order.shuffle(&mut rng);
    order
}

/// Epoch and item indices of update `step` (0-based).
pub fn batch_for_step(items: usize, batch_size: usize, seed: u64, step: u64) -> (u64, Vec<usize>) {
    let nb = batches_per_epoch(items, batch_size) as u64;
    let epoch = step / nb;
    let b = (step % nb) as usize;
    let order = epoch_order(items, seed, epoch);
    let bs = batch_size.min(items);
    (epoch, order[b * bs..(b + 1) * bs].to_vec())
}

pub use crate::base::fs::write_atomic;

fn save_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let bytes = crate::policy::weights::safetensors_bytes(tensors)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    write_atomic(path, &bytes)
}

fn load_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: cannot read checkpoint tensors", path.display()))?;
    Ok(map.into_iter().collect())
}

/// The tensors of every variable in `varmap`, by name (detached copies).
pub fn varmap_tensors(varmap: &VarMap) -> BTreeMap<String, Tensor> {
    named_vars(varmap)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().detach()))
        .collect()
}

/// Sets every variable of `varmap` from `tensors`; a missing key or a shape
/// mismatch is an error naming `what` and the key.
pub fn load_into_varmap(
    varmap: &VarMap,
    tensors: &BTreeMap<String, Tensor>,
    what: &str,
) -> Result<()> {
    for (name, var) in named_vars(varmap) {
        let t = tensors
            .get(&name)
            .ok_or_else(|| anyhow!("{what}: missing key '{name}'"))?;
        if t.shape() != var.as_tensor().shape() {
            bail!(
                "{what}: key '{name}': expected shape {:?}, found {:?}",
                var.as_tensor().dims(),
                t.dims()
            );
        }
        var.set(
            &t.to_dtype(var.as_tensor().dtype())?
                .to_device(var.as_tensor().device())?,
        )?;
    }
    Ok(())
}

/// The checkpoint folder of `run_dir`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The newest complete checkpoint of `run_dir`, if any: its folder and state.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<(PathBuf, CheckpointState)>> {
    let root = checkpoints_dir(run_dir);
    let latest = root.join("latest.json");
    let dir = match std::fs::read_to_string(&latest) {
        Ok(text) => {
            let l: Latest =
                serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", latest.display()))?;
            root.join(l.dir)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No pointer yet (killed before the first one was written): take the
            // newest renamed-into-place folder, if any.
            let mut best: Option<PathBuf> = None;
            if let Ok(rd) = std::fs::read_dir(&root) {
                for entry in rd.flatten() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name.starts_with("step-")
                        && entry.path().join("state.json").is_file()
                        && best.as_ref().is_none_or(|b| entry.path() > *b)
                    {
                        best = Some(entry.path());
                    }
                }
            }
            match best {
                Some(b) => b,
                None => return Ok(None),
            }
        }
        Err(e) => bail!("{}: {e}", latest.display()),
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("{}: cannot read checkpoint state", state_path.display()))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", state_path.display()))?;
    Ok(Some((dir, state)))
}

/// Writes a checkpoint of `varmap` + `opt` at `state.step`, atomically: the
/// files go to a temp folder that is renamed into place, then `latest.json`
/// is replaced; older checkpoints beyond `keep` are removed.
pub fn save_checkpoint(
    run_dir: &Path,
    varmap: &VarMap,
    opt: &AdamW,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root)
        .with_context(|| format!("{}: cannot create folder", root.display()))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    save_tensors(&tmp.join("model.safetensors"), &varmap_tensors(varmap))?;
    save_tensors(&tmp.join("optimizer.safetensors"), &opt.state_tensors())?;
    write_atomic(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst)?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("{}: cannot rename into place", dst.display()))?;
    let latest = Latest {
        step: state.step,
        dir: name.clone(),
    };
    write_atomic(
        &root.join("latest.json"),
        serde_json::to_string(&latest)?.as_bytes(),
    )?;
    // Prune: keep the `keep` newest step folders; drop stale temp folders.
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    steps.sort();
    let n = steps.len();
    for old in steps.into_iter().take(n.saturating_sub(keep)) {
        if old != dst {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dst)
}

const CSV_HEADER: &str = "step,epoch,lr,loss,grad_norm,elapsed_s";

/// Keeps the CSV rows with `step ≤ keep_until` (rows written after the
/// checkpoint a run resumes from are redone).
fn trim_csv(path: &Path, keep_until: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => bail!("{}: {e}", path.display()),
    };
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for line in text.lines().skip(1) {
        let step: Option<u64> = line.split(',').next().and_then(|s| s.parse().ok());
        if step.is_some_and(|s| s <= keep_until) {
            out.push_str(line);
            out.push('\n');
        }
    }
    write_atomic(path, out.as_bytes())
}

/// The identity of a run, stored as `RUN/config.yaml`.
fn check_or_write_config(run_dir: &Path, config_yaml: &str, resuming: bool) -> Result<()> {
    let path = run_dir.join("config.yaml");
    if resuming {
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the run's config", path.display()))?;
        if old != config_yaml {
            bail!(
                "{}: this run was started with a different config or seed; \
                 use a new --out folder or --restart",
                path.display()
            );
        }
        return Ok(());
    }
    write_atomic(&path, config_yaml.as_bytes())
}

/// The loop: `items` dataset items, `loss_fn(batch)` the scalar loss of a
/// batch of item indices. Parameters are every variable of `varmap`. Resumes
/// from the newest checkpoint of `run_dir` unless `opts.restart`.
#[allow(clippy::too_many_arguments)]
pub fn train_loop(
    stage: &str,
    run_dir: &Path,
    config_yaml: &str,
    varmap: &VarMap,
    cfg: &TrainConfig,
    seed: u64,
    items: usize,
    opts: &RunOptions,
    mut loss_fn: impl FnMut(&[usize]) -> Result<Tensor>,
) -> Result<TrainReport> {
    cfg.validate().map_err(|e| anyhow!(e))?;
    if items == 0 {
        bail!("{stage}: no training items (is the dataset too small for the configured clip/window length?)");
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("{}: cannot create run folder", run_dir.display()))?;
    if opts.restart {
        let root = checkpoints_dir(run_dir);
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("{}: cannot remove", root.display()))?;
        }
    }
    let vars = named_vars(varmap);
    if vars.is_empty() {
        bail!("{stage}: the model has no trainable parameters");
    }
    let mut opt = AdamW::new(vars, &cfg.optim)?;
    let csv_path = run_dir.join("loss.csv");
    let mut step = 0u64;
    let mut first_loss = f64::NAN;
    let mut last_loss = f64::NAN;
    let resumed_from = match latest_checkpoint(run_dir)? {
        Some((dir, state)) => {
            check_or_write_config(run_dir, config_yaml, true)?;
            if state.items != items || state.batch_size != cfg.batch_size || state.seed != seed {
                bail!(
                    "{}: checkpoint was made with {} items, batch {} and seed {}; this run has {items} items, batch {} and seed {seed} (use --restart)",
                    dir.display(),
                    state.items,
                    state.batch_size,
                    state.seed,
                    cfg.batch_size
                );
            }
            load_into_varmap(
                varmap,
                &load_tensors(&dir.join("model.safetensors"))?,
                &dir.join("model.safetensors").display().to_string(),
            )?;
            opt.load_state(
                &load_tensors(&dir.join("optimizer.safetensors"))?,
                state.step,
            )?;
            step = state.step;
            first_loss = state.first_loss;
            last_loss = state.last_loss;
            trim_csv(&csv_path, step)?;
            tracing::info!(stage, step, dir = %dir.display(), "resuming from checkpoint");
            Some(step)
        }
        None => {
            check_or_write_config(run_dir, config_yaml, false)?;
            trim_csv(&csv_path, 0)?;
            None
        }
    };
    let mut csv = std::fs::OpenOptions::new()
        .append(true)
        .open(&csv_path)
        .with_context(|| format!("{}: cannot open", csv_path.display()))?;
    let total = cfg.steps;
    let bar = if opts.progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{stage} {{bar:30}} {{pos}}/{{len}} steps {{msg}} [{{elapsed}} < {{eta}}]"
        ))
        .expect("valid template"),
    );
    bar.set_position(step);
    let start = Instant::now();
    let mut losses = Vec::new();
    let nb = batches_per_epoch(items, cfg.batch_size) as u64;
    while step < total {
        if opts.halt_after.is_some_and(|h| losses.len() as u64 >= h) {
            break;
        }
        let (epoch, batch) = batch_for_step(items, cfg.batch_size, seed, step);
        let lr = cfg.optim.lr_at(step, total);
        let loss = loss_fn(&batch)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!("{stage}: loss is {value} at step {}", step + 1);
        }
        let grads = loss.backward()?;
        let grad_norm = opt.step(&grads, lr)?;
        step += 1;
        if first_loss.is_nan() {
            first_loss = value;
        }
        last_loss = value;
        losses.push(value);
        let elapsed = start.elapsed().as_secs_f64();
        writeln!(
            csv,
            "{step},{epoch},{lr:.6e},{value:.8e},{grad_norm:.6e},{elapsed:.3}"
        )
        .with_context(|| format!("{}: cannot append", csv_path.display()))?;
        if cfg.log_every > 0 && (step.is_multiple_of(cfg.log_every) || step == 1 || step == total) {
            tracing::info!(stage, step, epoch, lr, loss = value, grad_norm, "train");
        }
        bar.set_position(step);
        bar.set_message(format!("loss {value:.4}"));
        let at_end = step == total;
        if at_end || (cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every)) {
            let state = CheckpointState {
                step,
                epoch: step / nb,
                seed,
                items,
                batch_size: cfg.batch_size,
                first_loss,
                last_loss,
            };
            save_checkpoint(run_dir, varmap, &opt, &state, cfg.keep_checkpoints)?;
        }
    }
    csv.flush()?;
    bar.finish_and_clear();
    Ok(TrainReport {
        steps_done: step,
        total_steps: total,
        completed: step == total,
        resumed_from,
        first_loss,
        last_loss,
        losses,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_order_is_seeded_per_epoch() {
        let (e0, a) = batch_for_step(10, 3, 7, 0);
        let (_, b) = batch_for_step(10, 3, 7, 1);
        let (_, c) = batch_for_step(10, 3, 7, 2);
        assert_eq!(e0, 0);
        let mut all: Vec<usize> = a.iter().chain(&b).chain(&c).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 9, "one epoch's batches are disjoint");
        let (e1, d) = batch_for_step(10, 3, 7, 3);
        assert_eq!(e1, 1);
        assert_eq!(batch_for_step(10, 3, 7, 3).1, d, "reproducible");
        assert_ne!(epoch_order(10, 7, 0), epoch_order(10, 7, 1));
        assert_ne!(epoch_order(10, 7, 0), epoch_order(10, 8, 0));
        // Fewer items than a batch: one batch with all of them.
        assert_eq!(batch_for_step(2, 4, 0, 5).1.len(), 2);
    }
}
