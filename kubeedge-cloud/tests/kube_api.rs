//! `KubeWriter` and `KubeSource` against a fake API server (kube-rs style: a
//! `tower_test::mock` service behind `kube::Client::new`). Each fake server asserts the exact
//! method, path and query, `Content-Type` and JSON body of every request it gets.
//!
//! The writer's requests carry no query string at all; the watcher's LIST and WATCH carry
//! kube's (a leading `?&`, `limit=500`, `watch=true&timeoutSeconds=290`,
//! `allowWatchBookmarks=true`, the selectors and `resourceVersion`), spelled out below.

#![cfg(feature = "kube")]

use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kubeedge_cloud::{
    ApiError, ClusterWriter, Error, Kind, KubeSource, KubeSourceConfig, KubeWriter, ObjectEvent,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tower_test::mock::{Handle, SendResponse};

/// How long any test may take before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(20);
const JSON: &str = "application/json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";
const MERGE: &str = "application/merge-patch+json";

type ApiServer = Handle<Request<Body>, Response<Body>>;
type Reply = SendResponse<Response<Body>>;

fn mock() -> (kube::Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One request as the fake server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    uri: String,
    content_type: Option<String>,
    body: Option<Value>,
}

async fn next_request(server: &mut ApiServer) -> (Seen, Reply) {
    let (request, reply) = server.next_request().await.expect("a request");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.expect("request body");
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ascii content type").to_owned()),
        body: (!bytes.is_empty())
            .then(|| serde_json::from_slice(&bytes).expect("a JSON request body")),
    };
    (seen, reply)
}

/// Takes the next request, asserts it is exactly `method uri` with `content_type` and `body`.
async fn expect(
    server: &mut ApiServer,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let (seen, reply) = next_request(server).await;
    assert_eq!(seen.method, method, "{seen:?}");
    assert_eq!(seen.uri, uri, "{seen:?}");
    assert_eq!(seen.content_type.as_deref(), content_type, "{seen:?}");
    assert_eq!(seen.body, body, "{seen:?}");
    reply
}

fn respond(reply: Reply, code: u16, body: &Value) {
    respond_raw(reply, code, serde_json::to_vec(body).expect("json"));
}

fn respond_raw(reply: Reply, code: u16, body: impl Into<Vec<u8>>) {
    let response = Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, JSON)
        .body(Body::from(body.into()))
        .expect("response");
    reply.send_response(response);
}

/// A `metav1.Status` failure as the API server writes it.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"name": "x"},
        "code": code,
    })
}

/// Runs `call` against the fake server task `server`; the server's own assertions come first.
async fn run<T>(server: JoinHandle<()>, call: impl Future<Output = T>) -> T {
    let (got, served) = timeout(DEADLINE, async { tokio::join!(call, server) })
        .await
        .expect("deadline: the call or the fake API server hung");
    served.expect("the fake API server's assertions");
    got
}

fn node() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "edge-1", "labels": {"node-role.kubernetes.io/edge": ""}},
        "spec": {},
        "status": {"phase": "Running"},
    })
}

fn stored_node() -> Value {
    let mut node = node();
    node["metadata"]["uid"] = json!("6f1f2a9c-node");
    node["metadata"]["resourceVersion"] = json!("812");
    node["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    node
}

fn lease(resource_version: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "edge-1", "namespace": "kube-node-lease", "resourceVersion": resource_version},
        "spec": {"holderIdentity": "edge-1", "leaseDurationSeconds": 40, "renewTime": "2025-01-01T00:00:10.000000Z"},
    })
}

fn lease_without_rv() -> Value {
    let mut lease = lease("");
    lease["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("resourceVersion");
    lease
}

fn stored_lease() -> Value {
    let mut lease = lease("913");
    lease["metadata"]["uid"] = json!("lease-uid");
    lease
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

fn pod(name: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": format!("uid-{name}"),
            "resourceVersion": resource_version,
        },
        "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running"},
    })
}

fn event() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "nginx.181f2a", "namespace": "default", "resourceVersion": "5"},
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": "nginx", "uid": "uid-nginx"},
        "reason": "Started",
        "message": "Started container c",
        "type": "Normal",
        "count": 2,
    })
}

fn event_without_rv() -> Value {
    let mut event = event();
    event["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("resourceVersion");
    event
}

const DEVICE_STATUSES: &str = "/apis/devices.kubeedge.io/v1beta1/namespaces/default/devicestatuses";

fn device_status_object(status: Option<Value>) -> Value {
    let mut object = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceStatus",
        "metadata": {"name": "thermo", "namespace": "default", "uid": "ds-uid", "resourceVersion": "40"},
        "spec": {},
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    object
}

fn twins() -> Value {
    json!({"twins": [{"propertyName": "temperature", "reported": {"value": "21.5"}}]})
}

// ---------------------------------------------------------------------------------------------
// KubeWriter
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_node_posts_the_node() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "POST",
            "/api/v1/nodes",
            Some(JSON),
            Some(node()),
        )
        .await;
        respond(reply, 201, &stored_node());
    });
    let got = run(api, KubeWriter::new(client).create_node(node())).await;
    assert_eq!(got, Ok(stored_node()));
}

#[tokio::test]
async fn create_node_that_exists_returns_the_stored_one() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "POST",
            "/api/v1/nodes",
            Some(JSON),
            Some(node()),
        )
        .await;
        respond(
            reply,
            409,
            &status(409, "AlreadyExists", "nodes \"edge-1\" already exists"),
        );
        let reply = expect(&mut server, "GET", "/api/v1/nodes/edge-1", None, None).await;
        respond(reply, 200, &stored_node());
    });
    let got = run(api, KubeWriter::new(client).create_node(node())).await;
    assert_eq!(got, Ok(stored_node()));
}

#[tokio::test]
async fn patch_node_status_sends_a_strategic_merge_patch() {
    let (client, mut server) = mock();
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let sent = patch.clone();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "PATCH",
            "/api/v1/nodes/edge-1/status",
            Some(STRATEGIC),
            Some(sent),
        )
        .await;
        respond(reply, 200, &stored_node());
    });
    let got = run(
        api,
        KubeWriter::new(client).patch_node_status("edge-1", patch),
    )
    .await;
    assert_eq!(got, Ok(stored_node()));
}

#[tokio::test]
async fn create_lease_posts_it_without_resource_version() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "POST",
            LEASES,
            Some(JSON),
            Some(lease_without_rv()),
        )
        .await;
        respond(reply, 201, &stored_lease());
    });
    let got = run(
        api,
        KubeWriter::new(client).create_lease("kube-node-lease", lease("17")),
    )
    .await;
    assert_eq!(got, Ok(stored_lease()));
}

#[tokio::test]
async fn create_lease_that_exists_patches_its_spec() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "POST",
            LEASES,
            Some(JSON),
            Some(lease_without_rv()),
        )
        .await;
        respond(
            reply,
            409,
            &status(
                409,
                "AlreadyExists",
                "leases.coordination.k8s.io \"edge-1\" already exists",
            ),
        );
        let reply = expect(
            &mut server,
            "PATCH",
            &format!("{LEASES}/edge-1"),
            Some(MERGE),
            Some(json!({"spec": lease("")["spec"]})),
        )
        .await;
        respond(reply, 200, &stored_lease());
    });
    let got = run(
        api,
        KubeWriter::new(client).create_lease("kube-node-lease", lease("17")),
    )
    .await;
    assert_eq!(got, Ok(stored_lease()));
}

#[tokio::test]
async fn update_lease_merge_patches_the_spec() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "PATCH",
            &format!("{LEASES}/edge-1"),
            Some(MERGE),
            Some(json!({"spec": lease("")["spec"]})),
        )
        .await;
        respond(reply, 200, &stored_lease());
    });
    // A stale resourceVersion from the edge is not sent (a merge patch of the spec only).
    let got = run(
        api,
        KubeWriter::new(client).update_lease("kube-node-lease", "edge-1", lease("3")),
    )
    .await;
    assert_eq!(got, Ok(stored_lease()));
}

#[tokio::test]
async fn update_lease_of_a_missing_lease_creates_it() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "PATCH",
            &format!("{LEASES}/edge-1"),
            Some(MERGE),
            Some(json!({"spec": lease("")["spec"]})),
        )
        .await;
        respond(
            reply,
            404,
            &status(
                404,
                "NotFound",
                "leases.coordination.k8s.io \"edge-1\" not found",
            ),
        );
        let reply = expect(
            &mut server,
            "POST",
            LEASES,
            Some(JSON),
            Some(lease_without_rv()),
        )
        .await;
        respond(reply, 201, &stored_lease());
    });
    let got = run(
        api,
        KubeWriter::new(client).update_lease("kube-node-lease", "edge-1", lease("3")),
    )
    .await;
    assert_eq!(got, Ok(stored_lease()));
}

fn pod_status_patch() -> Value {
    json!({
        "metadata": {"uid": "uid-nginx"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

#[tokio::test]
async fn patch_pod_status_sends_the_patch_as_given() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/default/pods/nginx/status",
            Some(STRATEGIC),
            Some(pod_status_patch()),
        )
        .await;
        respond(reply, 200, &pod("nginx", "77"));
    });
    let got = run(
        api,
        KubeWriter::new(client).patch_pod_status("default", "nginx", pod_status_patch()),
    )
    .await;
    assert_eq!(got, Ok(pod("nginx", "77")));
}

#[tokio::test]
async fn patch_pod_status_uid_conflict_is_the_servers_api_error() {
    let (client, mut server) = mock();
    let message = "Operation cannot be fulfilled on pods \"nginx\": Precondition failed: UID in \
                   precondition: uid-nginx, UID in object meta: uid-other";
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "PATCH",
            "/api/v1/namespaces/default/pods/nginx/status",
            Some(STRATEGIC),
            Some(pod_status_patch()),
        )
        .await;
        respond(reply, 409, &status(409, "Conflict", message));
    });
    let got = run(
        api,
        KubeWriter::new(client).patch_pod_status("default", "nginx", pod_status_patch()),
    )
    .await;
    assert_eq!(got, Err(ApiError::new(409, "Conflict", message)));
}

#[tokio::test]
async fn delete_pod_sends_the_delete_options_and_returns_the_pod() {
    let (client, mut server) = mock();
    let options = json!({
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": "uid-nginx"},
    });
    let sent = options.clone();
    let mut deleted = pod("nginx", "80");
    deleted["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:01:00Z");
    let answer = deleted.clone();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "DELETE",
            "/api/v1/namespaces/default/pods/nginx",
            Some(JSON),
            Some(sent),
        )
        .await;
        respond(reply, 200, &answer);
    });
    let got = run(
        api,
        KubeWriter::new(client).delete_pod("default", "nginx", options),
    )
    .await;
    assert_eq!(got, Ok(deleted));
}

#[tokio::test]
async fn get_device_status_returns_the_status() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "GET",
            &format!("{DEVICE_STATUSES}/thermo"),
            None,
            None,
        )
        .await;
        respond(reply, 200, &device_status_object(Some(twins())));
    });
    let got = run(
        api,
        KubeWriter::new(client).get_device_status("default", "thermo"),
    )
    .await;
    assert_eq!(got, Ok(Some(twins())));
}

#[tokio::test]
async fn get_device_status_without_a_status_is_an_empty_object() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "GET",
            &format!("{DEVICE_STATUSES}/thermo"),
            None,
            None,
        )
        .await;
        respond(reply, 200, &device_status_object(None));
    });
    let got = run(
        api,
        KubeWriter::new(client).get_device_status("default", "thermo"),
    )
    .await;
    assert_eq!(got, Ok(Some(json!({}))));
}

#[tokio::test]
async fn get_device_status_of_a_missing_one_is_none() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "GET",
            &format!("{DEVICE_STATUSES}/thermo"),
            None,
            None,
        )
        .await;
        respond(
            reply,
            404,
            &status(
                404,
                "NotFound",
                "devicestatuses.devices.kubeedge.io \"thermo\" not found",
            ),
        );
    });
    let got = run(
        api,
        KubeWriter::new(client).get_device_status("default", "thermo"),
    )
    .await;
    assert_eq!(got, Ok(None));
}

#[tokio::test]
async fn apply_device_status_merge_patches_the_status() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "PATCH",
            &format!("{DEVICE_STATUSES}/thermo"),
            Some(MERGE),
            Some(json!({"status": twins()})),
        )
        .await;
        respond(reply, 200, &device_status_object(Some(twins())));
    });
    let got = run(
        api,
        KubeWriter::new(client).apply_device_status("default", "thermo", "dev-uid", twins()),
    )
    .await;
    assert_eq!(got, Ok(device_status_object(Some(twins()))));
}

#[tokio::test]
async fn apply_device_status_of_a_missing_one_creates_it_owned_by_the_device() {
    let (client, mut server) = mock();
    let create = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceStatus",
        "metadata": {
            "name": "thermo",
            "namespace": "default",
            "ownerReferences": [{
                "apiVersion": "devices.kubeedge.io/v1beta1",
                "kind": "Device",
                "name": "thermo",
                "uid": "dev-uid",
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": {},
        "status": twins(),
    });
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "PATCH",
            &format!("{DEVICE_STATUSES}/thermo"),
            Some(MERGE),
            Some(json!({"status": twins()})),
        )
        .await;
        respond(
            reply,
            404,
            &status(
                404,
                "NotFound",
                "devicestatuses.devices.kubeedge.io \"thermo\" not found",
            ),
        );
        let reply = expect(
            &mut server,
            "POST",
            DEVICE_STATUSES,
            Some(JSON),
            Some(create),
        )
        .await;
        respond(reply, 201, &device_status_object(Some(twins())));
    });
    let got = run(
        api,
        KubeWriter::new(client).apply_device_status("default", "thermo", "dev-uid", twins()),
    )
    .await;
    assert_eq!(got, Ok(device_status_object(Some(twins()))));
}

#[tokio::test]
async fn record_event_posts_the_event() {
    let (client, mut server) = mock();
    let mut stored = event_without_rv();
    stored["metadata"]["resourceVersion"] = json!("100");
    let answer = stored.clone();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "POST",
            "/api/v1/namespaces/default/events",
            Some(JSON),
            Some(event_without_rv()),
        )
        .await;
        respond(reply, 201, &answer);
    });
    let got = run(
        api,
        KubeWriter::new(client).record_event("default", event()),
    )
    .await;
    assert_eq!(got, Ok(stored));
}

#[tokio::test]
async fn record_event_that_exists_replaces_it() {
    let (client, mut server) = mock();
    let mut stored = event_without_rv();
    stored["metadata"]["resourceVersion"] = json!("101");
    let answer = stored.clone();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "POST",
            "/api/v1/namespaces/default/events",
            Some(JSON),
            Some(event_without_rv()),
        )
        .await;
        respond(
            reply,
            409,
            &status(
                409,
                "AlreadyExists",
                "events \"nginx.181f2a\" already exists",
            ),
        );
        let reply = expect(
            &mut server,
            "PUT",
            "/api/v1/namespaces/default/events/nginx.181f2a",
            Some(JSON),
            Some(event_without_rv()),
        )
        .await;
        respond(reply, 200, &answer);
    });
    let got = run(
        api,
        KubeWriter::new(client).record_event("default", event()),
    )
    .await;
    assert_eq!(got, Ok(stored));
}

#[tokio::test]
async fn server_error_without_a_status_body_is_code_500() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let reply = expect(
            &mut server,
            "GET",
            &format!("{DEVICE_STATUSES}/thermo"),
            None,
            None,
        )
        .await;
        respond_raw(
            reply,
            500,
            "<html><body>upstream connect error</body></html>\n",
        );
    });
    let got = run(
        api,
        KubeWriter::new(client).get_device_status("default", "thermo"),
    )
    .await;
    assert_eq!(
        got,
        Err(ApiError::new(
            500,
            "InternalError",
            "<html><body>upstream connect error</body></html>"
        ))
    );
}

#[tokio::test]
async fn transport_failure_is_an_internal_error() {
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        let (_, reply) = next_request(&mut server).await;
        reply.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
    });
    let got = run(
        api,
        KubeWriter::new(client).patch_node_status("edge-1", json!({"status": {}})),
    )
    .await;
    let error = got.expect_err("a transport failure");
    assert_eq!((error.code, error.reason.as_str()), (500, "InternalError"));
    assert!(error.message.contains("connection reset"), "{error}");
}

#[tokio::test]
async fn hostile_names_are_bad_requests_and_send_nothing() {
    // The fake server is gone: a request that did go out would fail as 500, not 400.
    let (client, server) = mock();
    drop(server);
    let writer = KubeWriter::new(client);
    let calls = async {
        [
            writer
                .patch_pod_status("default", "../../secrets/x", json!({}))
                .await,
            writer.patch_node_status("edge-1?watch=1", json!({})).await,
            writer.delete_pod("default", "..", json!({})).await,
            writer.patch_node_status("", json!({})).await,
            writer.create_node(json!({"metadata": {}})).await,
            writer.record_event("kube system", event()).await,
        ]
    };
    let results = timeout(DEADLINE, calls).await.expect("deadline");
    for result in results {
        let error = result.expect_err("refused");
        assert_eq!(
            (error.code, error.reason.as_str()),
            (400, "BadRequest"),
            "{error}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// KubeSource
// ---------------------------------------------------------------------------------------------

/// The pods LIST and WATCH requests the watcher sends (kube's query strings, verbatim).
const PODS_LIST: &str = "/api/v1/pods?&fieldSelector=spec.nodeName%21%3D&limit=500";
const PODS_WATCH: &str = "/api/v1/pods?&watch=true&timeoutSeconds=290&fieldSelector=spec.nodeName%21%3D&allowWatchBookmarks=true&resourceVersion=100";

fn watch_line(kind: &str, object: Value) -> String {
    format!("{}\n", json!({"type": kind, "object": object}))
}

/// A fake API server for the source tests: answers the pods LIST with two pods and the first
/// pods WATCH with ADDED, MODIFIED and DELETED; holds later watches open; answers anything
/// else `404` (what an API server says for an API that is not installed), reporting its path.
fn pods_server(mut server: ApiServer, others: mpsc::UnboundedSender<String>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut watched = false;
        while let Some((request, reply)) = server.next_request().await {
            let uri = request.uri().to_string();
            assert_eq!(request.method(), http::Method::GET, "{uri}");
            if !uri.starts_with("/api/v1/pods?") {
                let _ = others.send(uri);
                respond_raw(reply, 404, "404 page not found\n");
            } else if uri == PODS_LIST {
                let list = json!({
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "100"},
                    "items": [pod("a", "98"), pod("b", "99")],
                });
                respond(reply, 200, &list);
            } else if !watched {
                assert_eq!(uri, PODS_WATCH);
                watched = true;
                let mut changed = pod("a", "102");
                changed["status"]["phase"] = json!("Succeeded");
                let body = [
                    watch_line("ADDED", pod("c", "101")),
                    watch_line("MODIFIED", changed),
                    watch_line("DELETED", pod("b", "103")),
                ]
                .concat();
                respond_raw(reply, 200, body);
            } else {
                // The next watch (from resourceVersion 103): nothing more happens.
                assert!(uri.contains("watch=true"), "{uri}");
                held.push(reply);
            }
        }
    })
}

async fn next_event(events: &mut mpsc::Receiver<ObjectEvent>) -> ObjectEvent {
    timeout(DEADLINE, events.recv())
        .await
        .expect("deadline: no event")
        .expect("the source stopped")
}

fn names(objects: &[kubeedge_cloud::Object]) -> Vec<&str> {
    objects.iter().map(|o| o.name()).collect()
}

/// Receives the pod events of [`pods_server`], in order.
async fn expect_pod_events(events: &mut mpsc::Receiver<ObjectEvent>) {
    match next_event(events).await {
        ObjectEvent::Listed { kind, objects } => {
            assert_eq!(kind, Kind::Pod);
            assert_eq!(names(&objects), ["a", "b"]);
            assert_eq!(objects[0].to_value()["kind"], "Pod");
            assert_eq!(objects[1].resource_version(), "99");
        }
        other => panic!("expected Listed, got {other:?}"),
    }
    match next_event(events).await {
        ObjectEvent::Applied(pod) => {
            assert_eq!((pod.name(), pod.resource_version()), ("c", "101"));
            assert_eq!(pod.node_name(), Some("edge-1"));
        }
        other => panic!("expected Applied(c), got {other:?}"),
    }
    match next_event(events).await {
        ObjectEvent::Applied(pod) => {
            assert_eq!((pod.name(), pod.resource_version()), ("a", "102"));
            assert_eq!(pod.to_value()["status"]["phase"], "Succeeded");
        }
        other => panic!("expected Applied(a), got {other:?}"),
    }
    match next_event(events).await {
        ObjectEvent::Deleted(pod) => {
            assert_eq!((pod.name(), pod.uid()), ("b", "uid-b"));
        }
        other => panic!("expected Deleted(b), got {other:?}"),
    }
}

#[tokio::test]
async fn source_lists_then_watches_pods() {
    let (client, server) = mock();
    let (others_tx, mut others) = mpsc::unbounded_channel();
    let api = pods_server(server, others_tx);
    let (events_tx, mut events) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let source = KubeSource::new(client, KubeSourceConfig::kinds([Kind::Pod]));
    let running = tokio::spawn(source.run(events_tx, shutdown.clone()));

    expect_pod_events(&mut events).await;

    shutdown.cancel();
    let result = timeout(DEADLINE, running)
        .await
        .expect("deadline: the source did not stop")
        .expect("the source task");
    assert!(result.is_ok(), "{result:?}");
    timeout(DEADLINE, api)
        .await
        .expect("deadline: the fake server did not end")
        .expect("the fake API server's assertions");
    assert_eq!(others.try_recv().ok(), None, "only pods were watched");
}

#[tokio::test]
async fn source_keeps_watching_pods_when_device_crds_are_missing() {
    let (client, server) = mock();
    let (others_tx, mut others) = mpsc::unbounded_channel();
    let api = pods_server(server, others_tx);
    let (events_tx, mut events) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let config = KubeSourceConfig::kinds([Kind::Pod, Kind::Device, Kind::DeviceModel]);
    let running = tokio::spawn(KubeSource::new(client, config).run(events_tx, shutdown.clone()));

    expect_pod_events(&mut events).await;
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let uri = timeout(DEADLINE, others.recv())
            .await
            .expect("deadline: no device request")
            .expect("the fake server");
        if !refused
            .iter()
            .any(|seen: &String| seen.split('?').next() == uri.split('?').next())
        {
            refused.push(uri);
        }
    }
    refused.sort();
    assert_eq!(
        refused,
        [
            "/apis/devices.kubeedge.io/v1beta1/devicemodels?&limit=500",
            "/apis/devices.kubeedge.io/v1beta1/devices?&limit=500",
        ]
    );

    shutdown.cancel();
    let result = timeout(DEADLINE, running)
        .await
        .expect("deadline: the source did not stop")
        .expect("the source task");
    assert!(result.is_ok(), "{result:?}");
    drop(api);
}

#[tokio::test]
async fn source_stops_when_the_receiver_is_dropped() {
    let (client, server) = mock();
    let (others_tx, _others) = mpsc::unbounded_channel();
    let _api = pods_server(server, others_tx);
    let (events_tx, mut events) = mpsc::channel(1);
    let source = KubeSource::new(client, KubeSourceConfig::kinds([Kind::Pod]));
    let running = tokio::spawn(source.run(events_tx, CancellationToken::new()));

    assert!(matches!(
        next_event(&mut events).await,
        ObjectEvent::Listed {
            kind: Kind::Pod,
            ..
        }
    ));
    drop(events);
    let result = timeout(DEADLINE, running)
        .await
        .expect("deadline: the source did not stop")
        .expect("the source task");
    assert!(matches!(result, Err(Error::Stopped)), "{result:?}");
}

#[test]
fn source_config_selects_kinds() {
    assert_eq!(
        KubeSourceConfig::default()
            .kinds
            .into_iter()
            .collect::<Vec<_>>(),
        Kind::ALL
    );
    let without = KubeSourceConfig::default().without_devices();
    assert!(!without.kinds.contains(&Kind::Device));
    assert!(!without.kinds.contains(&Kind::DeviceModel));
    assert_eq!(without.kinds.len(), 5);
}
