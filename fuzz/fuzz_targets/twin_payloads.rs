//! MQTT twin and device payloads and cloud replies: never panic; what decodes re-encodes (Go
//! style) to JSON that decodes to the same value.
#![no_main]

use bytes::Bytes;
use kubeedge_proto::device::{DeviceStateResult, DeviceStateUpdate, MembershipDetail, MembershipUpdate};
use kubeedge_proto::twin::{DeviceTwinDelta, DeviceTwinDocument, DeviceTwinUpdate, ErrorResult};
use kubeedge_proto::{Content, ObjectResp, go_json};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let wire = go_json::to_vec(value).expect("encodes");
    let back: T = serde_json::from_slice(&wire).expect("own output decodes");
    assert_eq!(&back, value);
}

fn typed<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        round_trip(&value);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = DeviceTwinUpdate::parse(data) {
        round_trip(&update);
        for twin in update.twin.values().flatten() {
            twin.validate().expect("parse validated it");
        }
    }
    if let Ok(state) = DeviceStateUpdate::parse(data) {
        let _ = state.state();
    }
    typed::<DeviceTwinDocument>(data);
    typed::<DeviceTwinDelta>(data);
    typed::<ErrorResult>(data);
    typed::<MembershipUpdate>(data);
    typed::<MembershipDetail>(data);
    typed::<DeviceStateResult>(data);
    if let Ok(content) = Content::from_json(Bytes::copy_from_slice(data)) {
        if let Ok(resp) = content.decode::<ObjectResp>() {
            let _ = resp.error_message();
            let again: ObjectResp = Content::json(&resp).expect("encodes").decode().expect("decodes");
            assert_eq!(again, resp);
        }
    }
});
