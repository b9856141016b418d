//! Message ↔ runtime conversions of the ROS 2 adapter, without ROS
//! (`cargo test --features ros2-check --test ros_messages`).
//!
//! Every message is built field by field: r2r's `Default` impls call the ROS C
//! libraries, which are not linked here.
#![cfg(feature = "ros2")]

use std::f64::consts::PI;

use nalgebra::{Rotation3, Vector3};
use r2r::builtin_interfaces::msg::Time;
use r2r::geometry_msgs::msg::{Point, Pose, PoseStamped, Quaternion};
use r2r::sensor_msgs::msg::{CameraInfo, Image, JointState, RegionOfInterest};
use r2r::std_msgs::msg::Header;
use vw2_policy::calibration::{CameraIntrinsics, Transform};
use vw2_policy::io::robot::Encoding;
use vw2_policy::io::RgbImage;
use vw2_policy::ros::convert::*;
use vw2_policy::ros::params::TwistUnits;
use vw2_policy::runtime::metrics::Summary;
use vw2_policy::runtime::RunReport;
use vw2_policy::safety::{CommandKind, GripperState, SafeCommand, SafetyConfig, TcpPose};

fn hdr(sec: i32, nanosec: u32, frame: &str) -> Header {
    Header {
        stamp: Time { sec, nanosec },
        frame_id: frame.into(),
    }
}

fn image(encoding: &str, width: u32, height: u32, step: u32, len: usize) -> Image {
    Image {
        header: hdr(12, 500_000_000, "camera"),
        height,
        width,
        encoding: encoding.into(),
        is_bigendian: 0,
        step,
        data: (0..len).map(|i| (i % 251) as u8).collect(),
    }
}

fn move_cmd() -> SafeCommand {
    SafeCommand {
        t: 3.0,
        kind: CommandKind::Move,
        target: TcpPose::new([0.4, 0.0, 0.3], [PI, 0.0, 0.0]),
        linear_velocity: Vector3::new(0.1, -0.2, 0.05),
        angular_velocity: Vector3::new(0.0, 0.0, 0.3),
        gripper: GripperState::Close,
    }
}

fn hold_cmd() -> SafeCommand {
    SafeCommand {
        kind: CommandKind::Hold,
        linear_velocity: Vector3::zeros(),
        angular_velocity: Vector3::zeros(),
        ..move_cmd()
    }
}

fn speed() -> TwistSettings {
    TwistSettings::new(
        TwistUnits::Speed,
        1.0,
        1.0,
        0.0,
        &SafetyConfig::calvin_default(),
    )
}

// ------------------------------------------------------------------ images

#[test]
fn images_of_every_accepted_encoding_convert() {
    for (enc, ch, want) in [
        ("rgb8", 3, Encoding::Rgb8),
        ("bgr8", 3, Encoding::Bgr8),
        ("mono8", 1, Encoding::Mono8),
    ] {
        let m = image(enc, 4, 3, 4 * ch, 3 * 4 * ch as usize);
        let f = image_to_raw_frame(&m).unwrap();
        assert_eq!(
            (f.encoding, f.width, f.height, f.step),
            (want, 4, 3, 4 * ch as usize)
        );
        assert_eq!(f.data, m.data);
    }
    // Row padding (step > width·channels) is accepted; is_bigendian does not matter for 8-bit data.
    let mut m = image("rgb8", 4, 3, 16, 48);
    m.is_bigendian = 1;
    assert_eq!(image_to_raw_frame(&m).unwrap().step, 16);
}

#[test]
fn bad_images_are_refused_clearly() {
    let err = |m: Image| image_to_raw_frame(&m).unwrap_err().to_string();
    let e = err(image("yuv422", 4, 3, 8, 24));
    assert!(
        e.contains("encoding")
            && e.contains("'yuv422' is not supported")
            && e.contains("rgb8, bgr8 or mono8"),
        "{e}"
    );
    let e = err(image("16UC1", 4, 3, 8, 24));
    assert!(e.contains("'16UC1' is not supported"), "{e}");
    // step shorter than a row
    let e = err(image("rgb8", 4, 3, 11, 33));
    assert!(
        e.contains("image.step: expected ≥ width·channels = 12, found 11"),
        "{e}"
    );
    // short data
    let e = err(image("rgb8", 4, 3, 12, 35));
    assert!(
        e.contains("image.data: expected height·step = 36 bytes, found 35"),
        "{e}"
    );
    // width×height that does not match the data (a 4×4 header on a 4×3 buffer)
    let e = err(image("rgb8", 4, 4, 12, 36));
    assert!(
        e.contains("image.data: expected height·step = 48 bytes, found 36"),
        "{e}"
    );
    // empty
    let e = err(image("mono8", 0, 3, 0, 0));
    assert!(e.contains("expected a non-empty image"), "{e}");
    let e = err(image("mono8", 4, 0, 4, 0));
    assert!(e.contains("expected a non-empty image"), "{e}");
    // the message names the image
    assert!(e.contains("sensor_msgs/Image"), "{e}");
}

#[test]
fn strip_becomes_an_rgb8_image() {
    let img = RgbImage {
        height: 2,
        width: 6,
        data: (0..36).collect(),
    };
    let m = strip_to_image(&img, Time { sec: 5, nanosec: 7 }, "imagined").unwrap();
    assert_eq!(
        (
            m.height,
            m.width,
            m.step,
            m.encoding.as_str(),
            m.is_bigendian
        ),
        (2, 6, 18, "rgb8", 0)
    );
    assert_eq!(m.data, img.data);
    assert_eq!(
        (
            m.header.stamp.sec,
            m.header.stamp.nanosec,
            m.header.frame_id.as_str()
        ),
        (5, 7, "imagined")
    );
    // and it reads back as the same frame
    let back = image_to_raw_frame(&m).unwrap();
    assert_eq!(
        (back.encoding, back.width, back.height),
        (Encoding::Rgb8, 6, 2)
    );
    let bad = RgbImage {
        height: 2,
        width: 6,
        data: vec![0; 35],
    };
    assert!(strip_to_image(&bad, Time { sec: 0, nanosec: 0 }, "")
        .unwrap_err()
        .to_string()
        .contains("expected height·width·3 = 36"));
}

// ------------------------------------------------------------------ time

#[test]
fn stamps_and_runtime_clock() {
    assert_eq!(
        stamp_to_seconds(&Time {
            sec: 12,
            nanosec: 500_000_000
        }),
        12.5
    );
    let t = seconds_to_stamp(12.25);
    assert_eq!((t.sec, t.nanosec), (12, 250_000_000));
    let t = seconds_to_stamp(1.999_999_999_9);
    assert_eq!((t.sec, t.nanosec), (2, 0));
    let t = seconds_to_stamp(-3.0);
    assert_eq!((t.sec, t.nanosec), (0, 0));
    let t = seconds_to_stamp(f64::NAN);
    assert_eq!((t.sec, t.nanosec), (0, 0));
    assert!(stamp_is_zero(&Time { sec: 0, nanosec: 0 }));
    assert!(!stamp_is_zero(&Time { sec: 0, nanosec: 1 }));
    let d = seconds_to_duration(0.1);
    assert_eq!((d.sec, d.nanosec), (0, 100_000_000));
    // A frame stamped 40 ms ago on the ROS clock is 40 ms old on the runtime clock.
    let t = frame_time_on_runtime_clock(Some(99.96), 100.0, 5.0);
    assert!((t - 4.96).abs() < 1e-9);
    // Stamped in the future: stays in the future (the safety layer holds on it).
    assert!(frame_time_on_runtime_clock(Some(100.5), 100.0, 5.0) > 5.0);
    // No stamp: the time of receipt.
    assert_eq!(frame_time_on_runtime_clock(None, 100.0, 5.0), 5.0);
}

// ------------------------------------------------------------------ proprioception

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn joint_state(n: &[&str], pos: &[f64]) -> JointState {
    JointState {
        header: hdr(1, 0, ""),
        name: names(n),
        position: pos.to_vec(),
        velocity: vec![],
        effort: vec![],
    }
}

#[test]
fn joint_states_become_proprio() {
    let arm = names(&["j1", "j2", "j3"]);
    let fingers = names(&["f1", "f2"]);
    // Order follows joint_names, not the message.
    let m = joint_state(
        &["f2", "j3", "j1", "f1", "j2", "other"],
        &[0.01, 0.3, 0.1, 0.02, 0.2, 9.0],
    );
    let s = joint_state_to_proprio(&m, &arm, &fingers).unwrap();
    assert_eq!(s.arm, Some(vec![0.1, 0.2, 0.3]));
    assert!((s.gripper_width.unwrap() - 0.03).abs() < 1e-12);
    // Arm and gripper may publish separately.
    let s =
        joint_state_to_proprio(&joint_state(&["f1", "f2"], &[0.01, 0.01]), &arm, &fingers).unwrap();
    assert_eq!(s.arm, None);
    assert!((s.gripper_width.unwrap() - 0.02).abs() < 1e-12);
    let s =
        joint_state_to_proprio(&joint_state(&["j1", "j2", "j3"], &[0.0; 3]), &arm, &[]).unwrap();
    assert_eq!((s.arm, s.gripper_width), (Some(vec![0.0; 3]), None));
    // A NaN in a joint nobody asked for is ignored.
    assert!(joint_state_to_proprio(
        &joint_state(&["j1", "j2", "j3", "x"], &[0.0, 0.0, 0.0, f64::NAN]),
        &arm,
        &[]
    )
    .is_ok());
}

#[test]
fn bad_joint_states_are_refused_with_the_joint_name() {
    let arm = names(&["j1", "j2", "j3"]);
    let err = |m: JointState| {
        joint_state_to_proprio(&m, &arm, &names(&["f1"]))
            .unwrap_err()
            .to_string()
    };
    let e = err(joint_state(&["j1", "j2", "j3"], &[0.0, f64::NAN, 0.0]));
    assert!(
        e.contains("joint `j2`: expected a finite position, found NaN"),
        "{e}"
    );
    let e = err(joint_state(&["j1", "j2", "j3"], &[0.0, 0.0, f64::INFINITY]));
    assert!(
        e.contains("joint `j3`: expected a finite position, found inf"),
        "{e}"
    );
    let e = err(joint_state(
        &["j1", "j2", "j3", "f1"],
        &[0.0, 0.0, 0.0, f64::NEG_INFINITY],
    ));
    assert!(e.contains("joint `f1`"), "{e}");
    let e = err(joint_state(&["j1", "j3"], &[0.0, 0.0]));
    assert!(e.contains("arm joints missing: j2"), "{e}");
    let e = err(joint_state(&["j1", "j2", "j3"], &[0.0, 0.0]));
    assert!(
        e.contains("one position per name (3 names), found 2 positions"),
        "{e}"
    );
    let e = err(joint_state(&["a", "b"], &[0.0, 0.0]));
    assert!(
        e.contains("none of the configured joints (j1, j2, j3, f1)"),
        "{e}"
    );
}

fn pose(p: [f64; 3], q: [f64; 4]) -> PoseStamped {
    PoseStamped {
        header: hdr(1, 0, "base"),
        pose: Pose {
            position: Point {
                x: p[0],
                y: p[1],
                z: p[2],
            },
            orientation: Quaternion {
                x: q[0],
                y: q[1],
                z: q[2],
                w: q[3],
            },
        },
    }
}

#[test]
fn poses_become_tcp_poses() {
    // Gripper pointing down (roll = π) and yawed by 0.5 rad: q = Rz(0.5)·Rx(π).
    let r = Rotation3::from_euler_angles(PI, 0.0, 0.5);
    let q = nalgebra::UnitQuaternion::from_rotation_matrix(&r);
    let p = pose_to_tcp(&pose([0.4, -0.1, 0.3], [q.i, q.j, q.k, q.w])).unwrap();
    assert!((p.position - Vector3::new(0.4, -0.1, 0.3)).norm() < 1e-12);
    let back = Rotation3::from_euler_angles(p.euler[0], p.euler[1], p.euler[2]);
    assert!((back.matrix() - r.matrix()).norm() < 1e-9);
    assert!((p.euler[2] - 0.5).abs() < 1e-9 || (p.euler[0].abs() - PI).abs() < 1e-9);

    let e = pose_to_tcp(&pose([0.0, f64::NAN, 0.0], [0.0, 0.0, 0.0, 1.0]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pose.position.y: expected a finite value, found NaN"),
        "{e}"
    );
    let e = pose_to_tcp(&pose([0.0; 3], [0.0, 0.0, 0.0, 0.0]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected a unit quaternion, found norm 0"),
        "{e}"
    );
}

#[test]
fn robot_obs_has_calvin_layout() {
    let tcp = TcpPose::new([0.1, 0.2, 0.3], [3.0, 0.1, -0.2]);
    let v = robot_obs_from(&tcp, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.07, -1.0);
    assert_eq!(v.len(), 15);
    assert_eq!(&v[..7], &[0.1, 0.2, 0.3, 3.0, 0.1, -0.2, 0.07]);
    assert_eq!(
        &v[7..14],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0],
        "6-joint arms are zero-padded"
    );
    assert_eq!(v[14], -1.0);
}

#[test]
fn flange_poses_become_tool_poses() {
    let mut calib = vw2_policy::calibration::Calibration::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/calibration/example_real_arm.yaml"
    ))
    .unwrap();
    // Tool 0.1 m along the flange's z axis.
    calib.tool_to_flange = Transform::from_matrix(
        "flange",
        "tool",
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        [0.0, 0.0, 0.1],
    );
    // Flange pointing down (roll = π): the tool is 0.1 m below it.
    let tool = flange_pose_to_tool(&calib, &TcpPose::new([0.5, 0.0, 0.4], [PI, 0.0, 0.0])).unwrap();
    assert!(
        (tool.position - Vector3::new(0.5, 0.0, 0.3)).norm() < 1e-9,
        "{:?}",
        tool.position
    );
}

// ------------------------------------------------------------------ camera info

fn camera_info(w: u32, h: u32, k: Vec<f64>, d: Vec<f64>, model: &str) -> CameraInfo {
    CameraInfo {
        header: hdr(1, 0, "camera"),
        height: h,
        width: w,
        distortion_model: model.into(),
        d,
        k,
        r: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p: vec![0.0; 12],
        binning_x: 0,
        binning_y: 0,
        roi: RegionOfInterest {
            x_offset: 0,
            y_offset: 0,
            height: 0,
            width: 0,
            do_rectify: false,
        },
    }
}

#[test]
fn camera_info_is_checked_against_the_calibration() {
    let k = vec![600.0, 0.0, 320.0, 0.0, 600.0, 240.0, 0.0, 0.0, 1.0];
    let cam =
        camera_info_to_intrinsics(&camera_info(640, 480, k.clone(), vec![0.0; 5], "plumb_bob"))
            .unwrap();
    assert_eq!(
        (cam.fx, cam.fy, cam.cx, cam.cy, cam.width),
        (600.0, 600.0, 320.0, 240.0, 640)
    );
    let calib = CameraIntrinsics::pinhole(640, 480, 600.0, 600.0, 320.0, 240.0);
    assert_eq!(intrinsics_mismatch(&calib, &cam, 0.02), None);
    // A half-resolution stream of the same camera agrees after scaling.
    let half = camera_info_to_intrinsics(&camera_info(
        320,
        240,
        vec![300.0, 0.0, 159.75, 0.0, 300.0, 119.75, 0.0, 0.0, 1.0],
        vec![],
        "",
    ))
    .unwrap();
    assert_eq!(intrinsics_mismatch(&calib, &half, 0.02), None);
    let other = CameraIntrinsics::pinhole(640, 480, 500.0, 600.0, 320.0, 240.0);
    let m = intrinsics_mismatch(&other, &cam, 0.02).unwrap();
    assert!(
        m.contains("fx: calibration 500.00 px, camera_info 600.00 px"),
        "{m}"
    );

    let e = camera_info_to_intrinsics(&camera_info(640, 480, vec![1.0; 4], vec![], "plumb_bob"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CameraInfo.k: expected 9 values, found 4"),
        "{e}"
    );
    let e = camera_info_to_intrinsics(&camera_info(
        640,
        480,
        k.clone(),
        vec![0.0; 4],
        "equidistant",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("distortion_model") && e.contains("equidistant"),
        "{e}"
    );
    let e = camera_info_to_intrinsics(&camera_info(640, 480, k, vec![0.0; 3], "plumb_bob"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("distortion"), "{e}");
}

// ------------------------------------------------------------------ twist

#[test]
fn moves_become_servo_twists_in_speed_units() {
    let m = safe_command_to_twist(
        &move_cmd(),
        "panda_link0",
        &speed(),
        None,
        Time { sec: 7, nanosec: 1 },
    )
    .unwrap();
    assert_eq!(m.header.frame_id, "panda_link0");
    assert_eq!((m.header.stamp.sec, m.header.stamp.nanosec), (7, 1));
    let l = &m.twist.linear;
    assert_eq!((l.x, l.y, l.z), (0.1, -0.2, 0.05));
    // Roll = π flips the frame, but a pure yaw rate is a rotation about base z.
    let a = &m.twist.angular;
    assert!(
        a.x.abs() < 1e-12 && a.y.abs() < 1e-12 && (a.z - 0.3).abs() < 1e-12,
        "{a:?}"
    );
}

#[test]
fn euler_rates_map_to_angular_velocity_exactly() {
    // Compare with a central difference of R(e + ė·h)·R(e − ė·h)ᵀ ≈ exp(2h·[ω]×).
    let e = Vector3::new(2.9, 0.3, -0.7);
    let rates = Vector3::new(0.2, -0.4, 0.5);
    let h = 1e-4;
    let rot = |e: Vector3<f64>| Rotation3::from_euler_angles(e[0], e[1], e[2]);
    let d = rot(e + rates * h) * rot(e - rates * h).inverse();
    let w = nalgebra::UnitQuaternion::from_rotation_matrix(&d).scaled_axis() / (2.0 * h);
    let got = euler_rates_to_angular_velocity(&e, &rates);
    assert!((got - w).norm() < 1e-8, "{got:?} vs {w:?}");
}

#[test]
fn holds_become_zero_twists_and_unitless_is_clipped() {
    let m = safe_command_to_twist(
        &hold_cmd(),
        "base",
        &speed(),
        None,
        Time { sec: 0, nanosec: 0 },
    )
    .unwrap();
    let (l, a) = (&m.twist.linear, &m.twist.angular);
    assert_eq!([l.x, l.y, l.z, a.x, a.y, a.z], [0.0; 6]);
    let unitless = TwistSettings::new(
        TwistUnits::Unitless,
        0.15,
        1.0,
        0.0,
        &SafetyConfig::calvin_default(),
    );
    let m = safe_command_to_twist(
        &move_cmd(),
        "base",
        &unitless,
        None,
        Time { sec: 0, nanosec: 0 },
    )
    .unwrap();
    let l = &m.twist.linear;
    assert!((l.x - 0.1 / 0.15).abs() < 1e-12);
    assert_eq!(l.y, -1.0, "−0.2 m/s at scale 0.15 m/s clips to −1");
    assert!((m.twist.angular.z - 0.3).abs() < 1e-12);
}

#[test]
fn position_correction_stays_inside_the_speed_limits() {
    let mut safety = SafetyConfig::calvin_default();
    safety.max_linear_speed = 0.25;
    let s = TwistSettings::new(TwistUnits::Speed, 1.0, 1.0, 2.0, &safety);
    // Measured 1 cm behind the target on x, 1 m behind on y (clipped).
    let measured = TcpPose::new([0.39, -1.0, 0.3], [PI, 0.0, 0.0]);
    let m = safe_command_to_twist(
        &move_cmd(),
        "base",
        &s,
        Some(&measured),
        Time { sec: 0, nanosec: 0 },
    )
    .unwrap();
    assert!((m.twist.linear.x - (0.1 + 2.0 * 0.01)).abs() < 1e-12);
    assert_eq!(m.twist.linear.y, 0.25);
    // Holds never get a correction.
    let h = safe_command_to_twist(
        &hold_cmd(),
        "base",
        &s,
        Some(&measured),
        Time { sec: 0, nanosec: 0 },
    )
    .unwrap();
    assert_eq!(h.twist.linear.x, 0.0);
}

// ------------------------------------------------------------------ joint modes

struct OffsetIk(f64);

impl JointIk for OffsetIk {
    fn solve(&mut self, target: &TcpPose, seed: &[f64]) -> anyhow::Result<Vec<f64>> {
        if target.position.x > 10.0 {
            anyhow::bail!("unreachable");
        }
        Ok(seed.iter().map(|q| q + self.0).collect())
    }
}

#[test]
fn joint_modes_hold_measured_joints_and_follow_the_ik() {
    let n = names(&["j1", "j2"]);
    let mut c = JointCommander::new(n.clone(), Some(Box::new(OffsetIk(0.01))), 1.0, 1.0 / 30.0);
    let measured = [0.5, -0.5];
    // A hold before any move: the measured joints, zero velocity.
    let h = c.hold(Some(&measured)).unwrap();
    assert_eq!(
        (h.positions.clone(), h.velocities.clone()),
        (vec![0.5, -0.5], vec![0.0, 0.0])
    );
    let arr = joint_target_to_float64_array(&h);
    assert_eq!(arr.data, vec![0.5, -0.5]);
    assert_eq!(
        (
            arr.layout.dim.len(),
            arr.layout.dim[0].size,
            arr.layout.dim[0].stride,
            arr.layout.data_offset
        ),
        (1, 2, 2, 0)
    );
    assert_eq!(arr.layout.dim[0].label, "joints");
    // A move: the IK from the last command.
    let arr = safe_command_to_float64_array(&move_cmd(), &mut c, Some(&measured)).unwrap();
    assert!((arr.data[0] - 0.51).abs() < 1e-12 && (arr.data[1] + 0.49).abs() < 1e-12);
    let traj = safe_command_to_joint_trajectory(
        &move_cmd(),
        &mut c,
        Some(&measured),
        0.1,
        Time { sec: 0, nanosec: 0 },
    )
    .unwrap();
    assert_eq!(traj.joint_names, n);
    assert_eq!(traj.points.len(), 1);
    let p = &traj.points[0];
    assert!((p.positions[0] - 0.52).abs() < 1e-12);
    assert!((p.velocities[0] - 0.3).abs() < 1e-9, "0.01 rad per 1/30 s");
    assert_eq!(
        (p.time_from_start.sec, p.time_from_start.nanosec),
        (0, 100_000_000)
    );
    assert!(p.accelerations.is_empty() && p.effort.is_empty());
    // A hold after moves repeats the last command, not the (lagging) measurement.
    let h = c.command(&hold_cmd(), Some(&measured)).unwrap();
    assert!((h.positions[0] - 0.52).abs() < 1e-12 && h.velocities == vec![0.0, 0.0]);
}

#[test]
fn joint_modes_refuse_what_they_cannot_do_safely() {
    let n = names(&["j1", "j2"]);
    // No IK: moves are refused, holds work.
    let mut c = JointCommander::new(n.clone(), None, 1.0, 1.0 / 30.0);
    assert!(!c.has_ik());
    let e = c
        .command(&move_cmd(), Some(&[0.0, 0.0]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no IK solver"), "{e}");
    assert!(c.command(&hold_cmd(), Some(&[0.0, 0.0])).is_ok());
    // Nothing measured yet: even a hold cannot be built.
    let mut c = JointCommander::new(n.clone(), None, 1.0, 1.0 / 30.0);
    assert!(c
        .hold(None)
        .unwrap_err()
        .to_string()
        .contains("no joint positions measured yet"));
    // A jump larger than max_joint_speed·dt (an IK branch flip) is refused.
    let mut c = JointCommander::new(n.clone(), Some(Box::new(OffsetIk(0.5))), 1.0, 1.0 / 30.0);
    let e = c
        .command(&move_cmd(), Some(&[0.0, 0.0]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("joint `j1` jumps 0.5000 rad in one step, limit 0.0333 rad"),
        "{e}"
    );
    // An IK that fails or returns NaN is refused.
    let mut c = JointCommander::new(
        n.clone(),
        Some(Box::new(OffsetIk(f64::NAN))),
        1.0,
        1.0 / 30.0,
    );
    assert!(c
        .command(&move_cmd(), Some(&[0.0, 0.0]))
        .unwrap_err()
        .to_string()
        .contains("joint `j1` is NaN"));
    let mut far = move_cmd();
    far.target.position.x = 11.0;
    let mut c = JointCommander::new(n, Some(Box::new(OffsetIk(0.0))), 1.0, 1.0 / 30.0);
    assert!(c
        .command(&far, Some(&[0.0, 0.0]))
        .unwrap_err()
        .to_string()
        .contains("unreachable"));
    // Wrong number of measured joints.
    assert!(c
        .hold(Some(&[0.0]))
        .unwrap_err()
        .to_string()
        .contains("expected 2 positions (j1, j2), found 1"));
}

// ------------------------------------------------------------------ gripper, diagnostics

#[test]
fn gripper_commands() {
    assert_eq!(gripper_to_float64(GripperState::Open, 0.04, 0.0).data, 0.04);
    assert_eq!(gripper_to_float64(GripperState::Close, 0.04, 0.0).data, 0.0);
    let a = gripper_to_float64_array(GripperState::Close, 0.04, 0.001);
    assert_eq!(a.data, vec![0.001]);
    assert_eq!(
        (a.layout.dim[0].size, a.layout.dim[0].label.as_str()),
        (1, "gripper")
    );
}

#[test]
fn diagnostics_report_state_watchdog_and_latency() {
    let mut report = RunReport {
        ticks: 90,
        commands: 88,
        holds: 3,
        plans: 22,
        frames: 90,
        ended_by: "stopped".into(),
        ..Default::default()
    };
    report.obs_to_command = Summary {
        count: 22,
        mean_ms: 20.0,
        p50_ms: 18.0,
        p99_ms: 40.0,
        max_ms: 41.0,
    };
    report.safety_events.insert("EStop".into(), 1);
    let live = LiveDiagnostics {
        state: "running".into(),
        enabled: true,
        instruction: "open the drawer".into(),
        watchdog: "holding".into(),
        frame_age_s: Some(0.5),
        camera_rate_hz: 29.9,
        plan_rate_hz: 7.5,
        plan_time_s: Some(0.012),
        ..Default::default()
    };
    let d = diagnostics_from_report(
        Some(&report),
        &live,
        0.25,
        "/vw2_policy_node",
        Time { sec: 3, nanosec: 0 },
    );
    assert_eq!(d.status.len(), 3);
    let get = |i: usize, k: &str| {
        d.status[i]
            .values
            .iter()
            .find(|kv| kv.key == k)
            .map(|kv| kv.value.clone())
            .unwrap_or_else(|| panic!("{k}"))
    };
    assert_eq!(d.status[0].name, "vw2_policy: node");
    assert_eq!(d.status[0].level, level::OK);
    assert_eq!(get(0, "instruction"), "open the drawer");
    assert_eq!(
        d.status[1].level,
        level::WARN,
        "a stale frame while running warns"
    );
    assert_eq!(get(1, "frame_age_ms"), "500.0");
    assert_eq!(get(1, "watchdog"), "holding");
    assert_eq!(get(2, "plan_rate_hz"), "7.50");
    assert_eq!(get(2, "plan_time_ms"), "12.0");
    assert_eq!(get(2, "last_run.obs_to_command_p99_ms"), "40.0");
    assert_eq!(get(2, "last_run.safety_events.EStop"), "1");
    assert!(d.status.iter().all(|s| s.hardware_id == "/vw2_policy_node"));

    let estop = LiveDiagnostics {
        state: "estop".into(),
        estop_latched: true,
        ..Default::default()
    };
    let d = diagnostics_from_report(None, &estop, 0.25, "n", Time { sec: 0, nanosec: 0 });
    assert_eq!(
        (d.status[0].level, d.status[0].message.as_str()),
        (level::ERROR, "e-stop latched")
    );
    assert_eq!(
        d.status[1].level,
        level::OK,
        "not running: the watchdog is not a problem"
    );
}

/// An operator's TwistStamped (m/s, rad/s) becomes a command in CALVIN units
/// for the control rate, stamped on the runtime clock.
#[test]
fn teleop_twist_becomes_an_operator_command() {
    use r2r::geometry_msgs::msg::{Twist, TwistStamped, Vector3 as V3};
    use vw2_policy::ros::convert::twist_to_operator_command;
    let v = |x: f64, y: f64, z: f64| V3 { x, y, z };
    let m = TwistStamped {
        header: Header {
            stamp: Time {
                sec: 100,
                nanosec: 500_000_000,
            },
            frame_id: "base".into(),
        },
        twist: Twist {
            linear: v(0.3, 0.0, -0.6),
            angular: v(0.0, 0.0, 1.5),
        },
    };
    // ROS now 101.0 s, runtime clock now 5.0 s: the message is 0.5 s old.
    let c = twist_to_operator_command(&m, 101.0, 5.0, 30.0);
    assert!((c.t - 4.5).abs() < 1e-9, "{}", c.t);
    // 0.3 m/s for 1/30 s = 0.01 m = 0.5 CALVIN units; 1.5 rad/s → 1 unit.
    assert!((c.motion[0] - 0.5).abs() < 1e-12);
    assert!((c.motion[2] + 1.0).abs() < 1e-12);
    assert!((c.motion[5] - 1.0).abs() < 1e-12);
    assert_eq!(c.gripper, None);
}
