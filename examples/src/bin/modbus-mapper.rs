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
use std::time::Duration;

use kubeedge_examples::common;
use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
use kubeedge_mapper::runtime::{MapperOptions, RuntimeHandle};
use tokio_util::sync::CancellationToken;

const PROGRAM: &str = "modbus-mapper";

#[tokio::main]
async fn main() -> ExitCode {
    let options = match MapperOptions::parse("modbus", std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}\n\n{}", MapperOptions::usage(PROGRAM, "modbus"));
            return ExitCode::from(2);
        }
    };
    if options.help {
        print!("{}", MapperOptions::usage(PROGRAM, "modbus"));
        return ExitCode::SUCCESS;
    }
    common::init_logs();
    let (runtime, errors) = options.into_runtime(|device| {
        let config = ModbusConfig::from_protocol_config(&device.protocol.config_data)?;
        Ok(ModbusDriver::new(config))
    });
    for e in &errors {
        eprintln!("skipped: {e}");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(common::cancel_on_signal(shutdown.clone()));
    tokio::spawn(print_status(runtime.handle(), Duration::from_secs(10)));
    match runtime.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the totals and each device's state every `every`.
async fn print_status(handle: RuntimeHandle, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let stats = handle.stats();
        println!(
            "devices {} polls {} (errors {}) reported {} (errors {}) writes {} (errors {})",
            stats.devices,
            stats.polls,
            stats.poll_errors,
            stats.reports,
            stats.report_errors,
            stats.writes,
            stats.write_errors
        );
        for id in handle.devices() {
            if let Some(status) = handle.device_status(&id) {
                let error = status.last_error.unwrap_or_default();
                println!("  {id}: {} {error}", status.state);
                for (name, p) in status.properties.iter().filter(|(_, p)| p.failures > 0) {
                    let error = p.error.as_deref().unwrap_or_default();
                    println!("    {name}: {} failed reads: {error}", p.failures);
                }
            }
        }
    }
}
