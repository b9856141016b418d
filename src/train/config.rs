//! Stage configuration files (YAML, unknown keys rejected). Defaults are the
//! tiny sizes of [`RandomPolicySizes::tiny`] (32×32 images), so an empty file
//! (or no file) trains a test-sized model.
//!
//! `vw2 train ldm --config` takes an [`LdmStageConfig`], `vw2 train ar
//! --config` an [`ArStageConfig`], `vw2 finetune-head --config` a
//! [`HeadStageConfig`], and `vw2 train all --config` one file with a section
//! per stage ([`AllStagesConfig`]). Every key is optional; the defaults are:
//!
//! ```yaml
//! ldm:
//!   model: {preset: tiny}             # a DldmConfig: a preset (videoworld2 when unset)
//!                                     # and any size overriding it
//!   image_size: [32, 32]
//!   clip_latent_steps: 2              # clips of T = 1 + 4·2 = 9 frames (fewer if no episode fits)
//!   clip_stride: 4
//!   frame_cache_mb: 256
//!   train:
//!     steps: 200
//!     batch_size: 4
//!     checkpoint_every: 50
//!     keep_checkpoints: 2
//!     log_every: 10
//!     optim: {lr: 1.0e-3, min_lr_ratio: 0.1, warmup_steps: 5, weight_decay: 0.01,
//!             beta1: 0.9, beta2: 0.999, eps: 1.0e-8, clip_grad_norm: 1.0}
//! ar:
//!   # model: an ArConfig; absent = the tiny AR with the dLDM's widths
//!   window_latent_steps: 8            # as PolicyOptions::window_latent_steps
//!   seq_steps: 16
//!   seq_stride: 4
//!   frame_cache_mb: 256
//!   train: {steps: 200, batch_size: 4}
//! head:
//!   # model: a HeadConfig; absent = the input bundle's MLP head sizes
//!   window_latent_steps: 8
//!   val_fraction: 0.2
//!   val_seed: 0
//!   action_normalization: identity    # or: dataset
//!   gripper_loss: mse                 # or: bce
//!   gripper_weight: 1.0
//!   train: {steps: 200, batch_size: 4}
//! ```

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::optim::OptimConfig;
use crate::model::ar::ArConfig;
use crate::model::dldm::DldmConfig;
use crate::model::head::HeadConfig;
use crate::policy::RandomPolicySizes;

/// Loop settings shared by every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer updates in the whole run.
    #[serde(default = "d_steps")]
    pub steps: u64,
    /// Items (clips, code windows, labelled windows) per update.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Write a checkpoint every this many updates (and at the end); 0 = only at the end.
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (the newest ones).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// Log a line to `tracing` every this many updates (the CSV gets every update).
    #[serde(default = "d_log")]
    pub log_every: u64,
    /// Optimizer and learning-rate schedule.
    #[serde(default)]
    pub optim: OptimConfig,
}

fn d_steps() -> u64 {
    200
}
fn d_batch() -> usize {
    4
}
fn d_ckpt() -> u64 {
    50
}
fn d_keep() -> usize {
    2
}
fn d_log() -> u64 {
    10
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: d_steps(),
            batch_size: d_batch(),
            checkpoint_every: d_ckpt(),
            keep_checkpoints: d_keep(),
            log_every: d_log(),
            optim: OptimConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Checks the fields; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.steps == 0 {
            return Err("train.steps: expected ≥ 1, found 0".into());
        }
        if self.batch_size == 0 {
            return Err("train.batch_size: expected ≥ 1, found 0".into());
        }
        if self.keep_checkpoints == 0 {
            return Err("train.keep_checkpoints: expected ≥ 1, found 0".into());
        }
        self.optim.validate().map_err(|e| format!("train.{e}"))
    }
}

/// `vw2 train ldm`: the dLDM warm-up (encoder + QFormer + FSQ + coarse decoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdmStageConfig {
    /// dLDM sizes.
    #[serde(default = "DldmConfig::tiny")]
    pub model: DldmConfig,
    /// Model input `[height, width]`; frames are resized to it.
    #[serde(default = "d_image")]
    pub image_size: [usize; 2],
    /// Latent steps k per training clip: clips have T = 1 + s·k frames (s = patch_size).
    #[serde(default = "d_clip_steps")]
    pub clip_latent_steps: usize,
    /// Frames between the starts of consecutive clips of an episode.
    #[serde(default = "d_clip_stride")]
    pub clip_stride: usize,
    /// Memory for resized frames kept between steps (MiB; 0 = none).
    #[serde(default = "d_cache_mb")]
    pub frame_cache_mb: usize,
    /// Weight of what moved in the reconstruction loss: a pixel of future frame
    /// t counts `1 + motion_weight · |x_t − x_0|` (channel mean, pixels in
    /// [−1, 1]), normalized by the clip's mean weight. 0: plain MSE. The static
    /// background dominates a plain MSE, so the codes need not carry the arm's
    /// motion to meet it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub motion_weight: f64,
    /// Train the decoder to render the change from the first frame (its output
    /// is added to frame 0) instead of whole frames.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub residual_decoder: bool,
    /// Loop settings.
    #[serde(default)]
    pub train: TrainConfig,
}

/// Options left at their default are not written, so a run made before they
/// existed keeps its identity (and resumes).
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn d_image() -> [usize; 2] {
    RandomPolicySizes::tiny().image_size
}
fn d_clip_steps() -> usize {
    2
}
fn d_clip_stride() -> usize {
    4
}
fn d_cache_mb() -> usize {
    256
}

impl Default for LdmStageConfig {
    fn default() -> Self {
        Self {
            model: DldmConfig::tiny(),
            image_size: d_image(),
            clip_latent_steps: d_clip_steps(),
            clip_stride: d_clip_stride(),
            frame_cache_mb: d_cache_mb(),
            motion_weight: 0.0,
            residual_decoder: false,
            train: TrainConfig::default(),
        }
    }
}

impl LdmStageConfig {
    /// Frames per clip, `1 + patch_size · clip_latent_steps`.
    pub fn clip_frames(&self) -> usize {
        1 + self.model.patch_size * self.clip_latent_steps
    }

    /// Checks the fields; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.model.validate().map_err(|e| format!("model.{e}"))?;
        let s = self.model.spatial_compression();
        let [h, w] = self.image_size;
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 {
            return Err(format!(
                "image_size: expected positive multiples of the dLDM's spatial compression {s}, found [{h}, {w}]"
            ));
        }
        if self.clip_latent_steps == 0 {
            return Err(
                "clip_latent_steps: expected ≥ 1 (the QFormer needs 2 latent frames), found 0"
                    .into(),
            );
        }
        if self.clip_stride == 0 {
            return Err("clip_stride: expected ≥ 1, found 0".into());
        }
        if !(self.motion_weight.is_finite() && self.motion_weight >= 0.0) {
            return Err(format!(
                "motion_weight: expected a finite value ≥ 0, found {}",
                self.motion_weight
            ));
        }
        self.train.validate()
    }
}

/// `vw2 train ar`: next-code prediction on the frozen encoder's codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArStageConfig {
    /// AR sizes; absent: the tiny sizes, with the dLDM's widths filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ArConfig>,
    /// Latent steps of history the encoder sees when it extracts a step's codes
    /// (as `PolicyOptions::window_latent_steps` at run time).
    #[serde(default = "d_window")]
    pub window_latent_steps: usize,
    /// Latent steps per training sequence (N codes each).
    #[serde(default = "d_seq_steps")]
    pub seq_steps: usize,
    /// Latent steps between the starts of consecutive sequences of a segment.
    #[serde(default = "d_seq_stride")]
    pub seq_stride: usize,
    /// Memory for resized frames while extracting codes (MiB; 0 = none).
    #[serde(default = "d_cache_mb")]
    pub frame_cache_mb: usize,
    /// Loop settings.
    #[serde(default)]
    pub train: TrainConfig,
}

fn d_window() -> usize {
    8
}
fn d_seq_steps() -> usize {
    16
}
fn d_seq_stride() -> usize {
    4
}

impl Default for ArStageConfig {
    fn default() -> Self {
        Self {
            model: None,
            window_latent_steps: d_window(),
            seq_steps: d_seq_steps(),
            seq_stride: d_seq_stride(),
            frame_cache_mb: d_cache_mb(),
            train: TrainConfig::default(),
        }
    }
}

impl ArStageConfig {
    /// The AR sizes for a dLDM: the configured ones (checked against it) or the
    /// tiny ones with the dLDM's vocabulary, feature width and codes per step.
    pub fn resolved_model(&self, dldm: &DldmConfig) -> std::result::Result<ArConfig, String> {
        let cfg = match &self.model {
            Some(m) => m.clone(),
            None => {
                let mut m = RandomPolicySizes::tiny().ar;
                m.vocab_size = dldm.codebook_size();
                m.visual_feature_dim = dldm.feature_channels();
                m.codes_per_step = dldm.num_queries;
                m
            }
        };
        for (field, want, found) in [
            ("vocab_size", dldm.codebook_size(), cfg.vocab_size),
            (
                "visual_feature_dim",
                dldm.feature_channels(),
                cfg.visual_feature_dim,
            ),
            ("codes_per_step", dldm.num_queries, cfg.codes_per_step),
        ] {
            if want != found {
                return Err(format!(
                    "model.{field}: expected the dLDM's {want}, found {found}"
                ));
            }
        }
        cfg.validate().map_err(|e| format!("model: {e}"))?;
        Ok(cfg)
    }

    /// Checks the fields that do not depend on the dLDM.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.window_latent_steps == 0 {
            return Err("window_latent_steps: expected ≥ 1, found 0".into());
        }
        if self.seq_steps == 0 {
            return Err("seq_steps: expected ≥ 1, found 0".into());
        }
        if self.seq_stride == 0 {
            return Err("seq_stride: expected ≥ 1, found 0".into());
        }
        self.train.validate()
    }
}

/// How head targets are normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ActionNormalization {
    /// Relative actions as recorded (already in [−1, 1]; gripper ±1): mean 0, std 1.
    #[default]
    Identity,
    /// xyz/euler standardized with the dataset's `rel_actions` statistics
    /// (gripper stays ±1).
    Dataset,
}

/// Loss on the gripper dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GripperLoss {
    /// Squared error against ±1, like the other dimensions.
    #[default]
    Mse,
    /// Binary cross-entropy with the output as a logit (open = +1).
    Bce,
}

/// `vw2 finetune-head`: the action head on labelled windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadStageConfig {
    /// Head sizes; absent: the input bundle's MLP head sizes (or the tiny ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<HeadConfig>,
    /// Latent steps of history the encoder sees (as `PolicyOptions::window_latent_steps`).
    #[serde(default = "d_window")]
    pub window_latent_steps: usize,
    /// Fraction of the dataset's episodes held out for validation (when no
    /// validation dataset is given); at least one when there are two or more.
    #[serde(default = "d_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the validation split (kept apart from `--seed`, so that runs with
    /// different label subsets validate on the same episodes).
    #[serde(default)]
    pub val_seed: u64,
    /// Target normalization.
    #[serde(default)]
    pub action_normalization: ActionNormalization,
    /// Gripper loss.
    #[serde(default)]
    pub gripper_loss: GripperLoss,
    /// Weight of the gripper term.
    #[serde(default = "d_gripper_weight")]
    pub gripper_weight: f64,
    /// Loop settings.
    #[serde(default)]
    pub train: TrainConfig,
}

fn d_val_fraction() -> f64 {
    0.2
}
fn d_gripper_weight() -> f64 {
    1.0
}

impl Default for HeadStageConfig {
    fn default() -> Self {
        Self {
            model: None,
            window_latent_steps: d_window(),
            val_fraction: d_val_fraction(),
            val_seed: 0,
            action_normalization: ActionNormalization::Identity,
            gripper_loss: GripperLoss::Mse,
            gripper_weight: d_gripper_weight(),
            train: TrainConfig::default(),
        }
    }
}

impl HeadStageConfig {
    /// Checks the fields; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.window_latent_steps == 0 {
            return Err("window_latent_steps: expected ≥ 1, found 0".into());
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(format!(
                "val_fraction: expected 0 ≤ val_fraction < 1, found {}",
                self.val_fraction
            ));
        }
        if !(self.gripper_weight.is_finite() && self.gripper_weight >= 0.0) {
            return Err(format!(
                "gripper_weight: expected a finite value ≥ 0, found {}",
                self.gripper_weight
            ));
        }
        self.train.validate()
    }
}

/// `vw2 train all`: one file with a section per stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AllStagesConfig {
    /// The dLDM warm-up.
    #[serde(default)]
    pub ldm: LdmStageConfig,
    /// The AR transformer.
    #[serde(default)]
    pub ar: ArStageConfig,
    /// The action head.
    #[serde(default)]
    pub head: HeadStageConfig,
    /// The end-to-end baseline (`vw2 train e2e`; `train all` ignores it).
    #[serde(default)]
    pub e2e: E2eStageConfig,
}

/// `vw2 train e2e`: the end-to-end baseline on the labelled episodes only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2eStageConfig {
    /// Visual encoder sizes (the dLDM's encoder architecture, trained from scratch).
    #[serde(default = "DldmConfig::tiny")]
    pub encoder: DldmConfig,
    /// Model input `[height, width]`; frames are resized to it.
    #[serde(default = "d_image")]
    pub image_size: [usize; 2],
    /// Width of the hashed instruction embedding.
    #[serde(default = "d_instruction_dim")]
    pub instruction_dim: usize,
    /// Hidden layer widths of the MLP.
    #[serde(default = "d_e2e_hidden")]
    pub hidden: Vec<usize>,
    /// Action chunk length in control steps (played before the next plan).
    #[serde(default = "d_e2e_chunk")]
    pub chunk: usize,
    /// Fraction of the episodes held out for validation (as the head stage).
    #[serde(default = "d_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the validation split (as the head stage).
    #[serde(default)]
    pub val_seed: u64,
    /// Memory for resized frames kept between steps (MiB; 0 = none).
    #[serde(default = "d_cache_mb")]
    pub frame_cache_mb: usize,
    /// Loop settings.
    #[serde(default)]
    pub train: TrainConfig,
}

fn d_instruction_dim() -> usize {
    64
}
fn d_e2e_hidden() -> Vec<usize> {
    vec![256, 256]
}
fn d_e2e_chunk() -> usize {
    4
}

impl Default for E2eStageConfig {
    fn default() -> Self {
        Self {
            encoder: DldmConfig::tiny(),
            image_size: d_image(),
            instruction_dim: d_instruction_dim(),
            hidden: d_e2e_hidden(),
            chunk: d_e2e_chunk(),
            val_fraction: d_val_fraction(),
            val_seed: 0,
            frame_cache_mb: d_cache_mb(),
            train: TrainConfig::default(),
        }
    }
}

impl E2eStageConfig {
    /// Checks sizes against each other.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.encoder
            .validate()
            .map_err(|e| format!("encoder.{e}"))?;
        let s = self.encoder.spatial_compression();
        let [h, w] = self.image_size;
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 {
            return Err(format!(
                "image_size: expected positive multiples of the encoder's spatial compression {s}, found [{h}, {w}]"
            ));
        }
        if self.chunk == 0 {
            return Err("chunk: expected ≥ 1, found 0".into());
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(format!(
                "val_fraction: expected 0 ≤ f < 1, found {}",
                self.val_fraction
            ));
        }
        self.train.validate()
    }
}

/// Reads a YAML config; an empty file gives the defaults. Errors name the file.
pub fn load_yaml<T: DeserializeOwned + Default>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read config", path.display()))?;
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    serde_yaml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Reads `path` when given, else the defaults.
pub fn load_or_default<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    match path {
        Some(p) => load_yaml(p),
        None => Ok(T::default()),
    }
}

/// The top-level keys of a `vw2 train all` file.
const STAGE_SECTIONS: [&str; 4] = ["ldm", "ar", "head", "e2e"];

/// Reads one stage's config from `path` when given (else the defaults): a file
/// of that stage's keys, or a `vw2 train all` file, whose `section` is used
/// (so one file can drive every stage).
pub fn load_stage<T: DeserializeOwned + Default>(path: Option<&Path>, section: &str) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let value: serde_yaml::Value = load_yaml(path)?;
    if value.is_null() {
        return Ok(T::default());
    }
    let all_stages = value.as_mapping().is_some_and(|m| {
        !m.is_empty()
            && m.keys()
                .all(|k| k.as_str().is_some_and(|k| STAGE_SECTIONS.contains(&k)))
    });
    let value = if all_stages {
        match value.get(section) {
            Some(v) if !v.is_null() => v.clone(),
            _ => return Ok(T::default()),
        }
    } else {
        value
    };
    serde_yaml::from_value(value).map_err(|e| {
        if all_stages {
            anyhow!("{}: section '{section}': {e}", path.display())
        } else {
            anyhow!("{}: {e}", path.display())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_to_the_defaults() {
        let doc = include_str!("config.rs");
        let yaml: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or("")))
            .collect();
        let parsed: AllStagesConfig = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(parsed, AllStagesConfig::default());
        assert!(serde_yaml::from_str::<AllStagesConfig>("ldm: {bogus: 1}").is_err());
        assert!(serde_yaml::from_str::<TrainConfig>("optim: {lr: 1, bogus: 2}").is_err());
    }

    #[test]
    fn a_stage_reads_its_own_file_or_its_section_of_an_all_stages_file() {
        let dir = std::env::temp_dir().join(format!("vw2_stage_cfg_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let own = dir.join("head.yaml");
        std::fs::write(&own, "val_fraction: 0.3\n").unwrap();
        let h: HeadStageConfig = load_stage(Some(&own), "head").unwrap();
        assert_eq!(h.val_fraction, 0.3);
        let all = dir.join("all.yaml");
        std::fs::write(&all, "ldm: {clip_stride: 7}\nhead: {val_fraction: 0.4}\n").unwrap();
        let h: HeadStageConfig = load_stage(Some(&all), "head").unwrap();
        assert_eq!(h.val_fraction, 0.4);
        let l: LdmStageConfig = load_stage(Some(&all), "ldm").unwrap();
        assert_eq!(l.clip_stride, 7);
        let a: ArStageConfig = load_stage(Some(&all), "ar").unwrap();
        assert_eq!(a, ArStageConfig::default());
        std::fs::write(&all, "head: {val_fraction: 0.4, bogus: 1}\n").unwrap();
        let e = load_stage::<HeadStageConfig>(Some(&all), "head")
            .unwrap_err()
            .to_string();
        assert!(e.contains("section 'head'") && e.contains("bogus"), "{e}");
        std::fs::write(&own, "bogus: 1\n").unwrap();
        let e = load_stage::<HeadStageConfig>(Some(&own), "head")
            .unwrap_err()
            .to_string();
        assert!(e.contains("head.yaml") && e.contains("bogus"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
