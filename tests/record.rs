//! `vw2 record` on the fake backend: a CALVIN-format dataset that our reader
//! reads back, with language annotations, and a resumed run that equals an
//! uninterrupted one.

use std::process::Command;

use vw2_policy::data::CalvinDataset;

fn record(out: &std::path::Path, episodes: usize) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args([
            "record",
            "--backend",
            "fake",
            "--episodes",
            &episodes.to_string(),
            "--out",
        ])
        .arg(out)
        .args(["--max-steps", "20"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn records_a_readable_calvin_dataset_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let s = record(d.path(), 2);
    assert_eq!(s["episodes"], 2);
    assert_eq!(s["resumed_from"], 0);
    let ds = CalvinDataset::open(d.path()).unwrap();
    // The fake drawer opens after 6 expert steps (6 · 0.02 m > 0.12 m in floating point);
    // with the final frame an episode holds 7 frames.
    assert_eq!(ds.episodes(), &[(0, 6), (7, 13)]);
    let lang = ds.language().unwrap();
    assert_eq!(lang.task, vec!["open_drawer", "open_drawer"]);
    assert_eq!(lang.indx, vec![(0, 6), (7, 13)]);
    assert_eq!(lang.ann[0], "pull the handle to open the drawer");
    let f3 = ds.frame(3).unwrap();
    assert_eq!(f3.rel_actions, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    // Absolute action = tcp + 0.02 m · rel.
    assert!((f3.actions[0] - (f3.robot_obs[0] + 0.02)).abs() < 1e-12);
    assert_eq!(f3.rgb_static.height, 200);
    // The fake images carry the step count.
    assert_eq!(f3.rgb_static.data[0], 3);

    // Resume to 3 episodes; compare with a fresh 3-episode run.
    let s = record(d.path(), 3);
    assert_eq!(s["resumed_from"], 2);
    assert_eq!(s["episodes"], 3);
    let fresh = tempfile::tempdir().unwrap();
    record(fresh.path(), 3);
    let a = CalvinDataset::open(d.path()).unwrap();
    let b = CalvinDataset::open(fresh.path()).unwrap();
    assert_eq!(a.episodes(), b.episodes());
    for i in 0..a.num_frames() {
        assert_eq!(a.frame(i).unwrap().robot_obs, b.frame(i).unwrap().robot_obs);
    }
    // Asking for fewer episodes than recorded changes nothing.
    let s = record(d.path(), 1);
    assert_eq!(s["episodes"], 3);
}

#[test]
fn a_crash_mid_recording_loses_no_finished_episode() {
    let d = tempfile::tempdir().unwrap();
    // The fake crashes on its 16th step: during the third episode.
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["record", "--backend", "fake", "--episodes", "4", "--out"])
        .arg(d.path())
        .args(["--max-steps", "20", "--sim-arg=--crash-after=15"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("exited") && err.contains("during 'step'"),
        "{err}"
    );
    let ds = CalvinDataset::open(d.path()).unwrap();
    assert_eq!(ds.episodes().len(), 2);
    // Resuming finishes the job, and the result equals an uninterrupted run.
    let s = record(d.path(), 4);
    assert_eq!(s["resumed_from"], 2);
    let fresh = tempfile::tempdir().unwrap();
    record(fresh.path(), 4);
    assert_eq!(
        CalvinDataset::open(d.path()).unwrap().episodes(),
        CalvinDataset::open(fresh.path()).unwrap().episodes()
    );
}
