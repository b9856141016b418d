//! YAML types of a calibration file (`calibration/<name>.yaml`) and their
//! validation.

use std::path::Path;

use nalgebra::{Isometry3, Matrix3, Point3, Rotation3, Translation3, UnitQuaternion, Vector3};
use opencv::core::{Mat, Point2d, Point3d, Vector};
use serde::{Deserialize, Serialize};

use super::error::{cv_err, CalibrationError};

/// Tolerance of the rotation checks: `|RᵀR − I|` (max entry), `|det R − 1|`
/// and `|‖q‖ − 1|` must all be at most this (dimensionless).
pub const ROTATION_TOLERANCE: f64 = 1e-6;

/// Distortion coefficient counts OpenCV accepts.
pub const VALID_DISTORTION_LENGTHS: [usize; 5] = [4, 5, 8, 12, 14];

/// Lens distortion model of [`CameraIntrinsics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DistortionModel {
    /// OpenCV's camera model (Brown–Conrady radial + tangential, optionally
    /// rational, thin-prism and tilt terms); the coefficient count selects
    /// the variant: `k1,k2,p1,p2[,k3[,k4,k5,k6[,s1,s2,s3,s4[,τx,τy]]]]`.
    /// Written `plumb_bob` as in ROS `CameraInfo`.
    #[default]
    PlumbBob,
}

/// Pinhole intrinsics of one camera in OpenCV conventions: pixel `(u, v)`
/// with `u` to the right and `v` down, origin at the centre of the top-left
/// pixel, `u = fx·x/z + cx`, `v = fy·y/z + cy` before distortion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraIntrinsics {
    /// Image width (px).
    pub width: u32,
    /// Image height (px).
    pub height: u32,
    /// Focal length along `u` (px).
    pub fx: f64,
    /// Focal length along `v` (px).
    pub fy: f64,
    /// Principal point `u` coordinate (px).
    pub cx: f64,
    /// Principal point `v` coordinate (px).
    pub cy: f64,
    /// Distortion coefficients in OpenCV order
    /// `k1, k2, p1, p2[, k3[, k4, k5, k6[, s1, s2, s3, s4[, τx, τy]]]]`
    /// (dimensionless; 4, 5, 8, 12 or 14 values; all zero = pinhole).
    pub distortion: Vec<f64>,
    /// Distortion model (only `plumb_bob`, OpenCV's model).
    #[serde(default)]
    pub model: DistortionModel,
}

impl CameraIntrinsics {
    /// A distortion-free pinhole camera of `width × height` px with focal
    /// lengths `fx`, `fy` (px) and principal point `(cx, cy)` (px).
    pub fn pinhole(width: u32, height: u32, fx: f64, fy: f64, cx: f64, cy: f64) -> Self {
        CameraIntrinsics {
            width,
            height,
            fx,
            fy,
            cx,
            cy,
            distortion: vec![0.0; 5],
            model: DistortionModel::PlumbBob,
        }
    }

    /// The 3×3 camera matrix `K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]` (px).
    pub fn camera_matrix(&self) -> Matrix3<f64> {
        Matrix3::new(self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0)
    }

    /// Whether every distortion coefficient is exactly zero (pure pinhole).
    pub fn is_distortion_free(&self) -> bool {
        self.distortion.iter().all(|&d| d == 0.0)
    }

    /// Checks focal lengths > 0, principal point inside the image, a valid
    /// distortion length and finite numbers. `file` labels errors; keys are
    /// relative to the intrinsics (e.g. `fx`).
    pub fn validate_named(&self, file: &str) -> Result<(), CalibrationError> {
        if self.width == 0 || self.height == 0 {
            return Err(CalibrationError::invalid(
                file,
                if self.width == 0 { "width" } else { "height" },
                "a positive image size in px",
                format!("{}x{}", self.width, self.height),
            ));
        }
        for (key, v) in [("fx", self.fx), ("fy", self.fy)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(CalibrationError::invalid(
                    file,
                    key,
                    "a positive finite focal length in px",
                    format!("{v}"),
                ));
            }
        }
        for (key, v, size) in [("cx", self.cx, self.width), ("cy", self.cy, self.height)] {
            if !(v.is_finite() && v >= 0.0 && v <= size as f64) {
                return Err(CalibrationError::invalid(
                    file,
                    key,
                    format!("a principal point inside the image, in [0, {size}] px"),
                    format!("{v}"),
                ));
            }
        }
        if !VALID_DISTORTION_LENGTHS.contains(&self.distortion.len()) {
            return Err(CalibrationError::invalid(
                file,
                "distortion",
                "4, 5, 8, 12 or 14 coefficients (OpenCV order k1,k2,p1,p2[,k3[,k4,k5,k6[,s1..s4[,tx,ty]]]])",
                format!("{} coefficients", self.distortion.len()),
            ));
        }
        if let Some(i) = self.distortion.iter().position(|d| !d.is_finite()) {
            return Err(CalibrationError::invalid(
                file,
                format!("distortion[{i}]"),
                "a finite coefficient",
                format!("{}", self.distortion[i]),
            ));
        }
        Ok(())
    }

    /// The same camera resampled to `width × height` px (e.g. a 640×480
    /// calibration used on a 320×240 stream): focal lengths scale with the
    /// image, the principal point maps pixel centres (`c' = (c + 0.5)·s − 0.5`);
    /// distortion coefficients are unchanged (they act on normalised
    /// coordinates).
    pub fn scaled_to(&self, width: u32, height: u32) -> CameraIntrinsics {
        let sx = width as f64 / self.width as f64;
        let sy = height as f64 / self.height as f64;
        CameraIntrinsics {
            width,
            height,
            fx: self.fx * sx,
            fy: self.fy * sy,
            cx: (self.cx + 0.5) * sx - 0.5,
            cy: (self.cy + 0.5) * sy - 0.5,
            distortion: self.distortion.clone(),
            model: self.model,
        }
    }

    /// Projects a point given in the camera frame (m; OpenCV convention:
    /// x right, y down, z forward) to pixel coordinates `(u, v)` (px),
    /// applying the lens distortion with `cv::projectPoints`. Returns
    /// `Ok(None)` for points at or behind the camera (`z ≤ 0`).
    pub fn project(&self, point_in_camera: [f64; 3]) -> Result<Option<[f64; 2]>, CalibrationError> {
        let [x, y, z] = point_in_camera;
        if z <= 0.0 {
            return Ok(None);
        }
        let object = Vector::<Point3d>::from_iter([Point3d::new(x, y, z)]);
        let mut image = Vector::<Point2d>::new();
        let zero = Mat::from_slice(&[0.0f64; 3]).map_err(cv_err("project"))?;
        opencv::calib3d::project_points_def(
            &object,
            &zero,
            &zero,
            &self.camera_matrix_mat()?,
            &self.distortion_mat()?,
            &mut image,
        )
        .map_err(cv_err("project"))?;
        let p = image.get(0).map_err(cv_err("project"))?;
        Ok(Some([p.x, p.y]))
    }

    /// `K` as a 3×3 `CV_64F` OpenCV matrix.
    pub(crate) fn camera_matrix_mat(&self) -> Result<Mat, CalibrationError> {
        Mat::from_slice_2d(&[
            [self.fx, 0.0, self.cx],
            [0.0, self.fy, self.cy],
            [0.0, 0.0, 1.0],
        ])
        .map_err(cv_err("camera matrix"))
    }

    /// Distortion coefficients as a 1×N `CV_64F` OpenCV matrix.
    pub(crate) fn distortion_mat(&self) -> Result<Mat, CalibrationError> {
        Mat::from_exact_iter(self.distortion.iter().copied()).map_err(cv_err("distortion"))
    }
}

/// A rigid transform `T_parent_child`: it maps points expressed in the
/// `child` frame to the `parent` frame, `p_parent = R · p_child + t`.
/// Equivalently it is the pose of `child` in `parent`.
///
/// The rotation is given by exactly one of `rotation_matrix` (row-major 3×3)
/// or `quaternion_xyzw` (Hamilton convention, scalar last, as in ROS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// Name of the frame the transform maps into (e.g. `base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Name of the frame the transform maps from (e.g. `camera`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    /// Rotation matrix `R` (rows; dimensionless, orthonormal, det +1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_matrix: Option<[[f64; 3]; 3]>,
    /// Rotation as a unit quaternion `[x, y, z, w]` (dimensionless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quaternion_xyzw: Option<[f64; 4]>,
    /// Translation `t` (m): the child origin expressed in the parent frame.
    pub translation: [f64; 3],
}

impl Transform {
    /// The identity transform between `parent` and `child`.
    pub fn identity(parent: &str, child: &str) -> Self {
        Transform::from_isometry(&Isometry3::identity(), parent, child)
    }

    /// Builds a transform from a rotation matrix (rows, dimensionless) and a
    /// translation (m). Frame names may be empty (then omitted).
    pub fn from_matrix(
        parent: &str,
        child: &str,
        rotation: [[f64; 3]; 3],
        translation: [f64; 3],
    ) -> Self {
        Transform {
            parent: non_empty(parent),
            child: non_empty(child),
            rotation_matrix: Some(rotation),
            quaternion_xyzw: None,
            translation,
        }
    }

    /// Builds a transform from an isometry (translation in m), written with
    /// a `rotation_matrix`. Frame names may be empty (then omitted).
    pub fn from_isometry(iso: &Isometry3<f64>, parent: &str, child: &str) -> Self {
        let r = iso.rotation.to_rotation_matrix();
        let m = r.matrix();
        let rows = [
            [m[(0, 0)], m[(0, 1)], m[(0, 2)]],
            [m[(1, 0)], m[(1, 1)], m[(1, 2)]],
            [m[(2, 0)], m[(2, 1)], m[(2, 2)]],
        ];
        let t = iso.translation.vector;
        Transform::from_matrix(parent, child, rows, [t.x, t.y, t.z])
    }

    /// Checks that exactly one rotation is given and that it is a proper
    /// rotation to [`ROTATION_TOLERANCE`], and that all numbers are finite.
    /// `file` labels errors; keys are relative to this transform.
    pub fn validate_named(&self, file: &str) -> Result<(), CalibrationError> {
        if let Some(i) = self.translation.iter().position(|v| !v.is_finite()) {
            return Err(CalibrationError::invalid(
                file,
                format!("translation[{i}]"),
                "a finite translation in m",
                format!("{}", self.translation[i]),
            ));
        }
        match (&self.rotation_matrix, &self.quaternion_xyzw) {
            (Some(_), Some(_)) => Err(CalibrationError::invalid(
                file,
                "rotation_matrix/quaternion_xyzw",
                "exactly one of `rotation_matrix` or `quaternion_xyzw`",
                "both",
            )),
            (None, None) => Err(CalibrationError::invalid(
                file,
                "rotation_matrix/quaternion_xyzw",
                "exactly one of `rotation_matrix` or `quaternion_xyzw`",
                "neither",
            )),
            (Some(rows), None) => check_rotation_matrix(rows)
                .map_err(|found| {
                    CalibrationError::invalid(
                        file,
                        "rotation_matrix",
                        format!("an orthonormal matrix with det +1 (to {ROTATION_TOLERANCE:e})"),
                        found,
                    )
                })
                .map(|_| ()),
            (None, Some(q)) => {
                let norm = q.iter().map(|v| v * v).sum::<f64>().sqrt();
                if !norm.is_finite() || (norm - 1.0).abs() > ROTATION_TOLERANCE {
                    Err(CalibrationError::invalid(
                        file,
                        "quaternion_xyzw",
                        format!(
                            "a unit quaternion [x, y, z, w] (norm 1 to {ROTATION_TOLERANCE:e})"
                        ),
                        format!("norm {norm:.9}"),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Validates (see [`Transform::validate_named`]) and returns the
    /// transform as an isometry (translation in m). A matrix within the
    /// tolerance is projected onto the nearest rotation; a quaternion is
    /// renormalised.
    pub fn isometry(&self) -> Result<Isometry3<f64>, CalibrationError> {
        self.validate_named("<transform>")?;
        let rotation = if let Some(rows) = &self.rotation_matrix {
            let m = rows_to_matrix(rows);
            UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix(&m))
        } else {
            let [x, y, z, w] = self.quaternion_xyzw.expect("validated");
            UnitQuaternion::from_quaternion(nalgebra::Quaternion::new(w, x, y, z))
        };
        let [tx, ty, tz] = self.translation;
        Ok(Isometry3::from_parts(
            Translation3::new(tx, ty, tz),
            rotation,
        ))
    }

    /// The rotation part as a rotation matrix (validated).
    pub fn rotation(&self) -> Result<Rotation3<f64>, CalibrationError> {
        Ok(self.isometry()?.rotation.to_rotation_matrix())
    }

    /// The inverse transform `T_child_parent` (frame names swapped).
    pub fn inverse(&self) -> Result<Transform, CalibrationError> {
        let inv = self.isometry()?.inverse();
        Ok(Transform::from_isometry(
            &inv,
            self.child.as_deref().unwrap_or(""),
            self.parent.as_deref().unwrap_or(""),
        ))
    }

    /// Maps a point from the child frame to the parent frame (m).
    pub fn transform_point(&self, point_in_child: [f64; 3]) -> Result<[f64; 3], CalibrationError> {
        let p = self.isometry()? * Point3::from(point_in_child);
        Ok([p.x, p.y, p.z])
    }

    /// The rotation as a unit quaternion `[x, y, z, w]` (dimensionless).
    pub fn quaternion(&self) -> Result<[f64; 4], CalibrationError> {
        let q = self.isometry()?.rotation;
        Ok([q.i, q.j, q.k, q.w])
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub(crate) fn rows_to_matrix(rows: &[[f64; 3]; 3]) -> Matrix3<f64> {
    Matrix3::from_fn(|r, c| rows[r][c])
}

/// `Ok(())` when `rows` is a proper rotation to [`ROTATION_TOLERANCE`],
/// otherwise a description of what was found.
fn check_rotation_matrix(rows: &[[f64; 3]; 3]) -> Result<(), String> {
    if rows.iter().flatten().any(|v| !v.is_finite()) {
        return Err("a non-finite entry".to_string());
    }
    let m = rows_to_matrix(rows);
    let det = m.determinant();
    let ortho = (m.transpose() * m - Matrix3::identity()).abs().max();
    if (det - 1.0).abs() > ROTATION_TOLERANCE || ortho > ROTATION_TOLERANCE {
        return Err(format!("det {det:.6}, max |RᵀR − I| = {ortho:.3e}"));
    }
    Ok(())
}

/// One camera calibration: `calibration/<name>.yaml`.
///
/// Frames: `base` is the robot base (the frame the arm's TCP poses are
/// reported in); `camera` is the camera's optical frame in OpenCV convention
/// (x right, y down, z forward along the optical axis); `flange` is the
/// robot's tool flange; `tool` is the tool centre point (TCP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Name of the camera (e.g. `static`, `wrist`, a serial number).
    pub camera_name: String,
    /// Intrinsics of the camera.
    pub intrinsics: CameraIntrinsics,
    /// `T_base_camera`: maps camera-frame points (m) to the base frame (m);
    /// equivalently the camera pose in the base frame. Only meaningful for a
    /// static (eye-to-hand) camera.
    pub camera_to_base: Transform,
    /// `T_flange_tool` (also accepted as `tcp_offset`): maps tool-frame
    /// points (m) to the flange frame; equivalently the TCP pose in the
    /// flange frame.
    #[serde(alias = "tcp_offset")]
    pub tool_to_flange: Transform,
    /// Free-form notes (how and when the calibration was produced).
    #[serde(default)]
    pub notes: String,
}

impl Calibration {
    /// Reads and validates `path` (YAML). Errors name the file and the key.
    pub fn load(path: impl AsRef<Path>) -> Result<Calibration, CalibrationError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| CalibrationError::Io {
            file: path.display().to_string(),
            action: "read",
            error,
        })?;
        let calib: Calibration =
            serde_yaml::from_str(&text).map_err(|e| CalibrationError::Parse {
                file: path.display().to_string(),
                format: "YAML",
                message: e.to_string(),
            })?;
        calib.validate().map_err(|e| e.in_file(path))?;
        Ok(calib)
    }

    /// Validates an in-memory calibration (errors labelled `<calibration>`).
    /// See [`Calibration::validate_named`].
    pub fn validate(&self) -> Result<(), CalibrationError> {
        self.validate_named("<calibration>")
    }

    /// Validates intrinsics (positive focal lengths, principal point inside
    /// the image, 4/5/8/12/14 distortion coefficients) and both transforms
    /// (orthonormal rotation with det +1 / unit quaternion, to
    /// [`ROTATION_TOLERANCE`]). `file` labels errors.
    pub fn validate_named(&self, file: &str) -> Result<(), CalibrationError> {
        if self.camera_name.trim().is_empty() {
            return Err(CalibrationError::invalid(
                file,
                "camera_name",
                "a non-empty camera name",
                "an empty string",
            ));
        }
        self.intrinsics
            .validate_named(file)
            .map_err(|e| e.under_key("intrinsics"))?;
        self.camera_to_base
            .validate_named(file)
            .map_err(|e| e.under_key("camera_to_base"))?;
        self.tool_to_flange
            .validate_named(file)
            .map_err(|e| e.under_key("tool_to_flange"))?;
        Ok(())
    }

    /// Writes the calibration as YAML to `path` atomically (temporary file
    /// in the same directory, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CalibrationError> {
        let path = path.as_ref();
        let text = serde_yaml::to_string(self).map_err(|e| CalibrationError::Parse {
            file: path.display().to_string(),
            format: "YAML",
            message: e.to_string(),
        })?;
        super::write_atomically(path, text.as_bytes())
    }

    /// Projects a point given in the base frame (m) into the image (px),
    /// with distortion. `Ok(None)` when the point is behind the camera.
    pub fn project_base_point(
        &self,
        point_in_base: [f64; 3],
    ) -> Result<Option<[f64; 2]>, CalibrationError> {
        let base_to_camera = self.camera_to_base.isometry()?.inverse();
        let p = base_to_camera * Point3::from(point_in_base);
        self.intrinsics.project([p.x, p.y, p.z])
    }

    /// The TCP pose in base `T_base_tool = T_base_flange · T_flange_tool`
    /// from a flange pose in base (as many controllers report it).
    pub fn tool_pose_from_flange(
        &self,
        flange_pose_in_base: &Transform,
    ) -> Result<Transform, CalibrationError> {
        let iso = flange_pose_in_base.isometry()? * self.tool_to_flange.isometry()?;
        Ok(Transform::from_isometry(&iso, "base", "tool"))
    }
}

/// The pose of a pinhole camera looking from `eye` (m) at `target` (m) with
/// the world `up` direction, in OpenCV camera convention (x right, y down,
/// z forward): returns `T_world_camera`. `z = normalize(target − eye)`,
/// `x = normalize(z × up)`, `y = z × x`.
pub fn look_at_camera_to_world(eye: [f64; 3], target: [f64; 3], up: [f64; 3]) -> Transform {
    let eye = Vector3::from(eye);
    let z = (Vector3::from(target) - eye).normalize();
    let x = z.cross(&Vector3::from(up)).normalize();
    let y = z.cross(&x);
    let r = Matrix3::from_columns(&[x, y, z]);
    let rows = [
        [r[(0, 0)], r[(0, 1)], r[(0, 2)]],
        [r[(1, 0)], r[(1, 1)], r[(1, 2)]],
        [r[(2, 0)], r[(2, 1)], r[(2, 2)]],
    ];
    Transform::from_matrix("base", "camera", rows, [eye.x, eye.y, eye.z])
}
