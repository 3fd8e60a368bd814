//! Golden vectors: every WebSocket message and MQTT payload captured between a real KubeEdge
//! v1.22.2 cloudcore and edgecore (tests/vectors/README.md) decodes, shows the right typed
//! fields, and re-encodes to the identical bytes.

use std::collections::HashMap;

use bytes::Bytes;
use kubeedge_proto::device::{
    DeviceStateResult, DeviceStateUpdate, MembershipDetail, MembershipDetailRequest,
    MembershipUpdate,
};
use kubeedge_proto::twin::{
    BaseMessage, DeviceTwinDelta, DeviceTwinDocument, DeviceTwinResult, DeviceTwinUpdate,
    ErrorResult, REASON_VALUE, TwinVersion,
};
use kubeedge_proto::{
    ContentKind, DEFAULT_MAX_MESSAGE_LEN, DeviceEvent, Group, Message, Namespace, Operation,
    Resource, ResourceType, Source, go_json,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[path = "support/capture.rs"]
#[allow(dead_code)]
mod capture;

const MQTT: &str = include_str!("vectors/mqtt-v1.22.2.jsonl");

struct Captured {
    seq: u64,
    dir: String,
    payload: String,
    msg: Message,
}

fn ws_messages() -> Vec<Captured> {
    capture::message_records()
        .into_iter()
        .map(|rec| {
            let payload = rec["payload"].as_str().unwrap().to_owned();
            let msg = Message::decode_json(Bytes::from(payload.clone()), DEFAULT_MAX_MESSAGE_LEN)
                .unwrap_or_else(|e| panic!("seq {}: {e}", rec["seq"]));
            Captured {
                seq: rec["seq"].as_u64().unwrap(),
                dir: rec["dir"].as_str().unwrap().to_owned(),
                payload,
                msg,
            }
        })
        .collect()
}

fn by_seq(all: &[Captured], seq: u64) -> &Message {
    &all.iter().find(|c| c.seq == seq).unwrap().msg
}

/// Decodes `raw` as `T` and checks that Go-compatible encoding gives back the same bytes.
fn typed_round_trip<T: DeserializeOwned + Serialize>(raw: &[u8], what: &str) -> T {
    let value: T = serde_json::from_slice(raw).unwrap_or_else(|e| panic!("{what}: {e}"));
    let again = go_json::to_vec(&value).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(raw),
        "{what}: typed re-encoding differs"
    );
    value
}

#[test]
fn all_79_messages_reencode_byte_identical() {
    let all = ws_messages();
    assert_eq!(all.len(), 79);
    for c in &all {
        let mut again = c.msg.to_json();
        again.push(b'\n');
        assert_eq!(
            String::from_utf8(again).unwrap(),
            c.payload,
            "seq {}",
            c.seq
        );
    }
}

#[test]
fn every_route_name_in_the_capture_is_known() {
    for c in ws_messages() {
        let r = &c.msg.route;
        for known in [
            r.source.as_ref().is_none_or(Source::is_known),
            r.group.as_ref().is_none_or(Group::is_known),
            r.operation.as_ref().is_none_or(Operation::is_known),
        ] {
            assert!(known, "seq {}: unknown name in {}", c.seq, c.msg);
        }
    }
}

#[test]
fn every_resource_parses_except_the_shutdown_message() {
    for c in ws_messages() {
        if c.msg.is_empty_shutdown() {
            assert!(c.msg.resource().is_err());
            continue;
        }
        let resource = c
            .msg
            .resource()
            .unwrap_or_else(|e| panic!("seq {}: {e}", c.seq));
        assert_eq!(resource.to_string(), c.msg.route.resource, "seq {}", c.seq);
    }
}

#[test]
fn resourceversion_matches_the_object_and_only_cloud_sends_it() {
    for c in ws_messages() {
        let rv = &c.msg.header.resource_version;
        if c.dir == "edge->cloud" {
            assert!(rv.is_empty(), "seq {}", c.seq);
            continue;
        }
        if rv.is_empty() {
            continue;
        }
        let obj: Value = c.msg.content.decode().unwrap();
        assert_eq!(
            obj["metadata"]["resourceVersion"],
            Value::from(rv.as_str()),
            "seq {}",
            c.seq
        );
    }
}

#[test]
fn acks_answer_an_earlier_message_on_the_same_resource() {
    let all = ws_messages();
    let sent: HashMap<&str, &Message> = all
        .iter()
        .filter(|c| c.dir == "cloud->edge")
        .map(|c| (c.msg.header.id.as_str(), &c.msg))
        .collect();
    let mut acks = 0;
    for c in all
        .iter()
        .filter(|c| c.dir == "edge->cloud" && c.msg.is_ack())
    {
        let original = sent[c.msg.header.parent_id.as_str()];
        assert_eq!(
            c.msg.route.resource, original.route.resource,
            "seq {}",
            c.seq
        );
        assert!(!original.header.resource_version.is_empty());
        acks += 1;
    }
    // Every cloud message with a resourceversion is acknowledged exactly once in the capture.
    let tracked = sent
        .values()
        .filter(|m| !m.header.resource_version.is_empty())
        .count();
    assert_eq!(acks, tracked);
}

#[test]
fn typed_fields_of_representative_messages() {
    let all = ws_messages();

    let keepalive = by_seq(&all, 7);
    assert!(keepalive.is_keepalive());
    assert_eq!(keepalive.route.source, Some(Source::Websocket));
    assert_eq!(keepalive.resource().unwrap(), Resource::Node);
    assert_eq!(keepalive.content.as_str().unwrap(), "ping");

    let insert = by_seq(&all, 13);
    assert_eq!(insert.route.source, Some(Source::EdgeController));
    assert_eq!(insert.route.operation, Some(Operation::Insert));
    assert_eq!(insert.header.resource_version, "247");
    assert_eq!(insert.content.kind(), ContentKind::Object);
    let Resource::Object(obj) = insert.resource().unwrap() else {
        panic!("not an object")
    };
    assert_eq!(obj.namespace, Namespace::Named("default".into()));
    assert_eq!(obj.resource_type, ResourceType::Pod);
    assert_eq!(obj.name.as_deref(), Some("pod-demo"));
    let pod: Value = insert.content.decode().unwrap();
    assert_eq!(pod["kind"], "Pod");

    let ack = by_seq(&all, 14);
    assert!(ack.is_ack());
    assert_eq!(ack.header.parent_id, insert.header.id);
    assert_eq!(ack.route.source, Some(Source::EdgeController));

    // Device ACKs are rewritten by metamanager to meta/twin.
    let device_ack = by_seq(&all, 40);
    assert_eq!(device_ack.route.source, Some(Source::Meta));
    assert_eq!(device_ack.route.group, Some(Group::Twin));

    // membership/detail: a JSON document inside a string.
    let detail = by_seq(&all, 8);
    assert_eq!(detail.content.kind(), ContentKind::String);
    assert_eq!(detail.resource().unwrap(), Resource::MembershipDetail);
    let req: MembershipDetailRequest = detail.content.decode().unwrap();
    assert_eq!(req.group_id, "ke-edge-test");
    assert_eq!(req.operation, "detail");
    typed_round_trip::<MembershipDetailRequest>(detail.content.as_str().unwrap().as_bytes(), "8");

    // Membership update from the device controller: an object, with `removed_devices: null`.
    let membership = by_seq(&all, 36);
    assert_eq!(membership.resource().unwrap(), Resource::Membership);
    let upd: MembershipUpdate = typed_round_trip(membership.content.as_json(), "36");
    assert_eq!(upd.added_devices.unwrap()[0].id, "default/thermo-1");
    assert!(upd.removed_devices.is_none());
    let removed: MembershipUpdate = typed_round_trip(by_seq(&all, 116).content.as_json(), "116");
    assert!(removed.added_devices.is_none());

    // The twin report to the cloud carries versions.
    let edge_updated = by_seq(&all, 46);
    let Resource::Device { id, event } = edge_updated.resource().unwrap() else {
        panic!()
    };
    assert_eq!(id.to_string(), "default/thermo-1");
    assert_eq!(event, DeviceEvent::TwinEdgeUpdated);
    let twin: DeviceTwinUpdate = typed_round_trip(edge_updated.content.as_json(), "46");
    let temperature = twin.twin["temperature"].as_ref().unwrap();
    assert_eq!(
        temperature.actual_version,
        Some(TwinVersion { cloud: 0, edge: 1 })
    );
    typed_round_trip::<DeviceTwinUpdate>(by_seq(&all, 52).content.as_json(), "52");

    let confirm = by_seq(&all, 47);
    assert_eq!(confirm.resource().unwrap(), Resource::Twin);
    assert!(confirm.is_ack());
    assert_eq!(confirm.header.parent_id, edge_updated.header.id);

    // State update: a JSON string content.
    let state = by_seq(&all, 55);
    let Resource::Device { event, .. } = state.resource().unwrap() else {
        panic!()
    };
    assert_eq!(event, DeviceEvent::StateUpdate);
    let result: DeviceStateResult =
        typed_round_trip(state.content.as_str().unwrap().as_bytes(), "55");
    assert_eq!(result.device.state, "online");

    // Uploads carry the MQTT topic as the resource and the payload as a string, Go-escaped.
    let upload = by_seq(&all, 66);
    assert_eq!(upload.route.operation, Some(Operation::Upload));
    assert_eq!(
        upload.resource().unwrap(),
        Resource::Topic("app1/user/hello".into())
    );
    assert_eq!(upload.content.as_str().unwrap(), "plain text payload <&> é");
    assert!(
        std::str::from_utf8(upload.content.as_json())
            .unwrap()
            .contains("\\u003c\\u0026\\u003e")
    );

    // The zero-value message edgecore writes on shutdown.
    for seq in [97, 98, 128] {
        assert!(by_seq(&all, seq).is_empty_shutdown());
    }

    // The cluster-scoped Node path and a devicemodel delete carrying the insert-time rv.
    let model_delete = by_seq(&all, 115);
    assert_eq!(model_delete.route.operation, Some(Operation::Delete));
    assert_eq!(model_delete.header.resource_version, "271");
}

#[test]
fn resent_membership_details_are_byte_identical() {
    let all = ws_messages();
    assert_eq!(by_seq(&all, 90), by_seq(&all, 8));
    let first = all.iter().find(|c| c.seq == 8).unwrap();
    let resent = all.iter().find(|c| c.seq == 90).unwrap();
    assert_eq!(first.payload, resent.payload);
}

#[test]
fn mqtt_payloads_decode_validate_and_reencode() {
    let mut checked = 0;
    for line in MQTT.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let topic = rec["topic"].as_str().unwrap();
        let payload = rec["payload"].as_str().unwrap().as_bytes();
        // edgecore publishes validation errors under an empty device id.
        let suffix = topic
            .strip_prefix("$hw/events/device//")
            .or_else(|| topic.strip_prefix("$hw/events/device/"))
            .map(|rest| {
                if topic.starts_with("$hw/events/device//") {
                    rest
                } else {
                    rest.splitn(3, '/').nth(2).unwrap_or("")
                }
            })
            .or_else(|| topic.strip_prefix("$hw/events/node/ke-edge-test/"));
        match suffix {
            Some("twin/update") => {
                match DeviceTwinUpdate::parse(payload) {
                    Ok(upd) => {
                        typed_round_trip::<DeviceTwinUpdate>(payload, topic);
                        assert!(!upd.twin.is_empty());
                    }
                    // The one invalid update of the capture: a value with a space.
                    Err(e) => {
                        assert_eq!(rec["step"], "e1b-mqtt-twin-update-invalid");
                        assert_eq!(e.to_string(), REASON_VALUE);
                    }
                }
            }
            Some("twin/update/result") | Some("twin/get/result") => {
                if topic == "$hw/events/device//twin/update/result" {
                    let err: ErrorResult = typed_round_trip(payload, topic);
                    assert_eq!(err.code, 400);
                    assert_eq!(err.reason, REASON_VALUE);
                } else {
                    let res: DeviceTwinResult = typed_round_trip(payload, topic);
                    // Results published over MQTT never carry versions.
                    assert!(
                        res.twin
                            .values()
                            .flatten()
                            .all(|t| t.actual_version.is_none())
                    );
                }
            }
            Some("twin/update/document") => {
                typed_round_trip::<DeviceTwinDocument>(payload, topic);
            }
            Some("twin/update/delta") => {
                let delta: DeviceTwinDelta = typed_round_trip(payload, topic);
                assert_eq!(delta.delta["setpoint"], "40");
            }
            Some("twin/get") | Some("membership/get") => {
                typed_round_trip::<BaseMessage>(payload, topic);
            }
            Some("state/update") => {
                let upd = DeviceStateUpdate::parse(payload).unwrap();
                typed_round_trip::<DeviceStateUpdate>(payload, topic);
                assert!(upd.state().is_ok());
            }
            Some("state/update/result") => {
                typed_round_trip::<DeviceStateResult>(payload, topic);
            }
            Some("membership/updated") => {
                typed_round_trip::<MembershipUpdate>(payload, topic);
            }
            Some("membership/get/result") => {
                let detail: MembershipDetail = typed_round_trip(payload, topic);
                assert_eq!(detail.devices.unwrap()[0].state, "online");
            }
            // Uploads: opaque payloads.
            _ => {
                assert!(
                    !topic.starts_with("$hw/events/device/"),
                    "unclassified {topic}"
                );
                continue;
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 21);
}
