//! The durable outbox: edge-to-cloud messages kept until the cloud answers them.
//!
//! A message is appended before it is sent and removed when the cloud's reply (a message whose
//! `parent_msg_id` is its id) arrives, so nothing is lost to a disconnect or a restart: after
//! either, [`Outbox::pending`] gives back every unanswered message in the order it was appended.
//!
//! The outbox is bounded. Messages where only the latest matters (one pending status patch per
//! pod, one node status) carry a *coalescing key*: appending one replaces the pending message
//! with the same key. When the outbox is full, [`FullPolicy`] decides, and the decision is
//! logged.

use bytes::Bytes;
use kubeedge_proto::journal::Journaled;
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message, now_millis};
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use tokio::sync::watch;

use crate::{Error, Result, Store};

/// What to do when the outbox already holds its capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FullPolicy {
    /// Refuse the new message with [`Error::OutboxFull`] (the caller decides; nothing queued is
    /// lost). The default.
    #[default]
    Reject,
    /// Drop the oldest pending message to make room (logged at warn level with its id).
    DropOldest,
}

/// What [`Outbox::push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Appended,
    /// A message with the same id is already pending; nothing changed.
    AlreadyQueued,
    /// Replaced the pending message with the same coalescing key (its id is returned; its
    /// reply, should one still come, will find nothing to remove).
    Coalesced {
        /// The id of the message that was replaced.
        replaced: String,
    },
    /// Appended after dropping the oldest pending message ([`FullPolicy::DropOldest`]).
    DroppedOldest {
        /// The id of the message that was dropped.
        dropped: String,
    },
}

/// One pending message.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    /// Position in the outbox (increasing in append order).
    pub seq: i64,
    /// The message as it was appended.
    pub message: Message,
}

/// The durable outbox inside a [`Store`]. Clones share one outbox (and one
/// [`appended`](Self::appended) signal).
#[derive(Clone, Debug)]
pub struct Outbox {
    store: Store,
    capacity: usize,
    policy: FullPolicy,
    appended: Arc<watch::Sender<u64>>,
    /// The last messages [`confirm`](Self::confirm) removed, so that whoever handles the reply
    /// after the transport confirmed it can still see what it answers.
    confirmed: Arc<std::sync::Mutex<std::collections::VecDeque<(String, String)>>>,
}

/// How many confirmed messages [`Outbox::answered`] can still give back.
const CONFIRMED_KEPT: usize = 256;

impl Outbox {
    /// The outbox of `store`, holding at most `capacity` messages.
    pub fn new(store: Store, capacity: usize, policy: FullPolicy) -> Self {
        Self {
            store,
            capacity: capacity.max(1),
            policy,
            appended: Arc::new(watch::channel(0).0),
            confirmed: Arc::default(),
        }
    }

    /// The message (JSON) that a reply with `parent_msg_id` answers, if it was confirmed
    /// lately (the last 256): the hub confirms a reply before the application handles it.
    pub fn answered(&self, parent_msg_id: &str) -> Option<String> {
        let kept = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .rev()
            .find(|(id, _)| id == parent_msg_id)
            .map(|(_, json)| json.clone())
    }

    /// Appends `msg` durably (the future resolves after the commit). With a coalescing key, a
    /// pending message with the same key is replaced. Receivers of [`appended`](Self::appended)
    /// see the change after the commit.
    pub async fn push(&self, msg: &Message, coalesce_key: Option<String>) -> Result<Pushed> {
        let staged = self.stage(msg, coalesce_key)?;
        let pushed = self.store.write(move |db| staged.apply(db)).await?;
        if pushed != Pushed::AlreadyQueued {
            self.appended.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(pushed)
    }

    /// A receiver that changes after every message [`push`](Self::push) committed, so the task
    /// that sends the outbox (a hub's sender) can be woken by whoever appends: edged's status
    /// patches, the node's lease. Appends through [`stage`](Self::stage) are announced by their
    /// caller (the twin hands its reports to its link itself).
    ///
    /// ```
    /// # use kubeedge_store::{FullPolicy, Outbox, Store, StoreConfig};
    /// # use kubeedge_proto::{Content, Group, Message, Operation, Source};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_store::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(StoreConfig::new(dir.path().join("edge.db")))?;
    /// let outbox = Outbox::new(store, 1000, FullPolicy::Reject);
    /// let mut appended = outbox.appended();
    /// let msg = Message::new(Source::Edged, Group::Resource, Operation::Update,
    ///     "default/nodestatus/edge-1", Content::string("ready"));
    /// outbox.push(&msg, None).await?;
    /// assert!(appended.has_changed().unwrap());
    /// # Ok(()) }
    /// ```
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Prepares `msg` for an append that commits together with other changes: call
    /// [`Staged::apply`] inside a [`Store::write`] closure, so that the message is queued if and
    /// only if those changes commit (a twin update and the report of it to the cloud, say).
    ///
    /// ```
    /// # use kubeedge_store::{FullPolicy, Outbox, Store, StoreConfig};
    /// # use kubeedge_proto::{Content, Group, Message, Operation, Source};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> kubeedge_store::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = Store::open(StoreConfig::new(dir.path().join("edge.db")))?;
    /// let outbox = Outbox::new(store.clone(), 1000, FullPolicy::Reject);
    /// let report = Message::new(Source::Twin, Group::Resource, Operation::Update,
    ///     "device/default/t1/state/update", Content::string("online"));
    /// let staged = outbox.stage(&report, None)?;
    /// store.write(move |db| {
    ///     db.execute("UPDATE device SET state = 'online' WHERE id = 'default/t1'", [])?;
    ///     staged.apply(db)
    /// }).await?;
    /// assert_eq!(outbox.len().await?, 1);
    /// # Ok(()) }
    /// ```
    pub fn stage(&self, msg: &Message, coalesce_key: Option<String>) -> Result<Staged> {
        let json =
            String::from_utf8(msg.to_json()).map_err(|e| Error::InvalidMessage(e.to_string()))?;
        self.store.check_len("outbox message", json.len())?;
        let msg_id = msg.header.id.clone();
        if msg_id.is_empty() {
            return Err(Error::InvalidMessage(
                "an outbox message needs a msg_id".to_owned(),
            ));
        }
        Ok(Staged {
            msg_id,
            json,
            coalesce_key,
            capacity: self.capacity,
            policy: self.policy,
        })
    }

    /// Removes the message the cloud answered: the one whose id is `parent_msg_id` of the reply.
    /// Returns whether a message was removed (a repeated reply removes nothing).
    pub async fn confirm(&self, parent_msg_id: &str) -> Result<bool> {
        let id = parent_msg_id.to_owned();
        let removed: Option<String> = self
            .store
            .write(move |db| {
                Ok(db
                    .query_row(
                        "DELETE FROM kubeedge_rs_outbox WHERE msg_id = ?1 RETURNING message",
                        [id],
                        |row| row.get(0),
                    )
                    .optional()?)
            })
            .await?;
        match removed {
            Some(json) => {
                let mut kept = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
                kept.push_back((parent_msg_id.to_owned(), json));
                while kept.len() > CONFIRMED_KEPT {
                    kept.pop_front();
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Up to `limit` pending messages after position `after` (use 0 to start), in append order:
    /// what to (re)send after a reconnect or a restart.
    pub async fn pending(&self, after: i64, limit: usize) -> Result<Vec<Pending>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.store
            .read(move |db| {
                let mut stmt = db.prepare_cached(
                    "SELECT seq, message FROM kubeedge_rs_outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![after, limit], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, json) = row?;
                    let message = Message::decode_json(Bytes::from(json), DEFAULT_MAX_MESSAGE_LEN)?;
                    out.push(Pending { seq, message });
                }
                Ok(out)
            })
            .await
    }

    /// How many messages are pending.
    pub async fn len(&self) -> Result<usize> {
        self.store
            .read(|db| {
                let n: i64 =
                    db.query_row("SELECT count(*) FROM kubeedge_rs_outbox", [], |row| {
                        row.get(0)
                    })?;
                Ok(usize::try_from(n).unwrap_or(0))
            })
            .await
    }

    /// Whether nothing is pending.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }
}

/// A message ready to be appended inside a write transaction; see [`Outbox::stage`].
#[derive(Debug)]
pub struct Staged {
    msg_id: String,
    json: String,
    coalesce_key: Option<String>,
    capacity: usize,
    policy: FullPolicy,
}

impl Staged {
    /// The id of the staged message.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// Appends the message on `db`, which must be the connection of a [`Store::write`] closure.
    /// When the outbox is full and the policy is [`FullPolicy::Reject`], fails with
    /// [`Error::OutboxFull`] (which rolls back the whole closure if returned from it).
    pub fn apply(self, db: &rusqlite::Connection) -> Result<Pushed> {
        let Self {
            msg_id,
            json,
            coalesce_key,
            capacity,
            policy,
        } = self;
        let queued: Option<i64> = db
            .prepare_cached("SELECT seq FROM kubeedge_rs_outbox WHERE msg_id = ?1")?
            .query_row([&msg_id], |row| row.get(0))
            .optional()?;
        if queued.is_some() {
            return Ok(Pushed::AlreadyQueued);
        }
        let mut outcome = Pushed::Appended;
        if let Some(key) = &coalesce_key {
            let replaced: Option<String> = db
                .prepare_cached(
                    "DELETE FROM kubeedge_rs_outbox WHERE coalesce_key = ?1 RETURNING msg_id",
                )?
                .query_row([key], |row| row.get(0))
                .optional()?;
            if let Some(replaced) = replaced {
                outcome = Pushed::Coalesced { replaced };
            }
        }
        let len: i64 = db
            .prepare_cached("SELECT count(*) FROM kubeedge_rs_outbox")?
            .query_row([], |row| row.get(0))?;
        if usize::try_from(len).unwrap_or(usize::MAX) >= capacity {
            match policy {
                FullPolicy::Reject => {
                    // Logged here, where it is decided, for every way a message is queued.
                    tracing::warn!(capacity, msg_id = %msg_id, "outbox full: message refused");
                    return Err(Error::OutboxFull { capacity });
                }
                FullPolicy::DropOldest => {
                    let dropped: String = db.query_row(
                        "DELETE FROM kubeedge_rs_outbox
                         WHERE seq = (SELECT min(seq) FROM kubeedge_rs_outbox)
                         RETURNING msg_id",
                        [],
                        |row| row.get(0),
                    )?;
                    tracing::warn!(dropped = %dropped, capacity, "outbox full: dropped the oldest message");
                    outcome = Pushed::DroppedOldest { dropped };
                }
            }
        }
        db.prepare_cached(
            "INSERT INTO kubeedge_rs_outbox (msg_id, coalesce_key, message, enqueued_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![msg_id, coalesce_key, json, now_millis()])?;
        Ok(outcome)
    }
}

/// The outbox is the durable [`MessageJournal`](kubeedge_proto::journal::MessageJournal) a hub appends to before it sends, confirms on
/// the cloud's reply and replays after a reconnect or restart.
impl kubeedge_proto::journal::MessageJournal for Outbox {
    type Error = Error;

    async fn append(&self, message: &Message, coalesce_key: Option<String>) -> Result<()> {
        self.push(message, coalesce_key).await.map(drop)
    }

    async fn confirm(&self, msg_id: &str) -> Result<bool> {
        Outbox::confirm(self, msg_id).await
    }

    async fn pending(&self, after: u64, limit: usize) -> Result<Vec<Journaled>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        Ok(Outbox::pending(self, after, limit)
            .await?
            .into_iter()
            .map(|p| Journaled {
                seq: u64::try_from(p.seq).unwrap_or(0),
                message: p.message,
            })
            .collect())
    }
}
