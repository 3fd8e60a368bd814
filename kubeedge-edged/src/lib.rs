//! # kubeedge-edged
//!
//! The pod runtime of kubeedge-rs: a pod sync loop over CRI (containerd), with restart policy,
//! probes, volumes, pod and node status, that restarts pods from the local store while the cloud is
//! unreachable.
//!
//! Status: not written yet.
