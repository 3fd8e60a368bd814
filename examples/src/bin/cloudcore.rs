//! `cloudcore`: the kubeedge-rs cloud, wire-compatible with KubeEdge's cloudcore.
//!
//! ```text
//! cloudcore [--pki-dir /etc/kubeedge/pki] [--listen 0.0.0.0:10000] [--https-listen 0.0.0.0:10002]
//!           [--advertise-address 127.0.0.1,...] [--metrics-listen 127.0.0.1:10550]
//!           [--kubeconfig FILE] [--install-crds true]
//!           [--manifests DIR] [--status-dir DIR] [--scan-interval-ms 1000]
//!           [--inventory-grace-ms 2000] [--node-limit 500]
//! cloudcore gettoken [--pki-dir /etc/kubeedge/pki]
//! ```
//!
//! Serves edge nodes on `--listen` (CloudHub, mutual TLS WebSocket) and node join on
//! `--https-listen` (`/ca.crt`, `/edge.crt`), with the cluster CA in `--pki-dir` (`ca.pem`,
//! `ca-key.pem`; generated on first start, share the directory between replicas). The server
//! certificate is issued at start for the advertise addresses.
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
//! `cloudcore gettoken` prints a join token (valid 24 h) for `edgecore join --token`.
//! Logs go to stderr; `RUST_LOG` filters them (default `info`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubeedge_cloud::{CloudConfig, CloudController, CloudMetrics, ClusterWriter, ObjectEvent};
use kubeedge_hub::bootstrap::{BootstrapConfig, BootstrapServer};
use kubeedge_hub::join::Token;
use kubeedge_hub::{CloudHub, CloudHubConfig, DeliveryConfig, ReliableCloud, tls};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use kubeedge_examples::common::{self, Flags};

const USAGE: &str = "usage: cloudcore [--pki-dir DIR] [--listen ADDR] [--https-listen ADDR]
  [--advertise-address IP,...] [--metrics-listen ADDR] [--kubeconfig FILE] [--install-crds true]
  [--manifests DIR] [--status-dir DIR] [--scan-interval-ms 1000] [--inventory-grace-ms 2000]
  [--node-limit 500]
       cloudcore gettoken [--pki-dir DIR]";

const FLAGS: &[&str] = &[
    "pki-dir",
    "listen",
    "https-listen",
    "advertise-address",
    "metrics-listen",
    "kubeconfig",
    "install-crds",
    "manifests",
    "status-dir",
    "scan-interval-ms",
    "inventory-grace-ms",
    "node-limit",
];

struct Args {
    gettoken: bool,
    pki_dir: PathBuf,
    listen: SocketAddr,
    https_listen: SocketAddr,
    advertise: Vec<IpAddr>,
    metrics_listen: Option<SocketAddr>,
    kubeconfig: Option<PathBuf>,
    install_crds: bool,
    manifests: Option<PathBuf>,
    status_dir: Option<PathBuf>,
    scan_interval: Duration,
    inventory_grace: Duration,
    node_limit: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let gettoken = args.first().is_some_and(|a| a == "gettoken");
    if gettoken {
        args.remove(0);
    }
    let flags = Flags::parse(args.into_iter(), FLAGS)?;
    let advertise = match flags.get("advertise-address") {
        None => vec![IpAddr::from([127, 0, 0, 1])],
        Some(list) => list
            .split(',')
            .map(|ip| {
                ip.trim()
                    .parse()
                    .map_err(|e| format!("--advertise-address {ip:?}: {e}"))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Args {
        gettoken,
        pki_dir: flags.parsed("pki-dir", PathBuf::from("/etc/kubeedge/pki"))?,
        listen: flags.parsed("listen", SocketAddr::from(([0, 0, 0, 0], 10_000)))?,
        https_listen: flags.parsed("https-listen", SocketAddr::from(([0, 0, 0, 0], 10_002)))?,
        advertise,
        metrics_listen: flags
            .get("metrics-listen")
            .map(str::parse)
            .transpose()
            .map_err(|e| format!("--metrics-listen: {e}"))?,
        kubeconfig: flags.get("kubeconfig").map(PathBuf::from),
        install_crds: flags.parsed("install-crds", false)?,
        manifests: flags.get("manifests").map(PathBuf::from),
        status_dir: flags.get("status-dir").map(PathBuf::from),
        scan_interval: Duration::from_millis(flags.parsed("scan-interval-ms", 1000)?),
        inventory_grace: Duration::from_millis(flags.parsed("inventory-grace-ms", 2000)?),
        node_limit: flags.parsed("node-limit", 500)?,
    })
}

fn main() -> ExitCode {
    common::init_logs();
    common::main_with("cloudcore", USAGE, parse_args, run)
}

async fn run(args: Args) -> Result<(), String> {
    let ca = common::load_or_create_ca(&args.pki_dir)?;
    if args.gettoken {
        let validity = Token::validity_for_refresh(Token::DEFAULT_REFRESH);
        println!("{}", Token::issue(&ca, validity, SystemTime::now()));
        return Ok(());
    }
    common::raise_nofile_limit();
    let server = ca
        .issue_server_cert(&args.advertise, &["localhost"])
        .map_err(|e| format!("server certificate: {e}"))?;
    let hub_tls = tls::server_config(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        ca.cert_pem().as_bytes(),
    )
    .map_err(|e| format!("server TLS: {e}"))?;
    let shutdown = CancellationToken::new();

    let mut hub_config = CloudHubConfig::new(args.listen, hub_tls);
    hub_config.node_limit = args.node_limit;
    let (hub, raw, raw_events) = CloudHub::bind(hub_config)
        .await
        .map_err(|e| format!("cloudhub on {}: {e}", args.listen))?;
    let bootstrap_config = BootstrapConfig::new(
        args.https_listen,
        Arc::new(ca),
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
    )
    .map_err(|e| format!("join server: {e}"))?;
    let bootstrap = BootstrapServer::bind(bootstrap_config)
        .await
        .map_err(|e| format!("join server on {}: {e}", args.https_listen))?;
    let (reliable, cloud, delivery) =
        ReliableCloud::new(raw, raw_events, DeliveryConfig::default());
    tracing::info!(listen = %args.listen, join = %args.https_listen, "cloudhub listening");
    tokio::spawn(hub.run(shutdown.clone()));
    tokio::spawn(bootstrap.run(shutdown.clone()));
    tokio::spawn(reliable.run(shutdown.clone()));

    let config = CloudConfig {
        inventory_grace: args.inventory_grace,
        ..CloudConfig::default()
    };
    let (objects_tx, objects) = mpsc::channel::<ObjectEvent>(4096);
    let parts = Parts {
        config,
        cloud,
        delivery,
        objects,
        metrics_listen: args.metrics_listen,
    };
    let signals = tokio::spawn(common::cancel_on_signal(shutdown.clone()));
    let result = if let Some(dir) = &args.manifests {
        let status = args
            .status_dir
            .clone()
            .unwrap_or_else(|| dir.with_file_name("status"));
        let mut manifest = kubeedge_cloud::ManifestConfig::new(dir, &status);
        manifest.scan_interval = args.scan_interval;
        let (source, writer) = kubeedge_cloud::ManifestSource::open(manifest)
            .map_err(|e| format!("manifests: {e}"))?;
        tracing::info!(manifests = %dir.display(), status = %status.display(), "manifest mode");
        tokio::spawn(source.run(objects_tx, shutdown.clone()));
        serve(writer, parts, &shutdown).await
    } else {
        let client = kubeedge_cloud::client(args.kubeconfig.as_deref())
            .await
            .map_err(|e| format!("kubernetes: {e}"))?;
        if args.install_crds {
            kubeedge_cloud::crd::install_crds(&client)
                .await
                .map_err(|e| format!("installing CRDs: {e}"))?;
            tracing::info!("device CRDs applied");
        }
        let source = kubeedge_cloud::KubeSource::new(
            client.clone(),
            kubeedge_cloud::KubeSourceConfig::default(),
        );
        tokio::spawn(source.run(objects_tx, shutdown.clone()));
        serve(kubeedge_cloud::KubeWriter::new(client), parts, &shutdown).await
    };
    signals.abort();
    result
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
    let controller = CloudController::new(
        parts.config,
        writer,
        parts.cloud,
        parts.delivery,
        parts.objects,
    );
    let metrics = controller.metrics();
    if let Some(listen) = parts.metrics_listen {
        let render = move || render_metrics(&metrics);
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

fn render_metrics(m: &CloudMetrics) -> String {
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
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size.",
        common::rss_kib() * 1024,
    );
    out
}
