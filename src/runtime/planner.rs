//! What the pipeline runs: a [`Planner`] turns frames into plans (the
//! closed-loop policy, or a model-free stand-in), a [`Renderer`] turns a plan
//! into the imagined future the monitor publishes.

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::actuate::ActionScale;
use crate::io::RgbImage;
use crate::model::dldm::Dldm;
use crate::model::head::ACTION_DIM;
use crate::policy::{Plan, Policy};

/// Something that turns frames into plans (the closed-loop policy, or a
/// model-free stand-in for measuring the runtime itself).
pub trait Planner: Send {
    /// Starts an episode.
    fn reset(&mut self, instruction: &str) -> Result<()>;
    /// Model input size `[h, w]` (px).
    fn image_size(&self) -> [usize; 2];
    /// The control rate the policy was trained at (Hz): the run's rate.
    fn control_rate_hz(&self) -> f64;
    /// What one unit of the plans' relative actions means (CALVIN's by default).
    fn action_scale(&self) -> ActionScale {
        ActionScale::default()
    }
    /// One frame (RGB at `image_size`), proprio and its capture time (s).
    fn observe(&mut self, frame: &RgbImage, proprio: &[f64], t: f64) -> Result<Option<Plan>>;
}

impl Planner for Policy {
    fn reset(&mut self, instruction: &str) -> Result<()> {
        Policy::reset(self, instruction)
    }
    fn image_size(&self) -> [usize; 2] {
        self.bundle().spec.image_size
    }
    fn control_rate_hz(&self) -> f64 {
        self.bundle().spec.control_rate_hz
    }
    fn action_scale(&self) -> ActionScale {
        ActionScale::of(&self.bundle().spec.action_space)
    }
    fn observe(&mut self, frame: &RgbImage, proprio: &[f64], t: f64) -> Result<Option<Plan>> {
        Policy::observe(self, frame, proprio, t)
    }
}

/// A model-free planner: every `steps_per_latent` frames it returns a chunk of
/// zero-motion actions (gripper open) at once. Measures the runtime's overhead.
pub struct NullPlanner {
    /// Input size `[h, w]`.
    pub image_size: [usize; 2],
    /// Control steps per plan.
    pub steps_per_latent: usize,
    /// Control rate (Hz); 30 Hz unless set.
    pub control_rate_hz: f64,
    step: usize,
}

impl NullPlanner {
    /// A planner for `image_size` that plans every `steps_per_latent` frames.
    pub fn new(image_size: [usize; 2], steps_per_latent: usize) -> Self {
        Self {
            image_size,
            steps_per_latent,
            control_rate_hz: 30.0,
            step: 0,
        }
    }
}

impl Planner for NullPlanner {
    fn reset(&mut self, _instruction: &str) -> Result<()> {
        self.step = 0;
        Ok(())
    }
    fn image_size(&self) -> [usize; 2] {
        self.image_size
    }
    fn control_rate_hz(&self) -> f64 {
        self.control_rate_hz
    }
    fn observe(&mut self, _frame: &RgbImage, _proprio: &[f64], t: f64) -> Result<Option<Plan>> {
        let n = self.step;
        self.step += 1;
        if !n.is_multiple_of(self.steps_per_latent) {
            return Ok(None);
        }
        let mut hold = [0f32; ACTION_DIM];
        hold[6] = 1.0;
        Ok(Some(Plan {
            t,
            control_step: n,
            latent_step: n / self.steps_per_latent + 1,
            observed_codes: vec![],
            predicted_codes: vec![0; 4],
            actions: vec![hold; self.steps_per_latent],
            relative: true,
            current_features: Tensor::zeros((1, 1, 1, 1, 1), DType::F32, &Device::Cpu)?,
        }))
    }
}

/// Renders a plan's imagined future as an RGB strip.
pub trait Renderer: Send {
    /// One image for the plan (e.g. the predicted frames side by side).
    fn render(&mut self, plan: &Plan) -> Result<RgbImage>;
}

/// The coarse decoder: renders the frames implied by the predicted codes,
/// starting from the current frame's features, as a horizontal strip.
pub struct DecoderRenderer {
    dldm: Dldm,
    num_queries: usize,
}

impl DecoderRenderer {
    /// Uses the bundle's dLDM (shares its weights).
    pub fn new(dldm: Dldm) -> Self {
        let num_queries = dldm.config().num_queries;
        Self { dldm, num_queries }
    }
}

impl Renderer for DecoderRenderer {
    fn render(&mut self, plan: &Plan) -> Result<RgbImage> {
        let idx = Tensor::new(
            plan.predicted_codes.as_slice(),
            plan.current_features.device(),
        )?
        .reshape((1, 1, self.num_queries))?;
        let frames = self.dldm.decode_indices(&plan.current_features, &idx)?; // [1, T, 3, H, W]
        frames_to_strip(&frames.narrow(1, 1, frames.dim(1)? - 1)?)
    }
}

/// `[1, T, 3, H, W]` in [−1, 1] → an RGB strip `H × (T·W)`.
pub fn frames_to_strip(frames: &Tensor) -> Result<RgbImage> {
    let (_, t, _, h, w) = frames.dims5()?;
    let px = ((frames.squeeze(0)?.clamp(-1.0, 1.0)? + 1.0)? * 127.5)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((2, 0, 3, 1))? // [H, T, W, 3]
        .contiguous()?
        .flatten_all()?
        .to_vec1::<u8>()?;
    Ok(RgbImage {
        height: h,
        width: t * w,
        data: px,
    })
}

/// A renderer that only burns CPU for a fixed time (benchmarks).
pub struct BusyRenderer {
    /// Time spent per render (s).
    pub seconds: f64,
}

impl Renderer for BusyRenderer {
    fn render(&mut self, _plan: &Plan) -> Result<RgbImage> {
        let until = Instant::now() + Duration::from_secs_f64(self.seconds);
        let mut x = 0u64;
        while Instant::now() < until {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        Ok(RgbImage {
            height: 1,
            width: 1,
            data: vec![(x & 0xff) as u8; 3],
        })
    }
}
