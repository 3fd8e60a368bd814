//! The embedded broker against hostile clients on loopback (issue 17's probe findings), each
//! with honest `mosquitto_sub`/`mosquitto_pub` clients that must keep working meanwhile, and
//! its MQTT 3.1.1 behaviour with mosquitto's own clients.

#![cfg(feature = "embedded-broker")]
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kubeedge_testkit::{MosquittoSub, mosquitto_pub, publish_until_received, within};
use kubeedge_twin::mqtt::{BrokerAuth, BrokerConfig, EmbeddedBroker};
use rumqttc::{
    Connect, ConnectReturnCode, LastWill, Packet, PubRel, Publish, QoS, Subscribe, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const HONEST: &str = "$hw/events/device/default/honest/twin/update";

/// Every log line of this test binary (the broker logs from its own thread, so the subscriber
/// is global).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .init();
        logs
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a WARN line naming `limit` was logged.
fn warned(limit: &str) -> bool {
    let logs = logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .any(|l| l.contains("WARN") && l.contains(&format!("limit=\"{limit}\"")))
}

async fn start(config: BrokerConfig) -> EmbeddedBroker {
    logs();
    EmbeddedBroker::start_with_config(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        64 * 1024,
        config,
        CancellationToken::new(),
    )
    .await
    .expect("broker starts")
}

/// An honest round trip: a fresh `mosquitto_sub` on [`HONEST`] gets what `mosquitto_pub` sends
/// (re-sent until it arrives: a subscriber cannot say when it is subscribed).
async fn honest_round_trip(port: u16, payload: &[u8]) {
    let sub = MosquittoSub::start(port, HONEST);
    let got = sub
        .receive_while(|| async {
            assert!(mosquitto_pub(port, HONEST, payload).await.success());
        })
        .await;
    assert_eq!(got, payload);
}

async fn write(stream: &mut TcpStream, packet: Packet) {
    let mut out = BytesMut::new();
    packet.write(&mut out, usize::MAX).unwrap();
    stream.write_all(&out).await.unwrap();
}

/// Reads one packet (the broker's side is trusted here: no size limit beyond 1 MiB).
async fn read(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    within("a packet from the broker", async {
        loop {
            match Packet::read(buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from the broker: {e}"),
            }
            if stream.read_buf(buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
}

/// A CONNECT without keep alive (these raw clients do not ping).
fn connect_packet(id: &str) -> Connect {
    let mut connect = Connect::new(id);
    connect.keep_alive = 0;
    connect
}

/// Connects and returns the stream after CONNACK 0.
async fn connect(port: u16, id: &str) -> (TcpStream, BytesMut) {
    connect_with(port, connect_packet(id)).await
}

/// A raw client subscribed to `filter` (SUBACK received).
async fn subscriber(port: u16, id: &str, filter: &str) -> (TcpStream, BytesMut) {
    let (mut stream, mut buf) = connect(port, id).await;
    let mut subscribe = Subscribe::new(filter, QoS::AtMostOnce);
    subscribe.pkid = 1;
    write(&mut stream, Packet::Subscribe(subscribe)).await;
    assert!(matches!(
        read(&mut stream, &mut buf).await,
        Some(Packet::SubAck(_))
    ));
    (stream, buf)
}

/// The next PUBLISH's topic and payload.
async fn next_publish(stream: &mut TcpStream, buf: &mut BytesMut) -> (String, Bytes) {
    match read(stream, buf).await {
        Some(Packet::Publish(p)) => (p.topic, p.payload),
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

async fn connect_with(port: u16, connect: Connect) -> (TcpStream, BytesMut) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    write(&mut stream, Packet::Connect(connect)).await;
    let mut buf = BytesMut::new();
    match read(&mut stream, &mut buf).await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    (stream, buf)
}

/// Sends raw bytes as the first packets and returns everything the broker answered until it
/// closed the connection.
async fn answer_to(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    within("the broker closes the connection", async {
        let _ = stream.read_to_end(&mut answer).await;
    })
    .await;
    answer
}

/// The soft limit of open files of this process (from /proc/self/limits).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Finding 1: idle connections (no CONNECT) locked out every client after 63. Now they are
/// closed oldest-first beyond `max_pending`, and honest clients connect throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_out_honest_clients() {
    const IDLE: usize = 2_000;
    if open_files_limit() < (IDLE + 500) as u64 {
        println!(
            "skipped: RLIMIT_NOFILE is {} (< {}); raise it with `ulimit -n`",
            open_files_limit(),
            IDLE + 500
        );
        return;
    }
    let broker = start(BrokerConfig::default()).await;
    let port = broker.local_addr().port();
    // Connected before the flood; must keep receiving.
    let before = MosquittoSub::start(port, HONEST);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut idle = Vec::with_capacity(IDLE);
    within("2,000 idle connections opened", async {
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
    })
    .await;
    // A new client connects while 2,000 idle sockets are held (the broker holds at most
    // max_pending of them), and both subscribers get the honest publication.
    let after = MosquittoSub::start(port, HONEST);
    let got = publish_until_received(vec![before, after], || async {
        assert!(mosquitto_pub(port, HONEST, b"through").await.success());
    })
    .await;
    assert_eq!(got, vec![b"through".to_vec(), b"through".to_vec()]);
    let stats = broker.stats();
    assert!(stats.connections_pending <= 64, "{stats:?}");
    assert!(stats.pending_evicted >= (IDLE - 64) as u64, "{stats:?}");
    assert!(warned("max_pending"));
    drop(idle);
    broker.stop();
}

/// Finding 2: after about 1,016 filters every new filter closed the connection silently. Now a
/// client gets SUBACK 0x80 beyond its limit (and the broker beyond its own), with a WARN line,
/// and honest clients keep subscribing and receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_floods_are_refused_per_client_and_per_broker() {
    let broker = start(BrokerConfig {
        max_subscriptions_per_client: 256,
        max_filters: 600,
        ..BrokerConfig::default()
    })
    .await;
    let port = broker.local_addr().port();
    let (mut honest, mut honest_buf) = subscriber(port, "honest", HONEST).await;

    let mut granted_per_client = Vec::new();
    let mut hostile = Vec::new();
    for client in 0..3 {
        let (mut stream, mut buf) = connect(port, &format!("filters-{client}")).await;
        let mut granted = 0;
        // 3,000 distinct filters, 100 per SUBSCRIBE.
        for batch in 0..30u16 {
            let filters = (0..100).map(|i| {
                SubscribeFilter::new(format!("flood/{client}/{batch}/{i}/#"), QoS::AtLeastOnce)
            });
            let mut subscribe = Subscribe::new_many(filters);
            subscribe.pkid = batch + 1;
            write(&mut stream, Packet::Subscribe(subscribe)).await;
            match read(&mut stream, &mut buf).await {
                Some(Packet::SubAck(ack)) => {
                    assert_eq!(ack.pkid, batch + 1);
                    assert_eq!(ack.return_codes.len(), 100);
                    granted += ack
                        .return_codes
                        .iter()
                        .filter(|c| **c == SubscribeReasonCode::Success(QoS::AtLeastOnce))
                        .count();
                }
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
        granted_per_client.push(granted);
        hostile.push(stream);
    }
    // 256 each for the first two; the third gets the rest of the broker's 600, minus the
    // honest subscriber's filter.
    assert_eq!(granted_per_client, vec![256, 256, 600 - 512 - 1]);
    assert!(warned("max_subscriptions_per_client"));
    assert!(warned("max_filters"));
    let stats = broker.stats();
    assert_eq!(stats.filters, 600);
    assert_eq!(stats.subscriptions_refused, 3 * 3_000 - (256 + 256 + 87));

    // The hostile clients are still connected (refused filters do not close them) ...
    for stream in &mut hostile {
        write(stream, Packet::PingReq).await;
    }
    // ... the honest subscriber gets its messages, and a new client subscribes to an existing
    // filter and gets them too.
    honest_round_trip(port, b"still").await;
    assert_eq!(
        next_publish(&mut honest, &mut honest_buf).await,
        (HONEST.to_owned(), Bytes::from_static(b"still"))
    );
    // When the hostile clients leave, their filters are gone and new ones are granted.
    drop(hostile);
    within("the hostile filters forgotten", async {
        while broker.stats().filters > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (mut stream, mut buf) = connect(port, "later").await;
    let mut subscribe = Subscribe::new("flood/new/#", QoS::AtMostOnce);
    subscribe.pkid = 1;
    write(&mut stream, Packet::Subscribe(subscribe)).await;
    assert!(matches!(
        read(&mut stream, &mut buf).await,
        Some(Packet::SubAck(ack)) if ack.return_codes == vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    ));
    broker.stop();
}

/// Finding 3: 400k distinct topics grew rumqttd from 23 to 117 MB for good. Now no state is
/// kept per topic: RSS stays flat (growth bound below) and the honest subscriber gets its
/// messages during the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_topic_flood_keeps_memory_flat() {
    const WARM_UP: usize = 20_000;
    const FLOOD: usize = 400_000;
    let broker = start(BrokerConfig::default()).await;
    let port = broker.local_addr().port();
    // A subscriber of every flood topic (it reads as fast as it can; if it falls behind, its
    // queue is bounded and QoS 0 messages for it are dropped).
    let mut wide = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "0"])
        .args(["-t", "$hw/events/device/#"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is installed");
    let honest = MosquittoSub::start(port, HONEST);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (mut flood, mut buf) = connect(port, "flooder").await;
    let mut send_flood = async |from: usize, to: usize| {
        let mut out = BytesMut::with_capacity(256 * 1024);
        for i in from..to {
            let topic = format!("$hw/events/device/flood/d{i}/twin/update");
            Packet::Publish(Publish::new(
                topic,
                QoS::AtMostOnce,
                &b"0123456789abcdef"[..],
            ))
            .write(&mut out, usize::MAX)
            .unwrap();
            if out.len() > 200 * 1024 || i + 1 == to {
                flood.write_all(&out).await.unwrap();
                out.clear();
            }
        }
        // A PINGRESP comes after the broker handled everything sent before the PINGREQ.
        write(&mut flood, Packet::PingReq).await;
        assert_eq!(read(&mut flood, &mut buf).await, Some(Packet::PingResp));
    };
    within("the warm-up", send_flood(0, WARM_UP)).await;
    let rss_before = vm_rss_kib();
    let flooding = async {
        tokio::time::timeout(
            Duration::from_secs(300),
            send_flood(WARM_UP, WARM_UP + FLOOD),
        )
        .await
        .expect("the flood was handled within 300 s");
    };
    let honest_traffic = async {
        publish_until_received(vec![honest], || async {
            assert!(mosquitto_pub(port, HONEST, b"during").await.success());
        })
        .await
    };
    let ((), got) = tokio::join!(flooding, honest_traffic);
    assert_eq!(got, vec![b"during".to_vec()]);
    let rss_after = vm_rss_kib();
    let growth = rss_after.saturating_sub(rss_before);
    println!("VmRSS {rss_before} KiB -> {rss_after} KiB after {FLOOD} distinct topics");
    // The bound: the wide subscriber's queue (max_queued_bytes, 2 MiB) plus read and write
    // buffers and allocator slack. Per-topic state would be about 100 bytes x 400k = 40 MiB.
    assert!(growth < 8 * 1024, "VmRSS grew by {growth} KiB");
    let stats = broker.stats();
    // The wide subscriber's filter only (the honest mosquitto_sub exited after its message).
    assert_eq!(stats.filters, 1, "{stats:?}");
    assert!(stats.messages_received >= (WARM_UP + FLOOD) as u64);
    honest_round_trip(port, b"after").await;
    let _ = wide.kill().await;
    broker.stop();
}

/// Finding 4: a CONNECT with the reserved flag was accepted. Now every CONNECT check of the
/// specification holds, and credentials when configured; an honest subscriber keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_checks_follow_the_specification() {
    let auth = BrokerAuth::new("mapper", "s3cret");
    let broker = start(BrokerConfig {
        auth: Some(auth.clone()),
        ..BrokerConfig::default()
    })
    .await;
    let port = broker.local_addr().port();
    let mut honest = connect_packet("honest");
    honest.set_login("mapper", "s3cret");
    let (mut sub, mut sub_buf) = connect_with(port, honest.clone()).await;
    let mut subscribe = Subscribe::new(HONEST, QoS::AtLeastOnce);
    subscribe.pkid = 1;
    write(&mut sub, Packet::Subscribe(subscribe)).await;
    assert!(matches!(
        read(&mut sub, &mut sub_buf).await,
        Some(Packet::SubAck(_))
    ));

    let connack = |code: u8| vec![0x20, 0x02, 0x00, code];
    // Closed without CONNACK: reserved flag; password without user name; PUBLISH first.
    let reserved = b"\x10\x0e\x00\x04MQTT\x04\x03\x00\x3c\x00\x02id";
    assert_eq!(answer_to(port, reserved).await, b"");
    let password_only = b"\x10\x12\x00\x04MQTT\x04\x42\x00\x3c\x00\x02id\x00\x02pw";
    assert_eq!(answer_to(port, password_only).await, b"");
    assert_eq!(answer_to(port, b"\x30\x05\x00\x03abc").await, b"");
    // CONNACK 0x01: MQTT 3.1 (MQIsdp), MQTT 5, a wrong protocol name.
    let mqisdp = b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02id";
    assert_eq!(answer_to(port, mqisdp).await, connack(1));
    let v5 = b"\x10\x0f\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x02id";
    assert_eq!(answer_to(port, v5).await, connack(1));
    let name = b"\x10\x0e\x00\x04MQXX\x04\x02\x00\x3c\x00\x02id";
    assert_eq!(answer_to(port, name).await, connack(1));
    // CONNACK 0x02: empty client id without clean session.
    let no_id = b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x3c\x00\x00";
    assert_eq!(answer_to(port, no_id).await, connack(2));
    // Credentials: none (0x05), wrong (0x04); mosquitto_pub with the wrong password fails.
    let anonymous = b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02id";
    assert_eq!(answer_to(port, anonymous).await, connack(5));
    let mut wrong = BytesMut::new();
    let mut c = connect_packet("id");
    c.set_login("mapper", "s3creT");
    Packet::Connect(c).write(&mut wrong, usize::MAX).unwrap();
    assert_eq!(answer_to(port, &wrong).await, connack(4));
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", "mapper", "-P", "wrong", "-t", HONEST, "-m", "x"])
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!status.success());
    // After CONNACK: a second CONNECT and a server-only packet close the connection.
    for extra in [Packet::Connect(honest.clone()), Packet::PingResp] {
        let mut c = honest.clone();
        c.client_id = "twice".into();
        let (mut stream, mut buf) = connect_with(port, c).await;
        write(&mut stream, extra).await;
        assert_eq!(read(&mut stream, &mut buf).await, None);
    }
    let stats = broker.stats();
    assert_eq!(stats.refused_auth, 3, "{stats:?}");
    assert!(stats.refused_protocol >= 7, "{stats:?}");
    assert!(warned("auth") && warned("protocol"));

    // The honest subscriber got through all of it: mosquitto_pub with the right credentials.
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", "mapper", "-P", "s3cret", "-t", HONEST, "-m", "ok"])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    match read(&mut sub, &mut sub_buf).await {
        Some(Packet::Publish(p)) => {
            assert_eq!(p.topic, HONEST);
            assert_eq!(&p.payload[..], b"ok");
        }
        other => panic!("expected the honest PUBLISH, got {other:?}"),
    }
    broker.stop();
}

/// Finding 5 and the protocol: QoS 1 and 2 from mosquitto_pub reach mosquitto_sub, `$hw/#`
/// matches `$hw/...` and `#` does not; a QoS 2 PUBLISH re-sent before PUBREL is delivered
/// once; a will goes out when a silent client passes 1.5 times its keep alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_wildcards_wills_and_keep_alive() {
    let broker = start(BrokerConfig::default()).await;
    let port = broker.local_addr().port();
    for qos in ["1", "2"] {
        let sub = MosquittoSub::start(port, "$hw/#");
        let payload = format!("qos {qos}");
        let got = sub
            .receive_while(|| async {
                let status = Command::new("mosquitto_pub")
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", qos])
                    .args(["-t", HONEST, "-m", &payload])
                    .status()
                    .await
                    .unwrap();
                assert!(status.success());
            })
            .await;
        assert_eq!(got, payload.as_bytes());
    }

    // `#` gets `a/b` but not the `$hw` topic published before it.
    let (mut all, mut all_buf) = connect(port, "everything").await;
    let mut subscribe = Subscribe::new("#", QoS::ExactlyOnce);
    subscribe.pkid = 1;
    write(&mut all, Packet::Subscribe(subscribe)).await;
    match read(&mut all, &mut all_buf).await {
        // QoS 2 requested, QoS 1 granted.
        Some(Packet::SubAck(ack)) => {
            assert_eq!(
                ack.return_codes,
                vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            );
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert!(mosquitto_pub(port, HONEST, b"dollar").await.success());
    assert!(mosquitto_pub(port, "a/b", b"plain").await.success());
    match read(&mut all, &mut all_buf).await {
        Some(Packet::Publish(p)) => {
            assert_eq!((p.topic.as_str(), &p.payload[..]), ("a/b", &b"plain"[..]))
        }
        other => panic!("expected a/b, got {other:?}"),
    }

    // QoS 2 from a raw client: PUBLISH twice (the second as a DUP), then PUBREL: delivered once.
    let (mut publisher, mut pub_buf) = connect(port, "qos2").await;
    let mut publish = Publish::new("q/2", QoS::ExactlyOnce, Bytes::from_static(b"once"));
    publish.pkid = 9;
    write(&mut publisher, Packet::Publish(publish.clone())).await;
    assert!(
        matches!(read(&mut publisher, &mut pub_buf).await, Some(Packet::PubRec(r)) if r.pkid == 9)
    );
    publish.dup = true;
    write(&mut publisher, Packet::Publish(publish)).await;
    assert!(
        matches!(read(&mut publisher, &mut pub_buf).await, Some(Packet::PubRec(r)) if r.pkid == 9)
    );
    write(&mut publisher, Packet::PubRel(PubRel::new(9))).await;
    assert!(
        matches!(read(&mut publisher, &mut pub_buf).await, Some(Packet::PubComp(c)) if c.pkid == 9)
    );
    write(
        &mut publisher,
        Packet::Publish(Publish::new("q/marker", QoS::AtMostOnce, &b"m"[..])),
    )
    .await;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("q/marker") {
        match read(&mut all, &mut all_buf).await {
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    write(&mut all, Packet::PubAck(rumqttc::PubAck::new(p.pkid))).await;
                }
                seen.push(p.topic);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(seen, vec!["q/2", "q/marker"]);

    // A client with a 1 s keep alive that goes silent: closed, and its will published.
    let mut silent = connect_packet("silent");
    silent.keep_alive = 1;
    silent.last_will = Some(LastWill::new(
        "wills/silent",
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    let (mut silent, mut silent_buf) = connect_with(port, silent).await;
    assert_eq!(
        read(&mut silent, &mut silent_buf).await,
        None,
        "closed after 1.5 s"
    );
    match read(&mut all, &mut all_buf).await {
        Some(Packet::Publish(p)) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("wills/silent", &b"gone"[..])
            );
            assert!(!p.retain, "the retain flag is cleared");
        }
        other => panic!("expected the will, got {other:?}"),
    }
    assert_eq!(broker.stats().keep_alive_timeouts, 1);
    broker.stop();
}

/// Stopping ends the broker's thread and releases the address at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_releases_everything() {
    let broker = start(BrokerConfig::default()).await;
    let addr = broker.local_addr();
    let (mut stream, mut buf) = connect(addr.port(), "stays").await;
    broker.stop();
    assert_eq!(read(&mut stream, &mut buf).await, None);
    let again = within(
        "binding the address again",
        EmbeddedBroker::start(addr, 64 * 1024),
    )
    .await
    .expect("the address is free again");
    again.stop();
}

/// A subscriber that never reads: its queue is bounded (`max_queued_bytes`): QoS 0 messages
/// for it are dropped, a QoS 1 message disconnects it; the honest clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_bounded() {
    let broker = start(BrokerConfig::default()).await;
    let port = broker.local_addr().port();
    let (mut slow, _slow_buf) = connect(port, "never-reads").await;
    let mut subscribe = Subscribe::new("slow/#", QoS::AtLeastOnce);
    subscribe.pkid = 1;
    write(&mut slow, Packet::Subscribe(subscribe)).await;
    let (mut publisher, mut pub_buf) = connect(port, "fast").await;
    // 40 MiB of QoS 0 messages: more than the socket buffers and the 2 MiB queue hold.
    let payload = Bytes::from(vec![0x5a; 1024]);
    let mut out = BytesMut::new();
    for i in 0..40_000 {
        Packet::Publish(Publish::new(
            format!("slow/{i}"),
            QoS::AtMostOnce,
            payload.clone(),
        ))
        .write(&mut out, usize::MAX)
        .unwrap();
        if out.len() > 256 * 1024 {
            publisher.write_all(&out).await.unwrap();
            out.clear();
        }
    }
    publisher.write_all(&out).await.unwrap();
    write(&mut publisher, Packet::PingReq).await;
    assert_eq!(
        read(&mut publisher, &mut pub_buf).await,
        Some(Packet::PingResp)
    );
    let stats = broker.stats();
    assert!(stats.messages_dropped > 0, "{stats:?}");
    assert_eq!(stats.slow_consumers_disconnected, 0, "{stats:?}");
    assert!(warned("max_queued_bytes"));
    honest_round_trip(port, b"meanwhile").await;

    // A QoS 1 message for the full queue disconnects the subscriber.
    let mut publish = Publish::new("slow/q1", QoS::AtLeastOnce, payload);
    publish.pkid = 1;
    write(&mut publisher, Packet::Publish(publish)).await;
    assert!(matches!(
        read(&mut publisher, &mut pub_buf).await,
        Some(Packet::PubAck(_))
    ));
    within("the slow subscriber disconnected", async {
        while broker.stats().clients_connected > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(broker.stats().slow_consumers_disconnected, 1);
    honest_round_trip(port, b"after").await;
    drop(slow);
    broker.stop();
}
