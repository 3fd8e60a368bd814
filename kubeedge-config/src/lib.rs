//! # kubeedge-config
//!
//! What kubeedge-rs's `edgecore` and `cloudcore` read before they start: KubeEdge's
//! `edgecore.yaml` ([`edgecore`]) and `cloudcore.yaml` ([`cloudcore`]) — the parts they act on,
//! with KubeEdge's key names and defaults, so KubeEdge's files load as they are — the cluster
//! CA's files ([`pki`]) and cloudcore's command-line flags
//! ([`cloudcore::CloudCoreFlags`], parsed by clap with the `cli` feature).
//!
//! Every file here is hostile input: reads are bounded, a key with a wrong type or value is an
//! [`Error`] that names it, and nothing panics (the fuzz targets `edgecore_yaml` and
//! `cloudcore_yaml` check that).
//!
//! Dependencies: `kubeedge-proto` (node names), `kubeedge-hub` (certificate paths, the CA,
//! token defaults), `kubeedge-twin` without its broker (EventBus modes and broker addresses),
//! `serde` + `serde_yaml_ng` (the files), `x509-parser` (checking a configured server
//! certificate), `thiserror` and `tracing`; `clap` (feature `cli`) for the flags.
//!
//! ## Features
//! - `cli`: [`cloudcore::CloudCoreFlags`] derives `clap::Args`.

pub mod cloudcore;
pub mod edgecore;
mod error;
pub mod pki;

pub use error::{Error, Result};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
