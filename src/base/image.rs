//! The 8-bit RGB image type, the one model-input preprocessing ([`preprocess`])
//! and the crate's one PNG writer (OpenCV's encoder).

use std::path::Path;

use anyhow::{ensure, Context, Result};

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

/// `img` as PNG bytes (OpenCV's `imencode`, lossless).
pub fn encode_png(img: &Image) -> Result<Vec<u8>> {
    use opencv::core::{Mat, Vector};
    use opencv::prelude::*;
    img.validate("PNG image").map_err(anyhow::Error::msg)?;
    ensure!(
        img.height > 0 && img.width > 0,
        "PNG image: expected a non-empty image, found {}×{}",
        img.height,
        img.width
    );
    let mut bgr = img.data.clone();
    for px in bgr.chunks_mut(3) {
        px.swap(0, 2);
    }
    let mat = Mat::new_rows_cols_with_data(img.height as i32, img.width as i32 * 3, &bgr)?
        .reshape(3, img.height as i32)?
        .try_clone()?;
    let mut buf = Vector::<u8>::new();
    opencv::imgcodecs::imencode_def(".png", &mat, &mut buf)?;
    Ok(buf.to_vec())
}

/// Writes `img` to `path` as PNG, atomically, creating the parent folder.
pub fn write_png(path: &Path, img: &Image) -> Result<()> {
    if let Some(parent) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    let bytes =
        encode_png(img).with_context(|| format!("{}: cannot encode PNG", path.display()))?;
    super::fs::write_atomic(path, &bytes)
}

/// The one image preprocessing every model input goes through, in record,
/// train, eval, `vw2 run` and the ROS node: an RGB frame to the model's
/// `[height, width]` by [`resize_bilinear`] (unchanged when it already has
/// that size). Colour conversion of camera encodings happens before, in
/// `runtime::ingest`; what comes out of here is what a policy saw in training.
pub fn preprocess(img: &Image, size: [usize; 2]) -> std::borrow::Cow<'_, Image> {
    let [h, w] = size;
    if img.height == h && img.width == w {
        std::borrow::Cow::Borrowed(img)
    } else {
        std::borrow::Cow::Owned(resize_bilinear(img, h, w))
    }
}

/// Bilinear resize of an RGB image (half-pixel centres, like
/// `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`).
pub fn resize_bilinear(img: &Image, out_h: usize, out_w: usize) -> Image {
    let (ih, iw) = (img.height, img.width);
    let mut data = vec![0u8; out_h * out_w * 3];
    let sy = ih as f32 / out_h as f32;
    let sx = iw as f32 / out_w as f32;
    for y in 0..out_h {
        let fy = ((y as f32 + 0.5) * sy - 0.5).max(0.0);
        let y0 = (fy as usize).min(ih - 1);
        let y1 = (y0 + 1).min(ih - 1);
        let wy = fy - y0 as f32;
        for x in 0..out_w {
            let fx = ((x as f32 + 0.5) * sx - 0.5).max(0.0);
            let x0 = (fx as usize).min(iw - 1);
            let x1 = (x0 + 1).min(iw - 1);
            let wx = fx - x0 as f32;
            for c in 0..3 {
                let p = |yy: usize, xx: usize| img.data[(yy * iw + xx) * 3 + c] as f32;
                let top = p(y0, x0) * (1.0 - wx) + p(y0, x1) * wx;
                let bot = p(y1, x0) * (1.0 - wx) + p(y1, x1) * wx;
                data[(y * out_w + x) * 3 + c] =
                    (top * (1.0 - wy) + bot * wy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Image {
        height: out_h,
        width: out_w,
        data,
    }
}
