//! Our cloudcore and our edgecore in a real cluster (Kubernetes v1.32 kube-apiserver,
//! controller-manager and scheduler, ServiceAccount admission): a 2-replica Deployment
//! scheduled onto the edge node runs there; the edge killed → the node lifecycle controller
//! marks the node not Ready; the edge back → Ready again at once, the same pods and
//! containers; the Deployment deleted → its pods removed (garbage collection, graceful
//! deletion finished by the edge). Skipped (saying so) without `../shared/peers` or the test
//! containerd.

mod interop;
mod system;

use std::collections::BTreeMap;
use std::time::Duration;

use interop::{
    OurCloud, OurEdge, cloudcore_kubeconfig, lease_renewed, log_lines, node_ready,
    running_and_ready, wait_for,
};
use kubeedge_testkit::peers::{ControlPlane, ControlPlaneOptions, Peers};
use serde_json::Value;
use system::cri_endpoint;

const NODE: &str = "rs-cluster-1";

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: c
        image: edged.test/busybox:1
        imagePullPolicy: Never
        command: ["sh", "-c", "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; exec sleep 3600"]
"#;

/// The Deployment's pods: uid → (node, container id), when all `want` run and are ready.
async fn web_pods(cp: &ControlPlane, want: usize) -> Option<BTreeMap<String, (String, String)>> {
    let list = cp
        .get_json(&["pods", "-n", "default", "-l", "app=web"])
        .await?;
    let items = list["items"].as_array()?;
    if items.len() != want || !items.iter().all(running_and_ready) {
        return None;
    }
    items
        .iter()
        .map(|p: &Value| {
            Some((
                p["metadata"]["uid"].as_str()?.to_owned(),
                (
                    p["spec"]["nodeName"].as_str()?.to_owned(),
                    p["status"]["containerStatuses"][0]["containerID"]
                        .as_str()?
                        .to_owned(),
                ),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_on_our_edge_in_a_real_cluster_across_an_edge_outage() {
    let Some(peers) = Peers::find() else { return };
    let Some(cri) = cri_endpoint() else { return };
    let cp = ControlPlane::start(
        &peers,
        ControlPlaneOptions {
            node_monitor_grace: Some(Duration::from_secs(20)),
            ..ControlPlaneOptions::cluster()
        },
    )
    .await;
    let dir = cp.run_dir().join("ours");
    let kubeconfig = cloudcore_kubeconfig(&cp, &dir).await;
    let cloud = OurCloud::start(&dir, "cloudcore", &kubeconfig).await;
    let token = cloud.token().await;
    let mut edge = OurEdge::join(
        &peers,
        &dir,
        NODE,
        cloud.ws,
        cloud.https.port(),
        &token,
        &cri,
    )
    .await;
    wait_for("the node Ready", || async {
        (node_ready(&cp, NODE).await.as_deref() == Some("True")).then_some(())
    })
    .await;
    lease_renewed(&cp, NODE).await;

    // Placed by the scheduler (no nodeName), admitted with the service-account volume.
    cp.apply(DEPLOYMENT).await.unwrap();
    let before = wait_for("2 replicas Running and ready on the edge node", || {
        web_pods(&cp, 2)
    })
    .await;
    assert!(before.values().all(|(node, _)| node == NODE), "{before:?}");

    // The edge dies: the node lifecycle controller marks the node not Ready.
    edge.proc.kill().await;
    wait_for("the node not Ready while the edge is gone", || async {
        let ready = node_ready(&cp, NODE).await?;
        (ready != "True").then_some(ready)
    })
    .await;
    // The edge comes back: Ready at once (it reports its status right after registering),
    // the same pods, the same containers (adopted, not restarted).
    edge.proc.start();
    wait_for("the node Ready again", || async {
        (node_ready(&cp, NODE).await.as_deref() == Some("True")).then_some(())
    })
    .await;
    let after = wait_for("the same 2 replicas Running", || web_pods(&cp, 2)).await;
    assert_eq!(before, after, "pods and containers kept across the outage");

    // Deleted: the ReplicaSet and its pods go (garbage collection), the edge finishes each
    // graceful deletion once the containers stopped.
    cp.kubectl(&["delete", "deployment", "web", "--wait=false"])
        .await
        .unwrap();
    wait_for("the Deployment's pods gone from the API", || async {
        let list = cp
            .get_json(&["pods", "-n", "default", "-l", "app=web"])
            .await?;
        list["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    wait_for("the Deployment's pods gone from the edge", || async {
        edge.keys("pod").await.is_empty().then_some(())
    })
    .await;

    // Writes the API server refused are warnings; none was refused here.
    let log = dir.join("cloudcore.log");
    let refused = log_lines(&log, "refused a write");
    assert!(refused.is_empty(), "{refused:#?}");
}
