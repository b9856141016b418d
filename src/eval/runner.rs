//! The CALVIN long-horizon rollout (`evaluate_policy.py::evaluate_sequence`)
//! and the parallel, resumable run around it.
//!
//! Per chain: reset the env once to the chain's state (never between
//! subtasks); per subtask: `policy.reset`, `start_info = env.info()`, then up
//! to EP_LEN steps of policy step → env step → oracle
//! (`task_success(start_info, [subtask])`); the subtask succeeds when the
//! oracle reports it, and the chain stops at the first failure.
//!
//! The policy step is the robot's path, in lockstep: the policy plans a chunk,
//! the runtime's [`Actuator`] plays it and the safety layer clamps it, and the
//! env is stepped with the command's relative action (as `vw2 run` steps a
//! simulator). The CALVIN envelope passes every valid CALVIN action
//! unchanged; whatever it clamps or holds is counted per chain.
//!
//! W worker threads each own one env process and one policy instance. The
//! main thread appends each finished chain to `chains.jsonl` (fsynced) as it
//! arrives, so a killed run resumes without repeating or losing a chain. A
//! simulator failure (crash, hang, garbage) fails only its chain: the env is
//! restarted and the chain retried once, then recorded as an env error, which
//! is reported apart and never counted as a policy failure.
//!
//! A set-up error stops the run instead: until some chain of the run has taken
//! one env step and asked the oracle, a chain whose retry on a fresh env fails
//! in the same request the same way (a backend that cannot reset: a missing
//! camera, an import error, a refused action) is not recorded, and the run
//! ends with the simulator's message and a non-zero status rather than
//! burning through every chain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};

use super::chains::Chain;
use super::failures::{failure_path, FrameLog, STRIP_FRAMES};
use super::metrics::{ChainRecord, Metrics, SubtaskRecord};
use super::policy::{EvalPolicy, PolicySpec};
use super::sentences::validation_sentence;
use super::store::{claim_run_dir, read_chain_log, write_results, ChainLog, RunInfo, CHAINS_FILE};
use super::strips::{strip_path, ImaginationLog, STRIP_COLUMNS};
use crate::base::image::write_png as save_png;
use crate::io::env_adapter::{EnvAdapter, EnvConfig, EnvError};
use crate::io::robot::tcp_from_robot_obs;
use crate::io::RgbImage;
use crate::runtime::actuate::{check_control_rate, sim_action, Actuator};
use crate::safety::{GripperState, SafetyConfig};

/// CALVIN's step budget per subtask.
pub const EP_LEN: usize = 360;

/// One chain to evaluate.
#[derive(Debug, Clone)]
pub struct EvalJob {
    /// Index in the chain list.
    pub index: usize,
    /// The chain.
    pub chain: Chain,
}

/// How to run an evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Step budget per subtask.
    pub ep_len: usize,
    /// Parallel env processes.
    pub workers: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Save a PNG strip per failed subtask under `DIR/failures/`.
    pub save_failures: bool,
    /// Save a real-versus-imagined PNG strip per subtask under `DIR/strips/`
    /// (policies that imagine; see [`super::strips`]).
    pub save_strips: bool,
    /// Run again the chains recorded as env errors.
    pub retry_env_errors: bool,
    /// The key of `results.json` (CALVIN's epoch; `null` when none).
    pub epoch: Option<String>,
    /// The safety envelope every command goes through (default: CALVIN's,
    /// which passes every valid CALVIN action unchanged).
    pub safety: SafetyConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ep_len: EP_LEN,
            workers: 1,
            progress: false,
            save_failures: false,
            save_strips: false,
            retry_env_errors: false,
            epoch: None,
            safety: SafetyConfig::calvin_default(),
        }
    }
}

/// What a subtask attempt kept for `--save-failures`.
#[derive(Debug, Clone)]
pub struct FailureClip {
    /// Subtask position in the chain (0-based).
    pub subtask: usize,
    /// Task name.
    pub task: String,
    /// The frames.
    pub frames: FrameLog,
}

/// A real-versus-imagined strip of one subtask attempt.
#[derive(Debug, Clone)]
pub struct SubtaskStrip {
    /// Subtask position in the chain (0-based).
    pub subtask: usize,
    /// Task name.
    pub task: String,
    /// Whether the oracle reported success.
    pub success: bool,
    /// The image (real frames on top, imagined below).
    pub image: RgbImage,
}

/// What a rollout keeps besides the outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capture {
    /// The failed subtask's static-camera frames ([`ChainOutcome::failure`]).
    pub failure_frames: bool,
    /// Real-versus-imagined strips of every subtask ([`ChainOutcome::strips`]).
    pub strips: bool,
    /// The actions the env was stepped with ([`ChainOutcome::actions`]).
    pub actions: bool,
}

/// The outcome of one chain rollout.
#[derive(Debug, Clone, Default)]
pub struct ChainOutcome {
    /// Subtasks completed in a row.
    pub completed: usize,
    /// Per attempted subtask.
    pub subtasks: Vec<SubtaskRecord>,
    /// The failed subtask's frames (with [`Capture::failure_frames`]).
    pub failure: Option<FailureClip>,
    /// One strip per attempted subtask that imagined something (with [`Capture::strips`]).
    pub strips: Vec<SubtaskStrip>,
    /// The safety layer's clamps and holds, by kind.
    pub safety_events: BTreeMap<String, u64>,
    /// Every action the env was stepped with, in order (with [`Capture::actions`]).
    pub actions: Vec<[f64; 7]>,
}

/// Why a rollout stopped early.
#[derive(Debug)]
pub enum RolloutError {
    /// The simulator failed: retry on a fresh env.
    Env(EnvError),
    /// The policy (or the harness) failed: stops the run.
    Policy(anyhow::Error),
}

impl std::fmt::Display for RolloutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(e) => write!(f, "{e}"),
            Self::Policy(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<EnvError> for RolloutError {
    fn from(e: EnvError) -> Self {
        Self::Env(e)
    }
}

/// Splits a policy's error: a simulator failure inside it (the scripted
/// expert asks the env) is an env error, unless the backend refused the
/// expert request itself (no expert: a configuration error).
fn classify(e: anyhow::Error) -> RolloutError {
    match e.downcast::<EnvError>() {
        Ok(EnvError::Remote { op, .. }) if op == "expert_action" => {
            RolloutError::Policy(anyhow!("the backend has no usable scripted expert ({op})"))
        }
        Ok(env) => RolloutError::Env(env),
        Err(e) => RolloutError::Policy(e),
    }
}

/// Rolls out one chain with CALVIN's protocol under the `safety` envelope;
/// `capture` says what comes back in the outcome besides the results.
pub fn rollout_chain(
    env: &mut EnvAdapter,
    policy: &mut dyn EvalPolicy,
    chain: &Chain,
    index: usize,
    ep_len: usize,
    safety: &SafetyConfig,
    capture: Capture,
) -> Result<ChainOutcome, RolloutError> {
    rollout(
        env,
        policy,
        chain,
        index,
        ep_len,
        safety,
        capture,
        &AtomicBool::new(false),
    )
}

/// [`rollout_chain`], setting `stepped` once an env step and its oracle
/// query have succeeded.
#[allow(clippy::too_many_arguments)]
fn rollout(
    env: &mut EnvAdapter,
    policy: &mut dyn EvalPolicy,
    chain: &Chain,
    index: usize,
    ep_len: usize,
    safety: &SafetyConfig,
    capture: Capture,
    stepped: &AtomicBool,
) -> Result<ChainOutcome, RolloutError> {
    let keep_frames = capture.failure_frames;
    let env_rate = env.hello().control_hz;
    let rate = policy.control_rate_hz().unwrap_or(env_rate);
    check_control_rate(rate, env_rate, "simulator").map_err(RolloutError::Policy)?;
    let mut actuator = Actuator::new(safety.clone(), rate, policy.action_scale(), None)
        .map_err(RolloutError::Policy)?;
    let mut obs = env.reset(Some(&chain.robot_obs), Some(&chain.scene_obs))?;
    policy.begin_chain(index).map_err(classify)?;
    let gripper0 = GripperState::from_signal(obs.robot_obs.get(14).copied().unwrap_or(1.0));
    actuator
        .reset(0.0, tcp_from_robot_obs(&obs.robot_obs), gripper0)
        .map_err(RolloutError::Policy)?;
    let mut out = ChainOutcome::default();
    let mut frames = FrameLog::default();
    let mut imagination = ImaginationLog::default();
    // Control ticks since the chain's reset: one clock for the whole chain.
    let mut tick = 0u64;
    for (k, task) in chain.tasks.iter().enumerate() {
        let instruction = validation_sentence(task).unwrap_or(task.as_str());
        policy.reset(task, instruction).map_err(classify)?;
        actuator.clear_chunk();
        let start_info = env.info()?;
        frames.clear();
        imagination.clear();
        let mut success = false;
        let mut steps = 0;
        while steps < ep_len {
            let t = tick as f64 / rate;
            if keep_frames {
                frames.offer(&obs.rgb_static);
            }
            if let Some(chunk) = policy.step(&obs, t, env).map_err(classify)? {
                if let Some((row, d)) = chunk
                    .actions
                    .iter()
                    .enumerate()
                    .find_map(|(i, a)| a.iter().position(|v| !v.is_finite()).map(|d| (i, d)))
                {
                    return Err(RolloutError::Policy(anyhow!(
                        "chain {index}, subtask {task}, step {steps}: action[{d}] is {} \
                         (chunk row {row})",
                        chunk.actions[row][d]
                    )));
                }
                actuator.set_chunk(chunk);
            }
            if capture.strips {
                imagination.push_real(&obs.rgb_static);
                if let Some((imagined, horizon)) = policy.imagined().map_err(classify)? {
                    imagination.push_imagined(steps, &imagined, horizon);
                }
            }
            actuator.observe(t, &obs.robot_obs);
            let cmd = actuator.tick(t);
            let tcp = tcp_from_robot_obs(&obs.robot_obs);
            let action = sim_action(cmd.as_ref(), &tcp, actuator.safety().gripper().as_calvin());
            if capture.actions {
                out.actions.push(action);
            }
            obs = env.step(&action, true)?;
            steps += 1;
            tick += 1;
            let completed = env.task_success(&start_info, &[task.as_str()])?;
            stepped.store(true, Ordering::Relaxed);
            if completed.iter().any(|t| t == task) {
                success = true;
                break;
            }
        }
        out.subtasks.push(SubtaskRecord {
            task: task.clone(),
            success,
            steps,
        });
        if capture.strips {
            imagination.push_real(&obs.rgb_static);
            if let Some(image) = imagination.strip(STRIP_COLUMNS) {
                out.strips.push(SubtaskStrip {
                    subtask: k,
                    task: task.clone(),
                    success,
                    image,
                });
            }
        }
        if !success {
            if keep_frames {
                frames.offer_last(&obs.rgb_static);
                out.failure = Some(FailureClip {
                    subtask: k,
                    task: task.clone(),
                    frames: std::mem::take(&mut frames),
                });
            }
            break;
        }
        out.completed += 1;
    }
    out.safety_events = actuator.take_events();
    Ok(out)
}

/// What identifies a simulator failure across attempts: the request, the
/// kind of failure and, when the simulator answered, its message.
fn failure_signature(e: &EnvError) -> (String, &'static str, String) {
    match e {
        EnvError::Spawn { .. } => (String::new(), "spawn", String::new()),
        EnvError::Exited { op, .. } => (op.clone(), "exited", String::new()),
        EnvError::Timeout { op, .. } => (op.clone(), "timeout", String::new()),
        EnvError::Malformed { op, detail, .. } => (op.clone(), "malformed", detail.clone()),
        EnvError::Remote { op, message, .. } => (op.clone(), "remote", message.clone()),
        EnvError::Send { op, .. } => (op.clone(), "send", String::new()),
    }
}

/// The error that stops a run on a set-up error.
fn setup_error(index: usize, backend: &str, e: &EnvError) -> anyhow::Error {
    anyhow!(
        "set-up error: chain {index} failed the same way on a fresh env and no chain of this run \
         has taken a step yet, so backend '{backend}' cannot run any chain as configured; \
         stopping (the chain is not recorded). The simulator said: {e}"
    )
}

/// Runs one chain with a retry on a fresh env after a simulator failure.
/// `Err` for policy/harness failures and set-up errors (which stop the run):
/// while `stepped` is false (no chain of the run has taken a step), a failure
/// that repeats on the fresh env, or a fresh env that cannot start, is one.
fn run_job(
    env: &mut Option<EnvAdapter>,
    cfg: &EnvConfig,
    policy: &mut dyn EvalPolicy,
    job: &EvalJob,
    opts: &EvalOptions,
    out_dir: &Path,
    stepped: &AtomicBool,
) -> Result<ChainRecord> {
    const ATTEMPTS: usize = 2;
    let mut first_error: Option<String> = None;
    let mut first_signature = None;
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        if env.is_none() {
            match EnvAdapter::spawn(cfg) {
                Ok(e) => *env = Some(e),
                Err(e) => {
                    if !stepped.load(Ordering::Relaxed) {
                        return Err(anyhow::Error::new(e).context(format!(
                            "set-up error: backend '{}' failed chain {} and then could not \
                             restart before any chain of this run had taken a step; stopping",
                            cfg.backend, job.index
                        )));
                    }
                    last_error = format!("restarting the env: {e}");
                    tracing::warn!(chain = job.index, attempt, "{last_error}");
                    first_error.get_or_insert_with(|| last_error.clone());
                    continue;
                }
            }
        }
        let t0 = Instant::now();
        let live = env.as_mut().expect("spawned above");
        match rollout(
            live,
            policy,
            &job.chain,
            job.index,
            opts.ep_len,
            &opts.safety,
            Capture {
                failure_frames: opts.save_failures,
                strips: opts.save_strips,
                actions: false,
            },
            stepped,
        ) {
            Ok(outcome) => {
                for st in &outcome.strips {
                    let p = strip_path(out_dir, job.index, st.subtask, &st.task, st.success);
                    if let Err(e) = save_png(&p, &st.image) {
                        tracing::warn!("cannot save imagination strip: {e:#}");
                    }
                }
                if let Some(clip) = &outcome.failure {
                    if let Some(strip) = clip.frames.strip(STRIP_FRAMES) {
                        let p = failure_path(out_dir, job.index, clip.subtask, &clip.task);
                        if let Err(e) = save_png(&p, &strip) {
                            tracing::warn!("cannot save failure strip: {e:#}");
                        }
                    }
                }
                return Ok(ChainRecord {
                    index: job.index,
                    initial_condition: job.chain.initial_condition.clone(),
                    tasks: job.chain.tasks.clone(),
                    completed: outcome.completed,
                    subtasks: outcome.subtasks,
                    env_error: false,
                    env_error_message: first_error,
                    attempts: attempt,
                    wall_s: t0.elapsed().as_secs_f64(),
                    safety_events: outcome.safety_events,
                });
            }
            Err(RolloutError::Env(e)) => {
                let signature = failure_signature(&e);
                if attempt > 1
                    && !stepped.load(Ordering::Relaxed)
                    && first_signature.as_ref() == Some(&signature)
                {
                    return Err(setup_error(job.index, &cfg.backend, &e));
                }
                first_signature.get_or_insert(signature);
                last_error = e.to_string();
                tracing::warn!(
                    chain = job.index,
                    attempt,
                    "simulator failure; restarting the env: {last_error}"
                );
                first_error.get_or_insert_with(|| last_error.clone());
                *env = None; // dropping kills the child
            }
            Err(RolloutError::Policy(e)) => {
                return Err(e.context(format!("chain {}", job.index)));
            }
        }
    }
    Ok(ChainRecord {
        index: job.index,
        initial_condition: job.chain.initial_condition.clone(),
        tasks: job.chain.tasks.clone(),
        completed: 0,
        subtasks: vec![],
        env_error: true,
        env_error_message: Some(last_error),
        attempts: ATTEMPTS,
        wall_s: 0.0,
        safety_events: BTreeMap::new(),
    })
}

/// What [`evaluate`] did.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// Metrics over every chain recorded in the folder.
    pub metrics: Metrics,
    /// Selected chains already recorded when the run started (skipped).
    pub resumed: usize,
    /// Chains run now.
    pub ran: usize,
    /// All records in the folder, by index.
    pub records: BTreeMap<usize, ChainRecord>,
    /// Wall time of this invocation (s).
    pub wall_s: f64,
    /// Env steps taken by this invocation.
    pub steps: usize,
}

/// Flags the workers share.
#[derive(Default)]
struct RunFlags {
    /// Stop taking jobs (a fatal error).
    stop: AtomicBool,
    /// Some chain has taken an env step and asked the oracle (the backend works).
    stepped: AtomicBool,
}

enum Msg {
    Done(Box<ChainRecord>),
    Fatal(anyhow::Error),
}

/// Evaluates `jobs` into the run folder `out` (resuming what is there).
pub fn evaluate(
    env_cfg: &EnvConfig,
    policy: &PolicySpec,
    jobs: Vec<EvalJob>,
    out: &Path,
    run: &RunInfo,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let t0 = Instant::now();
    claim_run_dir(out, run)?;
    let mut records = read_chain_log(&out.join(CHAINS_FILE), true)?;
    let selected = jobs.len();
    let todo: Vec<EvalJob> = jobs
        .into_iter()
        .filter(|j| match records.get(&j.index) {
            None => true,
            Some(r) => r.env_error && opts.retry_env_errors,
        })
        .collect();
    let resumed = selected - todo.len();
    let ran_target = todo.len();
    let mut log = ChainLog::open(out)?;
    let bar = if opts.progress {
        indicatif::ProgressBar::new(ran_target as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} chains {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let mut fatal: Option<anyhow::Error> = None;
    let mut ran = 0;
    let mut steps = 0;
    if !todo.is_empty() {
        let workers = opts.workers.clamp(1, todo.len());
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<EvalJob>();
        for j in todo {
            job_tx.send(j).expect("receiver alive");
        }
        drop(job_tx);
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        let flags = RunFlags::default();
        let out_dir: PathBuf = out.to_path_buf();
        std::thread::scope(|s| -> Result<()> {
            for w in 0..workers {
                let job_rx = job_rx.clone();
                let tx = tx.clone();
                let flags = &flags;
                let out_dir = &out_dir;
                std::thread::Builder::new()
                    .name(format!("eval-worker-{w}"))
                    .spawn_scoped(s, move || {
                        worker(env_cfg, policy, &job_rx, &tx, opts, out_dir, flags)
                    })?;
            }
            drop(tx);
            for msg in rx.iter() {
                match msg {
                    Msg::Done(rec) => {
                        let chain_steps: usize = rec.subtasks.iter().map(|s| s.steps).sum();
                        if let Err(e) = log
                            .append(&rec)
                            .and_then(|()| super::store::insert_record(&mut records, *rec))
                        {
                            flags.stop.store(true, Ordering::SeqCst);
                            fatal.get_or_insert(e);
                            continue;
                        }
                        ran += 1;
                        steps += chain_steps;
                        let m = Metrics::compute(&records.values().cloned().collect::<Vec<_>>());
                        bar.set_message(format!(
                            "avg len {:.2}, env errors {}",
                            m.avg_seq_len, m.env_errors
                        ));
                        bar.inc(1);
                    }
                    Msg::Fatal(e) => {
                        flags.stop.store(true, Ordering::SeqCst);
                        fatal.get_or_insert(e);
                    }
                }
            }
            Ok(())
        })?;
    }
    bar.finish_and_clear();
    let metrics = write_results(out, &records, opts.epoch.as_deref(), Some(run))?;
    if let Some(e) = fatal {
        return Err(e.context(format!(
            "evaluation stopped; {ran} chains finished and were recorded in {}",
            out.join(CHAINS_FILE).display()
        )));
    }
    Ok(EvalReport {
        metrics,
        resumed,
        ran,
        records,
        wall_s: t0.elapsed().as_secs_f64(),
        steps,
    })
}

fn worker(
    cfg: &EnvConfig,
    spec: &PolicySpec,
    jobs: &crossbeam_channel::Receiver<EvalJob>,
    tx: &crossbeam_channel::Sender<Msg>,
    opts: &EvalOptions,
    out_dir: &Path,
    flags: &RunFlags,
) {
    let mut policy = match spec.instantiate() {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(Msg::Fatal(e.context("cannot create the policy")));
            return;
        }
    };
    // The first start must work: a backend that cannot start at all is a
    // configuration error, not a per-chain simulator failure.
    let mut env = match EnvAdapter::spawn(cfg) {
        Ok(e) => Some(e),
        Err(e) => {
            let _ = tx.send(Msg::Fatal(
                anyhow::Error::new(e).context(format!("cannot start backend '{}'", cfg.backend)),
            ));
            return;
        }
    };
    while !flags.stop.load(Ordering::SeqCst) {
        let Ok(job) = jobs.recv() else { break };
        match run_job(
            &mut env,
            cfg,
            policy.as_mut(),
            &job,
            opts,
            out_dir,
            &flags.stepped,
        ) {
            Ok(rec) => {
                if tx.send(Msg::Done(Box::new(rec))).is_err() {
                    break;
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Fatal(e));
                break;
            }
        }
    }
    if let Some(e) = env {
        let _ = e.close();
    }
}

/// Selects chains `[start, start + count)` of `all`, then (with a shard
/// `(i, n)`) those whose index is `i` mod `n`.
pub fn select_jobs(
    all: &[Chain],
    start: usize,
    count: usize,
    shard: Option<(usize, usize)>,
) -> Result<Vec<EvalJob>> {
    if start >= all.len() && count > 0 {
        bail!(
            "--start {start}: there are only {} chains (0..{})",
            all.len(),
            all.len()
        );
    }
    let end = start.saturating_add(count).min(all.len());
    Ok((start..end)
        .filter(|i| shard.is_none_or(|(k, n)| i % n == k))
        .map(|i| EvalJob {
            index: i,
            chain: all[i].clone(),
        })
        .collect())
}
