//! Camera and robot calibration: intrinsics, extrinsics, undistortion,
//! frame conversion of action chunks and hand-eye calibration.
//!
//! Conventions used throughout (units in every doc comment):
//! * lengths in metres (m), angles in radians (rad) unless a name says `deg`,
//!   image coordinates in pixels (px);
//! * a [`Transform`] named `a_to_b` is `T_b_a`: it maps points expressed in
//!   frame `a` to frame `b` (`p_b = R·p_a + t`), i.e. it is the pose of `a`
//!   in `b`;
//! * camera frames follow OpenCV: x right, y down, z forward (optical axis);
//! * calibration files live in `calibration/<name>.yaml` (see
//!   `calibration/example_real_arm.yaml` for a documented example).
//!
//! Modules: [`types`] (YAML schema, loading, validation), [`undistort`]
//! (OpenCV remap-based undistortion), [`frames`] (re-expressing relative
//! action chunks), [`hand_eye`] (`cv::calibrateHandEye` and the CLI entry).

pub mod error;
pub mod frames;
pub mod hand_eye;
pub mod types;
pub mod undistort;

use std::path::Path;

pub use error::CalibrationError;
pub use frames::{convert_chunk, rotate_action, Frame, ACTION_DIM};
pub use hand_eye::{
    calibrate_hand_eye, hand_eye_from_file, hand_eye_residuals, run_hand_eye_cli, HandEyeFile,
    HandEyeMethod, HandEyeMode, HandEyePair, HandEyeResiduals, HandEyeResult,
};
pub use types::{
    look_at_camera_to_world, Calibration, CameraIntrinsics, DistortionModel, Transform,
    ROTATION_TOLERANCE, VALID_DISTORTION_LENGTHS,
};
pub use undistort::{undistort_rgb, Undistorter};

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory is written, synced and renamed over `path`, so readers see
/// either the old or the new content, never a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CalibrationError> {
    crate::base::fs::write_atomic_io(path, bytes).map_err(|error| CalibrationError::Io {
        file: path.display().to_string(),
        action: "write",
        error,
    })
}
