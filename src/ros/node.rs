//! The thin r2r layer of `vw2_policy_node`: subscriptions feed [`RosInputs`],
//! an [`R2rOutput`] publishes safe commands, and a loop on the main thread
//! spins the node, applies enable / e-stop through the [`Supervisor`], starts
//! and stops [`crate::runtime::run`] on its own thread, and publishes
//! imagined strips and diagnostics.
//!
//! Topics (names from the `topics.*` parameters; defaults shown):
//!
//! | topic | type | QoS | |
//! |---|---|---|---|
//! | `~/image` | sensor_msgs/Image | sensor data | camera (rgb8, bgr8, mono8) |
//! | `~/camera_info` | sensor_msgs/CameraInfo | sensor data | checked against the calibration |
//! | `~/joint_states` | sensor_msgs/JointState | sensor data | arm and finger joints |
//! | `~/tcp_pose` | geometry_msgs/PoseStamped | sensor data | measured TCP (or flange) pose in the base frame |
//! | `~/instruction` | std_msgs/String | reliable | task instruction |
//! | `~/teleop_cmd` | geometry_msgs/TwistStamped | reliable | operator twist (`teleop_mode`: shadow / takeover) |
//! | `~/teleop_gripper` | std_msgs/Float64 | reliable | operator gripper input (> 0 open) |
//! | `~/teleop_gripper_closed` | std_msgs/Bool | reliable | operator gripper button (true close) |
//! | `~/enable` | std_msgs/Bool | reliable | starts disabled |
//! | `~/estop` | std_msgs/Bool | reliable | true latches |
//! | `/servo_node/delta_twist_cmds` | geometry_msgs/TwistStamped | reliable | `servo_twist` |
//! | `/forward_position_controller/commands` | std_msgs/Float64MultiArray | reliable | `joint_forward` |
//! | `/joint_trajectory_controller/joint_trajectory` | trajectory_msgs/JointTrajectory | reliable | `joint_trajectory` |
//! | `~/gripper_cmd` | std_msgs/Float64 or Float64MultiArray | reliable | `gripper_mode` |
//! | `~/imagined` | sensor_msgs/Image | reliable | imagined futures (rgb8 strip) |
//! | `/diagnostics` | diagnostic_msgs/DiagnosticArray | reliable | latency, watchdog, plan rate |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use candle_core::Device;
use futures::{FutureExt, Stream, StreamExt};
use r2r::{QosProfile, WrappedTypesupport};

use super::convert::{
    camera_info_to_intrinsics, diagnostics_from_report, flange_pose_to_tool,
    frame_time_on_runtime_clock, gripper_to_float64, gripper_to_float64_array, image_to_raw_frame,
    intrinsics_mismatch, joint_state_to_proprio, joint_target_to_float64_array,
    joint_target_to_joint_trajectory, pose_to_tcp, safe_command_to_twist, seconds_to_stamp,
    stamp_is_zero, stamp_to_seconds, strip_to_image, twist_to_operator_command, JointCommander,
    JointIk, LiveDiagnostics, TwistSettings,
};
use super::io::{
    Action, CommandOutput, PublishingRenderer, RateMeter, RosInputs, RosIo, SharedPlanner,
    StripSlot, Supervisor, RESTART,
};
use super::params::{CommandMode, GripperMode, NodeParams, TcpPoseFrame, TeleopMode, NODE_NAME};
use crate::base::clock::now_s;
use crate::calibration::Calibration;
use crate::policy::{LoadedPolicy, Policy, PolicyOptions};
use crate::runtime::arbiter::{Control, TakeoverConfig};
use crate::runtime::operator::OperatorInbox;
use crate::runtime::{run, DecoderRenderer, Planner, Renderer, RunReport, RuntimeConfig};
use crate::safety::{CommandKind, GripperState, SafeCommand};

use r2r::diagnostic_msgs::msg::DiagnosticArray;
use r2r::geometry_msgs::msg::{PoseStamped, TwistStamped};
use r2r::sensor_msgs::msg::{CameraInfo, Image, JointState};
use r2r::std_msgs::msg::{Bool, Float64, Float64MultiArray, String as RosString};
use r2r::trajectory_msgs::msg::JointTrajectory;

/// The runtime's teleop link for `teleop_mode` (`None` when off).
fn teleop_link(
    params: &NodeParams,
    inbox: &Arc<OperatorInbox>,
) -> Option<crate::runtime::TeleopLink> {
    let control = match params.teleop_mode {
        TeleopMode::Off => return None,
        TeleopMode::Shadow => Control::Shadow,
        TeleopMode::Takeover => Control::Takeover,
    };
    Some(crate::runtime::TeleopLink {
        control,
        takeover: TakeoverConfig {
            deadband: params.teleop_deadband,
            release_s: params.teleop_release_s,
        },
        feed: inbox.clone(),
    })
}

/// ROS time minus runtime-clock time (s), shared with the output thread for stamps.
#[derive(Clone, Default)]
struct ClockOffset(Arc<AtomicU64>);

impl ClockOffset {
    fn set(&self, ros_now_s: f64, mono_now_s: f64) {
        self.0
            .store((ros_now_s - mono_now_s).to_bits(), Ordering::Relaxed);
    }
    fn ros_time_of(&self, mono_s: f64) -> f64 {
        mono_s + f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Where joint or twist commands go.
enum ArmPublisher {
    Twist(r2r::Publisher<TwistStamped>, TwistSettings),
    Forward(r2r::Publisher<Float64MultiArray>, JointCommander),
    Trajectory(r2r::Publisher<JointTrajectory>, JointCommander, f64),
}

enum GripperPublisher {
    None,
    Float64(r2r::Publisher<Float64>),
    Array(r2r::Publisher<Float64MultiArray>),
}

/// Publishes safe commands with r2r.
pub struct R2rOutput {
    arm: ArmPublisher,
    gripper: GripperPublisher,
    gripper_open: f64,
    gripper_closed: f64,
    last_gripper: Option<GripperState>,
    base_frame: String,
    inputs: RosInputs,
    clock: ClockOffset,
    ik_errors: u64,
}

impl R2rOutput {
    fn publish_gripper(&mut self, state: GripperState) -> Result<()> {
        if self.last_gripper == Some(state) {
            return Ok(());
        }
        match &self.gripper {
            GripperPublisher::None => {}
            GripperPublisher::Float64(p) => p.publish(&gripper_to_float64(
                state,
                self.gripper_open,
                self.gripper_closed,
            ))?,
            GripperPublisher::Array(p) => p.publish(&gripper_to_float64_array(
                state,
                self.gripper_open,
                self.gripper_closed,
            ))?,
        }
        self.last_gripper = Some(state);
        Ok(())
    }
}

impl CommandOutput for R2rOutput {
    fn publish(&mut self, cmd: &SafeCommand) -> Result<()> {
        let stamp = seconds_to_stamp(self.clock.ros_time_of(cmd.t));
        let measured_joints = self.inputs.arm_joints();
        match &mut self.arm {
            ArmPublisher::Twist(p, settings) => {
                let measured = self.inputs.tcp();
                let msg = safe_command_to_twist(
                    cmd,
                    &self.base_frame,
                    settings,
                    measured.as_ref(),
                    stamp,
                )?;
                p.publish(&msg)?;
            }
            ArmPublisher::Forward(_, commander) | ArmPublisher::Trajectory(_, commander, _) => {
                let target = match commander.command(cmd, measured_joints.as_deref()) {
                    Ok(t) => t,
                    Err(e) if cmd.kind == CommandKind::Move => {
                        // An unreachable / jumping IK solution: hold instead of guessing.
                        self.ik_errors += 1;
                        if self.ik_errors.is_power_of_two() {
                            tracing::warn!(error = %e, count = self.ik_errors, "IK refused a move: holding");
                        }
                        commander.hold(measured_joints.as_deref())?
                    }
                    Err(e) => return Err(e),
                };
                match &self.arm {
                    ArmPublisher::Forward(p, _) => {
                        p.publish(&joint_target_to_float64_array(&target))?
                    }
                    ArmPublisher::Trajectory(p, _, lookahead) => {
                        // Zero stamp: the controller starts the point on receipt.
                        let zero = seconds_to_stamp(0.0);
                        p.publish(&joint_target_to_joint_trajectory(&target, *lookahead, zero))?
                    }
                    ArmPublisher::Twist(..) => unreachable!(),
                }
            }
        }
        self.publish_gripper(cmd.gripper)
    }

    fn finish(&mut self) -> Result<()> {
        self.last_gripper = None;
        if let ArmPublisher::Forward(_, c) | ArmPublisher::Trajectory(_, c, _) = &mut self.arm {
            c.reset();
        }
        Ok(())
    }
}

/// Drains a subscription stream without blocking.
fn drain<T, S: Stream<Item = T> + Unpin>(s: &mut S, mut f: impl FnMut(T)) {
    while let Some(Some(msg)) = s.next().now_or_never() {
        f(msg);
    }
}

fn sub<T: WrappedTypesupport + 'static>(
    node: &mut r2r::Node,
    topic: &str,
    qos: QosProfile,
) -> Result<Sub<T>> {
    let s = node
        .subscribe::<T>(topic, qos)
        .map_err(|e| anyhow!("cannot subscribe to {topic}: {e}"))?;
    Ok(Box::new(s))
}

fn publisher<T: WrappedTypesupport>(
    node: &mut r2r::Node,
    topic: &str,
) -> Result<r2r::Publisher<T>> {
    node.create_publisher::<T>(topic, QosProfile::default())
        .map_err(|e| anyhow!("cannot advertise {topic}: {e}"))
}

/// The ROS context. rcl parses the command line again here, and r2r panics
/// when it refuses it (e.g. a parameter file that YAML 1.2 reads but rcl's YAML
/// 1.1 parser does not: `y` is a boolean there); that becomes a parameter error.
fn ros_context() -> Result<r2r::Context> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ctx = std::panic::catch_unwind(r2r::Context::create);
    std::panic::set_hook(hook);
    match ctx {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) => Err(anyhow!("ROS context: {e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            Err(anyhow!(
                "parameters: rcl refused the command line or a parameter file: {msg} \
                 (rcl reads YAML 1.1: quote names such as y, n, on, off)"
            ))
        }
    }
}

fn ros_now_s(node: &r2r::Node) -> Result<f64> {
    let clock = node.get_ros_clock();
    let now = clock
        .lock()
        .map_err(|_| anyhow!("ROS clock poisoned"))?
        .get_now()?;
    Ok(now.as_secs_f64())
}

struct RunningPipeline {
    handle: JoinHandle<Result<RunReport>>,
    stop: Arc<AtomicBool>,
    stop_reason: Option<String>,
}

/// Runs the node: `args` is the process's command line after the program
/// name (`--ros-args …`). `ik`: the IK solver for the joint command modes; the
/// stock binary passes `None` and joint modes are refused at start. Returns
/// after Ctrl-C (holding the robot first) or a start-up error.
pub fn run_node(args: &[String], ik: Option<Box<dyn JointIk>>) -> Result<()> {
    let mut node = PolicyNode::setup(args, ik)?;
    while node.spin_once()? {}
    Ok(())
}

/// `main` of a node binary: logs to stderr (`RUST_LOG`, default info), runs
/// [`run_node`] on the process's arguments with `ik`, and exits with status 2
/// on a parameter error, 1 on another start-up error, 0 after Ctrl-C.
pub fn node_main(ik: Option<Box<dyn JointIk>>) -> ! {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let name = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| NODE_NAME.to_string());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run_node(&args, ik) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{name}: {e:#}");
            let params = e.chain().any(|c| c.to_string().contains("parameter"));
            std::process::exit(if params { 2 } else { 1 });
        }
    }
}

/// A subscription the loop drains without blocking.
type Sub<T> = Box<dyn Stream<Item = T> + Unpin>;

/// Everything the node listens to.
struct Subscriptions {
    image: Sub<Image>,
    camera_info: Sub<CameraInfo>,
    joints: Sub<JointState>,
    tcp: Sub<PoseStamped>,
    instruction: Sub<RosString>,
    teleop: Sub<TwistStamped>,
    teleop_gripper: Sub<Float64>,
    teleop_gripper_closed: Sub<Bool>,
    enable: Sub<Bool>,
    estop: Sub<Bool>,
}

/// The node after set-up: its ROS side, the policy, and the state of the
/// supervision loop ([`PolicyNode::spin_once`]).
struct PolicyNode {
    params: NodeParams,
    calibration: Option<Calibration>,
    tool_to_flange: Option<Calibration>,
    node: r2r::Node,
    hardware_id: String,
    subs: Subscriptions,
    planner: Arc<Mutex<Box<dyn Planner>>>,
    renderer: Option<Arc<Mutex<Box<dyn Renderer>>>>,
    operator_inbox: Arc<OperatorInbox>,
    inputs: RosInputs,
    clock: ClockOffset,
    output: Arc<Mutex<R2rOutput>>,
    imagined_pub: Option<r2r::Publisher<Image>>,
    diag_pub: r2r::Publisher<DiagnosticArray>,
    shutdown: Arc<AtomicBool>,
    supervisor: Supervisor,
    pipeline: Option<RunningPipeline>,
    last_report: Option<RunReport>,
    strip: StripSlot,
    live: LiveDiagnostics,
    last_image_recv: Option<f64>,
    next_diag: f64,
    rates: [RateMeter; 3],
    plan_prev: (u64, u64),
}

impl PolicyNode {
    /// Parameters, policy, subscriptions and publishers. The policy is loaded
    /// first: a bad bundle fails before anything talks to ROS.
    fn setup(args: &[String], ik: Option<Box<dyn JointIk>>) -> Result<Self> {
        let mut params = NodeParams::from_args(args)?;
        let calibration = params.validate()?;
        if params.command_mode.is_joint() && ik.is_none() {
            bail!(
                "parameter `command_mode`: {} needs an IK solver and this node has none (ik_solver = {:?}). \
                 The policy commands TCP poses; use command_mode servo_twist (MoveIt Servo does the IK), \
                 or build a node with your robot's IK: vw2_policy::ros::node::run_node(args, Some(Box::new(my_ik)))",
                params.command_mode.name(),
                params.ik_solver
            );
        }
        let tool_to_flange = match (params.tcp_pose_frame, &calibration) {
            (TcpPoseFrame::Flange, Some(c)) => Some(c.clone()),
            _ => None,
        };

        let dev = Device::Cpu;
        let bundle = LoadedPolicy::load(&params.policy, &dev)
            .with_context(|| format!("parameter `policy`: {}", params.policy.display()))?;
        // The bundle owns the control rate: the envelope takes it (or must agree).
        params.safety = params
            .safety
            .clone()
            .with_control_rate(
                bundle.spec.control_rate_hz,
                &format!("the policy bundle {}", params.policy.display()),
            )
            .map_err(|e| anyhow!("parameter `safety`: {e}"))?;
        let renderer: Option<Arc<Mutex<Box<dyn Renderer>>>> = params.publish_imagined.then(|| {
            Arc::new(Mutex::new(
                Box::new(DecoderRenderer::new(bundle.dldm.clone())) as Box<dyn Renderer>,
            ))
        });
        let policy = Policy::new(
            bundle,
            PolicyOptions {
                seed: params.seed,
                replan_every: params.replan_every,
                ensemble_decay: params.ensemble_decay,
                ..Default::default()
            },
            dev,
        )?;
        let planner: Arc<Mutex<Box<dyn Planner>>> = Arc::new(Mutex::new(Box::new(policy)));

        let ctx = ros_context()?;
        let mut node =
            r2r::Node::create(ctx, NODE_NAME, "").map_err(|e| anyhow!("ROS node: {e}"))?;
        if params.use_sim_time {
            enable_sim_time(&mut node)?;
        }
        let hardware_id = node
            .fully_qualified_name()
            .unwrap_or_else(|_| NODE_NAME.to_string());
        let t = &params.topics;
        let sensor = QosProfile::sensor_data();
        let reliable = QosProfile::default();
        let subs = Subscriptions {
            image: sub(&mut node, &t.image, sensor.clone())?,
            camera_info: sub(&mut node, &t.camera_info, sensor.clone())?,
            joints: sub(&mut node, &t.joint_states, sensor.clone())?,
            tcp: sub(&mut node, &t.tcp_pose, sensor)?,
            instruction: sub(&mut node, &t.instruction, reliable.clone())?,
            teleop: sub(&mut node, &t.teleop_cmd, reliable.clone())?,
            teleop_gripper: sub(&mut node, &t.teleop_gripper, reliable.clone())?,
            teleop_gripper_closed: sub(&mut node, &t.teleop_gripper_closed, reliable.clone())?,
            enable: sub(&mut node, &t.enable, reliable.clone())?,
            estop: sub(&mut node, &t.estop, reliable)?,
        };

        // One output, moved into each run and handed back through a shared slot.
        let inputs = RosInputs::new(
            params.safety.stale_timeout_s,
            params.command_mode.is_joint(),
        );
        let clock = ClockOffset::default();
        let output: Arc<Mutex<R2rOutput>> = Arc::new(Mutex::new(R2rOutput {
            arm: arm_publisher(&mut node, &params, ik)?,
            gripper: gripper_publisher(&mut node, &params)?,
            gripper_open: params.gripper_open_position,
            gripper_closed: params.gripper_closed_position,
            last_gripper: None,
            base_frame: params.base_frame.clone(),
            inputs: inputs.clone(),
            clock: clock.clone(),
            ik_errors: 0,
        }));
        let imagined_pub = params
            .publish_imagined
            .then(|| publisher::<Image>(&mut node, &t.imagined))
            .transpose()?;
        let diag_pub = publisher::<DiagnosticArray>(&mut node, &t.diagnostics)?;
        tracing::info!(
            node = %hardware_id,
            mode = params.command_mode.name(),
            policy = %params.policy.display(),
            "vw2_policy_node ready (disabled: publish true on {})",
            t.enable
        );
        Ok(Self {
            supervisor: Supervisor::new(&params.instruction),
            params,
            calibration,
            tool_to_flange,
            node,
            hardware_id,
            subs,
            planner,
            renderer,
            operator_inbox: Arc::new(OperatorInbox::default()),
            inputs,
            clock,
            output,
            imagined_pub,
            diag_pub,
            shutdown: crate::runtime::cli::ctrl_c_flag(),
            pipeline: None,
            last_report: None,
            strip: Arc::new(Mutex::new(None)),
            live: LiveDiagnostics::default(),
            last_image_recv: None,
            next_diag: 0.0,
            rates: Default::default(),
            plan_prev: (0, 0),
        })
    }

    /// One turn of the loop: spin, read the inputs, start or stop the policy,
    /// publish. `false` after Ctrl-C (the robot held first).
    fn spin_once(&mut self) -> Result<bool> {
        self.node.spin_once(Duration::from_millis(2));
        let mono = now_s();
        let ros_now = ros_now_s(&self.node)?;
        self.clock.set(ros_now, mono);
        self.drain_inputs(mono, ros_now);
        let missing = self.supervise(mono)?;
        self.publish(mono, ros_now, missing.as_deref())?;
        if self.shutdown.load(Ordering::Relaxed) {
            if let Some(p) = self.pipeline.take() {
                p.stop.store(true, Ordering::Relaxed);
                // The pipeline's exit publishes the holds; publishers live until it returns.
                let _ = p.handle.join();
            }
            tracing::info!("shut down");
            return Ok(false);
        }
        Ok(true)
    }

    /// Every queued message, e-stop and enable first.
    fn drain_inputs(&mut self, mono: f64, ros_now: f64) {
        let Self {
            params,
            calibration,
            tool_to_flange,
            subs,
            operator_inbox,
            inputs,
            supervisor,
            live,
            last_image_recv,
            ..
        } = self;
        let t = &params.topics;
        drain(&mut subs.estop, |m: Bool| supervisor.on_estop(m.data));
        drain(&mut subs.enable, |m: Bool| supervisor.on_enable(m.data));
        drain(&mut subs.tcp, |m: PoseStamped| {
            let pose = pose_to_tcp(&m).and_then(|p| match &*tool_to_flange {
                Some(c) => flange_pose_to_tool(c, &p),
                None => Ok(p),
            });
            match pose {
                Ok(p) => inputs.on_tcp_pose_at(p, mono),
                Err(e) => live.last_input_error = format!("{}: {e}", t.tcp_pose),
            }
        });
        drain(
            &mut subs.joints,
            |m: JointState| match joint_state_to_proprio(
                &m,
                &params.joint_names,
                &params.gripper_joint_names,
            ) {
                Ok(s) => inputs.on_joints_at(s, mono),
                Err(e) => live.last_input_error = format!("{}: {e}", t.joint_states),
            },
        );
        drain(&mut subs.image, |m: Image| match image_to_raw_frame(&m) {
            Ok(frame) => {
                *last_image_recv = Some(mono);
                let stamp =
                    (!stamp_is_zero(&m.header.stamp)).then(|| stamp_to_seconds(&m.header.stamp));
                let t_frame = frame_time_on_runtime_clock(stamp, ros_now, mono);
                let _ = inputs.on_frame(frame, t_frame, mono);
            }
            Err(e) => {
                inputs.on_refused_frame();
                live.last_input_error = format!("{}: {e}", t.image);
            }
        });
        drain(&mut subs.camera_info, |m: CameraInfo| {
            if let Some(c) = &*calibration {
                live.camera_info_mismatch = match camera_info_to_intrinsics(&m) {
                    Ok(cam) => intrinsics_mismatch(&c.intrinsics, &cam, 0.02),
                    Err(e) => Some(e.to_string()),
                };
            }
        });
        drain(&mut subs.instruction, |m: RosString| {
            supervisor.on_instruction(&m.data)
        });
        let rate = params.safety.rate_hz();
        drain(&mut subs.teleop, |m: TwistStamped| {
            live.teleop_msgs += 1;
            operator_inbox.push(twist_to_operator_command(&m, ros_now, mono, rate));
        });
        drain(&mut subs.teleop_gripper, |m: Float64| {
            operator_inbox.push_gripper(m.data)
        });
        drain(&mut subs.teleop_gripper_closed, |m: Bool| {
            operator_inbox.push_gripper(if m.data { -1.0 } else { 1.0 })
        });
        while let Some(line) = supervisor.log.pop_front() {
            tracing::warn!("{line}");
        }
    }

    /// Collects a finished run, then starts or stops the policy as the
    /// supervisor decides. Returns what is missing to run, if anything.
    fn supervise(&mut self, mono: f64) -> Result<Option<String>> {
        let stale = self.params.safety.stale_timeout_s;
        let missing = camera_missing(self.last_image_recv, mono, stale)
            .or_else(|| self.inputs.missing_at(mono));
        if self
            .pipeline
            .as_ref()
            .is_some_and(|p| p.handle.is_finished())
        {
            let p = self.pipeline.take().expect("checked");
            let restart = p.stop_reason.as_deref() == Some(RESTART);
            let why = match p.handle.join() {
                Ok(Ok(report)) => {
                    // A run the runtime ended itself (its watchdog held, then went
                    // quiet) names the input that went missing, if one did.
                    let why = match (&p.stop_reason, &missing) {
                        (Some(r), _) => r.clone(),
                        (None, Some(m)) => format!("{m} ({})", report.ended_by),
                        (None, None) => report.ended_by.clone(),
                    };
                    tracing::info!(ended_by = %report.ended_by, commands = report.commands, holds = report.holds, "run ended");
                    self.last_report = Some(report);
                    why
                }
                Ok(Err(e)) => {
                    tracing::error!(error = format!("{e:#}"), "run failed (robot held)");
                    format!("error: {e:#}")
                }
                Err(_) => "error: pipeline thread panicked".to_string(),
            };
            self.supervisor.on_run_ended(&why, restart);
        }
        match self
            .supervisor
            .decide(self.pipeline.is_some(), missing.as_deref())
        {
            Action::None => {}
            Action::Stop(reason) => {
                if let Some(p) = self.pipeline.as_mut().filter(|p| p.stop_reason.is_none()) {
                    tracing::warn!(%reason, "stopping the policy: holding");
                    p.stop.store(true, Ordering::Relaxed);
                    p.stop_reason = Some(reason);
                }
            }
            Action::Start(instruction) => self.start_run(instruction)?,
        }
        Ok(missing)
    }

    /// Starts the runtime on a thread for `instruction`.
    fn start_run(&mut self, instruction: String) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let out: Box<dyn CommandOutput> = Box::new(SharedOutput(self.output.clone()));
        let rate = self.params.safety.rate_hz();
        let io = match RosIo::new(self.inputs.clone(), out, rate, stop.clone()) {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the policy");
                self.supervisor.on_run_ended(&format!("error: {e}"), false);
                return Ok(());
            }
        };
        let mut cfg = RuntimeConfig::new(self.params.safety.clone(), &instruction);
        cfg.frame_timeout_s = self.params.frame_timeout_s;
        cfg.teleop = teleop_link(&self.params, &self.operator_inbox);
        let planner = Box::new(SharedPlanner::new(
            self.planner.clone(),
            self.inputs.clone(),
        ));
        let strip = self.strip.clone();
        let renderer = self
            .renderer
            .clone()
            .map(|r| Box::new(PublishingRenderer::new(r, strip)) as Box<dyn Renderer>);
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("vw2-pipeline".into())
            .spawn(move || run(Box::new(io), planner, renderer, cfg, stop2))?;
        tracing::info!(%instruction, "policy running");
        self.pipeline = Some(RunningPipeline {
            handle,
            stop,
            stop_reason: None,
        });
        Ok(())
    }

    /// The imagined strip when a new one is ready, and diagnostics at their rate.
    fn publish(&mut self, mono: f64, ros_now: f64, missing: Option<&str>) -> Result<()> {
        if let Some(p) = &self.imagined_pub {
            if let Some((step, img)) = self
                .strip
                .lock()
                .map_err(|_| anyhow!("strip slot poisoned"))?
                .take()
            {
                // frame_id names the source; the plan's control step goes to the log.
                let msg = strip_to_image(&img, seconds_to_stamp(ros_now), "vw2_imagined")?;
                p.publish(&msg)?;
                tracing::debug!(step, "published an imagined strip");
            }
        }
        if mono < self.next_diag {
            return Ok(());
        }
        self.next_diag = mono + 1.0 / self.params.diagnostics_rate_hz;
        let c = self.inputs.counters();
        let running = self.pipeline.is_some();
        let live = &mut self.live;
        live.state = self.supervisor.state(running, missing);
        live.enabled = self.supervisor.enabled();
        live.estop_latched = self.supervisor.estop_latched();
        live.instruction = self.supervisor.instruction().to_string();
        live.last_end = self.supervisor.last_end.clone();
        live.frames_dropped = c.frames_dropped.load(Ordering::Relaxed);
        live.frames_refused = c.frames_refused.load(Ordering::Relaxed);
        let [cam_rate, plan_rate, cmd_rate] = &mut self.rates;
        live.camera_rate_hz = cam_rate.rate(mono, c.frames.load(Ordering::Relaxed));
        live.plan_rate_hz = plan_rate.rate(mono, c.plans.load(Ordering::Relaxed));
        live.command_rate_hz = cmd_rate.rate(mono, c.commands.load(Ordering::Relaxed));
        let (calls, ns) = (
            c.plan_calls.load(Ordering::Relaxed),
            c.plan_ns.load(Ordering::Relaxed),
        );
        let prev = self.plan_prev;
        live.plan_time_s =
            (calls > prev.0).then(|| (ns - prev.1) as f64 * 1e-9 / (calls - prev.0) as f64);
        self.plan_prev = (calls, ns);
        let last = self.inputs.last_command();
        live.watchdog = match last {
            _ if !running => "not running".into(),
            Some((tc, _, _)) if mono - tc > 2.0 * self.params.safety.dt() => "quiet".into(),
            Some((_, CommandKind::Hold, _)) => "holding".into(),
            Some((_, CommandKind::Move, _)) => "moving".into(),
            None => "starting".into(),
        };
        live.frame_age_s = match (last, self.inputs.newest_frame_t()) {
            (Some((tc, _, _)), Some(tf)) => Some(tc - tf),
            _ => None,
        };
        let msg = diagnostics_from_report(
            self.last_report.as_ref(),
            live,
            self.params.safety.stale_timeout_s,
            &self.hardware_id,
            seconds_to_stamp(ros_now),
        );
        self.diag_pub.publish(&msg)?;
        Ok(())
    }
}

/// The arm's publisher for `command_mode`.
fn arm_publisher(
    node: &mut r2r::Node,
    params: &NodeParams,
    ik: Option<Box<dyn JointIk>>,
) -> Result<ArmPublisher> {
    let t = &params.topics;
    let dt = params.safety.dt();
    Ok(match params.command_mode {
        CommandMode::ServoTwist => ArmPublisher::Twist(
            publisher(node, &t.twist_cmd)?,
            TwistSettings::new(
                params.twist_units,
                params.servo_scale_linear,
                params.servo_scale_rotational,
                params.servo_position_gain,
                &params.safety,
            ),
        ),
        CommandMode::JointForward => ArmPublisher::Forward(
            publisher(node, &t.joint_cmd)?,
            JointCommander::new(params.joint_names.clone(), ik, params.max_joint_speed, dt),
        ),
        CommandMode::JointTrajectory => ArmPublisher::Trajectory(
            publisher(node, &t.joint_trajectory)?,
            JointCommander::new(params.joint_names.clone(), ik, params.max_joint_speed, dt),
            params.trajectory_lookahead_s,
        ),
    })
}

/// The gripper's publisher for `gripper_mode`.
fn gripper_publisher(node: &mut r2r::Node, params: &NodeParams) -> Result<GripperPublisher> {
    let t = &params.topics;
    Ok(match params.gripper_mode {
        GripperMode::None => GripperPublisher::None,
        GripperMode::Float64 => GripperPublisher::Float64(publisher(node, &t.gripper_cmd)?),
        GripperMode::Float64Array => GripperPublisher::Array(publisher(node, &t.gripper_cmd)?),
    })
}

/// Makes the node's ROS clock follow `/clock` (r2r has the time source only
/// when rosgraph_msgs is among the generated messages, i.e. not in doc-only builds).
#[cfg(not(feature = "ros2-check"))]
fn enable_sim_time(node: &mut r2r::Node) -> Result<()> {
    let ts = node.get_time_source();
    ts.enable_sim_time(node)
        .map_err(|e| anyhow!("use_sim_time: {e}"))
}

#[cfg(feature = "ros2-check")]
fn enable_sim_time(_node: &mut r2r::Node) -> Result<()> {
    bail!("use_sim_time: not available in a ros2-check (doc-only) build")
}

/// No camera frame yet, or the newest one arrived longer than `stale` s ago.
fn camera_missing(last_recv: Option<f64>, now: f64, stale: f64) -> Option<String> {
    match last_recv {
        None => Some("no camera frame received".into()),
        Some(t) if now - t > stale => Some(format!("camera silent for {:.2} s", now - t)),
        _ => None,
    }
}

/// The node's output, shared between runs (one run at a time uses it).
struct SharedOutput(Arc<Mutex<R2rOutput>>);

impl CommandOutput for SharedOutput {
    fn publish(&mut self, cmd: &SafeCommand) -> Result<()> {
        self.0
            .lock()
            .map_err(|_| anyhow!("output poisoned"))?
            .publish(cmd)
    }
    fn finish(&mut self) -> Result<()> {
        self.0
            .lock()
            .map_err(|_| anyhow!("output poisoned"))?
            .finish()
    }
}
