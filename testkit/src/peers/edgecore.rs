//! KubeEdge's own edgecore joined to any cloud on loopback (`real-edgecore.sh`), and read-only
//! access to its `edgecore.db`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{
    Peers, RunDir, STOP_GRACE, free_ports, lossy, port_listening, print_tails_once, running_pid,
    stop_recorded, stop_recorded_async,
};

/// real-edgecore.sh's own wait (60 s for the websocket connection) plus margin.
const EDGECORE_TIMEOUT: Duration = Duration::from_secs(150);
/// The log line real-edgecore.sh waits for after each start.
const CONNECTED: &str = "Websocket connect to cloud access successful";
/// The kubelet's read-only port in edgecore's default config, which real-edgecore.sh keeps.
const EDGED_READ_ONLY_PORT: u16 = 10350;

/// Reads edgecore.db read-only with a 5 s busy timeout (edgecore writes it while it runs).
/// argv: DB `key` KEY -> `[type, value]` or `null`; DB `type` TYPE -> `[key, ...]`.
const META_PY: &str = r#"
import json, sqlite3, sys
from urllib.request import pathname2url
db, what, arg = sys.argv[1:4]
try:
    c = sqlite3.connect('file:' + pathname2url(db) + '?mode=ro', uri=True, timeout=5)
    if what == 'key':
        r = c.execute('select type, value from meta where key = ?', (arg,)).fetchone()
        txt = lambda v: v if isinstance(v, str) else bytes(v).decode('utf-8', 'replace')
        out = [txt(r[0]), txt(r[1])] if r else None
    else:
        out = [k for (k,) in c.execute('select key from meta where type = ? order by key', (arg,))]
except sqlite3.OperationalError as e:
    if 'no such table' not in str(e) and 'unable to open' not in str(e):
        raise
    out = None if what == 'key' else []
print(json.dumps(out))
"#;

/// How [`RealEdgecore::start`] runs edgecore beyond the harness's defaults (edged off, a
/// mosquitto of its own on a free port, the Node object created).
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    /// `EDGED=1`: run KubeEdge's embedded kubelet, which registers the Node itself and runs
    /// pods on [`EdgeOptions::cri_endpoint`]. It needs the host sysctls of [`KubeletSysctls`]
    /// (held for the test's duration), manages the host's cgroups, and binds the kubelet's
    /// read-only port 127.0.0.1:10350 (fixed by the script): one such edgecore per host.
    ///
    /// [`KubeletSysctls`]: super::KubeletSysctls
    pub edged: bool,
    /// The CRI endpoint for edged (`CRI_ENDPOINT`); `None` takes env `EDGED_CRI_ENDPOINT` (see
    /// [`edged_cri_endpoint`](super::edged_cri_endpoint), which skips when it is unset).
    pub cri_endpoint: Option<String>,
    /// `MQTT_PORT`: the port of the node's mosquitto; `None` lets the script pick a free one.
    pub mqtt_port: Option<u16>,
    /// `CREATE_NODE` (default `true`): with edged off, create the Node object (label
    /// `node-role.kubernetes.io/edge=""`) with kubectl. Turn it off for a cloud without an
    /// apiserver.
    pub create_node: bool,
    /// `PEERS_KUBECONFIG`: the kubeconfig for creating the Node; `None` is `RUN_DIR/kubeconfig`
    /// (the [`ControlPlane`](super::ControlPlane)'s).
    pub kubeconfig: Option<PathBuf>,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions {
            edged: false,
            cri_endpoint: None,
            mqtt_port: None,
            create_node: true,
            kubeconfig: None,
        }
    }
}

/// The real KubeEdge edgecore (v1.23.1) of one node, joined over the token bootstrap and
/// cloudhub's websocket to a cloud on loopback (the [`RealCloudcore`](super::RealCloudcore), or
/// any cloud that serves KubeEdge's join endpoints, the project's own cloudcore too), its
/// EventBus on a mosquitto of its own (`mqttMode: 2`); metaServer, edgeStream, serviceBus and
/// quic off; every file under `RUN_DIR/edge-NODE`.
///
/// Dropping it stops edgecore (SIGINT, its clean shutdown) and then the node's mosquitto
/// (SIGTERM), SIGKILL after 15 s.
#[derive(Debug)]
pub struct RealEdgecore {
    peers: Peers,
    run_dir: PathBuf,
    node: String,
    cloud_ws: SocketAddr,
    token: String,
    env: Vec<(&'static str, String)>,
    db: PathBuf,
    config: PathBuf,
    log: PathBuf,
    dir: PathBuf,
    mqtt_port: u16,
}

/// What [`kubelet_wrapper`] puts into the kubelet's configuration before edgecore starts:
/// no eviction (thresholds no disk or memory reaches) and no image garbage collection. The
/// kubelet's defaults (evict below 10-15 % free disk, collect images above 85 % used) depend on
/// the machine's disk, not on the test: on a well-filled build machine the kubelet evicted the
/// test's pod and deleted the test images from the containerd every test shares.
const KUBELET_OVERRIDES_PY: &str = r#"
import sys, yaml
path = sys.argv[1]
c = yaml.safe_load(open(path))
k = c['modules']['edged'].setdefault('tailoredKubeletConfig', {})
k['evictionHard'] = {'memory.available': '1Ki', 'nodefs.available': '1Ki', 'nodefs.inodesFree': '1',
                     'imagefs.available': '1Ki', 'imagefs.inodesFree': '1'}
k['imageGCHighThresholdPercent'] = 100
k['imageGCLowThresholdPercent'] = 99
yaml.safe_dump(c, open(path, 'w'), sort_keys=False)
"#;

/// A directory holding `edgecore`: a wrapper that, when started with `--config FILE`, writes
/// [`KUBELET_OVERRIDES_PY`]'s settings into FILE, then execs the real edgecore (the process
/// keeps its pid and is named `edgecore`, so the harness and down.sh stop it as before).
/// real-edgecore.sh takes its edgecore from `PEERS_BIN`, so pointing that here is enough.
fn kubelet_wrapper(run_dir: &Path, peers: &Peers) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = run_dir.join("kubelet-bin");
    std::fs::create_dir_all(&dir).expect("the wrapper dir");
    let script = format!(
        "#!/bin/sh\n# Written by kubeedge_testkit::peers: the kubelet without eviction or image GC.\n\
         if [ \"$1\" = --config ] && [ -n \"$2\" ]; then\n  \
         {python} -c {code} \"$2\" || exit 1\nfi\nexec {real} \"$@\"\n",
        python = shell_quote(&peers.python3.display().to_string()),
        code = shell_quote(KUBELET_OVERRIDES_PY),
        real = shell_quote(&peers.bin().join("edgecore").display().to_string()),
    );
    let path = dir.join("edgecore");
    std::fs::write(&path, script).expect("the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// `s` in single quotes for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl RealEdgecore {
    /// Runs `real-edgecore.sh NODE CLOUD_WS TOKEN` in `at`'s run dir (a
    /// [`ControlPlane`](super::ControlPlane) or a bare [`RunDir`]) with `CLOUD_HTTPS_PORT` =
    /// `cloud_https_port`, and waits until edgecore logs its websocket connection. `token` must
    /// come from that cloud (tokens are tied to the cloud's CA); once the node holds
    /// certificates (`edge-NODE/certs/`), edgecore ignores it. Panics if it does not connect.
    pub async fn start(
        at: &impl AsRef<RunDir>,
        node: &str,
        cloud_ws: SocketAddr,
        cloud_https_port: u16,
        token: &str,
        options: EdgeOptions,
    ) -> RealEdgecore {
        let run = at.as_ref();
        let mut env = vec![
            ("RUN_DIR", run.path().display().to_string()),
            ("CLOUD_HTTPS_PORT", cloud_https_port.to_string()),
            // quic stays off; the port only goes into the config (not the default 10001)
            ("CLOUD_QUIC_PORT", free_ports(1)[0].to_string()),
            (
                "CREATE_NODE",
                if options.create_node { "1" } else { "0" }.into(),
            ),
        ];
        if let Some(port) = options.mqtt_port {
            env.push(("MQTT_PORT", port.to_string()));
        }
        if let Some(kubeconfig) = &options.kubeconfig {
            env.push(("PEERS_KUBECONFIG", kubeconfig.display().to_string()));
        }
        if options.edged {
            let cri = options
                .cri_endpoint
                .clone()
                .or_else(|| {
                    std::env::var("EDGED_CRI_ENDPOINT")
                        .ok()
                        .filter(|e| !e.is_empty())
                })
                .unwrap_or_else(|| {
                    panic!(
                        "EdgeOptions.edged needs cri_endpoint or env EDGED_CRI_ENDPOINT (skip \
                         with kubeedge_testkit::peers::edged_cri_endpoint())"
                    )
                });
            assert!(
                !port_listening(EDGED_READ_ONLY_PORT),
                "EdgeOptions.edged: the kubelet's read-only port {EDGED_READ_ONLY_PORT} (fixed \
                 by real-edgecore.sh) is taken: another kubelet or edged edgecore runs on this \
                 host"
            );
            env.push(("EDGED", "1".into()));
            env.push(("CRI_ENDPOINT", cri));
            let wrapper = kubelet_wrapper(run.path(), run.peers());
            env.push(("PEERS_BIN", wrapper.display().to_string()));
        } else {
            env.push(("EDGED", "0".into()));
        }
        let mut edge = RealEdgecore {
            peers: run.peers().clone(),
            run_dir: run.path().to_owned(),
            node: node.to_owned(),
            cloud_ws,
            token: token.to_owned(),
            env,
            db: PathBuf::new(),
            config: PathBuf::new(),
            log: PathBuf::new(),
            dir: run.path().join(format!("edge-{node}")),
            mqtt_port: 0,
        };
        edge.run_script().await;
        edge
    }

    async fn run_script(&mut self) {
        let t0 = Instant::now();
        let ws = self.cloud_ws.to_string();
        let exports = self
            .peers
            .run_script(
                "real-edgecore.sh",
                &[&self.node, &ws, &self.token],
                &self.env,
                EDGECORE_TIMEOUT,
            )
            .await
            .unwrap_or_else(|e| panic!("the real edgecore {} did not connect: {e}", self.node));
        let get = |key: &str| {
            exports
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("real-edgecore.sh printed no {key}: {exports:?}"))
        };
        self.db = PathBuf::from(get("EDGECORE_DB"));
        self.config = PathBuf::from(get("EDGECORE_CONFIG"));
        self.log = PathBuf::from(get("EDGECORE_LOG"));
        self.dir = PathBuf::from(get("EDGECORE_DIR"));
        let mqtt = get("MQTT_HOSTPORT");
        self.mqtt_port = mqtt
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("MQTT_HOSTPORT={mqtt} is not host:port"));
        eprintln!(
            "peers: real edgecore {} connected to wss://{ws} in {:.1?} (pid {}, mqtt {mqtt})",
            self.node,
            t0.elapsed(),
            self.pid().map_or("?".into(), |p| p.to_string())
        );
    }

    /// Its node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its SQLite store (`RUN_DIR/edge-NODE/edgecore.db`). Read it only read-only with a busy
    /// timeout ([`RealEdgecore::meta`] does).
    pub fn db(&self) -> &Path {
        &self.db
    }

    /// The port of its mosquitto on 127.0.0.1 (its EventBus; `mosquitto_pub -p PORT ...`).
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    /// Its log (`RUN_DIR/logs/edgecore-NODE.log`; restarts append to it).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its directory (`RUN_DIR/edge-NODE`: config, db, certs, mosquitto config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its config (`edgecore.yaml`, rewritten by edgecore on start; the generated one is kept
    /// as `edgecore.initial.yaml`).
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Every TCP port it listens on: its mosquitto's (edgecore itself opens none with edged
    /// off, only the unix socket `edge-NODE/dmi.sock`).
    pub fn listen_ports(&self) -> Vec<u16> {
        vec![self.mqtt_port]
    }

    /// How often its log says it connected to the cloud (once per start, and once per
    /// reconnect).
    pub fn connect_count(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.matches(CONNECTED).count())
            .unwrap_or(0)
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        running_pid(&self.pid_file("edgecore"))
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    fn pid_file(&self, what: &str) -> PathBuf {
        self.run_dir.join(format!("pids/{what}-{}.pid", self.node))
    }

    /// Stops edgecore (SIGINT: it sends the cloud an empty message and closes TCP without a
    /// WebSocket close frame; SIGKILL after 15 s) and returns once it is gone. Its mosquitto
    /// keeps running (a later [`RealEdgecore::start_again`] reuses it).
    pub async fn stop(&mut self) {
        if let Err(e) = stop_recorded_async(self.pid_file("edgecore"), "INT").await {
            panic!("stopping the real edgecore {}: {e}", self.node);
        }
    }

    /// Starts edgecore again with the same node, cloud, config options and store (stopping it
    /// first if it runs; real-edgecore.sh refuses while it runs), and waits until it connected.
    /// The node's certificates are reused, so the token no longer matters; the running
    /// mosquitto is reused, on the same port.
    pub async fn start_again(&mut self) {
        self.stop().await;
        self.run_script().await;
    }

    /// The row of `key` (`<ns>/<type>/<name>`, e.g. `default/pod/NAME`; the Node is
    /// `null/node/NODE`) in edgecore.db's `meta` table: `(type, value)`, the value being the
    /// object's JSON. `None` if there is none yet (or the db cannot be read; that is printed).
    pub async fn meta(&self, key: &str) -> Option<(String, String)> {
        meta_row(&self.peers.python3, &self.db, key).await
    }

    /// The keys of every `meta` row of type `kind` (`pod`, `configmap`, `secret`, `node`, ...),
    /// sorted; empty if none (or the db cannot be read; that is printed).
    pub async fn meta_keys(&self, kind: &str) -> Vec<String> {
        meta_keys_of(&self.peers.python3, &self.db, kind).await
    }
}

/// The row of `key` in the `meta` table of the edgecore.db at `db` (KubeEdge's or
/// kubeedge-rs' edgecore: the table is the same), read-only with a busy timeout, with
/// `python3`'s sqlite3: `(type, value)`, or `None` if there is none (or the db cannot be
/// read; that is printed).
pub async fn meta_row(python3: &Path, db: &Path, key: &str) -> Option<(String, String)> {
    let out = query_meta(python3, db, "key", key).await?;
    serde_json::from_value(out).ok()
}

/// The keys of every `meta` row of type `kind` in the edgecore.db at `db`, sorted (see
/// [`meta_row`]).
pub async fn meta_keys_of(python3: &Path, db: &Path, kind: &str) -> Vec<String> {
    query_meta(python3, db, "type", kind)
        .await
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

async fn query_meta(python3: &Path, db: &Path, what: &str, arg: &str) -> Option<serde_json::Value> {
    let run = tokio::process::Command::new(python3)
        .arg("-c")
        .arg(META_PY)
        .arg(db)
        .arg(what)
        .arg(arg)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(out)) if out.status.success() => serde_json::from_slice(&out.stdout).ok(),
        Ok(Ok(out)) => {
            eprintln!(
                "peers: reading {} failed ({}): {}",
                db.display(),
                out.status,
                lossy(&out.stderr)
            );
            None
        }
        Ok(Err(e)) => {
            eprintln!("peers: reading {}: {e}", db.display());
            None
        }
        Err(_) => {
            eprintln!("peers: reading {} timed out", db.display());
            None
        }
    }
}

impl Drop for RealEdgecore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.run_dir.join("logs");
            print_tails_once(&[
                logs.join(format!("edgecore-{}.log", self.node)),
                logs.join(format!("mosquitto-{}.log", self.node)),
            ]);
        }
        for (what, sig) in [("edgecore", "INT"), ("mosquitto", "TERM")] {
            if let Err(e) = stop_recorded(&self.pid_file(what), sig, STOP_GRACE) {
                eprintln!("peers: stopping {what} of {}: {e}", self.node);
            }
        }
    }
}
