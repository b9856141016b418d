//! `vw2 teleop report` over a paired, a shadow and a takeover run on the fake
//! backend, checked in a real headless browser (Debian's Chromium, installed
//! by scripts/setup.sh): the page renders, its plots are there, and every
//! number in its tables equals `report.json`.

mod common;

use std::path::Path;
use std::process::Command;

use vw2_policy::eval::Chain;
use vw2_policy::io::env_adapter::EnvConfig;
use vw2_policy::safety::SafetyConfig;
use vw2_policy::teleop::arbiter::TakeoverConfig;
use vw2_policy::teleop::operator::ScriptedOperatorConfig;
use vw2_policy::teleop::report::{fmt_num, write};
use vw2_policy::teleop::run::{run_teleop, PairOrder, TeleopOptions};
use vw2_policy::teleop::Mode;

fn options(mode: Mode, out: &Path, chains: Vec<(usize, Chain)>) -> TeleopOptions {
    TeleopOptions {
        input: vw2_policy::teleop::run::OperatorInput::Scripted,
        mode,
        policy: vw2_policy::eval::PolicySpec::Random { seed: 4 },
        operator: ScriptedOperatorConfig {
            intervene_after_s: 0.3,
            intervene_for_s: 0.3,
            ..Default::default()
        },
        env: EnvConfig::new("fake"),
        chains,
        order: PairOrder::Alternate,
        takeover: TakeoverConfig::default(),
        safety: SafetyConfig::calvin_default(),
        ep_len: 40,
        out: out.to_path_buf(),
        dataset: false,
        bag: false,
        progress: false,
    }
}

/// `value` at a dotted path of `report.json` (numbers index arrays).
fn lookup<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let mut cur = v;
    // Task names hold no dots; split from the left.
    for part in key.split('.') {
        cur = match cur {
            serde_json::Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            serde_json::Value::Object(o) => o.get(part)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// `(data-key, text)` of every cell that carries a data-key.
fn keyed_cells(dom: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = dom;
    while let Some(i) = rest.find("data-key=\"") {
        rest = &rest[i + 10..];
        let end = rest.find('"').unwrap();
        let key = rest[..end].to_string();
        let gt = rest.find('>').unwrap();
        let lt = rest[gt..].find('<').unwrap();
        out.push((key, rest[gt + 1..gt + lt].trim().to_string()));
        rest = &rest[gt + lt..];
    }
    out
}

fn chromium(args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .args(args)
        .output()
        .expect("chromium runs (scripts/setup.sh installs Debian's chromium)")
}

#[test]
fn the_report_renders_in_chromium_and_matches_report_json() {
    let d = tempfile::tempdir().unwrap();
    let mut failing = common::fake_chain();
    failing.tasks[1] = "rotate_red_block_right".into();
    let chains = vec![(0, common::fake_chain()), (1, failing)];
    let mut runs = vec![];
    for mode in [Mode::Paired, Mode::Shadow, Mode::Takeover] {
        let out = d.path().join(mode.name());
        run_teleop(&options(mode, &out, chains.clone())).unwrap();
        runs.push(out);
    }
    let rep = d.path().join("report");
    let r = write(&runs, &rep).unwrap();
    // The paired operator completes chain 0 (5 subtasks) and 1 of chain 1.
    let op = &r.parties["operator"];
    assert_eq!(op.chains, 2);
    assert!((op.avg_len - 3.0).abs() < 1e-12, "{op:?}");
    assert!(r.shadow.as_ref().unwrap().ticks > 0);
    assert!(r.takeover.as_ref().unwrap().interventions > 0);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep.join("report.json")).unwrap()).unwrap();
    let url = format!("file://{}", rep.join("report.html").display());
    let o = chromium(&["--dump-dom", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dom = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(dom.contains("<h1>Teleop comparison</h1>"), "{dom:.300}");
    let cells = keyed_cells(&dom);
    assert!(cells.len() > 40, "{} numbers", cells.len());
    for (key, text) in &cells {
        let v = lookup(&json, key).unwrap_or_else(|| panic!("{key}: not in report.json"));
        let shown = match v.as_u64() {
            Some(n) => n.to_string(),
            None => fmt_num(
                v.as_f64()
                    .unwrap_or_else(|| panic!("{key}: {v} is not a number")),
            ),
        };
        assert_eq!(text, &shown, "{key}");
    }
    // The plots: one bar per task and party, three error curves.
    let tasks = json["tasks"].as_object().unwrap();
    let bars: usize = json["parties"].as_object().unwrap().len() * tasks.len();
    assert_eq!(dom.matches("class=\"bar\"").count(), bars);
    assert!(dom.contains("id=\"plot-success\""));
    assert!(dom.contains("id=\"plot-shadow-error\""));
    assert_eq!(dom.matches("class=\"series\"").count(), 3);
    assert!(
        dom.contains("src=\"data:image/png;base64,"),
        "thumbnails inlined"
    );

    // It renders: a screenshot with more than a blank page in it.
    let shot = d.path().join("shot.png");
    let o = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1100,1600",
        &url,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img =
        opencv::imgcodecs::imread(shot.to_str().unwrap(), opencv::imgcodecs::IMREAD_GRAYSCALE)
            .unwrap();
    use opencv::prelude::*;
    assert_eq!((img.cols(), img.rows()), (1100, 1600));
    let mut mean = opencv::core::Scalar::default();
    let mut std = opencv::core::Scalar::default();
    opencv::core::mean_std_dev(&img, &mut mean, &mut std, &opencv::core::no_array()).unwrap();
    assert!(std[0] > 10.0, "a blank page (std {})", std[0]);
}
