//! Registers the node and keeps its status and Lease fresh, through the MetaManager's outbox,
//! as the kubelet does (`../shared/kubeedge-compat.md` §8):
//!
//! - **Registration**: `insert` of `null/node/<node>` at start, then at once a status `patch`
//!   of `null/nodepatch/<node>`, so that a node that comes back after a restart is `Ready`
//!   again without waiting for a change.
//! - **Status**: computed every 10 s and patched when it changed, every 5 min unchanged, and
//!   whenever the cloud's copy of the Node (what the cloud pushed or answered, in the store)
//!   disagrees about `Ready` — the node lifecycle controller marks a node `Unknown` while it
//!   is away, and only the node can mark it `Ready` again.
//! - **Lease** (`kube-node-lease/lease/<node>`, renewed every 10 s, 40 s duration): the
//!   kubelet's lease controller. It asks the cloud for the Lease (`query`), creates it if the
//!   cloud says it is missing, then renews it with the `resourceVersion` of the last answer
//!   (KubeEdge's cloud replaces the whole Lease, so a stale version is a `Conflict`: the Lease
//!   is asked for again). The Lease is owned by the Node (`ownerReferences` with the Node's
//!   uid, which the API server requires to be non-empty) once the Node's uid is known from the
//!   store; until then it has no owner.
//!
//! The answers come from [`MetaManager::replies`]. Status and lease updates are coalesced in
//! the outbox, so a long disconnection leaves one of each waiting, not thousands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::NodeStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kubeedge_proto::{Content, Message, ObjectResp};
use kubeedge_store::{MetaManager, meta};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::node_status::{
    self, HostInfo, NODE_STATUS_REPORT_FREQUENCY, NODE_STATUS_UPDATE_FREQUENCY, NodeConfig,
    NodeHealth,
};
use crate::runtime::PodRuntime;
use crate::{Error, Result};

/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` (KubeEdge's `nodeLeaseDurationSeconds`).
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// Timing of the [`NodeReporter`] (KubeEdge's defaults from [`NodeReporterConfig::new`]).
#[derive(Clone, Debug)]
pub struct NodeReporterConfig {
    /// What the node is registered with.
    pub node: NodeConfig,
    /// Edged's root directory (its file system gives `ephemeral-storage`).
    pub root_dir: PathBuf,
    /// How often the status is computed (10 s).
    pub status_interval: Duration,
    /// How often it is sent even unchanged (5 min).
    pub report_interval: Duration,
    /// How often the lease is renewed (10 s = a quarter of its duration).
    pub lease_interval: Duration,
}

impl NodeReporterConfig {
    /// KubeEdge's intervals for `node`.
    pub fn new(node: NodeConfig, root_dir: impl Into<PathBuf>) -> Self {
        Self {
            node,
            root_dir: root_dir.into(),
            status_interval: NODE_STATUS_UPDATE_FREQUENCY,
            report_interval: NODE_STATUS_REPORT_FREQUENCY,
            lease_interval: Duration::from_secs(10),
        }
    }
}

/// What the reporter knows of the node's Lease in the API server.
#[derive(Clone, Debug, PartialEq)]
enum LeaseState {
    /// Not known: ask the cloud.
    Unknown,
    /// The cloud said it does not exist: create it.
    Missing,
    /// The last copy the cloud returned: renew it.
    Known(Value),
}

/// See the module docs.
#[derive(Debug)]
pub struct NodeReporter<R> {
    runtime: Arc<R>,
    meta: MetaManager,
    config: NodeReporterConfig,
}

impl<R: PodRuntime> NodeReporter<R> {
    /// A reporter for the node in `config`, asking `runtime` for its version and health.
    pub fn new(runtime: Arc<R>, meta: MetaManager, config: NodeReporterConfig) -> Self {
        Self {
            runtime,
            meta,
            config,
        }
    }

    /// Registers, then reports until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        // Subscribed before the first request, so that no answer is missed.
        let mut replies = self.meta.replies();
        let name = self.config.node.name.clone();
        let health = self.health().await;
        let host = HostInfo::gather(&self.config.root_dir);
        let node = node_status::node_object(&self.config.node, &host, &health, now());
        self.send(
            "insert",
            node_status::node_resource(&name),
            Content::try_from(serde_json::to_string(&node)?.as_str())
                .map_err(|e| Error::Spec(format!("node object: {e}")))?,
        )
        .await?;
        let mut previous: Option<NodeStatus> = node.status;
        if let Some(status) = &previous {
            self.send_status(status).await?;
        }
        let mut reported = Instant::now();
        let mut lease = LeaseState::Unknown;
        self.renew(&lease).await?;
        let mut status_tick = tokio::time::interval(self.config.status_interval);
        let mut lease_tick = tokio::time::interval(self.config.lease_interval);
        for tick in [&mut status_tick, &mut lease_tick] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.reset();
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = status_tick.tick() => {
                    let health = self.health().await;
                    let host = HostInfo::gather(&self.config.root_dir);
                    let status = node_status::node_status(&self.config.node, &host, &health, previous.as_ref(), now());
                    let due = reported.elapsed() >= self.config.report_interval;
                    let changed = previous.as_ref().is_none_or(|p| node_status::status_changed(p, &status));
                    let disagrees = self.cloud_ready().await != ready_of(&status);
                    if due || changed || disagrees {
                        if disagrees && !changed {
                            tracing::info!(node = %name, "the cloud's Node disagrees about Ready; sending the status");
                        }
                        self.send_status(&status).await?;
                        reported = Instant::now();
                    }
                    previous = Some(status);
                }
                _ = lease_tick.tick() => self.renew(&lease).await?,
                reply = replies.recv() => {
                    let next = match reply {
                        Ok(reply) if reply.route.resource == self.lease_resource() => {
                            lease_answer(&reply, &lease)
                        }
                        Ok(_) => continue,
                        // Missed answers: ask again.
                        Err(broadcast::error::RecvError::Lagged(_)) => LeaseState::Unknown,
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    };
                    // Act on a refusal at once instead of at the next renewal.
                    let act_now = !matches!(next, LeaseState::Known(_)) && next != lease;
                    lease = next;
                    if act_now {
                        self.renew(&lease).await?;
                    }
                }
            }
        }
    }

    /// Ready while the runtime answers; its version fills `containerRuntimeVersion`.
    async fn health(&mut self) -> NodeHealth {
        match self.runtime.version().await {
            Ok(v) => {
                if self.config.node.container_runtime_version.is_empty() {
                    self.config.node.container_runtime_version =
                        format!("{}://{}", v.name, v.version);
                }
                NodeHealth::default()
            }
            Err(e) => NodeHealth {
                not_ready: Some(format!("container runtime is down: {e}")),
                ..NodeHealth::default()
            },
        }
    }

    fn lease_resource(&self) -> String {
        format!("{LEASE_NAMESPACE}/lease/{}", self.config.node.name)
    }

    async fn send_status(&self, status: &NodeStatus) -> Result<()> {
        let patch = node_status::node_status_patch(status)?;
        self.send(
            "patch",
            node_status::nodepatch_resource(&self.config.node.name),
            Content::string(&patch),
        )
        .await
    }

    /// One step of the lease controller for `state`.
    async fn renew(&self, state: &LeaseState) -> Result<()> {
        let resource = self.lease_resource();
        match state {
            LeaseState::Unknown => {
                let query = Message::new("edged", "meta", "query", resource, Content::null());
                self.meta.query_cloud(query).await?;
            }
            LeaseState::Missing => {
                let lease = self.lease(None).await;
                self.send("insert", resource, content(&lease)?).await?;
            }
            LeaseState::Known(known) => {
                let lease = self.lease(Some(known)).await;
                self.send("update", resource, content(&lease)?).await?;
            }
        }
        Ok(())
    }

    /// The kubelet's lease: `known`'s metadata (its resourceVersion) with a fresh spec, owned
    /// by the Node once its uid is known.
    async fn lease(&self, known: Option<&Value>) -> Value {
        let name = self.config.node.name.as_str();
        let renew = now().0.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let mut metadata = json!({"name": name, "namespace": LEASE_NAMESPACE});
        if let Some(known) = known {
            for field in ["uid", "resourceVersion", "ownerReferences", "labels"] {
                if let Some(v) = known["metadata"].get(field) {
                    metadata[field] = v.clone();
                }
            }
        }
        if let Some(uid) = self.node_uid().await {
            metadata["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]);
        }
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": renew},
        })
    }

    /// The cloud's copy of this Node: pushed by the cloud or returned by the last
    /// registration or status patch.
    async fn cloud_node(&self) -> Option<Value> {
        let key = node_status::node_resource(&self.config.node.name);
        let row = self
            .meta
            .store()
            .read(move |db| meta::get(db, &key))
            .await
            .ok()??;
        let node: Value = serde_json::from_str(&row.value).ok()?;
        node["metadata"]["uid"].is_string().then_some(node)
    }

    async fn node_uid(&self) -> Option<String> {
        let node = self.cloud_node().await?;
        node["metadata"]["uid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
    }

    /// The `Ready` condition's status in the cloud's copy of the Node, if there is one.
    async fn cloud_ready(&self) -> Option<String> {
        let node = self.cloud_node().await?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["status"].as_str())
            .map(str::to_owned)
    }

    async fn send(&self, operation: &str, resource: String, content: Content) -> Result<()> {
        let msg = Message::new("edged", "meta", operation, resource, content);
        self.meta.from_edge(msg, false).await?;
        Ok(())
    }
}

/// What the cloud's answer about the Lease means for the next step.
fn lease_answer(reply: &Message, current: &LeaseState) -> LeaseState {
    let resp = ObjectResp::from_reply(&reply.content);
    if !resp.is_err() {
        let Ok(lease) = resp.object.decode::<Value>() else {
            return LeaseState::Unknown;
        };
        if lease["metadata"]["resourceVersion"].is_string() {
            return LeaseState::Known(lease);
        }
        // `"OK"` or an empty object: nothing learnt.
        return current.clone();
    }
    let reason = resp.error_reason().unwrap_or_default();
    let message = resp.error_message().unwrap_or_default();
    tracing::warn!(%reason, %message, "the cloud refused the node lease");
    match reason.as_str() {
        "NotFound" => LeaseState::Missing,
        // AlreadyExists, Conflict (a stale resourceVersion) and anything else: ask again.
        _ => LeaseState::Unknown,
    }
}

fn ready_of(status: &NodeStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

fn content(value: &Value) -> Result<Content> {
    Content::try_from(value.to_string().as_str()).map_err(|e| Error::Spec(format!("lease: {e}")))
}

fn now() -> Time {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0));
    Time(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(content: &str) -> Message {
        Message::new(
            "edgecontroller",
            "resource",
            "response",
            "kube-node-lease/lease/n1",
            Content::try_from(content).unwrap(),
        )
    }

    #[test]
    fn lease_answers_drive_the_next_step() {
        let known = reply(
            r#"{"Object":{"metadata":{"name":"n1","resourceVersion":"7","uid":"l1"}},"Err":null}"#,
        );
        assert!(
            matches!(lease_answer(&known, &LeaseState::Unknown), LeaseState::Known(l) if l["metadata"]["resourceVersion"] == "7")
        );
        let missing = reply(
            r#"{"Object":null,"Err":{"ErrStatus":{"reason":"NotFound","code":404,"message":"leases \"n1\" not found"}}}"#,
        );
        assert_eq!(
            lease_answer(&missing, &LeaseState::Unknown),
            LeaseState::Missing
        );
        let conflict = reply(
            r#"{"Object":{},"Err":{"ErrStatus":{"reason":"Conflict","code":409,"message":"the object has been modified"}}}"#,
        );
        assert_eq!(
            lease_answer(&conflict, &LeaseState::Known(json!({}))),
            LeaseState::Unknown
        );
        // KubeEdge's answer to a failed query is the bare error.
        let bare = reply(r#"{"ErrStatus":{"reason":"NotFound","code":404}}"#);
        assert_eq!(
            lease_answer(&bare, &LeaseState::Unknown),
            LeaseState::Missing
        );
    }
}
