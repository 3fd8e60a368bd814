//! # kubeedge
//!
//! KubeEdge's `edgecore` and `cloudcore` as libraries, wire-compatible with KubeEdge: build an
//! edge node or a cloud from a config file (or in code), swap any part for your own, and drive
//! it as a future on your tokio runtime. The `kube` crate of kubeedge-rs.
//!
//! | | what it is |
//! |---|---|
//! | [`edge::EdgeCore`] | the edge node: EdgeHub, MetaManager (SQLite), edged on a [`PodRuntime`](edged::PodRuntime), the device twin, the MQTT EventBus, the DMI server |
//! | [`cloud::CloudCore`] | the cloud: CloudHub, the join server, the controllers over a [`ClusterSource`](cloud::ClusterSource) and a [`ClusterWriter`](cloud::ClusterWriter) |
//! | [`metrics`] | readings rendered by prometheus-client, served with `/healthz` by hyper |
//! | [`proto`], [`hub`], [`config`], [`fs`], [`store`], [`edged`], [`twin`], [`controllers`] | the crates they are built from, re-exported |
//!
//! ```no_run
//! use kubeedge::config::edgecore::EdgeCoreFile;
//! use kubeedge::edge::EdgeCore;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn run() -> Result<(), kubeedge::Error> {
//! let file = EdgeCoreFile::load("/etc/kubeedge/config/edgecore.yaml".as_ref())?;
//! EdgeCore::builder(file).build()?.run(CancellationToken::new()).await
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `edge` | yes | [`edge::EdgeCore`] (with `edged` and `twin`) |
//! | `edged` | with `edge` | [`edged`] and [`store`]: pods on a container runtime |
//! | `twin` | with `edge` | [`twin`] and [`store`]: devices, the EventBus, the DMI server |
//! | `cloud` | yes | [`cloud::CloudCore`] over an API server (`kube`) or a folder of YAML (`manifest`) |
//! | `kube`, `manifest` | with `cloud` | [`controllers`] with that cluster |
//!
//! ## Dependencies
//! The kubeedge-rs crates are the parts. tokio runs them and tokio-util's `CancellationToken`
//! stops them; rustls names the cloud's certificate; prometheus-client renders the metrics and
//! hyper serves them; thiserror makes [`Error`]; tracing carries the logs.

mod error;
pub mod metrics;

#[cfg(all(feature = "edged", feature = "twin"))]
pub mod edge;

#[cfg(all(feature = "kube", feature = "manifest"))]
pub mod cloud;

pub use error::{Error, Result};

pub use kubeedge_config as config;
pub use kubeedge_fs as fs;
pub use kubeedge_hub as hub;
pub use kubeedge_proto as proto;

#[cfg(any(feature = "kube", feature = "manifest"))]
pub use kubeedge_cloud as controllers;
#[cfg(feature = "edged")]
pub use kubeedge_edged as edged;
#[cfg(any(feature = "edged", feature = "twin"))]
pub use kubeedge_store as store;
#[cfg(feature = "twin")]
pub use kubeedge_twin as twin;

/// The README's example, compiled as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "edge", feature = "cloud"))]
pub struct ReadmeDoctest;

/// The default of a part: what the config file (or settings) describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FromConfig;
