//! What edged takes from a stored Pod (the cloud's JSON, hostile like any input): decoding it,
//! building the sandbox and every container's configuration (environment, `$(VAR)` expansion,
//! resource quantities, ports), what it needs from the cloud, and Kubernetes quantities on
//! their own never panic.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kubeedge_edged::pod_spec::{self, PodObjects, RuntimeFields};
use kubeedge_edged::quantity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = quantity::millicores(text);
        let _ = quantity::bytes(text);
        let env = HashMap::from([("A", "1"), ("B", "$(A)")]);
        let _ = pod_spec::expand(text, &env);
    }
    let Ok(pod) = serde_json::from_slice::<Pod>(data) else {
        return;
    };
    let _ = pod_spec::sandbox_config(&pod, 0, Path::new("/logs"));
    // What the pod asks the cloud for (ConfigMaps, Secrets, service-account tokens).
    let _ = kubeedge_edged::volumes::pod_needs(&pod);
    let objects = PodObjects::default();
    let fields = RuntimeFields::default();
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let _ = pod_spec::container_config(&pod, container, 1, &objects, &fields, Vec::new());
    }
});
