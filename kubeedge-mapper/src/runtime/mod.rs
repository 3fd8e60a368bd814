//! The mapper runtime: runs devices through a [`DeviceDriver`], reports to the device twin and
//! writes desired values back, as KubeEdge's mappers do.
//!
//! One [`MapperRuntime`] serves one protocol with one driver type, like KubeEdge's mappers
//! (one process per protocol). It is generic over the driver (the trait's methods return
//! `impl Future`, so it is not object-safe); a factory makes one driver per device from the
//! device's [`DeviceInstance`] (its `spec.protocol.configData`).
//!
//! # Where devices come from
//!
//! - **YAML**: `Device` and `DeviceModel` files ([`MapperRuntime::load_yaml`], or
//!   [`load_yaml`] and [`MapperRuntime::add_device`]); a bad document or device is an
//!   [`Error::InvalidDevice`] naming the file and the device, and the others still run.
//! - **DMI**: with [`MapperConfig::mapper_socket`] set, the runtime serves
//!   `DeviceMapperService` on that unix socket (edgecore calls `RegisterDevice`,
//!   `UpdateDevice`, `RemoveDevice`, `Create/Update/RemoveDeviceModel` and `GetDevice` on it)
//!   and registers with edgecore (`MapperRegister`, `withData: true`, on
//!   [`MapperConfig::edgecore_socket`], retried until edgecore answers), running the devices
//!   edgecore returns.
//! - **Code**: [`RuntimeHandle::add_device`] and [`RuntimeHandle::remove_device`] while it runs.
//!
//! # What each device does
//!
//! Every device runs in its own task with its own driver, so a device that fails or hangs
//! delays no other. The task:
//!
//! - reads each property every `collectCycle` (milliseconds; 1 s when 0), every driver call
//!   bounded by [`MapperConfig::operation_timeout`];
//! - reports every `reportCycle` (milliseconds; 1 s when 0) the values read since the last
//!   report, for the properties with `reportToCloud: true` (KubeEdge reports only those), all
//!   due properties of the device in one message: over MQTT a `twin/update` (QoS 1) with
//!   `actual` values and `metadata.type` ([`twin_value_type`]), over DMI a
//!   `ReportDeviceStatus` with `reported` values ([`ReportTarget`]);
//! - reports the device `online`, `unhealthy` or `offline` (`state/update`, or DMI
//!   `ReportDeviceStates`; KubeEdge's mapper-framework states) whenever that changes: a read
//!   that times out or finds the connection refused or reset ([`Error::is_unreachable`])
//!   makes it offline; it is then probed (connect and one read) after a pause that doubles
//!   from [`MapperConfig::backoff_initial`] to [`MapperConfig::backoff_max`], with jitter, and
//!   comes back when the device answers. A device that drops the connection again soon after
//!   it came back keeps backing off, so one that resets every connection is not spun on;
//! - writes desired values: those in the Device (`desired.value`) when it starts, those of
//!   `twin/update/delta` (MQTT) or of DMI `UpdateDevice`, each distinct value once, to
//!   `ReadWrite` properties only; then reads the property back and reports it at once. A
//!   desired value that does not fit the property type is refused with an error (the device
//!   keeps running).
//!
//! No read error stops polling. Any other read error means the device answered but the
//! property failed: a Modbus exception, a garbled answer, a value that does not fit its
//! type or that the twin cannot hold (KubeEdge's twin values are
//! `[a-zA-Z0-9-_.,:/@#]{1,512}`). The device is then `unhealthy`, the other properties go on,
//! and the failing one is read again after a pause that doubles from its collect cycle up to
//! [`MapperConfig::property_backoff_max`] (at once that cap for a configuration error), with
//! jitter; the twin keeps its last good value. The failure is logged when it starts (WARN)
//! and when the property reads again (INFO), and is shown in [`DeviceStatus`] meanwhile
//! ([`PropertyStatus::error`], [`PropertyStatus::failures`]). KubeEdge's twin has no field for
//! a property's health (edgecore keeps only a reported twin's value), so the wire carries it
//! as the device state only.
//!
//! Every queue is bounded: commands to the runtime, desired values (one per property), the
//! MQTT client's queue (a report waits at most the operation timeout for room). Cancelling
//! the token given to [`MapperRuntime::run`] stops every device task (in-flight driver calls
//! are dropped), the MQTT client and the DMI server (its socket file is removed).
//!
//! # Example
//!
//! ```no_run
//! use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
//! use kubeedge_mapper::runtime::{MapperConfig, MapperRuntime, MqttTarget, ReportTarget};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_mapper::Result<()> {
//! let mut config = MapperConfig::new("modbus-mapper", "modbus");
//! config.report = ReportTarget::Mqtt(MqttTarget::new("tcp://127.0.0.1:1883"));
//! let mut mapper = MapperRuntime::new(config, |device| {
//!     Ok(ModbusDriver::new(ModbusConfig::from_protocol_config(&device.protocol.config_data)?))
//! });
//! for error in mapper.load_yaml(["/etc/kubeedge/devices"]) {
//!     eprintln!("skipped: {error}");
//! }
//! mapper.run(CancellationToken::new()).await
//! # }
//! ```

mod cli;
mod device;
mod dmi;
mod instance;
mod report;
mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kubeedge_proto::device::DeviceState;
use kubeedge_proto::{DeviceId, dmi as pb};
use kubeedge_twin::dmi::grpc::device_manager_service_client::DeviceManagerServiceClient;
use kubeedge_twin::mqtt::{MqttBus, MqttConfig, MqttHandle, MqttMode};
use kubeedge_twin::{Ingress, IngressConfig, IngressReceiver};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cli::MapperOptions;
pub use dmi::DMI_API_VERSION;
pub use instance::{
    AccessMode, DEFAULT_COLLECT_CYCLE, DEFAULT_REPORT_CYCLE, DeviceInstance, DeviceProperty,
    MAX_PROPERTIES, ProtocolConfig,
};
pub use report::twin_value_type;
pub use yaml::{
    API_VERSION, LoadedDevice, LoadedDevices, MAX_DIR_FILES, MAX_DOCUMENTS, MAX_FILE_LEN,
    load_yaml, load_yaml_str,
};

use device::{Counters, DeviceShared, DeviceTask, Timing};
use report::Reporter;

use crate::driver::DeviceDriver;
use crate::error::{Error, Result};

/// KubeEdge's external MQTT broker, where mappers publish by default.
pub const DEFAULT_BROKER: &str = "tcp://127.0.0.1:1883";
/// How long [`MapperRuntime::run`] waits for device tasks, the MQTT client and the DMI server
/// after shutdown before it returns anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How a mapper runs: its identity, where it reports, time limits.
#[derive(Debug, Clone, PartialEq)]
pub struct MapperConfig {
    /// The mapper's name (`MapperInfo.name`, and in its MQTT client id).
    pub name: String,
    /// The protocol it serves (`modbus`...): devices whose `spec.protocol.protocolName` is
    /// another are refused, and edgecore sends it only this protocol's devices.
    pub protocol: String,
    /// Its version (`MapperInfo.version`).
    pub version: String,
    /// Where values and states are reported.
    pub report: ReportTarget,
    /// edgecore's DMI socket, for registration and DMI reports (KubeEdge:
    /// `/etc/kubeedge/dmi.sock`).
    pub edgecore_socket: PathBuf,
    /// The mapper's own DMI socket: when set, `DeviceMapperService` is served there and the
    /// mapper registers with edgecore (KubeEdge's template: `/etc/kubeedge/<name>.sock`).
    pub mapper_socket: Option<PathBuf>,
    /// The longest a driver call (connect, read, write, health), a report or a DMI call may
    /// take (10 s).
    pub operation_timeout: Duration,
    /// The first pause before an unreachable device is probed again (500 ms); it doubles up
    /// to [`MapperConfig::backoff_max`] while the device stays unreachable.
    pub backoff_initial: Duration,
    /// The longest pause between probes of an unreachable device (30 s). It also says how
    /// long a device must stay reachable before a new outage starts again from
    /// [`MapperConfig::backoff_initial`] (a device that drops every connection soon after it
    /// was made is probed ever less often, up to this pause).
    pub backoff_max: Duration,
    /// The longest pause before a property whose reads fail (while the device answers) is
    /// read again (60 s). The pause starts at the property's collect cycle and doubles with
    /// each failure; a configuration error ([`Error::Config`], [`Error::Unsupported`]) waits
    /// this long at once. A good read resets it.
    pub property_backoff_max: Duration,
    /// How often a reachable device's [`DeviceDriver::health`] is checked (10 s).
    pub health_interval: Duration,
    /// How many commands (device changes from DMI or a [`RuntimeHandle`]) may wait (64).
    pub command_capacity: usize,
}

impl MapperConfig {
    /// A mapper named `name` for `protocol`, reporting over MQTT to [`DEFAULT_BROKER`],
    /// without DMI, with the default limits.
    pub fn new(name: impl Into<String>, protocol: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            protocol: protocol.into(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            report: ReportTarget::Mqtt(MqttTarget::new(DEFAULT_BROKER)),
            edgecore_socket: PathBuf::from(pb::DEFAULT_EDGECORE_SOCKET),
            mapper_socket: None,
            operation_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            property_backoff_max: Duration::from_secs(60),
            health_interval: Duration::from_secs(10),
            command_capacity: 64,
        }
    }

    fn timing(&self) -> Timing {
        Timing {
            operation_timeout: self.operation_timeout,
            report_timeout: self.operation_timeout,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max.max(self.backoff_initial),
            property_backoff_max: self.property_backoff_max,
            health_interval: self.health_interval,
        }
    }
}

/// Where a mapper reports property values and device states.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportTarget {
    /// KubeEdge's MQTT topics on the edge's broker: `twin/update` and `state/update`
    /// published, `twin/update/delta` subscribed per device for desired values.
    Mqtt(MqttTarget),
    /// DMI calls on [`MapperConfig::edgecore_socket`]: `ReportDeviceStatus` and
    /// `ReportDeviceStates`. Desired values come with DMI `UpdateDevice`.
    Dmi,
}

/// The MQTT broker a mapper reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTarget {
    /// `tcp://host:port` or `host:port` (plain TCP).
    pub broker: String,
    /// The MQTT client id; empty means `<mapper name>-<pid>-<n>`, unique in the process.
    pub client_id: String,
    /// The pause before reconnecting after the connection dropped (1 s).
    pub reconnect_interval: Duration,
}

impl MqttTarget {
    /// The broker at `broker`, with a generated client id.
    pub fn new(broker: impl Into<String>) -> Self {
        Self {
            broker: broker.into(),
            client_id: String::new(),
            reconnect_interval: Duration::from_secs(1),
        }
    }
}

/// What a device is doing, as [`RuntimeHandle::device_status`] shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    /// `unknown` until the first connect or read; then `offline` while the device does not
    /// answer, `unhealthy` while it answers but some property's reads fail, `online`
    /// otherwise (the state reported to the twin).
    pub state: DeviceState,
    /// By property name.
    pub properties: BTreeMap<String, PropertyStatus>,
    /// Reports delivered (messages).
    pub reports: u64,
    /// The error that last made the device offline.
    pub last_error: Option<String>,
}

impl Default for DeviceStatus {
    fn default() -> Self {
        Self {
            state: DeviceState::Unknown,
            properties: BTreeMap::new(),
            reports: 0,
            last_error: None,
        }
    }
}

/// One property's latest value and problems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyStatus {
    /// The latest good value read, in its twin form (kept while reads fail).
    pub value: Option<String>,
    /// When it was read (ms since the epoch).
    pub timestamp: i64,
    /// The latest read error, cleared by the next good read.
    pub error: Option<String>,
    /// Reads that failed in a row while the device answered; 0 when the last read was good.
    /// The property is read again after a pause that grows with this number (up to
    /// [`MapperConfig::property_backoff_max`]); it is never given up.
    pub failures: u32,
    /// The desired value last written to the device.
    pub desired: Option<String>,
    /// Why the last desired value was not written.
    pub write_error: Option<String>,
}

/// Totals of a runtime since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Devices running.
    pub devices: usize,
    /// Successful property reads.
    pub polls: u64,
    /// Failed property reads.
    pub poll_errors: u64,
    /// Property values reported.
    pub reports: u64,
    /// Reports the edge did not take.
    pub report_errors: u64,
    /// Desired values written.
    pub writes: u64,
    /// Desired values refused or not written.
    pub write_errors: u64,
}

/// Makes a device's driver from its instance (its `protocol.config_data`, typically).
pub type DriverFactory<D> = dyn Fn(&DeviceInstance) -> Result<D> + Send + Sync;

/// The mapper runtime for one driver type; see the [module docs](self).
pub struct MapperRuntime<D: DeviceDriver> {
    config: MapperConfig,
    factory: Arc<DriverFactory<D>>,
    devices: Vec<(String, DeviceInstance)>,
    commands: mpsc::Sender<Command>,
    inbox: mpsc::Receiver<Command>,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
}

impl<D: DeviceDriver> std::fmt::Debug for MapperRuntime<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapperRuntime")
            .field("config", &self.config)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl<D: DeviceDriver> MapperRuntime<D> {
    /// A runtime that makes each device's driver with `factory`.
    pub fn new(
        config: MapperConfig,
        factory: impl Fn(&DeviceInstance) -> Result<D> + Send + Sync + 'static,
    ) -> Self {
        let (commands, inbox) = mpsc::channel(config.command_capacity.max(1));
        Self {
            config,
            factory: Arc::new(factory),
            devices: Vec::new(),
            commands,
            inbox,
            registry: Arc::new(Registry::default()),
            counters: Arc::new(Counters::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MapperConfig {
        &self.config
    }

    /// A handle to change and watch the runtime while it runs.
    pub fn handle(&self) -> RuntimeHandle {
        RuntimeHandle {
            commands: self.commands.clone(),
            registry: Arc::clone(&self.registry),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Adds a device to run when [`MapperRuntime::run`] starts, after checking it: its
    /// protocol is this mapper's, the factory makes its driver, the driver accepts every
    /// property's visitor. A device with the same id replaces the earlier one.
    pub fn add_device(&mut self, device: DeviceInstance) -> Result<()> {
        self.add_checked("mapper", device)
    }

    fn add_checked(&mut self, origin: &str, device: DeviceInstance) -> Result<()> {
        prepare(&self.config, self.factory.as_ref(), origin, &device)?;
        self.devices.retain(|(_, d)| d.id != device.id);
        self.devices.push((origin.to_owned(), device));
        Ok(())
    }

    /// Loads the `Device`s and `DeviceModel`s of YAML files and directories ([`load_yaml`])
    /// and adds the devices of this mapper's protocol ([`MapperRuntime::add_device`]).
    /// Returns an error for each document or device that could not be used, naming the file
    /// and the device; the others are added. Devices of other protocols are skipped quietly
    /// (another mapper's).
    pub fn load_yaml<I, P>(&mut self, paths: I) -> Vec<Error>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<Path>,
    {
        let mut loaded = load_yaml(paths);
        let skipped = loaded.retain_protocol(&self.config.protocol);
        if skipped > 0 {
            tracing::info!(skipped, protocol = %self.config.protocol, "devices of other protocols skipped");
        }
        let mut errors = loaded.errors;
        for LoadedDevice { file, device } in loaded.devices {
            if let Err(e) = self.add_checked(&file.display().to_string(), device) {
                errors.push(e);
            }
        }
        errors
    }

    /// Runs until `shutdown` is cancelled: connects to the MQTT broker or edgecore, serves
    /// and registers over DMI when configured, and runs every device. Fails only when it
    /// cannot start (an MQTT broker address that is not one, a DMI socket it cannot bind);
    /// devices and the edge being unreachable are retried, never fatal.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let Self {
            config,
            factory,
            devices,
            commands,
            mut inbox,
            registry,
            counters,
        } = self;
        let config = Arc::new(config);
        let stop = shutdown.child_token();
        let mut background: Vec<JoinHandle<()>> = Vec::new();

        let needs_edgecore =
            matches!(config.report, ReportTarget::Dmi) || config.mapper_socket.is_some();
        let edgecore = needs_edgecore.then(|| {
            DeviceManagerServiceClient::new(kubeedge_twin::dmi::unix_channel(
                config.edgecore_socket.clone(),
                config.operation_timeout,
                config.operation_timeout,
            ))
        });

        let mut bus = None;
        let mut subscriptions = None;
        let reporter = match &config.report {
            ReportTarget::Dmi => Reporter::Dmi(edgecore.clone().expect("made for DMI reports")),
            ReportTarget::Mqtt(target) => {
                let (ingress, deltas) = Ingress::new(IngressConfig {
                    per_flow: 16,
                    max_flows: 4096,
                });
                let mqtt = start_mqtt(&config, target, ingress, stop.clone()).await?;
                let handle = mqtt.handle();
                bus = Some(mqtt);
                background.push(tokio::spawn(dispatch_deltas(
                    deltas,
                    Arc::clone(&registry),
                    stop.clone(),
                )));
                let (tx, rx) = mpsc::channel(1024);
                background.push(tokio::spawn(manage_subscriptions(
                    handle.clone(),
                    rx,
                    stop.clone(),
                )));
                subscriptions = Some(tx);
                Reporter::Mqtt(handle)
            }
        };

        if let Some(socket) = &config.mapper_socket {
            let listener = dmi::bind(socket).await?;
            background.push(tokio::spawn(dmi::serve(
                listener,
                socket.clone(),
                commands.clone(),
                Arc::clone(&registry),
                config.operation_timeout,
                stop.clone(),
            )));
            background.push(tokio::spawn(dmi::register(
                Arc::clone(&config),
                socket.clone(),
                edgecore.clone().expect("made for DMI registration"),
                commands.clone(),
                stop.clone(),
            )));
        }
        drop(commands);

        let mut supervisor = Supervisor {
            timing: config.timing(),
            config: Arc::clone(&config),
            factory,
            reporter,
            registry,
            counters,
            subscriptions,
            running: HashMap::new(),
            models: HashMap::new(),
            dmi_devices: HashMap::new(),
            stop: stop.clone(),
        };
        for (origin, device) in devices {
            if let Err(e) = supervisor.upsert(&origin, device).await {
                tracing::warn!(error = %e, "device not started");
            }
        }
        tracing::info!(mapper = %config.name, protocol = %config.protocol,
            devices = supervisor.running.len(), "mapper running");

        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                command = inbox.recv() => match command {
                    Some(command) => supervisor.handle(command).await,
                    None => shutdown.cancelled().await,
                },
            }
        }

        tracing::info!(mapper = %config.name, "mapper stopping");
        stop.cancel();
        let tasks: Vec<JoinHandle<()>> = supervisor
            .running
            .drain()
            .map(|(_, r)| r.task)
            .chain(background)
            .collect();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut stuck = 0;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                stuck += 1;
            }
        }
        if let Some(bus) = bus
            && tokio::time::timeout_at(deadline, bus.shutdown())
                .await
                .is_err()
        {
            stuck += 1;
        }
        if stuck > 0 {
            tracing::warn!(stuck, "mapper: tasks still running after shutdown; aborted");
        }
        Ok(())
    }
}

async fn start_mqtt(
    config: &MapperConfig,
    target: &MqttTarget,
    ingress: Ingress,
    stop: CancellationToken,
) -> Result<MqttBus> {
    let mut mqtt = MqttConfig::new(
        MqttMode::External,
        target.broker.clone(),
        kubeedge_twin::mqtt::DEFAULT_INTERNAL_ADDR,
    );
    mqtt.client_id = if target.client_id.is_empty() {
        // Unique per runtime: a broker drops the older of two clients with the same id.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{}-{n}", config.name, std::process::id())
    } else {
        target.client_id.clone()
    };
    mqtt.reconnect_interval = target.reconnect_interval;
    mqtt.request_capacity = 256;
    MqttBus::start(mqtt, Vec::new(), ingress, stop)
        .await
        .map_err(|e| Error::edge(format!("MQTT client for {}", target.broker), e))
}

/// Hands each `twin/update/delta` to its device.
async fn dispatch_deltas(
    mut deltas: IngressReceiver,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    loop {
        let publication = tokio::select! {
            () = stop.cancelled() => return,
            p = deltas.recv() => match p { Some(p) => p, None => return },
        };
        let Some((ns, name)) = report::delta_device(&publication.topic) else {
            continue;
        };
        let Some(shared) = registry.shared_by_name(ns, name) else {
            continue;
        };
        match report::parse_delta(&publication.payload) {
            Ok(desired) => {
                tracing::debug!(device = %shared.id, properties = desired.len(), "twin delta");
                shared.set_desired(desired);
            }
            Err(e) => {
                tracing::warn!(device = %shared.id, error = %e, "malformed twin delta ignored");
            }
        }
    }
}

enum Subscription {
    Add(String),
    Remove(String),
}

/// Subscribes and unsubscribes delta topics in the order devices come and go, so that the
/// supervisor never waits for the MQTT client.
async fn manage_subscriptions(
    mqtt: MqttHandle,
    mut changes: mpsc::Receiver<Subscription>,
    stop: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            () = stop.cancelled() => return,
            c = changes.recv() => match c { Some(c) => c, None => return },
        };
        let result = match &change {
            Subscription::Add(topic) => mqtt.subscribe(topic).await,
            Subscription::Remove(topic) => mqtt.unsubscribe(topic).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "MQTT: subscription change failed");
        }
    }
}

/// Checks a device and makes its driver and visitors.
fn prepare<D: DeviceDriver>(
    config: &MapperConfig,
    factory: &DriverFactory<D>,
    origin: &str,
    device: &DeviceInstance,
) -> Result<(D, Vec<D::Visitor>)> {
    let object = device.object_name();
    let protocol = &device.protocol.protocol_name;
    if !config.protocol.is_empty() && !protocol.eq_ignore_ascii_case(&config.protocol) {
        return Err(Error::invalid_device(
            origin,
            object,
            format!(
                "protocol {protocol:?} is not this mapper's ({:?})",
                config.protocol
            ),
        ));
    }
    let driver = factory(device).map_err(|e| {
        Error::invalid_device(origin, &object, format!("protocol: {}", reason(&e, None)))
    })?;
    let mut visitors = Vec::with_capacity(device.properties.len());
    let mut problems = Vec::new();
    for p in &device.properties {
        match driver.parse_visitor(&p.spec) {
            Ok(v) => visitors.push(v),
            Err(e) => problems.push(format!(
                "property {}: {}",
                p.spec.name,
                reason(&e, Some(&p.spec.name))
            )),
        }
    }
    if !problems.is_empty() {
        return Err(Error::invalid_device(origin, object, problems.join("; ")));
    }
    Ok((driver, visitors))
}

/// An error's text without the `invalid configuration: ` and `property <name>: ` prefixes
/// that the surrounding message already says.
fn reason(e: &Error, property: Option<&str>) -> String {
    let text = match e {
        Error::Config(reason) => reason.clone(),
        other => other.to_string(),
    };
    match property {
        Some(name) => text
            .strip_prefix(&format!("property {name}: "))
            .map(str::to_owned)
            .unwrap_or(text),
        None => text,
    }
}

/// What the DMI server and handles ask the runtime to do.
pub(crate) enum Command {
    Upsert {
        device: Box<DeviceInstance>,
        reply: oneshot::Sender<Result<()>>,
    },
    UpsertDmi {
        device: Box<pb::Device>,
        reply: oneshot::Sender<Result<()>>,
    },
    Remove {
        id: DeviceId,
        reply: oneshot::Sender<bool>,
    },
    Model {
        model: pb::DeviceModel,
        reply: oneshot::Sender<Result<()>>,
    },
    RemoveModel {
        key: String,
        reply: oneshot::Sender<()>,
    },
    Registered {
        devices: Vec<pb::Device>,
        models: Vec<pb::DeviceModel>,
    },
}

/// The running devices, shared with handles, the delta dispatcher and `GetDevice`.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    devices: Mutex<HashMap<DeviceId, (DeviceInstance, Arc<DeviceShared>)>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, (DeviceInstance, Arc<DeviceShared>)>> {
        self.devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, id: &DeviceId) -> Option<(DeviceInstance, Arc<DeviceShared>)> {
        self.lock().get(id).cloned()
    }

    fn shared_by_name(&self, namespace: &str, name: &str) -> Option<Arc<DeviceShared>> {
        let id = DeviceId {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.lock().get(&id).map(|(_, s)| Arc::clone(s))
    }
}

struct Running {
    instance: DeviceInstance,
    shared: Arc<DeviceShared>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Owns the device tasks; every change of the device set goes through it, one at a time.
struct Supervisor<D: DeviceDriver> {
    config: Arc<MapperConfig>,
    timing: Timing,
    factory: Arc<DriverFactory<D>>,
    reporter: Reporter,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    subscriptions: Option<mpsc::Sender<Subscription>>,
    running: HashMap<DeviceId, Running>,
    /// DMI models by `<ns>/<name>`.
    models: HashMap<String, pb::DeviceModel>,
    /// Devices that came over DMI, as they came, by id (to convert again when their model
    /// changes).
    dmi_devices: HashMap<DeviceId, pb::Device>,
    stop: CancellationToken,
}

impl<D: DeviceDriver> Supervisor<D> {
    async fn handle(&mut self, command: Command) {
        match command {
            Command::Upsert { device, reply } => {
                let result = self.upsert("mapper", *device).await;
                let _ = reply.send(result);
            }
            Command::UpsertDmi { device, reply } => {
                let result = self.upsert_dmi(*device).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "DMI: device refused");
                }
                let _ = reply.send(result);
            }
            Command::Remove { id, reply } => {
                let found = self.remove(&id).await;
                let _ = reply.send(found);
            }
            Command::Model { model, reply } => {
                let result = self.model(model).await;
                let _ = reply.send(result);
            }
            Command::RemoveModel { key, reply } => {
                // Devices keep running with the model they were started with (as in
                // KubeEdge); a new device of this model is refused until it comes back.
                self.models.remove(&key);
                let _ = reply.send(());
            }
            Command::Registered { devices, models } => {
                for model in models {
                    self.models.insert(model_key(&model), model);
                }
                for device in devices {
                    if let Err(e) = self.upsert_dmi(device).await {
                        tracing::warn!(error = %e, "DMI: device from MapperRegister refused");
                    }
                }
            }
        }
    }

    async fn upsert_dmi(&mut self, device: pb::Device) -> Result<()> {
        let ns = if device.namespace.is_empty() {
            "default"
        } else {
            &device.namespace
        };
        let model_name = device
            .spec
            .as_ref()
            .map(|s| s.device_model_reference.as_str())
            .unwrap_or_default();
        let key = format!("{ns}/{model_name}");
        let Some(model) = self.models.get(&key) else {
            return Err(Error::invalid_device(
                "DMI",
                format!("Device {ns}/{}", device.name),
                format!("DeviceModel {key} not found (it must be created first)"),
            ));
        };
        let instance = DeviceInstance::from_dmi(&device, model)?;
        let id = instance.id.clone();
        self.upsert("DMI", instance).await?;
        self.dmi_devices.insert(id, device);
        Ok(())
    }

    async fn model(&mut self, model: pb::DeviceModel) -> Result<()> {
        let key = model_key(&model);
        let changed = self.models.get(&key) != Some(&model);
        self.models.insert(key.clone(), model);
        if !changed {
            return Ok(());
        }
        // Restart the DMI devices of this model with its new property types.
        let affected: Vec<pb::Device> = self
            .dmi_devices
            .iter()
            .filter(|(id, d)| {
                let model_name = d.spec.as_ref().map(|s| s.device_model_reference.as_str());
                format!("{}/{}", id.namespace, model_name.unwrap_or_default()) == key
            })
            .map(|(_, d)| d.clone())
            .collect();
        let mut first_error = None;
        for device in affected {
            if let Err(e) = self.upsert_dmi(device).await {
                tracing::warn!(error = %e, "device not restarted with its changed model");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts a device, or replaces the running one with the same id. When only desired
    /// values changed, the running task just gets them.
    async fn upsert(&mut self, origin: &str, instance: DeviceInstance) -> Result<()> {
        let id = instance.id.clone();
        if let Some(running) = self.running.get_mut(&id)
            && running.instance.without_desired() == instance.without_desired()
        {
            let desired: Vec<(String, String)> = instance
                .properties
                .iter()
                .filter(|p| p.access_mode == AccessMode::ReadWrite)
                .filter_map(|p| Some((p.spec.name.clone(), p.desired.clone()?)))
                .collect();
            running.shared.set_desired(desired);
            running.instance = instance.clone();
            self.registry
                .lock()
                .insert(id, (instance, Arc::clone(&running.shared)));
            return Ok(());
        }
        let (driver, visitors) = prepare(&self.config, self.factory.as_ref(), origin, &instance)?;
        let shared = Arc::new(DeviceShared::new(&instance));
        let is_new = match self.running.remove(&id) {
            Some(old) => {
                old.cancel.cancel();
                shared.set_desired(old.shared.pending_desired());
                false
            }
            None => true,
        };
        let task = DeviceTask::new(
            &instance,
            driver,
            visitors,
            Arc::clone(&shared),
            self.reporter.clone(),
            self.timing,
            Arc::clone(&self.counters),
        );
        let cancel = self.stop.child_token();
        let handle = tokio::spawn(task.run(cancel.clone()));
        self.registry
            .lock()
            .insert(id.clone(), (instance.clone(), Arc::clone(&shared)));
        if is_new && let Some(subscriptions) = &self.subscriptions {
            let topic = kubeedge_twin::topic::device_topic(&id, report::TWIN_UPDATE_DELTA);
            let _ = subscriptions.send(Subscription::Add(topic)).await;
        }
        self.running.insert(
            id,
            Running {
                instance,
                shared,
                cancel,
                task: handle,
            },
        );
        Ok(())
    }

    async fn remove(&mut self, id: &DeviceId) -> bool {
        self.dmi_devices.remove(id);
        self.registry.lock().remove(id);
        let Some(running) = self.running.remove(id) else {
            return false;
        };
        running.cancel.cancel();
        tracing::info!(device = %id, "device removed");
        if let Some(subscriptions) = &self.subscriptions {
            let topic = kubeedge_twin::topic::device_topic(id, report::TWIN_UPDATE_DELTA);
            let _ = subscriptions.send(Subscription::Remove(topic)).await;
        }
        true
    }
}

fn model_key(model: &pb::DeviceModel) -> String {
    let ns = if model.namespace.is_empty() {
        "default"
    } else {
        &model.namespace
    };
    format!("{ns}/{}", model.name)
}

/// Changes and watches a running [`MapperRuntime`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RuntimeHandle {
    commands: mpsc::Sender<Command>,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
}

impl RuntimeHandle {
    /// Runs `device` (checked as [`MapperRuntime::add_device`] checks it), replacing a running
    /// device with the same id; when only its desired values differ from the running one's,
    /// they are written and the device keeps running. Waits until the runtime took it
    /// ([`Error::Stopped`] once it has stopped).
    pub async fn add_device(&self, device: DeviceInstance) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Upsert {
                device: Box::new(device),
                reply,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Stops and forgets a device; `false` if it was not running.
    pub async fn remove_device(&self, id: &DeviceId) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Remove {
                id: id.clone(),
                reply,
            })
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// The running devices.
    pub fn devices(&self) -> Vec<DeviceId> {
        let mut ids: Vec<DeviceId> = self.registry.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A running device's instance (as last added or updated).
    pub fn device(&self, id: &DeviceId) -> Option<DeviceInstance> {
        self.registry.get(id).map(|(instance, _)| instance)
    }

    /// A running device's state, latest values and errors.
    pub fn device_status(&self, id: &DeviceId) -> Option<DeviceStatus> {
        self.registry.get(id).map(|(_, shared)| shared.status())
    }

    /// Totals since the runtime was made.
    pub fn stats(&self) -> RuntimeStats {
        let devices = self.registry.lock().len();
        self.counters.snapshot(devices)
    }
}
