//! Teleop comparison: shadow, takeover and paired runs through the safety
//! layer on the fake and PlayTable backends, the recorded run replayed
//! (feed the recorded inputs, compare the outputs), the dataset, the bag,
//! and the report checked in a real headless browser.

use std::path::Path;

mod common;

use anyhow::Result;
use vw2_policy::eval::chains::official_chains;
use vw2_policy::eval::policy::{EvalPolicy, NoopPolicy, RandomPolicy, ScriptedPolicy};
use vw2_policy::eval::{rollout_chain, Capture, Chain};
use vw2_policy::io::env_adapter::{EnvAdapter, EnvConfig};
use vw2_policy::io::Observation;
use vw2_policy::safety::SafetyConfig;
use vw2_policy::teleop::arbiter::{Control, HoldCause, TakeoverConfig};
use vw2_policy::teleop::operator::{
    Operator, OperatorCommand, RecordedOperator, ScriptedOperator, ScriptedOperatorConfig,
};
use vw2_policy::teleop::record::{read_episodes, read_ticks, EpisodeSource, BAG_FILE};
use vw2_policy::teleop::run::{run_teleop, PairOrder, TeleopOptions};
use vw2_policy::teleop::session::{
    replay, run_chain, ChainRun, Issuer, SessionConfig, SubtaskRun, TickLog, TickSink,
};
use vw2_policy::teleop::Mode;

const DT: f64 = 1.0 / 30.0;

/// Keeps every tick.
#[derive(Default)]
struct Collect {
    ticks: Vec<TickLog>,
}

impl TickSink for Collect {
    fn tick(&mut self, log: &TickLog, _obs: &Observation) -> Result<()> {
        self.ticks.push(log.clone());
        Ok(())
    }
    fn end_subtask(&mut self, _: &str, _: usize, _: &SubtaskRun, _: &str) -> Result<()> {
        Ok(())
    }
}

fn env(backend: &str) -> EnvAdapter {
    let mut cfg = EnvConfig::new(backend);
    cfg.timeout_s = 60.0;
    EnvAdapter::spawn(&cfg).expect("env starts (is .venv set up? run scripts/setup.sh)")
}

/// The fake's chain, first three subtasks (open_drawer: +x for 7 steps, …).
fn fake_chain() -> Chain {
    let mut c = common::fake_chain();
    c.tasks.truncate(3);
    c
}

fn session(mode: Mode, control: Control, ep_len: usize) -> SessionConfig {
    SessionConfig {
        mode,
        control,
        takeover: TakeoverConfig::default(),
        safety: SafetyConfig::calvin_default(),
        ep_len,
        realtime: false,
    }
}

fn scripted(cfg: ScriptedOperatorConfig) -> ScriptedOperator {
    ScriptedOperator::new(cfg, 30.0).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn run(
    env: &mut EnvAdapter,
    policy: &mut dyn EvalPolicy,
    operator: &mut dyn Operator,
    chain: &Chain,
    cfg: &SessionConfig,
) -> (ChainRun, Vec<TickLog>) {
    let mut sink = Collect::default();
    let r = run_chain(env, Some(policy), Some(operator), chain, 0, cfg, &mut sink).unwrap();
    (r, sink.ticks)
}

/// REAL BACKEND (PlayTable, pybullet): in shadow mode the operator drives and
/// succeeds exactly where the expert does; the policy's commands are logged
/// on every tick but never executed: two different policies give the same
/// executed stream.
#[test]
fn shadow_on_playtable_executes_only_the_operator_and_matches_the_expert() {
    let chain = &official_chains()[1];
    let ep_len = 150;
    // A fresh simulator per run: pybullet is bit-exact from a fresh start,
    // not across resets, and a borderline grasp must not decide the comparison.
    let expert = rollout_chain(
        &mut env("playtable"),
        &mut ScriptedPolicy::default(),
        chain,
        1,
        ep_len,
        &vw2_policy::safety::SafetyConfig::calvin_default(),
        Capture::default(),
    )
    .unwrap();
    let cfg = session(Mode::Shadow, Control::Shadow, ep_len);
    let mut runs = vec![];
    for seed in [1, 2] {
        let mut op = scripted(ScriptedOperatorConfig::default());
        runs.push(run(
            &mut env("playtable"),
            &mut RandomPolicy::new(seed),
            &mut op,
            chain,
            &cfg,
        ));
    }
    let (a, ta) = &runs[0];
    let (_, tb) = &runs[1];
    let ok = |r: &ChainRun| r.subtasks.iter().map(|s| s.success).collect::<Vec<_>>();
    let expert_ok: Vec<bool> = expert.subtasks.iter().map(|s| s.success).collect();
    assert_eq!(ok(a), expert_ok, "operator vs expert");
    assert!(a.completed >= 1);
    // Until the physics drifts apart (pybullet is not bit-exact across
    // resets), two policies leave the executed stream identical.
    let same = ta
        .iter()
        .zip(tb.iter())
        .take_while(|(x, y)| x.tcp == y.tcp)
        .count();
    assert!(same >= a.subtasks[0].steps, "diverged at tick {same}");
    let mut policies_differ = 0;
    for (x, y) in ta.iter().zip(tb).take(same) {
        assert_eq!(x.executed, y.executed, "step {}: the policy leaked", x.step);
        if x.policy != y.policy {
            policies_differ += 1;
        }
    }
    assert!(policies_differ > same / 2);
    // And exactly: the same ticks with the policy's actions removed give the
    // same outputs, for both runs.
    for ticks in [ta, tb] {
        assert!(ticks
            .iter()
            .all(|t| t.issuer == Issuer::Operator && t.policy.is_some()));
        let blind: Vec<TickLog> = ticks
            .iter()
            .map(|t| TickLog {
                policy: None,
                ..t.clone()
            })
            .collect();
        let again = replay(&blind, &cfg).unwrap();
        for (x, y) in again.iter().zip(ticks.iter()) {
            assert_eq!(x.executed, y.executed, "step {}", x.step);
        }
    }
    let agreement = a.subtasks[0].agreement.as_ref().unwrap();
    assert_eq!(agreement.ticks, a.subtasks[0].steps);
}

/// The fake backend, takeover: a policy that never moves, a scripted
/// supervisor that takes over after 0.3 s and lets go after 0.3 s; every
/// takeover is logged, commands stay within the acceleration limit across
/// switches, and the run replays to the same log.
#[test]
fn takeover_on_the_fake_backend_logs_interventions_and_replays() {
    let mut e = env("fake");
    let chain = fake_chain();
    let cfg = session(Mode::Takeover, Control::Takeover, 120);
    let mut op = scripted(ScriptedOperatorConfig {
        intervene_after_s: 0.3,
        intervene_for_s: 0.3,
        ..Default::default()
    });
    let (r, ticks) = run(&mut e, &mut NoopPolicy, &mut op, &chain, &cfg);
    assert_eq!(r.completed, 3, "{r:?}");
    assert!(r.interventions.len() >= 3, "{:?}", r.interventions);
    let first = &r.interventions[0];
    assert_eq!(first.subtask, 0);
    // The policy had the first 0.3 s (9 ticks); the operator took over on the next.
    assert_eq!(first.start_step, 9, "{first:?}");
    assert!(first.policy_before[..6].iter().all(|v| *v == 0.0));
    let st = &r.subtasks[0];
    assert!(st.ticks_policy >= 9 && st.ticks_operator >= 1, "{st:?}");
    // The switch tick itself already executes the operator's command.
    let sw = ticks
        .iter()
        .find(|t| t.switch.as_deref() == Some("take_over"))
        .unwrap();
    assert_eq!(sw.issuer, Issuer::Operator);
    assert!(sw.executed[0] > 0.0);
    // Bumpless: between consecutive moves, |Δv| ≤ a_max · dt.
    let a_max = cfg.safety.max_linear_accel;
    for w in ticks.windows(2) {
        let (Some(c0), Some(c1)) = (&w[0].command, &w[1].command) else {
            continue;
        };
        if c0.hold || c1.hold || w[0].subtask != w[1].subtask {
            continue;
        }
        for i in 0..3 {
            let dv = (c1.velocity[i] - c0.velocity[i]).abs();
            assert!(dv <= a_max * DT + 1e-9, "step {}: Δv {dv}", w[1].step);
        }
    }
    // Dora-style replay: the recorded inputs give the recorded outputs.
    let again = replay(&ticks, &cfg).unwrap();
    assert_eq!(again, ticks);
    // A replay under another deadband differs, so the comparison can fail.
    let mut loose = cfg.clone();
    loose.takeover.deadband = 5.0;
    assert_ne!(replay(&ticks, &loose).unwrap(), ticks);
}

/// A stale operator stream during takeover holds (then goes quiet) and never
/// hands control back to the policy silently, even a policy that would solve
/// the task.
#[test]
fn a_stale_operator_during_takeover_holds_and_the_policy_never_drives() {
    let mut e = env("fake");
    let chain = fake_chain();
    let mut cfg = session(Mode::Takeover, Control::Takeover, 60);
    cfg.safety.stale_timeout_s = 0.1;
    let mut op = scripted(ScriptedOperatorConfig {
        intervene_after_s: 100.0,
        stop_after: Some(1),
        ..Default::default()
    });
    let (r, ticks) = run(
        &mut e,
        &mut ScriptedPolicy::default(),
        &mut op,
        &chain,
        &cfg,
    );
    // Without the stop the expert-as-policy opens the drawer in ~7 steps; the
    // stream stops after its first message, goes stale 0.1 s later, and the
    // policy is held before it gets there.
    assert_eq!(r.completed, 0, "{r:?}");
    let stale_from = ticks
        .iter()
        .position(|t| matches!(t.hold_cause, Some(HoldCause::OperatorStale { .. })))
        .expect("a stale hold");
    assert!(
        (3..=5).contains(&stale_from),
        "stale from tick {stale_from}"
    );
    for t in &ticks[stale_from..] {
        assert_eq!(t.issuer, Issuer::Arbiter, "step {}", t.step);
        assert!(t.executed[..6].iter().all(|v| v.abs() < 1e-9), "{t:?}");
        if let Some(c) = &t.command {
            assert!(c.hold);
        }
    }
    // Holds, then silence.
    let holds = ticks[stale_from..]
        .iter()
        .filter(|t| t.command.is_some())
        .count();
    assert_eq!(holds, cfg.safety.hold_repeats as usize);
}

/// A NaN in an operator message holds on that tick, with the cause logged;
/// the log keeps the NaN and replays.
#[test]
fn a_nan_operator_message_holds_and_is_logged() {
    let mut e = env("fake");
    let chain = fake_chain();
    let cfg = session(Mode::Shadow, Control::Shadow, 12);
    let msgs: Vec<Option<OperatorCommand>> = (0..12)
        .map(|k| {
            let mut m = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
            if k == 5 {
                m[1] = f64::NAN;
            }
            Some(OperatorCommand {
                t: k as f64 * DT,
                motion: m,
                gripper: Some(1.0),
            })
        })
        .collect();
    let mut op = RecordedOperator::new(msgs);
    let (_, ticks) = run(&mut e, &mut NoopPolicy, &mut op, &chain, &cfg);
    let t5 = &ticks[5];
    assert_eq!(t5.issuer, Issuer::Arbiter);
    assert_eq!(
        t5.hold_cause,
        Some(HoldCause::OperatorNonFinite {
            field: "operator.motion"
        })
    );
    assert!(t5.executed[..6].iter().all(|v| v.abs() < 1e-9));
    assert!(t5.command.unwrap().hold);
    assert!(ticks[4].executed[0] > 0.0 && ticks[6].executed[0] > 0.0);
    let json = serde_json::to_string(t5).unwrap();
    let back: TickLog = serde_json::from_str(&json).unwrap();
    assert!(back.operator.unwrap().motion[1].is_nan());
    // NaN ≠ NaN, so compare the replay's outputs, not the whole records.
    let again = replay(&ticks, &cfg).unwrap();
    for (a, b) in again.iter().zip(&ticks) {
        assert_eq!(
            (a.issuer, a.executed, a.command),
            (b.issuer, b.executed, b.command)
        );
    }
}

fn options(mode: Mode, out: &Path, chains: Vec<(usize, Chain)>) -> TeleopOptions {
    TeleopOptions {
        input: vw2_policy::teleop::run::OperatorInput::Scripted,
        mode,
        policy: vw2_policy::eval::PolicySpec::Noop,
        operator: ScriptedOperatorConfig {
            intervene_after_s: 0.3,
            intervene_for_s: 0.3,
            noise_std: 0.2,
            seed: 3,
            ..Default::default()
        },
        env: EnvConfig::new("fake"),
        chains,
        order: PairOrder::Alternate,
        takeover: TakeoverConfig::default(),
        safety: SafetyConfig::calvin_default(),
        ep_len: 60,
        out: out.to_path_buf(),
        dataset: true,
        bag: true,
        progress: false,
    }
}

/// A takeover run's folder: the dataset splits at every change of driver and
/// says who drove; every frame carries both parties' commands; the bag holds
/// one image and one executed command per tick; the CLI replay agrees.
#[test]
fn a_takeover_run_writes_a_dataset_a_bag_and_replays_from_disk() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let s = run_teleop(&options(Mode::Takeover, &out, vec![(0, fake_chain())])).unwrap();
    assert!(s.complete);
    let ticks = read_ticks(&out).unwrap();
    let n = ticks.len();
    let ds = vw2_policy::data::calvin::CalvinDataset::open(out.join("dataset")).unwrap();
    assert_eq!(ds.num_frames(), n);
    let eps = read_episodes(&out.join("dataset")).unwrap();
    assert_eq!(eps.len(), ds.episodes().len());
    assert!(eps.iter().any(|e| e.issuer == "operator"));
    assert!(eps.iter().any(|e| e.issuer == "policy"));
    for (e, &(s, t)) in eps.iter().zip(ds.episodes()) {
        assert_eq!((e.start, e.end), (s, t));
        for (i, tick) in ticks.iter().enumerate().take(t + 1).skip(s) {
            let npz = vw2_policy::data::npz::NpzReader::open(ds.frame_path(i)).unwrap();
            let who = npz.array("vw2_issuer").unwrap().data[0];
            let rel = ds.frame(i).unwrap().rel_actions;
            assert_eq!(rel[..6], tick.executed[..6], "frame {i}");
            match tick.issuer {
                Issuer::Policy => assert_eq!((who, e.issuer.as_str()), (1, "policy")),
                Issuer::Operator => assert_eq!((who, e.issuer.as_str()), (2, "operator")),
                Issuer::Arbiter => assert_eq!(who, 0),
            }
            let op = npz
                .array("vw2_operator_rel_actions")
                .unwrap()
                .to_f64_vec()
                .unwrap();
            assert_eq!(op[0], tick.operator.unwrap().motion[0]);
        }
    }
    let (msgs, clean) = vw2_policy::teleop::bag::read_messages(&out.join(BAG_FILE)).unwrap();
    assert!(clean);
    let count = |topic: &str| msgs.iter().filter(|m| m.0 == topic).count();
    assert_eq!(count("/camera/static"), n);
    assert_eq!(count("/executed/cmd"), n);
    assert_eq!(count("/operator/cmd"), n);
    assert_eq!(
        count("/teleop/interventions"),
        ticks.iter().filter(|t| t.switch.is_some()).count()
    );
    // `finetune-head --source interventions` learns only from the takeovers.
    let takeovers: Vec<usize> = (0..eps.len())
        .filter(|&i| eps[i].issuer == "operator" && eps[i].mode == "takeover")
        .collect();
    let kept = EpisodeSource::Interventions
        .episodes(&out.join("dataset"), eps.len())
        .unwrap()
        .unwrap();
    assert_eq!(kept.iter().copied().collect::<Vec<_>>(), takeovers);
    assert!(EpisodeSource::All
        .episodes(&out.join("dataset"), eps.len())
        .unwrap()
        .is_none());
    let e = EpisodeSource::Operator
        .episodes(d.path(), 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vw2_teleop_episodes.json") && e.contains("missing"),
        "{e}"
    );
    let head = d.path().join("head");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["finetune-head", "--dataset"])
        .arg(out.join("dataset"))
        .args([
            "--policy",
            "tests/fixtures/tiny-policy",
            "--source",
            "interventions",
        ])
        .args([
            "--label-fraction",
            "1.0",
            "--steps",
            "2",
            "--no-progress",
            "--out",
        ])
        .arg(&head)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(head.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["source"], "interventions");
    assert!(m["label_episodes"].as_u64().unwrap() > 0, "{m}");
    for id in m["label_episode_ids"].as_array().unwrap() {
        assert!(takeovers.contains(&(id.as_u64().unwrap() as usize)), "{id}");
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vw2"))
        .args(["teleop", "replay"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains(&format!("replayed {n} ticks: 0 differ")),
        "{stdout}"
    );
}
