//! The embedded MQTT broker: a small MQTT 3.1.1 broker of our own, for the devices and mappers
//! of one edge node.
//!
//! It reads packets with rumqttc's codec plus the specification's checks that the codec leaves
//! out ([`packet::decode_client_packet`](super::packet::decode_client_packet)), keeps the
//! subscriptions in a tree over topic levels and keeps **no state per topic**: a PUBLISH is
//! matched against the subscriptions and handed to each subscriber's queue, then forgotten. So
//! memory depends on the clients and their filters, which are bounded
//! ([`BrokerConfig`]), never on the topics published. (It replaces rumqttd, which refused `$`
//! filters, could not be stopped, cached every topic published and kept a log per filter.)
//!
//! # What it does
//!
//! * MQTT 3.1.1 (protocol level 4). MQTT 3.1 (`MQIsdp`, level 3) and MQTT 5 get CONNACK 0x01
//!   "unacceptable protocol version".
//! * QoS 0 and 1 both ways. QoS 2 from clients follows the specification (PUBREC, PUBREL,
//!   PUBCOMP; a PUBLISH is delivered once, however often it is re-sent before its PUBREL).
//!   SUBACK grants at most QoS 1 and messages go out at min(published, granted) QoS.
//! * Wildcards `+` and `#`, with the rule that a filter starting with a wildcard does not
//!   match a topic starting with `$` (`#` does not match `$hw/...`; `$hw/#` does).
//! * Will messages (published when a connection ends without DISCONNECT: error, keep-alive
//!   timeout, takeover, slow consumer; not when the broker stops).
//! * Keep alive: a client silent for 1.5 times its keep-alive is disconnected.
//! * Takeover: a CONNECT with the id of a connected client ends the older connection.
//!   An empty client id (with clean session) gets a generated one.
//! * Optional user name and password ([`BrokerAuth`]), compared in constant time.
//!
//! # What it does not do (and says so)
//!
//! * Sessions are always clean: CONNACK says no session is present, and nothing is kept for a
//!   client after its connection ends. KubeEdge's clients use clean sessions.
//! * No retained messages: the retain flag of a PUBLISH or will is cleared (as mosquitto with
//!   `retain_available false` would); KubeEdge never retains.
//! * No shared subscriptions: a filter starting with `$share/` gets SUBACK 0x80 (failure).
//! * No TLS: it is meant for loopback, KubeEdge's default (`127.0.0.1:1884`).
//!
//! # Limits
//!
//! Every one is in [`BrokerConfig`], logged as a WARN line (client address, limit; once per
//! limit per 10 s with a count of the hits not logged) and counted in [`BrokerStats`]:
//! the CONNECT timeout, pending (pre-CONNECT) connections (one more closes the oldest), connected
//! clients (CONNACK 0x03), subscriptions per client and distinct filters (SUBACK 0x80), filter
//! length (SUBACK 0x80), the packet size (`max_payload`, and 64 KiB for CONNECT, so pending
//! connections hold little; a larger one closes the connection), each client's
//! outbound queue (QoS 0 dropped, QoS 1 disconnects the client), QoS 1 in flight per client,
//! and a write timeout. A malformed packet, a packet only a server sends, a second CONNECT, a
//! wildcard in a PUBLISH topic or an invalid filter closes that connection only.
//!
//! # Threads
//!
//! The broker runs on one thread of its own (a current-thread tokio runtime), so a flood of
//! MQTT traffic cannot starve the caller's runtime. [`EmbeddedBroker::stop`], dropping it, or
//! cancelling its shutdown token closes the listener and every connection and ends that
//! thread; nothing is left behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::packet::{Inbound, decode_client_packet};
use super::subscription_tree::{ConnId, SubscriptionTree};
use super::{BrokerAuth, BrokerConfig, validate_filter, validate_topic};
use crate::{Error, Result};

/// How often each limit is logged at most.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// A write to a client's socket gathers queued messages up to about this many bytes.
const WRITE_BATCH: usize = 64 * 1024;
/// Read buffers larger than this are given back once empty.
const KEEP_BUFFER: usize = 64 * 1024;
/// The largest CONNECT (remaining length), so that pending connections hold at most
/// `max_pending` times this before they authenticate (a will message is the only large part).
const MAX_CONNECT_LEN: usize = 64 * 1024;
/// Bytes counted per queued message on top of its topic and payload.
const MESSAGE_OVERHEAD: usize = 64;

/// A running embedded broker. See the [module docs](self) for what it does and its limits.
///
/// ```no_run
/// use kubeedge_twin::mqtt::{BrokerConfig, EmbeddedBroker};
/// use tokio_util::sync::CancellationToken;
///
/// # async fn run() -> kubeedge_twin::Result<()> {
/// let broker = EmbeddedBroker::start_with_config(
///     "127.0.0.1:1884".parse().unwrap(),
///     1024 * 1024,
///     BrokerConfig { max_clients: 32, ..BrokerConfig::default() },
///     CancellationToken::new(),
/// )
/// .await?;
/// println!("listening on {}", broker.local_addr());
/// println!("{:?}", broker.stats());
/// broker.stop();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    stop: CancellationToken,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts the broker on `listen` (port 0 picks a free port) with the default
    /// [`BrokerConfig`], packets limited to `max_payload` bytes of remaining length (at least
    /// 1 KiB). Returns once the address is bound.
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
        Self::start_with_config(listen, max_payload, BrokerConfig::default(), shutdown).await
    }

    /// Starts the broker with `config`'s limits and credentials; cancelling `shutdown` stops it.
    pub async fn start_with_config(
        listen: SocketAddr,
        max_payload: usize,
        config: BrokerConfig,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        config.validate()?;
        let max_packet = max_payload.clamp(1024, super::MQTT_MAX_PACKET);
        // Bind here: a taken port fails before anything starts.
        let listener = StdTcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::io(format!("embedded MQTT broker: binding {listen}"), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("embedded MQTT broker: local address", e))?;
        let shared = Arc::new(Shared {
            config,
            max_packet,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            warnings: Mutex::new(HashMap::new()),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("embedded MQTT broker: its runtime", e))?;
        let stop = shutdown;
        let (thread_stop, thread_shared) = (stop.clone(), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                // Returning drops the runtime, which drops every connection task and socket.
                runtime.block_on(serve(listener, thread_shared, thread_stop));
            })
            .map_err(|e| Error::io("embedded MQTT broker: spawning its thread", e))?;
        tracing::info!(%local_addr, "embedded MQTT broker started");
        Ok(Self {
            local_addr,
            stop,
            shared,
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the broker's counters (for metrics).
    pub fn stats(&self) -> BrokerStats {
        self.shared.stats()
    }

    /// A handle that reads the counters for as long as it is kept (a metrics endpoint's).
    pub fn stats_reader(&self) -> BrokerStatsReader {
        BrokerStatsReader(Arc::clone(&self.shared))
    }

    /// Closes the listener and every connection, and waits until the broker's thread ended
    /// (the address can then be bound again).
    pub fn stop(mut self) {
        self.shutdown();
        tracing::info!(local_addr = %self.local_addr, "embedded MQTT broker stopped");
    }

    fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads an embedded broker's counters ([`EmbeddedBroker::stats_reader`]); after the broker
/// stops it keeps giving the last counts.
#[derive(Clone)]
pub struct BrokerStatsReader(Arc<Shared>);

impl BrokerStatsReader {
    /// A snapshot of the counters.
    pub fn read(&self) -> BrokerStats {
        self.0.stats()
    }
}

impl std::fmt::Debug for BrokerStatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.read().fmt(f)
    }
}

/// What the embedded broker counted since it started ([`EmbeddedBroker::stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Clients connected now (after a valid CONNECT).
    pub clients_connected: u64,
    /// Connections waiting for their CONNECT now.
    pub connections_pending: u64,
    /// Pending connections closed to make room for a newer one (`max_pending`).
    pub pending_evicted: u64,
    /// Connections closed for sending no CONNECT in time (`connect_timeout`).
    pub connect_timeouts: u64,
    /// CONNECTs refused for the protocol: bad name or level, bad client id, malformed, or a
    /// first packet that is not CONNECT.
    pub refused_protocol: u64,
    /// CONNECTs refused for missing or wrong credentials.
    pub refused_auth: u64,
    /// CONNECTs refused because `max_clients` were connected.
    pub refused_client_limit: u64,
    /// Connected clients closed for a protocol violation (malformed or oversized packet,
    /// server-only packet, second CONNECT, wildcard topic, invalid filter).
    pub protocol_errors: u64,
    /// Clients disconnected for silence longer than 1.5 times their keep alive.
    pub keep_alive_timeouts: u64,
    /// Connections ended by a newer one with the same client id.
    pub takeovers: u64,
    /// Topic filters refused with SUBACK 0x80 (limits, length, `$share`).
    pub subscriptions_refused: u64,
    /// Distinct topic filters subscribed now.
    pub filters: u64,
    /// PUBLISH packets received from clients (wills included).
    pub messages_received: u64,
    /// Messages queued for a subscriber.
    pub messages_delivered: u64,
    /// QoS 0 messages dropped because the subscriber's queue was full.
    pub messages_dropped: u64,
    /// Clients disconnected for not reading: a full queue for a QoS 1 message, or a write that
    /// blocked longer than `write_timeout`.
    pub slow_consumers_disconnected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: AtomicU64,
    pending_evicted: AtomicU64,
    connect_timeouts: AtomicU64,
    refused_protocol: AtomicU64,
    refused_auth: AtomicU64,
    refused_client_limit: AtomicU64,
    protocol_errors: AtomicU64,
    keep_alive_timeouts: AtomicU64,
    takeovers: AtomicU64,
    subscriptions_refused: AtomicU64,
    messages_received: AtomicU64,
    messages_delivered: AtomicU64,
    messages_dropped: AtomicU64,
    slow_consumers_disconnected: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    config: BrokerConfig,
    max_packet: usize,
    state: Mutex<State>,
    counters: Counters,
    /// Per limit: when it was last logged and how many hits were not logged since.
    warnings: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

#[derive(Debug, Default)]
struct State {
    next_conn: ConnId,
    /// Connections without a CONNECT yet, oldest first, and how to close them.
    pending: BTreeMap<ConnId, CancellationToken>,
    /// Connected clients.
    clients: HashMap<ConnId, Client>,
    /// Connected clients by client id (for takeover).
    by_id: HashMap<String, ConnId>,
    tree: SubscriptionTree,
    /// Distinct filters and how many clients hold each.
    filters: HashMap<Box<str>, usize>,
}

#[derive(Debug)]
struct Client {
    peer: SocketAddr,
    queue: mpsc::UnboundedSender<(Arc<Message>, u8)>,
    /// Bytes in `queue` (counted as topic + payload + [`MESSAGE_OVERHEAD`]).
    queued: Arc<AtomicUsize>,
    cancel: CancellationToken,
    /// Set before `cancel` when the broker ends the connection for a reason of its own.
    ended_by: Arc<Mutex<Option<EndReason>>>,
    /// This client's filters and granted QoS.
    filters: HashMap<String, u8>,
}

#[derive(Debug)]
struct Message {
    topic: String,
    payload: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndReason {
    Takeover,
    SlowConsumer,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn stats(&self) -> BrokerStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let state = lock(&self.state);
        BrokerStats {
            connections_accepted: load(&c.connections_accepted),
            clients_connected: state.clients.len() as u64,
            connections_pending: state.pending.len() as u64,
            pending_evicted: load(&c.pending_evicted),
            connect_timeouts: load(&c.connect_timeouts),
            refused_protocol: load(&c.refused_protocol),
            refused_auth: load(&c.refused_auth),
            refused_client_limit: load(&c.refused_client_limit),
            protocol_errors: load(&c.protocol_errors),
            keep_alive_timeouts: load(&c.keep_alive_timeouts),
            takeovers: load(&c.takeovers),
            subscriptions_refused: load(&c.subscriptions_refused),
            filters: state.filters.len() as u64,
            messages_received: load(&c.messages_received),
            messages_delivered: load(&c.messages_delivered),
            messages_dropped: load(&c.messages_dropped),
            slow_consumers_disconnected: load(&c.slow_consumers_disconnected),
        }
    }

    /// Logs that `limit` was hit by `peer`, at most once per [`WARN_INTERVAL`] per limit.
    fn warn(&self, limit: &'static str, peer: SocketAddr, what: fmt::Arguments<'_>) {
        let suppressed = {
            let mut warnings = lock(&self.warnings);
            let now = Instant::now();
            match warnings.get_mut(limit) {
                Some((last, count)) if now.duration_since(*last) < WARN_INTERVAL => {
                    *count += 1;
                    return;
                }
                Some((last, count)) => {
                    *last = now;
                    std::mem::take(count)
                }
                None => {
                    warnings.insert(limit, (now, 0));
                    0
                }
            }
        };
        tracing::warn!(%peer, limit, suppressed, "embedded MQTT broker: {what}");
    }

    /// Hands a PUBLISH to every matching subscriber's queue.
    fn route(&self, topic: &str, payload: Bytes, qos: u8) {
        bump(&self.counters.messages_received);
        let message = Arc::new(Message {
            topic: topic.to_owned(),
            payload,
        });
        let size = message.topic.len() + message.payload.len() + MESSAGE_OVERHEAD;
        let mut targets = HashMap::new();
        let state = lock(&self.state);
        state.tree.matches(topic, &mut targets);
        for (conn, granted) in targets {
            let Some(client) = state.clients.get(&conn) else {
                continue;
            };
            if client.cancel.is_cancelled() {
                continue;
            }
            let qos = qos.min(granted);
            let queued = client.queued.load(Ordering::Relaxed);
            if queued > 0 && queued + size > self.config.max_queued_bytes {
                if qos == 0 {
                    bump(&self.counters.messages_dropped);
                    self.warn(
                        "max_queued_bytes",
                        client.peer,
                        format_args!(
                            "slow subscriber: QoS 0 messages dropped (its queue holds {queued} \
                             bytes, max_queued_bytes {})",
                            self.config.max_queued_bytes
                        ),
                    );
                } else {
                    bump(&self.counters.slow_consumers_disconnected);
                    self.warn(
                        "max_queued_bytes",
                        client.peer,
                        format_args!(
                            "slow subscriber disconnected: its queue holds {queued} bytes \
                             (max_queued_bytes {}) and a QoS 1 message is due",
                            self.config.max_queued_bytes
                        ),
                    );
                    *lock(&client.ended_by) = Some(EndReason::SlowConsumer);
                    client.cancel.cancel();
                }
                continue;
            }
            client.queued.fetch_add(size, Ordering::Relaxed);
            if client.queue.send((Arc::clone(&message), qos)).is_ok() {
                bump(&self.counters.messages_delivered);
            }
        }
    }
}

/// Accepts connections until `stop` is cancelled.
async fn serve(listener: StdTcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "embedded MQTT broker: cannot listen");
            return;
        }
    };
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                if let Some(local) = local {
                    shared.warn("accept", local, format_args!("accept failed: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        bump(&shared.counters.connections_accepted);
        let cancel = stop.child_token();
        let (conn, evicted) = {
            let mut state = lock(&shared.state);
            state.next_conn += 1;
            let conn = state.next_conn;
            let evicted = if state.pending.len() >= shared.config.max_pending {
                state.pending.pop_first().map(|(_, oldest)| oldest.cancel())
            } else {
                None
            };
            state.pending.insert(conn, cancel.clone());
            (conn, evicted.is_some())
        };
        if evicted {
            bump(&shared.counters.pending_evicted);
            shared.warn(
                "max_pending",
                peer,
                format_args!(
                    "{} connections without CONNECT: closed the oldest to admit this one \
                     (max_pending)",
                    shared.config.max_pending
                ),
            );
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut registration = Registration {
                shared: Arc::clone(&shared),
                conn,
                client_id: None,
            };
            connection(stream, peer, &shared, &mut registration, cancel).await;
        });
    }
}

/// A connection's entries in [`State`]; dropping it removes them (also when the runtime drops
/// the task at shutdown).
struct Registration {
    shared: Arc<Shared>,
    conn: ConnId,
    client_id: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.pending.remove(&self.conn);
        if let Some(client) = state.clients.remove(&self.conn) {
            for filter in client.filters.keys() {
                forget_filter(&mut state, filter, self.conn);
            }
        }
        if let Some(id) = self.client_id.take()
            && state.by_id.get(&id) == Some(&self.conn)
        {
            state.by_id.remove(&id);
        }
    }
}

fn forget_filter(state: &mut State, filter: &str, conn: ConnId) {
    state.tree.remove(filter, conn);
    if let Some(holders) = state.filters.get_mut(filter) {
        *holders -= 1;
        if *holders == 0 {
            state.filters.remove(filter);
        }
    }
}

/// How a connected client's session ended.
enum Ended {
    /// The client sent DISCONNECT: no will.
    Disconnect,
    /// The connection was cancelled: the broker stops (no will), or it ended the connection
    /// for a takeover or a slow consumer (then treated as lost).
    Shutdown,
    /// Anything else (closed socket, error, timeout, takeover, slow consumer): the will goes out.
    Lost,
}

/// Runs one connection from accept to close.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    registration: &mut Registration,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.split();
    let mut buf = BytesMut::with_capacity(1024);
    let config = &shared.config;

    // Before CONNECT: bounded in time, and closed early if newer connections need the room.
    let first = tokio::select! {
        () = cancel.cancelled() => return,
        first = tokio::time::timeout(
            config.connect_timeout,
            read_inbound(&mut rd, &mut buf, shared.max_packet.min(MAX_CONNECT_LEN)),
        ) => first,
    };
    let connect = match first {
        Err(_) => {
            bump(&shared.counters.connect_timeouts);
            shared.warn(
                "connect_timeout",
                peer,
                format_args!(
                    "no CONNECT within {:?} (connect_timeout)",
                    config.connect_timeout
                ),
            );
            return;
        }
        Ok(Ok(Some(Inbound::Packet(Packet::Connect(connect))))) => connect,
        Ok(Ok(Some(Inbound::RefusedConnect(code)))) => {
            bump(&shared.counters.refused_protocol);
            shared.warn("protocol", peer, format_args!("CONNECT refused: {code:?}"));
            refuse(&mut wr, code).await;
            return;
        }
        Ok(Ok(Some(Inbound::Packet(other)))) => {
            bump(&shared.counters.refused_protocol);
            shared.warn(
                "protocol",
                peer,
                format_args!(
                    "closed: first packet is not CONNECT but {}",
                    packet_name(&other)
                ),
            );
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            bump(&shared.counters.refused_protocol);
            shared.warn("protocol", peer, format_args!("closed before CONNECT: {e}"));
            return;
        }
    };
    lock(&shared.state).pending.remove(&registration.conn);

    if let Some(code) = check_credentials(config.auth.as_ref(), &connect) {
        bump(&shared.counters.refused_auth);
        shared.warn("auth", peer, format_args!("CONNECT refused: {code:?}"));
        refuse(&mut wr, code).await;
        return;
    }
    if let Some(will) = &connect.last_will
        && let Err(e) = validate_topic(&will.topic)
    {
        bump(&shared.counters.refused_protocol);
        shared.warn("protocol", peer, format_args!("CONNECT refused: will {e}"));
        return;
    }

    let (queue, mut outbound) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let ended_by = Arc::new(Mutex::new(None));
    let client_id = if connect.client_id.is_empty() {
        format!("kubeedge-auto-{}", registration.conn)
    } else {
        connect.client_id.clone()
    };
    let admitted = {
        let mut state = lock(&shared.state);
        let admitted = state.clients.len() < config.max_clients;
        if admitted {
            register(
                &mut state,
                shared,
                registration.conn,
                &client_id,
                Client {
                    peer,
                    queue,
                    queued: Arc::clone(&queued),
                    cancel: cancel.clone(),
                    ended_by: Arc::clone(&ended_by),
                    filters: HashMap::new(),
                },
            );
        }
        admitted
    };
    if !admitted {
        bump(&shared.counters.refused_client_limit);
        shared.warn(
            "max_clients",
            peer,
            format_args!(
                "{} clients connected; CONNECT refused (max_clients)",
                config.max_clients
            ),
        );
        refuse(&mut wr, ConnectReturnCode::ServiceUnavailable).await;
        return;
    }
    registration.client_id = Some(client_id);
    let mut session = Session {
        shared,
        peer,
        conn: registration.conn,
        cancel: &cancel,
        out: BytesMut::with_capacity(1024),
        inflight: HashSet::new(),
        next_pkid: 0,
        qos2_unreleased: HashSet::new(),
    };
    if session
        .send(
            &mut wr,
            &Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
        )
        .await
        .is_err()
    {
        return;
    }
    let ended = session
        .run(
            &mut rd,
            &mut wr,
            &mut buf,
            &mut outbound,
            &queued,
            connect.keep_alive,
        )
        .await;
    // Cancelled by the broker for a reason of its own (not a shutdown): the client is lost.
    let reason = *lock(&ended_by);
    if let Some(reason) = reason {
        tracing::debug!(%peer, ?reason, "embedded MQTT broker: connection ended by the broker");
    }
    let ended = match ended {
        Ended::Shutdown if reason.is_some() => Ended::Lost,
        other => other,
    };
    if matches!(ended, Ended::Lost)
        && let Some(will) = connect.last_will
    {
        shared.route(&will.topic, will.message, (will.qos as u8).min(1));
    }
}

/// Adds a connected client, ending an older connection with its id (MQTT takeover).
fn register(state: &mut State, shared: &Shared, conn: ConnId, client_id: &str, client: Client) {
    if let Some(older) = state.by_id.insert(client_id.to_owned(), conn)
        && let Some(older) = state.clients.get(&older)
    {
        bump(&shared.counters.takeovers);
        *lock(&older.ended_by) = Some(EndReason::Takeover);
        older.cancel.cancel();
    }
    state.clients.insert(conn, client);
}

/// The CONNACK refusal for `connect`'s credentials, if any.
fn check_credentials(auth: Option<&BrokerAuth>, connect: &Connect) -> Option<ConnectReturnCode> {
    let auth = auth?;
    match &connect.login {
        None => Some(ConnectReturnCode::NotAuthorized),
        Some(login) if auth.accepts(&login.username, &login.password) => None,
        Some(_) => Some(ConnectReturnCode::BadUserNamePassword),
    }
}

/// A connected client's state while its connection runs.
struct Session<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    conn: ConnId,
    cancel: &'a CancellationToken,
    out: BytesMut,
    /// Packet ids of QoS 1 messages sent and not acknowledged.
    inflight: HashSet<u16>,
    next_pkid: u16,
    /// Packet ids of QoS 2 messages received (and delivered) whose PUBREL has not come.
    qos2_unreleased: HashSet<u16>,
}

impl Session<'_> {
    async fn run<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        buf: &mut BytesMut,
        outbound: &mut mpsc::UnboundedReceiver<(Arc<Message>, u8)>,
        queued: &AtomicUsize,
        keep_alive: u16,
    ) -> Ended
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let patience =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut deadline = patience.map(|p| Instant::now() + p);
        let max_inflight = self.shared.config.max_inflight;
        loop {
            let result = tokio::select! {
                () = self.cancel.cancelled() => return Ended::Shutdown,
                read = read_inbound(rd, buf, self.shared.max_packet) => match read {
                    Ok(Some(Inbound::Packet(Packet::Disconnect))) => return Ended::Disconnect,
                    Ok(Some(Inbound::Packet(packet))) => {
                        deadline = patience.map(|p| Instant::now() + p);
                        self.handle(packet)
                    }
                    Ok(Some(Inbound::RefusedConnect(_))) => Err(violation("a second CONNECT".into())),
                    Ok(None) => return Ended::Lost,
                    Err(e) => Err(e),
                },
                Some((message, qos)) = outbound.recv(), if self.inflight.len() < max_inflight => {
                    self.queue_out(&message, qos, queued);
                    // Gather what else is queued into the same write.
                    while self.out.len() < WRITE_BATCH && self.inflight.len() < max_inflight {
                        match outbound.try_recv() {
                            Ok((message, qos)) => self.queue_out(&message, qos, queued),
                            Err(_) => break,
                        }
                    }
                    Ok(())
                }
                () = sleep_until(deadline) => {
                    bump(&self.shared.counters.keep_alive_timeouts);
                    self.shared.warn(
                        "keep_alive",
                        self.peer,
                        format_args!("client silent for 1.5 times its keep alive of {keep_alive} s: disconnected"),
                    );
                    return Ended::Lost;
                }
            };
            if let Err(e) = result {
                bump(&self.shared.counters.protocol_errors);
                self.shared
                    .warn("protocol", self.peer, format_args!("client closed: {e}"));
                return Ended::Lost;
            }
            if buf.is_empty() && buf.capacity() > KEEP_BUFFER {
                *buf = BytesMut::with_capacity(1024);
            }
            if !self.out.is_empty() && self.flush(wr).await.is_err() {
                return Ended::Lost;
            }
        }
    }

    /// Encodes a queued message into the output buffer.
    fn queue_out(&mut self, message: &Message, qos: u8, queued: &AtomicUsize) {
        let size = message.topic.len() + message.payload.len() + MESSAGE_OVERHEAD;
        queued.fetch_sub(size, Ordering::Relaxed);
        let pkid = if qos > 0 {
            loop {
                self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
                if self.inflight.insert(self.next_pkid) {
                    break self.next_pkid;
                }
            }
        } else {
            0
        };
        // Topics and payloads were checked on the way in; an encoding failure cannot happen,
        // and would only lose this message.
        let _ = encode_publish(&mut self.out, &message.topic, qos, pkid, &message.payload);
    }

    /// Acts on one packet from the client; an error closes the connection.
    fn handle(&mut self, packet: Packet) -> std::io::Result<()> {
        match packet {
            Packet::Publish(publish) => self.publish(publish),
            Packet::PubAck(ack) => {
                self.inflight.remove(&ack.pkid);
                Ok(())
            }
            Packet::PubRel(rel) => {
                self.qos2_unreleased.remove(&rel.pkid);
                self.encode(&Packet::PubComp(PubComp::new(rel.pkid)))
            }
            // We never send QoS 2, so these acknowledge nothing.
            Packet::PubRec(_) | Packet::PubComp(_) => Ok(()),
            Packet::Subscribe(subscribe) => self.subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            Packet::PingReq => self.encode(&Packet::PingResp),
            Packet::Connect(_) => Err(violation("a second CONNECT".into())),
            other => Err(violation(format!("{} from a client", packet_name(&other)))),
        }
    }

    fn publish(&mut self, publish: Publish) -> std::io::Result<()> {
        validate_topic(&publish.topic).map_err(|e| violation(e.to_string()))?;
        let qos = publish.qos as u8;
        // Copy the payload out of the read buffer so a queued message holds only its own bytes.
        let payload = Bytes::copy_from_slice(&publish.payload);
        match qos {
            0 => self.shared.route(&publish.topic, payload, 0),
            1 => {
                self.shared.route(&publish.topic, payload, 1);
                self.encode(&Packet::PubAck(PubAck::new(publish.pkid)))?;
            }
            _ => {
                if !self.qos2_unreleased.contains(&publish.pkid) {
                    if self.qos2_unreleased.len() >= self.shared.config.max_inflight {
                        return Err(violation(format!(
                            "more than {} QoS 2 messages without PUBREL (max_inflight)",
                            self.shared.config.max_inflight
                        )));
                    }
                    self.qos2_unreleased.insert(publish.pkid);
                    self.shared.route(&publish.topic, payload, 1);
                }
                self.encode(&Packet::PubRec(PubRec::new(publish.pkid)))?;
            }
        }
        Ok(())
    }

    fn subscribe(&mut self, subscribe: Subscribe) -> std::io::Result<()> {
        for filter in &subscribe.filters {
            validate_filter(&filter.path).map_err(|e| violation(e.to_string()))?;
        }
        let config = &self.shared.config;
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut refusals: Vec<(&'static str, String)> = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            let state = &mut *state;
            for filter in &subscribe.filters {
                let path = filter.path.as_str();
                let granted = (filter.qos as u8).min(1);
                let Some(client) = state.clients.get_mut(&self.conn) else {
                    return Err(violation("not registered".into()));
                };
                let refusal = if path.starts_with("$share/") {
                    Some((
                        "shared_subscription",
                        format!("filter {path:?} refused: shared subscriptions are not supported"),
                    ))
                } else if path.len() > config.max_filter_len {
                    Some((
                        "max_filter_len",
                        format!(
                            "a filter of {} bytes refused (max_filter_len {})",
                            path.len(),
                            config.max_filter_len
                        ),
                    ))
                } else if client.filters.contains_key(path) {
                    None
                } else if client.filters.len() >= config.max_subscriptions_per_client {
                    Some((
                        "max_subscriptions_per_client",
                        format!(
                            "client holds {} filters; {path:?} refused (max_subscriptions_per_client)",
                            client.filters.len()
                        ),
                    ))
                } else if !state.filters.contains_key(path)
                    && state.filters.len() >= config.max_filters
                {
                    Some((
                        "max_filters",
                        format!(
                            "{} distinct filters in the broker; {path:?} refused (max_filters)",
                            state.filters.len()
                        ),
                    ))
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    refusals.push(refusal);
                    codes.push(SubscribeReasonCode::Failure);
                    continue;
                }
                if client.filters.insert(path.to_owned(), granted).is_none() {
                    *state.filters.entry(path.into()).or_default() += 1;
                }
                state.tree.insert(path, self.conn, granted);
                codes.push(SubscribeReasonCode::Success(if granted == 0 {
                    rumqttc::QoS::AtMostOnce
                } else {
                    rumqttc::QoS::AtLeastOnce
                }));
            }
        }
        for (limit, what) in refusals {
            bump(&self.shared.counters.subscriptions_refused);
            self.shared.warn(limit, self.peer, format_args!("{what}"));
        }
        self.encode(&Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) -> std::io::Result<()> {
        for filter in &unsubscribe.topics {
            validate_filter(filter).map_err(|e| violation(e.to_string()))?;
        }
        {
            let mut state = lock(&self.shared.state);
            for filter in &unsubscribe.topics {
                let held = state
                    .clients
                    .get_mut(&self.conn)
                    .and_then(|c| c.filters.remove(filter.as_str()))
                    .is_some();
                if held {
                    forget_filter(&mut state, filter, self.conn);
                }
            }
        }
        self.encode(&Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
    }

    fn encode(&mut self, packet: &Packet) -> std::io::Result<()> {
        packet
            .write(&mut self.out, usize::MAX)
            .map(|_| ())
            .map_err(|e| violation(e.to_string()))
    }

    async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        packet: &Packet,
    ) -> std::io::Result<()> {
        self.encode(packet)?;
        self.flush(wr).await
    }

    /// Writes the output buffer, giving up after `write_timeout` or on cancellation.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> std::io::Result<()> {
        let timeout = self.shared.config.write_timeout;
        let written = tokio::select! {
            () = self.cancel.cancelled() => Err(std::io::Error::other("cancelled")),
            written = tokio::time::timeout(timeout, wr.write_all(&self.out)) => match written {
                Ok(r) => r,
                Err(_) => {
                    bump(&self.shared.counters.slow_consumers_disconnected);
                    self.shared.warn(
                        "write_timeout",
                        self.peer,
                        format_args!("client did not read for {timeout:?}: disconnected (write_timeout)"),
                    );
                    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timeout"))
                }
            },
        };
        self.out.clear();
        if self.out.capacity() > KEEP_BUFFER {
            self.out = BytesMut::with_capacity(1024);
        }
        written
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Reads the next packet; `None` on a clean end of stream between packets.
async fn read_inbound<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max_packet: usize,
) -> std::io::Result<Option<Inbound>> {
    loop {
        if let Some(inbound) = decode_client_packet(buf, max_packet)? {
            return Ok(Some(inbound));
        }
        // Grow with the data that actually arrives, not with what a header promises.
        buf.reserve(4096);
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

async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, code: ConnectReturnCode) {
    let mut out = BytesMut::new();
    if Packet::ConnAck(ConnAck::new(code, false))
        .write(&mut out, usize::MAX)
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&out)).await;
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

fn violation(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Appends a PUBLISH (as the broker sends it: DUP and RETAIN clear) to `out`. `qos` is 0 or 1;
/// `pkid` is written only for QoS 1. Fails if the packet exceeds what MQTT can describe.
fn encode_publish(
    out: &mut BytesMut,
    topic: &str,
    qos: u8,
    pkid: u16,
    payload: &[u8],
) -> std::io::Result<()> {
    let topic_len = u16::try_from(topic.len())
        .map_err(|_| violation("topic longer than 65535 bytes".into()))?;
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    if remaining > super::MQTT_MAX_PACKET {
        return Err(violation("PUBLISH longer than MQTT allows".into()));
    }
    out.reserve(5 + remaining);
    out.extend_from_slice(&[0x30 | (qos << 1)]);
    let mut x = remaining;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        out.extend_from_slice(&[byte]);
        if x == 0 {
            break;
        }
    }
    out.extend_from_slice(&topic_len.to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    #[test]
    fn publish_encoding_matches_the_codec() {
        for (qos, pkid) in [(0u8, 0u16), (1, 7)] {
            let payload = vec![0xa5; 300];
            let mut out = BytesMut::new();
            encode_publish(&mut out, "$hw/x", qos, pkid, &payload).unwrap();
            let mut expected = Publish::new(
                "$hw/x",
                if qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
                payload,
            );
            expected.pkid = pkid;
            let mut codec = BytesMut::new();
            Packet::Publish(expected)
                .write(&mut codec, usize::MAX)
                .unwrap();
            assert_eq!(out, codec);
        }
    }
}
