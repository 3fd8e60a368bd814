//! What the example binaries share: flag parsing, process figures read from `/proc`, the
//! open-file limit, percentiles, the cluster CA in a PKI directory.

use std::collections::HashMap;
use std::time::Duration;

/// `--name value` (or `--name=value`) flags, each given at most once.
pub struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Parses `--name value` pairs; `known` lists the accepted names (without `--`).
    pub fn parse(args: impl Iterator<Item = String>, known: &[&str]) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            // `--name value` or `--name=value`.
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (flag, None),
            };
            if !known.contains(&name) {
                return Err(format!("unknown flag --{name}"));
            }
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .ok_or_else(|| format!("--{name} needs a value"))?,
            };
            if values.insert(name.to_owned(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Self { values })
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of `--name` parsed, or `default` when not given.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{name} {v:?}: {e}")),
        }
    }

    /// The value of `--name` parsed; an error when not given.
    pub fn required<T: std::str::FromStr>(&self, name: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = self
            .get(name)
            .ok_or_else(|| format!("--{name} is required"))?;
        v.parse().map_err(|e| format!("--{name} {v:?}: {e}"))
    }
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `RssAnon`, ...), in KiB; 0 if unreadable.
pub fn status_kib(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

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

/// The `main` of both binaries: parse the flags (exit 2 with the usage on a bad flag), run
/// `run` on a multi-threaded tokio runtime, and turn its error into exit status 1.
pub fn main_with<A, F>(
    name: &str,
    usage: &str,
    parse: impl FnOnce() -> Result<A, String>,
    run: impl FnOnce(A) -> F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), String>>,
{
    use std::process::ExitCode;
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{name}: {e}\n{usage}");
            return ExitCode::from(2);
        }
    };
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

/// The cluster CA kept in `dir` as `ca.pem` and `ca-key.pem`: loaded if both exist, else
/// generated and written (key first, certificate last: readers wait for `ca.pem`).
pub fn load_or_create_ca(
    dir: &std::path::Path,
) -> Result<kubeedge_hub::join::CertificateAuthority, String> {
    use kubeedge_hub::join::CertificateAuthority;
    let (ca_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if ca_path.exists() && key_path.exists() {
        let cert = std::fs::read(&ca_path).map_err(|e| format!("{}: {e}", ca_path.display()))?;
        let key = std::fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let ca = CertificateAuthority::from_pem(cert, key).map_err(|e| format!("CA: {e}"))?;
        tracing::info!(dir = %dir.display(), "loaded the CA");
        return Ok(ca);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = CertificateAuthority::generate().map_err(|e| format!("CA: {e}"))?;
    write_atomically(&key_path, ca.key_pem().as_bytes())?;
    write_atomically(&ca_path, ca.cert_pem().as_bytes())?;
    tracing::info!(dir = %dir.display(), "generated a CA");
    Ok(ca)
}

/// Writes `data` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &std::path::Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`, with the embedded MQTT broker's
/// per-connection chatter at `warn`), coloured only on a terminal.
pub fn init_logs() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
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

/// Serves `GET /metrics` (the text `render` returns, Prometheus format) and `GET /healthz`
/// (`ok`) until `shutdown`. Requests are read up to 4 KiB and 5 s; anything else is a 404.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let render = std::sync::Arc::new(render);
    loop {
        let (mut stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let render = std::sync::Arc::clone(&render);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        return true;
                    }
                }
                false
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let line = String::from_utf8_lossy(&buf[..len]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match (line.starts_with("GET "), path) {
                (true, "/metrics") => ("200 OK", render()),
                (true, "/healthz") => ("200 OK", "ok\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
