//! EdgeHub: the edge's connection to the CloudHub, kept up with reconnects.

use std::sync::Arc;
use std::time::Duration;

use kubeedge_proto::extensions::{EXTENSIONS_HEADER, Extensions};
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message, NodeName};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::backoff::{Backoff, jitter_seed};
use crate::link::{LinkEnd, LinkOptions, RateLimit, encode, run_link, ws_config};
use crate::{Error, Result};

/// KubeEdge's default project id.
pub const DEFAULT_PROJECT_ID: &str = "e632aba927ea4ac2b575ec1603d56f10";

/// Settings for an [`EdgeHub`].
#[derive(Clone, Debug)]
pub struct EdgeHubConfig {
    /// The CloudHub's `host:port` (KubeEdge: `edgeHub.websocket.server`).
    pub server: String,
    /// The name the cloud's certificate must carry (an IP address or a DNS name).
    pub server_name: ServerName<'static>,
    /// TLS: the cluster CA and this node's certificate (see [`crate::tls::client_config`]).
    pub tls: Arc<rustls::ClientConfig>,
    /// This node's name (`node_id`).
    pub node_id: NodeName,
    /// `project_id`.
    pub project_id: String,
    /// How often a keepalive is sent (KubeEdge: 15 s).
    pub heartbeat: Duration,
    /// A connection attempt must finish within this time (KubeEdge: 30 s).
    pub handshake_timeout: Duration,
    /// The first wait before reconnecting; it doubles with every failed attempt and every
    /// session that ended before `stable_after`, up to `max_backoff`. Each wait is drawn from
    /// `[ceiling/2, ceiling]` (jitter).
    pub min_backoff: Duration,
    /// The longest wait before reconnecting.
    pub max_backoff: Duration,
    /// A session must stay up this long to reset the backoff to `min_backoff` (default 30 s,
    /// twice the heartbeat: KubeEdge's reconnect wait). A session that ends sooner — taken
    /// over by another connection of the node, refused, closed by the cloud — counts as a
    /// failure, so two processes sharing one identity back off instead of flapping.
    pub stable_after: Duration,
    /// The largest message accepted.
    pub max_message_len: usize,
    /// Upstream rate limit (KubeEdge: 30 messages/s, bursts of 60); `None` for none.
    pub rate_limit: Option<RateLimit>,
    /// Messages queued for the cloud before senders wait.
    pub queue_len: usize,
    /// Events queued for the application before the hub waits for it.
    pub events_len: usize,
}

impl EdgeHubConfig {
    /// KubeEdge's defaults for `node_id` connecting to `server`.
    pub fn new(
        server: impl Into<String>,
        server_name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        node_id: NodeName,
    ) -> Self {
        Self {
            server: server.into(),
            server_name,
            tls,
            node_id,
            project_id: DEFAULT_PROJECT_ID.to_owned(),
            heartbeat: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            rate_limit: Some(RateLimit {
                per_second: 30.0,
                burst: 60,
            }),
            queue_len: 1024,
            events_len: 1024,
        }
    }
}

/// What happens on the edge side.
// Moved through a channel one at a time; boxing the message would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum EdgeEvent {
    /// The link to the cloud is up.
    Connected {
        /// What the cloud said it understands beyond KubeEdge's protocol (nothing for a
        /// KubeEdge cloudcore).
        extensions: Extensions,
    },
    /// The link went down (a reconnect follows unless the hub is shutting down).
    Disconnected {
        /// Why.
        reason: LinkEnd,
    },
    /// A message from the cloud.
    Message(Message),
}

/// Sends to the cloud; cheap to clone.
#[derive(Clone, Debug)]
pub struct EdgeHubHandle {
    queue: mpsc::Sender<Utf8Bytes>,
}

impl EdgeHubHandle {
    /// Queues `message` for the cloud, waiting while the queue is full (backpressure). Queued
    /// messages wait through disconnects; the durable path is the outbox journal.
    pub async fn send(&self, message: Message) -> Result<()> {
        self.queue
            .send(encode(&message)?)
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Queues `message` without waiting; gives it back when the queue is full or the hub has
    /// stopped.
    // Giving the message back (not boxed) is the point: the caller keeps it without a copy.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, message: Message) -> Result<(), Message> {
        match encode(&message).map(|text| self.queue.try_send(text)) {
            Ok(Ok(())) => Ok(()),
            _ => Err(message),
        }
    }
}

/// Sending to the cloud as a `tower::Service<Message>`: `poll_ready` waits for room in the
/// link queue, `call` queues the message.
pub struct ToCloud {
    queue: tokio_util::sync::PollSender<Utf8Bytes>,
}

impl std::fmt::Debug for ToCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToCloud").finish_non_exhaustive()
    }
}

impl tower::Service<Message> for ToCloud {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<()>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<()>> {
        self.queue.poll_reserve(cx).map_err(|_| Error::Stopped)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let sent = encode(&message)
            .and_then(|text| self.queue.send_item(text).map_err(|_| Error::Stopped));
        std::future::ready(sent)
    }
}

impl EdgeHubHandle {
    /// A `tower::Service` sending to the cloud, with `poll_ready` backpressure.
    pub fn to_cloud(&self) -> ToCloud {
        ToCloud {
            queue: tokio_util::sync::PollSender::new(self.queue.clone()),
        }
    }
}

/// The EdgeHub client: dials the CloudHub with KubeEdge's handshake, sends keepalives every
/// `heartbeat`, and reconnects with exponential backoff and jitter when the link drops. The
/// backoff resets only after a session stayed up for
/// [`stable_after`](EdgeHubConfig::stable_after); a cloud's refusal (HTTP 403 or 429 on the
/// upgrade) is logged at WARN with its reason once, until the reason changes or a session
/// stays up.
pub struct EdgeHub {
    config: EdgeHubConfig,
    to_cloud: mpsc::Receiver<Utf8Bytes>,
    events: mpsc::Sender<EdgeEvent>,
}

impl std::fmt::Debug for EdgeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeHub")
            .field("server", &self.config.server)
            .finish_non_exhaustive()
    }
}

impl EdgeHub {
    /// The hub (to [`run`](Self::run)), a handle for sending, and the stream of [`EdgeEvent`]s.
    pub fn new(config: EdgeHubConfig) -> (Self, EdgeHubHandle, mpsc::Receiver<EdgeEvent>) {
        let (queue, to_cloud) = mpsc::channel(config.queue_len.max(1));
        let (events, rx) = mpsc::channel(config.events_len.max(1));
        (
            Self {
                config,
                to_cloud,
                events,
            },
            EdgeHubHandle { queue },
            rx,
        )
    }

    /// Connects and reconnects until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let c = &self.config;
        let mut backoff = Backoff::new(
            c.min_backoff,
            c.max_backoff,
            c.stable_after,
            jitter_seed(&c.node_id),
        );
        // The last refusal logged at WARN: the same one again is logged at debug only.
        let mut refusal_logged: Option<(u16, String)> = None;
        while !shutdown.is_cancelled() {
            let connected = tokio::select! {
                () = shutdown.cancelled() => break,
                result = tokio::time::timeout(self.config.handshake_timeout, self.connect()) => {
                    result.map_err(|_| Error::HandshakeTimeout).and_then(|r| r)
                }
            };
            let (ws, extensions) = match connected {
                Ok(connected) => connected,
                Err(e) => {
                    let wait = backoff.failed();
                    let server = &self.config.server;
                    match &e {
                        Error::Refused { status, reason }
                            if refusal_logged.as_ref() != Some(&(*status, reason.clone())) =>
                        {
                            tracing::warn!(%server, status, %reason, retry_in = ?wait, "the cloud refuses this node's connection");
                            refusal_logged = Some((*status, reason.clone()));
                        }
                        Error::Refused { .. } => {
                            tracing::debug!(%server, error = %e, retry_in = ?wait, "the cloud refuses this node's connection");
                        }
                        _ => {
                            tracing::info!(%server, error = %e, retry_in = ?wait, "cannot reach the cloud");
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            if self
                .events
                .send(EdgeEvent::Connected { extensions })
                .await
                .is_err()
            {
                break;
            }
            let started = Instant::now();
            let options = LinkOptions {
                max_len: self.config.max_message_len,
                read_deadline: None,
                keepalive_every: Some(self.config.heartbeat),
                rate_limit: self.config.rate_limit,
            };
            let end = run_link(
                ws,
                &mut self.to_cloud,
                &self.events,
                EdgeEvent::Message,
                &options,
                &shutdown,
            )
            .await;
            let lasted = started.elapsed();
            if lasted >= self.config.stable_after {
                refusal_logged = None;
            }
            let wait = backoff.session_ended(lasted);
            tracing::info!(reason = %end, lasted = ?lasted, reconnect_in = ?wait, "cloud link ended");
            let gone = end == LinkEnd::AppGone;
            if self
                .events
                .send(EdgeEvent::Disconnected { reason: end })
                .await
                .is_err()
                || gone
            {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        Ok(())
    }

    async fn connect(
        &self,
    ) -> Result<(
        Box<tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>,
        Extensions,
    )> {
        let c = &self.config;
        let tcp = TcpStream::connect(&c.server).await?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(Arc::clone(&c.tls))
            .connect(c.server_name.clone(), tcp)
            .await
            .map_err(|e| Error::Handshake(format!("TLS: {e}")))?;
        let url = format!("wss://{}/{}/{}/events", c.server, c.project_id, c.node_id);
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        // KubeEdge's headers (Go canonicalises them as Connectionuse, Node_id, Project_id).
        headers.insert("ConnectionUse", HeaderValue::from_static("msg"));
        headers.insert("Node_id", header_value(&c.node_id)?);
        headers.insert("Project_id", header_value(&c.project_id)?);
        let (ws, response) = tokio_tungstenite::client_async_with_config(
            request,
            tls,
            Some(ws_config(c.max_message_len)),
        )
        .await
        .map_err(upgrade_error)?;
        let extensions = response
            .headers()
            .get(EXTENSIONS_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(Extensions::none, Extensions::parse);
        Ok((Box::new(ws), extensions))
    }
}

fn header_value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s).map_err(|e| Error::Handshake(format!("header value {s:?}: {e}")))
}

/// The most of a refusal's body kept for the error and the log.
const MAX_REFUSAL_REASON: usize = 256;

/// A refused upgrade (an HTTP status instead of 101) as [`Error::Refused`] with the start of
/// the body; anything else as a handshake error.
fn upgrade_error(e: tokio_tungstenite::tungstenite::Error) -> Error {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            let body = &body[..body.len().min(MAX_REFUSAL_REASON)];
            let reason: String = String::from_utf8_lossy(body)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Error::Refused {
                status: response.status().as_u16(),
                reason: reason.trim().to_owned(),
            }
        }
        e => Error::Handshake(format!("WebSocket upgrade: {e}")),
    }
}
