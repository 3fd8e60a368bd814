//! Heap footprint of a decoded message: the bytes that decoding a captured KubeEdge
//! message adds on top of the frame it came in, for kubeedge-proto and for `serde_json::Value`.
//!
//! Run: `cargo run --release -p kubeedge-proto --features codec --example decode_footprint`

use std::alloc::System;

use cap::Cap;
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

#[path = "../tests/support/capture.rs"]
mod capture;

/// Heap bytes still held by the value `make` returns (the frame itself excluded).
fn retained<T>(make: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATOR.allocated();
    let value = make();
    (ALLOCATOR.allocated() - before, value)
}

fn main() {
    println!("| message | frame bytes | kubeedge-proto retained | serde_json::Value retained |");
    println!("|---|---|---|---|");
    for (name, seq) in [
        ("pod insert", 13),
        ("configmap update", 17),
        ("keepalive", 7),
        ("ACK", 14),
    ] {
        let wire = capture::payload(seq);
        let (ours, msg) =
            retained(|| Message::decode_json(wire.clone(), DEFAULT_MAX_MESSAGE_LEN).unwrap());
        let (theirs, value) =
            retained(|| serde_json::from_slice::<serde_json::Value>(&wire).unwrap());
        println!("| {name} | {} | {ours} B | {theirs} B |", wire.len());
        drop((msg, value));
    }
}
