//! The router: one ordered stream in from the broker, fanned out to every
//! web subscriber; publishes from web clients sent back into the broker.
//!
//! The broker is the single ordering point. Every message, from a device or
//! a web client, comes back on the broker's egress link, and [`Router::dispatch`]
//! gives it the next sequence number, stores it in the replay ring and hands
//! an `Arc` of it to each matching subscriber's bounded queue. The router
//! never waits on a subscriber: a full queue ends that subscription (the
//! client reconnects with its last id and replays), and the drop is counted.
//!
//! All mutable state sits behind one `std::sync::Mutex`, held for a few
//! microseconds at a time and never across an `.await`. Subscribing takes the
//! same lock as dispatching, which is what makes resume exact: the live queue
//! is registered and the replay read in one step, so no message can fall
//! between them or arrive twice.

mod message;
mod replay;
mod subscription;
pub mod trie;

pub use message::{now_ms, Encoding, EventId, MalformedId, Message};
pub use subscription::{Delivery, Subscription};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{self, Action, Denied, Principal};
use crate::config::Route;
use crate::stats::Stats;
use crate::topic::{self, TopicError};
use replay::{ReplayRing, Resume};
use trie::FilterTrie;

/// Identifies one subscription inside the router.
pub type SubscriberId = u64;

/// A publish on its way into the broker, with an optional confirmation sent
/// once the broker has appended it to its log.
#[derive(Debug)]
pub struct IngressRequest {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub confirm: Option<oneshot::Sender<()>>,
}

/// The broker's retained messages at one moment, as shared messages.
pub type RetainedSnapshot = Arc<Vec<Arc<Message>>>;

/// A request for a fresh retained snapshot; answered with `Err(())` if the
/// broker could not produce one.
pub type RetainedRequest = oneshot::Sender<Result<RetainedSnapshot, ()>>;

/// How long a publish waits for the broker's confirmation.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings the router needs from the configuration.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    pub replay_capacity: usize,
    pub replay_max_bytes: usize,
    pub routes: Vec<Route>,
}

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub principal: Principal,
    pub filters: Vec<String>,
    /// The last event id the client saw, to resume after it.
    pub resume: Option<EventId>,
    pub queue_capacity: usize,
    pub max_filters: usize,
    pub max_filter_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("no topic filter given")]
    NoFilters,
    #[error("too many topic filters: {count}, the limit is {max}")]
    TooManyFilters { count: usize, max: usize },
    #[error("invalid topic filter `{filter}`: {source}")]
    InvalidFilter { filter: String, source: TopicError },
    #[error(transparent)]
    Denied(#[from] Denied),
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid topic `{topic}`: {source}")]
    InvalidTopic { topic: String, source: TopicError },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("the broker's ingress queue is full; retry shortly")]
    Busy,
    #[error("the broker is not accepting publishes")]
    Unavailable,
    #[error("the broker did not confirm the publish within {0:?}")]
    Timeout(Duration),
}

/// A cheap, cloneable handle to the router.
#[derive(Debug, Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    epoch: u64,
    routes: Vec<(String, Arc<str>)>,
    default_event: Arc<str>,
    stats: Arc<Stats>,
    ingress: mpsc::Sender<IngressRequest>,
    retained: mpsc::Sender<RetainedRequest>,
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
    filters: Arc<[String]>,
    queue: mpsc::Sender<Arc<Message>>,
}

impl Router {
    /// A router whose publishes go to `ingress` and whose retained snapshots
    /// are requested on `retained`; the broker side reads both.
    pub fn new(
        settings: RouterSettings,
        stats: Arc<Stats>,
        ingress: mpsc::Sender<IngressRequest>,
        retained: mpsc::Sender<RetainedRequest>,
    ) -> Self {
        let routes = settings
            .routes
            .into_iter()
            .map(|r| (r.filter, Arc::from(r.event.as_str())))
            .collect();
        Self {
            shared: Arc::new(Shared {
                epoch: now_ms(),
                routes,
                default_event: Arc::from("message"),
                stats,
                ingress,
                retained,
                state: Mutex::new(State {
                    next_seq: 1,
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

    /// This router's epoch: the first half of every id it issues.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
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

    /// Registers a subscriber. Its [`Subscription`] yields, in order: a gap
    /// notice if the resume point is lost, the retained values if it did not
    /// resume (or lost history), the replayed messages, then live ones.
    pub fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription, SubscribeError> {
        let filters = checked_filters(&request)?;
        let (sender, receiver) = mpsc::channel(request.queue_capacity.max(1));
        let epoch = self.shared.epoch;

        let mut state = self.lock();
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        for filter in filters.iter() {
            state.trie.insert(filter, id);
        }
        state.subscribers.insert(
            id,
            Subscriber {
                filters: filters.clone(),
                queue: sender,
            },
        );
        let mut replay = Vec::new();
        let gap = match request.resume {
            None => None,
            Some(last) if last.epoch != epoch => Some(last),
            Some(last) => match state.replay.resume_point(last.seq, state.next_seq) {
                Resume::From(index) => {
                    replay.extend(
                        state
                            .replay
                            .since(index)
                            .filter(|m| filters.iter().any(|f| topic::matches(f, &m.topic)))
                            .cloned(),
                    );
                    None
                }
                Resume::Lost => Some(last),
            },
        };
        drop(state);

        let stats = &self.shared.stats;
        match (request.resume, gap) {
            (Some(_), None) => Stats::incr(&stats.replay_hits),
            (Some(_), Some(_)) => Stats::incr(&stats.replay_misses),
            _ => {}
        }
        let retained = (request.resume.is_none() || gap.is_some()).then(|| self.request_retained());
        Ok(Subscription::new(
            id,
            self.clone(),
            filters,
            gap,
            retained,
            replay,
            receiver,
        ))
    }

    /// Removes a subscriber; called when its [`Subscription`] is dropped.
    pub(crate) fn unsubscribe(&self, id: SubscriberId) {
        let mut state = self.lock();
        remove_subscriber(&mut state, id);
    }

    /// Asks the broker side for a fresh retained snapshot.
    fn request_retained(&self) -> oneshot::Receiver<Result<RetainedSnapshot, ()>> {
        let (reply, receiver) = oneshot::channel();
        if let Err(
            mpsc::error::TrySendError::Full(reply) | mpsc::error::TrySendError::Closed(reply),
        ) = self.shared.retained.try_send(reply)
        {
            // Answered at once so the subscriber goes on to live messages.
            let _ = reply.send(Err(()));
        }
        receiver
    }

    /// Routes one message read from the broker: assigns its id, keeps it for
    /// replay and queues it for every matching subscriber without waiting.
    pub fn dispatch(&self, topic: &str, payload: Bytes) {
        let event = self.event_for(topic);
        let stats = &self.shared.stats;
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        let id = EventId {
            epoch: self.shared.epoch,
            seq,
        };
        let message = Arc::new(Message::new(Some(id), topic.into(), payload, false, event));
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
            match subscriber.queue.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Stats::incr(&stats.slow_consumer_disconnects);
                    tracing::debug!(
                        subscriber = id,
                        topic,
                        "Queue full, ending the subscription."
                    );
                    ended.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => ended.push(*id),
            }
        }
        for id in ended {
            remove_subscriber(&mut state, id);
        }
        drop(state);
        Stats::incr(&stats.messages_routed);
        Stats::add(&stats.deliveries, delivered);
    }

    /// Sends a publish into the broker. With `confirm`, returns once the
    /// broker has appended it to its log; otherwise once it is queued.
    pub async fn publish(
        &self,
        principal: &Principal,
        topic: &str,
        payload: Bytes,
        retain: bool,
        confirm: bool,
    ) -> Result<(), PublishError> {
        let (reply, confirmation) = if confirm {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.enqueue(principal, topic, payload, retain, reply)?;
        if let Some(confirmation) = confirmation {
            match tokio::time::timeout(CONFIRM_TIMEOUT, confirmation).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(PublishError::Unavailable),
                Err(_) => return Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
            }
        }
        Ok(())
    }

    /// Queues a publish for the broker without waiting at all: for callers
    /// outside the async runtime, such as plugin threads. A full queue is
    /// [`PublishError::Busy`].
    pub fn try_publish(
        &self,
        principal: &Principal,
        topic: &str,
        payload: Bytes,
        retain: bool,
    ) -> Result<(), PublishError> {
        self.enqueue(principal, topic, payload, retain, None)
    }

    fn enqueue(
        &self,
        principal: &Principal,
        topic: &str,
        payload: Bytes,
        retain: bool,
        confirm: Option<oneshot::Sender<()>>,
    ) -> Result<(), PublishError> {
        topic::validate_topic(topic).map_err(|source| PublishError::InvalidTopic {
            topic: topic.chars().take(256).collect(),
            source,
        })?;
        auth::authorize(principal, Action::Publish, topic)?;
        let request = IngressRequest {
            topic: topic.to_owned(),
            payload,
            retain,
            confirm,
        };
        let stats = &self.shared.stats;
        match self.shared.ingress.try_send(request) {
            Ok(()) => {
                Stats::incr(&stats.publishes_accepted);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                Stats::incr(&stats.publishes_rejected_busy);
                Err(PublishError::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PublishError::Unavailable),
        }
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

fn remove_subscriber(state: &mut State, id: SubscriberId) {
    if let Some(subscriber) = state.subscribers.remove(&id) {
        for filter in subscriber.filters.iter() {
            state.trie.remove(filter, id);
        }
    }
}

fn checked_filters(request: &SubscribeRequest) -> Result<Arc<[String]>, SubscribeError> {
    if request.filters.is_empty() {
        return Err(SubscribeError::NoFilters);
    }
    if request.filters.len() > request.max_filters {
        return Err(SubscribeError::TooManyFilters {
            count: request.filters.len(),
            max: request.max_filters,
        });
    }
    let mut filters: Vec<String> = Vec::with_capacity(request.filters.len());
    for filter in &request.filters {
        topic::validate_filter(filter, request.max_filter_bytes).map_err(|source| {
            SubscribeError::InvalidFilter {
                filter: filter.chars().take(256).collect(),
                source,
            }
        })?;
        auth::authorize(&request.principal, Action::Subscribe, filter)?;
        if !filters.contains(filter) {
            filters.push(filter.clone());
        }
    }
    Ok(filters.into())
}

#[cfg(test)]
mod tests;
