//! `mqtt-mapper`: a KubeEdge mapper for devices that publish their readings on MQTT topics of
//! their own (and take commands on one), from Device/DeviceModel YAML or from edgecore over
//! DMI, reported to the device twin over MQTT or DMI.
//!
//! ```sh
//! cargo run -p kubeedge-examples --bin mqtt-mapper -- \
//!     --devices /etc/kubeedge/devices --broker tcp://127.0.0.1:1883
//! ```
//!
//! A Device's `spec.protocol.configData` names the device's broker (`broker: tcp://host:port`,
//! or `ip`/`port`), each property's `visitors.configData` its topic and, optionally, a JSON
//! path into the payload, `maxAge` and a command topic (see `kubeedge_mapper::mqtt_device`).
//! The protocol name is `mqtt`, as for KubeEdge's mapper-framework MQTT mapper. Runs until
//! SIGINT or SIGTERM, printing its devices' states every few seconds; logs go to stderr,
//! filtered by `RUST_LOG` (default `info`).

use std::process::ExitCode;

use kubeedge_examples::mapper_main;
use kubeedge_mapper::mqtt_device::{MqttDeviceConfig, MqttDeviceDriver};

#[tokio::main]
async fn main() -> ExitCode {
    mapper_main::run("mqtt-mapper", "mqtt", |device| {
        let config = MqttDeviceConfig::from_protocol_config(&device.protocol.config_data)?;
        Ok(MqttDeviceDriver::new(config))
    })
    .await
}
