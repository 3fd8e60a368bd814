//! A real cluster through the kube crate: [`KubeWriter`] (the controllers' writes),
//! [`KubeSource`] (watches of every [`Kind`], as [`ObjectEvent`]s) and [`client`] (a client
//! from a kubeconfig or the environment).
//!
//! The writer sends plain JSON requests through [`kube::Client::send`], so each write is
//! exactly one documented API call (plus one fallback call where the method says so), and a
//! refusal comes back as the API server's own `Status` in an [`ApiError`].

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::client::Body;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    ApiError, ClusterWriter, DEVICES_API_VERSION, EDGE_NODE_LABEL, Error, Kind,
    NODE_LEASE_NAMESPACE, Object, ObjectEvent, Result,
};

/// `Content-Type` of a strategic merge patch.
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";
/// `Content-Type` of a JSON merge patch (RFC 7386).
const MERGE_PATCH: &str = "application/merge-patch+json";
/// `Content-Type` of a plain JSON body.
const JSON: &str = "application/json";
/// The longest message kept from an error body that is not a `Status` (an HTML error page
/// from a proxy, say).
const MAX_ERROR_TEXT: usize = 1024;

/// Builds a [`kube::Client`]: from the kubeconfig file at `kubeconfig` (its current context)
/// when given, else as kube infers it (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster
/// service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Client(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Client(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Client(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
}

/// The [`ClusterWriter`] of a real cluster: every write is a JSON request to the API server.
///
/// | method | request | fallback |
/// |---|---|---|
/// | `create_node` | `POST /api/v1/nodes` | `409 AlreadyExists` → `GET /api/v1/nodes/{name}` |
/// | `patch_node_status` | `PATCH /api/v1/nodes/{name}/status` (strategic merge) | |
/// | `create_lease` | `POST .../namespaces/{ns}/leases` | `409 AlreadyExists` → as `update_lease` |
/// | `update_lease` | `PATCH .../namespaces/{ns}/leases/{name}` (merge, `{"spec"}`) | `404` → `POST` |
/// | `patch_pod_status` | `PATCH /api/v1/namespaces/{ns}/pods/{name}/status` (strategic merge) | |
/// | `delete_pod` | `DELETE /api/v1/namespaces/{ns}/pods/{name}` (body: `DeleteOptions`, none if `null`) | |
/// | `get_device_status` | `GET .../namespaces/{ns}/devicestatuses/{name}` | `404` → `None` |
/// | `apply_device_status` | `PATCH .../devicestatuses/{name}` (merge, `{"status"}`) | `404` → `POST` |
/// | `record_event` | `POST /api/v1/namespaces/{ns}/events` | `409 AlreadyExists` → `PUT .../events/{name}` |
/// | `create_token` | `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` | |
/// | `load_sent_record` | `GET /api/v1/namespaces/{records}/configmaps/kubeedge-rs-sent.{node}` | `404` → `None` |
/// | `store_sent_record` | `PATCH` of that ConfigMap (merge, `{"data"}`) | `404` → `POST` (and the namespace `POST`ed if it is missing) |
///
/// Requests carry no query string; bodies are JSON. Created objects never carry `metadata.resourceVersion` (the API server refuses creates
/// that do). Names and namespaces must be valid path segments, else the write is a
/// `400 BadRequest` without a request.
#[derive(Clone)]
pub struct KubeWriter {
    client: kube::Client,
    records_namespace: String,
}

/// The namespace of the sent records by default: KubeEdge's own.
pub const DEFAULT_RECORDS_NAMESPACE: &str = "kubeedge";

/// The name of `node`'s sent record: `kubeedge-rs-sent.<node>` (a hash of the node name
/// stands in for a name too long for an object name).
fn record_name(node: &str) -> String {
    let name = format!("kubeedge-rs-sent.{node}");
    if name.len() <= 253 {
        return name;
    }
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("kubeedge-rs-sent.{}.{hash:016x}", &node[..200])
}

impl std::fmt::Debug for KubeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeWriter").finish_non_exhaustive()
    }
}

impl KubeWriter {
    /// A writer over `client`, keeping sent records in [`DEFAULT_RECORDS_NAMESPACE`].
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            records_namespace: DEFAULT_RECORDS_NAMESPACE.to_owned(),
        }
    }

    /// Keeps the sent records (one ConfigMap per node that sends no inventory) in
    /// `namespace` instead.
    #[must_use]
    pub fn with_records_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.records_namespace = namespace.into();
        self
    }

    /// Sends one request and returns the response's JSON, or the API's refusal.
    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let bytes = match body {
            Some(body) => serde_json::to_vec(body)
                .map_err(|e| ApiError::internal(format!("encoding the request: {e}")))?,
            None => Vec::new(),
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(ACCEPT, JSON);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Body::from(bytes))
            .map_err(|e| ApiError::bad_request(format!("{method} {path}: {e}")))?;
        let response = self.client.send(request).await.map_err(kube_error)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect_bytes()
            .await
            .map_err(kube_error)?;
        if !status.is_success() {
            return Err(response_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::internal(format!("{method} {path}: decoding the response: {e}")))
    }

    async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, JSON, None).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, JSON, Some(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::PUT, path, JSON, Some(body)).await
    }

    async fn patch(&self, path: &str, content_type: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::PATCH, path, content_type, Some(body))
            .await
    }

    async fn post_lease(&self, namespace: &str, lease: &Value) -> Result<Value, ApiError> {
        let path = leases_path(namespace)?;
        self.post(&path, &without_resource_version(lease)).await
    }

    async fn patch_lease(
        &self,
        namespace: &str,
        name: &str,
        lease: &Value,
    ) -> Result<Value, ApiError> {
        let path = format!("{}/{}", leases_path(namespace)?, segment(name)?);
        let spec = match lease.get("spec") {
            Some(spec) if !spec.is_null() => spec.clone(),
            _ => json!({}),
        };
        let mut patch = json!({ "spec": spec });
        // The owner (the Node) once the edge knows its uid; an empty uid is refused by every
        // API server.
        if let Some(owners) = lease["metadata"]["ownerReferences"].as_array()
            && !owners.is_empty()
            && owners
                .iter()
                .all(|o| o["uid"].as_str().is_some_and(|u| !u.is_empty()))
        {
            patch["metadata"] = json!({ "ownerReferences": owners });
        }
        self.patch(&path, MERGE_PATCH, &patch).await
    }
}

impl ClusterWriter for KubeWriter {
    async fn create_node(&self, node: Value) -> Result<Value, ApiError> {
        let name = object_name(&node, "node")?;
        let path = format!("/api/v1/nodes/{}", segment(name)?);
        match self
            .post("/api/v1/nodes", &without_resource_version(&node))
            .await
        {
            Err(e) if e.is_already_exists() => {
                tracing::debug!(node = name, "node exists; returning the stored one");
                self.get(&path).await
            }
            other => other,
        }
    }

    async fn patch_node_status(&self, name: &str, patch: Value) -> Result<Value, ApiError> {
        let path = format!("/api/v1/nodes/{}/status", segment(name)?);
        self.patch(&path, STRATEGIC_MERGE_PATCH, &patch).await
    }

    async fn create_lease(&self, namespace: &str, lease: Value) -> Result<Value, ApiError> {
        let name = object_name(&lease, "lease")?;
        match self.post_lease(namespace, &lease).await {
            Err(e) if e.is_already_exists() => {
                tracing::debug!(namespace, lease = name, "lease exists; patching its spec");
                self.patch_lease(namespace, name, &lease).await
            }
            other => other,
        }
    }

    async fn update_lease(
        &self,
        namespace: &str,
        name: &str,
        lease: Value,
    ) -> Result<Value, ApiError> {
        match self.patch_lease(namespace, name, &lease).await {
            Err(e) if e.is_not_found() => {
                tracing::debug!(namespace, lease = name, "lease missing; creating it");
                self.post_lease(namespace, &lease).await
            }
            other => other,
        }
    }

    async fn patch_pod_status(
        &self,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/status",
            segment(namespace)?,
            segment(name)?
        );
        self.patch(&path, STRATEGIC_MERGE_PATCH, &patch).await
    }

    async fn delete_pod(
        &self,
        namespace: &str,
        name: &str,
        options: Value,
    ) -> Result<Value, ApiError> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}",
            segment(namespace)?,
            segment(name)?
        );
        let body = (!options.is_null()).then_some(&options);
        self.call(Method::DELETE, &path, JSON, body).await
    }

    async fn get_device_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let path = format!("{}/{}", device_statuses_path(namespace)?, segment(name)?);
        match self.get(&path).await {
            Ok(mut object) => Ok(Some(match object.get_mut("status").map(Value::take) {
                Some(status) if !status.is_null() => status,
                _ => json!({}),
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn apply_device_status(
        &self,
        namespace: &str,
        name: &str,
        device_uid: &str,
        status: Value,
    ) -> Result<Value, ApiError> {
        let collection = device_statuses_path(namespace)?;
        let path = format!("{collection}/{}", segment(name)?);
        let mut patch = json!({ "status": status });
        let patched = self.patch(&path, MERGE_PATCH, &patch).await;
        match patched {
            Err(e) if e.is_not_found() => {
                tracing::debug!(namespace, device = name, "creating the DeviceStatus");
                let status = patch["status"].take();
                let body = crate::cluster::new_device_status(namespace, name, device_uid, status);
                self.post(&collection, &body).await
            }
            other => other,
        }
    }

    async fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        request: Value,
    ) -> Result<Value, ApiError> {
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            segment(namespace)?,
            segment(service_account)?
        );
        self.post(&path, &request).await
    }

    async fn load_sent_record(&self, node: &str) -> Result<Option<String>, ApiError> {
        let path = format!(
            "{}/{}",
            configmaps_path(&self.records_namespace)?,
            segment(&record_name(node))?
        );
        match self.get(&path).await {
            Ok(map) => Ok(map["data"]["sent"].as_str().map(str::to_owned)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn store_sent_record(
        &self,
        node: &str,
        node_uid: Option<&str>,
        record: String,
    ) -> Result<(), ApiError> {
        let name = record_name(node);
        let collection = configmaps_path(&self.records_namespace)?;
        let path = format!("{collection}/{}", segment(&name)?);
        let mut patch = json!({ "data": { "sent": record } });
        match self.patch(&path, MERGE_PATCH, &patch).await {
            Err(e) if e.is_not_found() => {}
            other => return other.map(drop),
        }
        let mut map = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.records_namespace,
                "labels": {"app.kubernetes.io/managed-by": "kubeedge-rs"},
            },
            "data": { "sent": patch["data"]["sent"].take() },
        });
        if let Some(uid) = node_uid.filter(|u| !u.is_empty()) {
            map["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
        }
        match self.post(&collection, &map).await {
            // The namespace is missing (a cluster without KubeEdge's install): create it.
            Err(e) if e.is_not_found() => {
                let namespace = json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": self.records_namespace},
                });
                match self.post("/api/v1/namespaces", &namespace).await {
                    Err(e) if !e.is_already_exists() => return Err(e),
                    _ => {}
                }
                self.post(&collection, &map).await.map(drop)
            }
            // Another replica created it meanwhile.
            Err(e) if e.is_already_exists() => self
                .patch(&path, MERGE_PATCH, &patch_of(&map))
                .await
                .map(drop),
            other => other.map(drop),
        }
    }

    async fn record_event(&self, namespace: &str, event: Value) -> Result<Value, ApiError> {
        let name = object_name(&event, "event")?;
        let collection = format!("/api/v1/namespaces/{}/events", segment(namespace)?);
        let event = without_resource_version(&event);
        match self.post(&collection, &event).await {
            Err(e) if e.is_already_exists() => {
                tracing::debug!(namespace, event = name, "event exists; replacing it");
                self.put(&format!("{collection}/{}", segment(name)?), &event)
                    .await
            }
            other => other,
        }
    }
}

fn configmaps_path(namespace: &str) -> Result<String, ApiError> {
    Ok(format!(
        "/api/v1/namespaces/{}/configmaps",
        segment(namespace)?
    ))
}

fn leases_path(namespace: &str) -> Result<String, ApiError> {
    Ok(format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
        segment(namespace)?
    ))
}

fn device_statuses_path(namespace: &str) -> Result<String, ApiError> {
    Ok(format!(
        "/apis/{DEVICES_API_VERSION}/namespaces/{}/devicestatuses",
        segment(namespace)?
    ))
}

/// `value` as one path segment: what Kubernetes accepts as a name (no `/`, `%`, `.` or `..`),
/// restricted further to characters that need no escaping in a URI path.
fn segment(value: &str) -> Result<&str, ApiError> {
    let valid = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if valid {
        Ok(value)
    } else {
        Err(ApiError::bad_request(format!(
            "{value:?} is not a valid name or namespace"
        )))
    }
}

/// `metadata.name` of `object`.
fn object_name<'a>(object: &'a Value, what: &str) -> Result<&'a str, ApiError> {
    object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("a {what} without metadata.name")))
}

/// The merge patch that gives an existing record ConfigMap `map`'s data.
fn patch_of(map: &Value) -> Value {
    json!({ "data": map["data"] })
}

/// `object` without `metadata.resourceVersion`.
fn without_resource_version(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    object
}

/// A kube error as an [`ApiError`]: the API's `Status` as is, anything else (transport,
/// decoding) as `500 InternalError`.
fn kube_error(error: kube::Error) -> ApiError {
    match error {
        kube::Error::Api(status) => ApiError::new(
            if status.code == 0 { 500 } else { status.code },
            if status.reason.is_empty() {
                reason_of(
                    StatusCode::from_u16(status.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                )
            } else {
                &status.reason
            },
            status.message,
        ),
        other => ApiError::internal(other.to_string()),
    }
}

/// The error of a response with a failure `status` and `body`: the `Status` object in the
/// body when there is one, else the HTTP status with the body's text as the message.
fn response_error(status: StatusCode, body: &[u8]) -> ApiError {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body)
        && map.get("kind").and_then(Value::as_str) == Some("Status")
    {
        let code = map
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|&c| c != 0)
            .unwrap_or(status.as_u16());
        let reason = map
            .get("reason")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| reason_of(status));
        let message = map.get("message").and_then(Value::as_str).unwrap_or("");
        return ApiError::new(code, reason, message);
    }
    let text = String::from_utf8_lossy(body);
    let mut text = text.trim();
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text = &text[..end];
    }
    let message = if text.is_empty() {
        status.to_string()
    } else {
        text.to_owned()
    };
    ApiError::new(status.as_u16(), reason_of(status), message)
}

/// The `Status` reason the API server uses for an HTTP status.
fn reason_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        // 400 and any other client error.
        400..=499 => "BadRequest",
        _ => "InternalError",
    }
}

/// What [`KubeSource`] watches.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KubeSourceConfig {
    /// The kinds watched; by default every [`Kind`]. Leave out the device kinds for a
    /// cluster without KubeEdge's device CRDs to spare the retries (a missing API is retried,
    /// never fatal).
    pub kinds: BTreeSet<Kind>,
}

impl Default for KubeSourceConfig {
    fn default() -> Self {
        Self::kinds(Kind::ALL)
    }
}

impl KubeSourceConfig {
    /// Watches only `kinds`.
    pub fn kinds(kinds: impl IntoIterator<Item = Kind>) -> Self {
        Self {
            kinds: kinds.into_iter().collect(),
        }
    }

    /// This configuration without `Device` and `DeviceModel`.
    #[must_use]
    pub fn without_devices(mut self) -> Self {
        self.kinds.remove(&Kind::Device);
        self.kinds.remove(&Kind::DeviceModel);
        self
    }
}

/// The cluster as an [`ObjectEvent`] stream: one kube watcher per configured [`Kind`], in all
/// namespaces, except
///
/// - Pods: only those bound to a node (field selector `spec.nodeName!=`);
/// - Nodes: only edge nodes (label selector [`EDGE_NODE_LABEL`]);
/// - Leases: only in [`NODE_LEASE_NAMESPACE`].
///
/// Each (re)list of a kind is sent as one [`ObjectEvent::Listed`], then changes as
/// [`ObjectEvent::Applied`] and [`ObjectEvent::Deleted`]. Watch errors (a missing API such
/// as uninstalled device CRDs, a dropped connection, `410 Gone`) are logged and retried with
/// kube's default backoff; they never stop the other kinds.
#[derive(Clone)]
pub struct KubeSource {
    client: kube::Client,
    config: KubeSourceConfig,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

type KindStream = BoxStream<'static, (Kind, Result<Event<DynamicObject>, watcher::Error>)>;

impl KubeSource {
    /// A source over `client`.
    pub fn new(client: kube::Client, config: KubeSourceConfig) -> Self {
        Self { client, config }
    }

    /// Watches until `shutdown` is cancelled (then `Ok(())`) or `events`' receiver is dropped
    /// (then [`Error::Stopped`]).
    pub async fn run(
        self,
        events: mpsc::Sender<ObjectEvent>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let streams: Vec<KindStream> = self
            .config
            .kinds
            .iter()
            .map(|&kind| watch(self.client.clone(), kind))
            .collect();
        let mut merged = futures_util::stream::select_all(streams);
        let mut buffers: HashMap<Kind, Vec<Object>> = HashMap::new();
        loop {
            let (kind, item) = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = events.closed() => return Err(Error::Stopped),
                next = merged.next(), if !merged.is_empty() => match next {
                    Some(next) => next,
                    // Watchers never end; only an empty configuration gets here.
                    None => continue,
                },
            };
            let event = match item {
                Err(error) => {
                    tracing::warn!(kind = kind.kind(), %error, "watch failed; retrying");
                    continue;
                }
                Ok(Event::Init) => {
                    buffers.insert(kind, Vec::new());
                    continue;
                }
                Ok(Event::InitApply(object)) => {
                    if let Some(object) = convert(kind, object) {
                        buffers.entry(kind).or_default().push(object);
                    }
                    continue;
                }
                Ok(Event::InitDone) => ObjectEvent::Listed {
                    kind,
                    objects: buffers.remove(&kind).unwrap_or_default(),
                },
                Ok(Event::Apply(object)) => match convert(kind, object) {
                    Some(object) => ObjectEvent::Applied(object),
                    None => continue,
                },
                Ok(Event::Delete(object)) => match convert(kind, object) {
                    Some(object) => ObjectEvent::Deleted(object),
                    None => continue,
                },
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                sent = events.send(event) => if sent.is_err() {
                    return Err(Error::Stopped);
                },
            }
        }
    }
}

/// The API resource of `kind`.
fn api_resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: kind.group().to_owned(),
        version: kind.version().to_owned(),
        api_version: kind.api_version().to_owned(),
        kind: kind.kind().to_owned(),
        plural: kind.plural().to_owned(),
    }
}

/// The watch of `kind` with its selectors, retried with kube's default backoff.
fn watch(client: kube::Client, kind: Kind) -> KindStream {
    let resource = api_resource(kind);
    let mut config = watcher::Config::default();
    let api: Api<DynamicObject> = match kind {
        Kind::Pod => {
            config = config.fields("spec.nodeName!=");
            Api::all_with(client, &resource)
        }
        Kind::Node => {
            config = config.labels(EDGE_NODE_LABEL);
            Api::all_with(client, &resource)
        }
        Kind::Lease => Api::namespaced_with(client, NODE_LEASE_NAMESPACE, &resource),
        Kind::ConfigMap | Kind::Secret | Kind::Device | Kind::DeviceModel => {
            Api::all_with(client, &resource)
        }
    };
    watcher::watcher(api, config)
        .default_backoff()
        .map(move |item| (kind, item))
        .boxed()
}

/// A watched object as an [`Object`]; `None` (logged) if it is not a valid one.
fn convert(kind: Kind, object: DynamicObject) -> Option<Object> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let result = serde_json::to_value(object)
        .map_err(Error::from)
        .and_then(|value| Object::new(kind, value));
    match result {
        Ok(object) => Some(object),
        Err(error) => {
            tracing::warn!(kind = kind.kind(), name, %error, "skipping an object");
            None
        }
    }
}
