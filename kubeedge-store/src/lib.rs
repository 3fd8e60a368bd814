//! # kubeedge-store
//!
//! The edge metadata store of kubeedge-rs: what lets an edge node keep its pods and devices
//! through days without the cloud, across reboots, without ever telling the cloud it stored
//! something it did not.
//!
//! - [`Store`]: one SQLite file compatible with KubeEdge's `edgecore.db` (an existing one opens
//!   and its rows are read), WAL journaling, one writer thread that commits concurrent writes
//!   together (group commit), read-only connections beside it, and an async API that never
//!   blocks the tokio runtime. A write resolves only once it is committed with the configured
//!   [`Durability`].
//! - [`meta`]: KubeEdge's `meta` rows, with upserts that never regress an object to an older
//!   resourceVersion and deletes that check the object's uid.
//! - [`MetaManager`]: KubeEdge's MetaManager rules: persist what the cloud sends, *then* build
//!   the ACK; answer local queries from the store while offline; idempotent by `msg_id` and by
//!   uid + resourceVersion.
//! - [`Outbox`]: edge-to-cloud messages kept until the cloud answers them, replayed in order
//!   after a reconnect or a restart; bounded, with coalescing and an explicit policy when full.
//!
//! ## Using the store and the MetaManager on their own
//!
//! ```no_run
//! use kubeedge_proto::{Message, NodeName};
//! use kubeedge_store::{MetaManager, MetaManagerConfig, Store, StoreConfig};
//!
//! # async fn demo(from_cloud: Message) -> kubeedge_store::Result<()> {
//! let store = Store::open(StoreConfig::new("/var/lib/kubeedge-rs/edge.db"))?;
//! let node = NodeName::new("edge-node-1")?;
//! let meta = MetaManager::new(store, MetaManagerConfig::new(node));
//!
//! // A message from the cloud: stored first, then the ACK is handed back to send.
//! let outcome = meta.from_cloud(from_cloud).await?;
//! if let Some(ack) = outcome.ack {
//!     // hub.send(ack).await
//! }
//! if let Some(local) = outcome.forward {
//!     // deliver to edged or to the device twin, by local.target
//! }
//! # Ok(()) }
//! ```
//!
//! ## Why each dependency is here
//!
//! - `rusqlite` (with `bundled`): SQLite, compiled in, so no system library is needed and every
//!   node runs the same SQLite.
//! - `tokio` (`sync`, `rt`): oneshot/mpsc channels to the writer thread, and `spawn_blocking`
//!   for reads, so async callers never block.
//! - `kubeedge-proto`: the messages stored, acknowledged and queued.
//! - `serde`, `serde_json`, `bytes`: reading object metadata and message JSON.
//! - `tracing`: the outbox's full-policy decisions and commit failures are logged.
//! - `thiserror`: the crate's one error enum.

mod error;
pub mod meta;
mod metamanager;
mod outbox;
mod schema;
mod store;
pub mod tokens;

pub use error::{Error, Result};
pub use metamanager::{
    CloudOutcome, EdgeOutcome, Forward, LocalTarget, MetaManager, MetaManagerConfig,
};
pub use outbox::{FullPolicy, Outbox, Pending, Pushed, Staged};
pub use schema::SCHEMA_VERSION;
pub use store::{Durability, Store, StoreConfig};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
