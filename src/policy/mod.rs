//! Policy bundles: `policy.yaml`, weight files and the loaded components.

pub mod bundle;
pub mod closed_loop;
pub mod dldm_bench;
pub mod import;
pub mod instruction;
pub mod proprio;
pub mod weights;

pub use bundle::{create_random_policy, LoadedPolicy, PolicySpec, RandomPolicySizes};
pub use closed_loop::{Plan, Policy, PolicyOptions};
