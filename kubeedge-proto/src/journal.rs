//! The contract between a transport and the durable outbox that feeds it.
//!
//! Edge-to-cloud messages must survive disconnects and restarts (KubeEdge #6615 drops them).
//! The hub does not know how they are stored: it appends each message before sending it,
//! confirms it when the cloud's reply arrives, and replays what is pending after a reconnect.
//! `kubeedge-store`'s SQLite outbox implements this trait durably; [`MemoryJournal`] keeps the
//! same contract in memory for tests and for callers that accept losing messages on restart.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Mutex;

use crate::Message;

/// A pending message and its position in the journal.
#[derive(Clone, Debug, PartialEq)]
pub struct Journaled {
    /// Position, increasing in append order.
    pub seq: u64,
    /// The message as appended.
    pub message: Message,
}

/// An ordered journal of messages waiting for the other side's reply.
///
/// Contract:
/// - `append` returns only when the message is stored as durably as the implementation
///   promises; appending an id already pending changes nothing; with a coalescing key, a pending
///   message with the same key is replaced (only the latest matters);
/// - `confirm` removes the message whose id the reply names in `parent_msg_id`, and says whether
///   one was pending (a repeated reply removes nothing);
/// - `pending` lists what is left after position `after`, in append order.
pub trait MessageJournal: Send + Sync + 'static {
    /// The implementation's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Appends `message` before it is sent.
    fn append(
        &self,
        message: &Message,
        coalesce_key: Option<String>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Removes the message with id `msg_id` (the reply's `parent_msg_id`).
    fn confirm(&self, msg_id: &str) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// Up to `limit` pending messages after position `after` (0 to start), in append order.
    fn pending(
        &self,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Journaled>, Self::Error>> + Send;
}

/// The error of [`MemoryJournal`]: it is full.
#[derive(Debug, thiserror::Error)]
#[error("the in-memory journal is full ({capacity} messages)")]
pub struct JournalFull {
    /// Its capacity.
    pub capacity: usize,
}

/// A [`MessageJournal`] in memory: the contract without durability, bounded.
///
/// ```
/// use kubeedge_proto::journal::{MemoryJournal, MessageJournal};
/// use kubeedge_proto::{Content, Message};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let journal = MemoryJournal::new(100);
/// let msg = Message::new("edged", "meta", "patch", "default/podpatch/p", Content::string("{}"));
/// journal.append(&msg, Some("podpatch/p".into())).await.unwrap();
/// assert_eq!(journal.pending(0, 10).await.unwrap().len(), 1);
/// assert!(journal.confirm(&msg.header.id).await.unwrap());
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryJournal {
    capacity: usize,
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    next_seq: u64,
    by_seq: BTreeMap<u64, (Message, Option<String>)>,
    seq_of_id: HashMap<String, u64>,
    seq_of_key: HashMap<String, u64>,
}

impl MemoryJournal {
    /// A journal holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(MemoryState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A poisoned lock only means another caller panicked; the maps stay consistent because
        // every update below completes before it can panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MemoryState {
    fn remove(&mut self, seq: u64) -> Option<Message> {
        let (message, key) = self.by_seq.remove(&seq)?;
        self.seq_of_id.remove(&message.header.id);
        if let Some(key) = key {
            self.seq_of_key.remove(&key);
        }
        Some(message)
    }
}

impl MessageJournal for MemoryJournal {
    type Error = JournalFull;

    async fn append(
        &self,
        message: &Message,
        coalesce_key: Option<String>,
    ) -> Result<(), JournalFull> {
        let mut state = self.lock();
        if state.seq_of_id.contains_key(&message.header.id) {
            return Ok(());
        }
        let replaced = coalesce_key
            .as_ref()
            .and_then(|k| state.seq_of_key.get(k).copied());
        let len_after = state.by_seq.len() - usize::from(replaced.is_some()) + 1;
        if len_after > self.capacity {
            return Err(JournalFull {
                capacity: self.capacity,
            });
        }
        if let Some(seq) = replaced {
            state.remove(seq);
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        state.seq_of_id.insert(message.header.id.clone(), seq);
        if let Some(key) = &coalesce_key {
            state.seq_of_key.insert(key.clone(), seq);
        }
        state.by_seq.insert(seq, (message.clone(), coalesce_key));
        Ok(())
    }

    async fn confirm(&self, msg_id: &str) -> Result<bool, JournalFull> {
        let mut state = self.lock();
        let Some(seq) = state.seq_of_id.get(msg_id).copied() else {
            return Ok(false);
        };
        Ok(state.remove(seq).is_some())
    }

    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<Journaled>, JournalFull> {
        let state = self.lock();
        Ok(state
            .by_seq
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(seq, (message, _))| Journaled {
                seq: *seq,
                message: message.clone(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Content;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn msg(i: usize) -> Message {
        Message::new(
            "edged",
            "meta",
            "insert",
            format!("default/event/e{i}"),
            Content::null(),
        )
    }

    #[test]
    fn keeps_order_coalesces_and_bounds() {
        block_on(async {
            let j = MemoryJournal::new(3);
            let (a, b, c, d) = (msg(1), msg(2), msg(3), msg(4));
            j.append(&a, None).await.unwrap();
            j.append(&b, Some("k".into())).await.unwrap();
            j.append(&a, None).await.unwrap(); // already pending: no change
            j.append(&c, Some("k".into())).await.unwrap(); // replaces b
            j.append(&d, None).await.unwrap();
            let ids: Vec<_> = j
                .pending(0, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.message.header.id)
                .collect();
            assert_eq!(
                ids,
                [
                    a.header.id.clone(),
                    c.header.id.clone(),
                    d.header.id.clone()
                ]
            );
            assert!(j.append(&msg(5), None).await.is_err());
            // Coalescing into a full journal still fits.
            j.append(&msg(6), Some("k".into())).await.unwrap();
            assert!(!j.confirm(&b.header.id).await.unwrap());
            assert!(j.confirm(&a.header.id).await.unwrap());
            let rest = j.pending(0, 10).await.unwrap();
            assert_eq!(rest.len(), 2);
            assert_eq!(j.pending(rest[0].seq, 10).await.unwrap().len(), 1);
        });
    }
}
