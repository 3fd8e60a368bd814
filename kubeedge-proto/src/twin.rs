//! Device twin payloads: the JSON of `$hw/events/device/<ns>/<name>/twin/...` MQTT topics and of
//! the `twin/edge_updated` messages sent to the cloud, with KubeEdge's validation rules.
//!
//! Field names, `omitempty` rules and key order follow KubeEdge's `dttype` package, and maps are
//! `BTreeMap`s because Go writes map keys sorted, so [`go_json::to_vec`](crate::go_json::to_vec)
//! of these types reproduces edgecore's MQTT payloads byte for byte.
//!
//! ```
//! use kubeedge_proto::twin::DeviceTwinUpdate;
//!
//! let payload = br#"{"event_id":"e1","timestamp":1,"twin":{"temperature":{"actual":{"value":"25"},"metadata":{"type":"int"}}}}"#;
//! let update = DeviceTwinUpdate::parse(payload).unwrap();
//! let twin = update.twin["temperature"].as_ref().unwrap();
//! assert_eq!(twin.actual.as_ref().unwrap().value.as_deref(), Some("25"));
//!
//! let bad = br#"{"event_id":"e2","timestamp":1,"twin":{"t":{"actual":{"value":"a b"}}}}"#;
//! assert!(DeviceTwinUpdate::parse(bad).is_err());
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The largest twin or device payload accepted by the `parse` functions: 1 MiB.
pub const MAX_PAYLOAD_LEN: usize = 1024 * 1024;

/// The longest twin key (KubeEdge: 128 bytes).
pub const MAX_TWIN_KEY_LEN: usize = 128;

/// The longest twin value (KubeEdge: 512 bytes).
pub const MAX_TWIN_VALUE_LEN: usize = 512;

/// KubeEdge's reason when a twin update payload is not valid JSON of the right shape.
pub const REASON_UNMARSHAL: &str = "Unmarshal update request body failed, please check the request";
/// KubeEdge's reason when a twin update has no `twin` key.
pub const REASON_NO_TWIN: &str = "Update twin error, key:twin does not exist";
/// KubeEdge's reason for a twin key outside `[a-zA-Z0-9-_.,:/@#]{1,128}`.
pub const REASON_KEY: &str = "The key of twin must only include upper or lowercase letters, number, english, and special letter - _ . , : / @ # and the length of key should be less than 128 bytes";
/// KubeEdge's reason for a twin value outside `[a-zA-Z0-9-_.,:/@#]{1,512}`.
pub const REASON_VALUE: &str = "The value of twin must only include upper or lowercase letters, number, english, and special letter - _ . , : / @ # and the length of value should be less than 512 bytes";

/// `event_id` and `timestamp`, the fields every twin and device event starts with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseMessage {
    /// `event_id`: echoed in results; a fresh UUID in events the edge starts.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`: milliseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: i64,
}

impl BaseMessage {
    /// A base message with a fresh UUID and the current time.
    pub fn now() -> Self {
        Self {
            event_id: crate::new_message_id(),
            timestamp: crate::now_millis(),
        }
    }
}

/// `TwinValue`: a twin's expected or actual value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinValue {
    /// `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `metadata`: when the value was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ValueMetadata>,
}

/// `ValueMetadata`: `{"timestamp": <ms>}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMetadata {
    /// `timestamp` (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timestamp: i64,
}

/// `TypeMetadata`: `{"type": "int"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeMetadata {
    /// `type`: `string`, `int`, `integer`, `float`, `boolean` or `deleted` (omitted when empty).
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub value_type: String,
}

/// `TwinVersion`: the cloud and edge counters of one side (expected or actual) of a twin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinVersion {
    /// `cloud`.
    #[serde(default)]
    pub cloud: i64,
    /// `edge`.
    #[serde(default)]
    pub edge: i64,
}

/// `MsgTwin`: one twin property.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgTwin {
    /// `expected`: the desired value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<TwinValue>,
    /// `actual`: the reported value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<TwinValue>,
    /// `optional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// `metadata`: the value type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TypeMetadata>,
    /// `expected_version`: only in messages to the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<TwinVersion>,
    /// `actual_version`: only in messages to the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_version: Option<TwinVersion>,
}

impl MsgTwin {
    /// The declared value type (`metadata.type`), `string` when absent or empty.
    pub fn value_type(&self) -> &str {
        match &self.metadata {
            Some(m) if !m.value_type.is_empty() => &m.value_type,
            _ => "string",
        }
    }

    /// Checks the non-empty expected and actual values against KubeEdge's value pattern and
    /// the declared type.
    pub fn validate(&self) -> Result<()> {
        for side in [&self.expected, &self.actual].into_iter().flatten() {
            if let Some(value) = side.value.as_deref().filter(|v| !v.is_empty()) {
                validate_twin_value(value)?;
                validate_value_type(value, self.value_type())?;
            }
        }
        Ok(())
    }

    /// The same twin without versions, as KubeEdge publishes it over MQTT.
    pub fn without_versions(&self) -> Self {
        Self {
            expected_version: None,
            actual_version: None,
            ..self.clone()
        }
    }
}

/// The twins of a device by key; `None` marks a deleted twin (`null` on the wire).
pub type TwinMap = BTreeMap<String, Option<MsgTwin>>;

/// `DeviceTwinUpdate`: the payload of `.../twin/update` and of `twin/edge_updated` messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTwinUpdate {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `twin`.
    #[serde(default)]
    pub twin: TwinMap,
}

impl DeviceTwinUpdate {
    /// Decodes and validates an update as edgecore does (`UnmarshalDeviceTwinUpdate`): the
    /// payload is at most [`MAX_PAYLOAD_LEN`] bytes; `twin` must be present; every key and every
    /// non-empty value must match KubeEdge's patterns and the declared type. The error text is
    /// the reason KubeEdge publishes in the error result.
    pub fn parse(payload: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            event_id: String,
            #[serde(default)]
            timestamp: i64,
            #[serde(default)]
            twin: Option<TwinMap>,
        }
        check_payload_len(payload)?;
        let wire: Wire = serde_json::from_slice(payload)
            .map_err(|_| Error::Validation(REASON_UNMARSHAL.to_owned()))?;
        let twin = wire
            .twin
            .ok_or_else(|| Error::Validation(REASON_NO_TWIN.to_owned()))?;
        for (key, value) in &twin {
            validate_twin_key(key)?;
            if let Some(value) = value {
                value.validate()?;
            }
        }
        Ok(Self {
            event_id: wire.event_id,
            timestamp: wire.timestamp,
            twin,
        })
    }
}

/// `DeviceTwinResult`: the payload of `.../twin/update/result` and `.../twin/get/result`.
pub type DeviceTwinResult = DeviceTwinUpdate;

/// `DeviceTwinDelta`: published to `.../twin/update/delta` while expected and actual differ.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTwinDelta {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `twin`: every twin that has an expected value.
    #[serde(default)]
    pub twin: TwinMap,
    /// `delta`: key to expected value, for each twin whose expected differs from actual.
    #[serde(default)]
    pub delta: BTreeMap<String, String>,
}

/// `TwinDoc`: a twin before and after an update (both always written, `null` when absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinDoc {
    /// `last`.
    #[serde(default)]
    pub last: Option<MsgTwin>,
    /// `current`.
    #[serde(default)]
    pub current: Option<MsgTwin>,
}

/// `DeviceTwinDocument`: published to `.../twin/update/document`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTwinDocument {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `twin`.
    #[serde(default)]
    pub twin: BTreeMap<String, TwinDoc>,
}

/// `Result`: the error result published instead of a twin result (codes 400, 404, 409, 500).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResult {
    /// `event_id`.
    #[serde(default)]
    pub event_id: String,
    /// `timestamp`.
    #[serde(default)]
    pub timestamp: i64,
    /// `code` (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub code: i32,
    /// `reason` (omitted when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Checks a twin key: 1 to 128 characters from `a-z A-Z 0-9 - _ . , : / @ #`.
pub fn validate_twin_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_TWIN_KEY_LEN || !key.bytes().all(is_twin_char) {
        return Err(Error::Validation(REASON_KEY.to_owned()));
    }
    Ok(())
}

/// Checks a non-empty twin value: 1 to 512 characters from `a-z A-Z 0-9 - _ . , : / @ #`
/// (no spaces).
pub fn validate_twin_value(value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_TWIN_VALUE_LEN || !value.bytes().all(is_twin_char) {
        return Err(Error::Validation(REASON_VALUE.to_owned()));
    }
    Ok(())
}

/// Checks that `value` parses as `value_type`: empty or `string` accept anything, `int` and
/// `integer` a 64-bit integer, `float` a float, `boolean` exactly `true` or `false`, `deleted`
/// anything; any other type is refused.
pub fn validate_value_type(value: &str, value_type: &str) -> Result<()> {
    let ok = match value_type {
        "" | "string" | "deleted" => true,
        "int" | "integer" => value.parse::<i64>().is_ok(),
        "float" => value.parse::<f64>().is_ok(),
        "boolean" => value == "true" || value == "false",
        _ => {
            return Err(Error::Validation(format!(
                "the value type {value_type:?} is not allowed"
            )));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Validation(format!(
            "the value {:?} is not of type {value_type}",
            crate::error::quote(value)
        )))
    }
}

fn is_twin_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b',' | b':' | b'/' | b'@' | b'#')
}

pub(crate) fn check_payload_len(payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(Error::TooLarge {
            what: "payload",
            len: payload.len(),
            max: MAX_PAYLOAD_LEN,
        });
    }
    Ok(())
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::go_json;

    #[test]
    fn key_and_value_patterns() {
        for ok in ["temperature", "a-b_c.d,e:f/g@h#i", &"k".repeat(128)] {
            validate_twin_key(ok).unwrap();
        }
        for bad in ["", "a b", "é", "a+b", &"k".repeat(129)] {
            assert!(validate_twin_key(bad).is_err(), "{bad:?}");
        }
        validate_twin_value(&"v".repeat(512)).unwrap();
        assert!(validate_twin_value(&"v".repeat(513)).is_err());
        assert_eq!(
            validate_twin_value("a b").unwrap_err().to_string(),
            REASON_VALUE
        );
    }

    #[test]
    fn value_types() {
        validate_value_type("anything", "").unwrap();
        validate_value_type("-42", "int").unwrap();
        validate_value_type("9223372036854775807", "integer").unwrap();
        assert!(validate_value_type("9223372036854775808", "int").is_err());
        validate_value_type("1.5", "float").unwrap();
        assert!(validate_value_type("x", "float").is_err());
        validate_value_type("true", "boolean").unwrap();
        assert!(validate_value_type("True", "boolean").is_err());
        assert!(validate_value_type("1.0", "double").is_err());
    }

    #[test]
    fn update_rules() {
        assert_eq!(
            DeviceTwinUpdate::parse(br#"{"event_id":"x","timestamp":1}"#)
                .unwrap_err()
                .to_string(),
            REASON_NO_TWIN
        );
        assert_eq!(
            DeviceTwinUpdate::parse(b"{").unwrap_err().to_string(),
            REASON_UNMARSHAL
        );
        let typed = br#"{"twin":{"t":{"actual":{"value":"x"},"metadata":{"type":"int"}}}}"#;
        assert!(DeviceTwinUpdate::parse(typed).is_err());
        // A null twin is a delete request; an empty value is allowed.
        let del =
            DeviceTwinUpdate::parse(br#"{"twin":{"t":null,"u":{"actual":{"value":""}}}}"#).unwrap();
        assert_eq!(del.twin["t"], None);
        let big = vec![b' '; MAX_PAYLOAD_LEN + 1];
        assert!(matches!(
            DeviceTwinUpdate::parse(&big),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn encodes_like_edgecore() {
        let doc = DeviceTwinDocument {
            event_id: "e".into(),
            timestamp: 2,
            twin: BTreeMap::from([(
                "t".to_owned(),
                TwinDoc {
                    last: None,
                    current: Some(MsgTwin {
                        actual: Some(TwinValue {
                            value: Some("25".into()),
                            metadata: Some(ValueMetadata { timestamp: 2 }),
                        }),
                        optional: Some(true),
                        metadata: Some(TypeMetadata {
                            value_type: "int".into(),
                        }),
                        ..MsgTwin::default()
                    }),
                },
            )]),
        };
        assert_eq!(
            go_json::to_vec(&doc).unwrap(),
            br#"{"event_id":"e","timestamp":2,"twin":{"t":{"last":null,"current":{"actual":{"value":"25","metadata":{"timestamp":2}},"optional":true,"metadata":{"type":"int"}}}}}"#
        );
    }
}
