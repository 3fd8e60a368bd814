//! # kubeedge-cloud
//!
//! The cloud controllers of kubeedge-rs: they turn the Kubernetes API into messages for each
//! edge node and turn what the edge reports back into Kubernetes objects.
//!
//! Status: being written (issue 8).
//!
//! ## Manifest mode (feature `manifest`)
//!
//! Without a cluster, `ManifestSource` reads the objects from a folder of YAML manifests and
//! produces the same [`ObjectEvent`] stream a cluster's watches do, and `ManifestWriter` is the
//! [`ClusterWriter`] that keeps what the edge reports in JSON files under a status folder (the
//! quickstart runs this way). Parsing that YAML is why `serde_yaml_ng` (a maintained fork of
//! `serde_yaml`) is a dependency of the feature.

mod cluster;
mod error;
#[cfg(feature = "manifest")]
mod manifest;
mod object;

pub use cluster::ClusterWriter;
pub use error::{ApiError, Error, Result};
#[cfg(feature = "manifest")]
pub use manifest::{ManifestConfig, ManifestSource, ManifestWriter};
pub use object::{
    DEVICES_API_VERSION, EDGE_NODE_LABEL, Kind, NODE_LEASE_NAMESPACE, Object, ObjectEvent,
    ObjectKey,
};
