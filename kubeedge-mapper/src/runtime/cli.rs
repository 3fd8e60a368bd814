//! The command line every mapper binary shares ([`MapperOptions`]).

use std::path::PathBuf;
use std::time::Duration;

use super::{DEFAULT_BROKER, MapperConfig, MapperRuntime, MqttTarget, ReportTarget};
use crate::driver::DeviceDriver;
use crate::error::{Error, Result};

/// A mapper's command line: where devices come from, where reports go.
///
/// ```
/// use kubeedge_mapper::runtime::{MapperOptions, ReportTarget};
///
/// let options = MapperOptions::parse("modbus",
///     ["--devices", "/etc/kubeedge/devices", "--broker", "tcp://10.0.0.5:1883"]).unwrap();
/// assert_eq!(options.devices, ["/etc/kubeedge/devices"].map(std::path::PathBuf::from));
/// assert_eq!(options.config.name, "modbus-mapper");
/// assert!(matches!(options.config.report, ReportTarget::Mqtt(ref m) if m.broker == "tcp://10.0.0.5:1883"));
///
/// let options = MapperOptions::parse("modbus", ["--dmi", "--report", "dmi"]).unwrap();
/// assert_eq!(options.config.mapper_socket.unwrap().to_str(), Some("/etc/kubeedge/modbus-mapper.sock"));
/// let options = MapperOptions::parse("modbus",
///     ["--dmi", "--property-backoff-max", "5000"]).unwrap();
/// assert_eq!(options.config.property_backoff_max, std::time::Duration::from_secs(5));
/// assert!(MapperOptions::parse("modbus", ["--bogus"]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MapperOptions {
    /// The runtime's configuration.
    pub config: MapperConfig,
    /// Device/DeviceModel YAML files and directories to load.
    pub devices: Vec<PathBuf>,
    /// `--help` was given: print [`MapperOptions::usage`] and exit.
    pub help: bool,
}

impl MapperOptions {
    /// Parses the arguments (without the program name) of a mapper for `protocol`.
    pub fn parse<I, S>(protocol: &str, args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = MapperConfig::new(format!("{protocol}-mapper"), protocol);
        let mut devices = Vec::new();
        let mut dmi = false;
        let mut socket = None;
        let mut report_dmi = false;
        let mut broker = DEFAULT_BROKER.to_owned();
        let mut help = false;
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = |what: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| Error::config(format!("{flag} needs {what}")))
            };
            match flag.as_str() {
                "-h" | "--help" => help = true,
                "--name" => config.name = value("a name")?,
                "--devices" | "-d" => devices.push(PathBuf::from(value("a file or directory")?)),
                "--dmi" => dmi = true,
                "--socket" => {
                    socket = Some(PathBuf::from(value("a socket path")?));
                    dmi = true;
                }
                "--edgecore-socket" => {
                    config.edgecore_socket = PathBuf::from(value("a socket path")?);
                }
                "--broker" => broker = value("an address")?,
                "--report" => {
                    report_dmi = match value("mqtt or dmi")?.as_str() {
                        "mqtt" => false,
                        "dmi" => true,
                        other => {
                            return Err(Error::config(format!(
                                "--report {other:?}: expected mqtt or dmi"
                            )));
                        }
                    }
                }
                "--timeout" | "--backoff-max" | "--property-backoff-max" => {
                    let ms: u64 = value("milliseconds")?
                        .parse()
                        .map_err(|_| Error::config(format!("{flag}: expected milliseconds")))?;
                    let ms = Duration::from_millis(ms.max(1));
                    match flag.as_str() {
                        "--timeout" => config.operation_timeout = ms,
                        "--backoff-max" => config.backoff_max = ms,
                        _ => config.property_backoff_max = ms,
                    }
                }
                other => {
                    return Err(Error::config(format!(
                        "unknown argument {other:?} (see --help)"
                    )));
                }
            }
        }
        if dmi {
            config.mapper_socket =
                Some(socket.unwrap_or_else(|| {
                    PathBuf::from(format!("/etc/kubeedge/{}.sock", config.name))
                }));
        }
        config.report = if report_dmi {
            ReportTarget::Dmi
        } else {
            ReportTarget::Mqtt(MqttTarget::new(broker))
        };
        if !help && devices.is_empty() && !dmi {
            return Err(Error::config(
                "no devices: give --devices PATH, or --dmi to get them from edgecore",
            ));
        }
        Ok(Self {
            config,
            devices,
            help,
        })
    }

    /// The help text for `program`.
    pub fn usage(program: &str, protocol: &str) -> String {
        format!(
            "usage: {program} [--devices PATH]... [--dmi] [options]

A KubeEdge {protocol} mapper: polls each device property at its collectCycle, reports at its
reportCycle to the device twin, writes desired values to the devices.

devices:
  -d, --devices PATH        Device/DeviceModel YAML file or directory (repeatable)
      --dmi                 serve DMI and register with edgecore, which sends the devices
      --socket PATH         this mapper's DMI socket (default /etc/kubeedge/<name>.sock;
                            implies --dmi)
      --edgecore-socket PATH
                            edgecore's DMI socket (default /etc/kubeedge/dmi.sock)
reports:
      --report mqtt|dmi     twin/update over MQTT (default) or DMI ReportDeviceStatus
      --broker URL          MQTT broker (default {DEFAULT_BROKER})
other:
      --name NAME           mapper name (default {protocol}-mapper)
      --timeout MS          limit of each device operation and report (default 10000)
      --backoff-max MS      longest pause between probes of an unreachable device
                            (default 30000)
      --property-backoff-max MS
                            longest pause before a property whose reads fail is read
                            again (default 60000)
  -h, --help                this text
"
        )
    }

    /// A runtime with these options, `factory` making each device's driver, and the YAML
    /// devices loaded; the errors are those of [`MapperRuntime::load_yaml`].
    pub fn into_runtime<D: DeviceDriver>(
        self,
        factory: impl Fn(&super::DeviceInstance) -> Result<D> + Send + Sync + 'static,
    ) -> (MapperRuntime<D>, Vec<Error>) {
        let mut runtime = MapperRuntime::new(self.config, factory);
        let errors = runtime.load_yaml(&self.devices);
        (runtime, errors)
    }
}
