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

/// Where reports go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Report {
    /// twin/update over MQTT.
    Mqtt,
    /// DMI ReportDeviceStatus.
    Dmi,
}

/// The flags, as clap parses them.
#[derive(Debug, clap::Args)]
struct MapperArgs {
    /// Device/DeviceModel YAML file or directory (repeatable).
    #[arg(short = 'd', long, value_name = "PATH")]
    devices: Vec<PathBuf>,
    /// Serve DMI and register with edgecore, which sends the devices.
    #[arg(long)]
    dmi: bool,
    /// This mapper's DMI socket [default: /etc/kubeedge/<name>.sock]; implies --dmi.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// edgecore's DMI socket [default: /etc/kubeedge/dmi.sock].
    #[arg(long, value_name = "PATH")]
    edgecore_socket: Option<PathBuf>,
    /// Where reports go: twin/update over MQTT, or DMI ReportDeviceStatus.
    #[arg(long, value_enum, default_value = "mqtt")]
    report: Report,
    /// The MQTT broker.
    #[arg(long, value_name = "URL", default_value = DEFAULT_BROKER)]
    broker: String,
    /// The mapper's name [default: <protocol>-mapper].
    #[arg(long)]
    name: Option<String>,
    /// Limit of each device operation and report, in ms [default: 10000].
    #[arg(long, value_name = "MS")]
    timeout: Option<u64>,
    /// Longest pause between probes of an unreachable device, in ms [default: 30000].
    #[arg(long, value_name = "MS")]
    backoff_max: Option<u64>,
    /// Longest pause before a property whose reads fail is read again, in ms
    /// [default: 60000].
    #[arg(long, value_name = "MS")]
    property_backoff_max: Option<u64>,
}

/// The clap command of a mapper for `protocol`, named `program`.
fn command(program: &str, protocol: &str) -> clap::Command {
    use clap::Args;
    MapperArgs::augment_args(clap::Command::new(program.to_owned()).about(format!(
        "A KubeEdge {protocol} mapper: polls each device property at its collectCycle, reports \
         at its reportCycle to the device twin, writes desired values to the devices."
    )))
}

impl MapperOptions {
    /// Parses the arguments (without the program name) of a mapper for `protocol`.
    pub fn parse<I, S>(protocol: &str, args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        use clap::FromArgMatches;
        let program = format!("{protocol}-mapper");
        let argv = std::iter::once(program.clone()).chain(args.into_iter().map(Into::into));
        let matches = match command(&program, protocol).try_get_matches_from(argv) {
            Ok(matches) => matches,
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
                return Ok(Self {
                    config: MapperConfig::new(program, protocol),
                    devices: Vec::new(),
                    help: true,
                });
            }
            Err(e) => return Err(Error::config(e.render().to_string().trim_end())),
        };
        let args =
            MapperArgs::from_arg_matches(&matches).map_err(|e| Error::config(e.to_string()))?;
        let mut config = MapperConfig::new(args.name.unwrap_or(program), protocol);
        let ms = |v: u64| Duration::from_millis(v.max(1));
        if let Some(v) = args.timeout {
            config.operation_timeout = ms(v);
        }
        if let Some(v) = args.backoff_max {
            config.backoff_max = ms(v);
        }
        if let Some(v) = args.property_backoff_max {
            config.property_backoff_max = ms(v);
        }
        if let Some(socket) = args.edgecore_socket {
            config.edgecore_socket = socket;
        }
        let dmi = args.dmi || args.socket.is_some();
        if dmi {
            let socket = args.socket;
            config.mapper_socket =
                Some(socket.unwrap_or_else(|| {
                    PathBuf::from(format!("/etc/kubeedge/{}.sock", config.name))
                }));
        }
        config.report = match args.report {
            Report::Dmi => ReportTarget::Dmi,
            Report::Mqtt => ReportTarget::Mqtt(MqttTarget::new(args.broker)),
        };
        if args.devices.is_empty() && !dmi {
            return Err(Error::config(
                "no devices: give --devices PATH, or --dmi to get them from edgecore",
            ));
        }
        Ok(Self {
            config,
            devices: args.devices,
            help: false,
        })
    }

    /// The help text for `program`.
    pub fn usage(program: &str, protocol: &str) -> String {
        command(program, protocol).render_help().to_string()
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
