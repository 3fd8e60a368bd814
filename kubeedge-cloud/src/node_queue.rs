//! The queue between the controller and one node's sender task: bounded by what the node
//! holds, not by how often objects change.
//!
//! The controller never waits for a node (one slow node must not hold up the others), so its
//! messages wait here while the node's hub queue is full. A message about an object that
//! already waits here (same [`object_key`], the object's uid, as the hub's own queue keys it)
//! replaces the waiting one in its place in line: the node only needs the newest version. A
//! node's queue therefore holds at most one message per object it is sent, plus messages about
//! no object, of which at most [`MAX_UNKEYED`] wait (more are dropped with a WARN: such
//! messages are sent once and never acknowledged anyway).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use kubeedge_hub::object_key;
use kubeedge_proto::Message;
use tokio::sync::Notify;

/// Messages about no object waiting per node, at most.
pub(crate) const MAX_UNKEYED: usize = 4096;

/// What [`NodeQueue::push`] did.
#[derive(Debug, PartialEq)]
pub(crate) enum Pushed {
    /// Queued at the end.
    Queued,
    /// Took the place of an older message about the same object.
    Replaced,
    /// Dropped: too many messages about no object wait.
    Dropped,
    /// Not taken: the queue is closed (the message is given back).
    Closed(Box<Message>),
}

#[derive(Default)]
struct State {
    /// Sequence numbers in line.
    order: VecDeque<u64>,
    /// The message of each sequence number, and its key.
    entries: HashMap<u64, (Option<String>, Message)>,
    /// The sequence number of each key in line.
    seq_of_key: HashMap<String, u64>,
    next_seq: u64,
    unkeyed: usize,
    /// Pushes dropped since the last WARN.
    dropped: u64,
    closed: bool,
}

/// One node's coalescing queue; see the [module docs](self).
#[derive(Default)]
pub(crate) struct NodeQueue {
    state: Mutex<State>,
    ready: Notify,
}

impl NodeQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `message` (or replaces the waiting message about its object).
    pub(crate) fn push(&self, node: &str, message: Message) -> Pushed {
        let mut state = self.state();
        if state.closed {
            return Pushed::Closed(Box::new(message));
        }
        let key = object_key(&message);
        if let Some(k) = &key
            && let Some(seq) = state.seq_of_key.get(k).copied()
            && let Some(entry) = state.entries.get_mut(&seq)
        {
            entry.1 = message;
            return Pushed::Replaced;
        }
        if key.is_none() {
            if state.unkeyed >= MAX_UNKEYED {
                state.dropped += 1;
                if state.dropped == 1 {
                    tracing::warn!(
                        node,
                        limit = MAX_UNKEYED,
                        "messages about no object are dropped: the node takes them slower than they come"
                    );
                }
                return Pushed::Dropped;
            }
            state.unkeyed += 1;
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        if let Some(k) = &key {
            state.seq_of_key.insert(k.clone(), seq);
        }
        state.entries.insert(seq, (key, message));
        state.order.push_back(seq);
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Waits for messages and takes up to `max` of them, in line; `None` once the queue is
    /// closed and empty.
    pub(crate) async fn pop_batch(&self, max: usize) -> Option<Vec<Message>> {
        loop {
            {
                let mut state = self.state();
                let mut batch = Vec::new();
                while batch.len() < max {
                    let Some(seq) = state.order.pop_front() else {
                        break;
                    };
                    let Some((key, message)) = state.entries.remove(&seq) else {
                        continue;
                    };
                    match &key {
                        Some(k) => {
                            state.seq_of_key.remove(k);
                        }
                        None => state.unkeyed -= 1,
                    }
                    batch.push(message);
                }
                if !batch.is_empty() {
                    state.dropped = 0;
                    if state.entries.is_empty() {
                        // Emptied maps keep their capacity; most nodes' queues are empty most
                        // of the time.
                        state.order = VecDeque::new();
                        state.entries = HashMap::new();
                        state.seq_of_key = HashMap::new();
                    }
                    return Some(batch);
                }
                if state.closed {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the check
            // above and this wait is not missed.
            self.ready.notified().await;
        }
    }

    /// Closes the queue: pushes are refused, and the sender ends once the queue is empty.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.ready.notify_one();
    }

    /// Messages waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state().order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeedge_proto::{Content, MessageRoute, Operation};

    fn about(uid: &str, rv: &str) -> Message {
        let mut message = Message::default();
        message.header.resource_version = rv.to_owned();
        message.route = MessageRoute {
            operation: Some(Operation::Update),
            resource: format!("default/pod/{uid}"),
            ..MessageRoute::default()
        };
        message.content = Content::json(&serde_json::json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid, "resourceVersion": rv}
        }))
        .unwrap();
        message
    }

    fn unkeyed() -> Message {
        Message::default()
    }

    #[tokio::test]
    async fn a_newer_version_takes_the_older_ones_place() {
        let queue = NodeQueue::default();
        assert_eq!(queue.push("n", about("a", "1")), Pushed::Queued);
        assert_eq!(queue.push("n", about("b", "1")), Pushed::Queued);
        for rv in 2..=1000 {
            assert_eq!(
                queue.push("n", about("a", &rv.to_string())),
                Pushed::Replaced
            );
        }
        assert_eq!(queue.len(), 2);
        let batch = queue.pop_batch(10).await.unwrap();
        let versions: Vec<_> = batch
            .iter()
            .map(|m| m.header.resource_version.as_str())
            .collect();
        assert_eq!(versions, ["1000", "1"]);
        // Once taken, a new version queues again.
        assert_eq!(queue.push("n", about("a", "1001")), Pushed::Queued);
    }

    #[tokio::test]
    async fn messages_about_no_object_are_bounded() {
        let queue = NodeQueue::default();
        for _ in 0..MAX_UNKEYED {
            assert_eq!(queue.push("n", unkeyed()), Pushed::Queued);
        }
        assert_eq!(queue.push("n", unkeyed()), Pushed::Dropped);
        // Objects still queue.
        assert_eq!(queue.push("n", about("a", "1")), Pushed::Queued);
        let batch = queue.pop_batch(MAX_UNKEYED + 1).await.unwrap();
        assert_eq!(batch.len(), MAX_UNKEYED + 1);
        assert_eq!(queue.push("n", unkeyed()), Pushed::Queued);
    }

    #[tokio::test]
    async fn close_ends_the_sender_after_what_waits() {
        let queue = std::sync::Arc::new(NodeQueue::default());
        queue.push("n", about("a", "1"));
        queue.close();
        assert!(matches!(
            queue.push("n", about("b", "1")),
            Pushed::Closed(_)
        ));
        assert_eq!(queue.pop_batch(10).await.unwrap().len(), 1);
        assert!(queue.pop_batch(10).await.is_none());
        // A waiting sender wakes on close.
        let waiting = std::sync::Arc::new(NodeQueue::default());
        let task = tokio::spawn({
            let waiting = std::sync::Arc::clone(&waiting);
            async move { waiting.pop_batch(10).await }
        });
        tokio::task::yield_now().await;
        waiting.close();
        assert!(task.await.unwrap().is_none());
    }
}
