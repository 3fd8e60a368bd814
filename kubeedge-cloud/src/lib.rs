//! # kubeedge-cloud
//!
//! The cloud controllers of kubeedge-rs, over the `kube` crate: edge node lifecycle, downstream
//! dispatch of the pods, configmaps and secrets a node needs, status patches upstream, device CRDs
//! and edge join.
//!
//! Status: not written yet.
