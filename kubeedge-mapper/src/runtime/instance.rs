//! A device as the runtime runs it: a Device joined with its DeviceModel, from the CRDs' JSON
//! (YAML files) or from DMI messages.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kubeedge_proto::{DeviceId, dmi};
use kubeedge_twin::dmi::convert;
use serde_json::{Map, Value as Json};

use crate::driver::{PropertySpec, PropertyType, VisitorConfig};
use crate::error::{Error, Result};

/// The collect cycle of a property whose `collectCycle` is 0 or absent (KubeEdge's mapper
/// framework: 1 s).
pub const DEFAULT_COLLECT_CYCLE: Duration = Duration::from_secs(1);
/// The report cycle of a property whose `reportCycle` is 0 or absent (KubeEdge's mapper
/// framework: 1 s).
pub const DEFAULT_REPORT_CYCLE: Duration = Duration::from_secs(1);
/// The most properties one device may have.
pub const MAX_PROPERTIES: usize = 1024;

/// The namespace of an object whose `metadata.namespace` is empty, as `kubectl` applies it.
const DEFAULT_NAMESPACE: &str = "default";

/// A device ready to run: the Device's protocol and properties, each property typed by the
/// DeviceModel.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInstance {
    /// `<namespace>/<name>`; both parts are Kubernetes names, safe as MQTT topic levels.
    pub id: DeviceId,
    /// The DeviceModel's name (`spec.deviceModelRef.name`), in the device's namespace.
    pub model: String,
    /// `spec.protocol`, with the model's `protocolConfigData` under the device's own entries.
    pub protocol: ProtocolConfig,
    /// `spec.properties`, in the Device's order.
    pub properties: Vec<DeviceProperty>,
}

/// A device's `spec.protocol`: which mapper serves it and how to reach it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProtocolConfig {
    /// `protocolName` (`modbus`...): the protocol of the mapper that runs the device.
    pub protocol_name: String,
    /// `configData`: the driver-specific settings (for Modbus: `ip`, `port`, `slaveID`...).
    pub config_data: Map<String, Json>,
}

/// One property of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProperty {
    /// Name, type (from the model) and visitor (from the device, over the model's).
    pub spec: PropertySpec,
    /// The model's `accessMode`; desired values are written only to `ReadWrite` properties.
    pub access_mode: AccessMode,
    /// How often the property is read (`collectCycle`, milliseconds).
    pub collect_cycle: Duration,
    /// How often its latest value is reported to the twin (`reportCycle`, milliseconds).
    pub report_cycle: Duration,
    /// `reportToCloud`: whether the value is reported to the twin at all (KubeEdge's mapper
    /// framework reports only these).
    pub report_to_cloud: bool,
    /// `desired.value`, when set and not empty.
    pub desired: Option<String>,
}

/// A DeviceModel property's `accessMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AccessMode {
    /// `ReadWrite` (also when the model says nothing).
    #[default]
    ReadWrite,
    /// `ReadOnly`: desired values are refused.
    ReadOnly,
}

impl AccessMode {
    /// Parses `ReadWrite` / `ReadOnly` in any case; empty is `ReadWrite`.
    fn parse(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() || s.eq_ignore_ascii_case("ReadWrite") {
            Ok(Self::ReadWrite)
        } else if s.eq_ignore_ascii_case("ReadOnly") {
            Ok(Self::ReadOnly)
        } else {
            Err(format!(
                "unknown accessMode {s:?} (expected ReadWrite or ReadOnly)"
            ))
        }
    }

    /// The CRD spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "ReadWrite",
            Self::ReadOnly => "ReadOnly",
        }
    }
}

impl DeviceInstance {
    /// `Device <namespace>/<name>`, the way errors name the device.
    pub fn object_name(&self) -> String {
        format!("Device {}", self.id)
    }

    /// The property named `name`.
    pub fn property(&self, name: &str) -> Option<&DeviceProperty> {
        self.properties.iter().find(|p| p.spec.name == name)
    }

    /// Joins a `Device` and its `DeviceModel` (`devices.kubeedge.io/v1beta1`, as JSON): the
    /// model's property visitors and `protocolConfigData` are applied under the device's own
    /// (KubeEdge's rules, [`convert::apply_model_defaults`]), and every device property takes
    /// its type and access mode from the same-named model property. An empty namespace is
    /// `default`.
    ///
    /// Fails with [`Error::InvalidDevice`] (with `origin` as its origin) when a field is
    /// missing or of the wrong type, the model is not the device's, a property is not in the
    /// model, or a type is not one of KubeEdge's.
    pub fn from_crds(device: &Json, model: &Json, origin: &str) -> Result<Self> {
        let object = describe(device, "Device");
        let bad = |reason: String| Error::invalid_device(origin, &object, reason);
        let device = with_default_namespace(device);
        let model = with_default_namespace(model);
        let (ns, name) =
            convert::object_namespaced_name(&device).map_err(|e| bad(e.to_string()))?;
        let (model_ns, model_name) =
            convert::object_namespaced_name(&model).map_err(|e| bad(format!("model: {e}")))?;
        let model_ref = convert::device_model_ref(&device)
            .ok_or_else(|| bad("spec.deviceModelRef.name is missing".into()))?;
        if model_ns != ns || model_name != model_ref {
            return Err(bad(format!(
                "its model is {ns}/{model_ref}, not {model_ns}/{model_name}"
            )));
        }
        let merged =
            convert::apply_model_defaults(&device, &model).map_err(|e| bad(e.to_string()))?;
        parse_crds(&merged, &model, &ns, &name).map_err(bad)
    }

    /// Joins a DMI `Device` (as edgecore sends it in `RegisterDevice`, `UpdateDevice` and the
    /// `MapperRegister` answer: model defaults already applied, `configData` values packed in
    /// `google.protobuf.Any`) with its DMI `DeviceModel`.
    pub fn from_dmi(device: &dmi::Device, model: &dmi::DeviceModel) -> Result<Self> {
        let ns = non_empty_namespace(&device.namespace);
        let object = format!("Device {ns}/{}", device.name);
        let bad = |reason: String| Error::invalid_device("DMI", &object, reason);
        let id =
            kubeedge_twin::topic::device_id(ns, &device.name).map_err(|e| bad(e.to_string()))?;
        let spec = device
            .spec
            .as_ref()
            .ok_or_else(|| bad("the device has no spec".into()))?;
        if spec.device_model_reference != model.name || non_empty_namespace(&model.namespace) != ns
        {
            return Err(bad(format!(
                "its model is {ns}/{}, not {}/{}",
                spec.device_model_reference,
                non_empty_namespace(&model.namespace),
                model.name
            )));
        }
        let protocol = spec.protocol.clone().unwrap_or_default();
        let protocol = ProtocolConfig {
            protocol_name: protocol.protocol_name,
            config_data: customized(protocol.config_data.as_ref())
                .map_err(|e| bad(format!("spec.protocol.configData: {e}")))?,
        };
        let model_props: BTreeMap<&str, (&str, &str)> = model
            .spec
            .iter()
            .flat_map(|s| &s.properties)
            .map(|p| (p.name.as_str(), (p.r#type.as_str(), p.access_mode.as_str())))
            .collect();
        check_count(spec.properties.len()).map_err(bad)?;
        let mut properties = Vec::with_capacity(spec.properties.len());
        let mut seen = HashSet::new();
        for p in &spec.properties {
            let visitors = p.visitors.clone().unwrap_or_default();
            let visitor = VisitorConfig::new(
                visitors.protocol_name,
                customized(visitors.config_data.as_ref())
                    .map_err(|e| bad(format!("property {}: visitors.configData: {e}", p.name)))?,
            );
            let property = typed_property(
                &p.name,
                model_props.get(p.name.as_str()).copied(),
                &model.name,
                visitor,
                Cycles {
                    collect: p.collect_cycle,
                    report: p.report_cycle,
                },
                p.report_to_cloud,
                p.desired.as_ref().map(|d| d.value.as_str()),
            )
            .map_err(bad)?;
            if !seen.insert(p.name.clone()) {
                return Err(bad(format!("property {} is listed twice", p.name)));
            }
            properties.push(property);
        }
        Ok(Self {
            id,
            model: model.name.clone(),
            protocol,
            properties,
        })
    }

    /// The DMI `Device` for this instance (what `GetDevice` answers), without status.
    pub fn to_dmi(&self) -> Result<dmi::Device> {
        let any = |map: &Map<String, Json>, what: &str| {
            convert::customized_value_from_json(map).map_err(|e| {
                Error::invalid_device("DMI", self.object_name(), format!("{what}: {e}"))
            })
        };
        let properties = self
            .properties
            .iter()
            .map(|p| {
                Ok(dmi::DeviceProperty {
                    name: p.spec.name.clone(),
                    desired: Some(dmi::TwinProperty {
                        value: p.desired.clone().unwrap_or_default(),
                        metadata: BTreeMap::from([(
                            "type".to_owned(),
                            p.spec.property_type.metadata_type().to_owned(),
                        )])
                        .into_iter()
                        .collect(),
                    }),
                    visitors: Some(dmi::VisitorConfig {
                        protocol_name: p.spec.visitor.protocol_name.clone(),
                        config_data: Some(any(
                            &p.spec.visitor.config_data,
                            &format!("property {}", p.spec.name),
                        )?),
                    }),
                    report_cycle: millis(p.report_cycle),
                    collect_cycle: millis(p.collect_cycle),
                    report_to_cloud: p.report_to_cloud,
                    push_method: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(dmi::Device {
            name: self.id.name.clone(),
            namespace: self.id.namespace.clone(),
            spec: Some(dmi::DeviceSpec {
                device_model_reference: self.model.clone(),
                protocol: Some(dmi::ProtocolConfig {
                    protocol_name: self.protocol.protocol_name.clone(),
                    config_data: Some(any(&self.protocol.config_data, "protocol")?),
                }),
                properties,
                methods: Vec::new(),
            }),
            status: None,
        })
    }

    /// The same instance without desired values: two instances that are equal this way run
    /// the same, and only their desired values need applying.
    pub(crate) fn without_desired(&self) -> Self {
        let mut copy = self.clone();
        for p in &mut copy.properties {
            p.desired = None;
        }
        copy
    }
}

/// `Device <ns>/<name>` from whatever metadata the JSON has, for error messages.
pub(crate) fn describe(object: &Json, kind: &str) -> String {
    let meta = object.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Json::as_str);
    match field("name") {
        Some(name) => format!(
            "{kind} {}/{name}",
            non_empty_namespace(field("namespace").unwrap_or(""))
        ),
        None => format!("{kind} without metadata.name"),
    }
}

fn non_empty_namespace(ns: &str) -> &str {
    if ns.is_empty() { DEFAULT_NAMESPACE } else { ns }
}

fn with_default_namespace(object: &Json) -> Json {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Json::as_object_mut) {
        let empty = meta
            .get("namespace")
            .is_none_or(|ns| ns.is_null() || ns.as_str() == Some(""));
        if empty {
            meta.insert("namespace".into(), Json::from(DEFAULT_NAMESPACE));
        }
    }
    object
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn check_count(n: usize) -> std::result::Result<(), String> {
    if n > MAX_PROPERTIES {
        return Err(format!(
            "{n} properties; at most {MAX_PROPERTIES} are supported"
        ));
    }
    Ok(())
}

fn customized(
    value: Option<&dmi::CustomizedValue>,
) -> std::result::Result<Map<String, Json>, String> {
    value.map_or(Ok(Map::new()), |v| {
        convert::customized_value_to_json(v).map_err(|e| e.to_string())
    })
}

#[derive(Clone, Copy)]
struct Cycles {
    collect: i64,
    report: i64,
}

/// A device property typed by its model property (`(type, accessMode)`, if the model has it).
fn typed_property(
    name: &str,
    model_property: Option<(&str, &str)>,
    model_name: &str,
    visitor: VisitorConfig,
    cycles: Cycles,
    report_to_cloud: bool,
    desired: Option<&str>,
) -> std::result::Result<DeviceProperty, String> {
    if name.is_empty() {
        return Err("a property has no name".into());
    }
    let Some((type_name, access)) = model_property else {
        return Err(format!(
            "property {name} is not in DeviceModel {model_name}"
        ));
    };
    if type_name.is_empty() {
        return Err(format!(
            "property {name}: DeviceModel {model_name} gives it no type"
        ));
    }
    let property_type: PropertyType = type_name
        .parse()
        .map_err(|e: crate::driver::UnknownPropertyType| format!("property {name}: {e}"))?;
    let access_mode = AccessMode::parse(access).map_err(|e| format!("property {name}: {e}"))?;
    let cycle = |ms: i64, what: &str, default: Duration| {
        if ms < 0 {
            Err(format!("property {name}: {what} {ms} is negative"))
        } else if ms == 0 {
            Ok(default)
        } else {
            Ok(Duration::from_millis(ms as u64))
        }
    };
    Ok(DeviceProperty {
        spec: PropertySpec::new(name, property_type, visitor),
        access_mode,
        collect_cycle: cycle(cycles.collect, "collectCycle", DEFAULT_COLLECT_CYCLE)?,
        report_cycle: cycle(cycles.report, "reportCycle", DEFAULT_REPORT_CYCLE)?,
        report_to_cloud,
        desired: desired.filter(|d| !d.is_empty()).map(str::to_owned),
    })
}

/// Reads the merged Device JSON (model defaults applied) against its model JSON.
fn parse_crds(
    device: &Json,
    model: &Json,
    ns: &str,
    name: &str,
) -> std::result::Result<DeviceInstance, String> {
    let id = kubeedge_twin::topic::device_id(ns, name).map_err(|e| e.to_string())?;
    let spec = object_at(device, "spec")?.ok_or("spec is missing")?;
    let model_spec = object_at(model, "spec")?;
    let model_name = convert::device_model_ref(device).unwrap_or_default();

    let protocol = match spec.get("protocol") {
        None | Some(Json::Null) => ProtocolConfig::default(),
        Some(Json::Object(p)) => ProtocolConfig {
            protocol_name: string_field(p, "protocolName", "spec.protocol")?,
            config_data: object_field(p, "configData", "spec.protocol")?,
        },
        Some(other) => return Err(format!("spec.protocol is {}, not an object", kind(other))),
    };

    let mut model_props = BTreeMap::new();
    if let Some(model_spec) = model_spec {
        for (i, p) in array_field(model_spec, "properties", "DeviceModel spec")?
            .iter()
            .enumerate()
        {
            let path = format!("DeviceModel spec.properties[{i}]");
            let p = p
                .as_object()
                .ok_or_else(|| format!("{path} is not an object"))?;
            model_props.insert(
                string_field(p, "name", &path)?,
                (
                    string_field(p, "type", &path)?,
                    string_field(p, "accessMode", &path)?,
                ),
            );
        }
    }

    let props = array_field(spec, "properties", "spec")?;
    check_count(props.len())?;
    let mut properties = Vec::with_capacity(props.len());
    let mut seen = HashSet::new();
    for (i, p) in props.iter().enumerate() {
        let path = format!("spec.properties[{i}]");
        let p = p
            .as_object()
            .ok_or_else(|| format!("{path} is not an object"))?;
        let prop_name = string_field(p, "name", &path)?;
        let path = format!("property {prop_name}");
        let visitor = match p.get("visitors") {
            None | Some(Json::Null) => VisitorConfig::default(),
            Some(Json::Object(v)) => VisitorConfig::new(
                string_field(v, "protocolName", &format!("{path} visitors"))?,
                object_field(v, "configData", &format!("{path} visitors"))?,
            ),
            Some(other) => {
                return Err(format!(
                    "{path}: visitors is {}, not an object",
                    kind(other)
                ));
            }
        };
        let desired = match p.get("desired") {
            None | Some(Json::Null) => String::new(),
            Some(Json::Object(d)) => string_field(d, "value", &format!("{path} desired"))?,
            Some(other) => {
                return Err(format!("{path}: desired is {}, not an object", kind(other)));
            }
        };
        let model_prop = model_props
            .get(&prop_name)
            .map(|(t, a)| (t.as_str(), a.as_str()));
        let property = typed_property(
            &prop_name,
            model_prop,
            model_name,
            visitor,
            Cycles {
                collect: int_field(p, "collectCycle", &path)?,
                report: int_field(p, "reportCycle", &path)?,
            },
            bool_field(p, "reportToCloud", &path)?,
            Some(desired.as_str()),
        )?;
        if !seen.insert(prop_name.clone()) {
            return Err(format!("property {prop_name} is listed twice"));
        }
        properties.push(property);
    }
    Ok(DeviceInstance {
        id,
        model: model_name.to_owned(),
        protocol,
        properties,
    })
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

fn object_at<'a>(
    v: &'a Json,
    key: &str,
) -> std::result::Result<Option<&'a Map<String, Json>>, String> {
    match v.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(m)) => Ok(Some(m)),
        Some(other) => Err(format!("{key} is {}, not an object", kind(other))),
    }
}

fn string_field(
    m: &Map<String, Json>,
    key: &str,
    path: &str,
) -> std::result::Result<String, String> {
    match m.get(key) {
        None | Some(Json::Null) => Ok(String::new()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{path}: {key} is {}, not a string", kind(other))),
    }
}

fn object_field(
    m: &Map<String, Json>,
    key: &str,
    path: &str,
) -> std::result::Result<Map<String, Json>, String> {
    match m.get(key) {
        None | Some(Json::Null) => Ok(Map::new()),
        Some(Json::Object(o)) => Ok(o.clone()),
        Some(other) => Err(format!("{path}: {key} is {}, not an object", kind(other))),
    }
}

fn array_field<'a>(
    m: &'a Map<String, Json>,
    key: &str,
    path: &str,
) -> std::result::Result<&'a [Json], String> {
    match m.get(key) {
        None | Some(Json::Null) => Ok(&[]),
        Some(Json::Array(a)) => Ok(a),
        Some(other) => Err(format!("{path}: {key} is {}, not a list", kind(other))),
    }
}

fn int_field(m: &Map<String, Json>, key: &str, path: &str) -> std::result::Result<i64, String> {
    match m.get(key) {
        None | Some(Json::Null) => Ok(0),
        Some(Json::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("{path}: {key} {n} is not a 64-bit integer")),
        Some(other) => Err(format!("{path}: {key} is {}, not an integer", kind(other))),
    }
}

fn bool_field(m: &Map<String, Json>, key: &str, path: &str) -> std::result::Result<bool, String> {
    match m.get(key) {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{path}: {key} is {}, not a boolean", kind(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(seq: u32) -> Json {
        let path = format!(
            "{}/../kubeedge-twin/tests/fixtures/ws-v1.22.2-seq{seq}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let message: Json = serde_json::from_str(&text).unwrap();
        message["content"].clone()
    }

    #[test]
    fn the_captured_device_and_model_join() {
        let device = fixture(39);
        let model = fixture(37);
        let d = DeviceInstance::from_crds(&device, &model, "capture").unwrap();
        assert_eq!(d.id.to_string(), "default/thermo-1");
        assert_eq!(d.model, "thermo-model");
        assert_eq!(d.protocol.protocol_name, "modbus");
        assert_eq!(d.protocol.config_data["slaveID"], json!(1));
        let p = &d.properties[0];
        assert_eq!(p.spec.name, "temperature");
        assert_eq!(p.spec.property_type, PropertyType::Int);
        assert_eq!(p.access_mode, AccessMode::ReadWrite);
        assert_eq!(p.collect_cycle, Duration::from_secs(10));
        assert_eq!(p.report_cycle, Duration::from_secs(10));
        assert!(p.report_to_cloud);
        assert_eq!(p.desired.as_deref(), Some("20"));
        assert_eq!(p.spec.visitor.protocol_name, "modbus");
        assert_eq!(
            p.spec.visitor.config_data["register"],
            json!("HoldingRegister")
        );
    }

    #[test]
    fn dmi_round_trip_keeps_the_instance() {
        let d = DeviceInstance::from_crds(&fixture(39), &fixture(37), "capture").unwrap();
        let pb_device = kubeedge_twin::dmi::convert::device_from_json(&fixture(39)).unwrap();
        let pb_model = kubeedge_twin::dmi::convert::device_model_from_json(&fixture(37)).unwrap();
        let from_dmi = DeviceInstance::from_dmi(&pb_device, &pb_model).unwrap();
        // Numbers travel as FloatValue: 1 comes back as 1.0.
        assert_eq!(from_dmi.protocol.config_data["slaveID"].as_f64(), Some(1.0));
        assert_eq!(from_dmi.properties[0].spec.property_type, PropertyType::Int);
        assert_eq!(from_dmi.properties[0].desired.as_deref(), Some("20"));
        let again = DeviceInstance::from_dmi(&d.to_dmi().unwrap(), &pb_model).unwrap();
        assert_eq!(again, from_dmi);
    }

    #[test]
    fn errors_name_the_device_and_the_problem() {
        let model = fixture(37);
        let cases: Vec<(Json, &str)> = vec![
            (
                json!({"metadata": {"name": "d"}, "spec": {"deviceModelRef": {"name": "thermo-model"},
                    "properties": [{"name": "humidity"}]}}),
                "property humidity is not in DeviceModel thermo-model",
            ),
            (
                json!({"metadata": {"name": "d"}, "spec": {"deviceModelRef": {"name": "other"}}}),
                "its model is default/other, not default/thermo-model",
            ),
            (
                json!({"metadata": {"name": "d"}, "spec": {}}),
                "spec.deviceModelRef.name is missing",
            ),
            (
                json!({"metadata": {"name": "d"}, "spec": {"deviceModelRef": {"name": "thermo-model"},
                    "properties": [{"name": "temperature", "collectCycle": "10"}]}}),
                "property temperature: collectCycle is a string, not an integer",
            ),
            (
                json!({"metadata": {"name": "d"}, "spec": {"deviceModelRef": {"name": "thermo-model"},
                    "properties": [{"name": "temperature", "collectCycle": -1}]}}),
                "collectCycle -1 is negative",
            ),
            (
                json!({"metadata": {"name": "D_1"}, "spec": {"deviceModelRef": {"name": "thermo-model"}}}),
                "not a valid Kubernetes namespace and name",
            ),
        ];
        for (device, want) in cases {
            let err = DeviceInstance::from_crds(&device, &model, "f.yaml").unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("f.yaml: Device default/"), "{text}");
            assert!(text.contains(want), "{text} should say {want}");
            assert!(!err.is_retryable());
        }
        let mut bad_model = model.clone();
        bad_model["spec"]["properties"][0]["type"] = json!("INTEGER");
        let err = DeviceInstance::from_crds(&fixture(39), &bad_model, "f.yaml").unwrap_err();
        assert!(
            err.to_string()
                .contains("property temperature: unknown property type \"INTEGER\""),
            "{err}"
        );
    }
}
