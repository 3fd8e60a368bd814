//! The Modbus driver over TCP against pymodbus (Debian python3-pymodbus), and against a fake
//! server in this file that answers with broken MBAP frames.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::{PyModbus, holding, known_values, visitor};
use kubeedge_mapper::modbus::{ExceptionCode, ModbusConfig, ModbusDriver};
use kubeedge_mapper::{DeviceDriver, Error, PropertyType, Value};
use kubeedge_testkit::within;

fn driver(port: u16) -> ModbusDriver {
    ModbusDriver::new(
        ModbusConfig::tcp(format!("127.0.0.1:{port}"), 1)
            .timeout(Duration::from_secs(2))
            .retries(1),
    )
}

#[tokio::test]
async fn reads_every_register_type_with_kubeedge_visitors() {
    let server = PyModbus::tcp(0).await;
    let driver = driver(server.port());
    within("connect", driver.connect()).await.unwrap();
    within("health", driver.health()).await.unwrap();

    for (t, config, want) in known_values() {
        let v = visitor(&driver, t, config.clone());
        let got = within("read", driver.read(&v))
            .await
            .unwrap_or_else(|e| panic!("{t} {config}: {e}"));
        assert_eq!(got.property_type().as_str(), t, "{config}");
        assert_eq!(got.to_twin_string(), want, "{t} {config}");
    }

    // The raw functions return what the datastore holds.
    let raw = within("raw read", driver.read_holding_registers(0, 4))
        .await
        .unwrap();
    assert_eq!(raw, [25, 0xFFFB, 0x41AC, 0x0000]);
    let raw = within("raw read", driver.read_coils(0, 9)).await.unwrap();
    assert_eq!(
        raw,
        [true, false, true, true, false, false, false, false, true]
    );
    let raw = within("raw read", driver.read_discrete_inputs(0, 3))
        .await
        .unwrap();
    assert_eq!(raw, [false, true, true]);
    let raw = within("raw read", driver.read_input_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(raw, [215]);
}

#[tokio::test]
async fn writes_read_back() {
    let server = PyModbus::tcp(0).await;
    let driver = driver(server.port());
    use serde_json::json;

    // (type, visitor, desired twin value, registers it must leave in the device)
    let cases = [
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 30, "limit": 1}),
            "1234",
            vec![1234u16],
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 31, "limit": 1, "scale": 0.1}),
            "30",
            vec![300],
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 32, "limit": 2, "isRegisterSwap": true}),
            "74565",
            vec![0x2345, 0x0001],
        ),
        (
            "FLOAT",
            json!({"register": "HoldingRegister", "offset": 34, "limit": 2, "isRegisterSwap": true}),
            "21.5",
            vec![0x0000, 0x41AC],
        ),
        (
            "DOUBLE",
            json!({"register": "HoldingRegister", "offset": 36, "limit": 4}),
            "-0.5",
            vec![0xBFE0, 0, 0, 0],
        ),
        (
            "STRING",
            json!({"register": "HoldingRegister", "offset": 40, "limit": 3, "isSwap": true}),
            "abc",
            vec![0x6261, 0x0063, 0],
        ),
        (
            "BOOLEAN",
            json!({"register": "HoldingRegister", "offset": 44, "limit": 1}),
            "true",
            vec![1],
        ),
    ];
    for (t, config, desired, registers) in cases {
        let v = visitor(&driver, t, config.clone());
        let value = Value::parse(v.property_type, desired).unwrap();
        within("write", driver.write(&v, &value))
            .await
            .unwrap_or_else(|e| panic!("{t} {config}: {e}"));
        let raw = within("raw read", driver.read_holding_registers(v.offset, v.limit))
            .await
            .unwrap();
        assert_eq!(raw, registers, "{t} {config}");
        let back = within("read back", driver.read(&v)).await.unwrap();
        assert_eq!(back.to_twin_string(), desired, "{t} {config}");
    }

    // Coils: one (function 5) and several (function 15).
    let coil = visitor(
        &driver,
        "BOOLEAN",
        json!({"register": "CoilRegister", "offset": 20, "limit": 1}),
    );
    for desired in [true, false, true] {
        within("write coil", driver.write(&coil, &Value::Boolean(desired)))
            .await
            .unwrap();
        let back = within("read coil", driver.read(&coil)).await.unwrap();
        assert_eq!(back, Value::Boolean(desired));
    }
    let coils = visitor(
        &driver,
        "INT",
        json!({"register": "CoilRegister", "offset": 24, "limit": 4}),
    );
    within("write coils", driver.write(&coils, &Value::Int(0b1010)))
        .await
        .unwrap();
    let raw = within("read coils", driver.read_coils(24, 4))
        .await
        .unwrap();
    assert_eq!(raw, [false, true, false, true]);
    assert_eq!(
        within("read coils", driver.read(&coils)).await.unwrap(),
        Value::Int(10)
    );

    // The raw write functions.
    within(
        "write registers",
        driver.write_multiple_registers(50, &[7, 8, 9]),
    )
    .await
    .unwrap();
    within("write register", driver.write_single_register(53, 10))
        .await
        .unwrap();
    assert_eq!(
        within("read", driver.read_holding_registers(50, 4))
            .await
            .unwrap(),
        [7, 8, 9, 10]
    );
    within(
        "write coils",
        driver.write_multiple_coils(40, &[true, true, false]),
    )
    .await
    .unwrap();
    within("write coil", driver.write_single_coil(43, true))
        .await
        .unwrap();
    assert_eq!(
        within("read", driver.read_coils(40, 4)).await.unwrap(),
        [true, true, false, true]
    );
}

#[tokio::test]
async fn exceptions_and_bad_values_are_typed_and_not_retryable() {
    let server = PyModbus::tcp(0).await;
    let driver = driver(server.port());

    // The holding registers end at 99: pymodbus answers IllegalDataAddress.
    let beyond = holding(PropertyType::Int, 100, 1);
    let err = within("read", driver.read(&beyond)).await.unwrap_err();
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
    assert!(err.to_string().contains("IllegalDataAddress"), "{err}");
    let err = within("write", driver.write(&beyond, &Value::Int(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ModbusException {
                function: 0x06,
                code: ExceptionCode::IllegalDataAddress
            }
        ),
        "{err}"
    );
    let err = within("read", driver.read_input_registers(19, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ModbusException { function: 0x04, .. }),
        "{err}"
    );

    // Values that do not fit fail before anything is sent.
    let one_register = holding(PropertyType::Int, 60, 1);
    for value in [Value::Int(70_000), Value::Int(-1), Value::Float(1.0)] {
        let err = within("write", driver.write(&one_register, &value))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
        assert!(!err.is_retryable());
    }
    let err = Value::parse(PropertyType::Int, "warm").unwrap_err();
    assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");

    // Input registers are read-only.
    let input = visitor(
        &driver,
        "INT",
        serde_json::json!({"register": "InputRegister", "offset": 3, "limit": 1}),
    );
    let err = within("write", driver.write(&input, &Value::Int(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");

    // None of this hurt the connection.
    assert_eq!(
        within("read", driver.read(&input)).await.unwrap(),
        Value::Int(7)
    );
    within("health", driver.health()).await.unwrap();
}

#[tokio::test]
async fn a_dead_server_is_retryable_and_the_driver_reconnects_when_it_is_back() {
    let mut server = PyModbus::tcp(0).await;
    let driver = driver(server.port());
    let v = holding(PropertyType::Int, 0, 1);
    assert_eq!(
        within("read", driver.read(&v)).await.unwrap(),
        Value::Int(25)
    );

    server.kill().await;
    let err = within("read from a dead server", driver.read(&v))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        matches!(err, Error::Connect { .. } | Error::ConnectionLost { .. }),
        "{err}"
    );
    let err = within("health", driver.health()).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    server.restart().await;
    assert_eq!(
        within("read after the restart", driver.read(&v))
            .await
            .unwrap(),
        Value::Int(25)
    );
    within("health", driver.health()).await.unwrap();
}

#[tokio::test]
async fn a_device_that_stops_answering_times_out_and_comes_back() {
    let server = PyModbus::tcp(0).await;
    let driver = ModbusDriver::new(
        ModbusConfig::tcp(format!("127.0.0.1:{}", server.port()), 1)
            .timeout(Duration::from_millis(300))
            .retries(1),
    );
    let v = holding(PropertyType::Int, 0, 1);
    within("read", driver.read(&v)).await.unwrap();

    server.mute();
    let err = within("read from a silent device", driver.read(&v))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        err.to_string().contains("read holding registers 0..=0"),
        "{err}"
    );
    assert!(within("health", driver.health()).await.is_err());

    server.unmute();
    assert_eq!(
        within("read", driver.read(&v)).await.unwrap(),
        Value::Int(25)
    );
    within("health", driver.health()).await.unwrap();
}

/// What the fake server sends in answer to one request.
enum Answer {
    /// A correct answer with these registers.
    Registers(Vec<u16>),
    /// A correct answer from another transaction.
    WrongTransaction,
    /// An MBAP header announcing this length, then that many bytes of nothing.
    Length(u16),
    /// A correct answer with protocol id 1.
    WrongProtocol,
    /// A correct answer from another unit.
    WrongUnit,
    /// A correct header and byte count with too few registers, then the connection closes.
    Truncated,
    /// A correct answer after a pause.
    Late(Duration, Vec<u16>),
}

/// A Modbus TCP server that answers each request (each on a fresh connection if the client
/// reconnects) with the next [`Answer`].
async fn fake_server(answers: Vec<Answer>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut answers = answers.into_iter();
        'connections: loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            loop {
                let mut request = [0u8; 12];
                if stream.read_exact(&mut request).await.is_err() {
                    continue 'connections;
                }
                let Some(answer) = answers.next() else { return };
                let (tid, unit) = ([request[0], request[1]], request[6]);
                let registers = |values: &[u16], tid: [u8; 2], proto: u8, unit: u8| {
                    let mut out = vec![tid[0], tid[1], 0, proto];
                    out.extend_from_slice(&(3 + 2 * values.len() as u16).to_be_bytes());
                    out.extend_from_slice(&[unit, 0x03, 2 * values.len() as u8]);
                    for v in values {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    out
                };
                let bytes = match answer {
                    Answer::Registers(values) => registers(&values, tid, 0, unit),
                    Answer::WrongTransaction => {
                        registers(&[1], [tid[0], tid[1].wrapping_add(7)], 0, unit)
                    }
                    Answer::WrongProtocol => registers(&[1], tid, 1, unit),
                    Answer::WrongUnit => registers(&[1], tid, 0, unit.wrapping_add(1)),
                    Answer::Length(length) => {
                        let mut out = vec![tid[0], tid[1], 0, 0];
                        out.extend_from_slice(&length.to_be_bytes());
                        out.push(unit);
                        out.resize(out.len() + usize::from(length.min(1024)), 0);
                        out
                    }
                    Answer::Late(pause, values) => {
                        tokio::time::sleep(pause).await;
                        registers(&values, tid, 0, unit)
                    }
                    Answer::Truncated => {
                        let mut out = registers(&[1, 2], tid, 0, unit);
                        out.truncate(out.len() - 2);
                        let _ = stream.write_all(&out).await;
                        continue 'connections;
                    }
                };
                if stream.write_all(&bytes).await.is_err() {
                    continue 'connections;
                }
            }
        }
    });
    (port, task)
}

#[tokio::test]
async fn broken_mbap_frames_fail_only_their_request() {
    let answers = vec![
        Answer::WrongTransaction,
        Answer::Registers(vec![42]),
        Answer::Length(0xFFFF),
        Answer::Registers(vec![43]),
        Answer::Length(1),
        Answer::Registers(vec![44]),
        Answer::WrongProtocol,
        Answer::Registers(vec![45]),
        Answer::WrongUnit,
        Answer::Registers(vec![46]),
        Answer::Truncated,
        Answer::Registers(vec![47]),
        Answer::Registers(vec![1, 2]),
    ];
    let (port, _server) = fake_server(answers).await;
    let driver = ModbusDriver::new(
        ModbusConfig::tcp(format!("127.0.0.1:{port}"), 1)
            .timeout(Duration::from_secs(2))
            .retries(0),
    );
    let expected = [
        ("transaction id", 42),
        ("MBAP length 65535", 43),
        ("MBAP length 1", 44),
        ("protocol id 1", 45),
        ("unit id 2", 46),
        ("closed by the peer", 47),
    ];
    for (problem, next) in expected {
        let err = within("broken answer", driver.read_holding_registers(0, 1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(problem), "{problem}: {err}");
        assert!(err.is_retryable(), "{err}");
        let ok = within("good answer", driver.read_holding_registers(0, 1))
            .await
            .unwrap_or_else(|e| panic!("after {problem}: {e}"));
        assert_eq!(ok, [next]);
    }
    // A response with more registers than asked for is refused too.
    let err = within("too many registers", driver.read_holding_registers(0, 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("byte count 4"), "{err}");
}

#[tokio::test]
async fn an_abandoned_request_does_not_break_the_next_one() {
    let answers = vec![
        Answer::Late(Duration::from_millis(300), vec![99]),
        Answer::Registers(vec![7]),
    ];
    let (port, _server) = fake_server(answers).await;
    let driver = ModbusDriver::new(
        ModbusConfig::tcp(format!("127.0.0.1:{port}"), 1)
            .timeout(Duration::from_secs(2))
            .retries(0),
    );
    // The caller gives up on the first request while its answer is still coming.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        driver.read_holding_registers(0, 1),
    )
    .await;
    assert!(abandoned.is_err());
    // The late answer must not be taken for the next request's.
    let ok = within("next request", driver.read_holding_registers(0, 1))
        .await
        .unwrap();
    assert_eq!(ok, [7]);
}
