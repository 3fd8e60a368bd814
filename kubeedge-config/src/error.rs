//! The crate's error: what is wrong with a config file, a flag or a CA file, naming the key, the
//! flag or the path.

/// An error of this crate. Its text names what is wrong and where (a key such as
/// `modules.cloudHub.nodeLimit: must be at least 1`, a flag, a file's path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A config file, flag or value that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A file that cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
}

impl Error {
    /// A file error for `path`.
    pub(crate) fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<String> for Error {
    fn from(reason: String) -> Self {
        Self::Invalid(reason)
    }
}

impl From<&str> for Error {
    fn from(reason: &str) -> Self {
        Self::Invalid(reason.to_owned())
    }
}

impl From<Error> for String {
    fn from(e: Error) -> Self {
        e.to_string()
    }
}

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
