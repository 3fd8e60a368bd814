//! The CRDs of `devices.kubeedge.io/v1beta1` (`crds/*.yaml`, `kubeedge_cloud::crd`):
//! - each schema is structural, as the API server requires of a `apiextensions.k8s.io/v1` CRD;
//! - objects a real KubeEdge cloud served and KubeEdge's published samples pass them with
//!   nothing pruned and nothing invalid, while misspelled fields and bad enum values are caught;
//! - every field path of KubeEdge v1.23's own CRDs is there, with the same type;
//! - `install_crds` server-side applies the three of them.

use std::collections::BTreeSet;

use kubeedge_cloud::crd::{ALL_CRDS, DEVICE_CRD, DEVICE_MODEL_CRD, DEVICE_STATUS_CRD};
use serde_json::{Map, Value, json};

/// The WebSocket traffic of a real KubeEdge v1.22.2 cloud and edge.
const CAPTURE: &str = include_str!("../../kubeedge-proto/tests/vectors/ws-v1.22.2.jsonl");

/// Every schema path of KubeEdge v1.23's v1beta1 CRDs, listed once from its CRD files.
const KUBEEDGE_PATHS: &str = include_str!("fixtures/kubeedge-v1.23-device-paths.txt");

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("valid YAML")
}

/// The v1beta1 `openAPIV3Schema` of a CRD.
fn schema(crd: &Value) -> &Value {
    let versions = crd["spec"]["versions"].as_array().expect("versions");
    let v1beta1 = versions
        .iter()
        .find(|v| v["name"] == "v1beta1")
        .expect("a v1beta1 version");
    &v1beta1["schema"]["openAPIV3Schema"]
}

fn crd_of(kind: &str) -> Value {
    let text = match kind {
        "Device" => DEVICE_CRD,
        "DeviceModel" => DEVICE_MODEL_CRD,
        "DeviceStatus" => DEVICE_STATUS_CRD,
        other => panic!("no CRD for {other}"),
    };
    yaml(text)
}

// ---------------------------------------------------------------------------------------------
// Structural schema rules
// ---------------------------------------------------------------------------------------------

/// The keywords our schemas may use. Everything else is refused: the keywords a v1 CRD forbids
/// (`$ref`, `definitions`, `patternProperties`, `dependencies`, `additionalItems`, `id`,
/// `$schema`), the logical junctors (`allOf`, `anyOf`, `oneOf`, `not`: our schemas need none,
/// so the rules about them need no checking), and any typo.
const KEYWORDS: &[&str] = &[
    "type",
    "format",
    "description",
    "properties",
    "items",
    "additionalProperties",
    "required",
    "enum",
    "default",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-map-type",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// The API server's structural rules that matter for these schemas, as a list of violations.
fn structural_errors(crd: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let root = schema(crd);
    if root["type"] != "object" {
        errors.push("root: type must be object".to_string());
    }
    // Only metadata.name and metadata.generateName may be restricted.
    if let Some(metadata) = root["properties"].get("metadata") {
        let keys: BTreeSet<&str> = metadata
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if metadata["type"] != "object" {
            errors.push("metadata: type must be object".to_string());
        }
        for key in keys {
            if !matches!(key, "type" | "description") {
                errors.push(format!("metadata: {key} is not allowed"));
            }
        }
    }
    check_node(root, "", &mut errors);
    errors
}

fn check_node(node: &Value, path: &str, errors: &mut Vec<String>) {
    let at = if path.is_empty() { "root" } else { path };
    let Some(map) = node.as_object() else {
        errors.push(format!("{at}: a schema must be an object"));
        return;
    };
    for key in map.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            errors.push(format!("{at}: unknown or forbidden keyword {key:?}"));
        }
    }
    let preserve = match map.get("x-kubernetes-preserve-unknown-fields") {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            errors.push(format!(
                "{at}: x-kubernetes-preserve-unknown-fields must be true, not {other}"
            ));
            false
        }
    };
    let int_or_string = map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let ty = map.get("type").and_then(Value::as_str);
    match (ty, map.get("type")) {
        (Some(t), _) if !TYPES.contains(&t) => errors.push(format!("{at}: bad type {t:?}")),
        (Some(_), _) if int_or_string => {
            errors.push(format!("{at}: x-kubernetes-int-or-string takes no type"))
        }
        (None, Some(other)) => errors.push(format!("{at}: type must be a string, not {other}")),
        (None, None) if !preserve && !int_or_string => {
            errors.push(format!("{at}: no type (structural schemas need one)"))
        }
        _ => {}
    }
    if map.get("description").is_some_and(|d| !d.is_string()) {
        errors.push(format!("{at}: description must be a string"));
    }
    if let Some(format) = map.get("format") {
        let allowed: &[&str] = match ty {
            Some("integer") => &["int32", "int64"],
            Some("number") => &["float", "double"],
            Some("string") => &["date-time", "date", "byte", "uri", "uuid", "duration"],
            _ => &[],
        };
        if !format.as_str().is_some_and(|f| allowed.contains(&f)) {
            errors.push(format!("{at}: format {format} does not fit type {ty:?}"));
        }
    }

    let properties = map.get("properties");
    if let Some(properties) = properties {
        if ty != Some("object") {
            errors.push(format!("{at}: properties on a non-object"));
        }
        match properties.as_object() {
            Some(properties) => {
                for (name, child) in properties {
                    check_node(child, &join(path, name), errors);
                }
            }
            None => errors.push(format!("{at}: properties must be a map")),
        }
    }
    if let Some(additional) = map.get("additionalProperties") {
        if ty != Some("object") {
            errors.push(format!("{at}: additionalProperties on a non-object"));
        }
        if properties.is_some() {
            errors.push(format!(
                "{at}: properties and additionalProperties are mutually exclusive"
            ));
        }
        if additional.is_object() {
            check_node(additional, &format!("{path}{{}}"), errors);
        } else if additional == &Value::Bool(false) {
            errors.push(format!("{at}: additionalProperties: false is forbidden"));
        }
    }
    match (ty, map.get("items")) {
        (Some("array"), Some(items)) if items.is_object() => {
            check_node(items, &format!("{path}[]"), errors)
        }
        (Some("array"), Some(_)) => errors.push(format!("{at}: items must be one schema")),
        (Some("array"), None) => errors.push(format!("{at}: an array needs items")),
        (_, Some(_)) => errors.push(format!("{at}: items on a non-array")),
        (_, None) => {}
    }
    if let Some(required) = map.get("required") {
        let known = properties.and_then(Value::as_object);
        for name in required.as_array().into_iter().flatten() {
            match name.as_str() {
                Some(name) if known.is_some_and(|k| k.contains_key(name)) => {}
                _ => errors.push(format!("{at}: required {name} is not a property")),
            }
        }
    }
    if let Some(values) = map.get("enum") {
        match values.as_array() {
            Some(values) if !values.is_empty() => {
                for value in values {
                    if !has_type(value, ty, map.get("format")) {
                        errors.push(format!("{at}: enum value {value} is not a {ty:?}"));
                    }
                }
            }
            _ => errors.push(format!("{at}: enum must be a non-empty list")),
        }
    }
    if let Some(default) = map.get("default")
        && !has_type(default, ty, map.get("format"))
    {
        errors.push(format!("{at}: default {default} is not a {ty:?}"));
    }
    if let Some(map_type) = map.get("x-kubernetes-map-type")
        && (ty != Some("object") || !matches!(map_type.as_str(), Some("atomic" | "granular")))
    {
        errors.push(format!("{at}: bad x-kubernetes-map-type {map_type}"));
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Whether `value` is of the schema type `ty` (and fits `format`).
fn has_type(value: &Value, ty: Option<&str>, format: Option<&Value>) -> bool {
    match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_boolean(),
        Some("number") => value.is_number(),
        Some("integer") => match value.as_i64() {
            Some(n) if format.and_then(Value::as_str) == Some("int32") => i32::try_from(n).is_ok(),
            Some(_) => true,
            None => false,
        },
        _ => true,
    }
}

#[test]
fn the_three_crds_are_structural_namespaced_v1beta1_without_subresources() {
    let expected = [
        ("Device", "devices"),
        ("DeviceModel", "devicemodels"),
        ("DeviceStatus", "devicestatuses"),
    ];
    for (text, (kind, plural)) in ALL_CRDS.iter().zip(expected) {
        let crd = yaml(text);
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(
            crd["metadata"]["name"],
            format!("{plural}.devices.kubeedge.io")
        );
        let spec = &crd["spec"];
        assert_eq!(spec["group"], "devices.kubeedge.io");
        assert_eq!(spec["scope"], "Namespaced");
        assert_eq!(spec["names"]["kind"], kind);
        assert_eq!(spec["names"]["listKind"], format!("{kind}List"));
        assert_eq!(spec["names"]["plural"], plural);
        assert_eq!(spec["names"]["singular"], kind.to_lowercase());
        let versions = spec["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1, "{kind}: only v1beta1");
        let version = &versions[0];
        assert_eq!(version["name"], "v1beta1");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        // DeviceStatus's status is written with a plain merge patch on the object, which a
        // status subresource would silently drop; Device and DeviceModel need none either.
        assert!(
            version.get("subresources").is_none(),
            "{kind}: subresources"
        );
        let errors = structural_errors(&crd);
        assert!(errors.is_empty(), "{kind}: {errors:#?}");
    }
}

#[test]
fn the_structural_checker_catches_what_the_api_server_refuses() {
    let crd = json!({"spec": {"versions": [{"name": "v1beta1", "schema": {"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "spec": {
                "type": "object",
                "properties": {
                    "untyped": {"description": "no type"},
                    "list": {"type": "array"},
                    "map": {"type": "object", "additionalProperties": {"type": "string"},
                            "properties": {"a": {"type": "string"}}},
                    "typo": {"type": "string", "enums": ["A"]},
                    "badEnum": {"type": "string", "enum": ["A", 1]},
                    "number": {"type": "integer", "format": "int16"},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": false},
                    "junctor": {"type": "string", "anyOf": [{"type": "string"}]}
                },
                "required": ["missing"]
            }
        }
    }}}]}});
    let errors = structural_errors(&crd);
    for expected in [
        "metadata: properties is not allowed",
        "spec.untyped: no type",
        "spec.list: an array needs items",
        "spec.map: properties and additionalProperties are mutually exclusive",
        "spec.typo: unknown or forbidden keyword \"enums\"",
        "spec.badEnum: enum value 1",
        "spec.number: format \"int16\"",
        "spec.free: x-kubernetes-preserve-unknown-fields must be true",
        "spec.junctor: unknown or forbidden keyword \"anyOf\"",
        "spec: required \"missing\"",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected:?} not in {errors:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pruning and validation
// ---------------------------------------------------------------------------------------------

/// What the API server would do to `object` under `schema`: every field it would prune
/// (unknown and not under `x-kubernetes-preserve-unknown-fields`, or `null` where not
/// nullable) and every type, format, enum or `required` violation, sorted. `metadata` is the API
/// server's own business (ObjectMeta) and is not looked into.
fn findings(object: &Value, schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    validate(object, schema, "", &mut out);
    out.sort();
    out
}

fn validate(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let at = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema["nullable"] != true {
            out.push(format!("{at}: null, pruned"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            out.push(format!("{at}: {value} is neither an integer nor a string"));
        }
        return;
    }
    let ty = schema["type"].as_str();
    if !has_type(value, ty, schema.get("format")) {
        out.push(format!(
            "{at}: {value} is not of type {}{}",
            ty.unwrap_or("?"),
            schema["format"]
                .as_str()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        ));
        return;
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        out.push(format!("{at}: {value} is not one of {}", schema["enum"]));
    }
    match value {
        Value::Object(fields) => validate_object(fields, schema, path, out),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                validate(item, &schema["items"], &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn validate_object(fields: &Map<String, Value>, schema: &Value, path: &str, out: &mut Vec<String>) {
    let properties = schema["properties"].as_object();
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if !fields.contains_key(name) {
            out.push(format!("{}: required, missing", join(path, name)));
        }
    }
    for (name, value) in fields {
        let field = join(path, name);
        if path.is_empty() && name == "metadata" {
            continue;
        }
        if let Some(child) = properties.and_then(|p| p.get(name)) {
            validate(value, child, &field, out);
        } else if schema["additionalProperties"].is_object() {
            validate(value, &schema["additionalProperties"], &field, out);
        } else if !preserve {
            out.push(format!("{field}: unknown field, pruned"));
        }
    }
}

/// The object with what the API server sets itself taken out of its metadata.
fn strip_server_fields(mut object: Value) -> Value {
    let metadata = object["metadata"].as_object_mut().expect("metadata");
    for field in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
    ] {
        metadata.remove(field);
    }
    object
}

/// The object a `cloud->edge` message of the capture carries (`seq` is the record number).
fn captured_object(seq: u64) -> Value {
    let record = CAPTURE
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("JSON record"))
        .find(|record| record["seq"] == seq)
        .unwrap_or_else(|| panic!("no record {seq}"));
    assert_eq!(record["dir"], "cloud->edge");
    let payload = record["payload"].as_str().expect("a text payload");
    let message: Value = serde_json::from_str(payload).expect("a JSON message");
    strip_server_fields(message["content"].clone())
}

fn assert_clean(name: &str, object: &Value) {
    let kind = object["kind"].as_str().expect("kind");
    assert_eq!(
        object["apiVersion"], "devices.kubeedge.io/v1beta1",
        "{name}"
    );
    let crd = crd_of(kind);
    let found = findings(object, schema(&crd));
    assert!(found.is_empty(), "{name} ({kind}): {found:#?}");
}

#[test]
fn what_a_real_kubeedge_cloud_served_passes_unpruned() {
    let model = captured_object(37);
    assert_eq!(model["kind"], "DeviceModel");
    assert_eq!(model["metadata"]["name"], "thermo-model");
    assert_clean("captured thermo-model", &model);

    let device = captured_object(39);
    assert_eq!(device["kind"], "Device");
    assert_eq!(device["metadata"]["name"], "thermo-1");
    assert!(device["metadata"].get("uid").is_none());
    assert_clean("captured thermo-1", &device);
}

#[test]
fn kubeedge_published_modbus_samples_pass_unpruned() {
    for (name, text) in [
        (
            "mappers-go modbus-model.yaml",
            include_str!("fixtures/mappers-go-modbus-model.yaml"),
        ),
        (
            "mappers-go modbus-instance.yaml",
            include_str!("fixtures/mappers-go-modbus-instance.yaml"),
        ),
        (
            "docs beta1-model",
            include_str!("fixtures/kubeedge-docs-beta1-model.yaml"),
        ),
        (
            "docs beta1-device",
            include_str!("fixtures/kubeedge-docs-beta1-device.yaml"),
        ),
    ] {
        assert_clean(name, &yaml(text));
    }
}

#[test]
fn a_device_status_as_the_cloud_writes_it_passes_unpruned() {
    let status = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceStatus",
        "metadata": {
            "name": "thermo-1",
            "namespace": "default",
            "ownerReferences": [{"apiVersion": "devices.kubeedge.io/v1beta1", "kind": "Device",
                                 "name": "thermo-1", "uid": "6a7a8588-5ff0-47b4-a701-e8fa92c603b2"}]
        },
        "spec": {},
        "status": {
            "twins": [{
                "propertyName": "temperature",
                "reported": {"value": "21", "metadata": {"timestamp": "1795408300000", "type": "int"}},
                "observedDesired": {"value": "20", "metadata": {"type": "int"}}
            }],
            "state": "online",
            "lastOnlineTime": "2026-11-23T04:31:40Z",
            "extensions": {"anything": {"nested": [1, 2]}}
        }
    });
    assert_clean("DeviceStatus", &status);
}

#[test]
fn misspelled_fields_and_bad_values_are_reported() {
    let mut device = captured_object(39);
    device["spec"]["properties"][0]["reportToClod"] = json!(true);
    device["spec"]["nodename"] = json!("ke-edge-test");
    device["spec"]["properties"][0]["collectCycle"] = json!("10s");
    device["spec"]["properties"][0]["pushMethod"] = json!({"mqtt": {"qos": 3_000_000_000_i64}});
    // Under the free-form configData anything goes.
    device["spec"]["protocol"]["configData"]["anyKey"] = json!({"deep": [true]});
    let device_crd = crd_of("Device");
    assert_eq!(
        findings(&device, schema(&device_crd)),
        [
            "spec.nodename: unknown field, pruned",
            "spec.properties[0].collectCycle: \"10s\" is not of type integer (int64)",
            "spec.properties[0].pushMethod.mqtt.qos: 3000000000 is not of type integer (int32)",
            "spec.properties[0].reportToClod: unknown field, pruned",
        ]
    );

    let mut model = captured_object(37);
    model["spec"]["properties"][0]["type"] = json!("int");
    model["spec"]["properties"][0]["accessMode"] = json!("WriteOnly");
    let model_crd = crd_of("DeviceModel");
    assert_eq!(
        findings(&model, schema(&model_crd)),
        [
            "spec.properties[0].accessMode: \"WriteOnly\" is not one of [\"ReadWrite\",\"ReadOnly\"]",
            "spec.properties[0].type: \"int\" is not one of [\"INT\",\"FLOAT\",\"DOUBLE\",\"STRING\",\"BOOLEAN\",\"BYTES\",\"STREAM\"]",
        ]
    );
    // A v1alpha2 model (`type: {int: {...}}`) does not pass as v1beta1.
    model["spec"]["properties"][0]["type"] = json!({"int": {"accessMode": "ReadWrite"}});
    model["spec"]["properties"][0]["accessMode"] = json!("ReadOnly");
    assert_eq!(
        findings(&model, schema(&model_crd)),
        ["spec.properties[0].type: {\"int\":{\"accessMode\":\"ReadWrite\"}} is not of type string"]
    );

    let status = json!({
        "apiVersion": "devices.kubeedge.io/v1beta1",
        "kind": "DeviceStatus",
        "metadata": {"name": "thermo-1"},
        "spec": {"stray": 1},
        "status": {"twins": [{"propertyName": "temperature", "reported": {"metadata": {"n": 1}}}],
                   "state": null}
    });
    let status_crd = crd_of("DeviceStatus");
    assert_eq!(
        findings(&status, schema(&status_crd)),
        [
            "spec.stray: unknown field, pruned",
            "status.state: null, pruned",
            "status.twins[0].reported.metadata.n: 1 is not of type string",
            "status.twins[0].reported.value: required, missing",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Completeness against KubeEdge v1.23
// ---------------------------------------------------------------------------------------------

/// The schema paths of one of our CRDs in the fixture's format:
/// `<kind> <path> <type>[:<format>][+preserve]`.
fn our_paths(kind: &str) -> BTreeSet<String> {
    fn walk(node: &Value, path: &str, kind: &str, out: &mut BTreeSet<String>) {
        if !path.is_empty() {
            let mut ty = node["type"].as_str().unwrap_or_default().to_string();
            if let Some(format) = node["format"].as_str() {
                ty = format!("{ty}:{format}");
            }
            if node["x-kubernetes-preserve-unknown-fields"] == true {
                ty.push_str("+preserve");
            }
            out.insert(format!("{kind} {path} {ty}"));
        }
        if let Some(properties) = node["properties"].as_object() {
            for (name, child) in properties {
                walk(child, &join(path, name), kind, out);
            }
        }
        if node["items"].is_object() {
            walk(&node["items"], &format!("{path}[]"), kind, out);
        }
        if node["additionalProperties"].is_object() {
            walk(
                &node["additionalProperties"],
                &format!("{path}{{}}"),
                kind,
                out,
            );
        }
    }
    let crd = crd_of(kind);
    let mut out = BTreeSet::new();
    walk(schema(&crd), "", kind, &mut out);
    out
}

#[test]
fn every_field_path_of_kubeedge_v1_23_is_there_with_its_type() {
    let theirs: BTreeSet<String> = KUBEEDGE_PATHS
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(
        theirs.len() > 100,
        "the fixture lists {} paths",
        theirs.len()
    );
    let ours: BTreeSet<String> = ["Device", "DeviceModel", "DeviceStatus"]
        .into_iter()
        .flat_map(our_paths)
        .collect();
    // No deliberate omission: every path, with the same type, format and
    // preserve-unknown-fields marking. And nothing of our own added.
    let missing: Vec<_> = theirs.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&theirs).collect();
    assert!(missing.is_empty(), "missing from ours: {missing:#?}");
    assert!(extra.is_empty(), "not in KubeEdge's: {extra:#?}");
}

// ---------------------------------------------------------------------------------------------
// install_crds
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "kube")]
mod install {
    use std::time::Duration;

    use kube::client::Body;
    use kubeedge_cloud::crd::{ALL_CRDS, install_crds};
    use kubeedge_cloud::{ApiError, Error};
    use serde_json::{Value, json};
    use tokio::time::timeout;
    use tower_test::mock::{self, Handle};

    const DEADLINE: Duration = Duration::from_secs(10);

    type Mock = Handle<http::Request<Body>, http::Response<Body>>;

    fn client() -> (kube::Client, Mock) {
        let (service, handle) = mock::pair::<http::Request<Body>, http::Response<Body>>();
        (kube::Client::new(service, "default"), handle)
    }

    /// Checks the next request is the server-side apply of `expected` (a CRD manifest) and
    /// returns it with the body it carried.
    async fn next_apply(
        handle: &mut Mock,
        expected: &str,
    ) -> (Value, mock::SendResponse<http::Response<Body>>) {
        let (request, respond) = timeout(DEADLINE, handle.next_request())
            .await
            .expect("a request before the deadline")
            .expect("a request");
        let manifest: Value = serde_yaml_ng::from_str(expected).expect("manifest");
        let name = manifest["metadata"]["name"].as_str().expect("name");
        assert_eq!(request.method(), http::Method::PATCH);
        assert_eq!(
            request.uri().path(),
            format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        );
        // kube writes `?&force=true&...`; the empty pair means nothing to the API server.
        let query = request.uri().query().expect("query");
        let mut query: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        query.sort_unstable();
        assert_eq!(query, ["fieldManager=kubeedge-cloud", "force=true"]);
        assert_eq!(
            request.headers()[http::header::CONTENT_TYPE],
            "application/apply-patch+yaml"
        );
        let bytes = timeout(DEADLINE, request.into_body().collect_bytes())
            .await
            .expect("the body before the deadline")
            .expect("a body");
        let body: Value = serde_json::from_slice(&bytes).expect("a JSON body");
        assert_eq!(body["metadata"]["name"], name);
        assert_eq!(body, manifest, "the manifest, whole");
        (body, respond)
    }

    fn ok(body: &Value) -> http::Response<Body> {
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("JSON")))
            .expect("response")
    }

    #[tokio::test]
    async fn install_crds_server_side_applies_the_three_crds() {
        let (client, mut handle) = client();
        let install = tokio::spawn(async move { install_crds(&client).await });
        for expected in ALL_CRDS {
            // The API server answers with the object; the echo also proves the manifest
            // decodes as k8s-openapi's CustomResourceDefinition.
            let (body, respond) = next_apply(&mut handle, expected).await;
            respond.send_response(ok(&body));
        }
        timeout(DEADLINE, install)
            .await
            .expect("install_crds returns before the deadline")
            .expect("task")
            .expect("installed");
    }

    #[tokio::test]
    async fn a_refusal_is_an_api_error_and_stops_the_install() {
        let (client, mut handle) = client();
        let install = tokio::spawn(async move { install_crds(&client).await });
        let (body, respond) = next_apply(&mut handle, ALL_CRDS[0]).await;
        respond.send_response(ok(&body));
        let (_, respond) = next_apply(&mut handle, ALL_CRDS[1]).await;
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "customresourcedefinitions.apiextensions.k8s.io is forbidden",
            "reason": "Forbidden", "code": 403
        });
        respond.send_response(
            http::Response::builder()
                .status(403)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&status).expect("JSON")))
                .expect("response"),
        );
        let result = timeout(DEADLINE, install)
            .await
            .expect("install_crds returns before the deadline")
            .expect("task");
        match result {
            Err(Error::Api(error)) => assert_eq!(
                error,
                ApiError::new(
                    403,
                    "Forbidden",
                    "customresourcedefinitions.apiextensions.k8s.io is forbidden"
                )
            ),
            other => panic!("expected a 403 ApiError, got {other:?}"),
        }
        // Nothing more was sent after the refusal (the client is gone with the task).
        let next = timeout(DEADLINE, handle.next_request())
            .await
            .expect("the mock closes before the deadline");
        assert!(next.is_none(), "a request after the refusal");
    }

    #[tokio::test]
    async fn an_unreadable_answer_is_a_client_error() {
        let (client, mut handle) = client();
        let install = tokio::spawn(async move { install_crds(&client).await });
        let (_, respond) = next_apply(&mut handle, ALL_CRDS[0]).await;
        respond.send_response(
            http::Response::builder()
                .status(200)
                .body(Body::from(b"not json".to_vec()))
                .expect("response"),
        );
        let result = timeout(DEADLINE, install)
            .await
            .expect("install_crds returns before the deadline")
            .expect("task");
        assert!(matches!(result, Err(Error::Client(_))), "{result:?}");
    }
}
