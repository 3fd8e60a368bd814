//! The node reporter against a real containerd: registration, status patches and the lease
//! land in the durable outbox in KubeEdge's forms, and the lease controller follows the
//! cloud's answers (the answers here are played by the test; the real clouds answer in
//! `examples/tests/interop_*.rs`).

use std::sync::Arc;
use std::time::Duration;

use kubeedge_edged::node_status::NodeConfig;
use kubeedge_edged::{CriRuntime, NodeReporter, NodeReporterConfig};
use kubeedge_proto::{Content, Message, NodeName};
use kubeedge_store::{MetaManager, MetaManagerConfig, Store, StoreConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn answer(request: &Message, content: Value) -> Message {
    Message::new(
        "edgecontroller",
        "resource",
        "response",
        request.route.resource.as_str(),
        Content::json(&content).unwrap(),
    )
    .with_parent(request.header.id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_registers_reports_status_and_keeps_its_lease_as_the_cloud_answers() {
    let Ok(endpoint) = std::env::var("EDGED_CRI_ENDPOINT") else {
        eprintln!("skipped: EDGED_CRI_ENDPOINT not set (run scripts/containerd-env.sh up)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("edgecore.db"))).unwrap();
    let meta = MetaManager::new(
        store,
        MetaManagerConfig::new(NodeName::new("edge-n1").unwrap()),
    );
    let runtime = Arc::new(CriRuntime::connect(&endpoint).await.unwrap());
    let mut config = NodeReporterConfig::new(
        NodeConfig::new(NodeName::new("edge-n1").unwrap(), ""),
        dir.path(),
    );
    config.status_interval = Duration::from_millis(100);
    config.report_interval = Duration::from_secs(3600);
    config.lease_interval = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let task = tokio::spawn(NodeReporter::new(runtime, meta.clone(), config).run(stop.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut node: Option<Value> = None;
    let mut first_patch: Option<Value> = None;
    let (mut queried, mut created, mut lease_rv, mut node_rv) = (false, false, 0u64, 10u64);
    let mut owned_updates = 0;
    let mut unknown_sent = false;
    let mut patches_after_unknown = 0;
    while owned_updates < 3 || patches_after_unknown == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node:?} patch {first_patch:?} lease: queried {queried} created {created} rv {lease_rv} owned {owned_updates} after-unknown {patches_after_unknown}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        for p in meta.outbox().pending(0, 1000).await.unwrap() {
            let m = p.message;
            let op = m
                .route
                .operation
                .as_ref()
                .map(|o| o.as_str().to_owned())
                .unwrap_or_default();
            let reply = match (op.as_str(), m.route.resource.as_str()) {
                ("insert", "null/node/edge-n1") => {
                    let mut n: Value = m.content.decode().unwrap();
                    n["metadata"]["uid"] = json!("node-uid-1");
                    n["metadata"]["resourceVersion"] = json!("10");
                    node = Some(n.clone());
                    json!({"Object": n, "Err": null})
                }
                ("patch", "null/nodepatch/edge-n1") => {
                    let text: String = m.content.decode().unwrap();
                    let patch: Value = serde_json::from_str(&text).unwrap();
                    first_patch.get_or_insert(patch.clone());
                    if unknown_sent {
                        patches_after_unknown += 1;
                    }
                    let mut n = node.clone().expect("registered first");
                    n["status"] = patch["status"].clone();
                    node_rv += 100;
                    n["metadata"]["resourceVersion"] = json!(node_rv.to_string());
                    json!({"Object": n, "Err": null})
                }
                ("query", "kube-node-lease/lease/edge-n1") => {
                    queried = true;
                    json!({"ErrStatus": {"status": "Failure", "reason": "NotFound", "code": 404, "message": "leases.coordination.k8s.io \"edge-n1\" not found"}})
                }
                ("insert", "kube-node-lease/lease/edge-n1") => {
                    assert!(queried, "the lease is asked for before it is created");
                    created = true;
                    let mut lease: Value = m.content.decode().unwrap();
                    lease_rv = 100;
                    lease["metadata"]["uid"] = json!("lease-uid");
                    lease["metadata"]["resourceVersion"] = json!(lease_rv.to_string());
                    json!({"Object": lease, "Err": null})
                }
                ("update", "kube-node-lease/lease/edge-n1") => {
                    let mut lease: Value = m.content.decode().unwrap();
                    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
                    assert_eq!(lease["spec"]["holderIdentity"], "edge-n1");
                    // Renewed with the version of the last answer, as an Update needs.
                    assert_eq!(
                        lease["metadata"]["resourceVersion"],
                        json!(lease_rv.to_string()),
                        "{lease:#}"
                    );
                    if lease["metadata"]["ownerReferences"][0]["uid"] == "node-uid-1" {
                        owned_updates += 1;
                    }
                    lease_rv += 1;
                    lease["metadata"]["resourceVersion"] = json!(lease_rv.to_string());
                    json!({"Object": lease, "Err": null})
                }
                _ => continue,
            };
            meta.from_cloud(answer(&m, reply)).await.unwrap();
        }
        // The controller-manager marks the node Unknown while it is away: the cloud pushes
        // that Node, and the node answers with its Ready status without waiting for a change.
        if owned_updates >= 3 && !unknown_sent {
            let mut n = node.clone().unwrap();
            n["status"]["conditions"] = json!([{"type": "Ready", "status": "Unknown"}]);
            node_rv += 1;
            n["metadata"]["resourceVersion"] = json!(node_rv.to_string());
            let push = Message::new(
                "edgecontroller",
                "resource",
                "update",
                "null/node/edge-n1",
                Content::json(&n).unwrap(),
            )
            .with_resource_version(node_rv.to_string());
            meta.from_cloud(push).await.unwrap();
            unknown_sent = true;
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
    // The status goes up right after registration (a restarted node is Ready at once).
    let patch = first_patch.unwrap();
    let ready = patch["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True", "{patch:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_lease_wait_coalesced_while_the_cloud_is_away() {
    let Ok(endpoint) = std::env::var("EDGED_CRI_ENDPOINT") else {
        eprintln!("skipped: EDGED_CRI_ENDPOINT not set (run scripts/containerd-env.sh up)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("edgecore.db"))).unwrap();
    let meta = MetaManager::new(
        store,
        MetaManagerConfig::new(NodeName::new("edge-n2").unwrap()),
    );
    let runtime = Arc::new(CriRuntime::connect(&endpoint).await.unwrap());
    let mut config = NodeReporterConfig::new(
        NodeConfig::new(NodeName::new("edge-n2").unwrap(), ""),
        dir.path(),
    );
    config.status_interval = Duration::from_millis(50);
    config.report_interval = Duration::from_millis(100);
    config.lease_interval = Duration::from_millis(50);
    let stop = CancellationToken::new();
    let task = tokio::spawn(NodeReporter::new(runtime, meta.clone(), config).run(stop.clone()));
    // Nothing answers: many ticks pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pending = meta.outbox().pending(0, 1000).await.unwrap();
        let count = |op: &str, resource: &str| {
            pending
                .iter()
                .filter(|p| {
                    p.message.route.resource == resource
                        && p.message.route.operation.as_ref().map(|o| o.as_str()) == Some(op)
                })
                .count()
        };
        let patches = count("patch", "null/nodepatch/edge-n2");
        let queries = count("query", "kube-node-lease/lease/edge-n2");
        // Several status reports were due; one waits. The lease is asked for once.
        if patches == 1 && queries == 1 && pending.len() == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && patches <= 1 && queries <= 1,
            "pending: {:?}",
            pending
                .iter()
                .map(|p| p.message.route.to_string())
                .collect::<Vec<_>>()
        );
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}
