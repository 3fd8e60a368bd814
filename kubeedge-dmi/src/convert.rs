//! Conversions between the Kubernetes device CRDs (`devices.kubeedge.io/v1beta1` JSON, as the
//! cloud sends them and the MetaManager stores them) and the DMI protobuf messages.
//!
//! The rules are KubeEdge's (`edge/pkg/devicetwin/dtcommon.ConvertDevice`,
//! `ConvertDeviceModel`, `dataToAny`, and `dmicache.overrideDeviceInstanceConfig`):
//!
//! - KubeEdge converts by JSON round trip (CRD struct -> JSON -> protobuf struct), so field names
//!   match the way Go's `encoding/json` matches them: exactly, or else ignoring ASCII case
//!   (`hostName` fills `hostname`, `TDEngine` fills `tdengine`). A field of the wrong JSON type
//!   is an error, as it is for Go.
//! - `configData` maps (protocol and visitor) become [`CustomizedValue`](dmi::CustomizedValue)s
//!   whose values are packed into `google.protobuf.Any`: strings as `StringValue`, booleans as
//!   `BoolValue`, and **every number as `FloatValue`** (Go decodes JSON numbers into `float64`,
//!   and `dataToAny` narrows `float64` to `float32`), so `"slaveID": 1` arrives as `FloatValue
//!   1.0` and integers above 2^24 lose precision, exactly as with edgecore. `null`, arrays and
//!   objects cannot be converted: KubeEdge fails the whole device ("does not support converting
//!   to any"), and so does this module.
//! - Before a device goes to a mapper its model's defaults are applied
//!   ([`apply_model_defaults`]): a model property's `visitors` replace the device property's,
//!   then the device's own `configData` entries win; the model's `protocolConfigData` is the base
//!   of the device's `protocol.configData`.
//!
//! Every map and list is bounded ([`MAX_MAP_ENTRIES`], [`MAX_LIST_LEN`]); hostile input gives an
//! [`Error::Validation`] naming the offending field, never a panic.

use std::collections::BTreeMap;

use base64::Engine as _;
use kubeedge_proto::device::DeviceStateUpdate;
use kubeedge_proto::dmi;
use kubeedge_proto::dmi::google::protobuf::{
    Any, BoolValue, DoubleValue, FloatValue, Int32Value, Int64Value, StringValue,
};
use kubeedge_proto::twin::{DeviceTwinUpdate, MsgTwin, TwinValue};
use prost::{Message as _, Name};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The most entries a `configData`, `metadata` or `tag` map may have.
pub const MAX_MAP_ENTRIES: usize = 1024;

/// The most items a list (properties, methods, twins, property names) may have.
pub const MAX_LIST_LEN: usize = 4096;

type Object = Map<String, Value>;

// ---------------------------------------------------------------------------------------------
// Devices and models
// ---------------------------------------------------------------------------------------------

/// Converts a `Device` CRD (JSON) into a DMI [`Device`](dmi::Device), as KubeEdge's
/// `ConvertDevice` does. Model defaults are *not* applied here; see [`apply_model_defaults`].
///
/// Fails with [`Error::Validation`] when the JSON is not a Device with a name, when a field has
/// the wrong type, when a `configData` value is not a string, number or boolean, or when a map or
/// list is over its bound.
pub fn device_from_json(device: &Value) -> Result<dmi::Device> {
    let obj = root(device, "Device")?;
    let (namespace, name) = object_id(obj, "Device")?;
    let context = |e: Error| prefix(e, &format!("Device {namespace}/{name}"));
    let spec = device_spec(object(obj, "spec", "")?).map_err(context)?;
    let status = device_status(object(obj, "status", "")?).map_err(context)?;
    Ok(dmi::Device {
        name,
        spec: Some(spec),
        status: Some(status),
        namespace,
    })
}

/// Converts a `DeviceModel` CRD (JSON) into a DMI [`DeviceModel`](dmi::DeviceModel), as
/// KubeEdge's `ConvertDeviceModel` does (the CRD's `protocol`, `protocolConfigData` and property
/// `visitors` have no place in the message and are dropped).
pub fn device_model_from_json(model: &Value) -> Result<dmi::DeviceModel> {
    let obj = root(model, "DeviceModel")?;
    let (namespace, name) = object_id(obj, "DeviceModel")?;
    let context = |e: Error| prefix(e, &format!("DeviceModel {namespace}/{name}"));
    let spec = model_spec(object(obj, "spec", "")?).map_err(context)?;
    Ok(dmi::DeviceModel {
        name,
        spec: Some(spec),
        namespace,
    })
}

/// Applies a model's defaults to a device, returning the device JSON a mapper should get
/// (KubeEdge's `overrideDeviceInstanceConfig`, applied before every `RegisterDevice`,
/// `UpdateDevice` and `MapperRegister` answer):
///
/// - for each device property with a same-named model property that has `visitors`, the model's
///   visitors replace the device's, and then the device's own `visitors.configData` entries are
///   merged over them (the device wins);
/// - the device's `protocol.configData` becomes the model's `spec.protocolConfigData` with the
///   device's own entries merged over it.
///
/// Fails when the device has no `spec.deviceModelRef` (KubeEdge: "device has no device model
/// reference") or either JSON is malformed.
pub fn apply_model_defaults(device: &Value, model: &Value) -> Result<Value> {
    let obj = root(device, "Device")?;
    let (namespace, name) = object_id(obj, "Device")?;
    if device_model_ref(device).is_none() {
        return Err(Error::Validation(format!(
            "Device {namespace}/{name} has no device model reference"
        )));
    }
    let model_obj = root(model, "DeviceModel")?;
    let model_spec = object(model_obj, "spec", "DeviceModel")?;
    let empty = Object::new();
    let model_spec = model_spec.unwrap_or(&empty);
    let model_props = array(model_spec, "properties", "DeviceModel.spec")?;

    let mut out = device.clone();
    let Some(spec) = out
        .as_object_mut()
        .and_then(|o| get_mut(o, "spec"))
        .and_then(Value::as_object_mut)
    else {
        // No spec: nothing a model could fill in.
        return Ok(out);
    };

    if let Some(props) = get_mut(spec, "properties").and_then(Value::as_array_mut) {
        check_len(props.len(), MAX_LIST_LEN, "spec.properties")?;
        for prop in props.iter_mut().filter_map(Value::as_object_mut) {
            let prop_name = field(prop, "name").and_then(Value::as_str).unwrap_or("");
            let model_visitors = model_props
                .iter()
                .filter_map(Value::as_object)
                .find(|mp| field(mp, "name").and_then(Value::as_str) == Some(prop_name))
                .and_then(|mp| field(mp, "visitors"));
            let Some(model_visitors) = model_visitors else {
                continue;
            };
            let own_config = field(prop, "visitors")
                .and_then(Value::as_object)
                .and_then(|v| field(v, "configData"))
                .cloned();
            let mut visitors = model_visitors.clone();
            if let Some(visitors) = visitors.as_object_mut() {
                merge_config_data(visitors, "configData", own_config)?;
            }
            set(prop, "visitors", visitors);
        }
    }

    let model_config = field(model_spec, "protocolConfigData").cloned();
    let mut protocol = field(spec, "protocol")
        .cloned()
        .unwrap_or(Value::Object(Object::new()));
    if let Some(protocol_obj) = protocol.as_object_mut() {
        let own_config = field(protocol_obj, "configData").cloned();
        match model_config {
            Some(base) => set(protocol_obj, "configData", base),
            None => remove(protocol_obj, "configData"),
        }
        merge_config_data(protocol_obj, "configData", own_config)?;
        set(spec, "protocol", protocol);
    }
    Ok(out)
}

/// Merges `own` (the device's `configData`) over `holder[key]` (the model's): entries of `own`
/// win; with no model data `own` is used as is; with no `own` the model data stays.
fn merge_config_data(holder: &mut Object, key: &str, own: Option<Value>) -> Result<()> {
    let Some(own) = own.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let Value::Object(own) = own else {
        return Err(Error::Validation(format!(
            "{key}: expected an object, got {}",
            type_name(&own)
        )));
    };
    check_len(own.len(), MAX_MAP_ENTRIES, key)?;
    match get_mut(holder, key) {
        Some(Value::Object(base)) => {
            check_len(base.len(), MAX_MAP_ENTRIES, key)?;
            base.extend(own);
            check_len(base.len(), MAX_MAP_ENTRIES, key)?;
        }
        _ => set(holder, key, Value::Object(own)),
    }
    Ok(())
}

/// `spec.protocol.protocolName` of a Device, `""` when absent: the protocol whose mapper serves
/// it.
pub fn device_protocol(device: &Value) -> &str {
    device
        .as_object()
        .and_then(|o| field(o, "spec"))
        .and_then(Value::as_object)
        .and_then(|s| field(s, "protocol"))
        .and_then(Value::as_object)
        .and_then(|p| field(p, "protocolName"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `spec.deviceModelRef.name` of a Device.
pub fn device_model_ref(device: &Value) -> Option<&str> {
    device
        .as_object()
        .and_then(|o| field(o, "spec"))
        .and_then(Value::as_object)
        .and_then(|s| field(s, "deviceModelRef"))
        .and_then(Value::as_object)
        .and_then(|r| field(r, "name"))
        .and_then(Value::as_str)
}

/// `spec.protocol` of a DeviceModel, `""` when absent: KubeEdge sends a model's create, update
/// and remove to the mapper of this protocol.
pub fn model_protocol(model: &Value) -> &str {
    model
        .as_object()
        .and_then(|o| field(o, "spec"))
        .and_then(Value::as_object)
        .and_then(|s| field(s, "protocol"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `(metadata.namespace, metadata.name)` of a Kubernetes object; fails when it has no name.
pub fn object_namespaced_name(object: &Value) -> Result<(String, String)> {
    object_id(root(object, "object")?, "object")
}

fn object_id(obj: &Object, kind: &str) -> Result<(String, String)> {
    let meta = object(obj, "metadata", kind)?
        .ok_or_else(|| Error::Validation(format!("{kind} has no metadata")))?;
    let name = string(meta, "name", "metadata")?;
    if name.is_empty() {
        return Err(Error::Validation(format!("{kind} has no metadata.name")));
    }
    let namespace = string(meta, "namespace", "metadata")?;
    Ok((namespace, name))
}

fn device_spec(spec: Option<&Object>) -> Result<dmi::DeviceSpec> {
    let empty = Object::new();
    let spec = spec.unwrap_or(&empty);
    let device_model_reference = match object(spec, "deviceModelRef", "spec")? {
        Some(r) => string(r, "name", "spec.deviceModelRef")?,
        None => String::new(),
    };
    let protocol = object(spec, "protocol", "spec")?.unwrap_or(&empty);
    let protocol = dmi::ProtocolConfig {
        protocol_name: string(protocol, "protocolName", "spec.protocol")?,
        config_data: config_data(protocol, "spec.protocol")?,
    };
    let properties = array(spec, "properties", "spec")?
        .iter()
        .enumerate()
        .map(|(i, p)| device_property(p, &format!("spec.properties[{i}]")))
        .collect::<Result<_>>()?;
    let methods = array(spec, "methods", "spec")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = format!("spec.methods[{i}]");
            let m = as_object(m, &path)?;
            Ok(dmi::DeviceMethod {
                name: string(m, "name", &path)?,
                description: string(m, "description", &path)?,
                property_names: string_list(m, "propertyNames", &path)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(dmi::DeviceSpec {
        device_model_reference,
        protocol: Some(protocol),
        properties,
        methods,
    })
}

fn device_property(value: &Value, path: &str) -> Result<dmi::DeviceProperty> {
    let p = as_object(value, path)?;
    let empty = Object::new();
    let visitors = object(p, "visitors", path)?.unwrap_or(&empty);
    let visitors_path = format!("{path}.visitors");
    let push_method = object(p, "pushMethod", path)?
        .map(|m| push_method(m, &format!("{path}.pushMethod")))
        .transpose()?;
    Ok(dmi::DeviceProperty {
        name: string(p, "name", path)?,
        desired: Some(twin_property(
            object(p, "desired", path)?,
            &format!("{path}.desired"),
        )?),
        visitors: Some(dmi::VisitorConfig {
            protocol_name: string(visitors, "protocolName", &visitors_path)?,
            config_data: config_data(visitors, &visitors_path)?,
        }),
        report_cycle: int64(p, "reportCycle", path)?,
        collect_cycle: int64(p, "collectCycle", path)?,
        report_to_cloud: boolean(p, "reportToCloud", path)?,
        push_method,
    })
}

fn push_method(m: &Object, path: &str) -> Result<dmi::PushMethod> {
    let http = object(m, "http", path)?
        .map(|h| {
            let path = format!("{path}.http");
            Ok::<_, Error>(dmi::PushMethodHttp {
                hostname: string(h, "hostName", &path)?,
                port: int64(h, "port", &path)?,
                requestpath: string(h, "requestPath", &path)?,
                timeout: int64(h, "timeout", &path)?,
            })
        })
        .transpose()?;
    let mqtt = object(m, "mqtt", path)?
        .map(|q| {
            let path = format!("{path}.mqtt");
            Ok::<_, Error>(dmi::PushMethodMqtt {
                address: string(q, "address", &path)?,
                topic: string(q, "topic", &path)?,
                qos: int32(q, "qos", &path)?,
                retained: boolean(q, "retained", &path)?,
            })
        })
        .transpose()?;
    let otel = object(m, "otel", path)?
        .map(|o| {
            Ok::<_, Error>(dmi::PushMethodOtel {
                endpoint_url: string(o, "endpointURL", &format!("{path}.otel"))?,
            })
        })
        .transpose()?;
    let db_method = object(m, "dbMethod", path)?
        .map(|d| db_method(d, &format!("{path}.dbMethod")))
        .transpose()?;
    Ok(dmi::PushMethod {
        http,
        mqtt,
        db_method,
        otel,
        // The CRD's free-form anomalyDetection has no agreed protobuf mapping in KubeEdge's
        // conversion; it is not forwarded.
        anomaly_detection: None,
    })
}

fn db_method(d: &Object, path: &str) -> Result<dmi::DbMethod> {
    let influxdb2 = object(d, "influxdb2", path)?
        .map(|i| {
            let path = format!("{path}.influxdb2");
            let client = object(i, "influxdb2ClientConfig", &path)?
                .map(|c| {
                    let path = format!("{path}.influxdb2ClientConfig");
                    Ok::<_, Error>(dmi::Influxdb2ClientConfig {
                        url: string(c, "url", &path)?,
                        org: string(c, "org", &path)?,
                        bucket: string(c, "bucket", &path)?,
                    })
                })
                .transpose()?;
            let data = object(i, "influxdb2DataConfig", &path)?
                .map(|c| {
                    let path = format!("{path}.influxdb2DataConfig");
                    Ok::<_, Error>(dmi::Influxdb2DataConfig {
                        measurement: string(c, "measurement", &path)?,
                        tag: string_map(c, "tag", &path)?,
                        field_key: string(c, "fieldKey", &path)?,
                    })
                })
                .transpose()?;
            Ok::<_, Error>(dmi::DbMethodInfluxdb2 {
                influxdb2_client_config: client,
                influxdb2_data_config: data,
            })
        })
        .transpose()?;
    let redis = object(d, "redis", path)?
        .map(|r| {
            let path = format!("{path}.redis");
            let config = object(r, "redisClientConfig", &path)?
                .map(|c| {
                    let path = format!("{path}.redisClientConfig");
                    Ok::<_, Error>(dmi::RedisClientConfig {
                        addr: string(c, "addr", &path)?,
                        db: int32(c, "db", &path)?,
                        poolsize: int32(c, "poolsize", &path)?,
                        min_idle_conns: int32(c, "minIdleConns", &path)?,
                    })
                })
                .transpose()?;
            Ok::<_, Error>(dmi::DbMethodRedis {
                redis_client_config: config,
            })
        })
        .transpose()?;
    // The CRD spells it `TDEngine` / `TDEngineClientConfig` / `dbName`; Go's case-insensitive
    // decoding fills the protobuf's `tdengine` / `tdEngineClientConfig` / `dbname`.
    let tdengine = object(d, "TDEngine", path)?
        .map(|t| {
            let path = format!("{path}.TDEngine");
            let config = object(t, "TDEngineClientConfig", &path)?
                .map(|c| {
                    let path = format!("{path}.TDEngineClientConfig");
                    Ok::<_, Error>(dmi::TdEngineClientConfig {
                        addr: string(c, "addr", &path)?,
                        dbname: string(c, "dbName", &path)?,
                    })
                })
                .transpose()?;
            Ok::<_, Error>(dmi::DbMethodTdEngine {
                td_engine_client_config: config,
            })
        })
        .transpose()?;
    let mysql = object(d, "mysql", path)?
        .map(|m| {
            let path = format!("{path}.mysql");
            let config = object(m, "mysqlClientConfig", &path)?
                .map(|c| {
                    let path = format!("{path}.mysqlClientConfig");
                    Ok::<_, Error>(dmi::MySqlClientConfig {
                        addr: string(c, "addr", &path)?,
                        database: string(c, "database", &path)?,
                        user_name: string(c, "userName", &path)?,
                    })
                })
                .transpose()?;
            Ok::<_, Error>(dmi::DbMethodMySql {
                mysql_client_config: config,
            })
        })
        .transpose()?;
    Ok(dmi::DbMethod {
        influxdb2,
        redis,
        tdengine,
        mysql,
    })
}

fn device_status(status: Option<&Object>) -> Result<dmi::DeviceStatus> {
    let empty = Object::new();
    let status = status.unwrap_or(&empty);
    let twins = array(status, "twins", "status")?
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let path = format!("status.twins[{i}]");
            let t = as_object(t, &path)?;
            Ok(dmi::Twin {
                property_name: string(t, "propertyName", &path)?,
                observed_desired: Some(twin_property(
                    object(t, "observedDesired", &path)?,
                    &format!("{path}.observedDesired"),
                )?),
                reported: Some(twin_property(
                    object(t, "reported", &path)?,
                    &format!("{path}.reported"),
                )?),
            })
        })
        .collect::<Result<_>>()?;
    Ok(dmi::DeviceStatus {
        twins,
        report_to_cloud: boolean(status, "reportToCloud", "status")?,
        report_cycle: int64(status, "reportCycle", "status")?,
    })
}

fn twin_property(p: Option<&Object>, path: &str) -> Result<dmi::TwinProperty> {
    let empty = Object::new();
    let p = p.unwrap_or(&empty);
    Ok(dmi::TwinProperty {
        value: string(p, "value", path)?,
        metadata: string_map(p, "metadata", path)?,
    })
}

fn model_spec(spec: Option<&Object>) -> Result<dmi::DeviceModelSpec> {
    let empty = Object::new();
    let spec = spec.unwrap_or(&empty);
    let properties = array(spec, "properties", "spec")?
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let path = format!("spec.properties[{i}]");
            let p = as_object(p, &path)?;
            Ok(dmi::ModelProperty {
                name: string(p, "name", &path)?,
                description: string(p, "description", &path)?,
                r#type: string(p, "type", &path)?,
                access_mode: string(p, "accessMode", &path)?,
                minimum: string(p, "minimum", &path)?,
                maximum: string(p, "maximum", &path)?,
                unit: string(p, "unit", &path)?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(dmi::DeviceModelSpec {
        properties,
        commands: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// configData values
// ---------------------------------------------------------------------------------------------

/// Packs one `configData` value into an `Any` as KubeEdge's `dataToAny` does: a string as
/// `StringValue`, a boolean as `BoolValue`, any number as `FloatValue` (narrowed to `f32`).
/// `null`, arrays and objects are refused.
pub fn json_to_any(value: &Value) -> Result<Any> {
    value_to_any(value, "value")
}

fn value_to_any(value: &Value, path: &str) -> Result<Any> {
    match value {
        Value::String(s) => Ok(pack(&StringValue { value: s.clone() })),
        Value::Bool(b) => Ok(pack(&BoolValue { value: *b })),
        // Go decodes every JSON number into float64 and narrows it to float32.
        #[allow(clippy::cast_possible_truncation)]
        Value::Number(n) => Ok(pack(&FloatValue {
            value: n.as_f64().unwrap_or(0.0) as f32,
        })),
        other => Err(Error::Validation(format!(
            "{path}: {} does not support converting to any (only strings, numbers and booleans)",
            type_name(other)
        ))),
    }
}

/// Unpacks an `Any` holding one of the wrapper messages (`StringValue`, `BoolValue`,
/// `Int32Value`, `Int64Value`, `FloatValue`, `DoubleValue`) into JSON; the inverse of
/// [`json_to_any`] (and what a mapper does with the `configData` it receives).
pub fn any_to_json(any: &Any) -> Result<Value> {
    let bytes = any.value.as_slice();
    let bad = |e: prost::DecodeError| {
        Error::Validation(format!("malformed {} in Any: {e}", any.type_url))
    };
    let url = any.type_url.as_str();
    let value = if url == StringValue::type_url() {
        Value::String(StringValue::decode(bytes).map_err(bad)?.value)
    } else if url == BoolValue::type_url() {
        Value::Bool(BoolValue::decode(bytes).map_err(bad)?.value)
    } else if url == Int32Value::type_url() {
        Value::from(Int32Value::decode(bytes).map_err(bad)?.value)
    } else if url == Int64Value::type_url() {
        Value::from(Int64Value::decode(bytes).map_err(bad)?.value)
    } else if url == FloatValue::type_url() {
        finite(
            f64::from(FloatValue::decode(bytes).map_err(bad)?.value),
            url,
        )?
    } else if url == DoubleValue::type_url() {
        finite(DoubleValue::decode(bytes).map_err(bad)?.value, url)?
    } else {
        return Err(Error::Validation(format!(
            "unsupported Any type {:?}",
            truncate(url, 128)
        )));
    };
    Ok(value)
}

fn finite(v: f64, url: &str) -> Result<Value> {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| Error::Validation(format!("{url} holds {v}, which JSON cannot represent")))
}

/// Converts a `configData` JSON object into a [`CustomizedValue`](dmi::CustomizedValue) (see
/// [`json_to_any`] for each value).
pub fn customized_value_from_json(map: &Map<String, Value>) -> Result<dmi::CustomizedValue> {
    customized(map, "configData")
}

/// Converts a [`CustomizedValue`](dmi::CustomizedValue) back into a JSON object (see
/// [`any_to_json`]).
pub fn customized_value_to_json(value: &dmi::CustomizedValue) -> Result<Map<String, Value>> {
    check_len(value.data.len(), MAX_MAP_ENTRIES, "configData")?;
    value
        .data
        .iter()
        .map(|(k, v)| Ok((k.clone(), any_to_json(v)?)))
        .collect()
}

fn customized(map: &Object, path: &str) -> Result<dmi::CustomizedValue> {
    check_len(map.len(), MAX_MAP_ENTRIES, path)?;
    let data = map
        .iter()
        .map(|(k, v)| Ok((k.clone(), value_to_any(v, &format!("{path}.{k}"))?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(dmi::CustomizedValue { data })
}

fn config_data(holder: &Object, path: &str) -> Result<Option<dmi::CustomizedValue>> {
    let path = format!("{path}.configData");
    match field(holder, "configData") {
        None => Ok(None),
        Some(Value::Object(map)) => customized(map, &path).map(Some),
        Some(other) => Err(type_error(&path, "an object", other)),
    }
}

fn pack<M: prost::Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reports and mapper records
// ---------------------------------------------------------------------------------------------

/// The `twin/update` event KubeEdge builds for one reported twin (`CreateMessageTwinUpdate`):
/// `event_id` empty, `expected.value` = `observedDesired.value`, `actual.value` =
/// `reported.value`, no type metadata (the twin's stored type applies).
pub fn twin_update(twin: &dmi::Twin, timestamp: i64) -> DeviceTwinUpdate {
    let value = |p: &dmi::TwinProperty| TwinValue {
        value: Some(p.value.clone()),
        metadata: None,
    };
    let msg = MsgTwin {
        expected: twin.observed_desired.as_ref().map(value),
        actual: twin.reported.as_ref().map(value),
        ..MsgTwin::default()
    };
    DeviceTwinUpdate {
        event_id: String::new(),
        timestamp,
        twin: BTreeMap::from([(twin.property_name.clone(), Some(msg))]),
    }
}

/// The `state/update` event KubeEdge builds for a state report (`CreateMessageStateUpdate`).
pub fn state_update(state: &str, timestamp: i64) -> DeviceStateUpdate {
    DeviceStateUpdate {
        event_id: String::new(),
        timestamp,
        state: state.to_owned(),
    }
}

/// `MapperInfo` as Go's `json.Marshal` writes the protobuf struct (what KubeEdge stores in
/// `meta`): `omitempty` keys `name`, `version`, `api_version`, `protocol`, `address` (standard
/// base64, as Go writes `[]byte`) and `state`.
#[derive(Serialize, Deserialize, Default)]
struct MapperInfoJson {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    api_version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    state: String,
}

/// The JSON KubeEdge stores for a registered mapper (Go's `json.Marshal` of `MapperInfo`).
pub fn mapper_info_to_json(info: &dmi::MapperInfo) -> Result<String> {
    let json = MapperInfoJson {
        name: info.name.clone(),
        version: info.version.clone(),
        api_version: info.api_version.clone(),
        protocol: info.protocol.clone(),
        address: base64::engine::general_purpose::STANDARD.encode(&info.address),
        state: info.state.clone(),
    };
    let bytes = kubeedge_proto::go_json::to_vec(&json)?;
    String::from_utf8(bytes).map_err(|e| Error::Encoding(e.to_string()))
}

/// Reads a stored mapper record (see [`mapper_info_to_json`]).
pub fn mapper_info_from_json(json: &str) -> Result<dmi::MapperInfo> {
    let json: MapperInfoJson = serde_json::from_str(json)
        .map_err(|e| Error::Validation(format!("malformed mapper record: {e}")))?;
    let address = base64::engine::general_purpose::STANDARD
        .decode(json.address.as_bytes())
        .map_err(|e| Error::Validation(format!("malformed mapper address: {e}")))?;
    Ok(dmi::MapperInfo {
        name: json.name,
        version: json.version,
        api_version: json.api_version,
        protocol: json.protocol,
        address,
        state: json.state,
    })
}

// ---------------------------------------------------------------------------------------------
// Go-like JSON field access
// ---------------------------------------------------------------------------------------------

/// A field as Go's `encoding/json` finds it: the exact key, else the first key equal ignoring
/// ASCII case. `null` counts as absent (Go leaves the zero value).
fn field<'a>(obj: &'a Object, key: &str) -> Option<&'a Value> {
    let value = obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })?;
    (!value.is_null()).then_some(value)
}

fn field_key(obj: &Object, key: &str) -> Option<String> {
    if obj.contains_key(key) {
        return Some(key.to_owned());
    }
    obj.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
}

fn get_mut<'a>(obj: &'a mut Object, key: &str) -> Option<&'a mut Value> {
    let key = field_key(obj, key)?;
    obj.get_mut(&key).filter(|v| !v.is_null())
}

/// Sets `key`, replacing a differently-cased key Go would have read instead.
fn set(obj: &mut Object, key: &str, value: Value) {
    remove(obj, key);
    obj.insert(key.to_owned(), value);
}

fn remove(obj: &mut Object, key: &str) {
    while let Some(k) = field_key(obj, key) {
        obj.remove(&k);
    }
}

fn root<'a>(value: &'a Value, kind: &str) -> Result<&'a Object> {
    value.as_object().ok_or_else(|| {
        Error::Validation(format!(
            "a {kind} must be a JSON object, got {}",
            type_name(value)
        ))
    })
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Object> {
    value
        .as_object()
        .ok_or_else(|| type_error(path, "an object", value))
}

fn object<'a>(obj: &'a Object, key: &str, path: &str) -> Result<Option<&'a Object>> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(type_error(&join(path, key), "an object", other)),
    }
}

fn array<'a>(obj: &'a Object, key: &str, path: &str) -> Result<&'a [Value]> {
    match field(obj, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => {
            check_len(a.len(), MAX_LIST_LEN, &join(path, key))?;
            Ok(a)
        }
        Some(other) => Err(type_error(&join(path, key), "an array", other)),
    }
}

fn string(obj: &Object, key: &str, path: &str) -> Result<String> {
    match field(obj, key) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(type_error(&join(path, key), "a string", other)),
    }
}

fn int64(obj: &Object, key: &str, path: &str) -> Result<i64> {
    match field(obj, key) {
        None => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            Error::Validation(format!("{}: {n} is not a 64-bit integer", join(path, key)))
        }),
        Some(other) => Err(type_error(&join(path, key), "an integer", other)),
    }
}

fn int32(obj: &Object, key: &str, path: &str) -> Result<i32> {
    let v = int64(obj, key, path)?;
    i32::try_from(v)
        .map_err(|_| Error::Validation(format!("{}: {v} is not a 32-bit integer", join(path, key))))
}

fn boolean(obj: &Object, key: &str, path: &str) -> Result<bool> {
    match field(obj, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(type_error(&join(path, key), "a boolean", other)),
    }
}

fn string_map(obj: &Object, key: &str, path: &str) -> Result<BTreeMap<String, String>> {
    let path = join(path, key);
    match field(obj, key) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => {
            check_len(map.len(), MAX_MAP_ENTRIES, &path)?;
            map.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    // Go leaves a null map value as "".
                    Value::Null => Ok((k.clone(), String::new())),
                    other => Err(type_error(&format!("{path}.{k}"), "a string", other)),
                })
                .collect()
        }
        Some(other) => Err(type_error(&path, "an object", other)),
    }
}

fn string_list(obj: &Object, key: &str, path: &str) -> Result<Vec<String>> {
    let path = join(path, key);
    array(obj, key, "")?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Null => Ok(String::new()),
            other => Err(type_error(&format!("{path}[{i}]"), "a string", other)),
        })
        .collect()
}

fn check_len(len: usize, max: usize, path: &str) -> Result<()> {
    if len > max {
        return Err(Error::Validation(format!(
            "{path}: {len} entries, more than the {max} allowed"
        )));
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_error(path: &str, expected: &str, got: &Value) -> Error {
    Error::Validation(format!(
        "{path}: expected {expected}, got {}",
        type_name(got)
    ))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn prefix(e: Error, context: &str) -> Error {
    match e {
        Error::Validation(reason) => Error::Validation(format!("{context}: {reason}")),
        other => other,
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn unpack(cv: &dmi::CustomizedValue, key: &str) -> Value {
        any_to_json(&cv.data[key]).unwrap()
    }

    #[test]
    fn config_data_values_follow_data_to_any() {
        let cv = customized_value_from_json(
            json!({"s": "x", "i": 1, "big": 16_777_217, "f": 0.5, "b": true})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(cv.data["s"].type_url, StringValue::type_url());
        assert_eq!(cv.data["i"].type_url, FloatValue::type_url());
        assert_eq!(unpack(&cv, "i"), json!(1.0));
        // Narrowed to f32, as edgecore does.
        assert_eq!(unpack(&cv, "big"), json!(16_777_216.0));
        assert_eq!(unpack(&cv, "f"), json!(0.5));
        assert_eq!(unpack(&cv, "b"), json!(true));
        assert_eq!(
            Value::Object(customized_value_to_json(&cv).unwrap())["s"],
            json!("x")
        );
        for bad in [json!(null), json!([1]), json!({"a": 1})] {
            let err = json_to_any(&bad).unwrap_err();
            assert!(matches!(err, Error::Validation(_)), "{err}");
        }
    }

    #[test]
    fn any_to_json_refuses_unknown_and_malformed() {
        let unknown = Any {
            type_url: "type.googleapis.com/evil".into(),
            value: vec![],
        };
        assert!(any_to_json(&unknown).is_err());
        let malformed = Any {
            type_url: StringValue::type_url(),
            value: vec![0x0a, 0xff],
        };
        assert!(any_to_json(&malformed).is_err());
        let int = pack(&Int64Value { value: -7 });
        assert_eq!(any_to_json(&int).unwrap(), json!(-7));
        let nan = pack(&DoubleValue { value: f64::NAN });
        assert!(any_to_json(&nan).is_err());
    }

    #[test]
    fn go_style_field_matching_and_types() {
        let device = json!({
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"properties": [{"name": "p", "pushMethod": {
                "http": {"hostName": "h", "requestPath": "/x", "port": 80},
                "dbMethod": {"TDEngine": {"TDEngineClientConfig": {"addr": "a", "dbName": "db"}}}
            }}]}
        });
        let d = device_from_json(&device).unwrap();
        let pm = d.spec.unwrap().properties[0].push_method.clone().unwrap();
        assert_eq!(pm.http.as_ref().unwrap().hostname, "h");
        assert_eq!(pm.http.as_ref().unwrap().requestpath, "/x");
        let td = pm.db_method.unwrap().tdengine.unwrap();
        assert_eq!(td.td_engine_client_config.unwrap().dbname, "db");

        let bad =
            json!({"metadata": {"name": "d"}, "spec": {"properties": [{"reportCycle": 1.5}]}});
        let err = device_from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("spec.properties[0].reportCycle"), "{err}");
        let bad = json!({"metadata": {"name": "d"}, "spec": {"protocol": {"configData": {"x": {"y": 1}}}}});
        let err = device_from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("spec.protocol.configData.x"), "{err}");
        assert!(device_from_json(&json!([])).is_err());
        assert!(device_from_json(&json!({"metadata": {}})).is_err());
    }

    #[test]
    fn huge_maps_are_refused() {
        let big: Map<String, Value> = (0..=MAX_MAP_ENTRIES)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        let device = json!({"metadata": {"name": "d"}, "spec": {"protocol": {"configData": big}}});
        let err = device_from_json(&device).unwrap_err().to_string();
        assert!(err.contains("more than the 1024 allowed"), "{err}");
        let props: Vec<Value> = (0..=MAX_LIST_LEN).map(|_| json!({})).collect();
        let device = json!({"metadata": {"name": "d"}, "spec": {"properties": props}});
        assert!(device_from_json(&device).is_err());
    }

    #[test]
    fn model_defaults_are_applied_then_overridden() {
        let device = json!({
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {
                "deviceModelRef": {"name": "m"},
                "protocol": {"protocolName": "modbus", "configData": {"slaveID": 2}},
                "properties": [
                    {"name": "t", "visitors": {"protocolName": "modbus", "configData": {"offset": 5}}},
                    {"name": "u", "visitors": {"protocolName": "modbus", "configData": {"offset": 9}}}
                ]
            }
        });
        let model = json!({
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {
                "protocol": "modbus",
                "protocolConfigData": {"slaveID": 1, "baud": 9600},
                "properties": [{"name": "t", "visitors": {"protocolName": "modbus",
                    "configData": {"offset": 1, "register": "HoldingRegister"}}}]
            }
        });
        let merged = apply_model_defaults(&device, &model).unwrap();
        assert_eq!(
            merged["spec"]["protocol"]["configData"],
            json!({"slaveID": 2, "baud": 9600})
        );
        assert_eq!(
            merged["spec"]["properties"][0]["visitors"]["configData"],
            json!({"offset": 5, "register": "HoldingRegister"})
        );
        // No model visitors for "u": untouched.
        assert_eq!(
            merged["spec"]["properties"][1]["visitors"]["configData"],
            json!({"offset": 9})
        );
        let no_ref = json!({"metadata": {"name": "d"}, "spec": {}});
        assert!(apply_model_defaults(&no_ref, &model).is_err());
    }

    #[test]
    fn mapper_info_json_is_gos() {
        let info = dmi::MapperInfo {
            name: "modbus-mapper".into(),
            protocol: "modbus".into(),
            address: b"/etc/kubeedge/modbus.sock".to_vec(),
            ..Default::default()
        };
        let json = mapper_info_to_json(&info).unwrap();
        assert_eq!(
            json,
            r#"{"name":"modbus-mapper","protocol":"modbus","address":"L2V0Yy9rdWJlZWRnZS9tb2RidXMuc29jaw=="}"#
        );
        assert_eq!(mapper_info_from_json(&json).unwrap(), info);
        assert!(mapper_info_from_json(r#"{"address":"!!"}"#).is_err());
    }
}
