//! Reading and writing datasets in the on-disk format of the CALVIN benchmark.
//!
//! A CALVIN split directory (e.g. `task_D_D/training/`) holds:
//!
//! - `episode_XXXXXXX.npz`, one file per frame, `XXXXXXX` the 7-digit zero-padded global
//!   frame index. Keys read and written here:
//!   - `actions`: `float64 [7]`, absolute end-effector target: TCP position x, y, z (m),
//!     orientation as Euler angles x, y, z (rad), gripper command (-1 close, +1 open);
//!   - `rel_actions`: `float64 [7]`, relative action: position delta / 0.02 m, Euler delta /
//!     0.05 rad (both clipped to [-1, 1]), gripper command (+-1);
//!   - `robot_obs`: `float64 [15]` proprioception (TCP pos (m), TCP Euler (rad), gripper
//!     opening width (m), 7 joint angles (rad), gripper action (+-1));
//!   - `scene_obs`: `float64 [24]` object and articulation state;
//!   - `rgb_static`: `uint8 [200, 200, 3]` static camera; `rgb_gripper`: `uint8 [84, 84, 3]`
//!     gripper camera.
//!
//!   Other keys of real CALVIN files (`rgb_tactile`, `depth_static`, `depth_gripper`,
//!   `depth_tactile`, ...) are ignored. Both stored (`np.savez`) and deflate-compressed
//!   (`np.savez_compressed`) archives are read; frames are written stored.
//! - `ep_start_end_ids.npy`: `int64 [E, 2]`, inclusive first and last frame index of each
//!   episode.
//! - `statistics.yaml`: normalization statistics (see [`Statistics`]).
//! - `lang_annotations/auto_lang_ann.npy`: a 0-d numpy object array holding the pickled dict
//!   `{'language': {'ann': [str], 'task': [str], 'emb': float32 [N, 1, 384]},
//!   'info': {'episodes': [], 'indx': [(start, end)]}}` (see [`LangAnnotations`]).
//!
//! [`CalvinDataset`] reads such a directory; [`CalvinWriter`] writes one, resumably.
//! Every error names the file and, where it applies, the key, and says what was expected and
//! what was found.//!
//! Rooms: [`frame`] (one frame file), [`statistics`] (`statistics.yaml`),
//! [`lang`] (language annotations), [`dataset`] (the reader and the episode
//! ids), [`writer`] (the resumable writer).

pub mod dataset;
pub mod frame;
pub mod lang;
pub mod statistics;
pub mod writer;

pub use dataset::*;
pub use frame::*;
pub use lang::*;
pub use statistics::*;
pub use writer::*;

/// Length of `actions` and `rel_actions` (xyz, Euler xyz, gripper).
pub const ACTION_DIM: usize = 7;
/// Length of `robot_obs`.
pub const ROBOT_OBS_DIM: usize = 15;
/// Length of `scene_obs`.
pub const SCENE_OBS_DIM: usize = 24;
/// Side of CALVIN's static camera image `rgb_static` (pixels).
pub const STATIC_IMAGE_SIZE: usize = 200;
/// Side of CALVIN's gripper camera image `rgb_gripper` (pixels).
pub const GRIPPER_IMAGE_SIZE: usize = 84;
/// Size of CALVIN's language embeddings (`emb` is `float32 [N, 1, 384]`).
pub const LANG_EMB_DIM: usize = 384;
/// Episode table file name.
pub const EP_IDS_FILE: &str = "ep_start_end_ids.npy";
/// Statistics file name.
pub const STATISTICS_FILE: &str = "statistics.yaml";
/// Language annotation file, relative to the split directory.
pub const LANG_FILE: &str = "lang_annotations/auto_lang_ann.npy";
/// `_target_` of the normalization entries written to `statistics.yaml`.
pub const NORMALIZE_TARGET: &str = "calvin_models.calvin_agent.utils.transforms.NormalizeVector";
