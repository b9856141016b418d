//! Parameters of `vw2_policy_node`, read from the `--ros-args` of the command
//! line in plain Rust (no ROS needed, so they are testable anywhere).
//!
//! Sources, later ones win (the order rcl applies them in):
//! 1. every `--params-file FILE` after `--ros-args`, in order. A file is a ROS 2
//!    parameter file: top-level keys are node names (`vw2_policy_node`,
//!    `/vw2_policy_node`, `/<ns>/vw2_policy_node`, or the wildcards `/**`, `**`),
//!    each holding `ros__parameters`. Sections for other nodes are ignored, as rcl
//!    does. Nested maps are parameter namespaces: `safety: {hold_repeats: 3}` is
//!    the parameter `safety.hold_repeats`.
//! 2. every `-p NAME:=VALUE` / `--param NAME:=VALUE` (VALUE is YAML).
//!
//! The merged parameters are deserialized into [`NodeParams`] with unknown names
//! refused, then [`NodeParams::validate`] checks values and files. Any error names
//! the parameter (and the file); the node exits non-zero.
//!
//! Example (`config/franka.yaml` is the full, commented default):
//!
//! ```yaml
//! vw2_policy_node:
//!   ros__parameters:
//!     policy: /opt/policies/calvin_abc
//!     calibration: /opt/calibration/front_cam.yaml
//!     command_mode: servo_twist
//!     safety:
//!       workspace_min: [0.25, -0.40, 0.02]
//!       # ... every SafetyConfig field
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::calibration::Calibration;
use crate::safety::SafetyConfig;

/// The node's default name (what `--params-file` sections are matched against).
pub const NODE_NAME: &str = "vw2_policy_node";

/// How safe commands reach the arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandMode {
    /// `geometry_msgs/TwistStamped` TCP velocity to MoveIt Servo
    /// (`/servo_node/delta_twist_cmds`); Servo does the IK. The recommended mode.
    ServoTwist,
    /// `std_msgs/Float64MultiArray` joint positions for a ros2_control
    /// `forward_command_controller` (position interface). Needs an IK solver.
    JointForward,
    /// `trajectory_msgs/JointTrajectory` (one point) for a ros2_control
    /// `joint_trajectory_controller`. Needs an IK solver.
    JointTrajectory,
}

impl CommandMode {
    /// The name used in parameter files.
    pub fn name(self) -> &'static str {
        match self {
            Self::ServoTwist => "servo_twist",
            Self::JointForward => "joint_forward",
            Self::JointTrajectory => "joint_trajectory",
        }
    }

    /// True for the joint-space modes (they need an IK solver).
    pub fn is_joint(self) -> bool {
        !matches!(self, Self::ServoTwist)
    }
}

/// Units of the twist sent to MoveIt Servo (its `command_in_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TwistUnits {
    /// m/s and rad/s (Servo `command_in_type: speed_units`).
    Speed,
    /// Fractions in [−1, 1] of Servo's `scale.linear` (m/s) and
    /// `scale.rotational` (rad/s) (Servo `command_in_type: unitless`).
    Unitless,
}

/// How the gripper is commanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GripperMode {
    /// Not commanded.
    None,
    /// `std_msgs/Float64`: the finger position (m) for open / closed.
    Float64,
    /// `std_msgs/Float64MultiArray` with one value (a ros2_control forward
    /// position controller on the finger joint).
    Float64Array,
}

/// Where the measured TCP pose (`tcp_pose` topic) is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpPoseFrame {
    /// The pose is the tool centre point already.
    Tool,
    /// The pose is the flange; the calibration's `tool_to_flange` is applied.
    Flange,
}

/// Whether and how an operator shares control (`teleop_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeleopMode {
    /// The policy alone; operator messages are only counted.
    #[default]
    Off,
    /// The operator drives; the policy plans and is counted, never executed.
    Shadow,
    /// The policy drives; operator input beyond the deadband takes over.
    Takeover,
}

fn default_teleop_deadband() -> f64 {
    crate::runtime::arbiter::TakeoverConfig::default().deadband
}

fn default_teleop_release_s() -> f64 {
    crate::runtime::arbiter::TakeoverConfig::default().release_s
}

/// Topic names (relative names resolve in the node's namespace, `~/` in its name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// `sensor_msgs/Image` in (sensor-data QoS).
    pub image: String,
    /// `sensor_msgs/CameraInfo` in (checked against the calibration).
    pub camera_info: String,
    /// `sensor_msgs/JointState` in.
    pub joint_states: String,
    /// `geometry_msgs/PoseStamped` in: the measured TCP (or flange) pose in the base frame.
    pub tcp_pose: String,
    /// `std_msgs/String` in: the task instruction.
    pub instruction: String,
    /// `geometry_msgs/TwistStamped` in: the operator's twist (m/s, rad/s), as
    /// `teleop_twist_joy`, `spacenav` and MoveIt Servo publish it.
    pub teleop_cmd: String,
    /// `std_msgs/Float64` in: the operator's gripper input (> 0 open, ≤ 0 close).
    pub teleop_gripper: String,
    /// `std_msgs/Bool` in: the operator's gripper as a button (true close, false open).
    pub teleop_gripper_closed: String,
    /// `std_msgs/Bool` in: true enables the policy, false disables it.
    pub enable: String,
    /// `std_msgs/Bool` in: true latches the e-stop.
    pub estop: String,
    /// `geometry_msgs/TwistStamped` out (`servo_twist`).
    pub twist_cmd: String,
    /// `std_msgs/Float64MultiArray` out (`joint_forward`).
    pub joint_cmd: String,
    /// `trajectory_msgs/JointTrajectory` out (`joint_trajectory`).
    pub joint_trajectory: String,
    /// Gripper command out (`gripper_mode`).
    pub gripper_cmd: String,
    /// `sensor_msgs/Image` out: imagined future frames side by side.
    pub imagined: String,
    /// `diagnostic_msgs/DiagnosticArray` out.
    pub diagnostics: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            image: "~/image".into(),
            camera_info: "~/camera_info".into(),
            joint_states: "~/joint_states".into(),
            tcp_pose: "~/tcp_pose".into(),
            instruction: "~/instruction".into(),
            teleop_cmd: "~/teleop_cmd".into(),
            teleop_gripper: "~/teleop_gripper".into(),
            teleop_gripper_closed: "~/teleop_gripper_closed".into(),
            enable: "~/enable".into(),
            estop: "~/estop".into(),
            twist_cmd: "/servo_node/delta_twist_cmds".into(),
            joint_cmd: "/forward_position_controller/commands".into(),
            joint_trajectory: "/joint_trajectory_controller/joint_trajectory".into(),
            gripper_cmd: "~/gripper_cmd".into(),
            imagined: "~/imagined".into(),
            diagnostics: "/diagnostics".into(),
        }
    }
}

fn default_instruction() -> String {
    String::new()
}
fn default_command_mode() -> CommandMode {
    CommandMode::ServoTwist
}
fn default_twist_units() -> TwistUnits {
    TwistUnits::Speed
}
fn default_one() -> f64 {
    1.0
}
fn default_base_frame() -> String {
    "base".into()
}
fn default_gripper_mode() -> GripperMode {
    GripperMode::None
}
fn default_tcp_pose_frame() -> TcpPoseFrame {
    TcpPoseFrame::Tool
}
fn default_diagnostics_rate() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_frame_timeout() -> f64 {
    5.0
}
fn default_lookahead() -> f64 {
    0.1
}
fn default_max_joint_speed() -> f64 {
    1.0
}

/// Every parameter of `vw2_policy_node` (units in each field's doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeParams {
    /// Policy bundle folder (with `policy.yaml`). Required.
    pub policy: PathBuf,
    /// Camera calibration YAML (`calibration/<name>.yaml`); "" for none. With a
    /// calibration the node checks `camera_info` against it, and `tcp_pose_frame:
    /// flange` uses its `tool_to_flange`.
    #[serde(default)]
    pub calibration: PathBuf,
    /// Instruction used until one arrives on the `instruction` topic; a run only
    /// starts with a non-empty instruction.
    #[serde(default = "default_instruction")]
    pub instruction: String,
    /// `servo_twist`, `joint_forward` or `joint_trajectory`.
    #[serde(default = "default_command_mode")]
    pub command_mode: CommandMode,
    /// `servo_twist`: `speed` (m/s, rad/s) or `unitless` (see `servo_scale_*`).
    #[serde(default = "default_twist_units")]
    pub twist_units: TwistUnits,
    /// `unitless` twists: MoveIt Servo's `scale.linear` (m/s at 1.0). Set it ≥
    /// `safety.max_linear_speed`, or commands are clipped at this speed.
    #[serde(default = "default_one")]
    pub servo_scale_linear: f64,
    /// `unitless` twists: MoveIt Servo's `scale.rotational` (rad/s at 1.0).
    #[serde(default = "default_one")]
    pub servo_scale_rotational: f64,
    /// `servo_twist`: gain (1/s) of a proportional correction toward the safe
    /// target from the measured TCP pose, added to the feed-forward velocity and
    /// clipped to the safety speed limits. 0 = pure feed-forward.
    #[serde(default)]
    pub servo_position_gain: f64,
    /// Frame of the commanded twist and of the TCP pose: the robot base frame of
    /// the safety workspace (e.g. `panda_link0`, `base_link`).
    #[serde(default = "default_base_frame")]
    pub base_frame: String,
    /// Arm joints, in the controller's order (at most 7: the policy's
    /// proprioception holds 7 joint angles; fewer are zero-padded).
    #[serde(default)]
    pub joint_names: Vec<String>,
    /// Finger joints whose positions (m) sum to the gripper opening width; may be empty.
    #[serde(default)]
    pub gripper_joint_names: Vec<String>,
    /// Joint modes: joint speed limit (rad/s) of one step between IK solutions.
    #[serde(default = "default_max_joint_speed")]
    pub max_joint_speed: f64,
    /// `joint_trajectory`: `time_from_start` of the single point (s).
    #[serde(default = "default_lookahead")]
    pub trajectory_lookahead_s: f64,
    /// Joint modes: the IK solver. The stock node has none (the policy acts in TCP
    /// space); joint modes are refused unless a solver is linked in through
    /// `vw2_policy::ros::node::run_node` with a `JointIk`.
    #[serde(default)]
    pub ik_solver: String,
    /// `none`, `float64` or `float64_array`.
    #[serde(default = "default_gripper_mode")]
    pub gripper_mode: GripperMode,
    /// Gripper command for open (m of finger travel, or the controller's unit).
    #[serde(default)]
    pub gripper_open_position: f64,
    /// Gripper command for closed.
    #[serde(default)]
    pub gripper_closed_position: f64,
    /// `tool` or `flange` (then the calibration's `tool_to_flange` is applied).
    #[serde(default = "default_tcp_pose_frame")]
    pub tcp_pose_frame: TcpPoseFrame,
    /// Topic names.
    #[serde(default)]
    pub topics: Topics,
    /// Rate of the diagnostics (Hz).
    #[serde(default = "default_diagnostics_rate")]
    pub diagnostics_rate_hz: f64,
    /// Publish imagined futures on `topics.imagined` (runs the coarse decoder at low priority).
    #[serde(default = "default_true")]
    pub publish_imagined: bool,
    /// How long the pipeline waits for a camera frame before failing (s); the
    /// safety watchdog (`safety.stale_timeout_s`) holds long before that.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout_s: f64,
    /// Sampler seed of the policy.
    #[serde(default)]
    pub seed: u64,
    /// Re-plan every k control steps inside a latent step (1..=s; absent: at latent steps only).
    #[serde(default)]
    pub replan_every: Option<usize>,
    /// Temporal ensembling decay m (weights exp(−m·i), oldest chunk first; use with `replan_every: 1`).
    #[serde(default)]
    pub ensemble_decay: Option<f64>,
    /// Teleop: `off` (the policy alone), `shadow` (the operator on `topics.teleop_cmd`
    /// drives, the policy is only planned and counted) or `takeover` (the policy
    /// drives until operator input beyond `teleop_deadband` takes over).
    #[serde(default)]
    pub teleop_mode: TeleopMode,
    /// Takeover: the largest operator motion that is no input, in CALVIN units
    /// (0.02 m and 0.05 rad per control period).
    #[serde(default = "default_teleop_deadband")]
    pub teleop_deadband: f64,
    /// Takeover: how long the operator must stay inside the deadband before the
    /// policy drives again (s).
    #[serde(default = "default_teleop_release_s")]
    pub teleop_release_s: f64,
    /// The safety envelope (every [`SafetyConfig`] field, same units). Required:
    /// there is no default envelope for a real robot. `control_rate_hz` may be
    /// left out: the node commands at the policy bundle's rate, and a value
    /// given here that differs from it is refused at start.
    pub safety: SafetyConfig,
    /// Standard ROS parameter (stamps and the ROS clock follow `/clock`).
    #[serde(default)]
    pub use_sim_time: bool,
}

/// Where the node sits in the ROS graph (from `-r __node:=` / `-r __ns:=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node name.
    pub name: String,
    /// Namespace ("/" by default).
    pub namespace: String,
}

impl NodeIdentity {
    /// Fully qualified name, e.g. `/robot1/vw2_policy_node`.
    pub fn fully_qualified(&self) -> String {
        if self.namespace == "/" || self.namespace.is_empty() {
            format!("/{}", self.name)
        } else {
            format!("{}/{}", self.namespace.trim_end_matches('/'), self.name)
        }
    }

    fn matches(&self, key: &str) -> bool {
        key == "/**" || key == "**" || key == self.name || key == self.fully_qualified()
    }
}

/// What `--ros-args` says about parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RosArgs {
    /// `--params-file` paths, in order.
    pub params_files: Vec<PathBuf>,
    /// `-p NAME:=VALUE` overrides, in order.
    pub overrides: Vec<(String, String)>,
    /// `__node:=` remap.
    pub node_name: Option<String>,
    /// `__ns:=` remap.
    pub namespace: Option<String>,
}

impl RosArgs {
    /// Scans a command line (`argv[1..]`): only what follows `--ros-args` (up to a
    /// `--` ending it) is read, like rcl.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut out = RosArgs::default();
        let mut in_ros = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--ros-args" {
                in_ros = true;
                continue;
            }
            if !in_ros {
                continue;
            }
            if a == "--" {
                in_ros = false;
                continue;
            }
            let mut value = |flag: &str| -> Result<String> {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("--ros-args: `{flag}` needs a value"))
            };
            match a.as_str() {
                "--params-file" => out.params_files.push(PathBuf::from(value(a)?)),
                "-p" | "--param" => {
                    let v = value(a)?;
                    let (name, val) = v
                        .split_once(":=")
                        .ok_or_else(|| anyhow!("--ros-args {a} {v}: expected NAME:=VALUE"))?;
                    out.overrides.push((name.to_string(), val.to_string()));
                }
                "-r" | "--remap" => {
                    let v = value(a)?;
                    if let Some(n) = v
                        .strip_prefix("__node:=")
                        .or_else(|| v.strip_prefix("__name:="))
                    {
                        out.node_name = Some(n.to_string());
                    } else if let Some(ns) = v.strip_prefix("__ns:=") {
                        out.namespace = Some(ns.to_string());
                    }
                }
                // Flags with one value that do not concern parameters.
                "--log-level" | "--enclave" | "-e" | "--log-config-file" => {
                    value(a)?;
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The node's identity after remaps.
    pub fn identity(&self) -> NodeIdentity {
        NodeIdentity {
            name: self
                .node_name
                .clone()
                .unwrap_or_else(|| NODE_NAME.to_string()),
            namespace: self.namespace.clone().unwrap_or_else(|| "/".to_string()),
        }
    }
}

/// Flattens nested maps into dotted parameter names (`a: {b: 1}` → `a.b`).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>, file: &str) -> Result<()> {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().ok_or_else(|| {
                    anyhow!("{file}: parameter names must be strings, found {k:?} under `{prefix}`")
                })?;
                let name = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out, file)?;
            }
        }
        Value::Sequence(items) => {
            // rcl refuses arrays that mix types (e.g. [0.5, 1]): say so here, with the name.
            let kind = |x: &Value| match x {
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_f64() => "double",
                Value::Number(_) => "integer",
                Value::String(_) => "string",
                _ => "other",
            };
            if let Some(first) = items.first() {
                if let Some(bad) = items.iter().find(|x| kind(x) != kind(first)) {
                    bail!(
                        "{file}: parameter `{prefix}`: ROS arrays hold one type; found {} and {} \
                         (write every number of a double array with a decimal point, e.g. 1.0)",
                        kind(first),
                        kind(bad)
                    );
                }
                if kind(first) == "other" {
                    bail!("{file}: parameter `{prefix}`: arrays of maps or arrays are not ROS parameters");
                }
            }
            out.insert(prefix.to_string(), v.clone());
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
    Ok(())
}

/// Rebuilds nested maps from dotted names, so serde sees `safety: {...}`.
fn unflatten(flat: &BTreeMap<String, Value>) -> Result<Value> {
    let mut root = Mapping::new();
    for (name, v) in flat {
        let parts: Vec<&str> = name.split('.').collect();
        let mut cur = &mut root;
        for (i, p) in parts.iter().enumerate() {
            let key = Value::String((*p).to_string());
            if i + 1 == parts.len() {
                if cur.get(&key).is_some_and(Value::is_mapping) {
                    bail!("parameter `{name}` is both a value and a namespace");
                }
                cur.insert(key, v.clone());
            } else {
                let entry = cur
                    .entry(key)
                    .or_insert_with(|| Value::Mapping(Mapping::new()));
                cur = entry.as_mapping_mut().ok_or_else(|| {
                    anyhow!("parameter `{name}`: `{p}` is a value, not a namespace")
                })?;
            }
        }
    }
    Ok(Value::Mapping(root))
}

/// The `ros__parameters` of `node` in one parameter file's text, flattened.
pub fn parameters_in_file(
    text: &str,
    file: &str,
    node: &NodeIdentity,
) -> Result<BTreeMap<String, Value>> {
    let doc: Value =
        serde_yaml::from_str(text).with_context(|| format!("{file}: not valid YAML"))?;
    let mut out = BTreeMap::new();
    let Value::Mapping(top) = doc else {
        if doc.is_null() {
            return Ok(out);
        }
        bail!("{file}: expected a map of node names to `ros__parameters`");
    };
    for (k, section) in &top {
        let Some(key) = k.as_str() else {
            bail!("{file}: node names must be strings, found {k:?}");
        };
        if !node.matches(key) {
            continue;
        }
        let params = section
            .as_mapping()
            .and_then(|m| m.get("ros__parameters"))
            .ok_or_else(|| anyhow!("{file}: section `{key}` has no `ros__parameters` map"))?;
        if let Some(extra) = section
            .as_mapping()
            .and_then(|m| m.keys().find(|k| k.as_str() != Some("ros__parameters")))
        {
            bail!("{file}: section `{key}`: unexpected key {extra:?} next to `ros__parameters`");
        }
        flatten("", params, &mut out, file)?;
    }
    Ok(out)
}

impl NodeParams {
    /// Reads the parameters from a command line (`argv[1..]`), without validating.
    pub fn from_args(args: &[String]) -> Result<Self> {
        let ros = RosArgs::parse(args)?;
        let node = ros.identity();
        let mut merged = BTreeMap::new();
        let mut sources = Vec::new();
        for f in &ros.params_files {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--params-file {}: cannot read", f.display()))?;
            merged.extend(parameters_in_file(&text, &f.display().to_string(), &node)?);
            sources.push(f.display().to_string());
        }
        for (name, val) in &ros.overrides {
            let v: Value = serde_yaml::from_str(val)
                .with_context(|| format!("-p {name}:={val}: not a YAML value"))?;
            let mut one = BTreeMap::new();
            flatten(name, &v, &mut one, "-p")?;
            merged.extend(one);
            sources.push(format!("-p {name}"));
        }
        if sources.is_empty() {
            bail!(
                "no parameters: start the node with `--ros-args --params-file <file>` \
                 (the package installs config/franka.yaml), or `ros2 launch vw2_policy arm.launch.py`"
            );
        }
        Self::from_flat(&merged).with_context(|| {
            format!(
                "parameters of {} (from {})",
                node.fully_qualified(),
                sources.join(", ")
            )
        })
    }

    /// Deserializes flattened parameters (dotted names), unknown names refused.
    pub fn from_flat(flat: &BTreeMap<String, Value>) -> Result<Self> {
        let nested = unflatten(flat)?;
        serde_yaml::from_value(nested).map_err(|e| anyhow!("{e}"))
    }

    /// Parses the text of one parameter file for the default node name (tests, tools).
    pub fn from_yaml_str(text: &str) -> Result<Self> {
        let node = NodeIdentity {
            name: NODE_NAME.into(),
            namespace: "/".into(),
        };
        let flat = parameters_in_file(text, "<params>", &node)?;
        Self::from_flat(&flat)
    }

    /// The calibration path, if one is set.
    pub fn calibration_path(&self) -> Option<&Path> {
        (!self.calibration.as_os_str().is_empty()).then_some(self.calibration.as_path())
    }

    /// Checks values (not files): every error names the parameter.
    pub fn validate_values(&self) -> Result<()> {
        if self.policy.as_os_str().is_empty() {
            bail!("parameter `policy`: expected the path of a policy bundle folder, found \"\"");
        }
        self.safety
            .validate()
            .map_err(|e| anyhow!("parameter `safety`: {e}"))?;
        let positive = |name: &str, v: f64| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!("parameter `{name}`: expected a positive finite number, found {v}");
            }
            Ok(())
        };
        positive("diagnostics_rate_hz", self.diagnostics_rate_hz)?;
        positive("frame_timeout_s", self.frame_timeout_s)?;
        if self.frame_timeout_s <= self.safety.stale_timeout_s {
            bail!(
                "parameter `frame_timeout_s`: expected more than safety.stale_timeout_s = {} s, found {}",
                self.safety.stale_timeout_s,
                self.frame_timeout_s
            );
        }
        if !(self.servo_position_gain.is_finite() && self.servo_position_gain >= 0.0) {
            bail!(
                "parameter `servo_position_gain`: expected a finite value ≥ 0 (1/s), found {}",
                self.servo_position_gain
            );
        }
        if self.twist_units == TwistUnits::Unitless {
            positive("servo_scale_linear", self.servo_scale_linear)?;
            positive("servo_scale_rotational", self.servo_scale_rotational)?;
        }
        if self.base_frame.is_empty() {
            bail!("parameter `base_frame`: expected the robot base frame id, found \"\"");
        }
        if self.joint_names.len() > 7 {
            bail!(
                "parameter `joint_names`: expected at most 7 arm joints (the policy's proprioception has 7 joint slots), found {}",
                self.joint_names.len()
            );
        }
        for (name, list) in [
            ("joint_names", &self.joint_names),
            ("gripper_joint_names", &self.gripper_joint_names),
        ] {
            if let Some(i) = list.iter().position(String::is_empty) {
                bail!("parameter `{name}[{i}]`: expected a joint name, found \"\"");
            }
        }
        if self.command_mode.is_joint() {
            if self.joint_names.is_empty() {
                bail!(
                    "parameter `joint_names`: command_mode {} needs the controller's joint names, found none",
                    self.command_mode.name()
                );
            }
            positive("max_joint_speed", self.max_joint_speed)?;
            positive("trajectory_lookahead_s", self.trajectory_lookahead_s)?;
        }
        for (name, v) in [
            ("gripper_open_position", self.gripper_open_position),
            ("gripper_closed_position", self.gripper_closed_position),
        ] {
            if !v.is_finite() {
                bail!("parameter `{name}`: expected a finite number, found {v}");
            }
        }
        if self.gripper_mode != GripperMode::None
            && self.gripper_open_position == self.gripper_closed_position
        {
            bail!(
                "parameters `gripper_open_position` / `gripper_closed_position`: expected two different values for gripper_mode {:?}, found {} for both",
                self.gripper_mode,
                self.gripper_open_position
            );
        }
        if self.tcp_pose_frame == TcpPoseFrame::Flange && self.calibration_path().is_none() {
            bail!("parameter `tcp_pose_frame`: `flange` needs a `calibration` (its tool_to_flange), found none");
        }
        crate::runtime::arbiter::TakeoverConfig {
            deadband: self.teleop_deadband,
            release_s: self.teleop_release_s,
        }
        .validate()
        .map_err(|e| anyhow!("parameters `teleop_deadband` / `teleop_release_s`: {e}"))?;
        let t = &self.topics;
        for (name, v) in [
            ("image", &t.image),
            ("camera_info", &t.camera_info),
            ("joint_states", &t.joint_states),
            ("tcp_pose", &t.tcp_pose),
            ("instruction", &t.instruction),
            ("teleop_cmd", &t.teleop_cmd),
            ("teleop_gripper", &t.teleop_gripper),
            ("teleop_gripper_closed", &t.teleop_gripper_closed),
            ("enable", &t.enable),
            ("estop", &t.estop),
            ("twist_cmd", &t.twist_cmd),
            ("joint_cmd", &t.joint_cmd),
            ("joint_trajectory", &t.joint_trajectory),
            ("gripper_cmd", &t.gripper_cmd),
            ("imagined", &t.imagined),
            ("diagnostics", &t.diagnostics),
        ] {
            if v.is_empty() || v.contains(char::is_whitespace) {
                bail!("parameter `topics.{name}`: expected a topic name, found {v:?}");
            }
        }
        Ok(())
    }

    /// [`validate_values`](Self::validate_values), then the files: the policy
    /// folder has a `policy.yaml`, the calibration loads.
    pub fn validate(&self) -> Result<Option<Calibration>> {
        self.validate_values()?;
        let spec = self.policy.join("policy.yaml");
        if !spec.is_file() {
            bail!(
                "parameter `policy`: expected a policy bundle folder with policy.yaml, found {} ({} does not exist)",
                self.policy.display(),
                spec.display()
            );
        }
        match self.calibration_path() {
            Some(p) => {
                let c =
                    Calibration::load(p).map_err(|e| anyhow!("parameter `calibration`: {e}"))?;
                Ok(Some(c))
            }
            None => Ok(None),
        }
    }
}
