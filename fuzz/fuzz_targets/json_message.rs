//! One JSON message (a WebSocket frame): decode never panics; the fast and general decoders
//! agree; what decodes re-encodes to bytes that decode to the same message and re-encode
//! identically.
#![no_main]

use bytes::Bytes;
use kubeedge_proto::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = Message::decode_json(Bytes::copy_from_slice(data), 1 << 20);
    // The fast path for Go's exact layout must agree with the general decoder.
    let general = Message::decode_json_general(Bytes::copy_from_slice(data));
    match (&decoded, &general) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("decoders disagree: {decoded:?} vs {general:?}"),
    }
    let Ok(msg) = decoded else {
        return;
    };
    let _ = msg.resource();
    let _ = msg.content.as_str();
    let _ = msg.content.data();
    let _ = msg.content.decode::<serde_json::Value>();
    let wire = msg.to_json();
    let again = Message::decode_json(Bytes::from(wire.clone()), 1 << 21).expect("own output decodes");
    assert_eq!(again, msg);
    assert_eq!(again.to_json(), wire);
});
