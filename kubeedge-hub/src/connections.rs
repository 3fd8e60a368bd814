//! A server's connection table: how many connections each source address holds, and which
//! connections are idle (in their TLS handshake, or waiting for a request), oldest first, so
//! that a full server closes an idle one to make room instead of making honest clients wait
//! behind silent ones. The join server counts all its connections in it; the CloudHub only
//! those still in their handshakes (sessions are bounded by its node limit).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// Why a new connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its source address holds the most connections one address may.
    PerSource,
    /// Every connection is busy with a request; none could be closed to make room.
    Full,
}

#[derive(Debug, Default)]
struct Table {
    per_source: HashMap<IpAddr, usize>,
    /// Idle connections by admission order: the first is the oldest.
    idle: BTreeMap<u64, CancellationToken>,
    total: usize,
    next: u64,
}

/// The table, shared by the accept loop and the connections.
#[derive(Clone, Debug)]
pub(crate) struct Connections {
    table: Arc<Mutex<Table>>,
    max_total: usize,
    max_per_source: usize,
}

/// A connection's place in the table; dropping it removes the connection.
#[derive(Debug)]
pub(crate) struct Admitted {
    connections: Connections,
    id: u64,
    source: IpAddr,
    /// Cancelled when the connection is closed to make room for a newer one.
    pub(crate) evicted: CancellationToken,
}

impl Connections {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            table: Arc::default(),
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `source` (idle until [`Admitted::busy`]); when the table is full
    /// the oldest idle connection is evicted for it. `Ok(evicted)` says whether one was.
    pub(crate) fn admit(&self, source: IpAddr) -> Result<(Admitted, bool), Refusal> {
        let mut table = self.lock();
        if table.per_source.get(&source).copied().unwrap_or(0) >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        let mut evicted_one = false;
        if table.total >= self.max_total {
            let Some((_, oldest)) = table.idle.pop_first() else {
                return Err(Refusal::Full);
            };
            // Its slot is freed when its task sees the cancellation and drops its `Admitted`;
            // the new connection is admitted now, so the table may be one over for that moment.
            oldest.cancel();
            evicted_one = true;
        }
        let id = table.next;
        table.next += 1;
        table.total += 1;
        *table.per_source.entry(source).or_default() += 1;
        let evicted = CancellationToken::new();
        table.idle.insert(id, evicted.clone());
        drop(table);
        Ok((
            Admitted {
                connections: self.clone(),
                id,
                source,
                evicted,
            },
            evicted_one,
        ))
    }
}

impl Admitted {
    /// The connection is serving a request: it is not closed to make room until it is
    /// [`idle`](Self::idle) again.
    pub(crate) fn busy(&self) {
        self.connections.lock().idle.remove(&self.id);
    }

    /// The connection is waiting for its next request (or its handshake): the oldest such is
    /// closed when the table is full.
    pub(crate) fn idle(&self) {
        if !self.evicted.is_cancelled() {
            self.connections
                .lock()
                .idle
                .insert(self.id, self.evicted.clone());
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut table = self.connections.lock();
        table.idle.remove(&self.id);
        table.total = table.total.saturating_sub(1);
        if let Some(count) = table.per_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                table.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn per_source_cap_and_eviction_of_the_oldest_idle() {
        let table = Connections::new(3, 2);
        let (a, _) = table.admit(ip(1)).unwrap();
        let (b, _) = table.admit(ip(1)).unwrap();
        assert_eq!(table.admit(ip(1)).unwrap_err(), Refusal::PerSource);
        let (c, evicted) = table.admit(ip(2)).unwrap();
        assert!(!evicted);
        // Full: the oldest idle one (a) goes.
        a.busy();
        let (d, evicted) = table.admit(ip(3)).unwrap();
        assert!(evicted);
        assert!(!a.evicted.is_cancelled());
        assert!(b.evicted.is_cancelled());
        drop(b);
        // All busy: nothing can be evicted.
        c.busy();
        d.busy();
        assert_eq!(table.admit(ip(4)).unwrap_err(), Refusal::Full);
        // A busy connection that goes idle again is evictable again.
        c.idle();
        let (_e, evicted) = table.admit(ip(4)).unwrap();
        assert!(evicted);
        assert!(c.evicted.is_cancelled());
        drop((a, c, d));
        assert_eq!(table.lock().total, 1);
        assert_eq!(table.lock().per_source.len(), 1);
    }
}
