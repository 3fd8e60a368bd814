//! Wire-format tests for the DMI v1beta1 message types.
//!
//! Expected bytes are written out by hand from the protobuf encoding rules
//! (tag byte = field_number << 3 | wire_type; wire type 0 = varint,
//! 2 = length-delimited), so a wrong field number, wire type or nesting in
//! `proto/dmi/v1beta1/api.proto` makes these tests fail.

use std::collections::BTreeMap;

use kubeedge_proto::dmi::google::protobuf::{Any, BoolValue, FloatValue, Int64Value, StringValue};
use kubeedge_proto::dmi::{
    CustomizedValue, DbMethod, DbMethodRedis, Device, DeviceModel, DeviceSpec, DeviceStatus,
    MapperInfo, MapperRegisterRequest, MapperRegisterResponse, ProtocolConfig, PushMethod,
    PushMethodOtel, RedisClientConfig, ReportDeviceStatusRequest, Twin, TwinProperty,
    VisitorConfig,
};
use prost::{Message, Name};

/// Concatenates hand-written byte fragments.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn mapper_register_request_exact_bytes() {
    let req = MapperRegisterRequest {
        with_data: true,
        mapper: Some(MapperInfo {
            name: "m".into(),
            version: "1.0".into(),
            api_version: "v1".into(),
            protocol: "modbus".into(),
            address: b"/a.sock".to_vec(),
            state: "ok".into(),
        }),
    };

    // MapperInfo body: 3 + 5 + 4 + 8 + 9 + 4 = 33 = 0x21 bytes.
    let expected = cat(&[
        &[0x08, 0x01], // 1 withData, varint, true
        &[0x12, 0x21], // 2 mapper, len 33
        &[0x0a, 0x01], // 1 name, len 1
        b"m",
        &[0x12, 0x03], // 2 version, len 3
        b"1.0",
        &[0x1a, 0x02], // 3 api_version, len 2
        b"v1",
        &[0x22, 0x06], // 4 protocol, len 6
        b"modbus",
        &[0x2a, 0x07], // 5 address (bytes), len 7
        b"/a.sock",
        &[0x32, 0x02], // 6 state, len 2
        b"ok",
    ]);
    assert_eq!(expected.len(), 37);

    let bytes = req.encode_to_vec();
    assert_eq!(bytes, expected);
    assert_eq!(req.encoded_len(), expected.len());

    let back = MapperRegisterRequest::decode(expected.as_slice()).expect("decode");
    assert_eq!(back, req);
    assert_eq!(back.mapper.expect("mapper").address, b"/a.sock");
}

#[test]
fn mapper_register_request_defaults_are_omitted() {
    // proto3: false / empty fields are not written; an empty submessage that
    // is present is still written as a zero-length field.
    let req = MapperRegisterRequest {
        with_data: false,
        mapper: Some(MapperInfo::default()),
    };
    assert_eq!(req.encode_to_vec(), [0x12, 0x00]);
    assert!(MapperRegisterRequest::default().encode_to_vec().is_empty());
}

#[test]
fn report_device_status_request_exact_bytes() {
    let req = ReportDeviceStatusRequest {
        device_name: "d1".into(),
        reported_device: Some(DeviceStatus {
            twins: vec![Twin {
                property_name: "temp".into(),
                observed_desired: Some(TwinProperty {
                    value: "20".into(),
                    metadata: BTreeMap::new(),
                }),
                reported: Some(TwinProperty {
                    value: "21".into(),
                    metadata: BTreeMap::from([("type".to_owned(), "int".to_owned())]),
                }),
            }],
            report_to_cloud: true,
            report_cycle: 1000,
        }),
        device_namespace: "default".into(),
    };

    let expected = cat(&[
        &[0x0a, 0x02], // 1 deviceName, len 2
        b"d1",
        &[0x12, 0x26], // 2 reportedDevice, len 38 = 33 + 2 + 3
        &[0x0a, 0x1f], //   1 twins[0], len 31 = 6 + 6 + 19
        &[0x0a, 0x04], //     1 propertyName, len 4
        b"temp",
        &[0x12, 0x04], //     2 observedDesired, len 4
        &[0x0a, 0x02], //       1 value, len 2
        b"20",
        &[0x1a, 0x11], //     3 reported, len 17 = 4 + 13
        &[0x0a, 0x02], //       1 value, len 2
        b"21",
        &[0x12, 0x0b], //       2 metadata entry, len 11 = 6 + 5
        &[0x0a, 0x04], //         1 key, len 4
        b"type",
        &[0x12, 0x03], //         2 value, len 3
        b"int",
        &[0x10, 0x01],       //   2 reportToCloud, varint, true
        &[0x18, 0xe8, 0x07], //   3 reportCycle, varint 1000 (0x68|0x80, 0x07)
        &[0x1a, 0x07],       // 3 deviceNamespace, len 7
        b"default",
    ]);
    assert_eq!(expected.len(), 53);

    assert_eq!(req.encode_to_vec(), expected);

    let back = ReportDeviceStatusRequest::decode(expected.as_slice()).expect("decode");
    assert_eq!(back, req);
    let twin = &back.reported_device.as_ref().expect("status").twins[0];
    assert_eq!(
        twin.reported.as_ref().expect("reported").metadata["type"],
        "int"
    );
}

#[test]
fn push_method_field_numbers() {
    // Upstream declares `otel = 4` before `dbMethod = 3`; the numbers are
    // what counts on the wire, and prost writes in field-number order.
    let push = PushMethod {
        db_method: Some(DbMethod {
            redis: Some(DbMethodRedis {
                redis_client_config: Some(RedisClientConfig {
                    addr: "r:6379".into(),
                    db: 2,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        otel: Some(PushMethodOtel {
            endpoint_url: "http://o".into(),
        }),
        ..Default::default()
    };

    let expected = cat(&[
        &[0x1a, 0x0e], // 3 dbMethod, len 14
        &[0x12, 0x0c], //   2 redis, len 12
        &[0x0a, 0x0a], //     1 redisClientConfig, len 10
        &[0x0a, 0x06], //       1 addr, len 6
        b"r:6379",
        &[0x10, 0x02], //       2 db, varint 2
        &[0x22, 0x0a], // 4 otel, len 10
        &[0x0a, 0x08], //   1 endpointURL, len 8
        b"http://o",
    ]);

    assert_eq!(push.encode_to_vec(), expected);
    assert_eq!(
        PushMethod::decode(expected.as_slice()).expect("decode"),
        push
    );
}

#[test]
fn mapper_register_response_decodes_hand_written_bytes() {
    // What edgecore would send back for one model and one device.
    let wire = cat(&[
        &[0x0a, 0x07], // 1 modelList[0], len 7
        &[0x0a, 0x01], //   1 name
        b"m",
        &[0x1a, 0x02], //   3 namespace
        b"ns",
        &[0x12, 0x16], // 2 deviceList[0], len 22
        &[0x0a, 0x01], //   1 name
        b"d",
        &[0x12, 0x0d], //   2 spec, len 13
        &[0x0a, 0x01], //     1 deviceModelReference
        b"m",
        &[0x12, 0x08], //     2 protocol, len 8
        &[0x0a, 0x06], //       1 protocolName
        b"modbus",
        &[0x22, 0x02], //   4 namespace
        b"ns",
    ]);

    let resp = MapperRegisterResponse::decode(wire.as_slice()).expect("decode");
    let want = MapperRegisterResponse {
        model_list: vec![DeviceModel {
            name: "m".into(),
            spec: None,
            namespace: "ns".into(),
        }],
        device_list: vec![Device {
            name: "d".into(),
            spec: Some(DeviceSpec {
                device_model_reference: "m".into(),
                protocol: Some(ProtocolConfig {
                    protocol_name: "modbus".into(),
                    config_data: None,
                }),
                properties: vec![],
                methods: vec![],
            }),
            status: None,
            namespace: "ns".into(),
        }],
    };
    assert_eq!(resp, want);
    // Canonical input, so re-encoding reproduces it.
    assert_eq!(resp.encode_to_vec(), wire);
}

#[test]
fn customized_value_with_string_value_any() {
    let type_url = StringValue::type_url();
    assert_eq!(type_url, "type.googleapis.com/google.protobuf.StringValue");
    assert_eq!(type_url.len(), 47);

    let inner = StringValue {
        value: "HoldingRegister".into(),
    };
    let packed = Any {
        type_url: type_url.clone(),
        value: inner.encode_to_vec(),
    };
    let cv = CustomizedValue {
        data: BTreeMap::from([("register".to_owned(), packed)]),
    };

    let expected = cat(&[
        &[0x0a, 0x50], // 1 data entry, len 80 = 10 + 70
        &[0x0a, 0x08], //   1 key, len 8
        b"register",
        &[0x12, 0x44], //   2 value (Any), len 68 = 49 + 19
        &[0x0a, 0x2f], //     1 type_url, len 47
        b"type.googleapis.com/google.protobuf.StringValue",
        &[0x12, 0x11], //     2 value, len 17
        &[0x0a, 0x0f], //       StringValue.value, len 15
        b"HoldingRegister",
    ]);
    assert_eq!(expected.len(), 82);
    assert_eq!(cv.encode_to_vec(), expected);

    // Round trip through a visitor config and unpack the Any again.
    let visitor = VisitorConfig {
        protocol_name: "modbus".into(),
        config_data: Some(cv),
    };
    let back = VisitorConfig::decode(visitor.encode_to_vec().as_slice()).expect("decode");
    assert_eq!(back, visitor);

    let any = &back.config_data.as_ref().expect("configData").data["register"];
    assert_eq!(any.type_url, type_url);
    let unpacked = StringValue::decode(any.value.as_slice()).expect("decode StringValue");
    assert_eq!(unpacked.value, "HoldingRegister");
}

#[test]
fn customized_value_wrapper_types_round_trip_in_key_order() {
    fn pack<M: Message + Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    let cv = CustomizedValue {
        data: BTreeMap::from([
            ("scale".to_owned(), pack(&FloatValue { value: 0.5 })),
            ("offset".to_owned(), pack(&Int64Value { value: -2 })),
            ("isSwap".to_owned(), pack(&BoolValue { value: true })),
        ]),
    };
    let bytes = cv.encode_to_vec();

    // Map entries are written in sorted key order: isSwap < offset < scale.
    let pos = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("key present")
    };
    assert!(pos(b"isSwap") < pos(b"offset"));
    assert!(pos(b"offset") < pos(b"scale"));

    // Int64Value{-2}: tag 0x08 then the 10-byte two's-complement varint.
    let offset = &cv.data["offset"];
    assert_eq!(
        offset.value,
        [
            0x08, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ]
    );
    // FloatValue{0.5}: tag 0x0d (field 1, fixed32), little-endian 0x3f000000.
    assert_eq!(cv.data["scale"].value, [0x0d, 0x00, 0x00, 0x00, 0x3f]);

    let back = CustomizedValue::decode(bytes.as_slice()).expect("decode");
    assert_eq!(back, cv);
    for (key, any) in &back.data {
        match any.type_url.as_str() {
            "type.googleapis.com/google.protobuf.FloatValue" => {
                assert_eq!(key, "scale");
                let v = FloatValue::decode(any.value.as_slice()).expect("float");
                assert!((v.value - 0.5).abs() < f32::EPSILON);
            }
            "type.googleapis.com/google.protobuf.Int64Value" => {
                assert_eq!(key, "offset");
                let v = Int64Value::decode(any.value.as_slice()).expect("int64");
                assert_eq!(v.value, -2);
            }
            "type.googleapis.com/google.protobuf.BoolValue" => {
                assert_eq!(key, "isSwap");
                assert!(BoolValue::decode(any.value.as_slice()).expect("bool").value);
            }
            other => panic!("unexpected type url {other}"),
        }
    }
}

#[test]
fn generated_names_use_the_v1beta1_package() {
    assert_eq!(
        MapperRegisterRequest::full_name(),
        "v1beta1.MapperRegisterRequest"
    );
    assert_eq!(
        ReportDeviceStatusRequest::type_url(),
        "type.googleapis.com/v1beta1.ReportDeviceStatusRequest"
    );
    assert_eq!(
        kubeedge_proto::dmi::DEFAULT_EDGECORE_SOCKET,
        "/etc/kubeedge/dmi.sock"
    );
}
