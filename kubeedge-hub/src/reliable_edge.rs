//! Reliable edge-to-cloud delivery on top of the EdgeHub link layer.
//!
//! Messages that need the cloud's answer go through a [`MessageJournal`] (kubeedge-store's
//! SQLite outbox, durable across restarts): appended before they are sent, confirmed when a
//! cloud message names them in `parent_msg_id`. A sender task sends the oldest unanswered
//! journal entries, at most `window` at a time, in journal order; it starts again from the
//! oldest after every reconnect and every `resend_interval` without progress (KubeEdge re-sends
//! its twin messages every 60 s, but drops them while disconnected; we keep them). A request can also wait for its reply
//! ([`ReliableEdgeHandle::call`]). Cloud messages are de-duplicated by `msg_id` (a bounded
//! window) before the application sees them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeedge_proto::Message;
use kubeedge_proto::journal::MessageJournal;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::dedupe::{RecentIds, Sight};
use crate::{EdgeEvent, EdgeHubHandle, Error, LinkEnd, Result};

/// Settings for [`ReliableEdge`].
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// How often unanswered journaled messages are sent again while connected.
    pub resend_interval: Duration,
    /// How many journal positions past the oldest unanswered message may be on the link. Keep it
    /// at most half the cloud's reply cache ([`DeliveryConfig::reply_cache`](crate::DeliveryConfig),
    /// 64 by default): after a cut, re-sends arrive out of order, and the cloud answers a re-sent
    /// message from that cache only while fewer than two windows of answers went out since.
    pub window: usize,
    /// How many recent cloud message ids are remembered to drop duplicates.
    pub dedupe_window: usize,
    /// How many of the application's recent replies are kept to answer duplicates.
    pub reply_cache: usize,
    /// Events queued for the application.
    pub events_len: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            resend_interval: Duration::from_secs(60),
            window: 32,
            dedupe_window: 4096,
            reply_cache: 64,
            events_len: 1024,
        }
    }
}

/// What the edge application sees.
// Moved through a channel one at a time; boxing the message would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum UpstreamEvent {
    /// The link to the cloud is up (journaled messages are being replayed).
    Connected {
        /// What the cloud understands beyond KubeEdge's protocol.
        extensions: kubeedge_proto::extensions::Extensions,
    },
    /// The link is down; journaled messages wait.
    Disconnected {
        /// Why.
        reason: LinkEnd,
    },
    /// A message from the cloud, the first time its `msg_id` was seen (replies to
    /// [`ReliableEdgeHandle::call`] go to their caller instead).
    Message(Message),
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// Recent cloud message ids and the replies the application sent to them.
type Shared = Arc<Mutex<RecentIds>>;

/// Sends to the cloud reliably; cheap to clone.
pub struct ReliableEdgeHandle<J> {
    link: EdgeHubHandle,
    journal: Arc<J>,
    waiters: Waiters,
    recent: Shared,
    sender: Arc<SenderState>,
}

impl<J> Clone for ReliableEdgeHandle<J> {
    fn clone(&self) -> Self {
        Self {
            link: self.link.clone(),
            journal: Arc::clone(&self.journal),
            waiters: Arc::clone(&self.waiters),
            recent: Arc::clone(&self.recent),
            sender: Arc::clone(&self.sender),
        }
    }
}

impl<J> std::fmt::Debug for ReliableEdgeHandle<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableEdgeHandle").finish_non_exhaustive()
    }
}

impl<J: MessageJournal> ReliableEdgeHandle<J> {
    /// Journals `message` (durably, as the journal promises); the sender task sends it, and
    /// again until a cloud message names it in `parent_msg_id`. With a coalescing key, a pending
    /// message with the same key is replaced.
    pub async fn send_durable(&self, message: Message, coalesce_key: Option<String>) -> Result<()> {
        self.journal
            .append(&message, coalesce_key)
            .await
            .map_err(|e| Error::BadFrame(format!("journal: {e}")))?;
        self.sender.wake.notify_one();
        Ok(())
    }

    /// Sends `message` once, without journaling (events nobody answers), waiting for room in
    /// the link queue.
    ///
    /// A reply (a message with `parent_msg_id`, such as an ACK) never waits: it is handed to the
    /// link at once and remembered, so that if the cloud re-sends what it answers (the reply was
    /// lost) the reply goes again. Applications can therefore answer from their event loop.
    pub async fn send(&self, message: Message) -> Result<()> {
        if message.header.parent_id.is_empty() {
            return self.link.send(message).await;
        }
        lock_recent(&self.recent).remember_reply(&message);
        // A full queue drops it; the cloud's re-send brings it back from memory.
        let _ = self.link.try_send(message);
        Ok(())
    }

    /// Journals and sends `request`, then waits up to `timeout` for the cloud's reply (the
    /// message whose `parent_msg_id` is the request's id).
    pub async fn call(&self, request: Message, timeout: Duration) -> Result<Message> {
        let id = request.header.id.clone();
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id.clone(), tx);
        if let Err(e) = self.send_durable(request, None).await {
            lock(&self.waiters).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                lock(&self.waiters).remove(&id);
                Err(Error::ReplyTimeout)
            }
        }
    }

    /// Asks the sender task to look at the journal now (after the application changed it
    /// directly).
    pub fn replay(&self) {
        self.sender.wake.notify_one();
    }
}

/// The edge reliability layer: consumes an EdgeHub's events, confirms and replays the journal.
pub struct ReliableEdge<J> {
    link: EdgeHubHandle,
    raw: mpsc::Receiver<EdgeEvent>,
    journal: Arc<J>,
    waiters: Waiters,
    config: UpstreamConfig,
    sender: Arc<SenderState>,
    events: mpsc::Sender<UpstreamEvent>,
    recent: Shared,
}

/// Shared with the sender task: when to look at the journal, whether the link is up, and a
/// counter of (re)starts that sends the window again from the oldest entry.
#[derive(Default)]
struct SenderState {
    wake: tokio::sync::Notify,
    connected: std::sync::atomic::AtomicBool,
    restarts: std::sync::atomic::AtomicU64,
}

impl SenderState {
    fn restart(&self) {
        self.restarts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }
}

impl<J> std::fmt::Debug for ReliableEdge<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReliableEdge").finish_non_exhaustive()
    }
}

impl<J: MessageJournal> ReliableEdge<J> {
    /// Wraps an EdgeHub's handle and events with `journal`.
    pub fn new(
        link: EdgeHubHandle,
        raw: mpsc::Receiver<EdgeEvent>,
        journal: Arc<J>,
        config: UpstreamConfig,
    ) -> (Self, ReliableEdgeHandle<J>, mpsc::Receiver<UpstreamEvent>) {
        let waiters: Waiters = Arc::default();
        let recent: Shared = Arc::new(Mutex::new(RecentIds::new(
            config.dedupe_window,
            config.reply_cache,
        )));
        let sender: Arc<SenderState> = Arc::default();
        let (events, rx) = mpsc::channel(config.events_len.max(1));
        let handle = ReliableEdgeHandle {
            link: link.clone(),
            journal: Arc::clone(&journal),
            waiters: Arc::clone(&waiters),
            recent: Arc::clone(&recent),
            sender: Arc::clone(&sender),
        };
        let layer = Self {
            link,
            raw,
            journal,
            waiters,
            config,
            sender,
            events,
            recent,
        };
        (layer, handle, rx)
    }

    /// Runs until `shutdown` is cancelled or the EdgeHub's events end.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        use std::sync::atomic::Ordering;
        // The sender runs beside the event loop: it waits for room in the link queue, which only
        // drains while this loop keeps taking the link's events.
        let sender = tokio::spawn(send_journal(
            Arc::clone(&self.journal),
            self.link.clone(),
            Arc::clone(&self.sender),
            self.config.window.max(1),
            shutdown.child_token(),
        ));
        let mut resend = tokio::time::interval(self.config.resend_interval);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resend.tick().await;
        let result = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                event = self.raw.recv() => {
                    let Some(event) = event else { break Ok(()) };
                    let forward = match event {
                        EdgeEvent::Connected { extensions } => {
                            self.sender.connected.store(true, Ordering::SeqCst);
                            self.sender.restart();
                            resend.reset();
                            UpstreamEvent::Connected { extensions }
                        }
                        EdgeEvent::Disconnected { reason } => {
                            self.sender.connected.store(false, Ordering::SeqCst);
                            UpstreamEvent::Disconnected { reason }
                        }
                        EdgeEvent::Message(message) => match self.on_message(message).await {
                            Some(message) => UpstreamEvent::Message(message),
                            None => continue,
                        },
                    };
                    if self.events.send(forward).await.is_err() {
                        break Ok(());
                    }
                }
                // Unanswered for a while: send the window again from the oldest entry.
                _ = resend.tick() => self.sender.restart(),
            }
        };
        sender.abort();
        result
    }

    /// Confirms what the message answers and filters duplicates; returns what the application
    /// should see.
    async fn on_message(&mut self, message: Message) -> Option<Message> {
        let parent = message.header.parent_id.clone();
        if !parent.is_empty() {
            match self.journal.confirm(&parent).await {
                // The window moved: the sender may send the next entry.
                Ok(true) => self.sender.wake.notify_one(),
                Ok(false) => {}
                // The reply still reaches the application; the message may be sent once more.
                Err(e) => tracing::warn!(error = %e, parent = %parent, "journal confirm failed"),
            }
            if let Some(waiter) = lock(&self.waiters).remove(&parent) {
                let _ = waiter.send(message);
                return None;
            }
        }
        let sight = lock_recent(&self.recent).sight(&message);
        match sight {
            Sight::Deliver => Some(message),
            // A duplicate: the cloud did not get our reply; send that again, without waiting:
            // this loop must keep taking the link's events. If the queue is full the cloud
            // re-sends, and we answer then.
            Sight::Duplicate(reply) => {
                if let Some(reply) = reply {
                    let _ = self.link.try_send(reply);
                }
                None
            }
        }
    }
}

/// Sends the oldest unanswered journal entries, at most `window` at a time, in journal order.
/// Entries already sent since the last (re)start are not sent again until the next restart
/// (a reconnect, or `resend_interval` without progress).
async fn send_journal<J: MessageJournal>(
    journal: Arc<J>,
    link: EdgeHubHandle,
    state: Arc<SenderState>,
    window: usize,
    stop: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let mut restarts_seen = u64::MAX;
    let mut sent_upto = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = state.wake.notified() => {}
        }
        if !state.connected.load(Ordering::SeqCst) {
            continue;
        }
        let restarts = state.restarts.load(Ordering::SeqCst);
        if restarts != restarts_seen {
            restarts_seen = restarts;
            sent_upto = 0;
        }
        let oldest = match journal.pending(0, window).await {
            Ok(oldest) => oldest,
            Err(e) => {
                tracing::warn!(error = %e, "journal read failed; retrying at the next wake");
                continue;
            }
        };
        // The window spans journal positions, not just a count of entries: no entry goes out more
        // than `window` positions past the oldest unanswered one. So between two sends of an
        // unanswered entry the cloud sees at most `window` new journaled ids, and its duplicate
        // window keeps recognising it.
        let Some(base) = oldest.first().map(|e| e.seq) else {
            continue;
        };
        let limit = base.saturating_add(window as u64);
        let already_sent = sent_upto;
        for entry in oldest
            .into_iter()
            .filter(|e| e.seq > already_sent && e.seq < limit)
        {
            sent_upto = entry.seq;
            if link.send(entry.message).await.is_err() {
                return;
            }
        }
    }
}

fn lock_recent(recent: &Shared) -> std::sync::MutexGuard<'_, RecentIds> {
    recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock(waiters: &Waiters) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
    waiters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
