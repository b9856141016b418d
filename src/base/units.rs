//! CALVIN's relative-action units: what one unit of a relative action means.
//! The dataset format, the safety layer, the runtime and teleop all read them here.

/// Metres per unit of CALVIN relative x, y, z action.
pub const REL_XYZ_M: f64 = 0.02;
/// Radians per unit of CALVIN relative roll, pitch, yaw action.
pub const REL_EULER_RAD: f64 = 0.05;
