//! A real Kubernetes control plane on loopback (`control-plane.sh`), and kubectl against it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{Peers, RunDir, free_ports, lossy};

/// control-plane.sh's own waits: 120 s for /readyz, 60 s for the CRDs, 60 s for the default
/// ServiceAccount; plus margin.
const CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one kubectl call may take (it is also given `--request-timeout`).
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a port taken between picking and the script's check is picked again.
const PORT_ATTEMPTS: usize = 3;

/// What [`ControlPlane::start`] starts beyond etcd and kube-apiserver.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// `CONTROLLERS=1`: also kube-controller-manager (node lifecycle, service accounts and their
    /// tokens, garbage collection, deployments) and kube-scheduler, with ServiceAccount
    /// admission on: a real cluster. Without, pods must set `spec.nodeName`, graceful deletes
    /// stay Terminating and there is no `default` ServiceAccount (SA admission is off).
    pub controllers: bool,
    /// `NODE_MONITOR_GRACE`: the controller-manager's `--node-monitor-grace-period` (the
    /// harness's default is 40 s).
    pub node_monitor_grace: Option<Duration>,
    /// `APISERVER_EXTRA_ARGS`: extra kube-apiserver flags (the script word-splits them, so none
    /// may contain whitespace).
    pub apiserver_extra_args: Vec<String>,
}

impl ControlPlaneOptions {
    /// A real cluster: [`controllers`](Self::controllers) on, the rest at the defaults.
    pub fn cluster() -> Self {
        Self {
            controllers: true,
            ..Self::default()
        }
    }
}

/// A real Kubernetes control plane on 127.0.0.1: etcd and kube-apiserver (static admin token,
/// RBAC, KubeEdge's CRDs established), with [`ControlPlaneOptions::controllers`] also
/// kube-controller-manager and kube-scheduler. Every port is a free one; all state is in its
/// [`RunDir`], which stops everything when it drops.
#[derive(Debug)]
pub struct ControlPlane {
    kubeconfig: PathBuf,
    apiserver: String,
    ports: Vec<u16>,
    apiserver_port: u16,
    options: ControlPlaneOptions,
    // last: its Drop (down.sh) runs after everything above is gone
    run: RunDir,
}

impl ControlPlane {
    /// Runs `control-plane.sh` in a new [`RunDir`] on free ports and waits until the apiserver
    /// is ready, the CRDs are established and (with controllers) the `default` ServiceAccount
    /// exists. Panics if it does not come up (the logs are printed and the run dir kept).
    pub async fn start(peers: &Peers, options: ControlPlaneOptions) -> ControlPlane {
        for arg in &options.apiserver_extra_args {
            assert!(
                !arg.chars().any(char::is_whitespace),
                "APISERVER_EXTRA_ARGS are word-split by control-plane.sh: {arg:?}"
            );
        }
        let t0 = Instant::now();
        let run = RunDir::new(peers);
        let mut attempt = 1;
        let (ports, exports) = loop {
            let p = free_ports(5);
            let mut env = vec![
                ("RUN_DIR", run.path().display().to_string()),
                ("ETCD_PORT", p[0].to_string()),
                ("ETCD_PEER_PORT", p[1].to_string()),
                ("APISERVER_PORT", p[2].to_string()),
                ("KCM_PORT", p[3].to_string()),
                ("SCHEDULER_PORT", p[4].to_string()),
                (
                    "CONTROLLERS",
                    if options.controllers { "1" } else { "0" }.into(),
                ),
            ];
            if let Some(grace) = options.node_monitor_grace {
                env.push(("NODE_MONITOR_GRACE", format!("{}ms", grace.as_millis())));
            }
            if !options.apiserver_extra_args.is_empty() {
                env.push((
                    "APISERVER_EXTRA_ARGS",
                    options.apiserver_extra_args.join(" "),
                ));
            }
            match peers
                .run_script("control-plane.sh", &[], &env, CONTROL_PLANE_TIMEOUT)
                .await
            {
                Ok(exports) => break (p, exports),
                Err(e) if e.port_busy() && attempt < PORT_ATTEMPTS => {
                    eprintln!("peers: a port was taken meanwhile; again with others");
                    attempt += 1;
                }
                Err(e) => panic!("the control plane did not start: {e}"),
            }
        };
        let get = |key: &str| {
            exports
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("control-plane.sh printed no {key}: {exports:?}"))
        };
        let (kubeconfig, apiserver) = (PathBuf::from(get("KUBECONFIG")), get("APISERVER"));
        let listening = if options.controllers {
            ports.clone()
        } else {
            ports[..3].to_vec()
        };
        eprintln!(
            "peers: control plane{} up in {:.1?} at {apiserver} (run dir {})",
            if options.controllers {
                " with controller-manager and scheduler"
            } else {
                ""
            },
            t0.elapsed(),
            run.path().display()
        );
        ControlPlane {
            kubeconfig,
            apiserver,
            apiserver_port: ports[2],
            ports: listening,
            options,
            run,
        }
    }

    /// Its state directory (`RUN_DIR`).
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// The admin kubeconfig (`RUN_DIR/kubeconfig`, a bearer token in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver's URL, `https://127.0.0.1:PORT` (its serving cert is signed by the CA in
    /// the kubeconfig, for 127.0.0.1, localhost and kubernetes.default.svc...).
    pub fn apiserver(&self) -> &str {
        &self.apiserver
    }

    /// The apiserver's port.
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_port
    }

    /// Every TCP port its processes listen on (etcd client and peer, the apiserver, and with
    /// controllers the controller-manager's and the scheduler's).
    pub fn listen_ports(&self) -> Vec<u16> {
        self.ports.clone()
    }

    /// The options it was started with.
    pub fn options(&self) -> &ControlPlaneOptions {
        &self.options
    }

    /// Its [`RunDir`] (logs, recorded pids).
    pub fn run(&self) -> &RunDir {
        &self.run
    }

    /// The peers it runs.
    pub fn peers(&self) -> &Peers {
        self.run.peers()
    }

    /// `kubectl ARGS` against it; its stdout, or why it failed. Bounded by 60 s.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, KubectlError> {
        self.kubectl_with_input(args, None).await
    }

    /// `kubectl ARGS` with `input` on stdin.
    pub async fn kubectl_with_input(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, KubectlError> {
        let error = |status, stderr: String| KubectlError {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            status,
            stderr,
        };
        let mut child = tokio::process::Command::new(&self.peers().kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| error(None, format!("cannot run kubectl: {e}")))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .await
                .map_err(|e| error(None, format!("writing kubectl's stdin: {e}")))?;
        }
        match tokio::time::timeout(KUBECTL_TIMEOUT, child.wait_with_output()).await {
            Err(_) => Err(error(None, format!("timed out after {KUBECTL_TIMEOUT:?}"))),
            Ok(Err(e)) => Err(error(None, e.to_string())),
            Ok(Ok(out)) if out.status.success() => Ok(lossy(&out.stdout)),
            Ok(Ok(out)) => Err(error(Some(out.status), lossy(&out.stderr))),
        }
    }

    /// `kubectl apply -f -` with `yaml` (one or more documents).
    pub async fn apply(&self, yaml: &str) -> Result<String, KubectlError> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
            .await
    }

    /// `kubectl delete --wait=false ARGS` (e.g. `["pod", "p1", "--grace-period=0", "--force"]`:
    /// without a kubelet a graceful pod delete stays Terminating).
    pub async fn delete(&self, args: &[&str]) -> Result<String, KubectlError> {
        let mut all = vec!["delete", "--wait=false"];
        all.extend_from_slice(args);
        self.kubectl(&all).await
    }

    /// `kubectl get ARGS -o json`, parsed; `None` if it fails (not found, say) or is not JSON.
    pub async fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all).await.ok()?;
        serde_json::from_str(&out).ok()
    }
}

impl AsRef<RunDir> for ControlPlane {
    fn as_ref(&self) -> &RunDir {
        &self.run
    }
}

/// A kubectl call that failed.
#[derive(Debug)]
pub struct KubectlError {
    /// Its arguments (after `--kubeconfig`).
    pub args: Vec<String>,
    /// How it exited; `None` if it did not run or timed out.
    pub status: Option<ExitStatus>,
    /// Its error output (or why it did not run).
    pub stderr: String,
}

impl KubectlError {
    /// The object was not there (`Error from server (NotFound)`).
    pub fn is_not_found(&self) -> bool {
        self.stderr.contains("(NotFound)")
    }
}

impl fmt::Display for KubectlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kubectl {}", self.args.join(" "))?;
        if let Some(status) = self.status {
            write!(f, " ({status})")?;
        }
        write!(f, ": {}", self.stderr.trim_end())
    }
}

impl std::error::Error for KubectlError {}
