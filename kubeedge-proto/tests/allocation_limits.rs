//! The decoders' size limits hold for memory, not just for results: with the global allocator
//! capped a little above what is already allocated, hostile input that announces or sends far
//! more than the limit is refused without the allocation ever being attempted. An allocation
//! over the cap aborts this test process, so a broken limit fails the test.
//!
//! This file holds a single test so that no other test allocates concurrently.

use std::alloc::System;

use bytes::{BufMut, Bytes, BytesMut};
use cap::Cap;
use kubeedge_proto::frame::{BinaryFrameCodec, FrameHeader, PACKER_VERSION, TYPE_MESSAGE};
use kubeedge_proto::json_lines::JsonLinesCodec;
use kubeedge_proto::{Error, Message};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Runs `f` with at most `budget` bytes of new allocations allowed.
fn with_budget<T>(budget: usize, f: impl FnOnce() -> T) -> T {
    ALLOCATOR.set_limit(ALLOCATOR.allocated() + budget).unwrap();
    let out = f();
    ALLOCATOR.set_limit(usize::MAX).unwrap();
    out
}

#[test]
fn hostile_sizes_are_refused_within_a_small_memory_budget() {
    const MAX: usize = 64 * 1024;
    const BUDGET: usize = 256 * 1024;

    // 1. A binary frame header announcing 4 GiB.
    let mut buf = BytesMut::with_capacity(64);
    FrameHeader {
        version: PACKER_VERSION,
        frame_type: TYPE_MESSAGE,
        flags: 0,
        payload_len: u32::MAX,
    }
    .write(&mut buf);
    let mut frames = BinaryFrameCodec::new(MAX);
    let err = with_budget(BUDGET, || frames.decode_from(&mut buf).unwrap_err());
    assert!(matches!(err, Error::TooLarge { what: "frame", .. }));

    // 2. A 16 MiB JSON message against a 64 KiB limit: refused before parsing.
    let big = Bytes::from(vec![b'['; 16 * 1024 * 1024]);
    let err = with_budget(BUDGET, || {
        Message::decode_json(big.clone(), MAX).unwrap_err()
    });
    assert!(matches!(
        err,
        Error::TooLarge {
            what: "message",
            ..
        }
    ));

    // 3. An endless line with no newline, streamed in 8 KiB reads: the codec gives up once the
    //    line passes the limit, so the buffer never grows past limit + one read.
    let chunk = vec![b'a'; 8 * 1024];
    let mut lines = JsonLinesCodec::new(MAX);
    let mut buf = BytesMut::with_capacity(MAX + 2 * chunk.len());
    let failed = with_budget(BUDGET, || {
        for _ in 0..4096 {
            buf.put_slice(&chunk);
            match lines.decode_from(&mut buf) {
                Ok(None) => continue,
                Ok(Some(_)) => panic!("decoded garbage"),
                Err(e) => return Some(e),
            }
        }
        None
    });
    assert!(matches!(
        failed,
        Some(Error::TooLarge {
            what: "message",
            ..
        })
    ));

    // 4. Frames that announce just under the limit but never arrive reserve at most the limit.
    let mut buf = BytesMut::with_capacity(64);
    FrameHeader {
        version: PACKER_VERSION,
        frame_type: TYPE_MESSAGE,
        flags: 0,
        payload_len: (MAX - 1) as u32,
    }
    .write(&mut buf);
    let mut frames = BinaryFrameCodec::new(MAX);
    let pending = with_budget(MAX + BUDGET, || frames.decode_from(&mut buf).unwrap());
    assert!(pending.is_none());
}
