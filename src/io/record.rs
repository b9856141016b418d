//! `vw2 record`: drives a simulator with its scripted expert and writes the
//! successful episodes as a CALVIN-format dataset.
//!
//! Each episode asks the backend for a task and an initial state where that
//! task is feasible (`sample_task`, seeded by the episode number), resets, and
//! steps the expert until the oracle reports success or `max_steps` pass.
//! Frames go to disk as they are taken; a failed episode is discarded, a
//! successful one is committed (frames, language annotation, statistics, then
//! `ep_start_end_ids.npy`). A killed recording resumes where it stopped and
//! loses no finished episode; the episode seeds continue from the count of
//! finished episodes, so a resumed run records what an uninterrupted one would.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use rmpv::Value;

use super::env_adapter::{field, EnvAdapter, EnvConfig};
use super::Observation;
use crate::base::units::{REL_EULER_RAD, REL_XYZ_M};
use crate::data::calvin::{CalvinFrame, CalvinWriter};

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Successful episodes wanted in the dataset (including already finished ones).
    pub episodes: usize,
    /// Base seed; episode attempt `i` uses `seed + i`.
    pub seed: u64,
    /// Step budget per episode (CALVIN: 360).
    pub max_steps: usize,
    /// Restrict to these tasks (empty: the backend's recordable tasks).
    pub tasks: Vec<String>,
    /// Give up after this many failed attempts in a row.
    pub max_consecutive_failures: usize,
    /// Chained play: each attempt draws a training chain of up to this many subtasks
    /// ([`crate::eval::chains::training_chain`]) from a CALVIN initial condition, and
    /// the expert plays them in a row without a reset; every solved subtask is stored
    /// as an episode from its real start state. `None`: one task per episode from a
    /// reset (the backend's `sample_task`).
    pub chain_len: Option<usize>,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            episodes: 10,
            seed: 0,
            max_steps: 360,
            tasks: vec![],
            max_consecutive_failures: 50,
            chain_len: None,
            progress: true,
        }
    }
}

/// What a recording did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RecordSummary {
    /// Finished episodes in the dataset at the end.
    pub episodes: usize,
    /// Episodes that were already there when the run started.
    pub resumed_from: usize,
    /// Attempts whose expert failed (discarded).
    pub failed_attempts: usize,
    /// Frames in the dataset at the end.
    pub frames: usize,
}

/// File in the dataset folder holding the recorder's next attempt number.
pub const RECORD_STATE_FILE: &str = "vw2_record_state.json";

/// Where a recording stands: the next attempt, and (chained play) how many subtasks
/// of that attempt's chain are already in the dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RecordState {
    next_attempt: u64,
    chain_done: usize,
}

fn read_state(path: &Path) -> Result<Option<RecordState>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
            let n = v
                .get("next_attempt")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: key 'next_attempt': expected an integer",
                        path.display()
                    )
                })?;
            let done = match v.get("chain_done") {
                None => 0,
                Some(d) => d.as_u64().ok_or_else(|| {
                    anyhow!("{}: key 'chain_done': expected an integer", path.display())
                })? as usize,
            };
            Ok(Some(RecordState {
                next_attempt: n,
                chain_done: done,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("{}: {e}", path.display())),
    }
}

fn write_state(path: &Path, st: RecordState) -> Result<()> {
    let text = serde_json::json!({ "next_attempt": st.next_attempt, "chain_done": st.chain_done });
    crate::base::fs::write_atomic(path, text.to_string().as_bytes())
}

/// The CALVIN frame of `obs` and the relative action `rel` taken from it
/// (clipped to [−1, 1]; `actions` is the absolute pose it leads to).
pub fn frame_from(obs: &Observation, rel: &[f64; 7]) -> Result<CalvinFrame> {
    let mut actions = [0.0; 7];
    for i in 0..3 {
        actions[i] = obs.robot_obs[i] + rel[i].clamp(-1.0, 1.0) * REL_XYZ_M;
        actions[i + 3] = obs.robot_obs[i + 3] + rel[i + 3].clamp(-1.0, 1.0) * REL_EULER_RAD;
    }
    actions[6] = rel[6];
    let mut rel_actions = *rel;
    for v in &mut rel_actions[..6] {
        *v = v.clamp(-1.0, 1.0);
    }
    Ok(CalvinFrame {
        actions,
        rel_actions,
        robot_obs: obs
            .robot_obs
            .clone()
            .try_into()
            .map_err(|_| anyhow!("robot_obs length"))?,
        scene_obs: obs
            .scene_obs
            .clone()
            .try_into()
            .map_err(|_| anyhow!("scene_obs length"))?,
        rgb_static: obs.rgb_static.clone(),
        rgb_gripper: obs.rgb_gripper.clone(),
    })
}

/// A task and initial state proposed by the backend.
#[derive(Debug, Clone)]
pub struct SampledTask {
    /// Task name (one of the oracle's 34).
    pub task: String,
    /// The instruction sentence for it.
    pub instruction: String,
    /// Initial `robot_obs` (15).
    pub robot_obs: Vec<f64>,
    /// Initial `scene_obs` (24).
    pub scene_obs: Vec<f64>,
}

/// Asks the backend for a feasible task and state (op `sample_task`).
pub fn sample_task(env: &mut EnvAdapter, seed: u64, tasks: &[String]) -> Result<SampledTask> {
    let rep = env.request(
        "sample_task",
        vec![
            ("seed", Value::from(seed)),
            (
                "tasks",
                Value::Array(tasks.iter().map(|t| Value::from(t.as_str())).collect()),
            ),
        ],
    )?;
    let text = |k: &str| {
        field(&rep, k)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| anyhow!("sample_task reply: missing text field '{k}'"))
    };
    let nums = |k: &str| -> Result<Vec<f64>> {
        field(&rep, k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .ok_or_else(|| anyhow!("sample_task reply: missing list field '{k}'"))
    };
    Ok(SampledTask {
        task: text("task")?,
        instruction: text("instruction")?,
        robot_obs: nums("robot_obs")?,
        scene_obs: nums("scene_obs")?,
    })
}

/// Steps the expert on `task` from `obs` until the oracle reports success or
/// `max_steps` pass. With `store`, every frame is written from the writer's next
/// index, the final observation closing the episode with a hold action. Returns
/// (solved, the last observation, the index of the episode's last frame).
fn play_subtask(
    env: &mut EnvAdapter,
    writer: &mut CalvinWriter,
    mut obs: Observation,
    task: &str,
    max_steps: usize,
    store: bool,
) -> Result<(bool, Observation, usize)> {
    let start_info = env.info()?;
    let mut idx = writer.next_frame_index();
    for _ in 0..max_steps {
        let action = env.expert_action(task)?;
        if store {
            writer.write_frame(idx, &frame_from(&obs, &action)?)?;
            idx += 1;
        }
        obs = env.step(&action, true)?;
        if env
            .task_success(&start_info, &[task])?
            .iter()
            .any(|t| t == task)
        {
            if store {
                let mut hold = [0.0; 7];
                hold[6] = obs.robot_obs[14].signum();
                if hold[6] == 0.0 {
                    hold[6] = 1.0;
                }
                writer.write_frame(idx, &frame_from(&obs, &hold)?)?;
            }
            return Ok((true, obs, idx));
        }
    }
    Ok((false, obs, idx))
}

/// Records `opts.episodes` successful expert episodes from `env_cfg` into `out`.
pub fn record(env_cfg: &EnvConfig, out: &Path, opts: &RecordOptions) -> Result<RecordSummary> {
    let mut writer = CalvinWriter::create(out)
        .with_context(|| format!("{}: cannot open dataset", out.display()))?;
    let resumed_from = writer.episodes().len();
    let mut summary = RecordSummary {
        resumed_from,
        ..Default::default()
    };
    if resumed_from >= opts.episodes {
        summary.episodes = resumed_from;
        summary.frames = writer.next_frame_index();
        return Ok(summary);
    }
    let mut env = EnvAdapter::spawn(env_cfg)?;
    let bar = if opts.progress {
        indicatif::ProgressBar::new(opts.episodes as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} episodes {msg} [{elapsed} < {eta}]",
        )
        .expect("valid template"),
    );
    bar.set_position(resumed_from as u64);
    // The attempt counter is kept in the dataset, so a resumed run draws the
    // same episodes an uninterrupted one would have drawn.
    let state_path = out.join(RECORD_STATE_FILE);
    let mut state = read_state(&state_path)?.unwrap_or(RecordState {
        next_attempt: resumed_from as u64,
        chain_done: 0,
    });
    let mut failures_in_a_row = 0;
    while writer.episodes().len() < opts.episodes {
        let attempt = state.next_attempt;
        let seed = opts.seed.wrapping_add(attempt.wrapping_mul(1_000_003));
        let (tasks, robot_obs, scene_obs) = match opts.chain_len {
            None => {
                let t = sample_task(&mut env, seed, &opts.tasks)?;
                (vec![(t.task, t.instruction)], t.robot_obs, t.scene_obs)
            }
            Some(len) => {
                let c = crate::eval::chains::training_chain(seed, len, &opts.tasks)?;
                let tasks = c
                    .tasks
                    .iter()
                    .map(|t| {
                        let sentence = crate::eval::sentences::validation_sentence(t)
                            .unwrap_or(t.as_str())
                            .to_string();
                        (t.clone(), sentence)
                    })
                    .collect();
                (tasks, c.robot_obs, c.scene_obs)
            }
        };
        let mut obs = env.reset(Some(&robot_obs), Some(&scene_obs))?;
        let mut solved = 0;
        let mut failed = false;
        for (k, (task, instruction)) in tasks.iter().enumerate() {
            // A resumed chain replays the subtasks already stored, writing nothing.
            let store = k >= state.chain_done;
            let start_idx = writer.next_frame_index();
            let (ok, next, end_idx) =
                play_subtask(&mut env, &mut writer, obs, task, opts.max_steps, store)?;
            obs = next;
            if !ok {
                if store {
                    writer.discard_unfinished()?;
                    summary.failed_attempts += 1;
                    tracing::warn!(task = %task, seed, subtask = k, "expert failed; subtask discarded");
                } else {
                    bail!(
                        "{}: resuming chain {attempt}: the expert no longer solves stored subtask {k} ({task}); the simulator is not deterministic, record into a new folder",
                        out.display()
                    );
                }
                failed = true;
                break;
            }
            solved += 1;
            if store {
                // Reaching the wanted count mid-chain keeps the chain open, so a
                // later run asking for more goes on with it, as one run would have.
                state = if k + 1 == tasks.len() {
                    RecordState {
                        next_attempt: attempt + 1,
                        chain_done: 0,
                    }
                } else {
                    RecordState {
                        next_attempt: attempt,
                        chain_done: k + 1,
                    }
                };
                writer.add_language(start_idx, end_idx, task.clone(), instruction.clone())?;
                write_state(&state_path, state)?;
                writer.finish_episode(start_idx, end_idx)?;
                bar.inc(1);
                bar.set_message(format!("last: {task} ({} frames)", end_idx - start_idx + 1));
                tracing::info!(task = %task, subtask = k, frames = end_idx - start_idx + 1, "episode recorded");
            }
            if writer.episodes().len() >= opts.episodes {
                break;
            }
        }
        if failed {
            // The chain ends at a failure (a single-task attempt: that task).
            state = RecordState {
                next_attempt: attempt + 1,
                chain_done: 0,
            };
            write_state(&state_path, state)?;
        }
        if solved == 0 {
            failures_in_a_row += 1;
            if failures_in_a_row >= opts.max_consecutive_failures {
                bail!(
                    "the expert failed {failures_in_a_row} attempts in a row (last task {}); giving up",
                    tasks.first().map(|t| t.0.as_str()).unwrap_or("none")
                );
            }
        } else {
            failures_in_a_row = 0;
        }
    }
    bar.finish();
    summary.episodes = writer.episodes().len();
    summary.frames = writer.next_frame_index();
    writer.finish()?;
    env.close()?;
    Ok(summary)
}
