//! The custom mapper example (`examples/custom_mapper.rs`, a sysfs/procfs attribute driver)
//! run as its binary runs, against its devices: a board whose sysfs attributes live in a
//! temporary directory (a thermal zone and an LED, so the test can change and check them),
//! and this machine's real `/proc/loadavg`. Its twin updates arrive on a real mosquitto, and a
//! desired value published as edgecore does lights the LED.

mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/custom_mapper.rs"]
mod custom_mapper;

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use kubeedge_testkit::{Mosquitto, mosquitto_pub_ok, within};
use support::{MqttProbe, actual, reports, state_is, topic, yaml_dir};

fn yaml(root: &std::path::Path) -> String {
    format!(
        "apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata: {{name: board-model}}
spec:
  protocol: sysfs
  properties:
    - {{name: cpu-temperature, type: DOUBLE, accessMode: ReadOnly}}
    - {{name: status-led, type: INT, accessMode: ReadWrite}}
    - {{name: load1, type: DOUBLE, accessMode: ReadOnly}}
    - {{name: runnable, type: STRING, accessMode: ReadOnly}}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: board-1}}
spec:
  deviceModelRef: {{name: board-model}}
  protocol: {{protocolName: sysfs, configData: {{root: {root}}}}}
  properties:
    - name: cpu-temperature
      collectCycle: 100
      reportCycle: 100
      reportToCloud: true
      visitors: {{protocolName: sysfs, configData: {{path: class/thermal/thermal_zone0/temp, scale: 0.001}}}}
    - name: status-led
      collectCycle: 100
      reportCycle: 100
      reportToCloud: true
      visitors: {{protocolName: sysfs, configData: {{path: class/leds/status/brightness}}}}
---
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata: {{name: this-host}}
spec:
  deviceModelRef: {{name: board-model}}
  protocol: {{protocolName: sysfs, configData: {{root: /proc}}}}
  properties:
    - name: load1
      collectCycle: 100
      reportCycle: 100
      reportToCloud: true
      visitors: {{protocolName: sysfs, configData: {{path: loadavg, field: 0}}}}
    - name: runnable
      collectCycle: 100
      reportCycle: 100
      reportToCloud: true
      visitors: {{protocolName: sysfs, configData: {{path: loadavg, field: 3}}}}
",
        root = root.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_custom_mapper_reports_sysfs_attributes_and_writes_desired_values() {
    let board = tempfile::tempdir().unwrap();
    let zone = board.path().join("class/thermal/thermal_zone0");
    let led = board.path().join("class/leds/status");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::create_dir_all(&led).unwrap();
    std::fs::write(zone.join("temp"), "45500\n").unwrap();
    std::fs::write(led.join("brightness"), "0\n").unwrap();
    let (_dir, devices) = yaml_dir(&[("board.yaml", &yaml(board.path()))]);

    let broker = Mosquitto::start().await;
    let probe = MqttProbe::start(broker.port()).await;
    let stop = CancellationToken::new();
    let args = vec![
        "--devices".to_owned(),
        devices.display().to_string(),
        "--broker".to_owned(),
        broker.url(),
    ];
    let mapper = tokio::spawn(custom_mapper::run_mapper(args, stop.clone()));

    probe
        .wait("board online", |s| state_is(s, "board-1", "online"))
        .await;
    let update = probe
        .wait("the board's attributes", |s| {
            reports(s, "board-1", "cpu-temperature") && reports(s, "board-1", "status-led")
        })
        .await;
    assert_eq!(
        update.json["twin"],
        json!({
            "cpu-temperature": {"actual": {"value": "45.5"}, "metadata": {"type": "float"}},
            "status-led": {"actual": {"value": "0"}, "metadata": {"type": "int"}},
        })
    );
    // This machine's real load average, and its runnable/total tasks ("3/117").
    let host = probe
        .wait("this host's load", |s| {
            reports(s, "this-host", "load1") && reports(s, "this-host", "runnable")
        })
        .await;
    let load: f64 = actual(&host, "load1").unwrap().parse().unwrap();
    assert!(load >= 0.0);
    assert!(actual(&host, "runnable").unwrap().contains('/'), "{host:?}");

    // The attribute changes: the next report says so.
    std::fs::write(zone.join("temp"), "47250\n").unwrap();
    probe
        .wait("the new temperature", |s| {
            reports(s, "board-1", "cpu-temperature")
                && actual(s, "cpu-temperature").as_deref() == Some("47.25")
        })
        .await;

    // A desired value as edgecore publishes it lights the LED.
    let delta = json!({"event_id": "e1", "timestamp": 1,
        "twin": {"status-led": {"expected": {"value": "1"}, "metadata": {"type": "int"}}},
        "delta": {"status-led": "1"}});
    within("the LED is lit", async {
        while std::fs::read_to_string(led.join("brightness")).unwrap() != "1\n" {
            mosquitto_pub_ok(
                broker.port(),
                &topic("board-1", "twin/update/delta"),
                delta.to_string().as_bytes(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    probe
        .wait("the LED reported lit", |s| {
            reports(s, "board-1", "status-led") && actual(s, "status-led").as_deref() == Some("1")
        })
        .await;

    // The board is unplugged (its directory goes): offline; plugged back: online.
    let moved = board.path().with_extension("unplugged");
    std::fs::rename(board.path(), &moved).unwrap();
    let (offline, _) = probe
        .wait_from(0, "board offline", |s| state_is(s, "board-1", "offline"))
        .await;
    std::fs::rename(&moved, board.path()).unwrap();
    probe
        .wait_from(offline, "board online again", |s| {
            state_is(s, "board-1", "online")
        })
        .await;

    stop.cancel();
    let code = within("the mapper stops", mapper).await.unwrap();
    assert_eq!(
        format!("{code:?}"),
        format!("{:?}", std::process::ExitCode::SUCCESS)
    );
}
