//! Metrics in the OpenMetrics text format (prometheus-client), served with `/healthz` over
//! HTTP/1.1 (hyper).
//!
//! The parts keep their own counters (atomics in [`kubeedge_cloud::CloudMetrics`], the hub's
//! and the broker's stats); a [`Readings`] collector reads them at each scrape, so nothing is
//! counted twice and a scrape costs only the encoding.
//!
//! ```
//! use kubeedge::metrics::{Reading, registry_of, render};
//!
//! let registry = registry_of(|| vec![Reading::counter("gadgets_made", "Gadgets made.", 3)]);
//! assert!(render(&registry).contains("gadgets_made_total 3\n"));
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The most metrics connections served at once (more wait in the listen backlog).
pub const MAX_METRICS_CONNECTIONS: usize = 64;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a reading only grows or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadingKind {
    /// Only grows; rendered with the `_total` suffix.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One value read at scrape time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The metric's name (a counter's without `_total`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: ReadingKind,
    /// The value now.
    pub value: u64,
}

impl Reading {
    /// A counter reading (`name` without `_total`).
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: ReadingKind::Counter,
            value,
        }
    }

    /// A gauge reading.
    pub fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            help,
            kind: ReadingKind::Gauge,
            value,
        }
    }
}

/// A collector that renders what its closure reads at each scrape.
pub struct Readings<F>(F);

impl<F> Readings<F>
where
    F: Fn() -> Vec<Reading> + Send + Sync + 'static,
{
    /// A collector over `read`.
    pub fn new(read: F) -> Self {
        Self(read)
    }
}

impl<F> std::fmt::Debug for Readings<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readings").finish_non_exhaustive()
    }
}

impl<F> Collector for Readings<F>
where
    F: Fn() -> Vec<Reading> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for reading in (self.0)() {
            match reading.kind {
                ReadingKind::Counter => {
                    encode_one(&mut encoder, &reading, ConstCounter::new(reading.value))?
                }
                ReadingKind::Gauge => {
                    encode_one(&mut encoder, &reading, ConstGauge::new(reading.value))?
                }
            }
        }
        Ok(())
    }
}

/// Encodes `metric` under `reading`'s name and help.
fn encode_one(
    encoder: &mut DescriptorEncoder,
    reading: &Reading,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    let metric_encoder =
        encoder.encode_descriptor(reading.name, reading.help, None, metric.metric_type())?;
    metric.encode(metric_encoder)
}

/// A registry with one collector: what `read` returns at each scrape.
pub fn registry_of(read: impl Fn() -> Vec<Reading> + Send + Sync + 'static) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Readings::new(read)));
    registry
}

/// The process's own figures: `process_resident_memory_bytes` (from `/proc/self/status`).
pub fn process_readings() -> Vec<Reading> {
    vec![Reading::gauge(
        "process_resident_memory_bytes",
        "Resident set size.",
        resident_kib() * 1024,
    )]
}

/// The resident set size of this process in KiB (`VmRSS`); 0 where `/proc` is not readable.
pub fn resident_kib() -> u64 {
    status_kib("VmRSS")
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `RssAnon`, `VmHWM`, ...) in KiB; 0 where it
/// is not readable.
pub fn status_kib(field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `registry` in the OpenMetrics text format (ends with `# EOF`).
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; a collector's error would leave a partial scrape,
    // which Prometheus rejects as a whole.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "metrics not rendered");
    }
    text
}

/// A bound metrics endpoint; [`serve`](Self::serve) answers on it.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl MetricsServer {
    /// Binds `addr` for `registry`.
    pub async fn bind(addr: SocketAddr, registry: Arc<Registry>) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                what: "metrics",
                addr,
                source,
            })?;
        Ok(Self { listener, registry })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `GET /metrics` and `GET /healthz` (`ok`) until `shutdown`; anything else is a
    /// 404. Each connection answers one request and closes; its headers must arrive within
    /// 5 s and fit in 8 KiB, and at most [`MAX_METRICS_CONNECTIONS`] are served at once.
    pub async fn serve(self, shutdown: CancellationToken) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let registry = Arc::clone(&self.registry);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let registry = Arc::clone(&registry);
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .max_buf_size(8 * 1024)
                    .keep_alive(false);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, CONTENT_TYPE_OPENMETRICS, render(registry)),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
