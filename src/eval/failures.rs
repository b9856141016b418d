//! `--save-failures`: for each failed subtask a PNG strip of static-camera
//! frames (evenly spaced over the attempt, half resolution), under
//! `DIR/failures/`, written by the crate's one PNG writer
//! ([`crate::base::image::write_png`]).

use std::path::{Path, PathBuf};

use crate::io::RgbImage;

/// Frames kept per failed subtask in the strip.
pub const STRIP_FRAMES: usize = 12;
/// Keep one frame every this many steps while a subtask runs.
pub const KEEP_EVERY: usize = 4;

/// The static-camera frames of one subtask attempt.
#[derive(Debug, Clone, Default)]
pub struct FrameLog {
    frames: Vec<RgbImage>,
    seen: usize,
}

impl FrameLog {
    /// Forgets the frames.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.seen = 0;
    }

    /// Offers a frame; one in [`KEEP_EVERY`] is kept (the first always).
    pub fn offer(&mut self, img: &RgbImage) {
        if self.seen.is_multiple_of(KEEP_EVERY) {
            self.frames.push(half(img));
        }
        self.seen += 1;
    }

    /// Offers the last frame of an attempt (kept unless it was just kept).
    pub fn offer_last(&mut self, img: &RgbImage) {
        if !(self.seen.saturating_sub(1)).is_multiple_of(KEEP_EVERY) {
            self.frames.push(half(img));
        }
    }

    /// Up to `n` frames evenly spaced from first to last, side by side.
    pub fn strip(&self, n: usize) -> Option<RgbImage> {
        if self.frames.is_empty() {
            return None;
        }
        let m = self.frames.len();
        let k = n.min(m).max(1);
        let picks: Vec<&RgbImage> = (0..k)
            .map(|i| {
                let j = if k == 1 { 0 } else { i * (m - 1) / (k - 1) };
                &self.frames[j]
            })
            .collect();
        let h = picks[0].height;
        let w: usize = picks.iter().map(|p| p.width).sum();
        let mut data = vec![0u8; h * w * 3];
        let mut x0 = 0;
        for p in picks {
            for y in 0..h.min(p.height) {
                let src = &p.data[y * p.width * 3..(y + 1) * p.width * 3];
                data[(y * w + x0) * 3..(y * w + x0 + p.width) * 3].copy_from_slice(src);
            }
            x0 += p.width;
        }
        Some(RgbImage {
            height: h,
            width: w,
            data,
        })
    }
}

/// 2×2 box downsampling.
fn half(img: &RgbImage) -> RgbImage {
    let (h, w) = (img.height / 2, img.width / 2);
    let mut data = vec![0u8; h * w * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let p = |yy: usize, xx: usize| img.data[(yy * img.width + xx) * 3 + c] as u32;
                let s = p(2 * y, 2 * x)
                    + p(2 * y, 2 * x + 1)
                    + p(2 * y + 1, 2 * x)
                    + p(2 * y + 1, 2 * x + 1);
                data[(y * w + x) * 3 + c] = ((s + 2) / 4) as u8;
            }
        }
    }
    RgbImage {
        height: h,
        width: w,
        data,
    }
}

/// The strip file of a failed subtask.
pub fn failure_path(dir: &Path, chain: usize, subtask: usize, task: &str) -> PathBuf {
    dir.join("failures")
        .join(format!("chain{chain:04}_sub{}_{task}.png", subtask + 1))
}
