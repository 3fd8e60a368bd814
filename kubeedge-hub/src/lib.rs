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
//!
//! Every link has bounded queues both ways: a slow application slows its peer down instead of
//! growing a buffer. Frames over the size limit, non-JSON frames and binary garbage end only the
//! connection they came on.
//!
//! Status: the link layer above. Acknowledged delivery with retransmit, request/response
//! matching, the tower services, the outbox journal replay and the join HTTPS endpoints are being
//! built (issue 4).
//!
//! ## Why each dependency is here
//!
//! - `tokio`, `tokio-util`: the runtime and cancellation of long-running components.
//! - `tokio-tungstenite`: WebSocket framing and the HTTP/1.1 upgrade (KubeEdge uses gorilla).
//! - `rustls`, `tokio-rustls`, `rustls-pki-types` (ring provider): TLS 1.2/1.3 with client
//!   certificates, no OpenSSL.
//! - `x509-parser`: reading the node name out of a client certificate.
//! - `rcgen`, `hmac`, `sha2`, `base64`: the cluster CA, node certificates and join tokens.
//! - `futures-util`: splitting a WebSocket into sink and stream.
//! - `kubeedge-proto`, `bytes`, `serde`, `serde_json`: the messages carried.
//! - `thiserror`, `tracing`: the crate's error enum and its logs.

mod cloudhub;
mod delivery;
mod edgehub;
mod error;
pub mod join;
mod link;
pub mod tls;
mod upstream;

pub use cloudhub::{CloudEvent, CloudHub, CloudHubConfig, CloudHubHandle};
pub use delivery::{
    DeliveryConfig, DeliveryEvent, ReliableCloud, ReliableCloudHandle, ToNode, is_ack_tracked,
};
pub use edgehub::{DEFAULT_PROJECT_ID, EdgeEvent, EdgeHub, EdgeHubConfig, EdgeHubHandle, ToCloud};
pub use error::{Error, Result};
pub use link::{LinkEnd, RateLimit};
pub use upstream::{ReliableEdge, ReliableEdgeHandle, UpstreamConfig, UpstreamEvent};
