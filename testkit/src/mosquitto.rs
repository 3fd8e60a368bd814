//! A real mosquitto broker, and its command-line clients.
//!
//! Each [`Mosquitto`] gets its own port and temporary directory (config and log), so tests run
//! in parallel; the process is killed when it is dropped.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::{DEADLINE, free_port, within};

/// The largest packet the broker accepts (the code under test's limits are tested, not
/// mosquitto's).
pub const MOSQUITTO_MAX_PACKET: usize = 16 * 1024 * 1024;

/// Where mosquitto is looked for: PATH first, then the Debian and source-install places (sbin
/// is often not on a user's PATH).
const MOSQUITTO_BINARIES: [&str; 3] = [
    "mosquitto",
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
];

/// How a [`Mosquitto`] is configured beyond the defaults (anonymous access on 127.0.0.1, no
/// persistence, packets up to [`MOSQUITTO_MAX_PACKET`], a log file).
#[derive(Clone, Debug, Default)]
pub struct MosquittoOptions {
    /// `set_tcp_nodelay true`: mosquitto sends without waiting for Nagle's algorithm.
    pub tcp_nodelay: bool,
}

/// Why [`Mosquitto::try_start`] failed.
#[derive(Debug)]
pub enum StartError {
    /// No mosquitto binary on PATH, in /usr/sbin or in /usr/local/sbin.
    NotInstalled,
    /// The temporary directory, the config file or the process could not be made.
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// It did not accept connections within [`DEADLINE`].
    Timeout {
        /// The port it was to listen on.
        port: u16,
        /// Its log.
        log: String,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled => f.write_str(
                "mosquitto is not installed (no `mosquitto` on PATH, in /usr/sbin or in \
                 /usr/local/sbin)",
            ),
            Self::Io { what, source } => write!(f, "{what}: {source}"),
            Self::Timeout { port, log } => write!(
                f,
                "timed out after {DEADLINE:?}: mosquitto accepting on port {port}; log:\n{log}"
            ),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A mosquitto process listening on 127.0.0.1.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    options: MosquittoOptions,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts mosquitto on a free port and waits until it accepts connections; panics if it
    /// cannot.
    pub async fn start() -> Self {
        Self::start_with(MosquittoOptions::default()).await
    }

    /// [`Mosquitto::start`] with `options`.
    pub async fn start_with(options: MosquittoOptions) -> Self {
        Self::try_start(options)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts mosquitto with `options` on a free port and waits (up to [`DEADLINE`]) until it
    /// accepts connections. If it exits at start (its port taken meanwhile, say), it is
    /// started again.
    pub async fn try_start(options: MosquittoOptions) -> Result<Self, StartError> {
        let dir = tempfile::tempdir().map_err(|source| StartError::Io {
            what: "a temporary directory".into(),
            source,
        })?;
        let mut mosquitto = Self {
            child: None,
            port: free_port(),
            options,
            dir,
        };
        mosquitto.try_spawn().await?;
        Ok(mosquitto)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address as KubeEdge writes it (a Device's protocol configData, edgecore's config).
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Kills it and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = within("killing mosquitto", child.kill()).await;
        }
    }

    /// Stops it (if it runs) and starts it again on the same port; panics if it cannot.
    pub async fn restart(&mut self) {
        self.stop().await;
        if let Err(e) = self.try_spawn().await {
            panic!("{e}");
        }
    }

    /// Its log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    async fn try_spawn(&mut self) -> Result<(), StartError> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 max_packet_size {MOSQUITTO_MAX_PACKET}\n\
                 {nodelay}\
                 log_dest file {log}\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                port = self.port,
                nodelay = if self.options.tcp_nodelay {
                    "set_tcp_nodelay true\n"
                } else {
                    ""
                },
                log = self.log_path().display(),
            ),
        )
        .map_err(|source| StartError::Io {
            what: format!("writing {}", conf.display()),
            source,
        })?;
        let port = self.port;
        let log = self.log_path();
        let accepting = async {
            loop {
                let mut child = spawn_mosquitto(&conf)?;
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        // The port may still be held by the previous run: try again.
                        let log = std::fs::read_to_string(&log).unwrap_or_default();
                        eprintln!("mosquitto exited ({status}); retrying. Log:\n{log}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                        return Ok(child);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        // On a timeout the last child is dropped, which kills it.
        match tokio::time::timeout(DEADLINE, accepting).await {
            Ok(Ok(child)) => {
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StartError::Timeout {
                port,
                log: self.log(),
            }),
        }
    }
}

/// `mosquitto -c conf`, the first of [`MOSQUITTO_BINARIES`] that exists.
fn spawn_mosquitto(conf: &Path) -> Result<Child, StartError> {
    for binary in MOSQUITTO_BINARIES {
        match Command::new(binary)
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => return Ok(child),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StartError::Io {
                    what: format!("starting {binary}"),
                    source,
                });
            }
        }
    }
    Err(StartError::NotInstalled)
}

/// Publishes `payload` (exact bytes, read from stdin) on `topic` with `mosquitto_pub`, QoS 1,
/// and returns how it exited (the caller decides whether a failure matters).
pub async fn mosquitto_pub(port: u16, topic: &str, payload: &[u8]) -> ExitStatus {
    run_mosquitto_pub(port, topic, payload, &["-q", "1", "-s"])
        .await
        .status
}

/// Publishes each line of `lines` as its own message on `topic` with one `mosquitto_pub -l`
/// process at QoS `qos` (a flood, or many updates from one client), and returns how it exited.
pub async fn mosquitto_pub_lines(port: u16, topic: &str, qos: u8, lines: &[u8]) -> ExitStatus {
    let qos = qos.to_string();
    run_mosquitto_pub(port, topic, lines, &["-q", &qos, "-l"])
        .await
        .status
}

/// [`mosquitto_pub`], failing the test (with mosquitto_pub's error output) unless it succeeds.
pub async fn mosquitto_pub_ok(port: u16, topic: &str, payload: &[u8]) {
    check_mosquitto_pub(
        topic,
        run_mosquitto_pub(port, topic, payload, &["-q", "1", "-s"]).await,
    );
}

/// [`mosquitto_pub_ok`] with the retain flag: the broker keeps the message for later
/// subscribers.
pub async fn mosquitto_pub_retained(port: u16, topic: &str, payload: &[u8]) {
    check_mosquitto_pub(
        topic,
        run_mosquitto_pub(port, topic, payload, &["-q", "1", "-s", "-r"]).await,
    );
}

/// Runs `mosquitto_pub` with `mode` (QoS, how stdin is read, retain) and `input` on stdin.
async fn run_mosquitto_pub(port: u16, topic: &str, input: &[u8], mode: &[&str]) -> Output {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_pub is installed");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input)
        .await
        .expect("writing mosquitto_pub's stdin");
    drop(stdin);
    within("mosquitto_pub", child.wait_with_output())
        .await
        .expect("mosquitto_pub ran")
}

fn check_mosquitto_pub(topic: &str, output: Output) {
    assert!(
        output.status.success(),
        "mosquitto_pub -t {topic} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `mosquitto_sub` that waits for one message on a topic (QoS 1).
pub struct MosquittoSub {
    child: Child,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -C 1 -N` on `topic`.
    pub fn start(port: u16, topic: &str) -> Self {
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-C", "1", "-N", "-t", topic])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub is installed");
        Self { child }
    }

    /// Whether it got its message (and exited), waiting at most `wait`.
    pub async fn done_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.child.wait()).await.is_ok()
    }

    /// The message's exact bytes (after it exited).
    pub async fn output(self) -> Vec<u8> {
        let output = within("mosquitto_sub output", self.child.wait_with_output())
            .await
            .expect("mosquitto_sub ran");
        assert!(
            output.status.success(),
            "mosquitto_sub failed: {}",
            output.status
        );
        output.stdout
    }

    /// [`publish_until_received`] for this one subscriber: its message's exact bytes.
    pub async fn receive_while<F, Fut>(self, publish: F) -> Vec<u8>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut outputs = publish_until_received(vec![self], publish).await;
        outputs.pop().expect("one subscriber, one message")
    }
}

/// Calls `publish` every 300 ms until every subscriber got its message (a subscriber cannot
/// say when its SUBSCRIBE was acknowledged), then returns what each received, in the order
/// they finished. Fails the test after [`DEADLINE`].
pub async fn publish_until_received<F, Fut>(subs: Vec<MosquittoSub>, mut publish: F) -> Vec<Vec<u8>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut pending = subs;
    let mut done = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !pending.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub got nothing within {DEADLINE:?}"
        );
        publish().await;
        let mut still = Vec::new();
        for mut sub in pending {
            if sub.done_within(Duration::from_millis(300)).await {
                done.push(sub);
            } else {
                still.push(sub);
            }
        }
        pending = still;
    }
    let mut outputs = Vec::new();
    for sub in done {
        outputs.push(sub.output().await);
    }
    outputs
}
