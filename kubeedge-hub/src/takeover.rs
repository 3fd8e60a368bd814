//! Session takeovers: how often a newer connection of a node may replace the node's
//! established session on the CloudHub.

use std::time::Duration;

use tokio::time::Instant;

/// How often a new connection may take over a node's established session.
///
/// KubeEdge's CloudHub lets the newer connection win every time. That is right for an edge that
/// restarted while its old TCP connection is half-dead (the old one would otherwise hold the
/// session until its keepalive timeout), and this hub keeps it: while the node's budget lasts,
/// the newer connection wins. The budget is a token bucket per node: `burst` takeovers at once,
/// one more every `refill_every`. Over budget the *new* connection is refused (HTTP 429 on the
/// upgrade, with the reason in the body) and the established session is kept, so that two
/// processes holding one node's certificate, or a loop replaying it, cannot flap the session.
///
/// The trade-off: a refusal only lasts until the next token (at most `refill_every`), so a
/// restarted honest edge is never locked out for longer than that — and not at all once its old
/// connection is gone (after the keepalive timeout, or at once when the old TCP connection is
/// closed), because connecting to a node without a session is not a takeover. Whoever holds the
/// node's certificate can still take the session at that pace: a certificate is the node's
/// identity, and the budget bounds how often it changes hands, not who holds it.
///
/// `burst: 0` means the established session always wins (a new connection is refused until the
/// old one ends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TakeoverLimit {
    /// Takeovers allowed at once (the bucket's size).
    pub burst: u32,
    /// One more takeover becomes allowed this often, up to `burst`; refused takeovers are
    /// logged at most once per this period (and at least a second apart) per node.
    pub refill_every: Duration,
}

impl Default for TakeoverLimit {
    /// Three takeovers at once, then one every 10 s.
    fn default() -> Self {
        Self {
            burst: 3,
            refill_every: Duration::from_secs(10),
        }
    }
}

impl TakeoverLimit {
    fn refill_period(&self) -> Duration {
        self.refill_every.max(Duration::from_millis(1))
    }

    fn log_period(&self) -> Duration {
        self.refill_every.max(Duration::from_secs(1))
    }
}

/// One node's takeover budget.
#[derive(Debug)]
pub(crate) struct Budget {
    tokens: u32,
    refilled_at: Instant,
    refused_unlogged: u64,
    logged_at: Option<Instant>,
}

impl Budget {
    /// A full budget.
    pub(crate) fn new(limit: &TakeoverLimit, now: Instant) -> Self {
        Self {
            tokens: limit.burst,
            refilled_at: now,
            refused_unlogged: 0,
            logged_at: None,
        }
    }

    fn refill(&mut self, limit: &TakeoverLimit, now: Instant) {
        if self.tokens >= limit.burst {
            self.tokens = limit.burst;
            self.refilled_at = now;
            return;
        }
        let period = limit.refill_period();
        let earned = now.saturating_duration_since(self.refilled_at).as_nanos() / period.as_nanos();
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(limit.burst);
        self.refilled_at = if self.tokens == limit.burst {
            now
        } else {
            // Fewer than `burst` periods were earned, so this cannot overflow.
            self.refilled_at + period * earned
        };
    }

    /// Takes a takeover from the budget; false when it is used up.
    pub(crate) fn take(&mut self, limit: &TakeoverLimit, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }

    /// Returns a takeover that was taken but not used (the old session ended meanwhile).
    pub(crate) fn give_back(&mut self, limit: &TakeoverLimit) {
        self.tokens = self.tokens.saturating_add(1).min(limit.burst);
    }

    /// Whether the budget is full (it can be forgotten: a new one is the same).
    pub(crate) fn is_full(&mut self, limit: &TakeoverLimit, now: Instant) -> bool {
        self.refill(limit, now);
        self.tokens >= limit.burst && self.refused_unlogged == 0
    }

    /// Counts a refused takeover: `Some(n)` when it is to be logged now, with `n` the refusals
    /// since the last line (this one included); `None` when it is only counted.
    pub(crate) fn refused(&mut self, limit: &TakeoverLimit, now: Instant) -> Option<u64> {
        self.refused_unlogged += 1;
        match self.logged_at {
            Some(at) if now.saturating_duration_since(at) < limit.log_period() => None,
            _ => {
                self.logged_at = Some(now);
                Some(std::mem::take(&mut self.refused_unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: TakeoverLimit = TakeoverLimit {
        burst: 3,
        refill_every: Duration::from_secs(10),
    };

    #[test]
    fn allows_a_burst_then_one_per_period() {
        let start = Instant::now();
        let mut budget = Budget::new(&LIMIT, start);
        for _ in 0..3 {
            assert!(budget.take(&LIMIT, start));
        }
        assert!(!budget.take(&LIMIT, start));
        assert!(!budget.take(&LIMIT, start + Duration::from_millis(9_999)));
        // One period later exactly one more.
        let later = start + Duration::from_secs(10);
        assert!(budget.take(&LIMIT, later));
        assert!(!budget.take(&LIMIT, later));
        // Partial periods are not lost: 15 s + 5 s make two periods.
        assert!(!budget.take(&LIMIT, later + Duration::from_secs(5)));
        assert!(budget.take(&LIMIT, later + Duration::from_secs(10)));
        // A long quiet time refills to the burst, not beyond.
        let much_later = later + Duration::from_secs(3_600);
        assert!(budget.is_full(&LIMIT, much_later));
        for _ in 0..3 {
            assert!(budget.take(&LIMIT, much_later));
        }
        assert!(!budget.take(&LIMIT, much_later));
        budget.give_back(&LIMIT);
        assert!(budget.take(&LIMIT, much_later));
    }

    #[test]
    fn a_zero_burst_never_allows_a_takeover() {
        let limit = TakeoverLimit {
            burst: 0,
            refill_every: Duration::from_millis(1),
        };
        let start = Instant::now();
        let mut budget = Budget::new(&limit, start);
        assert!(!budget.take(&limit, start));
        assert!(!budget.take(&limit, start + Duration::from_secs(60)));
    }

    #[test]
    fn refusals_are_logged_once_per_period_with_their_count() {
        let start = Instant::now();
        let mut budget = Budget::new(&LIMIT, start);
        assert_eq!(budget.refused(&LIMIT, start), Some(1));
        for i in 1..100 {
            assert_eq!(
                budget.refused(&LIMIT, start + Duration::from_millis(i)),
                None
            );
        }
        assert!(!budget.is_full(&LIMIT, start), "unlogged refusals are kept");
        assert_eq!(
            budget.refused(&LIMIT, start + Duration::from_secs(10)),
            Some(100)
        );
        assert!(budget.is_full(&LIMIT, start + Duration::from_secs(10)));
    }
}
