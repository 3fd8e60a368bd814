//! Stream tunnel frames (cloudStream/edgeStream) and the connect requests they carry: never
//! panic, never keep more data than the bound, and whatever decodes encodes back to a frame that
//! decodes to the same.
#![no_main]

use kubeedge_proto::stream_tunnel::{ConnectRequest, TunnelFrame};
use libfuzzer_sys::fuzz_target;

const MAX_DATA: usize = 4096;

fuzz_target!(|payload: &[u8]| {
    let Ok(frame) = TunnelFrame::decode(payload, MAX_DATA) else {
        return;
    };
    assert!(frame.data.len() <= MAX_DATA);
    assert_eq!(TunnelFrame::decode(&frame.encode(), MAX_DATA).unwrap(), frame);
    if frame.kind.is_connect()
        && let Ok(request) = ConnectRequest::from_json(&frame.data)
    {
        let _ = request.url.query_pairs();
        let json = request.to_json().unwrap();
        assert_eq!(ConnectRequest::from_json(&json).unwrap(), request);
    }
});
