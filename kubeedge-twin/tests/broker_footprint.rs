//! Footprint and throughput of the embedded broker, measured, not asserted against a figure
//! from another machine: run with
//! `cargo test --release -p kubeedge-twin --test broker_footprint -- --ignored --nocapture`.
//! It prints the process's VmRSS before the broker starts, with the broker idle, with
//! `BROKER_CLIENTS` (default 100) `mosquitto_sub` clients (other processes, so only the broker's side is in this process)
//! and after a QoS 0 stream of 200,000 messages from one `mosquitto_pub` to one
//! `mosquitto_sub`, with the messages per second of that stream.

#![cfg(feature = "embedded-broker")]
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kubeedge_testkit::within;
use kubeedge_twin::mqtt::EmbeddedBroker;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// This process's resident set size in KiB.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Counts the established TCP connections to `port` seen by the kernel (from /proc/net/tcp).
fn established_to(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1].ends_with(&hex) && cols[3] == "01"
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it with --ignored --nocapture"]
async fn broker_footprint_and_throughput() {
    let before = vm_rss_kib();
    let broker = EmbeddedBroker::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 1024 * 1024)
        .await
        .expect("broker starts");
    let port = broker.local_addr().port();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = vm_rss_kib();

    let clients: usize = std::env::var("BROKER_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let mut subs = Vec::new();
    for i in 0..clients {
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", &format!("$hw/events/device/default/d{i}/twin/update")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub is installed");
        subs.push(child);
    }
    within("the clients connected", async {
        // The broker's ends of the connections (local port = the broker's).
        while established_to(port) < clients {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_clients = vm_rss_kib();
    drop(subs);

    let count = 200_000usize;
    let topic = "$hw/events/device/default/bench/twin/update";
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "0"])
        .args(["-t", topic, "-C", &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub");
    let mut lines_out = BufReader::new(sub.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lines = Vec::with_capacity(count * 65);
    for i in 0..count {
        lines.extend_from_slice(
            format!("{{\"seq\":{i:08},\"value\":\"0123456789abcdef01234\"}}\n").as_bytes(),
        );
    }
    let started = Instant::now();
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "0"])
        .args(["-t", topic, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = publisher.stdin.take().unwrap();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&lines).await;
    });
    // Count what arrives until all did or nothing came for 5 s (QoS 0 may be dropped).
    let mut received = 0usize;
    let mut last = started;
    while received < count {
        match tokio::time::timeout(Duration::from_secs(5), lines_out.next_line()).await {
            Ok(Ok(Some(_))) => {
                received += 1;
                last = Instant::now();
            }
            _ => break,
        }
    }
    let elapsed = last - started;
    let after = vm_rss_kib();
    let _ = feed.await;
    let _ = publisher.kill().await;
    println!(
        "VmRSS KiB: before {before}, idle {idle} (+{}), {clients} clients {with_clients} (+{}), \
         after the stream {after}",
        idle.saturating_sub(before),
        with_clients.saturating_sub(before)
    );
    println!(
        "QoS 0 stream: {received} of {count} messages arrived in {elapsed:?} = {:.0} msg/s",
        received as f64 / elapsed.as_secs_f64()
    );
    broker.stop();
}
