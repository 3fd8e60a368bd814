//! # kubeedge-cloud
//!
//! The cloud controllers of kubeedge-rs: they turn the Kubernetes API into messages for each
//! edge node and turn what the edge reports back into Kubernetes objects.
//!
//! Status: being written (issue 8).
//!
//! ## A real cluster (feature `kube`)
//!
//! [`KubeWriter`] is the [`ClusterWriter`] of a real API server, [`KubeSource`] watches every
//! [`Kind`] and reports [`ObjectEvent`]s, and [`client()`] builds the client from a kubeconfig
//! or the environment. The feature pulls in `kube` (client, watchers and their backoff, rustls
//! with ring), `k8s-openapi` (the API types kube is built on), `http` (the writer's raw
//! requests, so each write is exactly one documented call) and `futures-util` (merging the
//! watch streams).

mod cluster;
mod error;
#[cfg(feature = "kube")]
mod kube_cluster;
mod object;

pub use cluster::ClusterWriter;
pub use error::{ApiError, Error, Result};
#[cfg(feature = "kube")]
pub use kube_cluster::{KubeSource, KubeSourceConfig, KubeWriter, client};
pub use object::{
    DEVICES_API_VERSION, EDGE_NODE_LABEL, Kind, NODE_LEASE_NAMESPACE, Object, ObjectEvent,
    ObjectKey,
};
