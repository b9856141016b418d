//! Parameters of `vw2_policy_node`, parsed in plain Rust
//! (`cargo test --features ros2-check --test ros_params`).
#![cfg(feature = "ros2")]

use std::path::{Path, PathBuf};

use vw2_policy::ros::params::*;
use vw2_policy::safety::SafetyConfig;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const MINIMAL: &str = r#"
vw2_policy_node:
  ros__parameters:
    policy: /tmp/p
    safety:
      workspace_min: [0.25, -0.40, 0.02]
      workspace_max: [0.75, 0.40, 0.60]
      euler_min: [2.2, -0.6, -2.0]
      euler_max: [4.1, 0.6, 2.0]
      max_linear_speed: 0.25
      max_angular_speed: 0.8
      max_linear_accel: 2.0
      max_angular_accel: 6.0
      gripper_debounce_s: 0.5
"#;

#[test]
fn shipped_parameter_files_parse_and_validate() {
    for robot in ["franka", "ur", "calvin_sim"] {
        let path = repo(&format!("config/{robot}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let p = NodeParams::from_yaml_str(&text).unwrap_or_else(|e| panic!("{robot}: {e:#}"));
        // The launch file sets the policy; with one, the values validate.
        let mut p2 = p.clone();
        p2.policy = repo("tests/fixtures/tiny-policy");
        p2.validate().unwrap_or_else(|e| panic!("{robot}: {e:#}"));
        assert_eq!(p.command_mode, CommandMode::ServoTwist, "{robot}");
        assert!(p.safety.validate().is_ok());
        // Without the launch file's policy, validation says what is missing.
        let e = p.validate_values().unwrap_err().to_string();
        assert!(e.contains("parameter `policy`"), "{robot}: {e}");
    }
    let calvin = NodeParams::from_yaml_str(
        &std::fs::read_to_string(repo("config/calvin_sim.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        calvin.safety,
        SafetyConfig::calvin_default(),
        "calvin_sim.yaml carries CALVIN's default envelope"
    );
    assert_eq!(calvin.topics.twist_cmd, "/calvin_sim/twist_cmd");
    let franka =
        NodeParams::from_yaml_str(&std::fs::read_to_string(repo("config/franka.yaml")).unwrap())
            .unwrap();
    assert_eq!(franka.joint_names.len(), 7);
    assert_eq!(franka.topics.twist_cmd, "/servo_node/delta_twist_cmds");
    assert_eq!(franka.gripper_mode, GripperMode::Float64);
    assert_eq!((franka.replan_every, franka.ensemble_decay), (None, None));
    // The commented re-planning lines, switched on.
    let text = std::fs::read_to_string(repo("config/franka.yaml"))
        .unwrap()
        .replace("# replan_every", "replan_every")
        .replace("# ensemble_decay", "ensemble_decay");
    let p = NodeParams::from_yaml_str(&text).unwrap();
    assert_eq!((p.replan_every, p.ensemble_decay), (Some(1), Some(0.1)));
}

#[test]
fn defaults_fill_what_is_not_given() {
    let p = NodeParams::from_yaml_str(MINIMAL).unwrap();
    assert_eq!(p.policy, PathBuf::from("/tmp/p"));
    assert_eq!(p.calibration_path(), None);
    assert_eq!(
        (p.command_mode, p.twist_units, p.gripper_mode),
        (
            CommandMode::ServoTwist,
            TwistUnits::Speed,
            GripperMode::None
        )
    );
    assert_eq!(p.topics.image, "~/image");
    assert_eq!(p.topics.twist_cmd, "/servo_node/delta_twist_cmds");
    assert_eq!(p.safety.stale_timeout_s, 0.25);
    // Left out: the node takes the policy bundle's rate at start.
    assert_eq!(p.safety.control_rate_hz, None);
    assert!(p.publish_imagined);
    assert!(!p.use_sim_time);
    p.validate_values().unwrap();
}

#[test]
fn unknown_and_mistyped_parameters_are_refused() {
    let e = NodeParams::from_yaml_str(&MINIMAL.replace(
        "policy: /tmp/p",
        "policy: /tmp/p\n    comand_mode: servo_twist",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `comand_mode`"), "{e}");
    let e = NodeParams::from_yaml_str(&MINIMAL.replace(
        "gripper_debounce_s: 0.5",
        "gripper_debounce_s: 0.5\n      max_speed: 1.0",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `max_speed`"), "{e}");
    let e = NodeParams::from_yaml_str(&MINIMAL.replace(
        "policy: /tmp/p",
        "policy: /tmp/p\n    command_mode: cartesian",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unknown variant `cartesian`") && e.contains("servo_twist"),
        "{e}"
    );
    let e = NodeParams::from_yaml_str(&MINIMAL.replace(
        "policy: /tmp/p",
        "policy: /tmp/p\n    topics: {imgae: /cam}",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `imgae`"), "{e}");
    // No safety envelope: refused (no default envelope for a real robot).
    let no_safety = "vw2_policy_node:\n  ros__parameters:\n    policy: /tmp/p\n";
    let e = NodeParams::from_yaml_str(no_safety)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `safety`"), "{e}");
    // Mixed int/double arrays are refused (as rcl would), naming the parameter.
    let e = NodeParams::from_yaml_str(&MINIMAL.replace("[0.25, -0.40, 0.02]", "[0.25, -0.40, 0]"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("safety.workspace_min") && e.contains("one type"),
        "{e}"
    );
    let e = NodeParams::from_yaml_str("vw2_policy_node:\n  policy: /x\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no `ros__parameters`"), "{e}");
}

#[test]
fn values_are_validated_with_the_parameter_named() {
    let base = NodeParams::from_yaml_str(MINIMAL).unwrap();
    let check = |f: &dyn Fn(&mut NodeParams), want: &str| {
        let mut p = base.clone();
        f(&mut p);
        let e = format!("{:#}", p.validate_values().unwrap_err());
        assert!(e.contains(want), "want {want:?} in {e}");
    };
    check(
        &|p| p.safety.max_linear_speed = -1.0,
        "parameter `safety`: invalid safety config: field `max_linear_speed`",
    );
    check(&|p| p.safety.workspace_min[2] = 0.9, "workspace_min[2]");
    check(
        &|p| p.command_mode = CommandMode::JointForward,
        "parameter `joint_names`: command_mode joint_forward needs",
    );
    check(
        &|p| p.joint_names = (0..8).map(|i| format!("j{i}")).collect(),
        "at most 7 arm joints",
    );
    check(
        &|p| p.joint_names = vec!["a".into(), "".into()],
        "parameter `joint_names[1]`",
    );
    check(
        &|p| {
            p.twist_units = TwistUnits::Unitless;
            p.servo_scale_linear = 0.0;
        },
        "parameter `servo_scale_linear`",
    );
    check(
        &|p| p.gripper_mode = GripperMode::Float64,
        "expected two different values",
    );
    check(
        &|p| p.diagnostics_rate_hz = 0.0,
        "parameter `diagnostics_rate_hz`",
    );
    check(
        &|p| p.frame_timeout_s = 0.1,
        "expected more than safety.stale_timeout_s",
    );
    check(&|p| p.servo_position_gain = f64::NAN, "servo_position_gain");
    check(&|p| p.base_frame.clear(), "parameter `base_frame`");
    check(
        &|p| p.topics.image = "my image".into(),
        "parameter `topics.image`",
    );
    check(
        &|p| p.tcp_pose_frame = TcpPoseFrame::Flange,
        "`flange` needs a `calibration`",
    );
}

#[test]
fn files_are_checked_at_start() {
    let mut p = NodeParams::from_yaml_str(MINIMAL).unwrap();
    p.policy = PathBuf::from("/nonexistent/policy");
    let e = p.validate().unwrap_err().to_string();
    assert!(
        e.contains("parameter `policy`: expected a policy bundle folder with policy.yaml"),
        "{e}"
    );
    p.policy = repo("tests/fixtures/tiny-policy");
    assert!(p.validate().unwrap().is_none());
    p.calibration = repo("calibration/example_real_arm.yaml");
    assert!(p.validate().unwrap().is_some());
    p.calibration = PathBuf::from("/nonexistent/calib.yaml");
    let e = p.validate().unwrap_err().to_string();
    assert!(e.contains("parameter `calibration`"), "{e}");
}

#[test]
fn ros_args_select_files_overrides_and_the_node_section() {
    let dir = tempfile::tempdir().unwrap();
    let f1 = dir.path().join("a.yaml");
    let f2 = dir.path().join("b.yaml");
    std::fs::write(&f1, MINIMAL).unwrap();
    // launch_ros writes dict parameters under `/**`; other nodes' sections are ignored.
    std::fs::write(
        &f2,
        "/**:\n  ros__parameters:\n    policy: /from/launch\n    use_sim_time: true\nother_node:\n  ros__parameters:\n    bogus: 1\n",
    )
    .unwrap();
    let a = args(&[
        "extra",
        "--ros-args",
        "-r",
        "__node:=vw2_policy_node",
        "--params-file",
        f1.to_str().unwrap(),
        "--params-file",
        f2.to_str().unwrap(),
        "-p",
        "safety.hold_repeats:=5",
        "-p",
        "command_mode:=servo_twist",
        "--",
        "--params-file",
        "/ignored/outside/ros-args",
    ]);
    let ros = RosArgs::parse(&a).unwrap();
    assert_eq!(ros.params_files, vec![f1.clone(), f2.clone()]);
    assert_eq!(ros.overrides.len(), 2);
    let p = NodeParams::from_args(&a).unwrap();
    assert_eq!(p.policy, PathBuf::from("/from/launch"), "later files win");
    assert!(p.use_sim_time);
    assert_eq!(
        p.safety.hold_repeats, 5,
        "-p overrides files, dotted names reach nested parameters"
    );
    assert_eq!(
        p.safety.max_linear_speed, 0.25,
        "the rest of the nested map is kept"
    );

    // A renamed node reads its own section, and the fully qualified name with a namespace.
    std::fs::write(
        &f2,
        MINIMAL
            .replace("vw2_policy_node:", "/robot1/arm_policy:")
            .replace("/tmp/p", "/renamed"),
    )
    .unwrap();
    let a = args(&[
        "--ros-args",
        "-r",
        "__node:=arm_policy",
        "-r",
        "__ns:=/robot1",
        "--params-file",
        f1.to_str().unwrap(),
        "--params-file",
        f2.to_str().unwrap(),
    ]);
    assert_eq!(
        NodeParams::from_args(&a).unwrap().policy,
        PathBuf::from("/renamed")
    );

    // Errors: no parameters at all, a missing file, a bad -p.
    let e = NodeParams::from_args(&args(&[])).unwrap_err().to_string();
    assert!(e.contains("--params-file"), "{e}");
    let e = format!(
        "{:#}",
        NodeParams::from_args(&args(&["--ros-args", "--params-file", "/nonexistent.yaml"]))
            .unwrap_err()
    );
    assert!(e.contains("/nonexistent.yaml: cannot read"), "{e}");
    let e = RosArgs::parse(&args(&["--ros-args", "-p", "novalue"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected NAME:=VALUE"), "{e}");
    let e = format!(
        "{:#}",
        NodeParams::from_args(&args(&[
            "--ros-args",
            "--params-file",
            f1.to_str().unwrap(),
            "-p",
            "nope:=1"
        ]))
        .unwrap_err()
    );
    assert!(
        e.contains("unknown field `nope`") && e.contains("a.yaml"),
        "{e}"
    );
}

#[test]
fn teleop_parameters_default_off_and_are_checked() {
    use vw2_policy::ros::params::TeleopMode;
    let p = NodeParams::from_yaml_str(MINIMAL).unwrap();
    assert_eq!(p.teleop_mode, TeleopMode::Off);
    assert_eq!((p.teleop_deadband, p.teleop_release_s), (0.1, 1.0));
    assert_eq!(p.topics.teleop_gripper, "~/teleop_gripper");
    assert_eq!(p.topics.teleop_gripper_closed, "~/teleop_gripper_closed");
    let p = NodeParams::from_yaml_str(&MINIMAL.replace(
        "policy: /tmp/p",
        "policy: /tmp/p\n    teleop_mode: takeover\n    teleop_release_s: 2.0",
    ))
    .unwrap();
    assert_eq!(p.teleop_mode, TeleopMode::Takeover);
    p.validate_values().unwrap();
    let e = NodeParams::from_yaml_str(
        &MINIMAL.replace("policy: /tmp/p", "policy: /tmp/p\n    teleop_mode: copilot"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("copilot"), "{e}");
    let p = NodeParams::from_yaml_str(&MINIMAL.replace(
        "policy: /tmp/p",
        "policy: /tmp/p\n    teleop_deadband: -1.0",
    ))
    .unwrap();
    let e = p.validate_values().unwrap_err().to_string();
    assert!(e.contains("teleop_deadband") && e.contains("-1"), "{e}");
}
