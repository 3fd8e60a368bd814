//! Node isolation: a node may read and write only its own Node and Lease, the Pods bound to it,
//! the ConfigMaps and Secrets those Pods reference and the Devices bound to it. One test per
//! refused request, each answered with `403 Forbidden` in KubeEdge's reply form; and the
//! allowed forms of the same requests, so the refusals are not simply "refuse everything".

use std::time::{Duration, Instant};

use kubeedge_cloud::{Action, Decision, Downstream, Kind, Object, ObjectEvent, decide};
use kubeedge_proto::{Content, Message, ObjectResp};
use serde_json::{Value, json};

const ME: &str = "edge-a";

fn view() -> Downstream {
    let mut down = Downstream::new(Duration::ZERO);
    let pod = |name: &str, node: &str, cm: &str| {
        Object::new(
            Kind::Pod,
            json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "resourceVersion": "1"},
                   "spec": {"nodeName": node, "volumes": [{"name": "v", "configMap": {"name": cm}}],
                            "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": format!("{cm}-secret")}}]}]}}),
        )
        .unwrap()
    };
    let cm = |name: &str| {
        Object::new(Kind::ConfigMap, json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "resourceVersion": "1"}, "data": {}})).unwrap()
    };
    let secret = |name: &str| {
        Object::new(Kind::Secret, json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "resourceVersion": "1"}, "data": {}})).unwrap()
    };
    let device = |name: &str, node: &str| {
        Object::new(Kind::Device, json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"), "resourceVersion": "1"},
                                        "spec": {"nodeName": node, "deviceModelRef": {"name": "m"}}})).unwrap()
    };
    let node = Object::new(
        Kind::Node,
        json!({"metadata": {"name": ME, "uid": "n", "resourceVersion": "1"}}),
    )
    .unwrap();
    let lists = [
        (
            Kind::Pod,
            vec![
                pod("mine", ME, "cm-mine"),
                pod("theirs", "edge-b", "cm-theirs"),
            ],
        ),
        (
            Kind::ConfigMap,
            vec![cm("cm-mine"), cm("cm-theirs"), cm("cm-nobody")],
        ),
        (
            Kind::Secret,
            vec![secret("cm-mine-secret"), secret("cm-theirs-secret")],
        ),
        (
            Kind::Device,
            vec![device("dev-mine", ME), device("dev-theirs", "edge-b")],
        ),
        (Kind::Node, vec![node]),
    ];
    for (kind, objects) in lists {
        down.apply(ObjectEvent::Listed { kind, objects });
    }
    down.connected(ME, Instant::now());
    down.tick(Instant::now());
    down
}

fn msg(source: &str, group: &str, op: &str, resource: &str, content: Content) -> Message {
    Message::new(source, group, op, resource, content)
}

fn object(v: Value) -> Content {
    Content::json(&v).unwrap()
}

fn string(v: Value) -> Content {
    Content::string(&v.to_string())
}

/// The request is refused with 403 in `{"Object":null,"Err":{"ErrStatus":...}}`, answering it.
fn assert_forbidden(request: Message) {
    let decision = decide(ME, &request, &view());
    let Decision::Refuse(reply) = decision else {
        panic!("not refused: {decision:?}")
    };
    assert_eq!(reply.header.parent_id, request.header.id);
    assert_eq!(reply.route.operation.as_ref().unwrap().as_str(), "response");
    assert_eq!(reply.route.resource, request.route.resource);
    let resp: ObjectResp = reply.content.decode().unwrap();
    assert!(resp.is_err(), "{resp:?}");
    let err: Value = serde_json::from_slice(resp.err.as_json()).unwrap();
    assert_eq!(err["ErrStatus"]["code"], 403, "{err}");
    assert_eq!(err["ErrStatus"]["reason"], "Forbidden");
    assert!(resp.object.is_null());
}

fn assert_write(request: Message) -> Action {
    match decide(ME, &request, &view()) {
        Decision::Write(action) => action,
        other => panic!("not allowed: {other:?}"),
    }
}

#[test]
fn registering_another_node_is_refused() {
    let node = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "edge-b"}});
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "default/node/edge-b",
        object(node.clone()),
    ));
    // Own resource path, another name inside.
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "default/node/edge-a",
        object(node),
    ));
    let own = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": ME, "resourceVersion": "5"}});
    let Action::CreateNode { node } = assert_write(msg(
        "edged",
        "meta",
        "insert",
        "null/node/edge-a",
        object(own),
    )) else {
        panic!()
    };
    // Registered as an edge node, without client-set server fields.
    assert_eq!(
        node["metadata"]["labels"]["node-role.kubernetes.io/edge"],
        ""
    );
    assert!(node["metadata"].get("resourceVersion").is_none());
}

#[test]
fn patching_another_nodes_status_is_refused() {
    let patch = json!({"status": {"conditions": []}});
    assert_forbidden(msg(
        "edged",
        "meta",
        "patch",
        "default/nodepatch/edge-b",
        string(patch.clone()),
    ));
    let Action::PatchNodeStatus { name, patch: p } = assert_write(msg(
        "edged",
        "meta",
        "patch",
        "default/nodepatch/edge-a",
        string(patch),
    )) else {
        panic!()
    };
    assert_eq!(name, ME);
    // Only the status travels, whatever else the patch held.
    assert_eq!(p, json!({"status": {"conditions": []}}));
}

#[test]
fn reading_another_node_is_refused() {
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "null/node/edge-b",
        Content::null(),
    ));
    assert!(matches!(
        decide(
            ME,
            &msg(
                "edged",
                "meta",
                "query",
                "null/node/edge-a",
                Content::null()
            ),
            &view()
        ),
        Decision::Reply(_)
    ));
}

#[test]
fn writing_another_nodes_lease_is_refused() {
    let lease = |n: &str| {
        object(
            json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": {"name": n, "namespace": "kube-node-lease"}, "spec": {"holderIdentity": n}}),
        )
    };
    assert_forbidden(msg(
        "edged",
        "meta",
        "update",
        "kube-node-lease/lease/edge-b",
        lease("edge-b"),
    ));
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "kube-node-lease/lease/edge-a",
        lease("edge-b"),
    ));
    // A lease of the node's name outside kube-node-lease.
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "default/lease/edge-a",
        lease(ME),
    ));
    assert!(matches!(
        assert_write(msg(
            "edged",
            "meta",
            "insert",
            "kube-node-lease/lease/edge-a",
            lease(ME)
        )),
        Action::CreateLease { .. }
    ));
    assert!(matches!(
        assert_write(msg(
            "edged",
            "meta",
            "update",
            "kube-node-lease/lease/edge-a",
            lease(ME)
        )),
        Action::UpdateLease { .. }
    ));
}

#[test]
fn patching_the_status_of_a_pod_on_another_node_is_refused() {
    let patch = json!({"metadata": {"uid": "u-theirs"}, "status": {"phase": "Running"}});
    assert_forbidden(msg(
        "edged",
        "meta",
        "patch",
        "default/podpatch/theirs",
        string(patch),
    ));
    // A pod that does not exist at all.
    assert_forbidden(msg(
        "edged",
        "meta",
        "patch",
        "default/podpatch/ghost",
        string(json!({"status": {}})),
    ));
    let ok = json!({"metadata": {"uid": "u-mine"}, "status": {"phase": "Running"}});
    assert!(matches!(
        assert_write(msg(
            "edged",
            "meta",
            "patch",
            "default/podpatch/mine",
            string(ok)
        )),
        Action::PatchPodStatus { .. }
    ));
}

#[test]
fn deleting_a_pod_on_another_node_is_refused() {
    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "u-theirs"}});
    assert_forbidden(msg(
        "edged",
        "meta",
        "delete",
        "default/pod/theirs",
        object(options),
    ));
    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": "u-mine"}});
    let Action::DeletePod { options: o, .. } = assert_write(msg(
        "edged",
        "meta",
        "delete",
        "default/pod/mine",
        object(options.clone()),
    )) else {
        panic!()
    };
    assert_eq!(o, options);
}

#[test]
fn reading_a_configmap_no_pod_of_the_node_references_is_refused() {
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "default/configmap/cm-theirs",
        Content::null(),
    ));
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "default/configmap/cm-nobody",
        Content::null(),
    ));
    let Decision::Reply(reply) = decide(
        ME,
        &msg(
            "edged",
            "meta",
            "query",
            "default/configmap/cm-mine",
            Content::null(),
        ),
        &view(),
    ) else {
        panic!()
    };
    let cm: Value = reply.content.decode().unwrap();
    assert_eq!(cm["metadata"]["name"], "cm-mine");
    assert_eq!(reply.header.resource_version, "1");
}

#[test]
fn reading_a_secret_no_pod_of_the_node_references_is_refused() {
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "default/secret/cm-theirs-secret",
        Content::null(),
    ));
    assert!(matches!(
        decide(
            ME,
            &msg(
                "edged",
                "meta",
                "query",
                "default/secret/cm-mine-secret",
                Content::null()
            ),
            &view()
        ),
        Decision::Reply(_)
    ));
}

#[test]
fn reading_other_kinds_is_refused() {
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "default/serviceaccount/default",
        Content::null(),
    ));
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "kube-system/pod/coredns",
        Content::null(),
    ));
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "default/pod/new-pod",
        object(json!({"kind": "Pod", "metadata": {"name": "new-pod"}})),
    ));
}

#[test]
fn events_about_other_nodes_objects_are_refused() {
    let event = |kind: &str, name: &str| {
        object(
            json!({"kind": "Event", "apiVersion": "v1", "metadata": {"name": "e1", "namespace": "default"},
        "involvedObject": {"kind": kind, "name": name, "namespace": "default"}, "reason": "Started"}),
        )
    };
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "default/event/e1",
        event("Pod", "theirs"),
    ));
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "default/event/e1",
        event("Node", "edge-b"),
    ));
    assert_forbidden(msg(
        "edged",
        "meta",
        "insert",
        "default/event/e1",
        event("Secret", "cm-mine-secret"),
    ));
    assert!(matches!(
        assert_write(msg(
            "edged",
            "meta",
            "insert",
            "default/event/e1",
            event("Pod", "mine")
        )),
        Action::RecordEvent { .. }
    ));
}

#[test]
fn twin_and_state_reports_for_another_nodes_device_are_refused() {
    let twin =
        object(json!({"event_id": "e", "timestamp": 1, "twin": {"t": {"actual": {"value": "1"}}}}));
    let state = string(
        json!({"event_id": "e", "timestamp": 1, "device": {"name": "dev-theirs", "state": "online"}}),
    );
    for (resource, content) in [
        ("device/default/dev-theirs/twin/edge_updated", twin.clone()),
        ("device/default/dev-theirs/state/update", state),
        ("device/default/ghost/twin/edge_updated", twin.clone()),
    ] {
        let request = msg("twin", "resource", "update", resource, content);
        let Decision::Refuse(reply) = decide(ME, &request, &view()) else {
            panic!("{resource} not refused")
        };
        // The devicecontroller's confirm form, with the refusal instead of "OK".
        assert_eq!(reply.route.group.as_ref().unwrap().as_str(), "twin");
        assert_eq!(reply.route.resource, "twin");
        assert_eq!(reply.header.parent_id, request.header.id);
        assert!(!reply.content.is_ok_ack());
    }
    let Action::TwinReported {
        device, device_uid, ..
    } = assert_write(msg(
        "twin",
        "resource",
        "update",
        "device/default/dev-mine/twin/edge_updated",
        twin,
    ))
    else {
        panic!()
    };
    assert_eq!(
        (device.name.as_str(), device_uid.as_str()),
        ("dev-mine", "u-dev-mine")
    );
}

#[test]
fn malformed_requests_are_answered_not_dropped() {
    let request = msg(
        "edged",
        "meta",
        "patch",
        "default/podpatch/mine",
        Content::string("{not json"),
    );
    let Decision::Refuse(reply) = decide(ME, &request, &view()) else {
        panic!()
    };
    let resp: ObjectResp = reply.content.decode().unwrap();
    assert!(resp.error_message().unwrap().contains("content"));
    // An empty resource (KubeEdge's shutdown message is filtered before this) is a bad request.
    let request = msg("edged", "meta", "patch", "", Content::null());
    assert!(matches!(decide(ME, &request, &view()), Decision::Refuse(_)));
}

fn token_query(sa: &str, pod: &str, uid: &str) -> Message {
    msg(
        "edged",
        "meta",
        "query",
        &format!("default/serviceaccounttoken/{sa}"),
        object(
            json!({"spec": {"expirationSeconds": 3607, "audiences": null,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid}},
            "status": {"token": ""}}),
        ),
    )
}

#[test]
fn tokens_are_issued_only_for_the_nodes_own_pods_and_their_service_account() {
    let Action::CreateToken {
        namespace,
        service_account,
        request,
    } = assert_write(token_query("default", "mine", "u-mine"))
    else {
        panic!("not a token request")
    };
    assert_eq!(
        (namespace.as_str(), service_account.as_str()),
        ("default", "default")
    );
    assert_eq!(request["kind"], "TokenRequest");
    assert!(request.get("status").is_none(), "{request}");
    // Another node's pod, another service account, a stale uid, no pod at all.
    assert_forbidden(token_query("default", "theirs", "u-theirs"));
    assert_forbidden(token_query("admin", "mine", "u-mine"));
    assert_forbidden(token_query("default", "mine", "u-old"));
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "default/serviceaccounttoken/default",
        object(json!({"spec": {"expirationSeconds": 3607}})),
    ));
}

#[test]
fn a_node_reads_only_its_own_lease() {
    let decision = decide(
        ME,
        &msg(
            "edged",
            "meta",
            "query",
            "kube-node-lease/lease/edge-a",
            Content::null(),
        ),
        &view(),
    );
    let Decision::Reply(reply) = decision else {
        panic!("not answered: {decision:?}")
    };
    // No Lease in the view: NotFound, which makes the edge create it.
    let resp: ObjectResp = reply.content.decode().unwrap();
    assert_eq!(resp.error_reason().as_deref(), Some("NotFound"));
    assert_forbidden(msg(
        "edged",
        "meta",
        "query",
        "kube-node-lease/lease/edge-b",
        Content::null(),
    ));
}

#[test]
fn a_lease_owner_without_uid_gets_the_nodes_uid() {
    let lease = json!({"metadata": {"name": ME, "namespace": "kube-node-lease",
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": ME, "uid": ""}]},
        "spec": {"holderIdentity": ME}});
    let Action::CreateLease { lease } = assert_write(msg(
        "edged",
        "meta",
        "insert",
        "kube-node-lease/lease/edge-a",
        object(lease),
    )) else {
        panic!("not a lease")
    };
    assert_eq!(lease["metadata"]["ownerReferences"][0]["uid"], "n");
}

#[test]
fn a_node_patches_its_status_labels_and_annotations_and_nothing_else() {
    let patch = |p: Value| msg("edged", "meta", "patch", "null/nodepatch/edge-a", string(p));
    // KubeEdge's kubelet patches labels and annotations through the same call.
    let Action::PatchNodeStatus { patch: sent, .. } = assert_write(patch(
        json!({"metadata": {"annotations": {"a": "b"}, "labels": {"x": "y"}}}),
    )) else {
        panic!("not a node patch")
    };
    assert_eq!(sent["metadata"]["labels"]["x"], "y");
    assert_write(patch(json!({"status": {"phase": "Running"}})));
    assert_forbidden(patch(json!({"metadata": {"ownerReferences": []}})));
    assert_forbidden(patch(
        json!({"metadata": {"labels": {"node-restriction.kubernetes.io/pool": "a"}}}),
    ));
}
