//! Node join end to end, as `keadm join` and edgecore do it: a token from the cloud, the
//! certificate flow over HTTPS, the WebSocket link with that certificate, messages both ways,
//! then a certificate rotation and a reconnect with the new certificate.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubeedge_hub::join::{CertificateAuthority, Token};
use kubeedge_hub::{
    BootstrapConfig, BootstrapServer, CloudEvent, CloudHub, CloudHubConfig, EdgeBootstrap,
    EdgeEvent, EdgeHub, EdgeHubConfig, tls,
};
use kubeedge_proto::{Content, Message, NodeName};
use rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

async fn next<T>(rx: &mut tokio::sync::mpsc::Receiver<T>) -> T {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("deadline")
        .expect("open")
}

#[tokio::test]
async fn join_with_a_token_connect_exchange_rotate_reconnect() {
    let stop = CancellationToken::new();
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The cloud: one CA, one server certificate for both the join endpoint and the hub.
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let server = ca.issue_server_cert(&[localhost], &[] as &[&str]).unwrap();
    let bootstrap = BootstrapServer::bind(
        BootstrapConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&ca),
            server.cert_pem.as_bytes(),
            server.key_pem.as_bytes(),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let join_url = format!("https://{}", bootstrap.local_addr().unwrap());
    tokio::spawn(bootstrap.run(stop.clone()));
    let hub_tls = tls::server_config(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    let (hub, hub_handle, mut cloud_events) =
        CloudHub::bind(CloudHubConfig::new("127.0.0.1:0".parse().unwrap(), hub_tls))
            .await
            .unwrap();
    let hub_addr = hub.local_addr().unwrap();
    tokio::spawn(hub.run(stop.clone()));

    // `keadm gettoken`, then the edge joins with it.
    let token = Token::issue(&ca, Duration::from_secs(24 * 3600), SystemTime::now());
    let dir = tempfile::tempdir().unwrap();
    let edge_join = EdgeBootstrap::new(
        join_url,
        token,
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    );
    let creds = edge_join.bootstrap().await.unwrap();

    let connect = |tls: Arc<rustls::ClientConfig>| {
        let mut config = EdgeHubConfig::new(
            hub_addr.to_string(),
            ServerName::IpAddress(localhost.into()),
            tls,
            NodeName::new("edge-1").unwrap(),
        );
        config.rate_limit = None;
        let (edge, handle, events) = EdgeHub::new(config);
        let edge_stop = stop.child_token();
        tokio::spawn(edge.run(edge_stop.clone()));
        (handle, events, edge_stop)
    };

    // Connected with the issued certificate: the cloud knows the node by it.
    let (handle, mut edge_events, edge_stop) = connect(creds.client_config().unwrap());
    assert!(matches!(
        next(&mut edge_events).await,
        EdgeEvent::Connected { .. }
    ));
    let CloudEvent::Connected { node, .. } = next(&mut cloud_events).await else {
        panic!()
    };
    assert_eq!(node, "edge-1");
    let up = Message::new(
        "edged",
        "meta",
        "insert",
        "default/node/edge-1",
        Content::try_from(r#"{"kind":"Node"}"#).unwrap(),
    );
    handle.send(up.clone()).await.unwrap();
    loop {
        if let CloudEvent::Message { message, .. } = next(&mut cloud_events).await
            && !message.is_keepalive()
        {
            assert_eq!(message, up);
            break;
        }
    }
    let down = up.response(Content::try_from(r#"{"Object":{"kind":"Node"},"Err":null}"#).unwrap());
    hub_handle.send("edge-1", down.clone()).await.unwrap();
    assert_eq!(next(&mut edge_events).await, EdgeEvent::Message(down));

    // Rotation over mTLS (no token), then a reconnect with the new certificate.
    let renewed = edge_join.renew(&creds).await.unwrap();
    assert_ne!(renewed.cert_der(), creds.cert_der());
    edge_stop.cancel();
    assert!(matches!(
        next(&mut cloud_events).await,
        CloudEvent::Disconnected { .. }
    ));
    let (_handle, mut edge_events, _stop2) = connect(renewed.client_config().unwrap());
    assert!(matches!(
        next(&mut edge_events).await,
        EdgeEvent::Connected { .. }
    ));
    let CloudEvent::Connected { node, .. } = next(&mut cloud_events).await else {
        panic!()
    };
    assert_eq!(node, "edge-1");
    // And after a restart of the edge, the files on disk are reused without the token.
    let again = EdgeBootstrap::new(
        format!("https://{}", hub_addr),
        "",
        NodeName::new("edge-1").unwrap(),
        dir.path(),
    )
    .bootstrap()
    .await
    .unwrap();
    assert_eq!(again.cert_der(), renewed.cert_der());
    stop.cancel();
}
