//! `vw2 run` and `vw2 bench runtime`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use serde::Serialize;

use super::{
    run, BusyRenderer, DecoderRenderer, NullPlanner, Planner, Renderer, RunReport, RuntimeConfig,
};
use crate::io::env_adapter::EnvConfig;
use crate::io::robot::{Encoding, RawFrame, SimIo, SyntheticIo};
use crate::policy::{LoadedPolicy, Policy, PolicyOptions};
use crate::safety::SafetyConfig;

/// A stop flag set by Ctrl-C (installed once per process).
pub fn ctrl_c_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    if let Err(e) = ctrlc::set_handler(move || f.store(true, std::sync::atomic::Ordering::Relaxed))
    {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }
    flag
}

/// Loads a safety config from YAML, or CALVIN's default.
pub fn safety_config(path: Option<&Path>) -> Result<SafetyConfig> {
    match path {
        Some(p) => {
            SafetyConfig::from_yaml_file(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        }
        None => Ok(SafetyConfig::calvin_default()),
    }
}

pub use crate::base::image::write_png;

/// Options of `vw2 run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Policy bundle.
    pub policy: PathBuf,
    /// Simulator backend.
    pub backend: String,
    /// Extra simulator arguments.
    pub sim_args: Vec<String>,
    /// Instruction.
    pub instruction: String,
    /// Control steps to run.
    pub steps: u64,
    /// Safety YAML (default: CALVIN's envelope).
    pub safety: Option<PathBuf>,
    /// Render imagined futures.
    pub monitor: bool,
    /// Output folder for the report and imagined strips.
    pub out: Option<PathBuf>,
    /// Closed-loop options (sampler seed, re-planning, ensembling).
    pub policy_options: PolicyOptions,
}

/// `vw2 run`: the pipeline closed-loop on a simulator.
pub fn run_on_simulator(o: &RunOptions) -> Result<RunReport> {
    let dev = Device::Cpu;
    let bundle = LoadedPolicy::load(&o.policy, &dev)?;
    let renderer: Option<Box<dyn Renderer>> = o
        .monitor
        .then(|| Box::new(DecoderRenderer::new(bundle.dldm.clone())) as Box<dyn Renderer>);
    let policy = Policy::new(bundle, o.policy_options.clone(), dev)?;
    let mut env = EnvConfig::new(&o.backend);
    env.args = o.sim_args.clone();
    let io = SimIo::start(&env, None, None)?;
    let mut cfg = RuntimeConfig::new(safety_config(o.safety.as_deref())?, &o.instruction);
    cfg.max_steps = Some(o.steps);
    let report = run(Box::new(io), Box::new(policy), renderer, cfg, ctrl_c_flag())?;
    if let Some(dir) = &o.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        for (step, img) in &report.imagined {
            write_png(&dir.join(format!("imagined_{step:05}.png")), img)?;
        }
        let json = serde_json::to_string_pretty(&report)?;
        crate::base::fs::write_atomic(&dir.join("run_report.json"), json.as_bytes())?;
    }
    Ok(report)
}

/// One benchmark configuration's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchCase {
    /// What was measured.
    pub name: String,
    /// The run's metrics.
    pub report: RunReport,
}

/// `vw2 bench runtime` output.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeBench {
    /// Model-free (true) or with a policy.
    pub model_free: bool,
    /// Lockstep obs→command over synthetic frames: the runtime's own overhead
    /// (with a policy: overhead + model).
    pub lockstep: BenchCase,
    /// Real time at 30 Hz, no monitor.
    pub realtime: BenchCase,
    /// Real time at 30 Hz with the monitor rendering at full load.
    pub realtime_monitor: BenchCase,
    /// Actuate jitter p99 with monitor / without (1.0 = no effect).
    pub monitor_jitter_ratio: f64,
    /// Actuate jitter p99 with monitor − without (ms); at the microsecond
    /// level the ratio is mostly noise, the difference says how much it matters.
    pub monitor_jitter_delta_ms: f64,
}

fn bench_frame() -> RawFrame {
    // A CALVIN-sized bgr8 frame, so ingest does a real colour conversion and resize.
    let data = (0..200 * 200 * 3).map(|i| (i % 251) as u8).collect();
    RawFrame {
        encoding: Encoding::Bgr8,
        height: 200,
        width: 200,
        step: 600,
        data,
    }
}

/// Runs the three runtime benchmarks. With `policy` the planner and monitor are
/// the real model; without, a model-free planner and a renderer that keeps one
/// core busy for a whole control period per plan.
/// `encoder`: how the policy runs its dLDM encoder (window re-encode or stream).
pub fn bench_runtime(
    policy: Option<&Path>,
    seconds: f64,
    encoder: crate::policy::EncoderMode,
) -> Result<RuntimeBench> {
    let rate = 30.0;
    let frames = (seconds * rate).max(30.0) as u64;
    let dev = Device::Cpu;
    let planner = |p: Option<&Path>| -> Result<(Box<dyn Planner>, Box<dyn Renderer>)> {
        Ok(match p {
            Some(p) => {
                let bundle = LoadedPolicy::load(p, &dev)?;
                let r = DecoderRenderer::new(bundle.dldm.clone());
                (
                    Box::new(Policy::new(
                        bundle,
                        PolicyOptions {
                            encoder,
                            ..Default::default()
                        },
                        dev.clone(),
                    )?),
                    Box::new(r),
                )
            }
            None => (
                Box::new(NullPlanner::new([32, 32], 4)),
                Box::new(BusyRenderer {
                    seconds: 1.0 / rate,
                }),
            ),
        })
    };
    let case = |name: &str, lockstep: bool, monitor: bool| -> Result<BenchCase> {
        let (pl, r) = planner(policy)?;
        let io = Box::new(SyntheticIo {
            rate,
            frame: bench_frame(),
            frames,
            lockstep,
        });
        let mut cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "bench");
        cfg.max_steps = Some(frames);
        cfg.monitor_queue = 2;
        let report = run(
            io,
            pl,
            monitor.then_some(r),
            cfg,
            Arc::new(AtomicBool::new(false)),
        )?;
        Ok(BenchCase {
            name: name.into(),
            report,
        })
    };
    let lockstep = case("lockstep obs→command", true, false)?;
    let realtime = case("real time 30 Hz", false, false)?;
    let realtime_monitor = case("real time 30 Hz + monitor", false, true)?;
    let delta =
        realtime_monitor.report.actuate_jitter.p99_ms - realtime.report.actuate_jitter.p99_ms;
    let ratio = realtime_monitor.report.actuate_jitter.p99_ms
        / realtime.report.actuate_jitter.p99_ms.max(1e-9);
    Ok(RuntimeBench {
        model_free: policy.is_none(),
        lockstep,
        realtime,
        realtime_monitor,
        monitor_jitter_ratio: ratio,
        monitor_jitter_delta_ms: delta,
    })
}
