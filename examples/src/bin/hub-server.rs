//! `hub-server`: a thin cloud process for the swarm measurements: a CloudHub and the reliable
//! delivery layer, and nothing else.
//!
//! ```text
//! hub-server --pki-dir DIR --nodes-expected N [--listen 127.0.0.1:10000] [--fanout-rounds 5]
//!            [--window 16] [--connect-timeout-secs 120] [--settle-secs 5] [--idle-secs 0]
//!            [--round-timeout-secs 120] [--retry-secs 5] [--events-len 4096]
//! ```
//!
//! 1. Loads the cluster CA from `DIR/ca.pem` + `DIR/ca-key.pem`, or generates one and writes
//!    them (the swarm signs its node certificates with it), and issues the server certificate
//!    for the listen address.
//! 2. Starts CloudHub (node limit 100,000) and `ReliableCloud`, prints its RSS with no node.
//! 3. Waits (at most `--connect-timeout-secs`) until `N` nodes are connected, lets them idle for
//!    `--settle-secs`, prints the RSS and the RSS per node; with `--idle-secs`, keeps watching
//!    the idle process (RSS and CPU every 5 s).
//! 4. Runs `--fanout-rounds` rounds: one ACK-tracked Pod-like message to every connected node
//!    through `ReliableCloudHandle::send`, and reports the rate (nodes / time until the last ACK)
//!    and the send-to-`Delivered` latency percentiles. Each round waits at most
//!    `--round-timeout-secs`.
//! 5. Exits. Every wait has a deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kubeedge_hub::{
    CloudHub, CloudHubConfig, DeliveryConfig, DeliveryEvent, LinkEnd, ReliableCloud,
    ReliableCloudHandle, tls,
};
use kubeedge_proto::{Content, Message, new_message_id};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use kubeedge_examples::common::{
    self, cpu_time, ms, percentile, raise_nofile_limit, resident_kib, status_kib,
};

/// How often progress is printed while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The CloudHub under load: waits for `--nodes-expected` nodes (edge-swarm), then fans out
/// rounds of messages and reports latency, memory and CPU.
#[derive(clap::Parser)]
#[command(name = "hub-server")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: SocketAddr,
    #[arg(long)]
    pki_dir: PathBuf,
    #[arg(long = "nodes-expected")]
    nodes: usize,
    #[arg(long = "fanout-rounds", default_value_t = 5)]
    rounds: usize,
    #[arg(long, default_value_t = 16)]
    window: usize,
    #[arg(long = "connect-timeout-secs", default_value = "120", value_parser = secs)]
    connect_timeout: Duration,
    #[arg(long = "settle-secs", default_value = "5", value_parser = secs)]
    settle: Duration,
    #[arg(long = "idle-secs", default_value = "0", value_parser = secs)]
    idle: Duration,
    #[arg(long = "round-timeout-secs", default_value = "120", value_parser = secs)]
    round_timeout: Duration,
    #[arg(long = "retry-secs", default_value = "5", value_parser = secs)]
    retry: Duration,
    #[arg(long, default_value_t = 4096)]
    events_len: usize,
}

fn secs(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_secs)
}

fn main() -> ExitCode {
    common::main_with("hub-server", <Args as clap::Parser>::parse(), run)
}

/// Loads the CA from `dir` or creates it there, and issues the server certificate for `ip`.
fn pki(dir: &Path, ip: IpAddr) -> Result<Arc<rustls::ServerConfig>, String> {
    let ca = kubeedge_config::pki::load_or_create_ca_in(dir)?;
    let server = ca
        .issue_server_cert(&[ip], &["localhost"])
        .map_err(|e| format!("server certificate: {e}"))?;
    tls::server_config(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        ca.cert_pem().as_bytes(),
    )
    .map_err(|e| format!("server TLS: {e}"))
}

/// What the application has seen of the delivery layer's events.
#[derive(Default)]
struct Tally {
    connected: HashSet<String>,
    connects: u64,
    disconnects: BTreeMap<String, u64>,
    /// Messages from nodes (nearly all keepalives).
    from_nodes: u64,
    delivered_total: u64,
    /// Message ids of the current round not acknowledged yet.
    awaiting: HashSet<String>,
    /// When each of the current round's messages was reported delivered.
    delivered_at: HashMap<String, Instant>,
}

impl Tally {
    fn on_event(&mut self, event: DeliveryEvent) {
        match event {
            DeliveryEvent::Connected { node } => {
                self.connects += 1;
                self.connected.insert(node);
            }
            DeliveryEvent::Disconnected { node, reason } => {
                // A replaced session is followed by its successor: the node stays connected.
                if reason != LinkEnd::Replaced {
                    self.connected.remove(&node);
                }
                let mut reason = reason.to_string();
                reason.truncate(100);
                *self.disconnects.entry(reason).or_default() += 1;
            }
            DeliveryEvent::Message { .. } => self.from_nodes += 1,
            DeliveryEvent::Delivered { msg_id, .. } => {
                self.delivered_total += 1;
                if self.awaiting.remove(&msg_id) {
                    self.delivered_at.insert(msg_id, Instant::now());
                }
            }
        }
    }

    fn disconnect_summary(&self) -> String {
        if self.disconnects.is_empty() {
            return "none".to_owned();
        }
        self.disconnects
            .iter()
            .map(|(reason, n)| format!("{n} x {reason}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Drains events into `tally` until `done` says so or `deadline` passes, printing progress with
/// `label`. Returns whether `done` was reached.
async fn drain_until(
    events: &mut mpsc::Receiver<DeliveryEvent>,
    tally: &mut Tally,
    deadline: Instant,
    label: &str,
    done: impl Fn(&Tally) -> bool,
) -> bool {
    let start = Instant::now();
    let mut progress = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut cpu_mark = (Instant::now(), cpu_time());
    loop {
        if done(tally) {
            return true;
        }
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { return false };
                tally.on_event(event);
            }
            () = tokio::time::sleep_until(deadline) => return done(tally),
            _ = progress.tick() => {
                let (now, cpu) = (Instant::now(), cpu_time());
                let share = (cpu - cpu_mark.1).as_secs_f64() / (now - cpu_mark.0).as_secs_f64();
                cpu_mark = (now, cpu);
                println!(
                    "[{label} +{:>5.1}s] connected {} (connects {}, disconnects {}), \
                     from nodes {}, RSS {} KiB, CPU {:.1} % of a core",
                    (now - start).as_secs_f64(),
                    tally.connected.len(),
                    tally.connects,
                    tally.disconnects.values().sum::<u64>(),
                    tally.from_nodes,
                    resident_kib(),
                    share * 100.0,
                );
            }
        }
    }
}

/// A Pod-like object for `node`, as edgecontroller sends a pod insert.
fn pod_message(node: &str, round: usize, index: usize, resource_version: u64) -> Message {
    let name = format!("swarm-pod-r{round}-{index}");
    let uid = new_message_id();
    let json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": uid,
            "resourceVersion": resource_version.to_string(),
            "labels": {"app": "swarm"},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}],
            "restartPolicy": "Always",
        },
        "status": {"phase": "Pending"},
    });
    let content = Content::json(&json).unwrap_or_else(|_| Content::null());
    Message::new(
        "edgecontroller",
        "resource",
        "insert",
        format!("default/pod/{name}"),
        content,
    )
    .with_resource_version(resource_version.to_string())
}

/// The figures of one fan-out round.
struct RoundResult {
    nodes: usize,
    acked: usize,
    send_errors: usize,
    enqueue_time: Duration,
    until_last_ack: Duration,
    latencies: Vec<Duration>,
}

async fn fan_out(
    round: usize,
    handle: &ReliableCloudHandle,
    events: &mut mpsc::Receiver<DeliveryEvent>,
    tally: &mut Tally,
    timeout: Duration,
) -> RoundResult {
    let mut nodes: Vec<String> = tally.connected.iter().cloned().collect();
    nodes.sort();
    let base_rv = 1_000_000 + (round as u64) * 1_000_000;
    let messages: Vec<(String, Message)> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let msg = pod_message(node, round, i, base_rv + i as u64);
            (node.clone(), msg)
        })
        .collect();
    tally.awaiting = messages.iter().map(|(_, m)| m.header.id.clone()).collect();
    tally.delivered_at.clear();
    let total = messages.len();

    let start = Instant::now();
    let deadline = start + timeout;
    let sender_handle = handle.clone();
    let sender = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(messages.len());
        let mut errors = 0;
        for (node, msg) in messages {
            sent.push((msg.header.id.clone(), Instant::now()));
            let send = sender_handle.send(&node, msg);
            match tokio::time::timeout_at(deadline, send).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => errors += 1,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        (sent, errors, Instant::now())
    });
    let label = format!("round {round}");
    drain_until(events, tally, deadline, &label, |t| t.awaiting.is_empty()).await;
    let (sent, send_errors, enqueued) =
        match tokio::time::timeout(Duration::from_secs(5), sender).await {
            Ok(Ok(result)) => result,
            _ => (Vec::new(), total, Instant::now()),
        };
    let last_ack = tally.delivered_at.values().max().copied().unwrap_or(start);
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| tally.delivered_at.get(id).map(|d| d.duration_since(*at)))
        .collect();
    latencies.sort();
    RoundResult {
        nodes: total,
        acked: tally.delivered_at.len(),
        send_errors,
        enqueue_time: enqueued.duration_since(start),
        until_last_ack: last_ack.duration_since(start),
        latencies,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let nofile = raise_nofile_limit();
    println!(
        "hub-server: pid {}, RLIMIT_NOFILE {nofile}",
        std::process::id()
    );
    if (nofile as usize) < args.nodes + 64 {
        println!(
            "warning: the open-file limit {nofile} is below {} nodes + 64",
            args.nodes
        );
    }
    let cert_ip = match args.listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let tls = pki(&args.pki_dir, cert_ip)?;

    let mut config = CloudHubConfig::new(args.listen, tls);
    config.node_limit = 100_000;
    config.events_len = args.events_len;
    let (hub, hub_handle, raw) = CloudHub::bind(config)
        .await
        .map_err(|e| format!("bind {}: {e}", args.listen))?;
    let delivery = DeliveryConfig {
        window: args.window,
        retry_interval: args.retry,
        events_len: args.events_len,
        ..DeliveryConfig::default()
    };
    let (reliable, handle, mut events) = ReliableCloud::new(hub_handle, raw, delivery);
    // The empty figure is taken before the hub accepts anything: nodes that dial early wait in
    // the listen backlog meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_empty = resident_kib();
    println!(
        "RSS empty: {rss_empty} KiB (RssAnon {} KiB), before accepting",
        status_kib("RssAnon")
    );
    let stop = CancellationToken::new();
    let hub_task = tokio::spawn(hub.run(stop.clone()));
    let reliable_task = tokio::spawn(reliable.run(stop.clone()));
    println!(
        "hub-server: listening on {} (window {}, retry {:?})",
        args.listen, args.window, args.retry
    );

    let mut tally = Tally::default();
    let nodes = args.nodes;
    let started = Instant::now();
    let all = drain_until(
        &mut events,
        &mut tally,
        started + args.connect_timeout,
        "connect",
        |t| t.connected.len() >= nodes,
    )
    .await;
    println!(
        "connected: {} of {nodes} after {:.1} s{}",
        tally.connected.len(),
        started.elapsed().as_secs_f64(),
        if all { "" } else { " (deadline reached)" }
    );

    drain_until(
        &mut events,
        &mut tally,
        Instant::now() + args.settle,
        "settle",
        |_| false,
    )
    .await;
    let held = tally.connected.len();
    let rss_connected = resident_kib();
    let per_node = if held > 0 {
        rss_connected.saturating_sub(rss_empty) as f64 / held as f64
    } else {
        0.0
    };
    println!(
        "RSS connected: {rss_connected} KiB with {held} nodes idle {} s (RssAnon {} KiB); \
         per node {per_node:.2} KiB; disconnects so far: {}",
        args.settle.as_secs(),
        status_kib("RssAnon"),
        tally.disconnect_summary()
    );

    if !args.idle.is_zero() {
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        drain_until(&mut events, &mut tally, t0 + args.idle, "idle", |_| false).await;
        let cpu = (cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
        let rss_idle = resident_kib();
        println!(
            "RSS after {} s more idle: {rss_idle} KiB with {} nodes; per node {:.2} KiB; \
             idle CPU {:.1} % of a core; messages from nodes {}",
            args.idle.as_secs(),
            tally.connected.len(),
            rss_idle.saturating_sub(rss_empty) as f64 / tally.connected.len().max(1) as f64,
            cpu * 100.0,
            tally.from_nodes
        );
    }

    let mut rates = Vec::new();
    for round in 1..=args.rounds {
        let r = fan_out(round, &handle, &mut events, &mut tally, args.round_timeout).await;
        let rate = if r.until_last_ack.is_zero() {
            0.0
        } else {
            r.acked as f64 / r.until_last_ack.as_secs_f64()
        };
        rates.push(rate);
        let l = &r.latencies;
        println!(
            "round {round}: {} nodes, {} acked, {} send errors; enqueued in {}, last ACK after {}; \
             {rate:.0} messages/s; send-to-ACK p50 {} p90 {} p99 {} max {}; RSS {} KiB",
            r.nodes,
            r.acked,
            r.send_errors,
            ms(r.enqueue_time),
            ms(r.until_last_ack),
            ms(percentile(l, 0.50)),
            ms(percentile(l, 0.90)),
            ms(percentile(l, 0.99)),
            ms(percentile(l, 1.0)),
            resident_kib(),
        );
        // A short pause between rounds, still draining events.
        drain_until(
            &mut events,
            &mut tally,
            Instant::now() + Duration::from_secs(1),
            "pause",
            |_| false,
        )
        .await;
    }

    println!(
        "summary: nodes expected {nodes}, held {held}, RSS empty {rss_empty} KiB, connected \
         {rss_connected} KiB, per node {per_node:.2} KiB, RSS now {} KiB, rounds {:?} messages/s, \
         disconnects: {}",
        resident_kib(),
        rates.iter().map(|r| r.round() as u64).collect::<Vec<_>>(),
        tally.disconnect_summary()
    );

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), hub_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reliable_task).await;
    Ok(())
}
