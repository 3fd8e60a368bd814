//! # kubeedge-mapper
//!
//! The device side of a KubeEdge-compatible mapper: the [`DeviceDriver`] trait a device maker
//! implements once per kind of device, typed property values, drivers for Modbus TCP/RTU,
//! MQTT devices and line-based serial devices, and the mapper runtime that turns a driver into
//! a mapper.
//!
//! | part | what it is |
//! |---|---|
//! | [`DeviceDriver`] | connect, health, read a property, write a property; `impl Future + Send` methods so a runtime can poll each device from its own task |
//! | [`Value`], [`PropertyType`] | the DeviceModel types (`INT`, `FLOAT`, `DOUBLE`, `STRING`, `BOOLEAN`, `BYTES`, `STREAM`) and the twin's string form of each value, as KubeEdge's mappers write it |
//! | [`PropertySpec`], [`VisitorConfig`] | a property's type and its `visitors: {protocolName, configData}` from a Device, handed to [`DeviceDriver::parse_visitor`] |
//! | [`modbus`] | [`ModbusDriver`](modbus::ModbusDriver): Modbus TCP (tokio) and RTU (tokio-serial) on rmodbus, with KubeEdge's Modbus visitor semantics (register type, offset, limit, scale, isSwap, isRegisterSwap), timeouts, retries, reconnects, RTU timing and CRC checks, typed Modbus exceptions; a simulated Modbus TCP thermostat to test mappers against |
//! | [`mqtt_device`] | [`MqttDeviceDriver`](mqtt_device::MqttDeviceDriver): devices that publish their readings on MQTT topics of their own (rumqttc, plain TCP): the latest message per topic, the whole payload or a [`JsonPath`](mqtt_device::JsonPath) into JSON, `maxAge`; writes published on a command topic, raw or through a [`CommandTemplate`](mqtt_device::CommandTemplate); resubscribes after reconnects; bounded payloads and topics |
//! | [`serial_line`] | [`SerialLineDriver`](serial_line::SerialLineDriver): request/response text sensors on a serial port (tokio-serial): a request with escapes, the answer line up to a delimiter, the value by regex or field; writes through a template with an optional `expect`; one request at a time, bounded lines with resynchronisation, stale input discarded, ports reopened |
//! | [`runtime`] | [`MapperRuntime`](runtime::MapperRuntime): devices from Device/DeviceModel YAML or DMI, a task per device polling at `collectCycle`, reports at `reportCycle` to the twin over MQTT or DMI, `online`/`unhealthy`/`offline` states, failed reads retried with backoff (never given up), desired values written back; [`MapperOptions`](runtime::MapperOptions), the mapper command line |
//! | [`Error`] | one error type; [`Error::is_retryable`] says whether trying again can help |
//!
//! Runnable mappers: the `modbus-mapper`, `mqtt-mapper` and `serial-mapper` binaries of the
//! workspace's examples package (`cargo run -p kubeedge-examples --bin modbus-mapper --
//! --help`: devices from YAML or DMI, MQTT or DMI reports; each is its protocol name and its
//! driver factory over one shared `main`) and `examples/custom_mapper.rs` (Linux sysfs/procfs attributes: the driver
//! is 98 lines).
//!
//! ## Writing a mapper for a new kind of device
//!
//! A device maker writes one [`DeviceDriver`]; the [`runtime`] does the rest: it loads the
//! Devices, polls, reports to the twin, marks devices online, unhealthy and offline, retries
//! failed reads with backoff, writes desired
//! values, and keeps one failing device from delaying the others. Here is a complete mapper
//! for a weather station that speaks a line protocol over TCP (`GET temperature` answers
//! `21.5`; `SET fan 1` answers `OK`), in four steps.
//!
//! **1. The devices.** A DeviceModel types the properties; each Device says where the station
//! is (`spec.protocol.configData`, whatever your driver wants) and which channel each property
//! is (`visitors.configData`). `collectCycle` and `reportCycle` are milliseconds.
//!
//! ```yaml
//! apiVersion: devices.kubeedge.io/v1beta1
//! kind: DeviceModel
//! metadata: {name: station-model}
//! spec:
//!   protocol: weather
//!   properties:
//!     - {name: temperature, type: DOUBLE, accessMode: ReadOnly}
//!     - {name: fan, type: INT, accessMode: ReadWrite}
//! ---
//! apiVersion: devices.kubeedge.io/v1beta1
//! kind: Device
//! metadata: {name: roof-station}
//! spec:
//!   deviceModelRef: {name: station-model}
//!   protocol: {protocolName: weather, configData: {address: "192.168.1.40:7000"}}
//!   properties:
//!     - name: temperature
//!       collectCycle: 1000
//!       reportCycle: 5000
//!       reportToCloud: true
//!       visitors: {protocolName: weather, configData: {channel: temperature}}
//!     - name: fan
//!       reportToCloud: true
//!       desired: {value: "0"}
//!       visitors: {protocolName: weather, configData: {channel: fan}}
//! ```
//!
//! **2. The driver** (steps 2 to 4 are the whole program). One value per device; `&self`
//! methods, so keep the connection behind a lock. Return [`Error`]s that say whether retrying
//! can help: a timeout or lost connection ([`Error::ConnectionLost`], [`Error::Connect`],
//! [`Error::Timeout`]) makes the runtime report the device `offline` and probe it with growing
//! pauses until it answers ([`Error::is_unreachable`]); any other error (a
//! [`Error::Config`], [`Error::Unsupported`], a value that does not parse as its type:
//! [`Value::parse`] gives [`Error::TypeMismatch`]) fails just that property: the device is
//! reported `unhealthy` and the property is read again after growing pauses (logged when it
//! starts failing and when it reads again).
//!
//! **3. The factory**: makes a device's driver from its Device (the runtime calls it for every
//! device it loads, from YAML or from edgecore over DMI).
//!
//! **4. The runtime**: a [`MapperConfig`](runtime::MapperConfig) (name, protocol, where to
//! report: MQTT by default, at `tcp://127.0.0.1:1883`, or DMI), the devices, and `run`.
//!
//! ```no_run
//! use kubeedge_mapper::runtime::{DeviceInstance, MapperConfig, MapperRuntime};
//! use kubeedge_mapper::{DeviceDriver, Error, PropertySpec, Result, Value};
//! use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
//! use tokio::net::TcpStream;
//! use tokio::sync::Mutex;
//! use tokio_util::sync::CancellationToken;
//!
//! /// 2. One station: a connection opened on demand, one request at a time.
//! struct Station {
//!     address: String,
//!     link: Mutex<Option<BufReader<TcpStream>>>,
//! }
//!
//! /// Where a property lives: `configData: {channel: <name>}`.
//! struct Channel {
//!     name: String,
//!     spec: PropertySpec,
//! }
//!
//! impl Station {
//!     /// Sends a line, returns the answer line (at most 256 bytes, within 2 s).
//!     async fn ask(&self, line: String) -> Result<String> {
//!         let mut link = self.link.lock().await;
//!         if link.is_none() {
//!             let stream = TcpStream::connect(&self.address).await.map_err(|e| {
//!                 Error::Connect { target: self.address.clone(), source: e.into() }
//!             })?;
//!             *link = Some(BufReader::new(stream));
//!         }
//!         let stream = link.as_mut().expect("connected above");
//!         let mut answer = String::new();
//!         let exchange = async {
//!             stream.get_mut().write_all(line.as_bytes()).await?;
//!             (&mut *stream).take(256).read_line(&mut answer).await
//!         };
//!         let reason = match tokio::time::timeout(std::time::Duration::from_secs(2), exchange).await {
//!             Ok(Ok(n)) if n > 0 => return Ok(answer.trim_end().to_owned()),
//!             Ok(Ok(_)) => "closed by the station".to_owned(),
//!             Ok(Err(e)) => e.to_string(),
//!             Err(_) => "no answer within 2 s".to_owned(),
//!         };
//!         *link = None; // Out of step: reconnect next time.
//!         Err(Error::ConnectionLost { target: self.address.clone(), reason })
//!     }
//! }
//!
//! impl DeviceDriver for Station {
//!     type Visitor = Channel;
//!
//!     fn parse_visitor(&self, property: &PropertySpec) -> Result<Channel> {
//!         #[derive(serde::Deserialize)]
//!         struct Config {
//!             channel: String,
//!         }
//!         let config: Config = property.visitor.parse()?;
//!         if config.channel.is_empty() || config.channel.contains(char::is_whitespace) {
//!             return Err(Error::Config(format!("bad channel {:?}", config.channel)));
//!         }
//!         Ok(Channel { name: config.channel, spec: property.clone() })
//!     }
//!
//!     async fn connect(&self) -> Result<()> {
//!         self.ask("PING\n".into()).await.map(drop)
//!     }
//!
//!     async fn health(&self) -> Result<()> {
//!         self.connect().await
//!     }
//!
//!     async fn read(&self, channel: &Channel) -> Result<Value> {
//!         let answer = self.ask(format!("GET {}\n", channel.name)).await?;
//!         Value::parse(channel.spec.property_type, &answer) // "21.5" -> Value::Double(21.5)
//!     }
//!
//!     async fn write(&self, channel: &Channel, value: &Value) -> Result<()> {
//!         value.check_type(channel.spec.property_type)?;
//!         match self.ask(format!("SET {} {value}\n", channel.name)).await?.as_str() {
//!             "OK" => Ok(()),
//!             refused => Err(Error::Unsupported(format!("{}: {refused}", channel.name))),
//!         }
//!     }
//! }
//!
//! /// 3. The factory: a Station from the Device's `protocol.configData`.
//! fn station(device: &DeviceInstance) -> Result<Station> {
//!     let address = device.protocol.config_data.get("address").and_then(|a| a.as_str());
//!     let address = address.ok_or_else(|| Error::Config("configData has no address".into()))?;
//!     Ok(Station { address: address.to_owned(), link: Mutex::new(None) })
//! }
//!
//! /// 4. The mapper.
//! #[tokio::main]
//! async fn main() -> Result<()> {
//!     let mut mapper = MapperRuntime::new(MapperConfig::new("weather-mapper", "weather"), station);
//!     for error in mapper.load_yaml(["/etc/kubeedge/devices/weather.yaml"]) {
//!         eprintln!("skipped: {error}"); // names the file, the device and the problem
//!     }
//!     mapper.run(CancellationToken::new()).await
//! }
//! ```
//!
//! That is the whole mapper, in under 100 lines. It publishes
//! `$hw/events/device/default/roof-station/twin/update` with
//! `{"twin":{"temperature":{"actual":{"value":"21.5"},"metadata":{"type":"float"}}}}`
//! every 5 s and `state/update` `online`, `unhealthy` or `offline` when that changes, writes `0` to the fan
//! when it starts and whatever desired value edgecore's `twin/update/delta` carries later. To
//! take devices from edgecore instead of YAML, as KubeEdge runs its mappers, set
//! [`MapperConfig::mapper_socket`](runtime::MapperConfig::mapper_socket) (and
//! `report: ReportTarget::Dmi` to report over DMI too), or start from
//! [`MapperOptions`](runtime::MapperOptions) to get the usual flags (`--devices`, `--dmi`,
//! `--broker`...) as the examples do.
//!
//! To test a driver, run it against the real device, or against a stand-in that speaks its
//! protocol, with a mosquitto broker: `tests/custom_mapper.rs` runs the custom-mapper example
//! that way and checks the twin updates it publishes.
//!
//! ## Reading a Modbus device
//!
//! ```no_run
//! use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
//! use kubeedge_mapper::{DeviceDriver, PropertySpec};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_mapper::Result<()> {
//! let driver = ModbusDriver::new(ModbusConfig::tcp("127.0.0.1:502", 1));
//! let property = PropertySpec::from_json(
//!     "temperature",
//!     "INT",
//!     json!({"protocolName": "modbus",
//!            "configData": {"register": "HoldingRegister", "offset": 2, "limit": 1,
//!                           "scale": 1, "isSwap": false, "isRegisterSwap": false}}),
//! )?;
//! let visitor = driver.parse_visitor(&property)?;
//! match driver.read(&visitor).await {
//!     Ok(value) => println!("reported: {}", value.to_twin_string()),
//!     Err(e) if e.is_retryable() => println!("device unreachable for now: {e}"),
//!     Err(e) => println!("misconfigured: {e}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Writing a driver for another kind of device is shown in the [`driver`] module.
//!
//! ## Feature flags
//!
//! | feature | default | what it adds | dependencies it brings |
//! |---|---|---|---|
//! | (none) | | [`DeviceDriver`], [`Value`], [`PropertyType`], [`PropertySpec`], [`VisitorConfig`], [`Error`]: all a driver author needs | `serde`, `serde_json`, `thiserror`, `base64` |
//! | `modbus` | yes | `modbus`: Modbus TCP/RTU driver, the simulated thermostat | `rmodbus`, `tokio-serial`, `tokio`, `tokio-util`, `tracing` |
//! | `mqtt` | yes | `mqtt_device`: devices that publish on MQTT | `rumqttc`, `bytes`, `tokio`, `tokio-util`, `tracing` |
//! | `serial` | yes | `serial_line`: text sensors on a serial port | `tokio-serial`, `regex`, `tokio`, `tracing` |
//! | `runtime` | yes | `runtime`: the mapper runtime (YAML or DMI devices, polling, MQTT or DMI reports) | `kubeedge-dmi`, `kubeedge-twin` without its store or broker (no SQLite), `kubeedge-proto`, `tonic`, `tokio-stream`, `serde_yaml_ng`, `bytes`, `clap` |
//!
//! A crate that only implements [`DeviceDriver`] for its device depends on
//! `kubeedge-mapper = { version = "0.1", default-features = false }`; the binary that runs it
//! adds `features = ["runtime"]`.
//!
//! ## Dependencies, and why
//!
//! - `serde`, `serde_json`: Device `configData` maps, visitor parsing, JSON payloads.
//! - `thiserror`: the [`Error`] type.
//! - `base64`: `BYTES` values in their twin string form (standard, padded, as Go writes
//!   `[]byte`).
//! - `rmodbus`: builds Modbus request frames and extracts response data (after this crate has
//!   checked each response completely), and answers requests in the simulated thermostat.
//! - `rumqttc` (default features off: plain TCP, no TLS): the MQTT 3.1.1 client of the MQTT
//!   device driver (connect, keep-alive, QoS 1/2 flows, packet size limits).
//! - `tokio-serial` (default features off: no libudev): the RTU and text-line serial ports as
//!   async streams.
//! - `regex`: the serial line driver's `regex` and `expect` (linear-time matching, so a
//!   hostile answer line cannot make a match take long).
//! - `tokio` (`net`, `time`, `sync`, `io-util`, `rt`, `macros`): TCP connections, per-request
//!   timeouts, the locks that serialise requests on one connection or port, the MQTT driver's
//!   background task.
//! - `tokio-util`: the tokens that stop the runtime and the MQTT driver's background task.
//! - `bytes`: the MQTT driver's cached payloads.
//! - `tracing`: events for devices going offline and back, properties that start and stop
//!   failing, refused desired values, reconnects, retries and resynchronised serial lines.
//! - `kubeedge-proto`: the twin and state payloads, the DMI messages, device ids.
//! - `kubeedge-dmi`: the DMI gRPC service code and unix-socket channel, the CRD <-> DMI
//!   conversions and the twin topic helpers, so that a mapper and the edge agree on every byte.
//! - `kubeedge-twin` (default features off: no store, no broker): the MQTT client with
//!   reconnect and resubscribe (the one edge nodes use) and the bounded ingress queue.
//! - `tonic`, `tokio-stream`: the mapper's own DMI server (`DeviceMapperService`) on a unix
//!   socket.
//! - `serde_yaml_ng`: Device and DeviceModel YAML files.
//! - `clap` (feature `runtime`): the mapper command line, [`MapperOptions`](runtime::MapperOptions).

#[cfg(any(feature = "modbus", feature = "mqtt", feature = "serial"))]
mod config_data;
pub mod driver;
mod error;
#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "mqtt")]
pub mod mqtt_device;
mod property_type;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "serial")]
pub mod serial_line;
#[cfg(any(feature = "modbus", feature = "serial"))]
mod serial_port;

pub use driver::{DeviceDriver, PropertySpec, PropertyType, Value, VisitorConfig};
pub use error::{Error, Result};

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctest;
