//! What edged reports about its host: the Node it registers and the status it patches.
//!
//! KubeEdge v1.22's edged runs the (forked) kubelet, so the Node it sends has the kubelet's
//! shape, plus the edge role labels that the fork adds (`node-role.kubernetes.io/edge` and
//! `node-role.kubernetes.io/agent`, both `""`). Everything here is a pure function of a
//! [`NodeConfig`], a [`HostInfo`] (gathered once by [`HostInfo::gather`], or fixed in tests), a
//! [`NodeHealth`] and the time:
//!
//! - [`node_object`]: the Node for registration, sent as `insert` on [`node_resource`]
//!   (`null/node/<name>`, cluster-scoped, as KubeEdge v1.23's edged sends it; v1.22 used
//!   `default`).
//! - [`node_status`]: the status, recomputed every [`NODE_STATUS_UPDATE_FREQUENCY`];
//!   [`node_status_patch`] makes the `patch` content for [`nodepatch_resource`]
//!   (`null/nodepatch/<name>`), to send when [`status_changed`] says so or every
//!   [`NODE_STATUS_REPORT_FREQUENCY`].
//!
//! Conditions are the kubelet's (v1.22 edged no longer says `EdgeReady`; that was the edged of
//! KubeEdge before v1.12): `MemoryPressure`, `DiskPressure`, `PIDPressure`, then `Ready` last,
//! with the kubelet's reasons and messages. `lastTransitionTime` carries over from the previous
//! status while a condition's status stays the same.
//!
//! Host facts come from `/proc`, `/sys`, `/etc` and two calls through `nix`: `statvfs` for
//! `ephemeral-storage` and `getifaddrs` for the `InternalIP` (nix is already in the dependency
//! graph through tokio-serial, and wraps both calls safely, so no `unsafe` here and no new
//! crate). The `InternalIP` is, in order: [`NodeConfig::node_ip`], the IPv4 address of the
//! interface of the default route (`/proc/net/route`, as the kubelet's `ChooseHostInterface`),
//! the first global IPv4 address of an interface that is up. The kubelet's first choice, a DNS
//! lookup of the node name, is left out (it blocks, and usually answers a loopback address).

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kubeedge_proto::NodeName;

use crate::Result;

/// `kubeletVersion` of KubeEdge v1.23.1's edged: `<Kubernetes version>-kubeedge-<KubeEdge
/// version>`.
pub const KUBELET_VERSION: &str = "v1.32.10-kubeedge-v1.23.1";
/// Namespace in the resource of node messages (`null/node/<name>`): KubeEdge's marker of a
/// cluster-scoped object, the key under which its cloud also pushes the Node.
pub const NODE_NAMESPACE: &str = "null";
/// Default `maxPods`.
pub const DEFAULT_MAX_PODS: u32 = 110;
/// Default kubelet port in `daemonEndpoints.kubeletEndpoint`.
pub const DEFAULT_KUBELET_PORT: i32 = 10250;
/// Default hard eviction threshold `memory.available` (100 MiB), taken off allocatable memory.
pub const DEFAULT_EVICTION_MEMORY_BYTES: u64 = 100 * 1024 * 1024;
/// Default hard eviction threshold `nodefs.available` (10 %), taken off allocatable storage.
pub const DEFAULT_EVICTION_NODEFS_PERCENT: u8 = 10;
/// How often the status is computed (`nodeStatusUpdateFrequency`).
pub const NODE_STATUS_UPDATE_FREQUENCY: Duration = Duration::from_secs(10);
/// How often an unchanged status is still sent (`nodeStatusReportFrequency`).
pub const NODE_STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(300);
/// Label on every edge node.
pub const LABEL_ROLE_EDGE: &str = "node-role.kubernetes.io/edge";
/// Second role label KubeEdge's edged adds.
pub const LABEL_ROLE_AGENT: &str = "node-role.kubernetes.io/agent";

const KI: u64 = 1024;

/// Facts about the host. Missing facts are empty strings, zero or `None`, never an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// The host name (`/proc/sys/kernel/hostname`).
    pub hostname: String,
    /// `/etc/machine-id`.
    pub machine_id: String,
    /// `/sys/class/dmi/id/product_uuid` (readable by root only; often empty).
    pub system_uuid: String,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_version: String,
    /// `PRETTY_NAME` of `/etc/os-release` (`Linux` without one, as cAdvisor says).
    pub os_image: String,
    /// Go's `GOOS`: `linux`.
    pub operating_system: String,
    /// Go's `GOARCH`: `amd64`, `arm64`, ...
    pub architecture: String,
    /// Logical CPUs (`processor` lines of `/proc/cpuinfo`).
    pub cpus: u32,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub memory_bytes: u64,
    /// Huge pages: page size in bytes to number of pages.
    pub hugepages: BTreeMap<u64, u64>,
    /// Size of the file system of edged's root directory, in bytes.
    pub ephemeral_storage_bytes: Option<u64>,
    /// The host's own address (see the module docs for how it is chosen).
    pub internal_ip: Option<IpAddr>,
}

fn read_trimmed(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl HostInfo {
    /// Gathers the facts of this host; `root_dir` is edged's root directory (for the
    /// `ephemeral-storage` capacity).
    pub fn gather(root_dir: &Path) -> Self {
        let cpus = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .map(|s| count_cpus(&s))
            .filter(|n| *n > 0)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .and_then(|n| u32::try_from(n.get()).ok())
            })
            .unwrap_or(0);
        let memory_bytes = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_mem_total(&s))
            .unwrap_or(0);
        let os_image = fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| parse_pretty_name(&s))
            .unwrap_or_else(|| "Linux".to_owned());
        let ephemeral_storage_bytes = fs_size(root_dir);
        Self {
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            machine_id: read_trimmed("/etc/machine-id"),
            system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            os_image,
            operating_system: go_os(std::env::consts::OS).to_owned(),
            architecture: go_arch(std::env::consts::ARCH).to_owned(),
            cpus,
            memory_bytes,
            hugepages: read_hugepages(Path::new("/sys/kernel/mm/hugepages")),
            ephemeral_storage_bytes,
            internal_ip: host_ipv4().map(IpAddr::V4),
        }
    }
}

/// Size in bytes of the file system holding `path` (`f_blocks * f_frsize`).
// `fsblkcnt_t` and `c_ulong` are narrower than u64 on some targets.
#[allow(clippy::useless_conversion)]
fn fs_size(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(u64::from(s.blocks()).saturating_mul(u64::from(s.fragment_size())))
}

/// Go's `GOOS` for Rust's `std::env::consts::OS`.
pub fn go_os(os: &str) -> &str {
    match os {
        "macos" => "darwin",
        other => other,
    }
}

/// Go's `GOARCH` for Rust's `std::env::consts::ARCH`.
pub fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        "mips" if cfg!(target_endian = "little") => "mipsle",
        other => other,
    }
}

/// Number of `processor` entries in `/proc/cpuinfo` text.
fn count_cpus(cpuinfo: &str) -> u32 {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `MemTotal` of `/proc/meminfo` text, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(KI),
        Some(_) => None,
    }
}

/// `PRETTY_NAME` of `/etc/os-release` text, unquoted.
fn parse_pretty_name(os_release: &str) -> Option<String> {
    let raw = os_release
        .lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))?
        .trim();
    let unquoted = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(raw);
    let value = unquoted.replace("\\\"", "\"").replace("\\\\", "\\");
    (!value.is_empty()).then_some(value)
}

/// Huge page sizes and counts under `/sys/kernel/mm/hugepages`.
fn read_hugepages(dir: &Path) -> BTreeMap<u64, u64> {
    let mut pages = BTreeMap::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(kib) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-"))
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let count = read_trimmed(entry.path().join("nr_hugepages"))
            .parse()
            .unwrap_or(0);
        if let Some(size) = kib.checked_mul(KI) {
            pages.insert(size, count);
        }
    }
    pages
}

/// The interface of the default route in `/proc/net/route` text (lowest metric).
fn default_route_interface(route: &str) -> Option<String> {
    route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (iface, dest, flags, metric) = (*f.first()?, *f.get(1)?, *f.get(3)?, *f.get(6)?);
            let up = u32::from_str_radix(flags, 16).ok()? & 0x1 != 0;
            (dest == "00000000" && up).then(|| (metric.parse::<u64>().unwrap_or(u64::MAX), iface))
        })
        .min()
        .map(|(_, iface)| iface.to_owned())
}

fn usable_ipv4(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_link_local() || ip.is_broadcast())
}

/// The host's IPv4 address: that of the default route's interface, else the first usable one of
/// an interface that is up.
fn host_ipv4() -> Option<Ipv4Addr> {
    use nix::net::if_::InterfaceFlags;
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| {
            let ip = a.address.as_ref()?.as_sockaddr_in()?.ip();
            usable_ipv4(ip).then_some((a.interface_name, ip))
        })
        .collect();
    let default_if = fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|r| default_route_interface(&r));
    default_if
        .and_then(|i| addrs.iter().find(|(n, _)| *n == i).map(|(_, ip)| *ip))
        .or_else(|| addrs.first().map(|(_, ip)| *ip))
}

/// How edged registers and reports its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Node name (edgecore's `hostnameOverride`); also the `kubernetes.io/hostname` label and
    /// the `Hostname` address, as KubeEdge passes it to the kubelet as its hostname.
    pub name: NodeName,
    /// `containerRuntimeVersion`, from the runtime: `containerd://1.6.20`.
    pub container_runtime_version: String,
    /// `kubeletVersion` (default [`KUBELET_VERSION`]).
    pub kubelet_version: String,
    /// `maxPods` (default 110).
    pub max_pods: u32,
    /// Use this `InternalIP` instead of the detected one.
    pub node_ip: Option<IpAddr>,
    /// Extra labels (`nodeLabels`); they override the defaults.
    pub labels: BTreeMap<String, String>,
    /// `registerSchedulable` (default true); false sets `unschedulable` and its taint.
    pub register_schedulable: bool,
    /// Port in `daemonEndpoints.kubeletEndpoint` (default 10250).
    pub kubelet_port: i32,
    /// Memory kept off allocatable (default 100 MiB, the kubelet's hard eviction threshold).
    pub eviction_memory_bytes: u64,
    /// Percent of `ephemeral-storage` kept off allocatable (default 10).
    pub eviction_nodefs_percent: u8,
}

impl NodeConfig {
    /// A config with the defaults for node `name` on a runtime reporting
    /// `container_runtime_version` (`<runtime>://<version>`).
    pub fn new(name: NodeName, container_runtime_version: impl Into<String>) -> Self {
        Self {
            name,
            container_runtime_version: container_runtime_version.into(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            max_pods: DEFAULT_MAX_PODS,
            node_ip: None,
            labels: BTreeMap::new(),
            register_schedulable: true,
            kubelet_port: DEFAULT_KUBELET_PORT,
            eviction_memory_bytes: DEFAULT_EVICTION_MEMORY_BYTES,
            eviction_nodefs_percent: DEFAULT_EVICTION_NODEFS_PERCENT,
        }
    }
}

/// What the sync loop knows about the node's health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeHealth {
    /// Why the node is not ready (the runtime is down, ...); `None`: ready.
    pub not_ready: Option<String>,
    /// Memory is short.
    pub memory_pressure: bool,
    /// Disk is short.
    pub disk_pressure: bool,
    /// Process ids are short.
    pub pid_pressure: bool,
}

/// The resource of node registration messages: `null/node/<name>`.
pub fn node_resource(node_name: &str) -> String {
    format!("{NODE_NAMESPACE}/node/{node_name}")
}

/// The resource of node status patches: `null/nodepatch/<name>`.
pub fn nodepatch_resource(node_name: &str) -> String {
    format!("{NODE_NAMESPACE}/nodepatch/{node_name}")
}

/// A byte count as Kubernetes formats a binary-SI quantity: the largest of `Ki`..`Ei` that
/// divides it, else plain bytes (`16303412Ki`, `2Mi`, `1536`, `0`).
pub fn binary_quantity(bytes: u64) -> Quantity {
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes == 0 {
        return Quantity("0".into());
    }
    let mut value = bytes;
    let mut suffix = "";
    for s in SUFFIXES {
        if !value.is_multiple_of(KI) {
            break;
        }
        value /= KI;
        suffix = s;
    }
    Quantity(format!("{value}{suffix}"))
}

fn hugepage_resource(page_bytes: u64) -> String {
    format!("hugepages-{}", binary_quantity(page_bytes).0)
}

/// The labels edged registers with: the kubelet's defaults, the edge role labels, then
/// `config.labels`.
pub fn node_labels(config: &NodeConfig, host: &HostInfo) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), config.name.to_string()),
        ("kubernetes.io/os".to_owned(), host.operating_system.clone()),
        ("kubernetes.io/arch".to_owned(), host.architecture.clone()),
        (
            "beta.kubernetes.io/os".to_owned(),
            host.operating_system.clone(),
        ),
        (
            "beta.kubernetes.io/arch".to_owned(),
            host.architecture.clone(),
        ),
        (LABEL_ROLE_EDGE.to_owned(), String::new()),
        (LABEL_ROLE_AGENT.to_owned(), String::new()),
    ]);
    labels.extend(config.labels.clone());
    labels
}

/// The Node edged registers (`insert` on [`node_resource`]).
pub fn node_object(config: &NodeConfig, host: &HostInfo, health: &NodeHealth, now: Time) -> Node {
    let spec = (!config.register_schedulable).then(|| NodeSpec {
        unschedulable: Some(true),
        taints: Some(vec![Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    Node {
        metadata: ObjectMeta {
            name: Some(config.name.to_string()),
            labels: Some(node_labels(config, host)),
            ..Default::default()
        },
        spec: Some(spec.unwrap_or_default()),
        status: Some(node_status(config, host, health, None, now)),
    }
}

fn condition(
    type_: &str,
    bad: bool,
    (good_reason, good_message): (&str, &str),
    (bad_reason, bad_message): (&str, &str),
    previous: Option<&NodeStatus>,
    now: &Time,
) -> NodeCondition {
    let status = if type_ == "Ready" {
        if bad { "False" } else { "True" }
    } else if bad {
        "True"
    } else {
        "False"
    };
    let (reason, message) = if bad {
        (bad_reason, bad_message)
    } else {
        (good_reason, good_message)
    };
    let transition = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(transition),
    }
}

/// The node's status at `now`. `previous` (the last status sent) keeps each condition's
/// `lastTransitionTime` while its status does not change.
pub fn node_status(
    config: &NodeConfig,
    host: &HostInfo,
    health: &NodeHealth,
    previous: Option<&NodeStatus>,
    now: Time,
) -> NodeStatus {
    let mut capacity = BTreeMap::new();
    let mut allocatable = BTreeMap::new();
    let cpus = Quantity(host.cpus.to_string());
    capacity.insert("cpu".to_owned(), cpus.clone());
    allocatable.insert("cpu".to_owned(), cpus);
    let pods = Quantity(config.max_pods.to_string());
    capacity.insert("pods".to_owned(), pods.clone());
    allocatable.insert("pods".to_owned(), pods);
    capacity.insert("memory".to_owned(), binary_quantity(host.memory_bytes));
    let mut hugepage_bytes = 0u64;
    for (size, count) in &host.hugepages {
        let bytes = size.saturating_mul(*count);
        hugepage_bytes = hugepage_bytes.saturating_add(bytes);
        capacity.insert(hugepage_resource(*size), binary_quantity(bytes));
        allocatable.insert(hugepage_resource(*size), binary_quantity(bytes));
    }
    let memory = host
        .memory_bytes
        .saturating_sub(config.eviction_memory_bytes)
        .saturating_sub(hugepage_bytes);
    allocatable.insert("memory".to_owned(), binary_quantity(memory));
    if let Some(storage) = host.ephemeral_storage_bytes {
        capacity.insert("ephemeral-storage".to_owned(), binary_quantity(storage));
        let percent = u128::from(config.eviction_nodefs_percent.min(100));
        let reserved = u64::try_from(u128::from(storage) * percent / 100).unwrap_or(storage);
        allocatable.insert(
            "ephemeral-storage".to_owned(),
            binary_quantity(storage - reserved),
        );
    }

    let mut addresses = Vec::new();
    if let Some(ip) = config.node_ip.or(host.internal_ip) {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: config.name.to_string(),
    });

    let not_ready = health.not_ready.as_deref();
    let conditions = vec![
        condition(
            "MemoryPressure",
            health.memory_pressure,
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            previous,
            &now,
        ),
        condition(
            "DiskPressure",
            health.disk_pressure,
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            previous,
            &now,
        ),
        condition(
            "PIDPressure",
            health.pid_pressure,
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            previous,
            &now,
        ),
        condition(
            "Ready",
            not_ready.is_some(),
            ("KubeletReady", "kubelet is posting ready status"),
            ("KubeletNotReady", not_ready.unwrap_or_default()),
            previous,
            &now,
        ),
    ];

    NodeStatus {
        addresses: Some(addresses),
        allocatable: Some(allocatable),
        capacity: Some(capacity),
        conditions: Some(conditions),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: config.kubelet_port,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: host.architecture.clone(),
            boot_id: host.boot_id.clone(),
            container_runtime_version: config.container_runtime_version.clone(),
            kernel_version: host.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: config.kubelet_version.clone(),
            machine_id: host.machine_id.clone(),
            operating_system: host.operating_system.clone(),
            os_image: host.os_image.clone(),
            swap: None,
            system_uuid: host.system_uuid.clone(),
        }),
        ..Default::default()
    }
}

/// The content of a `patch` on [`nodepatch_resource`]: `{"status":{...}}` as a JSON string, a
/// strategic merge patch of the Node (the full status; conditions and addresses merge by
/// `type`).
pub fn node_status_patch(status: &NodeStatus) -> Result<String> {
    Ok(serde_json::to_string(
        &serde_json::json!({ "status": status }),
    )?)
}

/// Whether `new` differs from `old` in more than the conditions' `lastHeartbeatTime` (the
/// kubelet sends an unchanged status only every [`NODE_STATUS_REPORT_FREQUENCY`]).
pub fn status_changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    fn without_heartbeats(s: &NodeStatus) -> NodeStatus {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    }
    without_heartbeats(old) != without_heartbeats(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::{Value, json};

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn host() -> HostInfo {
        HostInfo {
            hostname: "edge-host".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            system_uuid: String::new(),
            boot_id: "9d5f0c1e-0c5a-4a53-9c57-2f0b3d8e4a11".into(),
            kernel_version: "6.1.0-26-amd64".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            operating_system: "linux".into(),
            architecture: "amd64".into(),
            cpus: 2,
            memory_bytes: 16_303_412 * 1024,
            hugepages: BTreeMap::from([(2 * 1024 * 1024, 0), (1024 * 1024 * 1024, 0)]),
            ephemeral_storage_bytes: Some(102_687_672 * 1024),
            internal_ip: Some("192.0.2.10".parse().unwrap()),
        }
    }

    /// The Node of KubeEdge v1.22.2's edged (the kubelet of Kubernetes v1.32 with KubeEdge's
    /// labels) for the host above, as JSON.
    fn expected_node() -> Value {
        let t = "2026-11-23T04:30:00Z";
        let cond = |type_: &str, status: &str, reason: &str, message: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": t, "lastTransitionTime": t})
        };
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "ke-edge-test",
                "labels": {
                    "beta.kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/hostname": "ke-edge-test",
                    "kubernetes.io/os": "linux",
                    "node-role.kubernetes.io/agent": "",
                    "node-role.kubernetes.io/edge": ""
                }
            },
            "spec": {},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "192.0.2.10"},
                    {"type": "Hostname", "address": "ke-edge-test"}
                ],
                "capacity": {
                    "cpu": "2",
                    "ephemeral-storage": "102687672Ki",
                    "hugepages-1Gi": "0",
                    "hugepages-2Mi": "0",
                    "memory": "16303412Ki",
                    "pods": "110"
                },
                "allocatable": {
                    "cpu": "2",
                    "ephemeral-storage": "94636958516",
                    "hugepages-1Gi": "0",
                    "hugepages-2Mi": "0",
                    "memory": "16201012Ki",
                    "pods": "110"
                },
                "conditions": [
                    cond("MemoryPressure", "False", "KubeletHasSufficientMemory",
                         "kubelet has sufficient memory available"),
                    cond("DiskPressure", "False", "KubeletHasNoDiskPressure",
                         "kubelet has no disk pressure"),
                    cond("PIDPressure", "False", "KubeletHasSufficientPID",
                         "kubelet has sufficient PID available"),
                    cond("Ready", "True", "KubeletReady", "kubelet is posting ready status")
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": "9d5f0c1e-0c5a-4a53-9c57-2f0b3d8e4a11",
                    "containerRuntimeVersion": "containerd://1.6.20",
                    "kernelVersion": "6.1.0-26-amd64",
                    "kubeProxyVersion": "",
                    "kubeletVersion": "v1.32.10-kubeedge-v1.23.1",
                    "machineID": "0123456789abcdef0123456789abcdef",
                    "operatingSystem": "linux",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "systemUUID": ""
                }
            }
        })
    }

    const NOW: i64 = 1_795_408_200; // 2026-11-23T04:30:00Z, the capture's day

    #[test]
    fn node_object_has_the_kubeedge_shape() {
        let config = NodeConfig::new(
            NodeName::new("ke-edge-test").unwrap(),
            "containerd://1.6.20",
        );
        let node = node_object(&config, &host(), &NodeHealth::default(), at(NOW));
        let got = serde_json::to_value(&node).unwrap();
        assert_eq!(
            got,
            expected_node(),
            "{}",
            serde_json::to_string_pretty(&got).unwrap()
        );
        // And it reads back as a Node.
        let back: Node = serde_json::from_value(got).unwrap();
        assert_eq!(back, node);
        assert_eq!(node_resource("ke-edge-test"), "null/node/ke-edge-test");
        assert_eq!(
            nodepatch_resource("ke-edge-test"),
            "null/nodepatch/ke-edge-test"
        );
    }

    #[test]
    fn patch_content_is_a_status_patch_string() {
        let config = NodeConfig::new(NodeName::new("n1").unwrap(), "containerd://1.6.20");
        let status = node_status(&config, &host(), &NodeHealth::default(), None, at(NOW));
        let patch = node_status_patch(&status).unwrap();
        let v: Value = serde_json::from_str(&patch).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["status"]);
        assert_eq!(
            v["status"],
            expected_node()["status"].clone().tap_hostname("n1")
        );
    }

    trait TapHostname {
        fn tap_hostname(self, name: &str) -> Self;
    }

    impl TapHostname for Value {
        fn tap_hostname(mut self, name: &str) -> Self {
            self["addresses"][1]["address"] = Value::String(name.into());
            self
        }
    }

    #[test]
    fn transitions_keep_their_time_and_not_ready_says_why() {
        let config = NodeConfig::new(NodeName::new("n1").unwrap(), "containerd://1.6.20");
        let first = node_status(&config, &host(), &NodeHealth::default(), None, at(NOW));
        let later = node_status(
            &config,
            &host(),
            &NodeHealth::default(),
            Some(&first),
            at(NOW + 10),
        );
        let ready = |s: &NodeStatus| s.conditions.as_ref().unwrap()[3].clone();
        assert_eq!(ready(&later).last_transition_time, Some(at(NOW)));
        assert_eq!(ready(&later).last_heartbeat_time, Some(at(NOW + 10)));
        assert!(!status_changed(&first, &later));

        let down = NodeHealth {
            not_ready: Some("container runtime is down".into()),
            disk_pressure: true,
            ..Default::default()
        };
        let bad = node_status(&config, &host(), &down, Some(&later), at(NOW + 20));
        let r = ready(&bad);
        assert_eq!(r.type_, "Ready");
        assert_eq!(r.status, "False");
        assert_eq!(r.reason.as_deref(), Some("KubeletNotReady"));
        assert_eq!(r.message.as_deref(), Some("container runtime is down"));
        assert_eq!(r.last_transition_time, Some(at(NOW + 20)));
        let disk = &bad.conditions.as_ref().unwrap()[1];
        assert_eq!(
            (disk.status.as_str(), disk.reason.as_deref()),
            ("True", Some("KubeletHasDiskPressure"))
        );
        assert!(status_changed(&later, &bad));
    }

    #[test]
    fn config_overrides() {
        let mut config = NodeConfig::new(NodeName::new("n1").unwrap(), "containerd://1.7.0");
        config.node_ip = Some("198.51.100.7".parse().unwrap());
        config.max_pods = 20;
        config.register_schedulable = false;
        config
            .labels
            .insert("kubernetes.io/hostname".into(), "custom".into());
        config.labels.insert("zone".into(), "a".into());
        let mut h = host();
        h.ephemeral_storage_bytes = None;
        h.internal_ip = None;
        h.hugepages = BTreeMap::from([(2 * 1024 * 1024, 512)]);
        let node = node_object(&config, &h, &NodeHealth::default(), at(NOW));
        let v = serde_json::to_value(&node).unwrap();
        assert_eq!(v["status"]["addresses"][0]["address"], "198.51.100.7");
        assert_eq!(v["status"]["capacity"]["pods"], "20");
        assert_eq!(v["status"]["capacity"]["hugepages-2Mi"], "1Gi");
        assert_eq!(v["status"]["allocatable"]["memory"], "15152436Ki");
        assert!(v["status"]["capacity"].get("ephemeral-storage").is_none());
        assert_eq!(v["spec"]["unschedulable"], true);
        assert_eq!(
            v["spec"]["taints"][0]["key"],
            "node.kubernetes.io/unschedulable"
        );
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/hostname"], "custom");
        assert_eq!(v["metadata"]["labels"]["zone"], "a");

        h.internal_ip = None;
        config.node_ip = None;
        let s = node_status(&config, &h, &NodeHealth::default(), None, at(NOW));
        let addrs = s.addresses.unwrap();
        assert_eq!(addrs.len(), 1);
        assert_eq!(addrs[0].type_, "Hostname");
    }

    #[test]
    fn quantities_format_like_kubernetes() {
        let q = |b: u64| binary_quantity(b).0;
        assert_eq!(q(0), "0");
        assert_eq!(q(1023), "1023");
        assert_eq!(q(1024), "1Ki");
        assert_eq!(q(1536), "1536");
        assert_eq!(q(2 * 1024 * 1024), "2Mi");
        assert_eq!(q(1024 * 1024 * 1024), "1Gi");
        assert_eq!(q(16_303_412 * 1024), "16303412Ki");
        assert_eq!(hugepage_resource(2 * 1024 * 1024), "hugepages-2Mi");
    }

    #[test]
    fn parsers() {
        assert_eq!(
            count_cpus("processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\n"),
            2
        );
        assert_eq!(
            parse_mem_total("MemTotal:       16303412 kB\nMemFree: 1 kB\n"),
            Some(16_303_412 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(
            parse_pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
                .as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(parse_pretty_name("PRETTY_NAME=\"\"\n"), None);
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                     eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     eth0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\n"), None);
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_os("linux"), "linux");
        assert!(!usable_ipv4("127.0.0.1".parse().unwrap()));
        assert!(!usable_ipv4("169.254.1.1".parse().unwrap()));
        assert!(usable_ipv4("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn hugepages_from_a_sysfs_like_tree() {
        let tmp = tempfile::tempdir().unwrap();
        for (dir, n) in [("hugepages-2048kB", "16\n"), ("hugepages-1048576kB", "0\n")] {
            fs::create_dir(tmp.path().join(dir)).unwrap();
            fs::write(tmp.path().join(dir).join("nr_hugepages"), n).unwrap();
        }
        fs::create_dir(tmp.path().join("other")).unwrap();
        assert_eq!(
            read_hugepages(tmp.path()),
            BTreeMap::from([(2 * 1024 * 1024, 16), (1024 * 1024 * 1024, 0)])
        );
        assert!(read_hugepages(&tmp.path().join("missing")).is_empty());
    }

    #[test]
    fn gather_reads_this_host() {
        let tmp = tempfile::tempdir().unwrap();
        let h = HostInfo::gather(tmp.path());
        assert!(h.cpus > 0);
        assert!(h.memory_bytes > 0);
        assert!(!h.kernel_version.is_empty());
        assert!(!h.os_image.is_empty());
        assert_eq!(h.operating_system, "linux");
        assert!(h.ephemeral_storage_bytes.is_some_and(|b| b > 0));
        if let Some(ip) = h.internal_ip {
            assert!(!ip.is_loopback());
        }
    }
}
