//! # kubeedge-hub
//!
//! The cloud-edge transport of kubeedge-rs, wire-compatible with KubeEdge's CloudHub and
//! EdgeHub: one TLS WebSocket per edge node carrying KubeEdge messages as JSON text frames.
//!
//! - [`CloudHub`]: the server. Client certificates are required and verified against the
//!   cluster CA; the node's identity is its certificate's `CN=system:node:<node>`, and the
//!   `node_id` header must name the same node (KubeEdge only logs a mismatch). KubeEdge's upgrade
//!   headers are honoured (`ConnectionUse: msg`, `node_id`, `project_id`; the path is not
//!   inspected). One session per node; a new connection replaces the old; a node silent for the
//!   keepalive timeout (30 s) is dropped; handshakes that stall are cut off.
//! - [`EdgeHub`]: the client. Dials with KubeEdge's URL and headers, sends a keepalive every
//!   heartbeat (15 s), reconnects with exponential backoff and jitter.
//! - [`tls`]: rustls configurations for both sides from PEM files.
//! - [`join`]: the cluster CA, certificates and bootstrap tokens of node join.
//! - [`bootstrap`]: node join over HTTPS (KubeEdge's port 10002): the cloud's `/ca.crt`,
//!   `/edge.crt` and `/node/{name}` endpoints, and the edge side that fetches and checks the CA
//!   against its token, asks for a certificate, keeps the files, reuses them after a restart and
//!   rotates them at 70–90 % of their lifetime.
//!
//! - [`ReliableCloud`]: acknowledged cloud-to-edge delivery: per-node queues keyed by object
//!   uid (the newest version replaces an unsent older one), a window of messages in flight,
//!   re-sent with the same `msg_id` until the ACK, across reconnects; capacity as a semaphore,
//!   with [`ToNode`] as a `tower::Service` whose `poll_ready` waits for it.
//! - [`ReliableEdge`]: edge-to-cloud delivery through a
//!   [`MessageJournal`](kubeedge_proto::journal::MessageJournal) (kubeedge-store's SQLite
//!   outbox), sent in a window, confirmed by the cloud's reply, replayed after reconnects and
//!   restarts; [`ReliableEdgeHandle::call`] waits for the reply matched by `parent_msg_id`.
//!   [`ToCloud`] is the link as a `tower::Service`.
//! - Both reliable layers drop duplicates by `msg_id` and answer a duplicate with the reply
//!   already sent; replies never wait for queue room, so an application can answer from its
//!   event loop.
//!
//! Every link has bounded queues both ways, and keeps writing while its application is slow to
//! read (reading pauses instead, and TCP pushes back on the peer). Frames over the size limit,
//! non-JSON frames and binary garbage end only the connection they came on. The edge paces what
//! it writes with a token bucket (KubeEdge's 30 messages/s, bursts of 60).
//!
//! ## Using the two reliable layers
//!
//! ```no_run
//! use std::sync::Arc;
//! use kubeedge_hub::{CloudHub, CloudHubConfig, DeliveryConfig, DeliveryEvent, ReliableCloud};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo(tls: Arc<rustls::ServerConfig>) -> kubeedge_hub::Result<()> {
//! let (hub, raw_handle, raw_events) =
//!     CloudHub::bind(CloudHubConfig::new("0.0.0.0:10000".parse().unwrap(), tls)).await?;
//! let (reliable, cloud, mut events) =
//!     ReliableCloud::new(raw_handle, raw_events, DeliveryConfig::default());
//! let shutdown = CancellationToken::new();
//! tokio::spawn(hub.run(shutdown.clone()));
//! tokio::spawn(reliable.run(shutdown.clone()));
//! while let Some(event) = events.recv().await {
//!     if let DeliveryEvent::Message { node, message } = event {
//!         // ...apply it, then answer from here: replies never wait.
//!         cloud.send(&node, message.ack()).await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## Why each dependency is here
//!
//! - `tokio`, `tokio-util`: the runtime and cancellation of long-running components.
//! - `tokio-tungstenite`: WebSocket framing and the HTTP/1.1 upgrade (KubeEdge uses gorilla).
//! - `rustls`, `tokio-rustls`, `rustls-pki-types` (ring provider): TLS 1.2/1.3 with client
//!   certificates, no OpenSSL.
//! - `x509-parser`: reading the node name out of a client certificate.
//! - `rcgen`, `hmac`, `sha2`, `base64`: the cluster CA, node certificates and join tokens.
//! - `hyper`, `hyper-util`, `http-body-util`: the HTTP/1.1 server and client of node join.
//! - `futures-util`: splitting a WebSocket into sink and stream.
//! - `kubeedge-proto`, `bytes`, `serde`, `serde_json`: the messages carried.
//! - `thiserror`, `tracing`: the crate's error enum and its logs.

mod backoff;
pub mod bootstrap;
mod cloudhub;
mod connections;
mod dedupe;
mod edgehub;
mod error;
pub mod join;
mod limit_log;
mod link;
mod reliable_cloud;
mod reliable_edge;
mod takeover;
pub mod tls;

pub use cloudhub::{CloudEvent, CloudHub, CloudHubConfig, CloudHubHandle, CloudHubStats};
pub use edgehub::{DEFAULT_PROJECT_ID, EdgeEvent, EdgeHub, EdgeHubConfig, EdgeHubHandle, ToCloud};
pub use error::{Error, Result};
pub use link::{LinkEnd, RateLimit};
pub use reliable_cloud::{
    DeliveryConfig, DeliveryEvent, ReliableCloud, ReliableCloudHandle, ToNode, is_ack_tracked,
    object_key,
};
pub use reliable_edge::{ReliableEdge, ReliableEdgeHandle, UpstreamConfig, UpstreamEvent};
pub use takeover::TakeoverLimit;

// bootstrap (node join over HTTPS)
pub use bootstrap::{BootstrapConfig, BootstrapServer, CertPaths, EdgeBootstrap, EdgeCredentials};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
