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
    /// A new connection of a node that has a session was refused: the node's takeover budget
    /// ([`TakeoverLimit`](crate::TakeoverLimit)) is used up.
    #[error("node {node} already has a session and its takeover budget is used up")]
    TakeoverRefused {
        /// The node.
        node: String,
    },
    /// The cloud refused the WebSocket upgrade with an HTTP status (403: identity or headers
    /// refused; 429: the node's session is held by another connection and its takeover budget
    /// is used up).
    #[error("the cloud refused the connection with HTTP {status}: {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The start of the response body, which says why.
        reason: String,
    },
    /// The hub has stopped.
    #[error("the hub has stopped")]
    Stopped,
    /// A WebSocket protocol error.
    #[error("WebSocket: {0}")]
    WebSocket(Arc<tokio_tungstenite::tungstenite::Error>),
    /// An I/O error.
    #[error("I/O: {0}")]
    Io(Arc<std::io::Error>),
    // Node join: the CA, certificates, CSRs and tokens.
    /// An input is larger than this module accepts; it was not parsed.
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was too large (`"CSR"`, `"certificate"`, `"token"`, ...).
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A PEM document without a block of the expected kind, or with broken base64.
    #[error("invalid PEM {what}: {reason}")]
    Pem {
        /// What was expected (`"certificate"`, `"private key"`).
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The CA certificate cannot be parsed or used as a CA.
    #[error("invalid CA certificate: {0}")]
    CaCertificate(String),
    /// A private key that is not a P-256 or P-384 ECDSA key in SEC1 or PKCS #8 DER.
    #[error("invalid private key: {0}")]
    PrivateKey(String),
    /// The CA private key does not belong to the CA certificate.
    #[error("the CA private key does not match the CA certificate")]
    KeyMismatch,
    /// A time before 1970 or too far in the future to be written into a certificate.
    #[error("time out of range: {0}")]
    TimeOutOfRange(String),
    /// A name that cannot be written into a certificate (for example a non-ASCII DNS name).
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Generating a key or signing a certificate or CSR failed.
    #[error("certificate generation failed: {0}")]
    Generation(String),
    /// A certificate signing request that cannot be parsed.
    #[error("invalid certificate signing request: {0}")]
    CsrInvalid(String),
    /// A certificate signing request whose signature does not verify with its own key.
    #[error("the certificate signing request's signature does not verify")]
    CsrSignature,
    /// A certificate signing request without a common name.
    #[error("the certificate signing request has no common name")]
    CsrMissingCommonName,
    /// The certificate on disk is another node's than the one configured: the node's identity
    /// is its certificate, so the config is wrong (or damaged), and nothing is replaced.
    #[error(
        "{path} is the certificate of node {certificate:?}, but the config names node {configured:?}; fix the config, or run `edgecore join` to make this machine node {configured:?} (its key is then replaced)"
    )]
    IdentityMismatch {
        /// The node of the certificate on disk.
        certificate: String,
        /// The node the configuration names.
        configured: String,
        /// The certificate file.
        path: std::path::PathBuf,
    },
    /// The certificate files exist but cannot be used (incomplete, unreadable, not matching
    /// the CA or the key); they are left as they are.
    #[error(
        "the node certificate {path} cannot be used ({reason}); it is left as it is: run `edgecore join` to replace it"
    )]
    IdentityUnusable {
        /// The certificate file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate signing request for a node whose subject is not exactly that node's,
    /// `O=system:nodes, CN=system:node:<node>`.
    #[error(
        "the certificate signing request asks for {found}, but node {node:?} may only have {expected}"
    )]
    CsrWrongSubject {
        /// The node the certificate is asked for (the `NodeName` header).
        node: String,
        /// The subject the node may have.
        expected: String,
        /// What the CSR asks for.
        found: String,
    },
    /// A certificate signing request for a node that asks for subject alternative names (a node's
    /// client certificate has none).
    #[error("a node's certificate has no subject alternative names; the CSR asks for some")]
    CsrAltNames,
    /// A token made for one node ([`Token::issue_with`](crate::join::Token::issue_with)) presented
    /// for another.
    #[error("the token is for node {token_node:?}, not {node:?}")]
    TokenWrongNode {
        /// The node the token is for.
        token_node: String,
        /// The node it was presented for.
        node: String,
    },
    /// A single-use token that was used before.
    #[error("the single-use token was used before")]
    TokenSpent,
    /// A single-use token where the server keeps no record of used tokens, or that record
    /// cannot be read or written.
    #[error("single-use tokens: {0}")]
    TokenLedger(String),
    /// A certificate signing request whose public key cannot be put into a certificate.
    #[error("unsupported public key in the certificate signing request: {0}")]
    CsrPublicKey(String),
    /// An `ExtKeyUsages` header that is not a JSON array of integers.
    #[error("invalid ExtKeyUsages header: {0}")]
    ExtKeyUsagesHeader(String),
    /// An extended key usage number that Go's `x509.ExtKeyUsage` does not define.
    #[error("unknown extended key usage {0}")]
    UnknownExtKeyUsage(i64),
    /// A signing request with an empty list of extended key usages.
    #[error("at least one extended key usage must be given")]
    NoExtKeyUsages,
    /// A client certificate that does not verify against the CA for client authentication
    /// (bad signature, another CA, expired, wrong extended key usage, unparsable, ...).
    #[error("client certificate rejected: {0}")]
    ClientCertUntrusted(String),
    /// A client certificate without an organization in its subject.
    #[error("client certificate has no organization in its subject")]
    ClientCertNoOrganization,
    /// A valid client certificate that does not belong to the node named in the request.
    #[error(
        "client certificate (O={organization:?}, CN={common_name:?}) does not belong to node {node:?}"
    )]
    ClientCertWrongNode {
        /// The node named in the request (`NodeName` header).
        node: String,
        /// The first organization of the certificate's subject.
        organization: String,
        /// The certificate's common name.
        common_name: String,
    },
    /// A token that does not have the shape `<caHash>.<header>.<payload>.<signature>` (or a JWT
    /// that is not `<header>.<payload>.<signature>`).
    #[error("malformed token: {0}")]
    TokenMalformed(&'static str),
    /// The token's CA hash is not the SHA-256 of this CA certificate.
    #[error("the token's CA hash {found:?} does not match the CA certificate's hash {expected}")]
    TokenCaHashMismatch {
        /// The hash of the CA certificate at hand.
        expected: String,
        /// The hash in the token.
        found: String,
    },
    /// A JWT part that is not unpadded base64url.
    #[error("the token's {part} is not base64url")]
    TokenBase64 {
        /// `"header"`, `"payload"` or `"signature"`.
        part: &'static str,
    },
    /// A JWT header or payload that is not the expected JSON object.
    #[error("the token's {part} is not valid JSON: {reason}")]
    TokenJson {
        /// `"header"` or `"payload"`.
        part: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A JWT signed with another algorithm than HS256.
    #[error("token algorithm {0:?} is not HS256")]
    TokenAlgorithm(String),
    /// A JWT whose HMAC does not verify with this CA's key.
    #[error("the token's signature does not verify")]
    TokenSignature,
    /// A JWT without an `exp` claim.
    #[error("the token has no expiry")]
    TokenMissingExpiry,
    /// A JWT whose `exp` has passed.
    #[error("the token has expired")]
    TokenExpired,
    /// A JWT whose `nbf` has not come yet.
    #[error("the token is not valid yet")]
    TokenNotYetValid,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("invalid Authorization header: {0}")]
    AuthorizationHeader(&'static str),
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
