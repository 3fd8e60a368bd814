//! The `mqtt-mapper` and `serial-mapper` binaries, each with its devices from Device and
//! DeviceModel YAML and its reports going to a real mosquitto, as a KubeEdge edge's
//! mapper-framework mappers run: a device that publishes on MQTT (mosquitto_pub) and a line
//! sensor on a socat pty pair (kubeedge-mapper's tests/line_sensor.py).

use std::path::Path;
use std::process::Stdio;

use kubeedge_testkit::{
    Mosquitto, MosquittoSub, PtyPair, debian_python, mosquitto_pub_retained, within,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A DeviceModel and a Device `name` with one FLOAT property `temperature`, written to `dir`.
fn write_devices(dir: &Path, name: &str, protocol: &str, protocol_config: &str, visitor: &str) {
    std::fs::write(
        dir.join("model.yaml"),
        format!(
            "apiVersion: devices.kubeedge.io/v1beta1\nkind: DeviceModel\nmetadata:\n  \
             name: {name}-model\n  namespace: default\nspec:\n  protocol: {protocol}\n  \
             properties:\n    - name: temperature\n      type: FLOAT\n      \
             accessMode: ReadOnly\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("device.yaml"),
        format!(
            "apiVersion: devices.kubeedge.io/v1beta1\nkind: Device\nmetadata:\n  \
             name: {name}\n  namespace: default\nspec:\n  deviceModelRef:\n    \
             name: {name}-model\n  nodeName: edge-1\n  protocol:\n    \
             protocolName: {protocol}\n    configData: {protocol_config}\n  properties:\n    \
             - name: temperature\n      collectCycle: 200\n      reportCycle: 200\n      \
             reportToCloud: true\n      visitors:\n        protocolName: {protocol}\n        \
             configData: {visitor}\n"
        ),
    )
    .unwrap();
}

/// Starts the mapper binary `exe` on the devices in `dir`, reporting to `broker`.
fn start_mapper(exe: &str, dir: &Path, broker: &Mosquitto) -> Child {
    Command::new(exe)
        .arg("--devices")
        .arg(dir)
        .args(["--broker", &broker.url()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{exe} runs: {e}"))
}

/// Waits for a twin update of `default/<name>` reporting `temperature` = `value`.
async fn reported(broker: &Mosquitto, name: &str, value: &str) {
    let topic = format!("$hw/events/device/default/{name}/twin/update");
    within(&format!("{name} reports {value}"), async {
        loop {
            let sub = MosquittoSub::start(broker.port(), &topic);
            let payload = sub.output().await;
            let json: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            if json["twin"]["temperature"]["actual"]["value"] == value {
                return;
            }
        }
    })
    .await;
}

/// Stops the mapper with SIGTERM; it must exit cleanly.
async fn stop(mut mapper: Child) {
    let pid = mapper.id().expect("running").to_string();
    let killed = within(
        "kill -TERM",
        Command::new("kill").args(["-TERM", &pid]).status(),
    )
    .await
    .unwrap();
    assert!(killed.success());
    let status = within("the mapper exits", mapper.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_mapper_reports_what_a_device_publishes() {
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The device publishes on the same broker, on a topic of its own (retained, so the
    // mapper's subscription gets it whenever it comes).
    write_devices(
        dir.path(),
        "weather-1",
        "mqtt",
        &format!("{{broker: \"{}\"}}", broker.url()),
        "{topic: \"sensors/weather-1\", jsonPath: \"temperature\"}",
    );
    mosquitto_pub_retained(
        broker.port(),
        "sensors/weather-1",
        br#"{"temperature": 21.5}"#,
    )
    .await;
    let mapper = start_mapper(env!("CARGO_BIN_EXE_mqtt-mapper"), dir.path(), &broker);
    reported(&broker, "weather-1", "21.5").await;
    // A new reading is reported too.
    mosquitto_pub_retained(
        broker.port(),
        "sensors/weather-1",
        br#"{"temperature": 19}"#,
    )
    .await;
    reported(&broker, "weather-1", "19").await;
    stop(mapper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serial_mapper_reports_what_a_line_sensor_answers() {
    let broker = Mosquitto::start().await;
    let pair = PtyPair::start().await;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../kubeedge-mapper/tests/line_sensor.py");
    let mut sensor = Command::new(debian_python())
        .arg(script)
        .arg(pair.b())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the line sensor runs");
    let ready = within(
        "line_sensor.py READY",
        BufReader::new(sensor.stdout.take().unwrap())
            .lines()
            .next_line(),
    )
    .await
    .unwrap();
    assert_eq!(ready.as_deref(), Some("READY"));

    let dir = tempfile::tempdir().unwrap();
    write_devices(
        dir.path(),
        "boiler-2",
        "serial",
        &format!("{{serialPort: \"{}\", baudRate: 9600}}", pair.a().display()),
        "{request: \"READ T\\r\\n\", regex: \"^T=(-?[0-9.]+)$\"}",
    );
    let mapper = start_mapper(env!("CARGO_BIN_EXE_serial-mapper"), dir.path(), &broker);
    reported(&broker, "boiler-2", "21.5").await;
    stop(mapper).await;
}
