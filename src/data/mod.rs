//! Dataset input/output.
//!
//! - [`calvin`]: read and write robot-learning datasets in the exact on-disk format of the
//!   CALVIN benchmark (per-frame `.npz` files, `ep_start_end_ids.npy`, `statistics.yaml`,
//!   `lang_annotations/auto_lang_ann.npy`).
//! - [`npy`], [`npz`], [`pickle`]: the small numpy/zip/pickle codecs underneath, usable on
//!   their own. They need no dependencies beyond `anyhow` and `serde_yaml`.

pub mod calvin;
pub(crate) mod inflate;
pub mod npy;
pub mod npz;
pub mod pickle;
pub mod record;

pub use calvin::{
    CalvinDataset, CalvinFrame, CalvinWriter, LangAnnotations, LangEntry, NormStats, Statistics,
};

use anyhow::{ensure, Result};

/// An 8-bit RGB image in row-major HWC layout (`data[(y * width + x) * 3 + c]`, channels
/// R, G, B), as stored in CALVIN's `rgb_static` / `rgb_gripper` arrays (`uint8 [H, W, 3]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// Height in pixels (rows).
    pub height: usize,
    /// Width in pixels (columns).
    pub width: usize,
    /// `height * width * 3` bytes, HWC order, RGB.
    pub data: Vec<u8>,
}

impl Image {
    /// Wraps HWC RGB bytes, checking that `data.len() == height * width * 3`.
    pub fn new(height: usize, width: usize, data: Vec<u8>) -> Result<Image> {
        ensure!(
            data.len() == height * width * 3,
            "image {height}x{width}x3 needs {} bytes, got {}",
            height * width * 3,
            data.len()
        );
        Ok(Image {
            height,
            width,
            data,
        })
    }

    /// A black `height` x `width` image.
    pub fn zeros(height: usize, width: usize) -> Image {
        Image {
            height,
            width,
            data: vec![0; height * width * 3],
        }
    }

    /// An image whose pixel at row `y`, column `x` is `f(y, x)` (RGB).
    pub fn from_fn(height: usize, width: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Image {
        let mut data = Vec::with_capacity(height * width * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&f(y, x));
            }
        }
        Image {
            height,
            width,
            data,
        }
    }

    /// Checks that `data` holds `height · width · 3` bytes; the message starts with `what`.
    pub fn validate(&self, what: &str) -> std::result::Result<(), String> {
        let want = self.height * self.width * 3;
        if self.data.len() != want {
            return Err(format!(
                "{what}: expected {}×{}×3 = {want} bytes, found {}",
                self.height,
                self.width,
                self.data.len()
            ));
        }
        Ok(())
    }

    /// The RGB value at row `y`, column `x` (panics when out of bounds).
    pub fn pixel(&self, y: usize, x: usize) -> [u8; 3] {
        assert!(
            y < self.height && x < self.width,
            "pixel ({y}, {x}) out of bounds"
        );
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}
