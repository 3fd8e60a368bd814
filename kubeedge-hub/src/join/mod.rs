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
//! 6. **Issuance.** The cloud signs the CSR ([`CertificateAuthority::sign_node_csr`]) if it
//!    asks for exactly the node's identity: the certificate is `O=system:nodes,
//!    CN=system:node:<NodeName>`, clientAuth, no SANs, a random serial, key usage
//!    keyEncipherment + digitalSignature, valid for `edgeCertSigningDuration` days (default
//!    365). The body of the answer is the certificate's DER. (KubeEdge copies the CSR's subject
//!    and SANs and signs the usages asked for: [`CertificateAuthority::sign_edge_csr`].)
//! 7. **Rotation.** Before the certificate expires the edge repeats steps 4–6 with a new key,
//!    authenticated by its current certificate instead of the token.
//!
//! Keys are written as SEC1 (`EC PRIVATE KEY`) PEM, as KubeEdge writes them; that form is also
//! what Go's `x509.ParseECPrivateKey` on the cloud side requires of a CA key.
//!
//! Every function here takes hostile input (CSRs, client certificates, tokens, PEM files) and
//! answers bad input with a [`crate::Error`], never with a panic.

mod ca;
mod csr;
mod go_der;
mod token;

use std::time::{SystemTime, UNIX_EPOCH};

pub use ca::{CertificateAuthority, IssuedCert};
pub use csr::{EdgeCsr, ExtKeyUsage};
pub use token::{Token, TokenClaims, TokenScope, ca_hash};

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

/// Rejects `input` if it is longer than `max`.
fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), crate::Error> {
    if len > max {
        return Err(crate::Error::TooLarge { what, len, max });
    }
    Ok(())
}

/// Seconds since the Unix epoch, for times that go into certificates.
fn unix_secs(now: SystemTime) -> Result<i64, crate::Error> {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| crate::Error::TimeOutOfRange("before 1970".to_owned()))?
        .as_secs();
    i64::try_from(secs).map_err(|_| crate::Error::TimeOutOfRange(format!("{secs} s after 1970")))
}

/// `N` bytes from the operating system's CSPRNG (through ring, by way of a throwaway key).
fn random_bytes<const N: usize>() -> Result<[u8; N], crate::Error> {
    use sha2::{Digest, Sha512};
    const { assert!(N <= 64) };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| crate::Error::Generation(e.to_string()))?;
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
