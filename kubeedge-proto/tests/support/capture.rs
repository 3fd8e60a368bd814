//! The captured KubeEdge v1.22.2 WebSocket traffic (`tests/vectors/ws-v1.22.2.jsonl`), shared by
//! the tests, benches and examples of this crate (each includes this file with `#[path]`).

use bytes::Bytes;
use serde_json::Value;

const CAPTURE: &str = include_str!("../vectors/ws-v1.22.2.jsonl");

/// The records of kind `message`, in capture order.
pub(crate) fn message_records() -> Vec<Value> {
    CAPTURE
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("capture record is JSON"))
        .filter(|rec| rec["kind"] == "message")
        .collect()
}

/// The exact payload of message `seq`, without its trailing newline.
pub(crate) fn payload(seq: u64) -> Bytes {
    let rec = message_records()
        .into_iter()
        .find(|r| r["seq"] == seq)
        .expect("seq in capture");
    let text = rec["payload"].as_str().expect("payload is text");
    Bytes::copy_from_slice(text.strip_suffix('\n').unwrap_or(text).as_bytes())
}
