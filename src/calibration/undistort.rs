//! Lens undistortion of RGB frames with OpenCV.
//!
//! [`Undistorter`] precomputes the `cv::initUndistortRectifyMap` lookup
//! tables once per camera (fixed-point `CV_16SC2` maps) and then undistorts
//! each frame with a single bilinear `cv::remap`. The undistorted image keeps
//! the camera matrix `K` of the intrinsics (no rescaling, no cropping); pixels
//! that map outside the source image are black.

use opencv::core::{Mat, MatTraitConstManual, Scalar, Size, Vec3b, BORDER_CONSTANT, CV_16SC2};
use opencv::imgproc::{remap, INTER_LINEAR};

use super::error::{cv_err, CalibrationError};
use super::types::CameraIntrinsics;

/// Precomputed undistortion maps for one camera.
pub struct Undistorter {
    intrinsics: CameraIntrinsics,
    /// `None` when the distortion is exactly zero (undistortion is the identity).
    maps: Option<(Mat, Mat)>,
}

impl std::fmt::Debug for Undistorter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Undistorter")
            .field("intrinsics", &self.intrinsics)
            .field("identity", &self.maps.is_none())
            .finish()
    }
}

impl Undistorter {
    /// Validates `intrinsics` and precomputes the maps for
    /// `intrinsics.width × intrinsics.height` px images.
    pub fn new(intrinsics: &CameraIntrinsics) -> Result<Self, CalibrationError> {
        intrinsics.validate_named("<intrinsics>")?;
        let maps = if intrinsics.is_distortion_free() {
            None
        } else {
            let k = intrinsics.camera_matrix_mat()?;
            let d = intrinsics.distortion_mat()?;
            let size = Size::new(intrinsics.width as i32, intrinsics.height as i32);
            let mut map1 = Mat::default();
            let mut map2 = Mat::default();
            opencv::calib3d::init_undistort_rectify_map(
                &k,
                &d,
                &Mat::default(), // empty R = identity
                &k,
                size,
                CV_16SC2,
                &mut map1,
                &mut map2,
            )
            .map_err(cv_err("init_undistort_rectify_map"))?;
            Some((map1, map2))
        };
        Ok(Undistorter {
            intrinsics: intrinsics.clone(),
            maps,
        })
    }

    /// The intrinsics the maps were computed for.
    pub fn intrinsics(&self) -> &CameraIntrinsics {
        &self.intrinsics
    }

    /// Undistorts one `height × width × 3` (HWC, row-major) RGB8 image of the
    /// size in the intrinsics and returns a new image of the same size.
    pub fn apply(&self, rgb: &[u8]) -> Result<Vec<u8>, CalibrationError> {
        let (w, h) = (
            self.intrinsics.width as usize,
            self.intrinsics.height as usize,
        );
        if rgb.len() != w * h * 3 {
            return Err(CalibrationError::invalid(
                "<image>",
                "rgb",
                format!(
                    "{w}x{h}x3 = {} bytes (HWC rgb8, size from the intrinsics)",
                    w * h * 3
                ),
                format!("{} bytes", rgb.len()),
            ));
        }
        let Some((map1, map2)) = &self.maps else {
            return Ok(rgb.to_vec());
        };
        let src = Mat::new_rows_cols_with_bytes::<Vec3b>(h as i32, w as i32, rgb)
            .map_err(cv_err("undistort: wrap image"))?;
        let mut dst = Mat::default();
        remap(
            &src,
            &mut dst,
            map1,
            map2,
            INTER_LINEAR,
            BORDER_CONSTANT,
            Scalar::all(0.0),
        )
        .map_err(cv_err("undistort: remap"))?;
        Ok(dst
            .data_bytes()
            .map_err(cv_err("undistort: read result"))?
            .to_vec())
    }
}

/// One-shot undistortion of a `height × width × 3` RGB8 (HWC) image. When
/// `width × height` (px) differs from the intrinsics' size, the intrinsics
/// are rescaled with [`CameraIntrinsics::scaled_to`]. For a video stream,
/// build an [`Undistorter`] once instead.
pub fn undistort_rgb(
    rgb: &[u8],
    width: u32,
    height: u32,
    intrinsics: &CameraIntrinsics,
) -> Result<Vec<u8>, CalibrationError> {
    let intr = if (width, height) == (intrinsics.width, intrinsics.height) {
        intrinsics.clone()
    } else {
        intrinsics.scaled_to(width, height)
    };
    Undistorter::new(&intr)?.apply(rgb)
}
