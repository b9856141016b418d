//! Policies under evaluation: the [`EvalPolicy`] trait, the built-in baselines
//! (`random`, `scripted`, `noop`) and VideoWorld 2 bundles run in closed loop.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use rand::{Rng, SeedableRng};

use crate::io::env_adapter::EnvAdapter;
use crate::io::{Observation, RgbImage};
use crate::policy::Plan;
use crate::policy::{LoadedPolicy, Policy, PolicyOptions};
use crate::runtime::actuate::{ActionScale, Chunk};
use crate::runtime::{DecoderRenderer, Renderer};

/// A policy the CALVIN harness can roll out.
///
/// Per chain the harness calls [`EvalPolicy::begin_chain`] once; per subtask
/// [`EvalPolicy::reset`], then [`EvalPolicy::step`] once per control step with
/// the latest observation. What the policy plans goes through the robot's
/// path: the runtime's [`crate::runtime::actuate::Actuator`] plays the chunk
/// and the safety layer clamps it before the env sees it. `env` is the
/// simulator of this rollout, for policies that use privileged state (the
/// scripted expert); learned policies ignore it.
pub trait EvalPolicy: Send {
    /// A new chain starts (`index` in the chain list): re-seed what is random.
    fn begin_chain(&mut self, _index: usize) -> Result<()> {
        Ok(())
    }
    /// A new subtask: `task` is the oracle's name, `instruction` CALVIN's sentence.
    fn reset(&mut self, task: &str, instruction: &str) -> Result<()>;
    /// The observation captured at control time `t` (s): a new chunk to play
    /// from now on, or `None` to keep playing the current one.
    fn step(&mut self, obs: &Observation, t: f64, env: &mut EnvAdapter) -> Result<Option<Chunk>>;
    /// The control rate the policy was trained at (Hz); `None` for baselines
    /// that act at any rate.
    fn control_rate_hz(&self) -> Option<f64> {
        None
    }
    /// What one unit of the chunks' relative actions means (CALVIN's by default).
    fn action_scale(&self) -> ActionScale {
        ActionScale::default()
    }
    /// Policies with a world model: when the last [`EvalPolicy::step`] made a
    /// new plan, the frames it imagines for the planned latent step (an RGB
    /// strip of `horizon` frames side by side) and `horizon` (control steps).
    /// `None` for policies that imagine nothing or made no plan on that step.
    fn imagined(&mut self) -> Result<Option<(RgbImage, usize)>> {
        Ok(None)
    }
}

/// Which policy to evaluate, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySpec {
    /// Uniform relative actions in [−1, 1], gripper ±1 at random, seeded per chain.
    Random {
        /// Base seed (chain `i` uses `seed + i`).
        seed: u64,
    },
    /// The backend's scripted expert (`expert_action`) for the current subtask.
    Scripted,
    /// Zero motion, gripper open (harness overhead measurements).
    Noop,
    /// The end-to-end baseline (`vw2 train e2e`): `e2e.yaml` or its folder.
    EndToEnd {
        /// The baseline path.
        path: PathBuf,
    },
    /// A VideoWorld 2 bundle: `policy.yaml` or its folder.
    Bundle {
        /// The bundle path.
        path: PathBuf,
        /// Closed-loop options (sampling, seed, window).
        options: PolicyOptions,
    },
}

impl PolicySpec {
    /// Parses `random`, `scripted`, `noop`, a bundle path or an end-to-end baseline path.
    pub fn parse(s: &str, seed: u64) -> Result<Self> {
        Ok(match s {
            "random" => Self::Random { seed },
            "scripted" => Self::Scripted,
            "noop" => Self::Noop,
            path if is_e2e_path(Path::new(path)) => Self::EndToEnd {
                path: PathBuf::from(path),
            },
            path => {
                let p = Path::new(path);
                let yaml = if p.is_dir() {
                    p.join("policy.yaml")
                } else {
                    p.to_path_buf()
                };
                if !yaml.is_file() {
                    anyhow::bail!(
                        "--policy {path}: expected random, scripted, noop, a policy.yaml, an e2e.yaml or a folder holding one"
                    );
                }
                Self::Bundle {
                    path: p.to_path_buf(),
                    options: PolicyOptions {
                        seed,
                        ..Default::default()
                    },
                }
            }
        })
    }

    /// A stable description for the run's metadata.
    pub fn describe(&self) -> String {
        match self {
            Self::Random { seed } => format!("random(seed={seed})"),
            Self::Scripted => "scripted".into(),
            Self::Noop => "noop".into(),
            Self::Bundle { path, .. } => {
                let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                format!("bundle:{}", p.display())
            }
            Self::EndToEnd { path } => {
                let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                format!("e2e:{}", p.display())
            }
        }
    }

    /// A fresh policy instance (one per worker).
    pub fn instantiate(&self) -> Result<Box<dyn EvalPolicy>> {
        Ok(match self {
            Self::Random { seed } => Box::new(RandomPolicy::new(*seed)),
            Self::Scripted => Box::new(ScriptedPolicy::default()),
            Self::Noop => Box::new(NoopPolicy),
            Self::Bundle { path, options } => Box::new(Vw2EvalPolicy::load(path, options.clone())?),
            Self::EndToEnd { path } => Box::new(E2eEvalPolicy::load(path)?),
        })
    }
}

/// Uniform random relative actions, seeded per chain.
#[derive(Debug)]
pub struct RandomPolicy {
    seed: u64,
    rng: rand::rngs::StdRng,
}

impl RandomPolicy {
    /// A random policy with base seed `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }
}

impl EvalPolicy for RandomPolicy {
    fn begin_chain(&mut self, index: usize) -> Result<()> {
        self.rng = rand::rngs::StdRng::seed_from_u64(self.seed.wrapping_add(index as u64));
        Ok(())
    }
    fn reset(&mut self, _task: &str, _instruction: &str) -> Result<()> {
        Ok(())
    }
    fn step(&mut self, _obs: &Observation, t: f64, _env: &mut EnvAdapter) -> Result<Option<Chunk>> {
        let mut a = [0.0; 7];
        for v in &mut a[..6] {
            *v = self.rng.random_range(-1.0..=1.0);
        }
        a[6] = if self.rng.random_bool(0.5) { 1.0 } else { -1.0 };
        Ok(Some(Chunk::single(t, a, true)))
    }
}

/// The backend's scripted expert, told the oracle's task.
#[derive(Debug, Default)]
pub struct ScriptedPolicy {
    task: String,
}

impl EvalPolicy for ScriptedPolicy {
    fn reset(&mut self, task: &str, _instruction: &str) -> Result<()> {
        self.task = task.into();
        Ok(())
    }
    fn step(&mut self, _obs: &Observation, t: f64, env: &mut EnvAdapter) -> Result<Option<Chunk>> {
        Ok(Some(Chunk::single(t, env.expert_action(&self.task)?, true)))
    }
}

/// Zero motion with the gripper open.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopPolicy;

impl EvalPolicy for NoopPolicy {
    fn reset(&mut self, _task: &str, _instruction: &str) -> Result<()> {
        Ok(())
    }
    fn step(&mut self, _obs: &Observation, t: f64, _env: &mut EnvAdapter) -> Result<Option<Chunk>> {
        Ok(Some(Chunk::single(
            t,
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            true,
        )))
    }
}

/// A VideoWorld 2 bundle in closed loop ([`crate::policy::Policy`]).
pub struct Vw2EvalPolicy {
    policy: Policy,
    renderer: DecoderRenderer,
    fresh_plan: Option<Plan>,
    step: usize,
}

impl std::fmt::Debug for Vw2EvalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vw2EvalPolicy")
            .field("bundle", &self.policy.bundle().spec.name)
            .field("step", &self.step)
            .finish()
    }
}

impl Vw2EvalPolicy {
    /// Loads a bundle (`policy.yaml` or its folder) on the CPU (CUDA with the `cuda` feature).
    pub fn load(path: &Path, options: PolicyOptions) -> Result<Self> {
        #[cfg(feature = "cuda")]
        let device = candle_core::Device::cuda_if_available(0)?;
        #[cfg(not(feature = "cuda"))]
        let device = candle_core::Device::Cpu;
        let bundle = LoadedPolicy::load(path, &device)
            .with_context(|| format!("{}: cannot load policy bundle", path.display()))?;
        let renderer = DecoderRenderer::new(bundle.dldm.clone());
        let policy = Policy::new(bundle, options, device)?;
        Ok(Self {
            policy,
            renderer,
            fresh_plan: None,
            step: 0,
        })
    }
}

impl EvalPolicy for Vw2EvalPolicy {
    fn reset(&mut self, _task: &str, instruction: &str) -> Result<()> {
        self.policy.reset(instruction)?;
        self.fresh_plan = None;
        self.step = 0;
        Ok(())
    }

    fn step(&mut self, obs: &Observation, t: f64, _env: &mut EnvAdapter) -> Result<Option<Chunk>> {
        self.step += 1;
        self.fresh_plan = None;
        let plan = self
            .policy
            .observe(&obs.rgb_static, &obs.robot_obs, t)
            .map_err(|e| anyhow!("policy step {}: {e:#}", self.step - 1))?;
        Ok(plan.map(|plan| {
            let chunk = Chunk::of_plan(&plan);
            self.fresh_plan = Some(plan);
            chunk
        }))
    }

    fn control_rate_hz(&self) -> Option<f64> {
        Some(self.policy.bundle().spec.control_rate_hz)
    }

    fn action_scale(&self) -> ActionScale {
        ActionScale::of(&self.policy.bundle().spec.action_space)
    }

    fn imagined(&mut self) -> Result<Option<(RgbImage, usize)>> {
        let Some(plan) = self.fresh_plan.take() else {
            return Ok(None);
        };
        let strip = self
            .renderer
            .render(&plan)
            .map_err(|e| anyhow!("imagining latent step {}: {e:#}", plan.latent_step))?;
        Ok(Some((strip, self.policy.steps_per_latent())))
    }
}

/// True for an end-to-end baseline: an `e2e.yaml` or a folder holding one.
fn is_e2e_path(p: &Path) -> bool {
    use crate::train::e2e::E2E_SPEC;
    (p.is_dir() && p.join(E2E_SPEC).is_file())
        || (p.is_file() && p.file_name().is_some_and(|n| n == E2E_SPEC))
}

/// The end-to-end baseline in closed loop: every `chunk` steps it reads the
/// current frame, proprio and instruction and plans the next chunk (CALVIN
/// post-processing: clipped, gripper ±1).
pub struct E2eEvalPolicy {
    net: crate::train::e2e::LoadedE2e,
    instruction: Vec<f32>,
    /// Control steps left in the current chunk.
    remaining: usize,
}

impl std::fmt::Debug for E2eEvalPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eEvalPolicy")
            .field("name", &self.net.spec.name)
            .finish()
    }
}

impl E2eEvalPolicy {
    /// Loads `e2e.yaml` (or its folder) on the CPU.
    pub fn load(path: &Path) -> Result<Self> {
        let net = crate::train::e2e::LoadedE2e::load(path, &candle_core::Device::Cpu)?;
        Ok(Self {
            net,
            instruction: vec![],
            remaining: 0,
        })
    }

    /// The chunk the baseline plans for `obs` (CALVIN units, post-processed).
    pub fn plan(&self, obs: &Observation) -> Result<Vec<[f32; 7]>> {
        use candle_core::{DType, Device, Tensor};
        let dev = Device::Cpu;
        let spec = &self.net.spec;
        let [h, w] = spec.image_size;
        let img = crate::base::image::preprocess(&obs.rgb_static, [h, w]).into_owned();
        let u8s = Tensor::from_vec(img.data, (1, 1, h, w, 3), &dev)?;
        let frames = crate::model::dldm::Dldm::frames_from_u8(&u8s, DType::F32)?;
        let n = &spec.normalization;
        let proprio = n
            .proprio_encoding
            .normalized(&obs.robot_obs, &n.proprio_mean, &n.proprio_std)
            .map_err(|e| anyhow!("robot_obs: {e}"))?;
        let p = proprio.len();
        let proprio = Tensor::from_vec(proprio, (1, p), &dev)?;
        let k = self.instruction.len();
        let ins = Tensor::from_vec(self.instruction.clone(), (1, k), &dev)?;
        let out = self.net.model.forward(&frames, &proprio, &ins)?;
        let rows = crate::model::head::chunk_rows(&out, 0)?;
        crate::model::head::postprocess_calvin(&rows).map_err(|e| anyhow!("e2e baseline: {e}"))
    }
}

impl EvalPolicy for E2eEvalPolicy {
    fn reset(&mut self, _task: &str, instruction: &str) -> Result<()> {
        self.instruction = crate::policy::instruction::embed_instruction(
            instruction,
            self.net.spec.model.instruction_dim,
        );
        self.remaining = 0;
        Ok(())
    }

    fn step(&mut self, obs: &Observation, t: f64, _env: &mut EnvAdapter) -> Result<Option<Chunk>> {
        if self.remaining > 0 {
            self.remaining -= 1;
            return Ok(None);
        }
        let actions = self.plan(obs)?;
        self.remaining = actions.len().saturating_sub(1);
        Ok(Some(Chunk {
            t,
            actions: actions.iter().map(|a| a.map(f64::from)).collect(),
            relative: true,
        }))
    }

    fn control_rate_hz(&self) -> Option<f64> {
        Some(self.net.spec.control_rate_hz)
    }
}
