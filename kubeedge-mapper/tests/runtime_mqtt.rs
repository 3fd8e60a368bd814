//! The mapper runtime with the Modbus driver against pymodbus (Debian python3-pymodbus),
//! reporting to a real mosquitto: devices from Device/DeviceModel YAML, twin updates and
//! states as edgecore expects them, desired values from `twin/update/delta` written to the
//! device, a device that dies and comes back, dead devices beside a live one, bad YAML.

mod common;
mod support;

use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;

use common::PyModbus;
use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
use kubeedge_mapper::runtime::MapperRuntime;
use kubeedge_mapper::{Error, Result};
use kubeedge_proto::DeviceId;
use kubeedge_proto::device::DeviceState;
use kubeedge_testkit::{Mosquitto, free_port, mosquitto_pub_ok, wait_until, within};
use support::{MqttProbe, Running, actual, mqtt_config, reports, state_is, topic, yaml_dir};

const MODEL: &str = "
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata:
  name: thermo-model
  namespace: default
spec:
  protocol: modbus
  properties:
    - {name: temperature, type: INT, accessMode: ReadOnly}
    - {name: humidity, type: FLOAT, accessMode: ReadOnly}
    - {name: label, type: STRING, accessMode: ReadOnly}
    - {name: setpoint, type: INT, accessMode: ReadWrite}
";

/// A Device of thermo-model at 127.0.0.1:`port` polling every 100 ms, reporting every 200 ms.
fn device(name: &str, port: u16) -> String {
    let prop = |name: &str, visitor: &str| {
        format!(
            "    - name: {name}\n      collectCycle: 100\n      reportCycle: 200\n      reportToCloud: true\n      visitors: {{protocolName: modbus, configData: {visitor}}}\n"
        )
    };
    format!(
        "apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata:
  name: {name}
  labels: {{description: thermometer}}
spec:
  deviceModelRef: {{name: thermo-model}}
  nodeName: edge-1
  protocol:
    protocolName: modbus
    configData: {{ip: 127.0.0.1, port: {port}, slaveID: 1, timeout: 500}}
  properties:
{}{}{}{}",
        prop(
            "temperature",
            "{register: HoldingRegister, offset: 0, limit: 1}"
        ),
        prop(
            "humidity",
            "{register: HoldingRegister, offset: 2, limit: 2}"
        ),
        prop("label", "{register: HoldingRegister, offset: 8, limit: 4}"),
        prop(
            "setpoint",
            "{register: HoldingRegister, offset: 30, limit: 1}"
        ),
    )
}

fn modbus(device: &kubeedge_mapper::runtime::DeviceInstance) -> Result<ModbusDriver> {
    let config = ModbusConfig::from_protocol_config(&device.protocol.config_data)?;
    Ok(ModbusDriver::new(config.retries(0)))
}

fn id(name: &str) -> DeviceId {
    DeviceId::new("default", name).unwrap()
}

/// A delta as edgecore publishes it when `property`'s expected value differs from its actual.
fn delta(property: &str, value: &str) -> Vec<u8> {
    json!({
        "event_id": "5e2c1b0a-6d3f-4a4e-9a57-3b1c9e0e7f11",
        "timestamp": 1795408269851i64,
        "twin": {property: {
            "expected": {"value": value, "metadata": {"timestamp": 1795408269851i64}},
            "optional": false,
            "metadata": {"type": "int"}
        }},
        "delta": {property: value}
    })
    .to_string()
    .into_bytes()
}

async fn start(broker: &Mosquitto, devices: &[(&str, String)]) -> (Running, tempfile::TempDir) {
    let mut files: Vec<(&str, &str)> = vec![("model.yaml", MODEL)];
    files.extend(devices.iter().map(|(n, t)| (*n, t.as_str())));
    let (dir, path) = yaml_dir(&files);
    let mut runtime = MapperRuntime::new(
        mqtt_config("modbus-mapper", "modbus", &broker.url()),
        modbus,
    );
    let errors = runtime.load_yaml([&path]);
    assert!(errors.is_empty(), "{errors:#?}");
    (Running::start(runtime), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_register_values_and_writes_desired_values_from_deltas() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let (running, _dir) = start(
        &broker,
        &[("thermo-1.yaml", device("thermo-1", server.port()))],
    )
    .await;

    probe
        .wait("state online", |s| state_is(s, "thermo-1", "online"))
        .await;
    let update = probe
        .wait("a report of every property", |s| {
            ["temperature", "humidity", "label", "setpoint"]
                .iter()
                .all(|p| reports(s, "thermo-1", p))
        })
        .await;
    assert_eq!(
        update.json["twin"],
        json!({
            "temperature": {"actual": {"value": "25"}, "metadata": {"type": "int"}},
            "humidity": {"actual": {"value": "21.5"}, "metadata": {"type": "float"}},
            "label": {"actual": {"value": "KubeEdge"}, "metadata": {"type": "string"}},
            "setpoint": {"actual": {"value": "0"}, "metadata": {"type": "int"}},
        })
    );
    assert_eq!(update.json["event_id"].as_str().map(str::len), Some(36));
    assert!(update.json["timestamp"].as_i64().is_some_and(|t| t > 0));
    // The edge's own parser takes it.
    kubeedge_proto::twin::DeviceTwinUpdate::parse(update.json.to_string().as_bytes()).unwrap();

    // edgecore publishes a delta: the runtime writes the register (checked on the device)...
    let check = ModbusDriver::new(ModbusConfig::tcp(format!("127.0.0.1:{}", server.port()), 1));
    within("the desired value reaches the register", async {
        loop {
            mosquitto_pub_ok(
                broker.port(),
                &topic("thermo-1", "twin/update/delta"),
                &delta("setpoint", "42"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            if check.read_holding_registers(30, 1).await.unwrap() == [42] {
                break;
            }
        }
    })
    .await;
    // ...reads it back and reports it.
    probe
        .wait("setpoint 42 reported", |s| {
            reports(s, "thermo-1", "setpoint") && actual(s, "setpoint").as_deref() == Some("42")
        })
        .await;
    let status = running.handle.device_status(&id("thermo-1")).unwrap();
    assert_eq!(status.state, DeviceState::Online);
    assert_eq!(status.properties["setpoint"].desired.as_deref(), Some("42"));
    assert_eq!(
        status.properties["temperature"].value.as_deref(),
        Some("25")
    );
    let stats = running.handle.stats();
    assert_eq!(stats.writes, 1, "{stats:?}");
    assert!(stats.polls > 0 && stats.reports > 0, "{stats:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_values_that_cannot_be_written_are_refused_and_the_device_stays_up() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let (running, _dir) = start(
        &broker,
        &[("thermo-1.yaml", device("thermo-1", server.port()))],
    )
    .await;
    probe
        .wait("online", |s| state_is(s, "thermo-1", "online"))
        .await;
    let handle = running.handle.clone();
    let status = || handle.device_status(&id("thermo-1")).unwrap();

    // A value that is not an INT.
    within("the refusal", async {
        while status().properties["setpoint"].write_error.is_none() {
            mosquitto_pub_ok(
                broker.port(),
                &topic("thermo-1", "twin/update/delta"),
                &delta("setpoint", "warm"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let refused = status().properties["setpoint"].write_error.clone().unwrap();
    assert_eq!(
        refused,
        "value \"warm\" does not fit property type INT: not a base-10 integer"
    );
    // A ReadOnly property.
    within("the refusal", async {
        while status().properties["temperature"].write_error.is_none() {
            mosquitto_pub_ok(
                broker.port(),
                &topic("thermo-1", "twin/update/delta"),
                &delta("temperature", "99"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        status().properties["temperature"]
            .write_error
            .as_deref()
            .is_some_and(|e| e.contains("temperature is ReadOnly")),
        "{:?}",
        status()
    );
    let check = ModbusDriver::new(ModbusConfig::tcp(format!("127.0.0.1:{}", server.port()), 1));
    assert_eq!(check.read_holding_registers(0, 1).await.unwrap(), [25]);
    assert_eq!(check.read_holding_registers(30, 1).await.unwrap(), [0]);

    // The device is still up and reporting.
    let seen = probe.len();
    probe
        .wait_from(seen, "reports go on", |s| {
            reports(s, "thermo-1", "temperature")
        })
        .await;
    assert_eq!(status().state, DeviceState::Online);
    assert_eq!(probe.count(|s| state_is(s, "thermo-1", "offline")), 0);
    let stats = running.handle.stats();
    assert_eq!((stats.writes, stats.write_errors), (0, 2), "{stats:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_dies_is_reported_offline_and_online_when_it_returns() {
    let mut server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let (running, _dir) = start(
        &broker,
        &[("thermo-1.yaml", device("thermo-1", server.port()))],
    )
    .await;
    probe
        .wait("values", |s| reports(s, "thermo-1", "temperature"))
        .await;

    server.kill().await;
    let (offline_at, _) = probe
        .wait_from(0, "state offline", |s| state_is(s, "thermo-1", "offline"))
        .await;
    let status = running.handle.device_status(&id("thermo-1")).unwrap();
    assert_eq!(status.state, DeviceState::Offline);
    assert!(status.last_error.is_some(), "{status:?}");

    server.restart().await;
    let (online_at, _) = probe
        .wait_from(offline_at, "state online again", |s| {
            state_is(s, "thermo-1", "online")
        })
        .await;
    let (_, update) = probe
        .wait_from(online_at, "values again", |s| {
            reports(s, "thermo-1", "temperature")
        })
        .await;
    assert_eq!(actual(&update, "temperature").as_deref(), Some("25"));
    // Nothing was reported while the device was gone.
    let between = &probe.all()[offline_at..online_at];
    assert!(
        !between
            .iter()
            .any(|s| s.topic == topic("thermo-1", "twin/update")),
        "{between:#?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_devices_do_not_delay_a_live_one() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    // A device that accepts connections and never answers (every request times out)...
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    // ...and one whose port refuses connections.
    let refused_port = free_port();
    let (running, _dir) = start(
        &broker,
        &[
            ("live.yaml", device("live", server.port())),
            ("silent.yaml", device("silent", silent_port)),
            ("refused.yaml", device("refused", refused_port)),
        ],
    )
    .await;

    let (a, _) = probe
        .wait_from(0, "silent offline", |s| state_is(s, "silent", "offline"))
        .await;
    let (b, _) = probe
        .wait_from(0, "refused offline", |s| state_is(s, "refused", "offline"))
        .await;
    // While both stay dead, the live device keeps reporting: ten more reports.
    let mut from = a.max(b);
    for n in 0..10 {
        let (i, s) = probe
            .wait_from(from + 1, &format!("live report {n}"), |s| {
                reports(s, "live", "temperature")
            })
            .await;
        assert_eq!(actual(&s, "temperature").as_deref(), Some("25"));
        from = i;
    }
    assert_eq!(probe.count(|s| state_is(s, "silent", "online")), 0);
    assert_eq!(probe.count(|s| state_is(s, "refused", "online")), 0);
    assert_eq!(
        probe.count(|s| s.topic == topic("silent", "twin/update")),
        0
    );
    let silent_status = running.handle.device_status(&id("silent")).unwrap();
    assert!(
        silent_status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no complete response")),
        "{silent_status:?}"
    );
    let refused_status = running.handle.device_status(&id("refused")).unwrap();
    assert!(
        refused_status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot connect")),
        "{refused_status:?}"
    );
    running.stop().await;
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_yaml_is_refused_by_file_and_device_and_the_rest_runs() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let port = server.port();
    let no_register =
        device("no-register", port).replace("register: HoldingRegister, offset: 30", "offset: 30");
    let no_address =
        device("no-address", port).replace(&format!("ip: 127.0.0.1, port: {port}, "), "");
    let bad_type_model = MODEL
        .replace("thermo-model", "odd-model")
        .replace("type: FLOAT", "type: REAL");
    let bad_type = device("bad-type", port).replace("thermo-model", "odd-model");
    let (_dir, path) = yaml_dir(&[
        ("a-model.yaml", MODEL),
        ("b-good.yaml", &device("good", port)),
        ("c-no-register.yaml", &no_register),
        ("d-no-address.yaml", &no_address),
        (
            "e-bad-type.yaml",
            &format!("{bad_type_model}---\n{bad_type}"),
        ),
        ("f-broken.yaml", "kind: Device\nmetadata: {name: x\n"),
        (
            "g-other-protocol.yaml",
            &device("opc", port).replace("protocolName: modbus", "protocolName: opcua"),
        ),
    ]);
    let mut runtime = MapperRuntime::new(
        mqtt_config("modbus-mapper", "modbus", &broker.url()),
        modbus,
    );
    let errors: Vec<String> = runtime
        .load_yaml([&path])
        .iter()
        .map(ToString::to_string)
        .collect();
    let file = |name: &str| path.join(name).display().to_string();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!(
            "{}: document 1 (line 1): not YAML: ",
            file("f-broken.yaml")
        )),
        "{errors:#?}"
    );
    assert_eq!(
        errors[1],
        format!(
            "{}: Device default/bad-type: property humidity: unknown property type \"REAL\" (expected one of INT, FLOAT, DOUBLE, STRING, BOOLEAN, BYTES, STREAM)",
            file("e-bad-type.yaml")
        )
    );
    assert_eq!(
        errors[2],
        format!(
            "{}: Device default/no-register: property setpoint: visitor has no register",
            file("c-no-register.yaml")
        )
    );
    assert_eq!(
        errors[3],
        format!(
            "{}: Device default/no-address: protocol: protocol configData has neither serialPort (RTU) nor ip (TCP)",
            file("d-no-address.yaml")
        )
    );
    let running = Running::start(runtime);
    probe
        .wait("the good device reports", |s| {
            reports(s, "good", "temperature")
        })
        .await;
    assert_eq!(running.handle.devices(), [id("good")]);

    // The same checks apply to devices added while running.
    let bad =
        kubeedge_mapper::runtime::load_yaml_str("x.yaml", &format!("{MODEL}---\n{no_register}"));
    let err = running
        .handle
        .add_device(bad.devices[0].device.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidDevice { .. }), "{err}");
    wait_until("still one device", || running.handle.devices().len() == 1).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_the_device_refuses_is_retried_and_the_others_are_reported() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let model = MODEL.replace(
        "    - {name: setpoint, type: INT, accessMode: ReadWrite}\n",
        "    - {name: setpoint, type: INT, accessMode: ReadWrite}\n    - {name: missing, type: INT, accessMode: ReadOnly}\n    - {name: raw, type: BYTES, accessMode: ReadOnly}\n",
    );
    let prop = |name: &str, visitor: &str| {
        format!(
            "    - name: {name}\n      collectCycle: 100\n      reportCycle: 200\n      reportToCloud: true\n      visitors: {{protocolName: modbus, configData: {visitor}}}\n"
        )
    };
    // Address 200 is outside the device's registers (exception 2, IllegalDataAddress); the
    // BYTES value of registers 20-21 is "AgEEAw==", which KubeEdge's twin cannot hold ('=').
    let device = format!(
        "{}{}{}",
        device("thermo-1", server.port()),
        prop(
            "missing",
            "{register: HoldingRegister, offset: 200, limit: 1}"
        ),
        prop(
            "raw",
            "{register: HoldingRegister, offset: 20, limit: 2, isSwap: true}"
        ),
    );
    let (_dir, path) = yaml_dir(&[("model.yaml", &model), ("thermo-1.yaml", &device)]);
    let mut runtime = MapperRuntime::new(
        mqtt_config("modbus-mapper", "modbus", &broker.url()),
        modbus,
    );
    assert!(runtime.load_yaml([&path]).is_empty());
    let running = Running::start(runtime);
    let handle = running.handle.clone();
    let status = || handle.device_status(&id("thermo-1")).unwrap();

    // Both keep being read (with backoff), never given up.
    wait_until("both problems recorded, each read again", || {
        handle.device_status(&id("thermo-1")).is_some_and(|s| {
            s.properties["missing"].failures >= 2 && s.properties["raw"].failures >= 2
        })
    })
    .await;
    assert!(server.logged("req 3 200") >= 2, "{:?}", server.log());
    let s = status();
    assert!(
        s.properties["missing"]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("IllegalDataAddress")),
        "{s:?}"
    );
    assert!(
        s.properties["raw"]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("\"AgEEAw==\"") && e.contains("the twin cannot hold it")),
        "{s:?}"
    );
    // The device answers, some properties fail: unhealthy.
    assert_eq!(s.state, DeviceState::Unhealthy);
    probe
        .wait("state unhealthy", |s| state_is(s, "thermo-1", "unhealthy"))
        .await;

    // The other properties keep being reported; the two never are.
    let mut from = probe.len();
    for n in 0..3 {
        let (i, _) = probe
            .wait_from(from, &format!("report {n}"), |s| {
                reports(s, "thermo-1", "temperature")
            })
            .await;
        from = i + 1;
    }
    let bad = probe.count(|s| reports(s, "thermo-1", "missing") || reports(s, "thermo-1", "raw"));
    assert_eq!(bad, 0);
    assert_eq!(probe.count(|s| state_is(s, "thermo-1", "offline")), 0);
    running.stop().await;
}
