//! The twin engine replays the MQTT and cloud traffic of a real KubeEdge v1.22.2 edgecore
//! (`kubeedge-proto/tests/vectors/`) and must publish and report the same bytes, except for
//! what differs on every run: timestamps, fresh UUIDs and the wall-clock `last_online`.
//! Where KubeEdge dropped a report while disconnected, ours stays in the outbox.

#![cfg(feature = "store")]

use std::path::PathBuf;

use kubeedge_proto::{Message, NodeName, Operation};
use kubeedge_store::{FullPolicy, Outbox, Store, StoreConfig};
use kubeedge_twin::{Effects, TwinConfig, TwinEngine};
use serde_json::Value;

const NODE: &str = "ke-edge-test";

fn vectors(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kubeedge-proto/tests/vectors")
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// MQTT publishes of a step, as (publisher, topic, payload).
fn mqtt_step(all: &[Value], step: &str) -> Vec<(String, String, String)> {
    all.iter()
        .filter(|r| r["step"] == step)
        .map(|r| {
            (
                r["publisher"].as_str().unwrap().to_owned(),
                r["topic"].as_str().unwrap().to_owned(),
                r["payload"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ws_message(all: &[Value], seq: u64) -> Message {
    let rec = all.iter().find(|r| r["seq"] == seq).unwrap();
    Message::from_json(rec["payload"].as_str().unwrap().trim_end().as_bytes()).unwrap()
}

/// Replaces what legitimately differs between runs: `"timestamp":<n>`, UUIDs and RFC 3339
/// times (also inside escaped JSON strings).
fn normalize(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        for key in [&br#""timestamp":"#[..], &br#"\"timestamp\":"#[..]] {
            if b[i..].starts_with(key) {
                out.push_str(std::str::from_utf8(key).unwrap());
                i += key.len();
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push('T');
            }
        }
        if is_uuid(&b[i..]) {
            out.push_str("<uuid>");
            i += 36;
            continue;
        }
        if is_time(&b[i..]) {
            out.push_str("<time>");
            i += 20;
            continue;
        }
        if i < b.len() {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() >= 36
        && b[..36].iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_time(b: &[u8]) -> bool {
    b.len() >= 20
        && b[..20].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

fn published(fx: &Effects) -> Vec<(String, String)> {
    fx.publish
        .iter()
        .map(|p| {
            (
                p.topic.clone(),
                String::from_utf8(p.payload.to_vec()).unwrap(),
            )
        })
        .collect()
}

/// The edgecore publishes of a step, normalized.
fn expected_publishes(step: &[(String, String, String)]) -> Vec<(String, String)> {
    step.iter()
        .filter(|(publisher, _, _)| publisher == "edgecore")
        .map(|(_, t, p)| (t.clone(), normalize(p)))
        .collect()
}

fn normalized(fx: &Effects) -> Vec<(String, String)> {
    published(fx)
        .into_iter()
        .map(|(t, p)| (t, normalize(&p)))
        .collect()
}

/// Route and content of a cloud-bound message, normalized.
fn cloud_form(msg: &Message) -> String {
    normalize(&format!(
        "{} {}",
        msg.route,
        String::from_utf8_lossy(msg.content.as_json())
    ))
}

struct Edge {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Store,
    outbox: Outbox,
    engine: TwinEngine,
}

impl Edge {
    async fn open(dir: tempfile::TempDir) -> Edge {
        let path = dir.path().join("edgecore.db");
        let store = Store::open(StoreConfig::new(&path)).unwrap();
        let outbox = Outbox::new(store.clone(), 1000, FullPolicy::Reject);
        let engine = TwinEngine::open(
            store.clone(),
            outbox.clone(),
            TwinConfig::new(NodeName::new(NODE).unwrap()),
        )
        .await
        .unwrap();
        Edge {
            _dir: dir,
            path,
            store,
            outbox,
            engine,
        }
    }

    async fn mqtt(&mut self, step: &[(String, String, String)]) -> Effects {
        let (_, topic, payload) = step
            .iter()
            .find(|(p, _, _)| p.starts_with("test-client"))
            .unwrap();
        self.engine
            .handle_publication(topic, payload.as_bytes())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn replays_the_kubeedge_capture() {
    let mqtt = vectors("mqtt-v1.22.2.jsonl");
    let ws = vectors("ws-v1.22.2.jsonl");
    let mut edge = Edge::open(tempfile::tempdir().unwrap()).await;

    // d1: the cloud adds thermo-1 to the node.
    let membership = ws_message(&ws, 36);
    let fx = edge.engine.handle_cloud(&membership).await.unwrap();
    assert_eq!(
        normalized(&fx),
        expected_publishes(&mqtt_step(&mqtt, "d1-device-create"))
    );
    let cloud_event = membership.content.decode::<Value>().unwrap()["event_id"].clone();
    assert!(!published(&fx)[0].1.contains(cloud_event.as_str().unwrap()));

    // e1: a twin update with a type; result and document echo the event id, and the cloud gets
    // the change with versions (seq 46).
    let step = mqtt_step(&mqtt, "e1-mqtt-twin-update");
    let fx = edge.mqtt(&step).await;
    assert_eq!(normalized(&fx), expected_publishes(&step));
    assert_eq!(fx.queued.len(), 1);
    assert_eq!(cloud_form(&fx.queued[0]), cloud_form(&ws_message(&ws, 46)));
    let e1_report = fx.queued[0].header.id.clone();

    // e1b: an invalid value: the error goes to KubeEdge's empty-device topic (and, better, to
    // the device's own result topic too); nothing changes, nothing goes to the cloud.
    let step = mqtt_step(&mqtt, "e1b-mqtt-twin-update-invalid");
    let fx = edge.mqtt(&step).await;
    let kubeedge = expected_publishes(&step);
    assert_eq!(kubeedge.len(), 1);
    let ours = normalized(&fx);
    assert_eq!(
        ours[0],
        (
            "$hw/events/device/default/thermo-1/twin/update/result".to_owned(),
            kubeedge[0].1.clone()
        )
    );
    assert_eq!(ours[1], kubeedge[0]);
    assert!(fx.queued.is_empty());

    // e1c: a new twin with expected and actual: result, document and delta (fresh event id),
    // and the report with both versions (seq 52).
    let step = mqtt_step(&mqtt, "e1c-mqtt-twin-update-expected");
    let fx = edge.mqtt(&step).await;
    assert_eq!(normalized(&fx), expected_publishes(&step));
    assert_eq!(cloud_form(&fx.queued[0]), cloud_form(&ws_message(&ws, 52)));
    let delta = &published(&fx)[2].1;
    assert!(!delta.contains("e1c-twin-update-expected"));

    // e2: state online; the MQTT result and the cloud report (seq 55) share a fresh event id.
    let step = mqtt_step(&mqtt, "e2-mqtt-state-update");
    let fx = edge.mqtt(&step).await;
    assert_eq!(normalized(&fx), expected_publishes(&step));
    let report = &fx.queued[0];
    assert_eq!(cloud_form(report), cloud_form(&ws_message(&ws, 55)));
    let result: Value = serde_json::from_slice(&fx.publish[0].payload).unwrap();
    let inner: Value = serde_json::from_str(&report.content.as_str().unwrap()).unwrap();
    assert_eq!(result["event_id"], inner["event_id"]);
    assert_eq!(
        report.header.timestamp,
        inner["timestamp"].as_i64().unwrap()
    );

    // e3: get echoes the event id and lists both twins without versions.
    let step = mqtt_step(&mqtt, "e3-mqtt-twin-get");
    let fx = edge.mqtt(&step).await;
    assert_eq!(normalized(&fx), expected_publishes(&step));

    // e4: membership get.
    let step = mqtt_step(&mqtt, "e4-mqtt-membership-get");
    let fx = edge.mqtt(&step).await;
    assert_eq!(normalized(&fx), expected_publishes(&step));

    // The cloud confirms e1's report (seq 47 names seq 46; ours has its own id).
    let mut confirm = ws_message(&ws, 47);
    assert_eq!(confirm.route.operation, Some(Operation::Response));
    confirm.header.parent_id = e1_report.clone();
    let before = edge.outbox.len().await.unwrap();
    edge.engine.handle_cloud(&confirm).await.unwrap();
    assert_eq!(edge.outbox.len().await.unwrap(), before - 1);
    let pending: Vec<String> = edge
        .outbox
        .pending(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.message.header.id)
        .collect();
    assert!(!pending.contains(&e1_report));

    // g2 (while disconnected): result, document with `last`, and the delta of the other twin;
    // unlike KubeEdge, the report is kept for the cloud.
    let step = mqtt_step(&mqtt, "g2-offline-changes");
    let fx = edge.mqtt(&step).await;
    assert_eq!(normalized(&fx), expected_publishes(&step));
    assert_eq!(fx.queued.len(), 1);
    let offline_report = fx.queued[0].header.id.clone();

    // A restart: every device, twin and unconfirmed report is still there.
    let before: Vec<_> = edge.engine.devices().cloned().collect();
    let Edge {
        _dir, path, store, ..
    } = edge;
    drop(store);
    let reopened = Store::open(StoreConfig::new(&path)).unwrap();
    let outbox = Outbox::new(reopened.clone(), 1000, FullPolicy::Reject);
    let mut engine = TwinEngine::open(
        reopened.clone(),
        outbox.clone(),
        TwinConfig::new(NodeName::new(NODE).unwrap()),
    )
    .await
    .unwrap();
    let after: Vec<_> = engine.devices().cloned().collect();
    assert_eq!(before, after);
    let pending: Vec<String> = outbox
        .pending(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.message.header.id)
        .collect();
    assert!(pending.contains(&offline_report));

    // e3 again after the restart: the same answer.
    let step = mqtt_step(&mqtt, "e3-mqtt-twin-get");
    let (_, topic, payload) = &step[0];
    let fx = engine
        .handle_publication(topic, payload.as_bytes())
        .await
        .unwrap();
    let got: Value = serde_json::from_slice(&fx.publish[0].payload).unwrap();
    assert_eq!(got["twin"]["temperature"]["actual"]["value"], "26");
    assert_eq!(got["twin"]["setpoint"]["expected"]["value"], "40");

    // i1: the cloud removes the device.
    let fx = engine.handle_cloud(&ws_message(&ws, 116)).await.unwrap();
    assert_eq!(
        normalized(&fx),
        expected_publishes(&mqtt_step(&mqtt, "i1-device-delete"))
    );
    assert_eq!(engine.devices().count(), 0);
    let rows: i64 = reopened
        .read(|db| {
            Ok(db.query_row(
                "SELECT (SELECT count(*) FROM device) + (SELECT count(*) FROM device_twin)",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(rows, 0);
    drop(_dir);
}
