//! The edge node assembled from the crates: what the `edgecore` binary runs.
//!
//! ```text
//!             CloudHub (wss, mutual TLS)
//!                  │
//!   EdgeHub ── ReliableEdge ── dispatcher ── MetaManager (SQLite: objects, outbox)
//!   (kubeedge-hub)   ▲            │  ▲            │ forward
//!                    │ replay     │  └ ACK after  ├──────────► Edged ── CRI ── containerd
//!                    │            │    the write  │            NodeReporter (node, lease)
//!            outbox appended      │               └──────────► EventBus + TwinEngine ── MQTT
//!                                 │ inventory on connect                │         (embedded broker)
//!                                                                       └ DmiServer ── mappers
//! ```
//!
//! - Every message from the cloud goes through [`MetaManager::from_cloud`]: stored, then
//!   acknowledged, then handed to edged (which reads the store) or to the twin.
//! - On every connect the node sends its inventory (what it stores, with versions), so the
//!   cloud sends only the difference; then the durable outbox is replayed.
//! - Edged's pod and node status, leases and the twin's reports are appended to the outbox and
//!   stay there until the cloud answers them, across disconnects and restarts.
//! - Pods keep running when edgecore stops; the next start adopts them.
//! - The node certificate is renewed at 70-90 % of its lifetime (`rotateCertificates`), and
//!   the next reconnect presents the new one.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kubeedge_edged::node_status::{HostInfo, NodeConfig};
use kubeedge_edged::{
    CriRuntime, Edged, EdgedConfig, EdgedHandle, NodeReporter, NodeReporterConfig,
};
use kubeedge_hub::bootstrap::{EdgeBootstrap, EdgeCredentials};
use kubeedge_hub::{
    EdgeHub, EdgeHubConfig, RateLimit, ReliableEdge, ReliableEdgeHandle, UpstreamConfig,
    UpstreamEvent,
};
use kubeedge_proto::Message;
use kubeedge_store::{LocalTarget, MetaManager, MetaManagerConfig, Outbox, Store, StoreConfig};
use kubeedge_twin::eventbus::{CloudInput, CloudOut, EventBus, stored_subscriptions};
use kubeedge_twin::mqtt::{
    BrokerStatsReader, DEFAULT_SUBSCRIPTIONS, MqttBus, MqttConfig, MqttMode,
};
use kubeedge_twin::{
    DmiConfig, DmiServer, Ingress, IngressConfig, MapperRegistry, TwinConfig, TwinEngine,
};
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use kubeedge_config::edgecore::EdgeCoreFile;

/// What an edgecore counts; rendered as Prometheus text by [`EdgeCoreMetrics::render`].
#[derive(Debug, Default)]
pub struct EdgeCoreMetrics {
    connected: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
    from_cloud: AtomicU64,
    applied: AtomicU64,
    apply_errors: AtomicU64,
    outbox_len: AtomicU64,
    /// The embedded MQTT broker's counters, once it runs.
    broker: std::sync::OnceLock<BrokerStatsReader>,
}

impl EdgeCoreMetrics {
    /// Whether the link to the cloud is up now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed) == 1
    }

    /// Messages from the cloud that changed the store.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus' text format (with this process's resident memory).
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let rows = [
            (
                "edgecore_connected",
                "gauge",
                "1 while the link to the cloud is up",
                get(&self.connected),
            ),
            (
                "edgecore_connects_total",
                "counter",
                "links to the cloud established",
                get(&self.connects),
            ),
            (
                "edgecore_disconnects_total",
                "counter",
                "links to the cloud lost",
                get(&self.disconnects),
            ),
            (
                "edgecore_cloud_messages_total",
                "counter",
                "messages received from the cloud",
                get(&self.from_cloud),
            ),
            (
                "edgecore_cloud_applied_total",
                "counter",
                "cloud messages that changed the store",
                get(&self.applied),
            ),
            (
                "edgecore_cloud_apply_errors_total",
                "counter",
                "cloud messages the store refused (not acknowledged)",
                get(&self.apply_errors),
            ),
            (
                "edgecore_outbox_messages",
                "gauge",
                "messages waiting for the cloud's answer",
                get(&self.outbox_len),
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "resident set size",
                crate::common::rss_kib() * 1024,
            ),
        ];
        let broker = self.broker.get().map(|b| b.read());
        let broker_rows = broker.iter().flat_map(|b| {
            [
                (
                    "edgecore_mqtt_clients",
                    "gauge",
                    "clients of the embedded MQTT broker",
                    b.clients_connected,
                ),
                (
                    "edgecore_mqtt_pending_evicted_total",
                    "counter",
                    "embedded broker: connections closed before CONNECT to make room",
                    b.pending_evicted,
                ),
                (
                    "edgecore_mqtt_connect_timeouts_total",
                    "counter",
                    "embedded broker: connections that sent no CONNECT in time",
                    b.connect_timeouts,
                ),
                (
                    "edgecore_mqtt_refused_total",
                    "counter",
                    "embedded broker: CONNECTs refused (protocol, login, client limit)",
                    b.refused_protocol + b.refused_auth + b.refused_client_limit,
                ),
                (
                    "edgecore_mqtt_subscriptions_refused_total",
                    "counter",
                    "embedded broker: topic filters refused (limits)",
                    b.subscriptions_refused,
                ),
                (
                    "edgecore_mqtt_filters",
                    "gauge",
                    "embedded broker: distinct topic filters",
                    b.filters,
                ),
                (
                    "edgecore_mqtt_messages_dropped_total",
                    "counter",
                    "embedded broker: QoS 0 messages dropped for slow subscribers",
                    b.messages_dropped,
                ),
            ]
        });
        let mut text = String::new();
        for (name, kind, help, value) in rows.into_iter().chain(broker_rows) {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        text
    }
}

/// The twin's link to the cloud: its reports are already in the outbox (the MetaManager's,
/// shared), so a send is a wake-up of the hub's sender.
struct HubCloud(ReliableEdgeHandle<Outbox>);

impl CloudOut for HubCloud {
    async fn queued(&self, _messages: Vec<Message>) {
        self.0.replay();
    }

    async fn send(&self, message: Message) -> kubeedge_twin::Result<()> {
        self.0
            .send(message)
            .await
            .map_err(|e| kubeedge_twin::Error::InvalidMessage(format!("to the cloud: {e}")))
    }
}

type Tasks = JoinSet<(&'static str, Result<(), String>)>;

fn spawn<E: std::fmt::Display>(
    tasks: &mut Tasks,
    name: &'static str,
    fut: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) {
    tasks.spawn(async move { (name, fut.await.map_err(|e| e.to_string())) });
}

/// The join client of `file`: its certificate server, token and certificate paths.
fn join_client(file: &EdgeCoreFile, node: &str) -> EdgeBootstrap {
    let hub = &file.modules.edge_hub;
    let mut join = EdgeBootstrap::new(hub.http_server.clone(), hub.token.clone(), node, "/");
    join.paths = file.cert_paths();
    join
}

/// `edgecore join`: new credentials from the cloud with the token, replacing any on disk (the
/// one way to give a node another identity or key).
pub async fn join(file: &EdgeCoreFile, node: &str) -> Result<EdgeCredentials, String> {
    join_client(file, node)
        .join()
        .await
        .map_err(|e| format!("join: {e}"))
}

/// The node's credentials: those on disk, or new ones from the cloud with the token if there
/// are none (files that exist are never replaced here: see [`EdgeBootstrap::bootstrap`]).
pub async fn credentials(file: &EdgeCoreFile, node: &str) -> Result<EdgeCredentials, String> {
    let join = join_client(file, node);
    if file.modules.edge_hub.http_server.is_empty() {
        return join
            .load()
            .map_err(|e| format!("node certificate: {e}"))?
            .ok_or_else(|| {
                "no node certificate on disk and no modules.edgeHub.httpServer to join through"
                    .to_owned()
            });
    }
    join.bootstrap().await.map_err(|e| format!("join: {e}"))
}

/// Runs the edge node described by `file` until `shutdown` is cancelled or a part fails.
/// `ready` is cancelled once every part has started (the hub is then connecting).
pub async fn run(
    file: &EdgeCoreFile,
    metrics: Arc<EdgeCoreMetrics>,
    ready: CancellationToken,
    shutdown: CancellationToken,
) -> Result<(), String> {
    file.check()?;
    let node = file.node_identity()?;
    let stop = shutdown.child_token();
    let mut tasks = Tasks::new();

    let store = Store::open(StoreConfig::new(&file.database.data_source))
        .map_err(|e| format!("{}: {e}", file.database.data_source.display()))?;
    let meta = MetaManager::new(store.clone(), MetaManagerConfig::new(&node));

    // The link: EdgeHub (mutual TLS WebSocket) under ReliableEdge (ACKs, dedupe, the outbox as
    // its journal).
    // The certificate is renewed in the background (rotateCertificates); every handshake
    // presents the newest one.
    let (current, credentials_rx) = watch::channel(credentials(file, &node).await?);
    let tls =
        EdgeCredentials::rotating_client_config(credentials_rx).map_err(|e| format!("TLS: {e}"))?;
    let hub_file = &file.modules.edge_hub;
    if hub_file.rotate_certificates && !hub_file.http_server.is_empty() {
        let (join, stop) = (join_client(file, &node), stop.clone());
        spawn(&mut tasks, "certificate rotation", async move {
            join.rotate(current, stop).await;
            Ok::<(), String>(())
        });
    }
    let server_name = ServerName::try_from(file.cloud_host()?)
        .map_err(|e| format!("modules.edgeHub.websocket.server: {e}"))?;
    let mut hub_config =
        EdgeHubConfig::new(hub_file.websocket.server.clone(), server_name, tls, &node);
    hub_config.project_id = hub_file.project_id.clone();
    hub_config.heartbeat = Duration::from_secs(hub_file.heartbeat);
    // KubeEdge waits two heartbeats before it reconnects; a session that lasted that long is a
    // stable one and resets the backoff.
    hub_config.stable_after = hub_config.heartbeat * 2;
    hub_config.handshake_timeout = Duration::from_secs(hub_file.websocket.handshake_timeout.max(1));
    hub_config.rate_limit = (hub_file.message_qps > 0.0).then(|| RateLimit {
        per_second: hub_file.message_qps,
        burst: hub_file.message_burst.max(1),
    });
    let (hub, link, raw) = EdgeHub::new(hub_config);
    spawn(&mut tasks, "edgehub", hub.run(stop.clone()));
    let journal = Arc::new(meta.outbox().clone());
    let (reliable, handle, mut events) =
        ReliableEdge::new(link, raw, journal, UpstreamConfig::default());
    spawn(&mut tasks, "reliable link", reliable.run(stop.clone()));

    // Whatever edged or the node reporter appends wakes the sender at once.
    {
        let (mut appended, handle, stop) = (meta.outbox().appended(), handle.clone(), stop.clone());
        spawn(&mut tasks, "outbox waker", async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok::<(), String>(()),
                    changed = appended.changed() => if changed.is_err() { return Ok(()) },
                }
                handle.replay();
            }
        });
    }
    // The outbox gauge.
    {
        let (outbox, metrics, stop) = (meta.outbox().clone(), Arc::clone(&metrics), stop.clone());
        spawn(&mut tasks, "outbox gauge", async move {
            loop {
                if let Ok(n) = outbox.len().await {
                    metrics.outbox_len.store(n as u64, Ordering::Relaxed);
                }
                tokio::select! {
                    () = stop.cancelled() => return Ok::<(), String>(()),
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }

    let edged = if file.modules.edged.enable {
        Some(start_edged(file, &node, &meta, &mut tasks, &stop).await?)
    } else {
        tracing::info!("modules.edged disabled: no pods, and the node is not registered");
        None
    };

    let twin = if file.modules.device_twin.enable && file.modules.event_bus.enable {
        let (twin, broker) =
            start_twin(file, &node, &store, &meta, &handle, &mut tasks, &stop).await?;
        if let Some(broker) = broker {
            let _ = metrics.broker.set(broker);
        }
        Some(twin)
    } else {
        tracing::info!("modules.deviceTwin or modules.eventBus disabled: no devices");
        None
    };

    tracing::info!(node = %node, cloud = %hub_file.websocket.server, "edgecore running");
    ready.cancel();
    let mut result = Ok(());
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(done) = tasks.join_next() => {
                let (name, outcome) = done.unwrap_or(("a task", Err("panicked".to_owned())));
                if !stop.is_cancelled() {
                    result = Err(format!("{name} stopped: {}", outcome.err().unwrap_or_else(|| "ended".into())));
                    break;
                }
            }
            event = events.recv() => match event {
                None => break,
                Some(event) => dispatch(event, &meta, &handle, edged.as_ref(), twin.as_ref(), &metrics).await,
            },
        }
    }
    stop.cancel();
    // Give the parts a moment to close their sockets and files.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "edgecore stopping");
    }
    result
}

async fn start_edged(
    file: &EdgeCoreFile,
    node: &str,
    meta: &MetaManager,
    tasks: &mut Tasks,
    stop: &CancellationToken,
) -> Result<EdgedHandle, String> {
    let edged_file = &file.modules.edged;
    let endpoint = &edged_file
        .tailored_kubelet_config
        .container_runtime_endpoint;
    let runtime = Arc::new(CriRuntime::connect(endpoint).await.map_err(|e| {
        format!("edged: {e} (modules.edged.tailoredKubeletConfig.containerRuntimeEndpoint; set modules.edged.enable: false to run without pods)")
    })?);
    let root = &edged_file.root_directory;
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let node_ip: Option<IpAddr> = if edged_file.node_ip.is_empty() {
        None
    } else {
        Some(
            edged_file
                .node_ip
                .parse()
                .map_err(|e| format!("modules.edged.nodeIP: {e}"))?,
        )
    };
    let host_ip = node_ip
        .or_else(|| HostInfo::gather(root).internal_ip)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let (edged, handle) = Edged::new(
        Arc::clone(&runtime),
        meta.clone(),
        EdgedConfig::new(node, host_ip.to_string(), root),
    );
    spawn(tasks, "edged", edged.run(stop.clone()));
    let mut node_config = NodeConfig::new(node, "");
    node_config.node_ip = node_ip;
    node_config.labels = edged_file.labels.clone();
    node_config.register_schedulable = edged_file.register_schedulable;
    node_config.max_pods = edged_file.tailored_kubelet_config.max_pods;
    let reporter = NodeReporter::new(
        runtime,
        meta.clone(),
        NodeReporterConfig::new(node_config, root),
    );
    spawn(tasks, "node reporter", reporter.run(stop.clone()));
    tracing::info!(cri = %endpoint, host_ip = %host_ip, "edged running");
    Ok(handle)
}

async fn start_twin(
    file: &EdgeCoreFile,
    node: &str,
    store: &Store,
    meta: &MetaManager,
    handle: &ReliableEdgeHandle<Outbox>,
    tasks: &mut Tasks,
    stop: &CancellationToken,
) -> Result<(mpsc::Sender<CloudInput>, Option<BrokerStatsReader>), String> {
    let bus_file = &file.modules.event_bus;
    let engine = TwinEngine::open(store.clone(), meta.outbox().clone(), TwinConfig::new(node))
        .await
        .map_err(|e| format!("twin: {e}"))?;
    let (ingress, ingress_rx) = Ingress::new(IngressConfig::default());
    let mode = MqttMode::from_kubeedge(bus_file.mqtt_mode)
        .map_err(|e| format!("modules.eventBus.mqttMode: {e}"))?;
    let mut mqtt = MqttConfig::new(
        mode,
        bus_file.mqtt_server_external.clone(),
        file.internal_broker()?,
    );
    mqtt.broker = file.broker_config()?;
    let mut subscriptions: Vec<String> = DEFAULT_SUBSCRIPTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    subscriptions.extend(
        stored_subscriptions(store)
            .await
            .map_err(|e| format!("twin: {e}"))?,
    );
    let bus = MqttBus::start(mqtt, subscriptions, ingress.clone(), stop.clone())
        .await
        .map_err(|e| format!("eventbus: {e}"))?;
    if let Some(addr) = bus.broker_addr() {
        tracing::info!(%addr, "embedded MQTT broker listening");
    }
    let broker_stats = bus.broker_stats();
    let mappers = MapperRegistry::new(store.clone());
    let known = mappers.load().await.map_err(|e| format!("twin: {e}"))?;
    let socket = file.dmi_socket();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut dmi = DmiConfig::new(node);
    dmi.socket_path = socket.clone();
    let server = DmiServer::new(dmi, store.clone(), ingress, mappers.clone());
    spawn(tasks, "dmi server", server.serve(stop.clone()));
    tracing::info!(socket = %socket.display(), mappers = known, "DMI server listening");
    let (cloud_tx, cloud_rx) = mpsc::channel(256);
    let eventbus = EventBus::new(
        engine,
        store.clone(),
        bus.handle(),
        HubCloud(handle.clone()),
    )
    .with_mappers(mappers);
    let stop = stop.clone();
    spawn(tasks, "eventbus", async move {
        let result = eventbus.run(ingress_rx, cloud_rx, stop).await;
        bus.shutdown().await;
        result
    });
    Ok((cloud_tx, broker_stats))
}

/// One event of the link: a message is stored, acknowledged, then handed on.
async fn dispatch(
    event: UpstreamEvent,
    meta: &MetaManager,
    handle: &ReliableEdgeHandle<Outbox>,
    edged: Option<&EdgedHandle>,
    twin: Option<&mpsc::Sender<CloudInput>>,
    metrics: &EdgeCoreMetrics,
) {
    match event {
        UpstreamEvent::Connected { extensions } => {
            metrics.connected.store(1, Ordering::Relaxed);
            metrics.connects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(?extensions, "connected to the cloud");
            // Only a kubeedge-rs cloud understands the inventory; KubeEdge's would log it as
            // an unknown resource and drop it.
            if extensions.inventory {
                match meta
                    .inventory()
                    .await
                    .and_then(|inv| inv.to_message().map_err(Into::into))
                {
                    Ok(inventory) => {
                        if let Err(e) = handle.send(inventory).await {
                            tracing::warn!(error = %e, "inventory not sent");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "inventory not built"),
                }
            }
            handle.replay();
            if let Some(edged) = edged {
                edged.resend_status();
            }
            if let Some(twin) = twin {
                let _ = twin.send(CloudInput::Connected).await;
            }
        }
        UpstreamEvent::Disconnected { reason } => {
            metrics.connected.store(0, Ordering::Relaxed);
            metrics.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?reason, "link to the cloud lost; reconnecting");
        }
        UpstreamEvent::Message(msg) => {
            metrics.from_cloud.fetch_add(1, Ordering::Relaxed);
            let route = msg.route.clone();
            match meta.from_cloud(msg).await {
                Ok(outcome) => {
                    if let Some(ack) = outcome.ack {
                        let _ = handle.send(ack).await;
                    }
                    if outcome.changed {
                        metrics.applied.fetch_add(1, Ordering::Relaxed);
                    }
                    match outcome.forward {
                        Some(forward) if forward.target == LocalTarget::Twin => {
                            if let Some(twin) = twin {
                                let _ = twin
                                    .send(CloudInput::Message(Box::new(forward.message)))
                                    .await;
                            }
                        }
                        Some(_) => {
                            if let Some(edged) = edged {
                                edged.store_changed();
                            }
                        }
                        None => {}
                    }
                }
                Err(e) => {
                    metrics.apply_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%route, error = %e, "message from the cloud refused");
                }
            }
        }
    }
}
