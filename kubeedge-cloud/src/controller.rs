//! The cloud controller: one task that owns the dispatcher's view of the cluster, with a
//! sender task per node (downstream, in order, waiting for the node's queue) and a writer task
//! per node (upstream writes of one node in order, nodes in parallel).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kubeedge_hub::{DeliveryEvent, ReliableCloudHandle};
use kubeedge_proto::{Message, now_millis, rfc3339_utc};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device_check::{DeviceLimits, MAX_EVENT_MESSAGE, Rejection, rejection_event};
use crate::downstream::{Downstream, Outgoing};
use crate::lifecycle::lapsed_nodes;
use crate::node_queue::{NodeQueue, Pushed};
use crate::record::SentRecord;
use crate::upstream::{Action, Decision, decide, merge_twins, write_reply};
use crate::{ApiError, ClusterWriter, Kind, NODE_LEASE_NAMESPACE, ObjectEvent, ObjectKey, Result};

/// Messages a node's sender hands the hub per record write, at most.
const SEND_BATCH: usize = 256;

/// Events about refused Devices and DeviceModels waiting to be written, at most; more are
/// dropped (with a WARN per burst).
const EVENT_QUEUE: usize = 256;

/// The sender of one node: its queue (closed when the sender is dropped, which ends the
/// sender task once the queue is empty).
struct NodeSender {
    queue: Arc<NodeQueue>,
}

impl Drop for NodeSender {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The controller's per-node tasks and records.
struct Links {
    /// One sender task per node (downstream, in order).
    senders: HashMap<String, NodeSender>,
    /// Nodes without an inventory whose messages are recorded, with their record until
    /// their sender takes it.
    recorded: HashMap<String, Option<SentRecord>>,
    /// Bounds the sent-record reads and writes in flight.
    record_io: Arc<tokio::sync::Semaphore>,
    /// One writer task per node (upstream writes, in order).
    workers: HashMap<String, mpsc::UnboundedSender<(Message, Action)>>,
}

/// Settings of [`CloudController`].
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// How long after a node connects to wait for its inventory before sending it its full set
    /// (KubeEdge edges send none). Default 2 s.
    pub inventory_grace: Duration,
    /// How often waiting nodes and node leases are checked. Default 1 s.
    pub tick: Duration,
    /// A node whose lease was last renewed longer ago than this (and at least the lease's own
    /// duration) is marked unreachable. Default 40 s (Kubernetes' node-monitor-grace-period).
    pub node_monitor_grace: Duration,
    /// Keep a [`SentRecord`](crate::SentRecord) for nodes that send no inventory (KubeEdge
    /// edges), so that any replica tells them the deletes they missed. Default on.
    pub sent_records: bool,
    /// How many sent records are read or written at once (a burst of connects or of new
    /// pods must not open a thousand API calls at a time). Default 32.
    pub record_io: usize,
    /// The bounds Devices and DeviceModels are checked against before they are sent
    /// ([`device_check`](crate::device_check)); one out of bounds is not sent and gets a
    /// Warning Event. Defaults: see [`DeviceLimits`].
    pub device_limits: DeviceLimits,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            inventory_grace: Duration::from_secs(2),
            tick: Duration::from_secs(1),
            node_monitor_grace: Duration::from_secs(40),
            sent_records: true,
            record_io: 32,
            device_limits: DeviceLimits::default(),
        }
    }
}

/// Counters of a running controller (for metrics endpoints). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CloudMetrics(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    objects: AtomicU64,
    downstream: AtomicU64,
    acked: AtomicU64,
    upstream: AtomicU64,
    refused: AtomicU64,
    write_errors: AtomicU64,
    marked_unreachable: AtomicU64,
    refused_devices: AtomicU64,
}

impl CloudMetrics {
    /// Nodes with a session now.
    pub fn connected_nodes(&self) -> u64 {
        self.0.connected.load(Ordering::Relaxed)
    }
    /// Objects in the controller's view.
    pub fn cached_objects(&self) -> u64 {
        self.0.objects.load(Ordering::Relaxed)
    }
    /// Messages queued to nodes.
    pub fn downstream_messages(&self) -> u64 {
        self.0.downstream.load(Ordering::Relaxed)
    }
    /// Messages nodes acknowledged.
    pub fn acknowledged(&self) -> u64 {
        self.0.acked.load(Ordering::Relaxed)
    }
    /// Requests from nodes (not counting keepalives and ACKs).
    pub fn upstream_requests(&self) -> u64 {
        self.0.upstream.load(Ordering::Relaxed)
    }
    /// Requests refused by node isolation or as malformed.
    pub fn refused_requests(&self) -> u64 {
        self.0.refused.load(Ordering::Relaxed)
    }
    /// Versions of Devices and DeviceModels refused by the device checks (each counted once).
    pub fn refused_devices(&self) -> u64 {
        self.0.refused_devices.load(Ordering::Relaxed)
    }
    /// Cluster writes that failed.
    pub fn write_errors(&self) -> u64 {
        self.0.write_errors.load(Ordering::Relaxed)
    }
    /// Times a node was marked unreachable.
    pub fn marked_unreachable(&self) -> u64 {
        self.0.marked_unreachable.load(Ordering::Relaxed)
    }
}

/// The cloud controllers over one event stream and one [`ClusterWriter`]: downstream dispatch,
/// upstream requests with node isolation, device status, node lifecycle.
///
/// ```no_run
/// use kubeedge_cloud::{CloudConfig, CloudController, ManifestConfig, ManifestSource};
/// use kubeedge_hub::{CloudHub, CloudHubConfig, DeliveryConfig, ReliableCloud};
/// use tokio_util::sync::CancellationToken;
/// # async fn demo(tls: std::sync::Arc<rustls::ServerConfig>) -> kubeedge_cloud::Result<()> {
/// let shutdown = CancellationToken::new();
/// let (hub, raw, raw_events) =
///     CloudHub::bind(CloudHubConfig::new("0.0.0.0:10000".parse().unwrap(), tls)).await?;
/// let (reliable, cloud, delivery) = ReliableCloud::new(raw, raw_events, DeliveryConfig::default());
/// let (source, writer) = ManifestSource::open(ManifestConfig::new("manifests", "status"))?;
/// let (objects_tx, objects) = tokio::sync::mpsc::channel(1024);
/// tokio::spawn(hub.run(shutdown.clone()));
/// tokio::spawn(reliable.run(shutdown.clone()));
/// tokio::spawn(source.run(objects_tx, shutdown.clone()));
/// let controller = CloudController::new(CloudConfig::default(), writer, cloud, delivery, objects);
/// controller.run(shutdown).await
/// # }
/// ```
pub struct CloudController<W: ClusterWriter> {
    config: CloudConfig,
    writer: W,
    cloud: ReliableCloudHandle,
    delivery: mpsc::Receiver<DeliveryEvent>,
    objects: mpsc::Receiver<ObjectEvent>,
    metrics: CloudMetrics,
}

impl<W: ClusterWriter> std::fmt::Debug for CloudController<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudController")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<W: ClusterWriter> CloudController<W> {
    /// A controller reading node traffic from `delivery` (a [`kubeedge_hub::ReliableCloud`]'s
    /// events), sending through `cloud`, fed by `objects` (a source's events) and writing
    /// through `writer`.
    pub fn new(
        config: CloudConfig,
        writer: W,
        cloud: ReliableCloudHandle,
        delivery: mpsc::Receiver<DeliveryEvent>,
        objects: mpsc::Receiver<ObjectEvent>,
    ) -> Self {
        Self {
            config,
            writer,
            cloud,
            delivery,
            objects,
            metrics: CloudMetrics::default(),
        }
    }

    /// Counts into `metrics` (made before the controller, to be read from its start).
    pub fn with_metrics(mut self, metrics: CloudMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The controller's counters.
    pub fn metrics(&self) -> CloudMetrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` (or until the transport stops).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut view = Downstream::new(self.config.inventory_grace)
            .with_device_limits(self.config.device_limits.clone());
        let mut refusals = Refusals::start(self.writer.clone(), self.metrics.clone());
        let mut links = Links {
            senders: HashMap::new(),
            recorded: HashMap::new(),
            record_io: Arc::new(tokio::sync::Semaphore::new(self.config.record_io.max(1))),
            workers: HashMap::new(),
        };
        let (records_tx, mut records_rx) =
            mpsc::channel::<(String, Result<Option<String>, ApiError>)>(1024);
        let mut marked = HashSet::new();
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut objects_open = true;
        let grace_secs = i64::try_from(self.config.node_monitor_grace.as_secs()).unwrap_or(40);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = self.objects.recv(), if objects_open => match event {
                    Some(event) => {
                        let out = view.apply(event);
                        refusals.report(view.take_rejections());
                        self.dispatch(&view, &mut links, out);
                        self.metrics.0.objects.store(view.object_count() as u64, Ordering::Relaxed);
                    }
                    None => {
                        tracing::warn!("the object source stopped; serving nodes from the last view");
                        objects_open = false;
                    }
                },
                event = self.delivery.recv() => {
                    let Some(event) = event else { return Err(crate::Error::Stopped) };
                    match event {
                        DeliveryEvent::Connected { node } => {
                            tracing::info!(node, "edge node connected");
                            view.connected(&node, Instant::now());
                        }
                        DeliveryEvent::Disconnected { node, reason } => {
                            tracing::info!(node, ?reason, "edge node disconnected");
                            view.disconnected(&node);
                            links.senders.remove(&node);
                            links.workers.remove(&node);
                            links.recorded.remove(&node);
                        }
                        DeliveryEvent::Delivered { .. } => {
                            self.metrics.0.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        DeliveryEvent::Message { node, message } => {
                            self.upstream(&mut view, &mut links, node, message).await;
                        }
                    }
                    self.metrics.0.connected.store(view.session_count() as u64, Ordering::Relaxed);
                }
                Some((node, loaded)) = records_rx.recv() => {
                    if !view.is_connected(&node) {
                        continue;
                    }
                    let record = match loaded {
                        Ok(text) => SentRecord::parse(text.as_deref().unwrap_or("")),
                        Err(err) => {
                            tracing::warn!(node, %err, "cannot read the node's sent record; sending its full set (deletes it missed are not known)");
                            SentRecord::default()
                        }
                    };
                    tracing::info!(node, objects = record.len(), "no inventory from the node: bringing it from its sent record");
                    let out = if record.is_empty() {
                        view.full_set(&node)
                    } else {
                        view.inventory(&node, &record.to_inventory())
                    };
                    links.recorded.insert(node.clone(), Some(record));
                    links.senders.remove(&node);
                    self.dispatch(&view, &mut links, out);
                }
                _ = ticker.tick() => {
                    let now = Instant::now();
                    if self.config.sent_records {
                        for node in view.expire(now) {
                            let (writer, tx) = (self.writer.clone(), records_tx.clone());
                            let io = Arc::clone(&links.record_io);
                            tokio::spawn(async move {
                                let _permit = io.acquire().await;
                                let loaded = writer.load_sent_record(&node).await;
                                let _ = tx.send((node, loaded)).await;
                            });
                        }
                    }
                    let out = view.tick(now);
                    self.dispatch(&view, &mut links, out);
                    let now_secs = now_millis() / 1000;
                    for (name, node) in lapsed_nodes(&view, now_secs, grace_secs, &mut marked) {
                        tracing::warn!(node = name, "node lease lapsed: marking the node unreachable");
                        self.metrics.0.marked_unreachable.fetch_add(1, Ordering::Relaxed);
                        let patch = crate::lifecycle::unreachable_patch(&node, &rfc3339_utc(now_millis(), false));
                        let writer = self.writer.clone();
                        let metrics = self.metrics.clone();
                        tokio::spawn(async move {
                            if let Err(err) = writer.patch_node_status(&name, patch).await {
                                metrics.0.write_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(node = name, %err, "marking the node unreachable failed");
                            }
                        });
                    }
                }
            }
        }
    }

    async fn upstream(
        &self,
        view: &mut Downstream,
        links: &mut Links,
        node: String,
        message: Message,
    ) {
        if message.is_empty_shutdown() {
            return;
        }
        self.metrics.0.upstream.fetch_add(1, Ordering::Relaxed);
        match decide(&node, &message, view) {
            Decision::Inventory(inventory) => {
                tracing::debug!(node, objects = inventory.objects.len(), "inventory");
                let out = view.inventory(&node, &inventory);
                // The node keeps its own inventory: nothing to record for it.
                if links.recorded.remove(&node).is_some() {
                    links.senders.remove(&node);
                }
                self.dispatch(view, links, out);
            }
            Decision::Reply(reply) => self.reply(&node, reply).await,
            Decision::Refuse(reply) => {
                self.metrics.0.refused.fetch_add(1, Ordering::Relaxed);
                self.reply(&node, reply).await;
            }
            Decision::Write(action) => {
                let worker = links
                    .workers
                    .entry(node.clone())
                    .or_insert_with(|| self.spawn_worker(node.clone()));
                if let Err(mpsc::error::SendError(job)) = worker.send((message, action)) {
                    // The worker ended (its task panicked or was dropped): start another.
                    let worker = self.spawn_worker(node.clone());
                    let _ = worker.send(job);
                    links.workers.insert(node, worker);
                }
            }
            Decision::Ignore(why) => tracing::trace!(node, why, "ignored"),
        }
    }

    async fn reply(&self, node: &str, reply: Message) {
        if let Err(err) = self.cloud.send(node, reply).await {
            tracing::debug!(node, %err, "reply not sent");
        }
    }

    fn spawn_worker(&self, node: String) -> mpsc::UnboundedSender<(Message, Action)> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Message, Action)>();
        let writer = self.writer.clone();
        let cloud = self.cloud.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            // The refusal last logged per resource: a write refused again for the same
            // reason (a lease every 10 s) is logged once, until it succeeds or the reason
            // changes.
            let mut refused: HashMap<String, String> = HashMap::new();
            while let Some((request, action)) = rx.recv().await {
                let result = perform(&writer, &action).await;
                let resource = &request.route.resource;
                match &result {
                    Err(err) => {
                        metrics.0.write_errors.fetch_add(1, Ordering::Relaxed);
                        let reason = err.to_string();
                        if refused.get(resource) != Some(&reason) {
                            tracing::warn!(node, %resource, %err, "the API server refused a write for the node (logged once until it changes)");
                            refused.insert(resource.clone(), reason);
                        } else {
                            tracing::debug!(node, %resource, %err, "write refused again");
                        }
                    }
                    Ok(_) => {
                        if refused.remove(resource).is_some() {
                            tracing::info!(node, %resource, "the write the API server refused succeeds now");
                        }
                    }
                }
                let reply = write_reply(&request, &action, result);
                if cloud.send(&node, reply).await.is_err() {
                    return;
                }
            }
        });
        tx
    }

    fn dispatch(&self, view: &Downstream, links: &mut Links, out: Vec<Outgoing>) {
        for Outgoing { node, message } in out {
            self.metrics.0.downstream.fetch_add(1, Ordering::Relaxed);
            let message = match links.senders.get(&node) {
                Some(sender) => match sender.queue.push(&node, message) {
                    Pushed::Queued | Pushed::Replaced | Pushed::Dropped => continue,
                    // The sender ended (the transport stopped): start another.
                    Pushed::Closed(message) => *message,
                },
                None => message,
            };
            let record = links.recorded.get_mut(&node).map(|r| {
                let node_uid = view
                    .get(&ObjectKey::new(Kind::Node, "", node.as_str()))
                    .map(|n| n.uid().to_owned());
                RecordKeeper {
                    record: r.take().unwrap_or_default(),
                    writer: self.writer.clone(),
                    node_uid,
                    io: Arc::clone(&links.record_io),
                }
            });
            let sender = spawn_sender(self.cloud.clone(), node.clone(), record);
            sender.queue.push(&node, message);
            links.senders.insert(node, sender);
        }
    }
}

/// Reports refused Devices and DeviceModels: a WARN log and a Warning Event each (written by
/// one task, in order, from a bounded queue).
struct Refusals {
    events: mpsc::Sender<(String, serde_json::Value)>,
    metrics: CloudMetrics,
    /// Events dropped since the last one queued (the queue was full).
    dropped: u64,
}

impl Refusals {
    fn start<W: ClusterWriter>(writer: W, metrics: CloudMetrics) -> Self {
        let (events, mut rx) = mpsc::channel::<(String, serde_json::Value)>(EVENT_QUEUE);
        let errors = metrics.clone();
        tokio::spawn(async move {
            // The last failure logged: the same one again is not.
            let mut failing: Option<String> = None;
            while let Some((namespace, event)) = rx.recv().await {
                match writer.record_event(&namespace, event).await {
                    Ok(_) => {
                        if failing.take().is_some() {
                            tracing::info!("events about refused devices are written again");
                        }
                    }
                    Err(err) => {
                        errors.0.write_errors.fetch_add(1, Ordering::Relaxed);
                        let reason = err.to_string();
                        if failing.as_ref() != Some(&reason) {
                            tracing::warn!(%err, "cannot write the event about a refused device (logged once until it changes)");
                            failing = Some(reason);
                        }
                    }
                }
            }
        });
        Self {
            events,
            metrics,
            dropped: 0,
        }
    }

    fn report(&mut self, rejections: Vec<Rejection>) {
        if rejections.is_empty() {
            return;
        }
        let now = rfc3339_utc(now_millis(), false);
        for rejection in rejections {
            self.metrics
                .0
                .refused_devices
                .fetch_add(1, Ordering::Relaxed);
            let object = &rejection.object;
            tracing::warn!(
                object = %object.key(),
                uid = object.uid(),
                resource_version = object.resource_version(),
                problems = %rejection.problems.summary(MAX_EVENT_MESSAGE),
                "refused: not sent to nodes (what they hold of it stays as it was)"
            );
            let event = rejection_event(&rejection, &now);
            match self.events.try_send((object.namespace().to_owned(), event)) {
                Ok(()) => {
                    if self.dropped > 0 {
                        tracing::warn!(
                            dropped = self.dropped,
                            "events about refused devices were dropped (the queue was full)"
                        );
                        self.dropped = 0;
                    }
                }
                Err(_) => {
                    if self.dropped == 0 {
                        tracing::warn!(
                            queue = EVENT_QUEUE,
                            "too many events about refused devices: dropping some (the WARN logs above list them all)"
                        );
                    }
                    self.dropped += 1;
                }
            }
        }
    }
}

/// A node's sent record and where it is stored.
struct RecordKeeper<W> {
    record: SentRecord,
    writer: W,
    node_uid: Option<String>,
    io: Arc<tokio::sync::Semaphore>,
}

impl<W: ClusterWriter> RecordKeeper<W> {
    async fn store(&self, node: &str) {
        let _permit = self.io.acquire().await;
        if let Err(err) = self
            .writer
            .store_sent_record(node, self.node_uid.as_deref(), self.record.render())
            .await
        {
            tracing::warn!(node, %err, "cannot store the node's sent record; a replica that serves it next may not know what it holds");
        }
    }
}

/// A task that hands one node's messages to the reliable layer in order, waiting for room in
/// the node's hub queue; meanwhile newer versions of waiting objects replace older ones (see
/// [`NodeQueue`]). With a record, each batch that gives the node a new object is recorded
/// first, and deletes after.
fn spawn_sender<W: ClusterWriter>(
    cloud: ReliableCloudHandle,
    node: String,
    mut record: Option<RecordKeeper<W>>,
) -> NodeSender {
    let queue = Arc::new(NodeQueue::default());
    let taken = Arc::clone(&queue);
    tokio::spawn(async move {
        while let Some(mut batch) = taken.pop_batch(SEND_BATCH).await {
            let mut removed = false;
            if let Some(keeper) = &mut record {
                let mut added = false;
                for message in &batch {
                    let noted = keeper.record.note(message);
                    added |= noted.added;
                    removed |= noted.removed;
                }
                if added {
                    // Boxed: the write's future would size every idle node's task.
                    Box::pin(keeper.store(&node)).await;
                    removed = false;
                }
            }
            for message in batch.drain(..) {
                if let Err(err) = cloud.send(&node, message).await {
                    tracing::debug!(node, %err, "transport stopped");
                    return;
                }
            }
            if let Some(keeper) = &record
                && removed
            {
                Box::pin(keeper.store(&node)).await;
            }
        }
    });
    NodeSender { queue }
}

/// Performs an authorised write.
async fn perform<W: ClusterWriter>(
    writer: &W,
    action: &Action,
) -> Result<serde_json::Value, ApiError> {
    match action {
        Action::CreateNode { node } => writer.create_node(node.clone()).await,
        Action::PatchNodeStatus { name, patch } => {
            writer.patch_node_status(name, patch.clone()).await
        }
        Action::CreateLease { lease } => {
            writer
                .create_lease(NODE_LEASE_NAMESPACE, lease.clone())
                .await
        }
        Action::UpdateLease { name, lease } => {
            writer
                .update_lease(NODE_LEASE_NAMESPACE, name, lease.clone())
                .await
        }
        Action::PatchPodStatus {
            namespace,
            name,
            patch,
        } => {
            writer
                .patch_pod_status(namespace, name, patch.clone())
                .await
        }
        Action::DeletePod {
            namespace,
            name,
            options,
        } => writer.delete_pod(namespace, name, options.clone()).await,
        Action::RecordEvent { namespace, event } => {
            writer.record_event(namespace, event.clone()).await
        }
        Action::CreateToken {
            namespace,
            service_account,
            request,
        } => {
            writer
                .create_token(namespace, service_account, request.clone())
                .await
        }
        Action::TwinReported {
            device,
            device_uid,
            twins,
        } => {
            let current = writer
                .get_device_status(&device.namespace, &device.name)
                .await?
                .unwrap_or_else(|| json!({}));
            let merged = merge_twins(&current, twins);
            writer
                .apply_device_status(
                    &device.namespace,
                    &device.name,
                    device_uid,
                    json!({ "twins": merged }),
                )
                .await
        }
        Action::DeviceState {
            device,
            device_uid,
            state,
            last_online,
        } => {
            let mut status = json!({ "state": state });
            if !last_online.is_empty() {
                status["lastOnlineTime"] = json!(last_online);
            }
            writer
                .apply_device_status(&device.namespace, &device.name, device_uid, status)
                .await
        }
    }
}
