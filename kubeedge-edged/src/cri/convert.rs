//! Mapping between edged's runtime types and the CRI messages, without I/O.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::api;
use crate::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, ContainerStatus, ExecResult, PortMapping,
    SandboxConfig, SandboxInfo, SandboxState, SandboxStatus,
};
use crate::{Error, Result};

/// The most bytes of a runtime-provided text (reason, message, error) that edged keeps.
pub(crate) const MAX_TEXT_LEN: usize = 16 * 1024;
/// The most bytes of each of stdout and stderr of an `ExecSync` that edged keeps.
pub(crate) const MAX_EXEC_OUTPUT: usize = 64 * 1024;

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An owned copy of `s` cut to [`MAX_TEXT_LEN`].
fn bounded(s: String) -> String {
    if s.len() <= MAX_TEXT_LEN {
        s
    } else {
        truncate(&s, MAX_TEXT_LEN).to_owned()
    }
}

/// `bytes` cut to [`MAX_EXEC_OUTPUT`].
fn bounded_output(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(MAX_EXEC_OUTPUT);
    bytes
}

/// A duration in whole seconds, rounded up (the CRI's timeouts are in seconds).
pub(crate) fn ceil_secs(d: Duration) -> i64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn path_str<'a>(path: &'a Path, what: &str) -> Result<&'a str> {
    path.to_str()
        .ok_or_else(|| Error::Spec(format!("{what} {path:?} is not valid UTF-8")))
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn btree(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// The namespaces of a pod and its containers, as the kubelet sets them: the host's network
/// for host-network pods, else the pod's; a PID namespace per container; the pod's IPC.
fn namespace_options(host_network: bool) -> api::NamespaceOption {
    api::NamespaceOption {
        network: if host_network {
            api::NamespaceMode::Node
        } else {
            api::NamespaceMode::Pod
        } as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn port_mapping(p: &PortMapping) -> Result<api::PortMapping> {
    let protocol = match p.protocol.to_ascii_uppercase().as_str() {
        "" | "TCP" => api::Protocol::Tcp,
        "UDP" => api::Protocol::Udp,
        "SCTP" => api::Protocol::Sctp,
        other => {
            return Err(Error::Spec(format!(
                "port {}: protocol {:?} is not TCP, UDP or SCTP",
                p.container_port,
                truncate(other, 64)
            )));
        }
    };
    Ok(api::PortMapping {
        protocol: protocol as i32,
        container_port: i32::from(p.container_port),
        host_port: i32::from(p.host_port),
        host_ip: p.host_ip.clone(),
    })
}

/// The CRI `PodSandboxConfig` of `c`.
///
/// The hostname is left empty for host-network pods whatever `c.hostname` says: runc cannot set a
/// hostname without a private UTS namespace (the kubelet does the same).
pub(crate) fn sandbox_config(c: &SandboxConfig) -> Result<api::PodSandboxConfig> {
    let dns_config =
        (!c.dns_servers.is_empty() || !c.dns_searches.is_empty()).then(|| api::DnsConfig {
            servers: c.dns_servers.clone(),
            searches: c.dns_searches.clone(),
            options: Vec::new(),
        });
    Ok(api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: c.name.clone(),
            uid: c.uid.clone(),
            namespace: c.namespace.clone(),
            attempt: c.attempt,
        }),
        hostname: if c.host_network {
            String::new()
        } else {
            c.hostname.clone()
        },
        log_directory: path_str(&c.log_directory, "log directory")?.to_owned(),
        dns_config,
        port_mappings: c
            .port_mappings
            .iter()
            .map(port_mapping)
            .collect::<Result<_>>()?,
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: c.cgroup_parent.clone(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(c.host_network)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    })
}

/// The CRI `ContainerConfig` of `c`, for a container in the pod `sandbox`.
pub(crate) fn container_config(
    c: &ContainerConfig,
    sandbox: &SandboxConfig,
) -> Result<api::ContainerConfig> {
    let mounts = c
        .mounts
        .iter()
        .map(|m| {
            Ok(api::Mount {
                container_path: m.container_path.clone(),
                host_path: path_str(&m.host_path, "mount host path")?.to_owned(),
                readonly: m.readonly,
                selinux_relabel: false,
                propagation: api::MountPropagation::PropagationPrivate as i32,
                ..Default::default()
            })
        })
        .collect::<Result<_>>()?;
    Ok(api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: c.name.clone(),
            attempt: c.attempt,
        }),
        image: Some(image_spec(&c.image)),
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs: c
            .env
            .iter()
            .map(|(key, value)| api::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts,
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        log_path: c.log_path.clone(),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: c.resources.cpu_period,
                cpu_quota: c.resources.cpu_quota,
                cpu_shares: c.resources.cpu_shares,
                memory_limit_in_bytes: c.resources.memory_limit_bytes,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options(sandbox.host_network)),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

pub(crate) fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    }
}

fn sandbox_state(state: i32) -> SandboxState {
    match api::PodSandboxState::try_from(state) {
        Ok(api::PodSandboxState::SandboxReady) => SandboxState::Ready,
        _ => SandboxState::NotReady,
    }
}

fn container_state(state: i32) -> ContainerState {
    match api::ContainerState::try_from(state) {
        Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
        Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
        Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
        Ok(api::ContainerState::ContainerUnknown) | Err(_) => ContainerState::Unknown,
    }
}

pub(crate) fn sandbox_info(s: api::PodSandbox) -> SandboxInfo {
    let meta = s.metadata.unwrap_or_default();
    SandboxInfo {
        id: s.id,
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        attempt: meta.attempt,
        state: sandbox_state(s.state),
        created_at: s.created_at,
        labels: btree(s.labels),
    }
}

pub(crate) fn sandbox_status(s: api::PodSandboxStatus) -> SandboxStatus {
    SandboxStatus {
        id: s.id,
        state: sandbox_state(s.state),
        ip: s.network.map(|n| n.ip).unwrap_or_default(),
    }
}

pub(crate) fn container_info(c: api::Container) -> ContainerInfo {
    let meta = c.metadata.unwrap_or_default();
    ContainerInfo {
        id: c.id,
        sandbox_id: c.pod_sandbox_id,
        name: meta.name,
        attempt: meta.attempt,
        state: container_state(c.state),
        created_at: c.created_at,
        labels: btree(c.labels),
    }
}

pub(crate) fn container_status(s: api::ContainerStatus) -> ContainerStatus {
    let meta = s.metadata.unwrap_or_default();
    ContainerStatus {
        id: s.id,
        name: meta.name,
        attempt: meta.attempt,
        state: container_state(s.state),
        created_at: s.created_at,
        started_at: s.started_at,
        finished_at: s.finished_at,
        exit_code: s.exit_code,
        reason: bounded(s.reason),
        message: bounded(s.message),
        image: s.image.map(|i| i.image).unwrap_or_default(),
        image_ref: s.image_ref,
    }
}

pub(crate) fn exec_result(r: api::ExecSyncResponse) -> ExecResult {
    ExecResult {
        exit_code: r.exit_code,
        stdout: bounded_output(r.stdout),
        stderr: bounded_output(r.stderr),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::{LinuxResources, Mount};

    fn pod(host_network: bool) -> SandboxConfig {
        SandboxConfig {
            name: "web".into(),
            namespace: "default".into(),
            uid: "uid-1".into(),
            attempt: 2,
            hostname: "web".into(),
            host_network,
            log_directory: PathBuf::from("/var/log/pods/default_web_uid-1"),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            annotations: BTreeMap::from([("a".into(), "b".into())]),
            port_mappings: vec![PortMapping {
                protocol: "udp".into(),
                container_port: 53,
                host_port: 5353,
                host_ip: String::new(),
            }],
            dns_servers: vec!["10.0.0.10".into()],
            dns_searches: vec!["svc.cluster.local".into()],
            cgroup_parent: "/kubepods/pod-uid-1".into(),
        }
    }

    #[test]
    fn sandbox_config_maps_every_field() {
        let c = sandbox_config(&pod(false)).unwrap();
        let meta = c.metadata.unwrap();
        assert_eq!(
            (&*meta.name, &*meta.namespace, &*meta.uid, meta.attempt),
            ("web", "default", "uid-1", 2)
        );
        assert_eq!(c.hostname, "web");
        assert_eq!(c.log_directory, "/var/log/pods/default_web_uid-1");
        assert_eq!(c.labels["app"], "web");
        assert_eq!(c.annotations["a"], "b");
        assert_eq!(c.port_mappings[0].protocol, api::Protocol::Udp as i32);
        assert_eq!(
            (
                c.port_mappings[0].container_port,
                c.port_mappings[0].host_port
            ),
            (53, 5353)
        );
        let dns = c.dns_config.unwrap();
        assert_eq!(dns.servers, ["10.0.0.10"]);
        assert_eq!(dns.searches, ["svc.cluster.local"]);
        let linux = c.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/kubepods/pod-uid-1");
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, api::NamespaceMode::Container as i32);
        assert_eq!(ns.ipc, api::NamespaceMode::Pod as i32);
    }

    #[test]
    fn host_network_sandbox_has_node_network_and_no_hostname() {
        let mut p = pod(true);
        p.dns_servers.clear();
        p.dns_searches.clear();
        let c = sandbox_config(&p).unwrap();
        assert_eq!(c.hostname, "");
        assert!(c.dns_config.is_none());
        let ns = c
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Node as i32);
    }

    #[test]
    fn unknown_protocol_is_a_spec_error() {
        let mut p = pod(false);
        p.port_mappings[0].protocol = "ICMP".into();
        assert!(matches!(sandbox_config(&p), Err(Error::Spec(_))));
    }

    #[test]
    fn container_config_maps_every_field() {
        let c = ContainerConfig {
            name: "app".into(),
            attempt: 1,
            image: "edged.test/busybox:1".into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec!["echo hi".into()],
            working_dir: "/tmp".into(),
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
            mounts: vec![Mount {
                container_path: "/data".into(),
                host_path: PathBuf::from("/srv/data"),
                readonly: true,
            }],
            labels: BTreeMap::from([("l".into(), "v".into())]),
            annotations: BTreeMap::new(),
            log_path: "app/1.log".into(),
            resources: LinuxResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                memory_limit_bytes: 64 << 20,
            },
        };
        let cc = container_config(&c, &pod(true)).unwrap();
        let meta = cc.metadata.unwrap();
        assert_eq!((&*meta.name, meta.attempt), ("app", 1));
        assert_eq!(cc.image.unwrap().image, "edged.test/busybox:1");
        assert_eq!(cc.command, ["sh", "-c"]);
        assert_eq!(cc.args, ["echo hi"]);
        assert_eq!(cc.working_dir, "/tmp");
        let envs: Vec<_> = cc.envs.iter().map(|e| (&*e.key, &*e.value)).collect();
        assert_eq!(envs, [("A", "1"), ("B", "2")]);
        assert_eq!(cc.mounts[0].container_path, "/data");
        assert_eq!(cc.mounts[0].host_path, "/srv/data");
        assert!(cc.mounts[0].readonly);
        assert_eq!(cc.labels["l"], "v");
        assert_eq!(cc.log_path, "app/1.log");
        let linux = cc.linux.unwrap();
        let r = linux.resources.unwrap();
        assert_eq!(
            (
                r.cpu_period,
                r.cpu_quota,
                r.cpu_shares,
                r.memory_limit_in_bytes
            ),
            (100_000, 50_000, 512, 64 << 20)
        );
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Node as i32);
    }

    #[test]
    fn states_map_and_unknown_values_do_not_panic() {
        assert_eq!(
            container_state(api::ContainerState::ContainerExited as i32),
            ContainerState::Exited
        );
        assert_eq!(container_state(99), ContainerState::Unknown);
        assert_eq!(sandbox_state(-1), SandboxState::NotReady);
        assert_eq!(
            sandbox_state(api::PodSandboxState::SandboxReady as i32),
            SandboxState::Ready
        );
    }

    #[test]
    fn responses_are_bounded() {
        let r = exec_result(api::ExecSyncResponse {
            stdout: vec![b'x'; MAX_EXEC_OUTPUT * 2],
            stderr: vec![b'y'; 10],
            exit_code: 1,
        });
        assert_eq!(r.stdout.len(), MAX_EXEC_OUTPUT);
        assert_eq!(r.stderr.len(), 10);
        let s = container_status(api::ContainerStatus {
            message: "é".repeat(MAX_TEXT_LEN),
            ..Default::default()
        });
        assert!(s.message.len() <= MAX_TEXT_LEN);
        assert_eq!(truncate("héllo", 2), "h");
    }

    #[test]
    fn timeouts_round_up_to_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
        assert_eq!(ceil_secs(Duration::MAX), i64::MAX);
    }
}
