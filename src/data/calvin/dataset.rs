//! The reader of a split directory, and its episode ids (`ep_start_end_ids.npy`).

use super::*;
use crate::base::fs::write_atomic;
use crate::data::npy::NpyArray;
use anyhow::{anyhow, ensure, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Reads `ep_start_end_ids.npy`: an integer `[E, 2]` array of inclusive (start, end) frame
/// indices.
pub fn read_episode_ids(path: impl AsRef<Path>) -> Result<Vec<(usize, usize)>> {
    let path = path.as_ref();
    let p = path.display();
    let bytes = fs::read(path).map_err(|e| anyhow!("{p}: cannot read: {e}"))?;
    let a = NpyArray::parse(&bytes).map_err(|e| anyhow!("{p}: {e}"))?;
    ensure!(
        a.shape.len() == 2 && a.shape[1] == 2 || a.shape == [0],
        "{p}: expected an [E, 2] array of (start, end) frame indices, found shape {:?}",
        a.shape
    );
    let v = a
        .to_i64_vec()
        .map_err(|e| anyhow!("{p}: expected int64 values: {e}"))?;
    v.chunks_exact(2)
        .enumerate()
        .map(|(i, c)| {
            ensure!(
                c[0] >= 0 && c[1] >= c[0],
                "{p}: episode {i}: expected 0 <= start <= end, found ({}, {})",
                c[0],
                c[1]
            );
            Ok((c[0] as usize, c[1] as usize))
        })
        .collect()
}

/// Writes `ep_start_end_ids.npy` (`int64 [E, 2]`) atomically.
pub fn write_episode_ids(path: impl AsRef<Path>, episodes: &[(usize, usize)]) -> Result<()> {
    let flat: Vec<i64> = episodes
        .iter()
        .flat_map(|&(s, e)| [s as i64, e as i64])
        .collect();
    write_atomic(
        path.as_ref(),
        &NpyArray::from_i64(&[episodes.len(), 2], &flat).to_bytes(),
    )
}

// ---------------------------------------------------------------------------------------
// statistics.yaml
// ---------------------------------------------------------------------------------------

/// A CALVIN split directory opened for reading.
#[derive(Debug, Clone)]
pub struct CalvinDataset {
    dir: PathBuf,
    episodes: Vec<(usize, usize)>,
    statistics: Option<Statistics>,
    language: Option<LangAnnotations>,
}

impl CalvinDataset {
    /// Opens a split directory: reads `ep_start_end_ids.npy` (required), `statistics.yaml`
    /// and `lang_annotations/auto_lang_ann.npy` (both optional; present but malformed is an
    /// error). Frames are read on demand.
    pub fn open(dir: impl AsRef<Path>) -> Result<CalvinDataset> {
        let dir = dir.as_ref().to_path_buf();
        ensure!(
            dir.is_dir(),
            "{}: not a directory (expected a CALVIN split such as task_D_D/training)",
            dir.display()
        );
        let ep_path = dir.join(EP_IDS_FILE);
        ensure!(
            ep_path.is_file(),
            "{}: missing (every CALVIN split has an episode table)",
            ep_path.display()
        );
        let episodes = read_episode_ids(&ep_path)?;
        let stats_path = dir.join(STATISTICS_FILE);
        let statistics = if stats_path.exists() {
            Some(Statistics::read(&stats_path)?)
        } else {
            None
        };
        let lang_path = dir.join(LANG_FILE);
        let language = if lang_path.exists() {
            Some(LangAnnotations::read(&lang_path)?)
        } else {
            None
        };
        Ok(CalvinDataset {
            dir,
            episodes,
            statistics,
            language,
        })
    }

    /// The split directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Inclusive (start, end) frame indices of every episode, as in `ep_start_end_ids.npy`.
    pub fn episodes(&self) -> &[(usize, usize)] {
        &self.episodes
    }

    /// Total number of frames over all episodes.
    pub fn num_frames(&self) -> usize {
        self.episodes.iter().map(|&(s, e)| e - s + 1).sum()
    }

    /// Path of frame `idx` (`episode_XXXXXXX.npz`).
    pub fn frame_path(&self, idx: usize) -> PathBuf {
        self.dir.join(frame_file_name(idx))
    }

    /// Reads frame `idx`.
    pub fn frame(&self, idx: usize) -> Result<CalvinFrame> {
        CalvinFrame::read(self.frame_path(idx))
    }

    /// The frames of episode `ep` (an index into [`CalvinDataset::episodes`]), in order,
    /// read lazily.
    pub fn episode_frames(
        &self,
        ep: usize,
    ) -> Result<impl Iterator<Item = Result<CalvinFrame>> + '_> {
        let &(start, end) = self.episodes.get(ep).ok_or_else(|| {
            anyhow!(
                "{}: episode {ep} does not exist ({} episodes)",
                self.dir.join(EP_IDS_FILE).display(),
                self.episodes.len()
            )
        })?;
        Ok((start..=end).map(move |i| self.frame(i)))
    }

    /// Language annotations, if the split has `lang_annotations/auto_lang_ann.npy`.
    pub fn language(&self) -> Option<&LangAnnotations> {
        self.language.as_ref()
    }

    /// Normalization statistics, if the split has `statistics.yaml`.
    pub fn statistics(&self) -> Option<&Statistics> {
        self.statistics.as_ref()
    }
}

// ---------------------------------------------------------------------------------------
// Dataset writer
// ---------------------------------------------------------------------------------------
