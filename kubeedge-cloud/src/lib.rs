//! # kubeedge-cloud
//!
//! The cloud controllers of kubeedge-rs: they turn the Kubernetes API into messages for each
//! edge node and turn what the edge reports back into Kubernetes objects.
//!
//! Status: being written (issue 8).
//!
//! [`crd`] ships the CRD manifests of KubeEdge's device API (`devices.kubeedge.io/v1beta1`).

mod cluster;
pub mod crd;
mod error;
mod object;

pub use cluster::ClusterWriter;
pub use error::{ApiError, Error, Result};
pub use object::{
    DEVICES_API_VERSION, EDGE_NODE_LABEL, Kind, NODE_LEASE_NAMESPACE, Object, ObjectEvent,
    ObjectKey,
};
