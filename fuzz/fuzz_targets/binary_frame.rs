//! A byte stream of viaduct binary frames: never panics, never reserves past the limit; every
//! decoded message re-encodes to a frame that decodes to the same header and route.
#![no_main]

use bytes::BytesMut;
use kubeedge_proto::frame::{BinaryFrameCodec, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut codec = BinaryFrameCodec::new(MAX);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = codec.decode_from(&mut buf) {
        let mut out = BytesMut::new();
        BinaryFrameCodec::new(MAX * 2).encode_into(&msg, &mut out).expect("encodes");
        let back = BinaryFrameCodec::new(MAX * 2).decode_from(&mut out).expect("decodes").expect("whole");
        assert_eq!(back.header, msg.header);
        assert_eq!(back.route, msg.route);
        assert_eq!(back.content.data(), msg.content.data());
    }
    assert!(buf.capacity() <= data.len().max(MAX + HEADER_LEN) * 2);
});
