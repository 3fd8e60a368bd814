//! The one error type of `kubeedge-edged`.

/// What went wrong in edged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The container runtime refused or failed an operation.
    #[error("runtime {op}: {message}")]
    Runtime {
        /// The operation (`RunPodSandbox`, `CreateContainer`, ...).
        op: &'static str,
        /// The runtime's message.
        message: String,
    },
    /// The runtime does not know this sandbox, container or image.
    #[error("not found in the runtime: {0}")]
    NotFound(String),
    /// The runtime endpoint cannot be reached.
    #[error("cannot reach the runtime at {endpoint}: {message}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// A pod spec edged cannot run (the message says which field).
    #[error("pod spec: {0}")]
    Spec(String),
    /// A volume could not be materialised.
    #[error("volume {volume}: {message}")]
    Volume {
        /// The volume's name.
        volume: String,
        /// Why.
        message: String,
    },
    /// A probe could not be run (not: the probe failed).
    #[error("probe: {0}")]
    Probe(String),
    /// The metadata store failed.
    #[error("store: {0}")]
    Store(#[from] kubeedge_store::Error),
    /// A file or socket operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// JSON that does not decode.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
