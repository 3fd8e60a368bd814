//! Liveness, readiness and startup probes: exec, HTTP GET and TCP checks with Kubernetes'
//! timing fields. [`ProbeState`] decides when a probe is due and what the results add up to; it
//! never sleeps, so the pod worker drives it with its own clock.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::runtime::PodRuntime;
use crate::{Error, Result};

/// Longest HTTP response head read from a probed server.
const MAX_HTTP_HEAD: usize = 10 * 1024;

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// Restart the container when it fails.
    Liveness,
    /// Take the pod out of service while it fails.
    Readiness,
    /// Hold the other probes until it succeeds; restart when it fails.
    Startup,
}

/// What the results so far add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `successThreshold` successes in a row (or the initial state of liveness).
    Success,
    /// `failureThreshold` failures in a row.
    Failure,
    /// Not yet decided.
    Unknown,
}

/// One probe's schedule and consecutive results.
#[derive(Clone, Debug)]
pub struct ProbeState {
    probe: Probe,
    next: Instant,
    period: Duration,
    successes: u32,
    failures: u32,
    success_threshold: u32,
    failure_threshold: u32,
    verdict: Verdict,
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default).max(0)).unwrap_or(0))
}

fn count(value: Option<i32>, default: i32) -> u32 {
    u32::try_from(value.unwrap_or(default).max(1)).unwrap_or(1)
}

impl ProbeState {
    /// A probe for a container started at `started`: first due after `initialDelaySeconds`.
    /// Liveness starts as Success (a container is alive until shown otherwise), readiness and
    /// startup as Unknown.
    pub fn new(probe: &Probe, kind: ProbeKind, started: Instant) -> Self {
        Self {
            probe: probe.clone(),
            next: started + seconds(probe.initial_delay_seconds, 0),
            period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
            successes: 0,
            failures: 0,
            // Liveness and startup must have successThreshold 1 in Kubernetes.
            success_threshold: if kind == ProbeKind::Readiness {
                count(probe.success_threshold, 1)
            } else {
                1
            },
            failure_threshold: count(probe.failure_threshold, 3),
            verdict: if kind == ProbeKind::Liveness {
                Verdict::Success
            } else {
                Verdict::Unknown
            },
        }
    }

    /// The probe's definition.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Whether the probe should run at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records one result (`Ok(())` success, `Err` failure, with why) taken at `now`.
    pub fn record(&mut self, result: Result<()>, now: Instant) {
        self.next = now + self.period;
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.success_threshold {
                    self.verdict = Verdict::Success;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "probe failed");
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.failure_threshold {
                    self.verdict = Verdict::Failure;
                }
            }
        }
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }
}

/// What a probe runs against.
pub struct Target<'a, R> {
    /// The runtime, for exec probes.
    pub runtime: &'a R,
    /// The container's runtime id.
    pub container_id: &'a str,
    /// The pod's IP (HTTP and TCP probes' default host).
    pub pod_ip: &'a str,
    /// The container's spec (named ports).
    pub container: &'a Container,
}

/// Runs `probe` once against `target`, within its `timeoutSeconds` (default 1): `Ok` when it
/// succeeded, an error saying why not. A target that hangs ends at the timeout.
pub async fn run<R: PodRuntime>(probe: &Probe, target: &Target<'_, R>) -> Result<()> {
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let check = async {
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            if command.is_empty() {
                return Err(Error::Probe("exec probe without a command".into()));
            }
            let out = target
                .runtime
                .exec_sync(target.container_id, &command, timeout)
                .await?;
            if out.exit_code == 0 {
                Ok(())
            } else {
                Err(Error::Probe(format!(
                    "command exited with {}",
                    out.exit_code
                )))
            }
        } else if let Some(http) = &probe.http_get {
            let host = http
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| target.pod_ip.to_owned());
            let port = resolve_port(&http.port, target.container)?;
            if http
                .scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
            {
                return Err(Error::Probe(
                    "only HTTP probes are supported (not HTTPS)".into(),
                ));
            }
            let path = http
                .path
                .clone()
                .filter(|p| p.starts_with('/'))
                .unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            http_get(&host, port, &path, &headers).await
        } else if let Some(tcp) = &probe.tcp_socket {
            let host = tcp
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| target.pod_ip.to_owned());
            let port = resolve_port(&tcp.port, target.container)?;
            TcpStream::connect((host.as_str(), port))
                .await
                .map(|_| ())
                .map_err(|e| Error::Probe(format!("connect {host}:{port}: {e}")))
        } else {
            Err(Error::Probe(
                "probe without exec, httpGet or tcpSocket".into(),
            ))
        }
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(Error::Probe(format!(
            "timed out after {}s",
            timeout.as_secs()
        ))),
    }
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| Error::Probe(format!("no container port named {name:?}")))?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::Probe(format!("port {number} is out of range")))
}

/// A plain HTTP/1.1 GET; success is a status from 200 to 399. Only the response head is read
/// (bounded).
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<()> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| Error::Probe(format!("connect {host}:{port}: {e}")))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
            return Err(Error::Probe(format!(
                "header {name:?} is not a valid HTTP header"
            )));
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| Error::Probe(e.to_string()))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| Error::Probe(e.to_string()))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HTTP_HEAD {
            return Err(Error::Probe("response head too long".into()));
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Probe("not an HTTP response".into()))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(Error::Probe(format!(
            "HTTP probe failed with statuscode: {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn probe(json: serde_json::Value) -> Probe {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn thresholds_and_delays_decide_the_verdict() {
        let t0 = Instant::now();
        let p = probe(
            serde_json::json!({"initialDelaySeconds": 5, "periodSeconds": 2, "failureThreshold": 2}),
        );
        let mut s = ProbeState::new(&p, ProbeKind::Liveness, t0);
        assert!(!s.due(t0 + Duration::from_secs(4)));
        assert!(s.due(t0 + Duration::from_secs(5)));
        assert_eq!(s.verdict(), Verdict::Success);
        s.record(Err(Error::Probe("x".into())), t0 + Duration::from_secs(5));
        assert_eq!(
            s.verdict(),
            Verdict::Success,
            "one failure is under the threshold"
        );
        assert!(!s.due(t0 + Duration::from_secs(6)));
        s.record(Err(Error::Probe("x".into())), t0 + Duration::from_secs(7));
        assert_eq!(s.verdict(), Verdict::Failure);
        let mut r = ProbeState::new(
            &probe(serde_json::json!({"successThreshold": 2})),
            ProbeKind::Readiness,
            t0,
        );
        assert_eq!(r.verdict(), Verdict::Unknown);
        r.record(Ok(()), t0);
        assert_eq!(r.verdict(), Verdict::Unknown);
        r.record(Ok(()), t0);
        assert_eq!(r.verdict(), Verdict::Success);
    }

    async fn server(reply: Option<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    match reply {
                        Some(r) => {
                            let _ = s.write_all(r.as_bytes()).await;
                        }
                        // Accepts and never answers.
                        None => tokio::time::sleep(Duration::from_secs(60)).await,
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_real_sockets() {
        let ok = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")).await;
        let redirect = server(Some("HTTP/1.0 302 Found\r\n\r\n")).await;
        let bad = server(Some("HTTP/1.1 500 Internal Server Error\r\n\r\n")).await;
        let garbage = server(Some("SSH-2.0-OpenSSH\r\n")).await;
        let mute = server(None).await;
        assert!(http_get("127.0.0.1", ok, "/healthz", &[]).await.is_ok());
        assert!(http_get("127.0.0.1", redirect, "/", &[]).await.is_ok());
        assert!(
            http_get("127.0.0.1", bad, "/", &[])
                .await
                .unwrap_err()
                .to_string()
                .contains("500")
        );
        assert!(http_get("127.0.0.1", garbage, "/", &[]).await.is_err());
        let injected = [("X".to_owned(), "a\r\nHost: evil".to_owned())];
        assert!(http_get("127.0.0.1", ok, "/", &injected).await.is_err());
        // A server that never answers ends at the probe's timeout.
        let hang = tokio::time::timeout(
            Duration::from_secs(1),
            http_get("127.0.0.1", mute, "/", &[]),
        )
        .await;
        assert!(hang.is_err(), "the mute server answered?");
        // A closed port.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(TcpStream::connect(("127.0.0.1", closed)).await.is_err());
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}),
        )
        .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c).unwrap(),
            8080
        );
        assert_eq!(resolve_port(&IntOrString::Int(81), &c).unwrap(), 81);
        assert!(resolve_port(&IntOrString::String("nope".into()), &c).is_err());
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }
}
