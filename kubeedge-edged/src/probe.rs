//! Liveness, readiness and startup probes with Kubernetes semantics.
//!
//! Two halves:
//!
//! - [`run_probe`] runs one probe attempt: `exec` (through [`ProbeExec`], which
//!   [`RuntimeExec`] implements over [`PodRuntime::exec_sync`]; exit code 0 is success),
//!   `httpGet` (plain HTTP/1.1 over a tokio `TcpStream`; a status in `200..400` is success) or
//!   `tcpSocket` (a completed connect is success). Every attempt ends within the probe's
//!   `timeoutSeconds` (default 1) with [`ProbeOutcome::Failure`] if the target hangs. It returns
//!   [`Error::Probe`] when the probe cannot be run at all (no handler, an unknown named port,
//!   `scheme: HTTPS`, `grpc`): like the kubelet, the caller then keeps the previous verdict.
//! - [`ProbeState`] applies `initialDelaySeconds`, `periodSeconds` (default 10),
//!   `successThreshold` (default 1) and `failureThreshold` (default 3) to the outcomes. It never
//!   sleeps: the sync loop asks [`ProbeState::next_due`] / [`ProbeState::is_due`] with its own
//!   `Instant`, runs the probe, and feeds the outcome to [`ProbeState::record`].
//!
//! As in the kubelet, liveness and readiness probes should only run once the startup probe (if
//! any) has succeeded; that gating is the sync loop's, since it owns all three states.
//!
//! Left out: `https` (needs TLS without verification, as the kubelet does), `grpc`, following
//! redirects (a 3xx answer is a success, as the kubelet treats a redirect to another host), and
//! per-probe `terminationGracePeriodSeconds` (the sync loop's business when it kills).

use std::future::Future;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::{ExecResult, PodRuntime};
use crate::{Error, Result};

/// Default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 1;
/// Default `periodSeconds`.
pub const DEFAULT_PERIOD_SECONDS: i32 = 10;
/// Default `successThreshold`.
pub const DEFAULT_SUCCESS_THRESHOLD: i32 = 1;
/// Default `failureThreshold`.
pub const DEFAULT_FAILURE_THRESHOLD: i32 = 3;
/// `User-Agent` of HTTP probes (the kubelet's, for the Kubernetes version edged reports).
pub const USER_AGENT: &str = "kube-probe/1.32";
/// Most bytes read from an HTTP probe's answer while looking for the status line.
pub const MAX_HTTP_READ: usize = 10 * 1024;
/// Most bytes of command output kept in a failed exec probe's message.
const MAX_OUTPUT_IN_MESSAGE: usize = 1024;

/// Which probe of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `livenessProbe`: a failure restarts the container.
    Liveness,
    /// `readinessProbe`: the container's `ready` flag.
    Readiness,
    /// `startupProbe`: gates the other two; a failure restarts the container.
    Startup,
}

impl ProbeKind {
    /// The verdict of a container that has just started, before any probe ran (the kubelet's
    /// initial values: liveness Success, readiness Failure, startup Unknown).
    pub fn initial_verdict(self) -> Verdict {
        match self {
            Self::Liveness => Verdict::Success,
            Self::Readiness => Verdict::Failure,
            Self::Startup => Verdict::Unknown,
        }
    }
}

/// The result of one probe attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The target answered as healthy.
    Success,
    /// The target is unhealthy; the message says why (for events and logs).
    Failure(String),
}

/// What the thresholds make of the outcomes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Healthy (or ready, or started).
    Success,
    /// Unhealthy (or not ready): for liveness and startup, restart the container.
    Failure,
    /// Not known yet.
    Unknown,
}

/// Runs a probe's command in the container. Implemented by [`RuntimeExec`] and by any closure
/// `Fn(Vec<String>, Duration) -> impl Future<Output = Result<ExecResult>>`.
pub trait ProbeExec: Send + Sync {
    /// Runs `cmd`, waiting at most `timeout`.
    fn exec(
        &self,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecResult>> + Send;
}

impl<F, Fut> ProbeExec for F
where
    F: Fn(Vec<String>, Duration) -> Fut + Send + Sync,
    Fut: Future<Output = Result<ExecResult>> + Send,
{
    fn exec(
        &self,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecResult>> + Send {
        self(cmd, timeout)
    }
}

/// [`ProbeExec`] in one container of a [`PodRuntime`].
#[derive(Debug)]
pub struct RuntimeExec<'a, R> {
    /// The runtime.
    pub runtime: &'a R,
    /// The container's runtime id.
    pub container_id: &'a str,
}

impl<R: PodRuntime> ProbeExec for RuntimeExec<'_, R> {
    fn exec(
        &self,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecResult>> + Send {
        let (runtime, id) = (self.runtime, self.container_id);
        async move { runtime.exec_sync(id, &cmd, timeout).await }
    }
}

/// What a probe is aimed at.
#[derive(Clone, Copy, Debug)]
pub struct ProbeTarget<'a> {
    /// The pod's IP: the host of `httpGet` and `tcpSocket` probes without a `host`.
    pub pod_ip: &'a str,
    /// The container (its `ports` resolve named probe ports).
    pub container: &'a Container,
}

/// The probe's `timeoutSeconds` (default 1, at least 1).
pub fn probe_timeout(probe: &Probe) -> Duration {
    Duration::from_secs(positive(probe.timeout_seconds, DEFAULT_TIMEOUT_SECONDS))
}

fn positive(value: Option<i32>, default: i32) -> u64 {
    let v = value.filter(|v| *v > 0).unwrap_or(default);
    u64::try_from(v).unwrap_or(1)
}

/// Runs one attempt of `probe` against `target`, within the probe's timeout.
///
/// `Ok(Failure)` is an unhealthy target (including one that did not answer in time); `Err` is a
/// probe that could not be run, whose result the caller should discard
/// ([`ProbeState::record_error`]).
pub async fn run_probe(
    probe: &Probe,
    target: &ProbeTarget<'_>,
    exec: &impl ProbeExec,
) -> Result<ProbeOutcome> {
    let timeout = probe_timeout(probe);
    if let Some(action) = &probe.exec {
        let cmd = action.command.clone().unwrap_or_default();
        exec_probe(exec, cmd, timeout).await
    } else if let Some(action) = &probe.http_get {
        http_get_probe(action, target, timeout).await
    } else if let Some(action) = &probe.tcp_socket {
        tcp_socket_probe(action, target, timeout).await
    } else if probe.grpc.is_some() {
        Err(Error::Probe(
            "gRPC probes are not supported by edged".into(),
        ))
    } else {
        Err(Error::Probe(
            "the probe has no handler (exec, httpGet, tcpSocket)".into(),
        ))
    }
}

/// An `exec` probe: success when the command exits with 0.
pub async fn exec_probe(
    exec: &impl ProbeExec,
    cmd: Vec<String>,
    timeout: Duration,
) -> Result<ProbeOutcome> {
    if cmd.is_empty() {
        return Err(Error::Probe("exec probe has no command".into()));
    }
    let shown = format!("{cmd:?}");
    match tokio::time::timeout(timeout, exec.exec(cmd, timeout)).await {
        Err(_) => Ok(ProbeOutcome::Failure(format!(
            "command {shown} timed out after {}s",
            timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(r)) if r.exit_code == 0 => Ok(ProbeOutcome::Success),
        Ok(Ok(r)) => {
            let mut output = r.stdout;
            output.extend_from_slice(&r.stderr);
            output.truncate(MAX_OUTPUT_IN_MESSAGE);
            let output = String::from_utf8_lossy(&output);
            Ok(ProbeOutcome::Failure(format!(
                "command {shown} exited with {}: {}",
                r.exit_code,
                output.trim_end()
            )))
        }
    }
}

/// Resolves a probe port: a number, or the name of one of the container's ports (or a name
/// that is a number, as the kubelet allows).
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| {
                Error::Probe(format!(
                    "container {:?} has no port named {name:?}",
                    container.name
                ))
            })?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::Probe(format!("invalid port number: {number}")))
}

fn probe_host<'a>(host: Option<&'a str>, target: &ProbeTarget<'a>) -> Result<&'a str> {
    let host = host.filter(|h| !h.is_empty()).unwrap_or(target.pod_ip);
    if host.is_empty() {
        return Err(Error::Probe(
            "no host to probe: the pod has no IP yet".into(),
        ));
    }
    if host
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'/')
    {
        return Err(Error::Probe(format!("invalid probe host {host:?}")));
    }
    Ok(host)
}

fn host_port(host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A `tcpSocket` probe: success when a TCP connection opens.
pub async fn tcp_socket_probe(
    action: &TCPSocketAction,
    target: &ProbeTarget<'_>,
    timeout: Duration,
) -> Result<ProbeOutcome> {
    let port = resolve_port(&action.port, target.container)?;
    let host = probe_host(action.host.as_deref(), target)?;
    let addr = host_port(host, port);
    Ok(
        match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(_stream)) => ProbeOutcome::Success,
            Ok(Err(e)) => ProbeOutcome::Failure(format!("dial tcp {addr}: {e}")),
            Err(_) => ProbeOutcome::Failure(format!("dial tcp {addr}: i/o timeout")),
        },
    )
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An `httpGet` probe: success when the answer's status is in `200..400`.
pub async fn http_get_probe(
    action: &HTTPGetAction,
    target: &ProbeTarget<'_>,
    timeout: Duration,
) -> Result<ProbeOutcome> {
    match action.scheme.as_deref().unwrap_or("HTTP") {
        s if s.eq_ignore_ascii_case("HTTP") => {}
        s if s.eq_ignore_ascii_case("HTTPS") => {
            return Err(Error::Probe(
                "httpGet probes with scheme HTTPS are not supported by edged".into(),
            ));
        }
        other => return Err(Error::Probe(format!("unknown httpGet scheme {other:?}"))),
    }
    let port = resolve_port(&action.port, target.container)?;
    let host = probe_host(action.host.as_deref(), target)?;
    let mut path = action.path.clone().unwrap_or_default();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(Error::Probe(format!("invalid httpGet path {path:?}")));
    }
    let authority = host_port(host, port);
    let url = format!("http://{authority}{path}");

    let mut host_header = authority.clone();
    let mut user_agent = USER_AGENT.to_owned();
    let mut accept = "*/*".to_owned();
    let mut extra = String::new();
    for h in action.http_headers.iter().flatten() {
        if !is_token(&h.name) || h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Error::Probe(format!("invalid httpGet header {:?}", h.name)));
        }
        if h.name.eq_ignore_ascii_case("host") {
            host_header.clone_from(&h.value);
        } else if h.name.eq_ignore_ascii_case("user-agent") {
            user_agent.clone_from(&h.value);
        } else if h.name.eq_ignore_ascii_case("accept") {
            accept.clone_from(&h.value);
        } else {
            extra.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {user_agent}\r\n\
         Accept: {accept}\r\n{extra}Connection: close\r\n\r\n"
    );

    Ok(
        match tokio::time::timeout(timeout, http_status(host, port, request.as_bytes())).await {
            Err(_) => ProbeOutcome::Failure(format!(
                "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting \
                 headers)"
            )),
            Ok(Err(e)) => ProbeOutcome::Failure(format!("Get {url:?}: {e}")),
            Ok(Ok(code)) if (200..400).contains(&code) => ProbeOutcome::Success,
            Ok(Ok(code)) => {
                ProbeOutcome::Failure(format!("HTTP probe failed with statuscode: {code}"))
            }
        },
    )
}

/// Sends `request` and returns the status code of the answer, reading at most
/// [`MAX_HTTP_READ`] bytes.
async fn http_status(host: &str, port: u16, request: &[u8]) -> std::io::Result<u16> {
    use std::io::{Error as IoError, ErrorKind};
    let mut stream = TcpStream::connect((host, port)).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let line_end = loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            break i;
        }
        if buf.len() >= MAX_HTTP_READ {
            return Err(IoError::new(
                ErrorKind::InvalidData,
                "malformed HTTP response: no status line",
            ));
        }
        let want = chunk.len().min(MAX_HTTP_READ - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(IoError::new(ErrorKind::UnexpectedEof, "EOF"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(IoError::new(
            ErrorKind::InvalidData,
            format!("malformed HTTP status line {:?}", line.trim_end()),
        ));
    }
    code.parse()
        .map_err(|_| IoError::new(ErrorKind::InvalidData, "malformed HTTP status code"))
}

/// The timing of a probe, with Kubernetes' defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTiming {
    /// `initialDelaySeconds` (default 0).
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1; always 1 for liveness and startup).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
}

impl ProbeTiming {
    /// The timing of `probe` used as a `kind` probe.
    pub fn from_probe(kind: ProbeKind, probe: &Probe) -> Self {
        let threshold = |v: Option<i32>, d: i32| u32::try_from(positive(v, d)).unwrap_or(1);
        let success_threshold = match kind {
            ProbeKind::Readiness => threshold(probe.success_threshold, DEFAULT_SUCCESS_THRESHOLD),
            ProbeKind::Liveness | ProbeKind::Startup => 1,
        };
        Self {
            initial_delay: Duration::from_secs(
                u64::try_from(probe.initial_delay_seconds.unwrap_or(0)).unwrap_or(0),
            ),
            period: Duration::from_secs(positive(probe.period_seconds, DEFAULT_PERIOD_SECONDS)),
            timeout: probe_timeout(probe),
            success_threshold,
            failure_threshold: threshold(probe.failure_threshold, DEFAULT_FAILURE_THRESHOLD),
        }
    }
}

/// The state of one probe of one container: when it is due, and its verdict.
#[derive(Clone, Debug)]
pub struct ProbeState {
    kind: ProbeKind,
    timing: ProbeTiming,
    started_at: Option<Instant>,
    last_run: Option<Instant>,
    last_success: Option<bool>,
    run_length: u32,
    verdict: Verdict,
    on_hold: bool,
}

impl ProbeState {
    /// A state for `probe` used as a `kind` probe; nothing is due until
    /// [`container_started`](Self::container_started).
    pub fn new(kind: ProbeKind, probe: &Probe) -> Self {
        Self::with_timing(kind, ProbeTiming::from_probe(kind, probe))
    }

    /// A state with explicit timing.
    pub fn with_timing(kind: ProbeKind, timing: ProbeTiming) -> Self {
        Self {
            kind,
            timing,
            started_at: None,
            last_run: None,
            last_success: None,
            run_length: 0,
            verdict: kind.initial_verdict(),
            on_hold: false,
        }
    }

    /// Which probe this is.
    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The timing in use.
    pub fn timing(&self) -> &ProbeTiming {
        &self.timing
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// A (new) container started at `at`: counters and verdict start over, and the first
    /// attempt is due after `initialDelaySeconds`.
    pub fn container_started(&mut self, at: Instant) {
        *self = Self::with_timing(self.kind, self.timing);
        self.started_at = Some(at);
    }

    /// The container is not running: nothing is due; readiness becomes Failure, the others go
    /// back to their initial verdict.
    pub fn container_stopped(&mut self) {
        *self = Self::with_timing(self.kind, self.timing);
    }

    /// When the next attempt is due, or `None` when none is (no running container, a liveness or
    /// startup probe that failed and waits for the restart, a startup probe that succeeded).
    pub fn next_due(&self) -> Option<Instant> {
        let started = self.started_at?;
        if self.on_hold || (self.kind == ProbeKind::Startup && self.verdict == Verdict::Success) {
            return None;
        }
        let first = started.checked_add(self.timing.initial_delay)?;
        match self.last_run {
            None => Some(first),
            Some(last) => Some(last.checked_add(self.timing.period)?.max(first)),
        }
    }

    /// Whether an attempt is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|due| now >= due)
    }

    /// Records the outcome of an attempt made at `now` and returns the verdict: it changes only
    /// after `successThreshold` successes or `failureThreshold` failures in a row. After a
    /// liveness or startup Failure nothing is due until the container starts again.
    pub fn record(&mut self, now: Instant, outcome: &ProbeOutcome) -> Verdict {
        self.last_run = Some(now);
        if self.on_hold || self.started_at.is_none() {
            return self.verdict;
        }
        let success = *outcome == ProbeOutcome::Success;
        if self.last_success == Some(success) {
            self.run_length = self.run_length.saturating_add(1);
        } else {
            self.last_success = Some(success);
            self.run_length = 1;
        }
        let threshold = if success {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        if self.run_length < threshold {
            return self.verdict;
        }
        if success {
            self.verdict = Verdict::Success;
        } else {
            self.verdict = Verdict::Failure;
            if self.kind != ProbeKind::Readiness {
                self.on_hold = true;
                self.run_length = 0;
            }
        }
        self.verdict
    }

    /// Records an attempt at `now` that could not be run ([`run_probe`] returned `Err`): the
    /// next attempt is a period later and the verdict does not change.
    pub fn record_error(&mut self, now: Instant) -> Verdict {
        self.last_run = Some(now);
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, GRPCAction, HTTPHeader};
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;

    const GUARD: Duration = Duration::from_secs(20);

    fn container(ports: &[(&str, u16)]) -> Container {
        Container {
            name: "app".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ContainerPort {
                        name: Some((*n).into()),
                        container_port: i32::from(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn no_exec() -> impl ProbeExec {
        |_: Vec<String>, _: Duration| async { Err(Error::Probe("no exec here".into())) }
    }

    /// A loopback HTTP server that answers every connection with `status` (or never, when
    /// `status` is `None`) and keeps the requests it read.
    async fn server(status: Option<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&got).into_owned());
                    match status {
                        Some(code) => {
                            let answer =
                                format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok");
                            let _ = s.write_all(answer.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(3600)).await,
                    }
                });
            }
        });
        (port, seen)
    }

    fn http_probe(port: IntOrString, path: &str) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: Some(path.into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-Probe".into(),
                    value: "yes".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn run(probe: &Probe, c: &Container) -> Result<ProbeOutcome> {
        let target = ProbeTarget {
            pod_ip: "127.0.0.1",
            container: c,
        };
        tokio::time::timeout(GUARD, run_probe(probe, &target, &no_exec()))
            .await
            .expect("hang guard")
    }

    #[tokio::test]
    async fn http_200_is_success_and_the_request_is_well_formed() {
        let (port, seen) = server(Some(200)).await;
        let c = container(&[("web", port)]);
        let probe = http_probe(IntOrString::String("web".into()), "healthz?x=1");
        assert_eq!(run(&probe, &c).await.unwrap(), ProbeOutcome::Success);
        let req = seen.lock().unwrap()[0].clone();
        assert!(req.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("Host: 127.0.0.1:{port}\r\n")));
        assert!(req.contains("User-Agent: kube-probe/1.32\r\n"));
        assert!(req.contains("X-Probe: yes\r\n"));
    }

    #[tokio::test]
    async fn http_302_is_success_and_500_is_failure() {
        let (port, _) = server(Some(302)).await;
        let probe = http_probe(IntOrString::Int(i32::from(port)), "/");
        assert_eq!(
            run(&probe, &container(&[])).await.unwrap(),
            ProbeOutcome::Success
        );

        let (port, _) = server(Some(500)).await;
        let probe = http_probe(IntOrString::Int(i32::from(port)), "/");
        assert_eq!(
            run(&probe, &container(&[])).await.unwrap(),
            ProbeOutcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
    }

    #[tokio::test]
    async fn http_target_that_never_answers_fails_at_the_timeout() {
        let (port, _) = server(None).await;
        let probe = http_probe(IntOrString::Int(i32::from(port)), "/");
        match run(&probe, &container(&[])).await.unwrap() {
            ProbeOutcome::Failure(m) => assert!(m.contains("deadline exceeded"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn http_garbage_and_endless_lines_fail_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let line = vec![b'x'; 64 * 1024];
                    let _ = s.write_all(&line).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                });
            }
        });
        let mut probe = http_probe(IntOrString::Int(i32::from(port)), "/");
        probe.timeout_seconds = Some(5);
        match run(&probe, &container(&[])).await.unwrap() {
            ProbeOutcome::Failure(m) => assert!(m.contains("malformed"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn closed_port_fails_for_http_and_tcp() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let probe = http_probe(IntOrString::Int(i32::from(port)), "/");
        assert!(matches!(
            run(&probe, &container(&[])).await.unwrap(),
            ProbeOutcome::Failure(_)
        ));
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                host: None,
            }),
            ..Default::default()
        };
        match run(&probe, &container(&[])).await.unwrap() {
            ProbeOutcome::Failure(m) => assert!(m.starts_with("dial tcp 127.0.0.1:"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn tcp_open_port_is_success() {
        let (port, _) = server(None).await;
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("svc".into()),
                host: Some("127.0.0.1".into()),
            }),
            ..Default::default()
        };
        let c = container(&[("svc", port)]);
        assert_eq!(run(&probe, &c).await.unwrap(), ProbeOutcome::Success);
    }

    #[tokio::test]
    async fn probes_that_cannot_run_are_errors() {
        let c = container(&[]);
        let mut https = http_probe(IntOrString::Int(443), "/");
        https.http_get.as_mut().unwrap().scheme = Some("HTTPS".into());
        let err = run(&https, &c).await.unwrap_err();
        assert!(err.to_string().contains("HTTPS"), "{err}");

        let named = http_probe(IntOrString::String("nope".into()), "/");
        assert!(matches!(run(&named, &c).await, Err(Error::Probe(_))));
        let zero = http_probe(IntOrString::Int(0), "/");
        assert!(matches!(run(&zero, &c).await, Err(Error::Probe(_))));
        let big = http_probe(IntOrString::Int(70000), "/");
        assert!(matches!(run(&big, &c).await, Err(Error::Probe(_))));

        let mut smuggle = http_probe(IntOrString::Int(80), "/");
        smuggle.http_get.as_mut().unwrap().http_headers = Some(vec![HTTPHeader {
            name: "X".into(),
            value: "a\r\nEvil: 1".into(),
        }]);
        assert!(matches!(run(&smuggle, &c).await, Err(Error::Probe(_))));
        let bad_path = http_probe(IntOrString::Int(80), "/a b\r\n");
        assert!(matches!(run(&bad_path, &c).await, Err(Error::Probe(_))));

        let grpc = Probe {
            grpc: Some(GRPCAction {
                port: 9000,
                service: None,
            }),
            ..Default::default()
        };
        assert!(matches!(run(&grpc, &c).await, Err(Error::Probe(_))));
        assert!(matches!(
            run(&Probe::default(), &c).await,
            Err(Error::Probe(_))
        ));

        let no_ip = ProbeTarget {
            pod_ip: "",
            container: &c,
        };
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                host: None,
            }),
            ..Default::default()
        };
        assert!(run_probe(&tcp, &no_ip, &no_exec()).await.is_err());
    }

    #[tokio::test]
    async fn exec_exit_codes_timeouts_and_errors() {
        let c = container(&[]);
        let target = ProbeTarget {
            pod_ip: "",
            container: &c,
        };
        let probe = |cmd: &[&str]| Probe {
            exec: Some(ExecAction {
                command: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
            }),
            ..Default::default()
        };
        let fake = |cmd: Vec<String>, _timeout: Duration| async move {
            match cmd[0].as_str() {
                "ok" => Ok(ExecResult {
                    exit_code: 0,
                    stdout: vec![],
                    stderr: vec![],
                }),
                "fail" => Ok(ExecResult {
                    exit_code: 2,
                    stdout: b"out ".to_vec(),
                    stderr: b"broken\n".to_vec(),
                }),
                "hang" => std::future::pending().await,
                _ => Err(Error::Runtime {
                    op: "ExecSync",
                    message: "container not running".into(),
                }),
            }
        };
        let go = |p: Probe| async move {
            tokio::time::timeout(GUARD, run_probe(&p, &target, &fake))
                .await
                .expect("hang guard")
        };
        assert_eq!(go(probe(&["ok"])).await.unwrap(), ProbeOutcome::Success);
        match go(probe(&["fail"])).await.unwrap() {
            ProbeOutcome::Failure(m) => assert!(m.contains("exited with 2: out broken"), "{m}"),
            other => panic!("{other:?}"),
        }
        match go(probe(&["hang"])).await.unwrap() {
            ProbeOutcome::Failure(m) => assert!(m.contains("timed out"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            go(probe(&["gone"])).await,
            Err(Error::Runtime { .. })
        ));
        assert!(matches!(go(probe(&[])).await, Err(Error::Probe(_))));
    }

    fn timing(delay: u64, period: u64, success: u32, failure: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay: Duration::from_secs(delay),
            period: Duration::from_secs(period),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn fail() -> ProbeOutcome {
        ProbeOutcome::Failure("x".into())
    }

    #[test]
    fn defaults_from_the_probe() {
        let t = ProbeTiming::from_probe(ProbeKind::Liveness, &Probe::default());
        assert_eq!(t, timing(0, 10, 1, 3));
        let p = Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(0),
            timeout_seconds: Some(-3),
            success_threshold: Some(4),
            failure_threshold: Some(2),
            ..Default::default()
        };
        assert_eq!(
            ProbeTiming::from_probe(ProbeKind::Readiness, &p),
            timing(5, 10, 4, 2)
        );
        assert_eq!(
            ProbeTiming::from_probe(ProbeKind::Startup, &p).success_threshold,
            1
        );
    }

    #[test]
    fn schedule_follows_initial_delay_and_period() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut st = ProbeState::with_timing(ProbeKind::Readiness, timing(5, 10, 1, 3));
        assert_eq!(st.next_due(), None);
        assert!(!st.is_due(s(100)));
        st.container_started(t0);
        assert_eq!(st.verdict(), Verdict::Failure);
        assert!(!st.is_due(s(4)));
        assert!(st.is_due(s(5)));
        st.record(s(6), &ProbeOutcome::Success);
        assert_eq!(st.next_due(), Some(s(16)));
        st.record_error(s(16));
        assert_eq!(st.next_due(), Some(s(26)));
        st.container_stopped();
        assert_eq!(st.next_due(), None);
        assert_eq!(st.verdict(), Verdict::Failure);
    }

    #[test]
    fn readiness_thresholds_flip_both_ways_and_keep_probing() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut st = ProbeState::with_timing(ProbeKind::Readiness, timing(0, 1, 2, 3));
        st.container_started(t0);
        assert_eq!(st.record(s(1), &ProbeOutcome::Success), Verdict::Failure);
        assert_eq!(st.record(s(2), &ProbeOutcome::Success), Verdict::Success);
        assert_eq!(st.record(s(3), &fail()), Verdict::Success);
        assert_eq!(st.record(s(4), &fail()), Verdict::Success);
        assert_eq!(st.record(s(5), &ProbeOutcome::Success), Verdict::Success);
        assert_eq!(st.record(s(6), &fail()), Verdict::Success);
        assert_eq!(st.record(s(7), &fail()), Verdict::Success);
        assert_eq!(st.record(s(8), &fail()), Verdict::Failure);
        assert!(st.next_due().is_some());
        assert_eq!(st.record(s(9), &ProbeOutcome::Success), Verdict::Failure);
        assert_eq!(st.record(s(10), &ProbeOutcome::Success), Verdict::Success);
    }

    #[test]
    fn liveness_failure_holds_until_restart() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut st = ProbeState::with_timing(ProbeKind::Liveness, timing(0, 10, 1, 3));
        st.container_started(t0);
        assert_eq!(st.verdict(), Verdict::Success);
        assert_eq!(st.record(s(0), &fail()), Verdict::Success);
        assert_eq!(st.record(s(10), &fail()), Verdict::Success);
        assert_eq!(st.record(s(20), &fail()), Verdict::Failure);
        assert_eq!(st.next_due(), None);
        assert_eq!(st.record(s(30), &ProbeOutcome::Success), Verdict::Failure);
        st.container_started(s(40));
        assert_eq!(st.verdict(), Verdict::Success);
        assert_eq!(st.next_due(), Some(s(40)));
    }

    #[test]
    fn startup_stops_after_success() {
        let t0 = Instant::now();
        let mut st = ProbeState::with_timing(ProbeKind::Startup, timing(0, 10, 1, 30));
        assert_eq!(st.verdict(), Verdict::Unknown);
        st.container_started(t0);
        assert_eq!(st.record(t0, &fail()), Verdict::Unknown);
        assert_eq!(st.record(t0, &ProbeOutcome::Success), Verdict::Success);
        assert_eq!(st.next_due(), None);
    }
}
