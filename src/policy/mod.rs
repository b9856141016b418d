//! Policy bundles: `policy.yaml`, weight files and the loaded components.

pub mod bundle;
pub mod closed_loop;
pub mod dldm_bench;
pub mod import;
pub mod instruction;
pub mod model_bench;
pub mod proprio;
pub mod weights;

pub use bundle::{create_random_policy, LoadedPolicy, PolicySpec, RandomPolicySizes};
pub use closed_loop::{EncoderMode, Plan, Policy, PolicyOptions};

/// Re-planning between latent steps and temporal ensembling of the chunks.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplanArgs {
    /// Re-plan every K control steps inside a latent step (1..=s; default: at latent steps only).
    #[arg(long)]
    pub replan_every: Option<usize>,
    /// Temporal ensembling with decay M: weights exp(−M·i), i = 0 the oldest chunk (use with --replan-every 1).
    #[arg(long)]
    pub ensemble_decay: Option<f64>,
    /// How the dLDM encoder sees the episode: `window` (re-encode the last
    /// window_latent_steps, as the trainer does) or `stream` (only the new frames).
    #[arg(long, value_enum)]
    pub encoder: Option<EncoderMode>,
}

impl ReplanArgs {
    /// `options` with these settings.
    pub fn apply(&self, mut options: PolicyOptions) -> PolicyOptions {
        options.replan_every = self.replan_every.or(options.replan_every);
        options.ensemble_decay = self.ensemble_decay.or(options.ensemble_decay);
        options.encoder = self.encoder.unwrap_or(options.encoder);
        options
    }
}
