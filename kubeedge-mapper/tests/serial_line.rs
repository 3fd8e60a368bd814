//! The serial line driver on one end of a socat pty pair, with a line sensor on the other end:
//! tests/line_sensor.py (Debian's python3, standard library only), or a hostile peer written
//! here.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_serial::SerialStream;

use kubeedge_mapper::serial_line::{SerialLineConfig, SerialLineDriver, SerialLineVisitor};
use kubeedge_mapper::{DeviceDriver, Error, PropertySpec, PropertyType, Value};
use kubeedge_testkit::PtyPair;
use kubeedge_testkit::{debian_python, within};

/// tests/line_sensor.py on a serial device, killed when dropped.
struct PySensor {
    child: Child,
}

impl PySensor {
    async fn start(path: &Path) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/line_sensor.py");
        let mut child = Command::new(debian_python())
            .arg(script)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", debian_python()));
        let stdout = child.stdout.take().expect("piped stdout");
        let line = within(
            "line_sensor.py READY",
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("line_sensor.py's stdout");
        assert_eq!(
            line.as_deref(),
            Some("READY"),
            "line_sensor.py did not start"
        );
        Self { child }
    }

    async fn kill(mut self) {
        let _ = within("killing line_sensor.py", self.child.kill()).await;
    }
}

/// A driver on `path`, configured as a Device's protocol configData would.
fn driver(path: &Path, timeout_ms: u64) -> SerialLineDriver {
    let config = json!({
        "serialPort": path.display().to_string(), "baudRate": 115200, "dataBits": 8,
        "parity": "none", "stopBits": 1, "delimiter": "\\r\\n", "timeout": timeout_ms,
        "maxLineBytes": 4096
    });
    SerialLineDriver::new(
        SerialLineConfig::from_protocol_config(config.as_object().unwrap())
            .unwrap_or_else(|e| panic!("{config}: {e}")),
    )
}

fn property(
    driver: &SerialLineDriver,
    t: &str,
    config_data: serde_json::Value,
) -> SerialLineVisitor {
    let spec = PropertySpec::from_json(
        "p",
        t,
        json!({"protocolName": "serial", "configData": config_data}),
    )
    .expect("a property spec");
    driver
        .parse_visitor(&spec)
        .unwrap_or_else(|e| panic!("{t} {spec:?}: {e}"))
}

#[tokio::test]
async fn reads_and_writes_a_python_sensor() {
    let pair = PtyPair::start().await;
    let _sensor = PySensor::start(&pair.a()).await;
    let driver = driver(&pair.b(), 2000);

    let temperature = property(
        &driver,
        "FLOAT",
        json!({"request": "READ T\\r\\n", "regex": "^T=(-?[0-9.]+)$"}),
    );
    let humidity = property(
        &driver,
        "INT",
        json!({"request": "READ H\r\n", "field": 1, "separator": ","}),
    );
    let unit = property(
        &driver,
        "STRING",
        json!({"request": "READ H\\r\\n", "field": 2}),
    );
    let name = property(
        &driver,
        "STRING",
        json!({"request": "READ NAME\\r\\n", "regex": "^NAME=(.*)$"}),
    );
    let set_point = property(
        &driver,
        "INT",
        json!({"request": "READ S\\r\\n", "regex": "S=(\\d+)",
               "writeTemplate": "SET {value}\\r\\n", "expect": "^OK$"}),
    );

    within("connect", driver.connect()).await.unwrap();
    within("health", driver.health()).await.unwrap();
    let read = async |v: &SerialLineVisitor| within("read", driver.read(v)).await;
    assert_eq!(read(&temperature).await.unwrap(), Value::Float(21.5));
    assert_eq!(read(&humidity).await.unwrap(), Value::Int(45));
    assert_eq!(read(&unit).await.unwrap(), Value::from("%"));
    assert_eq!(read(&name).await.unwrap(), Value::from("boiler 2"));
    assert_eq!(read(&set_point).await.unwrap(), Value::Int(20));

    // A desired value from the twin, written with the template and confirmed with "OK".
    let desired = Value::parse(PropertyType::Int, "30").unwrap();
    within("write", driver.write(&set_point, &desired))
        .await
        .unwrap();
    assert_eq!(read(&set_point).await.unwrap(), Value::Int(30));

    // The device refuses a command: its answer does not match `expect`.
    let set_text = property(
        &driver,
        "STRING",
        json!({"writeTemplate": "SET {value}\\r\\n", "expect": "^OK$"}),
    );
    let err = within("write", driver.write(&set_text, &Value::from("warm")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadFrame { .. }), "{err}");
    assert!(
        err.to_string().contains("\"ERR not a number\"")
            && err.to_string().contains("does not match expect ^OK$"),
        "{err}"
    );
    // An answer that does not match the regex.
    let unknown = property(
        &driver,
        "INT",
        json!({"request": "READ X\\r\\n", "regex": "^X=(\\d+)$"}),
    );
    let err = read(&unknown).await.unwrap_err();
    assert!(
        matches!(err, Error::BadFrame { .. })
            && err
                .to_string()
                .contains("answer \"ERR unknown command\" does not match regex ^X=(\\d+)$"),
        "{err}"
    );
    assert_eq!(read(&set_point).await.unwrap(), Value::Int(30));

    // Clones share the port and take turns: every answer belongs to its own request.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (driver, t, h) = (driver.clone(), temperature.clone(), humidity.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                if i % 2 == 0 {
                    assert_eq!(driver.read(&t).await.unwrap(), Value::Float(21.5));
                } else {
                    assert_eq!(driver.read(&h).await.unwrap(), Value::Int(45));
                }
            }
        }));
    }
    for task in tasks {
        within("concurrent reads", task).await.unwrap();
    }
    within("health", driver.health()).await.unwrap();
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A misbehaving sensor on `path`: reads CRLF-terminated requests and answers by name.
fn hostile_peer(path: &Path) -> AbortOnDrop {
    let builder = tokio_serial::new(path.display().to_string(), 115_200);
    let mut port = SerialStream::open(&builder).expect("the peer's end of the pty pair");
    AbortOnDrop(tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = match port.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
                let request: Vec<u8> = pending.drain(..end + 2).collect();
                let answer: Vec<u8> = match &request[..end] {
                    b"READ T" => b"T=21.5\r\n".to_vec(),
                    b"READ SILENT" => Vec::new(),
                    b"READ PARTIAL" => b"T=2".to_vec(),
                    // 10 KB without a delimiter, then the delimiter.
                    b"READ FLOOD" => [vec![b'x'; 10_000], b"\r\n".to_vec()].concat(),
                    // 10 KB without a delimiter, and nothing more.
                    b"READ ENDLESS" => vec![b'y'; 10_000],
                    b"READ WRONG" => b"HUMIDITY 45\r\n".to_vec(),
                    b"READ BIG" => b"T=99999999999999999999\r\n".to_vec(),
                    b"READ BINARY" => b"T=\xff\xfe\r\n".to_vec(),
                    // Blank lines before the answer, and a stray line after it.
                    b"READ TWICE" => b"\r\n\r\nT=2\r\nT=666\r\n".to_vec(),
                    _ => b"NO\r\n".to_vec(),
                };
                if port.write_all(&answer).await.is_err() {
                    return;
                }
            }
        }
    }))
}

#[tokio::test]
async fn a_hostile_peer_gets_clear_errors_and_the_line_recovers() {
    let pair = PtyPair::start().await;
    let _peer = hostile_peer(&pair.a());
    let driver = driver(&pair.b(), 500);
    let int = |request: &str| {
        property(
            &driver,
            "INT",
            json!({"request": format!("{request}\\r\\n"), "regex": "^T=(\\d+)$"}),
        )
    };
    let good = property(
        &driver,
        "FLOAT",
        json!({"request": "READ T\\r\\n", "regex": "^T=([0-9.]+)$"}),
    );
    let read_good = async || {
        assert_eq!(
            within("read", driver.read(&good)).await.unwrap(),
            Value::Float(21.5)
        );
    };
    read_good().await;

    // No answer: a retryable timeout, and the device counts as unreachable until it answers.
    let err = within("read", driver.read(&int("READ SILENT")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("READ SILENT"), "{err}");
    assert!(within("health", driver.health()).await.is_err());
    read_good().await;
    within("health", driver.health()).await.unwrap();

    // Half a line, then silence.
    let err = within("read", driver.read(&int("READ PARTIAL")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { .. })
            && err.to_string().contains("got \"T=2\" without a delimiter"),
        "{err}"
    );
    read_good().await;

    // Garbage longer than the line limit, then a delimiter: discarded up to it.
    let err = within("read", driver.read(&int("READ FLOOD")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadFrame { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string().contains("longer than maxLineBytes 4096")
            && err.to_string().contains("up to the next delimiter"),
        "{err}"
    );
    read_good().await;

    // Garbage longer than the limit that never ends with a delimiter.
    let err = within("read", driver.read(&int("READ ENDLESS")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BadFrame { .. })
            && err.to_string().contains("no delimiter came within"),
        "{err}"
    );
    read_good().await;

    // An answer that does not match, one that is not text, a value that does not fit.
    let err = within("read", driver.read(&int("READ WRONG")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BadFrame { .. })
            && err
                .to_string()
                .contains("answer \"HUMIDITY 45\" does not match regex"),
        "{err}"
    );
    let err = within("read", driver.read(&int("READ BINARY")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BadFrame { .. }) && err.to_string().contains("not UTF-8"),
        "{err}"
    );
    let err = within("read", driver.read(&int("READ BIG")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TypeMismatch { .. })
            && err.to_string().contains("out of the 64-bit integer range"),
        "{err}"
    );
    assert!(!err.is_retryable());
    read_good().await;

    // Blank lines are skipped; a stray line after the answer is stale by the next request.
    assert_eq!(
        within("read", driver.read(&int("READ TWICE")))
            .await
            .unwrap(),
        Value::Int(2)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    read_good().await;

    // A caller that gives up on a request (drops the read) leaves the line in step.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(50), driver.read(&int("READ SILENT"))).await;
    assert!(
        abandoned.is_err(),
        "READ SILENT got an answer: {abandoned:?}"
    );
    read_good().await;

    // A write the device does not confirm.
    let set = property(
        &driver,
        "INT",
        json!({"writeTemplate": "SET {value}\\r\\n", "expect": "^OK$"}),
    );
    let err = within("write", driver.write(&set, &Value::Int(5)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BadFrame { .. })
            && err
                .to_string()
                .contains("answered \"NO\" to \"SET 5\\r\\n\""),
        "{err}"
    );
    read_good().await;
    within("health", driver.health()).await.unwrap();
}

#[tokio::test]
async fn a_port_that_disappears_is_reopened() {
    let mut pair = PtyPair::start().await;
    let sensor = PySensor::start(&pair.a()).await;
    let driver = driver(&pair.b(), 1000);
    let temperature = property(
        &driver,
        "FLOAT",
        json!({"request": "READ T\\r\\n", "regex": "^T=([0-9.]+)$"}),
    );
    assert_eq!(
        within("read", driver.read(&temperature)).await.unwrap(),
        Value::Float(21.5)
    );

    sensor.kill().await;
    pair.kill().await;
    let err = within("read on a dead line", driver.read(&temperature))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // The port was closed; it cannot be opened while the device is gone.
    let err = within("read on a dead line", driver.read(&temperature))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(within("health", driver.health()).await.is_err());

    pair.restart().await;
    let _sensor = PySensor::start(&pair.a()).await;
    assert_eq!(
        within("read after the line came back", driver.read(&temperature))
            .await
            .unwrap(),
        Value::Float(21.5)
    );
    within("health", driver.health()).await.unwrap();
}
