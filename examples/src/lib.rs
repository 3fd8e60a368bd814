//! # kubeedge-examples
//!
//! The example binaries (`cloudcore`, `edgecore`, the mappers, `quickstart`, `edge-swarm`,
//! `hub-server`, `kubeedge-frame`) and what they share. `cloudcore` and `edgecore` are wiring
//! over the `kubeedge` facade crate; the end-to-end tests run them as processes.
//!
//! | module | what it holds |
//! |---|---|
//! | [`common`] | the binaries' `main`, logs, signals, `/proc` figures, the open-file limit |
//! | [`mapper_main`] | the `main` every mapper binary shares |

pub mod common;
pub mod mapper_main;
