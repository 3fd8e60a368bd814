//! Reliable cloud-to-edge delivery on top of the CloudHub link layer.
//!
//! Per node, messages wait in a bounded queue keyed by object uid: a newer version of an object
//! replaces an older one that has not been sent yet (the node only needs the latest). Messages
//! that the edge acknowledges (those with a `resourceversion`, and deletes) are sent with at most
//! `window` in flight, never two of the same object at once, and re-sent with the *same*
//! `msg_id` every `retry_interval` until the ACK (`response` with `parent_msg_id` = the id and
//! content `"OK"`) arrives, including after the node reconnects. Other messages are sent once.
//!
//! Capacity is a semaphore: [`ReliableCloudHandle::send`] and the [`ToNode`] `tower::Service`
//! wait for a free slot (`poll_ready`), and a slot is released when its message is acknowledged,
//! sent (if not tracked) or replaced. Memory per node is bounded by its queue capacity.
//!
//! Messages from the edge are de-duplicated by `msg_id` (a bounded window per node) before the
//! application sees them; ACKs are consumed here and reported as [`DeliveryEvent::Delivered`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use kubeedge_proto::{Message, Operation};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSemaphore};

use crate::dedupe::{RecentIds, Sight};
use crate::{CloudEvent, CloudHubHandle, CloudHubStats, Error, LinkEnd, Result};

/// Settings for [`ReliableCloud`].
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Messages queued per node (waiting and in flight) before senders wait.
    pub node_capacity: usize,
    /// Acknowledged messages in flight per node (KubeEdge: 1).
    pub window: usize,
    /// How long to wait for an ACK before sending the same message again (KubeEdge: 5 s).
    pub retry_interval: Duration,
    /// How many recent message ids per node are remembered to drop duplicates (keepalives are
    /// not counted).
    pub dedupe_window: usize,
    /// How many of the application's recent replies per node are kept to answer duplicates. At
    /// least twice the edges' upstream window ([`UpstreamConfig::window`](crate::UpstreamConfig),
    /// 32 by default); a duplicate whose reply was forgotten goes to the application again.
    pub reply_cache: usize,
    /// Events queued for the application.
    pub events_len: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            node_capacity: 1024,
            window: 16,
            retry_interval: Duration::from_secs(5),
            dedupe_window: 4096,
            reply_cache: 64,
            events_len: 4096,
        }
    }
}

/// What the application sees.
// Moved through a channel one at a time; boxing the message would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryEvent {
    /// A node connected.
    Connected {
        /// The node.
        node: String,
    },
    /// A node disconnected; its unacknowledged messages wait for its return.
    Disconnected {
        /// The node.
        node: String,
        /// Why.
        reason: LinkEnd,
    },
    /// A message from a node, the first time its `msg_id` was seen (keepalives are consumed
    /// here).
    Message {
        /// The node.
        node: String,
        /// The message.
        message: Message,
    },
    /// A node acknowledged a message.
    Delivered {
        /// The node.
        node: String,
        /// The acknowledged message's id.
        msg_id: String,
    },
}

/// Whether the edge acknowledges this message (KubeEdge's ACK path): it carries a
/// resourceversion, or deletes an object.
pub fn is_ack_tracked(msg: &Message) -> bool {
    !msg.header.resource_version.is_empty() || msg.route.operation == Some(Operation::Delete)
}

/// The object a message is about: `content.metadata.uid`, as KubeEdge keys its per-node store.
/// A node's queue keeps only the newest unsent message per key; a queue in front of this one
/// (a controller's) should coalesce by the same key.
pub fn object_key(msg: &Message) -> Option<String> {
    msg.content
        .object_meta()
        .map(|meta| meta.uid)
        .filter(|uid| !uid.is_empty())
}

struct Entry {
    key: Option<String>,
    message: Message,
    _permit: OwnedSemaphorePermit,
}

struct Flight {
    key: Option<String>,
    message: Message,
    sent_at: Instant,
    _permit: OwnedSemaphorePermit,
}

/// A message ready to go: tracked ones are already in flight (a failed hand-off is retried by
/// the retry tick); one-shot ones keep their queue slot until the link takes them.
enum Out {
    Tracked(Message),
    Once { seq: u64, entry: Entry },
}

/// One node's queue and in-flight set.
struct NodeQueue {
    capacity: Arc<Semaphore>,
    next_seq: u64,
    waiting: BTreeMap<u64, Entry>,
    seq_of_key: HashMap<String, u64>,
    in_flight: HashMap<String, Flight>,
    keys_in_flight: HashSet<String>,
    online: bool,
    /// Recent message ids from the node and the replies sent to them.
    recent: RecentIds,
}

impl NodeQueue {
    fn new(config: &DeliveryConfig) -> Self {
        Self {
            capacity: Arc::new(Semaphore::new(config.node_capacity.max(1))),
            next_seq: 0,
            waiting: BTreeMap::new(),
            seq_of_key: HashMap::new(),
            in_flight: HashMap::new(),
            keys_in_flight: HashSet::new(),
            online: false,
            recent: RecentIds::new(config.dedupe_window, config.reply_cache),
        }
    }

    fn enqueue(&mut self, message: Message, permit: OwnedSemaphorePermit) {
        let key = object_key(&message);
        if let Some(k) = &key
            && let Some(seq) = self.seq_of_key.get(k)
            && let Some(entry) = self.waiting.get_mut(seq)
        {
            // The newer version takes the older one's place in line; the new permit is freed.
            entry.message = message;
            return;
        }
        self.next_seq += 1;
        if let Some(k) = &key {
            self.seq_of_key.insert(k.clone(), self.next_seq);
        }
        self.waiting.insert(
            self.next_seq,
            Entry {
                key,
                message,
                _permit: permit,
            },
        );
    }

    /// Takes the messages that may be sent now, marking tracked ones in flight.
    fn ready(&mut self, window: usize, now: Instant) -> Vec<Out> {
        if !self.online {
            return Vec::new();
        }
        let mut out = Vec::new();
        let seqs: Vec<u64> = self.waiting.keys().copied().collect();
        for seq in seqs {
            let Some(entry) = self.waiting.get(&seq) else {
                continue;
            };
            let tracked = is_ack_tracked(&entry.message);
            if tracked {
                if self.in_flight.len() >= window {
                    break;
                }
                if entry
                    .key
                    .as_ref()
                    .is_some_and(|k| self.keys_in_flight.contains(k))
                {
                    // The object's previous version is still unacknowledged: keep order.
                    continue;
                }
            }
            let Some(entry) = self.waiting.remove(&seq) else {
                continue;
            };
            if let Some(k) = &entry.key {
                self.seq_of_key.remove(k);
            }
            if !tracked {
                out.push(Out::Once { seq, entry });
                continue;
            }
            if let Some(k) = &entry.key {
                self.keys_in_flight.insert(k.clone());
            }
            out.push(Out::Tracked(entry.message.clone()));
            let id = entry.message.header.id.clone();
            let flight = Flight {
                key: entry.key,
                message: entry.message,
                sent_at: now,
                _permit: entry._permit,
            };
            self.in_flight.insert(id, flight);
        }
        out
    }

    /// Puts back a one-shot message the link could not take, in its old place.
    fn requeue(&mut self, seq: u64, entry: Entry) {
        if let Some(k) = &entry.key {
            if self.seq_of_key.contains_key(k) {
                // A newer version arrived meanwhile; it wins.
                return;
            }
            self.seq_of_key.insert(k.clone(), seq);
        }
        self.waiting.insert(seq, entry);
    }

    /// Messages whose ACK is overdue (all of them after a reconnect), stamped as re-sent now.
    fn overdue(&mut self, retry: Duration, now: Instant, all: bool) -> Vec<Out> {
        if !self.online {
            return Vec::new();
        }
        let mut out = Vec::new();
        for flight in self.in_flight.values_mut() {
            if all || now.duration_since(flight.sent_at) >= retry {
                flight.sent_at = now;
                out.push(flight.message.clone());
            }
        }
        out.sort_by_key(|m| m.header.timestamp);
        out.into_iter().map(Out::Tracked).collect()
    }

    fn acknowledge(&mut self, parent: &str) -> bool {
        let Some(flight) = self.in_flight.remove(parent) else {
            return false;
        };
        if let Some(k) = &flight.key {
            self.keys_in_flight.remove(k);
        }
        true
    }
}

type Nodes = Arc<Mutex<HashMap<String, NodeQueue>>>;

/// Sends reliably to nodes; cheap to clone.
#[derive(Clone)]
pub struct ReliableCloudHandle {
    nodes: Nodes,
    config: Arc<DeliveryConfig>,
    wake: mpsc::UnboundedSender<String>,
    hub: CloudHubHandle,
}

impl std::fmt::Debug for ReliableCloudHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableCloudHandle")
            .finish_non_exhaustive()
    }
}

impl ReliableCloudHandle {
    fn capacity_of(&self, node: &str) -> Arc<Semaphore> {
        let mut nodes = lock(&self.nodes);
        let queue = nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeQueue::new(&self.config));
        Arc::clone(&queue.capacity)
    }

    fn enqueue(&self, node: &str, message: Message, permit: OwnedSemaphorePermit) -> Result<()> {
        let mut nodes = lock(&self.nodes);
        let queue = nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeQueue::new(&self.config));
        queue.enqueue(message, permit);
        drop(nodes);
        self.wake.send(node.to_owned()).map_err(|_| Error::Stopped)
    }

    /// Queues `message` for `node` (connected or not), waiting for a free slot in the node's
    /// queue. Tracked messages are delivered until acknowledged.
    ///
    /// A reply (a message with `parent_msg_id`, such as an ACK) never waits: it is handed to the
    /// link at once, and remembered, so that if the node sends what it answers again (the reply
    /// was lost) the reply goes again. Applications can therefore answer from their event loop;
    /// other sends wait for capacity and belong in tasks of their own.
    pub async fn send(&self, node: &str, message: Message) -> Result<()> {
        if !message.header.parent_id.is_empty() {
            return self.reply(node, message);
        }
        let permit = self
            .capacity_of(node)
            .acquire_owned()
            .await
            .map_err(|_| Error::Stopped)?;
        self.enqueue(node, message, permit)
    }

    fn reply(&self, node: &str, message: Message) -> Result<()> {
        if let Some(queue) = lock(&self.nodes).get_mut(node) {
            queue.recent.remember_reply(&message);
        }
        // A full or closed link drops it; the node's re-send brings it back from memory.
        let _ = self.hub.try_send(node, message);
        Ok(())
    }

    /// A `tower::Service` sending to one node, with `poll_ready` waiting for queue capacity.
    pub fn to_node(&self, node: impl Into<String>) -> ToNode {
        let node = node.into();
        let semaphore = PollSemaphore::new(self.capacity_of(&node));
        ToNode {
            handle: self.clone(),
            node,
            semaphore,
            permit: None,
        }
    }

    /// The session counters of the CloudHub underneath (sessions, takeovers, refused
    /// takeovers), for metrics.
    pub fn hub_stats(&self) -> CloudHubStats {
        self.hub.stats()
    }

    /// Messages queued or in flight for `node`.
    pub fn pending(&self, node: &str) -> usize {
        lock(&self.nodes)
            .get(node)
            .map_or(0, |q| q.waiting.len() + q.in_flight.len())
    }
}

/// Sending to one node as a `tower::Service<Message>`: `poll_ready` reserves a slot in the
/// node's bounded queue, `call` queues the message.
pub struct ToNode {
    handle: ReliableCloudHandle,
    node: String,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for ToNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToNode")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl tower::Service<Message> for ToNode {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<()>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.permit.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.semaphore.poll_acquire(cx) {
            Poll::Ready(Some(permit)) => {
                self.permit = Some(permit);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => Poll::Ready(Err(Error::Stopped)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let result = match self.permit.take() {
            Some(permit) => self.handle.enqueue(&self.node, message, permit),
            // Calling without a successful poll_ready breaks the Service contract.
            None => Err(Error::NotConnected(format!(
                "{}: call before poll_ready",
                self.node
            ))),
        };
        std::future::ready(result)
    }
}

/// The reliability layer: consumes a CloudHub's events and handle, gives the application
/// de-duplicated messages and acknowledged delivery.
pub struct ReliableCloud {
    hub: CloudHubHandle,
    raw: mpsc::Receiver<CloudEvent>,
    nodes: Nodes,
    config: Arc<DeliveryConfig>,
    wake: mpsc::UnboundedReceiver<String>,
    events: mpsc::Sender<DeliveryEvent>,
}

impl std::fmt::Debug for ReliableCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableCloud").finish_non_exhaustive()
    }
}

impl ReliableCloud {
    /// Wraps a CloudHub's handle and event stream.
    pub fn new(
        hub: CloudHubHandle,
        raw: mpsc::Receiver<CloudEvent>,
        config: DeliveryConfig,
    ) -> (Self, ReliableCloudHandle, mpsc::Receiver<DeliveryEvent>) {
        let nodes: Nodes = Arc::default();
        let config = Arc::new(config);
        let (wake_tx, wake) = mpsc::unbounded_channel();
        let (events, rx) = mpsc::channel(config.events_len.max(1));
        let handle = ReliableCloudHandle {
            nodes: Arc::clone(&nodes),
            config: Arc::clone(&config),
            wake: wake_tx,
            hub: hub.clone(),
        };
        (
            Self {
                hub,
                raw,
                nodes,
                config,
                wake,
                events,
            },
            handle,
            rx,
        )
    }

    /// Runs until `shutdown` is cancelled or the CloudHub's events end.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let tick = (self.config.retry_interval / 4).max(Duration::from_millis(10));
        let mut retry = tokio::time::interval(tick);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = self.raw.recv() => {
                    let Some(event) = event else { return Ok(()) };
                    if !self.on_event(event).await {
                        return Ok(());
                    }
                }
                node = self.wake.recv() => {
                    let Some(node) = node else { return Ok(()) };
                    let ready = {
                        let mut nodes = lock(&self.nodes);
                        nodes.get_mut(&node).map(|q| q.ready(self.config.window, Instant::now()))
                    };
                    self.transmit(&node, ready.unwrap_or_default());
                }
                _ = retry.tick() => {
                    let now = Instant::now();
                    let (retry_after, window) = (self.config.retry_interval, self.config.window);
                    let overdue: Vec<(String, Vec<Out>)> = lock(&self.nodes)
                        .iter_mut()
                        .map(|(node, q)| {
                            let mut outs = q.overdue(retry_after, now, false);
                            // Also whatever a full link queue held back.
                            outs.extend(q.ready(window, now));
                            (node.clone(), outs)
                        })
                        .filter(|(_, outs)| !outs.is_empty())
                        .collect();
                    for (node, msgs) in overdue {
                        self.transmit(&node, msgs);
                    }
                }
            }
        }
    }

    /// Handles one CloudHub event; false when the application is gone.
    async fn on_event(&mut self, event: CloudEvent) -> bool {
        let forward = match event {
            CloudEvent::Connected { node, .. } => {
                let resend = {
                    let mut nodes = lock(&self.nodes);
                    let q = nodes
                        .entry(node.clone())
                        .or_insert_with(|| NodeQueue::new(&self.config));
                    q.online = true;
                    let now = Instant::now();
                    let mut msgs = q.overdue(self.config.retry_interval, now, true);
                    msgs.extend(q.ready(self.config.window, now));
                    msgs
                };
                self.transmit(&node, resend);
                DeliveryEvent::Connected { node }
            }
            CloudEvent::Disconnected { node, reason } => {
                // A replaced connection is followed by the new one's Connected: stay online.
                if reason != LinkEnd::Replaced
                    && let Some(q) = lock(&self.nodes).get_mut(&node)
                {
                    q.online = false;
                }
                DeliveryEvent::Disconnected { node, reason }
            }
            // Keepalives only keep the link alive (the CloudHub's read deadline); the
            // application hears about liveness through Connected and Disconnected.
            CloudEvent::Message { message, .. } if message.is_keepalive() => return true,
            CloudEvent::Message { node, message } => {
                let mut nodes = lock(&self.nodes);
                let q = nodes
                    .entry(node.clone())
                    .or_insert_with(|| NodeQueue::new(&self.config));
                if message.is_ack() {
                    // An ACK of something no longer in flight repeats one already counted.
                    if !q.acknowledge(&message.header.parent_id) {
                        return true;
                    }
                    let more = q.ready(self.config.window, Instant::now());
                    drop(nodes);
                    self.transmit(&node, more);
                    DeliveryEvent::Delivered {
                        node,
                        msg_id: message.header.parent_id,
                    }
                } else {
                    match q.recent.sight(&message) {
                        Sight::Deliver => DeliveryEvent::Message { node, message },
                        // A duplicate: its sender did not get our reply; send that again.
                        Sight::Duplicate(reply) => {
                            drop(nodes);
                            if let Some(reply) = reply {
                                let _ = self.hub.try_send(&node, reply);
                            }
                            return true;
                        }
                    }
                }
            }
        };
        self.events.send(forward).await.is_ok()
    }

    /// Hands messages to the node's link without waiting, so one slow node never holds up the
    /// others: a tracked message the link cannot take stays in flight and goes again at the
    /// retry; a one-shot message goes back to its place in the queue.
    fn transmit(&self, node: &str, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Tracked(message) => {
                    let _ = self.hub.try_send(node, message);
                }
                Out::Once { seq, mut entry } => {
                    if let Err(message) = self.hub.try_send(node, entry.message) {
                        entry.message = message;
                        if let Some(q) = lock(&self.nodes).get_mut(node) {
                            q.requeue(seq, entry);
                        }
                    }
                }
            }
        }
    }
}

fn lock(nodes: &Nodes) -> std::sync::MutexGuard<'_, HashMap<String, NodeQueue>> {
    nodes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
