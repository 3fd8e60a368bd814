//! The Modbus driver over RTU: a socat pty pair with pymodbus (Debian python3-pymodbus) on
//! one end, or a hostile fake slave written here, and the driver on the other end.

mod common;

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::SerialStream;

use common::{PyModbus, holding, known_values, visitor};
use kubeedge_mapper::modbus::{ExceptionCode, ModbusConfig, ModbusDriver, SerialConfig};
use kubeedge_mapper::{DeviceDriver, Error, PropertyType, Value};
use kubeedge_testkit::PtyPair;
use kubeedge_testkit::within;

fn serial(path: &Path) -> SerialConfig {
    SerialConfig {
        byte_timeout: Duration::from_millis(50),
        ..SerialConfig::new(path.display().to_string(), 115_200)
    }
}

fn driver(path: &Path, retries: u32) -> ModbusDriver {
    ModbusDriver::new(
        ModbusConfig::rtu(serial(path), 1)
            .timeout(Duration::from_secs(1))
            .retries(retries),
    )
}

#[tokio::test]
async fn pymodbus_rtu_reads_writes_and_exceptions() {
    let pair = PtyPair::start().await;
    let server = PyModbus::rtu(&pair.a()).await;
    let driver = driver(&pair.b(), 1);

    // The same device configuration as KubeEdge writes it.
    let protocol = serde_json::json!({
        "slaveID": 1, "serialPort": pair.b().display().to_string(), "baudRate": 115200,
        "dataBits": 8, "parity": "none", "stopBits": 1, "timeout": 1500
    });
    let from_yaml = ModbusDriver::new(
        ModbusConfig::from_protocol_config(protocol.as_object().unwrap()).unwrap(),
    );
    let v = holding(PropertyType::Int, 0, 1);
    assert_eq!(
        within("read", from_yaml.read(&v)).await.unwrap(),
        Value::Int(25)
    );
    drop(from_yaml); // closes the port (it is opened exclusively)

    for (t, config, want) in known_values() {
        let v = visitor(&driver, t, config.clone());
        let got = within("read", driver.read(&v))
            .await
            .unwrap_or_else(|e| panic!("{t} {config}: {e}"));
        assert_eq!(got.to_twin_string(), want, "{t} {config}");
    }

    let float = holding(PropertyType::Float, 60, 2);
    within("write", driver.write(&float, &Value::Float(-3.5)))
        .await
        .unwrap();
    assert_eq!(
        within("read", driver.read(&float)).await.unwrap(),
        Value::Float(-3.5)
    );
    within("write", driver.write_single_register(62, 0xBEEF))
        .await
        .unwrap();
    within(
        "write",
        driver.write_multiple_coils(30, &[true, false, true]),
    )
    .await
    .unwrap();
    within("write", driver.write_single_coil(33, true))
        .await
        .unwrap();
    assert_eq!(
        within("read", driver.read_holding_registers(60, 3))
            .await
            .unwrap(),
        [0xC060, 0x0000, 0xBEEF]
    );
    assert_eq!(
        within("read", driver.read_coils(30, 4)).await.unwrap(),
        [true, false, true, true]
    );

    let err = within("read", driver.read_holding_registers(99, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ModbusException {
                function: 0x03,
                code: ExceptionCode::IllegalDataAddress
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());

    // Slave 2 does not exist on this bus: nobody answers.
    let err = within("read", driver.for_unit(2).read_holding_registers(0, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(within("health", driver.for_unit(2).health()).await.is_err());
    within("health", driver.health()).await.unwrap();

    // The device stops answering, then answers again.
    server.mute();
    let err = within("read", driver.read(&v)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(within("health", driver.health()).await.is_err());
    server.unmute();
    assert_eq!(
        within("read", driver.read(&v)).await.unwrap(),
        Value::Int(25)
    );
    within("health", driver.health()).await.unwrap();
}

#[tokio::test]
async fn a_lost_serial_line_is_retryable_and_reopened() {
    let mut pair = PtyPair::start().await;
    let mut server = PyModbus::rtu(&pair.a()).await;
    let driver = driver(&pair.b(), 0);
    let v = holding(PropertyType::Int, 0, 1);
    within("read", driver.read(&v)).await.unwrap();

    server.kill().await;
    pair.kill().await;
    let err = within("read on a dead line", driver.read(&v))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = within("read on a dead line", driver.read(&v))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.is_retryable());

    pair.restart().await;
    server = PyModbus::rtu(&pair.a()).await;
    assert_eq!(
        within("read on the new line", driver.read(&v))
            .await
            .unwrap(),
        Value::Int(25)
    );
    drop(server);
}

#[tokio::test]
async fn a_missing_serial_port_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let driver = driver(&dir.path().join("ttyUSB9"), 0);
    let err = within("connect", driver.connect()).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("ttyUSB9"), "{err}");
    assert!(within("health", driver.health()).await.is_err());
}

/// How the fake slave answers one request.
#[derive(Debug, Clone)]
enum Answer {
    /// The right answer: registers 0, 1, 2... from the requested address on.
    Good,
    /// The right answer with a corrupted CRC.
    WrongCrc,
    /// The first `n` bytes of the right answer.
    Short(usize),
    /// Bytes that are no Modbus frame.
    Garbage,
    /// The right answer, from unit 7.
    OtherUnit,
    /// A right-looking start announcing more data than asked for, then a flood of bytes.
    Flood(usize),
    /// The right answer followed by more bytes.
    Trailing(usize),
    /// An exception response with a valid CRC.
    Exception(u8),
}

fn crc(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc.to_le_bytes()
}

fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let c = crc(&frame);
    frame.extend_from_slice(&c);
    frame
}

/// A slave on `path` that reads function-3 requests and answers each with the next answer
/// from `answers`. It reports each request it saw.
async fn fake_slave(
    path: &Path,
    mut answers: mpsc::Receiver<Answer>,
    seen: mpsc::Sender<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    let builder = tokio_serial::new(path.display().to_string(), 115_200);
    let mut port = SerialStream::open(&builder).expect("the fake slave's pty end");
    tokio::spawn(async move {
        loop {
            let mut request = [0u8; 8];
            if port.read_exact(&mut request).await.is_err() {
                return;
            }
            let _ = seen.send(request.to_vec()).await;
            let Some(answer) = answers.recv().await else {
                return;
            };
            let (unit, address, count) = (
                request[0],
                u16::from_be_bytes([request[2], request[3]]),
                u16::from_be_bytes([request[4], request[5]]),
            );
            let mut good = vec![unit, 0x03, (2 * count) as u8];
            for i in 0..count {
                good.extend_from_slice(&address.wrapping_add(i).to_be_bytes());
            }
            let bytes = match answer {
                Answer::Good => with_crc(good),
                Answer::WrongCrc => {
                    let mut frame = with_crc(good);
                    let last = frame.len() - 1;
                    frame[last] ^= 0x5A;
                    frame
                }
                Answer::Short(n) => with_crc(good)[..n].to_vec(),
                Answer::Garbage => vec![0x55; 12],
                Answer::OtherUnit => {
                    good[0] = 7;
                    with_crc(good)
                }
                Answer::Flood(n) => {
                    let mut flood = vec![unit, 0x03, 0xFA];
                    flood.resize(n, 0xAB);
                    flood
                }
                Answer::Trailing(n) => {
                    let mut frame = with_crc(good);
                    frame.extend(std::iter::repeat_n(0x01, n));
                    frame
                }
                Answer::Exception(code) => with_crc(vec![unit, 0x83, code]),
            };
            if port.write_all(&bytes).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test]
async fn hostile_frames_fail_only_their_request_and_the_line_recovers() {
    let pair = PtyPair::start().await;
    let (answer, answers) = mpsc::channel(16);
    let (seen_tx, mut seen) = mpsc::channel(16);
    let _slave = fake_slave(&pair.a(), answers, seen_tx).await;
    let driver = driver(&pair.b(), 0);

    // (answer, what the error must say)
    let hostile = [
        (Answer::WrongCrc, "CRC"),
        (Answer::Short(4), "short frame: 4 of 9 bytes, then silence"),
        (Answer::Short(1), "short frame: 1 byte(s), then silence"),
        (
            Answer::Garbage,
            "a frame from unit 85 while waiting for unit 1",
        ),
        (
            Answer::OtherUnit,
            "a frame from unit 7 while waiting for unit 1",
        ),
        (Answer::Flood(4096), "byte count 250"),
        (
            Answer::Trailing(300),
            "unexpected bytes after a complete 9-byte frame",
        ),
    ];
    for (bad, says) in hostile {
        answer.send(bad.clone()).await.unwrap();
        let err = within("hostile answer", driver.read_holding_registers(10, 2))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadFrame { .. }), "{bad:?}: {err}");
        assert!(err.to_string().contains(says), "{bad:?}: {err}");
        assert!(err.is_retryable(), "{bad:?}");
        let request = within("request", seen.recv()).await.unwrap();
        assert_eq!(request, with_crc(vec![1, 0x03, 0, 10, 0, 2]));

        // The next exchange is clean.
        answer.send(Answer::Good).await.unwrap();
        let ok = within("good answer", driver.read_holding_registers(20, 2))
            .await
            .unwrap_or_else(|e| panic!("after {bad:?}: {e}"));
        assert_eq!(ok, [20, 21], "after {bad:?}");
        within("request", seen.recv()).await.unwrap();
    }

    // An exception response with a valid CRC is a typed exception, not a broken frame.
    answer.send(Answer::Exception(0x06)).await.unwrap();
    let err = within("exception", driver.read_holding_registers(0, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ModbusException {
                function: 0x03,
                code: ExceptionCode::ServerDeviceBusy
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable(), "busy is worth retrying");

    // With retries, one garbled answer is invisible to the caller.
    drop(driver);
    let driver = ModbusDriver::new(
        ModbusConfig::rtu(serial(&pair.b()), 1)
            .timeout(Duration::from_millis(1500))
            .retries(2),
    );
    answer.send(Answer::WrongCrc).await.unwrap();
    answer.send(Answer::Good).await.unwrap();
    let v = holding(PropertyType::Int, 5, 1);
    assert_eq!(
        within("read with a retry", driver.read(&v)).await.unwrap(),
        Value::Int(5)
    );
}
