//! # kubeedge-edged
//!
//! The pod runtime of kubeedge-rs: a pod sync loop over CRI (containerd), with restart policy,
//! probes, volumes, pod and node status, that restarts pods from the local store while the cloud is
//! unreachable.

mod error;
pub mod node_status;
pub mod probe;
pub mod runtime;
pub mod volumes;

pub use error::{Error, Result};
pub use runtime::PodRuntime;
