//! `edgecore`: a KubeEdge edge node (EdgeHub, MetaManager, edged on containerd, device twin,
//! MQTT EventBus with an embedded broker, DMI server for mappers), assembled from the
//! kubeedge-rs crates (see `kubeedge_examples::edgecore`).
//!
//! ```sh
//! # On the cloud: a join token.
//! cloudcore gettoken --pki-dir /etc/kubeedge/pki
//! # On the edge: the certificate flow, then the config file (KubeEdge's edgecore.yaml keys).
//! edgecore join --cloudcore 192.0.2.1:10000 --token <token> --node edge-1
//! edgecore --config /etc/kubeedge/config/edgecore.yaml
//! ```
//!
//! `--root DIR` keeps everything (config, certificates, database, pod volumes, the DMI socket)
//! under one directory instead of KubeEdge's places. Logs go to stderr (`RUST_LOG` filters);
//! `metricsAddress` (or `--metrics-listen`) serves `/metrics` and `/healthz`. SIGINT/SIGTERM
//! stop it; pods keep running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use kubeedge_config::edgecore::{self as edgecore_config, EdgeCoreFile};
use kubeedge_examples::common::{self, Flags};
use kubeedge_examples::edgecore::{self, EdgeCoreMetrics};
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: edgecore [--config FILE] [--root DIR] [--metrics-listen ADDR]
       edgecore join --cloudcore HOST:PORT --token TOKEN [--node NAME] [--root DIR]
                     [--config FILE] [--https-port 10002] [--cri-endpoint unix:///PATH]
                     [--mqtt-internal tcp://127.0.0.1:1884] [--metrics-listen ADDR]
       edgecore --defaultconfig

The config file defaults to /etc/kubeedge/config/edgecore.yaml, or DIR/config/edgecore.yaml
with --root DIR.";

const RUN_FLAGS: &[&str] = &["config", "root", "metrics-listen"];
const JOIN_FLAGS: &[&str] = &[
    "cloudcore",
    "token",
    "node",
    "root",
    "config",
    "https-port",
    "cri-endpoint",
    "mqtt-internal",
    "metrics-listen",
];

enum Command {
    Run {
        config: PathBuf,
        metrics: Option<SocketAddr>,
    },
    Join(Box<Join>),
    DefaultConfig,
}

struct Join {
    file: EdgeCoreFile,
    config: PathBuf,
}

fn config_path(flags: &Flags) -> PathBuf {
    match (flags.get("config"), flags.get("root")) {
        (Some(config), _) => PathBuf::from(config),
        (None, Some(root)) => Path::new(root).join("config").join("edgecore.yaml"),
        (None, None) => PathBuf::from("/etc/kubeedge/config/edgecore.yaml"),
    }
}

fn parse_args() -> Result<Command, String> {
    let mut args = std::env::args().skip(1).peekable();
    match args.peek().map(String::as_str) {
        Some("--defaultconfig") => Ok(Command::DefaultConfig),
        Some("join") => {
            args.next();
            let flags = Flags::parse(args, JOIN_FLAGS)?;
            let cloudhub: String = flags.required("cloudcore")?;
            let (host, _) = cloudhub
                .rsplit_once(':')
                .ok_or_else(|| format!("--cloudcore {cloudhub:?}: expected HOST:PORT"))?;
            let https_port: u16 = flags.parsed("https-port", 10002)?;
            let node = match flags.get("node") {
                Some(node) => node.to_owned(),
                None => edgecore_config::host_name()
                    .map_err(|e| format!("host name: {e} (give --node)"))?,
            };
            let mut file = EdgeCoreFile::for_join(
                &node,
                &cloudhub,
                &format!("https://{host}:{https_port}"),
                &flags.required::<String>("token")?,
                flags.get("root").map(Path::new),
            );
            if let Some(endpoint) = flags.get("cri-endpoint") {
                file.modules
                    .edged
                    .tailored_kubelet_config
                    .container_runtime_endpoint = endpoint.to_owned();
            }
            if let Some(internal) = flags.get("mqtt-internal") {
                file.modules.event_bus.mqtt_server_internal = internal.to_owned();
            }
            if let Some(metrics) = flags.get("metrics-listen") {
                file.metrics_address = metrics.to_owned();
            }
            file.check()?;
            Ok(Command::Join(Box::new(Join {
                file,
                config: config_path(&flags),
            })))
        }
        _ => {
            let flags = Flags::parse(args, RUN_FLAGS)?;
            let metrics = match flags.get("metrics-listen") {
                Some(addr) => Some(addr.parse().map_err(|e| format!("--metrics-listen: {e}"))?),
                None => None,
            };
            Ok(Command::Run {
                config: config_path(&flags),
                metrics,
            })
        }
    }
}

fn main() -> ExitCode {
    common::init_logs();
    common::main_with("edgecore", USAGE, parse_args, |command| async move {
        match command {
            Command::DefaultConfig => {
                let mut file = EdgeCoreFile::default();
                file.modules.edge_hub.websocket.server = "<cloudcore>:10000".into();
                file.modules.edge_hub.http_server = "https://<cloudcore>:10002".into();
                print!("{}", file.to_yaml()?);
                Ok(())
            }
            Command::Join(join) => join_node(*join).await,
            Command::Run { config, metrics } => run(&config, metrics).await,
        }
    })
}

/// The certificate flow, then the config file (mode 0600: it holds the token).
async fn join_node(join: Join) -> Result<(), String> {
    let node = join.file.node_name()?;
    edgecore::join(&join.file, &node).await?;
    if let Some(dir) = join.config.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    kubeedge_fs::write_atomically(&join.config, join.file.to_yaml()?.as_bytes(), 0o600)
        .map_err(|e| e.to_string())?;
    println!(
        "joined as {node}: certificate in {}, config in {}\nstart the node with: edgecore --config {}",
        join.file.modules.edge_hub.tls_cert_file.display(),
        join.config.display(),
        join.config.display()
    );
    Ok(())
}

async fn run(config: &Path, metrics_flag: Option<SocketAddr>) -> Result<(), String> {
    let mut file = EdgeCoreFile::load(config)?;
    if let Some(addr) = metrics_flag {
        file.metrics_address = addr.to_string();
    }
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(common::cancel_on_signal(shutdown.clone()));
    let metrics = Arc::new(EdgeCoreMetrics::default());
    if !file.metrics_address.is_empty() {
        let addr: SocketAddr = file
            .metrics_address
            .parse()
            .map_err(|e| format!("metricsAddress: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("metrics on {addr}: {e}"))?;
        tracing::info!(%addr, "serving /metrics and /healthz");
        let m = Arc::clone(&metrics);
        tokio::spawn(common::serve_metrics(
            listener,
            move || m.render(),
            shutdown.clone(),
        ));
    }
    let result = edgecore::run(&file, metrics, CancellationToken::new(), shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    result
}
