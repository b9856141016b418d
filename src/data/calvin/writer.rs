//! The resumable writer of a split directory.

use super::*;
use crate::base::fs::write_atomic;
use crate::data::npy::NpyArray;
use anyhow::{anyhow, bail, ensure, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Writes a CALVIN split directory, frame by frame and episode by episode, resumably.
///
/// Protocol: [`write_frame`](Self::write_frame) each frame of an episode (any order), then
/// [`finish_episode`](Self::finish_episode) with its inclusive index range. Finishing an
/// episode commits it: `lang_annotations/auto_lang_ann.npy`, `statistics.yaml` (recomputed
/// over all finished frames) and finally `ep_start_end_ids.npy` are rewritten atomically
/// (temporary file + fsync + rename), so an interruption at any point loses no finished
/// episode. Frame files are written atomically too.
///
/// [`create`](Self::create) on an existing directory resumes: finished episodes (those in
/// `ep_start_end_ids.npy`) are kept; frame files after the last finished episode (an
/// unfinished episode) and leftover temporary files are deleted; language entries outside
/// finished episodes are dropped; and [`next_frame_index`](Self::next_frame_index) is the
/// frame after the last finished episode. A `statistics.yaml` not written by this writer (no
/// matching `num_frames`) is recomputed from the finished frames and replaced.
///
/// Language annotations ([`add_language`](Self::add_language)) are persisted with the next
/// commit ([`finish_episode`](Self::finish_episode), [`flush`](Self::flush) or
/// [`finish`](Self::finish)); add an episode's annotations before finishing it to commit them
/// together with the episode.
#[derive(Debug)]
pub struct CalvinWriter {
    dir: PathBuf,
    episodes: Vec<(usize, usize)>,
    /// Language entries committed (inside finished episodes) or pending (inside the
    /// unfinished range), in insertion order.
    lang: Vec<LangEntry>,
    /// Statistics over the frames of finished episodes.
    stats: FrameStats,
    /// Frames written after the last finished episode.
    pending: BTreeMap<usize, FrameVectors>,
}

impl CalvinWriter {
    /// Creates the split directory `dir` (and parents) or resumes writing into it.
    pub fn create(dir: impl AsRef<Path>) -> Result<CalvinWriter> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: cannot create: {e}", dir.display()))?;
        let ep_path = dir.join(EP_IDS_FILE);
        let episodes = if ep_path.exists() {
            read_episode_ids(&ep_path)?
        } else {
            Vec::new()
        };
        for w in episodes.windows(2) {
            ensure!(
                w[1].0 > w[0].1,
                "{}: episodes must be in increasing frame order to append, found {:?} then {:?}",
                ep_path.display(),
                w[0],
                w[1]
            );
        }
        let last_end = episodes.last().map(|e| e.1);
        // Remove the unfinished tail and leftover temporary files.
        let lang_dir = dir.join(LANG_FILE).parent().unwrap().to_path_buf();
        for d in [&dir, &lang_dir] {
            let Ok(rd) = fs::read_dir(d) else { continue };
            for entry in rd {
                let entry = entry.map_err(|e| anyhow!("{}: cannot list: {e}", d.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let unfinished =
                    parse_frame_file_name(&name).is_some_and(|i| last_end.is_none_or(|l| i > l));
                let temp = crate::base::fs::is_tmp_name(&name);
                if (unfinished && d == &dir) || temp {
                    let path = entry.path();
                    fs::remove_file(&path)
                        .map_err(|e| anyhow!("{}: cannot remove: {e}", path.display()))?;
                }
            }
        }
        let mut w = CalvinWriter {
            dir,
            episodes,
            lang: Vec::new(),
            stats: FrameStats::new(),
            pending: BTreeMap::new(),
        };
        // Language annotations: keep those inside finished episodes.
        let lang_path = w.dir.join(LANG_FILE);
        let mut lang_dirty = false;
        if lang_path.exists() {
            let all = LangAnnotations::read(&lang_path)?.entries();
            let n = all.len();
            w.lang = all
                .into_iter()
                .filter(|e| w.episode_containing(e.start, e.end).is_some())
                .collect();
            lang_dirty = w.lang.len() != n;
        }
        // Statistics: restore from our own statistics.yaml when it covers exactly the
        // finished frames, otherwise recompute from the frame files.
        let n_frames: usize = w.episodes.iter().map(|&(s, e)| e - s + 1).sum();
        let stats_path = w.dir.join(STATISTICS_FILE);
        let restored = Statistics::read(&stats_path)
            .ok()
            .and_then(|s| FrameStats::restore(&s, n_frames));
        let stats_dirty = restored.is_none();
        w.stats = match restored {
            Some(s) => s,
            None => {
                let mut acc = FrameStats::new();
                for &(s, e) in &w.episodes {
                    for i in s..=e {
                        acc.add(&FrameVectors::read(&w.dir.join(frame_file_name(i)))?);
                    }
                }
                acc
            }
        };
        if !ep_path.exists() || lang_dirty || stats_dirty {
            w.commit()?;
        }
        Ok(w)
    }

    /// The split directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finished episodes (inclusive frame ranges), as recorded in `ep_start_end_ids.npy`.
    pub fn episodes(&self) -> &[(usize, usize)] {
        &self.episodes
    }

    /// The index to write next: one past the highest frame written or finished (0 for an
    /// empty dataset). After a resume this is the frame after the last finished episode.
    pub fn next_frame_index(&self) -> usize {
        let finished = self.episodes.last().map_or(0, |e| e.1 + 1);
        let pending = self.pending.keys().next_back().map_or(0, |&i| i + 1);
        finished.max(pending)
    }

    /// Indices of frames written after the last finished episode.
    pub fn unfinished_frames(&self) -> Vec<usize> {
        self.pending.keys().copied().collect()
    }

    fn episode_containing(&self, start: usize, end: usize) -> Option<usize> {
        self.episodes
            .iter()
            .position(|&(s, e)| s <= start && end <= e)
    }

    /// Writes frame `idx` as `episode_{idx:07}.npz` (atomically). `idx` must lie after the
    /// last finished episode; rewriting a frame of the unfinished episode replaces it.
    pub fn write_frame(&mut self, idx: usize, frame: &CalvinFrame) -> Result<()> {
        self.write_frame_with(idx, frame, &[])
    }

    /// [`write_frame`](Self::write_frame) with `extra` npz members beside CALVIN's keys.
    pub fn write_frame_with(
        &mut self,
        idx: usize,
        frame: &CalvinFrame,
        extra: &[(&str, NpyArray)],
    ) -> Result<()> {
        let path = self.dir.join(frame_file_name(idx));
        if let Some(&(s, e)) = self.episodes.last() {
            ensure!(
                idx > e,
                "{}: frame {idx} is not after the last finished episode ({s}..={e}); \
                 finished episodes are immutable",
                path.display()
            );
        }
        write_atomic(&path, &frame.to_npz_bytes_with(&path, extra)?)?;
        self.pending.insert(idx, FrameVectors::of(frame));
        Ok(())
    }

    /// Finishes the episode of frames `start..=end` (inclusive), which must all have been
    /// written since the previous finished episode, and commits it to disk.
    pub fn finish_episode(&mut self, start: usize, end: usize) -> Result<()> {
        let ep_path = self.dir.join(EP_IDS_FILE);
        let p = ep_path.display();
        ensure!(start <= end, "{p}: episode ({start}, {end}): start > end");
        if let Some(&(s, e)) = self.episodes.last() {
            ensure!(
                start > e,
                "{p}: episode ({start}, {end}) overlaps or precedes the last finished \
                 episode ({s}, {e})"
            );
        }
        let missing: Vec<usize> = (start..=end)
            .filter(|i| !self.pending.contains_key(i))
            .take(10)
            .collect();
        ensure!(
            missing.is_empty(),
            "{p}: episode ({start}, {end}): frames not written: {missing:?}{}",
            if missing.len() == 10 { " ..." } else { "" }
        );
        if let Some((&first, _)) = self.pending.first_key_value() {
            ensure!(
                first >= start,
                "{p}: episode ({start}, {end}): frame {first} was written before its start \
                 and would be orphaned"
            );
        }
        let mut ep_stats = FrameStats::new();
        for i in start..=end {
            let v = self.pending.remove(&i).expect("checked above");
            ep_stats.add(&v);
        }
        let before = self.stats.clone();
        self.stats.merge(&ep_stats);
        self.episodes.push((start, end));
        if let Err(e) = self.commit() {
            // Keep the in-memory state consistent with disk (the episode is not committed).
            self.episodes.pop();
            self.stats = before;
            for i in start..=end {
                if let Ok(v) = FrameVectors::read(&self.dir.join(frame_file_name(i))) {
                    self.pending.insert(i, v);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Adds a language annotation for frames `start..=end`, which must lie inside one
    /// finished episode or entirely after the last finished episode (then it is committed
    /// when an episode containing it is finished).
    pub fn add_language(
        &mut self,
        start: usize,
        end: usize,
        task: impl Into<String>,
        ann: impl Into<String>,
    ) -> Result<()> {
        let lp = self.dir.join(LANG_FILE);
        ensure!(
            start <= end,
            "{}: annotation ({start}, {end}): start > end",
            lp.display()
        );
        let after_last = self.episodes.last().is_none_or(|&(_, e)| start > e);
        ensure!(
            after_last || self.episode_containing(start, end).is_some(),
            "{}: annotation ({start}, {end}) is not inside one episode",
            lp.display()
        );
        self.lang.push(LangEntry {
            start,
            end,
            task: task.into(),
            ann: ann.into(),
        });
        Ok(())
    }

    /// Rewrites the metadata files (language entries inside finished episodes,
    /// statistics, episode table), atomically.
    pub fn flush(&mut self) -> Result<()> {
        self.commit()
    }

    fn commit(&mut self) -> Result<()> {
        let committed: Vec<LangEntry> = self
            .lang
            .iter()
            .filter(|e| self.episode_containing(e.start, e.end).is_some())
            .cloned()
            .collect();
        let lang_path = self.dir.join(LANG_FILE);
        if !committed.is_empty() || lang_path.exists() {
            LangAnnotations::from_entries(&committed).write(&lang_path)?;
        }
        self.stats
            .statistics()
            .write(self.dir.join(STATISTICS_FILE))?;
        write_episode_ids(self.dir.join(EP_IDS_FILE), &self.episodes)
    }

    /// Deletes the frames written after the last finished episode (and drops language
    /// entries that were waiting for them).
    pub fn discard_unfinished(&mut self) -> Result<()> {
        for &i in self.pending.keys() {
            let path = self.dir.join(frame_file_name(i));
            fs::remove_file(&path)
                .map_err(|e| anyhow!("{}: cannot remove: {e}", path.display()))?;
        }
        self.pending.clear();
        let eps = self.episodes.clone();
        self.lang
            .retain(|e| eps.iter().any(|&(s, t)| s <= e.start && e.end <= t));
        Ok(())
    }

    /// Commits everything and checks nothing is left unfinished: frames written after the
    /// last finished episode, or language entries outside finished episodes, are an error
    /// (call [`finish_episode`](Self::finish_episode) or
    /// [`discard_unfinished`](Self::discard_unfinished) first).
    pub fn finish(mut self) -> Result<()> {
        let p = self.dir.display();
        if let (Some(first), Some(last)) = (
            self.pending.keys().next().copied(),
            self.pending.keys().next_back().copied(),
        ) {
            bail!(
                "{p}: {} frame(s) ({first}..={last}) written after the last finished episode; \
                 call finish_episode or discard_unfinished",
                self.pending.len()
            );
        }
        if let Some(e) = self
            .lang
            .iter()
            .find(|e| self.episode_containing(e.start, e.end).is_none())
        {
            bail!(
                "{p}: language annotation ({}, {}) '{}' is not inside a finished episode",
                e.start,
                e.end,
                e.task
            );
        }
        self.commit()
    }
}
