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

fn record_chained(out: &std::path::Path, episodes: usize, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["record", "--backend", "fake", "--chained", "2"])
        .args([
            "--tasks",
            "open_drawer,close_drawer,turn_on_led,turn_off_led",
        ])
        .args([
            "--episodes",
            &episodes.to_string(),
            "--max-steps",
            "40",
            "--out",
        ])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn chained_play_stores_each_subtask_from_its_real_start_state_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let s = record_chained(d.path(), 6, &[]);
    assert_eq!(s["episodes"], 6);
    let ds = CalvinDataset::open(d.path()).unwrap();
    let lang = ds.language().unwrap();
    assert_eq!(lang.task.len(), 6);
    // Chains start from CALVIN's evaluation robot pose; a second subtask starts where
    // the first ended (no reset), so from a pose that is not the start pose.
    let start_pose = vw2_policy::eval::chains::EVAL_ROBOT_OBS;
    let eps = ds.episodes().to_vec();
    let mut continued = 0;
    for w in eps.windows(2) {
        let end = ds.frame(w[0].1).unwrap();
        let next = ds.frame(w[1].0).unwrap();
        if next.robot_obs != start_pose {
            // A continued subtask: its first frame is the previous subtask's last state.
            assert_eq!(next.robot_obs, end.robot_obs);
            assert_eq!(next.scene_obs, end.scene_obs);
            continued += 1;
        }
    }
    assert!(continued >= 1, "no chain went past its first subtask");
    for (i, (task, ann)) in lang.task.iter().zip(&lang.ann).enumerate() {
        assert_eq!(
            Some(ann.as_str()),
            vw2_policy::eval::sentences::validation_sentence(task),
            "episode {i}"
        );
    }

    // Killed mid-chain (the fake crashes on a step), then resumed: the same dataset as
    // one uninterrupted run.
    let k = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["record", "--backend", "fake", "--chained", "2"])
        .args([
            "--tasks",
            "open_drawer,close_drawer,turn_on_led,turn_off_led",
        ])
        .args(["--episodes", "6", "--max-steps", "40", "--out"])
        .arg(k.path())
        .arg("--sim-arg=--crash-after=25")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let partial = CalvinDataset::open(k.path()).unwrap().episodes().len();
    assert!(partial < 6);
    let s = record_chained(k.path(), 6, &[]);
    assert_eq!(s["resumed_from"], partial);
    let a = CalvinDataset::open(k.path()).unwrap();
    assert_eq!(a.episodes(), ds.episodes());
    assert_eq!(a.language().unwrap().task, lang.task);
    for i in 0..a.num_frames() {
        assert_eq!(
            a.frame(i).unwrap().robot_obs,
            ds.frame(i).unwrap().robot_obs
        );
    }
}
