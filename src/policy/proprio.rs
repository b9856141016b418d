//! Proprioception as a model sees it: CALVIN's 15-value `robot_obs` turned into
//! features (angles as sin/cos, so that a roll at ±π is one input, not two far
//! apart), then normalized. One function for training and run time.

use serde::{Deserialize, Serialize};

use crate::io::ROBOT_OBS_DIM;

/// How `robot_obs` becomes the head's proprio input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProprioEncoding {
    /// The 15 values as they are (bundles made before angles were encoded; the tcp
    /// roll sits at ±π in CALVIN, so one pose gives two inputs far apart).
    #[default]
    Raw,
    /// 18 features: tcp xyz, (sin, cos) of each tcp euler angle, gripper width, the 7
    /// joint angles (a Panda's joints stay inside (−π, π), away from the wrap), and the
    /// gripper action.
    EulerSincos,
}

impl ProprioEncoding {
    /// Features this encoding makes from one `robot_obs`.
    pub fn dim(self) -> usize {
        match self {
            Self::Raw => ROBOT_OBS_DIM,
            Self::EulerSincos => ROBOT_OBS_DIM + 3,
        }
    }

    /// The features of one `robot_obs` (15 values), unnormalized.
    pub fn features(self, robot_obs: &[f64]) -> Result<Vec<f64>, String> {
        if robot_obs.len() != ROBOT_OBS_DIM {
            return Err(format!(
                "robot_obs: expected {ROBOT_OBS_DIM} values, found {}",
                robot_obs.len()
            ));
        }
        Ok(match self {
            Self::Raw => robot_obs.to_vec(),
            Self::EulerSincos => {
                let mut f = Vec::with_capacity(self.dim());
                f.extend_from_slice(&robot_obs[0..3]);
                for &a in &robot_obs[3..6] {
                    f.push(a.sin());
                    f.push(a.cos());
                }
                f.extend_from_slice(&robot_obs[6..15]);
                f
            }
        })
    }

    /// The normalized features `(f − mean) / std` (a dimension without statistics
    /// passes through), as the head takes them.
    pub fn normalized(
        self,
        robot_obs: &[f64],
        mean: &[f32],
        std: &[f32],
    ) -> Result<Vec<f32>, String> {
        Ok(self
            .features(robot_obs)?
            .iter()
            .enumerate()
            .map(|(i, &p)| match (mean.get(i), std.get(i)) {
                (Some(m), Some(s)) => ((p as f32) - m) / s,
                _ => p as f32,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roll_either_side_of_pi_gives_nearly_the_same_features() {
        let mut a = [0.0; 15];
        a[3] = std::f64::consts::PI - 1e-3;
        let mut b = a;
        b[3] = -std::f64::consts::PI + 1e-3;
        let e = ProprioEncoding::EulerSincos;
        let (fa, fb) = (e.features(&a).unwrap(), e.features(&b).unwrap());
        assert_eq!(fa.len(), 18);
        let d: f64 = fa.iter().zip(&fb).map(|(x, y)| (x - y).abs()).sum();
        assert!(d < 3e-3, "{d}");
        // The raw encoding keeps them 2π apart.
        let (ra, rb) = (
            ProprioEncoding::Raw.features(&a).unwrap(),
            ProprioEncoding::Raw.features(&b).unwrap(),
        );
        assert!((ra[3] - rb[3]).abs() > 6.0);
    }

    #[test]
    fn layout_and_normalization() {
        let obs: Vec<f64> = (0..15).map(|i| i as f64 * 0.1).collect();
        let f = ProprioEncoding::EulerSincos.features(&obs).unwrap();
        assert_eq!(&f[..3], &obs[..3]);
        assert!((f[3] - 0.3f64.sin()).abs() < 1e-12 && (f[4] - 0.3f64.cos()).abs() < 1e-12);
        assert!((f[7] - 0.5f64.sin()).abs() < 1e-12 && (f[8] - 0.5f64.cos()).abs() < 1e-12);
        assert_eq!(&f[9..], &obs[6..]);
        let n = ProprioEncoding::EulerSincos
            .normalized(&obs, &[0.1; 18], &[2.0; 18])
            .unwrap();
        assert!((n[0] - (0.0 - 0.1) / 2.0).abs() < 1e-7);
        let e = ProprioEncoding::EulerSincos
            .features(&[0.0; 14])
            .unwrap_err();
        assert!(e.contains("expected 15 values, found 14"), "{e}");
    }
}
