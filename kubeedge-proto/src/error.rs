//! The crate's error type.

/// A `Result` whose error defaults to this crate's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while decoding, validating or encoding KubeEdge data.
///
/// Errors that quote the offending input quote at most [`QUOTE_LIMIT`] characters of it, so a
/// hostile peer cannot make an error message (and the log line it ends up in) arbitrarily large.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is larger than the configured maximum; nothing was allocated for it.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was too large (`"message"`, `"frame"`, `"resource"`, ...).
        what: &'static str,
        /// The size that was seen or announced.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The input is not the JSON that was expected.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A resource path that does not have one of KubeEdge's shapes.
    #[error("invalid resource {resource:?}: {reason}")]
    Resource {
        /// The resource string (shortened).
        resource: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A device id, twin key, twin value or state that breaks KubeEdge's validation rules.
    #[error("{0}")]
    Validation(String),
    /// A viaduct binary frame whose header or payload is malformed.
    #[error("invalid binary frame: {0}")]
    Frame(String),
    /// A protobuf payload that does not decode.
    #[cfg(feature = "binary-frame")]
    #[error("invalid protobuf payload: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// An I/O error from the transport under a codec.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The maximum number of characters of hostile input quoted in an error.
pub const QUOTE_LIMIT: usize = 80;

/// Shortens `s` to at most [`QUOTE_LIMIT`] characters for an error message.
pub(crate) fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

impl Error {
    pub(crate) fn resource(resource: &str, reason: &'static str) -> Self {
        Self::Resource {
            resource: quote(resource),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_bounded() {
        let long = "x".repeat(10_000);
        let err = Error::resource(&long, "too long");
        assert!(err.to_string().len() < QUOTE_LIMIT + 64);
        assert_eq!(quote("é".repeat(3).as_str()), "ééé");
    }
}
