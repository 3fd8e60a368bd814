//! The store's memory footprint: resident memory before opening a store, after opening it with
//! the default configuration, and after storing 1,000 pods through the MetaManager (and listing
//! them once, which fills a reader's page cache too).
//!
//! SQLite's page cache is bounded per connection by `StoreConfig::cache_kib` (2,048 KiB by
//! default); the store keeps one writer connection and `readers` (2) read connections, so the
//! page caches together may grow to 3 × 2 MiB = 6 MiB. Whatever RSS grows beyond that is the
//! rest of the store (SQLite's own state, statement caches, the writer thread, rows being
//! copied out). `RssFile` is the executable's pages (mostly SQLite's code) faulted in: shared
//! and reclaimable; `RssAnon` is the store's own memory.
//!
//! Linux only (reads `/proc/self/status`). Run:
//! `cargo run --release -p kubeedge-store --example store_footprint [pods]`

use kubeedge_proto::{Content, Message, NodeName};
use kubeedge_store::{LocalTarget, MetaManager, MetaManagerConfig, Store, StoreConfig, meta};

/// `VmRSS`, `VmHWM`, `RssAnon` and `RssFile` from `/proc/self/status`, in KiB.
fn memory() -> [u64; 4] {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    ["VmRSS:", "VmHWM:", "RssAnon:", "RssFile:"].map(field)
}

/// Prints the memory figures, and their growth since `baseline` (the figures before the store
/// was opened) when there is one.
fn report(stage: &str, baseline: Option<[u64; 4]>) -> [u64; 4] {
    let now = memory();
    let [rss, hwm, anon, file] = now;
    let growth = baseline.map_or(String::new(), |base| {
        let delta = |i: usize| now[i] as i64 - base[i] as i64;
        format!(
            "  | since before open: RSS {:>+6} KiB (anon {:>+6}, file {:>+6})",
            delta(0),
            delta(2),
            delta(3)
        )
    });
    println!(
        "{stage:<34} VmRSS {rss:>6} KiB  VmHWM {hwm:>6} KiB  RssAnon {anon:>6} KiB  \
         RssFile {file:>6} KiB{growth}"
    );
    now
}

/// A pod as the cloud sends it, about 1.5 KiB of JSON.
fn pod(n: usize) -> String {
    format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"p-{n}","namespace":"default","uid":"6c1b6f2e-0000-4000-8000-{n:012}","resourceVersion":"{rv}","creationTimestamp":"2024-05-01T10:00:00Z","labels":{{"app":"sensor-reader","pod-template-hash":"7d9f8c6b5"}},"annotations":{{"kubectl.kubernetes.io/restartedAt":"2024-05-01T10:00:00Z"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"sensor-reader-7d9f8c6b5","uid":"0a4c2d1e-1111-4000-8000-000000000001","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"nodeName":"edge-node-1","restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default","containers":[{{"name":"reader","image":"registry.example/sensor-reader:1.4.2","imagePullPolicy":"IfNotPresent","args":["--interval=5s","--port=/dev/ttyUSB0"],"env":[{{"name":"NODE_NAME","value":"edge-node-1"}},{{"name":"LOG_LEVEL","value":"info"}}],"resources":{{"limits":{{"cpu":"200m","memory":"64Mi"}},"requests":{{"cpu":"50m","memory":"32Mi"}}}},"volumeMounts":[{{"name":"dev","mountPath":"/dev"}},{{"name":"config","mountPath":"/etc/reader","readOnly":true}}]}}],"volumes":[{{"name":"dev","hostPath":{{"path":"/dev"}}}},{{"name":"config","configMap":{{"name":"sensor-reader-config"}}}}],"tolerations":[{{"key":"node-role.kubernetes.io/edge","operator":"Exists","effect":"NoSchedule"}}]}},"status":{{"phase":"Pending","qosClass":"Burstable"}}}}"#,
        rv = 1000 + n
    )
}

fn main() {
    let pods: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig::new(dir.path().join("edgecore.db"));
    println!(
        "page cache: cache_kib = {} KiB per connection × (1 writer + {} readers) = at most {} KiB",
        config.cache_kib,
        config.readers,
        u64::from(config.cache_kib) * (1 + config.readers as u64)
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Let the runtime's threads start before the baseline.
    runtime.block_on(tokio::task::yield_now());
    let baseline = report("before opening (runtime started)", None);

    let store = Store::open(config).expect("open");
    report("after Store::open", Some(baseline));

    let manager = MetaManager::new(
        store.clone(),
        MetaManagerConfig::new(NodeName::new("edge-node-1").unwrap()),
    );
    let mut bytes = 0;
    runtime.block_on(async {
        for n in 0..pods {
            let json = pod(n);
            bytes += json.len();
            let content = Content::try_from(json.as_str()).expect("pod JSON");
            let msg = Message::new(
                "edgecontroller",
                "resource",
                "insert",
                format!("default/pod/p-{n}"),
                content,
            )
            .with_resource_version((1000 + n).to_string());
            let outcome = manager.from_cloud(msg).await.expect("from_cloud");
            assert!(outcome.ack.is_some() && outcome.changed);
            assert_eq!(outcome.forward.map(|f| f.target), Some(LocalTarget::Edged));
        }
    });
    println!("stored {pods} pods, {} KiB of pod JSON", bytes / 1024);
    report(
        &format!("after {pods} pods via MetaManager"),
        Some(baseline),
    );

    let listed = runtime
        .block_on(store.read(|db| meta::list_in_namespace(db, "default", "pod")))
        .expect("list");
    assert_eq!(listed.len(), pods);
    drop(listed);
    report("after listing them (rows dropped)", Some(baseline));

    let size = |f: &str| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len() / 1024);
    println!(
        "database files: edgecore.db {} KiB, -wal {} KiB, -shm {} KiB",
        size("edgecore.db"),
        size("edgecore.db-wal"),
        size("edgecore.db-shm")
    );

    drop(manager);
    drop(store);
    report("after closing the store", Some(baseline));
}
