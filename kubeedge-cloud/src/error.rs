//! The crate's error type.

use std::fmt;

/// A refusal or failure as the Kubernetes API reports it (`metav1.Status`): what a cluster
/// write returns, and what the edge gets back in `{"Object":null,"Err":{"ErrStatus":...}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (`403`, `404`, `409`, `500`, ...).
    pub code: u16,
    /// The machine-readable reason (`Forbidden`, `NotFound`, `AlreadyExists`, `Conflict`, ...).
    pub reason: String,
    /// The human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with `code`, `reason` and `message`.
    pub fn new(code: u16, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// `403 Forbidden`: what node isolation answers.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// `404 NotFound` for `<resource> "<name>"`.
    pub fn not_found(resource: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"))
    }

    /// `409 AlreadyExists` for `<resource> "<name>"`.
    pub fn already_exists(resource: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        )
    }

    /// `400 BadRequest`: a malformed request from the edge.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// `500 InternalError`: the cluster could not be reached or answered nonsense.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// Whether this is a `404`.
    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    /// Whether this is a `409 AlreadyExists`.
    pub fn is_already_exists(&self) -> bool {
        self.code == 409 && self.reason == "AlreadyExists"
    }

    /// The `metav1.Status` object of this error, as the API server writes it.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Errors of kubeedge-cloud.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cluster refused or failed a request.
    #[error("kubernetes API: {0}")]
    Api(#[from] ApiError),
    /// An object without the fields every object has (kind, metadata.name, ...).
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// A manifest file that could not be read or parsed.
    #[error("manifest {path}: {reason}")]
    Manifest {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// File system I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// JSON encoding or decoding.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A message could not be built or read.
    #[error("message: {0}")]
    Proto(#[from] kubeedge_proto::Error),
    /// The transport failed or stopped.
    #[error("hub: {0}")]
    Hub(#[from] kubeedge_hub::Error),
    /// Building the Kubernetes client failed (kubeconfig, in-cluster config, TLS).
    #[error("kubernetes client: {0}")]
    Client(String),
    /// The component was stopped.
    #[error("stopped")]
    Stopped,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
