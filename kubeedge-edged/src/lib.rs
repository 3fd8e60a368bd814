//! # kubeedge-edged
//!
//! A lightweight kubelet for KubeEdge-compatible edge nodes: it runs the pods bound to this node
//! over a container runtime (containerd's CRI), restarts them by their restart policy with
//! crash-loop back-off, runs their probes, materialises their volumes, reports their status, and
//! keeps them running from the local store while the cloud is unreachable.
//!
//! ## How it fits
//! - Desired state is the store: the [`MetaManager`](kubeedge_store::MetaManager) persists what
//!   the cloud sends; [`Edged`] reads the pods with `spec.nodeName` = this node (and the
//!   ConfigMaps and Secrets of their namespaces) from KubeEdge's `meta` table at start, every
//!   [`EdgedConfig::sync_interval`], and at once after [`EdgedHandle::store_changed`].
//! - What a pod needs and the store lacks ([`volumes::pod_needs`]: ConfigMaps and Secrets
//!   created before the pod, which KubeEdge's cloud never pushes; service-account tokens) is
//!   asked of the cloud through the MetaManager's outbox (`query`, as KubeEdge's edge asks),
//!   again with back-off while it does not come; the answers are stored and served locally,
//!   also offline. Tokens are renewed at 80 % of their lifetime and removed with their pod.
//! - Pod status is sent when it changed, again while the cloud's copy disagrees, and again
//!   after every reconnect ([`EdgedHandle::resend_status`]).
//! - Each pod has a worker task ([`pod_worker::PodWorker`]): sandbox, images (`ImageStatus`
//!   first; pulled only when the pull policy says so), containers, restart policy, probes
//!   ([`probe`]), volumes ([`volumes`]), termination with the grace period, and the status
//!   ([`pod_status`]).
//! - Status goes up as KubeEdge's `<ns>/podpatch/<pod>` patch (a JSON string of
//!   `{"metadata":{"uid"},"status"}`) through [`MetaManager::from_edge`](kubeedge_store::MetaManager::from_edge)
//!   into the durable outbox, coalesced per pod; a deleted pod whose containers stopped is
//!   finished with `<ns>/pod/<pod>` `delete` (grace 0, uid precondition).
//! - Offline autonomy: stopping edged leaves pods running; the next start finds sandboxes and
//!   containers again by their labels (restart counts come back from attempt numbers), and only a
//!   pod the store no longer holds is removed. Nothing is deleted because the cloud is away.
//!
//! ## Plugging in another runtime
//! Everything edged asks of a runtime is the [`PodRuntime`] trait: sandboxes, images,
//! containers, exec. [`CriRuntime`] implements it over CRI (`runtime.v1`) for containerd or
//! CRI-O; another runtime (a VM-based one, a runtime driven over its own API) implements the same
//! methods with the types in [`runtime`], labels its sandboxes and containers with the labels
//! it is given (that is how edged finds them after a restart), and is passed to [`Edged::new`].
//! A wrapper that counts calls and delegates the rest shows the shape:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Duration;
//! use kubeedge_edged::Result;
//! use kubeedge_edged::runtime::*;
//!
//! /// Counts container starts, delegating everything to `inner`.
//! struct Counting<R> { inner: R, starts: AtomicU64 }
//!
//! impl<R: PodRuntime> PodRuntime for Counting<R> {
//!     async fn version(&self) -> Result<RuntimeVersion> { self.inner.version().await }
//!     async fn run_sandbox(&self, c: &SandboxConfig) -> Result<String> { self.inner.run_sandbox(c).await }
//!     async fn stop_sandbox(&self, id: &str) -> Result<()> { self.inner.stop_sandbox(id).await }
//!     async fn remove_sandbox(&self, id: &str) -> Result<()> { self.inner.remove_sandbox(id).await }
//!     async fn list_sandboxes(&self) -> Result<Vec<SandboxInfo>> { self.inner.list_sandboxes().await }
//!     async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> { self.inner.sandbox_status(id).await }
//!     async fn image_status(&self, image: &str) -> Result<Option<String>> { self.inner.image_status(image).await }
//!     async fn pull_image(&self, image: &str) -> Result<String> { self.inner.pull_image(image).await }
//!     async fn create_container(&self, sandbox: &str, c: &ContainerConfig, s: &SandboxConfig) -> Result<String> {
//!         self.inner.create_container(sandbox, c, s).await
//!     }
//!     async fn start_container(&self, id: &str) -> Result<()> {
//!         self.starts.fetch_add(1, Ordering::Relaxed);
//!         self.inner.start_container(id).await
//!     }
//!     async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> { self.inner.stop_container(id, grace).await }
//!     async fn remove_container(&self, id: &str) -> Result<()> { self.inner.remove_container(id).await }
//!     async fn list_containers(&self) -> Result<Vec<ContainerInfo>> { self.inner.list_containers().await }
//!     async fn container_status(&self, id: &str) -> Result<ContainerStatus> { self.inner.container_status(id).await }
//!     async fn exec_sync(&self, id: &str, cmd: &[String], t: Duration) -> Result<ExecResult> {
//!         self.inner.exec_sync(id, cmd, t).await
//!     }
//! }
//! ```
//!
//! ## Dependencies
//! `k8s-openapi` (the Pod, ConfigMap, Secret and probe types, decoded from the stored JSON),
//! `kubeedge-store` (the desired pods and the outbox), `tokio` (tasks, timers, sockets for
//! probes), `tonic`/`prost`/`protox` (the CRI client, feature `cri`).
//!
//! ## Features
//!
//! - `cri` (default): [`CriRuntime`], the [`PodRuntime`] over containerd's CRI (gRPC on a unix
//!   socket); brings in `tonic` and `prost`.

#[cfg(feature = "cri")]
pub mod cri;
mod edged;
mod error;
pub mod node_reporter;
pub mod node_status;
pub mod pod_spec;
pub mod pod_status;
pub mod pod_worker;
pub mod probe;
pub mod quantity;
pub mod runtime;
pub mod volumes;

pub use edged::{Edged, EdgedConfig, EdgedHandle};
pub use error::{Error, Result};
pub use node_reporter::{NodeReporter, NodeReporterConfig};
pub use runtime::PodRuntime;

#[cfg(feature = "cri")]
pub use cri::CriRuntime;

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
