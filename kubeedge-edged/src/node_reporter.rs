//! Registers the node and keeps its status and lease fresh, through the MetaManager's outbox:
//! `insert` of `default/node/<node>` at start, `patch` of `default/nodepatch/<node>` when the
//! status changed (checked every 10 s) or every 5 min, and the node Lease in `kube-node-lease`
//! (created at start, renewed every 10 s, 40 s duration), as KubeEdge's edged does
//! (`../shared/kubeedge-compat.md` §8). Status and lease updates are coalesced in the outbox, so
//! a long disconnection leaves one of each waiting, not thousands.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::NodeStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kubeedge_proto::{Content, Message};
use kubeedge_store::MetaManager;
use serde_json::json;
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
        let health = self.health().await;
        let host = HostInfo::gather(&self.config.root_dir);
        let node = node_status::node_object(&self.config.node, &host, &health, now());
        self.send(
            "insert",
            node_status::node_resource(&self.config.node.name),
            Content::try_from(serde_json::to_string(&node)?.as_str())
                .map_err(|e| Error::Spec(format!("node object: {e}")))?,
        )
        .await?;
        self.send("insert", self.lease_resource(), self.lease()?)
            .await?;
        let mut previous: Option<NodeStatus> = node.status;
        let mut reported = Instant::now();
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
                    if due || previous.as_ref().is_none_or(|p| node_status::status_changed(p, &status)) {
                        let patch = node_status::node_status_patch(&status)?;
                        self.send("patch", node_status::nodepatch_resource(&self.config.node.name), Content::string(&patch)).await?;
                        reported = Instant::now();
                    }
                    previous = Some(status);
                }
                _ = lease_tick.tick() => {
                    self.send("update", self.lease_resource(), self.lease()?).await?;
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

    /// The kubelet's lease: owned by the Node, held by it, renewed now (MicroTime).
    fn lease(&self) -> Result<Content> {
        let name = &self.config.node.name;
        let renew = now().0.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let lease = json!({
            "metadata": {
                "name": name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": ""}],
            },
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": renew},
        });
        Content::try_from(lease.to_string().as_str())
            .map_err(|e| Error::Spec(format!("lease: {e}")))
    }

    async fn send(&self, operation: &str, resource: String, content: Content) -> Result<()> {
        let msg = Message::new("edged", "meta", operation, resource, content);
        self.meta.from_edge(msg, false).await?;
        Ok(())
    }
}

fn now() -> Time {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0));
    Time(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}
