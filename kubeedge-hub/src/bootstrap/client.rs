//! The edge side: getting, keeping and renewing the node's certificate (edgecore's
//! `CertManager`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use kubeedge_proto::NodeName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{
    CA_PATH, CERT_PATH, MAX_RESPONSE_LEN, NODE_NAME_HEADER, pem_certs, pem_encode, pem_key,
    provider, random_u64, signature_algorithms, system_time,
};
use crate::join::{EdgeCsr, MAX_CERT_LEN, Token};
use crate::{Error, tls};

/// Where the edge keeps its certificates (edgecore's `tlsCaFile`, `tlsCertFile`,
/// `tlsPrivateKeyFile`), all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The CA certificate (KubeEdge: `/etc/kubeedge/ca/rootCA.crt`).
    pub ca: PathBuf,
    /// The node's certificate (KubeEdge: `/etc/kubeedge/certs/server.crt`).
    pub cert: PathBuf,
    /// The node's private key, SEC1 `EC PRIVATE KEY`, mode 0600 (KubeEdge:
    /// `/etc/kubeedge/certs/server.key`).
    pub key: PathBuf,
}

impl CertPaths {
    /// KubeEdge's layout under `dir`: `ca/rootCA.crt`, `certs/server.crt`, `certs/server.key`
    /// (`dir` is `/etc/kubeedge` for edgecore).
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self {
            ca: dir.join("ca").join("rootCA.crt"),
            cert: dir.join("certs").join("server.crt"),
            key: dir.join("certs").join("server.key"),
        }
    }

    /// The node the certificate on disk is for (its `CN=system:node:<node>`): `Ok(None)` if
    /// there is no certificate file, an error if it cannot be read. Once a node has a
    /// certificate, this is its name, whatever a config file says.
    pub fn certificate_node(&self) -> Result<Option<String>, Error> {
        let Some(pem) = read_capped(&self.cert)? else {
            return Ok(None);
        };
        let unusable = |reason: String| Error::IdentityUnusable {
            path: self.cert.clone(),
            reason,
        };
        let certs = pem_certs(&pem, "node certificate").map_err(unusable)?;
        let node = tls::node_of_certificate(&certs[0]).map_err(|e| unusable(e.to_string()))?;
        Ok(Some(node))
    }
}

/// The CA certificate, the node's certificate and its key: what the EdgeHub needs to connect
/// ([`client_config`](Self::client_config)).
///
/// Construction checks that each parses and that the key belongs to the certificate;
/// [`verify`](Self::verify) checks the certificate against the CA and the node.
#[derive(Clone, PartialEq, Eq)]
pub struct EdgeCredentials {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    ca_der: Vec<u8>,
    cert_der: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for EdgeCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeCredentials")
            .field("node", &tls::node_of_certificate(&self.cert_der).ok())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl EdgeCredentials {
    /// From PEM: the first certificate of `ca_pem` and of `cert_pem`, and the first private key
    /// of `key_pem` (`EC PRIVATE KEY` or `PRIVATE KEY`), which must belong to the certificate.
    pub fn from_pem(
        ca_pem: impl Into<String>,
        cert_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Result<Self, Error> {
        let (ca_pem, cert_pem, key_pem) = (ca_pem.into(), cert_pem.into(), key_pem.into());
        for (what, pem) in [
            ("CA", &ca_pem),
            ("certificate", &cert_pem),
            ("key", &key_pem),
        ] {
            if pem.len() > MAX_CERT_LEN {
                return Err(crate::Error::TooLarge {
                    what,
                    len: pem.len(),
                    max: MAX_CERT_LEN,
                });
            }
        }
        let first = |pem: &str, what: &str| {
            pem_certs(pem.as_bytes(), what)
                .map(|mut certs| certs.swap_remove(0).to_vec())
                .map_err(Error::Certificate)
        };
        let ca_der = first(&ca_pem, "CA")?;
        let cert_der = first(&cert_pem, "certificate")?;
        let key = pem_key(key_pem.as_bytes()).map_err(Error::Certificate)?;
        let (not_before, not_after) = check_pair(&ca_der, &cert_der, key)?;
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
            ca_der,
            cert_der,
            not_before,
            not_after,
        })
    }

    /// From DER: the CA certificate, the node's certificate and its private key (SEC1 as
    /// [`EdgeCsr`] makes it, or PKCS #8), which must belong to the certificate.
    pub fn from_der(ca_der: &[u8], cert_der: &[u8], key_der: &[u8]) -> Result<Self, Error> {
        let key = PrivateKeyDer::try_from(key_der.to_vec())
            .map_err(|e| Error::Certificate(format!("private key: {e}")))?;
        let label = match key {
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        let (not_before, not_after) = check_pair(ca_der, cert_der, key)?;
        Ok(Self {
            ca_pem: pem_encode("CERTIFICATE", ca_der),
            cert_pem: pem_encode("CERTIFICATE", cert_der),
            key_pem: pem_encode(label, key_der),
            ca_der: ca_der.to_vec(),
            cert_der: cert_der.to_vec(),
            not_before,
            not_after,
        })
    }

    /// The CA certificate as PEM (the content of `rootCA.crt`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The node's certificate as PEM (the content of `server.crt`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The node's private key as PEM (the content of `server.key`).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate as DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The node's certificate as DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// When the certificate becomes valid.
    pub fn not_before(&self) -> SystemTime {
        system_time(self.not_before)
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        system_time(self.not_after)
    }

    /// When to renew the certificate: see [`renew_at`].
    pub fn renew_at(&self, jitter: f64) -> SystemTime {
        renew_time(self.not_before, self.not_after, jitter)
    }

    /// The EdgeHub's TLS configuration: the cloud verified against the CA, this certificate
    /// presented ([`tls::client_config`]).
    pub fn client_config(&self) -> crate::Result<Arc<ClientConfig>> {
        tls::client_config(
            self.ca_pem.as_bytes(),
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
        )
    }

    /// The EdgeHub's TLS configuration for credentials that [`EdgeBootstrap::rotate`] renews:
    /// every handshake presents the certificate `credentials` holds at that moment, so the
    /// EdgeHub's next reconnect uses the renewed one ([`tls::rotating_client_config`]). The CA
    /// is the one of the credentials held now (rotation keeps it).
    pub fn rotating_client_config(
        credentials: watch::Receiver<EdgeCredentials>,
    ) -> crate::Result<Arc<ClientConfig>> {
        let ca_pem = credentials.borrow().ca_pem.clone();
        tls::rotating_client_config(ca_pem.as_bytes(), move || {
            let current = credentials.borrow();
            (current.cert_pem.clone(), current.key_pem.clone())
        })
    }

    /// Checks that the certificate chains to the CA, allows client authentication, is valid at
    /// `now` and is `node`'s (`CN=system:node:<node>`).
    pub fn verify(&self, node: &str, now: SystemTime) -> Result<(), Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der.clone()))
            .map_err(|e| Error::Certificate(format!("CA certificate: {e}")))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| Error::Certificate(format!("CA certificate: {e}")))?;
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        verifier
            .verify_client_cert(
                &CertificateDer::from(self.cert_der.as_slice()),
                &[],
                UnixTime::since_unix_epoch(since_epoch),
            )
            .map_err(|e| Error::Certificate(format!("the certificate does not verify: {e}")))?;
        let owner = tls::node_of_certificate(&self.cert_der)
            .map_err(|e| Error::Certificate(e.to_string()))?;
        if owner != node {
            return Err(Error::Certificate(format!(
                "the certificate is for node {owner:?}, not {node:?}"
            )));
        }
        Ok(())
    }
}

/// Parses both certificates and checks that `key` belongs to `cert_der`; returns the
/// certificate's validity as Unix seconds.
fn check_pair(
    ca_der: &[u8],
    cert_der: &[u8],
    key: PrivateKeyDer<'static>,
) -> Result<(i64, i64), Error> {
    x509_parser::parse_x509_certificate(ca_der)
        .map_err(|e| Error::Certificate(format!("CA certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Certificate(format!("certificate: {e}")))?;
    let validity = cert.validity();
    CertifiedKey::from_der(
        vec![CertificateDer::from(cert_der.to_vec())],
        key,
        &provider(),
    )
    .map_err(|e| Error::Certificate(format!("certificate and key: {e}")))?;
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// When to renew the certificate `cert_der`, as edgecore's `nextRotationDeadline`: NotBefore
/// plus 70 % to 90 % of its lifetime, `jitter` (0 to 1, see [`random_jitter`]) choosing where in
/// that range, so that nodes joined together do not all renew together.
pub fn renew_at(cert_der: &[u8], jitter: f64) -> Result<SystemTime, Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| Error::Certificate(format!("certificate: {e}")))?;
    let validity = cert.validity();
    Ok(renew_time(
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        jitter,
    ))
}

fn renew_time(not_before: i64, not_after: i64, jitter: f64) -> SystemTime {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let lifetime = not_after.saturating_sub(not_before).max(0) as f64;
    let offset = Duration::try_from_secs_f64(lifetime * (0.7 + 0.2 * jitter)).unwrap_or_default();
    system_time(not_before)
        .checked_add(offset)
        .unwrap_or_else(|| system_time(not_after))
}

/// A uniformly random number in `[0, 1)` for [`renew_at`], from the operating system.
pub fn random_jitter() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The edge side of node join (edgecore's `CertManager`).
///
/// [`bootstrap`](Self::bootstrap) on start, then [`rotate`](Self::rotate) in the background:
///
/// ```no_run
/// # async fn f() -> kubeedge_hub::Result<()> {
/// use kubeedge_hub::bootstrap::EdgeBootstrap;
/// use kubeedge_proto::NodeName;
/// let node = NodeName::new("edge-1")?;
/// let join = EdgeBootstrap::new("https://192.0.2.1:10002", "<token>", node, "/etc/kubeedge");
/// let credentials = join.bootstrap().await?;
/// let tls = credentials.client_config()?; // for the EdgeHub
/// # let _ = tls; Ok(()) }
/// ```
#[derive(Clone)]
pub struct EdgeBootstrap {
    /// The cloud's certificate server, `https://<host>:<port>` (`edgeHub.httpServer`,
    /// KubeEdge: `https://<cloudcore>:10002`). The server's certificate must name `<host>`.
    pub server: String,
    /// The bootstrap token, `<caHash>.<JWT>` (`edgeHub.token`); empty if there is none. Needed
    /// only when no usable certificate is on disk.
    pub token: String,
    /// The node's name.
    pub node_name: NodeName,
    /// Where the certificates are kept.
    pub paths: CertPaths,
    /// The most one HTTPS request (connect, handshake, answer) may take (KubeEdge: 30 s).
    pub request_timeout: Duration,
}

impl fmt::Debug for EdgeBootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeBootstrap")
            .field("server", &self.server)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("node_name", &self.node_name)
            .field("paths", &self.paths)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl EdgeBootstrap {
    /// Joins `node_name` through `server` (`https://<host>:10002`) with `token`, keeping the
    /// certificates in KubeEdge's layout under `dir` ([`CertPaths::in_dir`]); requests time out
    /// after 30 s.
    pub fn new(
        server: impl Into<String>,
        token: impl Into<String>,
        node_name: NodeName,
        dir: impl AsRef<Path>,
    ) -> Self {
        Self {
            server: server.into(),
            token: token.into(),
            node_name,
            paths: CertPaths::in_dir(dir),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// The certificates on disk if they are usable: `Ok(None)` if none of the three files
    /// exists, an error if only some do, or they are unreadable or unusable (see
    /// [`EdgeCredentials::verify`]), or they are another node's
    /// ([`Error::IdentityMismatch`]).
    pub fn load(&self) -> Result<Option<EdgeCredentials>, Error> {
        self.load_at(SystemTime::now())
    }

    fn load_at(&self, now: SystemTime) -> Result<Option<EdgeCredentials>, Error> {
        let Some(credentials) = self.read_files()? else {
            return Ok(None);
        };
        self.check_owner(&credentials)?;
        credentials.verify(&self.node_name, now)?;
        Ok(Some(credentials))
    }

    /// The three files, parsed and matching each other; `Ok(None)` if none exists.
    fn read_files(&self) -> Result<Option<EdgeCredentials>, Error> {
        let paths = [&self.paths.ca, &self.paths.cert, &self.paths.key];
        let (ca, cert, key) = (
            read_capped(&self.paths.ca)?,
            read_capped(&self.paths.cert)?,
            read_capped(&self.paths.key)?,
        );
        let (ca, cert, key) = match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            (None, None, None) => return Ok(None),
            found => {
                let present = [found.0.is_some(), found.1.is_some(), found.2.is_some()];
                let missing: Vec<String> = paths
                    .iter()
                    .zip(present)
                    .filter(|(_, present)| !present)
                    .map(|(path, _)| path.display().to_string())
                    .collect();
                return Err(Error::IdentityUnusable {
                    path: self.paths.cert.clone(),
                    reason: format!("incomplete: {} missing", missing.join(", ")),
                });
            }
        };
        let text = |bytes: Vec<u8>, path: &Path| {
            String::from_utf8(bytes).map_err(|_| Error::IdentityUnusable {
                path: path.to_owned(),
                reason: "not PEM".to_owned(),
            })
        };
        EdgeCredentials::from_pem(
            text(ca, &self.paths.ca)?,
            text(cert, &self.paths.cert)?,
            text(key, &self.paths.key)?,
        )
        .map(Some)
        .map_err(|e| Error::IdentityUnusable {
            path: self.paths.cert.clone(),
            reason: e.to_string(),
        })
    }

    /// The certificate must be this node's: a node's identity is its certificate.
    fn check_owner(&self, credentials: &EdgeCredentials) -> Result<(), Error> {
        let owner = tls::node_of_certificate(credentials.cert_der()).map_err(|e| {
            Error::IdentityUnusable {
                path: self.paths.cert.clone(),
                reason: e.to_string(),
            }
        })?;
        if self.node_name != owner {
            return Err(Error::IdentityMismatch {
                certificate: owner,
                configured: self.node_name.to_string(),
                path: self.paths.cert.clone(),
            });
        }
        Ok(())
    }

    /// The node's credentials: those on disk if they are usable ([`load`](Self::load)), else,
    /// if there are none, new ones from the cloud with the token ([`join`](Self::join)).
    ///
    /// Files that exist are never replaced here, except a certificate of this very node that
    /// has expired (or is not valid yet), which only a token can replace: files of another node,
    /// incomplete, unreadable or not matching their CA are an error
    /// ([`Error::IdentityMismatch`], [`Error::IdentityUnusable`]), so that a damaged or
    /// mistaken config cannot make a node join again as someone else and lose its key. Only an
    /// explicit [`join`](Self::join) (`edgecore join`) replaces them.
    pub async fn bootstrap(&self) -> Result<EdgeCredentials, Error> {
        let now = SystemTime::now();
        let Some(credentials) = self.read_files()? else {
            tracing::info!(node = %self.node_name, "no node certificate on disk; joining");
            return self.join().await;
        };
        self.check_owner(&credentials)?;
        let outside_validity = now < credentials.not_before() || now >= credentials.not_after();
        match credentials.verify(&self.node_name, now) {
            Ok(()) => {
                tracing::info!(node = %self.node_name, "reusing the node certificate on disk");
                Ok(credentials)
            }
            Err(e) if outside_validity => {
                tracing::warn!(node = %self.node_name, error = %e,
                    "the node certificate on disk is outside its validity; joining again with the token as the same node");
                self.join().await
            }
            Err(e) => Err(Error::IdentityUnusable {
                path: self.paths.cert.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Joins with the token: downloads the CA from `/ca.crt` without verifying the server,
    /// checks it against the token's CA hash, asks `/edge.crt` (now verifying the server against
    /// that CA) to sign a CSR for a fresh key, and writes the three files.
    ///
    /// A token that does not match the CA fails with [`crate::Error::TokenCaHashMismatch`] before
    /// anything else is sent.
    pub async fn join(&self) -> Result<EdgeCredentials, Error> {
        if self.token.is_empty() {
            return Err(Error::NoToken);
        }
        if self.token.split('.').count() != 4 {
            return Err(crate::Error::TokenMalformed(
                "a token has four dot-separated parts",
            ));
        }
        let target = Target::parse(&self.server)?;
        let ca_der = self.fetch_ca_from(&target).await?;
        let jwt = Token::split_for_edge(&self.token, &ca_der)?;
        let csr = EdgeCsr::new(&self.node_name)?;
        let tls = verifying_client_config(&ca_der, None)?;
        let cert_der = self.request_cert(&target, tls, &csr, Some(&jwt)).await?;
        let credentials = EdgeCredentials::from_der(&ca_der, &cert_der, &csr.key_der)?;
        credentials.verify(&self.node_name, SystemTime::now())?;
        self.save(&credentials, true).await?;
        tracing::info!(node = %self.node_name, "joined: node certificate issued");
        Ok(credentials)
    }

    /// Renews the certificate: asks `/edge.crt` to sign a CSR for a fresh key, authenticated by
    /// the `current` certificate over mutual TLS (no token), and rewrites the key and
    /// certificate files.
    pub async fn renew(&self, current: &EdgeCredentials) -> Result<EdgeCredentials, Error> {
        let target = Target::parse(&self.server)?;
        let csr = EdgeCsr::new(&self.node_name)?;
        let tls = verifying_client_config(current.ca_der(), Some(current))?;
        let cert_der = self.request_cert(&target, tls, &csr, None).await?;
        let renewed = EdgeCredentials::from_der(current.ca_der(), &cert_der, &csr.key_der)?;
        renewed.verify(&self.node_name, SystemTime::now())?;
        self.save(&renewed, false).await?;
        tracing::info!(node = %self.node_name, "node certificate renewed");
        Ok(renewed)
    }

    /// Renews the certificate in `credentials` whenever it is due ([`EdgeCredentials::renew_at`]
    /// with a fresh [`random_jitter`] each time) and publishes the new one there, until
    /// `shutdown` is cancelled. A failed renewal is retried after 2, 4, 8 and 16 s (±10 %), then
    /// every 32 s, as edgecore does. A certificate that has already expired cannot renew itself;
    /// then the token is used, if there is one.
    pub async fn rotate(
        &self,
        credentials: watch::Sender<EdgeCredentials>,
        shutdown: CancellationToken,
    ) {
        loop {
            let current = credentials.borrow().clone();
            let due = current.renew_at(random_jitter());
            tracing::info!(node = %self.node_name, expires = ?current.not_after(), ?due, "next certificate rotation");
            if !sleep_until_system(due, &shutdown).await {
                return;
            }
            let mut delay = Duration::from_secs(2);
            let mut failures = 0u32;
            loop {
                let expired = SystemTime::now() >= current.not_after();
                let result = if expired && !self.token.is_empty() {
                    self.join().await
                } else {
                    self.renew(&current).await
                };
                match result {
                    Ok(renewed) => {
                        credentials.send_replace(renewed);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.node_name, error = %e, "certificate rotation failed");
                    }
                }
                failures += 1;
                let wait = if failures < 5 {
                    let wait = delay.mul_f64(1.0 + 0.1 * random_jitter());
                    delay *= 2;
                    wait
                } else {
                    Duration::from_secs(32)
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// Downloads the CA certificate (DER) from `/ca.crt` without verifying the server, as
    /// edgecore does: the caller must check it, as [`join`](Self::join) does with the token's
    /// CA hash ([`Token::split_for_edge`]).
    pub async fn fetch_ca(&self) -> Result<Vec<u8>, Error> {
        self.fetch_ca_from(&Target::parse(&self.server)?).await
    }

    async fn fetch_ca_from(&self, target: &Target) -> Result<Vec<u8>, Error> {
        let tls = insecure_client_config()?;
        let body = exchange(
            target,
            tls,
            CA_PATH,
            Vec::new(),
            Bytes::new(),
            self.request_timeout,
        )
        .await?;
        Ok(body.to_vec())
    }

    async fn request_cert(
        &self,
        target: &Target,
        tls: Arc<ClientConfig>,
        csr: &EdgeCsr,
        jwt: Option<&str>,
    ) -> Result<Vec<u8>, Error> {
        let mut headers = vec![(NODE_NAME_HEADER, self.node_name.to_string())];
        if let Some(jwt) = jwt {
            headers.push((header::AUTHORIZATION.as_str(), format!("Bearer {jwt}")));
        }
        let body = exchange(
            target,
            tls,
            CERT_PATH,
            headers,
            Bytes::from(csr.csr_der.clone()),
            self.request_timeout,
        )
        .await?;
        Ok(body.to_vec())
    }

    /// Writes the key and the certificate (and the CA if `with_ca`), each atomically.
    async fn save(&self, credentials: &EdgeCredentials, with_ca: bool) -> Result<(), Error> {
        let paths = self.paths.clone();
        let credentials = credentials.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            if with_ca {
                write_atomic(&paths.ca, credentials.ca_pem().as_bytes(), false)?;
            }
            write_atomic(&paths.key, credentials.key_pem().as_bytes(), true)?;
            write_atomic(&paths.cert, credentials.cert_pem().as_bytes(), false)
        })
        .await
        .map_err(|e| Error::Io(Arc::new(io::Error::other(e))))??;
        Ok(())
    }
}

/// Sleeps until the wall clock reaches `due` (rechecking it at least hourly, so that a clock
/// step is noticed); false if `shutdown` came first.
async fn sleep_until_system(due: SystemTime, shutdown: &CancellationToken) -> bool {
    const MAX_STEP: Duration = Duration::from_secs(60 * 60);
    loop {
        let Ok(remaining) = due.duration_since(SystemTime::now()) else {
            return true;
        };
        if remaining.is_zero() {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(remaining.min(MAX_STEP)) => {}
        }
    }
}

/// The contents of `path`, `None` if it does not exist; at most [`MAX_CERT_LEN`] bytes.
fn read_capped(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match kubeedge_fs::read_bounded(path, MAX_CERT_LEN as u64) {
        Ok(contents) => Ok(Some(contents)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(Error::Certificate(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Replaces `path` with `contents` with `kubeedge_fs::write_atomically`: `private` files
/// (keys) get mode 0600, others 0644.
fn write_atomic(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    kubeedge_fs::write_atomically(path, contents, if private { 0o600 } else { 0o644 })
}

/// The server from `https://<host>[:<port>]`.
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    authority: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: hyper::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid("the scheme must be https".to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("no host".to_owned()))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user information is not supported".to_owned()));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("a path is not supported".to_owned()));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("no host".to_owned()));
        }
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| invalid(format!("host {host:?}: {e}")))?;
        Ok(Self {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            server_name,
            authority: authority.as_str().to_owned(),
        })
    }
}

/// A client configuration trusting only the CA `ca_der`, presenting `client`'s certificate if
/// given.
fn verifying_client_config(
    ca_der: &[u8],
    client: Option<&EdgeCredentials>,
) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let key = pem_key(client.key_pem().as_bytes()).map_err(Error::Tls)?;
            builder
                .with_client_auth_cert(vec![CertificateDer::from(client.cert_der().to_vec())], key)
                .map_err(|e| Error::Tls(format!("node certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration of the one unverified request, `/ca.crt` (Go's `InsecureSkipVerify`).
fn insecure_client_config() -> Result<Arc<ClientConfig>, Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert {
            algorithms: signature_algorithms(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate (the handshake signature must still be made with its key).
/// Used for `/ca.crt` only, whose answer is checked against the token.
#[derive(Debug)]
struct AcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One `GET` on a new connection; the body of a 200 answer, at most [`MAX_RESPONSE_LEN`].
async fn exchange(
    target: &Target,
    tls: Arc<ClientConfig>,
    path: &'static str,
    headers: Vec<(&str, String)>,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, Error> {
    let http = |e: hyper::Error| Error::Http(format!("{path}: {e}"));
    let attempt = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(tls)
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| Error::Tls(format!("{path}: {e}")))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(http)?;
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, target.authority.as_str());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| Error::Http(format!("{path}: {e}")))?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = read_limited(response.into_body(), path).await?;
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(1024)])
                .trim()
                .to_owned();
            return Err(Error::Status {
                path,
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| Error::Timeout(path))?
}

async fn read_limited(mut body: Incoming, path: &str) -> Result<Bytes, Error> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Http(format!("{path}: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_RESPONSE_LEN {
                return Err(Error::Http(format!(
                    "{path}: answer larger than {MAX_RESPONSE_LEN} bytes"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_70_to_90_percent_of_the_lifetime() {
        let start = 1_000_000;
        let end = start + 1000;
        let at = |j| {
            renew_time(start, end, j)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(at(0.0), 1_000_700);
        assert_eq!(at(0.5), 1_000_800);
        assert_eq!(at(1.0), 1_000_900);
        assert_eq!(at(-3.0), 1_000_700);
        assert_eq!(at(7.0), 1_000_900);
        assert_eq!(at(f64::NAN), 1_000_800);
        // A certificate that ends before it starts is due at once.
        assert_eq!(
            renew_time(end, start, 0.3)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            end as u64
        );
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = random_jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn server_urls() {
        let t = Target::parse("https://127.0.0.1:10002").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 10002));
        assert_eq!(t.authority, "127.0.0.1:10002");
        let t = Target::parse("https://[::1]:10002/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 10002));
        let t = Target::parse("https://cloud.example").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("cloud.example", 443));
        for bad in [
            "http://127.0.0.1:10002",
            "127.0.0.1:10002",
            "https://127.0.0.1:10002/prefix",
            "https://u:p@127.0.0.1:10002",
            "https://",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn atomic_writes_replace_and_protect() {
        use std::fs;
        let dir = std::env::temp_dir().join(format!("kubeedge-hub-atomic-{:x}", random_u64()));
        let path = dir.join("certs").join("server.key");
        write_atomic(&path, b"one", true).unwrap();
        write_atomic(&path, b"two", true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.join("certs")).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
