//! MetaManager against the real KubeEdge capture: the ACKs it builds are the ACKs edgecore sent,
//! replays change nothing, stale versions never regress state, and offline queries answer from
//! the store.

use bytes::Bytes;
use kubeedge_proto::{Content, DEFAULT_MAX_MESSAGE_LEN, Message, NodeName, Operation, Source};
use kubeedge_store::{
    EdgeOutcome, LocalTarget, MetaManager, MetaManagerConfig, Store, StoreConfig, meta,
};
use serde_json::Value;

const CAPTURE: &str = include_str!("../../kubeedge-proto/tests/vectors/ws-v1.22.2.jsonl");

struct Captured {
    dir: String,
    msg: Message,
}

fn capture() -> Vec<Captured> {
    CAPTURE
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "message")
        .map(|r| Captured {
            dir: r["dir"].as_str().unwrap().to_owned(),
            msg: Message::decode_json(
                Bytes::from(r["payload"].as_str().unwrap().to_owned()),
                DEFAULT_MAX_MESSAGE_LEN,
            )
            .unwrap(),
        })
        .collect()
}

fn open(dir: &tempfile::TempDir) -> MetaManager {
    let store = Store::open(StoreConfig::new(dir.path().join("edge.db"))).unwrap();
    MetaManager::new(
        store,
        MetaManagerConfig::new(NodeName::new("ke-edge-test").unwrap()),
    )
}

fn pod(name: &str, uid: &str, rv: u64) -> Message {
    let json = format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"default","uid":"{uid}","resourceVersion":"{rv}"}},"spec":{{}}}}"#
    );
    Message::new(
        "edgecontroller",
        "resource",
        "update",
        format!("default/pod/{name}"),
        Content::try_from(json.as_str()).unwrap(),
    )
    .with_resource_version(rv.to_string())
}

async fn stored_rv(mm: &MetaManager, key: &str) -> Option<u64> {
    let key = key.to_owned();
    let row = mm
        .store()
        .read(move |db| meta::get(db, &key))
        .await
        .unwrap()?;
    meta::ObjectVersion::of(row.value.as_bytes()).map(|v| v.resource_version)
}

#[tokio::test]
async fn acks_match_the_captured_acks_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    let all = capture();
    let mut compared = 0;
    for c in all.iter().filter(|c| c.dir == "cloud->edge") {
        let outcome = mm.from_cloud(c.msg.clone()).await.unwrap();
        let captured_ack = all.iter().find(|a| {
            a.dir == "edge->cloud" && a.msg.is_ack() && a.msg.header.parent_id == c.msg.header.id
        });
        match (captured_ack, outcome.ack) {
            (Some(expected), Some(ours)) => {
                assert_eq!(ours.route, expected.msg.route, "ACK route for {}", c.msg);
                assert_eq!(ours.header.parent_id, expected.msg.header.parent_id);
                assert_eq!(ours.content, expected.msg.content);
                assert!(ours.header.resource_version.is_empty());
                compared += 1;
            }
            (None, None) => {}
            // Twin confirms ("OK" responses from the cloud) are answers, not things to ACK.
            (None, Some(ack)) => panic!("unexpected ACK {ack} for {}", c.msg),
            (Some(expected), None) => panic!("missing ACK {} for {}", expected.msg, c.msg),
        }
    }
    // 19 cloud messages in the capture carry a resourceversion; edgecore ACKed each.
    assert_eq!(compared, 19);
}

#[tokio::test]
async fn replaying_the_capture_changes_nothing_and_still_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    let downstream: Vec<Message> = capture()
        .into_iter()
        .filter(|c| c.dir == "cloud->edge" && !c.msg.header.resource_version.is_empty())
        .map(|c| c.msg)
        .collect();
    for msg in &downstream {
        mm.from_cloud(msg.clone()).await.unwrap();
    }
    let before = dump(&mm).await;
    for msg in &downstream {
        let outcome = mm.from_cloud(msg.clone()).await.unwrap();
        assert!(!outcome.changed, "{msg} applied twice");
        assert!(outcome.forward.is_none());
        assert!(
            outcome.ack.is_some(),
            "a re-sent message must be ACKed again"
        );
    }
    assert_eq!(dump(&mm).await, before);
    // The capture's final state: the pods were deleted, the ConfigMap, Secret and Device gone
    // or updated as the cloud said.
    assert_eq!(stored_rv(&mm, "default/pod/pod-demo").await, None);
    assert_eq!(stored_rv(&mm, "default/pod/pod-offline").await, None);
    assert_eq!(stored_rv(&mm, "default/configmap/cm-demo").await, Some(314));
    assert_eq!(stored_rv(&mm, "default/device/thermo-1").await, None);
}

async fn dump(mm: &MetaManager) -> Vec<meta::MetaRow> {
    mm.store()
        .read(|db| {
            let mut rows = Vec::new();
            for kind in ["pod", "configmap", "secret", "device", "devicemodel"] {
                rows.extend(meta::list_by_type(db, kind)?);
            }
            Ok(rows)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn stale_versions_never_regress_state() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    assert!(mm.from_cloud(pod("web", "u1", 10)).await.unwrap().changed);
    let stale = mm.from_cloud(pod("web", "u1", 9)).await.unwrap();
    assert!(!stale.changed);
    assert!(stale.ack.is_some());
    assert_eq!(stored_rv(&mm, "default/pod/web").await, Some(10));
    let same = mm.from_cloud(pod("web", "u1", 10)).await.unwrap();
    assert!(!same.changed);
    assert!(mm.from_cloud(pod("web", "u1", 11)).await.unwrap().changed);
    // A new incarnation (new uid) wins even with a lower resourceVersion.
    assert!(mm.from_cloud(pod("web", "u2", 3)).await.unwrap().changed);
    assert_eq!(stored_rv(&mm, "default/pod/web").await, Some(3));
}

#[tokio::test]
async fn pod_delete_only_removes_the_same_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    mm.from_cloud(pod("web", "new-uid", 20)).await.unwrap();
    let mut old_delete = pod("web", "old-uid", 19);
    old_delete.route.operation = Some(Operation::Delete);
    let outcome = mm.from_cloud(old_delete).await.unwrap();
    assert!(!outcome.changed);
    assert!(outcome.ack.is_some());
    assert_eq!(stored_rv(&mm, "default/pod/web").await, Some(20));

    let mut delete = pod("web", "new-uid", 21);
    delete.route.operation = Some(Operation::Delete);
    let outcome = mm.from_cloud(delete).await.unwrap();
    assert!(outcome.changed);
    assert_eq!(outcome.forward.unwrap().target, LocalTarget::Edged);
    assert_eq!(stored_rv(&mm, "default/pod/web").await, None);
}

#[tokio::test]
async fn queries_answer_from_the_store_offline_and_go_remote_online() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        mm.from_cloud(pod(name, &format!("u{i}"), 5)).await.unwrap();
    }
    let query = Message::new("edged", "edged", "query", "default/pod", Content::null());
    let EdgeOutcome::Answer(answer) = mm.from_edge(query.clone(), true).await.unwrap() else {
        panic!("pods are answered locally");
    };
    assert_eq!(answer.header.parent_id, query.header.id);
    assert_eq!(answer.route.source, Some(Source::MetaManager));
    assert_eq!(answer.route.operation, Some(Operation::Response));
    // KubeEdge's shape: an array of strings, each a stored object.
    let docs: Vec<String> = answer.content.decode().unwrap();
    assert_eq!(docs.len(), 3);
    let first: Value = serde_json::from_str(&docs[0]).unwrap();
    assert_eq!(first["metadata"]["name"], "a");

    let cm_query = Message::new(
        "edged",
        "meta",
        "query",
        "default/configmap/cfg",
        Content::null(),
    );
    assert!(matches!(
        mm.from_edge(cm_query.clone(), true).await.unwrap(),
        EdgeOutcome::ToCloud { queued: false, .. }
    ));
    let EdgeOutcome::Answer(offline) = mm.from_edge(cm_query, false).await.unwrap() else {
        panic!("offline queries are answered locally");
    };
    assert!(offline.content.decode::<Vec<String>>().unwrap().is_empty());
}

#[tokio::test]
async fn status_patches_wait_in_the_outbox_until_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    let patch = |body: &str| {
        Message::new(
            "edged",
            "meta",
            "patch",
            "default/podpatch/web",
            Content::string(body),
        )
    };
    let first = patch(r#"{"status":{"phase":"Pending"}}"#);
    let second = patch(r#"{"status":{"phase":"Running"}}"#);
    for p in [&first, &second] {
        assert!(matches!(
            mm.from_edge(p.clone(), false).await.unwrap(),
            EdgeOutcome::ToCloud { queued: true, .. }
        ));
    }
    // Only the latest status patch of a pod is worth sending.
    let pending = mm.outbox().pending(0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message, second);

    // The cloud's reply removes it, stores the returned pod, goes to edged without an ACK.
    let pod_json = r#"{"metadata":{"name":"web","namespace":"default","uid":"u9","resourceVersion":"77"},"status":{"phase":"Running"}}"#;
    let reply_content = format!(r#"{{"Object":{pod_json},"Err":null}}"#);
    let mut reply = Message::new(
        "edgecontroller",
        "resource",
        "response",
        "default/podpatch/web",
        Content::try_from(reply_content.as_str()).unwrap(),
    )
    .with_parent(second.header.id.clone())
    .with_resource_version("77");
    reply.header.resource_version = "77".into();
    let outcome = mm.from_cloud(reply).await.unwrap();
    assert!(outcome.ack.is_none(), "KubeEdge does not ACK patch replies");
    assert_eq!(outcome.forward.unwrap().target, LocalTarget::Edged);
    assert!(mm.outbox().is_empty().await.unwrap());
    assert_eq!(stored_rv(&mm, "default/pod/web").await, Some(77));
}

#[tokio::test]
async fn outbox_survives_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let sent: Vec<Message> = {
        let mm = open(&dir);
        let mut sent = Vec::new();
        for i in 0..5 {
            let msg = Message::new(
                "edged",
                "meta",
                "insert",
                format!("default/event/e{i}"),
                Content::try_from(r#"{"reason":"Started"}"#).unwrap(),
            );
            mm.from_edge(msg.clone(), false).await.unwrap();
            sent.push(msg);
        }
        assert!(mm.outbox().confirm(&sent[1].header.id).await.unwrap());
        assert!(!mm.outbox().confirm(&sent[1].header.id).await.unwrap());
        sent
    };
    let mm = open(&dir);
    let pending: Vec<Message> = mm
        .outbox()
        .pending(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.message)
        .collect();
    let expected: Vec<Message> = sent
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(pending, expected);
}

const EXTRA: &str = include_str!("../../kubeedge-proto/tests/vectors/extra-v1.22.jsonl");

fn extra(name: &str) -> Message {
    let rec = EXTRA
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no vector {name}"));
    Message::from_json(rec["payload"].as_str().unwrap().as_bytes()).unwrap()
}

/// Replies to edge requests (our own vectors of edged traffic): replies to remote calls are
/// ACKed exactly as KubeEdge does, replies to status patches are not, and returned objects are
/// stored.
#[tokio::test]
async fn replies_to_edge_requests_follow_kubeedge() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    for (request, reply, ack) in [
        (
            "node-register-insert",
            "node-register-reply",
            Some("node-register-reply-ack"),
        ),
        (
            "lease-insert",
            "lease-insert-reply",
            Some("lease-insert-reply-ack"),
        ),
        ("nodepatch-status", "nodepatch-reply", None),
        ("podpatch-status", "podpatch-reply", None),
        (
            "configmap-query",
            "configmap-query-reply",
            Some("configmap-query-reply-ack"),
        ),
        (
            "lease-query",
            "lease-query-reply-not-found",
            Some("lease-query-reply-not-found-ack"),
        ),
    ] {
        mm.from_edge(extra(request), true).await.unwrap();
        let outcome = mm.from_cloud(extra(reply)).await.unwrap();
        match (ack, outcome.ack) {
            (Some(expected), Some(ours)) => {
                let expected = extra(expected);
                assert_eq!(ours.route, expected.route, "{reply}");
                assert_eq!(ours.header.parent_id, expected.header.parent_id, "{reply}");
                assert_eq!(ours.content, expected.content, "{reply}");
            }
            (None, None) => {}
            (expected, ours) => panic!("{reply}: expected ACK {expected:?}, got {ours:?}"),
        }
        assert_eq!(outcome.forward.unwrap().target, LocalTarget::Edged);
    }
    assert!(
        mm.outbox().is_empty().await.unwrap(),
        "every request was answered"
    );
    // Objects that came back are stored: the node, the patched node and pod, the ConfigMap.
    assert!(stored_rv(&mm, "default/node/ke-edge-test").await.is_some());
    assert!(stored_rv(&mm, "default/pod/pod-demo").await.is_some());
    assert!(stored_rv(&mm, "default/configmap/cm-demo").await.is_some());
    assert!(
        stored_rv(&mm, "kube-node-lease/lease/ke-edge-test")
            .await
            .is_some()
    );
}

#[tokio::test]
async fn inventory_lists_what_the_store_holds_with_uid_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    assert!(mm.inventory().await.unwrap().objects.is_empty());
    mm.from_cloud(pod("a", "ua", 5)).await.unwrap();
    mm.from_cloud(pod("b", "ub", 7)).await.unwrap();
    mm.from_cloud(pod("a", "ua", 9)).await.unwrap();
    // A stale version changes nothing in the inventory either.
    mm.from_cloud(pod("b", "ub", 6)).await.unwrap();
    let mut delete = pod("b", "ub", 8);
    delete.route.operation = Some(Operation::Delete);
    let inv = mm.inventory().await.unwrap();
    let got: Vec<_> = inv
        .objects
        .iter()
        .map(|e| (e.key.as_str(), e.uid.as_str(), e.resource_version))
        .collect();
    assert_eq!(
        got,
        [("default/pod/a", "ua", 9), ("default/pod/b", "ub", 7)]
    );
    mm.from_cloud(delete).await.unwrap();
    let inv = mm.inventory().await.unwrap();
    assert_eq!(inv.objects.len(), 1);
    assert_eq!(inv.objects[0].key, "default/pod/a");
    // It survives the round trip through its message.
    let msg = inv.to_message().unwrap();
    assert_eq!(
        kubeedge_proto::inventory::Inventory::from_message(&msg).unwrap(),
        inv
    );
}

#[tokio::test]
async fn the_answer_to_a_delete_does_not_store_the_deleted_object_back() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    mm.from_cloud(pod("web", "uw", 5)).await.unwrap();
    // edged finishes a graceful delete through the outbox...
    let delete = Message::new(
        "edged",
        "meta",
        "delete",
        "default/pod/web",
        Content::try_from(r#"{"gracePeriodSeconds":0,"preconditions":{"uid":"uw"}}"#).unwrap(),
    );
    mm.from_edge(delete.clone(), true).await.unwrap();
    // ...the cloud's delete of the object arrives first...
    let mut gone = pod("web", "uw", 6);
    gone.route.operation = Some(Operation::Delete);
    mm.from_cloud(gone).await.unwrap();
    assert_eq!(stored_rv(&mm, "default/pod/web").await, None);
    // ...then the answer to the request, carrying the deleted pod.
    let object = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":"uw","resourceVersion":"6"}}"#;
    let reply = delete.response(
        Content::try_from(format!(r#"{{"Object":{object},"Err":null}}"#).as_str()).unwrap(),
    );
    mm.from_cloud(reply).await.unwrap();
    assert_eq!(stored_rv(&mm, "default/pod/web").await, None);
    assert_eq!(mm.outbox().len().await.unwrap(), 0);
}

/// Seen with KubeEdge's cloudcore: edged's last status patch and the pod's deletion cross, the
/// cloud's delete arrives first and the answer to the patch (the pod as patched, before it was
/// deleted) after it. The pod must stay deleted, and so must it against a late update.
#[tokio::test]
async fn a_deleted_incarnation_is_not_brought_back_by_a_late_reply_or_update() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mm = open(&dir);
        mm.from_cloud(pod("web", "uw", 5)).await.unwrap();
        let patch = Message::new(
            "edged",
            "meta",
            "patch",
            "default/podpatch/web",
            Content::string(r#"{"status":{"phase":"Running"}}"#),
        );
        mm.from_edge(patch.clone(), true).await.unwrap();
        let mut gone = pod("web", "uw", 7);
        gone.route.operation = Some(Operation::Delete);
        assert!(mm.from_cloud(gone).await.unwrap().changed);
        assert_eq!(stored_rv(&mm, "default/pod/web").await, None);

        let object = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":"uw","resourceVersion":"6","deletionTimestamp":"2026-12-07T06:45:37Z"}}"#;
        let reply = patch.response(
            Content::try_from(format!(r#"{{"Object":{object},"Err":null}}"#).as_str()).unwrap(),
        );
        let outcome = mm.from_cloud(reply).await.unwrap();
        assert!(!outcome.changed);
        assert_eq!(stored_rv(&mm, "default/pod/web").await, None);
        assert!(
            mm.outbox().is_empty().await.unwrap(),
            "the patch is answered"
        );
    }
    // Remembered across a restart, and against any later version of that incarnation.
    let mm = open(&dir);
    let late = mm.from_cloud(pod("web", "uw", 8)).await.unwrap();
    assert!(!late.changed);
    assert!(late.ack.is_some(), "a refused update is still acknowledged");
    assert_eq!(stored_rv(&mm, "default/pod/web").await, None);
    // A new pod of the same name is a new incarnation.
    assert!(mm.from_cloud(pod("web", "uw2", 9)).await.unwrap().changed);
    assert_eq!(stored_rv(&mm, "default/pod/web").await, Some(9));
}

/// The incarnations remembered are bounded: the oldest go first.
#[tokio::test]
async fn deleted_incarnations_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    let count = meta::DELETED_KEPT + 10;
    let counted = mm
        .store()
        .write(move |db| {
            for i in 0..count {
                meta::record_deleted(db, &format!("default/pod/p{i}"), &format!("u{i}"))?;
            }
            let kept: i64 =
                db.query_row("SELECT count(*) FROM kubeedge_rs_deleted", [], |r| r.get(0))?;
            Ok((
                kept,
                meta::was_deleted(db, "default/pod/p0", "u0")?,
                meta::was_deleted(
                    db,
                    &format!("default/pod/p{}", count - 1),
                    &format!("u{}", count - 1),
                )?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(counted, (meta::DELETED_KEPT, false, true));
}

#[tokio::test]
async fn queries_for_what_the_store_lacks_wait_in_the_outbox_and_their_answers_are_stored() {
    use kubeedge_store::tokens::{IssuedToken, TokenSpec};
    let dir = tempfile::tempdir().unwrap();
    let mm = open(&dir);
    let mut replies = mm.replies();

    // A ConfigMap query, asked twice before an answer: one request waits.
    let query = || {
        Message::new(
            "edged",
            "meta",
            "query",
            "default/configmap/app-cfg",
            Content::null(),
        )
    };
    mm.query_cloud(query()).await.unwrap();
    let second = query();
    mm.query_cloud(second.clone()).await.unwrap();
    assert_eq!(
        mm.outbox().len().await.unwrap(),
        1,
        "queries for one object coalesce"
    );
    // KubeEdge's answer to a query for a missing object: the error itself, nothing to store.
    let refused = Message::new(
        "edgecontroller",
        "resource",
        "response",
        "default/configmap/app-cfg",
        Content::try_from(r#"{"ErrStatus":{"status":"Failure","reason":"NotFound","code":404,"message":"configmaps \"app-cfg\" not found"}}"#).unwrap(),
    )
    .with_parent(second.header.id.as_str());
    let outcome = mm.from_cloud(refused).await.unwrap();
    assert!(outcome.ack.is_some() && !outcome.changed);
    assert!(mm.outbox().is_empty().await.unwrap());
    assert_eq!(
        replies.recv().await.unwrap().route.resource,
        "default/configmap/app-cfg"
    );

    // Two pods of one service account get two tokens.
    let spec = |pod: &str, uid: &str| TokenSpec {
        namespace: "default".into(),
        service_account: "default".into(),
        pod_name: pod.into(),
        pod_uid: uid.into(),
        audience: None,
        expiration_seconds: 3607,
    };
    let (a, b) = (spec("a", "ua"), spec("b", "ub"));
    let (qa, qb) = (a.query_message().unwrap(), b.query_message().unwrap());
    mm.query_cloud(qa.clone()).await.unwrap();
    mm.query_cloud(qb.clone()).await.unwrap();
    assert_eq!(mm.outbox().len().await.unwrap(), 2);
    for (q, token) in [(&qa, "token-a"), (&qb, "token-b")] {
        // The answer names the API server's audience, which the request left empty.
        let answer = format!(
            r#"{{"metadata":{{"name":"default","namespace":"default"}},"spec":{{"audiences":["https://kubernetes.default.svc.cluster.local"],"expirationSeconds":3607,"boundObjectRef":{{"kind":"Pod","apiVersion":"v1","name":"x","uid":"y"}}}},"status":{{"token":"{token}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#
        );
        let reply = Message::new(
            "edgecontroller",
            "resource",
            "response",
            "default/serviceaccounttoken/default",
            Content::try_from(answer.as_str()).unwrap(),
        )
        .with_parent(q.header.id.as_str());
        if token == "token-a" {
            // The hub confirms a reply in the outbox before the MetaManager sees it.
            assert!(mm.outbox().confirm(&q.header.id).await.unwrap());
        }
        let outcome = mm.from_cloud(reply).await.unwrap();
        assert!(outcome.changed && outcome.ack.is_some());
    }
    assert!(mm.outbox().is_empty().await.unwrap());
    for (s, token) in [(&a, "token-a"), (&b, "token-b")] {
        let key = s.key();
        let row = mm
            .store()
            .read(move |db| meta::get(db, &key))
            .await
            .unwrap()
            .expect("token stored");
        assert_eq!(row.kind, "serviceaccounttoken");
        assert_eq!(
            IssuedToken::parse(row.value.as_bytes()).unwrap().token,
            token
        );
    }
    // Tokens are not objects of the inventory.
    assert!(
        mm.inventory()
            .await
            .unwrap()
            .objects
            .iter()
            .all(|e| !e.key.contains("serviceaccounttoken"))
    );
}
