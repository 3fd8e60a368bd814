//! The EdgeHub's reconnect schedule: exponential backoff with jitter, reset only by a session
//! that stayed up.

use std::time::Duration;

/// When to dial the cloud again.
///
/// Every failure — a connection attempt that fails or is refused, or a session that ends
/// before it was up for `stable_after` (replaced by another connection of the node, closed by
/// the cloud, broken) — doubles the ceiling, from `min` up to `max`. The wait is drawn evenly
/// from the upper half of the ceiling, `[ceiling/2, ceiling]`: jittered, so that a fleet
/// reconnecting after a cloud restart spreads out, and never shorter than half the ceiling, so
/// that two processes sharing a node's identity cannot take the session from each other faster
/// than the schedule allows. A session that stayed up for `stable_after` resets the ceiling to
/// `min`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    failures: u32,
    seed: u64,
}

impl Backoff {
    /// A schedule starting at `min`, capped at `max` (at least `min`), reset by sessions that
    /// last `stable_after`; `seed` seeds the jitter (any value).
    pub(crate) fn new(min: Duration, max: Duration, stable_after: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            stable_after,
            failures: 0,
            seed: seed | 1,
        }
    }

    /// A connection attempt failed: how long to wait before the next.
    pub(crate) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.wait()
    }

    /// A session ended after `lasted`: how long to wait before dialling again. Only a session
    /// that lasted `stable_after` resets the schedule; a shorter one counts as a failure.
    pub(crate) fn session_ended(&mut self, lasted: Duration) -> Duration {
        if lasted >= self.stable_after {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        self.wait()
    }

    /// The largest wait the schedule may draw now.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }

    fn wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.seed = xorshift(self.seed);
        // 53 random bits as a fraction in [0, 1].
        let fraction = (self.seed >> 11) as f64 / ((1u64 << 53) - 1) as f64;
        ceiling / 2 + (ceiling / 2).mul_f64(fraction)
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A seed for the jitter that differs between nodes and between starts.
pub(crate) fn jitter_seed(node: &str) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    node.bytes()
        .fold(now, |h, b| h.rotate_left(5) ^ u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_millis(6_400);
    const STABLE: Duration = Duration::from_secs(30);

    fn within(wait: Duration, ceiling: Duration) -> bool {
        wait >= ceiling / 2 && wait <= ceiling
    }

    #[test]
    fn failures_double_the_ceiling_up_to_the_cap_with_jitter_in_its_upper_half() {
        for seed in [1, 2, 0xdead_beef, u64::MAX] {
            let mut backoff = Backoff::new(MIN, MAX, STABLE, seed);
            let mut expected = MIN;
            for _ in 0..40 {
                expected = (expected * 2).min(MAX);
                let wait = backoff.failed();
                assert_eq!(backoff.ceiling(), expected);
                assert!(within(wait, expected), "{wait:?} outside {expected:?}");
            }
            assert_eq!(backoff.ceiling(), MAX);
        }
    }

    #[test]
    fn the_jitter_spreads_the_waits() {
        let mut backoff = Backoff::new(MIN, MIN, STABLE, 42);
        let waits: Vec<Duration> = (0..200).map(|_| backoff.failed()).collect();
        let lowest = waits.iter().min().unwrap();
        let highest = waits.iter().max().unwrap();
        // Spread over most of [50 ms, 100 ms], not one value.
        assert!(*lowest < Duration::from_millis(60), "{lowest:?}");
        assert!(*highest > Duration::from_millis(90), "{highest:?}");
    }

    #[test]
    fn only_a_stable_session_resets_the_schedule() {
        let mut backoff = Backoff::new(MIN, MAX, STABLE, 7);
        for _ in 0..4 {
            backoff.failed();
        }
        assert_eq!(backoff.ceiling(), MIN * 16);
        // Sessions that end early (replaced, refused, closed by the cloud) keep doubling it.
        let wait = backoff.session_ended(Duration::from_secs(1));
        assert_eq!(backoff.ceiling(), MIN * 32);
        assert!(within(wait, MIN * 32));
        let wait = backoff.session_ended(STABLE - Duration::from_millis(1));
        assert_eq!(backoff.ceiling(), MAX);
        assert!(within(wait, MAX));
        // A session that stayed up resets it: the next wait is at most `min`.
        let wait = backoff.session_ended(STABLE);
        assert_eq!(backoff.ceiling(), MIN);
        assert!(within(wait, MIN));
        // And the next failure starts from there.
        let wait = backoff.failed();
        assert_eq!(backoff.ceiling(), MIN * 2);
        assert!(within(wait, MIN * 2));
    }

    #[test]
    fn a_cap_below_the_minimum_is_the_minimum() {
        let mut backoff = Backoff::new(MIN, Duration::ZERO, STABLE, 3);
        assert!(within(backoff.failed(), MIN));
        assert_eq!(backoff.ceiling(), MIN);
    }
}
