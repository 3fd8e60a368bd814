//! `cloudcore`: the kubeedge-rs cloud, wire-compatible with KubeEdge's cloudcore.
//!
//! ```text
//! cloudcore [--config cloudcore.yaml] [--pki-dir /etc/kubeedge/pki] [--listen 0.0.0.0:10000]
//!           [--https-listen 0.0.0.0:10002] [--advertise-address 127.0.0.1,...]
//!           [--metrics-listen 127.0.0.1:10550] [--kubeconfig FILE] [--install-crds true]
//!           [--manifests DIR] [--status-dir DIR] [--scan-interval-ms 1000]
//!           [--inventory-grace-ms 2000] [--sent-records true] [--node-limit 500]
//! cloudcore --defaultconfig
//! cloudcore gettoken [--config cloudcore.yaml] [--pki-dir /etc/kubeedge/pki] [--node NAME]
//!                    [--single-use true]
//! ```
//!
//! Serves edge nodes on `--listen` (CloudHub, mutual TLS WebSocket) and node join on
//! `--https-listen` (`/ca.crt`, `/edge.crt`), with the cluster CA in `--pki-dir` (`ca.pem`,
//! `ca-key.pem`; generated on first start, share the directory between replicas). The server
//! certificate is issued at start for the advertise addresses (or loaded from the config's
//! `tlsCertFile` and `tlsPrivateKeyFile` when both exist).
//!
//! Where the objects come from:
//! - a cluster (default): `--kubeconfig FILE`, else `KUBECONFIG`, `~/.kube/config` or the
//!   in-cluster service account. With `--install-crds true` the device CRDs are applied first.
//! - `--manifests DIR`: a folder of YAML (Pods, ConfigMaps, Secrets, Devices, DeviceModels),
//!   rescanned every `--scan-interval-ms`; what the edge reports (node, leases, pod status,
//!   device status) is written under `--status-dir` (default `DIR/../status`).
//!
//! `--node-limit` is KubeEdge's `cloudHub.nodeLimit`: the most nodes one replica holds.
//! `--metrics-listen` serves Prometheus text on `/metrics` and `/healthz`.
//! `cloudcore gettoken` prints a join token for `edgecore join --token` (or KubeEdge's
//! `keadm join`), valid twice `tokenRefreshDuration` (24 h by default). With `--node NAME` it
//! joins only that node; with `--single-use true` it joins once (the join server records it
//! as spent in `spent-tokens` beside the CA key). Without either it is KubeEdge's token: any
//! node, any number of times.
//! Logs go to stderr; `RUST_LOG` filters them (default `info`).
//!
//! `--config FILE` reads KubeEdge's `cloudcore.yaml` (a KubeEdge file works as it is; keys
//! cloudcore does not use are ignored): `modules.cloudHub` (`websocket`, `https`,
//! `advertiseAddress`, `dnsNames`, `nodeLimit`, `keepaliveInterval`, `tlsCAFile` +
//! `tlsCAKeyFile` instead of `--pki-dir`, `tlsCertFile` + `tlsPrivateKeyFile`,
//! `edgeCertSigningDuration`, `tokenRefreshDuration`), `kubeAPIConfig.kubeConfig`,
//! `commonConfig.monitorServer.bindAddress`, `modules.deviceController.enable`, and the
//! kubeedge-rs extension `kubeedgeRs` (`manifests: {dir, statusDir, scanIntervalMs}`,
//! `installCRDs`, `inventoryGraceMs`). Flags override the file; without a file the defaults
//! are the ones above. `cloudcore --defaultconfig` prints the file with every key at its
//! default; [`kubeedge_config::cloudcore`] documents each key.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use kubeedge_cloud::{
    CloudConfig, CloudController, CloudMetrics, ClusterWriter, DeviceLimits, Kind, ObjectEvent,
};
use kubeedge_hub::bootstrap::{BootstrapConfig, BootstrapServer, SpentTokenFile};
use kubeedge_hub::join::{Token, TokenScope};
use kubeedge_hub::{CloudHub, CloudHubConfig, CloudHubStats, DeliveryConfig, ReliableCloud, tls};
use kubeedge_proto::NodeName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use kubeedge_config::cloudcore::{self as cloudcore_config, DEFAULT_CONFIG, FLAGS, Settings};
use kubeedge_examples::common::{self, Flags};

const USAGE: &str = "usage: cloudcore [--config FILE] [--pki-dir DIR] [--listen ADDR]
  [--https-listen ADDR] [--advertise-address IP,...] [--metrics-listen ADDR]
  [--kubeconfig FILE] [--install-crds true] [--manifests DIR] [--status-dir DIR]
  [--scan-interval-ms 1000] [--inventory-grace-ms 2000] [--sent-records true]
  [--node-limit 500]
       cloudcore --defaultconfig     (print a commented cloudcore.yaml with the defaults)
       cloudcore gettoken [--config FILE] [--pki-dir DIR] [--node NAME] [--single-use true]
Flags override the values of the --config file (KubeEdge's cloudcore.yaml; unknown keys
are ignored).";

/// The flags of `cloudcore gettoken`.
const GETTOKEN_FLAGS: &[&str] = &["config", "pki-dir", "node", "single-use"];

/// What to do.
enum Mode {
    /// Run the cloud.
    Serve,
    /// Print a join token, for one node and one join if asked.
    GetToken(TokenScope),
    /// Print [`DEFAULT_CONFIG`].
    DefaultConfig,
}

struct Args {
    mode: Mode,
    settings: Settings,
}

fn parse_args() -> Result<Args, String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--defaultconfig") {
        if args.len() != 1 {
            return Err("--defaultconfig takes no other argument".into());
        }
        return Ok(Args {
            mode: Mode::DefaultConfig,
            settings: Settings::default(),
        });
    }
    if args.first().is_some_and(|a| a == "gettoken") {
        args.remove(0);
        let flags = Flags::parse(args.into_iter(), GETTOKEN_FLAGS)?;
        let scope = TokenScope {
            node: flags
                .get("node")
                .map(NodeName::new)
                .transpose()
                .map_err(|e| format!("--node: {e}"))?,
            single_use: flags.parsed("single-use", false)?,
        };
        let settings = Settings::from_flags(&flags)?;
        return Ok(Args {
            mode: Mode::GetToken(scope),
            settings,
        });
    }
    let flags = Flags::parse(args.into_iter(), FLAGS)?;
    let settings = Settings::from_flags(&flags)?;
    Ok(Args {
        mode: Mode::Serve,
        settings,
    })
}

fn main() -> ExitCode {
    common::init_logs();
    common::main_with("cloudcore", USAGE, parse_args, run)
}

async fn run(args: Args) -> Result<(), String> {
    let settings = args.settings;
    match args.mode {
        Mode::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            return Ok(());
        }
        Mode::GetToken(scope) => {
            let ca = cloudcore_config::load_or_create_ca(&settings.ca)?;
            let validity = Token::validity_for_refresh(settings.token_refresh);
            let token = Token::issue_with(&ca, validity, SystemTime::now(), &scope)
                .map_err(|e| format!("token: {e}"))?;
            println!("{token}");
            return Ok(());
        }
        Mode::Serve => {}
    }
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
    common::raise_nofile_limit();
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
                .map_err(|e| format!("server certificate: {e}"))?;
            (server.cert_pem.into_bytes(), server.key_pem.into_bytes())
        }
    };
    let hub_tls = tls::server_config(&cert_pem, &key_pem, ca.cert_pem().as_bytes())
        .map_err(|e| format!("server TLS: {e}"))?;
    let shutdown = CancellationToken::new();

    let mut hub_config = CloudHubConfig::new(settings.listen, hub_tls);
    hub_config.node_limit = settings.node_limit;
    hub_config.keepalive_timeout = settings.keepalive;
    hub_config.takeover_limit = settings.takeover_limit;
    let (hub, raw, raw_events) = CloudHub::bind(hub_config)
        .await
        .map_err(|e| format!("cloudhub on {}: {e}", settings.listen))?;
    let bootstrap = match settings.https_listen {
        Some(listen) => {
            let mut config = BootstrapConfig::new(listen, Arc::new(ca), &cert_pem, &key_pem)
                .map_err(|e| format!("join server: {e}"))?;
            config.cert_validity_days = settings.edge_cert_validity_days;
            config.spent_tokens = Some(Arc::new(SpentTokenFile::new(
                settings.ca.spent_tokens_path(),
            )));
            let server = BootstrapServer::bind(config)
                .await
                .map_err(|e| format!("join server on {listen}: {e}"))?;
            Some(server)
        }
        None => None,
    };
    let (reliable, cloud, delivery) =
        ReliableCloud::new(raw, raw_events, DeliveryConfig::default());
    match settings.https_listen {
        Some(join) => tracing::info!(listen = %settings.listen, %join, "cloudhub listening"),
        None => tracing::info!(listen = %settings.listen, "cloudhub listening, no join server"),
    }
    tokio::spawn(hub.run(shutdown.clone()));
    if let Some(bootstrap) = bootstrap {
        tokio::spawn(bootstrap.run(shutdown.clone()));
    }
    tokio::spawn(reliable.run(shutdown.clone()));

    let config = CloudConfig {
        inventory_grace: settings.inventory_grace,
        sent_records: settings.sent_records,
        device_limits: device_limits(&settings),
        ..CloudConfig::default()
    };
    let (objects_tx, objects) = mpsc::channel::<ObjectEvent>(4096);
    let parts = Parts {
        config,
        cloud,
        delivery,
        objects,
        metrics_listen: settings.metrics_listen,
    };
    let signals = tokio::spawn(common::cancel_on_signal(shutdown.clone()));
    let result = if let Some(dir) = &settings.manifests {
        let status = settings
            .status_dir
            .clone()
            .unwrap_or_else(|| dir.with_file_name("status"));
        let mut manifest = kubeedge_cloud::ManifestConfig::new(dir, &status);
        manifest.scan_interval = settings.scan_interval;
        let (source, writer) = kubeedge_cloud::ManifestSource::open(manifest)
            .map_err(|e| format!("manifests: {e}"))?;
        tracing::info!(manifests = %dir.display(), status = %status.display(), "manifest mode");
        if settings.devices {
            tokio::spawn(source.run(objects_tx, shutdown.clone()));
        } else {
            let (all_tx, all) = mpsc::channel::<ObjectEvent>(1024);
            tokio::spawn(source.run(all_tx, shutdown.clone()));
            tokio::spawn(without_devices(all, objects_tx));
        }
        serve(writer, parts, &shutdown).await
    } else {
        let client = kubeedge_cloud::client(settings.kubeconfig.as_deref())
            .await
            .map_err(|e| format!("kubernetes: {e}"))?;
        if settings.install_crds {
            kubeedge_cloud::crd::install_crds(&client)
                .await
                .map_err(|e| format!("installing CRDs: {e}"))?;
            tracing::info!("device CRDs applied");
        }
        let mut source_config = kubeedge_cloud::KubeSourceConfig::default();
        if !settings.devices {
            source_config = source_config.without_devices();
        }
        let source = kubeedge_cloud::KubeSource::new(client.clone(), source_config);
        tokio::spawn(source.run(objects_tx, shutdown.clone()));
        serve(kubeedge_cloud::KubeWriter::new(client), parts, &shutdown).await
    };
    signals.abort();
    result
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

/// What the controller is built from, whichever the writer.
struct Parts {
    config: CloudConfig,
    cloud: kubeedge_hub::ReliableCloudHandle,
    delivery: mpsc::Receiver<kubeedge_hub::DeliveryEvent>,
    objects: mpsc::Receiver<ObjectEvent>,
    metrics_listen: Option<SocketAddr>,
}

/// Runs the controller (and the metrics endpoint) until a signal or a failure.
async fn serve<W: ClusterWriter>(
    writer: W,
    parts: Parts,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let hub = parts.cloud.clone();
    let controller = CloudController::new(
        parts.config,
        writer,
        parts.cloud,
        parts.delivery,
        parts.objects,
    );
    let metrics = controller.metrics();
    if let Some(listen) = parts.metrics_listen {
        let render = move || render_metrics(&metrics, hub.hub_stats());
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("metrics on {listen}: {e}"))?;
        tracing::info!(%listen, "metrics on /metrics, health on /healthz");
        tokio::spawn(common::serve_metrics(listener, render, shutdown.clone()));
    }
    let outcome = controller.run(shutdown.clone()).await;
    shutdown.cancel();
    outcome.map_err(|e| format!("controller: {e}"))
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

fn render_metrics(m: &CloudMetrics, hub: CloudHubStats) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    gauge(
        "cloudcore_connected_nodes",
        "gauge",
        "Edge nodes with a session on this replica.",
        m.connected_nodes(),
    );
    gauge(
        "cloudcore_cached_objects",
        "gauge",
        "Objects in the controller's view.",
        m.cached_objects(),
    );
    gauge(
        "cloudcore_downstream_messages_total",
        "counter",
        "Messages queued to edge nodes.",
        m.downstream_messages(),
    );
    gauge(
        "cloudcore_acknowledged_total",
        "counter",
        "Messages edge nodes acknowledged.",
        m.acknowledged(),
    );
    gauge(
        "cloudcore_upstream_requests_total",
        "counter",
        "Requests from edge nodes.",
        m.upstream_requests(),
    );
    gauge(
        "cloudcore_refused_requests_total",
        "counter",
        "Requests refused (node isolation, malformed).",
        m.refused_requests(),
    );
    gauge(
        "cloudcore_refused_devices_total",
        "counter",
        "Device and DeviceModel versions not sent to nodes because their values are out of range.",
        m.refused_devices(),
    );
    gauge(
        "cloudcore_write_errors_total",
        "counter",
        "Cluster writes that failed.",
        m.write_errors(),
    );
    gauge(
        "cloudcore_nodes_marked_unreachable_total",
        "counter",
        "Times a node was marked unreachable.",
        m.marked_unreachable(),
    );
    gauge(
        "cloudcore_session_takeovers_total",
        "counter",
        "Node sessions taken over by a newer connection of the same node.",
        hub.takeovers,
    );
    gauge(
        "cloudcore_session_takeovers_refused_total",
        "counter",
        "New connections refused (HTTP 429) because their node's takeover budget was used up.",
        hub.takeovers_refused,
    );
    gauge(
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        common::rss_kib() * 1024,
    );
    out
}
