//! Upstream: what an edge node asks of the cloud, checked against node isolation, turned into
//! cluster writes, and answered the way KubeEdge's edgecontroller and devicecontroller answer.
//!
//! [`decide`] is pure: given the node, its message and the dispatcher's view of the cluster,
//! it returns what to do. A node may touch only its own Node and Lease, the Pods bound to it,
//! the ConfigMaps and Secrets those Pods reference and the Devices bound to it; anything else
//! is refused with `403 Forbidden` and logged.

use kubeedge_proto::inventory::Inventory;
use kubeedge_proto::{
    Content, DeviceEvent, Message, ObjectResp, Operation, Resource, ResourceType,
};
use serde_json::{Map, Value, json};

use crate::downstream::Downstream;
use crate::{ApiError, EDGE_NODE_LABEL, Kind, NODE_LEASE_NAMESPACE, Object, ObjectKey};

/// A cluster write on behalf of a node, already authorised.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Register the node.
    CreateNode {
        /// The Node object.
        node: Value,
    },
    /// Patch the node's status.
    PatchNodeStatus {
        /// The node.
        name: String,
        /// `{"status": ...}`.
        patch: Value,
    },
    /// Create the node's Lease.
    CreateLease {
        /// The Lease.
        lease: Value,
    },
    /// Renew the node's Lease.
    UpdateLease {
        /// The node (= Lease name).
        name: String,
        /// The Lease.
        lease: Value,
    },
    /// Patch a Pod's status.
    PatchPodStatus {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The strategic merge patch (with `metadata.uid`).
        patch: Value,
    },
    /// Finish a Pod's deletion.
    DeletePod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// DeleteOptions.
        options: Value,
    },
    /// Record an Event.
    RecordEvent {
        /// Namespace.
        namespace: String,
        /// The Event.
        event: Value,
    },
    /// Issue a service-account token bound to a Pod of the node (the TokenRequest API).
    CreateToken {
        /// The Pod's namespace.
        namespace: String,
        /// The service account.
        service_account: String,
        /// The `TokenRequest` (bound to the Pod).
        request: Value,
    },
    /// Twin values reported by the edge → DeviceStatus `status.twins`.
    TwinReported {
        /// The Device.
        device: ObjectKey,
        /// Its uid (owner of the DeviceStatus).
        device_uid: String,
        /// The `twin` map of the edge's `edge_updated` message.
        twins: Map<String, Value>,
    },
    /// Device state reported by the edge → DeviceStatus `status.state`/`lastOnlineTime`.
    DeviceState {
        /// The Device.
        device: ObjectKey,
        /// Its uid.
        device_uid: String,
        /// `online`, `offline`, ...
        state: String,
        /// RFC 3339, empty unless online.
        last_online: String,
    },
}

/// What to do with a message from a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Perform the write, then answer with [`write_reply`].
    Write(Action),
    /// Answer at once with this message.
    Reply(Message),
    /// Refused (node isolation, or a malformed request), already logged: answer with this
    /// message (an `ErrStatus`, or the devicecontroller's confirm carrying the reason).
    Refuse(Message),
    /// The node's inventory.
    Inventory(Inventory),
    /// Nothing to do.
    Ignore(&'static str),
}

/// Decides what a message from `node` asks for.
pub fn decide(node: &str, msg: &Message, view: &Downstream) -> Decision {
    if Inventory::is_inventory(msg) {
        return match Inventory::from_message(msg) {
            Ok(inventory) => Decision::Inventory(inventory),
            Err(err) => refuse(node, msg, ApiError::bad_request(err.to_string())),
        };
    }
    let resource = match msg.resource() {
        Ok(resource) => resource,
        Err(err) => return refuse(node, msg, ApiError::bad_request(err.to_string())),
    };
    let op = msg.route.operation.clone();
    match resource {
        Resource::MembershipDetail => {
            Decision::Ignore("membership detail (KubeEdge's cloud ignores it too)")
        }
        Resource::Topic(_) => {
            Decision::Ignore("user upload: the router module is not part of this cloud")
        }
        Resource::Device { id, event } => {
            device_report(node, msg, view, &id.namespace, &id.name, event)
        }
        Resource::Object(obj) => {
            let name = obj.name.clone().unwrap_or_default();
            let ns = obj.namespace.as_str().to_owned();
            match (obj.resource_type.clone(), op) {
                (ResourceType::Node, Some(Operation::Insert)) => register_node(node, msg, &name),
                (ResourceType::Node, Some(Operation::Query)) => {
                    if name != node {
                        return refuse(
                            node,
                            msg,
                            ApiError::forbidden(format!("node {node} may not read node {name}")),
                        );
                    }
                    match view.get(&ObjectKey::new(Kind::Node, "", name.as_str())) {
                        Some(found) => Decision::Reply(object_reply(msg, Ok(found.to_value()))),
                        None => Decision::Reply(object_reply(
                            msg,
                            Err(ApiError::not_found("nodes", &name)),
                        )),
                    }
                }
                (ResourceType::NodePatch, Some(Operation::Patch)) => {
                    if name != node {
                        return refuse(
                            node,
                            msg,
                            ApiError::forbidden(format!("node {node} may not patch node {name}")),
                        );
                    }
                    match content_json(msg).and_then(node_patch) {
                        Ok(patch) => Decision::Write(Action::PatchNodeStatus { name, patch }),
                        Err(err) => refuse(node, msg, err),
                    }
                }
                (ResourceType::Lease, Some(op @ (Operation::Insert | Operation::Update))) => {
                    if ns != NODE_LEASE_NAMESPACE || name != node {
                        return refuse(
                            node,
                            msg,
                            ApiError::forbidden(format!(
                                "node {node} may not write lease {ns}/{name}"
                            )),
                        );
                    }
                    let lease = match content_json(msg) {
                        Ok(lease) => lease,
                        Err(err) => return refuse(node, msg, err),
                    };
                    if lease["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n != node)
                    {
                        return refuse(
                            node,
                            msg,
                            ApiError::forbidden("the lease names another node"),
                        );
                    }
                    let lease = own_lease(node, lease, view);
                    if op == Operation::Insert {
                        Decision::Write(Action::CreateLease { lease })
                    } else {
                        Decision::Write(Action::UpdateLease { name, lease })
                    }
                }
                (ResourceType::Lease, Some(Operation::Query)) => {
                    if ns != NODE_LEASE_NAMESPACE || name != node {
                        return refuse(
                            node,
                            msg,
                            ApiError::forbidden(format!(
                                "node {node} may not read lease {ns}/{name}"
                            )),
                        );
                    }
                    let key = ObjectKey::new(Kind::Lease, NODE_LEASE_NAMESPACE, node);
                    Decision::Reply(object_reply(
                        msg,
                        view.get(&key)
                            .map(Object::to_value)
                            .ok_or_else(|| ApiError::not_found("leases", node)),
                    ))
                }
                (ResourceType::ServiceAccountToken, Some(Operation::Query)) => {
                    token_request(node, msg, view, &ns, &name)
                }
                (ResourceType::PodPatch, Some(Operation::Patch)) => {
                    if let Some(refused) = refuse_unless_bound(node, msg, view, &ns, &name) {
                        return refused;
                    }
                    match content_json(msg) {
                        Ok(patch) => Decision::Write(Action::PatchPodStatus {
                            namespace: ns,
                            name,
                            patch,
                        }),
                        Err(err) => refuse(node, msg, err),
                    }
                }
                (ResourceType::Pod, Some(Operation::Delete)) => {
                    if let Some(refused) = refuse_unless_bound(node, msg, view, &ns, &name) {
                        return refused;
                    }
                    let options = if msg.content.is_null() {
                        json!({})
                    } else {
                        match content_json(msg) {
                            Ok(options) => options,
                            Err(err) => return refuse(node, msg, err),
                        }
                    };
                    Decision::Write(Action::DeletePod {
                        namespace: ns,
                        name,
                        options,
                    })
                }
                (ty @ (ResourceType::ConfigMap | ResourceType::Secret), Some(Operation::Query)) => {
                    let kind = if ty == ResourceType::ConfigMap {
                        Kind::ConfigMap
                    } else {
                        Kind::Secret
                    };
                    let key = ObjectKey::new(kind, ns.as_str(), name.as_str());
                    if !view.referenced_on(&key, node) {
                        return refuse(
                            node,
                            msg,
                            ApiError::forbidden(format!("no pod on node {node} references {key}")),
                        );
                    }
                    match view.get(&key) {
                        Some(found) => Decision::Reply(
                            response(msg, Ok(found.content().clone()))
                                .with_resource_version(found.resource_version()),
                        ),
                        None => Decision::Reply(object_reply(
                            msg,
                            Err(ApiError::not_found(kind.plural(), &name)),
                        )),
                    }
                }
                (ResourceType::Event, Some(Operation::Insert | Operation::Update)) => {
                    let event = match content_json(msg) {
                        Ok(event) => event,
                        Err(err) => return refuse(node, msg, err),
                    };
                    if let Err(err) = event_allowed(node, &ns, &event, view) {
                        return refuse(node, msg, err);
                    }
                    Decision::Write(Action::RecordEvent {
                        namespace: ns,
                        event,
                    })
                }
                (ty, _) => refuse(
                    node,
                    msg,
                    ApiError::forbidden(format!(
                        "node {node} may not {} {ty} objects",
                        msg.route.operation.as_ref().map_or("", |o| o.as_str())
                    )),
                ),
            }
        }
        _ => Decision::Ignore("not a request this cloud serves"),
    }
}

/// The refusal of a request about the Pod `ns/name` unless it is bound to `node`.
fn refuse_unless_bound(
    node: &str,
    msg: &Message,
    view: &Downstream,
    ns: &str,
    name: &str,
) -> Option<Decision> {
    let key = ObjectKey::new(Kind::Pod, ns, name);
    match view.bound_to(&key, node) {
        Some(_) => None,
        None => Some(refuse(
            node,
            msg,
            ApiError::forbidden(format!("pod {ns}/{name} is not bound to node {node}")),
        )),
    }
}

/// The Lease of `node` as the API server accepts it: an owner reference without a uid (older
/// edges sent one, and every API server refuses it) gets the Node's uid from the view, or is
/// dropped when the Node is not known yet.
fn own_lease(node: &str, mut lease: Value, view: &Downstream) -> Value {
    let Some(meta) = lease.get_mut("metadata").and_then(Value::as_object_mut) else {
        return lease;
    };
    let Some(refs) = meta
        .get_mut("ownerReferences")
        .and_then(Value::as_array_mut)
    else {
        return lease;
    };
    let node_uid = view
        .get(&ObjectKey::new(Kind::Node, "", node))
        .map(|n| n.uid().to_owned())
        .filter(|u| !u.is_empty());
    for owner in refs.iter_mut() {
        if owner["uid"].as_str().is_none_or(str::is_empty) {
            match (&node_uid, owner["kind"].as_str()) {
                (Some(uid), Some("Node")) => owner["uid"] = json!(uid),
                _ => owner["uid"] = Value::Null,
            }
        }
    }
    refs.retain(|owner| owner["uid"].is_string());
    if refs.is_empty() {
        meta.remove("ownerReferences");
    }
    lease
}

/// A service-account token for a Pod of `node`: the request must be bound to a Pod bound to
/// the node, for that Pod's own service account (KubeEdge's cloud issues any token a node
/// asks for).
fn token_request(node: &str, msg: &Message, view: &Downstream, ns: &str, sa: &str) -> Decision {
    let request = match content_json(msg) {
        Ok(request) => request,
        Err(err) => return refuse(node, msg, err),
    };
    let bound = &request["spec"]["boundObjectRef"];
    if bound["kind"].as_str() != Some("Pod") {
        return refuse(
            node,
            msg,
            ApiError::forbidden("a node may ask only for tokens bound to its pods"),
        );
    }
    let pod_name = bound["name"].as_str().unwrap_or("");
    let Some(pod) = view.bound_to(&ObjectKey::new(Kind::Pod, ns, pod_name), node) else {
        return refuse(
            node,
            msg,
            ApiError::forbidden(format!("pod {ns}/{pod_name} is not bound to node {node}")),
        );
    };
    let pod_value = pod.to_value();
    let spec = &pod_value["spec"];
    let pod_sa = spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str())
        .unwrap_or("default");
    if pod_sa != sa || bound["uid"].as_str() != Some(pod.uid()) {
        return refuse(
            node,
            msg,
            ApiError::forbidden(format!(
                "pod {ns}/{pod_name} (uid {}) runs as service account {pod_sa}, not {sa}",
                pod.uid()
            )),
        );
    }
    let mut request = request;
    // Only what the TokenRequest API reads; the status is the answer's.
    if let Some(fields) = request.as_object_mut() {
        fields.remove("status");
        fields.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
        fields.insert("kind".into(), json!("TokenRequest"));
    }
    Decision::Write(Action::CreateToken {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
        request,
    })
}

fn register_node(node: &str, msg: &Message, name: &str) -> Decision {
    if name != node {
        return refuse(
            node,
            msg,
            ApiError::forbidden(format!("node {node} may not register node {name}")),
        );
    }
    let mut object = match content_json(msg) {
        Ok(object) => object,
        Err(err) => return refuse(node, msg, err),
    };
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return refuse(node, msg, ApiError::bad_request("a Node without metadata"));
    };
    if meta.get("name").and_then(Value::as_str) != Some(node) {
        return refuse(
            node,
            msg,
            ApiError::forbidden(format!("node {node} may not register another name")),
        );
    }
    // The edge role label is what marks this Node as one of ours.
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if let Some(labels) = labels.as_object_mut() {
        labels.entry(EDGE_NODE_LABEL).or_insert_with(|| json!(""));
    }
    for field in ["resourceVersion", "uid", "creationTimestamp"] {
        meta.remove(field);
    }
    Decision::Write(Action::CreateNode { node: object })
}

fn device_report(
    node: &str,
    msg: &Message,
    view: &Downstream,
    ns: &str,
    name: &str,
    event: DeviceEvent,
) -> Decision {
    let key = ObjectKey::new(Kind::Device, ns, name);
    let Some(device) = view.bound_to(&key, node) else {
        tracing::warn!(node, device = %key, "refused: the device is not bound to this node");
        return Decision::Refuse(twin_confirm(
            msg,
            &format!("device {ns}/{name} is not bound to node {node}"),
        ));
    };
    let device_uid = device.uid().to_owned();
    let body = match content_json(msg) {
        Ok(body) => body,
        Err(err) => return Decision::Refuse(twin_confirm(msg, &err.message)),
    };
    match event {
        DeviceEvent::TwinEdgeUpdated => {
            let twins = body
                .get("twin")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Decision::Write(Action::TwinReported {
                device: key,
                device_uid,
                twins,
            })
        }
        DeviceEvent::StateUpdate => {
            let device_part = &body["device"];
            let state = device_part["state"]
                .as_str()
                .or_else(|| body["state"].as_str())
                .or_else(|| body["State"].as_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            if !matches!(
                state.as_str(),
                "online" | "offline" | "ok" | "unknown" | "unhealthy"
            ) {
                return Decision::Refuse(twin_confirm(
                    msg,
                    &format!("unknown device state {state:?}"),
                ));
            }
            let last_online = device_part["lastOnlineTime"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            Decision::Write(Action::DeviceState {
                device: key,
                device_uid,
                state,
                last_online,
            })
        }
        DeviceEvent::TwinCloudUpdated => Decision::Ignore("cloud_updated goes cloud to edge"),
    }
}

fn event_allowed(node: &str, ns: &str, event: &Value, view: &Downstream) -> Result<(), ApiError> {
    let involved = &event["involvedObject"];
    let kind = involved["kind"].as_str().unwrap_or("");
    let name = involved["name"].as_str().unwrap_or("");
    let allowed = match kind {
        "Node" => name == node,
        "Pod" => {
            let pod_ns = involved["namespace"].as_str().unwrap_or(ns);
            pod_ns == ns
                && view
                    .bound_to(&ObjectKey::new(Kind::Pod, ns, name), node)
                    .is_some()
        }
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "node {node} may not record events about {kind} {ns}/{name}"
        )))
    }
}

/// A refusal: logged, answered with `{"Object":null,"Err":{"ErrStatus":...}}`.
fn refuse(node: &str, msg: &Message, err: ApiError) -> Decision {
    tracing::warn!(
        node,
        resource = %msg.route.resource,
        operation = msg.route.operation.as_ref().map_or("", |o| o.as_str()),
        %err,
        "refused request from edge node"
    );
    Decision::Refuse(object_reply(msg, Err(err)))
}

/// The content as JSON: an object, or a string holding JSON (patches travel as strings).
fn content_json(msg: &Message) -> Result<Value, ApiError> {
    let parsed: Value = msg
        .content
        .decode()
        .map_err(|e| ApiError::bad_request(format!("content: {e}")))?;
    match parsed {
        Value::String(text) => {
            serde_json::from_str(&text).map_err(|e| ApiError::bad_request(format!("content: {e}")))
        }
        Value::Object(_) => Ok(parsed),
        other => Err(ApiError::bad_request(format!(
            "content is not an object: {other}"
        ))),
    }
}

/// A node's patch of its own Node (sent to the `status` subresource, as KubeEdge does): its
/// `status`, and the labels and annotations the kubelet keeps (it patches them through the
/// same call), except labels under `node-restriction.kubernetes.io/`, which Kubernetes'
/// NodeRestriction reserves for administrators. Anything else is refused.
fn node_patch(patch: Value) -> Result<Value, ApiError> {
    let Some(fields) = patch.as_object() else {
        return Err(ApiError::bad_request("a node patch that is not an object"));
    };
    let mut out = serde_json::Map::new();
    for (key, value) in fields {
        match key.as_str() {
            "status" if value.is_object() => {
                out.insert(key.clone(), value.clone());
            }
            "metadata" => {
                let Some(meta) = value.as_object() else {
                    return Err(ApiError::bad_request("metadata is not an object"));
                };
                for (field, v) in meta {
                    let allowed = matches!(field.as_str(), "labels" | "annotations")
                        || field.starts_with("$setElementOrder/")
                        || field == "$retainKeys";
                    if !allowed {
                        return Err(ApiError::forbidden(format!(
                            "a node may not patch metadata.{field} of its Node"
                        )));
                    }
                    if field == "labels"
                        && v.as_object().is_some_and(|labels| {
                            labels
                                .keys()
                                .any(|k| k.starts_with("node-restriction.kubernetes.io/"))
                        })
                    {
                        return Err(ApiError::forbidden(
                            "node-restriction.kubernetes.io/ labels are reserved",
                        ));
                    }
                }
                out.insert(key.clone(), value.clone());
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "a node patch may carry status, labels and annotations, not {key}"
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("an empty node patch"));
    }
    Ok(Value::Object(out))
}

/// The reply KubeEdge's edgecontroller sends: `{"Object":...,"Err":...}`, `parent_msg_id` =
/// the request's id.
pub fn object_reply(request: &Message, result: Result<Value, ApiError>) -> Message {
    let resp = match result {
        Ok(object) => ObjectResp::ok(Content::json(&object).unwrap_or_else(|_| Content::null())),
        Err(err) => ObjectResp::status_error(&err.status()).unwrap_or_default(),
    };
    response(request, Content::json(&resp))
}

/// edgecontroller's `response` to `request` carrying `content` (`null` if it did not encode).
fn response(request: &Message, content: kubeedge_proto::Result<Content>) -> Message {
    Message::new(
        "edgecontroller",
        "resource",
        "response",
        request.route.resource.as_str(),
        content.unwrap_or_else(|_| Content::null()),
    )
    .with_parent(request.header.id.as_str())
}

/// The devicecontroller's confirm of a twin or state report (`"OK"`, or the refusal's text).
pub fn twin_confirm(request: &Message, error: &str) -> Message {
    let content = if error.is_empty() {
        Content::ok()
    } else {
        Content::string(error)
    };
    Message::new("devicecontroller", "twin", "response", "twin", content)
        .with_parent(request.header.id.as_str())
}

/// The answer to a performed write.
pub fn write_reply(request: &Message, action: &Action, result: Result<Value, ApiError>) -> Message {
    match action {
        Action::TwinReported { .. } | Action::DeviceState { .. } => match result {
            Ok(_) => twin_confirm(request, ""),
            Err(err) => twin_confirm(request, &err.to_string()),
        },
        // The object is gone: an edge must not store the deleted Pod back from the answer.
        Action::DeletePod { .. } => object_reply(request, result.map(|_| Value::Null)),
        // KubeEdge's queries are answered with the object itself, or the bare error.
        Action::CreateToken { .. } => response(
            request,
            match &result {
                Ok(token) => Content::json(token),
                Err(err) => Content::json(&json!({ "ErrStatus": err.status() })),
            },
        ),
        _ => object_reply(request, result),
    }
}

/// DeviceStatus `status.twins` after an edge report: each reported twin's `reported` (and,
/// when the edge has an expected value, `observedDesired`) replaced, other twins kept.
///
/// ```
/// use serde_json::json;
/// let twins = kubeedge_cloud::merge_twins(
///     &json!({"twins": [{"propertyName": "a", "reported": {"value": "1"}}]}),
///     json!({"temperature": {"actual": {"value": "25", "metadata": {"timestamp": 1}},
///            "metadata": {"type": "int"}}}).as_object().unwrap(),
/// );
/// assert_eq!(twins[0]["propertyName"], "a");
/// assert_eq!(twins[1]["reported"]["value"], "25");
/// assert_eq!(twins[1]["reported"]["metadata"]["type"], "int");
/// ```
pub fn merge_twins(current: &Value, reported: &Map<String, Value>) -> Vec<Value> {
    let mut twins: Vec<Value> = current["twins"].as_array().cloned().unwrap_or_default();
    for (name, twin) in reported {
        let slot = match twins
            .iter()
            .position(|t| t["propertyName"] == name.as_str())
        {
            Some(i) => i,
            None => {
                twins.push(json!({ "propertyName": name }));
                twins.len() - 1
            }
        };
        let Some(entry) = twins[slot].as_object_mut() else {
            continue;
        };
        let type_name = twin["metadata"]["type"].as_str().unwrap_or("");
        let value_of = |side: &Value| {
            let mut metadata = Map::new();
            if let Some(ts) = side["metadata"]["timestamp"].as_i64() {
                metadata.insert("timestamp".into(), json!(ts.to_string()));
            }
            if !type_name.is_empty() {
                metadata.insert("type".into(), json!(type_name));
            }
            json!({ "value": side["value"].as_str().unwrap_or(""), "metadata": metadata })
        };
        if twin["actual"].is_object() {
            entry.insert("reported".into(), value_of(&twin["actual"]));
        }
        if twin["expected"].is_object() {
            entry.insert("observedDesired".into(), value_of(&twin["expected"]));
        }
    }
    twins
}
