//! Helpers for the Modbus integration tests: a pymodbus device (tests/modbus_server.py) over
//! TCP or on one end of a socat pty pair. Every process is killed when its handle is dropped
//! and every wait is bounded, so tests run in parallel and a hung peer fails a test instead of
//! hanging it.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use kubeedge_mapper::modbus::{ModbusVisitor, RegisterType};
use kubeedge_mapper::{DeviceDriver, PropertySpec, PropertyType};
use kubeedge_testkit::{DEADLINE, debian_python, within};

fn server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modbus_server.py")
}

/// A pymodbus device (tests/modbus_server.py), killed when dropped.
pub struct PyModbus {
    child: Option<Child>,
    args: Vec<String>,
    dir: TempDir,
    /// What the server printed after READY: the TCP port, or the serial device.
    pub ready: String,
}

impl PyModbus {
    /// A Modbus TCP device on 127.0.0.1:`port` (0: a port the kernel picks).
    pub async fn tcp(port: u16) -> Self {
        Self::start(vec!["tcp".into(), port.to_string()]).await
    }

    /// A Modbus RTU device (slave 1) on the serial device `path`.
    pub async fn rtu(path: &Path) -> Self {
        Self::start(vec!["rtu".into(), path.display().to_string()]).await
    }

    async fn start(mut args: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        args.push("--mute-file".into());
        args.push(dir.path().join("mute").display().to_string());
        args.push("--fault-file".into());
        args.push(dir.path().join("fault").display().to_string());
        if args[0] == "tcp" {
            args.push("--reset-file".into());
            args.push(dir.path().join("reset").display().to_string());
            args.push("--log-file".into());
            args.push(dir.path().join("requests.log").display().to_string());
        }
        let mut server = Self {
            child: None,
            args,
            dir,
            ready: String::new(),
        };
        server.spawn().await;
        server
    }

    /// The TCP port it serves.
    pub fn port(&self) -> u16 {
        self.ready.parse().expect("a TCP server's port")
    }

    /// From now on the device executes requests but does not answer.
    pub fn mute(&self) {
        std::fs::write(self.dir.path().join("mute"), b"").expect("the mute file");
    }

    /// The device answers again.
    pub fn unmute(&self) {
        std::fs::remove_file(self.dir.path().join("mute")).expect("the mute file");
    }

    /// From now on, reads of a range overlapping addresses `first..=last` answer exception 4
    /// (ServerDeviceFailure): the next `count` of them, or all of them until
    /// [`PyModbus::heal`] when `count` is `None`.
    pub fn fault(&self, first: u16, last: u16, count: Option<u32>) {
        let text = match count {
            Some(n) => format!("{first} {last} {n}"),
            None => format!("{first} {last}"),
        };
        std::fs::write(self.dir.path().join("fault"), text).expect("the fault file");
    }

    /// Whether a fault set with a count is still on (the server removes it after the last).
    pub fn faulting(&self) -> bool {
        self.dir.path().join("fault").exists()
    }

    /// Reads answer again.
    pub fn heal(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("fault"));
    }

    /// TCP: from now on every request is answered by resetting its connection.
    pub fn reset_connections(&self) {
        std::fs::write(self.dir.path().join("reset"), b"").expect("the reset file");
    }

    /// TCP: requests are answered again.
    pub fn stop_resets(&self) {
        std::fs::remove_file(self.dir.path().join("reset")).expect("the reset file");
    }

    /// TCP: the lines of the request log so far ("req <function> <address>", "exc <function>
    /// <address>" for an exception 4 of the fault, "reset").
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// TCP: how many log lines start with `prefix`.
    pub fn logged(&self, prefix: &str) -> usize {
        self.log().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Kills the server and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = within("killing pymodbus", child.kill()).await;
        }
    }

    /// Starts it again with the same arguments; a TCP server on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        if self.args[0] == "tcp" {
            self.args[1] = self.ready.clone();
        }
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log = self.dir.path().join("server.log");
        let mut child = Command::new(debian_python())
            .arg(server_script())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("the server log"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", debian_python()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line()).await;
        let Ok(Ok(Some(line))) = line else {
            let _ = child.kill().await;
            panic!(
                "modbus_server.py {:?} did not get ready (is python3-pymodbus installed?): {}",
                self.args,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        self.ready = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        self.child = Some(child);
    }
}

/// A KubeEdge visitor for `driver`, from the DeviceModel type and the visitor's configData.
pub fn visitor<D: DeviceDriver>(
    driver: &D,
    property_type: &str,
    config_data: serde_json::Value,
) -> D::Visitor {
    let spec = PropertySpec::from_json(
        "p",
        property_type,
        serde_json::json!({"protocolName": "modbus", "configData": config_data}),
    )
    .expect("a property spec");
    driver
        .parse_visitor(&spec)
        .unwrap_or_else(|e| panic!("{property_type} {spec:?}: {e}"))
}

/// A holding-register visitor built directly.
pub fn holding(t: PropertyType, offset: u16, limit: u16) -> ModbusVisitor {
    ModbusVisitor::new(t, RegisterType::Holding, offset, limit).expect("a visitor")
}

/// The registers and bits modbus_server.py serves, and the twin strings KubeEdge visitors
/// read from them: (DeviceModel type, visitor configData, twin string).
pub fn known_values() -> Vec<(&'static str, serde_json::Value, &'static str)> {
    use serde_json::json;
    vec![
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 0, "limit": 1, "scale": 1, "isSwap": false, "isRegisterSwap": false}),
            "25",
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 1, "limit": 1}),
            "65531",
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 1, "limit": 1, "signed": true}),
            "-5",
        ),
        (
            "FLOAT",
            json!({"register": "HoldingRegister", "offset": 2, "limit": 2}),
            "21.5",
        ),
        (
            "FLOAT",
            json!({"register": "HoldingRegister", "offset": 4, "limit": 2, "isRegisterSwap": true}),
            "21.5",
        ),
        (
            "FLOAT",
            json!({"register": "HoldingRegister", "offset": 2, "limit": 2, "scale": 0.5}),
            "10.75",
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 6, "limit": 2}),
            "74565",
        ),
        (
            "STRING",
            json!({"register": "HoldingRegister", "offset": 8, "limit": 4}),
            "KubeEdge",
        ),
        (
            "STRING",
            json!({"register": "HoldingRegister", "offset": 8, "limit": 4, "isSwap": true}),
            "uKebdEeg",
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 12, "limit": 1, "isSwap": true}),
            "4660",
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 12, "limit": 1}),
            "13330",
        ),
        (
            "BOOLEAN",
            json!({"register": "HoldingRegister", "offset": 13, "limit": 1}),
            "false",
        ),
        (
            "BOOLEAN",
            json!({"register": "HoldingRegister", "offset": 14, "limit": 1}),
            "true",
        ),
        (
            "DOUBLE",
            json!({"register": "HoldingRegister", "offset": 16, "limit": 4}),
            "1234.5678",
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 20, "limit": 4}),
            "72623859790382856",
        ),
        (
            "INT",
            json!({"register": "HoldingRegister", "offset": 20, "limit": 4, "isRegisterSwap": true}),
            "506660481457717506",
        ),
        (
            "BYTES",
            json!({"register": "HoldingRegister", "offset": 20, "limit": 2, "isSwap": true}),
            "AgEEAw==",
        ),
        (
            "INT",
            json!({"register": "InputRegister", "offset": 0, "limit": 1, "scale": 0.1}),
            "21",
        ),
        (
            "FLOAT",
            json!({"register": "InputRegister", "offset": 1, "limit": 2}),
            "-1.25",
        ),
        (
            "FLOAT",
            json!({"register": "InputRegister", "offset": 1, "limit": 2, "scale": 2}),
            "-2.5",
        ),
        (
            "BOOLEAN",
            json!({"register": "CoilRegister", "offset": 0, "limit": 1}),
            "true",
        ),
        (
            "BOOLEAN",
            json!({"register": "CoilRegister", "offset": 1, "limit": 1}),
            "false",
        ),
        (
            "INT",
            json!({"register": "CoilRegister", "offset": 0, "limit": 4}),
            "13",
        ),
        (
            "INT",
            json!({"register": "CoilRegister", "offset": 0, "limit": 9}),
            "269",
        ),
        (
            "BYTES",
            json!({"register": "CoilRegister", "offset": 0, "limit": 9}),
            "DQE=",
        ),
        (
            "BOOLEAN",
            json!({"register": "DiscreteInputRegister", "offset": 0, "limit": 1}),
            "false",
        ),
        (
            "BOOLEAN",
            json!({"register": "DiscreteInputRegister", "offset": 1, "limit": 1}),
            "true",
        ),
        (
            "INT",
            json!({"register": "DiscreteInputRegister", "offset": 0, "limit": 4}),
            "6",
        ),
    ]
}
