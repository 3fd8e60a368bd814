//! Every upstream flow of the controller against a fake API server (kube-rs style: a
//! `tower_test::mock` service behind `kube::Client::new`), driven by a test edge over a real
//! CloudHub: each request of the edge must become exactly one documented API call (verb, path,
//! patch type, body), a refused request none at all, and the edge gets the API's answer.

#![cfg(feature = "kube")]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cloud, DEADLINE, Pki, TestEdge, eventually};
use http::{Request, Response};
use kube::client::Body;
use kubeedge_cloud::{CloudConfig, Kind, KubeWriter, Object, ObjectEvent};
use kubeedge_proto::{Content, Message, ObjectResp};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A request as the fake API server saw it: method, path and query, content type, body.
type Seen = (String, String, Option<String>, Option<Value>);

/// Answers every request (404 for DeviceStatus until one is created; otherwise the body back
/// with a resourceVersion) and records it.
fn fake_api() -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut device_status_exists = false;
        while let Some((request, reply)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Option<Value> =
                (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned());
            let (method, uri) = (parts.method.to_string(), parts.uri.to_string());
            let missing =
                uri.contains("/devicestatuses") && !device_status_exists && method != "POST";
            if uri.contains("/devicestatuses") && method == "POST" {
                device_status_exists = true;
            }
            log.lock()
                .unwrap()
                .push((method, uri, content_type, body.clone()));
            let (code, answer) = if missing {
                (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                )
            } else {
                let mut object =
                    body.unwrap_or_else(|| json!({"kind": "Status", "status": "Success"}));
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), json!("77"));
                }
                (200, object)
            };
            let response = Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            reply.send_response(response);
        }
    });
    (kube::Client::new(service, "default"), seen)
}

fn objects() -> Vec<ObjectEvent> {
    let pod = |name: &str, node: &str| {
        Object::new(Kind::Pod, json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "resourceVersion": "5"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})).unwrap()
    };
    let device = Object::new(Kind::Device, json!({"metadata": {"name": "thermo-1", "namespace": "default", "uid": "u-thermo", "resourceVersion": "6"},
        "spec": {"nodeName": "edge-1", "deviceModelRef": {"name": "thermo-model"}}})).unwrap();
    Kind::ALL
        .into_iter()
        .map(|kind| ObjectEvent::Listed {
            kind,
            objects: match kind {
                Kind::Pod => vec![pod("web", "edge-1"), pod("other", "edge-2")],
                Kind::Device => vec![device.clone()],
                _ => vec![],
            },
        })
        .collect()
}

async fn call(edge: &TestEdge, msg: Message) -> Message {
    edge.handle.call(msg, DEADLINE).await.unwrap()
}

fn edged(op: &str, resource: &str, content: Content) -> Message {
    Message::new("edged", "meta", op, resource, content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_edge_request_is_exactly_one_documented_api_call() {
    let pki = Pki::new();
    let (client, seen) = fake_api();
    let (tx, rx) = mpsc::channel(64);
    for event in objects() {
        tx.send(event).await.unwrap();
    }
    let config = CloudConfig {
        inventory_grace: Duration::from_millis(100),
        ..CloudConfig::default()
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cloud = Cloud::start(&pki, KubeWriter::new(client), rx, config, listen).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = TestEdge::start(&pki, cloud.addr, "edge-1", &dir.path().join("edge.db")).await;
    eventually("pod at the edge", || async {
        edge.stored("default/pod/web").await.is_some()
    })
    .await;

    let node =
        json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "edge-1"}, "status": {}});
    let reply = call(
        &edge,
        edged(
            "insert",
            "default/node/edge-1",
            Content::json(&node).unwrap(),
        ),
    )
    .await;
    let resp: ObjectResp = reply.content.decode().unwrap();
    assert!(!resp.is_err());
    let stored: Value = serde_json::from_slice(resp.object.as_json()).unwrap();
    assert_eq!(
        stored["metadata"]["resourceVersion"], "77",
        "the API's answer reaches the edge"
    );

    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    call(
        &edge,
        edged(
            "patch",
            "default/nodepatch/edge-1",
            Content::string(&status.to_string()),
        ),
    )
    .await;
    let lease = json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": {"name": "edge-1", "namespace": "kube-node-lease"},
                       "spec": {"holderIdentity": "edge-1", "leaseDurationSeconds": 40, "renewTime": "2026-11-23T10:00:00.000000Z"}});
    call(
        &edge,
        edged(
            "insert",
            "kube-node-lease/lease/edge-1",
            Content::json(&lease).unwrap(),
        ),
    )
    .await;
    call(
        &edge,
        edged(
            "update",
            "kube-node-lease/lease/edge-1",
            Content::json(&lease).unwrap(),
        ),
    )
    .await;
    let pod_patch = json!({"metadata": {"uid": "u-web"}, "status": {"phase": "Running"}});
    call(
        &edge,
        edged(
            "patch",
            "default/podpatch/web",
            Content::string(&pod_patch.to_string()),
        ),
    )
    .await;
    // Refused: another node's pod. No API call.
    let refused = call(
        &edge,
        edged(
            "patch",
            "default/podpatch/other",
            Content::string(&pod_patch.to_string()),
        ),
    )
    .await;
    assert!(
        refused
            .content
            .as_json()
            .windows(9)
            .any(|w| w == b"Forbidden")
    );
    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "u-web"}});
    call(
        &edge,
        edged(
            "delete",
            "default/pod/web",
            Content::json(&options).unwrap(),
        ),
    )
    .await;
    let event = json!({"kind": "Event", "apiVersion": "v1", "metadata": {"name": "web.1", "namespace": "default"},
                       "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"}, "reason": "Started"});
    call(
        &edge,
        edged(
            "insert",
            "default/event/web.1",
            Content::json(&event).unwrap(),
        ),
    )
    .await;
    let twin = json!({"event_id": "e", "timestamp": 1, "twin": {"temperature": {"actual": {"value": "25", "metadata": {"timestamp": 1000}}, "metadata": {"type": "int"}}}});
    let confirm = call(
        &edge,
        Message::new(
            "twin",
            "resource",
            "update",
            "device/default/thermo-1/twin/edge_updated",
            Content::json(&twin).unwrap(),
        ),
    )
    .await;
    assert!(confirm.content.is_ok_ack(), "{confirm:?}");
    let state = json!({"event_id": "s", "timestamp": 2, "device": {"name": "thermo-1", "state": "online", "lastOnlineTime": "2026-11-23T04:31:09Z"}});
    let confirm = call(
        &edge,
        Message::new(
            "twin",
            "resource",
            "update",
            "device/default/thermo-1/state/update",
            Content::string(&state.to_string()),
        ),
    )
    .await;
    assert!(confirm.content.is_ok_ack(), "{confirm:?}");

    let seen = seen.lock().unwrap().clone();
    let calls: Vec<(&str, &str, Option<&str>)> = seen
        .iter()
        .map(|(m, u, c, _)| (m.as_str(), u.as_str(), c.as_deref()))
        .collect();
    const SMP: Option<&str> = Some("application/strategic-merge-patch+json");
    const MERGE: Option<&str> = Some("application/merge-patch+json");
    const JSON: Option<&str> = Some("application/json");
    let ds = "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devicestatuses";
    assert_eq!(
        calls,
        [
            ("POST", "/api/v1/nodes", JSON),
            ("PATCH", "/api/v1/nodes/edge-1/status", SMP),
            (
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                JSON
            ),
            (
                "PATCH",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1",
                MERGE
            ),
            ("PATCH", "/api/v1/namespaces/default/pods/web/status", SMP),
            ("DELETE", "/api/v1/namespaces/default/pods/web", JSON),
            ("POST", "/api/v1/namespaces/default/events", JSON),
            ("GET", &format!("{ds}/thermo-1"), None),
            ("PATCH", &format!("{ds}/thermo-1"), MERGE),
            ("POST", ds, JSON),
            ("PATCH", &format!("{ds}/thermo-1"), MERGE),
        ]
    );
    let body = |i: usize| seen[i].3.clone().unwrap();
    assert_eq!(
        body(0)["metadata"]["labels"]["node-role.kubernetes.io/edge"],
        ""
    );
    assert_eq!(body(1), status);
    assert_eq!(body(3), json!({"spec": lease["spec"]}));
    assert_eq!(body(4), pod_patch);
    assert_eq!(body(5), options);
    assert_eq!(body(6)["involvedObject"]["name"], "web");
    assert_eq!(
        body(9)["metadata"]["ownerReferences"][0],
        json!({"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device", "name": "thermo-1", "uid": "u-thermo", "controller": true, "blockOwnerDeletion": true})
    );
    assert_eq!(
        body(9)["status"]["twins"],
        json!([{"propertyName": "temperature", "reported": {"value": "25", "metadata": {"timestamp": "1000", "type": "int"}}}])
    );
    assert_eq!(
        body(10),
        json!({"status": {"state": "online", "lastOnlineTime": "2026-11-23T04:31:09Z"}})
    );
    assert_eq!(cloud.metrics.refused_requests(), 1);
    assert_eq!(cloud.metrics.write_errors(), 0);
}
