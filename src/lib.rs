//! vw2_policy: a runtime that puts VideoWorld 2 latent-action policies on robot arms.
//!
//! Modules: [`model`] (dLDM, AR transformer, action head in candle) and
//! [`policy`] (bundles and weight loading).

pub mod base;
pub mod calibration;
pub mod cli;
pub mod data;
pub mod eval;
pub mod io;
pub mod model;
pub mod policy;
#[cfg(feature = "ros2")]
pub mod ros;
pub mod runtime;
pub mod safety;
pub mod teleop;
pub mod train;
