//! The beehive message: `{header, route, content}`, exactly as KubeEdge puts it on the wire.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::names::{Group, Operation, Source};
use crate::{Content, Result, go_json};

/// The default largest JSON message accepted by the decoders: 8 MiB.
///
/// Kubernetes objects are limited to about 1.5 MiB by etcd; Go's JSON escaping can grow one by a
/// few times, and the message envelope adds little. Every decoder takes its own limit as well.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 8 * 1024 * 1024;

/// `header` of a [`Message`].
///
/// Keys and `omitempty` rules follow beehive's `MessageHeader`: `msg_id` and `timestamp` are
/// always written; `parent_msg_id`, `resourceversion`, `sync` and `type` only when set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MessageHeader {
    /// `msg_id`: a UUID v4 in KubeEdge, but any string is carried.
    pub id: String,
    /// `parent_msg_id`: the id of the message this one answers; empty when none.
    pub parent_id: String,
    /// `timestamp`: milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// `resourceversion`: the Kubernetes resourceVersion of the object in the content.
    pub resource_version: String,
    /// `sync`: the sender waits for a response. KubeEdge clears it before writing to the link.
    pub sync: bool,
    /// `type`: beehive context type (`""` channel, `unixpacket` UDS).
    pub message_type: String,
}

/// `route` of a [`Message`]; every field is omitted from the JSON when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MessageRoute {
    /// `source`: the module that produced the message.
    pub source: Option<Source>,
    /// `destination`: only used inside a process; never set on the cloud-edge link.
    pub destination: String,
    /// `group`: the group the message goes to.
    pub group: Option<Group>,
    /// `operation`: what to do with the resource.
    pub operation: Option<Operation>,
    /// `resource`: the resource path; see [`Resource`](crate::Resource) for its typed forms.
    pub resource: String,
}

/// A KubeEdge (beehive) message.
///
/// Decoding keeps the content's raw bytes (see [`Content`]); encoding writes the same bytes
/// KubeEdge's Go encoder writes, so a message KubeEdge produced re-encodes to the identical bytes.
///
/// ```
/// use kubeedge_proto::{Message, Operation};
///
/// let line = br#"{"header":{"msg_id":"m1","timestamp":1},"route":{"source":"edgecontroller","group":"resource","operation":"insert","resource":"default/pod/p"},"content":{"kind":"Pod"}}"#;
/// let msg = Message::from_json(line).unwrap();
/// assert_eq!(msg.route.operation, Some(Operation::Insert));
/// assert_eq!(msg.to_json(), line);
///
/// let ack = msg.ack();
/// assert_eq!(ack.header.parent_id, "m1");
/// assert!(ack.content.is_ok_ack());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Message {
    /// `header`.
    pub header: MessageHeader,
    /// `route` (sic: KubeEdge's JSON key is `route`, not `router`).
    pub route: MessageRoute,
    /// `content`.
    pub content: Content,
}

/// Milliseconds since the Unix epoch, as KubeEdge stamps messages.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC: `2026-11-23T04:31:09Z` (Go's
/// `time.RFC3339`, the form of KubeEdge's `lastOnlineTime`), or with `.mmm` milliseconds when
/// `millis_fraction` is set.
///
/// ```
/// assert_eq!(kubeedge_proto::rfc3339_utc(1_795_408_269_851, false), "2026-11-23T04:31:09Z");
/// assert_eq!(kubeedge_proto::rfc3339_utc(951_782_400_123, true), "2000-02-29T00:00:00.123Z");
/// assert_eq!(kubeedge_proto::rfc3339_utc(-1, true), "1969-12-31T23:59:59.999Z");
/// ```
pub fn rfc3339_utc(millis: i64, millis_fraction: bool) -> String {
    let secs = millis.div_euclid(1000);
    let ms = millis.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (tod / 3600, tod % 3600 / 60, tod % 60);
    if millis_fraction {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2026-11-23T04:31:09.123456Z`,
/// `...+02:00`); `None` if it is not one.
///
/// ```
/// assert_eq!(kubeedge_proto::parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
/// assert_eq!(kubeedge_proto::parse_rfc3339("2026-11-23T04:31:09.5+01:00"), Some(1_795_404_669));
/// assert_eq!(kubeedge_proto::parse_rfc3339("yesterday"), None);
/// ```
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, min, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(rest.as_bytes()[0], b'+' | b'-') => {
            let h = num(s.len() - 5, s.len() - 3)?;
            let m = num(s.len() - 2, s.len())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + min * 60 + sec - offset)
}

/// A fresh message id: a random UUID v4 in the hyphenated lowercase form.
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

impl Message {
    /// A new message with a fresh id and the current time (KubeEdge's `NewMessage` +
    /// `BuildRouter` + `FillBody`).
    pub fn new(
        source: impl Into<Source>,
        group: impl Into<Group>,
        operation: impl Into<Operation>,
        resource: impl Into<String>,
        content: Content,
    ) -> Self {
        Self {
            header: MessageHeader {
                id: new_message_id(),
                timestamp: now_millis(),
                ..MessageHeader::default()
            },
            route: MessageRoute {
                source: Some(source.into()),
                group: Some(group.into()),
                operation: Some(operation.into()),
                resource: resource.into(),
                destination: String::new(),
            },
            content,
        }
    }

    /// Sets `parent_msg_id`.
    pub fn with_parent(mut self, parent_id: impl Into<String>) -> Self {
        self.header.parent_id = parent_id.into();
        self
    }

    /// Sets `resourceversion`.
    pub fn with_resource_version(mut self, resource_version: impl Into<String>) -> Self {
        self.header.resource_version = resource_version.into();
        self
    }

    /// The response to this message (KubeEdge's `NewRespByMessage`): a fresh id, `parent_msg_id`
    /// = this id, the same source, group, resource and type, operation `response`.
    pub fn response(&self, content: Content) -> Self {
        Self {
            header: MessageHeader {
                id: new_message_id(),
                parent_id: self.header.id.clone(),
                timestamp: now_millis(),
                message_type: self.header.message_type.clone(),
                ..MessageHeader::default()
            },
            route: MessageRoute {
                source: self.route.source.clone(),
                group: self.route.group.clone(),
                operation: Some(Operation::Response),
                resource: self.route.resource.clone(),
                destination: String::new(),
            },
            content,
        }
    }

    /// The acknowledgement of this message: [`response`](Self::response) with content `"OK"`.
    /// Send it only after the message was persisted.
    pub fn ack(&self) -> Self {
        self.response(Content::ok())
    }

    /// An error message built as KubeEdge's `NewErrorMessage` builds it: a fresh id, only the
    /// resource copied, operation `error`, the text as a string content, and `parent_msg_id` set
    /// to this message's *parent* (not its id; KubeEdge uses it to fail the request this message
    /// answered). Set [`with_parent`](Self::with_parent) to answer this message itself.
    pub fn error_response(&self, text: &str) -> Self {
        Self {
            header: MessageHeader {
                id: new_message_id(),
                parent_id: self.header.parent_id.clone(),
                timestamp: now_millis(),
                ..MessageHeader::default()
            },
            route: MessageRoute {
                operation: Some(Operation::Error),
                resource: self.route.resource.clone(),
                ..MessageRoute::default()
            },
            content: Content::string(text),
        }
    }

    /// The edge keepalive: `websocket/resource keepalive node`, content `"ping"`.
    pub fn keepalive() -> Self {
        Self::new(
            Source::Websocket,
            Group::Resource,
            Operation::Keepalive,
            "node",
            Content::ping(),
        )
    }

    /// Whether this is a keepalive (any message with operation `keepalive`, as cloudhub decides).
    pub fn is_keepalive(&self) -> bool {
        self.route.operation == Some(Operation::Keepalive)
    }

    /// Whether this is an acknowledgement: operation `response`, a parent id and content `"OK"`.
    pub fn is_ack(&self) -> bool {
        self.route.operation == Some(Operation::Response)
            && !self.header.parent_id.is_empty()
            && self.content.is_ok_ack()
    }

    /// Whether this is the zero-value message edgecore writes while shutting down:
    /// `{"header":{"msg_id":"","timestamp":0},"route":{},"content":null}`.
    pub fn is_empty_shutdown(&self) -> bool {
        *self == Self::default()
    }

    /// Decodes one JSON message with the [`DEFAULT_MAX_MESSAGE_LEN`] limit. A trailing newline
    /// (as gorilla's `WriteJSON` writes) and surrounding whitespace are accepted.
    pub fn from_json(input: &[u8]) -> Result<Self> {
        Self::decode_json(Bytes::copy_from_slice(input), DEFAULT_MAX_MESSAGE_LEN)
    }

    /// The general decoder behind [`decode_json`](Self::decode_json), without the fast path for
    /// Go's exact layout and without the size limit. Public only so that tests and fuzz targets
    /// can check that both decoders agree; use `decode_json`.
    #[doc(hidden)]
    pub fn decode_json_general(input: Bytes) -> Result<Self> {
        let MapOnly(wire) = serde_json::from_slice::<MapOnly<WireMessage<'_>>>(&input)?;
        let header = wire.header.map(|h| h.0).unwrap_or_default();
        let route = wire.route.map(|r| r.0).unwrap_or_default();
        let content = match wire.content {
            None => Content::null(),
            Some(raw) => Content::validated_in(&input, raw),
        };
        Ok(Self {
            header: MessageHeader {
                id: header.msg_id.unwrap_or_default(),
                parent_id: header.parent_msg_id.unwrap_or_default(),
                timestamp: header.timestamp.unwrap_or_default(),
                resource_version: header.resourceversion.unwrap_or_default(),
                sync: header.sync.unwrap_or_default(),
                message_type: header.message_type.unwrap_or_default(),
            },
            route: MessageRoute {
                source: non_empty(route.source),
                destination: route.destination.unwrap_or_default(),
                group: non_empty(route.group),
                operation: non_empty(route.operation),
                resource: route.resource.unwrap_or_default(),
            },
            content,
        })
    }

    /// The JSON encoding, byte-identical to Go's `json.Marshal` of the same message (no trailing
    /// newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        self.write_json(&mut out);
        out
    }

    /// The JSON encoding as shared bytes.
    pub fn to_json_bytes(&self) -> Bytes {
        self.to_json().into()
    }

    /// The payload of a WebSocket text frame as KubeEdge writes it (gorilla's `WriteJSON`): the
    /// JSON encoding followed by `\n`.
    pub fn to_json_line(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len_hint() + 1);
        self.write_json(&mut out);
        out.push(b'\n');
        out.into()
    }

    /// An upper estimate of the encoded length, for reserving buffer space.
    pub fn encoded_len_hint(&self) -> usize {
        let h = &self.header;
        let r = &self.route;
        let strings = h.id.len()
            + h.parent_id.len()
            + h.resource_version.len()
            + h.message_type.len()
            + r.destination.len()
            + r.resource.len()
            + r.source.as_ref().map_or(0, |s| s.as_str().len())
            + r.group.as_ref().map_or(0, |s| s.as_str().len())
            + r.operation.as_ref().map_or(0, |s| s.as_str().len());
        // Envelope keys are ~160 bytes; escaping can grow a string, but rarely does in ids.
        192 + strings + strings / 8 + self.content.as_json().len()
    }

    /// Writes the JSON encoding (see [`to_json`](Self::to_json)) into `out`.
    pub fn write_json<B: BufMut>(&self, out: &mut B) {
        let h = &self.header;
        out.put_slice(b"{\"header\":{\"msg_id\":");
        go_json::write_str(out, &h.id);
        if !h.parent_id.is_empty() {
            out.put_slice(b",\"parent_msg_id\":");
            go_json::write_str(out, &h.parent_id);
        }
        out.put_slice(b",\"timestamp\":");
        let mut itoa = [0u8; 20];
        out.put_slice(format_i64(h.timestamp, &mut itoa));
        if !h.resource_version.is_empty() {
            out.put_slice(b",\"resourceversion\":");
            go_json::write_str(out, &h.resource_version);
        }
        if h.sync {
            out.put_slice(b",\"sync\":true");
        }
        if !h.message_type.is_empty() {
            out.put_slice(b",\"type\":");
            go_json::write_str(out, &h.message_type);
        }
        out.put_slice(b"},\"route\":{");
        let r = &self.route;
        let mut first = true;
        let mut field = |out: &mut B, key: &[u8], value: &str| {
            if value.is_empty() {
                return;
            }
            if !first {
                out.put_u8(b',');
            }
            first = false;
            out.put_slice(key);
            go_json::write_str(out, value);
        };
        field(
            out,
            b"\"source\":",
            r.source.as_ref().map_or("", |s| s.as_str()),
        );
        field(out, b"\"destination\":", &r.destination);
        field(
            out,
            b"\"group\":",
            r.group.as_ref().map_or("", |s| s.as_str()),
        );
        field(
            out,
            b"\"operation\":",
            r.operation.as_ref().map_or("", |s| s.as_str()),
        );
        field(out, b"\"resource\":", &r.resource);
        out.put_slice(b"},\"content\":");
        out.put_slice(self.content.as_json());
        out.put_u8(b'}');
    }
}

impl fmt::Display for MessageRoute {
    /// `<source>/<group> <operation> <resource>`, with `-` for an empty field.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_dash(s: &str) -> &str {
            if s.is_empty() { "-" } else { s }
        }
        write!(
            f,
            "{}/{} {} {}",
            or_dash(self.source.as_ref().map_or("", |s| s.as_str())),
            or_dash(self.group.as_ref().map_or("", |s| s.as_str())),
            or_dash(self.operation.as_ref().map_or("", |s| s.as_str())),
            or_dash(&self.resource),
        )
    }
}

impl fmt::Display for Message {
    /// One line: the route, then `id=`, `parent=` and `rv=` where set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} id={}", self.route, self.header.id)?;
        if !self.header.parent_id.is_empty() {
            write!(f, " parent={}", self.header.parent_id)?;
        }
        if !self.header.resource_version.is_empty() {
            write!(f, " rv={}", self.header.resource_version)?;
        }
        Ok(())
    }
}

/// Formats an `i64` in decimal into `buf`, returning the written digits.
fn format_i64(value: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = value.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        // i64::MIN has 19 digits, so there is always room for the sign.
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// `None` for an absent or empty name (Go's zero value, omitted on the wire).
fn non_empty<T: AsRef<str>>(name: Option<T>) -> Option<T> {
    name.filter(|n| !n.as_ref().is_empty())
}

/// The JSON shape of a message, borrowed from the input while it is decoded.
#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(default)]
    header: Option<MapOnly<WireHeader>>,
    #[serde(default)]
    route: Option<MapOnly<WireRoute>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct WireHeader {
    #[serde(default)]
    msg_id: Option<String>,
    #[serde(default)]
    parent_msg_id: Option<String>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    resourceversion: Option<String>,
    #[serde(default)]
    sync: Option<bool>,
    #[serde(default, rename = "type")]
    message_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireRoute {
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    destination: Option<String>,
    #[serde(default)]
    group: Option<Group>,
    #[serde(default)]
    operation: Option<Operation>,
    #[serde(default)]
    resource: Option<String>,
}

/// Deserialises `T` only from a JSON object. Derived struct impls also accept an array of field
/// values, which Go's decoder (and so the wire contract) does not.
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for MapVisitor<T> {
            type Value = MapOnly<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<MapOnly<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(MapOnly)
            }
        }
        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_integers() {
        let mut buf = [0u8; 20];
        for v in [0, 7, -7, 1795408165616, i64::MAX, i64::MIN] {
            assert_eq!(format_i64(v, &mut buf), v.to_string().as_bytes());
        }
    }

    #[test]
    fn empty_shutdown_message_round_trips() {
        let wire = br#"{"header":{"msg_id":"","timestamp":0},"route":{},"content":null}"#;
        let msg = Message::from_json(wire).unwrap();
        assert!(msg.is_empty_shutdown());
        assert_eq!(msg.to_json(), wire);
    }

    #[test]
    fn tolerates_what_go_tolerates() {
        // Missing and null fields are zero values; unknown keys are ignored.
        let msg =
            Message::from_json(br#"{"header":null,"extra":[1],"route":{"source":null}}"#).unwrap();
        assert!(msg.is_empty_shutdown());
        // Not an object, a wrong type, or trailing garbage are errors.
        for bad in [
            &b"[]"[..],
            b"{\"header\":[]}",
            b"{\"route\":[\"a\"]}",
            b"null",
            b"{\"header\":{\"timestamp\":\"1\"}}",
            b"{} x",
            b"",
        ] {
            assert!(
                Message::from_json(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limit_is_checked_first() {
        let err = Message::decode_json(Bytes::from(vec![b' '; 100]), 99).unwrap_err();
        assert!(matches!(
            err,
            crate::Error::TooLarge {
                len: 100,
                max: 99,
                ..
            }
        ));
    }

    #[test]
    fn content_is_zero_copy() {
        let wire = Bytes::from_static(
            br#"{"header":{"msg_id":"a","timestamp":1},"route":{},"content":{"x":1}}"#,
        );
        let msg = Message::decode_json(wire.clone(), 1024).unwrap();
        let range = crate::content::subslice_range(&wire, msg.content.as_json()).unwrap();
        assert_eq!(&wire[range], br#"{"x":1}"#);
    }

    #[test]
    fn response_and_error_follow_kubeedge() {
        let req = Message::new(
            "edged",
            "meta",
            "query",
            "default/configmap/c",
            Content::null(),
        )
        .with_resource_version("5");
        let resp = req.response(Content::string("x"));
        assert_eq!(resp.header.parent_id, req.header.id);
        assert_ne!(resp.header.id, req.header.id);
        assert_eq!(resp.route.source, Some(Source::Edged));
        assert_eq!(resp.route.group, Some(Group::Meta));
        assert_eq!(resp.route.operation, Some(Operation::Response));
        assert_eq!(resp.route.resource, req.route.resource);
        assert!(resp.header.resource_version.is_empty());
        assert!(req.ack().is_ack());
        let err = resp.error_response("boom");
        assert_eq!(err.header.parent_id, req.header.id);
        assert_eq!(err.route.source, None);
        assert_eq!(err.route.operation, Some(Operation::Error));
        assert_eq!(err.content.as_str().unwrap(), "boom");
        assert!(Message::keepalive().is_keepalive());
        assert_eq!(err.route.to_string(), "-/- error default/configmap/c");
        assert!(
            resp.to_string()
                .starts_with("edged/meta response default/configmap/c id=")
        );
        assert_eq!(
            uuid::Uuid::parse_str(&req.header.id)
                .unwrap()
                .get_version_num(),
            4
        );
    }
}
