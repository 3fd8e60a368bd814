//! Node join over HTTPS: CloudCore's certificate server on port 10002 and edgecore's side of it
//! (KubeEdge's `cloud/pkg/cloudhub/servers/httpserver` and `edge/pkg/edgehub/certificate`).
//!
//! The certificates, CSRs and tokens themselves are in [`join`](crate::join); this module moves
//! them over HTTP/1.1 and TLS:
//!
//! - [`BootstrapServer`] (the cloud) answers `GET /ca.crt` with the CA certificate's DER,
//!   `GET /edge.crt` by signing the DER CSR in the request body for a node that proves itself with
//!   a bootstrap token (`Authorization: Bearer <JWT>`) or with its current client certificate,
//!   and `GET /node/{nodename}` with whether the node exists.
//! - [`EdgeBootstrap`] (the edge) reuses the certificate files it finds, or joins with a token:
//!   it downloads the CA without verifying the server, checks it against the token's CA hash,
//!   sends a CSR for a fresh key, and writes `ca/rootCA.crt`, `certs/server.crt` and
//!   `certs/server.key`. It renews the certificate over mutual TLS before it expires
//!   ([`EdgeBootstrap::renew`], [`EdgeBootstrap::rotate`], [`renew_at`]). The result,
//!   [`EdgeCredentials`], gives the EdgeHub its TLS configuration.
//!
//! Where this differs from KubeEdge (all of it stricter, none of it visible to a well-behaved
//! edgecore or CloudCore):
//!
//! - `/edge.crt` answers a body over 1 MiB with 413 and an unreadable CSR or `ExtKeyUsages`
//!   header with 400 (KubeEdge: 500 for both). Unknown paths get 404 and other methods than
//!   `GET` on the three routes 405, as from go-restful.
//! - `/edge.crt` issues only `O=system:nodes, CN=system:node:<NodeName>`, clientAuth, no
//!   subject alternative names ([`CertificateAuthority::sign_node_csr`]), whoever asks: the
//!   `NodeName` header must be a node name (400) and the CSR must ask for exactly that identity
//!   (403; SANs 400), and `ExtKeyUsages` may only be `[2]` (400). KubeEdge copies the CSR's
//!   subject and signs any usage, so one token buys `CN=admin, O=system:masters` or another
//!   node's identity there. A renewal from a legacy `CN=kubeedge.io` certificate gets the node's
//!   own identity.
//! - Tokens may be limited to one node and to one join ([`Token::issue_with`], `cloudcore
//!   gettoken --node N --single-use`); a plain token still joins any node, as KubeEdge's.
//!   Single-use tokens are recorded as spent in [`BootstrapConfig::spent_tokens`] (a
//!   [`SpentTokenFile`] beside the CA) before the certificate is answered; a server without
//!   one refuses them.
//! - Connections: at most [`BootstrapConfig::max_connections_per_source`] per source address;
//!   when [`BootstrapConfig::max_connections`] are open, a new one closes the oldest idle one
//!   (still in its TLS handshake, or between requests), so silent connections cannot keep
//!   honest nodes waiting (KubeEdge: Go's server has no connection limit and no handshake
//!   deadline). Limits hit are logged at WARN, at most once per 10 s each, with a count.
//!
//! [`CertificateAuthority::sign_node_csr`]: crate::join::CertificateAuthority::sign_node_csr
//! [`Token::issue_with`]: crate::join::Token::issue_with
//! - The edge reuses its files only if the certificate chains to the saved CA, is valid now, is
//!   for this node and matches the key; otherwise it joins again with the token.
//! - Every connection has deadlines (TLS handshake, request headers, whole request, whole
//!   connection) and the server holds a bounded number of connections.

mod client;
mod server;
mod spent_tokens;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::join::pem_encode;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use client::{CertPaths, EdgeBootstrap, EdgeCredentials, random_jitter, renew_at};
pub use server::{BootstrapConfig, BootstrapServer, NodeExists, server_tls_config};
pub use spent_tokens::{SpentTokenFile, SpentTokens};

/// CloudCore's HTTPS port for node join (`modules.cloudHub.https.port`).
pub const DEFAULT_PORT: u16 = 10002;

/// The path of the CA certificate (`constants.DefaultCAURL`).
pub const CA_PATH: &str = "/ca.crt";

/// The path of the certificate signing endpoint (`constants.DefaultCertURL`).
pub const CERT_PATH: &str = "/edge.crt";

/// The prefix of the node existence check, `/node/{nodename}`.
pub const NODE_PATH_PREFIX: &str = "/node/";

/// The request header naming the node a certificate is for (`types.HeaderNodeName`).
pub const NODE_NAME_HEADER: &str = "NodeName";

/// The request header listing the extended key usages asked for (`types.HeaderExtKeyUsages`).
pub const EXT_KEY_USAGES_HEADER: &str = "ExtKeyUsages";

/// The largest response body the edge reads (KubeEdge's `MaxRespBodyLength`, 1 MiB).
pub const MAX_RESPONSE_LEN: usize = 1 << 20;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// Every `CERTIFICATE` block of `pem`; an error if there is none.
fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in the PEM"));
    }
    Ok(certs)
}

/// The first private key block of `pem` (`EC PRIVATE KEY`, `PRIVATE KEY`, ...).
fn pem_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("private key: {e}"))
}

/// `t` seconds after (or before) the Unix epoch.
fn system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// A uniformly random `u64` from the operating system (through ring).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .is_err()
    {
        // Only jitter and temporary file names use this; the clock is good enough for those.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        return (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(bytes)
}
