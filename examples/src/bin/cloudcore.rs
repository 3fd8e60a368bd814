//! `cloudcore`: the kubeedge-rs cloud, wire-compatible with KubeEdge's cloudcore:
//! [`kubeedge::cloud::CloudCore`] over the cluster the settings name (an API server, or a
//! folder of YAML with `--manifests`). `--config` reads KubeEdge's cloudcore.yaml (see
//! [`kubeedge::config::cloudcore`] for every key); flags override it. `cloudcore gettoken`
//! prints a join token: for one node with `--node`, for one join with `--single-use true`,
//! else KubeEdge's (any node, any number of times). Logs go to stderr (`RUST_LOG` filters).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kubeedge::cloud::{self, CloudCore};
use kubeedge::config::cloudcore::{CloudCoreFlags, Settings};
use kubeedge::config::cloudcore::{DEFAULT_CONFIG, MIN_CONFIG};
use kubeedge::hub::join::TokenScope;
use kubeedge::proto::NodeName;
use kubeedge_examples::common;
use tokio_util::sync::CancellationToken;

/// The kubeedge-rs cloud, wire-compatible with KubeEdge's cloudcore.
#[derive(Parser)]
#[command(name = "cloudcore", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: CloudCoreFlags,
    #[command(flatten)]
    print: common::PrintConfig,
}

#[derive(Subcommand)]
enum Command {
    /// Print a join token for `edgecore join --token` (or KubeEdge's keadm).
    Gettoken(GetToken),
}

#[derive(Args)]
struct GetToken {
    /// KubeEdge's cloudcore.yaml (the CA's files and tokenRefreshDuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The cluster CA's directory.
    #[arg(long, value_name = "DIR")]
    pki_dir: Option<PathBuf>,
    /// The only node the token joins.
    #[arg(long)]
    node: Option<NodeName>,
    /// The token joins once.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    single_use: bool,
}

async fn run(cli: Cli) -> Result<(), String> {
    let default = || Ok::<_, String>(DEFAULT_CONFIG.to_owned());
    if cli.print.print(default, MIN_CONFIG)? {
        return Ok(());
    }
    if let Some(Command::Gettoken(get)) = cli.command {
        let flags = CloudCoreFlags {
            config: get.config,
            pki_dir: get.pki_dir,
            ..CloudCoreFlags::default()
        };
        let settings = Settings::from_flags(&flags)?;
        let scope = TokenScope {
            node: get.node,
            single_use: get.single_use,
        };
        let token = cloud::join_token(&settings, &scope).map_err(|e| e.to_string())?;
        println!("{token}");
        return Ok(());
    }
    let settings = Settings::from_flags(&cli.flags)?;
    common::raise_nofile_limit();
    let core = CloudCore::builder(settings)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::cancel_on_signal(shutdown.clone()));
    core.run(shutdown).await.map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    common::init_logs();
    common::main_with("cloudcore", Cli::parse(), run)
}
