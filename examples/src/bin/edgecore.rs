//! `edgecore`: a KubeEdge edge node, [`kubeedge::edge::EdgeCore`] with its parts from the
//! config file (KubeEdge's edgecore.yaml). `edgecore join` gets the node's certificate with a
//! token from `cloudcore gettoken` and writes the config; `--root DIR` keeps everything
//! (config, certificates, database, pod volumes, the DMI socket) under one directory. Logs go
//! to stderr (`RUST_LOG` filters); SIGINT/SIGTERM stop it and pods keep running.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kubeedge::config::edgecore::{EdgeCoreFile, JoinFlags, MIN_CONFIG};
use kubeedge::edge::{self, EdgeCore};
use kubeedge_examples::common;

/// A KubeEdge edge node.
#[derive(Parser)]
#[command(name = "edgecore", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The config file [default: DIR/config/edgecore.yaml with --root, else
    /// /etc/kubeedge/config/edgecore.yaml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Keep the config and all state under DIR.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Serve /metrics and /healthz here (overrides metricsAddress).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    print: common::PrintConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Get the node's certificate with a join token, then write the config file.
    Join(JoinFlags),
}

async fn run(cli: Cli) -> Result<(), String> {
    if cli.print.print(EdgeCoreFile::default_yaml, MIN_CONFIG)? {
        return Ok(());
    }
    if let Some(Command::Join(join)) = cli.command {
        let (file, config) = (join.file()?, join.config_path());
        let node = edge::join_and_save(&file, &config)
            .await
            .map_err(|e| e.to_string())?;
        let cert = file.modules.edge_hub.tls_cert_file.display();
        let config = config.display();
        println!("joined as {node}: certificate in {cert}, config in {config}");
        println!("start the node with: edgecore --config {config}");
        return Ok(());
    }
    let path = EdgeCoreFile::path(cli.config.as_deref(), cli.root.as_deref());
    let mut file = EdgeCoreFile::load(&path)?;
    if let Some(addr) = cli.metrics_listen {
        file.metrics_address = addr.to_string();
    }
    let core = EdgeCore::builder(file).build().map_err(|e| e.to_string())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(common::cancel_on_signal(shutdown.clone()));
    core.run(shutdown).await.map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    common::init_logs();
    common::main_with("edgecore", Cli::parse(), run)
}
