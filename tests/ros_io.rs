//! The ROS-free half of the node: `RosIo` under the real pipeline, the
//! enable / e-stop supervisor (`cargo test --features ros2-check --test ros_io`).
#![cfg(feature = "ros2")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vw2_policy::base::clock::now_s;
use vw2_policy::io::robot::{Encoding, RawFrame};
use vw2_policy::ros::convert::JointSample;
use vw2_policy::ros::io::*;
use vw2_policy::runtime::{run, NullPlanner, Planner, RuntimeConfig};
use vw2_policy::safety::{CommandKind, SafeCommand, SafetyConfig, TcpPose};

#[derive(Clone, Default)]
struct Recorder {
    cmds: Arc<Mutex<Vec<(f64, SafeCommand)>>>,
    finished: Arc<AtomicBool>,
}

impl CommandOutput for Recorder {
    fn publish(&mut self, cmd: &SafeCommand) -> anyhow::Result<()> {
        assert!(
            !self.finished.load(Ordering::SeqCst),
            "published after finish"
        );
        self.cmds.lock().unwrap().push((now_s(), *cmd));
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        self.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn frame() -> RawFrame {
    RawFrame {
        encoding: Encoding::Bgr8,
        height: 48,
        width: 64,
        step: 192,
        data: vec![90; 48 * 192],
    }
}

fn home() -> TcpPose {
    TcpPose::new([0.0, 0.0, 0.5], [std::f64::consts::PI, 0.0, 0.0])
}

/// A camera at 30 Hz and a TCP pose stream, until `stop_camera` is set.
fn feed(
    inputs: RosInputs,
    stop_camera: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !quit.load(Ordering::SeqCst) {
            let t = now_s();
            inputs.on_tcp_pose_at(home(), t);
            if !stop_camera.load(Ordering::SeqCst) {
                let _ = inputs.on_frame(frame(), t - 0.005, t);
            }
            std::thread::sleep(Duration::from_millis(33));
        }
    })
}

fn cfg() -> RuntimeConfig {
    let mut c = RuntimeConfig::new(SafetyConfig::calvin_default(), "open the drawer");
    c.frame_timeout_s = 5.0;
    c
}

#[test]
fn disable_halts_then_goes_quiet() {
    let inputs = RosInputs::new(0.25, false);
    let quit = Arc::new(AtomicBool::new(false));
    let feeder = feed(
        inputs.clone(),
        Arc::new(AtomicBool::new(false)),
        quit.clone(),
    );
    std::thread::sleep(Duration::from_millis(100));
    let rec = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let io = RosIo::new(inputs.clone(), Box::new(rec.clone()), 30.0, stop.clone()).unwrap();
    let planner: Box<dyn Planner> = Box::new(NullPlanner::new([32, 32], 4));
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1200));
            stop.store(true, Ordering::SeqCst); // what the node does on enable: false
        })
    };
    let report = run(Box::new(io), planner, None, cfg(), stop).unwrap();
    stopper.join().unwrap();
    let t_end = now_s();
    let cmds = rec.cmds.lock().unwrap().clone();
    assert_eq!(report.ended_by, "stopped");
    assert!(report.frames >= 10, "frames: {}", report.frames);
    assert!(
        cmds.iter().any(|(_, c)| c.kind == CommandKind::Move),
        "the policy moved"
    );
    // The last hold_repeats commands are holds, and the output was finished.
    let tail: Vec<_> = cmds.iter().rev().take(3).collect();
    assert!(
        tail.iter().all(|(_, c)| c.kind == CommandKind::Hold),
        "{tail:?}"
    );
    assert!(rec.finished.load(Ordering::SeqCst));
    // Quiet afterwards: nothing more is published.
    assert!(!inputs.running());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rec.cmds.lock().unwrap().len(), cmds.len());
    assert!(cmds.last().unwrap().0 <= t_end);
    assert!(inputs.counters().commands.load(Ordering::Relaxed) as usize == cmds.len());
    quit.store(true, Ordering::SeqCst);
    feeder.join().unwrap();
}

#[test]
fn a_silent_camera_holds_and_ends_the_run() {
    let inputs = RosInputs::new(0.25, false);
    let quit = Arc::new(AtomicBool::new(false));
    let cam_off = Arc::new(AtomicBool::new(false));
    let feeder = feed(inputs.clone(), cam_off.clone(), quit.clone());
    std::thread::sleep(Duration::from_millis(100));
    let rec = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let io = RosIo::new(inputs.clone(), Box::new(rec.clone()), 30.0, stop.clone()).unwrap();
    let killer = {
        let cam_off = cam_off.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(800));
            cam_off.store(true, Ordering::SeqCst);
        })
    };
    let t0 = now_s();
    let report = run(
        Box::new(io),
        Box::new(NullPlanner::new([32, 32], 4)),
        None,
        cfg(),
        stop,
    )
    .unwrap();
    killer.join().unwrap();
    assert_eq!(report.ended_by, "safety silent", "{report:?}");
    assert!(now_s() - t0 < 3.0, "the watchdog ends the run quickly");
    let cmds = rec.cmds.lock().unwrap().clone();
    let tail: Vec<_> = cmds.iter().rev().take(3).collect();
    assert!(
        tail.iter().all(|(_, c)| c.kind == CommandKind::Hold),
        "{tail:?}"
    );
    assert!(
        report.safety_events.contains_key("Stale"),
        "{:?}",
        report.safety_events
    );
    quit.store(true, Ordering::SeqCst);
    feeder.join().unwrap();
}

#[test]
fn frames_need_fresh_proprio() {
    let inputs = RosInputs::new(0.25, true);
    assert!(RosIo::new(
        inputs.clone(),
        Box::new(Recorder::default()),
        30.0,
        Arc::new(AtomicBool::new(false))
    )
    .is_err());
    let t = now_s();
    assert_eq!(
        inputs.missing_at(t).as_deref(),
        Some("no TCP pose received")
    );
    inputs.on_tcp_pose_at(home(), t);
    assert_eq!(
        inputs.missing_at(t).as_deref(),
        Some("no arm joint states received")
    );
    inputs.on_joints_at(
        JointSample {
            arm: Some(vec![0.1; 7]),
            gripper_width: None,
        },
        t,
    );
    inputs.on_joints_at(
        JointSample {
            arm: None,
            gripper_width: Some(0.08),
        },
        t,
    );
    assert_eq!(inputs.missing_at(t), None);
    assert!(inputs
        .missing_at(t + 1.0)
        .unwrap()
        .contains("TCP pose is 1.000 s old"));
    let stop = Arc::new(AtomicBool::new(false));
    let io = RosIo::new(
        inputs.clone(),
        Box::new(Recorder::default()),
        30.0,
        stop.clone(),
    )
    .unwrap();
    assert!(inputs.on_frame(frame(), t, t).is_ok());
    // Stale proprio: dropped and counted.
    match inputs.on_frame(frame(), t + 1.0, t + 1.0) {
        Err(FrameDrop::NoProprio(why)) => assert!(why.contains("TCP pose"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(inputs.counters().frames_dropped.load(Ordering::Relaxed), 1);
    // The queued frame carries CALVIN's robot_obs.
    use vw2_policy::io::robot::RobotIo;
    let (mut source, _sink) = Box::new(io).split();
    let obs = source.next(Duration::from_millis(200)).unwrap().unwrap();
    assert_eq!(obs.robot_obs.len(), 15);
    assert_eq!(obs.robot_obs[6], 0.08);
    assert_eq!(&obs.robot_obs[7..14], &[0.1; 7]);
    assert_eq!(obs.robot_obs[14], 1.0, "gripper open before any command");
    // With nothing queued the source times out clearly, and ends when stopped.
    let e = source
        .next(Duration::from_millis(60))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no usable camera frame within"), "{e}");
    stop.store(true, Ordering::SeqCst);
    assert!(source.next(Duration::from_secs(5)).unwrap().is_none());
}

#[test]
fn supervisor_enable_estop_and_instructions() {
    let mut s = Supervisor::new("");
    // Disabled at start.
    assert_eq!(s.decide(false, None), Action::None);
    s.on_enable(true);
    assert_eq!(s.decide(false, None), Action::None, "no instruction yet");
    assert_eq!(s.state(false, None), "waiting: no instruction");
    s.on_instruction("  open the drawer ");
    assert_eq!(s.decide(false, Some("no TCP pose received")), Action::None);
    assert_eq!(
        s.state(false, Some("no TCP pose received")),
        "waiting: no TCP pose received"
    );
    assert_eq!(
        s.decide(false, None),
        Action::Start("open the drawer".into())
    );
    assert_eq!(s.decide(true, None), Action::None);
    // A new instruction restarts the episode and stays enabled.
    s.on_instruction("push the button");
    assert_eq!(s.decide(true, None), Action::Stop(RESTART.into()));
    s.on_run_ended(RESTART, true);
    assert_eq!(
        s.decide(false, None),
        Action::Start("push the button".into())
    );
    // E-stop: stop, latched, disabled.
    s.on_estop(true);
    assert_eq!(s.decide(true, None), Action::Stop("e-stop".into()));
    s.on_run_ended("stopped", false);
    assert!(s.estop_latched() && !s.enabled());
    assert_eq!(s.state(false, None), "estop");
    // Enable while pressed: refused; releasing alone does not move.
    s.on_enable(true);
    assert!(!s.enabled());
    assert!(s.log.iter().any(|l| l.contains("enable refused")));
    s.on_estop(false);
    assert!(s.estop_latched());
    assert_eq!(s.decide(false, None), Action::None);
    // A new enable after the release clears the latch.
    s.on_enable(true);
    assert!(!s.estop_latched() && s.enabled());
    assert_eq!(
        s.decide(false, None),
        Action::Start("push the button".into())
    );
    // Disable stops.
    s.on_enable(false);
    assert_eq!(s.decide(true, None), Action::Stop("disabled".into()));
    s.on_run_ended("stopped", false);
    assert_eq!(s.decide(false, None), Action::None);
    // A run that ends by itself (stale camera) leaves the node disabled: no auto-restart.
    s.on_enable(true);
    assert!(matches!(s.decide(false, None), Action::Start(_)));
    s.on_run_ended("safety silent", false);
    assert!(!s.enabled());
    assert_eq!(s.last_end, "safety silent");
    assert_eq!(s.decide(false, None), Action::None);
}

#[test]
fn rate_meter() {
    let mut r = RateMeter::default();
    assert_eq!(r.rate(1.0, 10), 0.0);
    assert_eq!(r.rate(2.0, 40), 30.0);
    assert_eq!(r.rate(2.0, 50), 0.0);
}
