//! # kubeedge-store
//!
//! The edge metadata store of kubeedge-rs: an SQLite database compatible with KubeEdge's
//! `edgecore.db`, the MetaManager rules (persist, then acknowledge; answer local queries) and the
//! durable outbox that keeps edge-to-cloud messages across disconnects and restarts.
//!
//! Status: not written yet.
