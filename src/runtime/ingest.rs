//! Frame ingest: colour conversion to RGB and resizing to the policy's input
//! size with OpenCV (bilinear, as the official preprocessing).

use anyhow::{Context, Result};
use opencv::core::{Mat, Size};
use opencv::prelude::*;

use crate::io::robot::{Encoding, RawFrame};
use crate::io::RgbImage;

/// Converts `frame` (rgb8, bgr8 or mono8) to RGB at `height × width` px.
pub fn to_rgb_resized(frame: &RawFrame, height: usize, width: usize) -> Result<RgbImage> {
    frame.validate()?;
    let ch = frame.encoding.channels();
    let typ = if ch == 3 {
        opencv::core::CV_8UC3
    } else {
        opencv::core::CV_8UC1
    };
    // Copy row by row so any row padding (`step`) is dropped.
    let mut packed = Vec::with_capacity(frame.height * frame.width * ch);
    for row in frame.data.chunks(frame.step) {
        packed.extend_from_slice(&row[..frame.width * ch]);
    }
    let src =
        Mat::new_rows_cols_with_data(frame.height as i32, frame.width as i32 * ch as i32, &packed)
            .context("wrapping the frame")?
            .reshape(ch as i32, frame.height as i32)
            .context("reshaping the frame")?
            .try_clone()?;
    debug_assert_eq!(src.typ(), typ);
    let rgb = match frame.encoding {
        Encoding::Rgb8 => src,
        Encoding::Bgr8 => {
            let mut dst = Mat::default();
            opencv::imgproc::cvt_color_def(&src, &mut dst, opencv::imgproc::COLOR_BGR2RGB)?;
            dst
        }
        Encoding::Mono8 => {
            let mut dst = Mat::default();
            opencv::imgproc::cvt_color_def(&src, &mut dst, opencv::imgproc::COLOR_GRAY2RGB)?;
            dst
        }
    };
    let out = if frame.height == height && frame.width == width {
        rgb
    } else {
        let mut dst = Mat::default();
        opencv::imgproc::resize(
            &rgb,
            &mut dst,
            Size::new(width as i32, height as i32),
            0.0,
            0.0,
            opencv::imgproc::INTER_LINEAR,
        )?;
        dst
    };
    let data = out.data_bytes()?.to_vec();
    Ok(RgbImage {
        height,
        width,
        data,
    })
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
