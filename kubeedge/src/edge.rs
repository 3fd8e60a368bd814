//! The edge node: what the `edgecore` binary runs, as a library.
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
//!
//! [`EdgeCore::builder`] takes the config (KubeEdge's edgecore.yaml as
//! [`EdgeCoreFile`], read with [`EdgeCoreFile::load`] or built in code) and lets any part be
//! swapped: the pod runtime ([`EdgeCoreBuilder::pod_runtime`], containerd's CRI by default) and
//! the MQTT side of the EventBus ([`EdgeCoreBuilder::mqtt`], the embedded broker or an
//! external one by default). [`EdgeCore::run`] is a future the caller drives;
//! [`EdgeCore::handle`] gives health and metrics while it runs.
//!
//! ```no_run
//! use bytes::Bytes;
//! use kubeedge::config::edgecore::EdgeCoreFile;
//! use kubeedge::edge::{EdgeCore, MqttContext};
//! use kubeedge::twin::eventbus::MqttOut;
//! use tokio_util::sync::CancellationToken;
//!
//! /// A vendor's own broker link: here it only logs what the EventBus publishes.
//! struct VendorBroker(MqttContext);
//!
//! impl MqttOut for VendorBroker {
//!     async fn publish(&self, topic: &str, payload: Bytes) -> kubeedge::twin::Result<()> {
//!         println!("{topic}: {} bytes", payload.len());
//!         Ok(())
//!     }
//!     async fn subscribe(&self, _filter: &str) -> kubeedge::twin::Result<()> {
//!         Ok(())
//!     }
//!     async fn unsubscribe(&self, _filter: &str) -> kubeedge::twin::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), kubeedge::Error> {
//! let file = EdgeCoreFile::load("/etc/kubeedge/config/edgecore.yaml".as_ref())?;
//! // Devices' messages reach the vendor's broker; what it receives goes to `context.ingress`.
//! let core = EdgeCore::builder(file).mqtt(VendorBroker).build()?;
//! let health = core.handle();
//! let shutdown = CancellationToken::new();
//! tokio::spawn(core.run(shutdown.clone()));
//! health.started().await;
//! println!("connected: {}", health.connected());
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kubeedge_config::edgecore::EdgeCoreFile;
use kubeedge_edged::node_status::{HostInfo, NodeConfig};
use kubeedge_edged::{
    CriRuntime, Edged, EdgedConfig, EdgedHandle, NodeReporter, NodeReporterConfig, PodRuntime,
};
use kubeedge_hub::bootstrap::{EdgeBootstrap, EdgeCredentials};
use kubeedge_hub::{
    EdgeHub, EdgeHubConfig, RateLimit, ReliableEdge, ReliableEdgeHandle, UpstreamConfig,
    UpstreamEvent,
};
use kubeedge_proto::{Message, NodeName};
use kubeedge_store::{LocalTarget, MetaManager, MetaManagerConfig, Outbox, Store, StoreConfig};
use kubeedge_twin::eventbus::{CloudInput, CloudOut, EventBus, MqttOut, stored_subscriptions};
use kubeedge_twin::mqtt::{
    BrokerStatsReader, DEFAULT_SUBSCRIPTIONS, MqttBus, MqttConfig, MqttHandle, MqttMode,
};
use kubeedge_twin::{
    DmiConfig, DmiServer, Ingress, IngressConfig, MapperRegistry, TwinConfig, TwinEngine,
};
use prometheus_client::registry::Registry;
use rustls::pki_types::ServerName;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::FromConfig;
use crate::metrics::Reading;
use crate::{Error, Result};

/// Where edged's [`PodRuntime`] comes from: [`FromConfig`] connects to containerd's CRI at
/// `modules.edged.tailoredKubeletConfig.containerRuntimeEndpoint`; an `Arc<R>` is the caller's
/// own runtime.
pub trait PodRuntimeChoice: Send + 'static {
    /// The runtime edged drives.
    type Runtime: PodRuntime;
    /// The runtime, given the configured CRI endpoint.
    fn into_runtime(
        self,
        endpoint: &str,
    ) -> impl Future<Output = Result<Arc<Self::Runtime>>> + Send;
}

impl PodRuntimeChoice for FromConfig {
    type Runtime = CriRuntime;

    async fn into_runtime(self, endpoint: &str) -> Result<Arc<CriRuntime>> {
        let runtime = CriRuntime::connect(endpoint).await.map_err(|e| {
            Error::start(
                "edged",
                format!("{e} (modules.edged.tailoredKubeletConfig.containerRuntimeEndpoint; set modules.edged.enable: false to run without pods)"),
            )
        })?;
        Ok(Arc::new(runtime))
    }
}

impl<R: PodRuntime> PodRuntimeChoice for Arc<R> {
    type Runtime = R;

    async fn into_runtime(self, _endpoint: &str) -> Result<Arc<R>> {
        Ok(self)
    }
}

/// What a custom MQTT link is made from ([`EdgeCoreBuilder::mqtt`]).
#[derive(Clone, Debug)]
pub struct MqttContext {
    /// Where the link puts what devices publish (the EventBus and twin read it).
    pub ingress: Ingress,
    /// The topic filters the EventBus needs (KubeEdge's, and those of the stored
    /// subscriptions); later ones arrive through [`MqttOut::subscribe`].
    pub subscriptions: Vec<String>,
    /// Cancelled when the edge node stops.
    pub shutdown: CancellationToken,
}

/// A started MQTT link: what the EventBus publishes through, and what to stop at the end.
#[derive(Debug)]
pub struct MqttStarted<O> {
    out: O,
    broker: Option<BrokerStatsReader>,
    bus: Option<MqttBus>,
}

/// Where the EventBus's MQTT side comes from: [`FromConfig`] starts the embedded broker or
/// connects to the external one (`modules.eventBus.mqttMode`); [`CustomMqtt`] is the
/// caller's (made by [`EdgeCoreBuilder::mqtt`]).
pub trait MqttChoice: Send + 'static {
    /// What the EventBus publishes and subscribes through.
    type Out: MqttOut;
    /// Starts the link.
    fn start(
        self,
        file: &EdgeCoreFile,
        context: MqttContext,
    ) -> impl Future<Output = Result<MqttStarted<Self::Out>>> + Send;
}

impl MqttChoice for FromConfig {
    type Out = MqttHandle;

    async fn start(
        self,
        file: &EdgeCoreFile,
        context: MqttContext,
    ) -> Result<MqttStarted<MqttHandle>> {
        let bus_file = &file.modules.event_bus;
        let mode = MqttMode::from_kubeedge(bus_file.mqtt_mode)
            .map_err(|e| Error::Config(format!("modules.eventBus.mqttMode: {e}").into()))?;
        let mut mqtt = MqttConfig::new(
            mode,
            bus_file.mqtt_server_external.clone(),
            file.internal_broker()?,
        );
        mqtt.broker = file.broker_config()?;
        let bus = MqttBus::start(
            mqtt,
            context.subscriptions,
            context.ingress,
            context.shutdown,
        )
        .await
        .map_err(|e| Error::start("eventbus", e))?;
        if let Some(addr) = bus.broker_addr() {
            tracing::info!(%addr, "embedded MQTT broker listening");
        }
        Ok(MqttStarted {
            out: bus.handle(),
            broker: bus.broker_stats(),
            bus: Some(bus),
        })
    }
}

/// The caller's MQTT link: a function of the [`MqttContext`].
#[derive(Debug)]
pub struct CustomMqtt<F>(F);

impl<F, O> MqttChoice for CustomMqtt<F>
where
    F: FnOnce(MqttContext) -> O + Send + 'static,
    O: MqttOut,
{
    type Out = O;

    async fn start(self, _file: &EdgeCoreFile, context: MqttContext) -> Result<MqttStarted<O>> {
        Ok(MqttStarted {
            out: (self.0)(context),
            broker: None,
            bus: None,
        })
    }
}

/// Builds an [`EdgeCore`]; see the [module docs](self).
#[derive(Debug)]
pub struct EdgeCoreBuilder<R = FromConfig, M = FromConfig> {
    file: EdgeCoreFile,
    runtime: R,
    mqtt: M,
}

impl<R, M> EdgeCoreBuilder<R, M> {
    /// Pods run on `runtime` instead of the configured CRI endpoint.
    pub fn pod_runtime<P: PodRuntime>(self, runtime: Arc<P>) -> EdgeCoreBuilder<Arc<P>, M> {
        EdgeCoreBuilder {
            file: self.file,
            runtime,
            mqtt: self.mqtt,
        }
    }

    /// The EventBus publishes and subscribes through what `make` returns (instead of the
    /// configured broker); the link puts what it receives into the context's `ingress`.
    pub fn mqtt<F, O>(self, make: F) -> EdgeCoreBuilder<R, CustomMqtt<F>>
    where
        F: FnOnce(MqttContext) -> O + Send + 'static,
        O: MqttOut,
    {
        EdgeCoreBuilder {
            file: self.file,
            runtime: self.runtime,
            mqtt: CustomMqtt(make),
        }
    }

    /// The config, to change it in code before [`build`](Self::build).
    pub fn config_mut(&mut self) -> &mut EdgeCoreFile {
        &mut self.file
    }
}

impl<R: PodRuntimeChoice, M: MqttChoice> EdgeCoreBuilder<R, M> {
    /// Checks the config and the node's identity (a node certificate on disk names the node).
    pub fn build(self) -> Result<EdgeCore<R, M>> {
        self.file.check()?;
        let node = self.file.node_identity()?;
        Ok(EdgeCore {
            file: self.file,
            node,
            runtime: self.runtime,
            mqtt: self.mqtt,
            state: Arc::new(EdgeCoreState::default()),
        })
    }
}

/// An edge node ready to run; see the [module docs](self).
#[derive(Debug)]
pub struct EdgeCore<R = FromConfig, M = FromConfig> {
    file: EdgeCoreFile,
    node: NodeName,
    runtime: R,
    mqtt: M,
    state: Arc<EdgeCoreState>,
}

impl EdgeCore {
    /// A builder over `file`, with every part as the file describes it.
    pub fn builder(file: EdgeCoreFile) -> EdgeCoreBuilder {
        EdgeCoreBuilder {
            file,
            runtime: FromConfig,
            mqtt: FromConfig,
        }
    }
}

/// Health and metrics of a running [`EdgeCore`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct EdgeCoreHandle(Arc<EdgeCoreState>);

#[derive(Debug, Default)]
struct EdgeCoreState {
    started: CancellationToken,
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

impl EdgeCoreHandle {
    /// Whether the link to the cloud is up now.
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed) == 1
    }

    /// Messages from the cloud that changed the store.
    pub fn applied(&self) -> u64 {
        self.0.applied.load(Ordering::Relaxed)
    }

    /// Messages waiting in the outbox for the cloud's answer (read every 2 s).
    pub fn outbox_len(&self) -> u64 {
        self.0.outbox_len.load(Ordering::Relaxed)
    }

    /// Whether every part has started (the hub is then connecting).
    pub fn is_started(&self) -> bool {
        self.0.started.is_cancelled()
    }

    /// Waits until every part has started.
    pub async fn started(&self) {
        self.0.started.cancelled().await;
    }

    /// The node's metrics as readings (edgecore's, the embedded broker's, the process's).
    pub fn readings(&self) -> Vec<Reading> {
        let s = &self.0;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut rows = vec![
            Reading::gauge(
                "edgecore_connected",
                "1 while the link to the cloud is up",
                get(&s.connected),
            ),
            Reading::counter(
                "edgecore_connects",
                "links to the cloud established",
                get(&s.connects),
            ),
            Reading::counter(
                "edgecore_disconnects",
                "links to the cloud lost",
                get(&s.disconnects),
            ),
            Reading::counter(
                "edgecore_cloud_messages",
                "messages received from the cloud",
                get(&s.from_cloud),
            ),
            Reading::counter(
                "edgecore_cloud_applied",
                "cloud messages that changed the store",
                get(&s.applied),
            ),
            Reading::counter(
                "edgecore_cloud_apply_errors",
                "cloud messages the store refused (not acknowledged)",
                get(&s.apply_errors),
            ),
            Reading::gauge(
                "edgecore_outbox_messages",
                "messages waiting for the cloud's answer",
                get(&s.outbox_len),
            ),
        ];
        if let Some(b) = s.broker.get().map(|b| b.read()) {
            rows.extend([
                Reading::gauge(
                    "edgecore_mqtt_clients",
                    "clients of the embedded MQTT broker",
                    b.clients_connected,
                ),
                Reading::counter(
                    "edgecore_mqtt_pending_evicted",
                    "embedded broker: connections closed before CONNECT to make room",
                    b.pending_evicted,
                ),
                Reading::counter(
                    "edgecore_mqtt_connect_timeouts",
                    "embedded broker: connections that sent no CONNECT in time",
                    b.connect_timeouts,
                ),
                Reading::counter(
                    "edgecore_mqtt_refused",
                    "embedded broker: CONNECTs refused (protocol, login, client limit)",
                    b.refused_protocol + b.refused_auth + b.refused_client_limit,
                ),
                Reading::counter(
                    "edgecore_mqtt_subscriptions_refused",
                    "embedded broker: topic filters refused (limits)",
                    b.subscriptions_refused,
                ),
                Reading::gauge(
                    "edgecore_mqtt_filters",
                    "embedded broker: distinct topic filters",
                    b.filters,
                ),
                Reading::counter(
                    "edgecore_mqtt_messages_dropped",
                    "embedded broker: QoS 0 messages dropped for slow subscribers",
                    b.messages_dropped,
                ),
            ]);
        }
        rows.extend(crate::metrics::process_readings());
        rows
    }

    /// A registry with this node's metrics (add the vendor's own beside them).
    pub fn registry(&self) -> Registry {
        let handle = self.clone();
        crate::metrics::registry_of(move || handle.readings())
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

type Tasks = JoinSet<(&'static str, std::result::Result<(), String>)>;

fn spawn<E: std::fmt::Display>(
    tasks: &mut Tasks,
    name: &'static str,
    fut: impl Future<Output = std::result::Result<(), E>> + Send + 'static,
) {
    tasks.spawn(async move { (name, fut.await.map_err(|e| e.to_string())) });
}

/// The join client of `file`: its certificate server, token and certificate paths.
fn join_client(file: &EdgeCoreFile, node: &NodeName) -> EdgeBootstrap {
    let hub = &file.modules.edge_hub;
    let mut join = EdgeBootstrap::new(
        hub.http_server.clone(),
        hub.token.clone(),
        node.clone(),
        "/",
    );
    join.paths = file.cert_paths();
    join
}

/// `edgecore join`: new credentials from the cloud with the token, replacing any on disk (the
/// one way to give a node another identity or key).
pub async fn join(file: &EdgeCoreFile, node: &NodeName) -> Result<EdgeCredentials> {
    join_client(file, node)
        .join()
        .await
        .map_err(|e| Error::start("join", e))
}

/// `edgecore join` as a whole: new credentials for `file`'s node (see [`join`]), then `file`
/// written to `config` (mode 0600: it holds the token). Returns the node's name.
pub async fn join_and_save(file: &EdgeCoreFile, config: &std::path::Path) -> Result<NodeName> {
    let node = file.node_name()?;
    join(file, &node).await?;
    if let Some(dir) = config.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::start("join", format!("{}: {e}", dir.display())))?;
    }
    kubeedge_fs::write_atomically(config, file.to_yaml()?.as_bytes(), 0o600)
        .map_err(|e| Error::start("join", e))?;
    Ok(node)
}

/// The node's credentials: those on disk, or new ones from the cloud with the token if there
/// are none (files that exist are never replaced here: see [`EdgeBootstrap::bootstrap`]).
pub async fn credentials(file: &EdgeCoreFile, node: &NodeName) -> Result<EdgeCredentials> {
    let join = join_client(file, node);
    if file.modules.edge_hub.http_server.is_empty() {
        return join
            .load()
            .map_err(|e| Error::start("node certificate", e))?
            .ok_or_else(|| {
                Error::start(
                    "node certificate",
                    "none on disk and no modules.edgeHub.httpServer to join through",
                )
            });
    }
    join.bootstrap().await.map_err(|e| Error::start("join", e))
}

impl<R: PodRuntimeChoice, M: MqttChoice> EdgeCore<R, M> {
    /// Health and metrics, also while [`run`](Self::run) runs.
    pub fn handle(&self) -> EdgeCoreHandle {
        EdgeCoreHandle(Arc::clone(&self.state))
    }

    /// The node's name (its certificate's, once it has one).
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Runs the edge node until `shutdown` is cancelled (then `Ok`) or a part fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            file,
            node,
            runtime,
            mqtt,
            state,
        } = self;
        let stop = shutdown.child_token();
        let mut tasks = Tasks::new();
        if !file.metrics_address.is_empty() {
            let addr = file.metrics_address.parse().map_err(|e| {
                Error::Config(format!("metricsAddress {:?}: {e}", file.metrics_address).into())
            })?;
            let registry = Arc::new(EdgeCoreHandle(Arc::clone(&state)).registry());
            let server = crate::metrics::MetricsServer::bind(addr, registry).await?;
            tracing::info!(%addr, "serving /metrics and /healthz");
            let stop = stop.clone();
            spawn(&mut tasks, "metrics", async move {
                server.serve(stop).await;
                Ok::<(), String>(())
            });
        }

        let store = Store::open(StoreConfig::new(&file.database.data_source)).map_err(|e| {
            Error::start(
                "store",
                format!("{}: {e}", file.database.data_source.display()),
            )
        })?;
        let meta = MetaManager::new(store.clone(), MetaManagerConfig::new(node.clone()));

        // The link: EdgeHub (mutual TLS WebSocket) under ReliableEdge (ACKs, dedupe, the outbox
        // as its journal). The certificate is renewed in the background
        // (rotateCertificates); every handshake presents the newest one.
        let (current, credentials_rx) = watch::channel(credentials(&file, &node).await?);
        let tls = EdgeCredentials::rotating_client_config(credentials_rx)
            .map_err(|e| Error::start("TLS", e))?;
        let hub_file = &file.modules.edge_hub;
        if hub_file.rotate_certificates && !hub_file.http_server.is_empty() {
            let (join, stop) = (join_client(&file, &node), stop.clone());
            spawn(&mut tasks, "certificate rotation", async move {
                join.rotate(current, stop).await;
                Ok::<(), String>(())
            });
        }
        let server_name = ServerName::try_from(file.cloud_host()?)
            .map_err(|e| Error::Config(format!("modules.edgeHub.websocket.server: {e}").into()))?;
        let mut hub_config = EdgeHubConfig::new(
            hub_file.websocket.server.clone(),
            server_name,
            tls,
            node.clone(),
        );
        hub_config.project_id = hub_file.project_id.clone();
        hub_config.heartbeat = Duration::from_secs(hub_file.heartbeat);
        // KubeEdge waits two heartbeats before it reconnects; a session that lasted that long
        // is a stable one and resets the backoff.
        hub_config.stable_after = hub_config.heartbeat * 2;
        hub_config.handshake_timeout =
            Duration::from_secs(hub_file.websocket.handshake_timeout.max(1));
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
            let (mut appended, handle, stop) =
                (meta.outbox().appended(), handle.clone(), stop.clone());
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
            let (outbox, state, stop) = (meta.outbox().clone(), Arc::clone(&state), stop.clone());
            spawn(&mut tasks, "outbox gauge", async move {
                loop {
                    if let Ok(n) = outbox.len().await {
                        state.outbox_len.store(n as u64, Ordering::Relaxed);
                    }
                    tokio::select! {
                        () = stop.cancelled() => return Ok::<(), String>(()),
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            });
        }

        let edged = if file.modules.edged.enable {
            Some(start_edged(&file, &node, runtime, &meta, &mut tasks, &stop).await?)
        } else {
            tracing::info!("modules.edged disabled: no pods, and the node is not registered");
            None
        };

        let twin = if file.modules.device_twin.enable && file.modules.event_bus.enable {
            let twin = start_twin(
                &file, &node, mqtt, &store, &meta, &handle, &mut tasks, &stop,
            );
            let (twin, broker) = twin.await?;
            if let Some(broker) = broker {
                let _ = state.broker.set(broker);
            }
            Some(twin)
        } else {
            tracing::info!("modules.deviceTwin or modules.eventBus disabled: no devices");
            None
        };

        tracing::info!(node = %node, cloud = %hub_file.websocket.server, "edgecore running");
        state.started.cancel();
        let parts = Parts {
            meta: &meta,
            handle: &handle,
            edged: edged.as_ref(),
            twin: twin.as_ref(),
            state: &state,
        };
        let mut result = Ok(());
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(done) = tasks.join_next() => {
                    let (part, outcome) = done.unwrap_or(("a task", Err("panicked".to_owned())));
                    if !stop.is_cancelled() {
                        let reason = outcome.err().unwrap_or_else(|| "ended".into());
                        result = Err(Error::Stopped { part, reason });
                        break;
                    }
                }
                event = events.recv() => match event {
                    None => break,
                    Some(event) => parts.dispatch(event).await,
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
}

async fn start_edged<R: PodRuntimeChoice>(
    file: &EdgeCoreFile,
    node: &NodeName,
    runtime: R,
    meta: &MetaManager,
    tasks: &mut Tasks,
    stop: &CancellationToken,
) -> Result<EdgedHandle> {
    let edged_file = &file.modules.edged;
    let endpoint = &edged_file
        .tailored_kubelet_config
        .container_runtime_endpoint;
    let runtime = runtime.into_runtime(endpoint).await?;
    let root = &edged_file.root_directory;
    std::fs::create_dir_all(root)
        .map_err(|e| Error::start("edged", format!("{}: {e}", root.display())))?;
    let node_ip: Option<IpAddr> = if edged_file.node_ip.is_empty() {
        None
    } else {
        Some(
            edged_file
                .node_ip
                .parse()
                .map_err(|e| Error::Config(format!("modules.edged.nodeIP: {e}").into()))?,
        )
    };
    let host_ip = node_ip
        .or_else(|| HostInfo::gather(root).internal_ip)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let (edged, handle) = Edged::new(
        Arc::clone(&runtime),
        meta.clone(),
        EdgedConfig::new(node.clone(), host_ip.to_string(), root),
    );
    spawn(tasks, "edged", edged.run(stop.clone()));
    let mut node_config = NodeConfig::new(node.clone(), "");
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

#[allow(clippy::too_many_arguments)]
async fn start_twin<M: MqttChoice>(
    file: &EdgeCoreFile,
    node: &NodeName,
    mqtt: M,
    store: &Store,
    meta: &MetaManager,
    handle: &ReliableEdgeHandle<Outbox>,
    tasks: &mut Tasks,
    stop: &CancellationToken,
) -> Result<(mpsc::Sender<CloudInput>, Option<BrokerStatsReader>)> {
    let engine = TwinEngine::open(
        store.clone(),
        meta.outbox().clone(),
        TwinConfig::new(node.clone()),
    )
    .await
    .map_err(|e| Error::start("twin", e))?;
    let (ingress, ingress_rx) = Ingress::new(IngressConfig::default());
    let mut subscriptions: Vec<String> = DEFAULT_SUBSCRIPTIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    subscriptions.extend(
        stored_subscriptions(store)
            .await
            .map_err(|e| Error::start("twin", e))?,
    );
    let context = MqttContext {
        ingress: ingress.clone(),
        subscriptions,
        shutdown: stop.clone(),
    };
    let started = mqtt.start(file, context).await?;
    let mappers = MapperRegistry::new(store.clone());
    let known = mappers.load().await.map_err(|e| Error::start("twin", e))?;
    let socket = file.dmi_socket();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::start("dmi server", format!("{}: {e}", dir.display())))?;
    }
    let mut dmi = DmiConfig::new(node.clone());
    dmi.socket_path = socket.clone();
    let server = DmiServer::new(dmi, store.clone(), ingress, mappers.clone());
    spawn(tasks, "dmi server", server.serve(stop.clone()));
    tracing::info!(socket = %socket.display(), mappers = known, "DMI server listening");
    let (cloud_tx, cloud_rx) = mpsc::channel(256);
    let MqttStarted { out, broker, bus } = started;
    let eventbus =
        EventBus::new(engine, store.clone(), out, HubCloud(handle.clone())).with_mappers(mappers);
    let stop = stop.clone();
    spawn(tasks, "eventbus", async move {
        let result = eventbus.run(ingress_rx, cloud_rx, stop).await;
        if let Some(bus) = bus {
            bus.shutdown().await;
        }
        result
    });
    Ok((cloud_tx, broker))
}

/// What the dispatcher hands each event of the link to.
struct Parts<'a> {
    meta: &'a MetaManager,
    handle: &'a ReliableEdgeHandle<Outbox>,
    edged: Option<&'a EdgedHandle>,
    twin: Option<&'a mpsc::Sender<CloudInput>>,
    state: &'a EdgeCoreState,
}

impl Parts<'_> {
    /// One event of the link: a message is stored, acknowledged, then handed on.
    async fn dispatch(&self, event: UpstreamEvent) {
        let state = self.state;
        match event {
            UpstreamEvent::Connected { extensions } => {
                state.connected.store(1, Ordering::Relaxed);
                state.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(?extensions, "connected to the cloud");
                // Only a kubeedge-rs cloud understands the inventory; KubeEdge's would log it
                // as an unknown resource and drop it.
                if extensions.inventory {
                    match self
                        .meta
                        .inventory()
                        .await
                        .and_then(|inv| inv.to_message().map_err(Into::into))
                    {
                        Ok(inventory) => {
                            if let Err(e) = self.handle.send(inventory).await {
                                tracing::warn!(error = %e, "inventory not sent");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "inventory not built"),
                    }
                }
                self.handle.replay();
                if let Some(edged) = self.edged {
                    edged.resend_status();
                }
                if let Some(twin) = self.twin {
                    let _ = twin.send(CloudInput::Connected).await;
                }
            }
            UpstreamEvent::Disconnected { reason } => {
                state.connected.store(0, Ordering::Relaxed);
                state.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?reason, "link to the cloud lost; reconnecting");
            }
            UpstreamEvent::Message(msg) => {
                state.from_cloud.fetch_add(1, Ordering::Relaxed);
                let route = msg.route.clone();
                match self.meta.from_cloud(msg).await {
                    Ok(outcome) => {
                        if let Some(ack) = outcome.ack {
                            let _ = self.handle.send(ack).await;
                        }
                        if outcome.changed {
                            state.applied.fetch_add(1, Ordering::Relaxed);
                        }
                        match outcome.forward {
                            Some(forward) if forward.target == LocalTarget::Twin => {
                                if let Some(twin) = self.twin {
                                    let message = Box::new(forward.message);
                                    let _ = twin.send(CloudInput::Message(message)).await;
                                }
                            }
                            Some(_) => {
                                if let Some(edged) = self.edged {
                                    edged.store_changed();
                                }
                            }
                            None => {}
                        }
                    }
                    Err(e) => {
                        state.apply_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%route, error = %e, "message from the cloud refused");
                    }
                }
            }
        }
    }
}
