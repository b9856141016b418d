//! Policy bundles: `policy.yaml`, weight files and the loaded components.

pub mod bundle;
pub mod weights;

pub use bundle::{create_random_policy, LoadedPolicy, PolicySpec, RandomPolicySizes};
