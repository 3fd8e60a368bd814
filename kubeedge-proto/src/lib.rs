//! # kubeedge-proto
//!
//! The message model of [KubeEdge](https://kubeedge.io), exactly as KubeEdge v1.22/v1.23 puts it
//! on the wire, with no I/O: every other kubeedge-rs crate speaks in these types.
//!
//! - [`Message`] `{header, route, content}` decodes from and encodes to the JSON that cloudcore
//!   and edgecore exchange, byte for byte (Go's key order, `omitempty` rules and HTML escaping);
//!   its [`Content`] stays raw JSON so a relay never re-parses it.
//! - [`Operation`], [`Group`], [`Source`] and [`ResourceType`] name the route; [`Resource`] and
//!   [`CloudResource`] parse resource paths (`default/pod/nginx`, `node/n1/null/node/n1`,
//!   `device/default/thermo/twin/edge_updated`, ...).
//! - [`twin`] and [`device`] hold the device twin, membership and state payloads with KubeEdge's
//!   validation rules; [`ObjectResp`] is the `{"Object","Err"}` reply to edge requests.
//! - [`inventory::Inventory`] is what an edge store holds, sent after each connect so the
//!   cloud sends only the difference.
//! - [`journal::MessageJournal`] is the contract between a transport and the durable outbox
//!   that feeds it (implemented in SQLite by `kubeedge-store`, in memory by
//!   [`journal::MemoryJournal`]).
//! - [`json_lines`] frames messages on a byte stream (one JSON message per line, as gorilla's
//!   `WriteJSON` writes them), and `frame` (feature `binary-frame`) reads and writes viaduct's
//!   binary frame (10-byte header + protobuf message).
//! - [`stream_tunnel`] holds the frames of KubeEdge's stream tunnel (cloudStream/edgeStream:
//!   `kubectl logs`, `exec`, `attach`) and the kubelet requests they carry.
//!
//! Every decoder takes a hard maximum size, checked before anything is allocated for the input,
//! and returns an error for malformed input instead of panicking. The decoders are fuzzed (see
//! `fuzz/` in the repository).
//!
//! ## Feature flags
//!
//! | feature | what it adds | dependencies it pulls |
//! |---|---|---|
//! | `binary-frame` | `frame`: viaduct's binary frame as plain functions | `prost` |
//! | `codec` | `tokio_util::codec` Encoder/Decoder for JSON lines and binary frames (implies `binary-frame`) | `tokio-util`, `prost` |
//! | `dmi` | `dmi`: the DMI v1beta1 protobuf messages exchanged by edgecore and mappers | `prost`; `protox`, `prost-build` at build time |
//!
//! No feature is on by default: a gateway that only needs the message model gets `serde_json`,
//! `bytes` and `uuid` and nothing else.
//!
//! ## Why each dependency is here
//!
//! - `serde`, `serde_json` (with `raw_value`): the JSON model; `RawValue` keeps content bytes
//!   without building a tree.
//! - `bytes`: messages decoded from a shared buffer keep their content as a zero-copy slice.
//! - `uuid`: message ids are UUID v4, as KubeEdge's `google/uuid`.
//! - `base64`: binary content as Go's `encoding/json` writes `[]byte` (standard, padded).
//! - `thiserror`: the crate's one error enum.
//! - `prost` (optional): the protobuf payload of viaduct frames and the DMI types.
//! - `tokio-util` (optional): the `Decoder`/`Encoder` traits that tokio transports frame with.
//! - `protox`, `prost-build` (optional, build time): compile the DMI `.proto` without a system
//!   `protoc`.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod content;
pub mod device;
mod error;
pub mod extensions;
pub mod go_json;
mod go_layout;
pub mod inventory;
pub mod journal;
pub mod json_lines;
mod message;
mod names;
pub mod object_name;
mod object_resp;
mod resource;
pub mod stream_tunnel;
pub mod twin;

#[cfg(feature = "binary-frame")]
pub mod frame;

#[cfg(feature = "dmi")]
pub mod dmi;

pub use content::{Content, ContentKind, ObjectMeta};
pub use error::{Error, QUOTE_LIMIT, Result};
pub use message::{
    DEFAULT_MAX_MESSAGE_LEN, Message, MessageHeader, MessageRoute, new_message_id, now_millis,
    parse_rfc3339, rfc3339_utc,
};
pub use names::{Group, Operation, ResourceType, Source};
pub use object_name::NodeName;
pub use object_resp::ObjectResp;
pub use resource::{
    CloudResource, DeviceEvent, DeviceId, MAX_RESOURCE_LEN, MAX_TOPIC_LEN, Namespace, ObjectRef,
    Resource,
};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
