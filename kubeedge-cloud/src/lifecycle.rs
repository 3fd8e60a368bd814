//! Edge node lifecycle: a Node whose Lease lapsed (and that has no session here) is marked
//! unreachable the way the node lifecycle controller of Kubernetes does it: every condition
//! `Unknown`, reason `NodeStatusUnknown`.

use std::collections::HashSet;

use kubeedge_proto::parse_rfc3339;
use serde_json::{Value, json};

use crate::downstream::Downstream;
use crate::{Kind, NODE_LEASE_NAMESPACE, ObjectKey};

/// The conditions patch that marks a node unreachable, from its current conditions
/// (`Ready` is always included).
pub fn unreachable_patch(node: &Value, now_rfc3339: &str) -> Value {
    let mut types: Vec<String> = node["status"]["conditions"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["type"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if !types.iter().any(|t| t == "Ready") {
        types.insert(0, "Ready".to_owned());
    }
    let conditions: Vec<Value> = types
        .iter()
        .map(|t| {
            let heartbeat = node["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == t.as_str()))
                .and_then(|c| c["lastHeartbeatTime"].as_str())
                .unwrap_or(now_rfc3339);
            json!({
                "type": t,
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": now_rfc3339,
            })
        })
        .collect();
    json!({ "status": { "conditions": conditions } })
}

/// The status of a node's `Ready` condition.
pub fn ready_status(node: &Value) -> Option<&str> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

/// Nodes to mark unreachable now (wall clock `now_secs`, seconds since the epoch): a lease that
/// lapsed more than `grace_secs` ago (at least its own duration), no session here, Ready not
/// already Unknown, not marked already (`marked`, cleared for nodes whose lease is fresh).
pub(crate) fn lapsed_nodes(
    view: &Downstream,
    now_secs: i64,
    grace_secs: i64,
    marked: &mut HashSet<String>,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for node in view.objects(Kind::Node) {
        let name = node.name();
        let lease_key = ObjectKey::new(Kind::Lease, NODE_LEASE_NAMESPACE, name);
        let Some(lease) = view.get(&lease_key) else {
            continue;
        };
        // Leases are small: parsing each at every tick costs a few microseconds a node.
        let lease = lease.to_value();
        let spec = &lease["spec"];
        let Some(renewed) = spec["renewTime"].as_str().and_then(parse_rfc3339) else {
            continue;
        };
        let duration = spec["leaseDurationSeconds"].as_i64().unwrap_or(40);
        if now_secs <= renewed + duration.max(grace_secs) {
            marked.remove(name);
            continue;
        }
        if view.is_connected(name) || marked.contains(name) {
            continue;
        }
        let node_value = node.to_value();
        if ready_status(&node_value) == Some("Unknown") {
            continue;
        }
        marked.insert(name.to_owned());
        out.push((name.to_owned(), node_value));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{Object, ObjectEvent};

    fn view(renew: &str, ready: &str) -> Downstream {
        let mut view = Downstream::new(Duration::ZERO);
        let node = Object::new(
            Kind::Node,
            json!({"metadata": {"name": "n1"}, "status": {"conditions": [
                {"type": "Ready", "status": ready, "lastHeartbeatTime": "2026-11-23T10:00:00Z"},
                {"type": "MemoryPressure", "status": "False"}]}}),
        )
        .unwrap();
        let lease = Object::new(
            Kind::Lease,
            json!({"metadata": {"name": "n1", "namespace": NODE_LEASE_NAMESPACE},
                   "spec": {"renewTime": renew, "leaseDurationSeconds": 40}}),
        )
        .unwrap();
        view.apply(ObjectEvent::Listed {
            kind: Kind::Node,
            objects: vec![node],
        });
        view.apply(ObjectEvent::Listed {
            kind: Kind::Lease,
            objects: vec![lease],
        });
        view
    }

    const RENEWED: i64 = 1_795_428_000; // 2026-11-23T10:00:00Z

    #[test]
    fn a_lapsed_lease_marks_the_node_once() {
        let view = view("2026-11-23T10:00:00.000000Z", "True");
        let mut marked = HashSet::new();
        assert!(lapsed_nodes(&view, RENEWED + 40, 40, &mut marked).is_empty());
        let lapsed = lapsed_nodes(&view, RENEWED + 41, 40, &mut marked);
        assert_eq!(lapsed.len(), 1);
        let patch = unreachable_patch(&lapsed[0].1, "2026-11-23T10:00:41Z");
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2);
        assert!(
            conditions
                .iter()
                .all(|c| c["status"] == "Unknown" && c["reason"] == "NodeStatusUnknown")
        );
        assert_eq!(conditions[0]["lastHeartbeatTime"], "2026-11-23T10:00:00Z");
        // Not again while the patch is on its way.
        assert!(lapsed_nodes(&view, RENEWED + 50, 40, &mut marked).is_empty());
        // A renewed lease clears the mark.
        assert!(lapsed_nodes(&view, RENEWED + 10, 40, &mut marked).is_empty());
        assert!(marked.is_empty());
    }

    #[test]
    fn a_connected_or_already_unknown_node_is_left_alone() {
        let mut marked = HashSet::new();
        let unknown = view("2026-11-23T10:00:00Z", "Unknown");
        assert!(lapsed_nodes(&unknown, RENEWED + 100, 40, &mut marked).is_empty());
        let mut connected = view("2026-11-23T10:00:00Z", "True");
        connected.connected("n1", Instant::now());
        assert!(lapsed_nodes(&connected, RENEWED + 100, 40, &mut marked).is_empty());
        // The grace is at least the lease's own duration.
        let fresh = view("2026-11-23T10:00:00Z", "True");
        assert!(lapsed_nodes(&fresh, RENEWED + 30, 10, &mut marked).is_empty());
    }
}
