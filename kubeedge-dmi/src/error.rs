//! The crate's error type.

use std::sync::Arc;

/// A `Result` whose error defaults to this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can be wrong with a topic, a device object or a DMI message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A payload refused by KubeEdge's rules; the text is the reason, naming the field.
    #[error("{0}")]
    Validation(String),
    /// A topic that is not one of KubeEdge's device or node topics, or that would inject MQTT
    /// wildcards or extra topic levels.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// Encoding or decoding a KubeEdge payload failed.
    #[error(transparent)]
    Proto(Arc<kubeedge_proto::Error>),
    /// A value could not be encoded (JSON that is not UTF-8, and the like).
    #[error("encoding: {0}")]
    Encoding(String),
}

impl From<kubeedge_proto::Error> for Error {
    fn from(e: kubeedge_proto::Error) -> Self {
        match e {
            kubeedge_proto::Error::Validation(reason) => Self::Validation(reason),
            other => Self::Proto(Arc::new(other)),
        }
    }
}
