//! The real peers, run by `kubeedge_testkit::peers`: a real control plane, KubeEdge's cloudcore
//! and edgecore joined to it, a pod reaching the edge's store, restarts, and nothing left behind.
//! Skipped (saying so) where `../shared/peers` or its tools are missing, unless
//! `KUBEEDGE_REQUIRE_PEERS=1`.

use std::path::Path;
use std::time::{Duration, Instant};

use kubeedge_testkit::eventually;
use kubeedge_testkit::peers::{
    ControlPlane, ControlPlaneOptions, EdgeOptions, KUBELET_SYSCTLS, KubeletSysctls, Peers,
    RealCloudcore, RealEdgecore, port_listening,
};

/// Anything the peers do on their own: a pod reaching the edge (about a second), edgecore's
/// reconnect after the cloud went away (up to ~45 s: keepalive every 15 s, then 30 s back-off).
const PEER_DEADLINE: Duration = Duration::from_secs(120);

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: edged.test/busybox:1\n"
    )
}

/// Waits until `default/pod/NAME` is in the edge's `meta` table and checks what is stored.
async fn pod_reaches_edge(edge: &RealEdgecore, name: &str) {
    let key = format!("default/pod/{name}");
    let (kind, value) = eventually(&format!("{key} in edgecore.db"), PEER_DEADLINE, || {
        edge.meta(&key)
    })
    .await;
    assert_eq!(kind, "pod");
    let pod: serde_json::Value = serde_json::from_str(&value).expect("the stored pod is JSON");
    assert_eq!(pod["metadata"]["name"], name);
    assert_eq!(pod["spec"]["nodeName"], edge.node());
}

/// Nothing of them runs or listens any more, and their run dir is gone.
fn nothing_left(ports: &[u16], pids: &[(String, u32)], run_dir: &Path) {
    for port in ports {
        assert!(!port_listening(*port), "port {port} still listens");
    }
    for (name, pid) in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        assert!(
            matches!(state, None | Some('Z' | 'X')),
            "{name} (pid {pid}) still runs"
        );
    }
    assert!(!run_dir.exists(), "{} is still there", run_dir.display());
}

#[tokio::test]
async fn a_real_edge_joined_to_a_real_cloud_gets_its_pods_across_restarts() {
    let Some(peers) = Peers::find() else { return };

    let t = Instant::now();
    let cp = ControlPlane::start(&peers, ControlPlaneOptions::default()).await;
    eprintln!(
        "measured: control plane (no controllers) in {:.1?}",
        t.elapsed()
    );
    let t = Instant::now();
    let mut cloud = RealCloudcore::start(&cp).await;
    eprintln!("measured: real cloudcore in {:.1?}", t.elapsed());
    let node = "edge-peers-1";
    let t = Instant::now();
    let mut edge = RealEdgecore::start(
        &cp,
        node,
        cloud.ws_addr(),
        cloud.https_addr().port(),
        cloud.token(),
        EdgeOptions::default(),
    )
    .await;
    eprintln!("measured: real edgecore in {:.1?}", t.elapsed());
    assert!(edge.is_running());
    assert_eq!(edge.connect_count(), 1);
    let node_obj = cp.get_json(&["node", node]).await.expect("the Node exists");
    assert_eq!(node_obj["metadata"]["name"], node);

    // a pod bound to the node lands in the edge's store
    cp.apply(&pod("p1", node)).await.expect("applying p1");
    pod_reaches_edge(&edge, "p1").await;
    assert!(edge.meta("default/pod/nope").await.is_none());

    // the edge goes away and comes back: it reconnects and keeps getting pods
    edge.stop().await;
    assert!(!edge.is_running());
    let t = Instant::now();
    edge.start_again().await;
    eprintln!("measured: real edgecore again in {:.1?}", t.elapsed());
    assert!(edge.is_running());
    assert_eq!(
        edge.connect_count(),
        2,
        "a second connect after the restart"
    );
    cp.apply(&pod("p2", node)).await.expect("applying p2");
    pod_reaches_edge(&edge, "p2").await;

    // the cloud goes away and comes back: the edge reconnects by itself
    cloud.stop().await;
    assert!(!cloud.is_running());
    let t = Instant::now();
    cloud.start_again().await;
    eprintln!("measured: real cloudcore again in {:.1?}", t.elapsed());
    let t = Instant::now();
    eventually(
        "the edge reconnected to the restarted cloud",
        PEER_DEADLINE,
        || async { (edge.connect_count() >= 3).then_some(()) },
    )
    .await;
    eprintln!("measured: edgecore reconnected after {:.1?}", t.elapsed());
    cp.apply(&pod("p3", node)).await.expect("applying p3");
    pod_reaches_edge(&edge, "p3").await;
    assert_eq!(
        edge.meta_keys("pod").await,
        ["default/pod/p1", "default/pod/p2", "default/pod/p3"]
    );

    cp.delete(&["pod", "p1", "--grace-period=0", "--force"])
        .await
        .expect("deleting p1");
    eventually("p1 gone from the edge", PEER_DEADLINE, || async {
        edge.meta("default/pod/p1").await.is_none().then_some(())
    })
    .await;

    // dropping everything stops everything
    let mut ports = cp.listen_ports();
    ports.extend(cloud.listen_ports());
    ports.extend(edge.listen_ports());
    for port in &ports {
        assert!(port_listening(*port), "port {port} listens while they run");
    }
    let pids = cp.run().recorded_pids();
    assert_eq!(pids.len(), 5, "{pids:?}"); // etcd, apiserver, cloudcore, mosquitto, edgecore
    let run_dir = cp.run_dir().to_owned();
    let t = Instant::now();
    drop(edge);
    drop(cloud);
    drop(cp);
    eprintln!("measured: everything stopped in {:.1?}", t.elapsed());
    nothing_left(&ports, &pids, &run_dir);
}

#[tokio::test]
async fn a_control_plane_with_controllers_is_a_real_cluster() {
    let Some(peers) = Peers::find() else { return };
    let t = Instant::now();
    let cp = ControlPlane::start(
        &peers,
        ControlPlaneOptions {
            node_monitor_grace: Some(Duration::from_secs(20)),
            ..ControlPlaneOptions::cluster()
        },
    )
    .await;
    eprintln!(
        "measured: control plane with controllers in {:.1?}",
        t.elapsed()
    );
    // the controller-manager's service-account controller made it
    let sa = eventually("ServiceAccount default/default", PEER_DEADLINE, || {
        cp.get_json(&["-n", "default", "serviceaccount", "default"])
    })
    .await;
    assert_eq!(sa["metadata"]["name"], "default");
    let missing = cp
        .kubectl(&["get", "serviceaccount", "no-such-sa"])
        .await
        .expect_err("no such ServiceAccount");
    assert!(missing.is_not_found(), "{missing}");

    let ports = cp.listen_ports();
    assert_eq!(ports.len(), 5);
    let pids = cp.run().recorded_pids();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler"
        ]
    );
    let run_dir = cp.run_dir().to_owned();
    drop(cp);
    nothing_left(&ports, &pids, &run_dir);
}

/// Only where every sysctl already has the kubelet's value (so nothing on the host changes):
/// the guard holds them and leaves them as they were.
#[test]
fn kubelet_sysctls_guard_leaves_values_it_did_not_change() {
    let read = || -> Vec<String> {
        KUBELET_SYSCTLS
            .iter()
            .map(|(name, _)| {
                std::fs::read_to_string(Path::new("/proc/sys").join(name))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            })
            .collect()
    };
    let before = read();
    let wanted: Vec<&str> = KUBELET_SYSCTLS.iter().map(|(_, v)| *v).collect();
    if before != wanted {
        eprintln!(
            "skipped: the host's sysctls differ from the kubelet's ({before:?}); this test \
             changes nothing on the host"
        );
        return;
    }
    let guard = KubeletSysctls::try_apply().expect("nothing to write");
    let again = KubeletSysctls::try_apply().expect("a second holder");
    assert_eq!(read(), wanted);
    drop(guard);
    drop(again);
    assert_eq!(read(), before);
}
