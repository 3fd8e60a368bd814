//! The embedded MQTT broker: rumqttd behind a small front end that makes `$` topics work.
//!
//! # Why a front end
//!
//! rumqttd 0.20 refuses every SUBSCRIBE whose filter starts with `$` (other than `$share/`) by
//! disconnecting the client, and its matcher never delivers a topic that starts with `$`
//! (upstream issue bytebeamio/rumqtt#650; no setting changes this). Every KubeEdge device
//! topic starts with `$hw/`. So clients do not talk to rumqttd directly: [`EmbeddedBroker`]
//! listens on the public address, reads each client's MQTT 3.1.1 packets with rumqttc's codec,
//! and forwards them to rumqttd on a private loopback port, with every topic and filter moved
//! into one of two namespaces:
//!
//! | client side | rumqttd side |
//! | --- | --- |
//! | topic or filter starting with `$`, e.g. `$hw/events/#` | `d/$hw/events/#` |
//! | any other, e.g. `+/user/#`, `#` | `n/+/user/#`, `n/#` |
//! | shared `$share/<group>/<filter>` | `$share/<group>/` + the filter mapped as above |
//!
//! Publications from rumqttd get their prefix removed. This keeps the MQTT rule that a filter
//! starting with a wildcard does not match `$` topics (`n/#` never matches `d/...`), while
//! `$hw/#` matches `$hw/...` topics. Packet ids, QoS 0/1/2 flows, keep alive and will messages
//! go through unchanged (will topics are mapped too).
//!
//! The front end also enforces the limits of a small edge device:
//! * at most [`MAX_CLIENTS`] connections, a CONNECT within 10 s, MQTT 3.1.1 only (a 5.0 client
//!   gets CONNACK "unacceptable protocol version");
//! * packets larger than `max_payload` (remaining length) close that client's connection;
//! * malformed packets, server-only packets from a client, topics with wildcards and invalid
//!   filters close that client's connection (nothing panics, other clients go on);
//! * sessions are always clean (CONNACK says no session is present) and the retain flag is
//!   cleared, because rumqttd keeps persistent sessions and retained messages without bound;
//!   KubeEdge's clients use clean sessions and never retain;
//! * rumqttd sees each connection under a slot id `c<n>` (`n` < [`MAX_CLIENTS`]), not the
//!   client's id: rumqttd remembers every client id it ever saw (about 1 KiB each, until the
//!   process exits) and mosquitto_pub or paho pick a random id per connection. The front end
//!   does MQTT's takeover itself (a CONNECT with the id of a connected client ends the older
//!   connection), and ids rumqttd refuses (holding `+ $ # /`) work;
//! * at most [`MAX_FILTERS`] distinct topic filters over the broker's lifetime.
//!
//! Not bounded: rumqttd caches, per distinct topic that matched a subscription, the filters it
//! matches, until the process exits. KubeEdge's topics are per device, so this grows with the
//! number of devices, but a client publishing to ever new topics under a subscribed filter
//! grows it without end.
//!
//! # Stopping
//!
//! rumqttd has no way to stop (its router and listener threads run until the process exits).
//! [`EmbeddedBroker::stop`] (or dropping it, or cancelling its shutdown token) closes the public
//! listener and every client connection, so the address can be bound again at once; the idle
//! rumqttd instance (three threads, a loopback listener and its in-memory logs) stays until the
//! process exits. Starting several brokers in one process works: each gets its own rumqttd.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes;
use rumqttc::{ConnAck, Connect, ConnectReturnCode, Packet, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::{MAX_TOPIC_LEN, validate_filter, validate_topic};
use crate::{Error, Result};

/// Client connections the embedded broker accepts at once; more are closed at once. Each may
/// buffer up to one `max_payload` packet in the front end and in rumqttd.
pub const MAX_CLIENTS: usize = 64;

/// Distinct topic filters the embedded broker accepts over its lifetime (rumqttd keeps a log of
/// about 220 KiB of address space for each until the process exits); a SUBSCRIBE to one more
/// closes that client's connection.
pub const MAX_FILTERS: usize = 1024;

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`EmbeddedBroker::start`] waits for rumqttd to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// rumqttd commit log segment size (per subscribed filter).
const SEGMENT_SIZE: usize = 64 * 1024;
/// rumqttd commit log segments kept per filter: a filter's log holds at most about
/// `SEGMENT_COUNT * (SEGMENT_SIZE + max_payload)` bytes; payloads are shared between filters.
const SEGMENT_COUNT: usize = 3;
/// The two bytes added to every topic on the rumqttd side.
const PREFIX_LEN: usize = 2;

/// A running embedded broker. See the [module docs](self) for how it is built and its limits.
#[derive(Debug)]
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    stop: CancellationToken,
    front: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts rumqttd and the front end listening on `listen` (port 0 picks a free port), with
    /// packets limited to `max_payload` bytes of remaining length. Returns once rumqttd answers
    /// an MQTT CONNECT (within 10 s) and the public address is bound.
    pub async fn start(listen: SocketAddr, max_payload: usize) -> Result<Self> {
        Self::start_with_shutdown(listen, max_payload, CancellationToken::new()).await
    }

    /// Like [`EmbeddedBroker::start`]; cancelling `shutdown` stops the broker like
    /// [`EmbeddedBroker::stop`].
    pub async fn start_with_shutdown(
        listen: SocketAddr,
        max_payload: usize,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let max_payload = max_payload.clamp(1024, super::MQTT_MAX_PACKET - PREFIX_LEN);
        // Bind the public address first: a taken port fails here, before anything starts.
        let front = StdTcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::io(format!("embedded MQTT broker: binding {listen}"), e))?;
        let local_addr = front
            .local_addr()
            .map_err(|e| Error::io("embedded MQTT broker: local address", e))?;
        let mut attempt = 1;
        let upstream = loop {
            let (upstream, rumqttd) = start_rumqttd(max_payload)?;
            match wait_until_ready(upstream, &rumqttd).await {
                Ok(()) => break upstream,
                // Another process took the free port before rumqttd bound it: take another.
                Err(e) if attempt < 3 && rumqttd.is_finished() => {
                    tracing::warn!(error = %e, "embedded MQTT broker: retrying on another port");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };

        let stop = shutdown;
        let front_stop = stop.clone();
        let front = std::thread::Builder::new()
            .name("mqtt-broker-front".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "embedded MQTT broker: no runtime");
                        return;
                    }
                };
                runtime.block_on(serve(front, upstream, max_payload, front_stop));
            })
            .map_err(|e| Error::io("embedded MQTT broker: spawning its thread", e))?;
        tracing::info!(%local_addr, %upstream, "embedded MQTT broker started");
        Ok(Self {
            local_addr,
            upstream,
            stop,
            front: Some(front),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes the public listener and every client connection, and waits until the address is
    /// released. rumqttd itself stays (idle) until the process exits.
    pub fn stop(mut self) {
        self.stop.cancel();
        if let Some(front) = self.front.take() {
            let _ = front.join();
        }
        tracing::info!(local_addr = %self.local_addr, upstream = %self.upstream,
            "embedded MQTT broker stopped");
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a rumqttd instance on a free loopback port; it runs on its own threads.
fn start_rumqttd(max_payload: usize) -> Result<(SocketAddr, JoinHandle<()>)> {
    static INSTANCES: AtomicUsize = AtomicUsize::new(0);
    let id = INSTANCES.fetch_add(1, Ordering::Relaxed);
    // rumqttd binds by itself and cannot report its port: take a free one.
    let upstream = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::io("embedded MQTT broker: finding a free loopback port", e))?;
    let config = rumqttd_config(id, upstream, max_payload);
    let thread = std::thread::Builder::new()
        .name(format!("rumqttd-{id}"))
        .spawn(move || {
            // Spawns the router thread and one thread per listener, then joins the listeners:
            // it returns only if the listener failed (its error is logged by rumqttd).
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "rumqttd failed");
            }
        })
        .map_err(|e| Error::io("embedded MQTT broker: spawning rumqttd", e))?;
    Ok((upstream, thread))
}

fn rumqttd_config(id: usize, listen: SocketAddr, max_payload: usize) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        // The front end adds a 2-byte prefix to topics.
        max_payload_size: max_payload + PREFIX_LEN,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    let server = rumqttd::ServerSettings {
        name: format!("v4-{id}"),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id,
        router: rumqttd::RouterConfig {
            // The front end admits MAX_CLIENTS; leave room for connections still closing.
            max_connections: MAX_CLIENTS + 16,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_SIZE,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some([("v4".to_owned(), server)].into_iter().collect()),
        ..Default::default()
    }
}

/// Waits until rumqttd answers a CONNECT on `upstream`, or fails when its thread ended.
async fn wait_until_ready(upstream: SocketAddr, rumqttd: &JoinHandle<()>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if rumqttd.is_finished() {
            return Err(Error::Broker(format!(
                "rumqttd could not listen on {upstream} (see its log)"
            )));
        }
        let last_error = match tokio::time::timeout(Duration::from_secs(1), probe(upstream)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "probe timed out".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Broker(format!(
                "rumqttd on {upstream} did not start within {START_TIMEOUT:?}: {last_error}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One MQTT handshake with rumqttd.
async fn probe(upstream: SocketAddr) -> std::io::Result<()> {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let mut stream = TcpStream::connect(upstream).await?;
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let connect = Connect::new(format!("kubeedge-twin-probe-{}-{n}", std::process::id()));
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .map_err(invalid_data)?;
    stream.write_all(&out).await?;
    let mut buf = BytesMut::new();
    match read_packet(&mut stream, &mut buf, 1024).await? {
        Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
            out.clear();
            Packet::Disconnect
                .write(&mut out, usize::MAX)
                .map_err(invalid_data)?;
            stream.write_all(&out).await?;
            Ok(())
        }
        other => Err(std::io::Error::other(format!(
            "unexpected answer {other:?}"
        ))),
    }
}

/// What the front end's connections share: free client slots, who is connected and the
/// filters rumqttd has a log for.
struct Registry {
    /// Unused slot numbers; a connection's rumqttd client id is `c<slot>`.
    free_slots: Vec<usize>,
    /// Connected client ids and how to end their connection (for takeover).
    by_client: HashMap<String, (u64, CancellationToken)>,
    /// Filters subscribed so far (rumqttd keeps a log for each until the process exits).
    filters: HashSet<String>,
    next_connection: u64,
}

type SharedRegistry = Arc<Mutex<Registry>>;

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

/// One admitted connection; dropping it frees its slot and its client id.
struct Admission {
    registry: SharedRegistry,
    slot: usize,
    number: u64,
    client_id: Option<String>,
    /// Cancelled on shutdown and when another connection takes the client id over.
    cancel: CancellationToken,
}

impl Admission {
    fn new(registry: &SharedRegistry, stop: &CancellationToken) -> Option<Self> {
        let mut r = lock(registry);
        let slot = r.free_slots.pop()?;
        r.next_connection += 1;
        Some(Self {
            registry: Arc::clone(registry),
            slot,
            number: r.next_connection,
            client_id: None,
            cancel: stop.child_token(),
        })
    }

    /// Registers the client id, ending an older connection with the same id (MQTT 3.1.1
    /// takeover), and returns the id to use with rumqttd.
    fn claim(&mut self, client_id: &str) -> String {
        if !client_id.is_empty() {
            let mut r = lock(&self.registry);
            let entry = (self.number, self.cancel.clone());
            if let Some((_, older)) = r.by_client.insert(client_id.to_owned(), entry) {
                older.cancel();
            }
            self.client_id = Some(client_id.to_owned());
        }
        format!("c{}", self.slot)
    }

    /// Records the filters of a SUBSCRIBE; fails when rumqttd would get more than
    /// [`MAX_FILTERS`] distinct ones.
    fn admit_filters<'a>(&self, filters: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
        let mut r = lock(&self.registry);
        for filter in filters {
            if !r.filters.contains(filter) {
                if r.filters.len() >= MAX_FILTERS {
                    return Err(protocol_error(format!(
                        "more than {MAX_FILTERS} distinct topic filters"
                    )));
                }
                r.filters.insert(filter.to_owned());
            }
        }
        Ok(())
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut r = lock(&self.registry);
        r.free_slots.push(self.slot);
        if let Some(id) = self.client_id.take()
            && r.by_client.get(&id).is_some_and(|(n, _)| *n == self.number)
        {
            r.by_client.remove(&id);
        }
    }
}

/// Accepts clients until `stop` is cancelled.
async fn serve(
    listener: StdTcpListener,
    upstream: SocketAddr,
    max_payload: usize,
    stop: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "embedded MQTT broker: cannot listen");
            return;
        }
    };
    let registry = Arc::new(Mutex::new(Registry {
        free_slots: (0..MAX_CLIENTS).rev().collect(),
        by_client: HashMap::new(),
        filters: HashSet::new(),
        next_connection: 0,
    }));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "embedded MQTT broker: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admission) = Admission::new(&registry, &stop) else {
            tracing::warn!(%peer, "embedded MQTT broker: {MAX_CLIENTS} clients connected; refused");
            continue;
        };
        tokio::spawn(async move {
            let cancel = admission.cancel.clone();
            tokio::select! {
                () = cancel.cancelled() => {
                    tracing::debug!(%peer, "embedded MQTT broker: connection ended (shutdown or takeover)");
                }
                result = relay(stream, upstream, max_payload, admission) => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "embedded MQTT broker: client closed");
                    }
                }
            }
        });
    }
    // Returning drops the runtime, which drops every connection task and socket.
}

/// Relays one client connection to rumqttd, rewriting topics.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    max_payload: usize,
    mut admission: Admission,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let mut buf = BytesMut::with_capacity(1024);
    let first = tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_packet(&mut client_rd, &mut buf, max_payload),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNECT in time"))??;
    let mut connect = match first {
        Some(Packet::Connect(connect)) => connect,
        Some(other) => return Err(protocol_error(format!("{other:?} before CONNECT"))),
        None => return Ok(()),
    };
    if connect.protocol != Protocol::V4 {
        refuse(&mut client_wr, ConnectReturnCode::RefusedProtocolVersion).await;
        return Err(protocol_error(
            "MQTT 5 is not supported (3.1.1 only)".into(),
        ));
    }
    if let Some(will) = &mut connect.last_will {
        check_topic(&will.topic)?;
        will.topic = upstream_topic(&will.topic);
        will.retain = false;
    }
    connect.clean_session = true;
    connect.client_id = admission.claim(&connect.client_id);
    let upstream = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            refuse(&mut client_wr, ConnectReturnCode::ServiceUnavailable).await;
            return Err(e);
        }
    };
    let _ = upstream.set_nodelay(true);
    let (mut up_rd, mut up_wr) = upstream.into_split();
    let mut out = BytesMut::with_capacity(1024);
    write_packet(&mut up_wr, &mut out, &Packet::Connect(connect)).await?;

    let to_broker = async move {
        let mut out = out;
        loop {
            let Some(packet) = read_packet(&mut client_rd, &mut buf, max_payload).await? else {
                return Ok(());
            };
            let packet = client_to_broker(packet)?;
            if let Packet::Subscribe(subscribe) = &packet {
                admission.admit_filters(subscribe.filters.iter().map(|f| f.path.as_str()))?;
            }
            let last = matches!(packet, Packet::Disconnect);
            write_packet(&mut up_wr, &mut out, &packet).await?;
            if last {
                return Ok(());
            }
        }
    };
    let to_client = async move {
        let mut buf = BytesMut::with_capacity(1024);
        let mut out = BytesMut::with_capacity(1024);
        loop {
            // rumqttd does not set TCP_NODELAY on its sockets, so its next small write waits
            // for our ACK of the last one; acknowledge at once instead of after Linux's delayed
            // ACK (up to 40 ms). The kernel drops quick-ACK mode on its own, so re-arm it.
            let _ = socket2::SockRef::from(up_rd.as_ref()).set_tcp_quickack(true);
            let Some(packet) = read_packet(&mut up_rd, &mut buf, max_payload + PREFIX_LEN).await?
            else {
                return Ok(());
            };
            let packet = broker_to_client(packet)?;
            write_packet(&mut client_wr, &mut out, &packet).await?;
        }
    };
    // Either side ending ends both: dropping the halves closes both sockets.
    tokio::select! {
        r = to_broker => r,
        r = to_client => r,
    }
}

/// Rewrites a packet from a client for rumqttd, or refuses it.
fn client_to_broker(packet: Packet) -> std::io::Result<Packet> {
    Ok(match packet {
        Packet::Publish(mut publish) => {
            check_topic(&publish.topic)?;
            publish.topic = upstream_topic(&publish.topic);
            publish.retain = false;
            Packet::Publish(publish)
        }
        Packet::Subscribe(mut subscribe) => {
            for filter in &mut subscribe.filters {
                check_filter(&filter.path)?;
                filter.path = upstream_filter(&filter.path);
            }
            Packet::Subscribe(subscribe)
        }
        Packet::Unsubscribe(mut unsubscribe) => {
            for filter in &mut unsubscribe.topics {
                check_filter(filter)?;
                *filter = upstream_filter(filter);
            }
            Packet::Unsubscribe(unsubscribe)
        }
        p @ (Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::PingReq
        | Packet::Disconnect) => p,
        other => return Err(protocol_error(format!("{other:?} from a client"))),
    })
}

/// Rewrites a packet from rumqttd for the client.
fn broker_to_client(packet: Packet) -> std::io::Result<Packet> {
    Ok(match packet {
        Packet::Publish(mut publish) => {
            publish.topic = client_topic(&publish.topic)
                .ok_or_else(|| protocol_error(format!("unmapped topic {:?}", publish.topic)))?
                .to_owned();
            Packet::Publish(publish)
        }
        Packet::ConnAck(mut ack) => {
            ack.session_present = false;
            Packet::ConnAck(ack)
        }
        other => other,
    })
}

fn check_topic(topic: &str) -> std::io::Result<()> {
    validate_topic(topic).map_err(|e| protocol_error(e.to_string()))?;
    if topic.len() > MAX_TOPIC_LEN - PREFIX_LEN {
        return Err(protocol_error("topic too long".into()));
    }
    Ok(())
}

fn check_filter(filter: &str) -> std::io::Result<()> {
    validate_filter(filter).map_err(|e| protocol_error(e.to_string()))?;
    if filter.len() > MAX_TOPIC_LEN - PREFIX_LEN {
        return Err(protocol_error("topic filter too long".into()));
    }
    Ok(())
}

/// The rumqttd-side name of a client topic (or of a filter without `$share`).
fn upstream_topic(topic: &str) -> String {
    let prefix = if topic.starts_with('$') { "d/" } else { "n/" };
    let mut mapped = String::with_capacity(PREFIX_LEN + topic.len());
    mapped.push_str(prefix);
    mapped.push_str(topic);
    mapped
}

/// The rumqttd-side filter of a client filter (`$share/<group>/` stays in front).
fn upstream_filter(filter: &str) -> String {
    if let Some(rest) = filter.strip_prefix("$share/")
        && let Some((group, inner)) = rest.split_once('/')
        && !group.is_empty()
        && !inner.is_empty()
    {
        return format!("$share/{group}/{}", upstream_topic(inner));
    }
    upstream_topic(filter)
}

/// The client-side name of a rumqttd topic.
fn client_topic(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("n/")
        .or_else(|| topic.strip_prefix("d/").filter(|t| t.starts_with('$')))
}

async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, code: ConnectReturnCode) {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        code,
    });
    let _ = write_packet(wr, &mut out, &ack).await;
}

/// Reads one packet; `None` on a clean end of stream. Errors on malformed or oversized packets.
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max_size: usize,
) -> std::io::Result<Option<Packet>> {
    loop {
        match Packet::read(buf, max_size) {
            Ok(packet) => return Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(missing)) => {
                // Grow with the data that actually arrives, not with what a header promises.
                buf.reserve(missing.clamp(1024, 64 * 1024));
            }
            Err(e) => return Err(invalid_data(e)),
        }
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed inside a packet",
                ))
            };
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    packet: &Packet,
) -> std::io::Result<()> {
    out.clear();
    packet.write(out, usize::MAX).map_err(invalid_data)?;
    wr.write_all(out).await?;
    if out.capacity() > 256 * 1024 {
        // Do not keep a large packet's buffer for the rest of the connection.
        *out = BytesMut::with_capacity(1024);
    }
    Ok(())
}

fn invalid_data(e: mqttbytes::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

fn protocol_error(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, MqttOptions, QoS};

    #[test]
    fn topic_namespaces() {
        assert_eq!(upstream_topic("$hw/events/x"), "d/$hw/events/x");
        assert_eq!(upstream_topic("a/user/b"), "n/a/user/b");
        assert_eq!(upstream_filter("#"), "n/#");
        assert_eq!(upstream_filter("+/user/#"), "n/+/user/#");
        assert_eq!(upstream_filter("$hw/events/#"), "d/$hw/events/#");
        assert_eq!(upstream_filter("$share/g/$hw/#"), "$share/g/d/$hw/#");
        assert_eq!(upstream_filter("$share/g/a/b"), "$share/g/n/a/b");
        assert_eq!(client_topic("d/$hw/x"), Some("$hw/x"));
        assert_eq!(client_topic("n/a"), Some("a"));
        assert_eq!(client_topic("d/x"), None);
        assert_eq!(client_topic("x"), None);
    }

    #[test]
    fn hostile_client_packets_are_refused() {
        let publish = |t: &str| Packet::Publish(rumqttc::Publish::new(t, QoS::AtMostOnce, "x"));
        assert!(client_to_broker(publish("a/+")).is_err());
        assert!(client_to_broker(publish("")).is_err());
        assert!(
            client_to_broker(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false
            )))
            .is_err()
        );
        let sub = Packet::Subscribe(rumqttc::Subscribe::new("a/#/b", QoS::AtLeastOnce));
        assert!(client_to_broker(sub).is_err());
    }

    /// Documents why the front end exists: rumqttd alone drops a client that subscribes to
    /// `$hw/#`. If this starts failing, rumqttd learned `$` topics and the front end may go.
    #[tokio::test]
    async fn rumqttd_alone_refuses_dollar_filters() {
        let (upstream, thread) = start_rumqttd(64 * 1024).unwrap();
        wait_until_ready(upstream, &thread).await.unwrap();
        let options = MqttOptions::new("dollar-test", upstream.ip().to_string(), upstream.port());
        let (client, mut eventloop) = AsyncClient::new(options, 10);
        client.subscribe("$hw/#", QoS::AtLeastOnce).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => return "suback",
                    Ok(_) => {}
                    Err(_) => return "disconnected",
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(outcome, "disconnected");
    }
}
