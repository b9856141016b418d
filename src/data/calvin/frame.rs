//! One frame file (`episode_XXXXXXX.npz`): its name and its keys.

use super::*;
use crate::base::fs::write_atomic;
use crate::data::npy::{NpyArray, NpyDtype};
use crate::data::npz::{NpzReader, NpzWriter};
use crate::data::Image;
use anyhow::{anyhow, ensure, Result};
use std::path::Path;

/// File name of frame `idx`: `episode_{idx:07}.npz`.
pub fn frame_file_name(idx: usize) -> String {
    format!("episode_{idx:07}.npz")
}

/// Parses a frame file name `episode_<digits>.npz` back to its index.
pub fn parse_frame_file_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("episode_")?.strip_suffix(".npz")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The npz keys of a CALVIN frame written here.
pub const CALVIN_KEYS: [&str; 6] = [
    "actions",
    "rel_actions",
    "robot_obs",
    "scene_obs",
    "rgb_static",
    "rgb_gripper",
];

/// One CALVIN frame (the keys of one `episode_XXXXXXX.npz` that are used here).
#[derive(Debug, Clone, PartialEq)]
pub struct CalvinFrame {
    /// Absolute action: TCP position xyz (m), Euler xyz (rad), gripper (-1 close / +1 open).
    pub actions: [f64; ACTION_DIM],
    /// Relative action: xyz delta / 0.02 m, Euler delta / 0.05 rad, clipped to [-1, 1];
    /// gripper (+-1).
    pub rel_actions: [f64; ACTION_DIM],
    /// Robot proprioception (15 values; see the module docs).
    pub robot_obs: [f64; ROBOT_OBS_DIM],
    /// Scene state (24 values).
    pub scene_obs: [f64; SCENE_OBS_DIM],
    /// Static camera image, usually 200x200.
    pub rgb_static: Image,
    /// Gripper camera image, usually 84x84.
    pub rgb_gripper: Image,
}

pub(super) fn read_vector<const N: usize>(npz: &NpzReader, key: &str) -> Result<[f64; N]> {
    let a = npz.array(key)?;
    let p = npz.path().display();
    ensure!(
        matches!(a.dtype, NpyDtype::F64 | NpyDtype::F32),
        "{p}: key '{key}': expected float64 values, found dtype {}",
        a.dtype.name()
    );
    ensure!(
        a.elem_count() == N,
        "{p}: key '{key}': expected {N} values, found {} (shape {:?})",
        a.elem_count(),
        a.shape
    );
    let v = a.to_f64_vec()?;
    Ok(v.try_into().expect("length checked"))
}

fn read_image(npz: &NpzReader, key: &str) -> Result<Image> {
    let a = npz.array(key)?;
    let p = npz.path().display();
    ensure!(
        a.dtype == NpyDtype::U8,
        "{p}: key '{key}': expected a uint8 image, found dtype {} (shape {:?})",
        a.dtype.name(),
        a.shape
    );
    ensure!(
        a.shape.len() == 3 && a.shape[2] == 3,
        "{p}: key '{key}': expected shape [H, W, 3], found {:?}",
        a.shape
    );
    Ok(Image {
        height: a.shape[0],
        width: a.shape[1],
        data: a.data,
    })
}

fn check_image(path: &Path, key: &str, img: &Image) -> Result<()> {
    ensure!(
        img.height > 0 && img.width > 0 && img.data.len() == img.height * img.width * 3,
        "{}: key '{key}': image {}x{}x3 needs {} bytes, has {}",
        path.display(),
        img.height,
        img.width,
        img.height * img.width * 3,
        img.data.len()
    );
    Ok(())
}

impl CalvinFrame {
    /// Reads a frame file (`episode_XXXXXXX.npz`), ignoring keys not used here.
    pub fn read(path: impl AsRef<Path>) -> Result<CalvinFrame> {
        let npz = NpzReader::open(path)?;
        Self::from_npz(&npz)
    }

    /// Decodes a frame from an opened archive.
    pub fn from_npz(npz: &NpzReader) -> Result<CalvinFrame> {
        Ok(CalvinFrame {
            actions: read_vector(npz, "actions")?,
            rel_actions: read_vector(npz, "rel_actions")?,
            robot_obs: read_vector(npz, "robot_obs")?,
            scene_obs: read_vector(npz, "scene_obs")?,
            rgb_static: read_image(npz, "rgb_static")?,
            rgb_gripper: read_image(npz, "rgb_gripper")?,
        })
    }

    /// The `.npz` archive bytes of this frame (stored members, CALVIN key names and dtypes).
    /// `path` is only used in error messages.
    pub fn to_npz_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        self.to_npz_bytes_with(path, &[])
    }

    /// [`to_npz_bytes`](Self::to_npz_bytes) plus `extra` members (keys outside CALVIN's,
    /// which CALVIN's loaders ignore), after the CALVIN ones.
    pub fn to_npz_bytes_with(&self, path: &Path, extra: &[(&str, NpyArray)]) -> Result<Vec<u8>> {
        check_image(path, "rgb_static", &self.rgb_static)?;
        check_image(path, "rgb_gripper", &self.rgb_gripper)?;
        let mut w = NpzWriter::new();
        w.add("actions", &NpyArray::from_f64(&[ACTION_DIM], &self.actions));
        w.add(
            "rel_actions",
            &NpyArray::from_f64(&[ACTION_DIM], &self.rel_actions),
        );
        w.add(
            "robot_obs",
            &NpyArray::from_f64(&[ROBOT_OBS_DIM], &self.robot_obs),
        );
        w.add(
            "scene_obs",
            &NpyArray::from_f64(&[SCENE_OBS_DIM], &self.scene_obs),
        );
        for (key, img) in [
            ("rgb_static", &self.rgb_static),
            ("rgb_gripper", &self.rgb_gripper),
        ] {
            w.add(
                key,
                &NpyArray::from_u8(&[img.height, img.width, 3], img.data.clone()),
            );
        }
        for (key, a) in extra {
            ensure!(
                !CALVIN_KEYS.contains(key),
                "{}: extra key '{key}' would replace a CALVIN key",
                path.display()
            );
            w.add(key, a);
        }
        w.to_bytes()
            .map_err(|e| anyhow!("{}: cannot encode: {e}", path.display()))
    }

    /// Writes this frame to `path` atomically (temporary file, fsync, rename).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        write_atomic(path, &self.to_npz_bytes(path)?)
    }
}

// ---------------------------------------------------------------------------------------
// ep_start_end_ids.npy
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names() {
        assert_eq!(frame_file_name(12), "episode_0000012.npz");
        assert_eq!(parse_frame_file_name("episode_0000012.npz"), Some(12));
        assert_eq!(parse_frame_file_name("episode_.npz"), None);
        assert_eq!(parse_frame_file_name(".episode_0000012.npz.1.tmp"), None);
    }
}
