//! What an edge node sends the cloud (hostile: any bytes a node's certificate can put on the
//! link): decoding the message, node isolation's decision on it (`decide`), an inventory
//! applied to the dispatcher, and the twin merge never panic.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kubeedge_cloud::{Decision, Downstream, Kind, Object, ObjectEvent, decide, merge_twins};
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// A view with a pod, its ConfigMap and a device on node `n1`, and a pod on `n2`.
fn objects() -> &'static Vec<ObjectEvent> {
    static OBJECTS: OnceLock<Vec<ObjectEvent>> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let pod = |name: &str, node: &str| {
            Object::new(Kind::Pod, json!({"metadata": {"name": name, "namespace": "default", "uid": name, "resourceVersion": "3"},
                "spec": {"nodeName": node, "volumes": [{"name": "v", "configMap": {"name": "cm"}}]}})).unwrap()
        };
        let cm = Object::new(Kind::ConfigMap, json!({"metadata": {"name": "cm", "namespace": "default", "uid": "c", "resourceVersion": "2"}})).unwrap();
        let device = Object::new(Kind::Device, json!({"metadata": {"name": "d", "namespace": "default", "uid": "d", "resourceVersion": "4"},
            "spec": {"nodeName": "n1", "deviceModelRef": {"name": "m"}}})).unwrap();
        let mut events: Vec<ObjectEvent> = Kind::ALL
            .into_iter()
            .map(|kind| ObjectEvent::Listed { kind, objects: vec![] })
            .collect();
        events.extend([pod("p1", "n1"), pod("p2", "n2"), cm, device].map(ObjectEvent::Applied));
        events
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::decode_json(bytes::Bytes::copy_from_slice(data), DEFAULT_MAX_MESSAGE_LEN) else {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
            if let Some(twins) = value.as_object() {
                let _ = merge_twins(&value, twins);
            }
        }
        return;
    };
    let mut view = Downstream::new(Duration::ZERO);
    for event in objects() {
        view.apply(event.clone());
    }
    view.connected("n1", Instant::now());
    match decide("n1", &msg, &view) {
        Decision::Inventory(inventory) => {
            let _ = view.inventory("n1", &inventory);
        }
        Decision::Write(kubeedge_cloud::Action::TwinReported { twins, .. }) => {
            let _ = merge_twins(&json!({"twins": [{"propertyName": "t"}]}), &twins);
        }
        _ => {}
    }
});
