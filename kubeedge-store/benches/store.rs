//! The store's costs that matter on an edge node:
//!
//! - `upsert`: durable upserts per second with group commit (`max_batch` 256) against one
//!   transaction per write (`max_batch` 1), for each [`Durability`]: a batch of 2,048 upserts of
//!   ~1 KiB pods issued by 64 concurrent tokio tasks, each awaiting its own writes one after the
//!   other (as MetaManager callers do). Throughput is reported in elements, i.e. upserts/s.
//! - `list_1000_pods`: the "all pods of this node" query with 1,000 pods stored, through
//!   `Store::read` (a pooled read connection on a blocking thread), by namespace prefix and by
//!   type.
//!
//! The databases live in a temporary directory (set `TMPDIR` to bench another file system);
//! `PowerLoss` numbers are only meaningful on a disk whose `fsync` is real.
//!
//! Run: `cargo bench -p kubeedge-store --bench store`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use kubeedge_store::meta::{self, ObjectVersion};
use kubeedge_store::{Durability, Store, StoreConfig};

/// Upserts per measured batch.
const BATCH: u64 = TASKS * PER_TASK;
/// Concurrent writers.
const TASKS: u64 = 64;
/// Upserts each writer awaits one after the other.
const PER_TASK: u64 = 32;
/// Pods stored for the list queries.
const PODS: usize = 1_000;

/// A pod's JSON of about 1 KiB.
fn pod_json(name: &str, uid: &str, resource_version: u64) -> String {
    let mut pod = format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"default","uid":"{uid}","resourceVersion":"{resource_version}","labels":{{"app":"bench"}}}},"spec":{{"nodeName":"edge-node-1","containers":[{{"name":"app","image":"registry.example/app:1.0","resources":{{"limits":{{"cpu":"500m","memory":"128Mi"}}}}}}]}},"status":{{"phase":"Running","note":""#
    );
    while pod.len() < 1000 {
        pod.push_str("xxxxxxxxxxxxxxxx");
    }
    pod.push_str(r#""}}"#);
    pod
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn open(dir: &tempfile::TempDir, name: &str, durability: Durability, max_batch: usize) -> Store {
    let mut config = StoreConfig::new(dir.path().join(name));
    config.durability = durability;
    config.max_batch = max_batch;
    Store::open(config).expect("open the store")
}

/// 64 tasks, each upserting its 32 keys one after the other, every write at a newer
/// resourceVersion (so each one is really written, never skipped as stale).
async fn upsert_batch(store: &Store, value: &Arc<str>, next_version: &Arc<AtomicU64>) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            let value = Arc::clone(value);
            let next_version = Arc::clone(next_version);
            tokio::spawn(async move {
                for j in 0..PER_TASK {
                    let n = task * PER_TASK + j;
                    let key = format!("default/pod/p-{n}");
                    let version = ObjectVersion {
                        uid: format!("6c1b6f2e-0000-4000-8000-{n:012}"),
                        resource_version: next_version.fetch_add(1, Ordering::Relaxed),
                    };
                    let value = Arc::clone(&value);
                    store
                        .write(move |db| {
                            meta::upsert(db, &key, "pod", &value, Some(&version)).map(drop)
                        })
                        .await
                        .expect("upsert");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
}

fn upserts(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let value: Arc<str> = pod_json("p", "u", 1).into();
    let next_version = Arc::new(AtomicU64::new(1));

    let mut group = c.benchmark_group("upsert_64_tasks");
    group.throughput(Throughput::Elements(BATCH));
    // A transaction per write with fsync takes a while per batch: few, flat samples.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for (durability, mode) in [
        (Durability::ProcessCrash, "ProcessCrash"),
        (Durability::PowerLoss, "PowerLoss"),
    ] {
        for (max_batch, commit) in [(256, "group_commit"), (1, "txn_per_write")] {
            let store = open(
                &dir,
                &format!("{mode}-{max_batch}.db"),
                durability,
                max_batch,
            );
            group.bench_function(BenchmarkId::new(mode, commit), |b| {
                b.to_async(&rt)
                    .iter(|| upsert_batch(&store, &value, &next_version));
            });
            rt.block_on(async {
                let stored: i64 = store
                    .read(|db| Ok(db.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?))
                    .await
                    .expect("count");
                assert_eq!(stored as u64, BATCH, "every upsert landed");
            });
        }
    }
    group.finish();
}

fn list_pods(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir, "list.db", Durability::ProcessCrash, 256);
    rt.block_on(async {
        let futures: Vec<_> = (0..PODS)
            .map(|n| {
                let key = format!("default/pod/p-{n}");
                let uid = format!("6c1b6f2e-0000-4000-8000-{n:012}");
                let value = pod_json(&format!("p-{n}"), &uid, 1);
                let version = ObjectVersion {
                    uid,
                    resource_version: 1,
                };
                store.write(move |db| {
                    meta::upsert(db, &key, "pod", &value, Some(&version)).map(drop)
                })
            })
            .collect();
        for f in futures {
            f.await.expect("store a pod");
        }
        // Other rows beside the pods, as on a node: configmaps and secrets in other namespaces.
        for n in 0..200 {
            let key = format!("kube-system/configmap/c-{n}");
            store
                .write(move |db| meta::upsert(db, &key, "configmap", "{}", None).map(drop))
                .await
                .expect("store a configmap");
        }
    });

    let mut group = c.benchmark_group("list_1000_pods");
    group.throughput(Throughput::Elements(PODS as u64));
    group.bench_function("list_in_namespace", |b| {
        b.to_async(&rt).iter(|| async {
            let rows = store
                .read(|db| meta::list_in_namespace(db, "default", "pod"))
                .await
                .expect("list");
            assert_eq!(rows.len(), PODS);
            black_box(rows)
        });
    });
    group.bench_function("list_by_type", |b| {
        b.to_async(&rt).iter(|| async {
            let rows = store
                .read(|db| meta::list_by_type(db, "pod"))
                .await
                .expect("list");
            assert_eq!(rows.len(), PODS);
            black_box(rows)
        });
    });
    group.finish();
}

criterion_group!(benches, upserts, list_pods);
criterion_main!(benches);
