//! `vw2 eval calvin`: CALVIN's chains (against the official generator's output
//! in `../shared`), its metrics, and the harness end to end on the fake
//! backend (resume after a kill, env crashes retried then recorded apart,
//! set-up errors stopping the run, shards merged), plus one short run on the
//! real `playtable` backend.

mod common;
use common::fake_chain;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vw2_policy::eval::chains::{calvin_chains, env_state_for_condition, official_chains, Chain};
use vw2_policy::eval::metrics::{avg_seq_len, count_success, task_info, ChainRecord, Metrics};
use vw2_policy::eval::mt19937::{fnv1_32, utf16le, NumpyRandomState};
use vw2_policy::eval::sentences::VALIDATION_SENTENCES;

const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/calvin/eval_sequences_with_states.json"
);

fn python() -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"));
    assert!(
        p.exists(),
        "{}: the project's venv is missing; run scripts/setup.sh",
        p.display()
    );
    p
}

fn run_python(code: &str) -> String {
    let o = Command::new(python())
        .args(["-c", code])
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/python"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

// ---------------------------------------------------------------- chains

#[test]
fn chains_equal_the_official_generators_output() {
    let text = std::fs::read_to_string(REFERENCE).unwrap_or_else(|e| {
        panic!(
            "{REFERENCE}: cannot read the reference chains ({e}); this test needs ../shared/calvin"
        )
    });
    let reference: Vec<Chain> = serde_json::from_str(&text).expect("reference parses as chains");
    assert_eq!(reference.len(), 1000);
    let ours = official_chains();
    assert_eq!(ours.len(), 1000);
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(
            a.initial_condition, b.initial_condition,
            "chain {i}: condition"
        );
        assert_eq!(a.tasks, b.tasks, "chain {i}: tasks");
        for (name, x, y) in [
            ("robot_obs", &a.robot_obs, &b.robot_obs),
            ("scene_obs", &a.scene_obs, &b.scene_obs),
        ] {
            assert_eq!(x.len(), y.len(), "chain {i}: {name} length");
            for (k, (p, q)) in x.iter().zip(y).enumerate() {
                assert!((p - q).abs() <= 1e-6, "chain {i}: {name}[{k}]: {p} vs {q}");
            }
        }
    }
    // The README's facts about the set.
    let conds: std::collections::HashSet<_> =
        ours.iter().map(|c| c.initial_condition.clone()).collect();
    assert_eq!(conds.len(), 192);
    let tasks: std::collections::HashSet<_> = ours.iter().flat_map(|c| c.tasks.clone()).collect();
    assert_eq!(tasks.len(), 34);
}

#[test]
fn first_chain_hash_and_placement_follow_the_readme() {
    let c = &official_chains()[0];
    assert_eq!(
        c.initial_condition.python_values_str(),
        "dict_values([1, 1, 'left', 'open', 'slider_left', 'table', 'slider_right', 0])"
    );
    assert_eq!(c.initial_condition.placement_seed(), 2138410836);
    assert_eq!(
        c.tasks,
        [
            "rotate_blue_block_right",
            "move_slider_right",
            "lift_red_block_slider",
            "place_in_slider",
            "turn_off_lightbulb"
        ]
    );
    let (_, scene) = env_state_for_condition(&c.initial_condition);
    for yaw in [scene[11], scene[17], scene[23]] {
        let d = (yaw - std::f64::consts::FRAC_PI_2).abs();
        assert!(d <= std::f64::consts::PI / 8.0, "yaw {yaw}");
    }
    // A smaller request is a different (but still valid) draw, as in CALVIN.
    let few = calvin_chains(10);
    assert_eq!(few.len(), 10);
}

#[test]
fn numpy_random_state_matches_numpy() {
    let out = run_python(
        "import numpy as np, json\n\
         r = {}\n\
         np.random.seed(5); r['perm'] = np.random.permutation(34).tolist(); r['u'] = repr(np.random.uniform(1.0, 2.0))\n\
         np.random.seed(4000000000); r['raw'] = np.random.randint(0, 2**32, size=3, dtype=np.uint64).tolist()\n\
         np.random.seed(7); r['choice'] = np.random.choice(34, 5, replace=False).tolist()\n\
         np.random.seed(0); x = list(range(1000)); np.random.shuffle(x); r['shuffle'] = x[:10]\n\
         print(json.dumps(r))",
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let mut rs = NumpyRandomState::new(5);
    let perm: Vec<u64> = rs.permutation(34).iter().map(|&x| x as u64).collect();
    assert_eq!(serde_json::json!(perm), v["perm"]);
    // Python's repr and Rust's Debug both print the shortest round-trip form.
    assert_eq!(
        format!("{:?}", rs.uniform(1.0, 2.0)),
        v["u"].as_str().unwrap()
    );
    // randint over the full 32-bit range draws raw outputs.
    let mut rs = NumpyRandomState::new(4_000_000_000);
    let raw: Vec<u32> = (0..3).map(|_| rs.next_u32()).collect();
    assert_eq!(serde_json::json!(raw), v["raw"]);
    let mut rs = NumpyRandomState::new(7);
    assert_eq!(
        serde_json::json!(rs.choice_without_replacement(34, 5)),
        v["choice"]
    );
    let mut rs = NumpyRandomState::new(0);
    let mut x: Vec<usize> = (0..1000).collect();
    rs.shuffle(&mut x);
    assert_eq!(serde_json::json!(x[..10]), v["shuffle"]);
}

#[test]
fn fnv1_32_matches_the_pure_python_reference() {
    let out = run_python(
        "s = str({'a': 1, 'b': 'x'}.values())\n\
         h = 0\n\
         for b in s.encode('utf-16-le'):\n    h = (h * 0x01000193) & 0xffffffff; h ^= b\n\
         print(s); print(h)",
    );
    let mut lines = out.lines();
    let s = lines.next().unwrap();
    let h: u32 = lines.next().unwrap().parse().unwrap();
    assert_eq!(s, "dict_values([1, 'x'])");
    assert_eq!(fnv1_32(&utf16le(s), 0), h);
}

#[test]
fn validation_sentences_equal_the_simulators_table() {
    let out = run_python(
        "import json\nfrom vw2_sim.tasks import VALIDATION_SENTENCES as V\nprint(json.dumps(V))",
    );
    let py: BTreeMap<String, String> = serde_json::from_str(out.trim()).unwrap();
    let ours: BTreeMap<String, String> = VALIDATION_SENTENCES
        .iter()
        .map(|(t, s)| (t.to_string(), s.to_string()))
        .collect();
    assert_eq!(ours.len(), 34);
    for (t, s) in &ours {
        assert_eq!(
            py.get(t),
            Some(s),
            "task {t}: Rust has CALVIN's new_playtable_validation.yaml sentence {s:?}; \
             python/vw2_sim/tasks.py has {:?}",
            py.get(t)
        );
    }
    assert_eq!(py.len(), ours.len());
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_on_the_readme_example() {
    let results = [0, 1, 2, 3, 4, 5, 5, 2];
    let sr = count_success(&results);
    let want = [0.875, 0.75, 0.5, 0.375, 0.25];
    for (a, b) in sr.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{sr:?}");
    }
    assert!((avg_seq_len(&results) - 2.75).abs() < 1e-12);
    // Per-task: successes for the completed prefix, one attempt for the failed subtask.
    let tasks: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
    let info = task_info(results.iter().map(|&r| (r, tasks.as_slice())));
    assert_eq!((info["a"].success, info["a"].total), (7, 8));
    assert_eq!((info["b"].success, info["b"].total), (6, 7));
    assert_eq!((info["c"].success, info["c"].total), (4, 6));
    assert_eq!((info["e"].success, info["e"].total), (2, 3));
}

fn record(index: usize, completed: usize, env_error: bool) -> ChainRecord {
    let c = &official_chains()[index];
    ChainRecord {
        safety_events: Default::default(),
        index,
        initial_condition: c.initial_condition.clone(),
        tasks: c.tasks.clone(),
        completed,
        subtasks: vec![],
        env_error,
        env_error_message: None,
        attempts: 1,
        wall_s: 0.0,
    }
}

#[test]
fn env_errors_are_left_out_of_the_metrics() {
    let recs = vec![record(0, 2, false), record(1, 0, true), record(2, 4, false)];
    let m = Metrics::compute(&recs);
    assert_eq!(m.chains, 2);
    assert_eq!(m.env_errors, 1);
    assert!((m.avg_seq_len - 3.0).abs() < 1e-12);
    assert_eq!(m.chain_sr, [1.0, 1.0, 0.5, 0.5, 0.0]);
    let j = m.results_json(Some("3"));
    assert!(j["3"]["chain_sr"]["5"].is_number());
}

// ---------------------------------------------------------------- harness

fn vw2() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vw2"))
}

fn eval(args: &[&str], out: &Path) -> std::process::Output {
    let o = vw2()
        .args(["eval", "calvin", "--no-progress", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vw2 eval calvin {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn lines(dir: &Path) -> Vec<ChainRecord> {
    std::fs::read_to_string(dir.join("chains.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn check_results_layout(dir: &Path, n: usize) -> serde_json::Value {
    let r = read_json(&dir.join("results.json"));
    let obj = r.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), vec!["null"]);
    let e = &r["null"];
    let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec!["avg_seq_len", "chain_sr", "safety_events", "task_info"]
    );
    let sr: Vec<f64> = (1..=5)
        .map(|i| e["chain_sr"][i.to_string()].as_f64().unwrap())
        .collect();
    assert!(
        sr.windows(2).all(|w| w[0] >= w[1]),
        "SR not monotone: {sr:?}"
    );
    let recs = lines(dir);
    assert_eq!(recs.len(), n);
    let done: Vec<usize> = recs.iter().map(|r| r.completed).collect();
    assert!((e["avg_seq_len"].as_f64().unwrap() - avg_seq_len(&done)).abs() < 1e-12);
    // Each task's total counts its attempts.
    let attempts: usize = recs.iter().map(|r| r.subtasks.len()).sum();
    let total: u64 = e["task_info"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["total"].as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, attempts);
    // The safety layer's clamps and holds are the chains' own, summed.
    let mut events = std::collections::BTreeMap::<String, u64>::new();
    for r in recs.iter().filter(|r| !r.env_error) {
        for (k, n) in &r.safety_events {
            *events.entry(k.clone()).or_default() += n;
        }
    }
    assert_eq!(e["safety_events"], serde_json::json!(events));
    let txt = std::fs::read_to_string(dir.join("results.txt")).unwrap();
    assert!(txt.contains("safety layer: "), "{txt}");
    r
}

#[test]
fn scripted_and_random_on_the_fake_backend() {
    let d = tempfile::tempdir().unwrap();
    let scripted = d.path().join("scripted");
    eval(
        &[
            "--policy",
            "scripted",
            "--backend",
            "fake",
            "--chains",
            "6",
            "--workers",
            "2",
            "--save-failures",
        ],
        &scripted,
    );
    check_results_layout(&scripted, 6);
    let recs = lines(&scripted);
    let mut idx: Vec<usize> = recs.iter().map(|r| r.index).collect();
    idx.sort();
    assert_eq!(idx, (0..6).collect::<Vec<_>>());
    for r in &recs {
        let c = &official_chains()[r.index];
        assert_eq!(r.tasks, c.tasks);
        assert!(!r.env_error);
        // The chain stops at the first failure; completed subtasks come first.
        assert_eq!(r.subtasks.len(), (r.completed + 1).min(5));
        assert!(r.subtasks[..r.completed].iter().all(|s| s.success));
        if r.completed < 5 {
            let last = r.subtasks.last().unwrap();
            assert!(!last.success && last.steps == 360);
            // --save-failures wrote the failed subtask's strip.
            let png = scripted.join("failures").join(format!(
                "chain{:04}_sub{}_{}.png",
                r.index,
                r.completed + 1,
                last.task
            ));
            assert!(png.exists(), "{}", png.display());
        }
    }
    // The fake expert opens the drawer / switches the LED, so some chains progress.
    assert!(recs.iter().any(|r| r.completed >= 1));

    let random = d.path().join("random");
    eval(
        &[
            "--policy",
            "random",
            "--backend",
            "fake",
            "--chains",
            "3",
            "--start",
            "2",
        ],
        &random,
    );
    check_results_layout(&random, 3);
    let mut idx: Vec<usize> = lines(&random).iter().map(|r| r.index).collect();
    idx.sort();
    assert_eq!(idx, vec![2, 3, 4]);
    let summary = read_json(&random.join("summary.json"));
    assert_eq!(summary["env_errors"], 0);
    assert_eq!(summary["run"]["policy"], "random(seed=0)");
    // A rerun into the same folder with another policy is refused.
    let o = vw2()
        .args(["eval", "calvin", "--no-progress", "--policy", "scripted"])
        .args(["--backend", "fake", "--chains", "1", "--out"])
        .arg(&random)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to mix"));
}

/// A chain whose first subtask the fake never completes (360 steps).
fn failing_chain() -> Chain {
    let mut c = fake_chain();
    c.tasks[0] = "rotate_red_block_right".into();
    c
}

fn write_chains(path: &Path, chains: &[Chain]) {
    std::fs::write(path, serde_json::to_string(chains).unwrap()).unwrap();
}

#[test]
fn the_scripted_fake_expert_completes_a_custom_chain_and_a_bundle_policy_runs() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("chains.json");
    write_chains(&file, &[fake_chain()]);
    let out = d.path().join("run");
    eval(
        &[
            "--policy",
            "scripted",
            "--backend",
            "fake",
            "--chains-file",
            file.to_str().unwrap(),
        ],
        &out,
    );
    let r = &lines(&out)[0];
    assert_eq!(r.completed, 5, "{r:?}");
    let m = read_json(&out.join("results.json"));
    assert_eq!(m["null"]["avg_seq_len"], 5.0);
    assert_eq!(m["null"]["chain_sr"]["5"], 1.0);
    assert_eq!(m["null"]["task_info"]["open_drawer"]["success"], 2);

    // The bundled tiny policy in closed loop (chunks played, then held).
    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-policy");
    let out = d.path().join("bundle");
    eval(
        &[
            "--policy",
            bundle,
            "--backend",
            "fake",
            "--chains-file",
            file.to_str().unwrap(),
            "--ep-len",
            "9",
        ],
        &out,
    );
    let r = &lines(&out)[0];
    assert!(!r.env_error);
    assert_eq!(r.subtasks[0].task, "open_drawer");
    assert!(r.subtasks.iter().all(|s| s.steps <= 9));
}

#[test]
fn a_killed_run_resumes_without_repeating_or_losing_chains() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("chains.json");
    let chains: Vec<Chain> = official_chains()[..8].to_vec();
    write_chains(&file, &chains);
    let args = [
        "--policy",
        "random",
        "--backend",
        "fake",
        "--chains-file",
        file.to_str().unwrap(),
    ];
    let killed = d.path().join("killed");
    let mut child = vw2()
        .args(["eval", "calvin", "--no-progress", "--out"])
        .arg(&killed)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = killed.join("chains.jsonl");
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no progress before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup
    child.wait().unwrap();
    let before = lines(&killed).len();
    assert!(before < 8, "the run finished before it could be killed");
    // A torn write at the moment of the kill.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"{\"index\":7,\"initial_cond").unwrap();
    }
    eval(&args, &killed);
    let recs = lines(&killed);
    let mut idx: Vec<usize> = recs.iter().map(|r| r.index).collect();
    idx.sort();
    assert_eq!(idx, (0..8).collect::<Vec<_>>(), "repeated or lost chains");
    // A second rerun has nothing to do.
    let o = eval(&args, &killed);
    assert!(String::from_utf8_lossy(&o.stdout).contains("8 already recorded, 0 run now"));
    assert_eq!(lines(&killed).len(), 8);

    let fresh = d.path().join("fresh");
    eval(&args, &fresh);
    assert_eq!(
        read_json(&killed.join("results.json")),
        read_json(&fresh.join("results.json"))
    );
    // Same outcomes chain by chain (wall times aside).
    let by_index = |v: Vec<ChainRecord>| {
        v.into_iter()
            .map(|mut r| {
                r.wall_s = 0.0;
                (r.index, r)
            })
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(by_index(lines(&killed)), by_index(lines(&fresh)));
}

#[test]
fn a_crashing_env_is_retried_once_then_recorded_as_an_env_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("chains.json");
    let ok = fake_chain();
    write_chains(
        &file,
        &[ok.clone(), ok.clone(), failing_chain(), ok.clone()],
    );
    // Steps of the good chain without faults.
    let clean = d.path().join("clean");
    let base = [
        "--policy",
        "scripted",
        "--backend",
        "fake",
        "--chains-file",
        file.to_str().unwrap(),
    ];
    eval(&base, &clean);
    let clean_recs: BTreeMap<usize, ChainRecord> =
        lines(&clean).into_iter().map(|r| (r.index, r)).collect();
    let s: usize = clean_recs[&0].subtasks.iter().map(|s| s.steps).sum();
    assert_eq!(clean_recs[&0].completed, 5);
    // The fake exits after `limit` steps per process: chain 0 fits, chain 1
    // crashes (the process already took s steps) and passes on a fresh env,
    // chain 2 (360+ steps) crashes twice, chain 3 passes on a fresh env.
    let limit = s + s / 2;
    let crash = format!("--sim-arg=--crash-after={limit}");
    let out = d.path().join("crash");
    let mut args = base.to_vec();
    args.push(&crash);
    eval(&args, &out);
    let recs: BTreeMap<usize, ChainRecord> =
        lines(&out).into_iter().map(|r| (r.index, r)).collect();
    assert_eq!(recs.len(), 4);
    assert!(!recs[&0].env_error && recs[&0].attempts == 1);
    assert!(!recs[&1].env_error && recs[&1].attempts == 2);
    assert!(recs[&1]
        .env_error_message
        .as_deref()
        .unwrap()
        .contains("exited"));
    assert_eq!(recs[&1].completed, 5);
    assert!(recs[&2].env_error && recs[&2].attempts == 2);
    assert!(recs[&2].subtasks.is_empty() && recs[&2].completed == 0);
    assert!(!recs[&3].env_error && recs[&3].completed == 5);
    // Env errors are not policy failures: the metrics cover the 3 other chains.
    let r = read_json(&out.join("results.json"));
    assert_eq!(r["null"]["avg_seq_len"], 5.0);
    assert_eq!(r["null"]["chain_sr"]["1"], 1.0);
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["chains"], 3);
    assert_eq!(summary["env_errors"], 1);
    assert_eq!(summary["env_error_chains"], serde_json::json!([2]));
    assert_eq!(summary["retried_chains"], serde_json::json!([1]));
    let txt = std::fs::read_to_string(out.join("results.txt")).unwrap();
    assert!(txt.contains("env errors"), "{txt}");
    // --retry-env-errors reruns only the env-error chain (here without faults).
    let o = eval(&[&base[..], &["--retry-env-errors"]].concat(), &out);
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 run now"));
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["env_errors"], 0);
    assert_eq!(summary["chains"], 4);
}

#[test]
fn a_setup_error_stops_the_run_with_the_simulators_message() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("chains.json");
    write_chains(&file, &[fake_chain(), fake_chain(), fake_chain()]);
    let run = |out: &Path, refuse: &str, workers: &str| {
        vw2()
            .args(["eval", "calvin", "--no-progress", "--out"])
            .arg(out)
            .args(["--policy", "scripted", "--backend", "fake", "--chains-file"])
            .arg(&file)
            .args(["--workers", workers])
            .arg(format!("--sim-arg=--refuse-reset-after={refuse}"))
            .output()
            .unwrap()
    };
    // Every reset refused (calvin_env without cameras): the run stops, non-zero,
    // with the simulator's message, and records no chain.
    let out = d.path().join("setup");
    let o = run(&out, "0", "2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("set-up error"), "{err}");
    assert!(
        err.contains("refused 'reset': KeyError: 'rgb_static'"),
        "{err}"
    );
    let recorded = std::fs::read_to_string(out.join("chains.jsonl")).unwrap_or_default();
    assert_eq!(recorded.lines().count(), 0, "{recorded}");
    // Once a chain has stepped, a refused reset fails only its chain: here each
    // env refuses its second reset, so chains 1 and 2 pass on a fresh env.
    let out = d.path().join("later");
    let o = run(&out, "1", "1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs: BTreeMap<usize, ChainRecord> =
        lines(&out).into_iter().map(|r| (r.index, r)).collect();
    let attempts: Vec<usize> = recs.values().map(|r| r.attempts).collect();
    assert_eq!(attempts, vec![1, 2, 2]);
    assert!(recs.values().all(|r| !r.env_error && r.completed == 5));
}

#[test]
fn a_hung_env_times_out_and_is_recorded_as_an_env_error() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("chains.json");
    write_chains(&file, &[fake_chain()]);
    let out = d.path().join("hang");
    let t0 = Instant::now();
    eval(
        &[
            "--policy",
            "scripted",
            "--backend",
            "fake",
            "--chains-file",
            file.to_str().unwrap(),
            "--sim-arg=--hang-after=3",
            "--env-timeout",
            "1",
        ],
        &out,
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    let r = &lines(&out)[0];
    assert!(r.env_error && r.attempts == 2, "{r:?}");
    assert!(r
        .env_error_message
        .as_deref()
        .unwrap()
        .contains("did not answer"));
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["env_errors"], 1);
    assert_eq!(summary["chains"], 0);
}

#[test]
fn shards_merged_equal_the_unsharded_run() {
    let d = tempfile::tempdir().unwrap();
    let base = [
        "--policy",
        "random",
        "--backend",
        "fake",
        "--chains",
        "5",
        "--start",
        "10",
    ];
    let whole = d.path().join("whole");
    eval(&base, &whole);
    let s0 = d.path().join("s0");
    let s1 = d.path().join("s1");
    eval(&[&base[..], &["--shard", "0/2"]].concat(), &s0);
    eval(
        &[&base[..], &["--shard", "1/2", "--workers", "2"]].concat(),
        &s1,
    );
    let mut i0: Vec<usize> = lines(&s0).iter().map(|r| r.index).collect();
    i0.sort();
    assert_eq!(i0, vec![10, 12, 14]);
    let merged = d.path().join("merged");
    let o = vw2()
        .args(["eval", "merge"])
        .arg(&s0)
        .arg(&s1)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        read_json(&merged.join("results.json")),
        read_json(&whole.join("results.json"))
    );
    assert_eq!(lines(&merged).len(), 5);
    // Merging a shard with itself is harmless; a disagreeing duplicate is refused.
    let bad = d.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(s0.join("run.json"), bad.join("run.json")).unwrap();
    let mut r = lines(&s0)[0].clone();
    r.completed = 5;
    std::fs::write(
        bad.join("chains.jsonl"),
        serde_json::to_string(&r).unwrap() + "\n",
    )
    .unwrap();
    let o = vw2()
        .args(["eval", "merge"])
        .arg(&s0)
        .arg(&bad)
        .arg("--out")
        .arg(d.path().join("m2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("different outcomes"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn failure_strips_are_valid_pngs() {
    use vw2_policy::base::image::encode_png;
    use vw2_policy::io::RgbImage;
    let (h, w) = (37, 53);
    let data: Vec<u8> = (0..h * w * 3)
        .map(|i| ((i * 7) % 251 + (i / 300) % 3) as u8)
        .collect();
    let png = encode_png(&RgbImage {
        height: h,
        width: w,
        data: data.clone(),
    })
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.png");
    std::fs::write(&p, &png).unwrap();
    // Decode with Python's zlib and undo the filters.
    let out = run_python(&format!(
        "import zlib, struct, sys, binascii\n\
         b = open({p:?}, 'rb').read()\n\
         assert b[:8] == b'\\x89PNG\\r\\n\\x1a\\n'\n\
         pos, idat, hdr = 8, b'', None\n\
         while pos < len(b):\n\
         \x20   n = struct.unpack('>I', b[pos:pos+4])[0]; kind = b[pos+4:pos+8]; body = b[pos+8:pos+8+n]\n\
         \x20   assert struct.unpack('>I', b[pos+8+n:pos+12+n])[0] == binascii.crc32(kind + body)\n\
         \x20   if kind == b'IHDR': hdr = struct.unpack('>IIBBBBB', body)\n\
         \x20   if kind == b'IDAT': idat += body\n\
         \x20   pos += 12 + n\n\
         w, h = hdr[0], hdr[1]\n\
         raw = zlib.decompress(idat)\n\
         s = w * 3; rows = []; prev = bytes(s)\n\
         for y in range(h):\n\
         \x20   f = raw[y*(s+1)]; r = bytearray(raw[y*(s+1)+1:(y+1)*(s+1)])\n\
         \x20   for i in range(s):\n\
         \x20       a = r[i-3] if i >= 3 else 0; c = prev[i]; d = prev[i-3] if i >= 3 else 0\n\
         \x20       if f == 1: r[i] = (r[i] + a) & 255\n\
         \x20       elif f == 2: r[i] = (r[i] + c) & 255\n\
         \x20       elif f == 3: r[i] = (r[i] + (a + c) // 2) & 255\n\
         \x20       elif f == 4:\n\
         \x20           pa, pb, pc = abs(c - d), abs(a - d), abs(a + c - 2 * d)\n\
         \x20           r[i] = (r[i] + (a if pa <= pb and pa <= pc else c if pb <= pc else d)) & 255\n\
         \x20       else: assert f == 0, f\n\
         \x20   rows.append(bytes(r)); prev = bytes(r)\n\
         sys.stdout.write(b''.join(rows).hex())",
        p = p.to_str().unwrap()
    ));
    let decoded: Vec<u8> = (0..out.len() / 2)
        .map(|i| u8::from_str_radix(&out[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(decoded, data);
    assert!(png.len() < data.len(), "no compression at all");
}

#[test]
fn calvin_chains_command_writes_the_chain_list() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    let o = vw2()
        .args(["eval", "calvin-chains", "--out"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(text, serde_json::to_string(official_chains()).unwrap());
    let v: Vec<Chain> = serde_json::from_str(&text).unwrap();
    assert_eq!(v.len(), 1000);
    assert_eq!(v[999].tasks, official_chains()[999].tasks);
    let raw = read_json(&p);
    let keys: Vec<&String> = raw[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4);
}

/// REAL BACKEND: `scripted` on the first CALVIN chain in the built-in
/// `playtable` simulator (pybullet rendering), 150 steps per subtask; about
/// 10–40 s. The scripted expert is known to complete this chain's first
/// subtask (rotate_blue_block_right) in about 60 steps.
#[test]
fn playtable_scripted_on_a_real_chain() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("pt");
    let t0 = Instant::now();
    eval(
        &[
            "--policy",
            "scripted",
            "--backend",
            "playtable",
            "--chains",
            "1",
            "--ep-len",
            "150",
            "--env-timeout",
            "30",
        ],
        &out,
    );
    let r = &lines(&out)[0];
    assert!(!r.env_error, "{r:?}");
    assert_eq!(r.index, 0);
    assert!(r.completed >= 1, "{r:?}");
    check_results_layout(&out, 1);
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
}

/// REAL BACKEND (PlayTable, pybullet): evaluation drives the robot's path.
/// For the same bundle, seed and start state, the actions that reach the
/// simulator through `vw2 eval calvin`'s rollout equal those `vw2 run` sends
/// through the runtime (ingest → plan → actuate → safety), step for step.
#[test]
fn eval_and_run_send_the_same_actions_to_the_env() {
    use vw2_policy::eval::policy::Vw2EvalPolicy;
    use vw2_policy::eval::{rollout_chain, Capture};
    use vw2_policy::io::env_adapter::{EnvAdapter, EnvConfig};
    use vw2_policy::io::robot::SimIo;
    use vw2_policy::policy::{LoadedPolicy, Policy, PolicyOptions};
    use vw2_policy::runtime::{run, RuntimeConfig};
    use vw2_policy::safety::SafetyConfig;

    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-policy");
    let chain = official_chains()[2].clone();
    let steps = 24;
    let options = PolicyOptions {
        seed: 5,
        ..Default::default()
    };
    let mut cfg = EnvConfig::new("playtable");
    cfg.timeout_s = 60.0;

    // vw2 eval calvin: one chain, cut at `steps` steps.
    let mut env = EnvAdapter::spawn(&cfg).unwrap();
    let eval_log = env.log_actions();
    let mut policy = Vw2EvalPolicy::load(&bundle, options.clone()).unwrap();
    let outcome = rollout_chain(
        &mut env,
        &mut policy,
        &chain,
        2,
        steps,
        &SafetyConfig::calvin_default(),
        Capture {
            actions: true,
            ..Capture::default()
        },
    )
    .unwrap();
    drop(env);
    let eval_actions = eval_log.lock().unwrap().clone();
    assert_eq!(outcome.completed, 0, "the tiny policy solved a subtask");
    assert_eq!(eval_actions.len(), steps);
    assert_eq!(
        outcome.actions,
        eval_actions.iter().map(|(a, _)| *a).collect::<Vec<_>>()
    );

    // vw2 run: the runtime from the chain's start state, the first subtask's instruction.
    let mut io = SimIo::start(&cfg, Some(&chain.robot_obs), Some(&chain.scene_obs)).unwrap();
    let run_log = io.env_mut().log_actions();
    let planner = Policy::new(
        LoadedPolicy::load(&bundle, &candle_core::Device::Cpu).unwrap(),
        options,
        candle_core::Device::Cpu,
    )
    .unwrap();
    let instruction = vw2_policy::eval::sentences::validation_sentence(&chain.tasks[0]).unwrap();
    let mut rc = RuntimeConfig::new(SafetyConfig::calvin_default(), instruction);
    rc.max_steps = Some(steps as u64);
    let report = run(
        Box::new(io),
        Box::new(planner),
        None,
        rc,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.ticks, steps as u64);
    let run_actions = run_log.lock().unwrap().clone();
    // The run holds on the way out: those steps come after the compared ones.
    assert!(run_actions.len() >= steps, "{}", run_actions.len());
    for (k, ((e, er), (r, rr))) in eval_actions.iter().zip(&run_actions).enumerate() {
        assert!(*er && *rr, "step {k}: both send relative actions");
        assert_eq!(e, r, "step {k}: eval {e:?} vs run {r:?}");
    }
    // The policy moved the arm: the comparison is not between holds.
    assert!(eval_actions
        .iter()
        .any(|(a, _)| a[..6].iter().any(|v| v.abs() > 1e-3)));
    // Inside the CALVIN envelope nothing was clamped on either path.
    assert!(
        outcome.safety_events.is_empty(),
        "{:?}",
        outcome.safety_events
    );
    // (The run's only events are the e-stop of its exit and the silence after.)
    assert!(
        report
            .safety_events
            .keys()
            .all(|k| k == "EStop" || k == "Silenced"),
        "{:?}",
        report.safety_events
    );
}

/// Runs `vw2 demo ARGS… --out OUT` in `cwd`; asserts success, returns stdout.
fn demo(cwd: &Path, args: &[&str], out: &Path) -> String {
    let o = vw2()
        .current_dir(cwd)
        .args(["demo", "--no-progress"])
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

#[test]
fn demo_prints_each_subtask_and_writes_real_vs_imagined_strips() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("demo");
    let stale = out.join("strips").join("chain0009_sub1_old_fail.png");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"old").unwrap();
    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-policy");
    let stdout = demo(
        d.path(),
        &[
            "--backend",
            "fake",
            "--chains",
            "2",
            "--ep-len",
            "9",
            "--workers",
            "1",
            "--policy",
            bundle,
        ],
        &out,
    );
    assert!(stdout.contains("Avg. Len."), "{stdout}");
    let recs = lines(&out);
    assert_eq!(recs.len(), 2);
    for r in &recs {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("chain {:>3}:", r.index)))
            .unwrap_or_else(|| panic!("no line for chain {}: {stdout}", r.index));
        for (k, st) in r.subtasks.iter().enumerate() {
            let mark = if st.success { "ok" } else { "FAIL" };
            assert!(line.contains(&format!("{} {mark}", st.task)), "{line}");
            // One strip per attempted subtask: 2 rows of 96 px tiles.
            let p = out.join("strips").join(format!(
                "chain{:04}_sub{}_{}_{}.png",
                r.index,
                k + 1,
                st.task,
                if st.success { "ok" } else { "fail" }
            ));
            let png = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
            let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
            let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
            assert_eq!(h, 192);
            assert!(w >= 96 && w % 96 == 0 && w <= 8 * 96, "{w}");
        }
    }
    assert!(!stale.exists(), "the previous demo's strips are replaced");
}

#[test]
fn demo_defaults_to_the_bundled_policy_on_playtable() {
    // The README's main job, shortened: default policy and backend, one chain.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("demo");
    let stdout = demo(d.path(), &["--chains", "1", "--ep-len", "12"], &out);
    assert!(stdout.contains("policies/playtable-small"), "{stdout}");
    assert!(stdout.contains("on playtable"), "{stdout}");
    let strips: Vec<_> = std::fs::read_dir(out.join("strips")).unwrap().collect();
    assert_eq!(strips.len(), lines(&out)[0].subtasks.len());
}

#[test]
fn the_instruction_probe_plans_once_per_instruction_and_sees_the_instruction() {
    use vw2_policy::eval::probe::probe_instructions;
    use vw2_policy::io::env_adapter::EnvConfig;
    let bundle = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-policy"
    ));
    let chains = vec![(0, fake_chain()), (3, official_chains()[3].clone())];
    let p = probe_instructions(bundle, &EnvConfig::new("fake"), &chains).unwrap();
    assert_eq!(p.instructions, 34);
    assert_eq!(p.starts.len(), 2);
    assert_eq!(p.starts[1].chain, 3);
    for s in &p.starts {
        let tasks: Vec<&str> = s.plans.iter().map(|q| q.task.as_str()).collect();
        let want: Vec<&str> = VALIDATION_SENTENCES.iter().map(|(t, _)| *t).collect();
        assert_eq!(tasks, want);
        assert!(s.plans.iter().all(|q| q.predicted_codes.len() == 4));
        // The tiny AR reads the instruction: its first codes differ between tasks.
        assert!(s.distinct_codes >= 2, "{s:?}");
        assert!(s.distinct_codes <= 34 && s.distinct_actions <= 34);
    }
    // Deterministic: the same probe again gives the same plans.
    let again = probe_instructions(bundle, &EnvConfig::new("fake"), &chains).unwrap();
    assert_eq!(again, p);
}
