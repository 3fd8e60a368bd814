//! The **real peers** on loopback, for integration tests that check kubeedge-rs against the real
//! thing instead of fakes: KubeEdge v1.23.1's own `cloudcore` and `edgecore`, and a real
//! Kubernetes v1.32 control plane (etcd + kube-apiserver, optionally kube-controller-manager and
//! kube-scheduler).
//!
//! They are started with the harness scripts of the workplace's `../shared/peers/harness`
//! (`control-plane.sh`, `real-cloudcore.sh`, `real-edgecore.sh`, `down.sh`; their README documents
//! every variable, port and quirk of the peers), each run in its own fresh, short state
//! directory `/tmp/kp-XXXXXX` (its [`RunDir`]) with kernel-chosen free ports, so tests run in
//! parallel and never touch a harness run of somebody else (the scripts' default ports are never
//! used).
//!
//! - [`Peers::find`] locates the peers and checks the tools; it is where a test skips;
//! - [`ControlPlane`]: etcd + kube-apiserver + the KubeEdge CRDs (and with
//!   [`ControlPlaneOptions::controllers`] a controller-manager and a scheduler), with kubectl
//!   helpers;
//! - [`RealCloudcore`]: KubeEdge's cloudcore against a [`ControlPlane`];
//! - [`RealEdgecore`]: KubeEdge's edgecore joined to *any* cloud that serves KubeEdge's join
//!   endpoints (the real cloudcore or the project's own), with read-only access to its
//!   `edgecore.db`;
//! - [`KubeletSysctls`]: the host sysctls edged's kubelet insists on, set for a test and restored;
//! - [`port_listening`], for checking that nothing is left behind.
//!
//! # Skipping
//!
//! A clone outside the workplace has no `../shared/peers`. A test starts with
//!
//! ```no_run
//! # async fn test() {
//! use kubeedge_testkit::peers::{ControlPlane, ControlPlaneOptions, Peers};
//! let Some(peers) = Peers::find() else { return }; // prints "skipped: <why>"
//! let cp = ControlPlane::start(&peers, ControlPlaneOptions::default()).await;
//! # }
//! ```
//!
//! [`Peers::find`] gives `None`, after printing `skipped: <why>` to stderr, when the peers'
//! folder or one of the tools the scripts need is missing. With `KUBEEDGE_REQUIRE_PEERS=1` (CI
//! sets it) it panics with the reason instead: CI never skips silently. [`edged_cri_endpoint`]
//! and [`KubeletSysctls::apply`] skip (or panic) the same way. Once found, every failure to start
//! a peer panics.
//!
//! # Environment
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KUBEEDGE_PEERS_DIR` | `<workspace>/../shared/peers` (from this crate's `CARGO_MANIFEST_DIR`) | the peers' folder (`unpack.sh`, `bin/`, `crds/`, `harness/`) |
//! | `KUBEEDGE_PEERS_CACHE` | `/tmp/kubeedge-peers/bin` | where `unpack.sh` unpacks the binaries (once; reused across runs, checked against `SHA256SUMS`) |
//! | `KUBEEDGE_REQUIRE_PEERS` | – | `1`: panic instead of skipping |
//! | `KUBEEDGE_KEEP_RUN_DIR` | – | `1`: keep every [`RunDir`] (logs, configs, edgecore.db) also when the test passes |
//! | `EDGED_CRI_ENDPOINT` | – | the CRI endpoint for [`EdgeOptions::edged`] (`scripts/containerd-env.sh up`) |
//!
//! Every variable the harness scripts read (`RUN_DIR`, `ETCD_PORT`, `MQTT_PORT`, ...) is removed
//! from their environment and set explicitly, so a harness run exported in the calling shell is
//! never picked up. `PATH` gets `/usr/sbin` and `/sbin` appended (mosquitto lives there).
//!
//! # Cleanup
//!
//! Every process the scripts start is recorded by pid under `RUN_DIR/pids`. Dropping a
//! [`RealEdgecore`] stops its edgecore (SIGINT) and its mosquitto, dropping a [`RealCloudcore`]
//! stops cloudcore (SIGINT), and dropping the [`RunDir`] (inside [`ControlPlane`]) runs
//! `down.sh RUN_DIR` synchronously, which stops whatever is left by pid (SIGKILL after 15 s) and
//! removes the directory. When the test is panicking, the last 60 lines of every log under
//! `RUN_DIR/logs` are printed to stderr (each [`RealEdgecore`] and [`RealCloudcore`] prints its
//! own before it stops, so the tail shows the failure rather than the shutdown; the [`RunDir`]
//! the rest), and the [`RunDir`] is kept (`KEEP_RUN_DIR=1`: only the etcd data is removed) for
//! inspection. A test process killed outright (SIGKILL, a CI timeout) runs
//! no destructor: then `down.sh /tmp/kp-XXXXXX` cleans up by hand.

mod cloudcore;
mod control_plane;
mod edgecore;
mod shell;
mod sysctls;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

pub use cloudcore::RealCloudcore;
pub use control_plane::{ControlPlane, ControlPlaneOptions, KubectlError};
pub use edgecore::{EdgeOptions, RealEdgecore, meta_keys_of, meta_row};
pub use sysctls::{KUBELET_SYSCTLS, KubeletSysctls};

/// `KUBEEDGE_REQUIRE_PEERS=1`: what would skip panics instead.
pub const REQUIRE_ENV: &str = "KUBEEDGE_REQUIRE_PEERS";
/// Overrides where the peers' folder is.
pub const DIR_ENV: &str = "KUBEEDGE_PEERS_DIR";
/// Overrides where the peer binaries are unpacked.
pub const CACHE_ENV: &str = "KUBEEDGE_PEERS_CACHE";
/// `KUBEEDGE_KEEP_RUN_DIR=1` keeps every [`RunDir`] after the test.
pub const KEEP_ENV: &str = "KUBEEDGE_KEEP_RUN_DIR";
/// Where the peer binaries are unpacked unless [`CACHE_ENV`] says otherwise.
pub const DEFAULT_CACHE: &str = "/tmp/kubeedge-peers/bin";

/// Parent of every [`RunDir`]: short, so the unix sockets inside stay under 108 bytes.
const RUN_BASE: &str = "/tmp";
/// The file `init_run_dir` of the harness's lib.sh writes into a run dir it owns.
const RUN_MARKER: &str = ".kepeers-run-dir";
/// How many log lines of each peer a failing test prints.
const TAIL_LINES: usize = 60;
/// How long a stopped peer gets between SIGINT/SIGTERM and SIGKILL (down.sh's default too).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// The ports the harness scripts use by default (and another harness run on the host may be
/// using): never handed out by [`free_ports`].
const HARNESS_DEFAULT_PORTS: [u16; 14] = [
    12379, 12380, 16443, 17257, 17259, 10000, 10001, 10002, 9091, 10350, 10550, 10004, 1883, 1884,
];

/// Every variable a harness script reads: removed from the scripts' environment, then set
/// explicitly where needed.
const HARNESS_VARS: [&str; 32] = [
    "RUN_DIR",
    "PEERS_BIN",
    "PEERS_CRDS",
    "PEERS_KUBECONFIG",
    "ETCD_PORT",
    "ETCD_PEER_PORT",
    "ETCD_BIN",
    "APISERVER_PORT",
    "APISERVER_EXTRA_ARGS",
    "APISERVER_WAIT",
    "CONTROLLERS",
    "KCM_PORT",
    "SCHEDULER_PORT",
    "NODE_MONITOR_GRACE",
    "K8S_ENABLE_SA_ADMISSION",
    "CLOUDCORE_WAIT",
    "CLOUDCORE_WS_PORT",
    "CLOUDCORE_HTTPS_PORT",
    "CLOUDCORE_MONITOR_PORT",
    "CLOUDCORE_QUIC_PORT",
    "CLOUDCORE_NODE_LIMIT",
    "EDGECORE_WAIT",
    "CLOUD_HTTPS_PORT",
    "CLOUD_QUIC_PORT",
    "MQTT_PORT",
    "CREATE_NODE",
    "EDGED",
    "CRI_ENDPOINT",
    "CHECK_EDGECORE_ENVIRONMENT",
    "STOP_TIMEOUT",
    "KEEP_RUN_DIR",
    "KUBECONFIG",
];

/// The tools the harness scripts and this module run, each with the Debian package that has it.
const TOOLS: [(&str, &str); 13] = [
    ("bash", "bash"),
    ("etcd", "etcd-server"),
    ("mosquitto", "mosquitto"),
    ("kubectl", "kubectl"),
    ("python3", "python3"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("ss", "iproute2"),
    ("setsid", "util-linux"),
    ("base64", "coreutils"),
    ("sha256sum", "coreutils"),
    ("xz", "xz-utils"),
    ("flock", "util-linux"),
];

/// Whether `KUBEEDGE_REQUIRE_PEERS=1` is set.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The one way this module skips: prints `skipped: <why>` and gives `None`, or panics with `why`
/// under `KUBEEDGE_REQUIRE_PEERS=1`.
pub fn skip<T>(why: impl fmt::Display) -> Option<T> {
    if required() {
        panic!("{REQUIRE_ENV}=1, but the real peers cannot run: {why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// The CRI endpoint for [`EdgeOptions::edged`]: env `EDGED_CRI_ENDPOINT` (what
/// `scripts/containerd-env.sh up` serves, e.g. `unix:///tmp/edged-ctrd/containerd.sock`), or
/// [`skip`] when it is unset or its socket is missing.
pub fn edged_cri_endpoint() -> Option<String> {
    match std::env::var("EDGED_CRI_ENDPOINT") {
        Ok(e) if !e.is_empty() => match e.strip_prefix("unix://") {
            Some(sock) if !Path::new(sock).exists() => skip(format!(
                "EDGED_CRI_ENDPOINT={e}, but {sock} does not exist (scripts/containerd-env.sh up)"
            )),
            _ => Some(e),
        },
        _ => skip("EDGED_CRI_ENDPOINT is not set (run scripts/containerd-env.sh up)"),
    }
}

/// Whether anything listens on TCP `port` on any address (`ss -Htln 'sport = :PORT'`, like the
/// harness checks). Panics if `ss` cannot run.
pub fn port_listening(port: u16) -> bool {
    let out = std::process::Command::new("ss")
        .args(["-Htln", &format!("sport = :{port}")])
        .env("PATH", script_path())
        .stdin(Stdio::null())
        .output()
        .expect("running ss (iproute2)");
    assert!(out.status.success(), "ss failed: {}", lossy(&out.stderr));
    !out.stdout.iter().all(u8::is_ascii_whitespace)
}

/// The located peers: the harness scripts, the unpacked binaries (`PEERS_BIN`) and the KubeEdge
/// CRDs (`PEERS_CRDS`), with the tools checked.
#[derive(Clone, Debug)]
pub struct Peers {
    dir: PathBuf,
    bin: PathBuf,
    crds: PathBuf,
    path: OsString,
    kubectl: PathBuf,
    python3: PathBuf,
}

/// Why [`Peers::locate`] failed.
enum Unavailable {
    /// Not here (no folder, a missing tool): skip.
    Absent(String),
    /// Here but broken (the binaries do not unpack): always a failure.
    Broken(String),
}

impl Peers {
    /// The peers, or `None` after printing `skipped: <why>` (see [`skip`]): `../shared/peers`
    /// relative to the workspace (or [`DIR_ENV`]) is missing, or a tool the scripts need (etcd,
    /// mosquitto, kubectl, python3 with yaml and sqlite3, curl, openssl, ss, setsid, base64,
    /// sha256sum, xz, flock) is not on `PATH`. Unpacks the binaries into [`DEFAULT_CACHE`] (or
    /// [`CACHE_ENV`]) once per process, under a lock shared with other test processes; panics if
    /// the folder is there but its binaries do not unpack or do not match `SHA256SUMS`.
    pub fn find() -> Option<Peers> {
        static FOUND: OnceLock<Result<Peers, String>> = OnceLock::new();
        let found = FOUND.get_or_init(|| match Self::locate() {
            Ok(peers) => Ok(peers),
            Err(Unavailable::Absent(why)) => Err(why),
            Err(Unavailable::Broken(why)) => panic!("the real peers are broken: {why}"),
        });
        match found {
            Ok(peers) => Some(peers.clone()),
            Err(why) => skip(why),
        }
    }

    fn locate() -> Result<Peers, Unavailable> {
        let dir = match std::env::var_os(DIR_ENV) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers"),
        };
        let harness = dir.join("harness");
        if !dir.join("unpack.sh").is_file() || !harness.join("control-plane.sh").is_file() {
            return Err(Unavailable::Absent(format!(
                "the real peers are not here: no {}/unpack.sh and harness/ (a clone outside the \
                 workplace has no ../shared/peers; set {DIR_ENV} to point elsewhere)",
                dir.display()
            )));
        }
        let dir = dir
            .canonicalize()
            .map_err(|e| Unavailable::Broken(format!("{}: {e}", dir.display())))?;
        let path = script_path();
        if let Some(why) = missing_tools(&path) {
            return Err(Unavailable::Absent(why));
        }
        let tool = |name: &str| search_path(&path, name).expect("checked above");
        let python3 = tool("python3");
        let check = run_bounded(
            std::process::Command::new(&python3)
                .args(["-c", "import yaml, sqlite3"])
                .env("PATH", &path),
            Duration::from_secs(60),
        );
        if !check.as_ref().is_ok_and(|o| o.status.success()) {
            return Err(Unavailable::Absent(format!(
                "{} lacks the module yaml (Debian: python3-yaml) or sqlite3",
                python3.display()
            )));
        }

        let cache = match std::env::var_os(CACHE_ENV) {
            Some(c) if !c.is_empty() => PathBuf::from(c),
            _ => PathBuf::from(DEFAULT_CACHE),
        };
        let lock = cache.with_extension("lock");
        if let Some(parent) = cache.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Unavailable::Broken(format!("{}: {e}", parent.display())))?;
        }
        let t0 = Instant::now();
        // unpack.sh writes NAME.tmp then renames: two processes unpacking at once would
        // write the same .tmp file, hence the lock
        let out = run_bounded(
            std::process::Command::new(tool("flock"))
                .arg(&lock)
                .arg(dir.join("unpack.sh"))
                .arg(&cache)
                .env("PATH", &path),
            Duration::from_secs(900),
        )
        .map_err(|e| Unavailable::Broken(format!("running unpack.sh: {e}")))?;
        if !out.status.success() {
            return Err(Unavailable::Broken(format!(
                "unpack.sh {} failed ({}): {}",
                cache.display(),
                out.status,
                lossy(&out.stderr)
            )));
        }
        let exports = shell::parse_exports(&lossy(&out.stdout))
            .map_err(|e| Unavailable::Broken(format!("unpack.sh's output: {e}")))?;
        let get = |key: &str| {
            exports.get(key).map(PathBuf::from).ok_or_else(|| {
                Unavailable::Broken(format!("unpack.sh printed no {key}: {exports:?}"))
            })
        };
        let (bin, crds) = (get("PEERS_BIN")?, get("PEERS_CRDS")?);
        eprintln!(
            "peers: {} (binaries in {}, checked in {:.1?})",
            dir.display(),
            bin.display(),
            t0.elapsed()
        );
        Ok(Peers {
            dir,
            bin,
            crds,
            kubectl: tool("kubectl"),
            python3,
            path,
        })
    }

    /// The peers' folder (`unpack.sh`, `bin/`, `crds/`, `harness/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unpacked binaries (`PEERS_BIN`): cloudcore, edgecore, kube-apiserver,
    /// kube-controller-manager, kube-scheduler.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// The KubeEdge CRD files (`PEERS_CRDS`).
    pub fn crds(&self) -> &Path {
        &self.crds
    }

    /// The python3 (with sqlite3) the harness runs: for [`meta_row`] and [`meta_keys_of`].
    pub fn python3(&self) -> &Path {
        &self.python3
    }

    /// The harness scripts' folder.
    pub fn harness(&self) -> PathBuf {
        self.dir.join("harness")
    }

    /// Runs harness script `script` with `args` and `env` (after removing every [`HARNESS_VARS`]
    /// variable inherited), in its own process group, bounded by `timeout`; relays its progress
    /// (stderr) to stderr and parses its `export` lines.
    async fn run_script(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<HashMap<String, String>, ScriptError> {
        let mut cmd = tokio::process::Command::new(self.harness().join(script));
        cmd.args(args);
        for var in HARNESS_VARS {
            cmd.env_remove(var);
        }
        cmd.env("PATH", &self.path)
            .env("PEERS_BIN", &self.bin)
            .env("PEERS_CRDS", &self.crds);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let failure = |status, stderr: String, error: String| ScriptError {
            script: script.to_owned(),
            status,
            stderr,
            error,
        };
        let child = cmd
            .spawn()
            .map_err(|e| failure(None, String::new(), format!("cannot run it: {e}")))?;
        let pgid = child.id();
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(failure(None, String::new(), e.to_string())),
            Err(_) => {
                // the script and whatever it runs in the foreground (kubectl, curl, sleep);
                // the peers it started are in their own sessions, recorded in RUN_DIR/pids
                if let Some(pgid) = pgid {
                    signal(&format!("-{pgid}"), "KILL");
                }
                return Err(failure(
                    None,
                    String::new(),
                    format!("did not finish within {timeout:?}"),
                ));
            }
        };
        let stderr = lossy(&out.stderr);
        for line in stderr.lines() {
            eprintln!("[{script}] {line}");
        }
        if !out.status.success() {
            return Err(failure(Some(out.status), stderr, "failed".into()));
        }
        shell::parse_exports(&lossy(&out.stdout))
            .map_err(|e| failure(Some(out.status), stderr, format!("its stdout: {e}")))
    }
}

/// A harness script that failed.
#[derive(Debug)]
struct ScriptError {
    script: String,
    status: Option<ExitStatus>,
    stderr: String,
    error: String,
}

impl ScriptError {
    /// It refused a port that was taken between [`free_ports`] and its check.
    fn port_busy(&self) -> bool {
        self.stderr.contains("is already in use on this host")
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.script, self.error)?;
        if let Some(status) = self.status {
            write!(f, " ({status})")?;
        }
        if !self.stderr.is_empty() {
            write!(f, "; its stderr:\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// A harness state directory (`RUN_DIR`): `/tmp/kp-XXXXXX`, created empty here (the scripts
/// lay it out and mark it as theirs). Dropping it runs `down.sh RUN_DIR` synchronously, which
/// stops every process recorded under `RUN_DIR/pids` and removes the directory; when the thread
/// is panicking it first prints the tail of every log to stderr and keeps the directory (see
/// the [module docs](self)).
///
/// A [`ControlPlane`] owns one. A test of a cloud without an apiserver (the project's cloudcore
/// in manifest mode, say) can make one directly and start [`RealEdgecore`]s in it with
/// [`EdgeOptions::create_node`] off.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    peers: Peers,
}

impl RunDir {
    /// A new empty `/tmp/kp-XXXXXX`; panics if it cannot be made.
    pub fn new(peers: &Peers) -> RunDir {
        let path = tempfile::Builder::new()
            .prefix("kp-")
            .tempdir_in(RUN_BASE)
            .unwrap_or_else(|e| panic!("creating a run dir in {RUN_BASE}: {e}"))
            .keep();
        RunDir {
            path,
            peers: peers.clone(),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The peers it runs.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Every log under `RUN_DIR/logs`, sorted by name.
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.path.join("logs"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.sort();
        logs
    }

    /// The last `lines` lines of every log, each under a header naming it.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for log in self.logs() {
            out.push_str(&format!(
                "----- last {lines} lines of {} -----\n{}\n",
                log.display(),
                tail(&log, lines)
            ));
        }
        out
    }

    /// The processes recorded under `RUN_DIR/pids` (name, pid), whether or not they still run.
    pub fn recorded_pids(&self) -> Vec<(String, u32)> {
        let mut pids: Vec<(String, u32)> = std::fs::read_dir(self.path.join("pids"))
            .map(|d| {
                d.filter_map(|e| {
                    let path = e.ok()?.path();
                    let name = path.file_stem()?.to_str()?.to_owned();
                    Some((name, read_pid_file(&path)?.pid))
                })
                .collect()
            })
            .unwrap_or_default();
        pids.sort();
        pids
    }
}

impl AsRef<RunDir> for RunDir {
    fn as_ref(&self) -> &RunDir {
        self
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if !self.path.join(RUN_MARKER).exists() {
            // no script got as far as laying it out: still empty
            let _ = std::fs::remove_dir(&self.path);
            return;
        }
        let keep = panicking || std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        if panicking {
            // what the RealCloudcore/RealEdgecore values did not print before they stopped
            print_tails_once(&self.logs());
        }
        let mut cmd = std::process::Command::new(self.peers.harness().join("down.sh"));
        cmd.arg(&self.path);
        for var in HARNESS_VARS {
            cmd.env_remove(var);
        }
        cmd.env("PATH", &self.peers.path)
            .env("KEEP_RUN_DIR", if keep { "1" } else { "0" });
        let mut problem = match run_bounded(&mut cmd, Duration::from_secs(600)) {
            Ok(out) => {
                for line in lossy(&out.stderr).lines() {
                    eprintln!("[down.sh] {line}");
                }
                (!out.status.success()).then(|| format!("down.sh failed ({})", out.status))
            }
            Err(e) => Some(format!("down.sh: {e}")),
        };
        // KubeEdge's kubelet mounts a tmpfs for each secret and projected volume; with the
        // kubelet stopped they stay, and down.sh cannot remove the run dir under them.
        if unmount_under(&self.path) > 0 && !keep {
            let _ = std::fs::remove_dir_all(&self.path);
            if !self.path.exists() {
                problem = None;
            }
        }
        if keep {
            eprintln!(
                "peers: kept {} for inspection; remove it with {}/down.sh {0}",
                self.path.display(),
                self.peers.harness().display()
            );
        }
        if let Some(problem) = problem {
            let msg = format!(
                "{problem}: something in {} may still run",
                self.path.display()
            );
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Unmounts (lazily, deepest first) every mount point under `dir`; how many there were.
fn unmount_under(dir: &Path) -> usize {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in &points {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(point)
            .status();
    }
    points.len()
}

/// Prints the last [`TAIL_LINES`] lines of each of `logs` to stderr, except those printed
/// before (a [`RealEdgecore`] or [`RealCloudcore`] prints its own when the test panics, before
/// it stops, so that the tail shows the moment of the failure, not the shutdown).
fn print_tails_once(logs: &[PathBuf]) {
    static PRINTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let mut printed = PRINTED.lock().unwrap_or_else(PoisonError::into_inner);
    for log in logs {
        if printed.contains(log) || !log.exists() {
            continue;
        }
        eprintln!(
            "----- last {TAIL_LINES} lines of {} -----\n{}\n",
            log.display(),
            tail(log, TAIL_LINES)
        );
        printed.push(log.clone());
    }
}

/// `n` distinct ports that were free on 127.0.0.1 a moment ago (all bound at once, so the
/// kernel hands out each only once), never one of the harness's default ports.
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free loopback port");
        let port = listener.local_addr().expect("its address").port();
        if !HARNESS_DEFAULT_PORTS.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    ports
}

/// The caller's PATH with the sbin directories appended (mosquitto is in /usr/sbin).
fn script_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|d| d == Path::new(extra)) {
            dirs.push(PathBuf::from(extra));
        }
    }
    std::env::join_paths(dirs).unwrap_or_else(|_| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin"))
}

/// Which of [`TOOLS`] are not in `path`, as a reason to skip.
fn missing_tools(path: &OsStr) -> Option<String> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| search_path(path, tool).is_none())
        .map(|(tool, package)| format!("{tool} (Debian: {package})"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the real peers need tools that are not on PATH: {}",
            missing.join(", ")
        )
    })
}

/// The first executable `name` in `path`.
fn search_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Runs `cmd` to completion with its output captured, killing it after `timeout`.
fn run_bounded(cmd: &mut std::process::Command, timeout: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("did not finish within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last `lines` lines of file `path` (empty if unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| lossy(&b)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A process recorded by the harness: `RUN_DIR/pids/NAME.pid`, line 1 the pid, line 2 the
/// resolved executable.
#[derive(Debug)]
struct Recorded {
    pid: u32,
    exe: PathBuf,
}

fn read_pid_file(path: &Path) -> Option<Recorded> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let exe = PathBuf::from(lines.next().unwrap_or("").trim());
    Some(Recorded { pid, exe })
}

/// Whether the recorded process still runs (not a zombie) and is still that program (the pid
/// was not reused): the executable or, like down.sh, the command name matches.
fn is_running(r: &Recorded) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", r.pid)) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    if r.exe.as_os_str().is_empty() {
        return true;
    }
    if std::fs::read_link(format!("/proc/{}/exe", r.pid)).is_ok_and(|exe| exe == r.exe) {
        return true;
    }
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", r.pid)).unwrap_or_default();
    let name = r
        .exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short: String = name.chars().take(15).collect();
    comm.trim() == short
}

/// `kill -s SIG TARGET` (a pid, or `-PGID` for a process group), ignoring failures.
fn signal(target: &str, sig: &str) {
    let _ = std::process::Command::new("/bin/sh")
        .args(["-c", r#"kill -s "$0" -- "$1" 2>/dev/null"#, sig, target])
        .stdin(Stdio::null())
        .status();
}

/// Stops the process recorded in `pid_file` (if it runs): `sig`, then SIGKILL after `grace`;
/// waits until it is gone and removes the pid file. Blocking.
fn stop_recorded(pid_file: &Path, sig: &str, grace: Duration) -> Result<(), String> {
    let Some(r) = read_pid_file(pid_file) else {
        return Ok(());
    };
    let gone_within = |wait: Duration| {
        let deadline = Instant::now() + wait;
        while is_running(&r) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    };
    if is_running(&r) {
        signal(&r.pid.to_string(), sig);
        if !gone_within(grace) {
            eprintln!(
                "peers: {} (pid {}) still runs {grace:?} after SIG{sig}: SIGKILL",
                pid_file.display(),
                r.pid
            );
            signal(&r.pid.to_string(), "KILL");
            if !gone_within(Duration::from_secs(5)) {
                return Err(format!(
                    "{} (pid {}) still runs after SIGKILL",
                    pid_file.display(),
                    r.pid
                ));
            }
        }
    }
    let _ = std::fs::remove_file(pid_file);
    Ok(())
}

/// [`stop_recorded`] off the async runtime's threads.
async fn stop_recorded_async(pid_file: PathBuf, sig: &'static str) -> Result<(), String> {
    tokio::task::spawn_blocking(move || stop_recorded(&pid_file, sig, STOP_GRACE))
        .await
        .map_err(|e| format!("stopping: {e}"))?
}

/// The pid of the process recorded in `pid_file`, if it runs.
fn running_pid(pid_file: &Path) -> Option<u32> {
    read_pid_file(pid_file).filter(is_running).map(|r| r.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_never_the_harness_defaults() {
        let ports = free_ports(20);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        assert!(ports.iter().all(|p| !HARNESS_DEFAULT_PORTS.contains(p)));
    }

    #[test]
    fn missing_tools_are_named_with_their_package() {
        let empty = tempfile::tempdir().unwrap();
        let why = missing_tools(empty.path().as_os_str()).unwrap();
        assert!(why.contains("etcd (Debian: etcd-server)"), "{why}");
        assert!(why.contains("ss (Debian: iproute2)"), "{why}");
        let bin = tempfile::tempdir().unwrap();
        for (tool, _) in TOOLS {
            let file = bin.path().join(tool);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(missing_tools(bin.path().as_os_str()), None);
        std::fs::set_permissions(
            bin.path().join("kubectl"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let why = missing_tools(bin.path().as_os_str()).unwrap();
        assert!(why.ends_with("kubectl (Debian: kubectl)"), "{why}");
    }

    #[test]
    fn a_recorded_process_is_running_only_while_it_is_that_program() {
        let me = Recorded {
            pid: std::process::id(),
            exe: std::env::current_exe().unwrap(),
        };
        assert!(is_running(&me));
        let other = Recorded {
            pid: std::process::id(),
            exe: PathBuf::from("/usr/bin/definitely-not-this-test"),
        };
        assert!(!is_running(&other));
    }

    #[test]
    fn stopping_by_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let exe = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
        let file = dir.path().join("sleep.pid");
        std::fs::write(&file, format!("{}\n{}\n", child.id(), exe.display())).unwrap();
        assert_eq!(running_pid(&file), Some(child.id()));
        // our own child stays a zombie until waited for: is_running treats that as gone
        stop_recorded(&file, "TERM", Duration::from_secs(5)).unwrap();
        assert!(!file.exists());
        assert!(!child.wait().unwrap().success());
    }
}
