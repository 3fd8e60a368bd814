//! The `main` every mapper binary shares: KubeEdge's mapper command line
//! ([`MapperOptions`]), the runtime over the protocol's driver, logs, signals, and a status
//! line every few seconds. A mapper binary is its protocol name and its driver factory.

use std::process::ExitCode;
use std::time::Duration;

use kubeedge_mapper::DeviceDriver;
use kubeedge_mapper::runtime::{DeviceInstance, MapperOptions, RuntimeHandle};
use tokio_util::sync::CancellationToken;

use crate::common;

/// Runs the mapper `program` for `protocol` (the Devices' `spec.protocol.protocolName`), making
/// each device's driver with `driver`, until SIGINT or SIGTERM. Exit status: 0 after a signal,
/// 2 for a bad command line, 1 when the runtime fails.
pub async fn run<D, F>(program: &str, protocol: &str, driver: F) -> ExitCode
where
    D: DeviceDriver,
    F: Fn(&DeviceInstance) -> kubeedge_mapper::Result<D> + Send + Sync + 'static,
{
    let options = match MapperOptions::parse(protocol, std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    if options.help {
        print!("{}", MapperOptions::usage(program, protocol));
        return ExitCode::SUCCESS;
    }
    common::init_logs();
    let (runtime, errors) = options.into_runtime(driver);
    for e in &errors {
        eprintln!("skipped: {e}");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(common::cancel_on_signal(shutdown.clone()));
    tokio::spawn(print_status(runtime.handle(), Duration::from_secs(10)));
    match runtime.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
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
