//! The crate's error type.

use std::sync::Arc;

/// A `Result` whose error defaults to this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the twin engine, the EventBus and the DMI server.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A payload or topic refused by KubeEdge's rules; the text is the reason KubeEdge
    /// publishes in its error result.
    #[error("{0}")]
    Validation(String),
    /// The device is not a member of this node.
    #[error("device {0} not found")]
    UnknownDevice(String),
    /// A topic that is not one of KubeEdge's device or node topics, or that would inject MQTT
    /// wildcards or extra topic levels.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// A message from the cloud the twin cannot handle.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The store failed (the change was rolled back).
    #[cfg(feature = "store")]
    #[error(transparent)]
    Store(#[from] kubeedge_store::Error),
    /// Encoding or decoding a KubeEdge payload failed.
    #[error(transparent)]
    Proto(Arc<kubeedge_proto::Error>),
    /// The MQTT client failed.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// The embedded MQTT broker failed to start or stopped.
    #[error("embedded MQTT broker: {0}")]
    Broker(String),
    /// A DMI gRPC call or server failed.
    #[error("DMI: {0}")]
    Dmi(String),
    /// An I/O error (sockets, files).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: Arc<std::io::Error>,
    },
    /// A queue is full; the message was dropped (bounded queues keep one flood from stalling
    /// everything else).
    #[error("{0} queue is full; message dropped")]
    QueueFull(&'static str),
    /// The component was shut down.
    #[error("shut down")]
    Closed,
}

impl From<kubeedge_proto::Error> for Error {
    fn from(e: kubeedge_proto::Error) -> Self {
        match e {
            kubeedge_proto::Error::Validation(reason) => Self::Validation(reason),
            other => Self::Proto(Arc::new(other)),
        }
    }
}

impl From<kubeedge_dmi::Error> for Error {
    fn from(e: kubeedge_dmi::Error) -> Self {
        match e {
            kubeedge_dmi::Error::Validation(reason) => Self::Validation(reason),
            kubeedge_dmi::Error::InvalidTopic(topic) => Self::InvalidTopic(topic),
            kubeedge_dmi::Error::Proto(e) => Self::Proto(e),
            other => Self::Dmi(other.to_string()),
        }
    }
}

#[cfg(feature = "store")]
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(kubeedge_store::Error::from(e))
    }
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}
