//! Real-versus-imagined strips (`vw2 demo`, `vw2 eval calvin --save-strips`):
//! for each subtask a PNG with two rows. The top row holds the static-camera
//! frames the robot really saw at the end of a planned latent step; the bottom
//! row the coarse decoder's imagination of that same frame, made when the step
//! was planned (s control steps earlier). Columns are evenly spaced plans over
//! the attempt.

use std::path::{Path, PathBuf};

use crate::base::image::resize_bilinear;
use crate::io::RgbImage;

/// Side of one tile in the strip (px).
pub const TILE_PX: usize = 96;
/// Plans (columns) per strip.
pub const STRIP_COLUMNS: usize = 8;

/// One plan's imagination: made at `control_step`, of the frame `horizon` steps later.
#[derive(Debug, Clone)]
struct Imagined {
    control_step: usize,
    horizon: usize,
    tile: RgbImage,
}

/// The frames of one subtask attempt, real and imagined.
#[derive(Debug, Clone, Default)]
pub struct ImaginationLog {
    real: Vec<RgbImage>,
    imagined: Vec<Imagined>,
}

impl ImaginationLog {
    /// Forgets everything (a new subtask).
    pub fn clear(&mut self) {
        self.real.clear();
        self.imagined.clear();
    }

    /// The observation at control step `self.real_len()` (one per step, plus the last).
    pub fn push_real(&mut self, img: &RgbImage) {
        self.real.push(resize_bilinear(img, TILE_PX, TILE_PX));
    }

    /// Real frames logged so far.
    pub fn real_len(&self) -> usize {
        self.real.len()
    }

    /// An imagination made at `control_step`: `frames` is the decoder's strip of
    /// `horizon` frames side by side (`H × horizon·W`); its last frame is kept.
    pub fn push_imagined(&mut self, control_step: usize, frames: &RgbImage, horizon: usize) {
        if horizon == 0 || frames.width < horizon || frames.height == 0 {
            return;
        }
        let w = frames.width / horizon;
        let last = crop(frames, (horizon - 1) * w, w);
        self.imagined.push(Imagined {
            control_step,
            horizon,
            tile: resize_bilinear(&last, TILE_PX, TILE_PX),
        });
    }

    /// Imaginations logged so far.
    pub fn imagined_len(&self) -> usize {
        self.imagined.len()
    }

    /// The two-row strip over up to `columns` evenly spaced imaginations whose
    /// target frame was observed (None when there is none).
    pub fn strip(&self, columns: usize) -> Option<RgbImage> {
        let pairs: Vec<(&RgbImage, &RgbImage)> = self
            .imagined
            .iter()
            .filter_map(|im| {
                self.real
                    .get(im.control_step + im.horizon)
                    .map(|real| (real, &im.tile))
            })
            .collect();
        if pairs.is_empty() || columns == 0 {
            return None;
        }
        let m = pairs.len();
        let k = columns.min(m);
        let w = k * TILE_PX;
        let h = 2 * TILE_PX;
        let mut data = vec![0u8; h * w * 3];
        for col in 0..k {
            let j = if k == 1 {
                m - 1
            } else {
                col * (m - 1) / (k - 1)
            };
            let (real, imagined) = pairs[j];
            for (row, tile) in [real, imagined].into_iter().enumerate() {
                for y in 0..TILE_PX {
                    let src = &tile.data[y * TILE_PX * 3..(y + 1) * TILE_PX * 3];
                    let dst = ((row * TILE_PX + y) * w + col * TILE_PX) * 3;
                    data[dst..dst + TILE_PX * 3].copy_from_slice(src);
                }
            }
        }
        Some(RgbImage {
            height: h,
            width: w,
            data,
        })
    }
}

fn crop(img: &RgbImage, x0: usize, w: usize) -> RgbImage {
    let mut data = Vec::with_capacity(img.height * w * 3);
    for y in 0..img.height {
        let row = (y * img.width + x0) * 3;
        data.extend_from_slice(&img.data[row..row + w * 3]);
    }
    RgbImage {
        height: img.height,
        width: w,
        data,
    }
}

/// The strip file of one subtask.
pub fn strip_path(dir: &Path, chain: usize, subtask: usize, task: &str, success: bool) -> PathBuf {
    let outcome = if success { "ok" } else { "fail" };
    dir.join("strips").join(format!(
        "chain{chain:04}_sub{}_{task}_{outcome}.png",
        subtask + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(h: usize, w: usize, v: u8) -> RgbImage {
        RgbImage {
            height: h,
            width: w,
            data: vec![v; h * w * 3],
        }
    }

    fn pixel(img: &RgbImage, y: usize, x: usize) -> u8 {
        img.data[(y * img.width + x) * 3]
    }

    #[test]
    fn pairs_each_imagination_with_the_frame_it_predicted() {
        let mut log = ImaginationLog::default();
        for step in 0..13u8 {
            log.push_real(&solid(200, 200, step * 10));
        }
        // Decoder strips of 4 frames: frame i has value 100 + i; the last (103) is kept.
        let mut frames = solid(48, 4 * 48, 0);
        for y in 0..48 {
            for x in 0..4 * 48 {
                let v = 100 + (x / 48) as u8;
                frames.data[(y * 4 * 48 + x) * 3..(y * 4 * 48 + x) * 3 + 3].fill(v);
            }
        }
        log.push_imagined(0, &frames, 4);
        log.push_imagined(4, &frames, 4);
        log.push_imagined(8, &frames, 4);
        // Made at step 12: its target (step 16) was never observed, so it is left out.
        log.push_imagined(12, &frames, 4);
        let strip = log.strip(8).unwrap();
        assert_eq!((strip.height, strip.width), (2 * TILE_PX, 3 * TILE_PX));
        for (col, real) in [40u8, 80, 120].into_iter().enumerate() {
            assert_eq!(pixel(&strip, 10, col * TILE_PX + 5), real);
            assert_eq!(pixel(&strip, TILE_PX + 10, col * TILE_PX + 5), 103);
        }
        assert_eq!(log.strip(2).unwrap().width, 2 * TILE_PX);
        log.clear();
        assert!(log.strip(8).is_none());
    }

    #[test]
    fn path_names_chain_subtask_task_and_outcome() {
        let p = strip_path(Path::new("/o"), 3, 0, "open_drawer", false);
        assert_eq!(
            p,
            Path::new("/o/strips/chain0003_sub1_open_drawer_fail.png")
        );
    }
}
