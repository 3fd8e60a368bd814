//! # kubeedge-mapper
//!
//! The mapper side of kubeedge-rs: a `DeviceDriver` trait that a device maker implements once, and
//! drivers for Modbus TCP/RTU, MQTT devices and line-based serial devices, run by a mapper runtime
//! that reports to the device twin.
//!
//! Status: not written yet.
