//! The EventBus clients: one rumqttc client per broker in use, each polled by its own task.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "embedded-broker")]
use super::EmbeddedBroker;
use super::{MqttConfig, parse_broker, validate_filter, validate_topic};
use crate::{Error, Ingress, Result};

/// Filters per SUBSCRIBE packet when re-subscribing.
const SUBSCRIBE_CHUNK: usize = 32;
/// How long shutdown waits for the clients to say DISCONNECT.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The running EventBus clients (and the embedded broker, in [`MqttMode::Internal`] and
/// [`MqttMode::Both`]).
///
/// Dropping it stops the clients (without waiting) and the embedded broker;
/// [`MqttBus::shutdown`] also waits for the clients to disconnect.
///
/// [`MqttMode::Internal`]: super::MqttMode::Internal
/// [`MqttMode::Both`]: super::MqttMode::Both
#[derive(Debug)]
pub struct MqttBus {
    handle: MqttHandle,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    #[cfg(feature = "embedded-broker")]
    broker: Option<EmbeddedBroker>,
}

/// Publishes and manages subscriptions on every broker in use. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MqttHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    links: Vec<Link>,
    state: Mutex<SubState>,
    max_payload: usize,
    stop: CancellationToken,
}

/// One client and what the others need to know about it.
#[derive(Debug)]
struct Link {
    /// `internal` or `external`.
    name: &'static str,
    /// `host:port`, for messages.
    addr: String,
    client: AsyncClient,
    /// Connected and the subscription set acknowledged.
    ready: watch::Receiver<bool>,
}

/// The remembered subscriptions and which links have a session. Changed only under its mutex,
/// together with enqueueing the SUBSCRIBE / UNSUBSCRIBE, so re-subscribing after a reconnect
/// and dynamic changes cannot overtake each other.
#[derive(Debug)]
struct SubState {
    filters: BTreeSet<String>,
    session_up: Vec<bool>,
}

impl MqttBus {
    /// Starts the embedded broker (in `Internal` and `Both` mode) and one client per broker in
    /// use, subscribed (QoS 1) to `subscriptions` on every (re)connect. Every publication the
    /// clients receive is pushed into `ingress` (without waiting: a full queue drops it).
    /// Cancelling `shutdown` stops everything.
    ///
    /// Returns once the tasks run, not once connected: see [`MqttHandle::connected`].
    pub async fn start(
        config: MqttConfig,
        subscriptions: Vec<String>,
        ingress: Ingress,
        shutdown: CancellationToken,
    ) -> Result<MqttBus> {
        config.validate()?;
        for filter in &subscriptions {
            validate_filter(filter)?;
        }
        let stop = shutdown.child_token();
        let client_id = if config.client_id.is_empty() {
            generated_client_id()
        } else {
            config.client_id.clone()
        };

        let mut targets: Vec<(&'static str, String, u16)> = Vec::new();
        #[cfg(feature = "embedded-broker")]
        let broker = if config.mode.uses_internal() {
            let broker = EmbeddedBroker::start_with_config(
                config.internal,
                config.max_payload,
                config.broker.clone(),
                stop.child_token(),
            )
            .await?;
            let addr = broker.local_addr();
            let host = if addr.ip().is_unspecified() {
                // Listening on every address: connect over loopback.
                match addr {
                    std::net::SocketAddr::V4(_) => "127.0.0.1".to_owned(),
                    std::net::SocketAddr::V6(_) => "::1".to_owned(),
                }
            } else {
                addr.ip().to_string()
            };
            targets.push(("internal", host, addr.port()));
            Some(broker)
        } else {
            None
        };
        #[cfg(not(feature = "embedded-broker"))]
        if config.mode.uses_internal() {
            return Err(Error::Broker(
                "built without the embedded-broker feature; use MqttMode::External".into(),
            ));
        }
        if config.mode.uses_external() {
            let (host, port) = parse_broker(&config.external)?;
            targets.push(("external", host, port));
        }

        let filters: BTreeSet<String> = subscriptions.into_iter().collect();
        let mut links = Vec::new();
        let mut loops = Vec::new();
        for (name, host, port) in targets {
            let mut options = MqttOptions::new(client_id.clone(), host.clone(), port);
            options
                .set_clean_session(true)
                .set_keep_alive(whole_seconds(config.keep_alive))
                .set_max_packet_size(config.max_payload, config.max_payload)
                .set_request_channel_capacity(config.request_capacity);
            #[cfg(feature = "embedded-broker")]
            if name == "internal"
                && let Some(auth) = &config.broker.auth
            {
                // The embedded broker asks its own clients for its credentials too.
                options.set_credentials(auth.username.clone(), auth.password.clone());
            }
            let (client, mut eventloop) = AsyncClient::new(options, config.request_capacity);
            // A twin result is one small packet: send it now, not after Nagle's wait for the
            // broker's (delayed, up to 40 ms) ACK of the previous one.
            let mut network = NetworkOptions::new();
            network.set_tcp_nodelay(true);
            eventloop.set_network_options(network);
            let (ready_tx, ready) = watch::channel(false);
            links.push(Link {
                name,
                addr: format_addr(&host, port),
                client: client.clone(),
                ready,
            });
            loops.push((eventloop, ready_tx));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(SubState {
                filters,
                session_up: vec![false; links.len()],
            }),
            links,
            max_payload: config.max_payload,
            stop: stop.clone(),
        });
        let tasks = loops
            .into_iter()
            .enumerate()
            .map(|(index, (eventloop, ready))| {
                tokio::spawn(
                    LinkTask {
                        index,
                        shared: Arc::clone(&shared),
                        eventloop,
                        ready,
                        ingress: ingress.clone(),
                        reconnect_interval: config.reconnect_interval,
                    }
                    .run(),
                )
            })
            .collect();
        Ok(MqttBus {
            handle: MqttHandle { shared },
            tasks,
            stop,
            #[cfg(feature = "embedded-broker")]
            broker,
        })
    }

    /// A handle to publish and subscribe with.
    pub fn handle(&self) -> MqttHandle {
        self.handle.clone()
    }

    /// A reader of the embedded broker's counters, when it runs.
    #[cfg(feature = "embedded-broker")]
    pub fn broker_stats(&self) -> Option<super::BrokerStatsReader> {
        self.broker.as_ref().map(EmbeddedBroker::stats_reader)
    }

    /// The embedded broker's address, when it runs.
    #[cfg(feature = "embedded-broker")]
    pub fn broker_addr(&self) -> Option<std::net::SocketAddr> {
        self.broker.as_ref().map(EmbeddedBroker::local_addr)
    }

    /// Disconnects the clients (waiting at most 2 s each for DISCONNECT to go out), stops their
    /// tasks and the embedded broker. Handles then fail with [`Error::Closed`].
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            // Each task bounds its own goodbye; this only guards against a stuck one.
            let abort = task.abort_handle();
            if tokio::time::timeout(DISCONNECT_TIMEOUT * 2, task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        #[cfg(feature = "embedded-broker")]
        if let Some(broker) = self.broker.take() {
            broker.stop();
        }
    }
}

impl Drop for MqttBus {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl MqttHandle {
    /// Publishes `payload` on `topic` (QoS 1, not retained) to every broker in use. Waits while
    /// a client's request queue is full. Fails when the topic is invalid, the packet would be
    /// larger than `max_payload`, or a broker is not connected (it still publishes to the
    /// others; the first error is returned).
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let up = self.check_publish(topic, payload.len())?;
        let mut first_error = None;
        for (link, up) in self.shared.links.iter().zip(up) {
            let result = if up {
                link.client
                    .publish_bytes(topic, QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .map_err(|_| Error::Closed)
            } else {
                Err(link.not_connected())
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Like [`MqttHandle::publish`] but never waits: fails with [`Error::QueueFull`] when a
    /// client's request queue is full.
    pub fn try_publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        let up = self.check_publish(topic, payload.len())?;
        let mut first_error = None;
        for (link, up) in self.shared.links.iter().zip(up) {
            let result = if up {
                match link
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload.clone())
                {
                    Ok(()) => Ok(()),
                    Err(ClientError::TryRequest(_)) => Err(Error::QueueFull("MQTT publish")),
                    Err(ClientError::Request(_)) => Err(Error::Closed),
                }
            } else {
                Err(link.not_connected())
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Adds `filter` to the subscription set (kept across reconnects) and subscribes (QoS 1) on
    /// every connected broker. Subscribing to a filter already in the set does nothing.
    pub async fn subscribe(&self, filter: &str) -> Result<()> {
        validate_filter(filter)?;
        // Enqueue under the lock (a re-subscribe after a reconnect takes it too); only the
        // event loops, which never take it, drain the queues.
        let up = {
            let mut state = self.lock_open()?;
            if !state.filters.insert(filter.to_owned()) {
                return Ok(());
            }
            state.session_up.clone()
        };
        for (link, up) in self.shared.links.iter().zip(up) {
            if up {
                link.client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .map_err(|_| Error::Closed)?;
            }
        }
        Ok(())
    }

    /// Removes `filter` from the subscription set and unsubscribes on every connected broker.
    /// Unsubscribing from a filter not in the set does nothing.
    pub async fn unsubscribe(&self, filter: &str) -> Result<()> {
        validate_filter(filter)?;
        let up = {
            let mut state = self.lock_open()?;
            if !state.filters.remove(filter) {
                return Ok(());
            }
            state.session_up.clone()
        };
        for (link, up) in self.shared.links.iter().zip(up) {
            if up {
                link.client
                    .unsubscribe(filter)
                    .await
                    .map_err(|_| Error::Closed)?;
            }
        }
        Ok(())
    }

    /// The current subscription set.
    pub fn subscriptions(&self) -> Vec<String> {
        self.lock().filters.iter().cloned().collect()
    }

    /// Whether every client is connected and its broker acknowledged the subscription set.
    pub fn is_connected(&self) -> bool {
        self.shared.links.iter().all(|l| *l.ready.borrow())
    }

    /// Waits until [`MqttHandle::is_connected`] (every client connected and subscribed); fails
    /// with [`Error::Closed`] once the bus is shut down. Bound it with a timeout.
    pub async fn connected(&self) -> Result<()> {
        loop {
            for link in &self.shared.links {
                let mut ready = link.ready.clone();
                tokio::select! {
                    r = ready.wait_for(|up| *up) => { r.map_err(|_| Error::Closed)?; }
                    () = self.shared.stop.cancelled() => return Err(Error::Closed),
                }
            }
            // One may have dropped while waiting for another.
            if self.is_connected() {
                return Ok(());
            }
        }
    }

    /// Validates a publish; returns which links have a session.
    fn check_publish(&self, topic: &str, payload_len: usize) -> Result<Vec<bool>> {
        validate_topic(topic)?;
        // Remaining length: topic length prefix, topic, packet id, payload.
        let size = 2 + topic.len() + 2 + payload_len;
        if size > self.shared.max_payload {
            return Err(Error::Mqtt(format!(
                "publish to {topic:?} of {size} bytes is larger than max_payload ({} bytes)",
                self.shared.max_payload
            )));
        }
        Ok(self.lock_open()?.session_up.clone())
    }

    fn lock_open(&self) -> Result<MutexGuard<'_, SubState>> {
        if self.shared.stop.is_cancelled() {
            return Err(Error::Closed);
        }
        Ok(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, SubState> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SubState> {
        // The state stays consistent even if a holder panicked: every change is one insert,
        // remove or flag.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Link {
    fn not_connected(&self) -> Error {
        Error::Mqtt(format!(
            "not connected to the {} broker {}",
            self.name, self.addr
        ))
    }
}

/// Polls one client's event loop until the bus stops.
struct LinkTask {
    index: usize,
    shared: Arc<Shared>,
    eventloop: EventLoop,
    ready: watch::Sender<bool>,
    ingress: Ingress,
    reconnect_interval: Duration,
}

impl LinkTask {
    async fn run(mut self) {
        let link = &self.shared.links[self.index];
        let (name, addr) = (link.name, link.addr.clone());
        let client = link.client.clone();
        let stop = self.shared.stop.clone();
        let mut outage = false;
        let mut ingress_closed = false;
        // SUBACKs still expected for the re-subscribe after the last CONNACK.
        let mut awaiting_subacks = 0usize;
        loop {
            let event = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    match self.ingress.push(publish.topic, publish.payload) {
                        // QueueFull is counted and logged by the ingress.
                        Ok(()) | Err(Error::QueueFull(_)) => {}
                        Err(e) => {
                            if !ingress_closed {
                                tracing::warn!(broker = name, error = %e,
                                    "MQTT: ingress closed; dropping publications");
                                ingress_closed = true;
                            }
                        }
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if outage {
                        tracing::info!(broker = name, %addr, "MQTT reconnected");
                    } else {
                        tracing::info!(broker = name, %addr, "MQTT connected");
                    }
                    outage = false;
                    awaiting_subacks = self.resubscribe(&client);
                    if awaiting_subacks == 0 {
                        self.ready.send_replace(true);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                        .count();
                    if refused > 0 {
                        tracing::warn!(broker = name, %addr, refused,
                            "MQTT broker refused subscriptions");
                    }
                    if awaiting_subacks > 0 {
                        awaiting_subacks -= 1;
                        if awaiting_subacks == 0 {
                            self.ready.send_replace(true);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.shared.lock().session_up[self.index] = false;
                    self.ready.send_replace(false);
                    awaiting_subacks = 0;
                    if outage {
                        tracing::debug!(broker = name, %addr, error = %e, "MQTT still down");
                    } else {
                        tracing::warn!(broker = name, %addr, error = %e,
                            retry_in = ?self.reconnect_interval, "MQTT connection lost");
                        outage = true;
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(self.reconnect_interval) => {}
                    }
                }
            }
        }
        self.goodbye(&client).await;
    }

    /// Marks the session up and enqueues SUBSCRIBEs for the whole set; returns how many SUBACKs
    /// to wait for (0 when it could not enqueue them all now: the rest goes out from a task).
    fn resubscribe(&self, client: &AsyncClient) -> usize {
        let mut state = self.shared.lock();
        state.session_up[self.index] = true;
        let filters: Vec<String> = state.filters.iter().cloned().collect();
        let chunks: Vec<Vec<SubscribeFilter>> = filters
            .chunks(SUBSCRIBE_CHUNK)
            .map(|c| {
                c.iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                    .collect()
            })
            .collect();
        let mut sent = 0;
        let mut rest = chunks.into_iter();
        for chunk in rest.by_ref() {
            match client.try_subscribe_many(chunk) {
                Ok(()) => sent += 1,
                Err(ClientError::TryRequest(rumqttc::Request::Subscribe(s))) => {
                    // The request queue is full: send the rest from a task (in order) and do
                    // not wait for their SUBACKs.
                    let remaining: Vec<Vec<SubscribeFilter>> =
                        std::iter::once(s.filters).chain(rest).collect();
                    let client = client.clone();
                    let stop = self.shared.stop.clone();
                    tokio::spawn(async move {
                        for chunk in remaining {
                            tokio::select! {
                                () = stop.cancelled() => return,
                                r = client.subscribe_many(chunk) => if r.is_err() { return },
                            }
                        }
                    });
                    return 0;
                }
                Err(_) => return 0,
            }
        }
        drop(state);
        sent
    }

    /// Says DISCONNECT (bounded in time) when connected.
    async fn goodbye(mut self, client: &AsyncClient) {
        let connected = std::mem::replace(&mut self.shared.lock().session_up[self.index], false);
        self.ready.send_replace(false);
        if !connected || client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// `kubeedge-twin-<pid>-<n>`: unique in this process, and across processes on one node.
fn generated_client_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "kubeedge-twin-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// rumqttc refuses keep alives under one second (it panics): round up to whole seconds.
fn whole_seconds(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

fn format_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rounding() {
        assert_eq!(whole_seconds(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            whole_seconds(Duration::from_millis(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn ids_and_addrs() {
        assert_ne!(generated_client_id(), generated_client_id());
        assert_eq!(format_addr("::1", 1), "[::1]:1");
        assert_eq!(format_addr("h", 2), "h:2");
    }
}
