//! Mutual TLS as KubeEdge uses it: the cloud requires a client certificate signed by the cluster
//! CA, the edge verifies the cloud's certificate against the same CA, and a node is identified by
//! its certificate's common name `system:node:<node>`.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::{Error, Result};

use crate::join::NODE_COMMON_NAME_PREFIX;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::TlsConfig(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::TlsConfig(format!(
            "{what}: no certificate in the PEM"
        )));
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::TlsConfig(format!("private key: {e}")))
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "CA")? {
        roots
            .add(cert)
            .map_err(|e| Error::TlsConfig(format!("CA: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The CloudHub's TLS: its certificate chain and key, and client certificates required and
/// verified against `client_ca_pem` (TLS 1.2 and 1.3, as KubeEdge).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
) -> Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca_pem)?, provider())
        .build()
        .map_err(|e| Error::TlsConfig(format!("client verifier: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert_pem, "server certificate")?, key(key_pem)?)
        .map_err(|e| Error::TlsConfig(format!("server certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// The EdgeHub's TLS: the cloud verified against `ca_pem`, this node's certificate presented.
pub fn client_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem, "node certificate")?, key(key_pem)?)
        .map_err(|e| Error::TlsConfig(format!("node certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// The EdgeHub's TLS configuration for a certificate that is renewed while the node runs: the
/// cloud is verified against `ca_pem`, and each handshake presents the certificate and key
/// `current` returns at that moment. An EdgeHub is built with one [`ClientConfig`]; with this one
/// its next reconnect uses the renewed certificate (see
/// [`EdgeBootstrap::rotate`](crate::bootstrap::EdgeBootstrap::rotate) and
/// [`EdgeCredentials::rotating_client_config`](crate::bootstrap::EdgeCredentials::rotating_client_config)).
///
/// `current` gives `(cert_pem, key_pem)`; a pair that does not parse presents no certificate
/// (the cloud then refuses the connection) and is logged.
pub fn rotating_client_config(
    ca_pem: &[u8],
    current: impl Fn() -> (String, String) + Send + Sync + 'static,
) -> Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_cert_resolver(Arc::new(LatestCertificate {
            current: Box::new(current),
            cached: std::sync::Mutex::new(None),
        }));
    Ok(Arc::new(config))
}

type CurrentPair = Box<dyn Fn() -> (String, String) + Send + Sync>;

/// Presents the newest certificate; the parsed key is kept until the certificate changes.
struct LatestCertificate {
    current: CurrentPair,
    cached: std::sync::Mutex<Option<(String, Arc<rustls::sign::CertifiedKey>)>>,
}

impl std::fmt::Debug for LatestCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatestCertificate").finish_non_exhaustive()
    }
}

impl rustls::client::ResolvesClientCert for LatestCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let (cert_pem, key_pem) = (self.current)();
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((pem, key)) = cached.as_ref()
            && *pem == cert_pem
        {
            return Some(Arc::clone(key));
        }
        let parsed = certs(cert_pem.as_bytes(), "node certificate").and_then(|chain| {
            rustls::sign::CertifiedKey::from_der(chain, key(key_pem.as_bytes())?, &provider())
                .map_err(|e| Error::TlsConfig(format!("node certificate: {e}")))
        });
        match parsed {
            Ok(certified) => {
                let certified = Arc::new(certified);
                *cached = Some((cert_pem, Arc::clone(&certified)));
                Some(certified)
            }
            Err(e) => {
                tracing::warn!(error = %e, "node certificate unusable; connecting without one");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The node a (verified) client certificate belongs to: its common name without the
/// `system:node:` prefix.
pub fn node_of_certificate(der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Handshake(format!("unreadable client certificate: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| Error::Handshake("client certificate has no common name".to_owned()))?;
    cn.strip_prefix(NODE_COMMON_NAME_PREFIX)
        .filter(|node| !node.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::Handshake(format!(
                "client certificate CN {cn:?} is not system:node:<node>"
            ))
        })
}
