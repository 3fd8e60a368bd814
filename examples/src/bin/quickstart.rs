//! `quickstart`: the whole system on one machine, step by step. `scripts/quickstart.sh` builds
//! it and runs it after installing and starting containerd.
//!
//! It starts `cloudcore` in manifest mode, joins an `edgecore` (node `edge-1`) with a real token
//! over TLS, starts a simulated Modbus TCP thermostat in this process and the `modbus-mapper`
//! (registered with edgecore over DMI, reporting over the embedded MQTT broker), writes the
//! example manifests (a pod with a configMap volume; the thermostat's Device and DeviceModel
//! with a desired setpoint), and reports each step as it happens: node joined, pod running,
//! twin reported, desired value written to the device, a new desired value from the cloud.
//! Then it keeps the system running until Ctrl-C (or exits with `--exit-when-done`), deleting
//! the pod first so that no container is left behind.
//!
//! Without a containerd (no `--cri-endpoint`, or nothing answers on it) edgecore runs without
//! pods and the quickstart says so. The sibling binaries are taken from this program's
//! directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kubeedge_config::edgecore::EdgeCoreFile;
use kubeedge_examples::common;
use kubeedge_mapper::modbus::simulated_thermostat::{SETPOINT_REGISTER, SimulatedThermostat};
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const NODE: &str = "edge-1";
/// The most a step may take before the quickstart gives up on it.
const STEP_DEADLINE: Duration = Duration::from_secs(120);

const APP: &str = r#"# The quickstart's pod: it prints the greeting from its ConfigMap volume, then sleeps.
apiVersion: v1
kind: ConfigMap
metadata: {name: hello-config, namespace: default}
data: {greeting: "hello from the cloud"}
---
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: default}
spec:
  nodeName: edge-1
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: edged.test/busybox:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /config/greeting; exec sleep 1000000"]
    volumeMounts: [{name: config, mountPath: /config}]
  volumes:
  - name: config
    configMap: {name: hello-config}
"#;

/// Runs cloudcore, an edgecore joined to it, a simulated Modbus thermostat and the Modbus
/// mapper on this machine, all on 127.0.0.1, and shows each step.
#[derive(clap::Parser)]
#[command(name = "quickstart")]
struct Args {
    /// Files and logs go here (emptied first).
    #[arg(long, default_value = "/tmp/kubeedge-quickstart")]
    dir: PathBuf,
    /// The container runtime's CRI endpoint (none or "": no pods).
    #[arg(long = "cri-endpoint")]
    cri: Option<String>,
    /// Exit once every step is shown, instead of waiting for Ctrl-C.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    exit_when_done: bool,
}

fn main() -> std::process::ExitCode {
    common::main_with("quickstart", <Args as clap::Parser>::parse(), run)
}

fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))
}

/// A child process logging to `<dir>/<name>.log`, killed when dropped.
fn spawn(bin_dir: &Path, dir: &Path, name: &str, args: &[String]) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .map_err(|e| format!("{name}.log: {e}"))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new(bin_dir.join(name))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release -p kubeedge-examples)",
                bin_dir.join(name).display()
            )
        })
}

fn step(text: &str) {
    println!("[ok] {text}");
}

/// Polls `check` every 200 ms until it gives `Some`, or fails after [`STEP_DEADLINE`] saying
/// what did not happen and where to look.
async fn wait_for<T>(
    what: &str,
    logs: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{what}: not within {STEP_DEADLINE:?} (see {logs})"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    kubeedge_fs::write_atomically(path, text.as_bytes(), 0o644).map_err(|e| e.to_string())
}

struct Quickstart {
    dir: PathBuf,
    manifests: PathBuf,
    status: PathBuf,
}

impl Quickstart {
    fn reported(&self, property: &str) -> Option<String> {
        let status = read_json(&self.status.join("devicestatuses/default_thermostat-1.json"))?;
        status["status"]["twins"]
            .as_array()?
            .iter()
            .find(|t| t["propertyName"] == property)?["reported"]["value"]
            .as_str()
            .map(str::to_owned)
    }

    fn log(&self, name: &str) -> String {
        self.dir.join(format!("{name}.log")).display().to_string()
    }
}

/// Tenths of a degree as `23.5 °C`.
fn celsius(tenths: &str) -> String {
    tenths
        .parse::<f64>()
        .map(|t| format!("{:.1} °C", t / 10.0))
        .unwrap_or_else(|_| tenths.to_owned())
}

async fn run(args: Args) -> Result<(), String> {
    let bin_dir = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .parent()
        .ok_or("no directory for this program")?
        .to_path_buf();
    let dir = args.dir;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let qs = Quickstart {
        manifests: dir.join("manifests"),
        status: dir.join("status"),
        dir: dir.clone(),
    };
    std::fs::create_dir_all(&qs.manifests).map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    tokio::spawn(common::cancel_on_signal(shutdown.clone()));

    // 1. The cloud.
    let (hub, https, cloud_metrics) = (free_addr()?, free_addr()?, free_addr()?);
    let pki = dir.join("pki");
    let _cloud = spawn(
        &bin_dir,
        &dir,
        "cloudcore",
        &[
            format!("--pki-dir={}", pki.display()),
            format!("--listen={hub}"),
            format!("--https-listen={https}"),
            "--advertise-address=127.0.0.1".into(),
            format!("--metrics-listen={cloud_metrics}"),
            format!("--manifests={}", qs.manifests.display()),
            format!("--status-dir={}", qs.status.display()),
            "--scan-interval-ms=300".into(),
        ],
    )?;
    wait_for("cloudcore writing its CA", &qs.log("cloudcore"), || {
        pki.join("ca.pem").exists().then_some(())
    })
    .await?;
    step(&format!(
        "cloudcore running in manifest mode: CloudHub {hub}, join server https://{https}, metrics http://{cloud_metrics}/metrics; manifests in {}",
        qs.manifests.display()
    ));

    // 2. The edge joins with a token.
    let token = Command::new(bin_dir.join("cloudcore"))
        .arg("gettoken")
        .arg(format!("--pki-dir={}", pki.display()))
        .stderr(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cloudcore gettoken: {e}"))?;
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let edge_root = dir.join("edge");
    let (mqtt, edge_metrics) = (free_addr()?, free_addr()?);
    let mut join = vec![
        "join".to_owned(),
        format!("--cloudcore={hub}"),
        format!("--https-port={}", https.port()),
        format!("--token={token}"),
        format!("--node={NODE}"),
        format!("--root={}", edge_root.display()),
        format!("--mqtt-internal=tcp://{mqtt}"),
        format!("--metrics-listen={edge_metrics}"),
    ];
    let pods = match args.cri.as_ref().filter(|cri| !cri.is_empty()) {
        Some(cri) => match tokio::net::UnixStream::connect(cri.trim_start_matches("unix://")).await
        {
            Ok(_) => {
                join.push(format!("--cri-endpoint={cri}"));
                true
            }
            Err(e) => {
                println!(
                    "[skipped] pods: nothing answers on {cri} ({e}); edgecore runs without edged (scripts/quickstart.sh installs and starts containerd)"
                );
                false
            }
        },
        None => {
            println!(
                "[skipped] pods: no --cri-endpoint given; edgecore runs without edged (scripts/quickstart.sh installs and starts containerd)"
            );
            false
        }
    };
    let joined = Command::new(bin_dir.join("edgecore"))
        .args(&join)
        .output()
        .await
        .map_err(|e| format!("edgecore join: {e}"))?;
    if !joined.status.success() {
        return Err(format!(
            "edgecore join failed: {}",
            String::from_utf8_lossy(&joined.stderr).trim()
        ));
    }
    let config = edge_root.join("config/edgecore.yaml");
    if !pods {
        let mut file = EdgeCoreFile::load(&config)?;
        file.modules.edged.enable = false;
        write_atomically(&config, &file.to_yaml()?)?;
    }
    step(&format!(
        "node {NODE} joined: the token checked against the cloud's CA, a certificate issued over TLS ({})",
        edge_root.join("certs/server.crt").display()
    ));
    let _edge = spawn(
        &bin_dir,
        &dir,
        "edgecore",
        &[format!("--config={}", config.display())],
    )?;

    // 3. The device and its mapper.
    let thermostat =
        SimulatedThermostat::start("127.0.0.1:0".parse().expect("an address"), shutdown.clone())
            .await
            .map_err(|e| format!("simulated thermostat: {e}"))?;
    let _mapper = spawn(
        &bin_dir,
        &dir,
        "modbus-mapper",
        &[
            "--dmi".into(),
            "--socket".into(),
            dir.join("modbus-mapper.sock").display().to_string(),
            "--edgecore-socket".into(),
            edge_root.join("dmi.sock").display().to_string(),
            "--report".into(),
            "mqtt".into(),
            "--broker".into(),
            format!("tcp://{mqtt}"),
        ],
    )?;
    step(&format!(
        "simulated Modbus thermostat on {} (setpoint {}, temperature {}); modbus-mapper started (DMI + MQTT)",
        thermostat.local_addr(),
        celsius(&thermostat.setpoint().to_string()),
        celsius(&thermostat.temperature().to_string())
    ));

    let result = tokio::select! {
        r = demo(&qs, &thermostat, pods, &edge_root) => r,
        () = shutdown.cancelled() => Err("interrupted".into()),
    };
    if let Err(e) = &result {
        println!("[failed] {e}");
    } else if !args.exit_when_done {
        println!(
            "\nThe system is running. Edit the manifests in {} (the cloud rescans them), watch {} for what the edge reports, logs in {}; Ctrl-C stops it.",
            qs.manifests.display(),
            qs.status.display(),
            dir.display()
        );
        shutdown.cancelled().await;
    }
    if pods {
        remove_pod(&qs).await;
    }
    result
}

async fn demo(
    qs: &Quickstart,
    thermostat: &SimulatedThermostat,
    pods: bool,
    edge_root: &Path,
) -> Result<(), String> {
    let edge_log = qs.log("edgecore");
    wait_for("the edge connected", &edge_log, || {
        let log = std::fs::read_to_string(&edge_log).ok()?;
        log.contains("connected to the cloud").then_some(())
    })
    .await?;
    if pods {
        wait_for("node edge-1 Ready in the cloud", &edge_log, || {
            let node = read_json(&qs.status.join(format!("nodes/{NODE}.json")))?;
            let ready = node["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(())
        })
        .await?;
        step(&format!(
            "node {NODE} registered and Ready ({})",
            qs.status.join("nodes").display()
        ));
    } else {
        step(&format!(
            "node {NODE} connected to the cloud (not registered: no pods without containerd)"
        ));
    }

    // The example manifests.
    let model = include_str!("../../../deploy/quickstart/thermostat-model.yaml");
    let device = include_str!("../../../deploy/quickstart/thermostat.yaml").replace(
        "port: 1502",
        &format!("port: {}", thermostat.local_addr().port()),
    );
    write_atomically(&qs.manifests.join("thermostat-model.yaml"), model)?;
    write_atomically(&qs.manifests.join("thermostat.yaml"), &device)?;
    if pods {
        write_atomically(&qs.manifests.join("hello.yaml"), APP)?;
    }
    step(
        "applied: ConfigMap hello-config + Pod hello, DeviceModel thermostat-model + Device thermostat-1 (desired setpoint 23.5 °C)",
    );

    if pods {
        let ip = wait_for("pod hello Running", &edge_log, || {
            let pod = read_json(&qs.status.join("pods/default_hello.json"))?;
            (pod["status"]["phase"] == "Running")
                .then(|| pod["status"]["podIP"].as_str().unwrap_or("").to_owned())
        })
        .await?;
        let greeting = std::fs::read_dir(edge_root.join("kubelet/pods"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| {
                std::fs::read_to_string(
                    e.path()
                        .join("volumes/kubernetes.io~configmap/config/greeting"),
                )
                .ok()
            })
            .unwrap_or_default();
        step(&format!(
            "pod default/hello Running on {NODE} (pod IP {ip}); its configMap volume holds {greeting:?}"
        ));
    }

    let temperature = wait_for(
        "the twin's temperature reported to the cloud",
        &qs.log("modbus-mapper"),
        || qs.reported("temperature"),
    )
    .await?;
    step(&format!(
        "twin reported: temperature {} in DeviceStatus ({})",
        celsius(&temperature),
        qs.status
            .join("devicestatuses/default_thermostat-1.json")
            .display()
    ));
    wait_for(
        "the desired setpoint written to the device",
        &qs.log("modbus-mapper"),
        || (thermostat.setpoint() == 235).then_some(()),
    )
    .await?;
    step(&format!(
        "desired setpoint written to the device: holding register {SETPOINT_REGISTER} = 235 (23.5 °C); the temperature now follows it ({})",
        celsius(&thermostat.temperature().to_string())
    ));

    // A new desired value from the cloud.
    write_atomically(
        &qs.manifests.join("thermostat.yaml"),
        &device.replace("value: \"235\"", "value: \"210\""),
    )?;
    wait_for(
        "the new setpoint written to the device",
        &qs.log("modbus-mapper"),
        || (thermostat.setpoint() == 210).then_some(()),
    )
    .await?;
    let reported = wait_for(
        "the new setpoint reported back to the cloud",
        &qs.log("edgecore"),
        || qs.reported("setpoint").filter(|v| v == "210"),
    )
    .await?;
    step(&format!(
        "the cloud changed the setpoint: device register {SETPOINT_REGISTER} = 210, reported back as {} ; temperature {}",
        celsius(&reported),
        celsius(&thermostat.temperature().to_string())
    ));
    Ok(())
}

/// Deletes the pod and waits (bounded) until the edge removed its containers, sandbox and
/// volumes (edged deletes the pod's directory last), so nothing is left behind.
async fn remove_pod(qs: &Quickstart) {
    let _ = std::fs::remove_file(qs.manifests.join("hello.yaml"));
    let pods = qs.dir.join("edge/kubelet/pods");
    let gone = wait_for(
        "pod hello removed from the node",
        &qs.log("edgecore"),
        || {
            let left = std::fs::read_dir(&pods).map(|d| d.count()).unwrap_or(0);
            (left == 0 && !qs.status.join("pods/default_hello.json").exists()).then_some(())
        },
    )
    .await;
    match gone {
        Ok(()) => step(
            "pod hello deleted: its containers, sandbox and volumes removed; stopping the system",
        ),
        Err(e) => println!("[warning] {e}"),
    }
}
