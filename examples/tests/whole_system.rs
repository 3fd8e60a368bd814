//! End to end: `cloudcore` + `edgecore` + `modbus-mapper` as processes on loopback, with the
//! real containerd, mosquitto and a pymodbus device (see `system/mod.rs`). Skipped, saying so,
//! when `EDGED_CRI_ENDPOINT` is not set (`.ci/run` sets it).

mod system;

use system::{System, cri_endpoint, eventually};

fn app(node: &str, name: &str, greeting: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config, namespace: default}}
data: {{greeting: "{greeting}"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: edged.test/busybox:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /config/greeting; exec sleep 1000000"]
    volumeMounts: [{{name: config, mountPath: /config}}]
  volumes:
  - name: config
    configMap: {{name: {name}-config}}
"#
    )
}

/// A thermostat on the pymodbus device: `temperature` is input register 0 (215), `humidity`
/// holding register 31 (read only for the mapper; the test changes it), `setpoint` holding
/// register 30 (written from the desired value).
fn thermostat(node: &str, port: u16, setpoint: &str) -> String {
    format!(
        r#"apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {{name: thermostat-model, namespace: default}}
spec:
  protocol: modbus
  properties:
  - {{name: temperature, type: INT, accessMode: ReadOnly}}
  - {{name: humidity, type: INT, accessMode: ReadOnly}}
  - {{name: setpoint, type: INT, accessMode: ReadWrite, minimum: "0", maximum: "1000"}}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: thermostat, namespace: default}}
spec:
  deviceModelRef: {{name: thermostat-model}}
  nodeName: {node}
  protocol:
    protocolName: modbus
    configData: {{ip: 127.0.0.1, port: {port}, slaveID: 1, timeout: 1000}}
  properties:
  - name: temperature
    visitors: {{protocolName: modbus, configData: {{register: InputRegister, offset: 0, limit: 1}}}}
    collectCycle: 300
    reportCycle: 300
    reportToCloud: true
  - name: humidity
    visitors: {{protocolName: modbus, configData: {{register: HoldingRegister, offset: 31, limit: 1}}}}
    collectCycle: 300
    reportCycle: 300
    reportToCloud: true
  - name: setpoint
    desired: {{value: "{setpoint}", metadata: {{type: int}}}}
    visitors: {{protocolName: modbus, configData: {{register: HoldingRegister, offset: 30, limit: 1}}}}
    collectCycle: 300
    reportCycle: 300
    reportToCloud: true
"#
    )
}

/// The pod's first container id once it runs, as the cloud sees it.
async fn running_container(sys: &System, pod: &str) -> String {
    eventually(&format!("pod {pod} Running in the cloud"), || async {
        let status = sys.pod_status(pod)?;
        let c = status["containerStatuses"].get(0)?;
        (status["phase"] == "Running" && c["state"]["running"].is_object())
            .then(|| c["containerID"].as_str().map(str::to_owned))
            .flatten()
    })
    .await
}

/// Deletes the pod's manifest and waits until its container stopped and edged removed the
/// pod (its directory goes last, after the containers and the sandbox).
async fn remove_pod(sys: &System, file: &str, container: &str) {
    sys.delete(file);
    let pods = sys.dir.path().join("edge/kubelet/pods");
    eventually(
        "the deleted pod stopped and removed from the node",
        || async {
            let left = std::fs::read_dir(&pods).map(|d| d.count()).unwrap_or(0);
            (left == 0 && !sys.container_running(container).await).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_devices_flow_both_ways_and_nothing_is_lost_across_a_cut_link() {
    let Some(cri) = cri_endpoint() else { return };
    let node = "e2e-link";
    let sys = System::start(node, cri).await;
    sys.apply("app.yaml", &app(node, "link-app", "hello"));
    sys.apply("thermostat.yaml", &thermostat(node, sys.modbus.port, "42"));

    eventually("the node registered and Ready", || async {
        (sys.node_ready()? == "True").then_some(())
    })
    .await;
    let container = running_container(&sys, "link-app").await;
    eventually(
        "the device's temperature reported into DeviceStatus",
        || async { (sys.reported("thermostat", "temperature")? == "215").then_some(()) },
    )
    .await;
    eventually(
        "the desired setpoint 42 written to the Modbus device",
        || async { (sys.modbus.holding(30).await == 42).then_some(()) },
    )
    .await;

    // Cut the link: both sides change while it is down.
    sys.relay.cut();
    eventually("the edge noticed the cut", || async {
        (sys.edge_metric("edgecore_connected").await? == 0).then_some(())
    })
    .await;
    sys.apply("thermostat.yaml", &thermostat(node, sys.modbus.port, "57"));
    sys.modbus.set_holding(31, 77).await;
    eventually(
        "the humidity report waiting in the edge's outbox",
        || async { (sys.edge_metric("edgecore_outbox_messages").await? > 0).then_some(()) },
    )
    .await;
    assert_ne!(
        sys.reported("thermostat", "humidity").as_deref(),
        Some("77"),
        "a report crossed a cut link"
    );
    assert_eq!(
        sys.modbus.holding(30).await,
        42,
        "a desired value crossed a cut link"
    );

    sys.relay.restore();
    eventually(
        "the report made during the cut reached DeviceStatus",
        || async { (sys.reported("thermostat", "humidity")? == "77").then_some(()) },
    )
    .await;
    eventually(
        "the setpoint changed during the cut reached the device",
        || async { (sys.modbus.holding(30).await == 57).then_some(()) },
    )
    .await;
    eventually("the edge's outbox drained", || async {
        (sys.edge_metric("edgecore_outbox_messages").await? == 0).then_some(())
    })
    .await;
    let again = running_container(&sys, "link-app").await;
    assert_eq!(again, container, "the pod was restarted by the cut");

    remove_pod(&sys, "app.yaml", &container).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_edge_and_cloud_restarts_and_the_edge_converges() {
    let Some(cri) = cri_endpoint() else { return };
    let node = "e2e-restart";
    let mut sys = System::start(node, cri).await;
    sys.apply("app.yaml", &app(node, "restart-app", "before"));
    let container = running_container(&sys, "restart-app").await;

    // The cloud goes away, then the edge is killed and started again without it.
    sys.cloud.kill().await;
    sys.edge.kill().await;
    assert!(
        sys.container_running(&container).await,
        "killing edgecore stopped the pod"
    );
    sys.edge.start();
    eventually(
        "edgecore back without a cloud (its node status queued)",
        || async { (sys.edge_metric("edgecore_outbox_messages").await? > 0).then_some(()) },
    )
    .await;
    assert!(
        sys.container_running(&container).await,
        "edgecore's restart stopped the pod"
    );

    // The ConfigMap changes while the cloud is away; the cloud comes back.
    sys.apply("app.yaml", &app(node, "restart-app", "after"));
    sys.cloud.start();
    eventually("the node Ready again after the cloud's restart", || async {
        (sys.node_ready()? == "True").then_some(())
    })
    .await;
    // The pod's configMap volume on the node (the only pod of this node).
    let pods = sys.dir.path().join("edge/kubelet/pods");
    eventually(
        "the ConfigMap changed while the cloud was away reached the pod",
        || async {
            let pod = std::fs::read_dir(&pods).ok()?.next()?.ok()?.path();
            let file = pod.join("volumes/kubernetes.io~configmap/config/greeting");
            (std::fs::read_to_string(file).ok()? == "after").then_some(())
        },
    )
    .await;
    eventually("the edge's outbox drained", || async {
        (sys.edge_metric("edgecore_outbox_messages").await? == 0).then_some(())
    })
    .await;
    let again = running_container(&sys, "restart-app").await;
    assert_eq!(again, container, "the pod's container was replaced");
    let restarts =
        sys.pod_status("restart-app").unwrap()["containerStatuses"][0]["restartCount"].clone();
    assert_eq!(restarts, 0, "the container restarted");

    remove_pod(&sys, "app.yaml", &container).await;
}
