//! Resource paths, cloud resource paths, topics and device ids: never panic; whatever parses
//! prints back to the same string.
#![no_main]

use kubeedge_proto::{CloudResource, DeviceId, Resource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(r) = Resource::parse(text) {
        assert_eq!(r.to_string(), text);
        assert_eq!(Resource::parse(&r.to_string()).unwrap(), r);
    }
    if let Ok(r) = CloudResource::parse(text) {
        assert_eq!(r.to_string(), text);
    }
    if let Ok(r) = CloudResource::parse_topic(text) {
        assert_eq!(r.to_string(), text);
    }
    let _ = CloudResource::split(text);
    let _ = Resource::topic(text);
    if let Ok(id) = text.parse::<DeviceId>() {
        assert_eq!(id.to_string(), text);
    }
});
