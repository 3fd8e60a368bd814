//! What the example binaries share: their `main`, logs, signals, process figures read from
//! `/proc`, the open-file limit, percentiles.

use std::time::Duration;

pub use kubeedge::metrics::{resident_kib, status_kib};

/// CPU time (user + system, all threads) this process has used so far.
pub fn cpu_time() -> Duration {
    // Fields 14 and 15 of /proc/self/stat, in USER_HZ ticks (100 per second on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Raises the soft open-file limit to the hard limit; returns the resulting soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("cannot raise RLIMIT_NOFILE to the hard limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The `p`-quantile (0..=1) of sorted `values`, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A duration in milliseconds with one decimal, for the report lines.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The `main` of the binaries: run `run(args)` (the command line clap parsed) on a
/// multi-threaded tokio runtime and turn its error into exit status 1.
pub fn main_with<A, F>(name: &str, args: A, run: impl FnOnce(A) -> F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), String>>,
{
    use std::process::ExitCode;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), coloured only on a terminal.
pub fn init_logs() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: stopping");
    token.cancel();
}

/// KubeEdge's `--defaultconfig` and `--minconfig`, which cloudcore and edgecore share
/// (`#[command(flatten)]`).
#[derive(clap::Args)]
pub struct PrintConfig {
    /// Print the config file with every key at its default.
    #[arg(long, exclusive = true)]
    pub defaultconfig: bool,
    /// Print the config file with the keys usually set.
    #[arg(long, exclusive = true)]
    pub minconfig: bool,
}

impl PrintConfig {
    /// Prints the file asked for: `default()`'s text or `min`. Whether one was asked for.
    pub fn print<E: ToString>(
        &self,
        default: impl FnOnce() -> Result<String, E>,
        min: &str,
    ) -> Result<bool, String> {
        if self.defaultconfig {
            print!("{}", default().map_err(|e| e.to_string())?);
        } else if self.minconfig {
            print!("{min}");
        }
        Ok(self.defaultconfig || self.minconfig)
    }
}
