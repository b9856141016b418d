//! Robot and simulator I/O: observations, and the env adapter that drives a
//! simulator in a child process.

pub mod env_adapter;
pub mod record;
pub mod robot;

/// An 8-bit RGB image, row-major `H × W × 3` (the dataset module's image type).
pub use crate::base::image::Image as RgbImage;

/// Length of CALVIN's `robot_obs`: tcp xyz (m), tcp euler xyz (rad), gripper
/// width (m), 7 joint angles (rad), last gripper action (±1).
pub const ROBOT_OBS_DIM: usize = 15;
/// Length of CALVIN's `scene_obs`: slider (m), drawer (m), button, switch,
/// lightbulb (0/1), green LED (0/1), then red, blue, pink blocks (xyz m + euler rad).
pub const SCENE_OBS_DIM: usize = 24;

/// One observation, exactly CALVIN's layout.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// Static camera, 200×200.
    pub rgb_static: RgbImage,
    /// Gripper camera, 84×84.
    pub rgb_gripper: RgbImage,
    /// See [`ROBOT_OBS_DIM`].
    pub robot_obs: Vec<f64>,
    /// See [`SCENE_OBS_DIM`].
    pub scene_obs: Vec<f64>,
}

impl Observation {
    /// Checks sizes and finiteness; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.rgb_static.validate("rgb_static")?;
        self.rgb_gripper.validate("rgb_gripper")?;
        for (name, v, n) in [
            ("robot_obs", &self.robot_obs, ROBOT_OBS_DIM),
            ("scene_obs", &self.scene_obs, SCENE_OBS_DIM),
        ] {
            if v.len() != n {
                return Err(format!("{name}: expected {n} values, found {}", v.len()));
            }
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!(
                    "{name}[{i}]: expected a finite value, found {}",
                    v[i]
                ));
            }
        }
        Ok(())
    }
}
