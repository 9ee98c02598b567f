//! Counters for everything the bridge accepts, delivers or drops, so that no
//! loss is silent. Plain atomics, updated with relaxed ordering: they are
//! observations, never used to synchronise.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters, shared by every component.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A point-in-time copy of [`Stats`], for `/healthz` and tests.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Messages read from the broker's stream.
    messages_routed,
    /// Messages from the broker whose topic was not UTF-8 (skipped).
    messages_invalid,
    /// Copies handed to subscriber queues.
    deliveries,
    /// Subscribers ended because their queue was full.
    slow_consumer_disconnects,
    /// Publishes from web clients queued for the broker.
    publishes_accepted,
    /// Publishes refused because the ingress queue was full.
    publishes_rejected_busy,
    /// Publishes lost because the broker link failed.
    publishes_failed,
    /// Resumes served entirely from the replay ring.
    replay_hits,
    /// Resumes whose history had left the ring (a `gap` was sent).
    replay_misses,
    /// Retained snapshots read from the broker.
    retained_snapshots,
    /// Retained snapshots that failed or timed out (subscribers went on live).
    retained_failures,
    /// Snapshots that hit `mqtt.max_retained` and may be missing values.
    retained_truncated,
    /// Broker links that failed; any makes `/healthz` answer 503.
    broker_link_failures,
    /// SSE streams opened since start.
    sse_streams_opened,
    /// SSE streams open now.
    sse_streams_open,
    /// WebSocket sessions opened since start.
    ws_sessions_opened,
    /// WebSocket sessions open now.
    ws_sessions_open,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn decr(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}
