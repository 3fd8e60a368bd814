//! Our edgecore under KubeEdge's real cloudcore (v1.23.1), in a real cluster (Kubernetes
//! v1.32 kube-apiserver, controller-manager and scheduler, ServiceAccount admission), pods on
//! the real containerd: node Ready with a renewed Lease owned by the Node; a Pod with
//! ConfigMap and Secret volumes created before it and the default service-account token,
//! Running with its status in the API; a ConfigMap change reaching the volume; KubeEdge's own
//! Device samples both ways; a cut link; a burst of pods; deletion. Skipped (saying so) without
//! `../shared/peers` or the test containerd.

mod interop;
mod system;

use interop::{
    ModbusSite, OurEdge, device_samples, lease_renewed, log_lines, node_ready, pod, register_holds,
    reported, running_and_ready, set_desired, sleeper, token_len, wait_for, workload,
};
use kubeedge_testkit::peers::{ControlPlane, ControlPlaneOptions, Peers, RealCloudcore};
use system::{Relay, cri_endpoint};

const NODE: &str = "rs-edge-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_edgecore_under_kubeedges_cloudcore_runs_a_real_clusters_pods() {
    let Some(peers) = Peers::find() else { return };
    let Some(cri) = cri_endpoint() else { return };
    let cp = ControlPlane::start(&peers, ControlPlaneOptions::cluster()).await;
    let cloud = RealCloudcore::start(&cp).await;
    // Our files beside the peers' (kept with them when the test fails).
    let dir = cp.run_dir().join("ours");
    let relay = Relay::start(cloud.ws_addr()).await;
    let edge = OurEdge::join(
        &peers,
        &dir,
        NODE,
        relay.addr,
        cloud.https_addr().port(),
        cloud.token(),
        &cri,
    )
    .await;

    // The node: Ready, its Lease owned by the Node and renewed.
    wait_for("the node Ready in the API", || async {
        (node_ready(&cp, NODE).await.as_deref() == Some("True")).then_some(())
    })
    .await;
    lease_renewed(&cp, NODE).await;

    // A ConfigMap and a Secret created before the Pod that mounts them, and the default
    // service-account token (kube-api-access, added by admission).
    cp.apply(&workload("iop", NODE)).await.unwrap();
    let running = wait_for("the pod Running and ready in the API", || async {
        pod(&cp, "default", "iop-pod")
            .await
            .filter(running_and_ready)
    })
    .await;
    let uid = running["metadata"]["uid"].as_str().unwrap().to_owned();
    assert!(
        running["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["projected"]["sources"].is_array()),
        "admission added the service-account volume"
    );
    let log = wait_for("the container's output", || async {
        let log = edge.container_log("default", "iop-pod", &uid, "c");
        log.contains("cfg=").then_some(log)
    })
    .await;
    assert!(log.contains("cfg=hello sec=s3cret"), "{log}");
    assert!(log.contains("ns=default"), "{log}");
    assert!(token_len(&log) > 100, "a real token: {log}");
    // The token is one the API server issued for this pod.
    let token = std::fs::read_to_string(
        std::fs::read_dir(edge.root.join(format!(
            "kubelet/pods/{uid}/volumes/kubernetes.io~projected"
        )))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("token"),
    )
    .unwrap();
    let review = cp
        .kubectl_with_input(
            &["create", "-f", "-", "-o", "json"],
            Some(&format!(
                r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{token}"}}}}"#
            )),
        )
        .await
        .unwrap();
    let review: serde_json::Value = serde_json::from_str(&review).unwrap();
    assert_eq!(review["status"]["authenticated"], true, "{review:#}");
    assert_eq!(
        review["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "iop-pod"
    );

    // A ConfigMap change reaches the volume.
    cp.kubectl(&[
        "patch",
        "configmap",
        "iop-cfg",
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"changed"}}"#,
    ])
    .await
    .unwrap();
    wait_for("the changed ConfigMap in the volume", || async {
        (edge
            .volume_file(&uid, "kubernetes.io~configmap", "cfg", "greeting")
            .as_deref()
            == Some("changed"))
        .then_some(())
    })
    .await;

    // KubeEdge's own Device samples, driven by our Modbus mapper (over DMI) against a real
    // Modbus device: the desired value reaches the device's register, what the mapper reads
    // reaches DeviceStatus, and a new desired value from the cloud goes the same way.
    let modbus = ModbusSite::start(&dir.join("modbus"), &edge.root.join("dmi.sock")).await;
    cp.apply(&device_samples(NODE, modbus.device.port))
        .await
        .unwrap();
    wait_for("the desired value (30) written to the device", || async {
        register_holds(modbus.device.holding(2).await, 30).then_some(())
    })
    .await;
    wait_for("the value read from the device in DeviceStatus", || async {
        (reported(&cp, "beta1-device", "temp").await.as_deref() == Some("30")).then_some(())
    })
    .await;
    set_desired(&cp, "beta1-device", "35").await;
    wait_for(
        "the new desired value (35) written to the device",
        || async { register_holds(modbus.device.holding(2).await, 35).then_some(()) },
    )
    .await;
    wait_for("35 reported in DeviceStatus", || async {
        (reported(&cp, "beta1-device", "temp").await.as_deref() == Some("35")).then_some(())
    })
    .await;

    // The link is cut; a pod created meanwhile arrives and runs once it is back.
    relay.cut();
    cp.apply(&sleeper("during-cut", NODE)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    relay.restore();
    wait_for("the pod created during the cut Running", || async {
        pod(&cp, "default", "during-cut")
            .await
            .filter(running_and_ready)
    })
    .await;

    // A burst of pods, created after the node has been Ready for a while: every one arrives
    // (one run in four lost a pod before).
    let burst: Vec<String> = (0..6).map(|i| format!("burst-{i}")).collect();
    let manifests: Vec<String> = burst.iter().map(|n| sleeper(n, NODE)).collect();
    cp.apply(&manifests.join("---\n")).await.unwrap();
    for name in &burst {
        wait_for(&format!("{name} Running"), || async {
            pod(&cp, "default", name).await.filter(running_and_ready)
        })
        .await;
    }

    // Deletion: graceful, finished by the edge once the containers stopped.
    cp.kubectl(&["delete", "pod", "iop-pod", "--wait=false"])
        .await
        .unwrap();
    wait_for("the deleted pod gone from the API", || async {
        pod(&cp, "default", "iop-pod").await.is_none().then_some(())
    })
    .await;
    wait_for("the deleted pod gone from the edge's store", || async {
        edge.stored("default/pod/iop-pod")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // Every pod goes, so that none outlives the test on the shared containerd.
    cp.kubectl(&["delete", "pods", "--all", "--wait=false"])
        .await
        .unwrap();
    wait_for("every pod gone from the edge", || async {
        edge.keys("pod").await.is_empty().then_some(())
    })
    .await;

    // What KubeEdge's cloudcore said about us: no refused Lease, no unknown resources of
    // ours (its own internal `node/<n>` connect event is logged the same way for its edges).
    let refused = log_lines(cloud.log(), "uid must not be empty");
    assert!(refused.is_empty(), "{refused:?}");
    let unknown = log_lines(cloud.log(), &format!("node/{NODE}/inventory"));
    assert!(unknown.is_empty(), "{unknown:?}");
    let lease_errors = log_lines(cloud.log(), "lease rs-edge-1 failed");
    assert!(lease_errors.len() <= 1, "{lease_errors:?}");
}
