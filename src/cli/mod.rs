//! The `vw2` command line.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use clap::{Parser, Subcommand};

use crate::policy::{create_random_policy, LoadedPolicy, RandomPolicySizes};

/// vw2: run VideoWorld 2 latent-action policies on robot arms.
#[derive(Debug, Parser)]
#[command(name = "vw2", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

use crate::policy::ReplanArgs;

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: the bundled policy closed-loop on the built-in simulator over a
    /// few CALVIN chains (per-subtask success, Avg. Len., real vs imagined strips).
    Demo(crate::eval::demo::DemoArgs),
    /// Load a policy bundle and print each component (exits non-zero on any load error).
    Inspect {
        /// `policy.yaml` or the folder holding it.
        policy: PathBuf,
        /// Also run one forward pass (encode a blank clip, predict a step, run the head).
        #[arg(long)]
        forward: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record scripted-expert episodes from a simulator as a CALVIN-format dataset.
    Record {
        /// Simulator backend: playtable (built in), calvin or fake.
        #[arg(long, default_value = "playtable")]
        backend: String,
        /// Successful episodes wanted in the dataset (a rerun resumes).
        #[arg(long)]
        episodes: usize,
        /// Dataset folder.
        #[arg(long)]
        out: PathBuf,
        /// Base seed of the episode sampler.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Comma-separated task names to record (default: the backend's recordable tasks).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Step budget per episode.
        #[arg(long, default_value_t = 360)]
        max_steps: usize,
        /// Chained play: each attempt is a chain of up to N subtasks from a CALVIN-like
        /// initial condition (own seed, not the evaluation's), played without a reset;
        /// every solved subtask is one episode from its real start state.
        #[arg(long = "chained", value_name = "N")]
        chain_len: Option<usize>,
        /// Extra argument for the simulator server (repeatable), e.g. `--sim-arg=--calvin-env=/path`.
        #[arg(long = "sim-arg", allow_hyphen_values = true)]
        sim_args: Vec<String>,
    },
    /// Teleop comparison: the policy beside an operator (shadow, takeover, paired), reports.
    Teleop {
        /// What to do.
        #[command(subcommand)]
        cmd: crate::teleop::cli::TeleopCommand,
    },
    /// Run a policy closed-loop on a simulator through the real-time pipeline.
    Run {
        /// Policy bundle (`policy.yaml` or its folder).
        #[arg(long)]
        policy: PathBuf,
        /// Simulator backend: playtable, calvin or fake.
        #[arg(long, default_value = "playtable")]
        backend: String,
        /// The instruction.
        #[arg(long)]
        instruction: String,
        /// Control steps (30 Hz).
        #[arg(long, default_value_t = 360)]
        steps: u64,
        /// Safety envelope YAML (default: CALVIN's workspace).
        #[arg(long)]
        safety: Option<PathBuf>,
        /// Skip rendering imagined futures.
        #[arg(long)]
        no_monitor: bool,
        /// Folder for run_report.json and imagined strips.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sampler seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Re-planning and temporal ensembling.
        #[command(flatten)]
        replan: ReplanArgs,
        /// Extra argument for the simulator server (repeatable).
        #[arg(long = "sim-arg", allow_hyphen_values = true)]
        sim_args: Vec<String>,
    },
    /// Benchmarks.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Camera calibration tools.
    Calibrate {
        /// Which calibration.
        #[command(subcommand)]
        what: CalibrateCommand,
    },
    /// Evaluate a policy (CALVIN's long-horizon protocol) and related tools.
    Eval {
        /// Which evaluation.
        #[command(subcommand)]
        cmd: crate::eval::cli::EvalCommand,
    },
    /// Train a policy's stages (dLDM warm-up, AR, or all of them).
    Train {
        /// Which stage.
        #[command(subcommand)]
        what: crate::train::cli::TrainCommand,
    },
    /// Train the action head of a bundle on a labelled fraction of a dataset.
    FinetuneHead(crate::train::cli::FinetuneHeadArgs),
    /// Import a dLDM checkpoint (official `.pt`, or `.safetensors` in the official
    /// layout): infer its sizes, check every key, write `dldm.safetensors` and
    /// `dldm.yaml` (the `components.dldm` section of a `policy.yaml`).
    ImportDldm {
        /// The checkpoint (`.pt`, `.pth`, `.ckpt` or `.safetensors`).
        checkpoint: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Nested state-dict key of a PyTorch checkpoint (e.g. `model`).
        #[arg(long)]
        state_key: Option<String>,
        /// Store the weights in this dtype (f32, f16, bf16; default: the checkpoint's).
        #[arg(long)]
        dtype: Option<String>,
        /// The compute dtype written to dldm.yaml (f32, f16, or bf16 on CUDA).
        #[arg(long, default_value = "f32")]
        compute_dtype: String,
        /// QFormer heads (not visible in the shapes; official: 4).
        #[arg(long, default_value_t = 4)]
        qformer_heads: usize,
        /// FSQ levels (only their count is visible in the shapes; official: 8,5,5,5).
        #[arg(long, value_delimiter = ',', default_values_t = [8u32, 5, 5, 5])]
        levels: Vec<u32>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    MakeRandomPolicy {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// RNG seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Bundle name.
        #[arg(long, default_value = "tiny-random")]
        name: String,
    },
}

/// `vw2 bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Runtime latency and jitter (lockstep obs→command, 30 Hz actuate jitter with and without the monitor).
    Runtime {
        /// Measure with this policy instead of the model-free planner.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Seconds per real-time case.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// How the policy runs its dLDM encoder: window (re-encode) or stream.
        #[arg(long, value_enum, default_value = "window")]
        encoder: crate::policy::EncoderMode,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Each model stage of a bundle (encoder per latent step, windowed and streaming; AR
    /// prefill and per-token decode; head; coarse decoder): time, FLOPs, bytes and the
    /// fraction of this machine's limit (matmul GFLOP/s, copy GB/s, measured in the run).
    /// Run under RAYON_NUM_THREADS=1 and =2 to compare thread counts.
    Models {
        /// The policy bundle.
        #[arg(long, default_value = "policies/playtable-small")]
        policy: PathBuf,
        /// Runs (p50/p99 pool every run; each run's median is reported too).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Timed calls per stage and run.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Encoder windows W (latent steps) to compare with the stream.
        #[arg(long, value_delimiter = ',', default_value = "2,8,22")]
        windows: Vec<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The dLDM encoder and coarse decoder on one synthetic clip: time and peak memory
    /// per stage (default: the official size on 93 frames at 240×416).
    Dldm {
        /// Sizes: `videoworld2` (official) or `tiny`.
        #[arg(long, default_value = "videoworld2")]
        preset: String,
        /// Clip length (1 + 4k frames).
        #[arg(long, default_value_t = 93)]
        frames: usize,
        /// Clip height (px, a multiple of the spatial compression).
        #[arg(long, default_value_t = 240)]
        height: usize,
        /// Clip width (px).
        #[arg(long, default_value_t = 416)]
        width: usize,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also write the weights, the clip and the outputs here (for the PyTorch peer).
        #[arg(long)]
        save: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `vw2 calibrate …`.
#[derive(Debug, Subcommand)]
pub enum CalibrateCommand {
    /// Hand-eye calibration (OpenCV calibrateHandEye) from recorded gripper/target pose pairs.
    HandEye {
        /// YAML or JSON file: `{mode, method, pairs: [{gripper_in_base, target_in_camera}]}`.
        #[arg(long)]
        poses: PathBuf,
        /// Write the resulting transform here (YAML).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs the CLI.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect {
            policy,
            forward,
            json,
        } => inspect(&policy, forward, json),
        Command::Run {
            policy,
            backend,
            instruction,
            steps,
            safety,
            no_monitor,
            out,
            seed,
            replan,
            sim_args,
        } => {
            let opts = crate::runtime::cli::RunOptions {
                policy,
                backend,
                sim_args,
                instruction,
                steps,
                safety,
                monitor: !no_monitor,
                out,
                policy_options: replan.apply(crate::policy::PolicyOptions {
                    seed,
                    ..Default::default()
                }),
            };
            let report = crate::runtime::cli::run_on_simulator(&opts)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Dldm {
                    preset,
                    frames,
                    height,
                    width,
                    seed,
                    save,
                    json,
                },
        } => {
            let preset: crate::model::dldm::DldmPreset =
                serde_yaml::from_str(&preset).map_err(|_| {
                    anyhow::anyhow!("--preset: expected videoworld2 or tiny, found '{preset}'")
                })?;
            let cfg = crate::model::dldm::DldmConfig::preset(preset);
            let b = crate::policy::dldm_bench::bench_dldm(
                &cfg,
                frames,
                height,
                width,
                seed,
                save.as_deref(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                println!(
                    "dLDM {:?} ({} parameters, {} threads) on {}×{}×{}",
                    preset, b.parameters, b.threads, b.frames, b.height, b.width
                );
                println!(
                    "  encode (clip → codes)         {:8.2} s   peak {:8.0} MiB",
                    b.encode_s, b.encode_peak_mib
                );
                println!(
                    "  decode (frame 0 + codes → clip) {:6.2} s   peak {:8.0} MiB (frame-0 encode {:.2} s)",
                    b.decode_s, b.decode_peak_mib, b.first_frame_s
                );
                println!(
                    "  weights resident before the stages: {:.0} MiB",
                    b.baseline_mib
                );
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Models {
                    policy,
                    runs,
                    iters,
                    windows,
                    json,
                },
        } => {
            anyhow::ensure!(
                runs >= 1 && iters >= 1 && windows.iter().all(|w| *w >= 1),
                "--runs, --iters and every --windows value: expected >= 1"
            );
            let b = crate::policy::model_bench::bench_models(&policy, runs, iters, &windows)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                let l = &b.limits;
                println!(
                    "{}: {} threads; limits: matmul {:.1} GFLOP/s (n = {}), copy {:.1} GB/s ({} MiB)",
                    b.policy, l.threads, l.matmul_gflops, l.matmul_n, l.copy_gbps, l.copy_mib
                );
                println!(
                    "{:<42} {:>9} {:>9} {:>10} {:>9} {:>8}  run p50s (ms)",
                    "stage", "p50 ms", "p99 ms", "MFLOP", "MB", "of limit"
                );
                let opt = |v: Option<f64>, prec: usize| {
                    v.map_or("-".to_string(), |v| format!("{v:.prec$}"))
                };
                for s in &b.stages {
                    let runs: Vec<String> =
                        s.run_p50_ms.iter().map(|v| format!("{v:.3}")).collect();
                    println!(
                        "{:<42} {:>9.3} {:>9.3} {:>10} {:>9} {:>8}  {}",
                        s.stage,
                        s.p50_ms,
                        s.p99_ms,
                        opt(s.mflop, 2),
                        opt(s.mbytes, 2),
                        s.fraction_of_limit
                            .map_or("-".to_string(), |f| format!("{:.1}%", f * 100.0)),
                        runs.join(" ")
                    );
                }
            }
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Runtime {
                    policy,
                    seconds,
                    encoder,
                    json,
                },
        } => {
            let b = crate::runtime::cli::bench_runtime(policy.as_deref(), seconds, encoder)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                for c in [&b.lockstep, &b.realtime, &b.realtime_monitor] {
                    let r = &c.report;
                    println!(
                        "{:<28} obs→command p50 {:.3} ms p99 {:.3} ms | jitter p50 {:.3} ms p99 {:.3} ms | plan p99 {:.3} ms | monitor {} done {} dropped",
                        c.name,
                        r.obs_to_command.p50_ms,
                        r.obs_to_command.p99_ms,
                        r.actuate_jitter.p50_ms,
                        r.actuate_jitter.p99_ms,
                        r.plan_time.p99_ms,
                        r.monitor_frames,
                        r.dropped_monitor_frames
                    );
                }
                println!(
                    "monitor jitter p99 with / without: {:.3} (difference {:+.4} ms)",
                    b.monitor_jitter_ratio, b.monitor_jitter_delta_ms
                );
            }
            Ok(())
        }
        Command::Calibrate {
            what: CalibrateCommand::HandEye { poses, out },
        } => {
            let report = crate::calibration::run_hand_eye_cli(&poses, out.as_deref())?;
            println!("{report}");
            Ok(())
        }
        Command::Record {
            backend,
            episodes,
            out,
            seed,
            tasks,
            max_steps,
            chain_len,
            sim_args,
        } => {
            let mut env = crate::io::env_adapter::EnvConfig::new(&backend);
            env.args = sim_args;
            let opts = crate::io::record::RecordOptions {
                episodes,
                seed,
                max_steps,
                tasks,
                chain_len,
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                ..Default::default()
            };
            let summary = crate::io::record::record(&env, &out, &opts)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::Eval { cmd } => crate::eval::cli::run(cmd),
        Command::Teleop { cmd } => crate::teleop::cli::run(cmd),
        Command::Demo(args) => crate::eval::demo::run(args),
        Command::Train { what } => crate::train::cli::run_train(what),
        Command::FinetuneHead(args) => crate::train::cli::run_finetune_head(args),
        Command::ImportDldm {
            checkpoint,
            out,
            state_key,
            dtype,
            compute_dtype,
            qformer_heads,
            levels,
            json,
        } => {
            let parse = |flag: &str, d: &str| {
                serde_yaml::from_str::<crate::policy::weights::WeightDtype>(d).map_err(|_| {
                    anyhow::anyhow!("--{flag}: expected f32, f16 or bf16, found '{d}'")
                })
            };
            let opts = crate::policy::import::ImportOptions {
                qformer_heads,
                levels,
                state_key,
                dtype: dtype.as_deref().map(|d| parse("dtype", d)).transpose()?,
                compute_dtype: parse("compute-dtype", &compute_dtype)?,
            };
            let r = crate::policy::import::import_dldm(&checkpoint, &out, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let c = &r.inferred.config;
                println!("imported {}", r.checkpoint.display());
                println!(
                    "  channels {}, channels_mult {:?}, num_res_blocks {}, z_channels {}, features {}",
                    c.channels,
                    c.channels_mult,
                    c.num_res_blocks,
                    c.z_channels,
                    c.feature_channels()
                );
                println!(
                    "  {} queries, QFormer depth {}, {} heads × {}, MLP {}",
                    c.num_queries,
                    c.qformer_depth,
                    c.qformer_heads,
                    c.qformer_head_dim,
                    c.qformer_mlp_dim
                );
                for a in &r.inferred.assumptions {
                    println!("  assumed: {a}");
                }
                println!(
                    "  keys: {} placed, {} skipped {:?}; {} parameters, stored as {:?}, computed in {:?}",
                    r.keys.placed,
                    r.keys.skipped_total(),
                    r.keys.skipped,
                    r.parameters,
                    r.dtype,
                    r.compute_dtype
                );
                for w in &r.written {
                    println!("  wrote {}", w.display());
                }
            }
            Ok(())
        }
        Command::MakeRandomPolicy { out, seed, name } => {
            let yaml = create_random_policy(&out, &name, seed, &RandomPolicySizes::tiny())?;
            println!("wrote {}", yaml.display());
            Ok(())
        }
    }
}

fn inspect(path: &std::path::Path, forward: bool, json: bool) -> Result<()> {
    let dev = Device::Cpu;
    let policy = LoadedPolicy::load(path, &dev)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&policy.reports)?);
    } else {
        let s = &policy.spec;
        println!(
            "policy {} ({}): image {}x{} px, control {} Hz, {} control steps per latent step, {:?} actions",
            s.name,
            policy.dir.display(),
            s.image_size[0],
            s.image_size[1],
            s.control_rate_hz,
            s.steps_per_latent,
            s.action_space.kind
        );
        println!(
            "{:<6} {:<15} {:>12} {:<6} file",
            "part", "kind", "parameters", "dtype"
        );
        for r in &policy.reports {
            println!(
                "{:<6} {:<15} {:>12} {:<6} {}",
                r.component,
                r.kind,
                r.parameters,
                r.dtype,
                r.file.display()
            );
            if !r.unused_keys.is_empty() {
                println!(
                    "       warning: {} unused keys, e.g. {}",
                    r.unused_keys.len(),
                    r.unused_keys[0]
                );
            }
        }
    }
    if forward {
        smoke_forward(&policy, &dev)?;
    }
    Ok(())
}

/// Encodes a blank 5-frame clip, predicts the next step's codes and runs the head.
fn smoke_forward(policy: &LoadedPolicy, dev: &Device) -> Result<()> {
    let [h, w] = policy.spec.image_size;
    let s = policy.spec.steps_per_latent;
    let frames = Tensor::zeros((1, 1 + s, 3, h, w), DType::F32, dev)?;
    let enc = policy.dldm.encode(&frames)?;
    let cfg = policy.ar.config();
    let (_, t, f, fh, fw) = enc.features.dims5()?;
    let first = enc.features.narrow(1, 0, 1)?;
    let visual_tokens = first.reshape((1, f, fh * fw))?.transpose(1, 2)?;
    let instruction = Tensor::zeros((1, cfg.instruction_dim), DType::F32, dev)?;
    let mut cache = policy.ar.new_cache();
    policy
        .ar
        .prefill(&mut cache, &instruction, &visual_tokens)?;
    let observed = enc.indices.flatten_from(1)?;
    let logits = policy.ar.step(&mut cache, &observed)?;
    let next = logits.argmax(candle_core::D::Minus1)?;
    let current = enc.features.narrow(1, t - 1, 1)?;
    let visual = policy.head_visual(&current)?;
    let head_instruction = policy.head_instruction("", dev)?;
    let proprio =
        match &policy.head {
            crate::policy::bundle::Head::Mlp(hd) if hd.config().proprio_dim > 0 => Some(
                Tensor::zeros((1, hd.config().proprio_dim), DType::F32, dev)?,
            ),
            _ => None,
        };
    let n = policy.dldm.config().num_queries;
    let step_codes = next.narrow(1, next.dim(1)? - n, n)?.to_dtype(DType::U32)?;
    let actions = policy.head_forward(
        &step_codes,
        &visual,
        proprio.as_ref(),
        head_instruction.as_ref(),
    )?;
    crate::policy::bundle::ensure_finite(&actions, "head output")?;
    println!(
        "forward ok: observed codes {:?}, next-step codes {:?}, action chunk {:?}",
        enc.indices.flatten_all()?.to_vec1::<u32>()?,
        step_codes.flatten_all()?.to_vec1::<u32>()?,
        actions.dims()
    );
    Ok(())
}
