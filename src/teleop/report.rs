//! `vw2 teleop report RUN... --out DIR`: `report.json` and a self-contained
//! `report.html` (tables, SVG plots, thumbnails inlined as data URIs).
//!
//! Every number in the page's tables carries `data-key`, its path in
//! `report.json` (dots between keys), so a browser test can check the page
//! against the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use serde::Serialize;

use super::record::read_ticks;
use super::run::{RunSummary, RUN_FILE};
use super::session::Intervention;

/// Success counts with a 95% Wilson interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PartyTask {
    /// Subtasks attempted.
    pub attempts: usize,
    /// Subtasks the oracle reported solved.
    pub successes: usize,
    /// successes / attempts.
    pub success_rate: f64,
    /// 95% Wilson score interval of the success rate (shown from 5 attempts on).
    pub ci95: Option<[f64; 2]>,
    /// Mean time to success over the successes (s).
    pub mean_time_to_success_s: Option<f64>,
    /// Mean TCP path length over the attempts (m).
    pub mean_path_length_m: f64,
    /// Mean RMS jerk over the attempts (m/s³).
    pub mean_jerk_rms: f64,
    /// Mean gripper toggles over the attempts.
    pub mean_gripper_toggles: f64,
}

/// One party over all runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PartySummary {
    /// Chains run.
    pub chains: usize,
    /// Mean subtasks completed in a row (CALVIN's Avg. Len.).
    pub avg_len: f64,
    /// SR(1..5): share of chains with at least k completed.
    pub sr: Vec<f64>,
    /// Ticks run.
    pub ticks: usize,
    /// Safety events by kind.
    pub safety_events: BTreeMap<String, u64>,
}

/// Shadow-mode agreement over all shadow ticks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowSummary {
    /// Ticks with both a policy action and an operator command.
    pub ticks: usize,
    /// Mean translation cosine over ticks where both moved (norm > 0.05 units).
    pub mean_cosine: f64,
    /// Mean absolute error per motion axis (CALVIN units): x, y, z, roll, pitch, yaw.
    pub mae: [f64; 6],
    /// Share of ticks with the same gripper request.
    pub gripper_agreement: f64,
    /// Per-axis error over time in the subtask: bin start times (s).
    pub error_t_s: Vec<f64>,
    /// Mean |policy − operator| of x, y, z per time bin.
    pub error_xyz: Vec<[f64; 3]>,
    /// The most disagreeing frames (thumbnails).
    pub worst_frames: Vec<FrameRef>,
}

/// A thumbnail in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameRef {
    /// The PNG (path as given to the report).
    pub file: String,
    /// Chain, subtask, step.
    pub chain: usize,
    /// See `chain`.
    pub subtask: usize,
    /// See `chain`.
    pub step: usize,
    /// Disagreement score (shadow).
    pub score: f64,
    /// The policy's action on that frame.
    pub policy: Option<[f64; 7]>,
    /// The operator's.
    pub operator: Option<[f64; 7]>,
}

/// Takeover mode over all takeover runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TakeoverSummary {
    /// Interventions in all.
    pub interventions: usize,
    /// Interventions per minute of run time.
    pub interventions_per_minute: f64,
    /// Share of ticks the policy drove (0–1).
    pub autonomy_ratio: f64,
    /// Per task: interventions and subtask-minutes.
    pub per_task: BTreeMap<String, TaskInterventions>,
    /// Every intervention, with what the policy did just before.
    pub list: Vec<Intervention>,
    /// Frames of the takeovers.
    pub frames: Vec<FrameRef>,
}

/// Interventions of one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskInterventions {
    /// Interventions.
    pub interventions: usize,
    /// Subtasks attempted.
    pub attempts: usize,
    /// Interventions per minute of this task's run time.
    pub per_minute: f64,
}

/// `report.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// The run folders.
    pub runs: Vec<String>,
    /// Per party (`policy`, `operator`, `shadow`, `takeover`).
    pub parties: BTreeMap<String, PartySummary>,
    /// Per task, per party.
    pub tasks: BTreeMap<String, BTreeMap<String, PartyTask>>,
    /// Shadow mode, when a run had it.
    pub shadow: Option<ShadowSummary>,
    /// Takeover mode, when a run had it.
    pub takeover: Option<TakeoverSummary>,
}

/// 95% Wilson score interval for `k` successes in `n`.
pub fn wilson95(k: usize, n: usize) -> [f64; 2] {
    if n == 0 {
        return [0.0, 1.0];
    }
    let z = 1.959_963_984_540_054_f64;
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let d = 1.0 + z * z / n_f;
    let c = (p + z * z / (2.0 * n_f)) / d;
    let h = z * (p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt() / d;
    [(c - h).max(0.0), (c + h).min(1.0)]
}

/// Reads a run folder's `run.json`.
pub fn read_run(dir: &Path) -> Result<RunSummary> {
    let p = dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", p.display()))
}

/// Builds the report over run folders.
pub fn build(runs: &[PathBuf]) -> Result<Report> {
    let mut r = Report::default();
    let mut completed: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut sums: BTreeMap<(String, String), (f64, f64, f64, f64)> = BTreeMap::new();
    let mut shadow: Option<(ShadowSummary, f64, usize, [f64; 6], usize)> = None;
    let mut bins: BTreeMap<usize, ([f64; 3], usize)> = BTreeMap::new();
    let mut take = TakeoverSummary::default();
    let mut take_seen = false;
    let mut take_ticks = (0usize, 0usize);
    let mut task_ticks: BTreeMap<String, usize> = BTreeMap::new();
    let bin_s = 0.5;
    let mut rate = 30.0;
    for dir in runs {
        let run = read_run(dir)?;
        rate = run.control_rate_hz;
        r.runs.push(dir.display().to_string());
        for pc in &run.chains {
            let p = r.parties.entry(pc.party.clone()).or_default();
            p.chains += 1;
            for (k, v) in &pc.run.safety_events {
                *p.safety_events.entry(k.clone()).or_default() += v;
            }
            completed
                .entry(pc.party.clone())
                .or_default()
                .push(pc.run.completed);
            for st in &pc.run.subtasks {
                p.ticks += st.steps;
                let t = r
                    .tasks
                    .entry(st.task.clone())
                    .or_default()
                    .entry(pc.party.clone())
                    .or_default();
                t.attempts += 1;
                let s = sums.entry((st.task.clone(), pc.party.clone())).or_default();
                if st.success {
                    t.successes += 1;
                    s.0 += st.time_s;
                }
                s.1 += st.path_length_m;
                s.2 += st.jerk_rms;
                s.3 += st.gripper_toggles as f64;
                if pc.party == "takeover" {
                    take_seen = true;
                    take_ticks.0 += st.ticks_policy;
                    take_ticks.1 += st.steps;
                    *task_ticks.entry(st.task.clone()).or_default() += st.steps;
                    take.per_task.entry(st.task.clone()).or_default().attempts += 1;
                }
            }
            if pc.party == "takeover" {
                for iv in &pc.run.interventions {
                    take.per_task
                        .entry(iv.task.clone())
                        .or_default()
                        .interventions += 1;
                    take.list.push(iv.clone());
                }
            }
        }
        for th in &run.thumbnails {
            let f = FrameRef {
                file: dir.join(&th.file).display().to_string(),
                chain: th.chain,
                subtask: th.subtask,
                step: th.step,
                score: th.score,
                policy: th.policy,
                operator: th.operator,
            };
            match th.kind.as_str() {
                "disagreement" => shadow
                    .get_or_insert_with(Default::default)
                    .0
                    .worst_frames
                    .push(f),
                "take_over" => take.frames.push(f),
                _ => {}
            }
        }
        if run.mode == super::Mode::Shadow {
            let acc = shadow.get_or_insert_with(Default::default);
            for tick in read_ticks(dir)? {
                let (Some(p), Some(o)) = (tick.policy, tick.operator) else {
                    continue;
                };
                if o.non_finite_field().is_some() {
                    continue;
                }
                let o = o.calvin_action(tick.executed[6]);
                acc.0.ticks += 1;
                let b = bins
                    .entry((tick.step as f64 / rate / bin_s).floor() as usize)
                    .or_default();
                for i in 0..6 {
                    acc.3[i] += (p[i] - o[i]).abs();
                    if i < 3 {
                        b.0[i] += (p[i] - o[i]).abs();
                    }
                }
                b.1 += 1;
                if (p[6] > 0.0) == (o[6] > 0.0) {
                    acc.4 += 1;
                }
                let dot: f64 = (0..3).map(|i| p[i] * o[i]).sum();
                let np = (0..3).map(|i| p[i] * p[i]).sum::<f64>().sqrt();
                let no = (0..3).map(|i| o[i] * o[i]).sum::<f64>().sqrt();
                if np > 0.05 && no > 0.05 {
                    acc.1 += dot / (np * no);
                    acc.2 += 1;
                }
            }
        }
    }
    for (party, c) in &completed {
        let p = r.parties.get_mut(party).expect("inserted with the chains");
        let n = c.len().max(1) as f64;
        p.avg_len = c.iter().sum::<usize>() as f64 / n;
        p.sr = (1..=5)
            .map(|k| c.iter().filter(|&&x| x >= k).count() as f64 / n)
            .collect();
    }
    for (task, parties) in r.tasks.iter_mut() {
        for (party, t) in parties.iter_mut() {
            let s = sums[&(task.clone(), party.clone())];
            let n = t.attempts.max(1) as f64;
            t.success_rate = t.successes as f64 / n;
            t.ci95 = (t.attempts >= 5).then(|| wilson95(t.successes, t.attempts));
            t.mean_time_to_success_s = (t.successes > 0).then(|| s.0 / t.successes as f64);
            t.mean_path_length_m = s.1 / n;
            t.mean_jerk_rms = s.2 / n;
            t.mean_gripper_toggles = s.3 / n;
        }
    }
    if let Some((mut s, cos, cos_n, mae, grip)) = shadow {
        let n = s.ticks.max(1) as f64;
        s.mean_cosine = if cos_n > 0 { cos / cos_n as f64 } else { 0.0 };
        s.mae = mae.map(|v| v / n);
        s.gripper_agreement = grip as f64 / n;
        for (b, (sum, cnt)) in &bins {
            s.error_t_s.push(*b as f64 * bin_s);
            s.error_xyz.push(sum.map(|v| v / (*cnt).max(1) as f64));
        }
        s.worst_frames.sort_by(|a, b| b.score.total_cmp(&a.score));
        r.shadow = Some(s);
    }
    if take_seen {
        let minutes = take_ticks.1 as f64 / rate / 60.0;
        take.interventions = take.list.len();
        take.interventions_per_minute = take.interventions as f64 / minutes.max(1e-9);
        take.autonomy_ratio = take_ticks.0 as f64 / take_ticks.1.max(1) as f64;
        for (task, ti) in take.per_task.iter_mut() {
            let m = task_ticks.get(task).copied().unwrap_or(0) as f64 / rate / 60.0;
            ti.per_minute = ti.interventions as f64 / m.max(1e-9);
        }
        r.takeover = Some(take);
    }
    Ok(r)
}

/// How a number is shown in the page (the test formats `report.json` the same way).
pub fn fmt_num(v: f64) -> String {
    format!("{v:.3}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A count cell (shown as an integer; `report.json` holds an integer).
fn count(html: &mut String, key: &str, v: usize) {
    let _ = write!(html, "<td class=\"num\" data-key=\"{}\">{v}</td>", esc(key));
}

fn cell(html: &mut String, key: &str, v: f64) {
    let _ = write!(
        html,
        "<td class=\"num\" data-key=\"{}\">{}</td>",
        esc(key),
        fmt_num(v)
    );
}

fn data_uri(path: &str) -> String {
    match std::fs::read(path) {
        Ok(bytes) => format!("data:image/png;base64,{}", base64(&bytes)),
        Err(_) => String::new(),
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// A grouped bar chart: `groups` along x, one bar per series, values in [0, 1].
fn svg_bars(id: &str, groups: &[String], series: &[(String, Vec<f64>)]) -> String {
    let w = 60.0 + groups.len().max(1) as f64 * 28.0 * series.len().max(1) as f64 + 20.0;
    let h = 260.0;
    let (x0, y0, ph) = (50.0, 20.0, 150.0);
    let mut s = format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" role=\"img\">"
    );
    for k in 0..=4 {
        let y = y0 + ph - ph * k as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{x0}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{:.2}</text>",
            w - 10.0,
            x0 - 4.0,
            y + 3.0,
            k as f64 / 4.0
        );
    }
    let bw = 24.0;
    for (g, name) in groups.iter().enumerate() {
        let gx = x0 + 4.0 + g as f64 * bw * series.len() as f64 + g as f64 * 4.0;
        for (k, (sname, vals)) in series.iter().enumerate() {
            let v = vals.get(g).copied().unwrap_or(0.0).clamp(0.0, 1.0);
            let bh = ph * v;
            let _ = write!(
                s,
                "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\">\
                 <title>{} {}: {}</title></rect>",
                gx + k as f64 * bw,
                y0 + ph - bh,
                bw - 2.0,
                COLORS[k % COLORS.len()],
                esc(name),
                esc(sname),
                fmt_num(v)
            );
        }
        let _ = write!(
            s,
            "<text transform=\"translate({:.1},{:.1}) rotate(45)\" font-size=\"9\">{}</text>",
            gx,
            y0 + ph + 10.0,
            esc(name)
        );
    }
    for (k, (sname, _)) in series.iter().enumerate() {
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"13\" font-size=\"11\">{}</text>",
            x0 + k as f64 * 110.0,
            COLORS[k % COLORS.len()],
            x0 + 14.0 + k as f64 * 110.0,
            esc(sname)
        );
    }
    s.push_str("</svg>");
    s
}

/// A line chart of `series` over `xs`.
fn svg_lines(id: &str, xs: &[f64], series: &[(String, Vec<f64>)], x_label: &str) -> String {
    let (w, h) = (520.0, 240.0);
    let (x0, y0, pw, ph) = (50.0, 20.0, 440.0, 170.0);
    let xmax = xs.iter().copied().fold(1e-9, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(1e-9, f64::max);
    let mut s = format!(
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\">\
         <rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\
         <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
         <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"10\" text-anchor=\"end\">{:.2}</text>",
        x0 + pw / 2.0,
        h - 8.0,
        esc(x_label),
        x0 - 4.0,
        y0 + 8.0,
        ymax
    );
    for (k, (name, ys)) in series.iter().enumerate() {
        let pts: Vec<String> = xs
            .iter()
            .zip(ys)
            .map(|(x, y)| format!("{:.1},{:.1}", x0 + pw * x / xmax, y0 + ph - ph * y / ymax))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>\
             <text x=\"{:.0}\" y=\"14\" font-size=\"11\" fill=\"{}\">{}</text>",
            COLORS[k % COLORS.len()],
            pts.join(" "),
            esc(name),
            x0 + k as f64 * 80.0,
            COLORS[k % COLORS.len()],
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn action_text(a: &Option<[f64; 7]>) -> String {
    match a {
        Some(a) => format!(
            "xyz ({:+.2}, {:+.2}, {:+.2}) grip {:+.0}",
            a[0], a[1], a[2], a[6]
        ),
        None => "—".into(),
    }
}

/// The self-contained HTML page of a report.
pub fn html(r: &Report) -> String {
    let mut h = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>vw2 teleop report</title><style>\
         body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;margin:8px 0 20px}\
         td,th{border:1px solid #ccc;padding:3px 8px}td.num{text-align:right;font-family:monospace}\
         img.thumb{width:160px;height:160px;image-rendering:pixelated;margin:4px}figure{display:inline-block;margin:4px}\
         figcaption{font-size:11px;max-width:170px}</style></head><body><h1>Teleop comparison</h1>",
    );
    let _ = write!(h, "<p>Runs: {}</p>", esc(&r.runs.join(", ")));
    h.push_str("<h2>Parties</h2><table><tr><th>party</th><th>chains</th><th>Avg. Len.</th>");
    for k in 1..=5 {
        let _ = write!(h, "<th>SR({k})</th>");
    }
    h.push_str("</tr>");
    for (name, p) in &r.parties {
        let _ = write!(h, "<tr><td>{}</td>", esc(name));
        count(&mut h, &format!("parties.{name}.chains"), p.chains);
        cell(&mut h, &format!("parties.{name}.avg_len"), p.avg_len);
        for (k, v) in p.sr.iter().enumerate() {
            cell(&mut h, &format!("parties.{name}.sr.{k}"), *v);
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");

    let parties: Vec<String> = r.parties.keys().cloned().collect();
    let tasks: Vec<String> = r.tasks.keys().cloned().collect();
    h.push_str("<h2>Per task</h2>");
    let series: Vec<(String, Vec<f64>)> = parties
        .iter()
        .map(|p| {
            (
                p.clone(),
                tasks
                    .iter()
                    .map(|t| r.tasks[t].get(p).map_or(0.0, |x| x.success_rate))
                    .collect(),
            )
        })
        .collect();
    h.push_str(&svg_bars("plot-success", &tasks, &series));
    h.push_str(
        "<table><tr><th>task</th><th>party</th><th>attempts</th><th>successes</th><th>success rate</th>\
         <th>95% CI</th><th>time to success (s)</th><th>path (m)</th><th>jerk RMS (m/s³)</th><th>gripper toggles</th></tr>",
    );
    for (task, ps) in &r.tasks {
        for (party, t) in ps {
            let k = format!("tasks.{task}.{party}");
            let _ = write!(h, "<tr><td>{}</td><td>{}</td>", esc(task), esc(party));
            count(&mut h, &format!("{k}.attempts"), t.attempts);
            count(&mut h, &format!("{k}.successes"), t.successes);
            cell(&mut h, &format!("{k}.success_rate"), t.success_rate);
            match t.ci95 {
                Some([lo, hi]) => {
                    let _ = write!(h, "<td class=\"num\">{}–{}</td>", fmt_num(lo), fmt_num(hi));
                }
                None => h.push_str("<td>(under 5)</td>"),
            }
            match t.mean_time_to_success_s {
                Some(v) => cell(&mut h, &format!("{k}.mean_time_to_success_s"), v),
                None => h.push_str("<td>—</td>"),
            }
            cell(
                &mut h,
                &format!("{k}.mean_path_length_m"),
                t.mean_path_length_m,
            );
            cell(&mut h, &format!("{k}.mean_jerk_rms"), t.mean_jerk_rms);
            cell(
                &mut h,
                &format!("{k}.mean_gripper_toggles"),
                t.mean_gripper_toggles,
            );
            h.push_str("</tr>");
        }
    }
    h.push_str("</table>");

    if let Some(s) = &r.shadow {
        h.push_str(
            "<h2>Shadow mode: agreement</h2><table><tr><th>ticks</th><th>translation cosine</th>",
        );
        for a in ["x", "y", "z", "roll", "pitch", "yaw"] {
            let _ = write!(h, "<th>MAE {a}</th>");
        }
        h.push_str("<th>gripper agreement</th></tr><tr>");
        count(&mut h, "shadow.ticks", s.ticks);
        cell(&mut h, "shadow.mean_cosine", s.mean_cosine);
        for (i, v) in s.mae.iter().enumerate() {
            cell(&mut h, &format!("shadow.mae.{i}"), *v);
        }
        cell(&mut h, "shadow.gripper_agreement", s.gripper_agreement);
        h.push_str("</tr></table><p>Per-axis |policy − operator| (CALVIN units) over time in the subtask:</p>");
        let series: Vec<(String, Vec<f64>)> = ["x", "y", "z"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), s.error_xyz.iter().map(|e| e[i]).collect()))
            .collect();
        h.push_str(&svg_lines(
            "plot-shadow-error",
            &s.error_t_s,
            &series,
            "time in subtask (s)",
        ));
        h.push_str("<h3>Where they disagree most</h3><div>");
        for f in &s.worst_frames {
            let _ = write!(
                h,
                "<figure><img class=\"thumb\" src=\"{}\" alt=\"chain {} step {}\"><figcaption>chain {} subtask {} step {} · score {}<br>policy {}<br>operator {}</figcaption></figure>",
                data_uri(&f.file),
                f.chain,
                f.step,
                f.chain,
                f.subtask,
                f.step,
                fmt_num(f.score),
                action_text(&f.policy),
                action_text(&f.operator)
            );
        }
        h.push_str("</div>");
    }

    if let Some(t) = &r.takeover {
        h.push_str("<h2>Takeover mode</h2><table><tr><th>interventions</th><th>per minute</th><th>autonomy ratio</th></tr><tr>");
        count(&mut h, "takeover.interventions", t.interventions);
        cell(
            &mut h,
            "takeover.interventions_per_minute",
            t.interventions_per_minute,
        );
        cell(&mut h, "takeover.autonomy_ratio", t.autonomy_ratio);
        h.push_str("</tr></table><table><tr><th>task</th><th>attempts</th><th>interventions</th><th>per minute</th></tr>");
        for (task, ti) in &t.per_task {
            let _ = write!(h, "<tr><td>{}</td>", esc(task));
            count(
                &mut h,
                &format!("takeover.per_task.{task}.attempts"),
                ti.attempts,
            );
            count(
                &mut h,
                &format!("takeover.per_task.{task}.interventions"),
                ti.interventions,
            );
            cell(
                &mut h,
                &format!("takeover.per_task.{task}.per_minute"),
                ti.per_minute,
            );
            h.push_str("</tr>");
        }
        h.push_str("</table><h3>What the policy was doing just before each takeover</h3><table><tr><th>chain</th><th>task</th><th>start (s)</th><th>duration (s)</th><th>policy's mean action (0.5 s before)</th><th>TCP speed before (m/s)</th><th>ended by</th></tr>");
        for (i, iv) in t.list.iter().enumerate() {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td>", iv.chain, esc(&iv.task));
            cell(&mut h, &format!("takeover.list.{i}.start_t"), iv.start_t);
            let _ = write!(
                h,
                "<td class=\"num\">{}</td><td>{}</td>",
                fmt_num(iv.end_t - iv.start_t),
                action_text(&Some(iv.policy_before))
            );
            cell(
                &mut h,
                &format!("takeover.list.{i}.speed_before_m_s"),
                iv.speed_before_m_s,
            );
            let _ = write!(h, "<td>{}</td></tr>", esc(&iv.ended_by));
        }
        h.push_str("</table><div>");
        for f in &t.frames {
            let _ = write!(
                h,
                "<figure><img class=\"thumb\" src=\"{}\" alt=\"takeover\"><figcaption>takeover · chain {} subtask {} step {}<br>policy {}</figcaption></figure>",
                data_uri(&f.file),
                f.chain,
                f.subtask,
                f.step,
                action_text(&f.policy)
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</body></html>\n");
    h
}

/// Builds the report over `runs` and writes `report.json` and `report.html` to `out`.
pub fn write(runs: &[PathBuf], out: &Path) -> Result<Report> {
    let r = build(runs)?;
    std::fs::create_dir_all(out).map_err(|e| anyhow!("{}: cannot create: {e}", out.display()))?;
    crate::base::fs::write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&r)?.as_bytes(),
    )?;
    crate::base::fs::write_atomic(&out.join("report.html"), html(&r).as_bytes())?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_the_textbook_values() {
        // 8 of 10: 0.490–0.943 (Wilson, z = 1.96).
        let [lo, hi] = wilson95(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        let [lo, hi] = wilson95(0, 20);
        assert!(lo == 0.0 && (hi - 0.1611).abs() < 1e-3, "{hi}");
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
