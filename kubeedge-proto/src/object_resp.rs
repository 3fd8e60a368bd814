//! `ObjectResp`: the cloud's reply to edge requests (`{"Object": ..., "Err": ...}`).

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::{Content, Result};

/// The reply edgecontroller sends for node registration, status patches, leases and other
/// requests from the edge: `{"Object": <k8s object or null>, "Err": <error or null>}`.
///
/// The keys are untagged Go field names, so they are matched case-insensitively, as Go does.
/// A Kubernetes `StatusError` arrives as `{"ErrStatus": {...metav1.Status...}}`; any other Go
/// error has no exported fields and arrives as `{}`.
///
/// ```
/// use kubeedge_proto::{Content, ObjectResp};
///
/// let reply = Content::try_from(r#"{"object":null,"err":{"ErrStatus":{"message":"nope","code":404}}}"#).unwrap();
/// let resp: ObjectResp = reply.decode().unwrap();
/// assert!(resp.is_err());
/// assert_eq!(resp.error_message().as_deref(), Some("nope"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectResp {
    /// `Object`: the object as the API server returned it, or `null`.
    pub object: Content,
    /// `Err`: the error, or `null` on success.
    pub err: Content,
}

impl ObjectResp {
    /// A successful reply carrying `object`.
    pub fn ok(object: Content) -> Self {
        Self {
            object,
            err: Content::null(),
        }
    }

    /// A failed reply carrying a Kubernetes `metav1.Status` as `{"ErrStatus": status}`.
    pub fn status_error(status: &serde_json::Value) -> Result<Self> {
        let err = Content::json(&serde_json::json!({ "ErrStatus": status }))?;
        Ok(Self {
            object: Content::null(),
            err,
        })
    }

    /// Whether the reply carries an error.
    pub fn is_err(&self) -> bool {
        !self.err.is_null()
    }

    /// Reads any reply the cloud sends to an edge request, whatever its shape: an `ObjectResp`
    /// (node registration, leases, patches), a bare `{"ErrStatus": ...}` (KubeEdge's failed
    /// queries), a bare object (KubeEdge's answered queries: the ConfigMap, the TokenRequest),
    /// a string (`"OK"` is success without an object; any other text is an error) or `null`.
    ///
    /// ```
    /// use kubeedge_proto::{Content, ObjectResp};
    ///
    /// let object = ObjectResp::from_reply(&Content::try_from(r#"{"kind":"ConfigMap"}"#).unwrap());
    /// assert!(!object.is_err() && !object.object.is_null());
    /// let refused = ObjectResp::from_reply(
    ///     &Content::try_from(r#"{"ErrStatus":{"reason":"NotFound","code":404,"message":"gone"}}"#).unwrap(),
    /// );
    /// assert_eq!(refused.error_reason().as_deref(), Some("NotFound"));
    /// ```
    pub fn from_reply(content: &Content) -> Self {
        if content.is_null() {
            return Self::default();
        }
        if let Some(text) = content.as_str() {
            if text == "OK" {
                return Self::default();
            }
            return Self {
                object: Content::null(),
                err: content.clone(),
            };
        }
        #[derive(Deserialize)]
        struct Keys(std::collections::HashMap<String, IgnoredAny>);
        let Ok(Keys(keys)) = serde_json::from_slice::<Keys>(content.as_json()) else {
            // An array or a number: not a reply shape this protocol has.
            return Self {
                object: Content::null(),
                err: content.clone(),
            };
        };
        let has = |name: &str| keys.keys().any(|k| k.eq_ignore_ascii_case(name));
        if has("object") || has("err") {
            content.decode().unwrap_or_else(|_| Self {
                object: Content::null(),
                err: content.clone(),
            })
        } else if has("ErrStatus") {
            Self {
                object: Content::null(),
                err: content.clone(),
            }
        } else {
            Self::ok(content.clone())
        }
    }

    /// `ErrStatus.reason` of a status error (`NotFound`, `AlreadyExists`, `Conflict`, ...);
    /// `None` on success or for an error without a reason.
    pub fn error_reason(&self) -> Option<String> {
        self.err_status()
            .map(|s| s.reason)
            .filter(|r| !r.is_empty())
    }

    /// The `ErrStatus` of a status error.
    fn err_status(&self) -> Option<Status> {
        #[derive(Deserialize)]
        struct StatusHolder {
            #[serde(rename = "ErrStatus")]
            err_status: Status,
        }
        if !self.is_err() {
            return None;
        }
        serde_json::from_slice::<StatusHolder>(self.err.as_json())
            .ok()
            .map(|h| h.err_status)
    }

    /// The error text: `ErrStatus.message` of a status error, the text of a string error, or a
    /// generic text for an error without details. `None` on success.
    pub fn error_message(&self) -> Option<String> {
        if !self.is_err() {
            return None;
        }
        if let Some(text) = self.err.as_str() {
            return Some(text.into_owned());
        }
        match self.err_status() {
            Some(status) if !status.message.is_empty() => Some(status.message),
            _ => Some("the cloud reported an error without details".to_owned()),
        }
    }
}

/// The fields of a Kubernetes `metav1.Status` an edge reads from a refusal.
#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

impl Serialize for ObjectResp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = |c: &Content| -> Result<Box<RawValue>, S::Error> {
            let text = std::str::from_utf8(c.as_json()).map_err(serde::ser::Error::custom)?;
            RawValue::from_string(text.to_owned()).map_err(serde::ser::Error::custom)
        };
        let mut s = serializer.serialize_struct("ObjectResp", 2)?;
        s.serialize_field("Object", &raw(&self.object)?)?;
        s.serialize_field("Err", &raw(&self.err)?)?;
        s.end()
    }
}

impl<'de> Deserialize<'de> for ObjectResp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RespVisitor;
        impl<'de> Visitor<'de> for RespVisitor {
            type Value = ObjectResp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with keys Object and Err")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectResp, A::Error> {
                let mut resp = ObjectResp::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = if key.eq_ignore_ascii_case("object") {
                        &mut resp.object
                    } else if key.eq_ignore_ascii_case("err") {
                        &mut resp.err
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    let raw: Box<RawValue> = map.next_value()?;
                    let bytes = bytes::Bytes::from(raw.get().as_bytes().to_vec());
                    *slot = Content::from_json(bytes).map_err(de::Error::custom)?;
                }
                Ok(resp)
            }
        }
        deserializer.deserialize_map(RespVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_go_key_order() {
        let resp = ObjectResp::ok(Content::try_from(r#"{"kind":"Node"}"#).unwrap());
        let json = Content::json(&resp).unwrap();
        assert_eq!(json.as_json(), br#"{"Object":{"kind":"Node"},"Err":null}"#);
        let back: ObjectResp = json.decode().unwrap();
        assert_eq!(back, resp);
        assert!(!back.is_err());
        assert_eq!(back.error_message(), None);
    }

    #[test]
    fn keys_are_case_insensitive_and_string_form_accepted() {
        let c = Content::string(r#"{"OBJECT":{"a":1},"eRr":{}}"#);
        let resp: ObjectResp = c.decode().unwrap();
        assert_eq!(resp.object.as_json(), br#"{"a":1}"#);
        assert!(resp.is_err());
        assert!(resp.error_message().unwrap().contains("without details"));
    }

    #[test]
    fn status_error() {
        let resp =
            ObjectResp::status_error(&serde_json::json!({"message": "gone", "code": 410})).unwrap();
        assert_eq!(resp.error_message().as_deref(), Some("gone"));
    }
}
