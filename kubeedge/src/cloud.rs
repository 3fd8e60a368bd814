//! The cloud: what the `cloudcore` binary runs, as a library.
//!
//! ```text
//!  edge nodes ── CloudHub (wss, mutual TLS) ── ReliableCloud ── CloudController ── ClusterWriter
//!                join server (/ca.crt, /edge.crt)  (ACKs, redelivery)     ▲        (API server or
//!                                                                          │         status files)
//!                                                     ClusterSource ───────┘
//!                                                (API server watch or a folder of YAML)
//! ```
//!
//! [`CloudCore::builder`] takes the settings ([`Settings`]: KubeEdge's cloudcore.yaml with the
//! flags applied, or built in code). By default the objects come from the cluster the settings
//! name (an API server, or `kubeedgeRs.manifests`); [`CloudCoreBuilder::cluster`] plugs in a
//! vendor's own [`ClusterSource`] and [`ClusterWriter`]. [`CloudCoreBuilder::build`] loads the
//! CA and binds the sockets; [`CloudCore::run`] is a future the caller drives.
//!
//! ```no_run
//! use kubeedge::cloud::{CloudCore, ClusterSource};
//! use kubeedge::controllers::{Kind, ManifestConfig, ManifestSource, ObjectEvent};
//! use kubeedge::config::cloudcore::Settings;
//! use tokio::sync::mpsc;
//! use tokio_util::sync::CancellationToken;
//!
//! /// A vendor's own source of objects: here, a fixed list of nothing but a listed kind.
//! struct Inventory;
//!
//! impl ClusterSource for Inventory {
//!     async fn run(
//!         self,
//!         events: mpsc::Sender<ObjectEvent>,
//!         shutdown: CancellationToken,
//!     ) -> kubeedge::controllers::Result<()> {
//!         let listed = ObjectEvent::Listed { kind: Kind::Pod, objects: Vec::new() };
//!         events.send(listed).await.map_err(|_| kubeedge::controllers::Error::Stopped)?;
//!         shutdown.cancelled().await;
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), kubeedge::Error> {
//! let settings = Settings::default();
//! // Node reports are written as files; the objects come from the vendor's source.
//! let (_, writer) = ManifestSource::open(ManifestConfig::new("manifests", "status"))?;
//! let core = CloudCore::builder(settings).cluster(Inventory, writer).build().await?;
//! println!("edge nodes connect to {}", core.local_addr());
//! core.run(CancellationToken::new()).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use kubeedge_cloud::{CloudConfig, CloudController, CloudMetrics, DeviceLimits, Kind, ObjectEvent};
use kubeedge_config::cloudcore::{self as cloudcore_config, Settings};
use kubeedge_hub::bootstrap::{BootstrapConfig, BootstrapServer, SpentTokenFile};
use kubeedge_hub::{
    CloudHub, CloudHubConfig, DeliveryConfig, DeliveryEvent, ReliableCloud, ReliableCloudHandle,
    tls,
};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use kubeedge_cloud::{ClusterSource, ClusterWriter};

pub use crate::FromConfig;
use crate::metrics::{MetricsServer, Reading};
use crate::{Error, Result};

/// The objects and the writer of a cloud: [`FromConfig`] (the API server of the settings, or
/// `kubeedgeRs.manifests`), or a vendor's [`Cluster`] (made by [`CloudCoreBuilder::cluster`]).
pub trait ClusterChoice: Send + 'static {
    /// Runs the controller over this cluster until `shutdown`.
    fn serve(
        self,
        settings: &Settings,
        controller: ControllerParts,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// What a [`ClusterChoice`] runs the controller with (made by [`CloudCore`]).
#[derive(Debug)]
pub struct ControllerParts {
    config: CloudConfig,
    cloud: ReliableCloudHandle,
    delivery: mpsc::Receiver<DeliveryEvent>,
    metrics: CloudMetrics,
    devices: bool,
}

impl ControllerParts {
    /// Runs the controller over `source` and `writer` until `shutdown`.
    async fn run<S: ClusterSource, W: ClusterWriter>(
        self,
        source: S,
        writer: W,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let (objects_tx, objects) = mpsc::channel::<ObjectEvent>(4096);
        if self.devices {
            tokio::spawn(source.run(objects_tx, shutdown.clone()));
        } else {
            let (all_tx, all) = mpsc::channel::<ObjectEvent>(1024);
            tokio::spawn(source.run(all_tx, shutdown.clone()));
            tokio::spawn(without_devices(all, objects_tx));
        }
        let controller =
            CloudController::new(self.config, writer, self.cloud, self.delivery, objects)
                .with_metrics(self.metrics);
        let outcome = controller.run(shutdown.clone()).await;
        // Asked to stop, the transport and the controller stop together; whichever the
        // controller notices first, it is a clean stop.
        let asked = shutdown.is_cancelled();
        shutdown.cancel();
        match outcome {
            Err(_) if asked => Ok(()),
            outcome => outcome.map_err(|e| Error::Stopped {
                part: "controller",
                reason: e.to_string(),
            }),
        }
    }
}

/// Forwards `events` without Devices and DeviceModels (`deviceController.enable: false`).
async fn without_devices(mut events: mpsc::Receiver<ObjectEvent>, to: mpsc::Sender<ObjectEvent>) {
    let is_device = |kind: Kind| matches!(kind, Kind::Device | Kind::DeviceModel);
    while let Some(event) = events.recv().await {
        let kind = match &event {
            ObjectEvent::Applied(o) | ObjectEvent::Deleted(o) => o.kind(),
            ObjectEvent::Listed { kind, .. } => *kind,
        };
        if !is_device(kind) && to.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(all(feature = "kube", feature = "manifest"))]
impl ClusterChoice for FromConfig {
    async fn serve(
        self,
        settings: &Settings,
        controller: ControllerParts,
        shutdown: CancellationToken,
    ) -> Result<()> {
        if let Some(dir) = &settings.manifests {
            let status = settings
                .status_dir
                .clone()
                .unwrap_or_else(|| dir.with_file_name("status"));
            let mut manifest = kubeedge_cloud::ManifestConfig::new(dir, &status);
            manifest.scan_interval = settings.scan_interval;
            let (source, writer) = kubeedge_cloud::ManifestSource::open(manifest)
                .map_err(|e| Error::start("manifests", e))?;
            tracing::info!(manifests = %dir.display(), status = %status.display(), "manifest mode");
            return controller.run(source, writer, shutdown).await;
        }
        let client = kubeedge_cloud::client(settings.kubeconfig.as_deref())
            .await
            .map_err(|e| Error::start("kubernetes", e))?;
        if settings.install_crds {
            kubeedge_cloud::crd::install_crds(&client)
                .await
                .map_err(|e| Error::start("installing CRDs", e))?;
            tracing::info!("device CRDs applied");
        }
        let mut source_config = kubeedge_cloud::KubeSourceConfig::default();
        if !settings.devices {
            // No watch on the device CRDs, which may not be installed.
            source_config = source_config.without_devices();
        }
        let source = kubeedge_cloud::KubeSource::new(client.clone(), source_config);
        controller
            .run(source, kubeedge_cloud::KubeWriter::new(client), shutdown)
            .await
    }
}

/// A vendor's cluster: where the objects come from and where node reports go.
#[derive(Debug)]
pub struct Cluster<S, W> {
    source: S,
    writer: W,
}

impl<S: ClusterSource, W: ClusterWriter> ClusterChoice for Cluster<S, W> {
    async fn serve(
        self,
        _settings: &Settings,
        controller: ControllerParts,
        shutdown: CancellationToken,
    ) -> Result<()> {
        controller.run(self.source, self.writer, shutdown).await
    }
}

/// Builds a [`CloudCore`]; see the [module docs](self).
#[derive(Debug)]
pub struct CloudCoreBuilder<C = FromConfig> {
    settings: Settings,
    cluster: C,
}

impl<C> CloudCoreBuilder<C> {
    /// Objects come from `source`, node reports are written through `writer`, instead of the
    /// cluster the settings name.
    pub fn cluster<S: ClusterSource, W: ClusterWriter>(
        self,
        source: S,
        writer: W,
    ) -> CloudCoreBuilder<Cluster<S, W>> {
        CloudCoreBuilder {
            settings: self.settings,
            cluster: Cluster { source, writer },
        }
    }

    /// The settings, to change them in code before [`build`](Self::build).
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }
}

impl<C: ClusterChoice> CloudCoreBuilder<C> {
    /// Loads (or creates) the CA, issues or loads the server certificate, and binds the
    /// CloudHub, the join server and the metrics endpoint.
    pub async fn build(self) -> Result<CloudCore<C>> {
        let settings = self.settings;
        for warning in &settings.warnings {
            tracing::warn!("config: {warning}");
        }
        if settings.kube_qps.is_some() || settings.kube_burst.is_some() {
            tracing::debug!(
                qps = ?settings.kube_qps,
                burst = ?settings.kube_burst,
                "kubeAPIConfig.qps and burst are not applied (no client-side rate limiter)"
            );
        }
        let ca = cloudcore_config::load_or_create_ca(&settings.ca)?;
        let (cert_pem, key_pem) = match settings.read_server_cert(&ca)? {
            Some(loaded) => {
                tracing::info!("server certificate loaded from tlsCertFile and tlsPrivateKeyFile");
                (loaded.cert_pem, loaded.key_pem)
            }
            None => {
                let mut dns_names = vec!["localhost".to_owned()];
                dns_names.extend(settings.dns_names.iter().cloned());
                let server = ca
                    .issue_server_cert(&settings.advertise, &dns_names)
                    .map_err(|e| Error::start("server certificate", e))?;
                (server.cert_pem.into_bytes(), server.key_pem.into_bytes())
            }
        };
        let hub_tls = tls::server_config(&cert_pem, &key_pem, ca.cert_pem().as_bytes())
            .map_err(|e| Error::start("server TLS", e))?;
        let mut hub_config = CloudHubConfig::new(settings.listen, hub_tls);
        hub_config.node_limit = settings.node_limit;
        hub_config.keepalive_timeout = settings.keepalive;
        hub_config.takeover_limit = settings.takeover_limit;
        let (hub, raw, raw_events) =
            CloudHub::bind(hub_config).await.map_err(|e| Error::Start {
                part: "cloudhub",
                reason: format!("on {}: {e}", settings.listen),
            })?;
        let local_addr = hub.local_addr().unwrap_or(settings.listen);
        let join = match settings.https_listen {
            Some(listen) => {
                let mut config = BootstrapConfig::new(listen, Arc::new(ca), &cert_pem, &key_pem)
                    .map_err(|e| Error::start("join server", e))?;
                config.cert_validity_days = settings.edge_cert_validity_days;
                config.spent_tokens = Some(Arc::new(SpentTokenFile::new(
                    settings.ca.spent_tokens_path(),
                )));
                let server = BootstrapServer::bind(config)
                    .await
                    .map_err(|e| Error::Start {
                        part: "join server",
                        reason: format!("on {listen}: {e}"),
                    })?;
                Some(server)
            }
            None => None,
        };
        let (reliable, cloud, delivery) =
            ReliableCloud::new(raw, raw_events, DeliveryConfig::default());
        let handle = CloudCoreHandle {
            metrics: CloudMetrics::default(),
            hub: cloud.clone(),
        };
        let metrics = match settings.metrics_listen {
            Some(addr) => {
                let server = MetricsServer::bind(addr, Arc::new(handle.registry())).await?;
                tracing::info!(%addr, "metrics on /metrics, health on /healthz");
                Some(server)
            }
            None => None,
        };
        match settings.https_listen {
            Some(join) => tracing::info!(listen = %local_addr, %join, "cloudhub listening"),
            None => tracing::info!(listen = %local_addr, "cloudhub listening, no join server"),
        }
        let controller = ControllerParts {
            config: CloudConfig {
                inventory_grace: settings.inventory_grace,
                sent_records: settings.sent_records,
                device_limits: device_limits(&settings),
                ..CloudConfig::default()
            },
            cloud,
            delivery,
            metrics: handle.metrics.clone(),
            devices: settings.devices,
        };
        Ok(CloudCore {
            settings,
            cluster: self.cluster,
            hub,
            reliable,
            join,
            metrics,
            controller,
            handle,
            local_addr,
        })
    }
}

/// A cloud with its sockets bound, ready to run; see the [module docs](self).
pub struct CloudCore<C = FromConfig> {
    settings: Settings,
    cluster: C,
    hub: CloudHub,
    reliable: ReliableCloud,
    join: Option<BootstrapServer>,
    metrics: Option<MetricsServer>,
    controller: ControllerParts,
    handle: CloudCoreHandle,
    local_addr: SocketAddr,
}

impl<C> std::fmt::Debug for CloudCore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudCore")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl CloudCore {
    /// A builder over `settings`, with the cluster they name.
    pub fn builder(settings: Settings) -> CloudCoreBuilder {
        CloudCoreBuilder {
            settings,
            cluster: FromConfig,
        }
    }
}

impl<C: ClusterChoice> CloudCore<C> {
    /// Where the CloudHub listens (the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the join server listens, if it runs.
    pub fn join_addr(&self) -> Option<SocketAddr> {
        self.join.as_ref().and_then(|j| j.local_addr().ok())
    }

    /// Where the metrics endpoint listens, if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(MetricsServer::local_addr)
    }

    /// The counters, also while [`run`](Self::run) runs.
    pub fn handle(&self) -> CloudCoreHandle {
        self.handle.clone()
    }

    /// Runs the cloud until `shutdown` is cancelled (then `Ok`) or the controller stops.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let stop = shutdown.child_token();
        tokio::spawn(self.hub.run(stop.clone()));
        if let Some(join) = self.join {
            tokio::spawn(join.run(stop.clone()));
        }
        if let Some(metrics) = self.metrics {
            tokio::spawn(metrics.serve(stop.clone()));
        }
        tokio::spawn(self.reliable.run(stop.clone()));
        let result = self
            .cluster
            .serve(&self.settings, self.controller, stop.clone())
            .await;
        stop.cancel();
        result
    }
}

/// The counters of a [`CloudCore`]: the controller's and the CloudHub's. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CloudCoreHandle {
    metrics: CloudMetrics,
    hub: ReliableCloudHandle,
}

impl CloudCoreHandle {
    /// The controller's counters.
    pub fn metrics(&self) -> &CloudMetrics {
        &self.metrics
    }

    /// The CloudHub's counters.
    pub fn hub_stats(&self) -> kubeedge_hub::CloudHubStats {
        self.hub.hub_stats()
    }

    /// The cloud's metrics as readings (the controller's, the CloudHub's, the process's).
    pub fn readings(&self) -> Vec<Reading> {
        let m = &self.metrics;
        let hub = self.hub.hub_stats();
        let mut rows = vec![
            Reading::gauge(
                "cloudcore_connected_nodes",
                "Edge nodes with a session on this replica.",
                m.connected_nodes(),
            ),
            Reading::gauge(
                "cloudcore_cached_objects",
                "Objects in the controller's view.",
                m.cached_objects(),
            ),
            Reading::counter(
                "cloudcore_downstream_messages",
                "Messages queued to edge nodes.",
                m.downstream_messages(),
            ),
            Reading::counter(
                "cloudcore_acknowledged",
                "Messages edge nodes acknowledged.",
                m.acknowledged(),
            ),
            Reading::counter(
                "cloudcore_upstream_requests",
                "Requests from edge nodes.",
                m.upstream_requests(),
            ),
            Reading::counter(
                "cloudcore_refused_requests",
                "Requests refused (node isolation, malformed).",
                m.refused_requests(),
            ),
            Reading::counter(
                "cloudcore_refused_devices",
                "Device and DeviceModel versions not sent to nodes because their values are out of range.",
                m.refused_devices(),
            ),
            Reading::counter(
                "cloudcore_write_errors",
                "Cluster writes that failed.",
                m.write_errors(),
            ),
            Reading::counter(
                "cloudcore_nodes_marked_unreachable",
                "Times a node was marked unreachable.",
                m.marked_unreachable(),
            ),
            Reading::counter(
                "cloudcore_session_takeovers",
                "Node sessions taken over by a newer connection of the same node.",
                hub.takeovers,
            ),
            Reading::counter(
                "cloudcore_session_takeovers_refused",
                "New connections refused (HTTP 429) because their node's takeover budget was used up.",
                hub.takeovers_refused,
            ),
        ];
        rows.extend(crate::metrics::process_readings());
        rows
    }

    /// A registry with the cloud's metrics (add the vendor's own beside them).
    pub fn registry(&self) -> Registry {
        let handle = self.clone();
        crate::metrics::registry_of(move || handle.readings())
    }
}

/// `cloudcore gettoken`: a join token signed by the CA the settings name (created if there is
/// none), valid twice `tokenRefreshDuration`; `scope` limits it to one node or one join.
pub fn join_token(settings: &Settings, scope: &kubeedge_hub::join::TokenScope) -> Result<String> {
    use kubeedge_hub::join::Token;
    let ca = cloudcore_config::load_or_create_ca(&settings.ca)?;
    let validity = Token::validity_for_refresh(settings.token_refresh);
    Token::issue_with(&ca, validity, std::time::SystemTime::now(), scope)
        .map_err(|e| Error::start("token", e))
}

/// The cloud's device limits with what `kubeedgeRs.deviceLimits` sets.
fn device_limits(settings: &Settings) -> DeviceLimits {
    let file = settings.device_limits;
    let mut limits = DeviceLimits::default();
    if let Some(v) = file.max_string_bytes {
        limits.max_string_bytes = v;
    }
    if let Some(v) = file.max_spec_bytes {
        limits.max_spec_bytes = v;
    }
    if let Some(v) = file.max_properties {
        limits.max_properties = v;
    }
    if let Some(v) = file.max_cycle {
        limits.max_cycle = v;
    }
    limits
}
