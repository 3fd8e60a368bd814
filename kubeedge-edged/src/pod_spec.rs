//! From a Kubernetes Pod to what the runtime is asked for: the sandbox, each container's
//! configuration (command, arguments, environment with values from ConfigMaps, Secrets and the
//! pod's own fields, resource limits), and the labels that find them again after a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, ResourceFieldSelector, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;
use crate::runtime::{
    ContainerConfig, LABEL_CONTAINER_HASH, LABEL_CONTAINER_NAME, LABEL_NODE, LABEL_POD_NAME,
    LABEL_POD_NAMESPACE, LABEL_POD_UID, LinuxResources, Mount, PortMapping, SandboxConfig,
};
use crate::volumes::ObjectLookup;
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

/// The ConfigMaps, Secrets and service-account tokens of a pod's namespace that its
/// containers and volumes may use, and the node's allocatable resources.
#[derive(Clone, Debug, Default)]
pub struct PodObjects {
    /// ConfigMaps by name.
    pub configmaps: HashMap<String, ConfigMap>,
    /// Secrets by name.
    pub secrets: HashMap<String, Secret>,
    /// Tokens the cloud issued, by their store key
    /// ([`TokenSpec::key`](kubeedge_store::tokens::TokenSpec::key)).
    pub tokens: HashMap<String, kubeedge_store::tokens::IssuedToken>,
    /// `status.allocatable` of the cloud's copy of this Node, once known.
    pub allocatable: Option<BTreeMap<String, Quantity>>,
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
                    let allocatable = objects.node_allocatable();
                    resource_field_value(pod, Some(container), r, allocatable.as_ref())
                        .map_err(Error::Spec)?
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
        other => pod_metadata_field(pod, other).map_err(Error::Spec)?,
    })
}

/// Splits `metadata.labels['k']` into `("metadata.labels", "k")`, as the kubelet's
/// `fieldpath.SplitMaybeSubscriptedPath` does.
fn split_subscript(path: &str) -> Option<(&str, &str)> {
    let (map, key) = path.strip_suffix("']")?.split_once("['")?;
    (!map.is_empty()).then_some((map, key))
}

/// The value of a `metadata.*` `fieldPath` as the kubelet renders it
/// (`fieldpath.ExtractFieldPathAsString`): `metadata.name`, `metadata.namespace`, `metadata.uid`,
/// `metadata.labels['k']` and `metadata.annotations['k']` (empty when the key is missing), and the
/// whole `metadata.labels` or `metadata.annotations` as sorted `key="value"` lines, the value
/// quoted as Go's `strconv.Quote` does. Env `fieldRef`s and downwardAPI volumes both use it. The
/// error is the message alone; the caller wraps it.
pub(crate) fn pod_metadata_field(pod: &Pod, path: &str) -> std::result::Result<String, String> {
    let meta = &pod.metadata;
    if let Some((map, key)) = split_subscript(path) {
        let map = match map {
            "metadata.labels" => &meta.labels,
            "metadata.annotations" => &meta.annotations,
            _ => return Err(format!("fieldPath {path:?} does not support subscript")),
        };
        return Ok(map
            .as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        other => return Err(format!("fieldPath {other:?} is not supported")),
    })
}

/// A map as the kubelet's `fieldpath.FormatMap` writes it: `key="value"` per line, sorted by key,
/// no final newline.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let lines: Vec<String> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    lines.join("\n")
}

/// `text` quoted as Go's `strconv.Quote` quotes it: `"` and `\` escaped, `\a \b \f \n \r \t \v`
/// by name, other ASCII control characters as `\xNN`, non-printable non-ASCII characters as
/// `\uNNNN` or `\UNNNNNNNN`; printable characters as they are.
fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            ' '..='~' => out.push(c),
            c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c if go_printable(c) => out.push(c),
            c if u32::from(c) < 0x1_0000 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// Whether Go's `unicode.IsPrint` holds for a non-ASCII `c` (letters, marks, numbers,
/// punctuation, symbols). Rust's `escape_debug` leaves exactly those characters alone (not the
/// separators, control, format, private-use and unassigned ones) when they do not start the
/// string, where it would also escape combining marks.
fn go_printable(c: char) -> bool {
    let mut pair = String::with_capacity(8);
    pair.push('a');
    pair.push(c);
    pair.escape_debug().nth(1) == Some(c)
}

/// The value of a `resourceFieldRef` as the kubelet computes it
/// (`resource.ExtractContainerResourceValue`): `limits.*` and `requests.*` of `cpu`, `memory`,
/// `ephemeral-storage` and `hugepages-<size>`, of the container `selector.containerName` (a
/// container or init container of `pod`) or else `current`, divided by `divisor` (default `1`)
/// and rounded up. An unset limit of `cpu`, `memory` or `ephemeral-storage` is the node's
/// `allocatable` value, as in the kubelet; without `allocatable` it is an error (a wrong number
/// would be worse). An unset request is `0`. Env and downwardAPI volumes both use it; the error is
/// the message alone.
pub(crate) fn resource_field_value(
    pod: &Pod,
    current: Option<&Container>,
    selector: &ResourceFieldSelector,
    allocatable: Option<&BTreeMap<String, Quantity>>,
) -> std::result::Result<String, String> {
    let container = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| format!("container {name:?} not found"))?,
        None => current.ok_or("resourceFieldRef: containerName is required")?,
    };
    let resource = selector.resource.as_str();
    let unsupported = || format!("unsupported container resource {resource:?}");
    let (limits, name) = match resource.split_once('.') {
        Some(("limits", name)) => (true, name),
        Some(("requests", name)) => (false, name),
        _ => return Err(unsupported()),
    };
    let cpu = name == "cpu";
    let defaulted = matches!(name, "cpu" | "memory" | "ephemeral-storage");
    if !defaulted && !name.starts_with("hugepages-") {
        return Err(unsupported());
    }
    let res = container.resources.as_ref();
    let map = if limits {
        res.and_then(|r| r.limits.as_ref())
    } else {
        res.and_then(|r| r.requests.as_ref())
    };
    let value = match map.and_then(|m| m.get(name)) {
        Some(q) => q.0.as_str(),
        None if limits && defaulted => match allocatable.and_then(|a| a.get(name)) {
            Some(q) => q.0.as_str(),
            None => {
                return Err(format!(
                    "{resource} of container {:?} is not set and the node's allocatable {name} \
                     is not known to edged",
                    container.name
                ));
            }
        },
        None => "0",
    };
    let scaled = |text: &str| {
        let parsed = if cpu {
            quantity::millicores(text)
        } else {
            quantity::bytes(text)
        };
        parsed.map_err(|e| match e {
            Error::Spec(m) => m,
            other => other.to_string(),
        })
    };
    let value = scaled(value)?;
    let divisor = match selector.divisor.as_ref().map(|d| d.0.as_str()) {
        Some(d) if !d.trim().is_empty() => scaled(d)?,
        _ => 0,
    };
    // A zero divisor means `1`, as in the kubelet.
    let divisor = match divisor {
        0 if cpu => 1000,
        0 => 1,
        d => d,
    };
    // Both are non-negative (the quantity parser refuses negative values).
    let (value, divisor) = (value.unsigned_abs(), divisor.unsigned_abs());
    Ok(value.div_ceil(divisor).to_string())
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

    #[test]
    fn env_resource_fields_share_the_volume_rules() {
        let pod = pod(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [
                {"name": "app", "image": "i",
                 "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m"}},
                 "env": [
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "SIDE_CPU", "valueFrom": {"resourceFieldRef": {"containerName": "side", "resource": "limits.cpu"}}}
                 ]},
                {"name": "side", "image": "i", "resources": {"limits": {"cpu": "2500m"}},
                 "env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}]}
            ]}
        }));
        let spec = pod.spec.as_ref().unwrap();
        let run = |container: &Container| {
            container_config(
                &pod,
                container,
                0,
                &PodObjects::default(),
                &RuntimeFields::default(),
                Vec::new(),
            )
        };
        let config = run(&spec.containers[0]).unwrap();
        let env: HashMap<_, _> = config.env.iter().cloned().collect();
        assert_eq!(env["MEM_MI"], "128");
        assert_eq!(env["CPU_M"], "100");
        assert_eq!(env["SIDE_CPU"], "3");
        // No memory limit and no node allocatable: an error, not a made-up number.
        let err = run(&spec.containers[1]).unwrap_err();
        assert!(err.to_string().contains("limits.memory"), "{err}");
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\u{7}\u{8}\u{c}\n\r\t\u{b}\0\u{1b}"),
            r#""\a\b\f\n\r\t\v\x00\x1b""#
        );
        assert_eq!(
            go_quote("日本\u{301}\u{a0}\u{2028}"),
            "\"日本\u{301}\\u00a0\\u2028\""
        );
    }
}
