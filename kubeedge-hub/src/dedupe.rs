//! Duplicate detection by `msg_id`, and the replies sent to recent messages.
//!
//! At-least-once delivery re-sends a message until its answer arrives, so a receiver sees some
//! messages twice. [`RecentIds`] remembers the ids of the last `window` messages (as keyed 64-bit
//! hashes: 8 bytes each instead of a 36-byte string twice) and the last `replies` answers the
//! application sent to them: a duplicate is dropped, and answered again with the remembered
//! reply, because a duplicate means the first answer was lost.
//!
//! Keepalives are never remembered: they are not worth de-duplicating, and at one every 15 s they
//! would otherwise fill a node's window with nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use kubeedge_proto::Message;

/// Recently seen message ids and the replies sent to them, both bounded.
#[derive(Debug)]
pub(crate) struct RecentIds {
    /// Keyed with a per-instance random key, so a peer cannot choose colliding ids.
    hasher: RandomState,
    window: usize,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    reply_capacity: usize,
    replies: HashMap<u64, Message>,
    reply_order: VecDeque<u64>,
}

impl RecentIds {
    /// Remembers up to `window` ids and `reply_capacity` replies.
    pub(crate) fn new(window: usize, reply_capacity: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            window: window.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
            reply_capacity,
            replies: HashMap::new(),
            reply_order: VecDeque::new(),
        }
    }

    /// Whether `msg` is seen for the first time (it is remembered then). Messages without an
    /// id and keepalives always count as new and are not remembered.
    pub(crate) fn first_sight(&mut self, msg: &Message) -> bool {
        if msg.header.id.is_empty() || msg.is_keepalive() {
            return true;
        }
        let key = self.hasher.hash_one(&msg.header.id);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Remembers `reply` if it answers a message still remembered.
    pub(crate) fn remember_reply(&mut self, reply: &Message) {
        let parent = &reply.header.parent_id;
        if parent.is_empty() || self.reply_capacity == 0 {
            return;
        }
        let key = self.hasher.hash_one(parent);
        if !self.seen.contains(&key) {
            return;
        }
        if self.replies.insert(key, reply.clone()).is_none() {
            self.reply_order.push_back(key);
        }
        while self.reply_order.len() > self.reply_capacity {
            if let Some(old) = self.reply_order.pop_front() {
                self.replies.remove(&old);
            }
        }
    }

    /// The reply remembered for the message with id `msg_id`.
    pub(crate) fn reply_to(&self, msg_id: &str) -> Option<&Message> {
        self.replies.get(&self.hasher.hash_one(msg_id))
    }
}

#[cfg(test)]
mod tests {
    use kubeedge_proto::Content;

    use super::*;

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
    fn drops_duplicates_within_the_window_and_forgets_beyond_it() {
        let mut recent = RecentIds::new(3, 2);
        let msgs: Vec<Message> = (0..4).map(msg).collect();
        assert!(recent.first_sight(&msgs[0]));
        assert!(!recent.first_sight(&msgs[0]));
        for m in &msgs[1..] {
            assert!(recent.first_sight(m));
        }
        // msgs[0] fell out of the 3-id window.
        assert!(recent.first_sight(&msgs[0]));
        // Keepalives are never remembered.
        let keepalive = Message::keepalive();
        assert!(recent.first_sight(&keepalive));
        assert!(recent.first_sight(&keepalive));
    }

    #[test]
    fn keeps_the_last_replies_to_remembered_messages() {
        let mut recent = RecentIds::new(10, 2);
        let msgs: Vec<Message> = (0..3).map(msg).collect();
        for m in &msgs {
            recent.first_sight(m);
            recent.remember_reply(&m.ack());
        }
        assert!(
            recent.reply_to(&msgs[0].header.id).is_none(),
            "only the last two replies stay"
        );
        assert_eq!(
            recent
                .reply_to(&msgs[2].header.id)
                .unwrap()
                .header
                .parent_id,
            msgs[2].header.id
        );
        // A reply to something never seen is not kept.
        recent.remember_reply(&msg(9).ack());
        assert_eq!(recent.replies.len(), 2);
    }
}
