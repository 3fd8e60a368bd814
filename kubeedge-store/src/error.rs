//! The crate's error type.

use std::path::PathBuf;
use std::sync::Arc;

/// A `Result` whose error defaults to this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store, the MetaManager and the outbox.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists but is not an SQLite database, or is corrupted.
    #[error("{path} is not a usable SQLite database: {reason}")]
    NotADatabase {
        /// The database file.
        path: PathBuf,
        /// What SQLite reported.
        reason: String,
    },
    /// The database was written by a newer version of this crate.
    #[error("database schema version {found} is newer than the {supported} this build knows")]
    SchemaTooNew {
        /// The version in the file.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// An SQLite error.
    #[error("SQLite: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    /// A value larger than the configured maximum; nothing was written.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The outbox holds its configured maximum and its policy is to refuse new messages.
    #[error("the outbox is full ({capacity} messages)")]
    OutboxFull {
        /// The configured capacity.
        capacity: usize,
    },
    /// A message that the MetaManager cannot handle (bad resource, bad content).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// A write closure panicked; its changes were rolled back.
    #[error("a store write panicked; its changes were rolled back")]
    JobPanicked,
    /// The store was closed (its writer thread has stopped).
    #[error("the store is closed")]
    Closed,
    /// A message from kubeedge-proto.
    #[error(transparent)]
    Proto(Arc<kubeedge_proto::Error>),
    /// An I/O error (creating the database directory).
    #[error("I/O: {0}")]
    Io(Arc<std::io::Error>),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(Arc::new(e))
    }
}

impl From<kubeedge_proto::Error> for Error {
    fn from(e: kubeedge_proto::Error) -> Self {
        Self::Proto(Arc::new(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}
