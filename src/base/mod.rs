//! The floor under everything: small facilities every other module may use,
//! which use nothing of the crate themselves.
//!
//! - [`fs`]: atomic file writes (temp file, fsync, rename).
//! - [`angle`]: wrapping angles to (−π, π].
//! - [`image`]: the 8-bit RGB image type and the one PNG writer.
//! - [`clock`]: the process's monotonic clock (s) and sleeping until a time.
//! - [`hash`]: the FNV hashes (instruction tokens, CALVIN's chain seeds).
//! - [`units`]: CALVIN's relative-action units (m and rad per unit).

pub mod angle;
pub mod clock;
pub mod fs;
pub mod hash;
pub mod image;
pub mod units;
