//! Cloud twin syncs against local updates: KubeEdge's version rules (compat §6.5) through the
//! engine and SQLite. Each side of a twin has a cloud and an edge counter; a sync is refused
//! when the edge's cloud counter is ahead ("version not allowed") or when the edge changed the
//! twin since the version the cloud saw ("version conflict"), and the refused twin is reported
//! back to the cloud as the edge has it.

#![cfg(feature = "store")]

use kubeedge_proto::twin::{DeviceTwinUpdate, TwinVersion};
use kubeedge_proto::{Content, Group, Message, NodeName, Operation, Source};
use kubeedge_store::{FullPolicy, Outbox, Store, StoreConfig};
use kubeedge_twin::{Effects, TwinConfig, TwinEngine};
use serde_json::{Value, json};

const DEVICE: &str = "$hw/events/device/default/t1";

struct Edge {
    _dir: tempfile::TempDir,
    outbox: Outbox,
    engine: TwinEngine,
}

async fn edge() -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("edge.db"))).unwrap();
    let outbox = Outbox::new(store.clone(), 100, FullPolicy::Reject);
    let mut engine = TwinEngine::open(
        store,
        outbox.clone(),
        TwinConfig::new(NodeName::new("n1").unwrap()),
    )
    .await
    .unwrap();
    let membership = Message::new(
        Source::DeviceController,
        Group::Twin,
        Operation::Update,
        "membership",
        Content::json(&json!({"event_id":"m","timestamp":1,
            "added_devices":[{"id":"default/t1","name":"t1"}],"removed_devices":null}))
        .unwrap(),
    );
    engine.handle_cloud(&membership).await.unwrap();
    Edge {
        _dir: dir,
        outbox,
        engine,
    }
}

impl Edge {
    async fn local(&mut self, twin: Value) -> Effects {
        let payload = json!({"event_id":"l","timestamp":1,"twin":twin}).to_string();
        self.engine
            .handle_publication(&format!("{DEVICE}/twin/update"), payload.as_bytes())
            .await
            .unwrap()
    }

    async fn sync(&mut self, twin: Value) -> Effects {
        let content = Content::json(&json!({"event_id":"c","timestamp":1,"twin":twin})).unwrap();
        let msg = Message::new(
            Source::DeviceController,
            Group::Resource,
            Operation::Update,
            "device/default/t1/twin/cloud_updated",
            content,
        );
        self.engine.handle_cloud(&msg).await.unwrap()
    }

    fn expected(&self) -> (Option<String>, Option<TwinVersion>) {
        let id = "default/t1".parse().unwrap();
        let twin = &self.engine.device(&id).unwrap().twins["temp"];
        (
            twin.expected.as_ref().and_then(|v| v.value.clone()),
            twin.expected_version,
        )
    }
}

fn version(cloud: i64, edge: i64) -> Option<TwinVersion> {
    Some(TwinVersion { cloud, edge })
}

fn reported(fx: &Effects) -> DeviceTwinUpdate {
    assert_eq!(fx.queued.len(), 1, "one report to the cloud");
    let msg = &fx.queued[0];
    assert_eq!(msg.route.resource, "device/default/t1/twin/edge_updated");
    msg.content.decode().unwrap()
}

fn topics(fx: &Effects) -> Vec<&str> {
    fx.publish.iter().map(|p| p.topic.as_str()).collect()
}

#[tokio::test]
async fn cloud_syncs_follow_the_version_rules() {
    let mut edge = edge().await;
    edge.local(json!({"temp":{"actual":{"value":"25"},"metadata":{"type":"int"}}}))
        .await;

    // A desired value from the cloud: adopted with the cloud's counters; no report, and the
    // delta tells the mapper to act.
    let fx = edge
        .sync(
            json!({"temp":{"expected":{"value":"30"},"expected_version":{"cloud":1,"edge":0},
            "metadata":{"type":"int"}}}),
        )
        .await;
    assert!(fx.queued.is_empty());
    assert_eq!(edge.expected(), (Some("30".into()), version(1, 0)));
    assert_eq!(
        topics(&fx),
        [
            "$hw/events/device/default/t1/twin/update/document",
            "$hw/events/device/default/t1/twin/update/delta"
        ]
    );
    let delta: Value = serde_json::from_slice(&fx.publish[1].payload).unwrap();
    assert_eq!(delta["delta"], json!({"temp":"30"}));

    // A stale sync (the edge already has cloud version 1): refused, the edge's twin goes back.
    let fx = edge
        .sync(json!({"temp":{"expected":{"value":"99"},"expected_version":{"cloud":0,"edge":0}}}))
        .await;
    let back = reported(&fx);
    let twin = back.twin["temp"].as_ref().unwrap();
    assert_eq!(twin.expected.as_ref().unwrap().value.as_deref(), Some("30"));
    assert_eq!(twin.expected_version, version(1, 0));
    assert_eq!(edge.expected(), (Some("30".into()), version(1, 0)));

    // A sync without versions: refused.
    let fx = edge.sync(json!({"temp":{"expected":{"value":"99"}}})).await;
    assert_eq!(fx.queued.len(), 1);
    assert_eq!(edge.expected().0.as_deref(), Some("30"));

    // The edge sets the desired value itself: edge counter 1. A sync based on edge 0 is a
    // conflict; the edge keeps 35 and reports it with its versions.
    let fx = edge
        .local(json!({"temp":{"expected":{"value":"35"}}}))
        .await;
    let report = reported(&fx);
    assert_eq!(
        report.twin["temp"].as_ref().unwrap().expected_version,
        version(1, 1)
    );
    let fx = edge
        .sync(json!({"temp":{"expected":{"value":"40"},"expected_version":{"cloud":2,"edge":0}}}))
        .await;
    let back = reported(&fx);
    let twin = back.twin["temp"].as_ref().unwrap();
    assert_eq!(twin.expected.as_ref().unwrap().value.as_deref(), Some("35"));
    assert_eq!(twin.expected_version, version(1, 1));
    assert_eq!(edge.expected(), (Some("35".into()), version(1, 1)));

    // The cloud, having seen edge 1, wins.
    let fx = edge
        .sync(json!({"temp":{"expected":{"value":"40"},"expected_version":{"cloud":2,"edge":1}}}))
        .await;
    assert!(fx.queued.is_empty());
    assert_eq!(edge.expected(), (Some("40".into()), version(2, 1)));

    // The same sync arriving through the MQTT topic `twin/cloud_updated` is refused now (the
    // edge counter is not behind, the cloud counter is equal: accepted again, idempotently).
    let payload = json!({"event_id":"c2","timestamp":1,"twin":{"temp":{"expected":{"value":"40"},
        "expected_version":{"cloud":2,"edge":1}}}})
    .to_string();
    let fx = edge
        .engine
        .handle_publication(&format!("{DEVICE}/twin/cloud_updated"), payload.as_bytes())
        .await
        .unwrap();
    assert!(fx.queued.is_empty());
    assert_eq!(edge.expected(), (Some("40".into()), version(2, 1)));

    // A delete from the cloud needs no versions; the twin disappears from `get`.
    edge.sync(json!({"temp":{"metadata":{"type":"deleted"}}}))
        .await;
    let fx = edge
        .engine
        .handle_publication(
            &format!("{DEVICE}/twin/get"),
            br#"{"event_id":"g","timestamp":1}"#,
        )
        .await
        .unwrap();
    let got: Value = serde_json::from_slice(&fx.publish[0].payload).unwrap();
    assert_eq!(got["twin"], json!({}));

    // Every report that went to the cloud is still in the outbox (nothing confirmed them).
    assert_eq!(edge.outbox.len().await.unwrap(), 5);
}

#[tokio::test]
async fn a_full_outbox_refuses_the_change_and_says_so() {
    let mut edge = edge().await;
    for i in 0..100 {
        edge.local(json!({"v":{"actual":{"value":i.to_string()}}}))
            .await;
    }
    assert_eq!(edge.outbox.len().await.unwrap(), 100);
    // The 101st report does not fit: the update is rolled back and answered with code 500.
    let payload = br#"{"event_id":"x","timestamp":1,"twin":{"v":{"actual":{"value":"x"}}}}"#;
    let fx = edge
        .engine
        .handle_publication(&format!("{DEVICE}/twin/update"), payload)
        .await
        .unwrap();
    assert_eq!(fx.publish.len(), 1);
    let result: Value = serde_json::from_slice(&fx.publish[0].payload).unwrap();
    assert_eq!(result["code"], 500);
    assert_eq!(result["event_id"], "x");
    assert!(fx.queued.is_empty());
    let id = "default/t1".parse().unwrap();
    let twin = &edge.engine.device(&id).unwrap().twins["v"];
    assert_eq!(twin.actual.as_ref().unwrap().value.as_deref(), Some("99"));
}

/// Hostile input the engine must answer or refuse without changing anything: a malformed
/// membership request, and device ids from the cloud that would inject MQTT wildcards or extra
/// topic levels.
#[tokio::test]
async fn bad_membership_input_is_answered_or_refused() {
    let mut edge = edge().await;
    let fx = edge
        .engine
        .handle_publication("$hw/events/node/n1/membership/get", b"{\"event_id\":")
        .await
        .unwrap();
    assert_eq!(fx.publish.len(), 1);
    assert_eq!(
        fx.publish[0].topic,
        "$hw/events/node/n1/membership/get/result"
    );
    let result: Value = serde_json::from_slice(&fx.publish[0].payload).unwrap();
    assert_eq!(result["code"], 400);

    let membership = Message::new(
        Source::DeviceController,
        Group::Twin,
        Operation::Update,
        "membership",
        Content::json(&json!({"event_id":"m","timestamp":1,"added_devices":[
            {"id":"default/a+b","name":"a+b"},
            {"id":"default/x/y","name":"y"},
            {"id":"default/#","name":"#"},
            {"id":"Default/Upper","name":"Upper"},
            {"id":"default/ok-2","name":"ok-2"}
        ],"removed_devices":[{"id":"default/+","name":"+"}]}))
        .unwrap(),
    );
    let fx = edge.engine.handle_cloud(&membership).await.unwrap();
    let ids: Vec<String> = edge.engine.devices().map(|d| d.id.to_string()).collect();
    assert_eq!(ids, ["default/ok-2", "default/t1"]);
    let updated: Value = serde_json::from_slice(&fx.publish[0].payload).unwrap();
    assert_eq!(
        updated["added_devices"],
        json!([{"id":"default/ok-2","name":"ok-2"}])
    );
    assert_eq!(updated["removed_devices"], Value::Null);

    // A membership/get for another node is not ours to answer.
    let fx = edge
        .engine
        .handle_publication(
            "$hw/events/node/other/membership/get",
            br#"{"event_id":"x","timestamp":1}"#,
        )
        .await
        .unwrap();
    assert!(fx.publish.is_empty());
}
