//! Devices that fail while the mapper runtime polls them, against pymodbus (Debian
//! python3-pymodbus) and a real mosquitto: Modbus exceptions on one property, a device that
//! stalls, a device that resets every connection. No error stops polling: the failing
//! property or device is retried with backoff (the requests that reach the device are counted
//! in the server and bounded by what the backoff allows), its state goes `unhealthy` or
//! `offline` and back to `online`, and honest properties and devices keep being reported.

mod common;
mod support;

use std::time::Duration;

use tokio::time::Instant;

use common::PyModbus;
use kubeedge_mapper::Result;
use kubeedge_mapper::modbus::{ModbusConfig, ModbusDriver};
use kubeedge_mapper::runtime::{DeviceInstance, MapperConfig, MapperRuntime};
use kubeedge_proto::DeviceId;
use kubeedge_proto::device::DeviceState;
use kubeedge_testkit::{Mosquitto, wait_until};
use support::{MqttProbe, Running, actual, mqtt_config, reports, state_is, yaml_dir};

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
";

/// The collect cycle of every property.
const CYCLE: Duration = Duration::from_millis(100);
/// The property backoff's cap in these tests.
const PROPERTY_CAP: Duration = Duration::from_millis(800);
/// The Modbus request timeout of the devices (`timeout` in their configData).
const MODBUS_TIMEOUT: Duration = Duration::from_millis(300);

/// A Device of thermo-model at 127.0.0.1:`port`: temperature in holding register 0 (25),
/// humidity in 2-3 (21.5), read every 100 ms, reported every 200 ms.
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
spec:
  deviceModelRef: {{name: thermo-model}}
  nodeName: edge-1
  protocol:
    protocolName: modbus
    configData: {{ip: 127.0.0.1, port: {port}, slaveID: 1, timeout: 300}}
  properties:
{}{}",
        prop(
            "temperature",
            "{register: HoldingRegister, offset: 0, limit: 1}"
        ),
        prop(
            "humidity",
            "{register: HoldingRegister, offset: 2, limit: 2}"
        ),
    )
}

fn modbus(device: &DeviceInstance) -> Result<ModbusDriver> {
    let config = ModbusConfig::from_protocol_config(&device.protocol.config_data)?;
    Ok(ModbusDriver::new(config.retries(0)))
}

fn id(name: &str) -> DeviceId {
    DeviceId::new("default", name).unwrap()
}

fn config(broker: &Mosquitto) -> MapperConfig {
    let mut config = mqtt_config("modbus-mapper", "modbus", &broker.url());
    config.property_backoff_max = PROPERTY_CAP;
    config
}

async fn start(broker: &Mosquitto, devices: &[(&str, String)]) -> (Running, tempfile::TempDir) {
    let mut files: Vec<(&str, &str)> = vec![("model.yaml", MODEL)];
    files.extend(devices.iter().map(|(n, t)| (*n, t.as_str())));
    let (dir, path) = yaml_dir(&files);
    let mut runtime = MapperRuntime::new(config(broker), modbus);
    let errors = runtime.load_yaml([&path]);
    assert!(errors.is_empty(), "{errors:#?}");
    (Running::start(runtime), dir)
}

/// The most attempts a backoff allows within `elapsed`: attempt k+1 comes at least `each`
/// (the attempt's own least duration) plus the k-th pause after attempt k, the pause being
/// `first` doubled per attempt up to `cap`, less at most the runtime's jitter (a quarter),
/// never below `first`. One more for an attempt under way at either end of the window.
fn most_attempts(elapsed: Duration, each: Duration, first: Duration, cap: Duration) -> usize {
    let mut at = Duration::ZERO;
    let mut pause = first;
    let mut attempts = 1;
    loop {
        at += each + pause.mul_f64(0.75).max(first);
        if at > elapsed {
            return attempts + 1;
        }
        attempts += 1;
        pause = (pause * 2).min(cap);
    }
}

#[test]
fn the_attempt_bound_is_what_the_backoff_allows() {
    let ms = Duration::from_millis;
    // 100 ms doubling to 500 ms, less jitter: 100, 150, 300, 375, 375...
    assert_eq!(most_attempts(ms(0), ms(0), ms(100), ms(500)), 2);
    assert_eq!(most_attempts(ms(100), ms(0), ms(100), ms(500)), 3);
    assert_eq!(most_attempts(ms(549), ms(0), ms(100), ms(500)), 4);
    assert_eq!(most_attempts(ms(550), ms(0), ms(100), ms(500)), 5);
    assert_eq!(most_attempts(ms(1000), ms(300), ms(100), ms(500)), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_fail_one_property_and_polling_resumes_when_they_stop() {
    let server = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let (running, _dir) = start(
        &broker,
        &[("thermo-1.yaml", device("thermo-1", server.port()))],
    )
    .await;
    let handle = running.handle.clone();
    let status = || handle.device_status(&id("thermo-1")).unwrap();
    let (first, _) = probe
        .wait_from(0, "state online", |s| state_is(s, "thermo-1", "online"))
        .await;
    probe
        .wait_from(first, "values", |s| {
            reports(s, "thermo-1", "temperature") && reports(s, "thermo-1", "humidity")
        })
        .await;

    // One exception 0x04 on the temperature (the probe that found polling stopping for
    // good): unhealthy, then the next read answers and it is online and reported again.
    let from = probe.len();
    server.fault(0, 0, Some(1));
    let (bad, _) = probe
        .wait_from(from, "state unhealthy", |s| {
            state_is(s, "thermo-1", "unhealthy")
        })
        .await;
    let (good, _) = probe
        .wait_from(bad, "state online again", |s| {
            state_is(s, "thermo-1", "online")
        })
        .await;
    let (_, update) = probe
        .wait_from(good, "the temperature reported again", |s| {
            reports(s, "thermo-1", "temperature")
        })
        .await;
    assert_eq!(actual(&update, "temperature").as_deref(), Some("25"));
    assert!(!server.faulting());
    assert_eq!(server.logged("exc"), 1, "{:?}", server.log());

    // Exceptions until the device is healed: the temperature is retried with backoff, the
    // humidity keeps being reported, the device stays unhealthy (not offline).
    let from = probe.len();
    let exceptions_before = server.logged("exc");
    server.fault(0, 0, None);
    let (bad, _) = probe
        .wait_from(from, "state unhealthy", |s| {
            state_is(s, "thermo-1", "unhealthy")
        })
        .await;
    let started = Instant::now();
    let seen = server.logged("exc") - exceptions_before;
    let mut at = bad;
    for n in 0..5 {
        let (i, s) = probe
            .wait_from(at + 1, &format!("humidity report {n}"), |s| {
                reports(s, "thermo-1", "humidity")
            })
            .await;
        assert_eq!(actual(&s, "humidity").as_deref(), Some("21.5"));
        at = i;
    }
    wait_until("the temperature retried at least twice more", || {
        server.logged("exc") - exceptions_before >= seen + 2
    })
    .await;
    let retried = server.logged("exc") - exceptions_before - seen;
    let allowed = most_attempts(started.elapsed(), Duration::ZERO, CYCLE, PROPERTY_CAP);
    assert!(
        retried <= allowed,
        "{retried} retries, the backoff allows {allowed}"
    );
    // At most the value read before the failure goes out after it.
    let after = probe.all()[bad..]
        .iter()
        .filter(|s| reports(s, "thermo-1", "temperature"))
        .count();
    assert!(after <= 1, "{after} temperature reports while failing");
    let s = status();
    assert_eq!(s.state, DeviceState::Unhealthy);
    let temperature = &s.properties["temperature"];
    assert!(temperature.failures >= 2, "{s:?}");
    assert!(
        temperature
            .error
            .as_deref()
            .is_some_and(|e| e.contains("ServerDeviceFailure")),
        "{s:?}"
    );
    assert_eq!(
        temperature.value.as_deref(),
        Some("25"),
        "the last good value"
    );
    assert_eq!(s.properties["humidity"].failures, 0, "{s:?}");

    // Healed: read and reported again, online, no restart.
    let from = probe.len();
    server.heal();
    let (good, _) = probe
        .wait_from(from, "state online after healing", |s| {
            state_is(s, "thermo-1", "online")
        })
        .await;
    let (_, update) = probe
        .wait_from(good, "the temperature reported after healing", |s| {
            reports(s, "thermo-1", "temperature")
        })
        .await;
    assert_eq!(actual(&update, "temperature").as_deref(), Some("25"));
    let s = status();
    assert_eq!(s.properties["temperature"].failures, 0, "{s:?}");
    assert_eq!(s.properties["temperature"].error, None, "{s:?}");
    assert_eq!(probe.count(|s| state_is(s, "thermo-1", "offline")), 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_or_resetting_device_is_offline_probed_with_backoff_and_comes_back() {
    let flaky = PyModbus::tcp(0).await;
    let honest = PyModbus::tcp(0).await;
    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let (running, _dir) = start(
        &broker,
        &[
            ("flaky.yaml", device("flaky", flaky.port())),
            ("live.yaml", device("live", honest.port())),
        ],
    )
    .await;
    let (first, _) = probe
        .wait_from(0, "flaky online", |s| state_is(s, "flaky", "online"))
        .await;
    probe
        .wait_from(first, "flaky values", |s| {
            reports(s, "flaky", "temperature")
        })
        .await;
    let config = config(&broker);
    let (first, cap) = (config.backoff_initial, config.backoff_max);

    // The device stalls (executes, never answers), then resets every connection: each time
    // it is offline, probed at a rate its backoff bounds (each stalled probe also waits out
    // the Modbus timeout), while the honest device keeps reporting; then it answers again.
    for (fault, counted, each) in [
        ("stall", "req", MODBUS_TIMEOUT),
        ("reset", "reset", Duration::ZERO),
    ] {
        let from = probe.len();
        match fault {
            "stall" => flaky.mute(),
            _ => flaky.reset_connections(),
        }
        let (offline, _) = probe
            .wait_from(from, &format!("{fault}: flaky offline"), |s| {
                state_is(s, "flaky", "offline")
            })
            .await;
        let started = Instant::now();
        let before = flaky.logged(counted);
        let mut at = offline;
        for n in 0..5 {
            let (i, _) = probe
                .wait_from(at + 1, &format!("{fault}: live report {n}"), |s| {
                    reports(s, "live", "temperature")
                })
                .await;
            at = i;
        }
        wait_until(&format!("{fault}: probed at least twice"), || {
            flaky.logged(counted) >= before + 2
        })
        .await;
        let probes = flaky.logged(counted) - before;
        let allowed = most_attempts(started.elapsed(), each, first, cap);
        assert!(
            probes <= allowed,
            "{fault}: {probes} probes, the backoff allows {allowed}: {:?}",
            flaky.log()
        );
        let status = running.handle.device_status(&id("flaky")).unwrap();
        assert_eq!(status.state, DeviceState::Offline, "{fault}: {status:?}");

        let from = probe.len();
        match fault {
            "stall" => flaky.unmute(),
            _ => flaky.stop_resets(),
        }
        let (online, _) = probe
            .wait_from(from, &format!("{fault}: flaky online again"), |s| {
                state_is(s, "flaky", "online")
            })
            .await;
        let (_, update) = probe
            .wait_from(online, &format!("{fault}: flaky values again"), |s| {
                reports(s, "flaky", "temperature")
            })
            .await;
        assert_eq!(actual(&update, "temperature").as_deref(), Some("25"));
    }
    assert_eq!(probe.count(|s| state_is(s, "live", "offline")), 0);
    assert_eq!(probe.count(|s| state_is(s, "live", "unhealthy")), 0);
    running.stop().await;
}
