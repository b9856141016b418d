//! Errors of the calibration module.
//!
//! Every error names the file (or an in-memory label such as `<calibration>`),
//! the key inside it, what was expected and what was found, so a user can fix
//! a YAML file without reading the source.

use std::path::Path;

/// Errors raised while loading, validating or using calibration data.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The file could not be read or written.
    #[error("{file}: cannot {action}: {error}")]
    Io {
        /// Path of the file (as displayed).
        file: String,
        /// What was attempted (`read`, `write`, `rename onto`).
        action: &'static str,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// The file is not valid YAML/JSON for the expected schema (unknown key,
    /// missing key, wrong type). `message` comes from the parser and names the
    /// key path and the line/column.
    #[error("{file}: cannot parse as {format}: {message}")]
    Parse {
        /// Path of the file (as displayed).
        file: String,
        /// `YAML` or `JSON`.
        format: &'static str,
        /// Parser message (includes the key path and position).
        message: String,
    },
    /// A value parsed but is physically or mathematically invalid.
    #[error("{file}: {key}: expected {expected}, found {found}")]
    Invalid {
        /// Path of the file, or an in-memory label such as `<calibration>`.
        file: String,
        /// Dotted key path inside the file, e.g. `camera_to_base.rotation_matrix`.
        key: String,
        /// What a valid value looks like.
        expected: String,
        /// What was actually found.
        found: String,
    },
    /// OpenCV reported an error.
    #[error("{context}: OpenCV error: {error}")]
    OpenCv {
        /// What was being done (e.g. `calibrate_hand_eye`).
        context: String,
        /// The OpenCV error.
        error: opencv::Error,
    },
}

impl CalibrationError {
    /// Builds an [`CalibrationError::Invalid`].
    pub(crate) fn invalid(
        file: &str,
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        CalibrationError::Invalid {
            file: file.to_string(),
            key: key.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    /// Replaces the file label of an [`CalibrationError::Invalid`] (used when an
    /// in-memory validation happens on behalf of a file).
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            CalibrationError::Invalid {
                key,
                expected,
                found,
                ..
            } => CalibrationError::Invalid {
                file: path.display().to_string(),
                key,
                expected,
                found,
            },
            other => other,
        }
    }

    /// Prefixes the key of an [`CalibrationError::Invalid`] with `prefix.`.
    pub(crate) fn under_key(self, prefix: &str) -> Self {
        match self {
            CalibrationError::Invalid {
                file,
                key,
                expected,
                found,
            } => CalibrationError::Invalid {
                file,
                key: if key.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{prefix}.{key}")
                },
                expected,
                found,
            },
            other => other,
        }
    }
}

/// Wraps an OpenCV error with a context string.
pub(crate) fn cv_err(context: &str) -> impl FnOnce(opencv::Error) -> CalibrationError + '_ {
    move |error| CalibrationError::OpenCv {
        context: context.to_string(),
        error,
    }
}
