//! CloudHub: the WebSocket server edge nodes connect to.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_proto::extensions::{EXTENSIONS_HEADER, Extensions};
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_util::sync::CancellationToken;

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::connections::{self, Admitted, Connections};
use crate::limit_log::LimitLog;
use crate::link::{LinkEnd, LinkOptions, encode, run_link, ws_config};
use crate::takeover::{Budget, TakeoverLimit};
use crate::{Error, Result, tls};

/// Settings for a [`CloudHub`].
#[derive(Clone, Debug)]
pub struct CloudHubConfig {
    /// Where to listen (KubeEdge: port 10000).
    pub listen: SocketAddr,
    /// TLS: the cloud's certificate, client certificates required (see [`tls::server_config`]).
    pub tls: Arc<rustls::ServerConfig>,
    /// A session ends when nothing arrives from its node for this long (KubeEdge: 30 s).
    pub keepalive_timeout: Duration,
    /// A connection must finish its TLS and WebSocket handshakes within this time.
    pub handshake_timeout: Duration,
    /// The largest message accepted.
    pub max_message_len: usize,
    /// Messages queued per node before senders wait.
    pub node_queue_len: usize,
    /// The most nodes connected at once (KubeEdge: 500 by default).
    pub node_limit: usize,
    /// Events queued for the application before the hub waits for it.
    pub events_len: usize,
    /// The kubeedge-rs extensions announced to edges in the upgrade response (all by
    /// default; [`Extensions::none`] makes this hub look like KubeEdge's).
    pub extensions: Extensions,
    /// How often a node's session may be taken over by a newer connection of the same node
    /// (default: [`TakeoverLimit::default`], 3 at once then one every 10 s); over it the new
    /// connection is refused with HTTP 429. `None`: the newer connection always wins, as in
    /// KubeEdge.
    pub takeover_limit: Option<TakeoverLimit>,
    /// The most connections in their TLS and WebSocket handshakes at once (default 1024).
    /// When all are taken, a new connection closes the oldest of them, so connections that
    /// never finish their handshake cannot keep nodes out.
    pub max_handshakes: usize,
    /// The most connections in their handshakes from one source address (default 64); more
    /// are closed at once. Established sessions do not count.
    pub max_handshakes_per_source: usize,
}

impl CloudHubConfig {
    /// KubeEdge's defaults on `listen` with `tls`.
    pub fn new(listen: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            listen,
            tls,
            keepalive_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            node_queue_len: 1024,
            node_limit: 500,
            events_len: 4096,
            extensions: Extensions::all(),
            takeover_limit: Some(TakeoverLimit::default()),
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
        }
    }
}

/// Counters of a [`CloudHub`]'s sessions, from [`CloudHubHandle::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloudHubStats {
    /// Nodes with a session now.
    pub sessions: usize,
    /// Sessions taken over by a newer connection of the same node, since the hub was bound.
    pub takeovers: u64,
    /// New connections refused because their node's takeover budget was used up.
    pub takeovers_refused: u64,
}

/// What happens on the cloud side.
// Events are moved through a channel one at a time; boxing the message would cost an
// allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum CloudEvent {
    /// A node connected (replacing its previous connection, if any).
    Connected {
        /// The node.
        node: String,
        /// Its `project_id` header.
        project_id: String,
    },
    /// A node's connection ended.
    Disconnected {
        /// The node.
        node: String,
        /// Why.
        reason: LinkEnd,
    },
    /// A message from a node (edge-form resource, as on the wire).
    Message {
        /// The node.
        node: String,
        /// The message.
        message: Message,
    },
}

struct Session {
    id: u64,
    /// The node's address, for the logs of a takeover.
    peer: SocketAddr,
    queue: mpsc::Sender<Utf8Bytes>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Sessions {
    by_node: HashMap<String, Session>,
    /// Takeover budgets of nodes that used some recently (a full budget is forgotten).
    budgets: HashMap<String, Budget>,
    takeovers: u64,
    takeovers_refused: u64,
}

/// Whether a connection may have its node's session.
enum Admission {
    /// The node has no session.
    Fresh,
    /// The node has a session; this connection takes it over (and has taken the takeover from
    /// the budget).
    Takeover,
}

impl Sessions {
    /// Decides whether the connection from `peer` may have `node`'s session now, taking a
    /// takeover from the node's budget if it replaces one. `Err` holds the refusal's reason.
    fn admit(
        &mut self,
        node: &str,
        peer: SocketAddr,
        limit: Option<&TakeoverLimit>,
    ) -> Result<Admission, String> {
        let Some(holder) = self.by_node.get(node).map(|s| s.peer) else {
            return Ok(Admission::Fresh);
        };
        let Some(limit) = limit else {
            return Ok(Admission::Takeover);
        };
        let now = tokio::time::Instant::now();
        if self.budgets.len() > BUDGETS_BEFORE_SWEEP.max(self.by_node.len() * 2) {
            self.budgets.retain(|_, b| !b.is_full(limit, now));
        }
        let budget = self
            .budgets
            .entry(node.to_owned())
            .or_insert_with(|| Budget::new(limit, now));
        if budget.take(limit, now) {
            return Ok(Admission::Takeover);
        }
        self.takeovers_refused += 1;
        if let Some(refused) = budget.refused(limit, now) {
            tracing::warn!(
                node,
                new_peer = %peer,
                holder = %holder,
                refused,
                burst = limit.burst,
                refill_every = ?limit.refill_every,
                "session takeovers over the node's budget: new connections refused, the established session kept"
            );
        }
        Err(format!(
            "node {node} already has a session and its takeover budget ({} at once, one more every {:?}) is used up; retry later",
            limit.burst, limit.refill_every
        ))
    }

    /// Returns a takeover taken by [`admit`](Self::admit) that was not needed.
    fn give_back(&mut self, node: &str, limit: Option<&TakeoverLimit>) {
        if let (Some(limit), Some(budget)) = (limit, self.budgets.get_mut(node)) {
            budget.give_back(limit);
        }
    }

    /// Forgets `node`'s budget if it is full again.
    fn forget_full_budget(&mut self, node: &str, limit: Option<&TakeoverLimit>) {
        let now = tokio::time::Instant::now();
        if let (Some(limit), Some(budget)) = (limit, self.budgets.get_mut(node))
            && budget.is_full(limit, now)
        {
            self.budgets.remove(node);
        }
    }
}

/// Warnings for a handshake limit hit come at most this often (with the count of the others).
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Budgets kept before full ones are swept out (besides two per connected node).
const BUDGETS_BEFORE_SWEEP: usize = 1024;

/// Sends to connected nodes; cheap to clone.
#[derive(Clone)]
pub struct CloudHubHandle {
    sessions: Arc<Mutex<Sessions>>,
    /// The event stream, so that a restarted hub reports where its predecessor did.
    events: mpsc::Sender<CloudEvent>,
}

impl std::fmt::Debug for CloudHubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudHubHandle")
            .field("nodes", &self.connected_nodes().len())
            .finish()
    }
}

impl CloudHubHandle {
    /// Queues `message` for `node`, waiting while its queue is full (backpressure).
    pub async fn send(&self, node: &str, message: Message) -> Result<()> {
        let queue = self
            .lock()
            .by_node
            .get(node)
            .map(|s| s.queue.clone())
            .ok_or_else(|| Error::NotConnected(node.to_owned()))?;
        queue
            .send(encode(&message)?)
            .await
            .map_err(|_| Error::NotConnected(node.to_owned()))
    }

    /// Queues `message` for `node` without waiting: gives the message back when the node's link
    /// queue is full or the node is not connected.
    // Giving the message back (not boxed) is the point: the caller keeps it without a copy.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, node: &str, message: Message) -> Result<(), Message> {
        if encode(&message).is_ok_and(|frame| self.try_send_frame(node, frame)) {
            Ok(())
        } else {
            Err(message)
        }
    }

    /// Queues an encoded frame for `node` without waiting; false when the node's link queue is
    /// full or the node is not connected.
    pub(crate) fn try_send_frame(&self, node: &str, frame: Utf8Bytes) -> bool {
        let queue = self.lock().by_node.get(node).map(|s| s.queue.clone());
        queue.is_some_and(|queue| queue.try_send(frame).is_ok())
    }

    /// The hub's session counters now.
    pub fn stats(&self) -> CloudHubStats {
        let sessions = self.lock();
        CloudHubStats {
            sessions: sessions.by_node.len(),
            takeovers: sessions.takeovers,
            takeovers_refused: sessions.takeovers_refused,
        }
    }

    /// The nodes connected right now.
    pub fn connected_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.lock().by_node.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The CloudHub server: accepts edge nodes over TLS WebSocket with KubeEdge's handshake, one
/// session per node.
///
/// A node is identified by its client certificate (`CN=system:node:<node>`, verified against
/// the cluster CA); its `node_id` header must name the same node, and `ConnectionUse` must be
/// `msg`, or the upgrade is refused with 403. A new connection of a node replaces the old one
/// (a takeover, logged at WARN with both peers' addresses) while the node's
/// [`TakeoverLimit`] allows; beyond it the new connection is refused with 429 and the old one
/// kept. Every connection has its own tasks; a bad frame, a stalled handshake or a silent node
/// ends only that connection.
pub struct CloudHub {
    config: CloudHubConfig,
    listener: TcpListener,
    handle: CloudHubHandle,
    events: mpsc::Sender<CloudEvent>,
}

impl std::fmt::Debug for CloudHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudHub")
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

impl CloudHub {
    /// Binds the listener. Returns the hub (to [`run`](Self::run)), a handle for sending, and the
    /// stream of [`CloudEvent`]s.
    pub async fn bind(
        config: CloudHubConfig,
    ) -> Result<(Self, CloudHubHandle, mpsc::Receiver<CloudEvent>)> {
        let listener = TcpListener::bind(config.listen).await?;
        let (events, rx) = mpsc::channel(config.events_len.max(1));
        let handle = CloudHubHandle {
            sessions: Arc::default(),
            events: events.clone(),
        };
        Ok((
            Self {
                config,
                listener,
                handle: handle.clone(),
                events,
            },
            handle,
            rx,
        ))
    }

    /// Binds a new listener that serves through an earlier hub's handle and event stream: a
    /// restart of the server (after the earlier hub's `run` returned) that the layers above, such
    /// as [`ReliableCloud`](crate::ReliableCloud), do not notice except as nodes reconnecting.
    pub async fn rebind(config: CloudHubConfig, handle: &CloudHubHandle) -> Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            config,
            listener,
            handle: handle.clone(),
            events: handle.events.clone(),
        })
    }

    /// The address the hub listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts connections until `shutdown` is cancelled, then ends every session.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config.tls));
        let config = Arc::new(self.config);
        let next_id = Arc::new(AtomicU64::new(1));
        let handshakes = Connections::new(config.max_handshakes, config.max_handshakes_per_source);
        let (per_source_log, full_log, eviction_log) = (
            LimitLog::new(LIMIT_LOG_EVERY),
            LimitLog::new(LIMIT_LOG_EVERY),
            LimitLog::new(LIMIT_LOG_EVERY),
        );
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let handshake = match handshakes.admit(peer.ip()) {
                Ok((admitted, evicted)) => {
                    if evicted && let Some(earlier) = eviction_log.hit() {
                        tracing::warn!(%peer, max_handshakes = config.max_handshakes, earlier,
                            "cloudhub: handshake limit reached; the oldest connection still in its handshake was closed");
                    }
                    admitted
                }
                Err(refusal) => {
                    let (log, limit) = match refusal {
                        connections::Refusal::PerSource => {
                            (&per_source_log, config.max_handshakes_per_source)
                        }
                        connections::Refusal::Full => (&full_log, config.max_handshakes),
                    };
                    if let Some(earlier) = log.hit() {
                        tracing::warn!(%peer, limit, earlier, reason = ?refusal,
                            "cloudhub: connection closed before its handshake");
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                handshake: Some(handshake),
                acceptor: acceptor.clone(),
                config: Arc::clone(&config),
                handle: self.handle.clone(),
                events: self.events.clone(),
                id: next_id.fetch_add(1, Ordering::Relaxed),
                peer,
                shutdown: shutdown.child_token(),
            };
            tokio::spawn(async move {
                match conn.serve(tcp).await {
                    Ok(()) => {}
                    // Logged by the budget, once per period: a loop must not flood the log.
                    Err(e @ Error::TakeoverRefused { .. }) => {
                        tracing::debug!(%peer, error = %e, "edge connection refused");
                    }
                    Err(e) => tracing::info!(%peer, error = %e, "edge connection refused"),
                }
            });
        }
        for (_, session) in self.handle.lock().by_node.drain() {
            session.stop.cancel();
        }
        Ok(())
    }
}

struct Connection {
    /// Its place among the connections in their handshakes (given up once upgraded).
    handshake: Option<Admitted>,
    acceptor: TlsAcceptor,
    config: Arc<CloudHubConfig>,
    handle: CloudHubHandle,
    events: mpsc::Sender<CloudEvent>,
    id: u64,
    peer: SocketAddr,
    shutdown: CancellationToken,
}

/// What the upgrade request said.
struct Upgrade {
    node: String,
    project_id: String,
    /// Whether a takeover was taken from the node's budget for this connection.
    takeover: bool,
}

/// Why the upgrade callback refused a connection.
enum Refusal {
    /// KubeEdge's rules or the identity check (403).
    Forbidden(String),
    /// The node's takeover budget is used up (429).
    OverBudget { node: String, reason: String },
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream) -> Result<()> {
        let pending = self.handshake.take();
        let config = &self.config;
        let limit = config.takeover_limit.as_ref();
        let mut refusal = None;
        let handshake = async {
            let tls = self
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| Error::Handshake(format!("TLS: {e}")))?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .ok_or_else(|| Error::Handshake("no client certificate".to_owned()))?;
            let cert_node = tls::node_of_certificate(cert)?;
            let mut upgrade = None;
            // The callback's shape (a full HTTP response as the error) is tungstenite's.
            #[allow(clippy::result_large_err)]
            let ws = tokio_tungstenite::accept_hdr_async_with_config(
                tls,
                |req: &Request, mut resp: Response| {
                    let admitted = check_upgrade(req, &cert_node)
                        .map_err(Refusal::Forbidden)
                        .and_then(|mut u| {
                            let admission = self
                                .handle
                                .lock()
                                .admit(&u.node, self.peer, limit)
                                .map_err(|reason| Refusal::OverBudget {
                                    node: u.node.clone(),
                                    reason,
                                })?;
                            u.takeover = matches!(admission, Admission::Takeover);
                            Ok(u)
                        });
                    match admitted {
                        Ok(u) => {
                            upgrade = Some(u);
                            let offered = config.extensions.to_header();
                            if let Ok(value) = HeaderValue::from_str(&offered)
                                && !offered.is_empty()
                            {
                                resp.headers_mut().insert(EXTENSIONS_HEADER, value);
                            }
                            Ok(resp)
                        }
                        Err(Refusal::Forbidden(reason)) => {
                            Err(refuse(StatusCode::FORBIDDEN, &reason))
                        }
                        Err(Refusal::OverBudget { node, reason }) => {
                            let response = refuse(StatusCode::TOO_MANY_REQUESTS, &reason);
                            refusal = Some(node);
                            Err(response)
                        }
                    }
                },
                Some(ws_config(config.max_message_len)),
            )
            .await
            .map_err(|e| match refusal.take() {
                Some(node) => Error::TakeoverRefused { node },
                None => Error::Handshake(format!("WebSocket upgrade: {e}")),
            })?;
            let upgrade =
                upgrade.ok_or_else(|| Error::Handshake("no upgrade request".to_owned()))?;
            Ok::<_, Error>((Box::new(ws), upgrade))
        };
        let (ws, upgrade) = // Boxed: the handshake's state is freed once it is done, instead of sizing the
        // connection task (which lives as long as the node is connected) for it.
        {
            let evicted = pending.as_ref().map(|p| p.evicted.clone()).unwrap_or_default();
            tokio::select! {
                done = tokio::time::timeout(config.handshake_timeout, Box::pin(handshake)) => {
                    done.map_err(|_| Error::HandshakeTimeout)??
                }
                () = evicted.cancelled() => {
                    return Err(Error::Handshake(
                        "closed to make room: too many connections in their handshakes".to_owned(),
                    ));
                }
            }
        };
        drop(pending);

        let (queue, mut to_peer) = mpsc::channel(config.node_queue_len.max(1));
        let stop = self.shutdown.clone();
        let admitted = {
            let mut sessions = self.handle.lock();
            let node = upgrade.node.as_str();
            let replacing = sessions.by_node.contains_key(node);
            if !replacing && sessions.by_node.len() >= config.node_limit {
                if upgrade.takeover {
                    sessions.give_back(node, limit);
                }
                return Err(Error::Handshake(format!(
                    "node limit {} reached",
                    config.node_limit
                )));
            }
            // The session may have changed hands during the handshake.
            let admitted = match (replacing, upgrade.takeover) {
                (true, false) => sessions.admit(node, self.peer, limit).map(|_| ()),
                (false, true) => {
                    sessions.give_back(node, limit);
                    Ok(())
                }
                _ => Ok(()),
            };
            if admitted.is_ok() {
                let old = sessions.by_node.insert(
                    upgrade.node.clone(),
                    Session {
                        id: self.id,
                        peer: self.peer,
                        queue,
                        stop: stop.clone(),
                    },
                );
                if let Some(old) = old {
                    sessions.takeovers += 1;
                    tracing::warn!(
                        node,
                        old_peer = %old.peer,
                        new_peer = %self.peer,
                        "session taken over by a new connection of the node"
                    );
                    old.stop.cancel();
                }
            }
            admitted
        };
        let mut ws = ws;
        if let Err(reason) = admitted {
            // The upgrade was accepted already: the refusal goes in the close frame.
            let close = CloseFrame {
                code: CloseCode::Again,
                reason: truncated(&reason, MAX_CLOSE_REASON).to_owned().into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(close))).await;
            return Err(Error::TakeoverRefused { node: upgrade.node });
        }
        let node = upgrade.node.clone();
        let _ = self
            .events
            .send(CloudEvent::Connected {
                node: node.clone(),
                project_id: upgrade.project_id,
            })
            .await;
        let options = LinkOptions {
            max_len: config.max_message_len,
            read_deadline: Some(config.keepalive_timeout),
            keepalive_every: None,
            rate_limit: None,
        };
        let from_node = node.clone();
        let end = run_link(
            ws,
            &mut to_peer,
            &self.events,
            move |message| CloudEvent::Message {
                node: from_node.clone(),
                message,
            },
            &options,
            &stop,
        )
        .await;
        let end = {
            let mut sessions = self.handle.lock();
            match sessions.by_node.get(&node) {
                Some(s) if s.id == self.id => {
                    sessions.by_node.remove(&node);
                    sessions.forget_full_budget(&node, limit);
                    end
                }
                Some(_) => LinkEnd::Replaced,
                None => end,
            }
        };
        tracing::info!(node = %node, reason = %end, "edge session ended");
        let _ = self
            .events
            .send(CloudEvent::Disconnected { node, reason: end })
            .await;
        Ok(())
    }
}

/// Applies KubeEdge's upgrade rules (kubeedge-compat.md §2.3), stricter on identity: the path is
/// not inspected; `ConnectionUse` must be `msg`; `node_id` must name the certificate's node.
fn check_upgrade(req: &Request, cert_node: &str) -> Result<Upgrade, String> {
    // The http crate matches header names case-insensitively (Go sends `Node_id`).
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("")
    };
    let connection_use = header("connectionuse");
    if connection_use != "msg" {
        return Err(format!("ConnectionUse {connection_use:?} is not msg"));
    }
    let node = header("node_id");
    if node.is_empty() {
        return Err("no node_id header".to_owned());
    }
    if node != cert_node {
        return Err(format!(
            "node_id {node:?} does not match the certificate's node {cert_node:?}"
        ));
    }
    Ok(Upgrade {
        node: node.to_owned(),
        project_id: header("project_id").to_owned(),
        takeover: false,
    })
}

/// The most bytes of a close frame's reason (RFC 6455: 125 bytes of payload, 2 of them the code).
const MAX_CLOSE_REASON: usize = 123;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn refuse(status: StatusCode, reason: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(reason.to_owned()));
    *resp.status_mut() = status;
    resp
}
