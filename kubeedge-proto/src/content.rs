//! Message content kept as raw JSON, decoded on demand.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::{Error, Result, go_json};

/// The `content` of a [`Message`](crate::Message): one JSON value, held as its raw bytes.
///
/// A relay (cloudhub, edgehub) never needs to look inside the content, so the decoder keeps the
/// bytes exactly as they arrived (zero-copy when decoding from [`Bytes`]) and the encoder writes
/// them back unchanged. Typed access parses on demand with [`decode`](Self::decode).
///
/// KubeEdge sends a JSON document either as a JSON value (`{"kind":"Pod",...}`) or as a JSON
/// *string* holding the document (`"{\"event_id\":...}"`), depending on whether the Go sender held
/// a struct or a string; [`decode`](Self::decode) and [`data`](Self::data) accept both, like
/// KubeEdge's `GetContentData()`.
///
/// ```
/// use kubeedge_proto::Content;
///
/// #[derive(serde::Deserialize)]
/// struct Ev { event_id: String }
///
/// let as_object = Content::from_json(&br#"{"event_id":"a"}"#[..]).unwrap();
/// let as_string = Content::string(r#"{"event_id":"a"}"#);
/// assert_eq!(as_object.decode::<Ev>().unwrap().event_id, "a");
/// assert_eq!(as_string.decode::<Ev>().unwrap().event_id, "a");
/// assert!(Content::ok().is_ok_ack());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Content {
    /// Invariant: exactly one JSON value, without leading or trailing whitespace.
    raw: Bytes,
}

/// The JSON type of a [`Content`] value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    /// `null`: no content.
    Null,
    /// A JSON string: plain text (`"OK"`, `"ping"`) or a JSON document inside a string.
    String,
    /// A JSON object, such as a Kubernetes object.
    Object,
    /// A JSON array.
    Array,
    /// A number.
    Number,
    /// `true` or `false`.
    Bool,
}

impl Content {
    /// No content (`null` on the wire).
    pub const fn null() -> Self {
        Self {
            raw: Bytes::from_static(b"null"),
        }
    }

    /// The `"OK"` string that acknowledges a message.
    pub const fn ok() -> Self {
        Self {
            raw: Bytes::from_static(b"\"OK\""),
        }
    }

    /// The `"ping"` string carried by keepalives.
    pub const fn ping() -> Self {
        Self {
            raw: Bytes::from_static(b"\"ping\""),
        }
    }

    /// A JSON string content, escaped as Go escapes it.
    pub fn string(s: &str) -> Self {
        let mut raw = Vec::with_capacity(s.len() + 2);
        go_json::write_str(&mut raw, s);
        Self { raw: raw.into() }
    }

    /// The JSON encoding of `value`, byte-compatible with Go's `json.Marshal`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self {
            raw: go_json::to_vec(value)?.into(),
        })
    }

    /// A JSON string holding the JSON encoding of `value`: the form KubeEdge uses for
    /// `membership/detail`, `state/update` and uploads.
    pub fn json_string<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let doc = go_json::to_vec(value)?;
        // go_json output is valid UTF-8 by construction.
        let doc = String::from_utf8(doc).map_err(|e| Error::Validation(e.to_string()))?;
        Ok(Self::string(&doc))
    }

    /// Content from raw JSON text, which must be exactly one JSON value (surrounding whitespace is
    /// trimmed).
    pub fn from_json(raw: impl Into<Bytes>) -> Result<Self> {
        let raw: Bytes = raw.into();
        let value: &RawValue = serde_json::from_slice(&raw)?;
        Ok(Self::validated_in(&raw, value))
    }

    /// The content `value`, which serde_json validated inside `input`: a zero-copy slice of
    /// `input` (`null` as the static form, so that equal contents compare equal).
    pub(crate) fn validated_in(input: &Bytes, value: &RawValue) -> Self {
        let text = value.get().as_bytes();
        if text == b"null" {
            return Self::null();
        }
        match subslice_range(input, text) {
            Some(range) => Self {
                raw: input.slice(range),
            },
            None => Self {
                raw: Bytes::copy_from_slice(text),
            },
        }
    }

    /// The raw JSON text.
    pub fn as_json(&self) -> &[u8] {
        &self.raw
    }

    /// The raw JSON text, as shared bytes.
    pub fn json_bytes(&self) -> &Bytes {
        &self.raw
    }

    /// Takes the raw JSON text.
    pub fn into_json(self) -> Bytes {
        self.raw
    }

    /// Whether the content is `null`.
    pub fn is_null(&self) -> bool {
        &self.raw[..] == b"null"
    }

    /// Whether the content is the string `"OK"`, as in an acknowledgement.
    pub fn is_ok_ack(&self) -> bool {
        &self.raw[..] == b"\"OK\""
    }

    /// The JSON type of the content.
    pub fn kind(&self) -> ContentKind {
        match self.raw.first() {
            Some(b'"') => ContentKind::String,
            Some(b'{') => ContentKind::Object,
            Some(b'[') => ContentKind::Array,
            Some(b't' | b'f') => ContentKind::Bool,
            Some(b'n') | None => ContentKind::Null,
            Some(_) => ContentKind::Number,
        }
    }

    /// The text of a string content, unescaped; `None` if the content is not a JSON string.
    pub fn as_str(&self) -> Option<Cow<'_, str>> {
        if self.kind() != ContentKind::String {
            return None;
        }
        let inner = &self.raw[1..self.raw.len() - 1];
        if !inner.contains(&b'\\') {
            // No escapes: the text is the bytes between the quotes (valid UTF-8, checked when the
            // content was parsed).
            return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
        }
        serde_json::from_slice::<String>(&self.raw)
            .ok()
            .map(Cow::Owned)
    }

    /// The content's data as KubeEdge's `GetContentData()` returns it: the text of a string
    /// content, the JSON of anything else (and empty for `null`).
    pub fn data(&self) -> Cow<'_, [u8]> {
        match self.as_str() {
            Some(Cow::Borrowed(s)) => Cow::Borrowed(s.as_bytes()),
            Some(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
            None if self.is_null() => Cow::Borrowed(&[]),
            None => Cow::Borrowed(&self.raw),
        }
    }

    /// Decodes the content into `T`, accepting both a JSON value and a JSON string that holds
    /// the JSON document.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        // A string that is itself JSON wins; a plain string ("OK") decodes as a string.
        if self.kind() == ContentKind::String
            && let Some(text) = self.as_str()
            && let Ok(value) = serde_json::from_str::<T>(&text)
        {
            return Ok(value);
        }
        Ok(serde_json::from_slice(&self.raw)?)
    }

    /// The content as it travels in a viaduct binary frame: string contents as their text,
    /// anything else as JSON, `null` as nothing.
    pub fn to_frame_bytes(&self) -> Bytes {
        if self.is_null() {
            return Bytes::new();
        }
        match self.data() {
            Cow::Borrowed(b) if b.len() == self.raw.len() => self.raw.clone(),
            Cow::Borrowed(b) => self.raw.slice_ref(b),
            Cow::Owned(v) => v.into(),
        }
    }

    /// The content carried as raw bytes by a viaduct binary frame, mapped back to JSON: empty is
    /// `null`; bytes that start with `{` or `[` and parse as JSON stay JSON; other UTF-8 text
    /// becomes a JSON string; anything else becomes a base64 string, as Go marshals `[]byte`.
    pub fn from_frame_bytes(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return Self::null();
        }
        let trimmed = bytes.trim_ascii_start();
        if matches!(trimmed.first(), Some(b'{' | b'['))
            && let Ok(content) = Self::from_json(bytes.clone())
        {
            return content;
        }
        match std::str::from_utf8(&bytes) {
            Ok(text) => Self::string(text),
            // Standard base64 with padding, as Go's `encoding/json` writes `[]byte`.
            Err(_) => Self::string(&base64::engine::general_purpose::STANDARD.encode(&bytes)),
        }
    }
}

/// The `metadata` fields of a Kubernetes object that KubeEdge keys and orders things by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (empty for cluster-scoped objects).
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`, as sent (a decimal integer in Kubernetes).
    pub resource_version: String,
}

impl ObjectMeta {
    /// Reads the metadata of an object's JSON; `None` if it is not an object with `metadata`.
    pub fn of(json: &[u8]) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Object {
            metadata: Metadata,
        }
        #[derive(serde::Deserialize)]
        struct Metadata {
            #[serde(default)]
            name: String,
            #[serde(default)]
            namespace: String,
            #[serde(default)]
            uid: String,
            #[serde(default, rename = "resourceVersion")]
            resource_version: String,
        }
        let obj: Object = serde_json::from_slice(json).ok()?;
        let m = obj.metadata;
        Some(Self {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
        })
    }
}

impl Content {
    /// The metadata of the Kubernetes object in this content (as an object or as a string that
    /// holds it).
    pub fn object_meta(&self) -> Option<ObjectMeta> {
        ObjectMeta::of(&self.data())
    }
}

impl Default for Content {
    fn default() -> Self {
        Self::null()
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 256;
        let text = String::from_utf8_lossy(&self.raw[..self.raw.len().min(SHOWN)]);
        if self.raw.len() > SHOWN {
            write!(f, "Content({text}... {} bytes)", self.raw.len())
        } else {
            write!(f, "Content({text})")
        }
    }
}

impl TryFrom<&str> for Content {
    type Error = Error;

    /// Parses raw JSON text; use [`Content::string`] for a string content.
    fn try_from(json: &str) -> Result<Self> {
        Self::from_json(Bytes::copy_from_slice(json.as_bytes()))
    }
}

/// The range that `sub` occupies inside `whole`, if it is a subslice of it.
pub(crate) fn subslice_range(whole: &[u8], sub: &[u8]) -> Option<Range<usize>> {
    let start = sub.as_ptr().addr().checked_sub(whole.as_ptr().addr())?;
    let end = start.checked_add(sub.len())?;
    (end <= whole.len()).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_metadata() {
        let pod = r#"{"kind":"Pod","metadata":{"name":"p","namespace":"default","uid":"u1","resourceVersion":"7"}}"#;
        let meta = Content::try_from(pod).unwrap().object_meta().unwrap();
        assert_eq!(
            (
                meta.name.as_str(),
                meta.uid.as_str(),
                meta.resource_version.as_str()
            ),
            ("p", "u1", "7")
        );
        assert_eq!(
            Content::string(pod).object_meta().unwrap().namespace,
            "default"
        );
        assert!(Content::ok().object_meta().is_none());
        assert!(Content::try_from("{}").unwrap().object_meta().is_none());
    }

    #[test]
    fn kinds() {
        assert_eq!(Content::null().kind(), ContentKind::Null);
        assert_eq!(Content::ok().kind(), ContentKind::String);
        assert_eq!(Content::try_from("{}").unwrap().kind(), ContentKind::Object);
        assert_eq!(Content::try_from(" [1] ").unwrap().as_json(), b"[1]");
        assert_eq!(
            Content::try_from("-1.5").unwrap().kind(),
            ContentKind::Number
        );
        assert_eq!(
            Content::try_from("false").unwrap().kind(),
            ContentKind::Bool
        );
        assert!(Content::try_from("{} {}").is_err());
        assert!(Content::try_from("").is_err());
    }

    #[test]
    fn string_text_and_data() {
        let c = Content::string("plain text payload <&> é");
        assert_eq!(
            c.as_json(),
            "\"plain text payload \\u003c\\u0026\\u003e é\"".as_bytes()
        );
        assert_eq!(c.as_str().unwrap(), "plain text payload <&> é");
        assert_eq!(&*c.data(), "plain text payload <&> é".as_bytes());
        assert!(matches!(
            Content::ping().as_str(),
            Some(Cow::Borrowed("ping"))
        ));
        assert_eq!(&*Content::null().data(), b"");
        assert_eq!(
            &*Content::try_from("{\"a\":1}").unwrap().data(),
            b"{\"a\":1}"
        );
    }

    #[test]
    fn decode_accepts_object_or_string() {
        let plain: String = Content::ok().decode().unwrap();
        assert_eq!(plain, "OK");
        let n: u32 = Content::string("42").decode().unwrap();
        assert_eq!(n, 42);
        assert!(Content::string("nope").decode::<u32>().is_err());
    }

    #[test]
    fn frame_bytes_round_trip() {
        for c in [
            Content::null(),
            Content::ok(),
            Content::string("hé <x>"),
            Content::try_from(r#"{"a":[1,2]}"#).unwrap(),
            Content::try_from("[]").unwrap(),
        ] {
            assert_eq!(Content::from_frame_bytes(c.to_frame_bytes()), c);
        }
        let binary = Content::from_frame_bytes(Bytes::from_static(&[0xff, 0x00, 0x10]));
        assert_eq!(binary.as_str().unwrap(), "/wAQ");
    }
}
