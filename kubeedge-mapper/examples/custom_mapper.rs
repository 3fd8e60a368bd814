//! A custom mapper for a kind of device no built-in driver covers: Linux sysfs and procfs
//! attributes (thermal zones, hwmon sensors, LEDs, backlights, `/proc/loadavg`...). Each
//! property is one file under the device's root directory, or one whitespace-separated field
//! of it, optionally scaled; writable attributes take desired values. The driver is the
//! `SysfsDriver` below: one `DeviceDriver` implementation, nothing else.
//!
//! ```yaml
//! apiVersion: devices.kubeedge.io/v1beta1
//! kind: DeviceModel
//! metadata: {name: board-model}
//! spec:
//!   protocol: sysfs
//!   properties:
//!     - {name: cpu-temperature, type: DOUBLE, accessMode: ReadOnly}
//!     - {name: status-led, type: INT, accessMode: ReadWrite}
//! ---
//! apiVersion: devices.kubeedge.io/v1beta1
//! kind: Device
//! metadata: {name: board-1}
//! spec:
//!   deviceModelRef: {name: board-model}
//!   protocol: {protocolName: sysfs, configData: {root: /sys}}
//!   properties:
//!     - name: cpu-temperature
//!       collectCycle: 2000
//!       reportCycle: 10000
//!       reportToCloud: true
//!       visitors:
//!         protocolName: sysfs
//!         configData: {path: class/thermal/thermal_zone0/temp, scale: 0.001}
//!     - name: status-led
//!       reportToCloud: true
//!       visitors: {protocolName: sysfs, configData: {path: class/leds/status/brightness}}
//! ```
//!
//! ```sh
//! cargo run -p kubeedge-mapper --example custom_mapper -- --devices board.yaml
//! ```

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use kubeedge_mapper::runtime::{DeviceInstance, MapperOptions};
use kubeedge_mapper::{
    DeviceDriver, Error, PropertySpec, PropertyType, Result, Value, VisitorConfig,
};
use tokio_util::sync::CancellationToken;

/// A device whose properties are files under `root`.
pub struct SysfsDriver {
    root: PathBuf,
}

/// A property's file, field and scale.
pub struct Attribute {
    path: PathBuf,
    field: Option<usize>,
    scale: Option<f64>,
    property_type: PropertyType,
}

#[derive(serde::Deserialize)]
struct Config {
    root: Option<PathBuf>,
    path: Option<PathBuf>,
    field: Option<usize>,
    scale: Option<f64>,
}

impl SysfsDriver {
    /// The driver of a Device whose `protocol.configData` has `root` (default `/sys`).
    pub fn from_device(device: &DeviceInstance) -> Result<Self> {
        let config: Config = VisitorConfig::new("", device.protocol.config_data.clone()).parse()?;
        let root = config.root.unwrap_or_else(|| PathBuf::from("/sys"));
        Ok(Self { root })
    }

    /// The root gone means the device is gone (unplugged: retry); a missing or read-only
    /// attribute of a present device is a configuration error (the property is skipped).
    fn io_error(&self, path: &Path, e: std::io::Error) -> Error {
        let reason = format!("{}: {e}", path.display());
        if self.root.exists() {
            return Error::Config(reason);
        }
        let target = self.root.display().to_string();
        Error::ConnectionLost { target, reason }
    }
}

impl DeviceDriver for SysfsDriver {
    type Visitor = Attribute;

    /// `configData: {path: <relative to root>, field: <n>, scale: <x>}`.
    fn parse_visitor(&self, property: &PropertySpec) -> Result<Attribute> {
        let config: Config = property.visitor.parse()?;
        let path = config.path.unwrap_or_default();
        let inside = path.components().all(|c| matches!(c, Component::Normal(_)));
        if !inside || path.as_os_str().is_empty() {
            return Err(Error::Config(format!("path {path:?} outside the root")));
        }
        Ok(Attribute {
            path: self.root.join(path),
            field: config.field,
            scale: config.scale,
            property_type: property.property_type,
        })
    }

    async fn connect(&self) -> Result<()> {
        self.health().await
    }

    /// Reachable while the root exists (a USB sensor's directory goes when it is unplugged).
    async fn health(&self) -> Result<()> {
        let exists = std::fs::metadata(&self.root).map(drop);
        exists.map_err(|e| self.io_error(&self.root, e))
    }

    /// Sysfs reads are quick; a driver for slow attributes would use `spawn_blocking`.
    async fn read(&self, a: &Attribute) -> Result<Value> {
        let mut text = String::new();
        let file = std::fs::File::open(&a.path);
        let read = file.and_then(|f| f.take(4096).read_to_string(&mut text));
        read.map_err(|e| self.io_error(&a.path, e))?;
        let token = match a.field {
            Some(i) => text.split_whitespace().nth(i).unwrap_or_default(),
            None => text.trim(),
        };
        match (a.scale, token.parse::<f64>(), a.property_type) {
            (Some(s), Ok(raw), PropertyType::Int) => Ok(Value::Int((raw * s).round() as i64)),
            (Some(s), Ok(raw), PropertyType::Float) => Ok(Value::Float((raw * s) as f32)),
            (Some(s), Ok(raw), PropertyType::Double) => Ok(Value::Double(raw * s)),
            _ => Value::parse(a.property_type, token),
        }
    }

    /// Writes the value as the twin spells it (`1`, `21.5`, `true`).
    async fn write(&self, a: &Attribute, value: &Value) -> Result<()> {
        value.check_type(a.property_type)?;
        if a.field.is_some() || a.scale.is_some() {
            return Err(Error::Unsupported("writing a field or scaled value".into()));
        }
        let written = std::fs::write(&a.path, format!("{value}\n"));
        written.map_err(|e| self.io_error(&a.path, e))
    }
}

/// The mapper: parses `args`, loads the devices and runs until `shutdown`.
pub async fn run_mapper(args: Vec<String>, shutdown: CancellationToken) -> ExitCode {
    let options = match MapperOptions::parse("sysfs", args) {
        Ok(options) if options.help => {
            print!("{}", MapperOptions::usage("custom_mapper", "sysfs"));
            return ExitCode::SUCCESS;
        }
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}\n\n{}", MapperOptions::usage("custom_mapper", "sysfs"));
            return ExitCode::from(2);
        }
    };
    let (runtime, errors) = options.into_runtime(SysfsDriver::from_device);
    for e in &errors {
        eprintln!("skipped: {e}");
    }
    match runtime.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custom_mapper: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    run_mapper(std::env::args().skip(1).collect(), CancellationToken::new()).await
}
