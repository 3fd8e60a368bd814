//! `serial-mapper`: a KubeEdge mapper for text sensors on a serial port (a request line, an
//! answer line), from Device/DeviceModel YAML or from edgecore over DMI, reported to the device
//! twin over MQTT or DMI.
//!
//! ```sh
//! cargo run -p kubeedge-examples --bin serial-mapper -- \
//!     --devices /etc/kubeedge/devices --broker tcp://127.0.0.1:1883
//! ```
//!
//! A Device's `spec.protocol.configData` names the port (`serialPort`, `baudRate`, `dataBits`,
//! `parity`, `stopBits`, as KubeEdge's Modbus RTU devices do), each property's
//! `visitors.configData` its request and how to read the answer (`regex` or `field`), and for
//! writes a template (see `kubeedge_mapper::serial_line`). The protocol name is `serial`. Runs
//! until SIGINT or SIGTERM, printing its devices' states every few seconds; logs go to stderr,
//! filtered by `RUST_LOG` (default `info`).

use std::process::ExitCode;

use kubeedge_examples::mapper_main;
use kubeedge_mapper::serial_line::{SerialLineConfig, SerialLineDriver};

#[tokio::main]
async fn main() -> ExitCode {
    mapper_main::run("serial-mapper", "serial", |device| {
        let config = SerialLineConfig::from_protocol_config(&device.protocol.config_data)?;
        Ok(SerialLineDriver::new(config))
    })
    .await
}
