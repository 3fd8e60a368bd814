//! What the device twin takes from MQTT topics, twin payloads and Device CRDs: topic
//! classification never panics and only accepts names that are safe as topic levels; the twin
//! rules never panic and keep their invariants (a local update only moves edge counters up by
//! one; refused syncs change nothing); the DMI conversion of Device and DeviceModel JSON never
//! panics.
#![no_main]

use std::collections::BTreeMap;

use kubeedge_proto::twin::{DeviceTwinUpdate, MsgTwin, TwinValue, TwinVersion, TypeMetadata};
use kubeedge_twin::deal::{DealKind, deal, delta, visible};
use kubeedge_twin::dmi::convert;
use kubeedge_twin::topic::{TwinTopic, device_topic};
use libfuzzer_sys::fuzz_target;

fn existing() -> BTreeMap<String, MsgTwin> {
    let mut twins = BTreeMap::new();
    for (key, ty, deleted) in [("temp", "int", false), ("mode", "string", false), ("gone", "deleted", true)] {
        twins.insert(
            key.to_owned(),
            MsgTwin {
                expected: (!deleted).then(|| TwinValue { value: Some("1".into()), metadata: None }),
                actual: (!deleted).then(|| TwinValue { value: Some("2".into()), metadata: None }),
                optional: Some(key != "mode"),
                metadata: Some(TypeMetadata { value_type: ty.into() }),
                expected_version: Some(TwinVersion { cloud: 3, edge: 4 }),
                actual_version: Some(TwinVersion { cloud: 3, edge: 4 }),
            },
        );
    }
    twins
}

fuzz_target!(|data: &[u8]| {
    if let Ok(topic) = std::str::from_utf8(data) {
        if let Ok(Some(TwinTopic::Device { id, action })) = TwinTopic::classify(topic) {
            for part in [&id.namespace, &id.name] {
                assert!(!part.contains(['/', '+', '#', '\0']));
            }
            // What we build from an accepted id classifies back to the same id.
            let again = device_topic(&id, action.suffix());
            assert_eq!(TwinTopic::classify(&again).unwrap(), Some(TwinTopic::Device { id, action }));
        }
    }
    if let Ok(update) = DeviceTwinUpdate::parse(data) {
        let twins = existing();
        for kind in [DealKind::Local, DealKind::Sync] {
            if let Ok(dealt) = deal(&twins, &update.twin, kind, 1) {
                for key in &dealt.changed {
                    let (before, after) = (twins.get(key), &dealt.twins[key]);
                    if kind == DealKind::Local {
                        if let (Some(b), Some(v)) = (before.and_then(|t| t.actual_version), after.actual_version) {
                            assert!(v.edge == b.edge || v.edge == b.edge + 1);
                            assert_eq!(v.cloud, b.cloud);
                        }
                    }
                }
                for key in dealt.sync.keys() {
                    if kind == DealKind::Sync {
                        // A twin sent back was refused: unchanged.
                        assert_eq!(dealt.twins.get(key), twins.get(key));
                    }
                }
                let _ = delta(&dealt.twins);
                let _ = visible(&dealt.twins);
            }
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = convert::device_from_json(&value);
        let _ = convert::device_model_from_json(&value);
        let _ = convert::apply_model_defaults(&value, &value);
    }
});
