//! KubeEdge viaduct's binary frame: a 10-byte header followed by a protobuf message.
//!
//! Viaduct packs messages this way on stream transports (its QUIC lane and the packed WebSocket
//! lane). The header is big-endian:
//!
//! | bytes | field | value |
//! |---|---|---|
//! | 0..4 | version | `major<<24 \| minor<<16 \| fix<<8`; [`PACKER_VERSION`] is 1.1.1 |
//! | 4 | type | `0x01` message, `0x02` stream, `0x04` user-defined |
//! | 5 | flags | `0x80` compressed (never set by KubeEdge; refused here) |
//! | 6..10 | payload length | at most the decoder's limit (viaduct: 32 MiB) |
//!
//! The payload is `message.Message` from viaduct's `message.proto`:
//! `header {ID=1, ParentID=2, Timestamp=3 (sint64), Sync=4, MessageType=5}`,
//! `router {Source=1, Group=2, Operation=3, Resouce=4}` (sic), `Content=3` (bytes).
//!
//! The frame does not carry `resourceversion` or `destination`, and content travels as raw bytes
//! (see [`Content::to_frame_bytes`] and [`Content::from_frame_bytes`] for the mapping).
//!
//! ```
//! use bytes::BytesMut;
//! use kubeedge_proto::{Message, frame::BinaryFrameCodec};
//!
//! let codec = BinaryFrameCodec::default();
//! let mut buf = BytesMut::new();
//! let msg = Message::keepalive();
//! codec.encode_into(&msg, &mut buf).unwrap();
//! assert_eq!(&buf[..6], &[0x01, 0x01, 0x01, 0x00, 0x01, 0x00]);
//! let back = BinaryFrameCodec::default().decode_from(&mut buf).unwrap().unwrap();
//! assert_eq!(back, msg);
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::names::{Group, Operation, Source};
use crate::{Content, Error, Message, MessageHeader, MessageRoute, Result};

/// Length of the frame header.
pub const HEADER_LEN: usize = 10;

/// The packer version KubeEdge writes: 1.1.1.
pub const PACKER_VERSION: u32 = 0x0101_0100;

/// Viaduct's own maximum payload length: 32 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 32 * 1024 * 1024;

/// Frame type `0x01`: a message.
pub const TYPE_MESSAGE: u8 = 0x01;
/// Frame type `0x02`: raw stream data.
pub const TYPE_STREAM: u8 = 0x02;
/// Frame type `0x04`: user-defined.
pub const TYPE_USER_DEFINED: u8 = 0x04;
/// Flag `0x80`: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0x80;

/// The decoded 10-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The packer version.
    pub version: u32,
    /// The frame type.
    pub frame_type: u8,
    /// The flags.
    pub flags: u8,
    /// The payload length that follows the header.
    pub payload_len: u32,
}

impl FrameHeader {
    /// Reads a header from its 10 bytes.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            version: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            frame_type: b[4],
            flags: b[5],
            payload_len: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        }
    }

    /// Writes the header's 10 bytes.
    pub fn write<B: BufMut>(&self, out: &mut B) {
        out.put_u32(self.version);
        out.put_u8(self.frame_type);
        out.put_u8(self.flags);
        out.put_u32(self.payload_len);
    }
}

/// Frames messages as viaduct binary frames, with a hard maximum payload length.
///
/// The announced payload length is checked against the maximum before any buffer space is
/// reserved for it; frames of another type than message, and compressed frames, are errors.
/// After an error the stream is out of step and should be closed.
#[derive(Clone, Debug)]
pub struct BinaryFrameCodec {
    max_len: usize,
    pending: Option<FrameHeader>,
}

impl Default for BinaryFrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl BinaryFrameCodec {
    /// A codec refusing payloads longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            pending: None,
        }
    }

    /// Decodes the next frame from `buf`; `Ok(None)` until a whole frame is buffered.
    pub fn decode_from(&mut self, buf: &mut BytesMut) -> Result<Option<Message>> {
        let header = match self.pending {
            Some(header) => header,
            None => {
                let Some(head) = buf.get(..HEADER_LEN) else {
                    return Ok(None);
                };
                let mut bytes = [0u8; HEADER_LEN];
                bytes.copy_from_slice(head);
                let header = FrameHeader::from_bytes(&bytes);
                let len = header.payload_len as usize;
                if len > self.max_len {
                    return Err(Error::TooLarge {
                        what: "frame",
                        len,
                        max: self.max_len,
                    });
                }
                if header.frame_type != TYPE_MESSAGE {
                    return Err(Error::Frame(format!(
                        "frame type {:#04x} is not a message",
                        header.frame_type
                    )));
                }
                if header.flags & FLAG_COMPRESSED != 0 {
                    return Err(Error::Frame(
                        "compressed frames are not supported".to_owned(),
                    ));
                }
                buf.advance(HEADER_LEN);
                buf.reserve(len);
                self.pending = Some(header);
                header
            }
        };
        let len = header.payload_len as usize;
        if buf.len() < len {
            return Ok(None);
        }
        self.pending = None;
        decode_payload(buf.split_to(len).freeze()).map(Some)
    }

    /// Appends `msg` as one frame.
    pub fn encode_into(&self, msg: &Message, buf: &mut BytesMut) -> Result<()> {
        let payload = to_protobuf(msg);
        let len = payload.encoded_len();
        if len > self.max_len {
            return Err(Error::TooLarge {
                what: "frame",
                len,
                max: self.max_len,
            });
        }
        buf.reserve(HEADER_LEN + len);
        FrameHeader {
            version: PACKER_VERSION,
            frame_type: TYPE_MESSAGE,
            flags: 0,
            // len <= max_len; a max_len above u32::MAX is clamped by this conversion check.
            payload_len: u32::try_from(len).map_err(|_| Error::TooLarge {
                what: "frame",
                len,
                max: u32::MAX as usize,
            })?,
        }
        .write(buf);
        payload.encode(buf).map_err(|e| Error::Frame(e.to_string()))
    }
}

/// Decodes a frame payload (the protobuf message without the 10-byte header).
pub fn decode_payload(payload: Bytes) -> Result<Message> {
    let pb = PbMessage::decode(payload)?;
    let header = pb.header.unwrap_or_default();
    let router = pb.router.unwrap_or_default();
    let name = |s: String| (!s.is_empty()).then_some(s);
    Ok(Message {
        header: MessageHeader {
            id: header.id,
            parent_id: header.parent_id,
            timestamp: header.timestamp,
            resource_version: String::new(),
            sync: header.sync,
            message_type: header.message_type,
        },
        route: MessageRoute {
            source: name(router.source).map(Source::from),
            destination: String::new(),
            group: name(router.group).map(Group::from),
            operation: name(router.operation).map(Operation::from),
            resource: router.resouce,
        },
        content: Content::from_frame_bytes(pb.content),
    })
}

/// Encodes the frame payload of `msg` (without the header).
pub fn encode_payload(msg: &Message) -> Bytes {
    to_protobuf(msg).encode_to_vec().into()
}

fn to_protobuf(msg: &Message) -> PbMessage {
    let name = |n: Option<&str>| n.unwrap_or_default().to_owned();
    PbMessage {
        header: Some(PbHeader {
            id: msg.header.id.clone(),
            parent_id: msg.header.parent_id.clone(),
            timestamp: msg.header.timestamp,
            sync: msg.header.sync,
            message_type: msg.header.message_type.clone(),
        }),
        router: Some(PbRouter {
            source: name(msg.route.source.as_ref().map(|s| s.as_str())),
            group: name(msg.route.group.as_ref().map(|s| s.as_str())),
            operation: name(msg.route.operation.as_ref().map(|s| s.as_str())),
            resouce: msg.route.resource.clone(),
        }),
        content: msg.content.to_frame_bytes(),
    }
}

/// `message.Message` of viaduct's `message.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct PbMessage {
    #[prost(message, optional, tag = "1")]
    header: Option<PbHeader>,
    #[prost(message, optional, tag = "2")]
    router: Option<PbRouter>,
    #[prost(bytes = "bytes", tag = "3")]
    content: Bytes,
}

/// `message.MessageHeader`.
#[derive(Clone, PartialEq, prost::Message)]
struct PbHeader {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    parent_id: String,
    #[prost(sint64, tag = "3")]
    timestamp: i64,
    #[prost(bool, tag = "4")]
    sync: bool,
    #[prost(string, tag = "5")]
    message_type: String,
}

/// `message.MessageRouter` (the resource field is spelt `Resouce` in KubeEdge).
#[derive(Clone, PartialEq, prost::Message)]
struct PbRouter {
    #[prost(string, tag = "1")]
    source: String,
    #[prost(string, tag = "2")]
    group: String,
    #[prost(string, tag = "3")]
    operation: String,
    #[prost(string, tag = "4")]
    resouce: String,
}

#[cfg(feature = "codec")]
mod tokio_codec {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use super::BinaryFrameCodec;
    use crate::{Error, Message};

    impl Decoder for BinaryFrameCodec {
        type Item = Message;
        type Error = Error;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
            self.decode_from(src)
        }
    }

    impl Encoder<&Message> for BinaryFrameCodec {
        type Error = Error;

        fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), Error> {
            self.encode_into(msg, dst)
        }
    }

    impl Encoder<Message> for BinaryFrameCodec {
        type Error = Error;

        fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
            self.encode_into(&msg, dst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_encoded_frame_decodes() {
        // header{ID="a"(1), Timestamp=-1 (sint64 zigzag 1)}, router{Operation="keepalive"}, Content "ping"
        let payload: &[u8] = &[
            0x0a, 0x05, 0x0a, 0x01, b'a', 0x18, 0x01, // header
            0x12, 0x0b, 0x1a, 0x09, b'k', b'e', b'e', b'p', b'a', b'l', b'i', b'v',
            b'e', // router
            0x1a, 0x04, b'p', b'i', b'n', b'g', // content
        ];
        let mut buf = BytesMut::new();
        FrameHeader {
            version: PACKER_VERSION,
            frame_type: TYPE_MESSAGE,
            flags: 0,
            payload_len: payload.len() as u32,
        }
        .write(&mut buf);
        buf.put_slice(payload);
        let msg = BinaryFrameCodec::default()
            .decode_from(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(msg.header.id, "a");
        assert_eq!(msg.header.timestamp, -1);
        assert_eq!(msg.route.operation, Some(Operation::Keepalive));
        assert_eq!(msg.content, Content::ping());
        assert!(buf.is_empty());
        // And our encoder writes exactly those payload bytes for the same message.
        assert_eq!(&encode_payload(&msg)[..], payload);
    }

    #[test]
    fn refuses_before_allocating() {
        let mut codec = BinaryFrameCodec::new(1024);
        let mut buf = BytesMut::new();
        FrameHeader {
            version: PACKER_VERSION,
            frame_type: 1,
            flags: 0,
            payload_len: u32::MAX,
        }
        .write(&mut buf);
        assert!(matches!(
            codec.decode_from(&mut buf),
            Err(Error::TooLarge { .. })
        ));
        assert!(buf.capacity() < 1024);
        for (frame_type, flags) in [(TYPE_STREAM, 0), (TYPE_MESSAGE, FLAG_COMPRESSED)] {
            let mut buf = BytesMut::new();
            FrameHeader {
                version: PACKER_VERSION,
                frame_type,
                flags,
                payload_len: 0,
            }
            .write(&mut buf);
            assert!(matches!(
                BinaryFrameCodec::new(1024).decode_from(&mut buf),
                Err(Error::Frame(_))
            ));
        }
    }

    #[test]
    fn split_delivery() {
        let msg = Message::new(
            "edged",
            "meta",
            "patch",
            "default/podpatch/p",
            Content::ok(),
        );
        let mut whole = BytesMut::new();
        let codec = BinaryFrameCodec::default();
        codec.encode_into(&msg, &mut whole).unwrap();
        codec.encode_into(&msg, &mut whole).unwrap();
        let mut dec = BinaryFrameCodec::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in whole.iter() {
            buf.put_u8(*b);
            while let Some(m) = dec.decode_from(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![msg.clone(), msg]);
    }
}
