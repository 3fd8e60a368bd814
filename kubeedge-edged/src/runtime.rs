//! The container runtime seen by the pod sync loop: [`PodRuntime`].
//!
//! The trait is the Container Runtime Interface (CRI, `runtime.v1`) cut down to what a kubelet
//! needs, with plain Rust types instead of the generated protobuf ones, so that another runtime
//! (a different CRI client, a runtime driven over its own API, a VM-based one) plugs in by
//! implementing these methods. `cri::CriRuntime` implements it over gRPC against
//! containerd's CRI plugin.
//!
//! Sandboxes and containers are found again after an edged restart by their labels
//! ([`LABEL_POD_UID`] and friends, the same keys the kubelet writes), so the runtime itself is the
//! record of what runs; nothing about running containers has to be stored elsewhere.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::Result;

/// Label with the pod's name on sandboxes and containers (the kubelet's key).
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label with the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label with the pod's uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label with the name of the node whose edged made the sandbox: an edged removes only
/// sandboxes of its own node that no stored pod owns (several edged may share a runtime).
pub const LABEL_NODE: &str = "io.kubeedge.node";
/// Label with a hash of the container's spec: a container whose spec changed (a new image, say)
/// is restarted with the new spec, as the kubelet does.
pub const LABEL_CONTAINER_HASH: &str = "io.kubeedge.container.hash";
/// Label with the container's name (containers only).
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// A port the sandbox exposes on the host (`hostPort`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Port inside the pod.
    pub container_port: u16,
    /// Port on the host (0: none).
    pub host_port: u16,
    /// Host address to bind (empty: all).
    pub host_ip: String,
}

/// What a pod sandbox is created with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Increases each time the sandbox of the same pod is created again.
    pub attempt: u32,
    /// Hostname inside the pod; must be empty for host-network pods.
    pub hostname: String,
    /// Share the host's network namespace (`hostNetwork: true`).
    pub host_network: bool,
    /// Directory for the containers' logs.
    pub log_directory: PathBuf,
    /// Labels (include the `LABEL_POD_*` keys).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Host ports.
    pub port_mappings: Vec<PortMapping>,
    /// DNS servers for the pod's resolv.conf (empty: the runtime's default).
    pub dns_servers: Vec<String>,
    /// DNS search domains.
    pub dns_searches: Vec<String>,
    /// Parent cgroup for the pod (empty: the runtime's default).
    pub cgroup_parent: String,
}

/// A host path mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: PathBuf,
    /// Read-only.
    pub readonly: bool,
}

/// Linux resources of a container, in the runtime's units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinuxResources {
    /// CFS period in microseconds (0: default).
    pub cpu_period: i64,
    /// CFS quota in microseconds per period (0: unlimited).
    pub cpu_quota: i64,
    /// Relative CPU weight (0: default).
    pub cpu_shares: i64,
    /// Memory limit in bytes (0: unlimited).
    pub memory_limit_bytes: i64,
}

/// What a container is created with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Container name (unique in the pod).
    pub name: String,
    /// Increases with every restart of the container.
    pub attempt: u32,
    /// Image reference.
    pub image: String,
    /// Entrypoint (empty: the image's).
    pub command: Vec<String>,
    /// Arguments (empty: the image's).
    pub args: Vec<String>,
    /// Working directory (empty: the image's).
    pub working_dir: String,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Mounts.
    pub mounts: Vec<Mount>,
    /// Labels (include the `LABEL_POD_*` and [`LABEL_CONTAINER_NAME`] keys).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Log file path, relative to the sandbox's log directory.
    pub log_path: String,
    /// Resource limits.
    pub resources: LinuxResources,
}

/// State of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxState {
    /// Running, network set up.
    Ready,
    /// Stopped or failed.
    NotReady,
}

/// A sandbox as listed by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Runtime id.
    pub id: String,
    /// Pod name, namespace, uid and attempt it was created for.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod uid.
    pub uid: String,
    /// Attempt.
    pub attempt: u32,
    /// State.
    pub state: SandboxState,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_at: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl SandboxInfo {
    /// The uid of the pod the sandbox belongs to: its metadata's, else its [`LABEL_POD_UID`].
    pub fn pod_uid(&self) -> &str {
        if self.uid.is_empty() {
            self.labels.get(LABEL_POD_UID).map_or("", String::as_str)
        } else {
            &self.uid
        }
    }
}

/// Status of one sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxStatus {
    /// Runtime id.
    pub id: String,
    /// State.
    pub state: SandboxState,
    /// The pod's IP (empty for host-network pods: use the host's).
    pub ip: String,
}

/// State of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited (see the exit code).
    Exited,
    /// The runtime does not know.
    Unknown,
}

/// A container as listed by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Runtime id.
    pub id: String,
    /// Sandbox it belongs to.
    pub sandbox_id: String,
    /// Container name (from its metadata).
    pub name: String,
    /// Attempt.
    pub attempt: u32,
    /// State.
    pub state: ContainerState,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_at: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// Status of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerStatus {
    /// Runtime id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Attempt.
    pub attempt: u32,
    /// State.
    pub state: ContainerState,
    /// Nanoseconds since the Unix epoch (0: not yet).
    pub created_at: i64,
    /// Nanoseconds since the Unix epoch (0: not yet).
    pub started_at: i64,
    /// Nanoseconds since the Unix epoch (0: not yet).
    pub finished_at: i64,
    /// Exit code (when exited).
    pub exit_code: i32,
    /// Short reason from the runtime (`Completed`, `Error`, `OOMKilled`, ...).
    pub reason: String,
    /// Longer message.
    pub message: String,
    /// Image as requested.
    pub image: String,
    /// Image id the runtime resolved.
    pub image_ref: String,
}

/// Result of a command run in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecResult {
    /// Exit code.
    pub exit_code: i32,
    /// Standard output (bounded by the runtime).
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

/// The runtime's name and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// `containerd`, ...
    pub name: String,
    /// Its version.
    pub version: String,
    /// CRI API version it serves.
    pub api_version: String,
}

/// A container runtime the pod sync loop drives. All methods are idempotent where the CRI is:
/// stopping a stopped container or removing a removed one succeeds.
///
/// Implementations return [`Error::Runtime`](crate::Error::Runtime) with the runtime's message
/// (the sync loop reports it in the pod status), and [`Error::NotFound`](crate::Error::NotFound)
/// for an id the runtime does not know.
pub trait PodRuntime: Send + Sync + 'static {
    /// Name and version.
    fn version(&self) -> impl Future<Output = Result<RuntimeVersion>> + Send;

    /// Creates and starts a sandbox; returns its id.
    fn run_sandbox(&self, config: &SandboxConfig) -> impl Future<Output = Result<String>> + Send;
    /// Stops a sandbox (and whatever still runs in it).
    fn stop_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Removes a stopped sandbox and its containers.
    fn remove_sandbox(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// All sandboxes.
    fn list_sandboxes(&self) -> impl Future<Output = Result<Vec<SandboxInfo>>> + Send;
    /// One sandbox's status (its IP).
    fn sandbox_status(&self, id: &str) -> impl Future<Output = Result<SandboxStatus>> + Send;

    /// The id of `image` if present locally, `None` if not.
    fn image_status(&self, image: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Pulls `image`; returns its id.
    fn pull_image(&self, image: &str) -> impl Future<Output = Result<String>> + Send;

    /// Creates a container in a sandbox (created with `sandbox`); returns its id.
    fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> impl Future<Output = Result<String>> + Send;
    /// Starts a created container.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// Stops a container: SIGTERM, then SIGKILL after `grace`.
    fn stop_container(&self, id: &str, grace: Duration) -> impl Future<Output = Result<()>> + Send;
    /// Removes a stopped container.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    /// All containers.
    fn list_containers(&self) -> impl Future<Output = Result<Vec<ContainerInfo>>> + Send;
    /// One container's status.
    fn container_status(&self, id: &str) -> impl Future<Output = Result<ContainerStatus>> + Send;
    /// Runs `cmd` in a running container, waiting at most `timeout`.
    fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecResult>> + Send;
}
