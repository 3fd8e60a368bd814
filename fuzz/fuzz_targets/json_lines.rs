//! A byte stream of newline-delimited messages, delivered in chunks whose size the first byte
//! picks: never panics, never buffers more than the limit plus one chunk.
#![no_main]

use bytes::BytesMut;
use kubeedge_proto::json_lines::JsonLinesCodec;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first).max(1);
    let mut codec = JsonLinesCodec::new(MAX);
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode_from(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                // A bad line is consumed; the codec goes on with the next one.
                Err(_) => continue,
            }
        }
        assert!(buf.len() <= MAX + 2 + chunk);
    }
    while let Ok(Some(_)) = codec.decode_eof_from(&mut buf) {}
});
