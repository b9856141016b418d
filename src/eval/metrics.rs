//! Per-chain records and CALVIN's metrics (`evaluate_policy.py::print_and_save`):
//! SR(i), the fraction of chains with at least `i` completed subtasks; Avg. Len.,
//! their mean; and per-task success / total, where a chain counts a success
//! for each completed subtask and one attempt for the subtask it failed.
//!
//! Chains that ended in an env error (a crashed or hung simulator, twice) are
//! not policy failures: they are left out of every metric and counted apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::chains::{InitialCondition, CHAIN_LEN};

/// One subtask's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtaskRecord {
    /// Task name.
    pub task: String,
    /// Whether the oracle reported it within the step budget.
    pub success: bool,
    /// Steps taken (up to the budget).
    pub steps: usize,
}

/// One finished chain: a line of `chains.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainRecord {
    /// Index in the chain list (CALVIN's 1000 or a chain file).
    pub index: usize,
    /// The chain's initial condition.
    pub initial_condition: InitialCondition,
    /// The chain's subtasks.
    pub tasks: Vec<String>,
    /// Subtasks completed in a row (0 to 5).
    pub completed: usize,
    /// The subtasks attempted, in order (the last one failed when `completed < tasks.len()`).
    pub subtasks: Vec<SubtaskRecord>,
    /// The simulator failed on both attempts: not a policy result.
    pub env_error: bool,
    /// The simulator's error, when there was one (also when the retry succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_error_message: Option<String>,
    /// Env attempts made (1, or 2 after a simulator failure).
    pub attempts: usize,
    /// Wall time of the successful (or last) attempt, seconds.
    pub wall_s: f64,
    /// What the safety layer did to this chain's commands, by event kind
    /// (`ClampedPosition`, `VelocityLimited`, `AccelLimited`, holds and their
    /// causes …). Empty: every action reached the env as the policy planned it.
    #[serde(default)]
    pub safety_events: BTreeMap<String, u64>,
}

impl ChainRecord {
    /// Whether two records of the same chain agree on the outcome (wall time aside).
    pub fn same_outcome(&self, other: &ChainRecord) -> bool {
        self.index == other.index
            && self.initial_condition == other.initial_condition
            && self.tasks == other.tasks
            && self.completed == other.completed
            && self.subtasks == other.subtasks
            && self.env_error == other.env_error
    }
}

/// Successes and attempts of one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Times completed.
    pub success: usize,
    /// Times attempted.
    pub total: usize,
}

/// CALVIN's metrics over a set of chains.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// Chains with a policy result (env errors excluded).
    pub chains: usize,
    /// Chains that ended in an env error.
    pub env_errors: usize,
    /// Mean number of completed subtasks.
    pub avg_seq_len: f64,
    /// SR(1..5).
    pub chain_sr: [f64; CHAIN_LEN],
    /// Per-task success / total.
    pub task_info: BTreeMap<String, TaskInfo>,
    /// Safety events (clamps and holds) over the chains with a policy result, by kind.
    pub safety_events: BTreeMap<String, u64>,
}

/// `count_success`: SR(i) = fraction of `results` ≥ i, i = 1..5.
pub fn count_success(results: &[usize]) -> [f64; CHAIN_LEN] {
    let mut sr = [0.0; CHAIN_LEN];
    if results.is_empty() {
        return sr;
    }
    for (i, v) in sr.iter_mut().enumerate() {
        let n = results.iter().filter(|&&r| r > i).count();
        *v = n as f64 / results.len() as f64;
    }
    sr
}

/// Mean of `results` (0 for none).
pub fn avg_seq_len(results: &[usize]) -> f64 {
    if results.is_empty() {
        return 0.0;
    }
    results.iter().sum::<usize>() as f64 / results.len() as f64
}

/// Per-task success / total from (completed count, tasks) pairs.
pub fn task_info<'a>(
    chains: impl IntoIterator<Item = (usize, &'a [String])>,
) -> BTreeMap<String, TaskInfo> {
    let mut info: BTreeMap<String, TaskInfo> = BTreeMap::new();
    for (done, tasks) in chains {
        for t in &tasks[..done.min(tasks.len())] {
            let e = info.entry(t.clone()).or_default();
            e.success += 1;
            e.total += 1;
        }
        if let Some(t) = tasks.get(done) {
            info.entry(t.clone()).or_default().total += 1;
        }
    }
    info
}

impl Metrics {
    /// Metrics of `records` (env errors counted apart).
    pub fn compute(records: &[ChainRecord]) -> Self {
        let ok: Vec<&ChainRecord> = records.iter().filter(|r| !r.env_error).collect();
        let results: Vec<usize> = ok.iter().map(|r| r.completed).collect();
        let mut safety_events = BTreeMap::new();
        for r in &ok {
            for (k, n) in &r.safety_events {
                *safety_events.entry(k.clone()).or_default() += n;
            }
        }
        Self {
            chains: ok.len(),
            env_errors: records.len() - ok.len(),
            avg_seq_len: avg_seq_len(&results),
            chain_sr: count_success(&results),
            task_info: task_info(ok.iter().map(|r| (r.completed, r.tasks.as_slice()))),
            safety_events,
        }
    }

    /// `results.json` in CALVIN's layout: `{epoch: {avg_seq_len, chain_sr, task_info}}`
    /// (epoch `"null"` when none is given, as `json.dump` writes Python's `None`),
    /// plus `safety_events`: every clamp or hold the safety layer applied.
    pub fn results_json(&self, epoch: Option<&str>) -> serde_json::Value {
        let chain_sr: serde_json::Map<String, serde_json::Value> = self
            .chain_sr
            .iter()
            .enumerate()
            .map(|(i, v)| ((i + 1).to_string(), serde_json::json!(v)))
            .collect();
        let mut top = serde_json::Map::new();
        top.insert(
            epoch.unwrap_or("null").to_string(),
            serde_json::json!({
                "avg_seq_len": self.avg_seq_len,
                "chain_sr": chain_sr,
                "task_info": self.task_info,
                "safety_events": self.safety_events,
            }),
        );
        serde_json::Value::Object(top)
    }

    /// A human-readable table: SR(1..5), Avg. Len., env errors, per-task rates.
    pub fn results_txt(&self, title: &str) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{title}");
        let _ = writeln!(
            s,
            "chains evaluated: {} (env errors, excluded: {})",
            self.chains, self.env_errors
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:>8} {:>8} {:>8} {:>8} {:>8} | {:>9}",
            "SR(1)", "SR(2)", "SR(3)", "SR(4)", "SR(5)", "Avg. Len."
        );
        let sr: Vec<String> = self
            .chain_sr
            .iter()
            .map(|v| format!("{:>7.1}%", v * 100.0))
            .collect();
        let _ = writeln!(s, "{} | {:>9.3}", sr.join(" "), self.avg_seq_len);
        let events: Vec<String> = self
            .safety_events
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "safety layer: {}",
            if events.is_empty() {
                "no clamp or hold".to_string()
            } else {
                events.join(", ")
            }
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<26} {:>7} {:>6} {:>7}",
            "task", "success", "total", "SR"
        );
        for (t, i) in &self.task_info {
            let rate = if i.total > 0 {
                i.success as f64 / i.total as f64 * 100.0
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                "{:<26} {:>7} {:>6} {:>6.1}%",
                t, i.success, i.total, rate
            );
        }
        s
    }
}
