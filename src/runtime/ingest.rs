//! Frame ingest: a camera frame (rgb8, bgr8 or mono8, rows possibly padded)
//! to RGB, then the one model-input preprocessing
//! ([`crate::base::image::preprocess`]) that training used.

use anyhow::Result;

use crate::io::robot::{Encoding, RawFrame};
use crate::io::RgbImage;

/// Converts `frame` (rgb8, bgr8 or mono8) to RGB at `height × width` px: the
/// colour conversion, then [`crate::base::image::preprocess`].
pub fn to_rgb_resized(frame: &RawFrame, height: usize, width: usize) -> Result<RgbImage> {
    let rgb = to_rgb(frame)?;
    Ok(crate::base::image::preprocess(&rgb, [height, width]).into_owned())
}

/// `frame` as a packed RGB image at its own size (row padding dropped).
pub fn to_rgb(frame: &RawFrame) -> Result<RgbImage> {
    frame.validate()?;
    let ch = frame.encoding.channels();
    let mut data = Vec::with_capacity(frame.height * frame.width * 3);
    for row in frame.data.chunks(frame.step).take(frame.height) {
        let row = &row[..frame.width * ch];
        match frame.encoding {
            Encoding::Rgb8 => data.extend_from_slice(row),
            Encoding::Bgr8 => {
                for px in row.chunks_exact(3) {
                    data.extend_from_slice(&[px[2], px[1], px[0]]);
                }
            }
            Encoding::Mono8 => {
                for &v in row {
                    data.extend_from_slice(&[v, v, v]);
                }
            }
        }
    }
    RgbImage::new(frame.height, frame.width, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(encoding: Encoding, w: usize, h: usize, step: usize, px: &[u8]) -> RawFrame {
        let mut data = vec![0u8; h * step];
        for y in 0..h {
            for x in 0..w {
                let o = y * step + x * px.len();
                data[o..o + px.len()].copy_from_slice(px);
            }
        }
        RawFrame {
            encoding,
            height: h,
            width: w,
            step,
            data,
        }
    }

    #[test]
    fn converts_every_encoding_to_rgb() {
        let rgb = to_rgb_resized(&frame(Encoding::Rgb8, 4, 2, 12, &[10, 20, 30]), 2, 4).unwrap();
        assert_eq!(&rgb.data[..3], &[10, 20, 30]);
        let bgr = to_rgb_resized(&frame(Encoding::Bgr8, 4, 2, 12, &[10, 20, 30]), 2, 4).unwrap();
        assert_eq!(&bgr.data[..3], &[30, 20, 10]);
        let mono = to_rgb_resized(&frame(Encoding::Mono8, 4, 2, 4, &[77]), 2, 4).unwrap();
        assert_eq!(&mono.data[..3], &[77, 77, 77]);
        // Row padding (step > width·channels) is dropped.
        let padded = to_rgb_resized(&frame(Encoding::Rgb8, 3, 2, 16, &[1, 2, 3]), 2, 3).unwrap();
        assert!(padded.data.chunks(3).all(|p| p == [1, 2, 3]));
    }

    #[test]
    fn resizes_bilinearly() {
        let big =
            to_rgb_resized(&frame(Encoding::Rgb8, 200, 200, 600, &[5, 6, 7]), 32, 32).unwrap();
        assert_eq!(
            (big.height, big.width, big.data.len()),
            (32, 32, 32 * 32 * 3)
        );
        assert!(big.data.chunks(3).all(|p| p == [5, 6, 7]));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert!(Encoding::parse("yuv422")
            .unwrap_err()
            .to_string()
            .contains("expected rgb8, bgr8 or mono8"));
        let mut f = frame(Encoding::Rgb8, 4, 2, 12, &[1, 2, 3]);
        f.data.pop();
        let e = to_rgb_resized(&f, 2, 4).unwrap_err().to_string();
        assert!(
            e.contains("image.data: expected height·step = 24 bytes, found 23"),
            "{e}"
        );
        let mut f = frame(Encoding::Rgb8, 4, 2, 12, &[1, 2, 3]);
        f.step = 8;
        assert!(to_rgb_resized(&f, 2, 4)
            .unwrap_err()
            .to_string()
            .contains("image.step"));
    }
}
