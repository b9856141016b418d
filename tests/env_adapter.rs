//! The env adapter against the fake backend: the protocol round trip, and a
//! crash, a hang and a malformed reply each giving a clear error, never a hang.

use std::time::{Duration, Instant};

use vw2_policy::io::env_adapter::{EnvAdapter, EnvConfig, EnvError};

fn fake(args: &[&str], timeout_s: f64) -> EnvAdapter {
    let mut cfg = EnvConfig::new("fake");
    cfg.args = args.iter().map(|s| s.to_string()).collect();
    cfg.timeout_s = timeout_s;
    EnvAdapter::spawn(&cfg)
        .expect("fake env adapter starts (is .venv set up? run scripts/setup.sh)")
}

#[test]
fn round_trip_with_the_fake_backend() {
    let mut env = fake(&[], 10.0);
    assert_eq!(env.hello().backend, "fake");
    assert!(env.hello().tasks.contains(&"open_drawer".to_string()));
    assert!(env.hello().pid > 0);
    // Start-up choices (the calvin backend's renderer) come with `hello`.
    assert_eq!(
        env.hello().notes,
        vec!["fake backend: synthetic frames, no renderer".to_string()]
    );
    let obs = env.reset(None, None).unwrap();
    assert_eq!(obs.rgb_static.data.len(), 200 * 200 * 3);
    assert_eq!(obs.rgb_gripper.data.len(), 84 * 84 * 3);
    assert_eq!(obs.robot_obs.len(), 15);
    assert_eq!(obs.scene_obs.len(), 24);
    let start = env.info().unwrap();
    for i in 1..=8u8 {
        let obs = env
            .step(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0], true)
            .unwrap();
        // The fake's images carry the step count, so frames arrive in order.
        assert_eq!(obs.rgb_static.data[0], i);
        assert!((obs.robot_obs[0] - 0.02 * i as f64).abs() < 1e-9);
        assert_eq!(obs.robot_obs[14], -1.0);
    }
    // x moved 0.16 m > 0.12 m, so the fake oracle says the drawer opened.
    let done = env
        .task_success(&start, &["open_drawer", "close_drawer"])
        .unwrap();
    assert_eq!(done, vec!["open_drawer".to_string()]);
    // A reset to a given state is reflected in the observation.
    let mut robot = vec![0.0; 15];
    robot[2] = 0.5;
    let scene: Vec<f64> = (0..24).map(|i| i as f64 * 0.01).collect();
    let obs = env.reset(Some(&robot), Some(&scene)).unwrap();
    assert_eq!(obs.robot_obs[2], 0.5);
    assert_eq!(obs.scene_obs, scene);
    env.close().unwrap();
}

#[test]
fn remote_errors_are_reported_and_the_child_keeps_serving() {
    let mut env = fake(&[], 10.0);
    env.reset(None, None).unwrap();
    let e = env.request("warp_drive", vec![]).unwrap_err().to_string();
    assert!(
        e.contains("refused 'warp_drive'") && e.contains("unknown op"),
        "{e}"
    );
    let short = rmpv::Value::Array(vec![rmpv::Value::from(1.0); 3]);
    let e = env
        .request("step", vec![("action", short)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected 7 values, found 3"), "{e}");
    let e = env
        .request("expert_action", vec![])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refused 'expert_action'") && e.contains("task"),
        "{e}"
    );
    // Still alive.
    env.step(&[0.0; 7], true).unwrap();
}

#[test]
fn a_crash_is_an_error_with_the_exit_status_and_stderr() {
    let mut env = fake(&["--crash-after", "2"], 10.0);
    env.reset(None, None).unwrap();
    env.step(&[0.0; 7], true).unwrap();
    env.step(&[0.0; 7], true).unwrap();
    let e = env.step(&[0.0; 7], true).unwrap_err();
    assert!(matches!(e, EnvError::Exited { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("exit status: 3") && msg.contains("during 'step'"),
        "{msg}"
    );
    assert!(msg.contains("fake env ready"), "stderr tail missing: {msg}");
    // Every later call fails fast too.
    let t = Instant::now();
    assert!(env.step(&[0.0; 7], true).is_err());
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_hang_times_out_and_kills_the_child() {
    let mut env = fake(&["--hang-after", "1"], 1.0);
    env.reset(None, None).unwrap();
    env.step(&[0.0; 7], true).unwrap();
    let t = Instant::now();
    let e = env.step(&[0.0; 7], true).unwrap_err();
    let waited = t.elapsed();
    assert!(matches!(e, EnvError::Timeout { .. }), "{e}");
    assert!(
        e.to_string().contains("did not answer 'step' within 1.0 s"),
        "{e}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}

#[test]
fn a_malformed_reply_is_an_error() {
    let mut env = fake(&["--garbage-after", "0"], 5.0);
    env.reset(None, None).unwrap();
    let e = env.step(&[0.0; 7], true).unwrap_err();
    assert!(matches!(e, EnvError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("malformed reply to 'step'"), "{e}");
}

#[test]
fn a_missing_interpreter_is_a_spawn_error() {
    let mut cfg = EnvConfig::new("fake");
    cfg.python = Some("/nonexistent/python-vw2".into());
    let e = EnvAdapter::spawn(&cfg).unwrap_err();
    assert!(matches!(e, EnvError::Spawn { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/python-vw2"), "{e}");
}

#[test]
fn an_unknown_backend_fails_at_start_with_its_message() {
    let mut cfg = EnvConfig::new("holodeck");
    cfg.start_timeout_s = 20.0;
    let e = EnvAdapter::spawn(&cfg).unwrap_err().to_string();
    assert!(e.contains("unknown backend 'holodeck'"), "{e}");
}
