//! The VideoWorld 2 model core in candle: the dLDM (Haar patcher, causal 3-D conv
//! encoder, QFormer, FSQ, coarse decoder), the AR transformer and the action head.
//!
//! Tensor layout inside the dLDM is frames-major, `[B, T, C, H, W]`, so that a
//! 2-D conv over `[B·T, C, H, W]` is a free reshape. Weights keep the official
//! `[out, in, kt, kh, kw]` conv3d layout.

pub mod ar;
pub mod dldm;
pub mod e2e;
pub mod fsq;
pub mod head;
pub mod layers;
pub mod nn;
/// Test support: writes ONNX heads for the gate's tests; the product only reads them.
#[doc(hidden)]
pub mod onnx_export;
pub mod onnx_gate;
pub mod onnx_head;
pub mod patcher;
