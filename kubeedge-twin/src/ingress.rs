//! The bounded, fair queue that device events wait in before the twin engine takes them.
//!
//! MQTT and DMI both push events here, and never block: the MQTT event loop must keep reading
//! (or the broker stalls every topic behind one slow one). Events are queued per *flow* (a
//! device, a node's membership topics, or one upload topic), each flow holds at most
//! [`IngressConfig::per_flow`] events, and the consumer takes flows round-robin. A device that
//! floods its `twin/update` topic therefore fills only its own queue (the excess is dropped and
//! counted); every other device still gets its turn on the next round.
//!
//! ```
//! use bytes::Bytes;
//! use kubeedge_twin::ingress::{Ingress, IngressConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (tx, mut rx) = Ingress::new(IngressConfig { per_flow: 2, max_flows: 8 });
//! for i in 0..5 {
//!     let _ = tx.push("$hw/events/device/default/noisy/twin/update", Bytes::from(vec![i]));
//! }
//! tx.push("$hw/events/device/default/quiet/twin/update", Bytes::from_static(b"q")).unwrap();
//! // Round-robin: the quiet device comes second, not after the flood.
//! assert_eq!(rx.recv().await.unwrap().payload[..], [0]);
//! assert_eq!(&rx.recv().await.unwrap().payload[..], b"q");
//! assert_eq!(tx.dropped(), 3);
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::{Error, Result};

/// One MQTT publish (or an event injected as if it were one, like DMI reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
}

impl Publication {
    /// A publication of `payload` on `topic`.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
        }
    }
}

/// Bounds of an [`Ingress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngressConfig {
    /// Events one flow may hold before newer ones are dropped.
    pub per_flow: usize,
    /// Flows with queued events at once; events of further flows are dropped.
    pub max_flows: usize,
}

impl Default for IngressConfig {
    /// 128 events per flow, 4,096 flows: at most 512 Ki events of at most 1 MiB each in the
    /// worst case; a few KiB in practice.
    fn default() -> Self {
        Self {
            per_flow: 128,
            max_flows: 4096,
        }
    }
}

#[derive(Default)]
struct Queues {
    flows: HashMap<String, VecDeque<Publication>>,
    /// Flows with queued events, in service order.
    ready: VecDeque<String>,
    closed: bool,
}

struct Shared {
    config: IngressConfig,
    queues: Mutex<Queues>,
    notify: Notify,
    dropped: AtomicU64,
    senders: AtomicU64,
}

/// The producer side: cheap to clone; pushing never waits.
pub struct Ingress {
    shared: Arc<Shared>,
}

/// The consumer side: yields events flow by flow, round-robin.
pub struct IngressReceiver {
    shared: Arc<Shared>,
}

impl Ingress {
    /// A new queue.
    pub fn new(config: IngressConfig) -> (Ingress, IngressReceiver) {
        let shared = Arc::new(Shared {
            config: IngressConfig {
                per_flow: config.per_flow.max(1),
                max_flows: config.max_flows.max(1),
            },
            queues: Mutex::new(Queues::default()),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            senders: AtomicU64::new(1),
        });
        (
            Ingress {
                shared: Arc::clone(&shared),
            },
            IngressReceiver { shared },
        )
    }

    /// Queues `payload` on `topic`. Fails with [`Error::QueueFull`] (and counts the drop) when
    /// the topic's flow is full or too many flows are waiting, and with [`Error::Closed`] when
    /// the receiver is gone.
    pub fn push(&self, topic: impl Into<String>, payload: Bytes) -> Result<()> {
        self.push_publication(Publication::new(topic, payload))
    }

    /// Queues a publication; see [`Ingress::push`].
    pub fn push_publication(&self, publication: Publication) -> Result<()> {
        let flow = flow_of(&publication.topic).to_owned();
        let config = self.shared.config;
        let mut queues = self.shared.queues.lock().map_err(|_| Error::Closed)?;
        if queues.closed {
            return Err(Error::Closed);
        }
        let known = queues.flows.contains_key(&flow);
        if !known && queues.flows.len() >= config.max_flows {
            drop(queues);
            return Err(self.drop_one(&publication.topic));
        }
        let queue = queues.flows.entry(flow.clone()).or_default();
        if queue.len() >= config.per_flow {
            drop(queues);
            return Err(self.drop_one(&publication.topic));
        }
        let was_empty = queue.is_empty();
        queue.push_back(publication);
        if was_empty {
            queues.ready.push_back(flow);
        }
        drop(queues);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// How many events were dropped because their flow (or the queue) was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn drop_one(&self, topic: &str) -> Error {
        let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(topic, dropped = n, "ingress queue full: event dropped");
        }
        Error::QueueFull("device event")
    }
}

impl Clone for Ingress {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last producer is gone: wake the receiver so it can see the end.
            self.shared.notify.notify_one();
        }
    }
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("config", &self.shared.config)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl IngressReceiver {
    /// The next event, taking flows round-robin; `None` once every [`Ingress`] is dropped and
    /// the queue is empty.
    pub async fn recv(&mut self) -> Option<Publication> {
        let shared = Arc::clone(&self.shared);
        loop {
            let notified = shared.notify.notified();
            if let Some(next) = self.try_recv() {
                return Some(next);
            }
            if shared.senders.load(Ordering::Acquire) == 0 {
                return self.try_recv();
            }
            notified.await;
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Publication> {
        let mut queues = self.shared.queues.lock().ok()?;
        let flow = queues.ready.pop_front()?;
        let queue = queues.flows.get_mut(&flow)?;
        let next = queue.pop_front();
        if queue.is_empty() {
            queues.flows.remove(&flow);
        } else {
            queues.ready.push_back(flow);
        }
        next
    }

    /// How many events are queued.
    pub fn len(&self) -> usize {
        self.shared
            .queues
            .lock()
            .map(|q| q.flows.values().map(VecDeque::len).sum())
            .unwrap_or(0)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for IngressReceiver {
    fn drop(&mut self) {
        if let Ok(mut queues) = self.shared.queues.lock() {
            queues.closed = true;
            queues.flows.clear();
            queues.ready.clear();
        }
    }
}

/// The flow a topic belongs to: `$hw/events/device/<ns>/<name>` for device topics,
/// `$hw/events/node/<node>` for node topics, the topic itself otherwise.
fn flow_of(topic: &str) -> &str {
    let levels = if topic.starts_with("$hw/events/device/") {
        5
    } else if topic.starts_with("$hw/events/node/") {
        4
    } else {
        return topic;
    };
    match topic.match_indices('/').nth(levels - 1) {
        Some((i, _)) => &topic[..i],
        None => topic,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows() {
        assert_eq!(
            flow_of("$hw/events/device/default/t1/twin/update"),
            "$hw/events/device/default/t1"
        );
        assert_eq!(
            flow_of("$hw/events/node/edge-1/membership/get"),
            "$hw/events/node/edge-1"
        );
        assert_eq!(flow_of("a/user/b"), "a/user/b");
        assert_eq!(flow_of("$hw/events/device/x"), "$hw/events/device/x");
    }

    #[tokio::test]
    async fn round_robin_and_bounds() {
        let (tx, mut rx) = Ingress::new(IngressConfig {
            per_flow: 3,
            max_flows: 2,
        });
        let a = "$hw/events/device/ns/a/twin/update";
        let b = "$hw/events/device/ns/b/twin/update";
        for i in 0..10u8 {
            let _ = tx.push(a, Bytes::from(vec![i]));
        }
        tx.push(b, Bytes::from_static(b"b0")).unwrap();
        tx.push(b, Bytes::from_static(b"b1")).unwrap();
        assert!(matches!(
            tx.push("third/flow", Bytes::new()),
            Err(Error::QueueFull(_))
        ));
        assert_eq!(tx.dropped(), 8);
        let got: Vec<Bytes> = std::iter::from_fn(|| rx.try_recv().map(|p| p.payload)).collect();
        assert_eq!(
            got,
            [&[0u8][..], b"b0", &[1], b"b1", &[2]]
                .into_iter()
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>()
        );
        drop(tx);
        assert!(rx.recv().await.is_none());
    }

    #[test]
    fn closed_receiver_refuses() {
        let (tx, rx) = Ingress::new(IngressConfig::default());
        drop(rx);
        assert!(matches!(tx.push("t", Bytes::new()), Err(Error::Closed)));
    }
}
