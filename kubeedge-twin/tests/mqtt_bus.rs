//! The EventBus against real brokers on loopback: mosquitto (external mode), the embedded
//! broker (internal mode) and both, with mosquitto's command-line clients on the other side.

#![cfg(all(feature = "store", feature = "embedded-broker"))]
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use kubeedge_testkit::{
    DEADLINE, Mosquitto, MosquittoSub, mosquitto_pub, publish_until_received, wait_until, within,
};
use kubeedge_twin::mqtt::{DEFAULT_SUBSCRIPTIONS, MqttBus, MqttConfig, MqttHandle, MqttMode};
use kubeedge_twin::{Error, Ingress, IngressConfig, IngressReceiver, Publication};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const TWIN_UPDATE: &str = "$hw/events/device/default/t1/twin/update";
const TWIN_RESULT: &str = "$hw/events/device/default/t1/twin/update/result";
/// Bytes a text-only pipe would mangle: NUL, 0xff, CR/LF.
const PAYLOAD: &[u8] = b"\x00\xff{\"event_id\":\"e1\",\"twin\":{}}\r\n";

fn config(mode: MqttMode) -> MqttConfig {
    MqttConfig {
        mode,
        // Port 0: the embedded broker takes a free port (tests run in parallel).
        internal: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        keep_alive: Duration::from_secs(5),
        reconnect_interval: Duration::from_millis(200),
        ..MqttConfig::default()
    }
}

fn default_subscriptions() -> Vec<String> {
    DEFAULT_SUBSCRIPTIONS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

async fn start(config: MqttConfig) -> (MqttBus, MqttHandle, IngressReceiver) {
    let (ingress, rx) = Ingress::new(IngressConfig::default());
    let bus = MqttBus::start(
        config,
        default_subscriptions(),
        ingress,
        CancellationToken::new(),
    )
    .await
    .expect("bus starts");
    let handle = bus.handle();
    within("bus connected and subscribed", handle.connected())
        .await
        .expect("connected");
    (bus, handle, rx)
}

/// The next publication on `topic` (others are skipped).
async fn next_on(rx: &mut IngressReceiver, topic: &str) -> Publication {
    within(&format!("a publication on {topic}"), async {
        loop {
            let p = rx.recv().await.expect("ingress open");
            if p.topic == topic {
                return p;
            }
        }
    })
    .await
}

/// `mosquitto_pub` → broker → bus → ingress, exact bytes; then bus → broker → `mosquitto_sub`.
async fn round_trip(port: u16, handle: &MqttHandle, rx: &mut IngressReceiver) {
    assert!(mosquitto_pub(port, TWIN_UPDATE, PAYLOAD).await.success());
    let got = next_on(rx, TWIN_UPDATE).await;
    assert_eq!(&got.payload[..], PAYLOAD);

    let sub = MosquittoSub::start(port, TWIN_RESULT);
    let outputs = publish_until_received(vec![sub], || async {
        handle
            .publish(TWIN_RESULT, Bytes::from_static(PAYLOAD))
            .await
            .expect("publish");
    })
    .await;
    assert_eq!(outputs, vec![PAYLOAD.to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mode_against_mosquitto() {
    let mosquitto = Mosquitto::start().await;
    let (bus, handle, mut rx) = start(MqttConfig {
        external: mosquitto.url(),
        ..config(MqttMode::External)
    })
    .await;
    assert!(bus.broker_addr().is_none());
    round_trip(mosquitto.port(), &handle, &mut rx).await;
    // A default wildcard subscription that does not start with `$`.
    assert!(
        mosquitto_pub(mosquitto.port(), "app/user/x/y", b"u")
            .await
            .success()
    );
    assert_eq!(&next_on(&mut rx, "app/user/x/y").await.payload[..], b"u");
    bus.shutdown().await;
    assert!(matches!(
        handle.publish(TWIN_RESULT, Bytes::new()).await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_mode_embedded_broker() {
    let (bus, handle, mut rx) = start(config(MqttMode::Internal)).await;
    let port = bus.broker_addr().expect("embedded broker").port();
    round_trip(port, &handle, &mut rx).await;

    // `$` topics are not matched by filters starting with a wildcard: a `#` subscriber gets
    // the `+/user/#`-style topic but not the `$hw` one published before it.
    let sub = MosquittoSub::start(port, "#");
    let outputs = publish_until_received(vec![sub], || async {
        handle
            .publish(TWIN_RESULT, Bytes::from_static(b"dollar"))
            .await
            .expect("publish");
        assert!(mosquitto_pub(port, "app/user/z", b"plain").await.success());
    })
    .await;
    assert_eq!(outputs, vec![b"plain".to_vec()]);

    // The embedded broker stops with the bus and frees its port.
    bus.shutdown().await;
    let free = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port));
    assert!(free.is_ok(), "port {port} still taken after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resubscribes() {
    let mut mosquitto = Mosquitto::start().await;
    let (bus, handle, mut rx) = start(MqttConfig {
        external: mosquitto.url(),
        ..config(MqttMode::External)
    })
    .await;
    const DYNAMIC: &str = "custom/dynamic/topic";
    handle.subscribe(DYNAMIC).await.expect("subscribe");
    assert!(handle.subscriptions().iter().any(|s| s == DYNAMIC));

    mosquitto.stop().await;
    wait_until("the bus notices the broker is gone", || {
        !handle.is_connected()
    })
    .await;
    assert!(
        handle.publish(TWIN_RESULT, Bytes::new()).await.is_err(),
        "publishing without a broker fails"
    );
    mosquitto.restart().await;
    within("reconnected and resubscribed", handle.connected())
        .await
        .expect("connected");

    assert!(
        mosquitto_pub(mosquitto.port(), TWIN_UPDATE, b"default")
            .await
            .success()
    );
    assert!(
        mosquitto_pub(mosquitto.port(), DYNAMIC, b"dynamic")
            .await
            .success()
    );
    assert_eq!(&next_on(&mut rx, TWIN_UPDATE).await.payload[..], b"default");
    assert_eq!(&next_on(&mut rx, DYNAMIC).await.payload[..], b"dynamic");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_mode_uses_both_brokers() {
    let mosquitto = Mosquitto::start().await;
    let (bus, handle, mut rx) = start(MqttConfig {
        external: mosquitto.url(),
        ..config(MqttMode::Both)
    })
    .await;
    let internal = bus.broker_addr().expect("embedded broker").port();
    let external = mosquitto.port();

    assert!(
        mosquitto_pub(internal, TWIN_UPDATE, b"from internal")
            .await
            .success()
    );
    assert_eq!(
        &next_on(&mut rx, TWIN_UPDATE).await.payload[..],
        b"from internal"
    );
    assert!(
        mosquitto_pub(external, TWIN_UPDATE, b"from external")
            .await
            .success()
    );
    assert_eq!(
        &next_on(&mut rx, TWIN_UPDATE).await.payload[..],
        b"from external"
    );

    let subs = vec![
        MosquittoSub::start(internal, TWIN_RESULT),
        MosquittoSub::start(external, TWIN_RESULT),
    ];
    let outputs = publish_until_received(subs, || async {
        handle
            .publish(TWIN_RESULT, Bytes::from_static(PAYLOAD))
            .await
            .expect("publish to both");
    })
    .await;
    assert_eq!(outputs, vec![PAYLOAD.to_vec(), PAYLOAD.to_vec()]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payload_is_dropped_and_bus_goes_on() {
    let mosquitto = Mosquitto::start().await;
    let max_payload = 64 * 1024;
    let (bus, handle, mut rx) = start(MqttConfig {
        external: mosquitto.url(),
        max_payload,
        ..config(MqttMode::External)
    })
    .await;

    let big = vec![b'x'; max_payload + 1];
    assert!(
        mosquitto_pub(mosquitto.port(), TWIN_UPDATE, &big)
            .await
            .success()
    );
    // The oversized packet closes the connection; the client reconnects. Publications sent
    // meanwhile are lost (clean session), so keep sending small ones until one arrives.
    let got = within("a small publication after the big one", async {
        loop {
            assert!(
                mosquitto_pub(mosquitto.port(), TWIN_UPDATE, b"small")
                    .await
                    .success()
            );
            if let Ok(p) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                return p.expect("ingress open");
            }
        }
    })
    .await;
    assert_eq!(
        &got.payload[..],
        b"small",
        "the big payload was not delivered"
    );
    while let Some(p) = rx.try_recv() {
        assert!(p.payload.len() <= max_payload);
    }
    within("connected again", handle.connected()).await.unwrap();

    // Our own oversized publish is refused before it can break the connection.
    let too_big = Bytes::from(vec![0u8; max_payload]);
    assert!(matches!(
        handle.publish(TWIN_RESULT, too_big).await,
        Err(Error::Mqtt(_))
    ));
    assert!(handle.is_connected());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_are_refused() {
    let mosquitto = Mosquitto::start().await;
    let (bus, handle, _rx) = start(MqttConfig {
        external: mosquitto.url(),
        ..config(MqttMode::External)
    })
    .await;
    let long = "a".repeat(65_536);
    for topic in ["", "a/+/b", "a/#", "a\0b", long.as_str()] {
        let err = handle.publish(topic, Bytes::new()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidTopic(_)), "{topic:.20?}: {err}");
        let err = handle.try_publish(topic, Bytes::new()).unwrap_err();
        assert!(matches!(err, Error::InvalidTopic(_)), "{topic:.20?}: {err}");
    }
    for filter in ["", "a/#/b", "a+/b", "a\0", long.as_str()] {
        let err = handle.subscribe(filter).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidTopic(_)),
            "{filter:.20?}: {err}"
        );
        assert!(handle.unsubscribe(filter).await.is_err());
    }
    assert_eq!(handle.subscriptions().len(), DEFAULT_SUBSCRIPTIONS.len());

    // Bad initial subscriptions and configurations are refused at start.
    let (ingress, _rx2) = Ingress::new(IngressConfig::default());
    let bad = MqttBus::start(
        config(MqttMode::External),
        vec!["a/#/b".into()],
        ingress.clone(),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(bad, Err(Error::InvalidTopic(_))));
    let bad = MqttBus::start(
        MqttConfig {
            external: "ssl://127.0.0.1:8883".into(),
            ..config(MqttMode::External)
        },
        vec![],
        ingress,
        CancellationToken::new(),
    )
    .await;
    assert!(bad.is_err());

    // The bus still works.
    handle
        .try_publish(TWIN_RESULT, Bytes::from_static(b"ok"))
        .unwrap();
    assert!(handle.is_connected());
    bus.shutdown().await;
}

/// Garbage, oversized packets, MQTT 5 and wildcard publishes from clients of the embedded broker
/// close only those clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_survives_hostile_clients() {
    let max_payload = 16 * 1024;
    let (bus, handle, mut rx) = start(MqttConfig {
        max_payload,
        ..config(MqttMode::Internal)
    })
    .await;
    let port = bus.broker_addr().expect("embedded broker").port();

    // Each is closed by the broker (read returns 0 or an error), within the deadline.
    let connect_v4 = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03bad";
    let mut oversized = connect_v4.to_vec();
    oversized.extend_from_slice(&[0x30, 0xff, 0xff, 0x7f]); // PUBLISH of 2 MiB
    let mut wildcard = connect_v4.to_vec();
    wildcard.extend_from_slice(b"\x30\x05\x00\x03a/#");
    let hostile: [&[u8]; 5] = [
        b"\xff\xff\xff\xff\xff\xff",                            // not MQTT
        b"\x30\x05\x00\x03abc",                                 // PUBLISH before CONNECT
        b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03bad", // MQTT 5
        &oversized,
        &wildcard,
    ];
    for bytes in hostile {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = stream.write_all(bytes).await;
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await;
        assert!(
            closed.is_ok(),
            "broker did not close a hostile client: {bytes:?}"
        );
    }

    assert!(handle.is_connected());
    assert!(
        mosquitto_pub(port, TWIN_UPDATE, b"still here")
            .await
            .success()
    );
    assert_eq!(
        &next_on(&mut rx, TWIN_UPDATE).await.payload[..],
        b"still here"
    );
    bus.shutdown().await;
}

/// MQTT takeover through the embedded broker: a second CONNECT with a connected client's id
/// (holding `/`) ends the first connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_client_id_takeover() {
    let (bus, _handle, _rx) = start(config(MqttMode::Internal)).await;
    let port = bus.broker_addr().expect("embedded broker").port();
    let connect = b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06dup/id";
    let connack = |mut stream: TcpStream| async move {
        stream.write_all(connect).await.unwrap();
        let mut ack = [0u8; 4];
        within("CONNACK", stream.read_exact(&mut ack))
            .await
            .unwrap();
        assert_eq!(ack, *b"\x20\x02\x00\x00", "CONNACK accepted");
        stream
    };
    let mut first = connack(TcpStream::connect(("127.0.0.1", port)).await.unwrap()).await;
    let mut second = connack(TcpStream::connect(("127.0.0.1", port)).await.unwrap()).await;
    let mut sink = Vec::new();
    let _ = within("the first connection closed", first.read_to_end(&mut sink)).await;
    second.write_all(b"\xc0\x00").await.unwrap();
    let mut pong = [0u8; 2];
    within("PINGRESP", second.read_exact(&mut pong))
        .await
        .unwrap();
    assert_eq!(pong, *b"\xd0\x00");
    bus.shutdown().await;
}
