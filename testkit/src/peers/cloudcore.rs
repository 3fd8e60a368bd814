//! KubeEdge's own cloudcore against a [`ControlPlane`] (`real-cloudcore.sh`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{
    ControlPlane, Peers, STOP_GRACE, free_ports, print_tails_once, running_pid, stop_recorded,
    stop_recorded_async,
};

/// real-cloudcore.sh's own waits: 90 s for serving (its random 0-9 s sleep included), 30 s for
/// the token; plus margin.
const CLOUDCORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(240);

/// The real KubeEdge cloudcore (v1.23.1) on 127.0.0.1, on free ports: cloudhub's websocket
/// (`wss`), its https cert-bootstrap server, its metrics; quic off, iptablesManager off, every
/// file under `RUN_DIR/cloud`. Its CA lives in the apiserver (Secret `kubeedge/casecret`), so a
/// restart in the same control plane keeps the edges' certificates valid.
///
/// Dropping it stops cloudcore (SIGINT, its clean shutdown; SIGKILL after 15 s).
#[derive(Debug)]
pub struct RealCloudcore {
    peers: Peers,
    run_dir: PathBuf,
    kubeconfig: PathBuf,
    ws_port: u16,
    https_port: u16,
    monitor_port: u16,
    quic_port: u16,
    token: String,
    config: PathBuf,
    log: PathBuf,
    runs: u32,
}

impl RealCloudcore {
    /// Runs `real-cloudcore.sh` in `cp`'s run dir on free ports and waits until it serves
    /// (cloudhub listening, `/ca.crt` answering) and its join token is in Secret
    /// `kubeedge/tokensecret`. Panics if it does not come up.
    pub async fn start(cp: &ControlPlane) -> RealCloudcore {
        let mut attempt = 1;
        loop {
            let p = free_ports(4);
            let mut cloud = RealCloudcore {
                peers: cp.peers().clone(),
                run_dir: cp.run_dir().to_owned(),
                kubeconfig: cp.kubeconfig().to_owned(),
                ws_port: p[0],
                https_port: p[1],
                monitor_port: p[2],
                quic_port: p[3],
                token: String::new(),
                config: PathBuf::new(),
                log: cp.run_dir().join("logs/cloudcore.log"),
                runs: 0,
            };
            if cloud.run_script(attempt < 3).await {
                return cloud;
            }
            eprintln!("peers: a port was taken meanwhile; again with others");
            attempt += 1;
        }
    }

    /// Runs the script with this value's ports; `false` if a port was busy and `may_retry`,
    /// panics on any other failure.
    async fn run_script(&mut self, may_retry: bool) -> bool {
        let t0 = Instant::now();
        let env = [
            ("RUN_DIR", self.run_dir.display().to_string()),
            ("PEERS_KUBECONFIG", self.kubeconfig.display().to_string()),
            ("CLOUDCORE_WS_PORT", self.ws_port.to_string()),
            ("CLOUDCORE_HTTPS_PORT", self.https_port.to_string()),
            ("CLOUDCORE_MONITOR_PORT", self.monitor_port.to_string()),
            ("CLOUDCORE_QUIC_PORT", self.quic_port.to_string()),
        ];
        let exports = match self
            .peers
            .run_script("real-cloudcore.sh", &[], &env, CLOUDCORE_TIMEOUT)
            .await
        {
            Ok(exports) => exports,
            Err(e) if e.port_busy() && may_retry => return false,
            Err(e) => panic!("the real cloudcore did not start: {e}"),
        };
        let get = |key: &str| {
            exports
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("real-cloudcore.sh printed no {key}: {exports:?}"))
        };
        self.token = get("CLOUDCORE_TOKEN");
        self.config = PathBuf::from(get("CLOUDCORE_CONFIG"));
        self.log = PathBuf::from(get("CLOUDCORE_LOG"));
        self.runs += 1;
        eprintln!(
            "peers: real cloudcore {}serving wss {} and https {} in {:.1?} (pid {})",
            if self.runs > 1 { "again " } else { "" },
            get("CLOUDCORE_WS"),
            get("CLOUDCORE_HTTPS"),
            t0.elapsed(),
            self.pid().map_or("?".into(), |p| p.to_string())
        );
        true
    }

    /// cloudhub's websocket address (what an edge dials, `wss://ADDR/<projectID>/<node>/events`).
    pub fn ws_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.ws_port).into()
    }

    /// The https cert-bootstrap address (`/ca.crt`, `/edge.crt`).
    pub fn https_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.https_port).into()
    }

    /// The metrics (monitor) address.
    pub fn monitor_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.monitor_port).into()
    }

    /// Every TCP port it listens on (wss, https, monitor).
    pub fn listen_ports(&self) -> Vec<u16> {
        vec![self.ws_port, self.https_port, self.monitor_port]
    }

    /// The join token (what `keadm gettoken` prints), of the latest start. It is tied to this
    /// control plane's KubeEdge CA: no other cloud accepts it.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Its log of the current run (`RUN_DIR/logs/cloudcore.log`; earlier runs are in
    /// `cloudcore.N.log`).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its generated config (`RUN_DIR/cloud/cloudcore.yaml`).
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Its pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        running_pid(&self.pid_file())
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join("pids/cloudcore.pid")
    }

    /// Stops it: SIGINT (it exits with code 255, `http: Server closed`: normal), SIGKILL after
    /// 15 s; returns once it is gone. Connected edgecores notice only on their next keepalive
    /// write and then wait 30 s before reconnecting (see the harness README).
    pub async fn stop(&mut self) {
        if let Err(e) = stop_recorded_async(self.pid_file(), "INT").await {
            panic!("stopping the real cloudcore: {e}");
        }
    }

    /// Starts it again on the same ports in the same run dir (stopping it first if it runs).
    /// real-cloudcore.sh tolerates the earlier run (its config is regenerated, the stale pid
    /// file ignored), but it would find the earlier run's "Starting cloudhub websocket server"
    /// line in the log, so that log is moved to `cloudcore.N.log` first. The token is read
    /// again ([`RealCloudcore::token`]).
    pub async fn start_again(&mut self) {
        self.stop().await;
        let logs = self.run_dir.join("logs");
        let current = logs.join("cloudcore.log");
        if current.exists() {
            let old = logs.join(format!("cloudcore.{}.log", self.runs));
            std::fs::rename(&current, &old)
                .unwrap_or_else(|e| panic!("moving {} aside: {e}", current.display()));
        }
        self.run_script(false).await;
    }
}

impl Drop for RealCloudcore {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_tails_once(std::slice::from_ref(&self.log));
        }
        if let Err(e) = stop_recorded(&self.pid_file(), "INT", STOP_GRACE) {
            eprintln!("peers: stopping the real cloudcore: {e}");
        }
    }
}
