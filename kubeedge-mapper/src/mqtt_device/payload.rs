//! What the MQTT device driver does with payloads: the JSON path that picks a property out of
//! a device's message, the conversion to the property type, and the command template a write
//! is published through.

use std::fmt;

use serde_json::Value as Json;

use crate::driver::{PropertyType, Value};
use crate::error::{Error, Result};

/// Longest value text an error message quotes; the rest is cut.
const QUOTE_LIMIT: usize = 80;

/// A simple path into a JSON document: keys separated by dots, array indexes in brackets.
///
/// `sensors.temp`, `data[0].v`, `$.data[0].v` (a leading `$` is allowed and means the same),
/// `$` alone (the whole document), `["key.with.dots"].v` (a quoted key in brackets, single or
/// double quotes, no escapes). Negative indexes, wildcards, slices and filters are not
/// supported: a path names exactly one value.
///
/// ```
/// use kubeedge_mapper::mqtt_device::JsonPath;
///
/// let path: JsonPath = "data[0].v".parse()?;
/// let doc = serde_json::json!({"data": [{"v": 21.5}]});
/// assert_eq!(path.find(&doc)?, &serde_json::json!(21.5));
/// # Ok::<(), kubeedge_mapper::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Most steps a path may have (a device's document is not deeper than this in practice, and
/// serde_json refuses documents nested more than 128 levels anyway).
const MAX_STEPS: usize = 64;

impl std::str::FromStr for JsonPath {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| Error::config(format!("jsonPath {text:?}: {why}"));
        let mut rest = text.trim();
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            if let Some(r) = rest.strip_prefix('.') {
                if r.is_empty() {
                    return Err(bad("nothing after \"$.\""));
                }
                rest = r;
            }
        } else if rest.is_empty() {
            return Err(bad("empty (use $ for the whole document)"));
        }
        let mut steps = Vec::new();
        // Whether the next step must be a key (after a dot) or may be a key (at the start).
        let mut expect_key = !rest.is_empty() && !rest.starts_with('[');
        while !rest.is_empty() || expect_key {
            if steps.len() >= MAX_STEPS {
                return Err(bad(&format!("more than {MAX_STEPS} steps")));
            }
            if expect_key && rest.starts_with('[') {
                // `a.["b"]`, `a.[0]`: a bracket after a dot.
                expect_key = false;
                continue;
            }
            if expect_key {
                let end = rest.find(['.', '[', ']']).unwrap_or(rest.len());
                let key = &rest[..end];
                if key.is_empty() {
                    return Err(bad("an empty key (two dots, or a dot at an end)"));
                }
                steps.push(Step::Key(key.to_owned()));
                rest = &rest[end..];
                expect_key = false;
                continue;
            }
            if let Some(r) = rest.strip_prefix('.') {
                rest = r;
                expect_key = true;
            } else if let Some(r) = rest.strip_prefix('[') {
                let (step, after) = bracket(r).ok_or_else(|| {
                    bad("a bracket must hold an index ([0]) or a quoted key ([\"a.b\"])")
                })?;
                steps.push(step);
                rest = after;
            } else {
                let next = rest.chars().next().unwrap_or_default();
                return Err(bad(&format!("unexpected {next:?}")));
            }
        }
        Ok(Self { steps })
    }
}

/// Parses what follows a `[`: `0]` or `"key"]` or `'key']`; returns the step and the rest.
fn bracket(text: &str) -> Option<(Step, &str)> {
    if let Some(quote) = text.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let body = &text[1..];
        let end = body.find(quote)?;
        let after = body[end + 1..].strip_prefix(']')?;
        return Some((Step::Key(body[..end].to_owned()), after));
    }
    let end = text.find(']')?;
    let digits = &text[..end];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Step::Index(digits.parse().ok()?), &text[end + 1..]))
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return f.write_str("$");
        }
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Key(k) if k.contains(['.', '[', ']']) || k.is_empty() => {
                    if k.contains('"') {
                        write!(f, "['{k}']")?;
                    } else {
                        write!(f, "[\"{k}\"]")?;
                    }
                }
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl JsonPath {
    /// The value the path names in `doc`, or an [`Error::BadFrame`] that says where the path
    /// left the document.
    pub fn find<'a>(&self, doc: &'a Json) -> Result<&'a Json> {
        let mut here = doc;
        for (i, step) in self.steps.iter().enumerate() {
            let at = || {
                let so_far = JsonPath {
                    steps: self.steps[..i].to_vec(),
                };
                so_far.to_string()
            };
            here = match (step, here) {
                (Step::Key(k), Json::Object(map)) => map.get(k).ok_or_else(|| {
                    Error::bad_frame(format!("no key {k:?} in the object at {}", at()))
                })?,
                (Step::Index(n), Json::Array(items)) => items.get(*n).ok_or_else(|| {
                    Error::bad_frame(format!(
                        "no index {n} in the array of {} at {}",
                        items.len(),
                        at()
                    ))
                })?,
                (Step::Key(k), other) => {
                    return Err(Error::bad_frame(format!(
                        "{} is {}, not an object with key {k:?}",
                        at(),
                        json_kind(other)
                    )));
                }
                (Step::Index(n), other) => {
                    return Err(Error::bad_frame(format!(
                        "{} is {}, not an array with index {n}",
                        at(),
                        json_kind(other)
                    )));
                }
            };
        }
        Ok(here)
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Converts the JSON value a path picked to `property_type`: a JSON string is read as the
/// twin reads text ([`Value::parse`]: `"25"` is a fine INT); numbers and booleans by their JSON
/// text (`25`, `21.5`, `true`; so `1`/`0` are fine BOOLEANs, and `25.0` is not an INT); a STRING
/// property takes any JSON value, non-strings as their compact JSON text. `null`, arrays and
/// objects fit no other type.
pub(crate) fn json_to_value(property_type: PropertyType, v: &Json) -> Result<Value> {
    let result = match (property_type, v) {
        (PropertyType::String, Json::String(s)) => Ok(Value::String(s.clone())),
        (PropertyType::String, other) => Ok(Value::String(other.to_string())),
        (t, Json::String(s)) => Value::parse(t, s),
        (t, Json::Number(n)) => Value::parse(t, &n.to_string()),
        (t, Json::Bool(b)) => Value::parse(t, if *b { "true" } else { "false" }),
        (t, other) => Err(Error::mismatch(
            t,
            other.to_string(),
            format!("the JSON value is {}", json_kind(other)),
        )),
    };
    result.map_err(shorten_mismatch)
}

/// Converts a whole payload (no JSON path) to `property_type`: BYTES takes the bytes as they
/// are; STRING takes the text as it is; the other types take the text without surrounding
/// whitespace, by the twin's rules ([`Value::parse`]). Text must be UTF-8.
pub(crate) fn raw_to_value(property_type: PropertyType, payload: &[u8]) -> Result<Value> {
    if property_type == PropertyType::Bytes {
        return Ok(Value::Bytes(payload.to_vec()));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        Error::bad_frame(format!(
            "the payload is not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    match property_type {
        PropertyType::String => Ok(Value::String(text.to_owned())),
        t => Value::parse(t, text.trim()).map_err(shorten_mismatch),
    }
}

/// Cuts a mismatch's quoted value to [`QUOTE_LIMIT`] characters, so a huge bad value makes a
/// short error.
pub(crate) fn shorten_mismatch(e: Error) -> Error {
    match e {
        Error::TypeMismatch {
            expected,
            value,
            reason,
        } => Error::TypeMismatch {
            expected,
            value: shorten(&value),
            reason,
        },
        other => other,
    }
}

/// `text`, cut to [`QUOTE_LIMIT`] characters with a note of how long it was.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// A write's payload: text with placeholders the value is substituted into.
///
/// - `{{value}}`: the value as the twin writes it ([`Value::to_twin_string`]: `25`, `21.5`,
///   `true`, text as is, base64 for BYTES);
/// - `{{json}}`: the value as a JSON literal (`25`, `21.5`, `true`, `"text"` quoted and
///   escaped, base64 BYTES as a string, `"NaN"`/`"+Inf"` as strings since JSON has no such
///   numbers).
///
/// Spaces inside the braces are allowed (`{{ value }}`); any other `{{...}}` is refused, and so
/// is a template with no placeholder at all (it would drop the value). Everything else is
/// copied as is.
///
/// ```
/// use kubeedge_mapper::mqtt_device::CommandTemplate;
/// use kubeedge_mapper::Value;
///
/// let set: CommandTemplate = r#"{"set":{{value}}}"#.parse()?;
/// assert_eq!(set.render(&Value::Int(30)), br#"{"set":30}"#);
/// let name: CommandTemplate = r#"{"name":{{json}}}"#.parse()?;
/// assert_eq!(name.render(&Value::from("a \"b\"")), br#"{"name":"a \"b\""}"#);
/// # Ok::<(), kubeedge_mapper::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value,
    Json,
}

impl std::str::FromStr for CommandTemplate {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                Error::config(format!(
                    "commandTemplate {}: \"{{{{\" without a closing \"}}}}\"",
                    shorten(text)
                ))
            })?;
            let piece = match after[..end].trim() {
                "value" => Piece::Value,
                "json" => Piece::Json,
                other => {
                    return Err(Error::config(format!(
                        "commandTemplate {}: unknown placeholder {{{{{other}}}}} (expected \
                         {{{{value}}}} or {{{{json}}}})",
                        shorten(text)
                    )));
                }
            };
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            pieces.push(piece);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if !pieces.iter().any(|p| !matches!(p, Piece::Text(_))) {
            return Err(Error::config(format!(
                "commandTemplate {}: has no {{{{value}}}} or {{{{json}}}} placeholder",
                shorten(text)
            )));
        }
        Ok(Self { pieces })
    }
}

impl CommandTemplate {
    /// The payload for `value`.
    pub fn render(&self, value: &Value) -> Vec<u8> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Value => out.push_str(&value.to_twin_string()),
                Piece::Json => out.push_str(&json_literal(value)),
            }
        }
        out.into_bytes()
    }
}

/// `value` as a JSON literal.
fn json_literal(value: &Value) -> String {
    let finite = match value {
        Value::Float(v) => v.is_finite(),
        Value::Double(v) => v.is_finite(),
        _ => true,
    };
    match value {
        Value::Int(_) | Value::Boolean(_) => value.to_twin_string(),
        Value::Float(_) | Value::Double(_) if finite => value.to_twin_string(),
        other => Json::String(other.to_twin_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> JsonPath {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    #[test]
    fn paths_parse_and_print_canonically() {
        for (text, printed) in [
            ("sensors.temp", "sensors.temp"),
            ("data[0].v", "data[0].v"),
            ("$.data[0].v", "data[0].v"),
            ("$data[10]", "data[10]"),
            ("$", "$"),
            ("$[2]", "[2]"),
            ("[2][0]", "[2][0]"),
            ("a[1][2].b", "a[1][2].b"),
            ("[\"a.b\"].c", "[\"a.b\"].c"),
            ("['x\"y.z']", "['x\"y.z']"),
            ("a.[\"b\"]", "a.b"),
            (" sensors.temp ", "sensors.temp"),
        ] {
            let p = path(text);
            assert_eq!(p.to_string(), printed, "{text}");
            assert_eq!(path(printed), p, "{text} reparsed");
        }
        assert_eq!(path("a.b").steps.len(), 2);
        assert_eq!(
            path("data[0].v").steps,
            [
                Step::Key("data".into()),
                Step::Index(0),
                Step::Key("v".into())
            ]
        );
    }

    #[test]
    fn bad_paths_say_what_is_wrong() {
        for (text, want) in [
            ("", "empty"),
            ("a..b", "empty key"),
            ("a.", "empty key"),
            (".a", "empty key"),
            ("$.", "nothing after"),
            ("a[", "bracket"),
            ("a[x]", "bracket"),
            ("a[-1]", "bracket"),
            ("a[]", "bracket"),
            ("a['b]", "bracket"),
            ("a]b", "unexpected ']'"),
            ("a[0]b", "unexpected 'b'"),
            ("a[0]é", "unexpected 'é'"),
            ("a[99999999999999999999999]", "bracket"),
        ] {
            let err = text.parse::<JsonPath>().unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{text}: {err}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        let deep = vec!["a"; MAX_STEPS + 1].join(".");
        assert!(deep.parse::<JsonPath>().is_err());
    }

    #[test]
    fn paths_find_values_or_say_where_they_left_the_document() {
        let doc = json!({"sensors": {"temp": 21, "a.b": true}, "data": [{"v": 1.5}, [7]]});
        assert_eq!(path("sensors.temp").find(&doc).unwrap(), &json!(21));
        assert_eq!(
            path("[\"sensors\"]['a.b']").find(&doc).unwrap(),
            &json!(true)
        );
        assert_eq!(path("data[0].v").find(&doc).unwrap(), &json!(1.5));
        assert_eq!(path("data[1][0]").find(&doc).unwrap(), &json!(7));
        assert_eq!(path("$").find(&doc).unwrap(), &doc);
        for (p, want) in [
            ("sensors.hum", "no key \"hum\" in the object at sensors"),
            ("nope", "no key \"nope\" in the object at $"),
            ("data[5]", "no index 5 in the array of 2 at data"),
            ("sensors.temp.x", "sensors.temp is a number, not an object"),
            (
                "sensors[0]",
                "sensors is an object, not an array with index 0",
            ),
            ("data[1][0].v", "data[1][0] is a number"),
        ] {
            let err = path(p).find(&doc).unwrap_err();
            assert!(matches!(err, Error::BadFrame { .. }), "{p}: {err}");
            assert!(err.to_string().contains(want), "{p}: {err}");
        }
    }

    #[test]
    fn json_values_convert_to_property_types() {
        use PropertyType as T;
        for (t, v, want) in [
            (T::Int, json!(25), Value::Int(25)),
            (T::Int, json!("-3"), Value::Int(-3)),
            (T::Float, json!(21.5), Value::Float(21.5)),
            (T::Float, json!(3), Value::Float(3.0)),
            (T::Double, json!("1e3"), Value::Double(1000.0)),
            (T::Boolean, json!(true), Value::Boolean(true)),
            (T::Boolean, json!(0), Value::Boolean(false)),
            (T::Boolean, json!("True"), Value::Boolean(true)),
            (T::String, json!("on"), Value::from("on")),
            (T::String, json!(21.5), Value::from("21.5")),
            (T::String, json!({"a": [1]}), Value::from("{\"a\":[1]}")),
            (T::String, json!(null), Value::from("null")),
            (T::Bytes, json!("AQI="), Value::Bytes(vec![1, 2])),
        ] {
            assert_eq!(json_to_value(t, &v).unwrap(), want, "{t} {v}");
        }
        for (t, v, reason) in [
            (T::Int, json!(25.5), "not a base-10 integer"),
            (T::Int, json!(true), "not a base-10 integer"),
            (T::Int, json!(u64::MAX), "out of the 64-bit integer range"),
            (T::Float, json!(1e39), "out of the 32-bit float range"),
            (T::Boolean, json!(2), "not a boolean"),
            (T::Boolean, json!("yes"), "not a boolean"),
            (T::Double, json!(null), "the JSON value is null"),
            (T::Int, json!([1]), "the JSON value is an array"),
            (
                T::Boolean,
                json!({"on": true}),
                "the JSON value is an object",
            ),
            (T::Bytes, json!(5), "not standard base64"),
        ] {
            let err = json_to_value(t, &v).unwrap_err();
            match &err {
                Error::TypeMismatch { reason: r, .. } => {
                    assert!(r.starts_with(reason), "{t} {v}: {err}")
                }
                other => panic!("{t} {v}: {other}"),
            }
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn raw_payloads_convert_to_property_types() {
        use PropertyType as T;
        assert_eq!(raw_to_value(T::Float, b"21.5").unwrap(), Value::Float(21.5));
        assert_eq!(raw_to_value(T::Int, b" 42\n").unwrap(), Value::Int(42));
        assert_eq!(
            raw_to_value(T::Boolean, b"false").unwrap(),
            Value::Boolean(false)
        );
        assert_eq!(
            raw_to_value(T::String, b" as is\n").unwrap(),
            Value::from(" as is\n")
        );
        assert_eq!(
            raw_to_value(T::Bytes, &[0xff, 0]).unwrap(),
            Value::Bytes(vec![0xff, 0])
        );
        let err = raw_to_value(T::String, b"ok\xffno").unwrap_err();
        assert!(
            matches!(err, Error::BadFrame { .. }) && err.to_string().contains("offset 2"),
            "{err}"
        );
        let err = raw_to_value(T::Int, b"warm").unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
        // A huge bad value makes a short error.
        let huge = "x".repeat(100_000);
        let err = raw_to_value(T::Double, huge.as_bytes()).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
        assert!(err.to_string().contains("(100000 bytes)"), "{err}");
    }

    #[test]
    fn templates_substitute_values() {
        let t: CommandTemplate = r#"{"set":{{value}}}"#.parse().unwrap();
        assert_eq!(t.render(&Value::Int(30)), br#"{"set":30}"#);
        assert_eq!(t.render(&Value::Float(21.5)), br#"{"set":21.5}"#);
        let t: CommandTemplate = "{{ value }}".parse().unwrap();
        assert_eq!(t.render(&Value::Boolean(true)), b"true");
        let t: CommandTemplate = "SET {{value}} AND {{value}}".parse().unwrap();
        assert_eq!(t.render(&Value::from("x")), b"SET x AND x");
        let t: CommandTemplate = r#"{"v":{{json}},"t":"{{value}}"}"#.parse().unwrap();
        assert_eq!(t.render(&Value::Int(-4)), br#"{"v":-4,"t":"-4"}"#);
        assert_eq!(
            t.render(&Value::from("say \"hi\"\n")),
            br#"{"v":"say \"hi\"\n","t":"say "hi""#
                .iter()
                .chain(b"\n\"}")
                .copied()
                .collect::<Vec<u8>>()
        );
        assert_eq!(
            t.render(&Value::Double(f64::NAN)),
            br#"{"v":"NaN","t":"NaN"}"#
        );
        assert_eq!(
            t.render(&Value::Bytes(vec![1, 2])),
            br#"{"v":"AQI=","t":"AQI="}"#
        );
        assert_eq!(
            t.render(&Value::Boolean(false)),
            br#"{"v":false,"t":"false"}"#
        );
        // JSON's own braces are text.
        let t: CommandTemplate = r#"{"a":{"b":[{{json}}]}}"#.parse().unwrap();
        assert_eq!(t.render(&Value::Int(1)), br#"{"a":{"b":[1]}}"#);
    }

    #[test]
    fn bad_templates_are_refused() {
        for (text, want) in [
            ("SET", "no {{value}} or {{json}} placeholder"),
            ("", "no {{value}}"),
            ("{{val}}", "unknown placeholder {{val}}"),
            ("{{value}", "without a closing"),
            ("{{value}} {{", "without a closing"),
        ] {
            let err = text.parse::<CommandTemplate>().unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{text}: {err}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
    }
}
