//! From a Kubernetes Pod to what the runtime is asked for: the sandbox, each container's
//! configuration (command, arguments, environment with values from ConfigMaps, Secrets and the
//! pod's own fields, resource limits), and the labels that find them again after a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

use crate::quantity;
use crate::runtime::{
    ContainerConfig, LABEL_CONTAINER_HASH, LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_NAME,
    LABEL_POD_NAMESPACE, LABEL_POD_UID, LinuxResources, Mount, PortMapping, SandboxConfig,
};
use crate::{Error, Result};

/// CFS period the kubelet uses (100 ms).
const CPU_PERIOD_US: i64 = 100_000;

/// A pod's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

impl PodRef {
    /// Reads the identity from `pod`'s metadata; a pod without name or uid is refused.
    pub fn of(pod: &Pod) -> Result<Self> {
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        if name.is_empty() || uid.is_empty() {
            return Err(Error::Spec(
                "pod without metadata.name or metadata.uid".into(),
            ));
        }
        Ok(Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name,
            uid,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_POD_NAME.to_owned(), self.name.clone()),
            (LABEL_POD_NAMESPACE.to_owned(), self.namespace.clone()),
            (LABEL_POD_UID.to_owned(), self.uid.clone()),
        ])
    }
}

/// The ConfigMaps and Secrets of a pod's namespace that its containers and volumes may use.
#[derive(Clone, Debug, Default)]
pub struct PodObjects {
    /// ConfigMaps by name.
    pub configmaps: HashMap<String, ConfigMap>,
    /// Secrets by name.
    pub secrets: HashMap<String, Secret>,
}

/// Whether the pod shares the host's network.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The sandbox configuration for `pod`'s `attempt`-th sandbox, logging under `log_root`.
pub fn sandbox_config(pod: &Pod, attempt: u32, log_root: &Path) -> Result<SandboxConfig> {
    let id = PodRef::of(pod)?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Error::Spec("pod without spec".into()))?;
    let host_network = host_network(pod);
    let hostname = if host_network {
        // The runtime cannot set a hostname without a private UTS namespace.
        String::new()
    } else {
        spec.hostname.clone().unwrap_or_else(|| id.name.clone())
    };
    let mut port_mappings = Vec::new();
    for container in &spec.containers {
        for port in container.ports.iter().flatten() {
            let host_port = port.host_port.unwrap_or(0);
            if host_port == 0 {
                continue;
            }
            port_mappings.push(PortMapping {
                protocol: port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                container_port: port_u16(port.container_port)?,
                host_port: port_u16(host_port)?,
                host_ip: port.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    let dns = spec.dns_config.as_ref();
    let mut labels = id.labels();
    if let Some(node) = spec.node_name.as_ref() {
        labels.insert(LABEL_NODE.to_owned(), node.clone());
    }
    for (k, v) in pod.metadata.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Ok(SandboxConfig {
        name: id.name.clone(),
        namespace: id.namespace.clone(),
        uid: id.uid.clone(),
        attempt,
        hostname,
        host_network,
        log_directory: log_root.join(format!("{}_{}_{}", id.namespace, id.name, id.uid)),
        labels,
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        port_mappings,
        dns_servers: dns.and_then(|d| d.nameservers.clone()).unwrap_or_default(),
        dns_searches: dns.and_then(|d| d.searches.clone()).unwrap_or_default(),
        cgroup_parent: String::new(),
    })
}

fn port_u16(port: i32) -> Result<u16> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::Spec(format!("port {port} is out of range")))
}

/// Values the pod's `fieldRef`s may name, known only at run time.
#[derive(Clone, Debug, Default)]
pub struct RuntimeFields {
    /// `spec.nodeName`.
    pub node_name: String,
    /// `status.podIP`.
    pub pod_ip: String,
    /// `status.hostIP`.
    pub host_ip: String,
}

/// The configuration of `container` (attempt `attempt`) of `pod`, with `mounts` already
/// materialised. A missing ConfigMap, Secret or key the environment needs is an error whose
/// text ends up in the container's `CreateContainerConfigError` status.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    attempt: u32,
    objects: &PodObjects,
    fields: &RuntimeFields,
    mounts: Vec<Mount>,
) -> Result<ContainerConfig> {
    let id = PodRef::of(pod)?;
    let env = environment(pod, &id, container, objects, fields)?;
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |items: &Option<Vec<String>>| -> Vec<String> {
        items.iter().flatten().map(|s| expand(s, &lookup)).collect()
    };
    let mut labels = id.labels();
    labels.insert(LABEL_CONTAINER_NAME.to_owned(), container.name.clone());
    labels.insert(LABEL_CONTAINER_HASH.to_owned(), spec_hash(container));
    let image = container
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Error::Spec(format!("container {:?} has no image", container.name)))?;
    Ok(ContainerConfig {
        name: container.name.clone(),
        attempt,
        image,
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        env,
        mounts,
        labels,
        annotations: BTreeMap::new(),
        log_path: format!("{}/{attempt}.log", container.name),
        resources: resources(container)?,
    })
}

/// The container's environment in Kubernetes order: `envFrom` sources first, then `env`, later
/// entries replacing earlier ones of the same name, `$(VAR)` references expanded against what
/// came before.
fn environment(
    pod: &Pod,
    id: &PodRef,
    container: &Container,
    objects: &PodObjects,
    fields: &RuntimeFields,
) -> Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(slot) = env.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = value;
        } else {
            env.push((name, value));
        }
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.config_map_ref {
            match objects.configmaps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(Error::Spec(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &source.secret_ref {
            match objects.secrets.get(&r.name) {
                Some(secret) => {
                    for (k, v) in secret.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), utf8(&v.0, k)?);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(Error::Spec(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let lookup: HashMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                expand(var.value.as_deref().unwrap_or(""), &lookup)
            }
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let value = objects
                        .configmaps
                        .get(&r.name)
                        .and_then(|cm| cm.data.as_ref()?.get(&r.key).cloned());
                    match value {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(Error::Spec(format!(
                                "configmap {:?} has no key {:?} (or does not exist)",
                                r.name, r.key
                            )));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let value = objects
                        .secrets
                        .get(&r.name)
                        .and_then(|s| s.data.as_ref()?.get(&r.key).cloned());
                    match value {
                        Some(v) => utf8(&v.0, &r.key)?,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(Error::Spec(format!(
                                "secret {:?} has no key {:?} (or does not exist)",
                                r.name, r.key
                            )));
                        }
                    }
                } else if let Some(r) = &from.field_ref {
                    field_value(pod, id, &r.field_path, fields)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(container, &r.resource)?
                } else {
                    return Err(Error::Spec(format!("env {:?}: empty valueFrom", var.name)));
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

fn utf8(bytes: &[u8], key: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Spec(format!("secret key {key:?} is not UTF-8 text")))
}

fn field_value(pod: &Pod, id: &PodRef, path: &str, fields: &RuntimeFields) -> Result<String> {
    let meta = &pod.metadata;
    Ok(match path {
        "metadata.name" => id.name.clone(),
        "metadata.namespace" => id.namespace.clone(),
        "metadata.uid" => id.uid.clone(),
        "spec.nodeName" => fields.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => fields.pod_ip.clone(),
        "status.hostIP" => fields.host_ip.clone(),
        other => {
            let label = other
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
                .map(|k| meta.labels.as_ref().and_then(|l| l.get(k)));
            let annotation = other
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
                .map(|k| meta.annotations.as_ref().and_then(|a| a.get(k)));
            match label.or(annotation) {
                Some(value) => value.cloned().unwrap_or_default(),
                None => return Err(Error::Spec(format!("fieldRef {other:?} is not supported"))),
            }
        }
    })
}

fn resource_field(container: &Container, resource: &str) -> Result<String> {
    let res = container.resources.as_ref();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", name)) => (res.and_then(|r| r.limits.as_ref()), name),
        Some(("requests", name)) => (res.and_then(|r| r.requests.as_ref()), name),
        _ => {
            return Err(Error::Spec(format!(
                "resourceFieldRef {resource:?} is not supported"
            )));
        }
    };
    let value = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    Ok(match (name, value) {
        // Kubernetes exposes CPU rounded up to whole cores, memory in bytes.
        ("cpu", Some(q)) => ((quantity::millicores(&q)? + 999) / 1000).to_string(),
        (_, Some(q)) => quantity::bytes(&q)?.to_string(),
        (_, None) => "0".to_owned(),
    })
}

/// The container's CPU and memory limits in the runtime's units, as the kubelet computes them.
fn resources(container: &Container) -> Result<LinuxResources> {
    let mut out = LinuxResources::default();
    let Some(res) = &container.resources else {
        return Ok(out);
    };
    let get =
        |map: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
         name: &str| map.as_ref().and_then(|m| m.get(name)).map(|q| q.0.clone());
    let cpu_request = get(&res.requests, "cpu").or_else(|| get(&res.limits, "cpu"));
    if let Some(cpu) = cpu_request {
        out.cpu_shares = (quantity::millicores(&cpu)? * 1024 / 1000).max(2);
    }
    if let Some(cpu) = get(&res.limits, "cpu") {
        out.cpu_period = CPU_PERIOD_US;
        out.cpu_quota = (quantity::millicores(&cpu)? * CPU_PERIOD_US / 1000).max(1000);
    }
    if let Some(memory) = get(&res.limits, "memory") {
        out.memory_limit_bytes = quantity::bytes(&memory)?;
    }
    Ok(out)
}

/// A stable hash (FNV-1a, hex) of the container's spec as JSON: the same spec gives the same
/// hash in every edged version, so an upgrade does not restart containers.
pub fn spec_hash(container: &Container) -> String {
    let json = serde_json::to_vec(container).unwrap_or_default();
    let hash = json.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Expands `$(NAME)` from `env`; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(text: &str, env: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(open) = after.strip_prefix('(') {
            match open.find(')') {
                Some(close) => {
                    let name = &open[..close];
                    match env.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &open[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = open;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn expands_references_like_kubernetes() {
        let env = HashMap::from([("A", "1"), ("B", "two")]);
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$$(A) $(C) $(", &env), "$(A) $(C) $(");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn builds_the_environment_from_every_source() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
            "spec": {"containers": [{
                "name": "c", "image": "img",
                "command": ["sh", "-c", "echo $(GREETING)"],
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "GREETING", "value": "hi $(CM_k)"},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "none", "key": "k", "optional": true}}}
                ],
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}
            }]}
        }));
        let mut objects = PodObjects::default();
        objects.configmaps.insert(
            "cm".into(),
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "cm"}, "data": {"k": "v"}}),
            )
            .unwrap(),
        );
        objects.secrets.insert(
            "sec".into(),
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "sec"}, "data": {"pw": "c2VjcmV0"}}),
            )
            .unwrap(),
        );
        let fields = RuntimeFields {
            pod_ip: "10.0.0.5".into(),
            ..RuntimeFields::default()
        };
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let config = container_config(&pod, container, 2, &objects, &fields, Vec::new()).unwrap();
        let env: HashMap<_, _> = config.env.iter().cloned().collect();
        assert_eq!(env["CM_k"], "v");
        assert_eq!(env["GREETING"], "hi v");
        assert_eq!(env["S"], "secret");
        assert_eq!(env["POD"], "p");
        assert_eq!(env["APP"], "a");
        assert_eq!(env["IP"], "10.0.0.5");
        assert!(!env.contains_key("OPT"));
        assert_eq!(config.command, ["sh", "-c", "echo hi v"]);
        assert_eq!(config.attempt, 2);
        assert_eq!(config.labels[LABEL_POD_UID], "u1");
        assert_eq!(config.labels[LABEL_CONTAINER_NAME], "c");
        assert_eq!(config.resources.cpu_quota, 50_000);
        assert_eq!(config.resources.cpu_period, 100_000);
        assert_eq!(config.resources.cpu_shares, 512);
        assert_eq!(config.resources.memory_limit_bytes, 64 << 20);
    }

    #[test]
    fn a_missing_configmap_key_is_a_clear_error() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "k"}}}
            ]}]}
        }));
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let err = container_config(
            &pod,
            container,
            0,
            &PodObjects::default(),
            &RuntimeFields::default(),
            Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("configmap \"later\""), "{err}");
    }

    #[test]
    fn host_network_sandboxes_have_no_hostname() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "i",
                "ports": [{"containerPort": 80, "hostPort": 8080}]}]}
        }));
        let config = sandbox_config(&pod, 1, Path::new("/logs")).unwrap();
        assert!(config.host_network);
        assert_eq!(config.hostname, "");
        assert_eq!(config.port_mappings[0].host_port, 8080);
        assert_eq!(config.log_directory, Path::new("/logs/ns_p_u"));
    }
}
