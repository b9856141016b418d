//! Tests of the safety layer: every command clamped, stale/NaN/e-stop hold.

use std::f64::consts::PI;

use proptest::prelude::*;
use vw2_policy::safety::*;

const TOL: f64 = 1e-9;

fn home() -> TcpPose {
    TcpPose::new([0.05, -0.1, 0.5], [PI, 0.0, 1.5])
}

/// CALVIN's envelope with deltas added to the last target: the gating,
/// debounce and watchdog mechanics below do not depend on the base, and this
/// base needs no measured pose each tick.
fn last_target_calvin() -> SafetyConfig {
    SafetyConfig {
        relative_base: RelativeBase::LastTarget,
        ..SafetyConfig::calvin_default()
    }
}

/// A CALVIN layer reset at `home()` at t = 0 with a frame at t = 0.
fn calvin_layer() -> SafetyLayer {
    let mut layer = SafetyLayer::new(last_target_calvin()).unwrap();
    layer.reset(home(), GripperState::Open, 0.0).unwrap();
    layer.on_frame(0.0);
    layer
}

fn small_move(t: f64) -> ActionRequest {
    ActionRequest::relative(t, [0.001, 0.0, 0.0, 0.0, 0.0, 0.0], 1.0)
}

/// Narrow limits: roll interval straddles ±π, small accelerations so braking
/// before the walls matters, 50 Hz.
fn tight_config() -> SafetyConfig {
    SafetyConfig {
        workspace_min: [0.3, -0.2, 0.05],
        workspace_max: [0.7, 0.2, 0.3],
        euler_min: [PI - 0.6, -0.4, -1.0],
        euler_max: [PI + 0.6, 0.4, 1.0],
        max_linear_speed: 0.2,
        max_angular_speed: 0.5,
        max_linear_accel: 0.8,
        max_angular_accel: 2.0,
        gripper_debounce_s: 0.3,
        stale_timeout_s: 0.25,
        hold_repeats: 2,
        control_rate_hz: Some(50.0),
        relative_base: RelativeBase::LastTarget,
    }
}

fn has_event(layer: &SafetyLayer, pred: impl Fn(&SafetyEventKind) -> bool) -> bool {
    layer.events().iter().any(|e| pred(&e.kind))
}

// ---------------------------------------------------------------- proptest

/// Any f64, biased to the nasty ones.
fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => -1.0..1.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => prop_oneof![Just(1e300), Just(-1e300), Just(f64::MAX), Just(f64::MIN), Just(1e-310)],
        1 => any::<f64>(),
    ]
}

/// Six values: mostly ordinary (scaled by `scale`), sometimes huge, sometimes wild.
fn six(scale: f64) -> impl Strategy<Value = [f64; 6]> {
    prop_oneof![
        17 => prop::array::uniform6(-scale..scale),
        2 => prop::array::uniform6(-1e6..1e6f64),
        1 => prop::array::uniform6(wild()),
    ]
}

#[derive(Debug, Clone)]
enum ReqKind {
    Relative([f64; 6]),
    Absolute([f64; 6]),
}

#[derive(Debug, Clone)]
struct Step {
    /// Added to the running clock (s); occasionally negative.
    advance: f64,
    /// Passed to `process` instead of the clock for this tick (NaN, ±Inf, …).
    now_glitch: Option<f64>,
    /// A frame stamped `now - lag` (s).
    frame_lag: Option<f64>,
    proprio: Option<[f64; 6]>,
    /// Request stamped `now - lag`, its motion and gripper signal.
    request: Option<(f64, ReqKind, f64)>,
    /// 0: nothing, 1: estop, 2: reset_estop.
    estop: u8,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let advance = prop_oneof![
        20 => 0.0..0.06f64,
        1 => 0.0..0.6f64,
        1 => -0.05..0.0f64,
    ];
    let now_glitch = prop::option::weighted(0.02, wild());
    let frame_lag = prop::option::weighted(
        0.9,
        prop_oneof![19 => 0.0..0.1f64, 1 => -0.1..0.5f64, 1 => wild()],
    );
    let proprio = prop::option::weighted(0.3, six(1.0));
    let kind = prop_oneof![
        3 => six(0.1).prop_map(ReqKind::Relative),
        2 => six(1.5).prop_map(ReqKind::Absolute),
    ];
    let lag = prop_oneof![18 => 0.0..0.1f64, 1 => -0.05..0.5f64, 1 => wild()];
    let gripper = prop_oneof![19 => -1.0..1.0f64, 1 => wild()];
    let request = prop::option::weighted(0.9, (lag, kind, gripper));
    let estop = prop_oneof![200 => Just(0u8), 1 => Just(1u8), 10 => Just(2u8)];
    (advance, now_glitch, frame_lag, proprio, request, estop).prop_map(
        |(advance, now_glitch, frame_lag, proprio, request, estop)| Step {
            advance,
            now_glitch,
            frame_lag,
            proprio,
            request,
            estop,
        },
    )
}

fn config_strategy() -> impl Strategy<Value = SafetyConfig> {
    let mut measured = tight_config();
    measured.relative_base = RelativeBase::Measured;
    prop_oneof![
        Just(SafetyConfig::calvin_default()),
        Just(last_target_calvin()),
        Just(tight_config()),
        Just(measured),
    ]
}

fn pose6(a: &[f64; 6]) -> TcpPose {
    TcpPose::new([a[0], a[1], a[2]], [a[3], a[4], a[5]])
}

fn wrap(a: f64) -> f64 {
    (a + PI).rem_euclid(2.0 * PI) - PI
}

/// Checks every invariant of one emitted command against the previous one.
fn check_command(
    cfg: &SafetyConfig,
    cmd: &SafeCommand,
    prev: Option<&SafeCommand>,
) -> Result<(), TestCaseError> {
    let dt = cfg.dt();
    prop_assert!(cmd.is_finite(), "non-finite command {cmd:?}");
    prop_assert!(matches!(
        cmd.gripper,
        GripperState::Open | GripperState::Close
    ));
    for i in 0..3 {
        let p = cmd.target.position[i];
        prop_assert!(
            p >= cfg.workspace_min[i] - TOL && p <= cfg.workspace_max[i] + TOL,
            "position axis {i} = {p} outside box"
        );
        let e = cmd.target.euler[i];
        prop_assert!(
            e >= cfg.euler_min[i] - TOL && e <= cfg.euler_max[i] + TOL,
            "euler axis {i} = {e} outside limits"
        );
        let v = cmd.linear_velocity[i];
        let w = cmd.angular_velocity[i];
        prop_assert!(
            v.abs() <= cfg.max_linear_speed * (1.0 + TOL),
            "v[{i}] = {v}"
        );
        prop_assert!(
            w.abs() <= cfg.max_angular_speed * (1.0 + TOL),
            "w[{i}] = {w}"
        );
    }
    if cmd.kind == CommandKind::Hold {
        prop_assert_eq!(cmd.linear_velocity.norm(), 0.0);
        prop_assert_eq!(cmd.angular_velocity.norm(), 0.0);
        if let Some(prev) = prev {
            prop_assert_eq!(cmd.target, prev.target, "hold must keep the last target");
        }
        return Ok(());
    }
    // A Move: acceleration against the previous command (a Hold or nothing
    // counts as rest), and the step must match the reported velocity.
    let (v_prev, w_prev) = match prev {
        Some(p) if p.kind == CommandKind::Move => (p.linear_velocity, p.angular_velocity),
        _ => (Default::default(), Default::default()),
    };
    for i in 0..3 {
        let dv = (cmd.linear_velocity[i] - v_prev[i]).abs();
        let dw = (cmd.angular_velocity[i] - w_prev[i]).abs();
        prop_assert!(dv <= cfg.max_linear_accel * dt + TOL, "dv[{i}] = {dv}");
        prop_assert!(dw <= cfg.max_angular_accel * dt + TOL, "dw[{i}] = {dw}");
    }
    if let Some(prev) = prev {
        for i in 0..3 {
            let dp = cmd.target.position[i] - prev.target.position[i];
            prop_assert!(
                (dp - cmd.linear_velocity[i] * dt).abs() <= TOL,
                "step {dp} vs v·dt on axis {i}"
            );
            let de = wrap(cmd.target.euler[i] - prev.target.euler[i]);
            prop_assert!(
                wrap(de - cmd.angular_velocity[i] * dt).abs() <= TOL,
                "step {de} vs w·dt on euler axis {i}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_command_is_clamped_and_limited(
        cfg in config_strategy(),
        start in prop::array::uniform6(-4.0..4.0f64),
        steps in prop::collection::vec(step_strategy(), 1..150),
    ) {
        let mut layer = SafetyLayer::new(cfg.clone()).unwrap();
        layer.reset(pose6(&start), GripperState::Close, 0.0).unwrap();
        let mut now = 0.0f64;
        // Last command emitted on the previous tick (None: nothing emitted).
        let mut prev: Option<SafeCommand> = None;
        let mut last_emitted: Option<SafeCommand> = None;
        for s in &steps {
            now += s.advance;
            match s.estop {
                1 => layer.estop(),
                2 => layer.reset_estop(),
                _ => {}
            }
            if let Some(lag) = s.frame_lag {
                layer.on_frame(now - lag);
            }
            if let Some(p) = &s.proprio {
                layer.on_proprio(now, pose6(p));
            }
            let req = s.request.as_ref().map(|(lag, kind, g)| match kind {
                ReqKind::Relative(d) => ActionRequest::relative(now - lag, *d, *g),
                ReqKind::Absolute(p) => ActionRequest::absolute(now - lag, pose6(p), *g),
            });
            let out = layer.process(s.now_glitch.unwrap_or(now), req.as_ref());
            if let Some(cmd) = &out {
                if layer.is_estopped() {
                    prop_assert_eq!(cmd.kind, CommandKind::Hold, "moved while e-stopped");
                }
                // Holds repeat the last emitted target; velocity checks use the
                // previous tick's command.
                check_command(&cfg, cmd, prev.as_ref())?;
                if cmd.kind == CommandKind::Hold {
                    if let Some(last) = &last_emitted {
                        prop_assert_eq!(cmd.target, last.target);
                    }
                }
                last_emitted = Some(*cmd);
            }
            prev = out;
        }
    }
}

// ---------------------------------------------------------------- watchdog

#[test]
fn watchdog_holds_exactly_hold_repeats_then_goes_quiet() {
    let mut layer = calvin_layer();
    let repeats = layer.config().hold_repeats as usize;
    assert_eq!(repeats, 3);
    assert_eq!(layer.config().stale_timeout_s, 0.25);
    let first = layer.process(0.0, Some(&small_move(0.0))).unwrap();
    assert_eq!(first.kind, CommandKind::Move);

    // No frame after t = 0; fresh requests every tick until t ≈ 0.5 s.
    let mut outputs = Vec::new();
    for k in 1..=15 {
        let now = k as f64 / 30.0;
        outputs.push((now, layer.process(now, Some(&small_move(now)))));
        if now > 0.25 {
            assert_ne!(layer.watchdog_state(), WatchdogState::Ok, "at {now}");
        }
    }
    let fresh: Vec<_> = outputs.iter().filter(|(t, _)| *t <= 0.25).collect();
    let stale: Vec<_> = outputs.iter().filter(|(t, _)| *t > 0.25).collect();
    assert!(fresh
        .iter()
        .all(|(_, c)| c.map(|c| c.kind) == Some(CommandKind::Move)));
    // Stale from the first tick past 0.25 s (≈ 0.267 s, so by 0.3 s for sure).
    assert!(stale[0].0 < 0.3 + 1e-12);
    let holds: Vec<_> = stale.iter().take(repeats).collect();
    for (_, c) in &holds {
        let c = c.expect("hold expected");
        assert_eq!(c.kind, CommandKind::Hold);
        assert_eq!(c.linear_velocity.norm() + c.angular_velocity.norm(), 0.0);
    }
    assert!(stale[repeats..].iter().all(|(_, c)| c.is_none()));
    let n_holds = outputs
        .iter()
        .filter(|(_, c)| c.map(|c| c.kind) == Some(CommandKind::Hold))
        .count();
    assert_eq!(n_holds, repeats);
    assert_eq!(layer.watchdog_state(), WatchdogState::Silent);
    assert!(has_event(&layer, |k| matches!(
        k,
        SafetyEventKind::Stale { input: InputKind::Frame, age_s } if *age_s > 0.25
    )));

    // Still quiet without a frame; a fresh frame resumes Moves.
    assert!(layer.process(0.55, Some(&small_move(0.55))).is_none());
    layer.on_frame(0.58);
    let cmd = layer.process(0.6, Some(&small_move(0.6))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Move);
    assert_eq!(layer.watchdog_state(), WatchdogState::Ok);
}

#[test]
fn no_frame_at_all_means_hold() {
    let mut layer = SafetyLayer::new(last_target_calvin()).unwrap();
    layer.reset(home(), GripperState::Open, 0.0).unwrap();
    let cmd = layer.process(0.0, Some(&small_move(0.0))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Hold);
    assert!(has_event(&layer, |k| matches!(
        k,
        SafetyEventKind::Stale { input: InputKind::Frame, age_s } if age_s.is_infinite()
    )));
}

#[test]
fn stale_request_holds() {
    let mut layer = calvin_layer();
    layer.on_frame(1.0);
    let cmd = layer.process(1.0, Some(&small_move(0.7))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Hold);
    assert!(has_event(&layer, |k| matches!(
        k,
        SafetyEventKind::Stale {
            input: InputKind::Request,
            ..
        }
    )));
    // A request from the future is not trusted either.
    let cmd = layer.process(1.0, Some(&small_move(1.2))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Hold);
    let cmd = layer.process(1.0, Some(&small_move(1.0))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Move);
}

#[test]
fn uninitialized_layer_emits_nothing() {
    let mut layer = SafetyLayer::new(last_target_calvin()).unwrap();
    layer.on_frame(0.0);
    assert!(layer.process(0.0, Some(&small_move(0.0))).is_none());
    assert!(has_event(&layer, |k| *k == SafetyEventKind::NotInitialized));
    let bad = TcpPose::new([f64::NAN, 0.0, 0.5], [0.0; 3]);
    assert!(matches!(
        layer.reset(bad, GripperState::Open, 0.0),
        Err(SafetyError::NonFinite { .. })
    ));
    assert!(layer.process(0.0, Some(&small_move(0.0))).is_none());
}

// ---------------------------------------------------------------- NaN

#[test]
fn nan_request_holds_then_finite_request_moves() {
    let mut layer = calvin_layer();
    let moved = layer.process(0.0, Some(&small_move(0.0))).unwrap();
    assert_eq!(moved.kind, CommandKind::Move);
    layer.drain_events();

    layer.on_frame(1.0 / 30.0);
    let bad = ActionRequest::relative(1.0 / 30.0, [0.0, f64::NAN, 0.0, 0.0, 0.0, 0.0], 1.0);
    let hold = layer.process(1.0 / 30.0, Some(&bad)).unwrap();
    assert_eq!(hold.kind, CommandKind::Hold);
    assert_eq!(hold.target, moved.target);
    assert_eq!(hold.linear_velocity.norm(), 0.0);
    assert!(has_event(&layer, |k| *k
        == SafetyEventKind::NonFinite {
            field: "request.delta"
        }));

    let inf = ActionRequest::absolute(
        2.0 / 30.0,
        TcpPose::new([0.0, 0.0, f64::INFINITY], [0.0; 3]),
        1.0,
    );
    let hold = layer.process(2.0 / 30.0, Some(&inf)).unwrap();
    assert_eq!(hold.kind, CommandKind::Hold);
    let nan_grip = ActionRequest::relative(2.0 / 30.0, [0.0; 6], f64::NAN);
    assert_eq!(
        layer.process(2.0 / 30.0, Some(&nan_grip)).unwrap().kind,
        CommandKind::Hold
    );

    let next = layer
        .process(3.0 / 30.0, Some(&small_move(3.0 / 30.0)))
        .unwrap();
    assert_eq!(next.kind, CommandKind::Move);
    assert!(next.target.position.x > moved.target.position.x);
}

#[test]
fn nan_proprio_holds_until_finite() {
    let mut layer = calvin_layer();
    layer.on_proprio(0.0, TcpPose::new([0.0, f64::NAN, 0.5], [0.0; 3]));
    assert!(has_event(&layer, |k| *k
        == SafetyEventKind::NonFinite {
            field: "proprio.position"
        }));
    let cmd = layer.process(0.0, Some(&small_move(0.0))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Hold);
    layer.on_proprio(0.01, home());
    let cmd = layer.process(0.02, Some(&small_move(0.02))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Move);
}

#[test]
fn nan_clock_holds_with_finite_stamp() {
    let mut layer = calvin_layer();
    let cmd = layer.process(f64::NAN, Some(&small_move(0.0))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Hold);
    assert!(cmd.t.is_finite());
    assert!(has_event(&layer, |k| *k
        == SafetyEventKind::NonFinite { field: "now" }));
    // Clock going backwards holds too.
    layer.process(0.1, Some(&small_move(0.1))).unwrap();
    let cmd = layer.process(0.05, Some(&small_move(0.05))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Hold);
    assert!(has_event(&layer, |k| matches!(
        k,
        SafetyEventKind::ClockWentBackwards { .. }
    )));
}

// ---------------------------------------------------------------- e-stop

#[test]
fn estop_latches_until_reset_estop() {
    let mut layer = calvin_layer();
    assert_eq!(
        layer.process(0.0, Some(&small_move(0.0))).unwrap().kind,
        CommandKind::Move
    );
    layer.estop();
    assert!(layer.is_estopped());
    let mut now = 0.0;
    let mut holds = 0;
    for k in 1..=40 {
        now = k as f64 / 30.0;
        layer.on_frame(now);
        layer.on_proprio(now, home());
        if k == 20 {
            // Not even an episode reset clears the latch.
            layer.reset(home(), GripperState::Open, now).unwrap();
            layer.on_frame(now);
            assert!(layer.is_estopped());
        }
        if let Some(cmd) = layer.process(now, Some(&small_move(now))) {
            assert_eq!(
                cmd.kind,
                CommandKind::Hold,
                "moved while e-stopped at {now}"
            );
            holds += 1;
        }
    }
    // hold_repeats before the reset, hold_repeats again after it.
    assert_eq!(holds, 6);
    assert!(has_event(&layer, |k| *k == SafetyEventKind::EStop));

    layer.reset_estop();
    assert!(!layer.is_estopped());
    now += 1.0 / 30.0;
    layer.on_frame(now);
    let cmd = layer.process(now, Some(&small_move(now))).unwrap();
    assert_eq!(cmd.kind, CommandKind::Move);
    assert!(has_event(&layer, |k| *k == SafetyEventKind::EStopCleared));
}

// ---------------------------------------------------------------- gripper

#[test]
fn gripper_debounce_delays_fast_flips() {
    let mut cfg = last_target_calvin();
    cfg.gripper_debounce_s = 0.5;
    let mut layer = SafetyLayer::new(cfg).unwrap();
    layer.reset(home(), GripperState::Open, 0.0).unwrap();
    let tick = |layer: &mut SafetyLayer, now: f64, g: f64| {
        layer.on_frame(now);
        let req = ActionRequest::relative(now, [0.0; 6], g);
        let cmd = layer.process(now, Some(&req)).unwrap();
        assert_eq!(cmd.kind, CommandKind::Move);
        cmd.gripper
    };
    // The first change after reset goes through.
    assert_eq!(tick(&mut layer, 0.0, -1.0), GripperState::Close);
    // Flipping back sooner than 0.5 s keeps the state.
    for k in 1..15 {
        let now = k as f64 / 30.0; // < 0.5 s
        assert_eq!(tick(&mut layer, now, 1.0), GripperState::Close, "at {now}");
    }
    assert!(has_event(&layer, |k| *k == SafetyEventKind::GripperDebounced));
    // After the debounce time the flip goes through.
    assert_eq!(tick(&mut layer, 0.5, 1.0), GripperState::Open);

    // Fast alternating requests: state changes at least 0.5 s apart.
    let mut last = (0.5, GripperState::Open);
    let mut changes = 0;
    for k in 16..120 {
        let now = k as f64 / 30.0;
        let g = if k % 2 == 0 { 1.0 } else { -1.0 };
        let state = tick(&mut layer, now, g);
        if state != last.1 {
            assert!(now - last.0 >= 0.5 - 1e-12, "flip after {} s", now - last.0);
            last = (now, state);
            changes += 1;
        }
    }
    assert!(changes >= 3, "flips should still go through, got {changes}");
}

// ---------------------------------------------------------------- config

#[test]
fn config_errors_name_the_field() {
    let mut cfg = SafetyConfig::calvin_default();
    cfg.workspace_min[2] = 2.0; // > workspace_max[2] = 1.0
    let err = cfg.validate().unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, SafetyError::InvalidConfig { field, .. } if field == "workspace_min[2]"),
        "{msg}"
    );
    assert!(msg.contains("workspace_min[2]") && msg.contains("workspace_max[2]"));
    assert!(msg.contains('2') && msg.contains("expected"), "{msg}");
    assert!(SafetyLayer::new(cfg).is_err());

    let mut cfg = SafetyConfig::calvin_default();
    cfg.max_linear_speed = -0.5;
    let msg = cfg.validate().unwrap_err().to_string();
    assert!(msg.contains("max_linear_speed"), "{msg}");
    assert!(msg.contains("-0.5") && msg.contains("positive"), "{msg}");

    let mut cfg = SafetyConfig::calvin_default();
    cfg.euler_max[1] = f64::NAN;
    let msg = cfg.validate().unwrap_err().to_string();
    assert!(
        msg.contains("euler_max[1]") && msg.contains("finite"),
        "{msg}"
    );

    let mut cfg = SafetyConfig::calvin_default();
    cfg.hold_repeats = 0;
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("hold_repeats"));
}

const REAL_ARM_YAML: &str = "
workspace_min: [0.25, -0.40, 0.02]
workspace_max: [0.75,  0.40, 0.60]
euler_min: [2.2, -0.6, -2.0]
euler_max: [4.1,  0.6,  2.0]
max_linear_speed: 0.25
max_angular_speed: 0.8
max_linear_accel: 2.0
max_angular_accel: 6.0
gripper_debounce_s: 0.5
stale_timeout_s: 0.25
hold_repeats: 3
control_rate_hz: 30.0
relative_base: last_target
";

#[test]
fn yaml_loads_validates_and_rejects_unknown_keys() {
    let cfg = SafetyConfig::from_yaml_str(REAL_ARM_YAML).unwrap();
    assert_eq!(cfg.workspace_max, [0.75, 0.40, 0.60]);
    assert_eq!(cfg.hold_repeats, 3);

    // Defaults for the optional keys.
    let minimal: String = REAL_ARM_YAML
        .lines()
        .filter(|l| {
            ![
                "stale_timeout_s",
                "hold_repeats",
                "control_rate_hz",
                "relative_base",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = SafetyConfig::from_yaml_str(&minimal).unwrap();
    assert_eq!(cfg.stale_timeout_s, 0.25);
    assert_eq!(cfg.hold_repeats, 3);
    // The rate left out: the policy bundle's, filled in at start…
    assert_eq!(cfg.control_rate_hz, None);
    assert!(SafetyLayer::new(cfg.clone())
        .unwrap_err()
        .to_string()
        .contains("control_rate_hz"));
    let filled = cfg.clone().with_control_rate(15.0, "the policy").unwrap();
    assert_eq!(filled.control_rate_hz, Some(15.0));
    assert!((filled.dt() - 1.0 / 15.0).abs() < 1e-15);
    // …and a stated rate that disagrees with the bundle is refused, naming both.
    let full = SafetyConfig::from_yaml_str(REAL_ARM_YAML).unwrap();
    let msg = full
        .with_control_rate(15.0, "the policy bundle p")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("control_rate_hz") && msg.contains("15 Hz") && msg.contains("30 Hz"),
        "{msg}"
    );
    assert_eq!(cfg.relative_base, RelativeBase::LastTarget);

    let unknown = format!("{REAL_ARM_YAML}max_jerk: 10.0\n");
    let err = SafetyConfig::from_yaml_str(&unknown).unwrap_err();
    assert!(matches!(err, SafetyError::Yaml(_)));
    assert!(err.to_string().contains("max_jerk"), "{err}");

    let inverted = REAL_ARM_YAML.replace("euler_min: [2.2", "euler_min: [4.5");
    let msg = SafetyConfig::from_yaml_str(&inverted)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("euler_min[0]"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("safety.yaml");
    std::fs::write(&path, REAL_ARM_YAML).unwrap();
    assert!(SafetyConfig::from_yaml_file(&path).is_ok());
    assert!(matches!(
        SafetyConfig::from_yaml_file(dir.path().join("missing.yaml")),
        Err(SafetyError::Io { .. })
    ));
}

// ---------------------------------------------------------------- clamping

#[test]
fn relative_action_round_trip() {
    let mut layer = calvin_layer();
    let action = [0.3, -0.2, 0.1, 0.4, -0.3, 0.2, -1.0];
    let req = ActionRequest::from_calvin_relative(
        0.0,
        action,
        CALVIN_SCALE_XYZ_M,
        CALVIN_SCALE_EULER_RAD,
    );
    let cmd = layer.process(0.0, Some(&req)).unwrap();
    assert_eq!(cmd.kind, CommandKind::Move);
    let back = cmd.relative_action(&home(), CALVIN_SCALE_XYZ_M, CALVIN_SCALE_EULER_RAD);
    for i in 0..6 {
        assert!((back[i] - action[i]).abs() < 1e-9, "axis {i}: {back:?}");
    }
    assert_eq!(back[6], -1.0);

    // Far from the current pose: clipped to [-1, 1], gripper exactly ±1.
    let far = TcpPose::new([1.0, -1.0, 0.5], [PI, 0.0, 1.5]);
    let clipped = cmd.relative_action(&far, CALVIN_SCALE_XYZ_M, CALVIN_SCALE_EULER_RAD);
    assert_eq!(clipped[0], -1.0);
    assert_eq!(clipped[1], 1.0);
    let nan = TcpPose::new([f64::NAN; 3], [0.0; 3]);
    let safe = cmd.relative_action(&nan, CALVIN_SCALE_XYZ_M, CALVIN_SCALE_EULER_RAD);
    assert!(safe.iter().all(|x| x.is_finite()));
}

#[test]
fn absolute_target_outside_box_is_clamped_and_rate_limited() {
    let cfg = tight_config();
    let mut layer = SafetyLayer::new(cfg.clone()).unwrap();
    let start = TcpPose::new([0.5, 0.0, 0.2], [PI, 0.0, 0.0]);
    layer.reset(start, GripperState::Open, 0.0).unwrap();
    let goal = TcpPose::new([5.0, -5.0, 0.2], [PI, 0.0, 0.0]);
    let dt = cfg.dt();
    let mut last = None;
    for k in 0..200 {
        let now = k as f64 * dt;
        layer.on_frame(now);
        let cmd = layer
            .process(now, Some(&ActionRequest::absolute(now, goal, 1.0)))
            .unwrap();
        assert_eq!(cmd.kind, CommandKind::Move);
        assert!(cmd.linear_velocity.x.abs() <= cfg.max_linear_speed + 1e-12);
        last = Some(cmd);
    }
    let last = last.unwrap();
    // Reached the corner of the box and stopped there.
    assert!((last.target.position.x - 0.7).abs() < 1e-9, "{last:?}");
    assert!((last.target.position.y + 0.2).abs() < 1e-9, "{last:?}");
    assert!(last.linear_velocity.norm() < 1e-9);
    assert!(has_event(&layer, |k| *k
        == SafetyEventKind::ClampedPosition { axis: 0 }));
    assert!(has_event(&layer, |k| *k
        == SafetyEventKind::VelocityLimited { axis: 0 }));
    assert!(has_event(&layer, |k| *k == SafetyEventKind::AccelLimited { axis: 0 }));
}

#[test]
fn roll_interval_across_pi_wraps_instead_of_flipping() {
    let cfg = tight_config(); // roll ∈ [π − 0.6, π + 0.6]
    let mut layer = SafetyLayer::new(cfg.clone()).unwrap();
    let start = TcpPose::new([0.5, 0.0, 0.2], [-PI + 0.1, 0.0, 0.0]); // = π + 0.1
    layer.reset(start, GripperState::Open, 0.0).unwrap();
    assert!((layer.last_target().unwrap().euler.x - (PI + 0.1)).abs() < 1e-12);
    assert!(!has_event(&layer, |k| matches!(
        k,
        SafetyEventKind::ClampedOrientation { .. }
    )));
    // −π + 1.0 = π + 1.0 is 0.4 rad past the upper limit: clamp to π + 0.6,
    // moving the short way (up), not across the forbidden side.
    let goal = TcpPose::new([0.5, 0.0, 0.2], [-PI + 1.0, 0.0, 0.0]);
    let dt = cfg.dt();
    for k in 0..200 {
        let now = k as f64 * dt;
        layer.on_frame(now);
        let cmd = layer
            .process(now, Some(&ActionRequest::absolute(now, goal, 1.0)))
            .unwrap();
        assert!(cmd.angular_velocity.x >= 0.0);
    }
    let roll = layer.last_target().unwrap().euler.x;
    assert!((roll - (PI + 0.6)).abs() < 1e-9, "{roll}");
    assert!(has_event(&layer, |k| *k
        == SafetyEventKind::ClampedOrientation { axis: 0 }));
}

#[test]
fn no_request_keeps_approaching_a_fresh_goal_then_holds() {
    // A speed limit that needs several ticks for the 0.2 m goal.
    let slow = SafetyConfig {
        max_linear_speed: 1.0,
        ..last_target_calvin()
    };
    let mut layer = SafetyLayer::new(slow).unwrap();
    layer.reset(home(), GripperState::Open, 0.0).unwrap();
    layer.on_frame(0.0);
    let req = ActionRequest::relative(0.0, [0.2, 0.0, 0.0, 0.0, 0.0, 0.0], 1.0);
    let first = layer.process(0.0, Some(&req)).unwrap();
    let dt = 1.0 / 30.0;
    layer.on_frame(dt);
    let second = layer.process(dt, None).unwrap();
    assert_eq!(second.kind, CommandKind::Move);
    assert!(second.target.position.x > first.target.position.x);
    // The goal's request gets stale: hold.
    layer.on_frame(0.3);
    assert_eq!(layer.process(0.3, None).unwrap().kind, CommandKind::Hold);
    // A hold drops the goal: no request means hold.
    layer.on_frame(0.31);
    assert_eq!(layer.process(0.31, None).unwrap().kind, CommandKind::Hold);
    assert!(has_event(&layer, |k| *k == SafetyEventKind::NoRequest));
}

#[test]
fn free_yaw_turns_the_short_way_across_pi() {
    // CALVIN leaves yaw free: [−π, π] is the full circle.
    let mut layer = SafetyLayer::new(last_target_calvin()).unwrap();
    let start = TcpPose::new([0.0, 0.0, 0.5], [PI, 0.0, PI - 0.05]);
    layer.reset(start, GripperState::Open, 0.0).unwrap();
    let goal = TcpPose::new([0.0, 0.0, 0.5], [PI, 0.0, -PI + 0.05]);
    for k in 0..30 {
        let now = k as f64 / 30.0;
        layer.on_frame(now);
        let cmd = layer
            .process(now, Some(&ActionRequest::absolute(now, goal, 1.0)))
            .unwrap();
        assert_eq!(cmd.kind, CommandKind::Move);
        assert!(
            cmd.angular_velocity.z >= 0.0,
            "turned the long way: {cmd:?}"
        );
        assert!((-PI..=PI).contains(&cmd.target.euler.z));
    }
    let yaw = layer.last_target().unwrap().euler.z;
    assert!((wrap(yaw - (-PI + 0.05))).abs() < 1e-9, "{yaw}");
}

#[test]
fn the_calvin_envelope_passes_a_valid_action_through_while_the_arm_lags() {
    // The arm is stuck (pressing on a button): its measured pose does not move.
    // Every valid CALVIN action must still reach the simulator unchanged; on
    // the last target the deltas would pile up and the re-expressed action
    // would drift away from what was asked.
    let mut layer = SafetyLayer::new(SafetyConfig::calvin_default()).unwrap();
    let stuck = TcpPose::new([-0.36, 0.17, 0.66], [PI - 0.01, 0.0, 1.88]);
    layer.reset(stuck, GripperState::Open, 0.0).unwrap();
    let asked = [0.3, -0.5, -1.0, 0.2, 0.1, -0.4, 1.0];
    for k in 1..=60 {
        let t = k as f64 / 30.0;
        layer.on_frame(t);
        layer.on_proprio(t, stuck);
        let req = ActionRequest::from_calvin_relative(t, asked, 0.02, 0.05);
        let cmd = layer.process(t, Some(&req)).unwrap();
        assert_eq!(cmd.kind, CommandKind::Move, "tick {k}");
        let executed = cmd.relative_action(&stuck, 0.02, 0.05);
        for (e, a) in executed.iter().zip(asked) {
            assert!((e - a).abs() < 1e-9, "tick {k}: {executed:?} vs {asked:?}");
        }
    }
    assert!(layer.drain_events().is_empty());
}

#[test]
fn the_calvin_envelope_never_clips_a_valid_calvin_action() {
    // Random valid CALVIN actions (full reversals and gripper flips on
    // consecutive steps included) while the simulated arm lags its targets by
    // up to 5 cm / 0.1 rad: every action reaches the simulator unchanged and
    // the layer records no event. Evaluation goes through this envelope, so
    // the official protocol's numbers are the policy's own.
    let mut seed = 7u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 11) as f64) / ((1u64 << 53) as f64) * 2.0 - 1.0
    };
    let cfg = SafetyConfig::calvin_default();
    let mut layer = SafetyLayer::new(cfg.clone()).unwrap();
    let centre = [0.0, -0.1, 0.55, PI, 0.0, 1.5];
    let mut measured = TcpPose::new([0.05, -0.1, 0.55], [PI - 0.05, 0.0, 1.5]);
    layer.reset(measured, GripperState::Open, 0.0).unwrap();
    for k in 0..3000 {
        let t = k as f64 * cfg.dt();
        let mut asked = [0.0; 7];
        for (i, v) in asked.iter_mut().take(6).enumerate() {
            // Mostly saturated components: the hardest case for the limits…
            *v = if rnd() > 0.0 { rnd().signum() } else { rnd() };
            // …steered back when the walk leaves the middle of the table.
            let off = vw2_policy::base::angle::wrap_pi(measured.axis(i) - centre[i]);
            let reach = if i < 3 { 0.15 } else { 0.3 };
            if off.abs() > reach {
                *v = -v.abs() * off.signum();
            }
        }
        asked[6] = rnd().signum();
        layer.on_frame(t);
        layer.on_proprio(t, measured);
        let req = ActionRequest::from_calvin_relative(t, asked, 0.02, 0.05);
        let cmd = layer.process(t, Some(&req)).unwrap();
        assert_eq!(cmd.kind, CommandKind::Move, "tick {k}");
        let executed = cmd.relative_action(&measured, 0.02, 0.05);
        for (i, (e, a)) in executed.iter().zip(asked).enumerate() {
            assert!((e - a).abs() < 1e-9, "tick {k}, axis {i}: {e} vs {a}");
        }
        let events = layer.drain_events();
        assert!(events.is_empty(), "tick {k}: {events:?}");
        // The arm reaches the target up to a tracking error of 5 cm / 0.1 rad.
        let mut next = cmd.target;
        for i in 0..6 {
            let err = if i < 3 { 0.05 } else { 0.1 };
            next.set_axis(i, next.axis(i) + err * rnd());
        }
        measured = next;
    }
}

#[test]
fn the_calvin_box_holds_every_position_the_arm_can_reach() {
    // CALVIN clips no TCP target, so the envelope must not either: the box
    // contains the 1.5 m ball around the Panda's base (scene D, PlayTable),
    // and every orientation is free.
    let cfg = SafetyConfig::calvin_default();
    let base = [-0.34, -0.46, 0.24];
    for (i, b) in base.iter().enumerate() {
        assert!(cfg.workspace_min[i] <= b - 1.5, "axis {i}");
        assert!(cfg.workspace_max[i] >= b + 1.5, "axis {i}");
        assert!(cfg.euler_max[i] - cfg.euler_min[i] >= 2.0 * PI, "angle {i}");
    }
    // A goal at the far end of the reach is not clamped.
    let mut layer = SafetyLayer::new(cfg).unwrap();
    let far = TcpPose::new([base[0], base[1] - 1.2, base[2] + 0.6], [PI, 1.5, -3.0]);
    layer.reset(far, GripperState::Open, 0.0).unwrap();
    layer.on_frame(0.0);
    layer.on_proprio(0.0, far);
    let req =
        ActionRequest::from_calvin_relative(0.0, [0.0, -1.0, 1.0, 0.0, 1.0, 0.0, 1.0], 0.02, 0.05);
    let cmd = layer.process(0.0, Some(&req)).unwrap();
    let executed = cmd.relative_action(&far, 0.02, 0.05);
    assert!(
        (executed[1] + 1.0).abs() < 1e-9 && (executed[2] - 1.0).abs() < 1e-9,
        "{executed:?}"
    );
    assert!(layer.drain_events().is_empty());
}

#[test]
fn the_calvin_envelope_passes_euler_jumps_near_gimbal_lock() {
    // Near pitch = π/2 a small turn swings roll and yaw by up to π between
    // two measurements: a valid action from there must still pass unchanged.
    let cfg = SafetyConfig::calvin_default();
    let mut layer = SafetyLayer::new(cfg).unwrap();
    let a = TcpPose::new([0.0, -0.1, 0.6], [3.0, 1.55, -2.9]);
    let b = TcpPose::new([0.01, -0.1, 0.6], [-0.2, 1.56, 0.3]);
    layer.reset(a, GripperState::Open, 0.0).unwrap();
    let asked = [1.0, 0.0, -1.0, 1.0, -1.0, 1.0, -1.0];
    for (k, measured) in [a, b, a, b].iter().enumerate() {
        let t = k as f64 / 30.0;
        layer.on_frame(t);
        layer.on_proprio(t, *measured);
        let req = ActionRequest::from_calvin_relative(t, asked, 0.02, 0.05);
        let cmd = layer.process(t, Some(&req)).unwrap();
        let executed = cmd.relative_action(measured, 0.02, 0.05);
        for (e, w) in executed.iter().zip(asked) {
            assert!((e - w).abs() < 1e-9, "tick {k}: {executed:?}");
        }
    }
    assert!(layer.drain_events().is_empty());
}
