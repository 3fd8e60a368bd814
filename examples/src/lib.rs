//! # kubeedge-examples
//!
//! The parts the example binaries (`cloudcore`, `edgecore`, the mappers, `quickstart`,
//! `edge-swarm`, `hub-server`, `kubeedge-frame`) are assembled from, kept in a library so that
//! the end-to-end tests drive exactly the code the binaries run.
//!
//! | module | what it holds |
//! |---|---|
//! | [`common`] | flags, logs, signals, the metrics endpoint, the CA in a directory, `/proc` figures |
//! | [`edgecore`] | the edge node: EdgeHub, MetaManager, edged, the twin, the EventBus and the DMI server wired together |

pub mod common;
pub mod edgecore;
pub mod mapper_main;
