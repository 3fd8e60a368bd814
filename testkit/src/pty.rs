//! A socat pty pair: two linked serial devices, for serial-port tests without hardware.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::within;

/// A socat pty pair: two linked serial devices `a` and `b` in a temporary directory; socat is
/// killed when dropped.
pub struct PtyPair {
    child: Option<Child>,
    dir: TempDir,
}

impl PtyPair {
    /// Starts socat and waits until both links exist.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut pair = Self { child: None, dir };
        pair.spawn().await;
        pair
    }

    /// One end.
    pub fn a(&self) -> PathBuf {
        self.dir.path().join("a")
    }

    /// The other end.
    pub fn b(&self) -> PathBuf {
        self.dir.path().join("b")
    }

    /// Kills socat: both ends fail.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = within("killing socat", child.kill()).await;
        }
        // socat removes its links on a clean exit only.
        let _ = std::fs::remove_file(self.a());
        let _ = std::fs::remove_file(self.b());
    }

    /// Starts a new pair under the same link names.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let end = |p: PathBuf| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(end(self.a()))
            .arg(end(self.b()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run socat (is it installed?): {e}"));
        self.child = Some(child);
        let (a, b) = (self.a(), self.b());
        within("socat's pty links", async {
            while !(a.exists() && b.exists()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}
