//! Measures edged against a real containerd: the time from a pod arriving in the store (as the
//! MetaManager applies the cloud's insert) to its container running in the runtime, over 20
//! pods, and the resident memory of this process (edged, its store and runtime client) with 0
//! and with 10 pods running.
//!
//! ```text
//! scripts/containerd-env.sh up
//! EDGED_CRI_ENDPOINT=unix:///tmp/edged-ctrd/containerd.sock \
//!     cargo run --release -p kubeedge-edged --example pod_start [-- --small-store]
//! ```
//!
//! `--small-store` opens the store as a memory-tight edge device would: a 256 KiB page cache
//! and one read connection (the default is 2 MiB per connection and two readers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kubeedge_edged::runtime::{ContainerState, LABEL_POD_UID, PodRuntime};
use kubeedge_edged::{CriRuntime, Edged, EdgedConfig};
use kubeedge_proto::{Content, Message, NodeName};
use kubeedge_store::{MetaManager, MetaManagerConfig, Store, StoreConfig};
use tokio_util::sync::CancellationToken;

const NODE: &str = "bench-node";
const PODS: usize = 20;

/// `VmRSS` of this process and its anonymous and file-backed parts, in KiB.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    format!(
        "{} KiB (anonymous {} KiB, file-backed {} KiB)",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:")
    )
}

fn pod_message(op: &str, name: &str, uid: &str) -> Message {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "1"},
        "spec": {"nodeName": NODE, "hostNetwork": true, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "edged.test/busybox:1",
                                 "imagePullPolicy": "IfNotPresent", "command": ["sleep", "1000"]}]}
    });
    Message::new(
        "edgecontroller",
        "resource",
        op,
        format!("default/pod/{name}"),
        Content::try_from(pod.to_string().as_str()).expect("pod JSON"),
    )
    .with_resource_version("1")
}

/// CPU time of this process (user + system), from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("EDGED_CRI_ENDPOINT")
        .map_err(|_| "set EDGED_CRI_ENDPOINT (scripts/containerd-env.sh up)")?;
    let dir = tempfile::tempdir()?;
    let mut store_config = StoreConfig::new(dir.path().join("edgecore.db"));
    if std::env::args().any(|a| a == "--small-store") {
        store_config.cache_kib = 256;
        store_config.readers = 1;
    }
    let store = Store::open(store_config)?;
    let meta = MetaManager::new(store, MetaManagerConfig::new(NodeName::new(NODE).unwrap()));
    let runtime = Arc::new(CriRuntime::connect(&endpoint).await?);
    let (edged, handle) = Edged::new(
        Arc::clone(&runtime),
        meta.clone(),
        EdgedConfig::new(
            NodeName::new(NODE).unwrap(),
            "127.0.0.1",
            dir.path().join("edged"),
        ),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(edged.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss();

    let run_id = std::process::id();
    let mut latencies = Vec::new();
    let mut uids = Vec::new();
    for i in 0..PODS {
        let uid = format!("bench-{run_id}-{i}");
        let started = Instant::now();
        meta.from_cloud(pod_message("insert", &format!("bench-{i}"), &uid))
            .await?;
        handle.store_changed();
        let deadline = started + Duration::from_secs(120);
        loop {
            let running = runtime.list_containers().await?.iter().any(|c| {
                c.labels.get(LABEL_POD_UID) == Some(&uid) && c.state == ContainerState::Running
            });
            if running {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("pod {i} never ran").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(started.elapsed());
        uids.push(uid);
        if i == 9 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            println!("rss with 10 pods: {}", rss());
            // Idle cost: edged resyncs every pod every second (ListPodSandbox, ListContainers,
            // ContainerStatus, the store read).
            let (cpu0, wall0) = (cpu_time(), Instant::now());
            tokio::time::sleep(Duration::from_secs(20)).await;
            let share =
                cpu_time().saturating_sub(cpu0).as_secs_f64() / wall0.elapsed().as_secs_f64();
            println!(
                "cpu with 10 pods running, idle: {:.1} % of a core",
                share * 100.0
            );
        }
    }
    let mut sorted = latencies.clone();
    sorted.sort();
    println!("rss with 0 pods: {rss_idle}");
    println!(
        "pod start (store -> container running), {PODS} pods one after another: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1]
    );
    for (i, uid) in uids.iter().enumerate() {
        meta.from_cloud(pod_message("delete", &format!("bench-{i}"), uid))
            .await?;
    }
    handle.store_changed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while runtime
        .list_sandboxes()
        .await?
        .iter()
        .any(|s| uids.contains(&s.uid))
    {
        if Instant::now() > deadline {
            return Err("pods were not removed".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    task.await??;
    Ok(())
}
