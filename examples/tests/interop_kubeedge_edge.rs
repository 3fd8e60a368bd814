//! KubeEdge's real edgecore (v1.23.1, its embedded kubelet on the test containerd) under our
//! cloudcore, in a real cluster (Kubernetes v1.32 with controller-manager and scheduler): the
//! node registers and turns Ready with a Lease owned by the Node; a Pod whose ConfigMap and
//! Secret were created before it, with the default service-account token, runs (the edge
//! asks our cloud for all three); KubeEdge's own Device samples both ways (desired values down
//! to the edge, twin values published over MQTT up to DeviceStatus); and pods deleted and
//! created while our cloudcore is down reach the edge when it comes back to another replica.
//!
//! It holds the kubelet's host sysctls for its duration (see `KubeletSysctls`), and it must
//! not share the containerd with another kubelet: a kubelet stops every pod on its runtime
//! that it does not know (test binaries run one after the other). Skipped (saying so) without
//! `../shared/peers`, the test containerd or root.

mod interop;
mod system;

use interop::{
    OurCloud, cloudcore_kubeconfig, device_samples, node_ready, owned_lease_renew_time, pod,
    reported, running_and_ready, set_desired, sleeper, token_len, twin_report, wait_for, workload,
};
use kubeedge_testkit::mosquitto_pub_ok;
use kubeedge_testkit::peers::{
    ControlPlane, ControlPlaneOptions, EdgeOptions, KubeletSysctls, Peers, RealEdgecore,
};
use system::{Relay, cri_endpoint};

const NODE: &str = "ke-edge-1";

/// The container id of a pod's first container, as the API server has it.
fn container_id(pod: &serde_json::Value) -> Option<String> {
    pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeedges_edgecore_under_our_cloudcore_runs_pods_devices_and_learns_missed_deletes() {
    let Some(peers) = Peers::find() else { return };
    let Some(cri) = cri_endpoint() else { return };
    let Some(_sysctls) = KubeletSysctls::apply() else {
        return;
    };
    let cp = ControlPlane::start(&peers, ControlPlaneOptions::cluster()).await;
    let dir = cp.run_dir().join("ours");
    let kubeconfig = cloudcore_kubeconfig(&cp, &dir).await;
    let mut first = OurCloud::start(&dir, "cloudcore-1", &kubeconfig).await;
    let relay = Relay::start(first.ws).await;
    let token = first.token().await;
    let edge = RealEdgecore::start(
        &cp,
        NODE,
        relay.addr,
        first.https.port(),
        &token,
        EdgeOptions {
            edged: true,
            cri_endpoint: Some(cri),
            ..EdgeOptions::default()
        },
    )
    .await;

    // KubeEdge's kubelet registers the node through our cloud; its Lease is owned by the
    // Node (it needs the Node our cloud pushes as null/node/<name>) and renewed.
    wait_for("the node Ready in the API", || async {
        (node_ready(&cp, NODE).await.as_deref() == Some("True")).then_some(())
    })
    .await;
    let renewed = wait_for("the Lease owned by the Node", || {
        owned_lease_renew_time(&cp, NODE)
    })
    .await;
    wait_for("the Lease renewed", || {
        let renewed = renewed.clone();
        let cp = &cp;
        async move {
            owned_lease_renew_time(cp, NODE)
                .await
                .filter(|t| *t != renewed)
        }
    })
    .await;

    // ConfigMap, Secret and service-account token: KubeEdge's edge asks our cloud for each.
    cp.apply(&workload("ke", NODE)).await.unwrap();
    let running = wait_for("the pod Running and ready", || async {
        pod(&cp, "default", "ke-pod")
            .await
            .filter(running_and_ready)
    })
    .await;
    let uid = running["metadata"]["uid"].as_str().unwrap().to_owned();
    let log_dir = edge.dir().join(format!("pod-logs/default_ke-pod_{uid}/c"));
    let log = wait_for("the container's output", || async {
        let text: String = std::fs::read_dir(&log_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        text.contains("cfg=").then_some(text)
    })
    .await;
    assert!(log.contains("cfg=hello sec=s3cret"), "{log}");
    assert!(token_len(&log) > 100, "a real token: {log}");

    // KubeEdge's own Device samples: the Device reaches the edge with its desired value, and
    // a new desired value follows; a twin value a mapper publishes over MQTT reaches
    // DeviceStatus. (KubeEdge's edge hands the Device to its mappers over DMI, dialing the
    // mapper's socket path as a gRPC target: grpc-go then sends the path as the HTTP/2
    // `:authority`, which an h2 server such as our tonic-based mapper refuses, so no mapper of
    // ours serves a KubeEdge edge; see the closing note of the interop work.)
    cp.apply(&device_samples(NODE, 1502)).await.unwrap();
    let desired = |value: &'static str| {
        let edge = &edge;
        async move {
            let (_, device) = edge.meta("default/device/beta1-device").await?;
            let device: serde_json::Value = serde_json::from_str(&device).ok()?;
            (device["spec"]["properties"][0]["desired"]["value"] == value).then_some(())
        }
    };
    wait_for("the Device with its desired value on the edge", || {
        desired("30")
    })
    .await;
    set_desired(&cp, "beta1-device", "35").await;
    wait_for("the new desired value on the edge", || desired("35")).await;
    wait_for(
        "a twin value published over MQTT in DeviceStatus",
        || async {
            mosquitto_pub_ok(
                edge.mqtt_port(),
                "$hw/events/device/default/beta1-device/twin/update",
                &twin_report("temp", "42"),
            )
            .await;
            (reported(&cp, "beta1-device", "temp").await.as_deref() == Some("42")).then_some(())
        },
    )
    .await;

    // Pods deleted and created while our cloudcore is down reach the edge when it comes back
    // to another replica (a fresh process that never served it: it reads the node's record).
    cp.apply(&format!(
        "{}---\n{}",
        sleeper("keep", NODE),
        sleeper("gone", NODE)
    ))
    .await
    .unwrap();
    let kept = wait_for("pods keep and gone Running", || async {
        let keep = pod(&cp, "default", "keep")
            .await
            .filter(running_and_ready)?;
        pod(&cp, "default", "gone")
            .await
            .filter(running_and_ready)?;
        container_id(&keep)
    })
    .await;
    first.proc.kill().await;
    cp.delete(&["pod", "gone", "--grace-period=0", "--force"])
        .await
        .unwrap();
    cp.apply(&sleeper("born", NODE)).await.unwrap();
    let second = OurCloud::start(&dir, "cloudcore-2", &kubeconfig).await;
    relay.switch(second.ws);
    wait_for("the pod created meanwhile Running", || async {
        pod(&cp, "default", "born").await.filter(running_and_ready)
    })
    .await;
    wait_for("the pod deleted meanwhile gone from the edge", || async {
        edge.meta("default/pod/gone").await.is_none().then_some(())
    })
    .await;
    let keep = pod(&cp, "default", "keep").await.unwrap();
    assert!(running_and_ready(&keep), "{keep:#}");
    assert_eq!(
        container_id(&keep),
        Some(kept),
        "the kept pod was not restarted"
    );
    let record = cp
        .get_json(&[
            "configmap",
            "-n",
            "kubeedge",
            &format!("kubeedge-rs-sent.{NODE}"),
        ])
        .await
        .expect("the node's sent record");
    let sent = record["data"]["sent"].as_str().unwrap_or("");
    assert!(
        sent.contains("default/pod/born ") && !sent.contains("default/pod/gone "),
        "{sent}"
    );

    // The kubelet stops its pods before the test ends (they would outlive it otherwise).
    cp.kubectl(&["delete", "pods", "--all", "--wait=false"])
        .await
        .unwrap();
    wait_for("every pod gone from the edge", || async {
        edge.meta_keys("pod").await.is_empty().then_some(())
    })
    .await;
}
