//! Counters for everything the bridge accepts, delivers or drops, so that no
//! loss is silent. Plain atomics, updated with relaxed ordering: they are
//! observations, never used to synchronise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters, shared by every component.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
            /// Broker receipt to hand-off to an SSE connection's writer.
            pub latency_sse: LatencyHistogram,
            /// Broker receipt to a flushed WebSocket write.
            pub latency_ws: LatencyHistogram,
            /// Refusals by protocol and reason, for `/metrics`.
            pub refusals: Refusals,
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
    /// Messages from the broker without the bridge's stamp, routed as QoS 0
    /// (none should exist: every way into the broker stamps).
    messages_unstamped,
    /// Devices the broker accepted, and connections of them that ended.
    device_connects,
    device_disconnects,
    /// Deliveries not sent to an MQTT 5 client because they exceed its
    /// Maximum Packet Size (acknowledged to the broker by the gate).
    mqtt_deliveries_too_large,
    /// CONNECTs the gate sent the broker again after it closed one
    /// without answering.
    mqtt_connect_retries,
    /// Messages the log refused to append (storage failed): they reached
    /// no subscriber.
    log_append_failures,
    /// Resumes served (in part) from the log, being older than the ring.
    log_resumes,
    /// Messages read back from the log for resumes and `since`.
    log_messages_read,
    /// Reads from the log that failed (the subscriber was told of a gap).
    log_read_failures,
    /// Device events a listener fell too far behind to receive.
    device_events_lagged,
    /// Copies handed to subscriber queues.
    deliveries,
    /// Subscribers ended because they fell too far behind: a full queue,
    /// or (MQTT through the gate) a client that took nothing for a write
    /// timeout.
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
    /// Retained values read from the log's store for a new subscriber.
    retained_snapshots,
    /// Retained reads that failed (the subscriber went on live).
    retained_failures,
    /// Retained reads cut at `mqtt.max_retained` values.
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
    /// MQTT connections the gate accepted since start (devices that talk to
    /// rumqttd directly, on an open bridge, are not seen).
    mqtt_connections_opened,
    /// MQTT connections through the gate open now.
    mqtt_connections_open,
    /// Messages written to SSE streams.
    sse_messages_out,
    /// Messages written to WebSocket sessions.
    ws_messages_out,
    /// Publishes accepted from `POST /publish`.
    http_publishes,
    /// Publishes accepted from WebSocket sessions.
    ws_publishes,
    /// Body bytes HTTP requests have reserved while their bodies arrive
    /// (at most `http.max_body_bytes_in_flight`); a gauge.
    http_body_bytes_in_flight,
    /// Device states published on `$tidewater/presence/…`.
    presence_published,
    /// Device states not published: past `presence.max_devices`, a topic
    /// past the limits, or a broker that would not take it.
    presence_dropped,
    /// Commands (HTTP and WebSocket) their device answered in time.
    commands_answered,
    /// Commands sent that no answer came back for in time.
    commands_timed_out,
    /// Commands refused because nothing was subscribed to their topic.
    commands_unrouted,
    /// Commands refused by a limit: pending ones, or one in flight on the
    /// same topic.
    commands_refused,
    /// Commands that failed otherwise: a bad timeout or topic, the rules,
    /// a publish the broker refused, replies lost to a device flooding
    /// them.
    commands_failed,
    /// Clients refused for missing, invalid or expired credentials (by
    /// protocol and reason in [`Refusals`]).
    auth_failures,
    /// Subscribes and publishes refused by the access rules.
    access_denied,
    /// Requests refused by a limit: connections, subscriptions, publish
    /// rate, payload size.
    limit_refusals,
    /// Messages withheld from a subscriber because the access rules deny
    /// it that topic (subscriptions checked per message), MQTT clients of
    /// the gate included.
    deliveries_withheld,
    /// PUBLISHes (and wills) from MQTT clients the access rules refused.
    mqtt_publishes_denied,
    /// Topic filters of MQTT SUBSCRIBEs the access rules refused.
    mqtt_subscriptions_denied,
    /// Messages the gate withheld from MQTT clients (also in
    /// `deliveries_withheld`).
    mqtt_deliveries_withheld,
    /// MQTT connections closed because they did not read the gate's
    /// answers while sending more requests that needed one.
    mqtt_gate_overflows,
    /// MQTT 5 publishes whose properties (but their topic alias) the gate
    /// did not pass on: rumqttd 0.20 cannot deliver them to 3.1.1 devices.
    mqtt_properties_dropped,
}

/// Where a refusal happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Mqtt,
    Sse,
    WebSocket,
    Http,
    Plugin,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Mqtt,
        Protocol::Sse,
        Protocol::WebSocket,
        Protocol::Http,
        Protocol::Plugin,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Mqtt => "mqtt",
            Protocol::Sse => "sse",
            Protocol::WebSocket => "websocket",
            Protocol::Http => "http",
            Protocol::Plugin => "plugin",
        }
    }
}

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// None given where they are required.
    Missing,
    /// Wrong password, bad signature, unusable claims.
    Invalid,
    /// A token past its `exp`.
    Expired,
    /// An MQTT client id that belongs to another user, or to none.
    ClientId,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 4] = [
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::Expired,
        AuthFailure::ClientId,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::ClientId => "client_id",
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Connections or streams open at once on a listener.
    Connections,
    /// Topic filters one session may hold.
    Subscriptions,
    /// Publishes per second per client.
    Rate,
    /// Size of one payload or message.
    Payload,
    /// MQTT CONNECTs waiting for a password check (`mqtt.max_pending_logins`).
    Logins,
    /// Length of one topic or filter (`mqtt.max_topic_bytes`).
    TopicLength,
    /// Levels of one topic or filter (`mqtt.max_topic_levels`).
    TopicLevels,
    /// Distinct topics the broker holds (`mqtt.max_topics`).
    Topics,
    /// Distinct filters the broker holds (`mqtt.max_filters`).
    Filters,
    /// QoS 1 and 2 publishes one client has in flight (`mqtt.max_inflight`).
    Inflight,
    /// Publishes turned away while the log cannot store them (a full disk).
    Storage,
    /// HTTP request bodies too slow (`http.body_timeout_secs`) or past the
    /// bytes all may be receiving at once (`http.max_body_bytes_in_flight`).
    Bodies,
}

impl Limit {
    pub const ALL: [Limit; 12] = [
        Limit::Connections,
        Limit::Subscriptions,
        Limit::Rate,
        Limit::Payload,
        Limit::Logins,
        Limit::TopicLength,
        Limit::TopicLevels,
        Limit::Topics,
        Limit::Filters,
        Limit::Inflight,
        Limit::Storage,
        Limit::Bodies,
    ];

    /// The limit a refused topic or filter hit, if it hit one rather than
    /// breaking the syntax.
    pub fn of_topic(error: &crate::topic::TopicError) -> Option<Limit> {
        match error {
            crate::topic::TopicError::TooLong { .. } => Some(Limit::TopicLength),
            crate::topic::TopicError::TooManyLevels { .. } => Some(Limit::TopicLevels),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Subscriptions => "subscriptions",
            Limit::Rate => "rate",
            Limit::Payload => "payload",
            Limit::Logins => "logins",
            Limit::TopicLength => "topic_length",
            Limit::TopicLevels => "topic_levels",
            Limit::Topics => "topics",
            Limit::Filters => "filters",
            Limit::Inflight => "inflight",
            Limit::Storage => "storage",
            Limit::Bodies => "bodies",
        }
    }
}

/// The access action a denial was about, as a metric label.
fn action_index(action: crate::auth::Action) -> usize {
    match action {
        crate::auth::Action::Subscribe => 0,
        crate::auth::Action::Publish => 1,
    }
}

/// Refusals by protocol and reason; the totals are plain counters of
/// [`Stats`] so `/healthz` shows them too.
#[derive(Debug, Default)]
pub struct Refusals {
    // Sized by the enums' own lists, so a new variant grows the tables
    // instead of indexing past them.
    auth: [[AtomicU64; AuthFailure::ALL.len()]; Protocol::ALL.len()],
    denied: [[AtomicU64; 2]; Protocol::ALL.len()],
    limited: [[AtomicU64; Limit::ALL.len()]; Protocol::ALL.len()],
}

impl Refusals {
    pub fn auth(&self, protocol: Protocol, failure: AuthFailure) -> u64 {
        self.auth[protocol as usize][failure as usize].load(Ordering::Relaxed)
    }

    pub fn denied(&self, protocol: Protocol, action: crate::auth::Action) -> u64 {
        self.denied[protocol as usize][action_index(action)].load(Ordering::Relaxed)
    }

    pub fn limited(&self, protocol: Protocol, limit: Limit) -> u64 {
        self.limited[protocol as usize][limit as usize].load(Ordering::Relaxed)
    }
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

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Counts credentials refused on `protocol`.
    pub fn refuse_auth(&self, protocol: Protocol, failure: AuthFailure) {
        Self::incr(&self.auth_failures);
        Self::incr(&self.refusals.auth[protocol as usize][failure as usize]);
    }

    /// Counts a subscribe or publish the access rules refused.
    pub fn deny(&self, protocol: Protocol, action: crate::auth::Action) {
        Self::incr(&self.access_denied);
        Self::incr(&self.refusals.denied[protocol as usize][action_index(action)]);
    }

    /// Counts a request a limit refused.
    pub fn limit(&self, protocol: Protocol, limit: Limit) {
        Self::incr(&self.limit_refusals);
        Self::incr(&self.refusals.limited[protocol as usize][limit as usize]);
    }
}

/// Upper bounds of the latency buckets, in seconds: 50 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A histogram updated with three relaxed atomic additions per observation,
/// so that every delivery can be observed without a lock on the hot path.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is the overflow.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, [(upper bound, observations in bucket)])`.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observations land in the first bucket whose bound holds them, and the
    /// overflow bucket takes the rest.
    #[test]
    fn latency_buckets() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(40));
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_secs(3));
        let (sum, count, buckets) = histogram.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 3.000_34).abs() < 1e-9);
        assert_eq!(buckets[0], (0.000_05, 1));
        assert_eq!(buckets[3], (0.000_5, 1));
        assert_eq!(buckets[LATENCY_BUCKETS.len()], (f64::INFINITY, 1));
    }
}
