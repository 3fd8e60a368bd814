//! Which ConfigMaps, Secrets and DeviceModels an object needs on its node.

use serde_json::Value;

use crate::{Kind, Object, ObjectKey};

/// The objects `object` references that must travel to its node with it: for a Pod the
/// ConfigMaps and Secrets of its volumes (also projected sources), env, envFrom and
/// imagePullSecrets; for a Device its DeviceModel. All in the object's namespace.
///
/// ```
/// use kubeedge_cloud::{Kind, Object, ObjectKey, references};
///
/// let pod = Object::new(Kind::Pod, serde_json::json!({
///     "metadata": {"name": "p", "namespace": "ns"},
///     "spec": {
///         "volumes": [{"name": "v", "configMap": {"name": "cm"}}],
///         "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "s"}}]}],
///     },
/// })).unwrap();
/// let refs = references(&pod);
/// assert!(refs.contains(&ObjectKey::new(Kind::ConfigMap, "ns", "cm")));
/// assert!(refs.contains(&ObjectKey::new(Kind::Secret, "ns", "s")));
/// ```
pub fn references(object: &Object) -> Vec<ObjectKey> {
    object.references().to_vec()
}

/// The references of the object `key` whose JSON is `value` (read once, when an [`Object`] is
/// made).
pub(crate) fn references_in(key: &ObjectKey, value: &Value) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    let ns = key.namespace.as_str();
    let spec = &value["spec"];
    let mut push = |kind: Kind, name: &Value| {
        if let Some(name) = name.as_str().filter(|n| !n.is_empty()) {
            let key = ObjectKey::new(kind, ns, name);
            if !out.contains(&key) {
                out.push(key);
            }
        }
    };
    match key.kind {
        Kind::Pod => {
            for volume in array(&spec["volumes"]) {
                push(Kind::ConfigMap, &volume["configMap"]["name"]);
                push(Kind::Secret, &volume["secret"]["secretName"]);
                for source in array(&volume["projected"]["sources"]) {
                    push(Kind::ConfigMap, &source["configMap"]["name"]);
                    push(Kind::Secret, &source["secret"]["name"]);
                }
            }
            for list in ["initContainers", "containers", "ephemeralContainers"] {
                for container in array(&spec[list]) {
                    for env in array(&container["env"]) {
                        push(
                            Kind::ConfigMap,
                            &env["valueFrom"]["configMapKeyRef"]["name"],
                        );
                        push(Kind::Secret, &env["valueFrom"]["secretKeyRef"]["name"]);
                    }
                    for from in array(&container["envFrom"]) {
                        push(Kind::ConfigMap, &from["configMapRef"]["name"]);
                        push(Kind::Secret, &from["secretRef"]["name"]);
                    }
                }
            }
            for secret in array(&spec["imagePullSecrets"]) {
                push(Kind::Secret, &secret["name"]);
            }
        }
        Kind::Device => push(Kind::DeviceModel, &spec["deviceModelRef"]["name"]),
        _ => {}
    }
    out
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}
