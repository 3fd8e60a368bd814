//! Our binaries beside the real peers (`kubeedge_testkit::peers`): our `cloudcore` against a
//! real kube-apiserver, our `edgecore` joined to any cloud (KubeEdge's or ours) with its pods
//! on the test containerd, and the checks the interop tests share. Every process dies with its
//! handle; every wait has a deadline; no test asserts a duration.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubeedge_testkit::peers::{ControlPlane, Peers, meta_keys_of, meta_row};
use kubeedge_testkit::{eventually, free_port};
use serde_json::Value;
use tokio::process::Command;

use super::system::{Proc, PyModbus, bin, dmi_mapper, edgecore_join};

/// Deadline for what the peers and our binaries do on their own: a pod starting, a node
/// turning Ready, KubeEdge's edgecore reconnecting (keepalive 15 s + 30 s back-off), the
/// controller-manager's grace periods.
pub const PEER_DEADLINE: Duration = Duration::from_secs(150);

/// Waits (up to [`PEER_DEADLINE`]) until `check` gives `Some`, saying what it waited for.
pub async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let value = eventually(what, PEER_DEADLINE, check).await;
    eprintln!("interop: {what}");
    value
}

/// A kubeconfig for our cloudcore with only the permissions `deploy/cloudcore.yaml` grants
/// (its ServiceAccount, ClusterRole and ClusterRoleBinding applied to `cp`, a token of that
/// ServiceAccount): a cloudcore run with it shows that the RBAC rules we ship are enough.
pub async fn cloudcore_kubeconfig(cp: &ControlPlane, dir: &Path) -> PathBuf {
    let deploy = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cloudcore.yaml"),
    )
    .unwrap();
    let rbac: Vec<&str> = deploy
        .split("\n---\n")
        .filter(|doc| {
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
                .iter()
                .any(|k| doc.contains(&format!("\nkind: {k}\n")))
        })
        .collect();
    assert_eq!(rbac.len(), 3, "deploy/cloudcore.yaml has its RBAC");
    match cp.kubectl(&["create", "namespace", "kubeedge"]).await {
        Err(e) if !e.stderr.contains("AlreadyExists") => panic!("{e:?}"),
        _ => {}
    }
    cp.apply(&rbac.join("\n---\n")).await.unwrap();
    let token = cp
        .kubectl(&[
            "create",
            "token",
            "cloudcore",
            "-n",
            "kubeedge",
            "--duration=3h",
        ])
        .await
        .unwrap();
    let ca = std::fs::read(cp.run_dir().join("pki/ca.crt")).unwrap();
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: cloudcore\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: cloudcore}}\ncurrent-context: c\n",
        cp.apiserver(),
        base64_encode(&ca),
        token.trim()
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("cloudcore.kubeconfig");
    std::fs::write(&path, config).unwrap();
    path
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Our cloudcore in kube mode against `cp`'s API server, with the permissions of
/// [`cloudcore_kubeconfig`].
pub struct OurCloud {
    pub proc: Proc,
    pub ws: SocketAddr,
    pub https: SocketAddr,
    pub pki: PathBuf,
}

impl OurCloud {
    /// Starts a replica named `name` (its log `<dir>/<name>.log`) with the CA in `<dir>/pki`
    /// (shared by every replica of `dir`), and waits until it serves the join endpoint.
    pub async fn start(dir: &Path, name: &str, kubeconfig: &Path) -> Self {
        let ws: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let https: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        std::fs::create_dir_all(dir).unwrap();
        let pki = dir.join("pki");
        let args = vec![
            format!("--pki-dir={}", pki.display()),
            format!("--listen={ws}"),
            format!("--https-listen={https}"),
            "--advertise-address=127.0.0.1".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--metrics-listen=127.0.0.1:{}", free_port()),
        ];
        let proc = Proc::spawn("cloudcore", args, dir.join(format!("{name}.log")));
        wait_for(
            &format!("our cloudcore {name} serving on {ws}"),
            || async move {
                tokio::net::TcpStream::connect(https).await.ok()?;
                tokio::net::TcpStream::connect(ws).await.ok()
            },
        )
        .await;
        Self {
            proc,
            ws,
            https,
            pki,
        }
    }

    /// A join token (`cloudcore gettoken`).
    pub async fn token(&self) -> String {
        let out = Command::new(bin("cloudcore"))
            .arg("gettoken")
            .arg(format!("--pki-dir={}", self.pki.display()))
            .output()
            .await
            .expect("cloudcore gettoken");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

/// Our edgecore, joined with a token, pods on `cri`, its embedded MQTT broker on a free port.
pub struct OurEdge {
    pub proc: Proc,
    pub node: String,
    pub root: PathBuf,
    pub mqtt_port: u16,
    python3: PathBuf,
}

impl OurEdge {
    /// `edgecore join` against the cloud at `cloud` (its CloudHub, possibly through a relay)
    /// with join endpoint port `https_port`, then `edgecore --root`.
    pub async fn join(
        peers: &Peers,
        dir: &Path,
        node: &str,
        cloud: SocketAddr,
        https_port: u16,
        token: &str,
        cri: &str,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let root = dir.join(node);
        let mqtt_port = free_port();
        edgecore_join(&[
            format!("--cloudcore={cloud}"),
            format!("--https-port={https_port}"),
            format!("--token={token}"),
            format!("--node={node}"),
            format!("--root={}", root.display()),
            format!("--cri-endpoint={cri}"),
            format!("--mqtt-internal=tcp://127.0.0.1:{mqtt_port}"),
            format!("--metrics-listen=127.0.0.1:{}", free_port()),
        ])
        .await;
        let proc = Proc::spawn(
            "edgecore",
            vec![format!("--root={}", root.display())],
            dir.join(format!("edgecore-{node}.log")),
        );
        Self {
            proc,
            node: node.to_owned(),
            root,
            mqtt_port,
            python3: peers.python3().to_owned(),
        }
    }

    /// The edge's SQLite store.
    pub fn db(&self) -> PathBuf {
        self.root.join("edgecore.db")
    }

    /// The object stored at `key` (`<ns>/<type>/<name>`).
    pub async fn stored(&self, key: &str) -> Option<Value> {
        let (_, value) = meta_row(&self.python3, &self.db(), key).await?;
        serde_json::from_str(&value).ok()
    }

    /// The keys of the stored objects of type `kind`.
    pub async fn keys(&self, kind: &str) -> Vec<String> {
        meta_keys_of(&self.python3, &self.db(), kind).await
    }

    /// A file of a pod's volume (`<root>/kubelet/pods/<uid>/volumes/<plugin>/<volume>/<file>`).
    pub fn volume_file(&self, uid: &str, plugin: &str, volume: &str, file: &str) -> Option<String> {
        let path = self
            .root
            .join("kubelet/pods")
            .join(uid)
            .join("volumes")
            .join(plugin)
            .join(volume)
            .join(file);
        std::fs::read_to_string(path).ok()
    }

    /// What a pod's container wrote to stdout (its CRI log files, all attempts).
    pub fn container_log(&self, namespace: &str, pod: &str, uid: &str, container: &str) -> String {
        let dir = self
            .root
            .join("kubelet/logs")
            .join(format!("{namespace}_{pod}_{uid}"))
            .join(container);
        let mut text = String::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        text
    }
}

/// A ConfigMap `<p>-cfg` and a Secret `<p>-sec` created before the Pod `<p>-pod` on `node`
/// that mounts both (and, admitted by a real API server, the default service-account token):
/// its container prints `cfg=<greeting> sec=<password> token=<bytes> ns=<namespace>`.
pub fn workload(p: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: {p}-cfg, namespace: default}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {p}-sec, namespace: default}}
stringData: {{password: s3cret}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {p}-pod, namespace: default}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: edged.test/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "echo cfg=$(cat /cfg/greeting) sec=$(cat /sec/password) token=$(wc -c < /var/run/secrets/kubernetes.io/serviceaccount/token) ns=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace); exec sleep 3600"]
    volumeMounts:
    - {{name: cfg, mountPath: /cfg}}
    - {{name: sec, mountPath: /sec}}
  volumes:
  - name: cfg
    configMap: {{name: {p}-cfg}}
  - name: sec
    secret: {{secretName: {p}-sec}}
"#
    )
}

/// A Pod `name` on `node` that only sleeps.
pub fn sleeper(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: edged.test/busybox:1, imagePullPolicy: Never, command: [sleep, '3600']}}\n"
    )
}

/// The byte count after `token=` in a [`workload`] container's output (0 if none).
pub fn token_len(log: &str) -> usize {
    log.split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The `status` of the `Ready` condition of Node `name`, as the API server has it.
pub async fn node_ready(cp: &ControlPlane, name: &str) -> Option<String> {
    let node = cp.get_json(&["node", name]).await?;
    kubeedge_cloud::ready_status(&node).map(str::to_owned)
}

/// Pod `namespace/name` as the API server has it.
pub async fn pod(cp: &ControlPlane, namespace: &str, name: &str) -> Option<Value> {
    cp.get_json(&["pod", "-n", namespace, name]).await
}

/// Whether the pod is `Running` with every container ready, as the API server says.
pub fn running_and_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true))
}

/// The node's Lease: it exists, is owned by the Node (`ownerReferences[0].uid` = the Node's
/// uid), and its `renewTime`.
pub async fn owned_lease_renew_time(cp: &ControlPlane, node: &str) -> Option<String> {
    let node_uid = cp.get_json(&["node", node]).await?["metadata"]["uid"]
        .as_str()?
        .to_owned();
    let lease = cp
        .get_json(&["lease", "-n", "kube-node-lease", node])
        .await?;
    let owner = &lease["metadata"]["ownerReferences"][0];
    (owner["kind"] == "Node" && owner["uid"] == node_uid.as_str())
        .then(|| lease["spec"]["renewTime"].as_str().map(str::to_owned))
        .flatten()
}

/// Waits until the node's Lease is owned by its Node and renewed (two different
/// `renewTime`s seen).
pub async fn lease_renewed(cp: &ControlPlane, node: &str) {
    let first = wait_for(&format!("the Lease of {node}, owned by its Node"), || {
        owned_lease_renew_time(cp, node)
    })
    .await;
    wait_for(&format!("the Lease of {node} renewed"), || {
        let first = first.clone();
        async move {
            owned_lease_renew_time(cp, node)
                .await
                .filter(|t| *t != first)
        }
    })
    .await;
}

/// KubeEdge's own v1beta1 DeviceModel and Device samples (from its documentation, as in
/// `kubeedge-cloud/tests/fixtures`), the Device bound to `node` and pointed at the Modbus TCP
/// device on `127.0.0.1:modbus_port` (the sample says `172.17.0.3:1502`). Its property `temp`
/// is holding register 2, desired value 30. Its cycles become 1 s: the sample's comment says
/// `10000000000` is 10 s, but KubeEdge's mapper-framework (like our mapper) reads
/// milliseconds, so as written it polls every 115 days.
pub fn device_samples(node: &str, modbus_port: u16) -> String {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kubeedge-cloud/tests/fixtures");
    let model = std::fs::read_to_string(fixtures.join("kubeedge-docs-beta1-model.yaml")).unwrap();
    let device = std::fs::read_to_string(fixtures.join("kubeedge-docs-beta1-device.yaml"))
        .unwrap()
        .replace("nodeName: worker-node1", &format!("nodeName: {node}"))
        .replace("ip: 172.17.0.3", "ip: 127.0.0.1")
        .replace("port: 1502", &format!("port: {modbus_port}"))
        .replace("Cycle: 10000000000", "Cycle: 1000");
    format!("{model}\n---\n{device}")
}

/// Whether a holding register holds `value`: the KubeEdge sample's visitor says
/// `isSwap: true`, which KubeEdge's Modbus mapper applies to the bytes of each register.
pub fn register_holds(register: u16, value: u16) -> bool {
    register == value.swap_bytes() || register == value
}

/// A Modbus TCP device (pymodbus) and our Modbus mapper registered with the edgecore whose
/// DMI socket is `dmi_socket` (devices and reports over DMI, as KubeEdge runs its mappers).
pub struct ModbusSite {
    pub device: PyModbus,
    pub mapper: Proc,
}

impl ModbusSite {
    pub async fn start(dir: &Path, dmi_socket: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let device = PyModbus::start(dir).await;
        let mapper = dmi_mapper(dir, dmi_socket, &["--report".into(), "dmi".into()]);
        Self { device, mapper }
    }
}

impl Drop for ModbusSite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- modbus-mapper (tail) ----\n{}",
                self.mapper.log_tail(60)
            );
        }
    }
}

/// Sets the desired value of the first property of Device `name` (KubeEdge's sample has one).
pub async fn set_desired(cp: &ControlPlane, name: &str, value: &str) {
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/properties/0/desired/value","value":"{value}"}}]"#
    );
    cp.kubectl(&[
        "patch",
        "devices.devices.kubeedge.io",
        name,
        "--type=json",
        "-p",
        &patch,
    ])
    .await
    .unwrap();
}

/// The `reported` value of twin `property` of Device `name`, in its DeviceStatus.
pub async fn reported(cp: &ControlPlane, name: &str, property: &str) -> Option<String> {
    let status = cp
        .get_json(&["devicestatuses.devices.kubeedge.io", "-n", "default", name])
        .await?;
    status["status"]["twins"]
        .as_array()?
        .iter()
        .find(|t| t["propertyName"] == property)
        .and_then(|t| t["reported"]["value"].as_str())
        .map(str::to_owned)
}

/// A twin update as a mapper publishes it: `property` reported as `value`.
pub fn twin_report(property: &str, value: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": "",
        "timestamp": 0,
        "twin": {property: {"actual": {"value": value}, "metadata": {"type": "int"}}},
    })
    .to_string()
    .into_bytes()
}

/// The lines of a log file that contain `needle`.
pub fn log_lines(path: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

impl Drop for OurEdge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- our edgecore {} (tail) ----\n{}",
                self.node,
                self.proc.log_tail(80)
            );
        }
    }
}

impl Drop for OurCloud {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- our cloudcore {} (tail) ----\n{}",
                self.ws,
                self.proc.log_tail(80)
            );
        }
    }
}
