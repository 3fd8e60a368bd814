//! EdgeHub: the edge's connection to the CloudHub, kept up with reconnects.

use std::sync::Arc;
use std::time::Duration;

use kubeedge_proto::extensions::{EXTENSIONS_HEADER, Extensions};
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use tokio_tungstenite::tungstenite::Utf8Bytes;

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
    pub node_id: String,
    /// `project_id`.
    pub project_id: String,
    /// How often a keepalive is sent (KubeEdge: 15 s).
    pub heartbeat: Duration,
    /// A connection attempt must finish within this time (KubeEdge: 30 s).
    pub handshake_timeout: Duration,
    /// The first wait before reconnecting; it doubles up to `max_backoff`, with jitter.
    pub min_backoff: Duration,
    /// The longest wait before reconnecting.
    pub max_backoff: Duration,
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
        node_id: impl Into<String>,
    ) -> Self {
        Self {
            server: server.into(),
            server_name,
            tls,
            node_id: node_id.into(),
            project_id: DEFAULT_PROJECT_ID.to_owned(),
            heartbeat: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
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
/// `heartbeat`, and reconnects with exponential backoff and jitter when the link drops.
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
        let mut backoff = self.config.min_backoff;
        let mut seed = jitter_seed(&self.config.node_id);
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
                    tracing::info!(server = %self.config.server, error = %e, "cannot reach the cloud");
                    seed = xorshift(seed);
                    // Full jitter in [backoff/2, backoff).
                    let wait = backoff / 2 + backoff.mul_f64((seed % 1000) as f64 / 2000.0);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    continue;
                }
            };
            backoff = self.config.min_backoff;
            if self
                .events
                .send(EdgeEvent::Connected { extensions })
                .await
                .is_err()
            {
                break;
            }
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
            tracing::info!(reason = %end, "cloud link ended");
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
        }
        Ok(())
    }

    async fn connect(
        &self,
    ) -> Result<(
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
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
        .map_err(|e| Error::Handshake(format!("WebSocket upgrade: {e}")))?;
        let extensions = response
            .headers()
            .get(EXTENSIONS_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(Extensions::none, Extensions::parse);
        Ok((ws, extensions))
    }
}

fn header_value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s).map_err(|e| Error::Handshake(format!("header value {s:?}: {e}")))
}

fn jitter_seed(node: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    node.bytes()
        .fold(now, |h, b| h.rotate_left(5) ^ u64::from(b))
        | 1
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
