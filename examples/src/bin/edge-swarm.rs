//! `edge-swarm`: one process simulating many edge nodes against a CloudHub, each over its own
//! TLS WebSocket speaking KubeEdge's wire protocol.
//!
//! ```text
//! edge-swarm --pki-dir DIR --nodes N [--server 127.0.0.1:10000] [--source-ips 127.0.0.2,...]
//!            [--ramp-per-sec 1000] [--duration-secs 300] [--keepalive-secs 15]
//!            [--first-node 0] [--name-prefix swarm] [--report-every-secs 5]
//! ```
//!
//! Node `i` is `<prefix>-<first-node + i>`. Its certificate (`CN=system:node:<node>`,
//! `O=system:nodes`) comes from the join flow's own functions: `EdgeCsr::new` (a fresh P-256
//! key and CSR per node) signed by the cluster CA read from `DIR/ca.pem` + `DIR/ca-key.pem`
//! (`CertificateAuthority::sign_edge_csr`), on every core before the ramp starts.
//!
//! Each node is one small task, not a full EdgeHub: a TCP socket bound to the next source address
//! (round-robin over `--source-ips`, for more ephemeral ports), TLS with the node's certificate,
//! the WebSocket upgrade with KubeEdge's URL and headers (`ConnectionUse: msg`, `Node_id`,
//! `Project_id`), then: a keepalive text frame every `--keepalive-secs` (first one at a random
//! point of the first period), and an ACK (`Message::ack`) for every message the cloud tracks
//! (a `resourceversion`, or a delete) as soon as it arrives. A node whose link ends reconnects
//! with exponential backoff (1 s to 30 s, jittered), as edgecore does.
//!
//! Connections are opened at `--ramp-per-sec`. Progress (connected, connect failures and
//! disconnects by reason, keepalives, ACKs, RSS) is printed every `--report-every-secs`. After
//! `--duration-secs` every node closes and the process exits. With `--ack-log FILE`, every ACK
//! is also written to FILE as `<unix time in µs> <node> <operation> <resource>` (for measuring
//! how long a change takes to reach the nodes).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kubeedge_hub::join::{
    CertificateAuthority, DEFAULT_EDGE_CERT_VALIDITY_DAYS, EdgeCsr, ExtKeyUsage,
};
use kubeedge_hub::{DEFAULT_PROJECT_ID, is_ack_tracked, tls};
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message};
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use kubeedge_examples::common::{self, cpu_time, raise_nofile_limit, resident_kib};

/// A connection attempt (TCP, TLS, upgrade) must finish within this (edgecore: 30 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the CA files are waited for (the hub-server may still be writing them).
const PKI_WAIT: Duration = Duration::from_secs(60);
/// How long the nodes get to close their connections at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Many edge nodes on one machine: each joins the CloudHub with its own certificate, keeps
/// its session alive and acknowledges what it gets.
#[derive(clap::Parser)]
#[command(name = "edge-swarm")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:10000")]
    server: SocketAddr,
    #[arg(long)]
    pki_dir: PathBuf,
    #[arg(long)]
    nodes: usize,
    /// Source addresses to spread the connections over (comma-separated).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    ramp_per_sec: u64,
    #[arg(long = "duration-secs", default_value = "300", value_parser = secs)]
    duration: Duration,
    /// Fractions are accepted, to compress hours of keepalives into minutes.
    #[arg(long = "keepalive-secs", default_value = "15", value_parser = keepalive)]
    keepalive: Duration,
    #[arg(long, default_value_t = 0)]
    first_node: usize,
    #[arg(long = "name-prefix", default_value = "swarm")]
    prefix: String,
    #[arg(long = "report-every-secs", default_value = "5", value_parser = secs_at_least_1)]
    report_every: Duration,
    #[arg(long)]
    ack_log: Option<PathBuf>,
}

fn secs(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_secs)
}

fn secs_at_least_1(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse::<u64>().map(|n| Duration::from_secs(n.max(1)))
}

fn keepalive(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.001..=3600.0).contains(&secs) {
        return Err("must be between 0.001 and 3600".to_owned());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    common::main_with("edge-swarm", <Args as clap::Parser>::parse(), run)
}

/// Counters shared by every node task.
#[derive(Default)]
struct Stats {
    started: AtomicU64,
    connected: AtomicU64,
    /// The most nodes connected at once.
    peak: AtomicU64,
    /// When every node was first connected at once, in ms since the start (0: not yet).
    all_connected_ms: AtomicU64,
    connects: AtomicU64,
    keepalives: AtomicU64,
    received: AtomicU64,
    acks: AtomicU64,
    bad_frames: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    disconnects: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn count(map: &Mutex<BTreeMap<String, u64>>, mut reason: String) {
        reason.truncate(120);
        *map.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    fn summary(map: &Mutex<BTreeMap<String, u64>>) -> (u64, String) {
        let map = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = map.values().sum();
        let text = if map.is_empty() {
            "none".to_owned()
        } else {
            map.iter()
                .map(|(r, n)| format!("{n} x {r}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        (total, text)
    }

    fn summary_line(&self, nodes: usize) -> String {
        let all = self.all_connected_ms.load(Ordering::Relaxed);
        format!(
            "summary: {nodes} nodes, peak connected {}, {}, connects {}, connect failures {}, \
             disconnects {}, keepalives {}, received {}, acks {}",
            self.peak.load(Ordering::Relaxed),
            if all == 0 {
                "never all connected at once".to_owned()
            } else {
                format!("all connected {:.1} s after the start", all as f64 / 1000.0)
            },
            self.connects.load(Ordering::Relaxed),
            Self::summary(&self.failures).0,
            Self::summary(&self.disconnects).0,
            self.keepalives.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.acks.load(Ordering::Relaxed),
        )
    }

    fn report(&self, elapsed: Duration, cpu_share: f64) {
        let (failures, failure_text) = Self::summary(&self.failures);
        let (disconnects, disconnect_text) = Self::summary(&self.disconnects);
        println!(
            "[swarm +{:>6.1}s] started {}, connected {}, connects {}, connect failures {}, \
             disconnects {}, keepalives {}, received {}, acks {}, bad frames {}, RSS {} KiB, \
             CPU {:.1} % of a core",
            elapsed.as_secs_f64(),
            self.started.load(Ordering::Relaxed),
            self.connected.load(Ordering::Relaxed),
            self.connects.load(Ordering::Relaxed),
            failures,
            disconnects,
            self.keepalives.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.acks.load(Ordering::Relaxed),
            self.bad_frames.load(Ordering::Relaxed),
            resident_kib(),
            cpu_share * 100.0,
        );
        if failures > 0 {
            println!("    connect failures: {failure_text}");
        }
        if disconnects > 0 {
            println!("    disconnects: {disconnect_text}");
        }
    }
}

/// One simulated node.
struct Node {
    index: usize,
    name: String,
    tls: Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
}

/// What every node shares.
struct Swarm {
    server: SocketAddr,
    server_name: ServerName<'static>,
    keepalive: Duration,
    /// The keepalive frame's text is made per send (fresh msg_id), like edgecore.
    ws_config: WebSocketConfig,
    stats: Stats,
    stop: CancellationToken,
    start: Instant,
    deadline: Instant,
    nodes: u64,
    /// With `--ack-log`: one line per ACK, `<unix time in µs> <node> <operation> <resource>`.
    ack_log: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
}

/// Reads the CA from `dir`, waiting for the hub-server to write it.
async fn load_ca(dir: &Path) -> Result<CertificateAuthority, String> {
    let (ca_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let until = Instant::now() + PKI_WAIT;
    while !(ca_path.exists() && key_path.exists()) {
        if Instant::now() >= until {
            return Err(format!(
                "no {} and {} after {:?}",
                ca_path.display(),
                key_path.display(),
                PKI_WAIT
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cert = std::fs::read(&ca_path).map_err(|e| format!("{}: {e}", ca_path.display()))?;
    let key = std::fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    CertificateAuthority::from_pem(cert, key).map_err(|e| format!("CA: {e}"))
}

/// A node's TLS client configuration: a fresh key and CSR, signed by the CA.
fn node_tls(ca: &CertificateAuthority, name: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let csr = EdgeCsr::new(name).map_err(|e| format!("CSR for {name}: {e}"))?;
    let cert_der = ca
        .sign_edge_csr(
            &csr.csr_der,
            ExtKeyUsage::DEFAULT,
            DEFAULT_EDGE_CERT_VALIDITY_DAYS,
        )
        .map_err(|e| format!("signing {name}: {e}"))?;
    let cert_pem = pem("CERTIFICATE", &cert_der);
    tls::client_config(
        ca.cert_pem().as_bytes(),
        cert_pem.as_bytes(),
        csr.key_pem.as_bytes(),
    )
    .map_err(|e| format!("TLS for {name}: {e}"))
}

/// PEM-encodes `der` (64 base64 characters a line).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(der)
        .into_bytes();
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Makes every node's certificate, on every core.
fn make_nodes(ca: &CertificateAuthority, args: &Args) -> Result<Vec<Node>, String> {
    let names: Vec<String> = (0..args.nodes)
        .map(|i| format!("{}-{}", args.prefix, args.first_node + i))
        .collect();
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let chunk = names.len().div_ceil(threads).max(1);
    let configs: Vec<Result<Vec<Arc<rustls::ClientConfig>>, String>> =
        std::thread::scope(|scope| {
            let workers: Vec<_> = names
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(|n| node_tls(ca, n)).collect()))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err("certificate thread panicked".to_owned()))
                })
                .collect()
        });
    let mut tls_configs = Vec::with_capacity(names.len());
    for part in configs {
        tls_configs.extend(part?);
    }
    Ok(names
        .into_iter()
        .zip(tls_configs)
        .enumerate()
        .map(|(index, (name, tls))| Node {
            index,
            name,
            tls,
            source: (!args.source_ips.is_empty())
                .then(|| args.source_ips[index % args.source_ips.len()]),
        })
        .collect())
}

async fn run(args: Args) -> Result<(), String> {
    let nofile = raise_nofile_limit();
    println!(
        "edge-swarm: pid {}, RLIMIT_NOFILE {nofile}, {} nodes against {} from {}",
        std::process::id(),
        args.nodes,
        args.server,
        if args.source_ips.is_empty() {
            "the default source address".to_owned()
        } else {
            format!("{:?}", args.source_ips)
        }
    );
    if (nofile as usize) < args.nodes + 64 {
        println!(
            "warning: the open-file limit {nofile} is below {} nodes + 64",
            args.nodes
        );
    }

    let ca = load_ca(&args.pki_dir).await?;
    let t = std::time::Instant::now();
    let nodes = make_nodes(&ca, &args)?;
    println!(
        "certificates: {} node keys, CSRs and certificates in {:.2} s; RSS {} KiB",
        nodes.len(),
        t.elapsed().as_secs_f64(),
        resident_kib()
    );

    let start = Instant::now();
    let swarm = Arc::new(Swarm {
        server: args.server,
        server_name: ServerName::IpAddress(args.server.ip().into()),
        keepalive: args.keepalive,
        ws_config: WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(DEFAULT_MAX_MESSAGE_LEN))
            .max_frame_size(Some(DEFAULT_MAX_MESSAGE_LEN)),
        stats: Stats::default(),
        stop: CancellationToken::new(),
        start,
        deadline: start + args.duration,
        nodes: args.nodes as u64,
        ack_log: match &args.ack_log {
            Some(path) => Some(Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
            ))),
            None => None,
        },
    });

    // The ramp: nodes are started in batches every 10 ms at --ramp-per-sec.
    let ramp_swarm = Arc::clone(&swarm);
    let ramp_per_sec = args.ramp_per_sec;
    let ramp = tokio::spawn(async move {
        let mut tasks = Vec::with_capacity(nodes.len());
        let tick = Duration::from_millis(10);
        let mut ticker = tokio::time::interval(tick);
        let mut nodes = nodes.into_iter();
        let mut due = 0u64;
        let mut launched = 0u64;
        let ramp_start = Instant::now();
        'ramp: loop {
            ticker.tick().await;
            if ramp_swarm.stop.is_cancelled() {
                break;
            }
            due = (ramp_start.elapsed().as_millis() as u64 * ramp_per_sec / 1000).max(due + 1);
            while launched < due {
                let Some(node) = nodes.next() else {
                    break 'ramp;
                };
                launched += 1;
                ramp_swarm.stats.started.fetch_add(1, Ordering::Relaxed);
                tasks.push(tokio::spawn(node_task(node, Arc::clone(&ramp_swarm))));
            }
        }
        println!(
            "ramp: {launched} nodes started in {:.1} s",
            ramp_start.elapsed().as_secs_f64()
        );
        tasks
    });

    let mut report = tokio::time::interval_at(start + args.report_every, args.report_every);
    let mut cpu_mark = (Instant::now(), cpu_time());
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(swarm.deadline) => break,
            _ = report.tick() => {
                let (now, cpu) = (Instant::now(), cpu_time());
                let share = (cpu - cpu_mark.1).as_secs_f64() / (now - cpu_mark.0).as_secs_f64();
                cpu_mark = (now, cpu);
                swarm.stats.report(start.elapsed(), share);
            }
        }
    }

    println!("edge-swarm: {:?} are up; closing every node", args.duration);
    swarm.stop.cancel();
    let tasks = ramp.await.map_err(|e| format!("ramp: {e}"))?;
    let close_deadline = Instant::now() + CLOSE_WAIT;
    for task in tasks {
        if tokio::time::timeout_at(close_deadline, task).await.is_err() {
            break;
        }
    }
    swarm.stats.report(start.elapsed(), 0.0);
    println!("{}", swarm.stats.summary_line(args.nodes));
    if let Some(log) = &swarm.ack_log {
        use std::io::Write;
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flush()
            .map_err(|e| format!("ack log: {e}"))?;
    }
    Ok(())
}

type Ws = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Runs one node until the swarm stops: connect, serve, reconnect with backoff.
async fn node_task(node: Node, swarm: Arc<Swarm>) {
    let mut seed = (node.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut backoff = MIN_BACKOFF;
    loop {
        let attempt = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&node, &swarm));
        let connected = tokio::select! {
            () = swarm.stop.cancelled() => return,
            result = attempt => result.unwrap_or_else(|_| Err("handshake timeout".to_owned())),
        };
        match connected {
            Ok(ws) => {
                backoff = MIN_BACKOFF;
                swarm.stats.connects.fetch_add(1, Ordering::Relaxed);
                let now = swarm.stats.connected.fetch_add(1, Ordering::Relaxed) + 1;
                swarm.stats.peak.fetch_max(now, Ordering::Relaxed);
                if now == swarm.nodes {
                    let ms = (swarm.start.elapsed().as_millis() as u64).max(1);
                    let _ = swarm.stats.all_connected_ms.compare_exchange(
                        0,
                        ms,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                seed = xorshift(seed);
                let end = serve(ws, &swarm, &node.name, seed).await;
                swarm.stats.connected.fetch_sub(1, Ordering::Relaxed);
                match end {
                    None => return,
                    Some(reason) => Stats::count(&swarm.stats.disconnects, reason),
                }
            }
            Err(reason) => Stats::count(&swarm.stats.failures, reason),
        }
        seed = xorshift(seed);
        // Jitter in [backoff/2, backoff).
        let wait = backoff / 2 + backoff.mul_f64((seed % 1000) as f64 / 2000.0);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = swarm.stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// TCP (from the node's source address), TLS, and the WebSocket upgrade with KubeEdge's URL and
/// headers.
async fn connect(node: &Node, swarm: &Swarm) -> Result<Ws, String> {
    let socket = match swarm.server {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = node.source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let tcp = socket
        .connect(swarm.server)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(Arc::clone(&node.tls))
        .connect(swarm.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let url = format!(
        "wss://{}/{DEFAULT_PROJECT_ID}/{}/events",
        swarm.server, node.name
    );
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let headers = request.headers_mut();
    headers.insert("ConnectionUse", HeaderValue::from_static("msg"));
    headers.insert(
        "Node_id",
        HeaderValue::from_str(&node.name).map_err(|e| format!("Node_id: {e}"))?,
    );
    headers.insert("Project_id", HeaderValue::from_static(DEFAULT_PROJECT_ID));
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tls, Some(swarm.ws_config))
        .await
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    Ok(ws)
}

/// A message as gorilla's `WriteJSON` writes it: a text frame of the JSON and `\n`.
fn frame_of(msg: &Message) -> Frame {
    let mut json = msg.to_json();
    json.push(b'\n');
    Frame::text(String::from_utf8_lossy(&json).into_owned())
}

/// Serves an established link: keepalives, and ACKs of tracked messages. `None` when the swarm
/// stopped, else why the link ended.
async fn serve(mut ws: Ws, swarm: &Swarm, node: &str, seed: u64) -> Option<String> {
    let period_ms = swarm.keepalive.as_millis().max(1) as u64;
    let first = Duration::from_millis(seed % period_ms);
    let mut keepalive = tokio::time::interval_at(Instant::now() + first, swarm.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = swarm.stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return None;
            }
            () = tokio::time::sleep_until(swarm.deadline) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return None;
            }
            _ = keepalive.tick() => {
                if let Err(e) = ws.send(frame_of(&Message::keepalive())).await {
                    return Some(format!("keepalive send: {e}"));
                }
                swarm.stats.keepalives.fetch_add(1, Ordering::Relaxed);
            }
            frame = ws.next() => {
                let data: Bytes = match frame {
                    None => return Some("closed by the cloud (EOF)".to_owned()),
                    Some(Err(e)) => return Some(format!("read: {e}")),
                    Some(Ok(Frame::Text(text))) => Bytes::from(text),
                    Some(Ok(Frame::Binary(bytes))) => bytes,
                    Some(Ok(Frame::Close(close))) => {
                        return Some(format!(
                            "close frame from the cloud ({})",
                            close.map_or_else(|| "no reason".to_owned(), |c| c.code.to_string())
                        ));
                    }
                    Some(Ok(_)) => continue,
                };
                let Ok(msg) = Message::decode_json(data, DEFAULT_MAX_MESSAGE_LEN) else {
                    swarm.stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                swarm.stats.received.fetch_add(1, Ordering::Relaxed);
                if is_ack_tracked(&msg) {
                    if let Err(e) = ws.send(frame_of(&msg.ack())).await {
                        return Some(format!("ACK send: {e}"));
                    }
                    swarm.stats.acks.fetch_add(1, Ordering::Relaxed);
                    if let Some(log) = &swarm.ack_log {
                        log_ack(log, node, &msg);
                    }
                }
            }
        }
    }
}

/// Appends one ACK to the log (`<unix µs> <node> <operation> <resource>`).
fn log_ack(log: &Mutex<std::io::BufWriter<std::fs::File>>, node: &str, msg: &Message) {
    use std::io::Write;
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let op = msg.route.operation.as_ref().map_or("", |o| o.as_str());
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Flushed per line: a benchmark reads the log while the swarm runs.
    let _ = writeln!(log, "{micros} {node} {op} {}", msg.route.resource).and_then(|()| log.flush());
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
