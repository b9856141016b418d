//! Trainers for the three stages of a VideoWorld 2 policy, with candle autograd
//! (see `design/policy-loop.md` in the shared notes: training mirrors the
//! closed loop).
//!
//! 1. [`ldm`]: the dLDM warm-up on unlabelled clips (L2 reconstruction of the
//!    future frames from frame 0's features and the codes).
//! 2. [`ar`]: the AR transformer on the frozen encoder's codes (next-code
//!    cross-entropy, conditioned on the instruction and the first frame).
//! 3. [`head`]: the action head on a seeded, episode-level labelled fraction
//!    (teacher-forced next-step codes, current features, proprio → s actions).
//! 4. [`assemble`]: stage outputs → a policy bundle `LoadedPolicy` loads.
//!
//! Shared machinery: [`optim`] (AdamW with saveable moments, cosine schedule
//! with warm-up, global-norm clipping), [`run`] (seeded per-epoch data order,
//! loss CSV, progress bar, atomic checkpoints and exact resume), [`data`]
//! (rgb_static-only frame reader, segments, frozen-encoder features, label
//! subsets) and [`config`] (one YAML per stage, unknown keys rejected).

pub mod ar;
pub mod assemble;
pub mod cli;
pub mod config;
pub mod data;
pub mod e2e;
pub mod head;
pub mod ldm;
pub mod optim;
pub mod run;

pub use assemble::{assemble_bundle, BundleParts, ComponentSource, DldmSource};
pub use config::{AllStagesConfig, ArStageConfig, HeadStageConfig, LdmStageConfig, TrainConfig};
pub use optim::{AdamW, OptimConfig};
pub use run::{RunOptions, TrainReport};
