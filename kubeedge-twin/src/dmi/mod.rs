//! The DMI v1beta1 gRPC API over unix sockets: the server mappers register with, and the client
//! that pushes devices to them.
//!
//! DMI (device management interface) is how KubeEdge's edgecore and its *mappers* (one process
//! per device protocol: Modbus, OPC UA, ...) talk to each other, in both directions:
//!
//! - [`DmiServer`] serves `DeviceManagerService` on edgecore's socket (default
//!   `/etc/kubeedge/dmi.sock`). Mappers call `MapperRegister` when they start (and get the
//!   devices of their protocol back), `ReportDeviceStatus` with twin values and
//!   `ReportDeviceStates` with connection states. Reports are pushed into the twin engine's
//!   [`Ingress`](crate::Ingress) exactly as the MQTT `twin/update` and `state/update` events they
//!   replace.
//! - [`MapperRegistry`] remembers each protocol's mapper and calls its `DeviceMapperService`
//!   (`RegisterDevice`, `UpdateDevice`, `RemoveDevice`, `CreateDeviceModel`, ...) when the cloud
//!   adds, changes or deletes a Device or DeviceModel
//!   ([`MapperRegistry::apply_meta_message`]).
//! - [`convert`] turns the Kubernetes `Device` / `DeviceModel` JSON into the DMI protobuf
//!   messages, with KubeEdge's rules (model defaults, `configData` values wrapped in
//!   `google.protobuf.Any`).
//!
//! ## Why tonic and prost
//!
//! DMI *is* gRPC: mappers built with KubeEdge's Go mapper-framework speak HTTP/2 gRPC over unix
//! sockets, so wire compatibility needs a real gRPC stack. `tonic` is the maintained gRPC
//! implementation for tokio (client, server and code generation); its `transport` serves any
//! stream of connections, which lets it run on a unix socket without TCP. `prost` encodes the
//! messages; the message types themselves live in `kubeedge_proto::dmi` (shared with every other
//! crate), and [`grpc`] (from `kubeedge-dmi`, with [`convert`] and [`unix_channel`]: the
//! contract mappers share without this crate's store) holds only the service code generated at
//! build time from the same `.proto` file.

#[cfg(feature = "store")]
mod client;
#[cfg(feature = "store")]
mod server;

#[cfg(feature = "store")]
pub use client::{MapperRegistry, mapper_meta_key};
/// The DMI contract this module serves: conversions, the gRPC stubs and the unix-socket
/// channel (from `kubeedge-dmi`).
pub use kubeedge_dmi::{convert, grpc, unix_channel};
#[cfg(feature = "store")]
pub use server::{DmiConfig, DmiServer, RateLimit};
