//! Helpers shared by the twin's integration tests (the ones other crates' tests need too are
//! in kubeedge-testkit).
#![allow(dead_code, unreachable_pub)]

pub mod recording_mapper;
