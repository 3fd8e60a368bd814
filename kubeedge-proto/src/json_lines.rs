//! JSON messages on a byte stream, one per line.
//!
//! KubeEdge writes every message with gorilla's `WriteJSON`: the JSON followed by `\n`, one per
//! WebSocket text frame. Go's JSON never contains a raw newline (newlines inside strings are
//! escaped), so the same bytes concatenated form a newline-delimited stream; this module frames
//! that stream (files, pipes, captured traffic, any stream transport). A WebSocket transport
//! decodes each frame with [`Message::decode_json`] instead.
//!
//! [`JsonLinesCodec`] works on a `BytesMut` without any runtime; with the `codec` feature it is
//! also a `tokio_util::codec` `Decoder` and `Encoder`.
//!
//! ```
//! use bytes::BytesMut;
//! use kubeedge_proto::{Message, json_lines::JsonLinesCodec};
//!
//! let mut codec = JsonLinesCodec::new(1024);
//! let mut buf = BytesMut::new();
//! codec.encode_into(&Message::keepalive(), &mut buf);
//! codec.encode_into(&Message::keepalive(), &mut buf);
//! assert!(codec.decode_from(&mut buf).unwrap().unwrap().is_keepalive());
//! assert!(codec.decode_from(&mut buf).unwrap().unwrap().is_keepalive());
//! assert!(codec.decode_from(&mut buf).unwrap().is_none());
//! ```

use bytes::{BufMut, BytesMut};

use crate::{DEFAULT_MAX_MESSAGE_LEN, Error, Message, Result};

/// Frames newline-delimited JSON messages with a hard maximum line length.
///
/// A line longer than the maximum is an error as soon as the buffer holds more than the maximum
/// without a newline: the decoder never buffers more than `max_len` + 1 bytes of one line plus
/// whatever the last read brought. Empty lines (and `\r\n` line ends) are skipped.
#[derive(Clone, Debug)]
pub struct JsonLinesCodec {
    max_len: usize,
    /// How far the buffer has been searched for a newline already.
    scanned: usize,
}

impl Default for JsonLinesCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_LEN)
    }
}

impl JsonLinesCodec {
    /// A codec refusing messages longer than `max_len` bytes (line end excluded).
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
        }
    }

    /// The maximum message length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Takes the next complete line from `buf` and decodes it; `Ok(None)` when no complete line
    /// is buffered yet. A malformed line is consumed before its error is returned, so a caller
    /// may report it and go on with the next line.
    pub fn decode_from(&mut self, buf: &mut BytesMut) -> Result<Option<Message>> {
        loop {
            // A line of max_len bytes may be followed by "\r\n".
            let limit = buf.len().min(self.max_len.saturating_add(2));
            // The caller may have drained the buffer behind our back: never index past it.
            let start = self.scanned.min(limit);
            let newline = buf[start..limit].iter().position(|b| *b == b'\n');
            let Some(pos) = newline.map(|p| p + start) else {
                if buf.len() > self.max_len.saturating_add(1) {
                    let len = buf.len();
                    buf.clear();
                    self.scanned = 0;
                    return Err(Error::TooLarge {
                        what: "message",
                        len,
                        max: self.max_len,
                    });
                }
                self.scanned = limit;
                return Ok(None);
            };
            self.scanned = 0;
            let line = buf.split_to(pos + 1).freeze();
            let body = line.slice(..trim_line_end(&line));
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Message::decode_json(body, self.max_len).map(Some);
        }
    }

    /// Like [`decode_from`](Self::decode_from), and at the end of the stream also decodes a last
    /// line that has no newline.
    pub fn decode_eof_from(&mut self, buf: &mut BytesMut) -> Result<Option<Message>> {
        if let Some(msg) = self.decode_from(buf)? {
            return Ok(Some(msg));
        }
        self.scanned = 0;
        if buf.iter().all(u8::is_ascii_whitespace) {
            buf.clear();
            return Ok(None);
        }
        let rest = buf.split().freeze();
        Message::decode_json(rest, self.max_len).map(Some)
    }

    /// Appends `msg` as one line (`<json>\n`), exactly as gorilla's `WriteJSON` writes it.
    pub fn encode_into(&self, msg: &Message, buf: &mut BytesMut) {
        buf.reserve(msg.encoded_len_hint() + 1);
        msg.write_json(buf);
        buf.put_u8(b'\n');
    }
}

/// The length of `line` without its `\n` or `\r\n` end.
fn trim_line_end(line: &[u8]) -> usize {
    let mut end = line.len();
    if end > 0 && line[end - 1] == b'\n' {
        end -= 1;
    }
    if end > 0 && line[end - 1] == b'\r' {
        end -= 1;
    }
    end
}

#[cfg(feature = "codec")]
mod tokio_codec {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use super::JsonLinesCodec;
    use crate::{Error, Message};

    impl Decoder for JsonLinesCodec {
        type Item = Message;
        type Error = Error;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
            self.decode_from(src)
        }

        fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, Error> {
            self.decode_eof_from(src)
        }
    }

    impl Encoder<&Message> for JsonLinesCodec {
        type Error = Error;

        fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), Error> {
            self.encode_into(msg, dst);
            Ok(())
        }
    }

    impl Encoder<Message> for JsonLinesCodec {
        type Error = Error;

        fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), Error> {
            self.encode_into(&msg, dst);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_wait_for_more() {
        let mut codec = JsonLinesCodec::new(1024);
        let line = Message::keepalive().to_json();
        let mut buf = BytesMut::new();
        for (i, b) in line.iter().enumerate() {
            buf.put_u8(*b);
            assert!(codec.decode_from(&mut buf).unwrap().is_none(), "byte {i}");
        }
        buf.put_slice(b"\r\n\n\n");
        assert!(codec.decode_from(&mut buf).unwrap().is_some());
        assert!(codec.decode_from(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn overlong_line_fails_without_newline() {
        let mut codec = JsonLinesCodec::new(16);
        let mut buf = BytesMut::from(&b"{\"header\":{\"msg_id\":\"aaaaaaaaaaaa"[..]);
        assert!(matches!(
            codec.decode_from(&mut buf),
            Err(Error::TooLarge { max: 16, .. })
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_line_is_consumed_and_next_decodes() {
        let mut codec = JsonLinesCodec::new(1024);
        let mut buf = BytesMut::from(&b"{oops}\n"[..]);
        codec.encode_into(&Message::keepalive(), &mut buf);
        assert!(codec.decode_from(&mut buf).is_err());
        assert!(codec.decode_from(&mut buf).unwrap().unwrap().is_keepalive());
    }

    #[test]
    fn eof_decodes_last_unterminated_line() {
        let mut codec = JsonLinesCodec::new(1024);
        let mut buf = BytesMut::from(&Message::keepalive().to_json()[..]);
        assert!(codec.decode_from(&mut buf).unwrap().is_none());
        assert!(codec.decode_eof_from(&mut buf).unwrap().is_some());
        assert!(codec.decode_eof_from(&mut buf).unwrap().is_none());
    }
}
