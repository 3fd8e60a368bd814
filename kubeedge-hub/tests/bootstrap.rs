//! Node join over HTTPS: the certificate server and the edge's bootstrap against it, over real
//! TLS on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kubeedge_hub::Error;
use kubeedge_hub::bootstrap::{
    BootstrapConfig, BootstrapServer, EdgeBootstrap, EdgeCredentials, SpentTokenFile, renew_at,
};
use kubeedge_hub::join::{
    CertificateAuthority, EdgeCsr, ExtKeyUsage, MAX_CSR_LEN, Token, TokenScope,
};
use kubeedge_hub::tls;
use kubeedge_proto::NodeName;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// Deadline for anything a test waits for; a hung test fails here instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {DEADLINE:?}"))
}

/// A running certificate server and its CA.
struct Cloud {
    ca: Arc<CertificateAuthority>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<kubeedge_hub::Result<()>>>,
}

impl Cloud {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut BootstrapConfig)) -> Self {
        Self::start_on(Arc::new(CertificateAuthority::generate().unwrap()), tweak).await
    }

    /// A server with the CA `ca` (a restarted cloud, another replica).
    async fn start_on(
        ca: Arc<CertificateAuthority>,
        tweak: impl FnOnce(&mut BootstrapConfig),
    ) -> Self {
        let server_cert = ca
            .issue_server_cert(&["127.0.0.1".parse().unwrap()], &[] as &[&str])
            .unwrap();
        let mut config = BootstrapConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&ca),
            server_cert.cert_pem.as_bytes(),
            server_cert.key_pem.as_bytes(),
        )
        .unwrap();
        tweak(&mut config);
        let server = BootstrapServer::bind(config).await.unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            ca,
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// A join client for `node` with this cloud's address and token, keeping its files in
    /// `dir`.
    fn join_client(&self, node: &str, dir: impl AsRef<Path>) -> EdgeBootstrap {
        let node = NodeName::new(node).unwrap();
        EdgeBootstrap::new(self.url(), self.token(), node, dir.as_ref())
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn token(&self) -> String {
        Token::issue(&self.ca, DAY, SystemTime::now())
    }

    fn bearer(&self) -> String {
        let token = self.token();
        let (_, jwt) = token.split_once('.').unwrap();
        format!("Bearer {jwt}")
    }

    /// A client configuration that trusts the CA and presents no certificate.
    fn anonymous_tls(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.cert_der().to_vec()))
            .unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// Credentials for `node` signed by this cloud's CA, valid from `start`.
    fn credentials_at(&self, node: &str, start: SystemTime) -> EdgeCredentials {
        credentials_from(&self.ca, self.ca.cert_der(), node, start)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within("server shutdown", task).await.unwrap().unwrap();
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Credentials for `node` whose certificate `signer` issued, saved with the CA `ca_der`.
fn credentials_from(
    signer: &CertificateAuthority,
    ca_der: &[u8],
    node: &str,
    start: SystemTime,
) -> EdgeCredentials {
    let csr = EdgeCsr::new(node).unwrap();
    let cert = signer
        .sign_edge_csr_at(&csr.csr_der, ExtKeyUsage::DEFAULT, 365, start)
        .unwrap();
    EdgeCredentials::from_der(ca_der, &cert, &csr.key_der).unwrap()
}

/// A directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "kubeedge-bootstrap-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request on a new TLS connection; the status and body of the answer.
async fn raw_request<B>(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: B,
) -> (StatusCode, Vec<u8>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    within("raw request", async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream = TlsConnector::from(tls)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("Host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        driver.abort();
        (status, body.to_vec())
    })
    .await
}

async fn get(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    raw_request(
        addr,
        tls,
        Method::GET,
        path,
        headers,
        Full::new(Bytes::from(body)),
    )
    .await
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn assert_status(result: Result<EdgeCredentials, Error>, expected: u16) -> String {
    match result {
        Err(Error::Status { path, status, body }) => {
            assert_eq!(path, "/edge.crt");
            assert_eq!(status, expected, "{body}");
            body
        }
        other => panic!("expected a {expected} answer, got {other:?}"),
    }
}

#[tokio::test]
async fn join_writes_the_files_and_the_certificate_authenticates_the_node() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let edge = cloud.join_client("edge-1", dir.path());
    assert!(edge.load().unwrap().is_none());

    let credentials = within("join", edge.bootstrap()).await.unwrap();

    // The files, in KubeEdge's layout and formats.
    let ca_file = std::fs::read_to_string(dir.file("ca/rootCA.crt")).unwrap();
    let cert_file = std::fs::read_to_string(dir.file("certs/server.crt")).unwrap();
    let key_file = std::fs::read_to_string(dir.file("certs/server.key")).unwrap();
    assert_eq!(ca_file, cloud.ca.cert_pem());
    assert_eq!(ca_file, credentials.ca_pem());
    assert_eq!(cert_file, credentials.cert_pem());
    assert_eq!(key_file, credentials.key_pem());
    assert!(cert_file.starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(key_file.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.file("certs/server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.file("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    // The cloud accepts the certificate for this node, and only this node.
    cloud
        .ca
        .authorize_client_cert(credentials.cert_der(), "edge-1")
        .unwrap();
    assert!(matches!(
        cloud
            .ca
            .authorize_client_cert(credentials.cert_der(), "edge-2"),
        Err(Error::ClientCertWrongNode { .. })
    ));
    assert_eq!(
        tls::node_of_certificate(credentials.cert_der()).unwrap(),
        "edge-1"
    );
    // Valid for the default 365 days.
    let lifetime = credentials
        .not_after()
        .duration_since(credentials.not_before())
        .unwrap();
    assert_eq!(lifetime, 365 * DAY);

    // The EdgeHub's TLS configuration built from the files passes a server that requires client
    // certificates from the CA (as CloudHub's).
    let hub_cert = cloud
        .ca
        .issue_server_cert(&["127.0.0.1".parse().unwrap()], &[] as &[&str])
        .unwrap();
    let hub_tls = tls::server_config(
        hub_cert.cert_pem.as_bytes(),
        hub_cert.key_pem.as_bytes(),
        cloud.ca.cert_pem().as_bytes(),
    )
    .unwrap();
    let edge_tls = tls::client_config(
        ca_file.as_bytes(),
        cert_file.as_bytes(),
        key_file.as_bytes(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_addr = listener.local_addr().unwrap();
    let hub = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut stream = TlsAcceptor::from(hub_tls).accept(tcp).await.unwrap();
        let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        stream.write_all(b"ok").await.unwrap();
        stream.shutdown().await.unwrap();
        tls::node_of_certificate(&cert).unwrap()
    });
    let tcp = TcpStream::connect(hub_addr).await.unwrap();
    let mut stream = within(
        "EdgeHub TLS handshake",
        TlsConnector::from(edge_tls).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp),
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    within("EdgeHub read", stream.read_to_end(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, b"ok");
    assert_eq!(within("hub", hub).await.unwrap(), "edge-1");
    // credentials.client_config() is the same thing.
    credentials.client_config().unwrap();

    // What is on disk is what load() finds.
    assert_eq!(edge.load().unwrap().unwrap(), credentials);
    cloud.stop().await;
}

#[tokio::test]
async fn a_restarted_edge_reuses_its_files_without_a_token() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let first = cloud.join_client("edge-1", dir.path());
    let joined = within("join", first.bootstrap()).await.unwrap();
    // The cloud is gone and the token is garbage: the files alone must do.
    cloud.stop().await;

    let restarted = EdgeBootstrap::new(
        "https://127.0.0.1:9",
        "not.a.valid.token",
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );
    let reused = within("restart", restarted.bootstrap()).await.unwrap();
    assert_eq!(reused, joined);

    // Files for another node are not reused, and not replaced either: the config is wrong.
    let other = EdgeBootstrap::new(
        "https://127.0.0.1:9",
        "",
        NodeName::new("edge-2").unwrap(),
        dir.path(),
    );
    assert!(matches!(
        other.load(),
        Err(Error::IdentityMismatch { certificate, configured, .. })
            if certificate == "edge-1" && configured == "edge-2"
    ));
    assert!(matches!(
        within("other node", other.bootstrap()).await,
        Err(Error::IdentityMismatch { .. })
    ));
    assert_eq!(other.load().ok(), None);
    assert_eq!(restarted.load().unwrap().unwrap(), joined);
}

/// The certificate and key files as they are on disk.
fn files_of(dir: &TempDir) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.file("certs/server.crt")).unwrap(),
        std::fs::read(dir.file("certs/server.key")).unwrap(),
    )
}

#[tokio::test]
async fn a_node_keeps_its_identity_whatever_its_config_says() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let edge = cloud.join_client("edge-1", dir.path());
    within("join", edge.bootstrap()).await.unwrap();
    let joined = files_of(&dir);
    assert_eq!(
        edge.paths.certificate_node().unwrap().as_deref(),
        Some("edge-1")
    );

    // A config naming another node (a truncated file fell back to the host name), with a
    // valid token: edgecore stops with the reason; the key and certificate stay.
    let misnamed = cloud.join_client("vm", dir.path());
    let e = within("misnamed", misnamed.bootstrap()).await.unwrap_err();
    assert!(
        matches!(&e, Error::IdentityMismatch { certificate, configured, .. }
            if certificate == "edge-1" && configured == "vm"),
        "{e}"
    );
    assert!(e.to_string().contains("edgecore join"), "{e}");
    assert_eq!(files_of(&dir), joined);

    // A key that does not belong to the certificate: an error, nothing replaced.
    let stranger = EdgeCsr::new("edge-1").unwrap();
    std::fs::write(dir.file("certs/server.key"), &stranger.key_pem).unwrap();
    let damaged = files_of(&dir);
    assert!(matches!(
        within("damaged", edge.bootstrap()).await,
        Err(Error::IdentityUnusable { .. })
    ));
    assert_eq!(files_of(&dir), damaged);
    // A missing CA file: incomplete, nothing replaced.
    std::fs::write(dir.file("certs/server.key"), &joined.1).unwrap();
    std::fs::remove_file(dir.file("ca/rootCA.crt")).unwrap();
    assert!(matches!(
        within("incomplete", edge.bootstrap()).await,
        Err(Error::IdentityUnusable { reason, .. }) if reason.contains("rootCA.crt")
    ));
    assert_eq!(files_of(&dir), joined);

    // An explicit join (edgecore join) replaces them.
    let second = within("explicit join", edge.join()).await.unwrap();
    assert_ne!(second.cert_pem().as_bytes(), joined.0.as_slice());
    assert_eq!(edge.load().unwrap().unwrap(), second);
    cloud.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_of_the_same_node_is_replaced_with_the_token() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let edge = cloud.join_client("edge-1", dir.path());
    within("join", edge.bootstrap()).await.unwrap();
    let old = cloud.credentials_at("edge-1", SystemTime::now() - 400 * DAY);
    std::fs::write(dir.file("certs/server.crt"), old.cert_pem()).unwrap();
    std::fs::write(dir.file("certs/server.key"), old.key_pem()).unwrap();
    assert!(matches!(edge.load(), Err(Error::Certificate(_))));
    let renewed = within("rejoin", edge.bootstrap()).await.unwrap();
    assert!(renewed.not_after() > SystemTime::now());
    assert_eq!(
        edge.paths.certificate_node().unwrap().as_deref(),
        Some("edge-1")
    );
    cloud.stop().await;
}

/// A server that answers `/ca.crt` with `ca_der` and counts every other request.
async fn fake_ca_server(
    ca: &CertificateAuthority,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let cert = ca
        .issue_server_cert(&["127.0.0.1".parse().unwrap()], &[] as &[&str])
        .unwrap();
    let config: Arc<ServerConfig> = Arc::new(
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.cert_der.clone())],
                rustls::pki_types::PrivateKeyDer::try_from(cert.key_der.clone()).unwrap(),
            )
            .unwrap(),
    );
    let ca_der = Bytes::from(ca.cert_der().to_vec());
    let ca_requests = Arc::new(AtomicUsize::new(0));
    let other_requests = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ca_count, other_count) = (Arc::clone(&ca_requests), Arc::clone(&other_requests));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = TlsAcceptor::from(Arc::clone(&config));
            let (ca_der, ca_count, other_count) = (
                ca_der.clone(),
                Arc::clone(&ca_count),
                Arc::clone(&other_count),
            );
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = if req.uri().path() == "/ca.crt" {
                        ca_count.fetch_add(1, Ordering::SeqCst);
                        ca_der.clone()
                    } else {
                        other_count.fetch_add(1, Ordering::SeqCst);
                        Bytes::new()
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, ca_requests, other_requests)
}

#[tokio::test]
async fn a_token_for_another_ca_is_refused_before_any_csr_is_sent() {
    let ca = CertificateAuthority::generate().unwrap();
    let other_ca = CertificateAuthority::generate().unwrap();
    let (addr, ca_requests, other_requests) = fake_ca_server(&ca).await;
    let dir = TempDir::new();
    let token = Token::issue(&other_ca, DAY, SystemTime::now());
    let edge = EdgeBootstrap::new(
        format!("https://{addr}"),
        token,
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );

    let result = within("join", edge.bootstrap()).await;
    match result {
        Err(Error::TokenCaHashMismatch { expected, found }) => {
            assert_eq!(expected, ca.ca_hash());
            assert_eq!(found, other_ca.ca_hash());
        }
        other => panic!("expected a CA hash mismatch, got {other:?}"),
    }
    assert_eq!(ca_requests.load(Ordering::SeqCst), 1);
    assert_eq!(other_requests.load(Ordering::SeqCst), 0);
    assert!(!dir.file("ca/rootCA.crt").exists());
    assert!(!dir.file("certs/server.crt").exists());

    // A malformed token does not even reach the network.
    let edge = EdgeBootstrap::new(
        format!("https://{addr}"),
        "abc.def",
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );
    assert!(matches!(
        within("join", edge.join()).await,
        Err(Error::TokenMalformed(_))
    ));
    assert_eq!(ca_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_expired_token_gets_401() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let expired = Token::issue(&cloud.ca, DAY, SystemTime::now() - 2 * DAY);
    let edge = EdgeBootstrap::new(
        cloud.url(),
        expired,
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );
    let body = assert_status(within("join", edge.bootstrap()).await, 401);
    assert!(body.contains("expired"), "{body}");
    assert!(!dir.file("certs/server.crt").exists());

    // No token and no certificate at all.
    let (status, body) = get(
        cloud.addr,
        cloud.anonymous_tls(),
        "/edge.crt",
        &[("NodeName", "edge-1")],
        EdgeCsr::new("edge-1").unwrap().csr_der,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", text(&body));
    // A token signed with another CA's key.
    let other_ca = CertificateAuthority::generate().unwrap();
    let forged = Token::issue(&other_ca, DAY, SystemTime::now());
    let forged = format!("Bearer {}", forged.split_once('.').unwrap().1);
    let (status, _) = get(
        cloud.addr,
        cloud.anonymous_tls(),
        "/edge.crt",
        &[("NodeName", "edge-1"), ("Authorization", &forged)],
        EdgeCsr::new("edge-1").unwrap().csr_der,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    cloud.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_gets_401() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let other_ca = CertificateAuthority::generate().unwrap();
    // The right CA to verify the cloud with, but a node certificate from another CA.
    let foreign = credentials_from(&other_ca, cloud.ca.cert_der(), "edge-1", SystemTime::now());
    let edge = EdgeBootstrap::new(
        cloud.url(),
        "",
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );
    let body = assert_status(within("renew", edge.renew(&foreign)).await, 401);
    assert!(body.contains("certificate"), "{body}");
    assert!(!dir.file("certs/server.crt").exists());

    // A client certificate wins over a token, as in KubeEdge: a valid token does not help.
    let (status, _) = get(
        cloud.addr,
        foreign.client_config().unwrap(),
        "/edge.crt",
        &[("NodeName", "edge-1"), ("Authorization", &cloud.bearer())],
        EdgeCsr::new("edge-1").unwrap().csr_der,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    cloud.stop().await;
}

#[tokio::test]
async fn a_certificate_for_another_node_gets_401() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let edge_a = cloud.credentials_at("edge-a", SystemTime::now());
    let edge = EdgeBootstrap::new(
        cloud.url(),
        "",
        NodeName::new("edge-b").unwrap(),
        dir.path(),
    );
    assert_status(within("renew", edge.renew(&edge_a)).await, 401);

    // Nor may edge-a's certificate ask for a certificate for edge-b while naming itself.
    let (status, body) = get(
        cloud.addr,
        edge_a.client_config().unwrap(),
        "/edge.crt",
        &[("NodeName", "edge-a")],
        EdgeCsr::new("edge-b").unwrap().csr_der,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", text(&body));
    cloud.stop().await;
}

#[tokio::test]
async fn renewal_over_mutual_tls_needs_no_token_and_changes_the_key() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    let joined = within("join", cloud.join_client("edge-1", dir.path()).bootstrap())
        .await
        .unwrap();

    let edge = EdgeBootstrap::new(
        cloud.url(),
        "",
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );
    let renewed = within("renew", edge.renew(&joined)).await.unwrap();
    assert_ne!(renewed.key_pem(), joined.key_pem());
    assert_ne!(renewed.cert_der(), joined.cert_der());
    assert_eq!(renewed.ca_der(), joined.ca_der());
    cloud
        .ca
        .authorize_client_cert(renewed.cert_der(), "edge-1")
        .unwrap();
    // The files now hold the new certificate and key.
    assert_eq!(edge.load().unwrap().unwrap(), renewed);
    assert_eq!(
        std::fs::read_to_string(dir.file("certs/server.key")).unwrap(),
        renewed.key_pem()
    );

    // renew_at: 70 % to 90 % into the certificate's life.
    let start = renewed.not_before();
    let at = |jitter| {
        renew_at(renewed.cert_der(), jitter)
            .unwrap()
            .duration_since(start)
            .unwrap()
    };
    let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_secs(1);
    assert!(close(at(0.0), (365 * DAY).mul_f64(0.7)));
    assert!(close(at(1.0), (365 * DAY).mul_f64(0.9)));
    let middle = renewed.renew_at(0.5).duration_since(start).unwrap();
    assert!(close(middle, (365 * DAY).mul_f64(0.8)));
    cloud.stop().await;
}

#[tokio::test]
async fn rotation_renews_a_certificate_that_is_due() {
    let cloud = Cloud::start().await;
    let dir = TempDir::new();
    // Issued 360 days ago: due (70-90 % of 365 days) and still valid.
    let old = cloud.credentials_at("edge-1", SystemTime::now() - 360 * DAY);
    assert!(old.renew_at(1.0) < SystemTime::now());
    let (credentials, mut updates) = tokio::sync::watch::channel(old.clone());
    let edge = EdgeBootstrap::new(
        cloud.url(),
        "",
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );
    let shutdown = CancellationToken::new();
    let rotation = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { edge.rotate(credentials, shutdown).await }
    });
    within("rotation", updates.changed()).await.unwrap();
    let renewed = updates.borrow_and_update().clone();
    assert_ne!(renewed.key_pem(), old.key_pem());
    assert!(renewed.renew_at(0.0) > SystemTime::now());
    assert_eq!(
        std::fs::read_to_string(dir.file("certs/server.crt")).unwrap(),
        renewed.cert_pem()
    );
    shutdown.cancel();
    within("rotation stop", rotation).await.unwrap();
    cloud.stop().await;
}

#[tokio::test]
async fn oversized_csr_bodies_get_413() {
    let cloud = Cloud::start().await;
    let bearer = cloud.bearer();
    let headers = [("NodeName", "edge-1"), ("Authorization", bearer.as_str())];

    // With a Content-Length.
    let (status, body) = get(
        cloud.addr,
        cloud.anonymous_tls(),
        "/edge.crt",
        &headers,
        vec![0x30; MAX_CSR_LEN + 1],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", text(&body));

    // Chunked, without one (hyper sends a GET body only if told how).
    let mut chunked = headers.to_vec();
    chunked.push(("Transfer-Encoding", "chunked"));
    let chunks =
        (0..17).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![0x30; 64 * 1024]))));
    let (status, body) = raw_request(
        cloud.addr,
        cloud.anonymous_tls(),
        Method::GET,
        "/edge.crt",
        &chunked,
        StreamBody::new(futures_util::stream::iter(chunks)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", text(&body));

    // A CSR of exactly the limit is read (and refused as a CSR).
    let (status, _) = get(
        cloud.addr,
        cloud.anonymous_tls(),
        "/edge.crt",
        &headers,
        vec![0x30; MAX_CSR_LEN],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    cloud.stop().await;
}

#[tokio::test]
async fn garbage_csrs_and_headers_get_400() {
    let cloud = Cloud::start().await;
    let bearer = cloud.bearer();
    let csr = EdgeCsr::new("edge-1").unwrap().csr_der;
    let mut bad_signature = csr.clone();
    *bad_signature.last_mut().unwrap() ^= 1;
    // (ExtKeyUsages header, body)
    let cases = [
        (None, b"garbage".to_vec()),
        (None, Vec::new()),
        (None, bad_signature),
        (Some("not json"), csr.clone()),
        (Some("[99]"), csr.clone()),
    ];
    for (usages, body) in cases {
        let mut headers = vec![("NodeName", "edge-1"), ("Authorization", bearer.as_str())];
        if let Some(usages) = usages {
            headers.push(("ExtKeyUsages", usages));
        }
        let (status, answer) = get(
            cloud.addr,
            cloud.anonymous_tls(),
            "/edge.crt",
            &headers,
            body,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{usages:?}: {}",
            text(&answer)
        );
    }

    // The same request with a good CSR works with ExtKeyUsages [2] (client authentication, all
    // a node is given) or without the header.
    for usages in [Some("[2]"), None] {
        let mut headers = vec![("NodeName", "edge-1"), ("Authorization", bearer.as_str())];
        headers.extend(usages.map(|u| ("ExtKeyUsages", u)));
        let (status, cert) = get(
            cloud.addr,
            cloud.anonymous_tls(),
            "/edge.crt",
            &headers,
            csr.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{usages:?}: {}", text(&cert));
        let (_, cert) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
    }
    cloud.stop().await;
}

#[tokio::test]
async fn ca_and_node_routes() {
    let cloud = Cloud::start_with(|config| {
        config.node_exists = Arc::new(|node: &str| node == "edge-1");
    })
    .await;
    let tls = cloud.anonymous_tls();

    let (status, body) = get(cloud.addr, tls.clone(), "/ca.crt", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, cloud.ca.cert_der());

    let (status, body) = get(cloud.addr, tls.clone(), "/node/edge-1", &[], Vec::new()).await;
    assert_eq!(
        (status, text(&body).as_str()),
        (StatusCode::OK, "Node found")
    );
    let (status, body) = get(cloud.addr, tls.clone(), "/node/x", &[], Vec::new()).await;
    assert_eq!(
        (status, text(&body).as_str()),
        (StatusCode::NOT_FOUND, "Node not found")
    );
    let (status, _) = get(cloud.addr, tls.clone(), "/node/edge%2D1", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/",
        "/node/",
        "/node/a/b",
        "/ca.crt/x",
        "/edge.crts",
        "/nodeupgrade",
    ] {
        let (status, _) = get(cloud.addr, tls.clone(), path, &[], Vec::new()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = get(cloud.addr, tls.clone(), "/node/%zz", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = raw_request(
        cloud.addr,
        tls.clone(),
        Method::POST,
        "/ca.crt",
        &[],
        Full::new(Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // The edge's own CA download.
    let edge = EdgeBootstrap::new(
        cloud.url(),
        "",
        NodeName::new("edge-1").unwrap(),
        "/nonexistent",
    );
    assert_eq!(
        within("fetch_ca", edge.fetch_ca()).await.unwrap(),
        cloud.ca.cert_der()
    );
    cloud.stop().await;
}

/// Reads until the server closes the connection (EOF or an error); false on the deadline.
async fn closed_by_server(mut read: impl tokio::io::AsyncRead + Unpin) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn slow_and_broken_clients_are_cut_off_without_affecting_others() {
    let cloud = Cloud::start_with(|config| {
        // Short, but long enough for an honest client on a busy machine.
        config.handshake_timeout = Duration::from_secs(1);
        config.header_read_timeout = Duration::from_secs(1);
        config.request_timeout = Duration::from_secs(1);
        config.connection_timeout = Duration::from_secs(10);
    })
    .await;
    let addr = cloud.addr;

    // Connects and says nothing.
    let silent = TcpStream::connect(addr).await.unwrap();
    // Sends garbage instead of TLS.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01\x02")
        .await
        .unwrap();
    // Finishes TLS, then sends its headers a byte at a time, forever.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let dribbler = TlsConnector::from(cloud.anonymous_tls())
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (dribble_read, mut dribble_write) = tokio::io::split(dribbler);
    let dribbling = tokio::spawn(async move {
        let head = b"GET /ca.crt HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if dribble_write.write_all(&[*byte]).await.is_err()
                || dribble_write.flush().await.is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Sends its headers, promises a body and never sends it.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stalled = TlsConnector::from(cloud.anonymous_tls())
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let head = format!(
        "GET /edge.crt HTTP/1.1\r\nHost: 127.0.0.1\r\nNodeName: edge-1\r\n\
         Authorization: {}\r\nContent-Length: 100\r\n\r\nabc",
        cloud.bearer()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.flush().await.unwrap();

    // Meanwhile others are served.
    let (status, body) = get(addr, cloud.anonymous_tls(), "/ca.crt", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, cloud.ca.cert_der());

    // And every bad client is disconnected.
    assert!(closed_by_server(silent).await, "silent client kept");
    assert!(closed_by_server(garbage).await, "garbage client kept");
    assert!(
        closed_by_server(dribble_read).await,
        "dribbling client kept"
    );
    within("dribbler", dribbling).await.unwrap();
    let mut answer = Vec::new();
    let _ = within("stalled body", stalled.read_to_end(&mut answer)).await;
    assert!(
        text(&answer).starts_with("HTTP/1.1 408"),
        "{}",
        text(&answer)
    );

    // Still serving, and a join still works.
    let dir = TempDir::new();
    within(
        "join after abuse",
        cloud.join_client("edge-1", dir.path()).bootstrap(),
    )
    .await
    .unwrap();
    cloud.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let cloud = Cloud::start_with(|config| {
        config.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let tcp = TcpStream::connect(cloud.addr).await.unwrap();
    let mut stream = TlsConnector::from(cloud.anonymous_tls())
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    stream
        .write_all(b"GET /node/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    // The answer comes, then the idle connection is closed.
    let mut answer = Vec::new();
    let _ = within("idle close", stream.read_to_end(&mut answer)).await;
    let answer = text(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.ends_with("Node not found"), "{answer}");
    cloud.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Hostile joins: a token buys only the certificate of the node it is presented for.

/// A CSR for `subject` (organization, common name) with DNS SANs `sans`, for a fresh key.
fn custom_csr(organization: &str, common_name: &str, sans: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, organization);
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// The organizations and common name of a certificate, its SAN count and its EKUs.
fn subject_of(der: &[u8]) -> (Vec<String>, String, usize, bool, bool) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let organizations = cert
        .subject()
        .iter_organization()
        .map(|o| o.as_str().unwrap().to_owned())
        .collect();
    let common_name = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(",");
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map_or(0, |san| san.value.general_names.len());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    (
        organizations,
        common_name,
        sans,
        eku.client_auth,
        eku.server_auth,
    )
}

/// A join token for `node` only, optionally single-use, as `cloudcore gettoken --node` makes.
fn scoped_token(cloud: &Cloud, node: Option<&str>, single_use: bool) -> String {
    let scope = TokenScope {
        node: node.map(|n| NodeName::new(n).unwrap()),
        single_use,
    };
    Token::issue_with(&cloud.ca, DAY, SystemTime::now(), &scope).unwrap()
}

fn bearer_of(token: &str) -> String {
    format!("Bearer {}", token.split_once('.').unwrap().1)
}

#[tokio::test]
async fn a_token_buys_only_the_certificate_of_the_node_it_names() {
    let cloud = Cloud::start().await;
    let bearer = cloud.bearer();
    let hostile = async {
        // (NodeName header, CSR, expected status)
        let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
            // Another node's identity, asked while naming edge-1.
            (
                "edge-1",
                EdgeCsr::new("edge-2").unwrap().csr_der,
                StatusCode::FORBIDDEN,
            ),
            // The cluster's administrators.
            (
                "edge-1",
                custom_csr("system:masters", "admin", &[]),
                StatusCode::FORBIDDEN,
            ),
            // KubeEdge's legacy identity, which its cloud accepts for any node.
            (
                "edge-1",
                custom_csr("KubeEdge", "kubeedge.io", &[]),
                StatusCode::FORBIDDEN,
            ),
            // The right subject with a second organization.
            (
                "edge-1",
                custom_csr("system:masters", "system:node:edge-1", &[]),
                StatusCode::FORBIDDEN,
            ),
            // The right subject with SANs (a server name for a client certificate).
            (
                "edge-1",
                custom_csr("system:nodes", "system:node:edge-1", &["cloudcore.example"]),
                StatusCode::BAD_REQUEST,
            ),
            // Names that are no node names.
            (
                "Edge_1",
                EdgeCsr::new("edge-1").unwrap().csr_der,
                StatusCode::BAD_REQUEST,
            ),
            (
                "system:node:edge-1",
                EdgeCsr::new("edge-1").unwrap().csr_der,
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (node, csr, expected) in cases {
            let (status, body) = get(
                cloud.addr,
                cloud.anonymous_tls(),
                "/edge.crt",
                &[("NodeName", node), ("Authorization", bearer.as_str())],
                csr,
            )
            .await;
            assert_eq!(status, expected, "{node}: {}", text(&body));
        }
        // A server-auth certificate is not issued either.
        let (status, body) = get(
            cloud.addr,
            cloud.anonymous_tls(),
            "/edge.crt",
            &[
                ("NodeName", "edge-1"),
                ("Authorization", bearer.as_str()),
                ("ExtKeyUsages", "[1]"),
            ],
            EdgeCsr::new("edge-1").unwrap().csr_der,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", text(&body));
    };
    // An honest node joins while the hostile requests go on.
    let dir = TempDir::new();
    let honest = cloud.join_client("edge-3", dir.path());
    let ((), joined) = within("joins", async { tokio::join!(hostile, honest.join()) }).await;
    let joined = joined.unwrap();
    assert_eq!(
        subject_of(joined.cert_der()),
        (
            vec!["system:nodes".to_owned()],
            "system:node:edge-3".to_owned(),
            0,
            true,
            false
        )
    );
    cloud.stop().await;
}

#[tokio::test]
async fn node_scoped_and_single_use_tokens() {
    let dir = TempDir::new();
    let ledger = dir.file("spent-tokens");
    let cloud = {
        let ledger = ledger.clone();
        Cloud::start_with(move |config| {
            config.spent_tokens = Some(Arc::new(SpentTokenFile::new(ledger)));
        })
        .await
    };
    let join = |token: &str, node: &str| {
        let dir = TempDir::new();
        let edge = EdgeBootstrap::new(cloud.url(), token, NodeName::new(node).unwrap(), dir.path());
        async move { within("join", edge.join()).await }
    };

    // A token for edge-1 joins edge-1, any number of times, and nothing else.
    let for_edge_1 = scoped_token(&cloud, Some("edge-1"), false);
    let body = assert_status(join(&for_edge_1, "edge-2").await, 401);
    assert!(body.contains("the token is for node \"edge-1\""), "{body}");
    join(&for_edge_1, "edge-1").await.unwrap();
    join(&for_edge_1, "edge-1").await.unwrap();

    // A single-use token joins once.
    let once = scoped_token(&cloud, Some("edge-4"), true);
    join(&once, "edge-4").await.unwrap();
    let body = assert_status(join(&once, "edge-4").await, 401);
    assert!(body.contains("used before"), "{body}");
    // A bad CSR does not spend it: the failure comes before the token is recorded.
    let fresh = scoped_token(&cloud, None, true);
    let (status, _) = get(
        cloud.addr,
        cloud.anonymous_tls(),
        "/edge.crt",
        &[
            ("NodeName", "edge-5"),
            ("Authorization", &bearer_of(&fresh)),
        ],
        EdgeCsr::new("edge-6").unwrap().csr_der,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    join(&fresh, "edge-5").await.unwrap();

    // The record outlives the server: a restarted one (or another replica on the same file)
    // refuses the spent token too.
    let again = Cloud::start_on(Arc::clone(&cloud.ca), |config| {
        config.spent_tokens = Some(Arc::new(SpentTokenFile::new(&ledger)));
    })
    .await;
    let dir = TempDir::new();
    let edge = EdgeBootstrap::new(
        again.url(),
        once.as_str(),
        NodeName::new("edge-4").unwrap(),
        dir.path(),
    );
    let body = assert_status(within("join", edge.join()).await, 401);
    assert!(body.contains("used before"), "{body}");
    again.stop().await;
    cloud.stop().await;

    // A server that keeps no record refuses single-use tokens outright.
    let plain = Cloud::start().await;
    let once = scoped_token(&plain, None, true);
    let dir = TempDir::new();
    let edge = EdgeBootstrap::new(
        plain.url(),
        once,
        NodeName::new("edge-7").unwrap(),
        dir.path(),
    );
    let body = assert_status(within("join", edge.join()).await, 401);
    assert!(body.contains("no single-use tokens"), "{body}");
    // And a plain token still joins any node, as KubeEdge's.
    let dir = TempDir::new();
    EdgeBootstrap::new(
        plain.url(),
        plain.token(),
        NodeName::new("edge-8").unwrap(),
        dir.path(),
    )
    .join()
    .await
    .unwrap();
    plain.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Slowloris: silent connections do not keep honest nodes out.

/// Raises this process's open-file limit to its hard limit; the new soft limit.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Waits until the server closes `stream` (EOF or reset).
async fn until_closed(mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// A server whose deadlines never end a silent connection: only the connection limits can.
async fn patient_cloud() -> Cloud {
    Cloud::start_with(|config| {
        config.handshake_timeout = Duration::from_secs(3600);
        config.header_read_timeout = Duration::from_secs(3600);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_connections_do_not_keep_honest_joins_out() {
    const SILENT: usize = 2_000;
    const SOURCES: usize = 40;
    const REOPENS: usize = 2;
    let nofile = raise_nofile_limit();
    assert!(
        nofile >= 4 * SILENT as u64,
        "the open-file limit {nofile} is too low for {SILENT} connections"
    );
    let cloud = patient_cloud().await;
    let addr = cloud.addr;

    // The attacker: 2,000 silent connections from 40 addresses (50 each, under the per-source
    // cap), each reopened when the server closes it, a bounded number of times.
    let opened = Arc::new(AtomicUsize::new(0));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..SILENT {
        let (opened, closed, stop) = (
            Arc::clone(&opened),
            Arc::clone(&closed_by_server),
            stop.clone(),
        );
        let from = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
        attackers.spawn(async move {
            for _ in 0..=REOPENS {
                let Ok(stream) = connect_from(from, addr).await else {
                    return;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = until_closed(stream) => closed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    within("the attacker's first connections", async {
        while opened.load(Ordering::Relaxed) < SILENT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Honest nodes fetch the CA and join, one after another, while the attack goes on.
    for n in 0..5 {
        let started = std::time::Instant::now();
        let (status, ca) = get(addr, cloud.anonymous_tls(), "/ca.crt", &[], Vec::new()).await;
        // A figure for the record (BENCHMARKS.md), not a check.
        eprintln!(
            "GET /ca.crt under {SILENT} silent connections: {:?}",
            started.elapsed()
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ca, cloud.ca.cert_der());
        let dir = TempDir::new();
        let node = format!("honest-{n}");
        let edge = EdgeBootstrap::new(
            cloud.url(),
            cloud.token(),
            NodeName::new(node).unwrap(),
            dir.path(),
        );
        within("an honest join under attack", edge.join())
            .await
            .unwrap();
    }
    // Room is made by closing silent connections (the server holds at most 1,024). A connect
    // that overflowed the listen backlog only reaches the server when the kernel retries it,
    // so the closures may still be coming when the honest joins are done.
    within("the server to close silent connections", async {
        while closed_by_server.load(Ordering::Relaxed) < SILENT - 1024 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    stop.cancel();
    while attackers.join_next().await.is_some() {}
    cloud.stop().await;
}

#[tokio::test]
async fn one_source_address_holds_at_most_its_share_of_connections() {
    let cloud = patient_cloud().await;
    let from = std::net::Ipv4Addr::new(127, 0, 0, 250);
    let cap = 64;
    let mut waiting = tokio::task::JoinSet::new();
    let closed = Arc::new(AtomicUsize::new(0));
    for _ in 0..cap + 16 {
        let stream = within("connect", connect_from(from, cloud.addr))
            .await
            .unwrap();
        let closed = Arc::clone(&closed);
        waiting.spawn(async move {
            until_closed(stream).await;
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    within("the connections over the cap to be closed", async {
        while closed.load(Ordering::Relaxed) < 16 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Another address joins; the address at its cap keeps its 64 connections.
    let dir = TempDir::new();
    let edge = cloud.join_client("honest", dir.path());
    within("an honest join", edge.join()).await.unwrap();
    assert_eq!(closed.load(Ordering::Relaxed), 16);
    waiting.abort_all();
    cloud.stop().await;
}
