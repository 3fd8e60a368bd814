//! # kubeedge-twin
//!
//! The device side of a KubeEdge-compatible edge node: the device twin engine, the MQTT
//! EventBus and the DMI (device management interface) gRPC server. Mappers and applications
//! written for KubeEdge work with it unchanged: the `$hw/events/...` topics, payloads, event
//! ids, error results, deltas and cloud reports are KubeEdge's, checked byte for byte against a
//! capture of a real edgecore (`tests/twin_vectors.rs`).
//!
//! | part | what it does |
//! |---|---|
//! | [`TwinEngine`] | devices, attributes and twins in SQLite (KubeEdge's `device`, `device_attr`, `device_twin` tables); KubeEdge's update and version rules ([`deal`]); results, documents, deltas, state, `get`, membership |
//! | [`eventbus::EventBus`] | routes MQTT to the engine and uploads to the cloud, and the cloud's publish/subscribe to MQTT |
//! | [`mqtt`] | the MQTT client (rumqttc) with reconnect and resubscribe, and the embedded broker (our own, bounded) |
//! | [`dmi`] | the DMI v1beta1 gRPC server on a unix socket, and the client that pushes devices to mappers |
//! | [`ingress`] | the bounded, per-device fair queue every device event waits in |
//!
//! ## Nothing is lost
//!
//! A twin change and its `twin/edge_updated` report to the cloud commit in one SQLite
//! transaction, before the result is published; the report stays in the durable outbox
//! (`kubeedge-store`) until the cloud confirms it, across disconnects and restarts. (KubeEdge
//! drops reports made while disconnected.)
//!
//! ## Embedding the engine behind your own MQTT broker
//!
//! The engine does no network I/O: hand it what your broker received on the device topics and
//! publish what it returns. Reports for the cloud are in the outbox (and in
//! [`Effects::queued`]).
//!
//! ```
//! use kubeedge_proto::{Content, Group, Message, NodeName, Operation, Source};
//! use kubeedge_store::{FullPolicy, Outbox, Store, StoreConfig};
//! use kubeedge_twin::{TwinConfig, TwinEngine};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_twin::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(StoreConfig::new(dir.path().join("edge.db")))?;
//! let outbox = Outbox::new(store.clone(), 10_000, FullPolicy::Reject);
//! let node = NodeName::new("gateway-1")?;
//! let mut twin = TwinEngine::open(store, outbox.clone(), TwinConfig::new(node)).await?;
//!
//! // The cloud makes the device a member of this node (normally through the MetaManager).
//! let membership = Message::new(Source::DeviceController, Group::Twin, Operation::Update,
//!     "membership", Content::from_json(r#"{"event_id":"e","timestamp":1,
//!     "added_devices":[{"id":"default/pump-7","name":"pump-7"}],"removed_devices":null}"#)?);
//! twin.handle_cloud(&membership).await?;
//!
//! // Your broker received a mapper's report...
//! let fx = twin.handle_publication(
//!     "$hw/events/device/default/pump-7/twin/update",
//!     br#"{"event_id":"r1","timestamp":1,"twin":{"rpm":{"actual":{"value":"1450"},"metadata":{"type":"int"}}}}"#,
//! ).await?;
//! // ...publish the result and the document back to it,
//! assert_eq!(fx.publish[0].topic, "$hw/events/device/default/pump-7/twin/update/result");
//! for p in &fx.publish {
//!     // my_broker.publish(&p.topic, &p.payload);
//! #   let _ = p;
//! }
//! // ...and the report to the cloud waits in the outbox until the cloud confirms it.
//! assert_eq!(fx.queued[0].route.resource, "device/default/pump-7/twin/edge_updated");
//! assert_eq!(outbox.len().await?, 1);
//! # Ok(()) }
//! ```
//!
//! ## Dependencies and why
//!
//! - `kubeedge-proto`: the message model and the twin, device and DMI payload types.
//! - `kubeedge-dmi`: the DMI contract (topics, conversions, gRPC stubs) shared with mappers.
//! - `kubeedge-store`, `rusqlite` (feature `store`, default): SQLite (KubeEdge's tables) and the
//!   durable outbox, for the twin engine, the EventBus and the DMI server. Without it the crate
//!   is what a mapper needs: the MQTT client ([`mqtt::MqttBus`]), the [`Ingress`] queue, topics
//!   and conversions.
//! - `rumqttc`: the MQTT client (async, tokio-native, bounded request queue).
//! - feature `embedded-broker` (default, no extra dependency): our own small MQTT 3.1.1 broker
//!   inside the edge process (on rumqttc's packet codec), so a node needs no mosquitto.
//! - `tonic`, `tonic-prost`, `prost`, `tower`, `hyper-util`, `tokio-stream`: the DMI gRPC
//!   server and client over unix sockets (service code generated at build time by
//!   `tonic-prost-build` from the schema parsed by `protox`, so no `protoc` is needed).
//! - `tokio`, `tokio-util`, `bytes`, `serde`, `serde_json`, `base64` (Go encodes `[]byte` fields such as a mapper's address as base64 in JSON), `rusqlite`, `tracing`,
//!   `thiserror`: runtime, cancellation, payloads, SQL and errors.

pub mod deal;
#[cfg(feature = "store")]
mod device_db;
pub mod dmi;
#[cfg(feature = "store")]
pub mod engine;
mod error;
#[cfg(feature = "store")]
pub mod eventbus;
pub mod ingress;
pub mod mqtt;
/// KubeEdge's device and node MQTT topics (from `kubeedge-dmi`).
pub use kubeedge_dmi::topic;

#[cfg(feature = "store")]
pub use device_db::DeviceRecord;
#[cfg(feature = "store")]
pub use dmi::{DmiConfig, DmiServer, MapperRegistry};
#[cfg(feature = "store")]
pub use engine::{Effects, TwinConfig, TwinEngine};
pub use error::{Error, Result};
pub use ingress::{Ingress, IngressConfig, IngressReceiver, Publication};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
