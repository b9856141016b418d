//! Tests of `vw2_policy::calibration`: YAML loading/validation, shipped
//! calibration files, undistortion, frame conversion and hand-eye.

use std::f64::consts::{FRAC_PI_2, PI};
use std::path::{Path, PathBuf};

use nalgebra::{Isometry3, Rotation3, Translation3, UnitQuaternion, Vector3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vw2_policy::calibration::{
    calibrate_hand_eye, convert_chunk, hand_eye_from_file, hand_eye_residuals,
    look_at_camera_to_world, run_hand_eye_cli, undistort_rgb, Calibration, CalibrationError,
    CameraIntrinsics, Frame, HandEyeFile, HandEyeMethod, HandEyeMode, HandEyePair, Transform,
    Undistorter,
};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------- files ---

#[test]
fn shipped_calibrations_load_and_validate() {
    for name in ["calvin_static", "example_real_arm"] {
        let path = repo_file(&format!("calibration/{name}.yaml"));
        let c = Calibration::load(&path).unwrap_or_else(|e| panic!("{e}"));
        c.validate().unwrap();
        assert!(!c.camera_name.is_empty());
    }
}

#[test]
fn calvin_look_at_projects_to_image_centre() {
    let c = Calibration::load(repo_file("calibration/calvin_static.yaml")).unwrap();
    assert_eq!((c.intrinsics.width, c.intrinsics.height), (200, 200));
    let fx = 100.0 / (5.0f64).to_radians().tan();
    assert!((c.intrinsics.fx - fx).abs() < 1e-6 && (c.intrinsics.fy - fx).abs() < 1e-6);
    let look_at = [-0.026, -0.030, 0.392];
    let [u, v] = c.project_base_point(look_at).unwrap().expect("in front");
    assert!(
        (u - 100.0).abs() <= 0.5 && (v - 100.0).abs() <= 0.5,
        "({u}, {v})"
    );
    // The camera looks down: a point above the look-at point is higher in the
    // image (smaller v); the camera origin is the look_from point.
    let [_, v_up] = c
        .project_base_point([-0.026, -0.030, 0.492])
        .unwrap()
        .unwrap();
    assert!(v_up < v);
    let origin = c.camera_to_base.transform_point([0.0; 3]).unwrap();
    assert!((Vector3::from(origin) - Vector3::new(2.87, -2.17, 2.56)).norm() < 1e-12);
    // The shipped matrix equals the look-at construction.
    let la = look_at_camera_to_world([2.87, -2.17, 2.56], look_at, [0.0, 0.0, 1.0]);
    let d = la.isometry().unwrap().inverse() * c.camera_to_base.isometry().unwrap();
    assert!(d.rotation.angle() < 1e-9 && d.translation.vector.norm() < 1e-12);
}

#[test]
fn example_real_arm_looks_at_workspace_centre() {
    let c = Calibration::load(repo_file("calibration/example_real_arm.yaml")).unwrap();
    let [u, v] = c.project_base_point([0.45, 0.0, 0.05]).unwrap().unwrap();
    assert!((u - c.intrinsics.cx).abs() < 1e-6 && (v - c.intrinsics.cy).abs() < 1e-6);
    let tool = c
        .tool_pose_from_flange(&Transform::identity("base", "flange"))
        .unwrap();
    assert!((tool.translation[2] - 0.15).abs() < 1e-12);
}

const VALID_YAML: &str = r#"
camera_name: cam
intrinsics:
  width: 640
  height: 480
  fx: 600.0
  fy: 600.0
  cx: 320.0
  cy: 240.0
  distortion: [0.0, 0.0, 0.0, 0.0]
  model: plumb_bob
camera_to_base:
  parent: base
  child: camera
  rotation_matrix: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
  translation: [0.5, 0.0, 1.0]
tool_to_flange:
  quaternion_xyzw: [0, 0, 0, 1]
  translation: [0, 0, 0.1]
"#;

fn load_str(yaml: &str) -> Result<Calibration, CalibrationError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ur5.yaml");
    std::fs::write(&path, yaml).unwrap();
    Calibration::load(&path)
}

fn load_err(yaml: &str) -> String {
    load_str(yaml).expect_err("expected an error").to_string()
}

#[test]
fn valid_yaml_loads_and_tcp_offset_alias_works() {
    let c = load_str(VALID_YAML).unwrap();
    assert_eq!(c.notes, "");
    let aliased = VALID_YAML.replace("tool_to_flange:", "tcp_offset:");
    assert_eq!(load_str(&aliased).unwrap(), c);
}

#[test]
fn reflection_is_rejected_with_file_key_expected_found() {
    let yaml = VALID_YAML.replace(
        "[[1, 0, 0], [0, 1, 0], [0, 0, 1]]",
        "[[1, 0, 0], [0, 1, 0], [0, 0, -1]]",
    );
    let e = load_err(&yaml);
    assert!(e.contains("ur5.yaml: camera_to_base.rotation_matrix: expected an orthonormal matrix with det +1 (to 1e-6), found det -1.000000"), "{e}");
}

#[test]
fn non_orthonormal_and_bad_quaternion_are_rejected() {
    let yaml = VALID_YAML.replace(
        "[[1, 0, 0], [0, 1, 0], [0, 0, 1]]",
        "[[1, 0.001, 0], [0, 1, 0], [0, 0, 1]]",
    );
    let e = load_err(&yaml);
    assert!(
        e.contains("camera_to_base.rotation_matrix") && e.contains("RᵀR"),
        "{e}"
    );

    let yaml = VALID_YAML.replace(
        "quaternion_xyzw: [0, 0, 0, 1]",
        "quaternion_xyzw: [0, 0, 0.1, 1]",
    );
    let e = load_err(&yaml);
    assert!(
        e.contains("tool_to_flange.quaternion_xyzw: expected a unit quaternion"),
        "{e}"
    );
    assert!(e.contains("found norm 1.004987562"), "{e}");

    let yaml = VALID_YAML.replace(
        "quaternion_xyzw: [0, 0, 0, 1]",
        "quaternion_xyzw: [0, 0, 0, 1]\n  rotation_matrix: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]",
    );
    let e = load_err(&yaml);
    assert!(
        e.contains("tool_to_flange.rotation_matrix/quaternion_xyzw") && e.contains("found both"),
        "{e}"
    );

    let yaml = VALID_YAML.replace("  quaternion_xyzw: [0, 0, 0, 1]\n", "");
    let e = load_err(&yaml);
    assert!(e.contains("found neither"), "{e}");
}

#[test]
fn bad_intrinsics_are_rejected() {
    let e = load_err(&VALID_YAML.replace("fx: 600.0", "fx: -600.0"));
    assert!(
        e.contains("intrinsics.fx: expected a positive finite focal length in px, found -600"),
        "{e}"
    );
    let e = load_err(&VALID_YAML.replace("cx: 320.0", "cx: 700.0"));
    assert!(
        e.contains(
            "intrinsics.cx: expected a principal point inside the image, in [0, 640] px, found 700"
        ),
        "{e}"
    );
    let e = load_err(&VALID_YAML.replace("[0.0, 0.0, 0.0, 0.0]", "[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]"));
    assert!(
        e.contains("intrinsics.distortion: expected 4, 5, 8, 12 or 14 coefficients")
            && e.contains("found 6 coefficients"),
        "{e}"
    );
    for n in [4, 5, 8, 12, 14] {
        let d = vec!["0.0"; n].join(", ");
        load_str(&VALID_YAML.replace("[0.0, 0.0, 0.0, 0.0]", &format!("[{d}]"))).unwrap();
    }
}

#[test]
fn unknown_and_missing_keys_are_rejected() {
    let e = load_err(&VALID_YAML.replace("  fx: 600.0", "  fx: 600.0\n  skew: 0.0"));
    assert!(
        e.contains("ur5.yaml: cannot parse as YAML") && e.contains("skew"),
        "{e}"
    );
    let e = load_err(&VALID_YAML.replace("model: plumb_bob", "model: fisheye"));
    assert!(e.contains("fisheye"), "{e}");
    let e = load_err(&VALID_YAML.replace("camera_name: cam\n", ""));
    assert!(e.contains("camera_name"), "{e}");
    let e = Calibration::load("/nonexistent/x.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.yaml: cannot read"), "{e}");
}

#[test]
fn save_and_reload_roundtrip() {
    let c = load_str(VALID_YAML).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.yaml");
    c.save(&path).unwrap();
    assert_eq!(Calibration::load(&path).unwrap(), c);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file left"
    );
}

#[test]
fn transform_inverse_and_quaternion_agree() {
    let iso = Isometry3::from_parts(
        Translation3::new(0.1, -0.2, 0.3),
        UnitQuaternion::from_euler_angles(0.3, -0.7, 2.0),
    );
    let t = Transform::from_isometry(&iso, "base", "camera");
    let inv = t.inverse().unwrap();
    assert_eq!(inv.parent.as_deref(), Some("camera"));
    let p = [0.4, 0.5, -0.6];
    let q = inv.transform_point(t.transform_point(p).unwrap()).unwrap();
    assert!((Vector3::from(p) - Vector3::from(q)).norm() < 1e-12);
    let [x, y, z, w] = t.quaternion().unwrap();
    let tq = Transform {
        rotation_matrix: None,
        quaternion_xyzw: Some([x, y, z, w]),
        ..t.clone()
    };
    let d = tq.isometry().unwrap().inverse() * iso;
    assert!(d.rotation.angle() < 1e-12 && d.translation.vector.norm() < 1e-12);
}

// ---------------------------------------------------------- undistortion ---

const W: u32 = 320;
const H: u32 = 240;

fn distorted_intrinsics() -> CameraIntrinsics {
    CameraIntrinsics {
        distortion: vec![-0.25, 0.08, 0.001, -0.0008, 0.0],
        ..CameraIntrinsics::pinhole(W, H, 300.0, 300.0, 159.5, 119.5)
    }
}

/// OpenCV's forward distortion (k1, k2, p1, p2, k3) of normalised coordinates.
fn distort_norm(d: &[f64], x: f64, y: f64) -> (f64, f64) {
    let (k1, k2, p1, p2, k3) = (d[0], d[1], d[2], d[3], d[4]);
    let r2 = x * x + y * y;
    let radial = 1.0 + k1 * r2 + k2 * r2 * r2 + k3 * r2 * r2 * r2;
    (
        x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x),
        y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y,
    )
}

/// Inverse of the distortion in pixel space: distorted pixel → ideal pixel.
fn undistort_px(intr: &CameraIntrinsics, ud: f64, vd: f64) -> (f64, f64) {
    let xd = (ud - intr.cx) / intr.fx;
    let yd = (vd - intr.cy) / intr.fy;
    let (mut x, mut y) = (xd, yd);
    for _ in 0..200 {
        let (dx, dy) = distort_norm(&intr.distortion, x, y);
        x -= dx - xd;
        y -= dy - yd;
    }
    let (cx, cy) = distort_norm(&intr.distortion, x, y);
    assert!((cx - xd).abs() < 1e-12 && (cy - yd).abs() < 1e-12);
    (x * intr.fx + intr.cx, y * intr.fy + intr.cy)
}

/// Renders the distorted image of `pattern` (defined on ideal pixels).
fn render_distorted(intr: &CameraIntrinsics, pattern: impl Fn(f64, f64) -> [f64; 3]) -> Vec<u8> {
    let mut img = vec![0u8; (W * H * 3) as usize];
    for v in 0..H {
        for u in 0..W {
            let (ui, vi) = undistort_px(intr, u as f64, v as f64);
            let px = pattern(ui, vi);
            for c in 0..3 {
                img[((v * W + u) * 3) as usize + c] = px[c].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    img
}

fn smooth_pattern(u: f64, v: f64) -> [f64; 3] {
    let tau = 2.0 * PI;
    [
        128.0 + 90.0 * (tau * u / 23.0).sin() * (tau * v / 17.0).cos(),
        128.0 + 90.0 * (tau * (u + v) / 29.0).cos(),
        128.0 + 90.0 * (tau * v / 19.0).sin(),
    ]
}

fn pattern_errors(img: &[u8]) -> (f64, f64) {
    let (mut sum, mut max, mut n) = (0.0, 0.0f64, 0usize);
    for v in 0..H {
        for u in 0..W {
            let p = smooth_pattern(u as f64, v as f64);
            for c in 0..3 {
                let e = (img[((v * W + u) * 3) as usize + c] as f64 - p[c].round()).abs();
                sum += e;
                max = max.max(e);
                n += 1;
            }
        }
    }
    (sum / n as f64, max)
}

#[test]
fn zero_distortion_is_identity() {
    let intr = CameraIntrinsics::pinhole(W, H, 300.0, 300.0, 159.5, 119.5);
    let mut rng = StdRng::seed_from_u64(1);
    let img: Vec<u8> = (0..W * H * 3).map(|_| rng.random()).collect();
    assert_eq!(Undistorter::new(&intr).unwrap().apply(&img).unwrap(), img);
    assert_eq!(undistort_rgb(&img, W, H, &intr).unwrap(), img);
    let four = CameraIntrinsics {
        distortion: vec![0.0; 4],
        ..intr
    };
    assert_eq!(undistort_rgb(&img, W, H, &four).unwrap(), img);
}

#[test]
fn undistortion_recovers_the_ideal_image() {
    let intr = distorted_intrinsics();
    let distorted = render_distorted(&intr, smooth_pattern);
    let (mean_before, _) = pattern_errors(&distorted);
    let und = Undistorter::new(&intr).unwrap();
    let restored = und.apply(&distorted).unwrap();
    let (mean_after, max_after) = pattern_errors(&restored);
    assert!(
        mean_before > 20.0,
        "distortion too weak for a meaningful test: {mean_before}"
    );
    assert!(
        mean_after < 1.5 && max_after < 10.0,
        "mean {mean_after}, max {max_after}"
    );
    // One-shot function agrees with the precomputed maps.
    assert_eq!(undistort_rgb(&distorted, W, H, &intr).unwrap(), restored);
    // A resized stream uses rescaled intrinsics.
    let half = intr.scaled_to(W / 2, H / 2);
    assert!((half.fx - 150.0).abs() < 1e-12 && (half.cx - 79.5).abs() < 1e-12);
    let small = vec![128u8; (W / 2 * H / 2 * 3) as usize];
    assert_eq!(
        undistort_rgb(&small, W / 2, H / 2, &intr).unwrap(),
        Undistorter::new(&half).unwrap().apply(&small).unwrap()
    );
    // Wrong buffer size is an error, not a panic.
    let e = und.apply(&distorted[1..]).unwrap_err().to_string();
    assert!(e.contains("expected 320x240x3 = 230400 bytes"), "{e}");
}

/// Fits `v = a·u + b` to the red-channel centroid of a thin line in each
/// column; returns the largest residual (px).
fn line_straightness(img: &[u8]) -> f64 {
    let mut pts = Vec::new();
    for u in 8..W - 8 {
        let (mut s, mut sv) = (0.0, 0.0);
        for v in 0..H {
            let i = img[((v * W + u) * 3) as usize] as f64;
            if i > 20.0 {
                s += i;
                sv += i * v as f64;
            }
        }
        if s > 0.0 {
            pts.push((u as f64, sv / s));
        }
    }
    assert!(pts.len() > 250);
    let n = pts.len() as f64;
    let (su, sv) = pts.iter().fold((0.0, 0.0), |a, p| (a.0 + p.0, a.1 + p.1));
    let (mu, mv) = (su / n, sv / n);
    let a = pts.iter().map(|p| (p.0 - mu) * (p.1 - mv)).sum::<f64>()
        / pts.iter().map(|p| (p.0 - mu).powi(2)).sum::<f64>();
    pts.iter()
        .map(|p| (p.1 - (mv + a * (p.0 - mu))).abs())
        .fold(0.0, f64::max)
}

#[test]
fn straight_lines_become_straight() {
    let intr = distorted_intrinsics();
    // A straight line near the top edge, where barrel distortion bends most.
    let (a, b) = (0.1, 30.0);
    let norm = (1.0f64 + a * a).sqrt();
    let line = |u: f64, v: f64| {
        let d = (v - (a * u + b)).abs() / norm;
        let i = 255.0 * (-(d / 1.2).powi(2)).exp();
        [i, i, i]
    };
    let distorted = render_distorted(&intr, line);
    let bent = line_straightness(&distorted);
    let restored = Undistorter::new(&intr).unwrap().apply(&distorted).unwrap();
    let straight = line_straightness(&restored);
    assert!(bent > 2.0, "distorted line should be curved: {bent}");
    assert!(straight < 0.3, "undistorted line residual {straight} px");
}

#[test]
fn projection_uses_distortion() {
    let intr = distorted_intrinsics();
    // A point projected with distortion lands where our forward model says.
    let p = [0.3, -0.2, 1.0];
    let [u, v] = intr.project(p).unwrap().unwrap();
    let (xd, yd) = distort_norm(&intr.distortion, 0.3, -0.2);
    assert!((u - (xd * 300.0 + 159.5)).abs() < 1e-9 && (v - (yd * 300.0 + 119.5)).abs() < 1e-9);
    assert!(intr.project([0.0, 0.0, -1.0]).unwrap().is_none());
}

// ------------------------------------------------------ frame conversion ---

fn calib_with_camera(rot: Rotation3<f64>) -> Calibration {
    let mut c = load_str(VALID_YAML).unwrap();
    c.camera_to_base = Transform::from_isometry(
        &Isometry3::from_parts(Translation3::new(0.3, 0.2, 1.0), rot.into()),
        "base",
        "camera",
    );
    c
}

fn random_chunk(rng: &mut StdRng, n: usize) -> Vec<[f64; 7]> {
    (0..n)
        .map(|_| {
            let mut a = [0.0; 7];
            for (i, x) in a.iter_mut().enumerate() {
                *x = match i {
                    0..=2 => rng.random_range(-0.05..0.05),
                    3..=5 => rng.random_range(-0.6..0.6),
                    _ => {
                        if rng.random::<bool>() {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                };
            }
            a
        })
        .collect()
}

fn assert_chunks_close(a: &[[f64; 7]], b: &[[f64; 7]], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for k in 0..7 {
            assert!((x[k] - y[k]).abs() <= tol, "{x:?} vs {y:?}");
        }
    }
}

#[test]
fn base_camera_base_round_trip_is_identity() {
    let mut rng = StdRng::seed_from_u64(3);
    let calvin = Calibration::load(repo_file("calibration/calvin_static.yaml")).unwrap();
    let tool = Transform::from_isometry(
        &Isometry3::from_parts(
            Translation3::new(0.4, 0.0, 0.3),
            UnitQuaternion::from_euler_angles(PI, 0.2, -0.4),
        ),
        "base",
        "tool",
    );
    let chunk = random_chunk(&mut rng, 16);
    for (from, to) in [
        (Frame::Base, Frame::Camera),
        (Frame::Base, Frame::Tool),
        (Frame::Camera, Frame::Tool),
    ] {
        let there = convert_chunk(&chunk, from, to, &calvin, &tool).unwrap();
        let back = convert_chunk(&there, to, from, &calvin, &tool).unwrap();
        assert_chunks_close(&back, &chunk, 1e-9);
        // Gripper passes through; translation norms are preserved.
        for (a, b) in chunk.iter().zip(&there) {
            assert_eq!(a[6], b[6]);
            let n = |x: &[f64; 7]| Vector3::new(x[0], x[1], x[2]).norm();
            assert!((n(a) - n(b)).abs() < 1e-12);
        }
    }
    // camera → tool equals camera → base → tool.
    let direct = convert_chunk(&chunk, Frame::Camera, Frame::Tool, &calvin, &tool).unwrap();
    let via = convert_chunk(&chunk, Frame::Camera, Frame::Base, &calvin, &tool).unwrap();
    let via = convert_chunk(&via, Frame::Base, Frame::Tool, &calvin, &tool).unwrap();
    assert_chunks_close(&direct, &via, 1e-9);
}

#[test]
fn ninety_degree_camera_maps_x_to_y() {
    let calib = calib_with_camera(Rotation3::from_axis_angle(&Vector3::z_axis(), FRAC_PI_2));
    let tool = Transform::identity("base", "tool");
    let chunk = [[0.01, 0.0, 0.0, 0.1, 0.0, 0.0, -1.0]];
    let out = convert_chunk(&chunk, Frame::Camera, Frame::Base, &calib, &tool).unwrap();
    assert_chunks_close(&out, &[[0.0, 0.01, 0.0, 0.0, 0.1, 0.0, -1.0]], 1e-12);
    // The inverse direction maps base y back to camera x.
    let back = convert_chunk(&out, Frame::Base, Frame::Camera, &calib, &tool).unwrap();
    assert_chunks_close(&back, &chunk, 1e-12);
    // A composed (non-small) rotation delta is conjugated exactly, not
    // component-wise: compare against the rotation built directly.
    let chunk = [[0.0, 0.0, 0.0, 0.4, -0.3, 0.9, 1.0]];
    let out = convert_chunk(&chunk, Frame::Camera, Frame::Base, &calib, &tool).unwrap();
    let r = Rotation3::from_axis_angle(&Vector3::z_axis(), FRAC_PI_2);
    let want = r * Rotation3::from_euler_angles(0.4, -0.3, 0.9) * r.inverse();
    let got = Rotation3::from_euler_angles(out[0][3], out[0][4], out[0][5]);
    assert!(want.angle_to(&got) < 1e-12);
    // Tool frame: a tool pointing down (180° about x) flips y and z.
    let down = Transform::from_isometry(
        &Isometry3::from_parts(
            Translation3::new(0.5, 0.0, 0.2),
            UnitQuaternion::from_axis_angle(&Vector3::x_axis(), PI),
        ),
        "base",
        "tool",
    );
    let out = convert_chunk(
        &[[0.0, 0.02, 0.03, 0.0, 0.0, 0.0, 1.0]],
        Frame::Tool,
        Frame::Base,
        &calib,
        &down,
    )
    .unwrap();
    assert_chunks_close(&out, &[[0.0, -0.02, -0.03, 0.0, 0.0, 0.0, 1.0]], 1e-12);
}

// -------------------------------------------------------------- hand-eye ---

fn random_rotation(rng: &mut StdRng, max_angle: f64) -> UnitQuaternion<f64> {
    let axis = Vector3::new(
        rng.random_range(-1.0..1.0),
        rng.random_range(-1.0..1.0),
        rng.random_range(-1.0..1.0),
    );
    let axis = nalgebra::Unit::new_normalize(axis);
    UnitQuaternion::from_axis_angle(&axis, rng.random_range(-max_angle..max_angle))
}

struct Synthetic {
    grippers: Vec<Transform>,
    targets: Vec<Transform>,
    x: Isometry3<f64>,
}

/// Random gripper poses with diverse rotations, a known `X` and exact (or
/// noisy) target poses. Eye-in-hand: `X = T_gripper_camera`, fixed target
/// `T_base_target`; eye-to-hand: `X = T_base_camera`, target fixed on the
/// gripper.
fn synthetic(mode: HandEyeMode, n: usize, noise_m: f64, noise_rad: f64, seed: u64) -> Synthetic {
    let mut rng = StdRng::seed_from_u64(seed);
    let (x, fixed) = match mode {
        HandEyeMode::EyeInHand => (
            Isometry3::from_parts(
                Translation3::new(0.05, -0.032, 0.081),
                UnitQuaternion::from_euler_angles(0.1, -0.15, 1.4),
            ),
            // T_base_target
            Isometry3::from_parts(
                Translation3::new(0.55, 0.05, 0.0),
                UnitQuaternion::from_euler_angles(0.0, 0.0, 0.3),
            ),
        ),
        HandEyeMode::EyeToHand => (
            Isometry3::from_parts(
                Translation3::new(1.1, -0.4, 0.6),
                UnitQuaternion::from_euler_angles(-2.1, 0.05, 2.4),
            ),
            // T_gripper_target
            Isometry3::from_parts(
                Translation3::new(0.0, 0.02, 0.12),
                UnitQuaternion::from_euler_angles(0.2, 0.0, 0.0),
            ),
        ),
    };
    let mut grippers = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..n {
        let g = Isometry3::from_parts(
            Translation3::new(
                rng.random_range(0.3..0.7),
                rng.random_range(-0.3..0.3),
                rng.random_range(0.15..0.5),
            ),
            UnitQuaternion::from_axis_angle(&Vector3::x_axis(), PI)
                * random_rotation(&mut rng, 0.6),
        );
        let mut c = match mode {
            HandEyeMode::EyeInHand => x.inverse() * g.inverse() * fixed,
            HandEyeMode::EyeToHand => x.inverse() * g * fixed,
        };
        if noise_m > 0.0 {
            c.translation.vector += Vector3::new(
                rng.random_range(-noise_m..noise_m),
                rng.random_range(-noise_m..noise_m),
                rng.random_range(-noise_m..noise_m),
            );
            c.rotation = random_rotation(&mut rng, noise_rad) * c.rotation;
        }
        grippers.push(Transform::from_isometry(&g, "base", "gripper"));
        targets.push(Transform::from_isometry(&c, "camera", "target"));
    }
    Synthetic {
        grippers,
        targets,
        x,
    }
}

fn pose_error(a: &Transform, b: &Isometry3<f64>) -> (f64, f64) {
    let d = a.isometry().unwrap().inverse() * b;
    (d.translation.vector.norm(), d.rotation.angle().to_degrees())
}

const METHODS: [HandEyeMethod; 5] = [
    HandEyeMethod::Tsai,
    HandEyeMethod::Park,
    HandEyeMethod::Horaud,
    HandEyeMethod::Andreff,
    HandEyeMethod::Daniilidis,
];

#[test]
fn hand_eye_exact_recovers_ground_truth() {
    for mode in [HandEyeMode::EyeInHand, HandEyeMode::EyeToHand] {
        let s = synthetic(mode, 12, 0.0, 0.0, 11);
        for method in METHODS {
            let x = calibrate_hand_eye(&s.grippers, &s.targets, mode, method).unwrap();
            let (dt, dr) = pose_error(&x, &s.x);
            assert!(
                dt < 1e-6 && dr.to_radians() < 1e-6,
                "{mode:?} {method:?}: {dt} m, {dr} deg"
            );
            let (parent, child) = mode.result_frames();
            assert_eq!(
                (x.parent.as_deref(), x.child.as_deref()),
                (Some(parent), Some(child))
            );
            let r = hand_eye_residuals(&s.grippers, &s.targets, mode, &x).unwrap();
            assert_eq!(r.motions, 66);
            assert!(
                r.rotation_max_deg < 1e-4 && r.translation_max_m < 1e-6,
                "{r:?}"
            );
        }
    }
}

#[test]
fn hand_eye_small_noise_within_1mm_and_0_1deg() {
    for mode in [HandEyeMode::EyeInHand, HandEyeMode::EyeToHand] {
        // ±0.3 mm and ±0.03° uniform noise on the target poses.
        let s = synthetic(mode, 25, 0.0003, 0.03f64.to_radians(), 12);
        for method in [
            HandEyeMethod::Tsai,
            HandEyeMethod::Park,
            HandEyeMethod::Horaud,
        ] {
            let x = calibrate_hand_eye(&s.grippers, &s.targets, mode, method).unwrap();
            let (dt, dr) = pose_error(&x, &s.x);
            assert!(
                dt < 1e-3 && dr < 0.1,
                "{mode:?} {method:?}: {dt} m, {dr} deg"
            );
            let r = hand_eye_residuals(&s.grippers, &s.targets, mode, &x).unwrap();
            assert!(
                r.rotation_rms_deg > 0.0 && r.rotation_rms_deg < 0.2,
                "{r:?}"
            );
            assert!(r.translation_rms_m < 5e-3, "{r:?}");
        }
    }
}

#[test]
fn hand_eye_rejects_too_few_or_degenerate_pairs() {
    let s = synthetic(HandEyeMode::EyeInHand, 12, 0.0, 0.0, 5);
    let e = calibrate_hand_eye(
        &s.grippers[..2],
        &s.targets[..2],
        HandEyeMode::EyeInHand,
        HandEyeMethod::Tsai,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pairs: expected at least 3 pose pairs, found 2"),
        "{e}"
    );
    let e = calibrate_hand_eye(
        &s.grippers,
        &s.targets[..5],
        HandEyeMode::EyeInHand,
        HandEyeMethod::Tsai,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("12 gripper poses and 5 target poses"), "{e}");

    // All gripper rotations about the same (vertical) axis: degenerate.
    let x = s.x;
    let w = Isometry3::translation(0.5, 0.0, 0.0);
    let grippers: Vec<Isometry3<f64>> = (0..6)
        .map(|i| {
            Isometry3::from_parts(
                Translation3::new(0.4 + 0.02 * i as f64, 0.1 * i as f64, 0.3),
                UnitQuaternion::from_axis_angle(&Vector3::z_axis(), 0.3 * i as f64),
            )
        })
        .collect();
    let targets: Vec<Transform> = grippers
        .iter()
        .map(|g| Transform::from_isometry(&(x.inverse() * g.inverse() * w), "", ""))
        .collect();
    let grippers: Vec<Transform> = grippers
        .iter()
        .map(|g| Transform::from_isometry(g, "", ""))
        .collect();
    let e = calibrate_hand_eye(
        &grippers,
        &targets,
        HandEyeMode::EyeInHand,
        HandEyeMethod::Park,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("expected gripper rotations about at least two axes"),
        "{e}"
    );
    assert!(e.contains("largest axis separation 0.00°"), "{e}");
}

fn write_pairs_file(
    dir: &Path,
    name: &str,
    mode: HandEyeMode,
    method: HandEyeMethod,
    s: &Synthetic,
) -> PathBuf {
    let file = HandEyeFile {
        mode,
        method,
        pairs: s
            .grippers
            .iter()
            .zip(&s.targets)
            .map(|(g, t)| HandEyePair {
                gripper_in_base: g.clone(),
                target_in_camera: Transform {
                    // Exercise the quaternion form as well.
                    rotation_matrix: None,
                    quaternion_xyzw: Some(t.quaternion().unwrap()),
                    ..t.clone()
                },
            })
            .collect(),
    };
    let path = dir.join(name);
    let text = if name.ends_with(".json") {
        serde_json::to_string_pretty(&file).unwrap()
    } else {
        serde_yaml::to_string(&file).unwrap()
    };
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn hand_eye_from_yaml_and_json_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = synthetic(HandEyeMode::EyeToHand, 10, 0.0, 0.0, 21);
    for name in ["pairs.yaml", "pairs.json"] {
        let path = write_pairs_file(
            dir.path(),
            name,
            HandEyeMode::EyeToHand,
            HandEyeMethod::Daniilidis,
            &s,
        );
        let r = hand_eye_from_file(&path).unwrap();
        assert_eq!(
            (r.mode, r.method, r.pairs),
            (HandEyeMode::EyeToHand, HandEyeMethod::Daniilidis, 10)
        );
        let (dt, dr) = pose_error(&r.transform, &s.x);
        assert!(dt < 1e-6 && dr < 1e-4, "{dt} {dr}");
        assert_eq!(r.residuals.motions, 45);
    }
    // Method defaults to tsai; a bad pose names the pair and key.
    let text = std::fs::read_to_string(dir.path().join("pairs.yaml"))
        .unwrap()
        .replace("method: daniilidis\n", "");
    let path = dir.path().join("default.yaml");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(
        hand_eye_from_file(&path).unwrap().method,
        HandEyeMethod::Tsai
    );

    let mut bad = HandEyeFile {
        mode: HandEyeMode::EyeInHand,
        method: HandEyeMethod::Park,
        pairs: s
            .grippers
            .iter()
            .zip(&s.targets)
            .map(|(g, t)| HandEyePair {
                gripper_in_base: g.clone(),
                target_in_camera: t.clone(),
            })
            .collect(),
    };
    bad.pairs[3]
        .gripper_in_base
        .rotation_matrix
        .as_mut()
        .unwrap()[0][0] = 1.5;
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, serde_yaml::to_string(&bad).unwrap()).unwrap();
    let e = hand_eye_from_file(&path).unwrap_err().to_string();
    assert!(
        e.contains(
            "bad.yaml: pairs[3].gripper_in_base.rotation_matrix: expected an orthonormal matrix"
        ),
        "{e}"
    );

    let path = dir.path().join("unknown.yaml");
    std::fs::write(&path, "mode: eye_on_hand\npairs: []\n").unwrap();
    let e = hand_eye_from_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("unknown.yaml: cannot parse as YAML") && e.contains("eye_on_hand"),
        "{e}"
    );
}

#[test]
fn hand_eye_cli_reports_and_writes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let s = synthetic(HandEyeMode::EyeToHand, 15, 0.0002, 0.02f64.to_radians(), 31);
    let poses = write_pairs_file(
        dir.path(),
        "poses.yaml",
        HandEyeMode::EyeToHand,
        HandEyeMethod::Park,
        &s,
    );
    let out = dir.path().join("camera_to_base.yaml");
    let report = run_hand_eye_cli(&poses, Some(&out)).unwrap();
    assert!(
        report.contains("eye_to_hand, method park): 15 pose pairs"),
        "{report}"
    );
    assert!(
        report.contains("camera_to_base") && report.contains("AX = XB residuals over 105"),
        "{report}"
    );
    assert!(report.contains("wrote "), "{report}");
    let written: Transform = serde_yaml::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    written.validate_named("out").unwrap();
    assert_eq!(written.parent.as_deref(), Some("base"));
    let (dt, dr) = pose_error(&written, &s.x);
    assert!(dt < 1e-3 && dr < 0.1, "{dt} m {dr} deg");
    // Only the output and the input remain (no temp file).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["camera_to_base.yaml", "poses.yaml"]);
    // Without `out` nothing is written.
    let report = run_hand_eye_cli(&poses, None).unwrap();
    assert!(!report.contains("wrote "));
    // A missing input names the file.
    let e = run_hand_eye_cli(&dir.path().join("missing.yaml"), None).unwrap_err();
    assert!(
        format!("{e:#}").contains("missing.yaml: cannot read"),
        "{e:#}"
    );
}
