//! Node join: the cluster CA, the certificates it issues and the bootstrap tokens, as KubeEdge
//! makes them (`pkg/security/certs`, `pkg/security/token`,
//! `cloud/pkg/cloudhub/servers/httpserver`, `edge/pkg/edgehub/certificate`).
//!
//! # The join flow
//!
//! 1. **Cloud start.** CloudCore loads or creates the cluster CA ([`CertificateAuthority`]: ECDSA
//!    P-256, self-signed, `CN=KubeEdge`, serial 1024, valid 100 × 364 days) and signs its own
//!    server certificate with it ([`CertificateAuthority::issue_server_cert`]: `CN=KubeEdge`,
//!    `O=KubeEdge`, serverAuth, SANs = advertise addresses and DNS names).
//! 2. **Token.** Every `tokenRefreshDuration` hours (default 12) the cloud issues a token
//!    ([`Token::issue`]) valid for twice that: `<caHash>.<JWT>`, where `caHash` is the lowercase
//!    hex SHA-256 of the CA certificate's DER ([`ca_hash`]) and the JWT is a compact HS256 token
//!    whose only claim is `exp`, keyed with the CA private key's DER bytes
//!    ([`CertificateAuthority::key_der`]). `keadm gettoken` prints it; it is handed to the edge.
//! 3. **CA download.** The edge fetches `GET /ca.crt` (raw DER, without verifying the server)
//!    and checks it against the token's `caHash` ([`Token::split_for_edge`]); what is left of the
//!    token, the JWT, becomes its bearer token.
//! 4. **Certificate request.** The edge makes a fresh P-256 key and a CSR for
//!    `C=CN, ST=Zhejiang, L=Hangzhou, O=system:nodes, CN=system:node:<node>` ([`EdgeCsr::new`])
//!    and sends it as the body of `GET /edge.crt`, with `Authorization: Bearer <JWT>`,
//!    `NodeName: <node>` and optionally `ExtKeyUsages: [..]` ([`ExtKeyUsage::parse_header`]),
//!    trusting only the fetched CA from now on.
//! 5. **Authorization.** If the TLS peer presented a client certificate, it must chain to the CA
//!    with clientAuth and name the node ([`CertificateAuthority::authorize_client_cert`]);
//!    otherwise the bearer JWT must verify ([`Token::verify_authorization_header`]). Failures are
//!    HTTP 401.
//! 6. **Issuance.** The cloud signs the CSR ([`CertificateAuthority::sign_edge_csr`]): common
//!    name, organizations and DNS/IP SANs copied from the CSR, a random serial, key usage
//!    keyEncipherment + digitalSignature, the requested extended key usages (default
//!    clientAuth), valid for `edgeCertSigningDuration` days (default 365). The body of the
//!    answer is the certificate's DER.
//! 7. **Rotation.** Before the certificate expires the edge repeats steps 4–6 with a new key,
//!    authenticated by its current certificate instead of the token.
//!
//! Keys are written as SEC1 (`EC PRIVATE KEY`) PEM, as KubeEdge writes them; that form is also
//! what Go's `x509.ParseECPrivateKey` on the cloud side requires of a CA key.
//!
//! Every function here takes hostile input (CSRs, client certificates, tokens, PEM files) and
//! answers bad input with a [`JoinError`], never with a panic.

mod ca;
mod csr;
mod token;

use std::time::{SystemTime, UNIX_EPOCH};

pub use ca::{CertificateAuthority, IssuedCert};
pub use csr::{EdgeCsr, ExtKeyUsage};
pub use token::{Token, ca_hash};

/// The common name of the CA and of the CloudCore server certificate, and the organization of
/// the CloudCore server certificate (KubeEdge's `constants.ProjectName`).
pub const PROJECT_NAME: &str = "KubeEdge";

/// The organization of an edge node's certificate (`O=system:nodes`).
pub const NODE_ORGANIZATION: &str = "system:nodes";

/// The prefix of an edge node certificate's common name: `CN=system:node:<node>`.
pub const NODE_COMMON_NAME_PREFIX: &str = "system:node:";

/// The common name of the edge certificates of KubeEdge before v1.17 (`O=KubeEdge`,
/// `CN=kubeedge.io`), which the cloud still accepts for any node.
pub const LEGACY_EDGE_COMMON_NAME: &str = "kubeedge.io";

/// How long the CA and the CloudCore server certificate are valid: 100 × 364 days.
pub const CA_VALIDITY_DAYS: u32 = 100 * 364;

/// The default validity of an edge certificate (`edgeCertSigningDuration`), in days.
pub const DEFAULT_EDGE_CERT_VALIDITY_DAYS: u32 = 365;

/// The largest CSR the cloud reads from a `/edge.crt` request body (KubeEdge's
/// `MaxRespBodyLength`, 1 MiB).
pub const MAX_CSR_LEN: usize = 1 << 20;

/// The largest certificate, key or PEM document accepted as input.
pub const MAX_CERT_LEN: usize = 1 << 20;

/// The common name of `node`'s certificate: `system:node:<node>`.
pub fn node_common_name(node: &str) -> String {
    format!("{NODE_COMMON_NAME_PREFIX}{node}")
}

/// Everything that can go wrong in node join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
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
}

/// Rejects `input` if it is longer than `max`.
fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), JoinError> {
    if len > max {
        return Err(JoinError::TooLarge { what, len, max });
    }
    Ok(())
}

/// Seconds since the Unix epoch, for times that go into certificates.
fn unix_secs(now: SystemTime) -> Result<i64, JoinError> {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| JoinError::TimeOutOfRange("before 1970".to_owned()))?
        .as_secs();
    i64::try_from(secs).map_err(|_| JoinError::TimeOutOfRange(format!("{secs} s after 1970")))
}

/// `N` bytes from the operating system's CSPRNG (through ring, by way of a throwaway key).
fn random_bytes<const N: usize>() -> Result<[u8; N], JoinError> {
    use sha2::{Digest, Sha512};
    const { assert!(N <= 64) };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| JoinError::Generation(e.to_string()))?;
    let digest = Sha512::digest(key.serialized_der());
    let mut out = [0u8; N];
    out.copy_from_slice(&digest[..N]);
    Ok(out)
}

/// PEM-encodes `der` with the label `label`, 64 characters a line, as Go's `pem.Encode`.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}
