//! Harness overhead of `vw2 eval calvin` per env step, policy excluded (a
//! no-op policy), against the bare env step, on the `fake` backend and (when
//! it starts) the real `playtable` backend.
//!
//! `cargo bench --bench eval_harness [-- --steps N --playtable-steps M --no-playtable]`
//!
//! Per backend, after a warm-up, it times N iterations each of:
//! - `env.step` alone (the protocol round trip plus the simulator's step);
//! - `env.task_success` alone (the oracle query CALVIN's protocol makes after every step);
//! - `rollout_chain` with a no-op policy: the whole per-step loop of the
//!   harness (policy call, action check, env step, oracle query) over one
//!   subtask that never succeeds, so every step is a full step.
//!
//! - `env.step` and `env.task_success` alternating, without the harness.
//!
//! The harness's own cost is `rollout − (step + oracle)` per step.

use std::time::Instant;

use vw2_policy::eval::chains::official_chains;
use vw2_policy::eval::policy::NoopPolicy;
use vw2_policy::eval::{rollout_chain, Capture};
use vw2_policy::io::env_adapter::{EnvAdapter, EnvConfig};

struct Row {
    backend: String,
    steps: usize,
    step_ms: f64,
    oracle_ms: f64,
    pair_ms: f64,
    rollout_ms: f64,
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn measure(backend: &str, n: usize, warmup: usize) -> anyhow::Result<Row> {
    let mut cfg = EnvConfig::new(backend);
    cfg.timeout_s = 60.0;
    let mut env = EnvAdapter::spawn(&cfg)?;
    // A chain whose first subtask a no-op policy never completes.
    let chain = official_chains()
        .iter()
        .find(|c| c.tasks[0].starts_with("rotate"))
        .expect("a chain starting with a rotation")
        .clone();
    let noop = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];

    env.reset(Some(&chain.robot_obs), Some(&chain.scene_obs))?;
    let start = env.info()?;
    for _ in 0..warmup {
        env.step(&noop, true)?;
        env.task_success(&start, &[chain.tasks[0].as_str()])?;
    }
    let t = Instant::now();
    for _ in 0..n {
        env.step(&noop, true)?;
    }
    let step_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        env.task_success(&start, &[chain.tasks[0].as_str()])?;
    }
    let oracle_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        env.step(&noop, true)?;
        env.task_success(&start, &[chain.tasks[0].as_str()])?;
    }
    let pair_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;

    let mut one = chain.clone();
    one.tasks.truncate(1);
    let mut policy = NoopPolicy;
    let safety = vw2_policy::safety::SafetyConfig::calvin_default();
    let _ = rollout_chain(
        &mut env,
        &mut policy,
        &one,
        0,
        warmup.max(1),
        &safety,
        Capture::default(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = Instant::now();
    let out = rollout_chain(
        &mut env,
        &mut policy,
        &one,
        0,
        n,
        &safety,
        Capture::default(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let steps = out.subtasks.iter().map(|s| s.steps).sum::<usize>();
    anyhow::ensure!(
        steps == n,
        "the no-op rollout took {steps} steps, expected {n}"
    );
    env.close()?;
    Ok(Row {
        backend: backend.into(),
        steps: n,
        step_ms,
        oracle_ms,
        pair_ms,
        rollout_ms: secs * 1e3 / n as f64,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--steps", 2000);
    let n_pt = arg(&args, "--playtable-steps", 150);
    let t = Instant::now();
    let _ = official_chains();
    println!(
        "chain generation (CALVIN's 1000, numpy MT19937 port): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let mut rows = vec![];
    match measure("fake", n, 100) {
        Ok(r) => rows.push(r),
        Err(e) => eprintln!("fake backend: {e:#}"),
    }
    if !args.iter().any(|a| a == "--no-playtable") {
        match measure("playtable", n_pt, 10) {
            Ok(r) => rows.push(r),
            Err(e) => eprintln!("playtable backend unavailable, skipped: {e:#}"),
        }
    }
    println!();
    println!(
        "{:<10} {:>6} {:>11} {:>10} {:>14} {:>14} {:>18} {:>9}",
        "backend",
        "steps",
        "env.step",
        "oracle",
        "step+oracle",
        "harness/step",
        "harness overhead",
        "steps/s"
    );
    for r in &rows {
        let own = r.rollout_ms - r.pair_ms;
        println!(
            "{:<10} {:>6} {:>8.3} ms {:>7.3} ms {:>11.3} ms {:>11.3} ms {:>8.3} ms ({:>5.1}%) {:>9.1}",
            r.backend,
            r.steps,
            r.step_ms,
            r.oracle_ms,
            r.pair_ms,
            r.rollout_ms,
            own,
            100.0 * own / r.rollout_ms,
            1e3 / r.rollout_ms
        );
    }
    println!();
    println!(
        "env.step: step requests alone (simulator step + both camera images over the protocol);\n\
         oracle: task_success requests alone; step+oracle: the two alternating, as the protocol\n\
         requires, without the harness; harness/step: rollout_chain with a no-op policy;\n\
         harness overhead = harness/step - step+oracle (policy call, action check, bookkeeping)."
    );
}
