//! The pipeline fed with recorded and synthetic inputs (dora-style node tests):
//! replay through the bundled policy, the fake simulator in lockstep, the
//! real-time path with a slow monitor, and a dead camera.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;
use vw2_policy::io::env_adapter::EnvConfig;
use vw2_policy::io::robot::{Encoding, RawFrame, ReplayIo, SimIo, SyntheticIo};
use vw2_policy::policy::{LoadedPolicy, Policy, PolicyOptions};
use vw2_policy::runtime::{
    run, BusyRenderer, DecoderRenderer, NullPlanner, Planner, RuntimeConfig,
};
use vw2_policy::safety::{CommandKind, SafetyConfig};

fn tiny_policy() -> Policy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-policy");
    Policy::new(
        LoadedPolicy::load(&dir, &Device::Cpu).unwrap(),
        PolicyOptions::default(),
        Device::Cpu,
    )
    .unwrap()
}

fn record_fake(dir: &Path, episodes: usize) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args([
            "record",
            "--backend",
            "fake",
            "--episodes",
            &episodes.to_string(),
            "--out",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn synthetic(frames: u64, lockstep: bool) -> Box<SyntheticIo> {
    Box::new(SyntheticIo {
        rate: 30.0,
        frame: RawFrame {
            encoding: Encoding::Bgr8,
            height: 200,
            width: 200,
            step: 600,
            data: vec![90; 200 * 600],
        },
        frames,
        lockstep,
    })
}

#[test]
fn replay_through_the_tiny_policy_stays_in_the_envelope() {
    let d = tempfile::tempdir().unwrap();
    record_fake(d.path(), 1);
    let (io, commands) = ReplayIo::open(d.path(), 0, 30.0).unwrap();
    let policy = tiny_policy();
    let renderer = DecoderRenderer::new(policy.bundle().dldm.clone());
    let safety = SafetyConfig::calvin_default();
    let cfg = RuntimeConfig::new(safety.clone(), "pull the handle to open the drawer");
    let report = run(
        Box::new(io),
        Box::new(policy),
        Some(Box::new(renderer)),
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    // The fake episode has 7 frames: one tick per frame, plans at frames 0 and 4.
    assert_eq!(report.frames, 7);
    assert_eq!(report.ticks, 7);
    assert_eq!(report.plans, 2);
    assert_eq!(report.ended_by, "end of stream");
    assert_eq!(report.obs_to_command.count, 2);
    assert!(report.monitor_frames + report.dropped_monitor_frames == 2);
    if let Some((step, strip)) = report.imagined.first() {
        assert_eq!(*step, 0);
        // One latent step imagined: 4 frames of 32×32 side by side.
        assert_eq!((strip.height, strip.width), (32, 128));
    }
    let cmds: Vec<_> = commands.try_iter().collect();
    // 7 ticks + the holds sent on the way out.
    assert_eq!(cmds.len() as u64, report.commands);
    for c in &cmds {
        assert!(c.is_finite());
        for i in 0..3 {
            assert!(c.target.position[i] >= safety.workspace_min[i] - 1e-9);
            assert!(c.target.position[i] <= safety.workspace_max[i] + 1e-9);
        }
    }
    assert_eq!(cmds.last().unwrap().kind, CommandKind::Hold);
}

#[test]
fn fake_simulator_in_lockstep() {
    let mut env = EnvConfig::new("fake");
    env.timeout_s = 10.0;
    let io = SimIo::start(&env, None, None).unwrap();
    let mut cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "open the drawer");
    cfg.max_steps = Some(12);
    let report = run(
        Box::new(io),
        Box::new(NullPlanner::new([32, 32], 4)),
        None,
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.ticks, 12);
    assert_eq!(report.ended_by, "max_steps");
    // Frames that arrive while the run winds down may still be planned on.
    assert!(report.plans >= 3);
    assert!(report.frames >= 12);
}

#[test]
fn lockstep_synthetic_measures_every_frame() {
    let cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "x");
    let report = run(
        synthetic(40, true),
        Box::new(NullPlanner::new([32, 32], 4)),
        None,
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.ticks, 40);
    assert_eq!(report.frames, 40);
    assert_eq!(report.plans, 10);
    assert_eq!(report.obs_to_command.count, 10);
    assert_eq!(report.holds, 3, "only the closing holds");
}

#[test]
fn a_slow_monitor_drops_plans_and_never_blocks_actuate() {
    let mut cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "x");
    cfg.monitor_queue = 1;
    // 12 plans in 1.6 s of frames; each render takes 0.5 s.
    let report = run(
        synthetic(48, true),
        Box::new(NullPlanner::new([32, 32], 4)),
        Some(Box::new(BusyRenderer { seconds: 0.5 })),
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.ticks, 48, "actuate ran every frame");
    assert!(report.dropped_monitor_frames > 0, "{report:?}");
    assert_eq!(report.monitor_frames + report.dropped_monitor_frames, 12);
}

#[test]
fn a_dead_camera_means_hold_then_silence() {
    // Real time: 5 frames, then the camera stops; the watchdog (0.25 s) holds
    // the arm hold_repeats times and the run ends when the layer goes quiet.
    let mut cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "x");
    cfg.max_steps = Some(300);
    let report = run(
        synthetic(5, false),
        Box::new(NullPlanner::new([32, 32], 4)),
        None,
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.ended_by, "safety silent");
    assert!(report.ticks < 300);
    assert!(report.holds >= 3, "{report:?}");
    assert!(
        report.safety_events.contains_key("Stale"),
        "{:?}",
        report.safety_events
    );
}

#[test]
fn planner_errors_stop_the_run_with_context() {
    // A policy that wants 15 proprio values gets 15 from the fake; feed a
    // synthetic frame with the wrong encoding size instead.
    let io = Box::new(SyntheticIo {
        rate: 30.0,
        frame: RawFrame {
            encoding: Encoding::Rgb8,
            height: 10,
            width: 10,
            step: 30,
            data: vec![0; 29],
        },
        frames: 3,
        lockstep: true,
    });
    let cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "x");
    let e = run(
        io,
        Box::new(NullPlanner::new([32, 32], 4)),
        None,
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("ingest") && msg.contains("image.data"),
        "{msg}"
    );
}

/// A planner whose first plan takes 0.4 s (a cold model).
struct SlowStart(NullPlanner, bool);

impl Planner for SlowStart {
    fn reset(&mut self, instruction: &str) -> anyhow::Result<()> {
        self.0.reset(instruction)
    }
    fn image_size(&self) -> [usize; 2] {
        self.0.image_size()
    }
    fn control_rate_hz(&self) -> f64 {
        self.0.control_rate_hz()
    }
    fn observe(
        &mut self,
        frame: &vw2_policy::io::RgbImage,
        proprio: &[f64],
        t: f64,
    ) -> anyhow::Result<Option<vw2_policy::policy::Plan>> {
        if !self.1 {
            self.1 = true;
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        self.0.observe(frame, proprio, t)
    }
}

#[test]
fn a_slow_first_plan_holds_then_moves_instead_of_ending_the_run() {
    let mut cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "x");
    cfg.max_steps = Some(45);
    let report = run(
        synthetic(60, false),
        Box::new(SlowStart(NullPlanner::new([32, 32], 4), false)),
        None,
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.ended_by, "max_steps");
    assert_eq!(report.ticks, 45);
    // Quiet before the first plan, then moving: more commands than the holds.
    assert!(report.commands > report.holds, "{report:?}");
}

/// An operator that pushes +x beyond the deadband during `[from, to)` (s),
/// zero otherwise, and goes silent from `silent_from` on.
struct ScriptedFeed {
    from: f64,
    to: f64,
    silent_from: f64,
}

impl vw2_policy::teleop::operator::OperatorFeed for ScriptedFeed {
    fn poll(&self, now: f64) -> Option<vw2_policy::teleop::operator::OperatorCommand> {
        if now >= self.silent_from {
            return None;
        }
        let x = if (self.from..self.to).contains(&now) {
            1.0
        } else {
            0.0
        };
        Some(vw2_policy::teleop::operator::OperatorCommand {
            t: now,
            motion: [x, 0.0, 0.0, 0.0, 0.0, 0.0],
            gripper: None,
        })
    }
}

fn teleop_run(feed: ScriptedFeed, steps: u64) -> vw2_policy::runtime::RunReport {
    use vw2_policy::teleop::arbiter::{Control, TakeoverConfig};
    let mut env = EnvConfig::new("fake");
    env.timeout_s = 10.0;
    let io = SimIo::start(&env, None, None).unwrap();
    let mut cfg = RuntimeConfig::new(SafetyConfig::calvin_default(), "open the drawer");
    cfg.max_steps = Some(steps);
    cfg.teleop = Some(vw2_policy::runtime::TeleopLink {
        control: Control::Takeover,
        takeover: TakeoverConfig::default(),
        feed: Arc::new(feed),
    });
    run(
        Box::new(io),
        Box::new(NullPlanner::new([32, 32], 4)),
        None,
        cfg,
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap()
}

/// The runtime (what the ROS node runs) with an operator in takeover mode:
/// input from 0.3 s to 0.6 s takes over once, control returns 1 s after the
/// release.
#[test]
fn takeover_in_the_runtime_switches_once_and_hands_back() {
    let r = teleop_run(
        ScriptedFeed {
            from: 0.3,
            to: 0.6,
            silent_from: f64::INFINITY,
        },
        60,
    );
    let t = r.teleop.expect("teleop stats");
    assert_eq!((t.interventions, t.hand_backs), (1, 1), "{t:?}");
    assert!((37..=39).contains(&t.operator_ticks), "{t:?}");
    assert_eq!(t.policy_ticks + t.operator_ticks, 60);
    assert_eq!(t.held_ticks, 0);
}

/// A stream that goes silent holds, goes quiet and ends the lockstep run; the
/// policy never gets the arm back.
#[test]
fn a_silent_operator_in_the_runtime_holds_and_stops() {
    let r = teleop_run(
        ScriptedFeed {
            from: 0.0,
            to: 0.0,
            silent_from: 0.5,
        },
        120,
    );
    let t = r.teleop.expect("teleop stats");
    assert_eq!(r.ended_by, "safety silent");
    // 0.5 s of policy, 0.25 s until stale, then the holds.
    assert!((22..=24).contains(&t.policy_ticks), "{t:?}");
    assert!(t.held_ticks >= 3, "{t:?}");
    assert!(r.ticks < 40, "{}", r.ticks);
}

#[test]
fn the_bundle_owns_the_control_rate() {
    // A policy trained at 15 Hz on a 30 Hz robot: refused at start, naming both.
    let mut planner = NullPlanner::new([32, 32], 4);
    planner.control_rate_hz = 15.0;
    let mut safety = SafetyConfig::calvin_default();
    safety.control_rate_hz = None;
    let e = run(
        synthetic(8, true),
        Box::new(planner),
        None,
        RuntimeConfig::new(safety.clone(), "x"),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("15 Hz") && e.contains("30 Hz"), "{e}");
    // A safety envelope that states another rate than the policy's is refused too.
    let mut stated = safety.clone();
    stated.control_rate_hz = Some(15.0);
    let e = format!(
        "{:#}",
        run(
            synthetic(8, true),
            Box::new(NullPlanner::new([32, 32], 4)),
            None,
            RuntimeConfig::new(stated, "x"),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap_err()
    );
    assert!(
        e.contains("control_rate_hz") && e.contains("15 Hz") && e.contains("30 Hz"),
        "{e}"
    );
    // Left out, the envelope takes the policy's rate and the run goes.
    let report = run(
        synthetic(8, true),
        Box::new(NullPlanner::new([32, 32], 4)),
        None,
        RuntimeConfig::new(safety, "x"),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.ticks, 8);
}
