//! What a teleop run writes: `ticks.jsonl` (every tick, inputs and outputs),
//! a CALVIN-format dataset of what was executed and who issued it, an MCAP
//! bag, and thumbnails of the frames the report shows.
//!
//! The dataset (`dataset/`) is a CALVIN split: every frame's `rel_actions`
//! is the action the env executed; beside CALVIN's keys each frame holds
//! `vw2_issuer` (uint8: 1 policy, 2 operator, 0 a hold by the arbiter),
//! `vw2_policy_rel_actions` and `vw2_operator_rel_actions` (float64 [7],
//! NaN where that party said nothing). Each subtask is cut into episodes
//! where the driver changes (an arbiter hold stays with the driver before
//! it), and `dataset/vw2_teleop_episodes.json` says who drove each episode,
//! in which mode, chain and subtask; `vw2 finetune-head --source` filters on it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use super::bag::BagWriter;
use super::session::{Issuer, SubtaskRun, TickLog, TickSink};
use super::Mode;
use crate::data::calvin::CalvinWriter;
use crate::data::npy::NpyArray;
use crate::io::record::frame_from;
use crate::io::{Observation, RgbImage};

/// File with every tick of a run, one JSON object per line.
pub const TICKS_FILE: &str = "ticks.jsonl";
/// The run's MCAP bag.
pub const BAG_FILE: &str = "run.mcap";
/// Sidecar of a teleop dataset: who drove each episode.
pub const EPISODES_FILE: &str = "vw2_teleop_episodes.json";

/// One episode of a teleop dataset, as listed in [`EPISODES_FILE`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeleopEpisode {
    /// First frame index (inclusive).
    pub start: usize,
    /// Last frame index (inclusive).
    pub end: usize,
    /// Who drove it: `policy` or `operator`.
    pub issuer: String,
    /// The run's mode (`shadow`, `takeover`, `paired`).
    pub mode: String,
    /// The party's run (`shadow`, `takeover`, `policy`, `operator`).
    pub party: String,
    /// Chain index.
    pub chain: usize,
    /// Subtask index in the chain.
    pub subtask: usize,
    /// The oracle's task.
    pub task: String,
    /// Whether the subtask succeeded.
    pub success: bool,
}

/// Which episodes of a teleop dataset a trainer learns from (`vw2 finetune-head --source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EpisodeSource {
    /// Every episode (any CALVIN dataset).
    #[default]
    All,
    /// Episodes the operator drove, in any mode.
    Operator,
    /// Episodes the operator drove after taking over from the policy (takeover mode).
    Interventions,
}

impl EpisodeSource {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Operator => "operator",
            Self::Interventions => "interventions",
        }
    }

    /// Indices (into the dataset's episode table, `num_episodes` long) of the
    /// episodes to keep; `None` keeps all. Needs `dataset`'s [`EPISODES_FILE`]
    /// unless the source is `All`, and checks it against the episode table.
    pub fn episodes(
        self,
        dataset: &Path,
        num_episodes: usize,
    ) -> Result<Option<std::collections::BTreeSet<usize>>> {
        if self == Self::All {
            return Ok(None);
        }
        let p = dataset.join(EPISODES_FILE);
        anyhow::ensure!(
            p.is_file(),
            "{}: --source {} needs a teleop dataset (written by `vw2 teleop run`), \
             but this file is missing",
            p.display(),
            self.name()
        );
        let eps = read_episodes(dataset)?;
        anyhow::ensure!(
            eps.len() == num_episodes,
            "{}: lists {} episodes, the dataset's ep_start_end_ids.npy has {num_episodes}",
            p.display(),
            eps.len()
        );
        Ok(Some(
            eps.iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.issuer == "operator" && (self == Self::Operator || e.mode == "takeover")
                })
                .map(|(i, _)| i)
                .collect(),
        ))
    }
}

/// Reads a teleop dataset's [`EPISODES_FILE`].
pub fn read_episodes(dataset: &Path) -> Result<Vec<TeleopEpisode>> {
    let p = dataset.join(EPISODES_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", p.display()))
}

/// Reads a run folder's `ticks.jsonl`; errors name the file and the line.
pub fn read_ticks(dir: &Path) -> Result<Vec<TickLog>> {
    let p = dir.join(TICKS_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| anyhow!("{}: line {}: {e}", p.display(), i + 1))
        })
        .collect()
}

/// A frame of the report: a thumbnail file and why it was kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thumbnail {
    /// PNG path relative to the run folder.
    pub file: String,
    /// The party's run.
    pub party: String,
    /// Chain, subtask, step.
    pub chain: usize,
    /// See `chain`.
    pub subtask: usize,
    /// See `chain`.
    pub step: usize,
    /// `disagreement` (shadow) or `take_over` / `hand_back`.
    pub kind: String,
    /// Shadow: |policy − operator| over the translation (CALVIN units) plus 1
    /// when the gripper differs.
    pub score: f64,
    /// The policy's action on that frame.
    pub policy: Option<[f64; 7]>,
    /// The operator's action on that frame (gripper: the commanded one when untouched).
    pub operator: Option<[f64; 7]>,
}

/// What to write besides `ticks.jsonl`.
#[derive(Debug, Clone)]
pub struct RecorderOptions {
    /// The run folder.
    pub dir: PathBuf,
    /// The run's mode.
    pub mode: Mode,
    /// Write the CALVIN dataset.
    pub dataset: bool,
    /// Write the MCAP bag.
    pub bag: bool,
    /// Shadow mode: keep this many most-disagreeing frames.
    pub thumbnails: usize,
    /// Control rate (Hz).
    pub rate_hz: f64,
}

struct Dataset {
    writer: CalvinWriter,
    episodes: Vec<TeleopEpisode>,
    /// Frames of the current subtask: (index, issuer).
    pending: Vec<(usize, Issuer)>,
    next: usize,
}

/// The [`TickSink`] of `vw2 teleop`: see the [module docs](self).
pub struct RunRecorder {
    opts: RecorderOptions,
    ticks: BufWriter<File>,
    dataset: Option<Dataset>,
    bag: Option<BagWriter>,
    /// Ticks over the whole run (the bag's clock).
    run_ticks: u64,
    worst: Vec<(Thumbnail, RgbImage)>,
    thumbnails: Vec<Thumbnail>,
}

fn issuer_code(i: Issuer) -> u8 {
    match i {
        Issuer::Arbiter => 0,
        Issuer::Policy => 1,
        Issuer::Operator => 2,
    }
}

fn issuer_name(i: Issuer) -> &'static str {
    match i {
        Issuer::Arbiter => "arbiter",
        Issuer::Policy => "policy",
        Issuer::Operator => "operator",
    }
}

/// The operator's message as a 7-D action, the gripper it left alone being `gripper_now`.
fn operator_action(log: &TickLog) -> Option<[f64; 7]> {
    log.operator.map(|o| o.calvin_action(log.executed[6]))
}

impl RunRecorder {
    /// Creates the run folder's files.
    pub fn create(opts: RecorderOptions) -> Result<Self> {
        std::fs::create_dir_all(opts.dir.join("thumbs"))
            .with_context(|| format!("{}: cannot create", opts.dir.display()))?;
        let tp = opts.dir.join(TICKS_FILE);
        let ticks = BufWriter::new(
            File::create(&tp).map_err(|e| anyhow!("{}: cannot create: {e}", tp.display()))?,
        );
        let dataset = if opts.dataset {
            let writer = CalvinWriter::create(opts.dir.join("dataset"))?;
            anyhow::ensure!(
                writer.episodes().is_empty(),
                "{}: already holds a dataset; give a new --out folder",
                opts.dir.join("dataset").display()
            );
            Some(Dataset {
                next: writer.next_frame_index(),
                writer,
                episodes: vec![],
                pending: vec![],
            })
        } else {
            None
        };
        let bag = if opts.bag {
            Some(BagWriter::create(&opts.dir.join(BAG_FILE), opts.rate_hz)?)
        } else {
            None
        };
        Ok(Self {
            opts,
            ticks,
            dataset,
            bag,
            run_ticks: 0,
            worst: vec![],
            thumbnails: vec![],
        })
    }

    fn save_thumb(&self, name: &str, img: &RgbImage) -> Result<String> {
        let rel = format!("thumbs/{name}");
        crate::base::image::write_png(&self.opts.dir.join(&rel), img)?;
        Ok(rel)
    }

    /// Finishes every file; returns the thumbnails the report shows.
    pub fn finish(mut self) -> Result<Vec<Thumbnail>> {
        self.ticks.flush()?;
        let worst = std::mem::take(&mut self.worst);
        for (mut th, img) in worst {
            th.file = self.save_thumb(&th.file, &img)?;
            self.thumbnails.push(th);
        }
        if let Some(b) = self.bag.take() {
            b.finish()?;
        }
        if let Some(d) = self.dataset.take() {
            d.writer.finish()?;
        }
        Ok(self.thumbnails)
    }
}

impl TickSink for RunRecorder {
    fn tick(&mut self, log: &TickLog, obs: &Observation) -> Result<()> {
        serde_json::to_writer(&mut self.ticks, log)?;
        self.ticks.write_all(b"\n")?;
        let op = operator_action(log);
        if let Some(d) = &mut self.dataset {
            let frame = frame_from(obs, &log.executed)?;
            let nan = [f64::NAN; 7];
            let extra = [
                (
                    "vw2_issuer",
                    NpyArray::from_u8(&[1], vec![issuer_code(log.issuer)]),
                ),
                (
                    "vw2_policy_rel_actions",
                    NpyArray::from_f64(&[7], &log.policy.unwrap_or(nan)),
                ),
                (
                    "vw2_operator_rel_actions",
                    NpyArray::from_f64(&[7], &op.unwrap_or(nan)),
                ),
            ];
            d.writer.write_frame_with(d.next, &frame, &extra)?;
            d.pending.push((d.next, log.issuer));
            d.next += 1;
        }
        let t = self.run_ticks as f64 / self.opts.rate_hz;
        self.run_ticks += 1;
        if let Some(b) = &mut self.bag {
            b.image(t, &obs.rgb_static)?;
            b.command(t, "executed", &log.executed)?;
            if let Some(p) = &log.policy {
                b.command(t, "policy", p)?;
            }
            if let Some(o) = &op {
                b.command(t, "operator", o)?;
            }
            for e in &log.events {
                let j = serde_json::json!({"party": log.party, "chain": log.chain, "step": log.step, "event": e});
                b.note(t, false, &j.to_string())?;
            }
            if let Some(s) = &log.switch {
                let j = serde_json::json!({"party": log.party, "chain": log.chain, "subtask": log.subtask, "step": log.step, "switch": s});
                b.note(t, true, &j.to_string())?;
            }
            b.maybe_flush(t)?;
        }
        if self.opts.thumbnails > 0 {
            if let (Some(p), Some(o)) = (log.policy, op) {
                if log.party == "shadow" {
                    let d: f64 = (0..3).map(|i| (p[i] - o[i]).powi(2)).sum::<f64>().sqrt();
                    let score = d + if (p[6] > 0.0) != (o[6] > 0.0) {
                        1.0
                    } else {
                        0.0
                    };
                    let min = self
                        .worst
                        .iter()
                        .map(|w| w.0.score)
                        .fold(f64::INFINITY, f64::min);
                    if self.worst.len() < self.opts.thumbnails || score > min {
                        if self.worst.len() == self.opts.thumbnails {
                            let i = self
                                .worst
                                .iter()
                                .position(|w| w.0.score == min)
                                .expect("full");
                            self.worst.remove(i);
                        }
                        self.worst.push((
                            Thumbnail {
                                file: format!(
                                    "disagree-c{}-s{}-k{}.png",
                                    log.chain, log.subtask, log.step
                                ),
                                party: log.party.clone(),
                                chain: log.chain,
                                subtask: log.subtask,
                                step: log.step,
                                kind: "disagreement".into(),
                                score,
                                policy: Some(p),
                                operator: Some(o),
                            },
                            obs.rgb_static.clone(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn switch(&mut self, log: &TickLog, obs: &Observation) -> Result<()> {
        let kind = log.switch.clone().unwrap_or_default();
        let file = self.save_thumb(
            &format!("{kind}-c{}-s{}-k{}.png", log.chain, log.subtask, log.step),
            &obs.rgb_static,
        )?;
        self.thumbnails.push(Thumbnail {
            file,
            party: log.party.clone(),
            chain: log.chain,
            subtask: log.subtask,
            step: log.step,
            kind,
            score: 0.0,
            policy: log.policy,
            operator: operator_action(log),
        });
        Ok(())
    }

    fn end_subtask(
        &mut self,
        party: &str,
        chain: usize,
        run: &SubtaskRun,
        instruction: &str,
    ) -> Result<()> {
        self.ticks.flush()?;
        let mode = self.opts.mode.name().to_string();
        let Some(d) = &mut self.dataset else {
            return Ok(());
        };
        let pending = std::mem::take(&mut d.pending);
        // Cut where the driver changes; an arbiter hold stays with the driver before it.
        let mut segments: Vec<(usize, usize, Issuer)> = vec![];
        for (idx, issuer) in pending {
            match segments.last_mut() {
                Some(s) if s.2 == issuer || issuer == Issuer::Arbiter => s.1 = idx,
                Some(s) if s.2 == Issuer::Arbiter => {
                    s.1 = idx;
                    s.2 = issuer;
                }
                _ => segments.push((idx, idx, issuer)),
            }
        }
        for (start, end, issuer) in segments {
            d.writer
                .add_language(start, end, run.task.clone(), instruction)?;
            d.writer.finish_episode(start, end)?;
            d.episodes.push(TeleopEpisode {
                start,
                end,
                issuer: issuer_name(issuer).into(),
                mode: mode.clone(),
                party: party.into(),
                chain,
                subtask: run.subtask,
                task: run.task.clone(),
                success: run.success,
            });
        }
        let p = d.writer.dir().join(EPISODES_FILE);
        crate::base::fs::write_atomic(&p, serde_json::to_string_pretty(&d.episodes)?.as_bytes())
    }
}
