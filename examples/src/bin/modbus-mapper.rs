//! `modbus-mapper`: a KubeEdge Modbus mapper: Modbus TCP and RTU devices from Device/DeviceModel
//! YAML or from edgecore over DMI, reported to the device twin over MQTT or DMI.
//!
//! ```sh
//! # Devices from YAML, reports to the edge's MQTT broker:
//! cargo run -p kubeedge-examples --bin modbus-mapper -- \
//!     --devices /etc/kubeedge/devices --broker tcp://127.0.0.1:1883
//! # As KubeEdge runs its mappers: devices and reports over DMI.
//! cargo run -p kubeedge-examples --bin modbus-mapper -- --dmi --report dmi
//! ```
//!
//! A Device's `spec.protocol.configData` says where the device is (`ip`/`port` or
//! `serialPort`/`baudRate`/..., and `slaveID`), each property's `visitors.configData` which
//! registers hold it (see `kubeedge_mapper::modbus`); `deploy/quickstart/thermostat*.yaml`
//! are a pair for the simulated thermostat of `kubeedge_mapper::modbus::simulated_thermostat`. The process
//! runs until SIGINT or SIGTERM; every few seconds it prints what its devices do (their
//! state, and each property whose reads are failing). Logs go to stderr, filtered by
//! `RUST_LOG` (default `info`).

use std::process::ExitCode;

use kubeedge_examples::mapper_main;
use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};

#[tokio::main]
async fn main() -> ExitCode {
    mapper_main::run("modbus-mapper", "modbus", |device| {
        let config = ModbusConfig::from_protocol_config(&device.protocol.config_data)?;
        Ok(ModbusDriver::new(config))
    })
    .await
}
