//! A fast decoder for the exact byte layout Go's encoder gives a message.
//!
//! Every message KubeEdge sends has the same shape: `{"header":{"msg_id":"...",...},"route":{...},
//! "content":...}` with the keys in struct order, no whitespace, and (nearly always) strings
//! without escapes. This module reads that shape with a cursor, and hands the content to
//! `serde_json`, which validates it and finds its end without building a tree. Anything else
//! (another key order, an unknown key, an escaped string, whitespace, a float timestamp...) makes
//! it return `None`, and the caller falls back to the general `serde_json` decoder.
//!
//! The contract, checked by a differential property test and a fuzz target: whenever this
//! decoder returns a message, the general decoder returns the identical message.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::content::subslice_range;
use crate::{Content, Error, Message, MessageHeader, MessageRoute, Result};

/// The decoder's entry point: Go's exact layout first, the general decoder otherwise.
impl Message {
    /// Decodes one JSON message from shared bytes. The content is not copied: it stays a slice of
    /// `input`. Input longer than `max_len` is refused before it is parsed.
    pub fn decode_json(input: Bytes, max_len: usize) -> Result<Self> {
        if input.len() > max_len {
            return Err(Error::TooLarge {
                what: "message",
                len: input.len(),
                max: max_len,
            });
        }
        // Nearly every message has the exact layout Go writes: read that directly.
        if let Some(msg) = decode(&input) {
            return Ok(msg);
        }
        Self::decode_json_general(input)
    }
}

/// Decodes `input` if it has Go's layout; `None` means "use the general decoder".
pub(crate) fn decode<'a>(input: &'a Bytes) -> Option<Message> {
    let mut c: Cursor<'a> = Cursor { buf: input, pos: 0 };
    c.lit(b"{\"header\":{\"msg_id\":\"")?;
    let id = c.string_body()?;
    let parent_id = if c.lit(b",\"parent_msg_id\":\"").is_some() {
        c.string_body()?
    } else {
        ""
    };
    c.lit(b",\"timestamp\":")?;
    let timestamp = c.int()?;
    let resource_version = if c.lit(b",\"resourceversion\":\"").is_some() {
        c.string_body()?
    } else {
        ""
    };
    let sync = c.lit(b",\"sync\":true").is_some();
    let message_type = if c.lit(b",\"type\":\"").is_some() {
        c.string_body()?
    } else {
        ""
    };
    c.lit(b"},\"route\":{")?;

    let mut first = true;
    let mut field = |c: &mut Cursor<'a>, key: &[u8]| -> Option<&'static str> {
        // Each route field is optional; all but the first present one start with a comma.
        let start = c.pos;
        if !first && c.lit(b",").is_none() {
            return Some("");
        }
        if c.lit(key).is_none() {
            c.pos = start;
            return Some("");
        }
        first = false;
        None
    };
    let mut route_str = |c: &mut Cursor<'a>, key: &[u8]| -> Option<Option<&'a str>> {
        match field(c, key) {
            Some(_) => Some(None),
            None => Some(Some(c.string_body()?)),
        }
    };
    let source = route_str(&mut c, b"\"source\":\"")?;
    let destination = route_str(&mut c, b"\"destination\":\"")?;
    let group = route_str(&mut c, b"\"group\":\"")?;
    let operation = route_str(&mut c, b"\"operation\":\"")?;
    let resource = route_str(&mut c, b"\"resource\":\"")?;
    c.lit(b"},\"content\":")?;

    let content = c.raw_value(input)?;
    c.lit(b"}")?;
    if !c.buf[c.pos..]
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return None;
    }

    let name = |s: Option<&'a str>| s.filter(|s| !s.is_empty());
    Some(Message {
        header: MessageHeader {
            id: id.to_owned(),
            parent_id: parent_id.to_owned(),
            timestamp,
            resource_version: resource_version.to_owned(),
            sync,
            message_type: message_type.to_owned(),
        },
        route: MessageRoute {
            source: name(source).map(Into::into),
            destination: destination.unwrap_or_default().to_owned(),
            group: name(group).map(Into::into),
            operation: name(operation).map(Into::into),
            resource: resource.unwrap_or_default().to_owned(),
        },
        content,
    })
}

/// Bytes that end the simple part of a JSON string: the closing quote, an escape, or a control
/// character (invalid in JSON).
const STRING_STOP: [bool; 256] = crate::go_json::controls_and(b"\"\\");

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Consumes `lit` if the input continues with it.
    fn lit(&mut self, lit: &[u8]) -> Option<()> {
        if self.buf[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Some(())
        } else {
            None
        }
    }

    /// The body of a string whose opening quote was consumed, up to and past the closing quote.
    /// `None` for an escape or a control character (the general decoder handles those) and for
    /// invalid UTF-8.
    fn string_body(&mut self) -> Option<&'a str> {
        let rest = &self.buf[self.pos..];
        let end = rest.iter().position(|&b| STRING_STOP[usize::from(b)])?;
        if rest[end] != b'"' {
            return None;
        }
        let s = std::str::from_utf8(&rest[..end]).ok()?;
        self.pos += end + 1;
        Some(s)
    }

    /// A JSON integer that fits an `i64`: `-?(0|[1-9][0-9]*)`, not followed by a fraction or an
    /// exponent. `-0` and anything unusual go to the general decoder.
    fn int(&mut self) -> Option<i64> {
        let rest = &self.buf[self.pos..];
        let negative = rest.first() == Some(&b'-');
        let digits_start = usize::from(negative);
        let digits = rest[digits_start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 || digits > 19 || (digits > 1 && rest[digits_start] == b'0') {
            return None;
        }
        let end = digits_start + digits;
        if matches!(rest.get(end), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut value: i64 = 0;
        for &d in &rest[digits_start..end] {
            let d = i64::from(d - b'0');
            value = if negative {
                value.checked_mul(10)?.checked_sub(d)?
            } else {
                value.checked_mul(10)?.checked_add(d)?
            };
        }
        if negative && value == 0 {
            return None;
        }
        self.pos += end;
        Some(value)
    }

    /// One JSON value, validated by `serde_json` without building it, as a zero-copy slice.
    fn raw_value(&mut self, input: &Bytes) -> Option<Content> {
        let rest = &self.buf[self.pos..];
        // Go writes no whitespace here; leave that to the general decoder.
        if matches!(rest.first(), None | Some(b' ' | b'\t' | b'\n' | b'\r')) {
            return None;
        }
        let mut de = serde_json::Deserializer::from_slice(rest);
        let raw = <&RawValue>::deserialize(&mut de).ok()?;
        self.pos = subslice_range(input, raw.get().as_bytes())?.end;
        Some(Content::validated_in(input, raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(s: &str) -> Option<Message> {
        decode(&Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn reads_what_go_writes() {
        let m = go(r#"{"header":{"msg_id":"a","parent_msg_id":"p","timestamp":-12,"resourceversion":"5","sync":true,"type":"t"},"route":{"source":"edged","destination":"d","group":"meta","operation":"query","resource":"default/pod"},"content":{"x":[1,"}"]}}"#).unwrap();
        assert_eq!(m.header.parent_id, "p");
        assert_eq!(m.header.timestamp, -12);
        assert!(m.header.sync);
        assert_eq!(m.route.destination, "d");
        assert_eq!(m.content.as_json(), br#"{"x":[1,"}"]}"#);
        let empty =
            go(r#"{"header":{"msg_id":"","timestamp":0},"route":{},"content":null}"#).unwrap();
        assert!(empty.is_empty_shutdown());
        let gap = go(r#"{"header":{"msg_id":"a","timestamp":1},"route":{"group":"g","resource":"r"},"content":"ok"}"#).unwrap();
        assert_eq!(gap.route.resource, "r");
        assert!(gap.route.source.is_none());
    }

    #[test]
    fn every_captured_message_takes_the_fast_path() {
        let capture = include_str!("../tests/vectors/ws-v1.22.2.jsonl");
        let mut n = 0;
        for line in capture.lines() {
            let rec: serde_json::Value = serde_json::from_str(line).unwrap();
            if rec["kind"] != "message" {
                continue;
            }
            let payload = Bytes::copy_from_slice(rec["payload"].as_str().unwrap().as_bytes());
            let fast = decode(&payload).unwrap_or_else(|| panic!("seq {} fell back", rec["seq"]));
            assert_eq!(fast, Message::decode_json_general(payload).unwrap());
            n += 1;
        }
        assert_eq!(n, 79);
    }

    #[test]
    fn leaves_everything_else_to_the_general_decoder() {
        for s in [
            r#" {"header":{"msg_id":"a","timestamp":1},"route":{},"content":null}"#,
            r#"{"header":{"msg_id":"a\"b","timestamp":1},"route":{},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":01},"route":{},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":-0},"route":{},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":1.5},"route":{},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":99999999999999999999},"route":{},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":1,"x":1},"route":{},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":1},"route":{"group":"g","source":"s"},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":1},"route":{,"group":"g"},"content":null}"#,
            r#"{"header":{"msg_id":"a","timestamp":1},"route":{},"content": null}"#,
            r#"{"header":{"msg_id":"a","timestamp":1},"route":{},"content":nul}"#,
            r#"{"header":{"msg_id":"a","timestamp":1},"route":{},"content":null} x"#,
            r#"{"header":{"msg_id":"a","timestamp":1},"route":{},"content":null,"y":2}"#,
        ] {
            assert!(go(s).is_none(), "{s}");
        }
    }
}
