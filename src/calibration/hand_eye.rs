//! Hand-eye calibration (`AX = XB`) with OpenCV's `cv::calibrateHandEye`.
//!
//! Inputs are recorded pairs: the gripper (flange or TCP) pose in the robot
//! base, `T_base_gripper`, as the controller reports it, and the calibration
//! target pose in the camera, `T_camera_target`, e.g. from `cv::solvePnP` on a
//! checkerboard / ChArUco board.
//!
//! * [`HandEyeMode::EyeInHand`] (camera on the wrist, target fixed in the
//!   world): returns `X = T_gripper_camera` (maps camera-frame points to the
//!   gripper frame; the camera pose in the gripper frame). OpenCV's
//!   `R_cam2gripper, t_cam2gripper`.
//! * [`HandEyeMode::EyeToHand`] (camera fixed in the world, target held by
//!   the gripper): returns `X = T_base_camera` (maps camera-frame points to
//!   the base frame; what [`Calibration::camera_to_base`] holds). As OpenCV
//!   documents, this passes the inverted gripper poses `T_gripper_base` in
//!   place of `T_base_gripper`; OpenCV's output is then `cam2base`.
//!
//! [`Calibration::camera_to_base`]: super::Calibration::camera_to_base

use std::fmt::Write as _;
use std::path::Path;

use nalgebra::{Isometry3, Matrix3, Rotation3, Translation3, UnitQuaternion};
use opencv::calib3d::HandEyeCalibrationMethod;
use opencv::core::{Mat, MatTraitConst, Vector};
use serde::{Deserialize, Serialize};

use super::error::{cv_err, CalibrationError};
use super::types::Transform;

/// Minimum rotation angle (deg) of a relative gripper motion for it to count
/// towards the rotation-diversity check.
pub const MIN_MOTION_ROTATION_DEG: f64 = 2.0;
/// Minimum angle (deg) between the rotation axes of two relative gripper
/// motions: hand-eye calibration needs at least two motions with
/// non-parallel axes.
pub const MIN_AXIS_SEPARATION_DEG: f64 = 5.0;
/// Minimum number of pose pairs.
pub const MIN_PAIRS: usize = 3;

/// Where the camera is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandEyeMode {
    /// Camera on the gripper, target fixed: the result is `T_gripper_camera`.
    EyeInHand,
    /// Camera fixed, target on the gripper: the result is `T_base_camera`.
    EyeToHand,
}

impl HandEyeMode {
    /// `(parent, child)` frame names of the result.
    pub fn result_frames(self) -> (&'static str, &'static str) {
        match self {
            HandEyeMode::EyeInHand => ("gripper", "camera"),
            HandEyeMode::EyeToHand => ("base", "camera"),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            HandEyeMode::EyeInHand => "eye_in_hand",
            HandEyeMode::EyeToHand => "eye_to_hand",
        }
    }
}

/// Hand-eye solver (OpenCV `HandEyeCalibrationMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HandEyeMethod {
    /// Tsai & Lenz 1989 (OpenCV's default).
    #[default]
    Tsai,
    /// Park & Martin 1994.
    Park,
    /// Horaud & Dornaika 1995.
    Horaud,
    /// Andreff et al. 1999.
    Andreff,
    /// Daniilidis 1999 (dual quaternions).
    Daniilidis,
}

impl HandEyeMethod {
    fn to_opencv(self) -> HandEyeCalibrationMethod {
        match self {
            HandEyeMethod::Tsai => HandEyeCalibrationMethod::CALIB_HAND_EYE_TSAI,
            HandEyeMethod::Park => HandEyeCalibrationMethod::CALIB_HAND_EYE_PARK,
            HandEyeMethod::Horaud => HandEyeCalibrationMethod::CALIB_HAND_EYE_HORAUD,
            HandEyeMethod::Andreff => HandEyeCalibrationMethod::CALIB_HAND_EYE_ANDREFF,
            HandEyeMethod::Daniilidis => HandEyeCalibrationMethod::CALIB_HAND_EYE_DANIILIDIS,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            HandEyeMethod::Tsai => "tsai",
            HandEyeMethod::Park => "park",
            HandEyeMethod::Horaud => "horaud",
            HandEyeMethod::Andreff => "andreff",
            HandEyeMethod::Daniilidis => "daniilidis",
        }
    }
}

/// One recorded observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandEyePair {
    /// `T_base_gripper`: gripper pose in the robot base (m).
    pub gripper_in_base: Transform,
    /// `T_camera_target`: target pose in the camera frame (m).
    pub target_in_camera: Transform,
}

/// A file of recorded pairs (YAML, or JSON when the name ends in `.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandEyeFile {
    /// Camera mounting.
    pub mode: HandEyeMode,
    /// Solver (default `tsai`).
    #[serde(default)]
    pub method: HandEyeMethod,
    /// At least [`MIN_PAIRS`] pairs with diverse gripper rotations.
    pub pairs: Vec<HandEyePair>,
}

/// `AX = XB` consistency of a solution over all pairs of observations
/// `i < j`: `A = motion of the gripper`, `B = motion seen by the camera`, the
/// error is `(A·X)⁻¹ · (X·B)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HandEyeResiduals {
    /// Number of relative motions evaluated (`n·(n−1)/2`).
    pub motions: usize,
    /// Root-mean-square rotation error (deg).
    pub rotation_rms_deg: f64,
    /// Largest rotation error (deg).
    pub rotation_max_deg: f64,
    /// Root-mean-square translation error (m).
    pub translation_rms_m: f64,
    /// Largest translation error (m).
    pub translation_max_m: f64,
}

/// Result of [`hand_eye_from_file`].
#[derive(Debug, Clone, PartialEq)]
pub struct HandEyeResult {
    /// Camera mounting that was solved for.
    pub mode: HandEyeMode,
    /// Solver used.
    pub method: HandEyeMethod,
    /// Number of pose pairs used.
    pub pairs: usize,
    /// `T_gripper_camera` (eye-in-hand) or `T_base_camera` (eye-to-hand).
    pub transform: Transform,
    /// `AX = XB` residuals of `transform`.
    pub residuals: HandEyeResiduals,
}

const IN_MEMORY: &str = "<hand-eye input>";

/// Solves `AX = XB` with `cv::calibrateHandEye`; see the module docs for
/// what the returned transform is in each `mode`. Needs at least
/// [`MIN_PAIRS`] pairs and two relative gripper motions with rotation axes at
/// least [`MIN_AXIS_SEPARATION_DEG`] apart (each rotating at least
/// [`MIN_MOTION_ROTATION_DEG`]).
pub fn calibrate_hand_eye(
    gripper_poses_in_base: &[Transform],
    target_poses_in_camera: &[Transform],
    mode: HandEyeMode,
    method: HandEyeMethod,
) -> Result<Transform, CalibrationError> {
    calibrate_named(
        gripper_poses_in_base,
        target_poses_in_camera,
        mode,
        method,
        IN_MEMORY,
    )
}

fn calibrate_named(
    grippers: &[Transform],
    targets: &[Transform],
    mode: HandEyeMode,
    method: HandEyeMethod,
    file: &str,
) -> Result<Transform, CalibrationError> {
    let (a, b) = to_isometries(grippers, targets, mode, file)?;
    check_diversity(&a, file)?;

    let mut r_a = Vector::<Mat>::new();
    let mut t_a = Vector::<Mat>::new();
    let mut r_b = Vector::<Mat>::new();
    let mut t_b = Vector::<Mat>::new();
    for (ga, tb) in a.iter().zip(&b) {
        let (r, t) = to_cv(ga)?;
        r_a.push(r);
        t_a.push(t);
        let (r, t) = to_cv(tb)?;
        r_b.push(r);
        t_b.push(t);
    }
    let mut r_x = Mat::default();
    let mut t_x = Mat::default();
    opencv::calib3d::calibrate_hand_eye(
        &r_a,
        &t_a,
        &r_b,
        &t_b,
        &mut r_x,
        &mut t_x,
        method.to_opencv(),
    )
    .map_err(cv_err("calibrate_hand_eye"))?;

    let get = |m: &Mat, r: i32, c: i32| -> Result<f64, CalibrationError> {
        m.at_2d::<f64>(r, c)
            .copied()
            .map_err(cv_err("calibrate_hand_eye: read result"))
    };
    let mut rot = Matrix3::zeros();
    for r in 0..3 {
        for c in 0..3 {
            rot[(r, c)] = get(&r_x, r as i32, c as i32)?;
        }
    }
    let t = [get(&t_x, 0, 0)?, get(&t_x, 1, 0)?, get(&t_x, 2, 0)?];
    if rot.iter().chain(t.iter()).any(|v| !v.is_finite()) {
        return Err(CalibrationError::invalid(
            file,
            "pairs",
            "pose pairs from which OpenCV can solve AX = XB",
            "a non-finite solution (degenerate or inconsistent poses)",
        ));
    }
    let rotation = UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix(&rot));
    let iso = Isometry3::from_parts(Translation3::new(t[0], t[1], t[2]), rotation);
    let (parent, child) = mode.result_frames();
    Ok(Transform::from_isometry(&iso, parent, child))
}

/// `AX = XB` residuals of a solution `x` (see [`HandEyeResiduals`]).
pub fn hand_eye_residuals(
    gripper_poses_in_base: &[Transform],
    target_poses_in_camera: &[Transform],
    mode: HandEyeMode,
    x: &Transform,
) -> Result<HandEyeResiduals, CalibrationError> {
    let (a, b) = to_isometries(
        gripper_poses_in_base,
        target_poses_in_camera,
        mode,
        IN_MEMORY,
    )?;
    let x = x.isometry()?;
    let (mut n, mut sr, mut st, mut mr, mut mt) = (0usize, 0.0, 0.0, 0.0f64, 0.0f64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let am = a[i].inverse() * a[j];
            let bm = b[i] * b[j].inverse();
            let e = (am * x).inverse() * (x * bm);
            let rot = e.rotation.angle().to_degrees();
            let tr = e.translation.vector.norm();
            n += 1;
            sr += rot * rot;
            st += tr * tr;
            mr = mr.max(rot);
            mt = mt.max(tr);
        }
    }
    let div = n.max(1) as f64;
    Ok(HandEyeResiduals {
        motions: n,
        rotation_rms_deg: (sr / div).sqrt(),
        rotation_max_deg: mr,
        translation_rms_m: (st / div).sqrt(),
        translation_max_m: mt,
    })
}

/// Reads a pairs file (`{mode, method, pairs: [{gripper_in_base,
/// target_in_camera}, ...]}`; JSON when the name ends in `.json`, YAML
/// otherwise), solves and reports residuals. Errors name the file and key.
pub fn hand_eye_from_file(path: impl AsRef<Path>) -> Result<HandEyeResult, CalibrationError> {
    let path = path.as_ref();
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| CalibrationError::Io {
        file: file.clone(),
        action: "read",
        error,
    })?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let input: HandEyeFile = if is_json {
        serde_json::from_str(&text).map_err(|e| CalibrationError::Parse {
            file: file.clone(),
            format: "JSON",
            message: e.to_string(),
        })?
    } else {
        serde_yaml::from_str(&text).map_err(|e| CalibrationError::Parse {
            file: file.clone(),
            format: "YAML",
            message: e.to_string(),
        })?
    };
    let grippers: Vec<Transform> = input
        .pairs
        .iter()
        .map(|p| p.gripper_in_base.clone())
        .collect();
    let targets: Vec<Transform> = input
        .pairs
        .iter()
        .map(|p| p.target_in_camera.clone())
        .collect();
    let transform = calibrate_named(&grippers, &targets, input.mode, input.method, &file)?;
    let residuals = hand_eye_residuals(&grippers, &targets, input.mode, &transform)?;
    Ok(HandEyeResult {
        mode: input.mode,
        method: input.method,
        pairs: input.pairs.len(),
        transform,
        residuals,
    })
}

/// Entry point of `vw2 calibrate hand-eye`: solves the pairs in `poses`,
/// returns a human-readable report and, with `out`, writes the resulting
/// [`Transform`] as YAML (atomically: temporary file + rename).
pub fn run_hand_eye_cli(poses: &Path, out: Option<&Path>) -> anyhow::Result<String> {
    let result = hand_eye_from_file(poses)?;
    let iso = result.transform.isometry()?;
    let t = iso.translation.vector;
    let q = iso.rotation;
    let (roll, pitch, yaw) = iso.rotation.euler_angles();
    let r = &result.residuals;
    let mut s = String::new();
    let what = match result.mode {
        HandEyeMode::EyeInHand => {
            "T_gripper_camera (camera pose in the gripper frame; maps camera points to gripper points)"
        }
        HandEyeMode::EyeToHand => {
            "T_base_camera = camera_to_base (camera pose in the base frame; maps camera points to base points)"
        }
    };
    writeln!(
        s,
        "hand-eye calibration of {} ({}, method {}): {} pose pairs",
        poses.display(),
        result.mode.as_str(),
        result.method.as_str(),
        result.pairs
    )?;
    writeln!(s, "result: {what}")?;
    writeln!(
        s,
        "  translation (m):        [{:.6}, {:.6}, {:.6}]",
        t.x, t.y, t.z
    )?;
    writeln!(
        s,
        "  quaternion xyzw:        [{:.9}, {:.9}, {:.9}, {:.9}]",
        q.i, q.j, q.k, q.w
    )?;
    writeln!(
        s,
        "  roll/pitch/yaw (deg):   [{:.4}, {:.4}, {:.4}]  (R = Rz(yaw)·Ry(pitch)·Rx(roll))",
        roll.to_degrees(),
        pitch.to_degrees(),
        yaw.to_degrees()
    )?;
    writeln!(
        s,
        "AX = XB residuals over {} relative motions: rotation rms {:.4} deg (max {:.4} deg), translation rms {:.2} mm (max {:.2} mm)",
        r.motions,
        r.rotation_rms_deg,
        r.rotation_max_deg,
        r.translation_rms_m * 1e3,
        r.translation_max_m * 1e3
    )?;
    if let Some(out) = out {
        let mut yaml = String::new();
        writeln!(
            yaml,
            "# Hand-eye calibration written by `vw2 calibrate hand-eye`."
        )?;
        writeln!(
            yaml,
            "# Input: {} ({} pairs, {}, method {}).",
            poses.display(),
            result.pairs,
            result.mode.as_str(),
            result.method.as_str()
        )?;
        writeln!(yaml, "# This is {what}.")?;
        if result.mode == HandEyeMode::EyeToHand {
            writeln!(
                yaml,
                "# Paste it under `camera_to_base:` in calibration/<name>.yaml."
            )?;
        }
        writeln!(
            yaml,
            "# Residuals: rotation rms {:.4} deg, translation rms {:.2} mm; translation in m.",
            r.rotation_rms_deg,
            r.translation_rms_m * 1e3
        )?;
        yaml.push_str(&serde_yaml::to_string(&result.transform)?);
        super::write_atomically(out, yaml.as_bytes())?;
        writeln!(s, "wrote {}", out.display())?;
    }
    Ok(s)
}

/// `(A_i, B_i)`: (possibly inverted) gripper poses and target poses.
type PosePairs = (Vec<Isometry3<f64>>, Vec<Isometry3<f64>>);

/// Validates the inputs and returns `(A_i, B_i)`: the (possibly inverted)
/// gripper poses and the target poses as isometries.
fn to_isometries(
    grippers: &[Transform],
    targets: &[Transform],
    mode: HandEyeMode,
    file: &str,
) -> Result<PosePairs, CalibrationError> {
    if grippers.len() != targets.len() {
        return Err(CalibrationError::invalid(
            file,
            "pairs",
            "as many target poses as gripper poses",
            format!(
                "{} gripper poses and {} target poses",
                grippers.len(),
                targets.len()
            ),
        ));
    }
    if grippers.len() < MIN_PAIRS {
        return Err(CalibrationError::invalid(
            file,
            "pairs",
            format!("at least {MIN_PAIRS} pose pairs"),
            format!("{}", grippers.len()),
        ));
    }
    let mut a = Vec::with_capacity(grippers.len());
    let mut b = Vec::with_capacity(grippers.len());
    for (i, (g, t)) in grippers.iter().zip(targets).enumerate() {
        g.validate_named(file)
            .map_err(|e| e.under_key(&format!("pairs[{i}].gripper_in_base")))?;
        t.validate_named(file)
            .map_err(|e| e.under_key(&format!("pairs[{i}].target_in_camera")))?;
        let g = g.isometry()?;
        a.push(match mode {
            HandEyeMode::EyeInHand => g,
            HandEyeMode::EyeToHand => g.inverse(),
        });
        b.push(t.isometry()?);
    }
    Ok((a, b))
}

/// Errors unless two relative gripper motions rotate about axes at least
/// [`MIN_AXIS_SEPARATION_DEG`] apart.
fn check_diversity(a: &[Isometry3<f64>], file: &str) -> Result<(), CalibrationError> {
    let min_angle = MIN_MOTION_ROTATION_DEG.to_radians();
    let mut reference = None;
    let mut significant = 0usize;
    let mut best_sep = 0.0f64;
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let m = a[i].inverse() * a[j];
            let Some((axis, angle)) = m.rotation.axis_angle() else {
                continue;
            };
            if angle < min_angle {
                continue;
            }
            significant += 1;
            match reference {
                None => reference = Some(axis),
                Some(r) => {
                    let sep = r.dot(&axis).abs().min(1.0).acos().to_degrees();
                    best_sep = best_sep.max(sep);
                    if best_sep >= MIN_AXIS_SEPARATION_DEG {
                        return Ok(());
                    }
                }
            }
        }
    }
    Err(CalibrationError::invalid(
        file,
        "pairs",
        format!(
            "gripper rotations about at least two axes {MIN_AXIS_SEPARATION_DEG}° apart \
             (relative motions of ≥ {MIN_MOTION_ROTATION_DEG}°)"
        ),
        format!(
            "{significant} relative motions rotating ≥ {MIN_MOTION_ROTATION_DEG}°, \
             largest axis separation {best_sep:.2}°"
        ),
    ))
}

/// `(R 3×3, t 3×1)` as `CV_64F` matrices.
fn to_cv(iso: &Isometry3<f64>) -> Result<(Mat, Mat), CalibrationError> {
    let r = iso.rotation.to_rotation_matrix();
    let m = r.matrix();
    let rows = [
        [m[(0, 0)], m[(0, 1)], m[(0, 2)]],
        [m[(1, 0)], m[(1, 1)], m[(1, 2)]],
        [m[(2, 0)], m[(2, 1)], m[(2, 2)]],
    ];
    let t = iso.translation.vector;
    let r = Mat::from_slice_2d(&rows).map_err(cv_err("hand-eye input"))?;
    let t = Mat::from_slice_2d(&[[t.x], [t.y], [t.z]]).map_err(cv_err("hand-eye input"))?;
    Ok((r, t))
}
