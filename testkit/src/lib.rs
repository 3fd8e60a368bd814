//! Helpers shared by the kubeedge-rs crates' tests and examples (a dev-dependency only; not
//! published).
//!
//! - bounded waits: [`DEADLINE`], [`within`], [`wait_until`], so a hung test fails instead of
//!   hanging;
//! - [`free_port`] and [`debian_python`];
//! - a real mosquitto broker per test ([`Mosquitto`]), and its command-line clients
//!   ([`mosquitto_pub`], [`MosquittoSub`], [`publish_until_received`]).
//!
//! Every process is started with `kill_on_drop`, so it dies with its handle, and every wait is
//! bounded by [`DEADLINE`].

mod mosquitto;

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
