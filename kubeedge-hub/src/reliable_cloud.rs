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
//!
//! There is no fan-out loop: a send queues its message and hands whatever may go now to the
//! node's link in the sender's own task, under the lock of one of 64 parts of the node
//! table, so senders to different nodes run in parallel on every worker thread. [`ReliableCloud`]'s
//! loop only handles what comes from the nodes (ACKs free window slots, a reconnect re-sends what
//! is in flight) and the retry tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use kubeedge_proto::{Message, Operation};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::{CancellationToken, PollSemaphore};

use crate::dedupe::{RecentIds, Sight};
use crate::link::encode;
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
// Lives only in the short Vec of one hand-off; boxing the entry would allocate per message.
#[allow(clippy::large_enum_variant)]
enum Out {
    Tracked(Utf8Bytes),
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

    /// Takes the messages that may be sent now, marking tracked ones in flight (and encoding
    /// them: the frame is what goes on the link).
    fn ready(&mut self, window: usize, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        if !self.online {
            return out;
        }
        let mut after = Bound::Unbounded;
        while let Some((&seq, entry)) = self.waiting.range((after, Bound::Unbounded)).next() {
            after = Bound::Excluded(seq);
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
            if let Some(frame) = frame_of(&entry.message) {
                out.push(Out::Tracked(frame));
            }
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

    /// Messages whose ACK is overdue (all of them after a reconnect), stamped as re-sent now,
    /// oldest first.
    fn overdue(&mut self, retry: Duration, now: Instant, all: bool) -> Vec<Out> {
        if !self.online {
            return Vec::new();
        }
        let mut due: Vec<&Message> = Vec::new();
        for flight in self.in_flight.values_mut() {
            if all || now.duration_since(flight.sent_at) >= retry {
                flight.sent_at = now;
                due.push(&flight.message);
            }
        }
        due.sort_by_key(|m| m.header.timestamp);
        due.into_iter()
            .filter_map(frame_of)
            .map(Out::Tracked)
            .collect()
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

    /// Frees the tables of a queue that has emptied. Maps keep their capacity when emptied
    /// (a `BTreeMap` its first leaf: eleven entries' room, ~3.4 KiB; the in-flight map four
    /// flights, ~1.4 KiB), and most nodes are idle most of the time.
    fn release_if_idle(&mut self) {
        if self.waiting.is_empty() {
            self.waiting = BTreeMap::new();
            self.seq_of_key = HashMap::new();
        }
        if self.in_flight.is_empty() {
            self.in_flight = HashMap::new();
            self.keys_in_flight = HashSet::new();
        }
    }

    /// Hands messages to the node's link without waiting, so one slow node never holds up the
    /// others: a tracked message the link cannot take stays in flight and goes again at the
    /// retry; a one-shot message goes back to its place in the queue. Called under the node's
    /// shard lock, so that two senders to one node cannot reorder its messages on the wire.
    fn transmit(&mut self, hub: &CloudHubHandle, node: &str, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Tracked(frame) => {
                    let _ = hub.try_send_frame(node, frame);
                }
                Out::Once { seq, mut entry } => {
                    if let Err(message) = hub.try_send(node, entry.message) {
                        entry.message = message;
                        self.requeue(seq, entry);
                    }
                }
            }
        }
        self.release_if_idle();
    }

    /// Takes what may go now and hands it to the link.
    fn flush(&mut self, hub: &CloudHubHandle, node: &str, window: usize) {
        let outs = self.ready(window, Instant::now());
        self.transmit(hub, node, outs);
    }

    /// Re-sends what waited `retry` for its ACK (`all` of it after a reconnect), then whatever
    /// else may go now (also what a full link queue held back).
    fn resend(&mut self, hub: &CloudHubHandle, node: &str, config: &DeliveryConfig, all: bool) {
        let now = Instant::now();
        let mut outs = self.overdue(config.retry_interval, now, all);
        outs.extend(self.ready(config.window, now));
        self.transmit(hub, node, outs);
    }
}

/// A tracked message's frame; one that cannot be encoded is never sent (and never acknowledged).
fn frame_of(message: &Message) -> Option<Utf8Bytes> {
    match encode(message) {
        Ok(frame) => Some(frame),
        Err(err) => {
            tracing::warn!(msg_id = %message.header.id, %err, "cannot encode a message; it is not sent");
            None
        }
    }
}

/// How many parts the node table is split into, each under its own lock.
const SHARDS: usize = 64;

type Shard = HashMap<String, NodeQueue>;

/// The per-node queues, split over [`SHARDS`] locks by a hash of the node name.
struct NodeTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    config: Arc<DeliveryConfig>,
    /// False once the [`ReliableCloud`] is gone: nothing would process ACKs or retries.
    running: AtomicBool,
}

impl NodeTable {
    fn new(config: Arc<DeliveryConfig>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            config,
            running: AtomicBool::new(true),
        }
    }

    /// The locked shard that holds `node`.
    fn shard(&self, node: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(node) % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }

    /// Runs `f` on `node`'s queue (created empty if it has none), under its shard lock.
    fn with_queue<T>(&self, node: &str, f: impl FnOnce(&mut NodeQueue) -> T) -> T {
        let mut shard = self.shard(node);
        let queue = shard
            .entry(node.to_owned())
            .or_insert_with(|| NodeQueue::new(&self.config));
        f(queue)
    }
}

type Nodes = Arc<NodeTable>;

/// Marks the table stopped when the [`ReliableCloud`] owning it is dropped (its loop ended).
struct Running(Nodes);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

/// Sends reliably to nodes; cheap to clone.
#[derive(Clone)]
pub struct ReliableCloudHandle {
    nodes: Nodes,
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
        self.nodes
            .with_queue(node, |queue| Arc::clone(&queue.capacity))
    }

    /// Queues the message and, if the node is connected, hands what may go now to its link.
    fn enqueue(&self, node: &str, message: Message, permit: OwnedSemaphorePermit) -> Result<()> {
        if !self.nodes.running.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        let window = self.nodes.config.window;
        self.nodes.with_queue(node, |queue| {
            queue.enqueue(message, permit);
            queue.flush(&self.hub, node, window);
        });
        Ok(())
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
        if let Some(queue) = self.nodes.shard(node).get_mut(node) {
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
        self.nodes
            .shard(node)
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
    nodes: Running,
    config: Arc<DeliveryConfig>,
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
        let config = Arc::new(config);
        let nodes: Nodes = Arc::new(NodeTable::new(Arc::clone(&config)));
        let (events, rx) = mpsc::channel(config.events_len.max(1));
        let handle = ReliableCloudHandle {
            nodes: Arc::clone(&nodes),
            hub: hub.clone(),
        };
        (
            Self {
                hub,
                raw,
                nodes: Running(nodes),
                config,
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
                _ = retry.tick() => self.retry_overdue(),
            }
        }
    }

    /// Re-sends what waited too long for its ACK, and whatever a full link queue held back,
    /// one shard at a time.
    fn retry_overdue(&self) {
        for shard in self.nodes.0.shards.iter() {
            for (node, queue) in lock(shard).iter_mut() {
                queue.resend(&self.hub, node, &self.config, false);
            }
        }
    }

    /// Handles one CloudHub event; false when the application is gone.
    async fn on_event(&mut self, event: CloudEvent) -> bool {
        let forward = match event {
            CloudEvent::Connected { node, .. } => {
                self.nodes.0.with_queue(&node, |q| {
                    q.online = true;
                    q.resend(&self.hub, &node, &self.config, true);
                });
                DeliveryEvent::Connected { node }
            }
            CloudEvent::Disconnected { node, reason } => {
                // A replaced connection is followed by the new one's Connected: stay online.
                if reason != LinkEnd::Replaced
                    && let Some(q) = self.nodes.0.shard(&node).get_mut(&node)
                {
                    q.online = false;
                }
                DeliveryEvent::Disconnected { node, reason }
            }
            // Keepalives only keep the link alive (the CloudHub's read deadline); the
            // application hears about liveness through Connected and Disconnected.
            CloudEvent::Message { message, .. } if message.is_keepalive() => return true,
            CloudEvent::Message { node, message } if message.is_ack() => {
                let window = self.config.window;
                let counted = self.nodes.0.with_queue(&node, |q| {
                    let counted = q.acknowledge(&message.header.parent_id);
                    if counted {
                        q.flush(&self.hub, &node, window);
                    }
                    counted
                });
                // An ACK of something no longer in flight repeats one already counted.
                if !counted {
                    return true;
                }
                DeliveryEvent::Delivered {
                    node,
                    msg_id: message.header.parent_id,
                }
            }
            CloudEvent::Message { node, message } => {
                match self.nodes.0.with_queue(&node, |q| q.recent.sight(&message)) {
                    Sight::Deliver => DeliveryEvent::Message { node, message },
                    // A duplicate: its sender did not get our reply; send that again.
                    Sight::Duplicate(reply) => {
                        if let Some(reply) = reply {
                            let _ = self.hub.try_send(&node, reply);
                        }
                        return true;
                    }
                }
            }
        };
        self.events.send(forward).await.is_ok()
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
