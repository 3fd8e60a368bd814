//! The crate's error: which part failed to start or stopped, and why.

use std::net::SocketAddr;

/// An error of [`EdgeCore`](crate::edge::EdgeCore) or [`CloudCore`](crate::cloud::CloudCore).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file (or the config built in code) cannot be used.
    #[error(transparent)]
    Config(#[from] kubeedge_config::Error),
    /// The cloud's controllers or cluster failed.
    #[cfg(any(feature = "kube", feature = "manifest"))]
    #[error(transparent)]
    Controllers(#[from] kubeedge_cloud::Error),
    /// A listening socket could not be bound.
    #[error("{what} on {addr}: {source}")]
    Bind {
        /// What was to listen there.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A part could not start.
    #[error("{part}: {reason}")]
    Start {
        /// The part (`store`, `edged`, `twin`, `cloudhub`, ...).
        part: &'static str,
        /// Why.
        reason: String,
    },
    /// A part stopped before it was asked to.
    #[error("{part} stopped: {reason}")]
    Stopped {
        /// The part.
        part: &'static str,
        /// Its error, or `ended`.
        reason: String,
    },
}

impl Error {
    /// A part that could not start.
    #[cfg_attr(
        not(any(
            all(feature = "edged", feature = "twin"),
            all(feature = "kube", feature = "manifest")
        )),
        allow(dead_code)
    )]
    pub(crate) fn start(part: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Start {
            part,
            reason: reason.to_string(),
        }
    }
}

/// A result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
