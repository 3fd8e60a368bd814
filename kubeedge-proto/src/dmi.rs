//! KubeEdge Device Management Interface (DMI), API version `v1beta1`.
//!
//! DMI is the gRPC API between edgecore and *mappers*, the per-protocol
//! processes that talk to physical devices (Modbus, OPC UA, ...). It replaces
//! the older MQTT-only device twin path for device lifecycle management.
//! Both directions run over unix domain sockets with insecure gRPC:
//!
//! - **`DeviceManagerService`** is served by **edgecore** (its device twin
//!   module) on [`DEFAULT_EDGECORE_SOCKET`] (`/etc/kubeedge/dmi.sock`; the
//!   directory is `modules.deviceTwin.dmiSockPath` in `edgecore.yaml`).
//!   Mappers call `MapperRegister` when they start, then `ReportDeviceStatus`
//!   (twin values, turned into `/twin/update` events) and
//!   `ReportDeviceStates` (connection state, turned into `/state/update`
//!   events).
//! - **`DeviceMapperService`** is served by **each mapper** on its own socket
//!   (by convention `/etc/kubeedge/<mapper name>.sock`, announced in
//!   [`MapperInfo::address`]). edgecore calls `RegisterDevice`,
//!   `RemoveDevice`, `UpdateDevice`, `CreateDeviceModel`, `RemoveDeviceModel`,
//!   `UpdateDeviceModel` and `GetDevice` to keep the mapper in sync with the
//!   cloud.
//!
//! This module contains only the protobuf message types (generated with
//! prost from `proto/dmi/v1beta1/api.proto`, wire-compatible with KubeEdge's
//! `apis/dmi/v1beta1/api.proto`); gRPC client and server code lives
//! elsewhere. Map fields are [`BTreeMap`](std::collections::BTreeMap)s, so
//! encoding is deterministic.
//!
//! Free-form protocol settings ([`CustomizedValue`]) are maps of
//! [`google::protobuf::Any`]; KubeEdge packs each value as one of the wrapper
//! messages in [`google::protobuf`] ([`StringValue`](google::protobuf::StringValue),
//! [`Int32Value`](google::protobuf::Int32Value), ...). Every generated message
//! implements [`prost::Name`], whose `type_url()` gives the
//! `type.googleapis.com/...` URL to put in [`Any::type_url`](google::protobuf::Any::type_url).

/// Default path of edgecore's DMI socket (`DeviceManagerService`).
pub const DEFAULT_EDGECORE_SOCKET: &str = "/etc/kubeedge/dmi.sock";

/// The socket path of a mapper's `MapperInfo.address`: a bare path (what KubeEdge's own
/// mappers announce) or gRPC's `unix://<path>` / `unix:<path>` target form.
///
/// ```
/// use kubeedge_proto::dmi::mapper_socket_path;
///
/// assert_eq!(mapper_socket_path("unix:///etc/kubeedge/modbus.sock"), "/etc/kubeedge/modbus.sock");
/// assert_eq!(mapper_socket_path("/etc/kubeedge/modbus.sock"), "/etc/kubeedge/modbus.sock");
/// ```
pub fn mapper_socket_path(address: &str) -> &str {
    address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address)
}

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    rustdoc::all
)]
mod generated {
    pub mod v1beta1 {
        include!(concat!(env!("OUT_DIR"), "/v1beta1.rs"));
    }

    pub mod google {
        pub mod protobuf {
            include!(concat!(env!("OUT_DIR"), "/google.protobuf.rs"));
        }
    }
}

pub use generated::google;
pub use generated::v1beta1::*;
