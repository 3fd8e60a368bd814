//! Duplicate detection by `msg_id`, and the replies sent to recent messages.
//!
//! At-least-once delivery re-sends a message until its answer arrives, so a receiver sees some
//! messages twice. [`RecentIds`] remembers the ids of the last `window` messages (as keyed 64-bit
//! hashes: 8 bytes each instead of a 36-byte string twice) and the last `replies` answers the
//! application sent to them: a duplicate is dropped, and answered again with the remembered
//! reply, because a duplicate means the first answer was lost.
//!
//! A duplicate of a message that was answered but whose answer has since been forgotten (more
//! than `replies` later answers went out first, which a cut link can cause by reordering
//! re-sends) is handed to the application again: without an answer its sender would re-send it
//! forever and, with a window of unanswered messages, stop. Applications apply by message id
//! idempotently, so a rare second delivery is safe; a stuck link is not. Size the reply cache at
//! least twice the peer's window of unanswered messages and it does not happen.
//!
//! Keepalives are never remembered: they are not worth de-duplicating, and at one every 15 s they
//! would otherwise fill a node's window with nothing.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use kubeedge_proto::Message;

/// What [`RecentIds::sight`] found.
// Returned once per message and matched at once; boxing the reply would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub(crate) enum Sight {
    /// Deliver it to the application: new, or answered with an answer no longer remembered.
    Deliver,
    /// A duplicate: answer it again with this reply if there is one (none yet: the application
    /// has not answered the first copy).
    Duplicate(Option<Message>),
}

/// Recently seen message ids and the replies sent to them, both bounded.
#[derive(Debug)]
pub(crate) struct RecentIds {
    /// Keyed with a per-instance random key, so a peer cannot choose colliding ids.
    hasher: RandomState,
    window: usize,
    /// Seen ids, and whether the application answered them.
    seen: HashMap<u64, bool>,
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
            seen: HashMap::new(),
            order: VecDeque::new(),
            reply_capacity,
            replies: HashMap::new(),
            reply_order: VecDeque::new(),
        }
    }

    /// Whether `msg` goes to the application (it is remembered then) or is a duplicate.
    /// Messages without an id and keepalives always go and are not remembered.
    pub(crate) fn sight(&mut self, msg: &Message) -> Sight {
        if msg.header.id.is_empty() || msg.is_keepalive() {
            return Sight::Deliver;
        }
        let key = self.hasher.hash_one(&msg.header.id);
        match self.seen.get(&key) {
            None => {}
            Some(false) => return Sight::Duplicate(None),
            Some(true) => {
                return match self.replies.get(&key) {
                    Some(reply) => Sight::Duplicate(Some(reply.clone())),
                    // Answered, answer forgotten: deliver again (see the module docs).
                    None => Sight::Deliver,
                };
            }
        }
        self.seen.insert(key, false);
        self.order.push_back(key);
        while self.order.len() > self.window {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        Sight::Deliver
    }

    /// Remembers `reply` if it answers a message still remembered.
    pub(crate) fn remember_reply(&mut self, reply: &Message) {
        let parent = &reply.header.parent_id;
        if parent.is_empty() || self.reply_capacity == 0 {
            return;
        }
        let key = self.hasher.hash_one(parent);
        let Some(answered) = self.seen.get_mut(&key) else {
            return;
        };
        *answered = true;
        if self.replies.insert(key, reply.clone()).is_none() {
            self.reply_order.push_back(key);
        }
        while self.reply_order.len() > self.reply_capacity {
            if let Some(old) = self.reply_order.pop_front() {
                self.replies.remove(&old);
            }
        }
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
        assert_eq!(recent.sight(&msgs[0]), Sight::Deliver);
        assert_eq!(recent.sight(&msgs[0]), Sight::Duplicate(None));
        for m in &msgs[1..] {
            assert_eq!(recent.sight(m), Sight::Deliver);
        }
        // msgs[0] fell out of the 3-id window.
        assert_eq!(recent.sight(&msgs[0]), Sight::Deliver);
        // Keepalives are never remembered.
        let keepalive = Message::keepalive();
        assert_eq!(recent.sight(&keepalive), Sight::Deliver);
        assert_eq!(recent.sight(&keepalive), Sight::Deliver);
    }

    #[test]
    fn answers_duplicates_with_the_last_replies_and_redelivers_when_the_reply_is_forgotten() {
        let mut recent = RecentIds::new(10, 2);
        let msgs: Vec<Message> = (0..3).map(msg).collect();
        for m in &msgs {
            assert_eq!(recent.sight(m), Sight::Deliver);
            recent.remember_reply(&m.ack());
        }
        match recent.sight(&msgs[2]) {
            Sight::Duplicate(Some(reply)) => assert_eq!(reply.header.parent_id, msgs[2].header.id),
            other => panic!("expected the remembered reply, got {other:?}"),
        }
        // Only the last two replies stay: msgs[0] was answered, its answer is gone, so it goes
        // to the application again rather than staying unanswered forever.
        assert_eq!(recent.sight(&msgs[0]), Sight::Deliver);
        // A reply to something never seen is not kept.
        recent.remember_reply(&msg(9).ack());
        assert_eq!(recent.replies.len(), 2);
    }
}
