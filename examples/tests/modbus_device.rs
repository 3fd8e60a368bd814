//! The simulated Modbus TCP thermostat (`kubeedge_mapper::modbus::simulated_thermostat`) and the quickstart's
//! thermostat manifests (`deploy/quickstart/thermostat*.yaml`):
//! - raw TCP clients with hand-built frames read and write its registers; a malformed frame,
//!   an oversized length, a slow client or one connection too many closes only that
//!   connection, while the other clients keep working;
//! - kubeedge-mapper's Modbus client reads and writes it, and sees its exceptions;
//! - the manifests pass the Device and DeviceModel CRD schemas with nothing pruned;
//! - the mapper runtime, and the `modbus-mapper` binary, run the manifests against it: the
//!   desired setpoint reaches holding register 0 and the reported temperature moves toward
//!   it, reported over a real mosquitto; when the device answers exception 04 to the
//!   temperature's reads, the binary keeps polling it (with backoff), keeps reporting the
//!   setpoint, reports the device `unhealthy`, and reports the temperature and `online` again
//!   once the device answers.
//!
//! Every wait is bounded by `kubeedge_testkit::DEADLINE`; nothing asserts how long a step
//! takes. Network on 127.0.0.1 only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use kubeedge_mapper::Error;
use kubeedge_mapper::modbus::simulated_thermostat::{
    MAX_ADU_LEN, SETPOINT_MAX, SimulatedThermostat, TEMPERATURE_REGISTER, ThermostatOptions,
};
use kubeedge_mapper::modbus::{ExceptionCode, ModbusConfig, ModbusDriver};
use kubeedge_mapper::runtime::{MapperConfig, MapperRuntime, MqttTarget, ReportTarget};
use kubeedge_testkit::{Mosquitto, free_port, wait_until, within};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn thermostat(options: ThermostatOptions) -> SimulatedThermostat {
    SimulatedThermostat::start_with(loopback(), options, CancellationToken::new())
        .await
        .expect("the thermostat starts")
}

/// A Modbus TCP request for unit 1: transaction id `tid`, then `pdu`.
fn request(tid: u16, pdu: &[u8]) -> Vec<u8> {
    let mut adu = tid.to_be_bytes().to_vec();
    adu.extend_from_slice(&[0, 0]);
    adu.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
    adu.push(1);
    adu.extend_from_slice(pdu);
    adu
}

/// A raw client connection.
struct Raw(TcpStream);

impl Raw {
    async fn connect(device: &SimulatedThermostat) -> Self {
        Self(
            within("connect", TcpStream::connect(device.local_addr()))
                .await
                .unwrap(),
        )
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    /// One answer: MBAP header, then as many bytes as its length says.
    async fn answer(&mut self) -> Vec<u8> {
        within("an answer", async {
            let mut header = [0u8; 6];
            self.0.read_exact(&mut header).await.expect("an answer");
            let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
            let mut answer = header.to_vec();
            answer.resize(6 + len, 0);
            self.0
                .read_exact(&mut answer[6..])
                .await
                .expect("an answer");
            answer
        })
        .await
    }

    /// Sends `pdu` and returns the answer's PDU (after the unit id), checking the echo.
    async fn call(&mut self, tid: u16, pdu: &[u8]) -> Vec<u8> {
        self.send(&request(tid, pdu)).await;
        let answer = self.answer().await;
        assert_eq!(answer[..4], [(tid >> 8) as u8, tid as u8, 0, 0]);
        assert_eq!(answer[6], 1, "unit id echoed");
        answer[7..].to_vec()
    }

    /// Waits until the device closed the connection, reading (and discarding) what comes.
    async fn closed(&mut self) {
        within("the device closes the connection", async {
            let mut buf = [0u8; 64];
            loop {
                match self.0.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// Read holding registers 0 and 1: (setpoint, temperature).
async fn read_both(client: &mut Raw, tid: u16) -> (u16, u16) {
    let pdu = client.call(tid, &[3, 0, 0, 0, 2]).await;
    assert_eq!(pdu[..2], [3, 4]);
    (
        u16::from_be_bytes([pdu[2], pdu[3]]),
        u16::from_be_bytes([pdu[4], pdu[5]]),
    )
}

/// The quickstart manifests, as files.
fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/quickstart")
        .join(name)
}

fn manifest_text(name: &str) -> String {
    std::fs::read_to_string(manifest(name)).expect("the quickstart manifest")
}

/// The quickstart manifests in a temporary directory, with the device's port replaced.
fn manifests_on_port(port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let device = manifest_text("thermostat.yaml");
    assert!(device.contains("port: 1502\n"));
    let device = device.replace("port: 1502\n", &format!("port: {port}\n"));
    std::fs::write(dir.path().join("thermostat.yaml"), device).unwrap();
    std::fs::write(
        dir.path().join("thermostat-model.yaml"),
        manifest_text("thermostat-model.yaml"),
    )
    .unwrap();
    dir
}

/// An MQTT client subscribed to every device topic, recording the twin updates that arrive.
struct TwinProbe {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    arrived: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for TwinProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TwinProbe {
    /// Subscribed (the broker acknowledged it) when this returns.
    async fn start(port: u16) -> Self {
        let mut options = MqttOptions::new(format!("probe-{}", free_port()), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe("$hw/events/device/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        within("the probe subscribes", async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => panic!("the probe cannot connect: {e}"),
                }
            }
        })
        .await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (s, a) = (Arc::clone(&seen), Arc::clone(&arrived));
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        s.lock().unwrap().push((p.topic, json));
                        a.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            seen,
            arrived,
            task,
        }
    }

    /// The reported values of `property` of `default/thermostat-1` so far, in order.
    fn reported(&self, property: &str) -> Vec<i64> {
        let topic = "$hw/events/device/default/thermostat-1/twin/update";
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .filter_map(|(_, json)| {
                // An update reports the properties read since the last one (maybe not this).
                let twin = json["twin"].get(property)?;
                assert_eq!(twin["metadata"]["type"], "int", "{json}");
                twin["actual"]["value"].as_str()?.parse().ok()
            })
            .collect()
    }

    /// The states `default/thermostat-1` reported so far, in order.
    fn states(&self) -> Vec<String> {
        let topic = "$hw/events/device/default/thermostat-1/state/update";
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .filter_map(|(_, json)| json["state"].as_str().map(str::to_owned))
            .collect()
    }

    /// Waits until the reports of `property` satisfy `done`.
    async fn wait(&self, what: &str, property: &str, done: impl Fn(&[i64]) -> bool) -> Vec<i64> {
        within(what, async {
            loop {
                let notified = self.arrived.notified();
                let values = self.reported(property);
                if done(&values) {
                    return values;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        })
        .await
    }
}

/// The reported temperatures include one later than another and closer to `target`.
fn moves_toward(values: &[i64], target: i64) -> bool {
    values.iter().enumerate().any(|(i, first)| {
        values[i + 1..]
            .iter()
            .any(|later| (target - later).abs() < (target - first).abs())
    })
}

// ---------------------------------------------------------------------------------------------
// The device over raw TCP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn raw_clients_read_and_write_the_registers() {
    let device = thermostat(ThermostatOptions::default()).await;
    let mut client = Raw::connect(&device).await;

    assert_eq!(read_both(&mut client, 1).await, (200, 180));
    // The temperature again as input register 0.
    assert_eq!(client.call(2, &[4, 0, 0, 0, 1]).await, [4, 2, 0, 180]);

    // Write the setpoint with function 6, then 16; each is echoed and lands in register 0.
    assert_eq!(client.call(3, &[6, 0, 0, 0, 235]).await, [6, 0, 0, 0, 235]);
    assert_eq!(device.setpoint(), 235);
    let pdu = client.call(4, &[16, 0, 0, 0, 1, 2, 0, 240]).await;
    assert_eq!(pdu, [16, 0, 0, 0, 1]);
    assert_eq!(device.setpoint(), 240);
    assert_eq!(read_both(&mut client, 5).await.0, 240);

    // The temperature is read-only (exception 02); a setpoint out of range is refused (03).
    assert_eq!(client.call(6, &[6, 0, 1, 0, 10]).await, [0x86, 0x02]);
    let too_hot = (SETPOINT_MAX + 1).to_be_bytes();
    assert_eq!(
        client.call(7, &[6, 0, 0, too_hot[0], too_hot[1]]).await,
        [0x86, 0x03]
    );
    // No coils; an unknown function.
    assert_eq!(client.call(8, &[1, 0, 0, 0, 1]).await, [0x81, 0x02]);
    assert_eq!(client.call(9, &[0x2B, 0x0E, 1, 0]).await, [0xAB, 0x01]);
    assert_eq!(device.setpoint(), 240);

    // Two requests in one segment: two answers, in order.
    let mut both = request(10, &[3, 0, 0, 0, 1]);
    both.extend(request(11, &[4, 0, 0, 0, 1]));
    client.send(&both).await;
    assert_eq!(client.answer().await[..2], [0, 10]);
    assert_eq!(client.answer().await[..2], [0, 11]);

    // set_temperature is what the next read sees.
    device.set_temperature(215);
    assert_eq!(read_both(&mut client, 12).await, (240, 215));
}

#[tokio::test]
async fn the_temperature_moves_toward_the_setpoint() {
    let device = thermostat(ThermostatOptions {
        step_interval: Duration::from_millis(10),
        ..ThermostatOptions::default()
    })
    .await;
    let mut client = Raw::connect(&device).await;
    client.call(1, &[6, 0, 0, 0, 190]).await;
    wait_until("the temperature reaches the setpoint", || {
        device.temperature() == 190
    })
    .await;
    assert_eq!(read_both(&mut client, 2).await, (190, 190));
    // Down again.
    client.call(3, &[6, 0, 0, 0, 185]).await;
    wait_until("the temperature falls to the setpoint", || {
        device.temperature() == 185
    })
    .await;
    assert_eq!(client.call(4, &[4, 0, 0, 0, 1]).await, [4, 2, 0, 185]);
}

#[tokio::test]
async fn a_malformed_frame_closes_only_its_connection() {
    let device = thermostat(ThermostatOptions::default()).await;
    let mut good = Raw::connect(&device).await;
    assert_eq!(read_both(&mut good, 1).await, (200, 180));

    let bad_frames: Vec<Vec<u8>> = vec![
        // Not Modbus (protocol id 1).
        vec![0, 1, 0, 1, 0, 6, 1, 3, 0, 0, 0, 1],
        // A length of 0 and one of 0xFFFF (refused from the header: nothing more is read).
        vec![0, 1, 0, 0, 0, 0],
        vec![0, 1, 0, 0, 0xFF, 0xFF],
        // One byte more than the longest request.
        {
            let mut f = vec![0, 1, 0, 0];
            f.extend_from_slice(&(MAX_ADU_LEN as u16 - 5).to_be_bytes());
            f
        },
        // A length that does not fit the function; an exception code as a function.
        request(1, &[3, 0, 0, 0, 1, 0]),
        request(1, &[0x83, 0, 0, 0, 1]),
        // A multiple write whose byte count claims more than the frame holds.
        request(1, &[16, 0, 0, 0, 1, 200, 0, 235]),
        // HTTP.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    for (i, frame) in bad_frames.iter().enumerate() {
        let mut bad = Raw::connect(&device).await;
        bad.send(frame).await;
        bad.closed().await;
        // The good client's connection is untouched, and a new one works too.
        assert_eq!(read_both(&mut good, i as u16 + 2).await.0, 200, "{frame:?}");
        let mut fresh = Raw::connect(&device).await;
        assert_eq!(read_both(&mut fresh, 1).await.0, 200);
    }
    // A frame cut short by the client does not harm the device either.
    let mut cut = Raw::connect(&device).await;
    cut.send(&request(1, &[3, 0, 0])).await;
    drop(cut);
    assert_eq!(read_both(&mut good, 100).await, (200, 180));
    assert_eq!(device.setpoint(), 200);
}

#[tokio::test]
async fn slow_clients_are_closed_and_connections_are_capped() {
    let device = thermostat(ThermostatOptions {
        max_connections: 2,
        idle_timeout: Duration::from_millis(300),
        ..ThermostatOptions::default()
    })
    .await;

    // A client that stops in the middle of a request is closed after the idle timeout.
    let mut slow = Raw::connect(&device).await;
    slow.send(&request(1, &[3, 0, 0, 0, 1])[..5]).await;
    slow.closed().await;
    wait_until("the slow connection's slot is free", || {
        device.connections() == 0
    })
    .await;

    // Two connections fill the device; a third is closed at once; the two keep working.
    let mut first = Raw::connect(&device).await;
    let mut second = Raw::connect(&device).await;
    wait_until("two connections open", || device.connections() == 2).await;
    let mut third = Raw::connect(&device).await;
    // The device may have closed it before this arrives: the write may fail.
    let _ = third.0.write_all(&request(1, &[3, 0, 0, 0, 1])).await;
    third.closed().await;
    assert_eq!(read_both(&mut first, 1).await.0, 200);
    assert_eq!(read_both(&mut second, 1).await.0, 200);

    // When one goes, there is room again.
    drop(first);
    wait_until("a slot is free", || device.connections() < 2).await;
    let mut fourth = Raw::connect(&device).await;
    assert_eq!(read_both(&mut fourth, 1).await.0, 200);
}

#[tokio::test]
async fn stopping_closes_the_listener_and_the_connections() {
    let shutdown = CancellationToken::new();
    let device = SimulatedThermostat::start(loopback(), shutdown.clone())
        .await
        .unwrap();
    let addr = device.local_addr();
    let mut client = Raw::connect(&device).await;
    assert_eq!(read_both(&mut client, 1).await.0, 200);
    shutdown.cancel();
    client.closed().await;
    within("stop", device.stop()).await;
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");

    // Dropping a thermostat stops it too.
    let device = thermostat(ThermostatOptions::default()).await;
    let mut client = Raw::connect(&device).await;
    drop(device);
    client.closed().await;
}

// ---------------------------------------------------------------------------------------------
// kubeedge-mapper's Modbus client
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_mappers_modbus_client_reads_writes_and_sees_exceptions() {
    let device = thermostat(ThermostatOptions::default()).await;
    let client = ModbusDriver::new(ModbusConfig::tcp(device.local_addr().to_string(), 1));
    assert_eq!(
        client.read_holding_registers(0, 2).await.unwrap(),
        [200, 180]
    );
    assert_eq!(client.read_input_registers(0, 1).await.unwrap(), [180]);
    client.write_single_register(0, 222).await.unwrap();
    client.write_multiple_registers(0, &[223]).await.unwrap();
    assert_eq!(device.setpoint(), 223);
    match client.write_single_register(1, 300).await {
        Err(Error::ModbusException { function, code }) => {
            assert_eq!((function, code), (6, ExceptionCode::IllegalDataAddress));
        }
        other => panic!("expected IllegalDataAddress, got {other:?}"),
    }
    match client.read_holding_registers(0, 3).await {
        Err(Error::ModbusException { code, .. }) => {
            assert_eq!(code, ExceptionCode::IllegalDataAddress);
        }
        other => panic!("expected IllegalDataAddress, got {other:?}"),
    }
    // Another unit id gets no answer: the request times out.
    let other = ModbusDriver::new(
        ModbusConfig::tcp(device.local_addr().to_string(), 7)
            .timeout(Duration::from_millis(300))
            .retries(0),
    );
    assert!(matches!(
        other.read_holding_registers(0, 1).await,
        Err(Error::Timeout { .. })
    ));
    // ...and the device still answers its own.
    assert_eq!(client.read_holding_registers(0, 1).await.unwrap(), [223]);
}

// ---------------------------------------------------------------------------------------------
// The quickstart manifests
// ---------------------------------------------------------------------------------------------

/// Where `value` breaks `schema` (an `openAPIV3Schema` node): unknown fields the API server
/// would prune, wrong types, values outside an enum, missing required fields.
fn schema_findings(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    let ty = schema["type"].as_str();
    let type_ok = match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        out.push(format!("{path}: {value} is not {}", ty.unwrap_or("?")));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        out.push(format!("{path}: {value} is not one of {}", schema["enum"]));
    }
    if let Some(items) = value.as_array() {
        for (i, item) in items.iter().enumerate() {
            schema_findings(item, &schema["items"], &format!("{path}[{i}]"), out);
        }
    }
    let Some(fields) = value.as_object() else {
        return;
    };
    for name in schema["required"].as_array().into_iter().flatten() {
        if !fields.contains_key(name.as_str().unwrap_or_default()) {
            out.push(format!("{path}.{name}: required, missing"));
        }
    }
    for (name, field) in fields {
        let at = format!("{path}.{name}");
        if path.is_empty() && name == "metadata" {
            continue;
        }
        if let Some(child) = schema["properties"].get(name) {
            schema_findings(field, child, &at, out);
        } else if schema["x-kubernetes-preserve-unknown-fields"] != true {
            out.push(format!("{at}: unknown field, pruned"));
        }
    }
}

fn check_against_crd(manifest: &str, crd: &str, kind: &str) -> Value {
    let object: Value = serde_yaml_ng::from_str(&manifest_text(manifest)).unwrap();
    let crd: Value = serde_yaml_ng::from_str(crd).unwrap();
    let version = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1beta1")
        .unwrap();
    assert_eq!(object["apiVersion"], "devices.kubeedge.io/v1beta1");
    assert_eq!(object["kind"], kind);
    assert_eq!(crd["spec"]["names"]["kind"], kind);
    let mut findings = Vec::new();
    schema_findings(
        &object,
        &version["schema"]["openAPIV3Schema"],
        "",
        &mut findings,
    );
    assert!(findings.is_empty(), "{manifest}: {findings:#?}");
    object
}

#[test]
fn the_quickstart_manifests_pass_the_crd_schemas() {
    use kubeedge_cloud::crd::{DEVICE_CRD, DEVICE_MODEL_CRD};
    let model = check_against_crd("thermostat-model.yaml", DEVICE_MODEL_CRD, "DeviceModel");
    let device = check_against_crd("thermostat.yaml", DEVICE_CRD, "Device");
    assert_eq!(device["metadata"]["name"], "thermostat-1");
    assert_eq!(device["metadata"]["namespace"], "default");
    assert_eq!(device["spec"]["nodeName"], "edge-1");
    assert_eq!(
        device["spec"]["deviceModelRef"]["name"],
        model["metadata"]["name"]
    );
    // The mapper takes them: both properties, the desired setpoint, the device's address.
    let loaded = kubeedge_mapper::runtime::load_yaml([
        manifest("thermostat-model.yaml"),
        manifest("thermostat.yaml"),
    ]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    let [thermostat] = &loaded.devices[..] else {
        panic!("one device: {:#?}", loaded.devices);
    };
    let instance = &thermostat.device;
    assert_eq!(instance.id.to_string(), "default/thermostat-1");
    let config = ModbusConfig::from_protocol_config(&instance.protocol.config_data).unwrap();
    assert_eq!(config.transport.target(), "127.0.0.1:1502");
    assert_eq!(config.slave_id, 1);
    let setpoint = instance.property("setpoint").unwrap();
    assert_eq!(setpoint.desired.as_deref(), Some("235"));
    assert!(instance.property("temperature").unwrap().desired.is_none());
    for p in &instance.properties {
        assert!(p.report_to_cloud, "{}", p.spec.name);
        assert_eq!(p.report_cycle, Duration::from_secs(1));
        assert_eq!(p.collect_cycle, Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------------
// The mapper runtime and the modbus-mapper binary against the device
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mapper_runtime_writes_the_desired_setpoint_and_reports_the_temperature() {
    let device = thermostat(ThermostatOptions::default()).await;
    let broker = Mosquitto::start().await;
    let probe = TwinProbe::start(broker.port()).await;

    let mut loaded = kubeedge_mapper::runtime::load_yaml([
        manifest("thermostat-model.yaml"),
        manifest("thermostat.yaml"),
    ]);
    assert!(loaded.errors.is_empty(), "{:#?}", loaded.errors);
    let mut instance = loaded.devices.remove(0).device;
    instance
        .protocol
        .config_data
        .insert("port".into(), device.local_addr().port().into());

    let mut config = MapperConfig::new("modbus-mapper", "modbus");
    config.report = ReportTarget::Mqtt(MqttTarget::new(broker.url()));
    let mut runtime = MapperRuntime::new(config, |device| {
        let config = ModbusConfig::from_protocol_config(&device.protocol.config_data)?;
        Ok(ModbusDriver::new(config))
    });
    runtime.add_device(instance).unwrap();
    let handle = runtime.handle();
    let stop = CancellationToken::new();
    let running = tokio::spawn(runtime.run(stop.clone()));

    wait_until("the desired setpoint reaches holding register 0", || {
        device.setpoint() == 235
    })
    .await;
    probe
        .wait("the setpoint 235 reported", "setpoint", |v| {
            v.contains(&235)
        })
        .await;
    let temperatures = probe
        .wait(
            "reported temperatures moving toward 235",
            "temperature",
            |v| moves_toward(v, 235),
        )
        .await;
    assert!(
        temperatures.iter().all(|t| (180..=235).contains(t)),
        "{temperatures:?}"
    );
    let stats = handle.stats();
    assert_eq!((stats.writes, stats.write_errors), (1, 0), "{stats:?}");

    stop.cancel();
    within("the runtime stops", running).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modbus_mapper_binary_runs_the_quickstart_thermostat() {
    let device = thermostat(ThermostatOptions::default()).await;
    let broker = Mosquitto::start().await;
    let probe = TwinProbe::start(broker.port()).await;
    let dir = manifests_on_port(device.local_addr().port());

    let mut mapper = tokio::process::Command::new(env!("CARGO_BIN_EXE_modbus-mapper"))
        .arg("--devices")
        .arg(dir.path())
        .args(["--broker", &broker.url()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the modbus-mapper binary runs");

    wait_until("the desired setpoint reaches holding register 0", || {
        device.setpoint() == 235
    })
    .await;
    probe
        .wait(
            "reported temperatures moving toward 235",
            "temperature",
            |v| moves_toward(v, 235),
        )
        .await;

    // SIGTERM: it stops cleanly.
    let pid = mapper.id().expect("running").to_string();
    let killed = within(
        "kill -TERM",
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status(),
    )
    .await
    .unwrap();
    assert!(killed.success());
    let mut stderr = String::new();
    let mut pipe = mapper.stderr.take().unwrap();
    let status = within("modbus-mapper exits", async {
        let _ = pipe.read_to_string(&mut stderr).await;
        mapper.wait().await
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("skipped"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modbus_mapper_binary_keeps_polling_a_property_the_device_refuses() {
    let device = thermostat(ThermostatOptions::default()).await;
    let broker = Mosquitto::start().await;
    let probe = TwinProbe::start(broker.port()).await;
    let dir = manifests_on_port(device.local_addr().port());
    let log = dir.path().join("mapper.log");

    let mut mapper = tokio::process::Command::new(env!("CARGO_BIN_EXE_modbus-mapper"))
        .arg("--devices")
        .arg(dir.path())
        .args(["--broker", &broker.url()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("the modbus-mapper binary runs");
    probe
        .wait("a temperature reported", "temperature", |v| !v.is_empty())
        .await;

    // Exception 04 (server device failure) to every read of the temperature: the mapper
    // reads it again (the release binary never did), and the setpoint keeps being reported.
    device.fail_reads(TEMPERATURE_REGISTER, Some(0x04));
    let setpoints = probe.reported("setpoint").len();
    wait_until("the temperature read three times while failing", || {
        device.failed_reads() >= 3
    })
    .await;
    probe
        .wait("the setpoint still reported", "setpoint", |v| {
            v.len() >= setpoints + 2
        })
        .await;
    assert!(
        probe.states().iter().any(|s| s == "unhealthy"),
        "{:?}",
        probe.states()
    );

    // The device answers again: the temperature is read and reported again, online again.
    let temperatures = probe.reported("temperature").len();
    device.fail_reads(TEMPERATURE_REGISTER, None);
    probe
        .wait("the temperature reported again", "temperature", |v| {
            v.len() > temperatures
        })
        .await;
    within("online again", async {
        while probe.states().last().map(String::as_str) != Some("online") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let pid = mapper.id().expect("running").to_string();
    let killed = within(
        "kill -TERM",
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status(),
    )
    .await
    .unwrap();
    assert!(killed.success());
    let status = within("modbus-mapper exits", mapper.wait()).await.unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    // The failure is logged when it starts and when it ends, not at every read.
    let lines = |text: &str| stderr.lines().filter(|l| l.contains(text)).count();
    assert_eq!(lines("property read failing"), 1, "{stderr}");
    assert_eq!(lines("property read again"), 1, "{stderr}");
}

#[test]
fn the_modbus_mapper_binary_prints_its_usage() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modbus-mapper"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let usage = String::from_utf8(out.stdout).unwrap();
    assert!(usage.contains("Usage: modbus-mapper "), "{usage}");
    assert!(usage.contains("--devices <PATH>"), "{usage}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modbus-mapper"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
