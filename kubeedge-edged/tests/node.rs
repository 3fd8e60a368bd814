//! The node reporter against a real containerd: registration, status patches and the lease land
//! in the durable outbox in KubeEdge's forms.

use std::sync::Arc;
use std::time::Duration;

use kubeedge_edged::node_status::NodeConfig;
use kubeedge_edged::{CriRuntime, NodeReporter, NodeReporterConfig};
use kubeedge_store::{MetaManager, MetaManagerConfig, Store, StoreConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_reports_status_and_renews_its_lease() {
    let Ok(endpoint) = std::env::var("EDGED_CRI_ENDPOINT") else {
        eprintln!("skipped: EDGED_CRI_ENDPOINT not set (run scripts/containerd-env.sh up)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("edgecore.db"))).unwrap();
    let meta = MetaManager::new(store, MetaManagerConfig::new("edge-n1"));
    let runtime = Arc::new(CriRuntime::connect(&endpoint).await.unwrap());
    let mut config = NodeReporterConfig::new(NodeConfig::new("edge-n1", ""), dir.path());
    config.status_interval = Duration::from_millis(100);
    config.report_interval = Duration::from_millis(300);
    config.lease_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let task = tokio::spawn(NodeReporter::new(runtime, meta.clone(), config).run(stop.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut node, mut patch, mut lease_insert, mut lease_update) = (None, None, false, false);
    while node.is_none() || patch.is_none() || !lease_insert || !lease_update {
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing: node {node:?} patch {patch:?} lease {lease_insert}/{lease_update}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        for p in meta.outbox().pending(0, 1000).await.unwrap() {
            let m = p.message;
            let op = m
                .route
                .operation
                .as_ref()
                .map(|o| o.as_str().to_owned())
                .unwrap_or_default();
            match (op.as_str(), m.route.resource.as_str()) {
                ("insert", "default/node/edge-n1") => {
                    node = Some(m.content.decode::<Value>().unwrap())
                }
                ("patch", "default/nodepatch/edge-n1") => {
                    let text: String = m.content.decode().unwrap();
                    patch = Some(serde_json::from_str::<Value>(&text).unwrap());
                }
                ("insert", "kube-node-lease/lease/edge-n1") => lease_insert = true,
                ("update", "kube-node-lease/lease/edge-n1") => {
                    let lease: Value = m.content.decode().unwrap();
                    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
                    assert_eq!(lease["spec"]["holderIdentity"], "edge-n1");
                    lease_update = true;
                }
                _ => {}
            }
        }
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let node = node.unwrap();
    assert_eq!(node["metadata"]["name"], "edge-n1");
    assert!(
        node["metadata"]["labels"]
            .get("node-role.kubernetes.io/edge")
            .is_some(),
        "{node:#}"
    );
    let info = &node["status"]["nodeInfo"];
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://"),
        "{info:#}"
    );
    assert!(node["status"]["capacity"]["cpu"].is_string());
    let patch = patch.unwrap();
    let ready = patch["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "{patch:#}");
    // Coalesced: one pending status patch and one pending lease update, however many ticks.
    let pending = meta.outbox().pending(0, 1000).await.unwrap();
    let patches = pending
        .iter()
        .filter(|p| p.message.route.resource == "default/nodepatch/edge-n1")
        .count();
    let updates = pending
        .iter()
        .filter(|p| {
            p.message.route.resource == "kube-node-lease/lease/edge-n1"
                && p.message.route.operation.as_ref().map(|o| o.as_str()) == Some("update")
        })
        .count();
    assert_eq!((patches, updates), (1, 1));
}
