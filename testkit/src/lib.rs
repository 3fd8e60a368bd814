//! Helpers shared by the kubeedge-rs crates' tests and examples (a dev-dependency only; not
//! published).
//!
//! - bounded waits: [`DEADLINE`], [`within`], [`wait_until`], and [`eventually`] with a
//!   deadline of its own, so a hung test fails instead of hanging;
//! - [`free_port`] and [`debian_python`];
//! - a real mosquitto broker per test ([`Mosquitto`]), and its command-line clients
//!   ([`mosquitto_pub`], [`MosquittoSub`], [`publish_until_received`]);
//! - [`peers`]: the **real peers** on loopback (KubeEdge v1.23.1's own cloudcore and edgecore,
//!   a real Kubernetes control plane) from the workplace's `../shared/peers`, for checking
//!   kubeedge-rs against the real thing. A test of them starts with
//!   `let Some(peers) = peers::Peers::find() else { return };`, which prints `skipped: <why>`
//!   where the peers or their tools are missing (a clone outside the workplace), or panics
//!   instead under `KUBEEDGE_REQUIRE_PEERS=1` (CI). It reads `KUBEEDGE_PEERS_DIR`,
//!   `KUBEEDGE_PEERS_CACHE`, `KUBEEDGE_REQUIRE_PEERS`, `KUBEEDGE_KEEP_RUN_DIR` and
//!   `EDGED_CRI_ENDPOINT`; see its docs.
//!
//! Every process is started with `kill_on_drop`, so it dies with its handle (the peers, which
//! run detached, are stopped by pid when their handle drops), and every wait is bounded.

mod mosquitto;
pub mod peers;
mod pty;
pub use pty::PtyPair;

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

pub use mosquitto::{
    MOSQUITTO_MAX_PACKET, Mosquitto, MosquittoOptions, MosquittoSub, StartError, mosquitto_pub,
    mosquitto_pub_lines, mosquitto_pub_ok, mosquitto_pub_retained, publish_until_received,
};

/// Deadline for anything a test waits for; a hung test fails here instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The Python with Debian's packages (python3-paho-mqtt, python3-pymodbus): `/usr/bin/python3`,
/// not whatever `python3` comes first on PATH (a pyenv shim, say).
pub fn debian_python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A port that was free on 127.0.0.1 a moment ago (the kernel picked it; nothing holds it).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `fut`, failing the test with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {DEADLINE:?}: {what}"),
    }
}

/// Polls `check` every 20 ms until it is true, failing the test after [`DEADLINE`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Polls `check` every 100 ms until it gives `Some`, and returns that; fails the test with
/// `what` once `deadline` has passed (a deadline, never an assertion on how long it took).
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
