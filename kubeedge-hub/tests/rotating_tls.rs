//! A node certificate renewed while the node runs is presented at the next handshake: the
//! EdgeHub keeps one `ClientConfig`, built by `EdgeCredentials::rotating_client_config`.

use std::net::IpAddr;
use std::time::Duration;

use kubeedge_hub::bootstrap::EdgeCredentials;
use kubeedge_hub::join::{CertificateAuthority, EdgeCsr, ExtKeyUsage};
use kubeedge_hub::tls;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn node_credentials(ca: &CertificateAuthority) -> EdgeCredentials {
    let csr = EdgeCsr::new("edge-1").unwrap();
    let cert = ca
        .sign_edge_csr(&csr.csr_der, &[ExtKeyUsage::ClientAuth], 365)
        .unwrap();
    EdgeCredentials::from_der(ca.cert_der(), &cert, &csr.key_der).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_at_the_next_handshake() {
    let ca = CertificateAuthority::generate().unwrap();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let server_cert = ca.issue_server_cert(&[ip], &[] as &[&str]).unwrap();
    let server = tls::server_config(
        server_cert.cert_pem.as_bytes(),
        server_cert.key_pem.as_bytes(),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The cloud side: the client certificate of every handshake, in order.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let acceptor = TlsAcceptor::from(server);
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let presented = match acceptor.accept(tcp).await {
                Ok(stream) => stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec()),
                Err(_) => None,
            };
            let _ = seen_tx.send(presented);
        }
    });

    let first = node_credentials(&ca);
    let renewed = node_credentials(&ca);
    assert_ne!(first.cert_der(), renewed.cert_der());
    let (credentials, rx) = watch::channel(first.clone());
    let connector = TlsConnector::from(EdgeCredentials::rotating_client_config(rx).unwrap());
    let name = ServerName::IpAddress(ip.into());
    let deadline = Duration::from_secs(20);
    let mut handshake = async |expected: &EdgeCredentials| {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _stream = connector.connect(name.clone(), tcp).await.unwrap();
        let presented = tokio::time::timeout(deadline, seen.recv())
            .await
            .expect("the server finished the handshake")
            .unwrap();
        assert_eq!(presented.as_deref(), Some(expected.cert_der()));
    };
    handshake(&first).await;
    handshake(&first).await;
    credentials.send_replace(renewed.clone());
    handshake(&renewed).await;
}
