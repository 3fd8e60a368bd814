//! The whole system as separate processes on loopback: the real `cloudcore` (manifest mode),
//! `edgecore` (joined with a token over TLS, pods on the real containerd of
//! `scripts/containerd-env.sh`, its EventBus on a real mosquitto) and `modbus-mapper` (DMI +
//! MQTT) polling a pymodbus device. The link between edge and cloud runs through a TCP relay the
//! test can cut. Every process dies with its handle; every wait has a deadline and no test
//! asserts a duration.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_testkit::{Mosquitto, debian_python, free_port};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Deadline for anything the system does on its own (a pod starting, a reconnect after the
/// hub's back-off, which grows to 30 s).
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The CRI endpoint of the test containerd, or `None` (the test is skipped, saying so).
pub fn cri_endpoint() -> Option<String> {
    match std::env::var("EDGED_CRI_ENDPOINT") {
        Ok(e) if !e.is_empty() => Some(e),
        _ => {
            eprintln!("skipped: EDGED_CRI_ENDPOINT not set (run scripts/containerd-env.sh up)");
            None
        }
    }
}

/// Polls `check` every 200 ms until it gives `Some`; fails the test at [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            eprintln!("system: {what}");
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP relay between the edge and the CloudHub that the test can cut and restore.
pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    upstream: Arc<Mutex<SocketAddr>>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(Mutex::new(upstream));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (c, l, u) = (Arc::clone(&cut), Arc::clone(&links), Arc::clone(&upstream));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut edge, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the edge sees the connection closed
                }
                let upstream = *u.lock().unwrap();
                let link = tokio::spawn(async move {
                    if let Ok(mut cloud) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut edge, &mut cloud).await;
                    }
                });
                let mut links = l.lock().unwrap();
                links.retain(|h| !h.is_finished());
                links.push(link);
            }
        });
        Self {
            addr,
            cut,
            upstream,
            links,
            task,
        }
    }

    /// Sends new connections to `upstream` (another replica) and drops the current ones.
    pub fn switch(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "cloudcore" => PathBuf::from(env!("CARGO_BIN_EXE_cloudcore")),
        "edgecore" => PathBuf::from(env!("CARGO_BIN_EXE_edgecore")),
        "modbus-mapper" => PathBuf::from(env!("CARGO_BIN_EXE_modbus-mapper")),
        other => panic!("no binary {other}"),
    }
}

/// Our Modbus mapper over DMI with edgecore's socket `dmi_socket`, its own socket and log in
/// `dir`, reporting as `report` says.
pub fn dmi_mapper(dir: &Path, dmi_socket: &Path, report: &[String]) -> Proc {
    let mut args = vec![
        "--dmi".into(),
        "--socket".into(),
        dir.join("modbus-mapper.sock").display().to_string(),
        "--edgecore-socket".into(),
        dmi_socket.display().to_string(),
    ];
    args.extend_from_slice(report);
    Proc::spawn("modbus-mapper", args, dir.join("modbus-mapper.log"))
}

/// `edgecore join ARGS`, failing the test with its output unless it succeeds.
pub async fn edgecore_join(args: &[String]) {
    let join = Command::new(bin("edgecore"))
        .arg("join")
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        join.status.success(),
        "edgecore join: {}",
        String::from_utf8_lossy(&join.stderr)
    );
}

/// A child process with its log file, killed (SIGKILL) when dropped.
pub struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, args: Vec<String>, log: PathBuf) -> Self {
        let mut p = Self {
            name: name.to_owned(),
            args,
            log,
            child: None,
        };
        p.start();
        p
    }

    /// Starts it (again), appending to its log.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin(&self.name))
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("KUBEEDGE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL, and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = tokio::time::timeout(DEADLINE, child.kill()).await;
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A pymodbus device (kubeedge-mapper's test server), killed when dropped.
pub struct PyModbus {
    pub port: u16,
    _child: Child,
}

impl PyModbus {
    pub async fn start(dir: &Path) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../kubeedge-mapper/tests/modbus_server.py");
        let mut child = Command::new(debian_python())
            .arg(script)
            .args(["tcp", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("pymodbus.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with pymodbus");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("pymodbus ready")
            .unwrap()
            .expect("READY <port>");
        let port = line.strip_prefix("READY ").unwrap().parse().unwrap();
        Self {
            port,
            _child: child,
        }
    }

    async fn request(&self, pdu: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut frame = vec![0, 1, 0, 0];
        frame.extend_from_slice(&u16::try_from(pdu.len() + 1).unwrap().to_be_bytes());
        frame.push(1);
        frame.extend_from_slice(pdu);
        stream.write_all(&frame).await.unwrap();
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).await.unwrap();
        let len = usize::from(u16::from_be_bytes([head[4], head[5]])) - 1;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        body
    }

    /// Holding register `addr`, read the way any Modbus client would.
    pub async fn holding(&self, addr: u16) -> u16 {
        let mut pdu = vec![3];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&1u16.to_be_bytes());
        let body = self.request(&pdu).await;
        assert_eq!(body[0], 3, "read answered {body:?}");
        u16::from_be_bytes([body[2], body[3]])
    }

    /// Writes holding register `addr` (function 6).
    pub async fn set_holding(&self, addr: u16, value: u16) {
        let mut pdu = vec![6];
        pdu.extend_from_slice(&addr.to_be_bytes());
        pdu.extend_from_slice(&value.to_be_bytes());
        let body = self.request(&pdu).await;
        assert_eq!(body[0], 6, "write answered {body:?}");
    }
}

/// The whole system.
pub struct System {
    pub dir: tempfile::TempDir,
    pub node: String,
    pub manifests: PathBuf,
    pub status: PathBuf,
    pub cloud: Proc,
    pub edge: Proc,
    pub mapper: Proc,
    pub relay: Relay,
    pub broker: Mosquitto,
    pub modbus: PyModbus,
    pub cri: String,
    pub edge_metrics: SocketAddr,
    /// The cloud's join server.
    pub https: SocketAddr,
}

impl System {
    /// Cloud up, node joined through the relay and running, mapper registered.
    pub async fn start(node: &str, cri: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (manifests, status) = (root.join("manifests"), root.join("status"));
        std::fs::create_dir_all(&manifests).unwrap();
        let hub: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let https: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let pki = root.join("pki");
        let cloud_args: Vec<String> = vec![
            format!("--pki-dir={}", pki.display()),
            format!("--listen={hub}"),
            format!("--https-listen={https}"),
            "--advertise-address=127.0.0.1".into(),
            format!("--manifests={}", manifests.display()),
            format!("--status-dir={}", status.display()),
            "--scan-interval-ms=200".into(),
        ];
        let cloud = Proc::spawn("cloudcore", cloud_args, root.join("cloudcore.log"));
        // The token (the CA is written by the running cloudcore first).
        let pki_for_token = pki.clone();
        let token = eventually("a join token", || {
            let pki = pki_for_token.clone();
            async move {
                if !pki.join("ca.pem").exists() {
                    return None;
                }
                let out = Command::new(bin("cloudcore"))
                    .arg("gettoken")
                    .arg(format!("--pki-dir={}", pki.display()))
                    .output()
                    .await
                    .ok()?;
                let token = String::from_utf8(out.stdout).ok()?.trim().to_owned();
                (out.status.success() && !token.is_empty()).then_some(token)
            }
        })
        .await;
        let relay = Relay::start(hub).await;
        let broker = Mosquitto::start().await;
        let edge_root = root.join("edge");
        let edge_metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        edgecore_join(&[
            format!("--cloudcore={}", relay.addr),
            format!("--https-port={}", https.port()),
            format!("--token={token}"),
            format!("--node={node}"),
            format!("--root={}", edge_root.display()),
            format!("--cri-endpoint={cri}"),
            format!("--metrics-listen={edge_metrics}"),
        ])
        .await;
        // The EventBus on the external mosquitto (mqttMode 2), as KubeEdge's default.
        let config = edge_root.join("config/edgecore.yaml");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("mqttMode: 0", "mqttMode: 2").replace(
            "mqttServerExternal: tcp://127.0.0.1:1883",
            &format!("mqttServerExternal: {}", broker.url()),
        );
        std::fs::write(&config, text).unwrap();
        let edge = Proc::spawn(
            "edgecore",
            vec![format!("--root={}", edge_root.display())],
            root.join("edgecore.log"),
        );
        let modbus = PyModbus::start(root).await;
        let mapper = dmi_mapper(
            root,
            &edge_root.join("dmi.sock"),
            &[
                "--report".into(),
                "mqtt".into(),
                "--broker".into(),
                broker.url(),
            ],
        );
        Self {
            dir,
            node: node.to_owned(),
            manifests,
            status,
            cloud,
            edge,
            mapper,
            relay,
            broker,
            modbus,
            cri,
            edge_metrics,
            https,
        }
    }

    /// Writes a manifest file (atomically, as an editor or `kubectl` would replace it).
    pub fn apply(&self, name: &str, yaml: &str) {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests.join(name)).unwrap();
    }

    /// Removes a manifest file.
    pub fn delete(&self, name: &str) {
        std::fs::remove_file(self.manifests.join(name)).unwrap();
    }

    /// A status file the cloud wrote (`<kind plural>/<namespace>_<name>.json`), if any.
    pub fn status_of(&self, plural: &str, file: &str) -> Option<Value> {
        let text = std::fs::read_to_string(self.status.join(plural).join(file)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The node's `Ready` condition status in the cloud.
    pub fn node_ready(&self) -> Option<String> {
        let node = self.status_of("nodes", &format!("{}.json", self.node))?;
        kubeedge_cloud::ready_status(&node).map(str::to_owned)
    }

    /// A pod's status in the cloud.
    pub fn pod_status(&self, name: &str) -> Option<Value> {
        let pod = self.status_of("pods", &format!("default_{name}.json"))?;
        Some(pod["status"].clone())
    }

    /// The reported value of a device twin property in the cloud's DeviceStatus.
    pub fn reported(&self, device: &str, property: &str) -> Option<String> {
        let status = self.status_of("devicestatuses", &format!("default_{device}.json"))?;
        status["status"]["twins"]
            .as_array()?
            .iter()
            .find(|t| t["propertyName"] == property)
            .and_then(|t| t["reported"]["value"].as_str())
            .map(str::to_owned)
    }

    /// Whether containerd runs a task for `container_id` (`containerd://<id>` or `<id>`).
    pub async fn container_running(&self, container_id: &str) -> bool {
        let id = container_id.trim_start_matches("containerd://");
        let socket = self.cri.trim_start_matches("unix://");
        let out = Command::new("ctr")
            .args(["-a", socket, "-n", "k8s.io", "tasks", "ls"])
            .output()
            .await
            .expect("ctr");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
    }

    /// The edge's `/metrics` value of `name`, if it answers.
    pub async fn edge_metric(&self, name: &str) -> Option<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(self.edge_metrics).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in [&self.cloud, &self.edge, &self.mapper] {
                eprintln!("---- {} log (tail) ----\n{}", p.name, p.log_tail(60));
            }
        }
    }
}
