//! The objects the cloud handles, and the event stream both sources (a cluster, a manifest
//! folder) produce.

use std::hash::{Hash, Hasher};

use kubeedge_proto::Content;
use serde_json::Value;

use crate::refs::references_in;
use crate::{Error, Result};

/// The kinds of object the controllers watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `v1` Pod.
    Pod,
    /// `v1` ConfigMap.
    ConfigMap,
    /// `v1` Secret.
    Secret,
    /// `v1` Node (edge nodes only: labelled `node-role.kubernetes.io/edge`).
    Node,
    /// `coordination.k8s.io/v1` Lease (namespace `kube-node-lease`).
    Lease,
    /// `devices.kubeedge.io/v1beta1` Device.
    Device,
    /// `devices.kubeedge.io/v1beta1` DeviceModel.
    DeviceModel,
}

/// The namespace of node leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The label that marks edge nodes.
pub const EDGE_NODE_LABEL: &str = "node-role.kubernetes.io/edge";

/// The API group and version of KubeEdge's device CRDs.
pub const DEVICES_API_VERSION: &str = "devices.kubeedge.io/v1beta1";

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 7] = [
        Kind::Pod,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::Node,
        Kind::Lease,
        Kind::Device,
        Kind::DeviceModel,
    ];

    /// The `kind` field (`Pod`).
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
            Kind::Node => "Node",
            Kind::Lease => "Lease",
            Kind::Device => "Device",
            Kind::DeviceModel => "DeviceModel",
        }
    }

    /// The `apiVersion` field (`v1`, `coordination.k8s.io/v1`, ...).
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod | Kind::ConfigMap | Kind::Secret | Kind::Node => "v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::Device | Kind::DeviceModel => DEVICES_API_VERSION,
        }
    }

    /// The API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self.api_version().rsplit_once('/') {
            Some((group, _)) => group,
            None => "",
        }
    }

    /// The API version without the group (`v1`, `v1beta1`).
    pub fn version(self) -> &'static str {
        match self.api_version().rsplit_once('/') {
            Some((_, version)) => version,
            None => self.api_version(),
        }
    }

    /// The plural resource name in API paths (`pods`, `devicemodels`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::Node => "nodes",
            Kind::Lease => "leases",
            Kind::Device => "devices",
            Kind::DeviceModel => "devicemodels",
        }
    }

    /// The resource type segment of KubeEdge resource paths (`pod`, `devicemodel`).
    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
            Kind::Node => "node",
            Kind::Lease => "lease",
            Kind::Device => "device",
            Kind::DeviceModel => "devicemodel",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }

    /// Whether the cloud sends objects of this kind down to edge nodes (a Node only to itself).
    pub fn sent_to_edges(self) -> bool {
        matches!(
            self,
            Kind::Pod
                | Kind::ConfigMap
                | Kind::Secret
                | Kind::Node
                | Kind::Device
                | Kind::DeviceModel
        )
    }

    /// The kind of a `kind`/`apiVersion` pair, if it is one of ours.
    pub fn of(kind: &str, api_version: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.kind() == kind && k.api_version() == api_version)
    }

    /// The kind whose KubeEdge resource type is `resource_type`.
    pub fn of_resource_type(resource_type: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.resource_type() == resource_type)
    }
}

/// Which object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace; empty for Nodes.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The resource path on the cloud-edge link: `<ns>/<type>/<name>`, `null/node/<name>` for
    /// cluster-scoped objects (KubeEdge's literal `null`).
    pub fn edge_resource(&self) -> String {
        let ns = if self.namespace.is_empty() {
            "null"
        } else {
            &self.namespace
        };
        format!("{ns}/{}/{}", self.kind.resource_type(), self.name)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind.kind(), self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind.kind(), self.namespace, self.name)
        }
    }
}

/// How deeply an object's JSON may nest. serde_json reads at most 128 levels, so an object
/// built in code or from YAML deeper than this could be written but not read back.
pub const MAX_OBJECT_DEPTH: usize = 100;

/// A Kubernetes object as the controllers hold it: its JSON encoding (shared bytes, Go's
/// `json.Marshal` form, exactly what goes to the edge), with the few fields the controllers key,
/// compare and route by read once. The parsed form is not kept: as `serde_json::Value` a Pod from
/// a real API server takes three to four times its JSON's size, and every node's message shares
/// these bytes instead of encoding its own copy.
#[derive(Clone, Debug)]
pub struct Object {
    key: ObjectKey,
    uid: String,
    resource_version: String,
    spec_hash: u64,
    node_name: Option<String>,
    terminating: bool,
    references: Box<[ObjectKey]>,
    content: Content,
}

impl PartialEq for Object {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.uid == other.uid
            && self.resource_version == other.resource_version
            && self.content == other.content
    }
}

impl Object {
    /// An object of `kind`; `kind` and `apiVersion` are filled in when missing (watch events
    /// of the Kubernetes API omit them) and must match `kind` when present. Objects nested more
    /// than [`MAX_OBJECT_DEPTH`] levels are refused.
    ///
    /// ```
    /// use kubeedge_cloud::{Kind, Object};
    ///
    /// let pod = Object::new(Kind::Pod, serde_json::json!({
    ///     "metadata": {"name": "nginx", "namespace": "default", "uid": "u1", "resourceVersion": "7"},
    ///     "spec": {"nodeName": "edge-1"},
    /// })).unwrap();
    /// assert_eq!(pod.key().edge_resource(), "default/pod/nginx");
    /// assert_eq!(pod.to_value()["kind"], "Pod");
    /// assert_eq!(pod.node_name(), Some("edge-1"));
    /// assert_eq!(pod.resource_version_u64(), Some(7));
    /// ```
    pub fn new(kind: Kind, mut value: Value) -> Result<Self> {
        let Some(map) = value.as_object_mut() else {
            return Err(Error::InvalidObject(format!(
                "a {} is not a JSON object",
                kind.kind()
            )));
        };
        for (field, want) in [("kind", kind.kind()), ("apiVersion", kind.api_version())] {
            match map.get(field) {
                None | Some(Value::Null) => {
                    map.insert(field.to_owned(), Value::String(want.to_owned()));
                }
                Some(Value::String(have)) if have == want => {}
                Some(other) => {
                    return Err(Error::InvalidObject(format!(
                        "{field} is {other}, expected {want}"
                    )));
                }
            }
        }
        let meta = map.get("metadata").and_then(Value::as_object);
        let text = |field: &str| {
            meta.and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let name = text("name");
        if name.is_empty() {
            return Err(Error::InvalidObject(format!(
                "a {} without metadata.name",
                kind.kind()
            )));
        }
        let namespace = if kind.namespaced() {
            let ns = text("namespace");
            if ns.is_empty() {
                return Err(Error::InvalidObject(format!(
                    "{} {name} without metadata.namespace",
                    kind.kind()
                )));
            }
            ns
        } else {
            String::new()
        };
        let uid = text("uid");
        let resource_version = text("resourceVersion");
        if depth(&value) > MAX_OBJECT_DEPTH {
            return Err(Error::InvalidObject(format!(
                "{} {name} nests deeper than {MAX_OBJECT_DEPTH} levels",
                kind.kind()
            )));
        }
        let key = ObjectKey {
            kind,
            namespace,
            name,
        };
        let terminating = !value["metadata"]["deletionTimestamp"].is_null();
        let node_name = value["spec"]["nodeName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let references = references_in(&key, &value).into_boxed_slice();
        let content = Content::json(&value).map_err(|err| {
            Error::InvalidObject(format!(
                "{} {}: cannot encode: {err}",
                kind.kind(),
                key.name
            ))
        })?;
        Ok(Self {
            uid,
            resource_version,
            spec_hash: spec_hash(&value),
            key,
            node_name,
            terminating,
            references,
            content,
        })
    }

    /// An object whose kind is read from its `kind` and `apiVersion` fields.
    pub fn from_value(value: Value) -> Result<Self> {
        let kind = value["kind"].as_str().unwrap_or("");
        let api_version = value["apiVersion"].as_str().unwrap_or("");
        let Some(k) = Kind::of(kind, api_version) else {
            return Err(Error::InvalidObject(format!(
                "kind {kind:?} of apiVersion {api_version:?} is not handled"
            )));
        };
        Self::new(k, value)
    }

    /// Which object this is.
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.key.kind
    }

    /// `metadata.namespace` (empty for Nodes).
    pub fn namespace(&self) -> &str {
        &self.key.namespace
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.key.name
    }

    /// `metadata.uid`.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// `metadata.resourceVersion` as given.
    pub fn resource_version(&self) -> &str {
        &self.resource_version
    }

    /// `metadata.resourceVersion` as a number (Kubernetes versions are decimal integers).
    pub fn resource_version_u64(&self) -> Option<u64> {
        self.resource_version.parse().ok()
    }

    /// A hash of everything but `status`, `metadata.resourceVersion`, `metadata.generation`
    /// (a custom resource without a status subresource counts status changes too) and
    /// `metadata.managedFields`: equal hashes mean only the status changed.
    pub fn spec_hash(&self) -> u64 {
        self.spec_hash
    }

    /// The object's JSON encoding (Go's form), shared: what goes into its messages.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The object's JSON, parsed anew at each call: for reading fields the index does not hold.
    pub fn to_value(&self) -> Value {
        // The bytes are serde_json's own encoding of a value at most MAX_OBJECT_DEPTH deep
        // (checked in `new`), which it always reads back.
        serde_json::from_slice(self.content.as_json()).unwrap_or(Value::Null)
    }

    /// One field of the object's JSON by JSON pointer (`/metadata/labels`), parsed anew.
    pub fn pointer(&self, pointer: &str) -> Option<Value> {
        self.to_value().pointer_mut(pointer).map(Value::take)
    }

    /// `spec.nodeName` (Pods and Devices): the node the object is bound to.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// Whether `metadata.deletionTimestamp` is set.
    pub fn is_terminating(&self) -> bool {
        self.terminating
    }

    /// The objects this one needs on its node (see [`references`](crate::references)).
    pub fn references(&self) -> &[ObjectKey] {
        &self.references
    }
}

/// How many levels `value` nests (a scalar is 1).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn spec_hash(value: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            match k.as_str() {
                "status" => {}
                "metadata" => {
                    if let Some(meta) = v.as_object() {
                        for (mk, mv) in meta {
                            if !matches!(
                                mk.as_str(),
                                "resourceVersion" | "managedFields" | "generation"
                            ) {
                                mk.hash(&mut hasher);
                                hash_value(mv, &mut hasher);
                            }
                        }
                    }
                }
                _ => {
                    k.hash(&mut hasher);
                    hash_value(v, &mut hasher);
                }
            }
        }
    }
    hasher.finish()
}

fn hash_value(value: &Value, hasher: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(n) => (2u8, n.to_string()).hash(hasher),
        Value::String(s) => (3u8, s).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            for item in items {
                hash_value(item, hasher);
            }
        }
        Value::Object(map) => {
            (5u8, map.len()).hash(hasher);
            for (k, v) in map {
                k.hash(hasher);
                hash_value(v, hasher);
            }
        }
    }
}

/// What a source reports: the one event stream the controllers consume, whether it comes from
/// a cluster's watches or from a manifest folder.
#[derive(Clone, Debug, PartialEq)]
pub enum ObjectEvent {
    /// An object was created or changed.
    Applied(Object),
    /// An object was deleted (its last known state).
    Deleted(Object),
    /// The complete current set of one kind, after a (re)list: objects of that kind not in it
    /// are gone. Every source sends one per kind before the controllers act on that kind.
    Listed {
        /// The kind listed.
        kind: Kind,
        /// Every object of that kind.
        objects: Vec<Object>,
    },
}
