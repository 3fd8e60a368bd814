//! Checks of Devices and DeviceModels before they go to a node.
//!
//! KubeEdge's CRDs leave most of a Device free-form (`configData` keeps unknown fields) and
//! put no range on its numbers, so the API server stores a port of `9999999999999`, a
//! `collectCycle` of `-5` or a desired value of 100 KB, and KubeEdge's cloud passes them to the
//! edge as they are. This cloud checks each Device and DeviceModel first ([`check`]); one with
//! problems is not sent (what the node holds of it stays as it was), and the reason is
//! reported once per version as a Kubernetes Event ([`rejection_event`]) and a WARN log.
//!
//! What is checked (every problem is reported with its field path, the first
//! [`MAX_LISTED`] of them listed):
//!
//! | what | rule |
//! |---|---|
//! | `metadata.name`, `spec.nodeName`, `spec.deviceModelRef.name` | DNS-1123 subdomains (Kubernetes object names) |
//! | the whole `spec` | at most [`DeviceLimits::max_spec_bytes`] of JSON, nested at most [`MAX_DEPTH`] deep, every string (and key) at most [`DeviceLimits::max_string_bytes`] |
//! | `spec.properties`, `spec.methods` | at most [`DeviceLimits::max_properties`] entries; property names non-empty, at most 253 bytes, no control characters, unique (KubeEdge's admission webhook checks uniqueness too) |
//! | `collectCycle`, `reportCycle` (properties, `spec.stateReport`) | integers `0..=`[`DeviceLimits::max_cycle`] |
//! | protocol `configData` (Device `spec.protocol.configData`, model `spec.protocolConfigData`, nested objects such as `tcp`/`com` included) | `port` 1..=65535; `slaveID` 0..=255, 1..=247 beside a `serialPort`; `baudRate` 1..=10000000; `dataBits` 5..=8; `stopBits` 1..=2; `timeout` `0..=max_cycle` |
//! | visitor `configData` (properties of both kinds) | `scale` a finite number; for Modbus (a `protocolName` containing `modbus`): `register` one of KubeEdge's four, `offset` 0..=65535, `limit` 1..=125 for registers and 1..=2000 for coils and discrete inputs, `offset + limit` ≤ 65536 |
//! | `pushMethod` | `http.port` 1..=65535, `http.timeout` `0..=max_cycle`, `mqtt.qos` 0..=2 |
//! | model properties | `type` one of `INT`, `FLOAT`, `DOUBLE`, `STRING`, `BOOLEAN`, `BYTES`, `STREAM`; `accessMode` `ReadWrite` or `ReadOnly`; for numeric types `minimum` and `maximum` numbers with `minimum ≤ maximum` |
//!
//! Numbers may be JSON numbers or numeric strings where the mappers read both (`configData`);
//! the cycles must be JSON integers (their CRD type). A field that is absent or `null` is not
//! checked: the mapper's default applies.

use kubeedge_proto::object_name::is_dns_subdomain;
use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

use crate::{Kind, Object};

/// How deep a `spec` may nest (objects and arrays), at most.
pub const MAX_DEPTH: usize = 32;

/// How many problems a [`Problems`] lists; the rest are only counted.
pub const MAX_LISTED: usize = 32;

/// The longest message of a [`rejection_event`], in bytes.
pub const MAX_EVENT_MESSAGE: usize = 1024;

/// The largest `baudRate` accepted.
const MAX_BAUD_RATE: i128 = 10_000_000;

/// The longest property name, in bytes.
const MAX_PROPERTY_NAME: usize = 253;

/// How much of an offending value a problem shows, in characters.
const SHOWN_VALUE: usize = 40;

/// The bounds [`check`] holds Devices and DeviceModels to. Part of
/// [`CloudConfig`](crate::CloudConfig).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// The longest string (or object key) anywhere in a `spec` (a desired value, a
    /// `configData` entry), in bytes. Default 64 KiB.
    pub max_string_bytes: usize,
    /// The largest `spec`, as JSON, in bytes. Default 1 MiB.
    pub max_spec_bytes: usize,
    /// The most properties of a Device or DeviceModel (and methods of a Device). Default 1024.
    pub max_properties: usize,
    /// The largest `collectCycle`, `reportCycle` and `timeout`. KubeEdge leaves the unit to the
    /// mapper (nanoseconds in KubeEdge's Go mappers, milliseconds in kubeedge-rs), so the
    /// default is one day in nanoseconds, `86_400_000_000_000`.
    pub max_cycle: i64,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        Self {
            max_string_bytes: 64 * 1024,
            max_spec_bytes: 1024 * 1024,
            max_properties: 1024,
            max_cycle: 86_400_000_000_000,
        }
    }
}

/// One problem of a Device or DeviceModel: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, e.g. `spec.properties[0].collectCycle`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem [`check`] found: the first [`MAX_LISTED`] listed, the rest counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    listed: Vec<Problem>,
    omitted: usize,
}

impl Problems {
    /// Whether there is none (the object may be sent).
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// How many problems were found, listed or not.
    pub fn len(&self) -> usize {
        self.listed.len() + self.omitted
    }

    /// The listed problems, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.listed.iter()
    }

    /// How many problems were found beyond the listed ones.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// The problems as one line, `a; b; c (and 3 more)`, at most `max_bytes` long (cut at a
    /// character boundary, ending in `...` when cut).
    ///
    /// ```
    /// use kubeedge_cloud::device_check::{DeviceLimits, check_device};
    ///
    /// let device = serde_json::json!({
    ///     "metadata": {"name": "d"},
    ///     "spec": {"protocol": {"configData": {"port": 9999999999999_u64}}},
    /// });
    /// let problems = check_device(&device, &DeviceLimits::default());
    /// assert_eq!(
    ///     problems.summary(200),
    ///     "spec.protocol.configData.port: 9999999999999 is out of range 1..=65535"
    /// );
    /// ```
    pub fn summary(&self, max_bytes: usize) -> String {
        let mut text = self
            .listed
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if self.omitted > 0 {
            text.push_str(&format!(" (and {} more)", self.omitted));
        }
        if text.len() > max_bytes {
            let mut end = max_bytes.saturating_sub(3);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        text
    }

    fn push(&mut self, path: String, message: String) {
        if self.listed.len() < MAX_LISTED {
            self.listed.push(Problem { path, message });
        } else {
            self.omitted += 1;
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary(usize::MAX))
    }
}

/// A Device or DeviceModel that is not sent to nodes, and why. What
/// [`Downstream::take_rejections`](crate::Downstream::take_rejections) returns, once per
/// (uid, resourceVersion).
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The refused version of the object.
    pub object: Object,
    /// Its problems (never empty).
    pub problems: Problems,
}

/// The problems of `object` if it is a Device or DeviceModel; none for other kinds.
///
/// ```
/// use kubeedge_cloud::device_check::{DeviceLimits, check};
/// use kubeedge_cloud::{Kind, Object};
///
/// let device = Object::new(Kind::Device, serde_json::json!({
///     "metadata": {"name": "thermo", "namespace": "default"},
///     "spec": {"properties": [{"name": "t", "collectCycle": -5}]},
/// })).unwrap();
/// let problems = check(&device, &DeviceLimits::default());
/// assert_eq!(problems.len(), 1);
/// assert_eq!(problems.iter().next().unwrap().path, "spec.properties[0].collectCycle");
/// ```
pub fn check(object: &Object, limits: &DeviceLimits) -> Problems {
    match object.kind() {
        Kind::Device => check_device(&object.to_value(), limits),
        Kind::DeviceModel => check_device_model(&object.to_value(), limits),
        _ => Problems::default(),
    }
}

/// The problems of a Device (`devices.kubeedge.io/v1beta1`, as JSON). See the module docs
/// for the rules.
pub fn check_device(device: &Value, limits: &DeviceLimits) -> Problems {
    let mut c = Checker::new(limits);
    c.object_name(device);
    let Some(spec) = c.spec(device) else {
        return c.problems;
    };
    if let Some(node) = present(spec, "nodeName") {
        c.dns_name("spec.nodeName", node);
    }
    if let Some(model) = present(spec, "deviceModelRef").and_then(|r| present(r, "name")) {
        c.dns_name("spec.deviceModelRef.name", model);
    }
    let protocol = present(spec, "protocol");
    let protocol_name = protocol
        .and_then(|p| p.get("protocolName"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if let Some(data) = protocol.and_then(|p| present(p, "configData")) {
        c.protocol_config("spec.protocol.configData", data, 0);
    }
    if let Some(report) = present(spec, "stateReport") {
        c.cycle("spec.stateReport.reportCycle", report.get("reportCycle"));
    }
    let properties = c.list("spec.properties", spec.get("properties"));
    let mut names = HashSet::new();
    for (i, p) in properties.iter().enumerate() {
        let path = format!("spec.properties[{i}]");
        if !p.is_object() {
            c.problem(path, "not an object".into());
            continue;
        }
        c.property_name(&path, p, &mut names);
        if let Some(value) = present(p, "desired").and_then(|d| present(d, "value"))
            && !value.is_string()
        {
            c.problem(format!("{path}.desired.value"), "not a string".into());
        }
        c.cycle(&format!("{path}.collectCycle"), p.get("collectCycle"));
        c.cycle(&format!("{path}.reportCycle"), p.get("reportCycle"));
        c.visitors(&path, p, protocol_name);
        if let Some(push) = present(p, "pushMethod") {
            if let Some(http) = present(push, "http") {
                c.range(
                    &format!("{path}.pushMethod.http.port"),
                    http.get("port"),
                    1,
                    65_535,
                );
                c.range(
                    &format!("{path}.pushMethod.http.timeout"),
                    http.get("timeout"),
                    0,
                    i128::from(limits.max_cycle),
                );
            }
            if let Some(mqtt) = present(push, "mqtt") {
                c.range(
                    &format!("{path}.pushMethod.mqtt.qos"),
                    mqtt.get("qos"),
                    0,
                    2,
                );
            }
        }
    }
    for (i, m) in c
        .list("spec.methods", spec.get("methods"))
        .iter()
        .enumerate()
    {
        let path = format!("spec.methods[{i}]");
        match m.get("name").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => {}
            _ => c.problem(format!("{path}.name"), "a method needs a name".into()),
        }
        let names = c.list(&format!("{path}.propertyNames"), m.get("propertyNames"));
        if names.iter().any(|n| !n.is_string()) {
            c.problem(
                format!("{path}.propertyNames"),
                "not a list of strings".into(),
            );
        }
    }
    c.problems
}

/// The problems of a DeviceModel (`devices.kubeedge.io/v1beta1`, as JSON). See the module
/// docs for the rules.
pub fn check_device_model(model: &Value, limits: &DeviceLimits) -> Problems {
    let mut c = Checker::new(limits);
    c.object_name(model);
    let Some(spec) = c.spec(model) else {
        return c.problems;
    };
    let protocol = spec.get("protocol").and_then(Value::as_str).unwrap_or("");
    if let Some(data) = present(spec, "protocolConfigData") {
        c.protocol_config("spec.protocolConfigData", data, 0);
    }
    let properties = c.list("spec.properties", spec.get("properties"));
    let mut names = HashSet::new();
    for (i, p) in properties.iter().enumerate() {
        let path = format!("spec.properties[{i}]");
        if !p.is_object() {
            c.problem(path, "not an object".into());
            continue;
        }
        c.property_name(&path, p, &mut names);
        let ty = present(p, "type");
        let numeric = match ty {
            None => false,
            Some(Value::String(t)) if PROPERTY_TYPES.contains(&t.as_str()) => {
                matches!(t.as_str(), "INT" | "FLOAT" | "DOUBLE")
            }
            Some(other) => {
                c.problem(
                    format!("{path}.type"),
                    format!(
                        "{} is not one of {}",
                        shown(other),
                        PROPERTY_TYPES.join(", ")
                    ),
                );
                false
            }
        };
        match present(p, "accessMode") {
            None => {}
            Some(Value::String(m)) if m == "ReadWrite" || m == "ReadOnly" => {}
            Some(other) => c.problem(
                format!("{path}.accessMode"),
                format!("{} is not ReadWrite or ReadOnly", shown(other)),
            ),
        }
        if numeric {
            let min = c.bound(&format!("{path}.minimum"), p.get("minimum"));
            let max = c.bound(&format!("{path}.maximum"), p.get("maximum"));
            if let (Some(min), Some(max)) = (min, max)
                && min > max
            {
                c.problem(
                    path.clone(),
                    format!("minimum {min} is greater than maximum {max}"),
                );
            }
        }
        c.visitors(&path, p, protocol);
    }
    c.problems
}

/// KubeEdge v1.23's property types (`PropertyType`).
const PROPERTY_TYPES: [&str; 7] = [
    "INT", "FLOAT", "DOUBLE", "STRING", "BOOLEAN", "BYTES", "STREAM",
];

/// KubeEdge's Modbus register names.
const REGISTERS: [&str; 4] = [
    "CoilRegister",
    "DiscreteInputRegister",
    "HoldingRegister",
    "InputRegister",
];

/// The Kubernetes Event (core `v1`, type `Warning`) that says why `rejection`'s object is not
/// sent to nodes: reason `InvalidDevice` or `InvalidDeviceModel`, the object (with the refused
/// uid and resourceVersion) as `involvedObject`, the problems as the message (at most
/// [`MAX_EVENT_MESSAGE`] bytes), `now` (RFC 3339) as its times. Its name depends only on the
/// object's name, uid and resourceVersion, so writing it again (another replica, a restart)
/// replaces the same Event.
///
/// ```
/// use kubeedge_cloud::device_check::{DeviceLimits, Rejection, check, rejection_event};
/// use kubeedge_cloud::{Kind, Object};
///
/// let device = Object::new(Kind::Device, serde_json::json!({
///     "metadata": {"name": "thermo", "namespace": "default", "uid": "u1", "resourceVersion": "7"},
///     "spec": {"nodeName": "edge-1", "properties": [{"name": "t", "reportCycle": -1}]},
/// })).unwrap();
/// let problems = check(&device, &DeviceLimits::default());
/// let event = rejection_event(&Rejection { object: device, problems }, "2025-01-01T00:00:00Z");
/// assert_eq!(event["reason"], "InvalidDevice");
/// assert_eq!(event["type"], "Warning");
/// assert_eq!(event["involvedObject"]["uid"], "u1");
/// assert!(event["message"].as_str().unwrap().contains("spec.properties[0].reportCycle"));
/// ```
pub fn rejection_event(rejection: &Rejection, now: &str) -> Value {
    let object = &rejection.object;
    let (reason, consequence) = match object.kind() {
        Kind::DeviceModel => (
            "InvalidDeviceModel",
            "the DeviceModel and its Devices are not sent to their nodes".to_owned(),
        ),
        _ => (
            "InvalidDevice",
            match object.node_name() {
                Some(node) => format!("the Device is not sent to node {node}"),
                None => "the Device is not sent to any node".to_owned(),
            },
        ),
    };
    let head = format!("{consequence}: ");
    let message = format!(
        "{head}{}",
        rejection
            .problems
            .summary(MAX_EVENT_MESSAGE.saturating_sub(head.len()))
    );
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(object),
            "namespace": object.namespace(),
        },
        "involvedObject": {
            "apiVersion": object.kind().api_version(),
            "kind": object.kind().kind(),
            "namespace": object.namespace(),
            "name": object.name(),
            "uid": object.uid(),
            "resourceVersion": object.resource_version(),
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "kubeedge-rs-cloudcore"},
        "reportingComponent": "kubeedge-rs-cloudcore",
        "reportingInstance": "",
    })
}

/// `<name>.<16 hex digits of a hash of uid and resourceVersion>`, a valid object name (the
/// object's name is cut to 200 bytes without a trailing `-` or `.`).
fn event_name(object: &Object) -> String {
    let hash = [object.uid(), "/", object.resource_version()]
        .iter()
        .flat_map(|s| s.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let mut name: String = object
        .name()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')
        .take(200)
        .collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    while name.starts_with(['-', '.']) {
        name.remove(0);
    }
    if name.is_empty() {
        name.push_str("device");
    }
    format!("{name}.{hash:016x}")
}

/// `value[field]` unless it is absent or `null`.
fn present<'a>(value: &'a Value, field: &str) -> Option<&'a Value> {
    value.get(field).filter(|v| !v.is_null())
}

/// A value as a problem shows it: its JSON, cut to [`SHOWN_VALUE`] characters.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= SHOWN_VALUE {
        return text;
    }
    let cut: String = text.chars().take(SHOWN_VALUE).collect();
    format!("{cut}...")
}

/// An integer from a JSON integer, a float without a fraction or a numeric string.
fn integer(value: &Value) -> Option<i128> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.fract() == 0.0)
                    // Saturates: a huge float is out of every range.
                    .map(|f| f as i128)
            }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A number from a JSON number or a numeric string.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A path segment of the size walk.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn render(prefix: &str, segments: &[Segment<'_>]) -> String {
    let mut path = prefix.to_owned();
    for segment in segments {
        match segment {
            Segment::Key(k) => {
                path.push('.');
                path.push_str(k);
            }
            Segment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

/// Counts bytes, failing once past a limit (so that a huge spec is not written out whole).
struct ByteCount {
    count: usize,
    limit: usize,
}

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.count = self.count.saturating_add(buf.len());
        if self.count > self.limit {
            return Err(std::io::Error::other("past the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Checker<'l> {
    limits: &'l DeviceLimits,
    problems: Problems,
}

impl<'l> Checker<'l> {
    fn new(limits: &'l DeviceLimits) -> Self {
        Self {
            limits,
            problems: Problems::default(),
        }
    }

    fn problem(&mut self, path: String, message: String) {
        self.problems.push(path, message);
    }

    fn object_name(&mut self, object: &Value) {
        match object.pointer("/metadata/name").and_then(Value::as_str) {
            Some(name) if is_dns_subdomain(name) => {}
            Some(name) => self.problem(
                "metadata.name".into(),
                format!(
                    "{} is not a DNS-1123 subdomain",
                    shown(&Value::String(name.to_owned()))
                ),
            ),
            None => self.problem("metadata.name".into(), "missing".into()),
        }
    }

    fn dns_name(&mut self, path: &str, value: &Value) {
        match value.as_str() {
            Some(name) if is_dns_subdomain(name) => {}
            _ => self.problem(
                path.into(),
                format!("{} is not a DNS-1123 subdomain", shown(value)),
            ),
        }
    }

    /// The object's `spec` after the whole-spec checks (depth, strings, size); `None` when it
    /// is not an object or too deep to look into.
    fn spec<'v>(&mut self, object: &'v Value) -> Option<&'v Value> {
        let spec = object.get("spec")?;
        if !spec.is_object() {
            if !spec.is_null() {
                self.problem("spec".into(), "not an object".into());
            }
            return None;
        }
        let mut path = Vec::new();
        if !self.walk(spec, &mut path, 0) {
            return None;
        }
        let mut count = ByteCount {
            count: 0,
            limit: self.limits.max_spec_bytes,
        };
        if serde_json::to_writer(&mut count, spec).is_err() {
            self.problem(
                "spec".into(),
                format!("larger than {} bytes of JSON", self.limits.max_spec_bytes),
            );
        }
        Some(spec)
    }

    /// Checks string sizes and depth; false when the value nests deeper than [`MAX_DEPTH`].
    fn walk<'v>(&mut self, value: &'v Value, path: &mut Vec<Segment<'v>>, depth: usize) -> bool {
        let max = self.limits.max_string_bytes;
        match value {
            Value::String(s) if s.len() > max => {
                self.problem(
                    render("spec", path),
                    format!("a string of {} bytes (at most {max})", s.len()),
                );
            }
            Value::Array(_) | Value::Object(_) if depth >= MAX_DEPTH => {
                self.problem(
                    render("spec", path),
                    format!("nested deeper than {MAX_DEPTH} levels"),
                );
                return false;
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Segment::Index(i));
                    let ok = self.walk(item, path, depth + 1);
                    path.pop();
                    if !ok {
                        return false;
                    }
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    path.push(Segment::Key(key));
                    if key.len() > max {
                        self.problem(
                            render("spec", &path[..path.len() - 1]),
                            format!("a key of {} bytes (at most {max})", key.len()),
                        );
                    }
                    let ok = self.walk(item, path, depth + 1);
                    path.pop();
                    if !ok {
                        return false;
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// `value` (at `path`) as a list, checked against [`DeviceLimits::max_properties`]: empty
    /// when absent, or not a list (a problem then); cut to the limit (a problem then).
    fn list<'v>(&mut self, path: &str, value: Option<&'v Value>) -> &'v [Value] {
        let Some(v) = value.filter(|v| !v.is_null()) else {
            return &[];
        };
        let Some(items) = v.as_array() else {
            self.problem(path.into(), "not a list".into());
            return &[];
        };
        let max = self.limits.max_properties;
        if items.len() > max {
            self.problem(
                path.into(),
                format!("{} entries (at most {max})", items.len()),
            );
            return &items[..max];
        }
        items
    }

    fn property_name<'v>(&mut self, path: &str, property: &'v Value, names: &mut HashSet<&'v str>) {
        let name = property.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            self.problem(format!("{path}.name"), "a property needs a name".into());
        } else if name.len() > MAX_PROPERTY_NAME {
            self.problem(
                format!("{path}.name"),
                format!("{} bytes (at most {MAX_PROPERTY_NAME})", name.len()),
            );
        } else if name.chars().any(char::is_control) {
            self.problem(format!("{path}.name"), "has control characters".into());
        } else if !names.insert(name) {
            self.problem(
                format!("{path}.name"),
                format!("{} is not unique", shown(&Value::String(name.to_owned()))),
            );
        }
    }

    fn cycle(&mut self, path: &str, value: Option<&Value>) {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return;
        };
        let max = self.limits.max_cycle;
        match value.as_i64() {
            Some(n) if (0..=max).contains(&n) => {}
            Some(n) if n < 0 => self.problem(path.into(), format!("{n} is negative")),
            Some(n) => self.problem(path.into(), format!("{n} is larger than {max}")),
            None => match value.as_u64() {
                Some(n) => self.problem(path.into(), format!("{n} is larger than {max}")),
                None => self.problem(path.into(), format!("{} is not an integer", shown(value))),
            },
        }
    }

    fn range(&mut self, path: &str, value: Option<&Value>, min: i128, max: i128) {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return;
        };
        match integer(value) {
            Some(n) if (min..=max).contains(&n) => {}
            Some(_) => self.problem(
                path.into(),
                format!("{} is out of range {min}..={max}", shown(value)),
            ),
            None => self.problem(path.into(), format!("{} is not an integer", shown(value))),
        }
    }

    /// A model property's `minimum`/`maximum`: a number when set.
    fn bound(&mut self, path: &str, value: Option<&Value>) -> Option<f64> {
        let value = value.filter(|v| !v.is_null() && v.as_str() != Some(""))?;
        match number(value).filter(|f| f.is_finite()) {
            Some(f) => Some(f),
            None => {
                self.problem(path.into(), format!("{} is not a number", shown(value)));
                None
            }
        }
    }

    /// Protocol `configData`: the well-known keys, here and in nested objects.
    fn protocol_config(&mut self, path: &str, data: &Value, depth: usize) {
        let Some(map) = data.as_object() else {
            self.problem(path.into(), "not an object".into());
            return;
        };
        if depth >= MAX_DEPTH {
            return;
        }
        let serial = map
            .get("serialPort")
            .and_then(Value::as_str)
            .is_some_and(|p| !p.is_empty())
            || map
                .get("com")
                .and_then(|c| c.get("serialPort"))
                .and_then(Value::as_str)
                .is_some_and(|p| !p.is_empty());
        let max_cycle = i128::from(self.limits.max_cycle);
        for (key, value) in map {
            let at = format!("{path}.{key}");
            match key.as_str() {
                "port" => self.range(&at, Some(value), 1, 65_535),
                "slaveID" if serial => self.range(&at, Some(value), 1, 247),
                "slaveID" => self.range(&at, Some(value), 0, 255),
                "baudRate" => self.range(&at, Some(value), 1, MAX_BAUD_RATE),
                "dataBits" => self.range(&at, Some(value), 5, 8),
                "stopBits" => self.range(&at, Some(value), 1, 2),
                "timeout" => self.range(&at, Some(value), 0, max_cycle),
                _ if value.is_object() => self.protocol_config(&at, value, depth + 1),
                _ => {}
            }
        }
    }

    /// A property's `visitors.configData`.
    fn visitors(&mut self, path: &str, property: &Value, protocol: &str) {
        let Some(visitors) = present(property, "visitors") else {
            return;
        };
        let Some(data) = present(visitors, "configData") else {
            return;
        };
        let path = format!("{path}.visitors.configData");
        let Some(map) = data.as_object() else {
            self.problem(path, "not an object".into());
            return;
        };
        let own = visitors
            .get("protocolName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let modbus = [own, protocol]
            .iter()
            .any(|p| p.to_ascii_lowercase().contains("modbus"));
        if let Some(scale) = map.get("scale").filter(|v| !v.is_null())
            && !number(scale).is_some_and(f64::is_finite)
        {
            self.problem(
                format!("{path}.scale"),
                format!("{} is not a finite number", shown(scale)),
            );
        }
        if !modbus {
            return;
        }
        let register = match map.get("register").filter(|v| !v.is_null()) {
            None => None,
            Some(v) => match v
                .as_str()
                .and_then(|r| REGISTERS.iter().find(|k| k.eq_ignore_ascii_case(r)))
            {
                Some(r) => Some(*r),
                None => {
                    self.problem(
                        format!("{path}.register"),
                        format!("{} is not one of {}", shown(v), REGISTERS.join(", ")),
                    );
                    None
                }
            },
        };
        let offset = map.get("offset").filter(|v| !v.is_null());
        self.range(&format!("{path}.offset"), offset, 0, 65_535);
        let bits = matches!(register, Some("CoilRegister" | "DiscreteInputRegister"));
        let max_limit = if bits { 2000 } else { 125 };
        let limit = map.get("limit").filter(|v| !v.is_null());
        self.range(&format!("{path}.limit"), limit, 1, max_limit);
        if let (Some(o), Some(l)) = (offset.and_then(integer), limit.and_then(integer))
            && (0..=65_535).contains(&o)
            && (1..=max_limit).contains(&l)
            && o + l > 65_536
        {
            self.problem(
                format!("{path}.limit"),
                format!("offset {o} + limit {l} runs past address 65535"),
            );
        }
    }
}
