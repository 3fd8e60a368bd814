//! # kubeedge-edged
//!
//! The pod runtime of kubeedge-rs: a pod sync loop over CRI (containerd), with restart policy,
//! probes, volumes, pod and node status, that restarts pods from the local store while the cloud is
//! unreachable.
//!
//! ## Features
//!
//! - `cri` (default): [`CriRuntime`], the [`PodRuntime`] over containerd's CRI (gRPC on a unix
//!   socket); brings in `tonic` and `prost`.

#[cfg(feature = "cri")]
pub mod cri;
mod edged;
mod error;
pub mod pod_spec;
pub mod pod_status;
pub mod pod_worker;
pub mod probe;
pub mod quantity;
pub mod runtime;
pub mod volumes;

pub use edged::{Edged, EdgedConfig, EdgedHandle};
pub use error::{Error, Result};
pub use runtime::PodRuntime;

#[cfg(feature = "cri")]
pub use cri::CriRuntime;
