//! Connections still in their upgrade request, before any credential is
//! checked: a bounded set where a newcomer past the bound pushes out the
//! oldest.
//!
//! Refusing newcomers instead would let anyone who opens
//! `websocket.max_handshakes` connections and sends half a request on each
//! keep every real client out for the handshake timeout. Pushing out the
//! oldest turns that around: a real upgrade completes in milliseconds, so
//! it is never the oldest for long, while a connection that never finishes
//! its request soon is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::stats::{Limit, Protocol, Stats};

/// The upgrades in progress, oldest first.
#[derive(Debug)]
pub struct Handshakes {
    max: usize,
    stats: Arc<Stats>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// By arrival: the first entry is the oldest.
    pending: BTreeMap<u64, CancellationToken>,
}

/// One connection's place among the upgrades in progress; given up on
/// drop. `evicted` fires when a newer connection took it.
#[derive(Debug)]
pub struct Handshake {
    id: u64,
    pub evicted: CancellationToken,
    owner: Arc<Handshakes>,
}

impl Handshakes {
    /// At most `max` upgrades in progress at once (`websocket.max_handshakes`).
    pub fn new(max: usize, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            stats,
            inner: Mutex::default(),
        })
    }

    /// A place for a new connection, pushing out the oldest if all are
    /// taken (counted as a WebSocket connection limit).
    pub fn enter(self: &Arc<Self>) -> Handshake {
        let mut inner = self.lock();
        if inner.pending.len() >= self.max {
            if let Some((_, oldest)) = inner.pending.pop_first() {
                oldest.cancel();
                self.stats.limit(Protocol::WebSocket, Limit::Connections);
            }
        }
        let id = inner.next;
        inner.next += 1;
        let evicted = CancellationToken::new();
        inner.pending.insert(id, evicted.clone());
        Handshake {
            id,
            evicted,
            owner: self.clone(),
        }
    }

    /// Upgrades in progress.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().pending.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.owner.lock().pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the bound, the oldest place is taken back and told so; the
    /// others keep theirs, and a finished handshake frees its place.
    #[test]
    fn a_newcomer_pushes_out_the_oldest() {
        let stats = Arc::new(Stats::default());
        let handshakes = Handshakes::new(2, stats.clone());
        let first = handshakes.enter();
        let second = handshakes.enter();
        assert!(!first.evicted.is_cancelled());
        let third = handshakes.enter();
        assert!(first.evicted.is_cancelled(), "the oldest goes");
        assert!(!second.evicted.is_cancelled());
        assert!(!third.evicted.is_cancelled());
        assert_eq!(handshakes.len(), 2);
        assert_eq!(
            stats
                .refusals
                .limited(Protocol::WebSocket, Limit::Connections),
            1
        );
        drop(first);
        assert_eq!(handshakes.len(), 2, "an evicted place was already given up");
        drop(third);
        assert_eq!(handshakes.len(), 1);
        let fourth = handshakes.enter();
        assert!(!second.evicted.is_cancelled(), "there was room");
        drop((second, fourth));
        assert_eq!(handshakes.len(), 0);
    }
}
