//! CloudHub and EdgeHub on loopback with real TLS: KubeEdge's handshake and frames, identity
//! checks, hostile peers, keepalive timeouts, replacement and reconnection.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kubeedge_hub::{
    CloudEvent, CloudHub, CloudHubConfig, CloudHubHandle, EdgeEvent, EdgeHub, LinkEnd, tls,
};
use kubeedge_proto::extensions::Extensions;
use kubeedge_proto::{Content, Message};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

mod common;
use common::{DEADLINE, Pki};

struct Cloud {
    addr: SocketAddr,
    handle: CloudHubHandle,
    events: mpsc::Receiver<CloudEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<kubeedge_hub::Result<()>>,
}

async fn cloud(pki: &Pki, tune: impl FnOnce(&mut CloudHubConfig)) -> Cloud {
    cloud_at(pki, "127.0.0.1:0".parse().unwrap(), tune).await
}

async fn cloud_at(pki: &Pki, listen: SocketAddr, tune: impl FnOnce(&mut CloudHubConfig)) -> Cloud {
    let tls = pki.server_tls();
    let mut config = CloudHubConfig::new(listen, tls);
    tune(&mut config);
    let (hub, handle, events) = CloudHub::bind(config).await.unwrap();
    let addr = hub.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(hub.run(stop.clone()));
    Cloud {
        addr,
        handle,
        events,
        stop,
        task,
    }
}

async fn next<T>(rx: &mut mpsc::Receiver<T>) -> T {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("deadline")
        .expect("channel open")
}

/// The next cloud event that is not a keepalive.
async fn next_cloud(rx: &mut mpsc::Receiver<CloudEvent>) -> CloudEvent {
    loop {
        match next(rx).await {
            CloudEvent::Message { message, .. } if message.is_keepalive() => continue,
            event => return event,
        }
    }
}

/// A raw KubeEdge-style client: TLS, then the upgrade with edgecore's exact headers.
async fn raw_client(
    pki: &Pki,
    addr: SocketAddr,
    cert_node: &str,
    headers: &[(&'static str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>, String>
{
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(pki.client_tls(cert_node))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = format!("wss://{addr}/e632aba927ea4ac2b575ec1603d56f10/{cert_node}/events")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let (ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn kubeedge_headers(node: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("Connectionuse", "msg"),
        ("Node_id", node),
        ("Project_id", "e632aba927ea4ac2b575ec1603d56f10"),
    ]
}

#[tokio::test]
async fn edgehub_and_cloudhub_exchange_messages_and_keepalives() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |_| {}).await;
    let mut config = pki.edge_config(cloud.addr, "edge-1");
    config.heartbeat = Duration::from_millis(100);
    let (edge, edge_handle, mut edge_events) = EdgeHub::new(config);
    let edge_stop = CancellationToken::new();
    tokio::spawn(edge.run(edge_stop.clone()));

    // This CloudHub announces its extensions in the upgrade response.
    assert_eq!(
        next(&mut edge_events).await,
        EdgeEvent::Connected {
            extensions: Extensions::all()
        }
    );
    assert_eq!(
        next(&mut cloud.events).await,
        CloudEvent::Connected {
            node: "edge-1".into(),
            project_id: "e632aba927ea4ac2b575ec1603d56f10".into()
        }
    );
    assert_eq!(cloud.handle.connected_nodes(), ["edge-1"]);

    let up = Message::new(
        "edged",
        "meta",
        "patch",
        "default/nodepatch/edge-1",
        Content::string("{}"),
    );
    edge_handle.send(up.clone()).await.unwrap();
    assert_eq!(
        next_cloud(&mut cloud.events).await,
        CloudEvent::Message {
            node: "edge-1".into(),
            message: up
        }
    );

    let down = Message::new(
        "edgecontroller",
        "resource",
        "insert",
        "default/pod/p",
        Content::try_from("{}").unwrap(),
    )
    .with_resource_version("7");
    cloud.handle.send("edge-1", down.clone()).await.unwrap();
    assert_eq!(next(&mut edge_events).await, EdgeEvent::Message(down));

    // Keepalives flow every heartbeat, as KubeEdge's: `websocket/resource keepalive node "ping"`.
    let mut keepalives = 0;
    while keepalives < 3 {
        if let CloudEvent::Message { message, .. } = next(&mut cloud.events).await
            && message.is_keepalive()
        {
            assert_eq!(message.route.resource, "node");
            assert_eq!(message.content, Content::ping());
            keepalives += 1;
        }
    }
    edge_stop.cancel();
    cloud.stop.cancel();
    cloud.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_kubeedge_format_edge_talks_to_our_cloudhub() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |_| {}).await;
    let mut ws = raw_client(
        &pki,
        cloud.addr,
        "ke-edge-test",
        &kubeedge_headers("ke-edge-test"),
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));

    // edgecore's first two frames after the upgrade, byte for byte from the capture.
    let keepalive = "{\"header\":{\"msg_id\":\"625fe9f7-fc46-49c6-bfab-8d6a365bd821\",\"timestamp\":1795408165616},\"route\":{\"source\":\"websocket\",\"group\":\"resource\",\"operation\":\"keepalive\",\"resource\":\"node\"},\"content\":\"ping\"}\n";
    let detail = "{\"header\":{\"msg_id\":\"963632c0-9c03-415c-b11f-1a25c9bad520\",\"timestamp\":1795408165617},\"route\":{\"source\":\"twin\",\"group\":\"resource\",\"operation\":\"get\",\"resource\":\"membership/detail\"},\"content\":\"{\\\"event_type\\\":\\\"group_membership_event\\\",\\\"event_id\\\":\\\"9700a377-4f49-4089-a92f-d041aa2d806b\\\",\\\"group_id\\\":\\\"ke-edge-test\\\",\\\"operation\\\":\\\"detail\\\",\\\"timestamp\\\":1795408165617}\"}\n";
    ws.send(Frame::text(keepalive)).await.unwrap();
    ws.send(Frame::text(detail)).await.unwrap();
    let CloudEvent::Message { message, .. } = next(&mut cloud.events).await else {
        panic!()
    };
    assert!(message.is_keepalive());
    let CloudEvent::Message { message, .. } = next(&mut cloud.events).await else {
        panic!()
    };
    assert_eq!(message.route.resource, "membership/detail");

    // Down: one text frame holding exactly Go's JSON and "\n", as gorilla's WriteJSON writes.
    let down = Message::from_json(b"{\"header\":{\"msg_id\":\"2ba9a553-0654-477f-85aa-e3830490d325\",\"timestamp\":1795408208347,\"resourceversion\":\"247\"},\"route\":{\"source\":\"edgecontroller\",\"group\":\"resource\",\"operation\":\"insert\",\"resource\":\"default/pod/pod-demo\"},\"content\":{\"kind\":\"Pod\",\"data\":\"<&>\"}}").unwrap();
    cloud
        .handle
        .send("ke-edge-test", down.clone())
        .await
        .unwrap();
    let frame = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Frame::Text(text) = frame else {
        panic!("expected a text frame, got {frame:?}")
    };
    let mut expected = down.to_json();
    expected.push(b'\n');
    assert_eq!(text.as_bytes(), expected.as_slice());
    // edgecore's shutdown: the zero message, then TCP close without a close frame.
    ws.send(Frame::text(
        "{\"header\":{\"msg_id\":\"\",\"timestamp\":0},\"route\":{},\"content\":null}\n",
    ))
    .await
    .unwrap();
    let CloudEvent::Message { message, .. } = next(&mut cloud.events).await else {
        panic!()
    };
    assert!(message.is_empty_shutdown());
    drop(ws);
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Disconnected { .. }
    ));
}

#[tokio::test]
async fn identities_and_headers_are_enforced() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |_| {}).await;
    let mut good = raw_client(&pki, cloud.addr, "edge-1", &kubeedge_headers("edge-1"))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));

    // A certificate for edge-2 cannot speak for edge-1.
    let err = raw_client(&pki, cloud.addr, "edge-2", &kubeedge_headers("edge-1"))
        .await
        .unwrap_err();
    assert!(err.contains("403"), "{err}");
    // ConnectionUse is mandatory, and only `msg` is served.
    let err = raw_client(&pki, cloud.addr, "edge-3", &[("Node_id", "edge-3")])
        .await
        .unwrap_err();
    assert!(err.contains("403"), "{err}");
    // A certificate from another CA fails the TLS handshake.
    let other = Pki::new();
    let pair = other.node("edge-4");
    let foreign = tls::client_config(
        pki.ca_pem.as_bytes(),
        pair.cert_pem.as_bytes(),
        pair.key_pem.as_bytes(),
    )
    .unwrap();
    let tcp = TcpStream::connect(cloud.addr).await.unwrap();
    let handshake = async {
        let mut tls = tokio_rustls::TlsConnector::from(foreign)
            .connect(ServerName::IpAddress(cloud.addr.ip().into()), tcp)
            .await?;
        // TLS 1.3 reports a rejected client certificate on the first read.
        let mut buf = [0u8; 1];
        tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await
    };
    assert!(!matches!(tokio::time::timeout(DEADLINE, handshake).await.unwrap(), Ok(n) if n > 0));

    // None of that disturbed edge-1.
    assert_eq!(cloud.handle.connected_nodes(), ["edge-1"]);
    good.send(Frame::text(
        String::from_utf8(Message::keepalive().to_json()).unwrap(),
    ))
    .await
    .unwrap();
    let CloudEvent::Message { node, .. } = next(&mut cloud.events).await else {
        panic!()
    };
    assert_eq!(node, "edge-1");
}

#[tokio::test]
async fn hostile_frames_end_only_their_connection() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |c| c.max_message_len = 4096).await;
    let mut bystander = raw_client(&pki, cloud.addr, "edge-ok", &kubeedge_headers("edge-ok"))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));

    for (node, frame) in [
        ("edge-garbage", Frame::binary(vec![0xff, 0x00, 0x13, 0x37])),
        ("edge-json", Frame::text("{\"header\":")),
        (
            "edge-big",
            Frame::text(format!("{{\"pad\":\"{}\"}}", "x".repeat(10_000))),
        ),
    ] {
        let mut ws = raw_client(&pki, cloud.addr, node, &kubeedge_headers(node))
            .await
            .unwrap();
        assert!(matches!(
            next(&mut cloud.events).await,
            CloudEvent::Connected { .. }
        ));
        let _ = ws.send(frame).await;
        match next(&mut cloud.events).await {
            CloudEvent::Disconnected { node: gone, reason } => {
                assert_eq!(gone, node);
                assert!(
                    matches!(reason, LinkEnd::BadFrame(_) | LinkEnd::Broken(_)),
                    "{reason}"
                );
            }
            other => panic!("{node}: {other:?}"),
        }
    }
    assert_eq!(cloud.handle.connected_nodes(), ["edge-ok"]);
    bystander
        .send(Frame::text(
            String::from_utf8(Message::keepalive().to_json()).unwrap(),
        ))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Message { .. }
    ));
}

#[tokio::test]
async fn stalled_handshakes_and_silent_nodes_are_cut_off() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    // Slowloris: TCP open, nothing sent. The server closes it after the handshake timeout.
    let mut idle = TcpStream::connect(cloud.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(&mut idle, &mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)));

    // A node that connects and never sends a keepalive is dropped.
    let _silent = raw_client(
        &pki,
        cloud.addr,
        "edge-quiet",
        &kubeedge_headers("edge-quiet"),
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));
    assert_eq!(
        next(&mut cloud.events).await,
        CloudEvent::Disconnected {
            node: "edge-quiet".into(),
            reason: LinkEnd::Timeout
        }
    );
    assert!(cloud.handle.connected_nodes().is_empty());
}

#[tokio::test]
async fn a_new_connection_replaces_the_old_and_the_edge_reconnects() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |_| {}).await;
    let _first = raw_client(&pki, cloud.addr, "edge-1", &kubeedge_headers("edge-1"))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));
    let mut second = raw_client(&pki, cloud.addr, "edge-1", &kubeedge_headers("edge-1"))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));
    assert_eq!(
        next(&mut cloud.events).await,
        CloudEvent::Disconnected {
            node: "edge-1".into(),
            reason: LinkEnd::Replaced
        }
    );
    // Messages now go to the new connection.
    cloud
        .handle
        .send("edge-1", Message::keepalive())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, second.next())
            .await
            .unwrap()
            .unwrap()
            .is_ok()
    );

    // An EdgeHub rides out a cloud restart on the same address.
    let (edge, _handle, mut edge_events) = EdgeHub::new(pki.edge_config(cloud.addr, "edge-2"));
    let edge_stop = CancellationToken::new();
    tokio::spawn(edge.run(edge_stop.clone()));
    assert!(matches!(
        next(&mut edge_events).await,
        EdgeEvent::Connected { .. }
    ));
    let addr = cloud.addr;
    cloud.stop.cancel();
    cloud.task.await.unwrap().unwrap();
    assert!(matches!(
        next(&mut edge_events).await,
        EdgeEvent::Disconnected { .. }
    ));
    let mut restarted = cloud_at(&pki, addr, |_| {}).await;
    assert!(matches!(
        next(&mut edge_events).await,
        EdgeEvent::Connected { .. }
    ));
    let CloudEvent::Connected { node, .. } = next(&mut restarted.events).await else {
        panic!()
    };
    assert_eq!(node, "edge-2");
    edge_stop.cancel();
}

/// edgecore's upgrade request, byte for byte from the capture (only Host differs), over TLS:
/// the answer is `101 Switching Protocols` with the right `Sec-WebSocket-Accept`.
#[tokio::test]
async fn the_captured_upgrade_request_is_accepted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new();
    let mut cloud = cloud(&pki, |_| {}).await;
    let tcp = TcpStream::connect(cloud.addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client_tls("ke-edge-test"))
        .connect(ServerName::IpAddress(cloud.addr.ip().into()), tcp)
        .await
        .unwrap();
    let request = format!(
        "GET /e632aba927ea4ac2b575ec1603d56f10/ke-edge-test/events HTTP/1.1\r\nHost: {}\r\nUser-Agent: Go-http-client/1.1\r\nConnection: Upgrade\r\nConnectionuse: msg\r\nNode_id: ke-edge-test\r\nProject_id: e632aba927ea4ac2b575ec1603d56f10\r\nSec-WebSocket-Key: +F0Y8BDXyP7OXMP/hvGzLg==\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n",
        cloud.addr
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, tls.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed during the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    // The captured cloudcore answered this key with this accept value.
    assert!(
        head.contains("sec-websocket-accept: tsfvg4rmt7jj/6sykfnnbzgen2c=\r\n"),
        "{head}"
    );
    assert!(head.contains("upgrade: websocket\r\n") && head.contains("connection: upgrade\r\n"));
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));
}

/// A frame whose header announces more bytes than ever come: the node is dropped at the
/// keepalive deadline, having held only what it sent.
#[tokio::test]
async fn a_frame_that_never_ends_is_cut_off() {
    use tokio::io::AsyncWriteExt;

    let pki = Pki::new();
    let mut cloud = cloud(&pki, |c| c.keepalive_timeout = Duration::from_millis(300)).await;
    let mut ws = raw_client(
        &pki,
        cloud.addr,
        "edge-stall",
        &kubeedge_headers("edge-stall"),
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));
    // FIN + text, masked, 16-bit length 1000, mask key, then 10 of the 1000 bytes.
    let mut partial = vec![0x81, 0x80 | 126, 0x03, 0xe8, 1, 2, 3, 4];
    partial.extend_from_slice(b"{\"header\":");
    ws.get_mut().write_all(&partial).await.unwrap();
    ws.get_mut().flush().await.unwrap();
    assert_eq!(
        next(&mut cloud.events).await,
        CloudEvent::Disconnected {
            node: "edge-stall".into(),
            reason: LinkEnd::Timeout
        }
    );
}

#[tokio::test]
async fn a_cloudhub_offering_no_extensions_looks_like_kubeedges() {
    let pki = Pki::new();
    let mut cloud = cloud(&pki, |c| c.extensions = Extensions::none()).await;
    let (edge, _handle, mut edge_events) = EdgeHub::new(pki.edge_config(cloud.addr, "edge-1"));
    let edge_stop = CancellationToken::new();
    tokio::spawn(edge.run(edge_stop.clone()));
    assert_eq!(
        next(&mut edge_events).await,
        EdgeEvent::Connected {
            extensions: Extensions::none()
        }
    );
    assert!(matches!(
        next(&mut cloud.events).await,
        CloudEvent::Connected { .. }
    ));
    edge_stop.cancel();
}
