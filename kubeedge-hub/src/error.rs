//! The crate's error type.

use std::sync::Arc;

/// A `Result` whose error defaults to this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the cloud-edge transport.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A TLS configuration could not be built from the given certificates and keys.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The peer's TLS or WebSocket handshake failed or broke KubeEdge's rules.
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// The peer did not finish its handshake in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// No reply arrived before the caller's deadline.
    #[error("no reply within the deadline")]
    ReplyTimeout,
    /// A frame or message that is not a KubeEdge message, or is too large.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// The node is not connected.
    #[error("node {0} is not connected")]
    NotConnected(String),
    /// The hub has stopped.
    #[error("the hub has stopped")]
    Stopped,
    /// A WebSocket protocol error.
    #[error("WebSocket: {0}")]
    WebSocket(Arc<tokio_tungstenite::tungstenite::Error>),
    /// An I/O error.
    #[error("I/O: {0}")]
    Io(Arc<std::io::Error>),
    /// Node join: certificates, CSRs or tokens.
    #[error(transparent)]
    Join(#[from] crate::join::JoinError),
    /// A bootstrap server URL that is not `https://<host>[:<port>]`.
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A first certificate is needed and no token was given.
    #[error("no usable certificate and no bootstrap token to ask for one")]
    NoToken,
    /// A TLS handshake with the bootstrap server failed (for example because its certificate
    /// does not verify against the CA).
    #[error("TLS: {0}")]
    Tls(String),
    /// An HTTP exchange failed (connection closed, malformed response, response too large).
    #[error("HTTP: {0}")]
    Http(String),
    /// The bootstrap server answered with a status other than 200.
    #[error("{path} answered {status}: {body}")]
    Status {
        /// The request path (`/ca.crt`, `/edge.crt`).
        path: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, which says why (KubeEdge answers in plain text).
        body: String,
    },
    /// A request did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// Certificate files, or a certificate the server returned, are unusable: unparsable, not
    /// signed by the CA, expired, for another node, or not matching the key.
    #[error("unusable certificate: {0}")]
    Certificate(String),
    /// A message that kubeedge-proto refused.
    #[error(transparent)]
    Proto(Arc<kubeedge_proto::Error>),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Self::WebSocket(Arc::new(e))
    }
}

impl From<kubeedge_proto::Error> for Error {
    fn from(e: kubeedge_proto::Error) -> Self {
        Self::Proto(Arc::new(e))
    }
}
