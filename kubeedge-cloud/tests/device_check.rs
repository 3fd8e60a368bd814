//! The device checks (`kubeedge_cloud::device_check`): KubeEdge's own samples pass, each rule
//! refuses what it should with the field's path, limits are configurable, random JSON never
//! panics; and the dispatcher sends no refused Device, keeps what the node has, reports each
//! refused version once and sends the Device again once it is fixed.

use std::time::{Duration, Instant};

use kubeedge_cloud::device_check::{
    DeviceLimits, MAX_EVENT_MESSAGE, MAX_LISTED, Problems, Rejection, check, check_device,
    check_device_model, rejection_event,
};
use kubeedge_cloud::{Downstream, Kind, Object, ObjectEvent, ObjectKey, Outgoing};
use kubeedge_proto::object_name::is_dns_subdomain;
use proptest::prelude::*;
use serde_json::{Value, json};

const NODE: &str = "edge-1";

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn paths(problems: &Problems) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

fn device(spec: Value) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "Device",
        "metadata": {"name": "thermo-1", "namespace": "default", "uid": "u-thermo", "resourceVersion": "5"},
        "spec": spec,
    })
}

fn model(spec: Value) -> Value {
    json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceModel",
        "metadata": {"name": "thermo-model", "namespace": "default", "uid": "u-model", "resourceVersion": "4"},
        "spec": spec,
    })
}

/// A valid Modbus TCP Device of `NODE` with one property.
fn good_spec() -> Value {
    json!({
        "nodeName": NODE,
        "deviceModelRef": {"name": "thermo-model"},
        "protocol": {"protocolName": "modbus", "configData": {"ip": "127.0.0.1", "port": 1502, "slaveID": 1}},
        "properties": [{
            "name": "temperature",
            "collectCycle": 1000,
            "reportCycle": 1000,
            "desired": {"value": "20"},
            "visitors": {"protocolName": "modbus", "configData": {"register": "HoldingRegister", "offset": 2, "limit": 1, "scale": 0.1}},
        }],
    })
}

#[test]
fn kubeedge_samples_pass() {
    let limits = DeviceLimits::default();
    for text in [
        include_str!("fixtures/mappers-go-modbus-instance.yaml"),
        include_str!("fixtures/kubeedge-docs-beta1-device.yaml"),
    ] {
        let problems = check_device(&yaml(text), &limits);
        assert!(problems.is_empty(), "{problems}");
    }
    for text in [
        include_str!("fixtures/mappers-go-modbus-model.yaml"),
        include_str!("fixtures/kubeedge-docs-beta1-model.yaml"),
    ] {
        let problems = check_device_model(&yaml(text), &limits);
        assert!(problems.is_empty(), "{problems}");
    }
    assert!(check_device(&device(good_spec()), &limits).is_empty());
}

#[test]
fn the_probes_absurd_device_has_three_problems() {
    let mut spec = good_spec();
    spec["protocol"]["configData"]["port"] = json!(9_999_999_999_999_u64);
    spec["properties"][0]["collectCycle"] = json!(-5);
    spec["properties"][0]["desired"]["value"] = json!("x".repeat(100 * 1024));
    let problems = check_device(&device(spec), &DeviceLimits::default());
    assert_eq!(
        paths(&problems),
        [
            "spec.properties[0].desired.value",
            "spec.protocol.configData.port",
            "spec.properties[0].collectCycle",
        ],
        "{problems}"
    );
    let text = problems.to_string();
    assert!(
        text.contains("a string of 102400 bytes (at most 65536)"),
        "{text}"
    );
    assert!(
        text.contains("9999999999999 is out of range 1..=65535"),
        "{text}"
    );
    assert!(text.contains("-5 is negative"), "{text}");
}

/// Sets `pointer` (its parent must exist) to `value`.
fn set(target: &mut Value, pointer: &str, value: Value) {
    let (parent, last) = pointer.rsplit_once('/').unwrap();
    let parent = target
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{pointer}"));
    match parent {
        Value::Object(map) => {
            map.insert(last.to_owned(), value);
        }
        Value::Array(items) => items[last.parse::<usize>().unwrap()] = value,
        _ => panic!("{pointer}"),
    }
}

/// Each rule: a change to the good Device, and the one path it must be refused at.
#[test]
fn each_device_rule_refuses_at_its_path() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/protocol/configData/port",
            json!(0),
            "spec.protocol.configData.port",
        ),
        (
            "/protocol/configData/port",
            json!("65536"),
            "spec.protocol.configData.port",
        ),
        (
            "/protocol/configData/port",
            json!("http"),
            "spec.protocol.configData.port",
        ),
        (
            "/protocol/configData/slaveID",
            json!(256),
            "spec.protocol.configData.slaveID",
        ),
        (
            "/protocol/configData/timeout",
            json!(-1),
            "spec.protocol.configData.timeout",
        ),
        (
            "/protocol/configData",
            json!({"serialPort": "/dev/ttyS0", "slaveID": 0}),
            "spec.protocol.configData.slaveID",
        ),
        (
            "/protocol/configData",
            json!({"com": {"serialPort": "/dev/ttyS0", "dataBits": 9}}),
            "spec.protocol.configData.com.dataBits",
        ),
        (
            "/protocol/configData",
            json!({"serialPort": "/dev/ttyS0", "stopBits": 3}),
            "spec.protocol.configData.stopBits",
        ),
        (
            "/protocol/configData",
            json!({"serialPort": "/dev/ttyS0", "baudRate": 0}),
            "spec.protocol.configData.baudRate",
        ),
        (
            "/protocol/configData/tcp",
            json!({"port": -1}),
            "spec.protocol.configData.tcp.port",
        ),
        (
            "/protocol/configData",
            json!([1]),
            "spec.protocol.configData",
        ),
        (
            "/properties/0/reportCycle",
            json!(86_400_000_000_001_i64),
            "spec.properties[0].reportCycle",
        ),
        (
            "/properties/0/collectCycle",
            json!("10"),
            "spec.properties[0].collectCycle",
        ),
        (
            "/properties/0/collectCycle",
            json!(1.5),
            "spec.properties[0].collectCycle",
        ),
        (
            "/stateReport",
            json!({"reportCycle": -1}),
            "spec.stateReport.reportCycle",
        ),
        (
            "/properties/0/desired/value",
            json!(20),
            "spec.properties[0].desired.value",
        ),
        ("/properties/0/name", json!(""), "spec.properties[0].name"),
        (
            "/properties/0/name",
            json!("a\nb"),
            "spec.properties[0].name",
        ),
        (
            "/properties/0/visitors/configData/offset",
            json!(65_536),
            "spec.properties[0].visitors.configData.offset",
        ),
        (
            "/properties/0/visitors/configData/limit",
            json!(126),
            "spec.properties[0].visitors.configData.limit",
        ),
        (
            "/properties/0/visitors/configData/limit",
            json!(0),
            "spec.properties[0].visitors.configData.limit",
        ),
        (
            "/properties/0/visitors/configData/scale",
            json!("NaN"),
            "spec.properties[0].visitors.configData.scale",
        ),
        (
            "/properties/0/visitors/configData/scale",
            json!("inf"),
            "spec.properties[0].visitors.configData.scale",
        ),
        (
            "/properties/0/visitors/configData/register",
            json!("Holding"),
            "spec.properties[0].visitors.configData.register",
        ),
        (
            "/properties/0/visitors/configData",
            json!({"register": "HoldingRegister", "offset": 65_535, "limit": 2}),
            "spec.properties[0].visitors.configData.limit",
        ),
        (
            "/properties/0/pushMethod",
            json!({"http": {"hostName": "h", "port": 70_000}}),
            "spec.properties[0].pushMethod.http.port",
        ),
        (
            "/properties/0/pushMethod",
            json!({"mqtt": {"address": "tcp://127.0.0.1:1883", "qos": 3}}),
            "spec.properties[0].pushMethod.mqtt.qos",
        ),
        ("/nodeName", json!("Edge_1"), "spec.nodeName"),
        (
            "/deviceModelRef/name",
            json!("a/b"),
            "spec.deviceModelRef.name",
        ),
        (
            "/methods",
            json!([{"propertyNames": ["temperature"]}]),
            "spec.methods[0].name",
        ),
        (
            "/methods",
            json!([{"name": "m", "propertyNames": [1]}]),
            "spec.methods[0].propertyNames",
        ),
        ("/properties", json!({"name": "x"}), "spec.properties"),
    ];
    let limits = DeviceLimits::default();
    for (pointer, value, path) in cases {
        let mut spec = good_spec();
        set(&mut spec, pointer, value.clone());
        let problems = check_device(&device(spec), &limits);
        assert_eq!(paths(&problems), [path], "{pointer} = {value}: {problems}");
    }
}

#[test]
fn coils_may_read_more_than_registers_and_other_protocols_keep_their_keys() {
    let limits = DeviceLimits::default();
    let mut spec = good_spec();
    spec["properties"][0]["visitors"]["configData"] =
        json!({"register": "coilregister", "offset": 0, "limit": 2000});
    assert!(check_device(&device(spec.clone()), &limits).is_empty());
    spec["properties"][0]["visitors"]["configData"]["limit"] = json!(2001);
    assert_eq!(check_device(&device(spec), &limits).len(), 1);

    // offset/limit/register mean something else outside Modbus: not checked there.
    let mut spec = good_spec();
    spec["protocol"] =
        json!({"protocolName": "opcua", "configData": {"url": "opc.tcp://127.0.0.1:4840"}});
    spec["properties"][0]["visitors"] = json!({"protocolName": "opcua", "configData": {"offset": 100_000, "limit": 5000, "register": "x"}});
    let problems = check_device(&device(spec), &limits);
    assert!(problems.is_empty(), "{problems}");
}

#[test]
fn property_names_must_be_unique_in_devices_and_models() {
    let mut spec = good_spec();
    let first = spec["properties"][0].clone();
    spec["properties"].as_array_mut().unwrap().push(first);
    let problems = check_device(&device(spec), &DeviceLimits::default());
    assert_eq!(paths(&problems), ["spec.properties[1].name"], "{problems}");

    let m = model(json!({"protocol": "modbus", "properties": [
        {"name": "t", "type": "INT"}, {"name": "t", "type": "INT"}]}));
    let problems = check_device_model(&m, &DeviceLimits::default());
    assert_eq!(paths(&problems), ["spec.properties[1].name"], "{problems}");
}

#[test]
fn each_model_rule_refuses_at_its_path() {
    let limits = DeviceLimits::default();
    let good = json!({"name": "t", "type": "INT", "accessMode": "ReadWrite", "minimum": "0", "maximum": "100"});
    let ok = model(json!({"protocol": "modbus", "properties": [good.clone()]}));
    assert!(check_device_model(&ok, &limits).is_empty());
    let cases: Vec<(&str, Value, &str)> = vec![
        ("type", json!("INTEGER"), "spec.properties[0].type"),
        ("type", json!(5), "spec.properties[0].type"),
        (
            "accessMode",
            json!("WriteOnly"),
            "spec.properties[0].accessMode",
        ),
        ("minimum", json!("101"), "spec.properties[0]"),
        ("maximum", json!("ten"), "spec.properties[0].maximum"),
        ("minimum", json!("NaN"), "spec.properties[0].minimum"),
        (
            "visitors",
            json!({"protocolName": "modbus", "configData": {"register": "InputRegister", "offset": -1}}),
            "spec.properties[0].visitors.configData.offset",
        ),
    ];
    for (field, value, path) in cases {
        let mut property = good.clone();
        property[field] = value.clone();
        let m = model(json!({"protocol": "modbus", "properties": [property]}));
        let problems = check_device_model(&m, &limits);
        assert_eq!(paths(&problems), [path], "{field} = {value}: {problems}");
    }
    // minimum/maximum are free text for non-numeric types.
    let m = model(
        json!({"properties": [{"name": "s", "type": "STRING", "minimum": "b", "maximum": "a"}]}),
    );
    assert!(check_device_model(&m, &limits).is_empty());
    // Protocol config data of the model is checked like a Device's.
    let m = model(json!({"protocol": "modbus", "protocolConfigData": {"port": 0}}));
    assert_eq!(
        paths(&check_device_model(&m, &limits)),
        ["spec.protocolConfigData.port"]
    );
}

#[test]
fn limits_are_configurable() {
    let mut spec = good_spec();
    spec["properties"][0]["desired"]["value"] = json!("x".repeat(200));
    let d = device(spec);
    assert!(check_device(&d, &DeviceLimits::default()).is_empty());
    let small = DeviceLimits {
        max_string_bytes: 100,
        ..DeviceLimits::default()
    };
    assert_eq!(
        paths(&check_device(&d, &small)),
        ["spec.properties[0].desired.value"]
    );
    let tiny = DeviceLimits {
        max_spec_bytes: 300,
        ..DeviceLimits::default()
    };
    assert_eq!(paths(&check_device(&d, &tiny)), ["spec"]);

    let mut spec = good_spec();
    let property = spec["properties"][0].clone();
    spec["properties"] = Value::Array(
        (0..5)
            .map(|i| {
                let mut p = property.clone();
                p["name"] = json!(format!("p{i}"));
                p
            })
            .collect(),
    );
    let few = DeviceLimits {
        max_properties: 4,
        ..DeviceLimits::default()
    };
    assert_eq!(
        paths(&check_device(&device(spec.clone()), &few)),
        ["spec.properties"]
    );
    assert!(check_device(&device(spec), &DeviceLimits::default()).is_empty());

    let mut spec = good_spec();
    spec["properties"][0]["collectCycle"] = json!(60_001);
    let short = DeviceLimits {
        max_cycle: 60_000,
        ..DeviceLimits::default()
    };
    assert_eq!(
        paths(&check_device(&device(spec), &short)),
        ["spec.properties[0].collectCycle"]
    );
}

#[test]
fn names_must_be_dns_subdomains() {
    for good in ["a", "thermo-1", "a.b-c.d", &"a".repeat(253)] {
        assert!(is_dns_subdomain(good), "{good}");
    }
    for bad in [
        "",
        "A",
        "-a",
        "a-",
        "a..b",
        "a/b",
        "a_b",
        "ä",
        &"a".repeat(254),
    ] {
        assert!(!is_dns_subdomain(bad), "{bad}");
    }
    let mut d = device(good_spec());
    d["metadata"]["name"] = json!("Thermo#1");
    assert_eq!(
        paths(&check_device(&d, &DeviceLimits::default())),
        ["metadata.name"]
    );
}

#[test]
fn deep_nesting_is_refused_without_looking_further() {
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!({ "n": nested });
    }
    let mut spec = good_spec();
    spec["protocol"]["configData"]["deep"] = nested;
    let problems = check_device(&device(spec), &DeviceLimits::default());
    assert_eq!(problems.len(), 1, "{problems}");
    assert!(
        problems
            .to_string()
            .contains("nested deeper than 32 levels")
    );
}

#[test]
fn many_problems_are_listed_up_to_a_bound_and_the_summary_is_bounded() {
    let mut spec = good_spec();
    let property = spec["properties"][0].clone();
    spec["properties"] = Value::Array(
        (0..100)
            .map(|i| {
                let mut p = property.clone();
                p["name"] = json!(format!("p{i}"));
                p["collectCycle"] = json!(-1);
                p
            })
            .collect(),
    );
    let problems = check_device(&device(spec), &DeviceLimits::default());
    assert_eq!(problems.len(), 100);
    assert_eq!(problems.iter().count(), MAX_LISTED);
    assert_eq!(problems.omitted(), 100 - MAX_LISTED);
    assert!(problems.to_string().ends_with("(and 68 more)"));
    let short = problems.summary(50);
    assert!(short.len() <= 50 && short.ends_with("..."), "{short}");
}

#[test]
fn the_event_is_bounded_named_by_version_and_says_why() {
    let mut spec = good_spec();
    spec["properties"] = Value::Array(
        (0..40)
            .map(|i| json!({"name": format!("property-with-a-long-name-{i}"), "collectCycle": -1}))
            .collect(),
    );
    let object = Object::new(Kind::Device, device(spec)).unwrap();
    let problems = check(&object, &DeviceLimits::default());
    let rejection = Rejection {
        object: object.clone(),
        problems,
    };
    let event = rejection_event(&rejection, "2025-01-01T00:00:00Z");
    let message = event["message"].as_str().unwrap();
    assert!(message.len() <= MAX_EVENT_MESSAGE, "{}", message.len());
    assert!(
        message.starts_with(
            "the Device is not sent to node edge-1: spec.properties[0].collectCycle: -1 is negative"
        ),
        "{message}"
    );
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidDevice");
    assert_eq!(event["involvedObject"]["kind"], "Device");
    assert_eq!(event["involvedObject"]["resourceVersion"], "5");
    let name = event["metadata"]["name"].as_str().unwrap();
    assert!(
        is_dns_subdomain(name) && name.starts_with("thermo-1."),
        "{name}"
    );
    // Same version, same name; another version, another name.
    assert_eq!(
        rejection_event(&rejection, "2026-01-01T00:00:00Z")["metadata"]["name"],
        name
    );
    let mut next = device(good_spec());
    next["metadata"]["resourceVersion"] = json!("6");
    let next = Rejection {
        object: Object::new(Kind::Device, next).unwrap(),
        problems: rejection.problems.clone(),
    };
    assert_ne!(rejection_event(&next, "x")["metadata"]["name"], name);

    let m = Object::new(
        Kind::DeviceModel,
        model(json!({"properties": [{"name": "t", "type": "X"}]})),
    )
    .unwrap();
    let problems = check(&m, &DeviceLimits::default());
    let event = rejection_event(
        &Rejection {
            object: m,
            problems,
        },
        "now",
    );
    assert_eq!(event["reason"], "InvalidDeviceModel");
}

/// Any JSON, nested up to 6 levels, with the keys the checks look at.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("port".to_owned()),
        Just("slaveID".to_owned()),
        Just("serialPort".to_owned()),
        Just("limit".to_owned()),
        Just("offset".to_owned()),
        Just("scale".to_owned()),
        Just("register".to_owned()),
        Just("collectCycle".to_owned()),
        Just("properties".to_owned()),
        Just("visitors".to_owned()),
        Just("configData".to_owned()),
        Just("protocol".to_owned()),
        Just("minimum".to_owned()),
        Just("maximum".to_owned()),
        Just("type".to_owned()),
        Just("name".to_owned()),
        "[a-z]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("INT")),
        Just(json!("HoldingRegister")),
        Just(json!("1e400")),
        Just(json!("-0")),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_json_never_panics(spec in any_json(), whole in any_json(), bytes in 0usize..2000) {
        let small = DeviceLimits { max_string_bytes: 8, max_spec_bytes: 64, max_properties: 2, max_cycle: 100 };
        for limits in [DeviceLimits::default(), small] {
            for value in [device(spec.clone()), model(spec.clone()), whole.clone()] {
                let d = check_device(&value, &limits);
                let m = check_device_model(&value, &limits);
                prop_assert!(d.iter().count() <= MAX_LISTED && m.iter().count() <= MAX_LISTED);
                prop_assert!(d.summary(bytes.max(3)).len() <= bytes.max(3));
            }
            let mut spec_in_config = good_spec();
            spec_in_config["protocol"]["configData"] = spec.clone();
            spec_in_config["properties"][0]["visitors"]["configData"] = whole.clone();
            let _ = check_device(&device(spec_in_config), &limits);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The dispatcher
// ---------------------------------------------------------------------------------------------

fn synced() -> Downstream {
    let mut down = Downstream::new(Duration::ZERO);
    for kind in Kind::ALL {
        assert!(
            down.apply(ObjectEvent::Listed {
                kind,
                objects: vec![]
            })
            .is_empty()
        );
    }
    down.connected(NODE, Instant::now());
    assert!(down.tick(Instant::now()).is_empty());
    down
}

fn object(kind: Kind, value: Value) -> Object {
    Object::new(kind, value).unwrap()
}

fn device_at(rv: u64, spec: Value) -> Object {
    let mut d = device(spec);
    d["metadata"]["resourceVersion"] = json!(rv.to_string());
    object(Kind::Device, d)
}

fn good_model(rv: u64) -> Object {
    let mut m = model(
        json!({"protocol": "modbus", "properties": [{"name": "temperature", "type": "INT", "accessMode": "ReadWrite"}]}),
    );
    m["metadata"]["resourceVersion"] = json!(rv.to_string());
    object(Kind::DeviceModel, m)
}

fn absurd_spec() -> Value {
    let mut spec = good_spec();
    spec["protocol"]["configData"]["port"] = json!(9_999_999_999_999_u64);
    spec["properties"][0]["collectCycle"] = json!(-5);
    spec["properties"][0]["desired"]["value"] = json!("x".repeat(100 * 1024));
    spec
}

/// (operation, resource) of each message, membership as `membership`.
fn routes(out: &[Outgoing]) -> Vec<(String, String)> {
    out.iter()
        .map(|o| {
            let r = &o.message.route;
            (
                r.operation
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                r.resource.clone(),
            )
        })
        .collect()
}

fn pair(op: &str, resource: &str) -> (String, String) {
    (op.to_owned(), resource.to_owned())
}

const DEVICE: &str = "default/device/thermo-1";
const MODEL: &str = "default/devicemodel/thermo-model";

#[test]
fn a_refused_device_is_not_sent_and_is_reported_once_per_version() {
    let mut down = synced();
    assert!(down.apply(ObjectEvent::Applied(good_model(4))).is_empty());
    let out = down.apply(ObjectEvent::Applied(device_at(5, absurd_spec())));
    assert!(out.is_empty(), "{:?}", routes(&out));
    let key = ObjectKey::new(Kind::Device, "default", "thermo-1");
    assert!(down.is_refused(&key));
    let rejections = down.take_rejections();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].object.resource_version(), "5");
    assert_eq!(rejections[0].problems.len(), 3);

    // A resync (relist) of the same version: nothing sent, nothing reported again.
    let out = down.apply(ObjectEvent::Listed {
        kind: Kind::Device,
        objects: vec![device_at(5, absurd_spec())],
    });
    assert!(out.is_empty(), "{:?}", routes(&out));
    assert!(down.take_rejections().is_empty());

    // A new, still absurd version: reported again, still not sent.
    assert!(
        down.apply(ObjectEvent::Applied(device_at(6, absurd_spec())))
            .is_empty()
    );
    assert_eq!(down.take_rejections().len(), 1);

    // Fixed: the model, the membership and the Device go.
    let out = down.apply(ObjectEvent::Applied(device_at(7, good_spec())));
    assert_eq!(
        routes(&out),
        [
            pair("update", "membership"),
            pair("insert", MODEL),
            pair("insert", DEVICE)
        ]
    );
    assert!(!down.is_refused(&key));
    assert!(down.take_rejections().is_empty());
}

#[test]
fn what_the_node_has_stays_while_the_device_is_refused() {
    let mut down = synced();
    down.apply(ObjectEvent::Applied(good_model(4)));
    let out = down.apply(ObjectEvent::Applied(device_at(5, good_spec())));
    assert_eq!(out.len(), 3, "{:?}", routes(&out));

    // Made absurd: no update, no delete, no membership change.
    let out = down.apply(ObjectEvent::Applied(device_at(6, absurd_spec())));
    assert!(out.is_empty(), "{:?}", routes(&out));
    // A relist keeps it held too.
    let out = down.apply(ObjectEvent::Listed {
        kind: Kind::Device,
        objects: vec![device_at(6, absurd_spec())],
    });
    assert!(out.is_empty(), "{:?}", routes(&out));
    // A reconnect with an inventory of the old version: nothing either.
    down.connected(NODE, Instant::now());
    let inventory = kubeedge_proto::inventory::Inventory {
        objects: vec![
            kubeedge_proto::inventory::InventoryEntry {
                key: DEVICE.into(),
                uid: "u-thermo".into(),
                resource_version: 5,
            },
            kubeedge_proto::inventory::InventoryEntry {
                key: MODEL.into(),
                uid: "u-model".into(),
                resource_version: 4,
            },
        ],
    };
    let out = down.inventory(NODE, &inventory);
    assert!(out.is_empty(), "{:?}", routes(&out));

    // Fixed: an update.
    let out = down.apply(ObjectEvent::Applied(device_at(7, good_spec())));
    assert_eq!(routes(&out), [pair("update", DEVICE)]);

    // Refused again, then deleted: the delete carries the last version sent, not the
    // refused one.
    down.apply(ObjectEvent::Applied(device_at(8, absurd_spec())));
    let out = down.apply(ObjectEvent::Deleted(device_at(8, absurd_spec())));
    let deleted: Vec<_> = out
        .iter()
        .filter(|o| o.message.route.resource == DEVICE)
        .collect();
    assert_eq!(deleted.len(), 1, "{:?}", routes(&out));
    let content: Value = deleted[0].message.content.decode().unwrap();
    assert_eq!(content["metadata"]["resourceVersion"], "7");
    assert_eq!(deleted[0].message.header.resource_version, "7");
}

#[test]
fn a_refused_model_holds_its_devices() {
    let mut down = synced();
    let mut bad = model(json!({"properties": [{"name": "temperature", "type": "INTEGER"}]}));
    bad["metadata"]["resourceVersion"] = json!("4");
    down.apply(ObjectEvent::Applied(object(Kind::DeviceModel, bad.clone())));
    let rejections = down.take_rejections();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].object.kind(), Kind::DeviceModel);
    let out = down.apply(ObjectEvent::Applied(device_at(5, good_spec())));
    assert!(out.is_empty(), "{:?}", routes(&out));

    let out = down.apply(ObjectEvent::Applied(good_model(9)));
    assert_eq!(
        routes(&out),
        [
            pair("update", "membership"),
            pair("insert", MODEL),
            pair("insert", DEVICE)
        ]
    );
    // The model refused again: the node keeps model and Device as they are.
    bad["metadata"]["resourceVersion"] = json!("10");
    let out = down.apply(ObjectEvent::Applied(object(Kind::DeviceModel, bad)));
    assert!(out.is_empty(), "{:?}", routes(&out));
    assert_eq!(down.take_rejections().len(), 1);
}
