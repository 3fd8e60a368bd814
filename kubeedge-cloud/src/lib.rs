//! # kubeedge-cloud
//!
//! The cloud controllers of kubeedge-rs: they turn the Kubernetes API into messages for each
//! edge node and turn what the edge reports back into Kubernetes objects.
//!
//! Status: being written (issue 8).

mod cluster;
mod controller;
mod downstream;
mod error;
mod lifecycle;
mod object;
mod refs;
mod upstream;

pub use cluster::ClusterWriter;
pub use controller::{CloudConfig, CloudController, CloudMetrics};
pub use downstream::{Downstream, Outgoing};
pub use error::{ApiError, Error, Result};
pub use lifecycle::{parse_rfc3339, ready_status, unreachable_patch};
pub use object::{
    DEVICES_API_VERSION, EDGE_NODE_LABEL, Kind, NODE_LEASE_NAMESPACE, Object, ObjectEvent,
    ObjectKey,
};
pub use refs::references;
pub use upstream::{
    Action, Decision, decide, merge_twins, object_reply, twin_confirm, write_reply,
};
