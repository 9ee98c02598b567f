//! The router: one ordered stream in from the broker, fanned out to every
//! web subscriber. It only reads: publishes go into the broker through
//! its handle (`crate::broker::Broker`), and come back here like any
//! device's message.
//!
//! The broker is the single ordering point. Every message, from a device or
//! a web client, comes back on the broker's egress link, and
//! [`Router::dispatch_batch`] appends it to the log (see `crate::log`),
//! which gives it its position, stores it in the replay ring (a cache of
//! the log's newest messages) and hands an `Arc` of it to each matching
//! subscriber's bounded queue. The router
//! never waits on a subscriber: a full queue ends that subscription (the
//! client reconnects with its last id and replays), and the drop is counted.
//!
//! All mutable state sits behind one `std::sync::Mutex`, held for a few
//! microseconds at a time and never across an `.await`. Subscribing takes the
//! same lock as dispatching, which is what makes resume exact: the live queue
//! is registered and the replay read in one step, so no message can fall
//! between them or arrive twice.

pub mod device;
mod message;
mod replay;
pub mod start;
mod subscription;
pub mod trie;

pub use device::{
    DeviceEvent, DeviceEventKind, DeviceEventReceiver, DeviceEvents, DisconnectReason,
};
pub use message::{now_ms, Encoding, EventId, MalformedId, Message};
pub use start::{MalformedStart, Start};
pub use subscription::{
    filter_cost, Delivery, FilterBounds, QueueBound, SubscribeError, SubscribeRequest,
    Subscription, LEVEL_COST,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::auth::Policy;
use crate::config::Route;
use crate::log::{Entry, Log};
use crate::stats::Stats;
use crate::topic;
use replay::ReplayRing;
use trie::FilterTrie;

/// Identifies one subscription inside the router.
pub type SubscriberId = u64;

/// Settings the router needs from the configuration.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub replay_capacity: usize,
    pub replay_max_bytes: usize,
    pub routes: Vec<Route>,
    /// The access rules every subscribe and every delivery is checked
    /// against.
    pub policy: Arc<Policy>,
    /// Device events a listener may fall behind by
    /// (`mqtt.device_events_capacity`).
    pub device_events_capacity: usize,
    /// Messages read from the log at a time for one resume (`log.read_page`).
    pub read_page: usize,
    /// Messages a `since` may reach back (`sse.max_replay`).
    pub max_replay: usize,
    /// Retained values one new subscriber gets at most (`mqtt.max_retained`).
    pub max_retained: usize,
    /// What every filter is checked against (`mqtt.max_topic_bytes`,
    /// `mqtt.max_topic_levels`), whoever subscribes.
    pub topics: crate::topic::Limits,
}

impl RouterSettings {
    /// The settings `config` gives, with `policy` as the access rules.
    pub fn from_config(config: &crate::config::Config, policy: Arc<Policy>) -> Self {
        Self {
            device_events_capacity: config.mqtt.device_events_capacity,
            replay_capacity: config.sse.replay_capacity,
            replay_max_bytes: config.sse.replay_max_bytes,
            read_page: config.log.read_page,
            max_replay: config.sse.max_replay,
            max_retained: usize::try_from(config.mqtt.max_retained).unwrap_or(usize::MAX),
            routes: config.routes.clone(),
            topics: config.topic_limits(),
            policy,
        }
    }
}

/// A cheap, cloneable handle to the router.
#[derive(Debug, Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    epoch: u64,
    /// Where every message is appended before anyone sees it.
    log: Arc<dyn Log>,
    routes: Vec<(String, Arc<str>)>,
    default_event: Arc<str>,
    policy: Arc<Policy>,
    stats: Arc<Stats>,
    devices: DeviceEvents,
    read_page: usize,
    max_replay: usize,
    max_retained: usize,
    topics: crate::topic::Limits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    next_subscriber: SubscriberId,
    trie: FilterTrie<SubscriberId>,
    subscribers: HashMap<SubscriberId, Subscriber>,
    replay: ReplayRing,
    /// Reused by every dispatch so matching allocates nothing in the steady state.
    matched: Vec<SubscriberId>,
}

#[derive(Debug)]
struct Subscriber {
    /// Each filter with the sequence number from which it receives live
    /// messages, so a later resume knows what was already delivered.
    filters: Vec<(String, u64)>,
    queue: mpsc::Sender<Arc<Message>>,
    /// Bytes of the messages in `queue`, shared with the receiving
    /// [`Subscription`], which subtracts what it takes out.
    queued_bytes: Arc<AtomicUsize>,
    /// Past this many queued bytes the queue counts as full, whatever its
    /// message count: a reader that stalls on large messages is ended as
    /// soon as one that stalls on small ones.
    max_bytes: usize,
}

impl Router {
    /// A router over `log`, which also keeps the retained values every new
    /// subscriber gets first.
    pub fn new(settings: RouterSettings, stats: Arc<Stats>, log: Arc<dyn Log>) -> Self {
        let routes = settings
            .routes
            .into_iter()
            .map(|r| (r.filter, Arc::from(r.event.as_str())))
            .collect();
        let next_seq = log.next();
        Self {
            shared: Arc::new(Shared {
                epoch: log.epoch(),
                routes,
                default_event: Arc::from("message"),
                policy: settings.policy,
                devices: DeviceEvents::new(settings.device_events_capacity, stats.clone()),
                read_page: settings.read_page.max(1),
                max_replay: settings.max_replay,
                max_retained: settings.max_retained,
                topics: settings.topics,
                stats,
                log,
                state: Mutex::new(State {
                    next_seq,
                    next_subscriber: 1,
                    trie: FilterTrie::new(),
                    subscribers: HashMap::new(),
                    replay: ReplayRing::new(settings.replay_capacity, settings.replay_max_bytes),
                    matched: Vec::new(),
                }),
            }),
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    /// Where the gate reports each device's connects and disconnects, and
    /// where listeners subscribe to them.
    pub fn devices(&self) -> &DeviceEvents {
        &self.shared.devices
    }

    /// The access rules in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.shared.policy
    }

    /// Whether some web or plugin subscriber holds a filter matching
    /// `topic` (whether it may read it is decided per message).
    pub fn has_subscriber(&self, topic: &str) -> bool {
        let mut found = false;
        self.lock().trie.for_each_match(topic, |_| found = true);
        found
    }

    /// The limits every topic and filter is checked against.
    pub fn topic_limits(&self) -> crate::topic::Limits {
        self.shared.topics
    }

    /// This router's epoch: the first half of every id it issues.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Messages read from the log at a time for one resume.
    pub(crate) fn read_page(&self) -> usize {
        self.shared.read_page
    }

    /// Messages a `since` may reach back.
    pub(crate) fn max_replay(&self) -> usize {
        self.shared.max_replay
    }

    /// Retained values one new subscriber gets at most.
    pub(crate) fn max_retained(&self) -> usize {
        self.shared.max_retained
    }

    /// The log beneath the router.
    pub fn log(&self) -> &Arc<dyn Log> {
        &self.shared.log
    }

    /// Subscribers registered now.
    pub fn subscriber_count(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// The SSE event name for `topic`: the first matching route, else `message`.
    pub fn event_for(&self, topic: &str) -> Arc<str> {
        self.shared
            .routes
            .iter()
            .find(|(filter, _)| topic::matches(filter, topic))
            .map_or_else(|| self.shared.default_event.clone(), |(_, e)| e.clone())
    }

    /// Routes one message read from the broker (see [`Router::dispatch_batch`]).
    pub fn dispatch(&self, topic: &str, payload: Bytes, meta: crate::broker::stamp::Meta) {
        self.dispatch_batch(&[Entry {
            time_ms: now_ms(),
            qos: meta.qos,
            retain: meta.retain,
            topic: topic.into(),
            payload,
        }]);
    }

    /// Routes messages read from the broker, in its order: appends them to
    /// the log, which gives them their positions (and, once this returns,
    /// keeps them through a crash of the process), then keeps each for
    /// replay and queues it for every matching subscriber without waiting.
    /// A batch the log refuses reaches no one and is counted: a message a
    /// client saw always has an id that names it.
    pub fn dispatch_batch(&self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let stats = &self.shared.stats;
        let first = match self.shared.log.append(entries) {
            Ok(first) => first,
            Err(e) => {
                Stats::add(&stats.log_append_failures, entries.len() as u64);
                if matches!(e, crate::log::LogError::Closed) {
                    tracing::debug!(
                        lost = entries.len(),
                        "Messages after the log closed at shutdown reach no one."
                    );
                } else {
                    tracing::error!(error = %e, lost = entries.len(), "The log refused messages; they reach no one.");
                }
                return;
            }
        };
        let mut state = self.lock();
        for (seq, entry) in (first..).zip(entries) {
            let message = self.message_at(seq, entry);
            state.next_seq = seq + 1;
            self.fan_out(&mut state, message);
        }
    }

    /// The message for log position `seq`, as subscribers get it.
    fn message_at(&self, seq: u64, entry: &Entry) -> Arc<Message> {
        let record = crate::log::Record {
            position: seq,
            time_ms: entry.time_ms,
            qos: entry.qos,
            retain: entry.retain,
            topic: entry.topic.clone(),
            payload: entry.payload.clone(),
        };
        self.message(Some(seq), record)
    }

    /// A record read back from the log, as subscribers get it.
    pub(crate) fn message_from_log(&self, record: crate::log::Record) -> Arc<Message> {
        self.message(Some(record.position), record)
    }

    /// A retained value from the log's store, as subscribers get it: no
    /// id (it is current state, not a place in the stream), retain set.
    pub(crate) fn retained_message(&self, mut record: crate::log::Record) -> Arc<Message> {
        record.retain = true;
        self.message(None, record)
    }

    /// `record` as a shared message, with this epoch's id for `seq`.
    fn message(&self, seq: Option<u64>, record: crate::log::Record) -> Arc<Message> {
        let id = seq.map(|seq| EventId {
            epoch: self.shared.epoch,
            seq,
        });
        let event = self.event_for(&record.topic);
        let mut message = Message::new(id, record.topic, record.payload, record.retain, event);
        message.qos = record.qos;
        message.received_at_ms = record.time_ms;
        Arc::new(message)
    }

    fn fan_out(&self, state: &mut State, message: Arc<Message>) {
        let stats = &self.shared.stats;
        let topic = &*message.topic;
        // Counted before any subscriber can see it, so the counters never
        // lag behind what a client has already received.
        Stats::incr(&stats.messages_routed);
        state.replay.push(message.clone());

        let State {
            trie,
            subscribers,
            matched,
            ..
        } = &mut *state;
        matched.clear();
        trie.for_each_match(topic, |id| matched.push(id));
        // A subscriber with two overlapping filters gets the message once.
        matched.sort_unstable();
        matched.dedup();
        let mut delivered = 0;
        let mut ended = Vec::new();
        for id in matched.iter() {
            let Some(subscriber) = subscribers.get(id) else {
                continue;
            };
            match offer(subscriber, &message) {
                Offer::Queued => delivered += 1,
                Offer::Full => {
                    Stats::incr(&stats.slow_consumer_disconnects);
                    tracing::debug!(
                        subscriber = id,
                        topic,
                        "Queue full, ending the subscription."
                    );
                    ended.push(*id);
                }
                Offer::Gone => ended.push(*id),
            }
        }
        for id in ended {
            remove_subscriber(state, id);
        }
        Stats::add(&stats.deliveries, delivered);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind (counters,
        // a map, a ring); carrying on serves everyone else.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What became of a message offered to one subscriber.
enum Offer {
    Queued,
    /// Its queue is full, by message count or by bytes.
    Full,
    /// It has gone away.
    Gone,
}

/// Queues `message` for `subscriber` without waiting. The byte bound only
/// counts what is already queued: an empty queue takes any message, so one
/// as large as the largest allowed payload never ends a reader that is
/// keeping up.
fn offer(subscriber: &Subscriber, message: &Arc<Message>) -> Offer {
    // Reserved before sending so the receiver, which may run at once,
    // never subtracts bytes that were not yet added.
    let size = message.queued_size();
    let queued = subscriber.queued_bytes.fetch_add(size, Ordering::Relaxed);
    let offer = if queued > 0 && queued + size > subscriber.max_bytes {
        Offer::Full
    } else {
        match subscriber.queue.try_send(message.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => Offer::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Gone,
        }
    };
    if !matches!(offer, Offer::Queued) {
        subscriber.queued_bytes.fetch_sub(size, Ordering::Relaxed);
    }
    offer
}

fn remove_subscriber(state: &mut State, id: SubscriberId) {
    if let Some(subscriber) = state.subscribers.remove(&id) {
        for (filter, _) in &subscriber.filters {
            state.trie.remove(filter, id);
        }
    }
}

#[cfg(test)]
mod tests;
