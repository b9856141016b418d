//! Dataset input/output.
//!
//! - [`calvin`]: read and write robot-learning datasets in the exact on-disk format of the
//!   CALVIN benchmark (per-frame `.npz` files, `ep_start_end_ids.npy`, `statistics.yaml`,
//!   `lang_annotations/auto_lang_ann.npy`).
//! - [`npy`], [`npz`], [`pickle`]: the small numpy/zip/pickle codecs underneath, usable on
//!   their own (zip members through the `zip` crate).

pub mod calvin;
pub mod npy;
pub mod npz;
pub mod pickle;

pub use calvin::{
    CalvinDataset, CalvinFrame, CalvinWriter, LangAnnotations, LangEntry, NormStats, Statistics,
};

/// The 8-bit RGB image type (it lives in [`crate::base::image`]).
pub use crate::base::image::Image;
