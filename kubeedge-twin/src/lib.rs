//! # kubeedge-twin
//!
//! The device twin engine of kubeedge-rs (desired and reported values with cloud and edge versions,
//! deltas and documents) and the MQTT EventBus that speaks KubeEdge's `$hw/events/...` topics.
//!
//! Status: not written yet. The twin payload types live in `kubeedge-proto`.
