//! The cloud side: CloudCore's HTTPS certificate server (port 10002).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kubeedge_proto::NodeName;
use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::spent_tokens::SpentTokens;
use super::{
    CA_PATH, CERT_PATH, EXT_KEY_USAGES_HEADER, NODE_NAME_HEADER, NODE_PATH_PREFIX, pem_certs,
    pem_key, provider, signature_algorithms,
};
use crate::connections::{Admitted, Connections, Refusal};
use crate::join::{
    CertificateAuthority, DEFAULT_EDGE_CERT_VALIDITY_DAYS, ExtKeyUsage, MAX_CSR_LEN, Token,
};
use crate::limit_log::LimitLog;
use crate::{Error, Result};

/// At most one warning per limit this often.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether a node exists, for `GET /node/{nodename}` (CloudCore asks the Kubernetes API).
pub type NodeExists = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The most a request body over the limit is read (and thrown away) so that the client still
/// gets its 413: closing a socket with unread data makes TCP reset it, and the client may lose
/// the answer. Larger bodies are answered without being read, and the connection closed.
const DRAIN_LIMIT: u64 = 2 * MAX_CSR_LEN as u64;

/// The largest request head (request line and headers).
const MAX_HEADER_LEN: usize = 64 * 1024;

/// The most headers a request may have.
const MAX_HEADERS: usize = 64;

/// The configuration of a [`BootstrapServer`].
#[derive(Clone)]
pub struct BootstrapConfig {
    /// Where to listen (KubeEdge: `0.0.0.0:10002`).
    pub listen: SocketAddr,
    /// The cluster CA: signs the certificates, checks tokens and client certificates.
    pub ca: Arc<CertificateAuthority>,
    /// TLS: the cloud's certificate, client certificates requested but optional. Build it with
    /// [`server_tls_config`]; a configuration that requires client certificates shuts out nodes
    /// joining with a token, and one whose verifier checks them makes a foreign certificate a
    /// handshake failure instead of a 401.
    pub tls: Arc<ServerConfig>,
    /// Answers `GET /node/{nodename}`. By default no node exists.
    pub node_exists: NodeExists,
    /// The validity of the certificates issued, in days (`edgeCertSigningDuration`, default
    /// 365).
    pub cert_validity_days: u32,
    /// A connection must finish its TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// A request's line and headers must arrive within this time from when the server starts
    /// waiting for them (so it is also how long an idle keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// A request (its headers excluded) must be read and answered within this time; a slower
    /// one is answered 408 and its connection closed.
    pub request_timeout: Duration,
    /// The longest a connection is kept, however busy.
    pub connection_timeout: Duration,
    /// The most connections served at once. When all are taken, a new connection closes the
    /// oldest idle one (in its TLS handshake or waiting for a request), so silent connections
    /// cannot keep honest nodes out; if every connection is busy with a request, the new one is
    /// closed.
    pub max_connections: usize,
    /// The most connections one source address holds; more are closed at once.
    pub max_connections_per_source: usize,
    /// Where single-use tokens are recorded as spent ([`SpentTokenFile`](super::SpentTokenFile) beside the CA).
    /// Without one, single-use tokens are refused (a token that may be replayed is not
    /// single-use).
    pub spent_tokens: Option<Arc<dyn SpentTokens>>,
}

impl fmt::Debug for BootstrapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapConfig")
            .field("listen", &self.listen)
            .field("ca", &self.ca)
            .field("cert_validity_days", &self.cert_validity_days)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .field("spent_tokens", &self.spent_tokens)
            .finish_non_exhaustive()
    }
}

impl BootstrapConfig {
    /// The defaults on `listen`: the CA `ca`, the server certificate and key `cert_pem` and
    /// `key_pem` (see [`server_tls_config`]), no node exists, certificates valid 365 days, 5 s
    /// for a TLS handshake and for request headers, 30 s for a request, 2 min for a connection,
    /// 1024 connections, 64 from one source address, no record of single-use tokens.
    pub fn new(
        listen: SocketAddr,
        ca: Arc<CertificateAuthority>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self> {
        Ok(Self {
            listen,
            ca,
            tls: server_tls_config(cert_pem, key_pem)?,
            node_exists: Arc::new(|_: &str| false),
            cert_validity_days: DEFAULT_EDGE_CERT_VALIDITY_DAYS,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(120),
            max_connections: 1024,
            max_connections_per_source: 64,
            spent_tokens: None,
        })
    }
}

/// The TLS configuration of the certificate server: TLS 1.2 and 1.3 with the server's
/// certificate chain `cert_pem` and key `key_pem`, HTTP/1.1 by ALPN, and client certificates
/// requested but optional and not checked during the handshake, as Go's `RequestClientCert`
/// (the handshake still proves the client holds the certificate's key).
///
/// A presented certificate is checked by `/edge.crt` itself
/// ([`CertificateAuthority::authorize_client_cert`]), so that a certificate from another CA
/// or for another node gets a 401 as in KubeEdge, not a TLS alert.
pub fn server_tls_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    let certs = pem_certs(cert_pem, "server certificate").map_err(Error::TlsConfig)?;
    let key = pem_key(key_pem).map_err(Error::TlsConfig)?;
    let verifier = Arc::new(RequestClientCert {
        algorithms: signature_algorithms(),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| Error::TlsConfig(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Go's `tls.RequestClientCert`: asks for a certificate, takes any (or none), and verifies only
/// the handshake signature made with its key.
#[derive(Debug)]
struct RequestClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // As Go without ClientCAs: no hints, so a client sends whatever certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        // Checked per request by `/edge.crt`; the other routes do not care.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// CloudCore's HTTPS server for node join: `GET /ca.crt`, `GET /edge.crt`,
/// `GET /node/{nodename}`.
///
/// Each connection is served by its own task with its own deadlines (see
/// [`BootstrapConfig`]); a client that stalls, sends garbage or disconnects affects only its own
/// connection.
pub struct BootstrapServer {
    config: Arc<BootstrapConfig>,
    listener: TcpListener,
}

impl fmt::Debug for BootstrapServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapServer")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl BootstrapServer {
    /// Binds the listener.
    pub async fn bind(config: BootstrapConfig) -> Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            config: Arc::new(config),
            listener,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets requests in progress
    /// finish (each within its deadline) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config.tls));
        let table = Connections::new(
            self.config.max_connections,
            self.config.max_connections_per_source,
        );
        let (per_source_log, full_log, eviction_log) = (
            LimitLog::new(LIMIT_LOG_EVERY),
            LimitLog::new(LIMIT_LOG_EVERY),
            LimitLog::new(LIMIT_LOG_EVERY),
        );
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %e, "bootstrap server: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admitted = match table.admit(peer.ip()) {
                Ok((admitted, evicted)) => {
                    if evicted && let Some(unlogged) = eviction_log.hit() {
                        tracing::warn!(%peer, max_connections = self.config.max_connections,
                            earlier = unlogged,
                            "bootstrap server: connection limit reached; the oldest idle connection was closed");
                    }
                    admitted
                }
                Err(refusal) => {
                    let (log, limit) = match refusal {
                        Refusal::PerSource => {
                            (&per_source_log, self.config.max_connections_per_source)
                        }
                        Refusal::Full => (&full_log, self.config.max_connections),
                    };
                    if let Some(unlogged) = log.hit() {
                        tracing::warn!(%peer, limit, earlier = unlogged, reason = ?refusal,
                            "bootstrap server: connection refused");
                    }
                    drop(tcp);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                config: Arc::clone(&self.config),
                acceptor: acceptor.clone(),
                peer,
                shutdown: shutdown.child_token(),
                admitted: Arc::new(admitted),
            };
            connections.spawn(conn.serve(tcp));
        }
        drop(self.listener);
        // Connections see the cancellation and close once their request is answered; the
        // deadline is a backstop (dropping the set aborts what is left).
        let grace = self.config.request_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        Ok(())
    }
}

/// One client connection.
struct Connection {
    config: Arc<BootstrapConfig>,
    acceptor: TlsAcceptor,
    peer: SocketAddr,
    shutdown: CancellationToken,
    /// Its place in the connection table (idle or busy, evicted to make room).
    admitted: Arc<Admitted>,
}

impl Connection {
    async fn serve(self, tcp: TcpStream) {
        let config = Arc::clone(&self.config);
        let peer = self.peer;
        let deadline = tokio::time::Instant::now() + config.connection_timeout;
        let handshake = tokio::time::timeout(config.handshake_timeout, self.acceptor.accept(tcp));
        let evicted = self.admitted.evicted.clone();
        let tls = tokio::select! {
            () = self.shutdown.cancelled() => return,
            () = evicted.cancelled() => {
                tracing::debug!(%peer, "bootstrap server: idle connection closed to make room");
                return;
            }
            result = handshake => match result {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "bootstrap server: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "bootstrap server: TLS handshake timed out");
                    return;
                }
            },
        };
        let peer_cert: Option<Arc<[u8]>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| Arc::from(cert.as_ref()));

        let service_config = Arc::clone(&config);
        let admitted = Arc::clone(&self.admitted);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let config = Arc::clone(&service_config);
            let peer_cert = peer_cert.clone();
            let admitted = Arc::clone(&admitted);
            async move {
                admitted.busy();
                let answer = tokio::time::timeout(
                    config.request_timeout,
                    handle(&config, peer_cert.as_deref(), peer, req),
                )
                .await;
                admitted.idle();
                Ok::<_, Infallible>(answer.unwrap_or_else(|_| {
                    tracing::info!(%peer, "bootstrap server: request timed out");
                    closing(text(StatusCode::REQUEST_TIMEOUT, "request timed out"))
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_header_size(MAX_HEADER_LEN)
            .max_headers(MAX_HEADERS)
            .keep_alive(true);
        let mut conn = pin!(builder.serve_connection(TokioIo::new(tls), service));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "bootstrap server: connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::debug!(%peer, "bootstrap server: connection deadline reached");
            }
            () = evicted.cancelled() => {
                tracing::debug!(%peer, "bootstrap server: idle connection closed to make room");
            }
            () = self.shutdown.cancelled() => {}
        }
        // Finish the request in progress, if any, then close.
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(config.request_timeout, conn).await;
    }
}

type Answer = Response<Full<Bytes>>;

/// A plain-text answer, as KubeEdge's.
fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body.into())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

/// A binary answer (a DER certificate).
fn der(body: Vec<u8>) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    answer
}

/// `answer`, with the connection closed after it.
fn closing(mut answer: Answer) -> Answer {
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

enum Route {
    Ca,
    EdgeCert,
    Node(String),
}

async fn handle(
    config: &BootstrapConfig,
    peer_cert: Option<&[u8]>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Answer {
    let path = req.uri().path();
    let route = match path {
        CA_PATH => Route::Ca,
        CERT_PATH => Route::EdgeCert,
        _ => match path.strip_prefix(NODE_PATH_PREFIX) {
            Some(name) if !name.is_empty() && !name.contains('/') => Route::Node(name.to_owned()),
            _ => return text(StatusCode::NOT_FOUND, "404: Page Not Found"),
        },
    };
    if req.method() != Method::GET {
        let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "405: Method Not Allowed");
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return answer;
    }
    match route {
        Route::Ca => der(config.ca.cert_der().to_vec()),
        Route::EdgeCert => edge_cert(config, peer_cert, peer, req).await,
        Route::Node(raw) => match percent_decode(&raw).map(NodeName::new) {
            Some(Ok(name)) => {
                if (config.node_exists)(name.as_str()) {
                    text(StatusCode::OK, "Node found")
                } else {
                    text(StatusCode::NOT_FOUND, "Node not found")
                }
            }
            _ => text(StatusCode::BAD_REQUEST, "invalid node name"),
        },
    }
}

/// `GET /edge.crt`: authorizes the request, reads the CSR from the body and signs it.
async fn edge_cert(
    config: &BootstrapConfig,
    peer_cert: Option<&[u8]>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Answer {
    let (parts, body) = req.into_parts();
    let node = match header_str(&parts.headers, NODE_NAME_HEADER) {
        Ok(Some(node)) => match NodeName::new(node) {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bootstrap server: invalid NodeName header");
                return text(StatusCode::BAD_REQUEST, format!("NodeName header: {e}"));
            }
        },
        Ok(None) => return text(StatusCode::BAD_REQUEST, "no NodeName header"),
        Err(()) => return text(StatusCode::BAD_REQUEST, "invalid NodeName header"),
    };
    let node_str = node.as_str();

    // Who asks: a node by its current certificate, or anyone with a token.
    let spend = match peer_cert {
        Some(cert) => {
            if let Err(e) = config.ca.authorize_client_cert(cert, node_str) {
                tracing::warn!(%peer, node = node_str, error = %e, "bootstrap server: client certificate refused");
                return text(
                    StatusCode::UNAUTHORIZED,
                    format!("failed to verify the certificate for edge node {node_str:?}: {e}"),
                );
            }
            None
        }
        None => {
            let authorization = match header_str(&parts.headers, header::AUTHORIZATION.as_str()) {
                Ok(Some(value)) if !value.is_empty() => value,
                Ok(_) => {
                    tracing::warn!(%peer, node = node_str, "bootstrap server: no token and no certificate");
                    return text(
                        StatusCode::UNAUTHORIZED,
                        "token validation failure, token is empty",
                    );
                }
                Err(()) => {
                    return text(
                        StatusCode::UNAUTHORIZED,
                        "token validation failure, invalid Authorization header",
                    );
                }
            };
            let claims = match Token::verify_authorization_header(
                authorization,
                &config.ca,
                SystemTime::now(),
            )
            .and_then(|claims| claims.check_node(&node).map(|()| claims))
            {
                Ok(claims) => claims,
                Err(e) => {
                    tracing::warn!(%peer, node = node_str, error = %e, "bootstrap server: token refused");
                    return text(
                        StatusCode::UNAUTHORIZED,
                        format!("token validation failure: {e}"),
                    );
                }
            };
            match claims.single_use_id {
                Some(id) if config.spent_tokens.is_none() => {
                    tracing::warn!(%peer, node = node_str, token = %id,
                        "bootstrap server: single-use token refused: no record of spent tokens is configured");
                    return text(
                        StatusCode::UNAUTHORIZED,
                        "token validation failure: this server accepts no single-use tokens",
                    );
                }
                Some(id) => Some((id, claims.expires)),
                None => None,
            }
        }
    };

    // Only client authentication is issued, whatever is asked (KubeEdge's edgecore never asks).
    match header_str(&parts.headers, EXT_KEY_USAGES_HEADER) {
        Ok(None) => {}
        Ok(Some(value)) => match ExtKeyUsage::parse_header(value) {
            Ok(usages) if usages == [ExtKeyUsage::ClientAuth] || usages.is_empty() => {}
            Ok(usages) => {
                tracing::warn!(%peer, node = node_str, ?usages, "bootstrap server: extended key usages refused");
                return text(
                    StatusCode::BAD_REQUEST,
                    "a node certificate is for client authentication only (ExtKeyUsages [2])",
                );
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        },
        Err(()) => return text(StatusCode::BAD_REQUEST, "invalid ExtKeyUsages header"),
    }

    let csr = match read_body(body, MAX_CSR_LEN).await {
        Ok(csr) => csr,
        Err(BodyError::TooLarge { drained }) => {
            tracing::warn!(%peer, node = node_str, "bootstrap server: CSR too large");
            let answer = text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the CSR is larger than {MAX_CSR_LEN} bytes"),
            );
            return if drained { answer } else { closing(answer) };
        }
        Err(BodyError::Read(e)) => {
            return closing(text(
                StatusCode::BAD_REQUEST,
                format!("failed to read the request body: {e}"),
            ));
        }
    };

    // Checked before a single-use token is spent, so that a bad CSR does not burn it.
    if let Err(e) = config.ca.check_node_csr(&csr, &node) {
        tracing::warn!(%peer, node = node_str, error = %e, "bootstrap server: CSR refused");
        return text(
            status_of(&e),
            format!("failed to sign certs for edge node {node_str:?}: {e}"),
        );
    }
    let renewal = spend.is_none() && peer_cert.is_some();
    if let Some((id, expires)) = spend
        && let Some(ledger) = &config.spent_tokens
    {
        match ledger.spend(&id, expires) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%peer, node = node_str, token = %id, "bootstrap server: single-use token used again");
                return text(
                    StatusCode::UNAUTHORIZED,
                    format!("token validation failure: {}", Error::TokenSpent),
                );
            }
            Err(e) => {
                tracing::warn!(%peer, node = node_str, error = %e, "bootstrap server: single-use token not recorded");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("token validation failure: {e}"),
                );
            }
        }
    }

    match config
        .ca
        .sign_node_csr(&csr, &node, config.cert_validity_days)
    {
        Ok(cert) => {
            tracing::info!(%peer, node = node_str, renewal, "bootstrap server: certificate issued");
            der(cert)
        }
        Err(e) => {
            tracing::warn!(%peer, node = node_str, error = %e, "bootstrap server: signing failed");
            text(
                status_of(&e),
                format!("failed to sign certs for edge node {node_str:?}: {e}"),
            )
        }
    }
}

/// The status of a signing failure: the server's fault or the request's.
fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::Generation(_) | Error::TimeOutOfRange(_) => StatusCode::INTERNAL_SERVER_ERROR,
        // Authenticated, but asking for another identity.
        Error::CsrWrongSubject { .. } => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A header's value as text: `Ok(None)` if absent, `Err` if not visible ASCII.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> std::result::Result<Option<&'a str>, ()> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| ()),
    }
}

enum BodyError {
    /// Over the limit; `drained` if the rest was read, so the connection can be kept.
    TooLarge { drained: bool },
    /// The client broke off or sent a malformed body.
    Read(String),
}

/// Reads the whole body if it is at most `max` bytes.
async fn read_body(mut body: Incoming, max: usize) -> std::result::Result<Bytes, BodyError> {
    let max_len = max as u64;
    let declared = body.size_hint().exact();
    if let Some(len) = declared
        && len > max_len
    {
        let drained = len <= DRAIN_LIMIT && drain(body, DRAIN_LIMIT).await;
        return Err(BodyError::TooLarge { drained });
    }
    let capacity = declared.unwrap_or(0).min(max_len) as usize;
    let mut buf = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                let read = (buf.len() + data.len()) as u64;
                let drained = drain(body, DRAIN_LIMIT.saturating_sub(read)).await;
                return Err(BodyError::TooLarge { drained });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Reads and discards the rest of `body`; true if it ended within `limit` bytes.
async fn drain(mut body: Incoming, limit: u64) -> bool {
    let mut read: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        if let Ok(data) = frame.into_data() {
            read += data.len() as u64;
            if read > limit {
                return false;
            }
        }
    }
    true
}

/// Decodes `%XX` escapes; `None` if an escape is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("edge-1").as_deref(), Some("edge-1"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
