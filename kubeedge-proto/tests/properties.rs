//! Property tests: any message round-trips through both codecs, and arbitrary or mutated bytes
//! into every decoder give `Ok` or `Err`, never a panic.

use bytes::{Bytes, BytesMut};
use kubeedge_proto::device::{DeviceStateUpdate, MembershipUpdate};
use kubeedge_proto::frame::{BinaryFrameCodec, FrameHeader, HEADER_LEN, PACKER_VERSION};
use kubeedge_proto::json_lines::JsonLinesCodec;
use kubeedge_proto::twin::DeviceTwinUpdate;
use kubeedge_proto::{
    CloudResource, Content, Group, Message, MessageHeader, MessageRoute, ObjectResp, Operation,
    Resource, Source,
};
use proptest::prelude::*;

#[path = "support/capture.rs"]
#[allow(dead_code)]
mod capture;
use serde_json::Value;

/// Strings that stress the encoder: HTML characters, controls, quotes, U+2028, non-ASCII.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,12}",
        ".{0,24}",
        proptest::collection::vec(
            prop_oneof![
                Just('<'),
                Just('>'),
                Just('&'),
                Just('"'),
                Just('\\'),
                Just('\n'),
                Just('\u{0}'),
                Just('\u{1f}'),
                Just('\u{7f}'),
                Just('\u{2028}'),
                Just('\u{2029}'),
                Just('é'),
                Just('日'),
                Just('🦀'),
                Just('a'),
            ],
            0..16
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        tricky_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(tricky_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        Just(Content::null()),
        Just(Content::ok()),
        tricky_string().prop_map(|s| Content::string(&s)),
        json_value().prop_map(|v| Content::json(&v).unwrap()),
        json_value().prop_map(|v| Content::json_string(&v).unwrap()),
    ]
}

fn name<T: From<String> + Clone + std::fmt::Debug + 'static>(
    known: &'static [&'static str],
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(known).prop_map(|s| Some(T::from(s.to_owned()))),
        "[a-zA-Z_]{1,10}".prop_map(|s| Some(T::from(s))),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        (
            tricky_string(),
            tricky_string(),
            any::<i64>(),
            tricky_string(),
            any::<bool>(),
        ),
        tricky_string(),
        (
            name::<Source>(&["websocket", "edgecontroller", "twin", "meta", "bus"]),
            name::<Group>(&["resource", "twin", "user", "meta"]),
            name::<Operation>(&["insert", "update", "response", "keepalive", "upload"]),
        ),
        (tricky_string(), tricky_string()),
        content(),
    )
        .prop_map(
            |((id, parent, ts, rv, sync), ty, (source, group, op), (dest, res), content)| Message {
                header: MessageHeader {
                    id,
                    parent_id: parent,
                    timestamp: ts,
                    resource_version: rv,
                    sync,
                    message_type: ty,
                },
                route: MessageRoute {
                    source,
                    destination: dest,
                    group,
                    operation: op,
                    resource: res,
                },
                content,
            },
        )
}

/// Runs every decoder over `data`; none may panic.
fn feed_every_decoder(data: &[u8]) {
    // The fast path for Go's layout and the general decoder must agree on everything.
    let fast = Message::decode_json(Bytes::copy_from_slice(data), 1 << 20);
    let general = Message::decode_json_general(Bytes::copy_from_slice(data));
    match (&fast, &general) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("decoders disagree: fast {fast:?}, general {general:?}"),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(r) = Resource::parse(text) {
            // Whatever parses prints back to the same string.
            assert_eq!(r.to_string(), text);
        }
        let _ = Resource::topic(text);
        if let Ok(r) = CloudResource::parse(text) {
            assert_eq!(r.to_string(), text);
        }
        let _ = text.parse::<kubeedge_proto::DeviceId>();
    }
    let _ = DeviceTwinUpdate::parse(data);
    let _ = DeviceStateUpdate::parse(data);
    let _ = serde_json::from_slice::<MembershipUpdate>(data);
    if let Ok(content) = Content::from_json(Bytes::copy_from_slice(data)) {
        let _ = content.decode::<ObjectResp>();
        let _ = content.decode::<DeviceTwinUpdate>();
        let _ = content.as_str();
        let _ = content.data();
        let _ = Content::from_frame_bytes(content.to_frame_bytes());
    }
    let _ = kubeedge_proto::frame::decode_payload(Bytes::copy_from_slice(data));
    let _ = Content::from_frame_bytes(Bytes::copy_from_slice(data));
}

/// Feeds `data` in `chunk`-sized pieces to a stream decoder and checks the buffer bound.
fn feed_stream<F>(data: &[u8], chunk: usize, bound: usize, mut decode: F)
where
    F: FnMut(&mut BytesMut) -> kubeedge_proto::Result<Option<Message>>,
{
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(
            buf.len() <= bound + chunk,
            "buffered {} > {}",
            buf.len(),
            bound + chunk
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn json_round_trip(msg in message()) {
        let wire = msg.to_json();
        let back = Message::from_json(&wire).unwrap();
        prop_assert_eq!(&back, &msg);
        prop_assert_eq!(&Message::decode_json_general(Bytes::from(wire.clone())).unwrap(), &msg);
        prop_assert_eq!(back.to_json(), wire);
    }

    #[test]
    fn json_lines_round_trip(msgs in proptest::collection::vec(message(), 0..6), chunk in 1usize..64) {
        let codec = JsonLinesCodec::new(1 << 20);
        let mut wire = BytesMut::new();
        for m in &msgs {
            codec.encode_into(m, &mut wire);
        }
        let mut dec = JsonLinesCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(m) = dec.decode_from(&mut buf).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn binary_frame_round_trip(msg in message()) {
        // The frame carries neither resourceversion nor destination.
        let mut expected = msg.clone();
        expected.header.resource_version.clear();
        expected.route.destination.clear();
        let mut buf = BytesMut::new();
        BinaryFrameCodec::default().encode_into(&msg, &mut buf).unwrap();
        let back = BinaryFrameCodec::default().decode_from(&mut buf).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(back.header, expected.header);
        prop_assert_eq!(back.route, expected.route);
        // Content comes back as the same data, by KubeEdge's GetContentData() rule.
        prop_assert_eq!(back.content.data(), expected.content.data());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed_every_decoder(&data);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,256}") {
        feed_every_decoder(text.as_bytes());
    }

    #[test]
    fn mutated_messages_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = capture::payload(13).to_vec();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        feed_every_decoder(&data);
        feed_every_decoder(&data[..cut.index(data.len())]);
    }

    #[test]
    fn stream_decoders_stay_bounded(
        data in proptest::collection::vec(any::<u8>(), 0..8192),
        chunk in 1usize..512,
        max in 16usize..1024,
    ) {
        let mut lines = JsonLinesCodec::new(max);
        feed_stream(&data, chunk, max + 2, |b| lines.decode_from(b));
        let mut frames = BinaryFrameCodec::new(max);
        feed_stream(&data, chunk, max + HEADER_LEN, |b| frames.decode_from(b));
    }

    #[test]
    fn frame_headers_over_the_limit_are_refused(len in 1025u32.., frame_type in any::<u8>()) {
        let mut buf = BytesMut::new();
        FrameHeader { version: PACKER_VERSION, frame_type, flags: 0, payload_len: len }
            .write(&mut buf);
        prop_assert!(BinaryFrameCodec::new(1024).decode_from(&mut buf).is_err());
        prop_assert!(buf.capacity() < 1024);
    }
}

#[test]
fn deep_nesting_never_overflows_the_stack() {
    let depth = 100_000;
    let mut doc = String::from(r#"{"header":{},"route":{},"content":"#);
    doc.push_str(&"[".repeat(depth));
    doc.push_str(&"]".repeat(depth));
    doc.push('}');
    // The envelope decoder skips content without recursing, so a relay carries it as bytes;
    // typed access is where depth is limited (serde_json's recursion limit of 128).
    let msg = Message::from_json(doc.as_bytes()).unwrap();
    assert!(msg.content.decode::<Value>().is_err());
    let mut deep_header = String::from(r#"{"header":{"msg_id":"#);
    deep_header.push_str(&"[".repeat(depth));
    assert!(Message::from_json(deep_header.as_bytes()).is_err());
    let nested_string = Content::string(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
    assert!(nested_string.decode::<Vec<Value>>().is_err());
}
