//! Runs the real `cloudcore` binary with `--config cloudcore.yaml` (manifest mode, loopback
//! only) and checks it serves where the file says.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubeedge_testkit::{DEADLINE, free_port};

/// A running cloudcore, killed when dropped; its stderr goes to a file.
struct Cloudcore {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Cloudcore {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let stderr = dir.join("cloudcore.stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_cloudcore"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self { child, stderr }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics with the logs if cloudcore has exited.
    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("cloudcore exited ({status}):\n{}", self.logs());
        }
    }
}

impl Drop for Cloudcore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr`: the whole response, or `None` if it cannot be had (yet).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Polls `check` until it gives a value, failing after [`DEADLINE`] (or when cloudcore exits).
fn wait_for<T>(cloudcore: &mut Cloudcore, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        cloudcore.check_running();
        if Instant::now() > deadline {
            panic!("timed out: {what}\n{}", cloudcore.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cloudcore_serves_where_its_config_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("manifests")).unwrap();
    let (ws, https, metrics) = (free_port(), free_port(), free_port());
    let config = format!(
        "apiVersion: cloudcore.config.kubeedge.io/v1alpha1
kind: CloudCore
commonConfig:
  monitorServer:
    bindAddress: 127.0.0.1:{metrics}
  tunnelPort: 10350
kubeAPIConfig:
  kubeConfig: \"\"
  qps: 2500
modules:
  cloudHub:
    advertiseAddress: [127.0.0.1]
    dnsNames: [\"\"]
    nodeLimit: 10
    tlsCAFile: {root}/ca/rootCA.crt
    tlsCAKeyFile: {root}/ca/rootCA.key
    tlsCertFile: {root}/certs/server.crt
    tlsPrivateKeyFile: {root}/certs/server.key
    websocket: {{enable: true, address: 127.0.0.1, port: {ws}}}
    https: {{enable: true, address: 127.0.0.1, port: {https}}}
    unixsocket: {{enable: true, address: unix:///var/lib/kubeedge/kubeedge.sock}}
  edgeController:
    enable: true
    buffer: {{podEvent: 1}}
  iptablesManager: {{enable: true, mode: internal}}
kubeedgeRs:
  manifests:
    dir: {root}/manifests
    statusDir: {root}/status
    scanIntervalMs: 100
",
        root = root.display()
    );
    let config_path = root.join("cloudcore.yaml");
    std::fs::write(&config_path, config).unwrap();

    let mut cloudcore = Cloudcore::start(root, &["--config", config_path.to_str().unwrap()]);
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics));
    let health = wait_for(
        &mut cloudcore,
        "/healthz on the monitorServer address",
        || http_get(metrics_addr, "/healthz").filter(|r| r.starts_with("HTTP/1.1 200")),
    );
    assert!(health.ends_with("ok\n"), "{health}");
    for (what, port) in [("websocket", ws), ("https", https)] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(
            &mut cloudcore,
            &format!("a TCP connection to {what}"),
            || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok(),
        );
    }
    // The CA was created where tlsCAFile and tlsCAKeyFile say; the server certificate files
    // did not exist, so one was issued (and not written).
    assert!(root.join("ca/rootCA.crt").is_file());
    assert!(root.join("ca/rootCA.key").is_file());
    assert!(!root.join("certs").exists());
    // Manifest mode: the status folder of the file.
    assert!(root.join("status").is_dir(), "{}", cloudcore.logs());
    cloudcore.check_running();
}

#[test]
fn a_flag_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("manifests")).unwrap();
    let (ws, file_metrics, flag_metrics) = (free_port(), free_port(), free_port());
    let config = format!(
        "commonConfig: {{monitorServer: {{bindAddress: 127.0.0.1:{file_metrics}}}}}
modules:
  cloudHub:
    websocket: {{address: 127.0.0.1, port: {ws}}}
    https: {{enable: false}}
kubeedgeRs:
  manifests: {{dir: {root}/manifests}}
",
        root = root.display()
    );
    let config_path = root.join("cloudcore.yaml");
    std::fs::write(&config_path, config).unwrap();
    let pki = root.join("pki");
    let flag_listen = format!("127.0.0.1:{flag_metrics}");
    let mut cloudcore = Cloudcore::start(
        root,
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--metrics-listen",
            &flag_listen,
            "--pki-dir",
            pki.to_str().unwrap(),
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], flag_metrics));
    wait_for(&mut cloudcore, "/healthz on the flag's address", || {
        http_get(addr, "/healthz").filter(|r| r.starts_with("HTTP/1.1 200"))
    });
    // The flag's --pki-dir, not the file's (default) CA paths.
    assert!(pki.join("ca.pem").is_file());
    // Nothing on the file's metrics address.
    assert!(http_get(SocketAddr::from(([127, 0, 0, 1], file_metrics)), "/healthz").is_none());
    // status beside the manifest folder (the default).
    assert!(root.join("status").is_dir());
    cloudcore.check_running();
}

#[test]
fn a_bad_value_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("cloudcore.yaml");
    std::fs::write(
        &config_path,
        "modules:\n  cloudHub:\n    someNewKey: 1\n    websocket:\n      port: 99999\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudcore"))
        .args(["--config", config_path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A bad command line is a usage error (2, from clap); a bad file is a failure (1), as
    // KubeEdge's cloudcore exits when its config does not validate.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("modules.cloudHub.websocket.port: 99999 is not a port"),
        "{stderr}"
    );
}

#[test]
fn gettoken_and_defaultconfig() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("cloudcore.yaml");
    std::fs::write(
        &config_path,
        format!(
            "modules:\n  cloudHub:\n    tlsCAFile: {0}/rootCA.crt\n    tlsCAKeyFile: {0}/rootCA.key\n    tokenRefreshDuration: 1\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudcore"))
        .args(["gettoken", "--config", config_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    assert_eq!(token.split('.').count(), 4, "{token}");
    assert!(dir.path().join("rootCA.key").is_file());

    let out = Command::new(env!("CARGO_BIN_EXE_cloudcore"))
        .arg("--defaultconfig")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        kubeedge_config::cloudcore::DEFAULT_CONFIG
    );
}
