//! The whole cloud in manifest mode, end to end on loopback: a folder of YAML, the real
//! CloudHub with mutual TLS, the controller, and a test edge with a real SQLite store that
//! ACKs only after writing, sends its inventory on connect and its requests through the
//! durable outbox. Cuts and restarts on purpose.

#![cfg(feature = "manifest")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Cloud, DEADLINE, Pki, TestEdge, eventually};
use kubeedge_cloud::{CloudConfig, ManifestConfig, ManifestSource};
use kubeedge_proto::{Content, Message};
use serde_json::{Value, json};
use tokio::sync::mpsc;

struct Site {
    _tmp: tempfile::TempDir,
    manifests: PathBuf,
    status: PathBuf,
    pki: Pki,
}

impl Site {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let manifests = tmp.path().join("manifests");
        let status = tmp.path().join("status");
        std::fs::create_dir_all(&manifests).unwrap();
        Self {
            manifests,
            status,
            _tmp: tmp,
            pki: Pki::new(),
        }
    }

    fn db(&self, node: &str) -> PathBuf {
        self._tmp.path().join(format!("{node}.db"))
    }

    fn write(&self, file: &str, yaml: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
    }

    fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).unwrap();
    }

    fn status_of(&self, plural: &str, file: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.status.join(plural).join(file)).ok()?;
        serde_json::from_str(&text).ok()
    }

    async fn cloud(&self, listen: SocketAddr) -> Cloud {
        let mut config = ManifestConfig::new(&self.manifests, &self.status);
        config.scan_interval = Duration::from_millis(50);
        config.delete_timeout = Duration::from_secs(600);
        let (source, writer) = ManifestSource::open(config).unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let cloud = Cloud::start(
            &self.pki,
            writer,
            rx,
            CloudConfig {
                inventory_grace: Duration::from_secs(5),
                tick: Duration::from_millis(50),
                ..CloudConfig::default()
            },
            listen,
        )
        .await;
        tokio::spawn(source.run(tx, cloud.stop.clone()));
        cloud
    }
}

fn pod_yaml(name: &str, node: &str, cm: &str, image: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: {image}
    volumeMounts: [{{name: conf, mountPath: /conf}}]
  volumes:
  - name: conf
    configMap: {{name: {cm}}}
"
    )
}

fn cm_yaml(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  key: \"{value}\"\n"
    )
}

fn request(op: &str, resource: &str, content: Content) -> Message {
    Message::new("edged", "meta", op, resource, content)
}

async fn stored_field(edge: &TestEdge, key: &str, pointer: &str) -> Option<Value> {
    edge.stored(key)
        .await
        .and_then(|v| v.pointer(pointer).cloned())
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], kubeedge_testkit::free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_the_folder_runs_through_the_edge_and_its_status_comes_back() {
    let site = Site::new();
    site.write("cm.yaml", &cm_yaml("conf", "v1"));
    site.write("pod.yaml", &pod_yaml("web", "edge-1", "conf", "busybox"));
    site.write(
        "other.yaml",
        &pod_yaml("elsewhere", "edge-2", "conf-2", "busybox"),
    );
    site.write("cm2.yaml", &cm_yaml("conf-2", "secret-ish"));
    let cloud = site.cloud(free_addr()).await;
    let edge = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;

    // Down: the pod and its ConfigMap, stored at the edge (and ACKed after the write).
    eventually("pod stored at the edge", || async {
        edge.stored("default/pod/web").await.is_some()
    })
    .await;
    assert_eq!(
        stored_field(&edge, "default/configmap/conf", "/data/key").await,
        Some(json!("v1"))
    );
    // Never another node's objects.
    assert!(edge.stored("default/pod/elsewhere").await.is_none());
    assert!(edge.stored("default/configmap/conf-2").await.is_none());

    // Up: registration, lease, pod status, through the durable outbox.
    let node = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "edge-1", "labels": {"node-role.kubernetes.io/agent": ""}},
                      "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    edge.request(request(
        "insert",
        "default/node/edge-1",
        Content::json(&node).unwrap(),
    ))
    .await;
    let lease = json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": {"name": "edge-1", "namespace": "kube-node-lease"},
                       "spec": {"holderIdentity": "edge-1", "leaseDurationSeconds": 40, "renewTime": "2026-11-23T10:00:00.000000Z"}});
    edge.request(request(
        "insert",
        "kube-node-lease/lease/edge-1",
        Content::json(&lease).unwrap(),
    ))
    .await;
    let uid = stored_field(&edge, "default/pod/web", "/metadata/uid")
        .await
        .unwrap();
    let patch = json!({"metadata": {"uid": uid}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    edge.request(request(
        "patch",
        "default/podpatch/web",
        Content::string(&patch.to_string()),
    ))
    .await;

    eventually("pod status written", || async {
        site.status_of("pods", "default_web.json")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    })
    .await;
    eventually("node registered", || async {
        site.status_of("nodes", "edge-1.json").is_some()
    })
    .await;
    let registered = site.status_of("nodes", "edge-1.json").unwrap();
    assert_eq!(
        registered["metadata"]["labels"]["node-role.kubernetes.io/edge"],
        ""
    );
    eventually("lease stored", || async {
        site.status_of("leases", "kube-node-lease_edge-1.json")
            .is_some()
    })
    .await;
    // Every request was answered: the outbox is empty.
    eventually("outbox drained", || async { edge.outbox_len().await == 0 }).await;
    // The pod's status change is not echoed down as a pod update: one pod message in all
    // (beside the ConfigMap, and the node's own Node, which the cloud pushes as it changes).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pod_messages = edge
        .forwarded
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.route.resource == "default/pod/web" && m.header.parent_id.is_empty())
        .count();
    assert_eq!(pod_messages, 1);
    assert!(
        edge.stored("null/node/edge-1").await.is_some(),
        "the node's own Node was pushed"
    );
    assert_eq!(cloud.metrics.refused_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_a_graceful_delete_in_the_folder_reach_the_edge() {
    let site = Site::new();
    site.write("cm.yaml", &cm_yaml("conf", "v1"));
    site.write("pod.yaml", &pod_yaml("web", "edge-1", "conf", "busybox"));
    let cloud = site.cloud(free_addr()).await;
    let edge = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;
    eventually("pod stored", || async {
        edge.stored("default/pod/web").await.is_some()
    })
    .await;

    site.write("cm.yaml", &cm_yaml("conf", "v2"));
    eventually("configmap update", || async {
        stored_field(&edge, "default/configmap/conf", "/data/key").await == Some(json!("v2"))
    })
    .await;
    site.write("pod.yaml", &pod_yaml("web", "edge-1", "conf", "busybox:2"));
    eventually("pod update", || async {
        stored_field(&edge, "default/pod/web", "/spec/containers/0/image").await
            == Some(json!("busybox:2"))
    })
    .await;

    // Removing the file deletes gracefully: the edge sees deletionTimestamp, stops the pod and
    // finishes the delete with the uid precondition, as edged does.
    site.remove("pod.yaml");
    eventually("terminating pod at the edge", || async {
        stored_field(&edge, "default/pod/web", "/metadata/deletionTimestamp")
            .await
            .is_some()
    })
    .await;
    let uid = stored_field(&edge, "default/pod/web", "/metadata/uid")
        .await
        .unwrap();
    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
    edge.request(request(
        "delete",
        "default/pod/web",
        Content::json(&options).unwrap(),
    ))
    .await;
    eventually("pod removed at the edge", || async {
        edge.stored("default/pod/web").await.is_none()
    })
    .await;
    eventually("configmap removed at the edge", || async {
        edge.stored("default/configmap/conf").await.is_none()
    })
    .await;
    assert!(site.status_of("pods", "default_web.json").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_edge_gets_only_the_difference() {
    let site = Site::new();
    site.write("cm.yaml", &cm_yaml("conf", "v1"));
    for i in 0..5 {
        site.write(
            &format!("pod-{i}.yaml"),
            &pod_yaml(&format!("p{i}"), "edge-1", "conf", "busybox"),
        );
    }
    let cloud = site.cloud(free_addr()).await;
    let edge = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;
    eventually("all pods stored", || async {
        edge.stored("default/pod/p4").await.is_some()
    })
    .await;
    let sent_before = cloud.metrics.downstream_messages();
    assert_eq!(sent_before, 6);

    // The edge goes away; meanwhile one pod changes and one is added.
    drop(edge);
    site.write("pod-1.yaml", &pod_yaml("p1", "edge-1", "conf", "busybox:2"));
    site.write("pod-9.yaml", &pod_yaml("p9", "edge-1", "conf", "busybox"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // It comes back with the same store: its inventory makes the cloud send two messages.
    let edge = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;
    eventually("changes after the outage", || async {
        edge.stored("default/pod/p9").await.is_some()
            && stored_field(&edge, "default/pod/p1", "/spec/containers/0/image").await
                == Some(json!("busybox:2"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cloud.metrics.downstream_messages() - sent_before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cloud_converges_and_deletes_nothing_the_edge_should_keep() {
    let site = Site::new();
    site.write("cm.yaml", &cm_yaml("conf", "v1"));
    site.write("pod.yaml", &pod_yaml("web", "edge-1", "conf", "busybox"));
    let addr = free_addr();
    let cloud = site.cloud(addr).await;
    let edge = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;
    eventually("pod stored", || async {
        edge.stored("default/pod/web").await.is_some()
    })
    .await;

    // The cloud dies; a pod is removed and another added while it is down.
    drop(cloud);
    tokio::time::sleep(Duration::from_millis(200)).await;
    site.write("pod2.yaml", &pod_yaml("api", "edge-1", "conf", "busybox"));
    // A new replica, knowing nothing of the node, on the same address.
    let cloud = site.cloud(addr).await;
    eventually("new pod after the restart", || async {
        edge.stored("default/pod/api").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The new replica deleted nothing the edge should keep. In manifest mode a restarted
    // cloud gives every object a new resourceVersion, so the kept pod and its ConfigMap go
    // down once more as updates (applied idempotently): three messages, never more. Against a
    // cluster, versions survive the restart and only the new pod would go (the inventory rule
    // is tested in tests/downstream.rs).
    assert!(edge.stored("default/pod/web").await.is_some());
    assert!(edge.stored("default/configmap/conf").await.is_some());
    assert_eq!(cloud.metrics.downstream_messages(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_twin_reports_reach_the_device_status() {
    let site = Site::new();
    site.write(
        "device.yaml",
        "apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata:
  name: thermo-model
spec:
  protocol: modbus
  properties:
  - name: temperature
    type: INT
    accessMode: ReadWrite
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata:
  name: thermo-1
  labels: {description: thermometer}
spec:
  deviceModelRef: {name: thermo-model}
  nodeName: edge-1
  protocol: {protocolName: modbus}
  properties:
  - name: temperature
    desired: {value: \"20\"}
",
    );
    let cloud = site.cloud(free_addr()).await;
    let edge = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;
    eventually("device and model stored", || async {
        edge.stored("default/device/thermo-1").await.is_some()
            && edge
                .stored("default/devicemodel/thermo-model")
                .await
                .is_some()
    })
    .await;
    // The membership update went to the twin module.
    let membership = edge
        .forwarded
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.route.resource == "membership")
        .cloned()
        .expect("membership forwarded");
    let body: Value = membership.content.decode().unwrap();
    assert_eq!(body["added_devices"][0]["id"], "default/thermo-1");
    assert_eq!(body["added_devices"][0]["description"], "thermometer");

    // The twin reports through the outbox; the cloud confirms and writes DeviceStatus.
    let report = json!({"event_id": "e1", "timestamp": 1, "twin": {"temperature": {"actual": {"value": "25", "metadata": {"timestamp": 1795408258087i64}}, "metadata": {"type": "int"}}}});
    let twin = Message::new(
        "twin",
        "resource",
        "update",
        "device/default/thermo-1/twin/edge_updated",
        Content::json(&report).unwrap(),
    );
    edge.meta.outbox().push(&twin, None).await.unwrap();
    let state = json!({"event_id": "e2", "timestamp": 2, "device": {"name": "thermo-1", "state": "online", "lastOnlineTime": "2026-11-23T04:31:09Z"}});
    let state = Message::new(
        "twin",
        "resource",
        "update",
        "device/default/thermo-1/state/update",
        Content::string(&state.to_string()),
    );
    edge.meta.outbox().push(&state, None).await.unwrap();
    edge.handle.replay();
    eventually("device status written", || async {
        site.status_of("devicestatuses", "default_thermo-1.json")
            .is_some_and(|s| {
                s["status"]["twins"][0]["reported"]["value"] == "25"
                    && s["status"]["state"] == "online"
            })
    })
    .await;
    let status = site
        .status_of("devicestatuses", "default_thermo-1.json")
        .unwrap();
    assert_eq!(status["status"]["lastOnlineTime"], "2026-11-23T04:31:09Z");
    assert_eq!(status["metadata"]["ownerReferences"][0]["name"], "thermo-1");
    eventually("reports confirmed", || async {
        edge.outbox_len().await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_touch_another_nodes_pod_over_the_wire() {
    let site = Site::new();
    site.write("cm.yaml", &cm_yaml("conf", "v1"));
    site.write("pod.yaml", &pod_yaml("web", "edge-1", "conf", "busybox"));
    let cloud = site.cloud(free_addr()).await;
    let owner = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;
    eventually("pod stored", || async {
        owner.stored("default/pod/web").await.is_some()
    })
    .await;
    let intruder = TestEdge::start(&site.pki, cloud.addr, "edge-2", &site.db("edge-2")).await;
    let uid = stored_field(&owner, "default/pod/web", "/metadata/uid")
        .await
        .unwrap();
    let patch = json!({"metadata": {"uid": uid}, "status": {"phase": "Failed"}});
    let reply = intruder
        .handle
        .call(
            request(
                "patch",
                "default/podpatch/web",
                Content::string(&patch.to_string()),
            ),
            DEADLINE,
        )
        .await
        .unwrap();
    let resp: kubeedge_proto::ObjectResp = reply.content.decode().unwrap();
    assert!(
        resp.error_message()
            .unwrap()
            .contains("not bound to node edge-2")
    );
    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
    let reply = intruder
        .handle
        .call(
            request(
                "delete",
                "default/pod/web",
                Content::json(&options).unwrap(),
            ),
            DEADLINE,
        )
        .await
        .unwrap();
    assert!(
        reply
            .content
            .as_json()
            .windows(9)
            .any(|w| w == b"Forbidden")
    );
    let reply = intruder
        .handle
        .call(
            request("query", "default/configmap/conf", Content::null()),
            DEADLINE,
        )
        .await
        .unwrap();
    assert!(
        reply
            .content
            .as_json()
            .windows(9)
            .any(|w| w == b"Forbidden")
    );
    assert_eq!(cloud.metrics.refused_requests(), 3);
    // Nothing was written.
    assert!(
        site.status_of("pods", "default_web.json")
            .is_none_or(|p| p["status"]["phase"] != "Failed")
    );
}

/// The Events in the status folder about the object `name`.
fn events_about(site: &Site, name: &str) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(site.status.join("events")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let text = std::fs::read_to_string(entry.ok()?.path()).ok()?;
        serde_json::from_str::<Value>(&text).ok()
    })
    .filter(|event| event["involvedObject"]["name"] == name)
    .collect()
}

fn thermo_yaml(name: &str, port: &str, collect_cycle: i64) -> String {
    format!(
        "apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: {name}}}
spec:
  deviceModelRef: {{name: thermo-model}}
  nodeName: edge-1
  protocol:
    protocolName: modbus
    configData: {{ip: 127.0.0.1, port: {port}}}
  properties:
  - name: temperature
    collectCycle: {collect_cycle}
    desired: {{value: \"20\"}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_mode_refuses_an_absurd_device_until_it_is_fixed() {
    let site = Site::new();
    site.write(
        "model.yaml",
        "apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {name: thermo-model}
spec:
  protocol: modbus
  properties: [{name: temperature, type: INT, accessMode: ReadWrite}]
",
    );
    site.write("good.yaml", &thermo_yaml("good-thermo", "1502", 1000));
    site.write(
        "absurd.yaml",
        &thermo_yaml("absurd-thermo", "9999999999999", -5),
    );
    let cloud = site.cloud(free_addr()).await;
    let edge = TestEdge::start(&site.pki, cloud.addr, "edge-1", &site.db("edge-1")).await;
    eventually("the valid Device at the node", || async {
        edge.stored("default/device/good-thermo").await.is_some()
    })
    .await;
    eventually("the Warning Event about the absurd Device", || async {
        !events_about(&site, "absurd-thermo").is_empty()
    })
    .await;
    let events = events_about(&site, "absurd-thermo");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason"], "InvalidDevice");
    let message = events[0]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.protocol.configData.port: 9999999999999 is out of range"),
        "{message}"
    );
    assert!(
        message.contains("spec.properties[0].collectCycle: -5 is negative"),
        "{message}"
    );

    // A later change of the valid Device reaching the node: the absurd one would have been
    // sent before it.
    site.write("good.yaml", &thermo_yaml("good-thermo", "1503", 1000));
    eventually("the valid Device's update at the node", || async {
        stored_field(
            &edge,
            "default/device/good-thermo",
            "/spec/protocol/configData/port",
        )
        .await
        .is_some_and(|p| p == 1503)
    })
    .await;
    assert!(edge.stored("default/device/absurd-thermo").await.is_none());

    site.write("absurd.yaml", &thermo_yaml("absurd-thermo", "1504", 1000));
    eventually("the fixed Device at the node", || async {
        stored_field(
            &edge,
            "default/device/absurd-thermo",
            "/spec/protocol/configData/port",
        )
        .await
        .is_some_and(|p| p == 1504)
    })
    .await;
    assert_eq!(events_about(&site, "absurd-thermo").len(), 1);
    assert_eq!(cloud.metrics.refused_devices(), 1);
}
