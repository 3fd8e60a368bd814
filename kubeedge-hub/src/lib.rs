//! # kubeedge-hub
//!
//! The cloud-edge transport of kubeedge-rs: a CloudHub WebSocket server and an EdgeHub client that
//! carry [KubeEdge](https://kubeedge.io) messages with at-least-once delivery, keepalive, reconnect
//! with backoff, per-node bounded queues and mutual TLS, built as `tower` services and layers.
//!
//! Status: not written yet. The message model it carries lives in `kubeedge-proto`.
