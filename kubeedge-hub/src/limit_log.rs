//! Warnings for limits that hostile peers hit many times a second: the first hit is logged at
//! once, later ones at most once per interval with the count of those not logged.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One limit's warnings: [`hit`](Self::hit) says whether to log now and how many hits went
/// unlogged since the last line.
#[derive(Debug)]
pub(crate) struct LimitLog {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LimitLog {
    /// At most one line per `every`.
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts a hit: `Some(unlogged)` if this one should be logged (with the number of hits
    /// since the last logged one), `None` if it is to be counted only.
    pub(crate) fn hit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, unlogged) = &mut *state;
        let now = Instant::now();
        match last {
            Some(at) if now.duration_since(*at) < self.every => {
                *unlogged += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_hit_then_counts() {
        let log = LimitLog::new(Duration::from_secs(3600));
        assert_eq!(log.hit(), Some(0));
        assert_eq!(log.hit(), None);
        assert_eq!(log.hit(), None);
        let every_time = LimitLog::new(Duration::ZERO);
        assert_eq!(every_time.hit(), Some(0));
        assert_eq!(every_time.hit(), Some(0));
    }
}
