//! Subscribing: registering a subscriber, growing and shrinking its set of
//! filters, and the order in which it receives what it asked for.
//!
//! A subscriber is one bounded queue in the router plus a set of filters. A
//! WebSocket session adds filters over its lifetime; an SSE stream gives all
//! of them at once. Each addition may resume from an id: the router then
//! replays, from the ring, the messages after that id which match the new
//! filters and were not already delivered live through an older filter.
//! Filters are added and the replay is read under the router's lock, so
//! nothing falls between replay and live, and nothing arrives twice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::replay::Resume;
use super::start::Start;
use super::{EventId, Message, Router, Subscriber, SubscriberId};
use crate::auth::{Access, Action, Denied, Principal};
use crate::stats::{Limit, Stats};
use crate::topic::{self, TopicError};

/// What an SSE stream asks for, all at once.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub principal: Principal,
    pub filters: Vec<String>,
    /// Where to start: now, after the last event id the client saw, or
    /// at a time.
    pub start: Start,
    pub queue: QueueBound,
    pub bounds: FilterBounds,
}

/// What one subscriber's filters may add up to, besides the limits every
/// filter has (`mqtt.max_topic_bytes`, `mqtt.max_topic_levels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterBounds {
    /// Filters held at once (`sse.max_filters`, `websocket.max_filters`).
    pub max_filters: usize,
    /// Longest filter, in bytes, where tighter than `mqtt.max_topic_bytes`
    /// (`sse.max_filter_bytes`).
    pub max_filter_bytes: usize,
    /// What the filters held at once may cost the router, in bytes, as
    /// [`filter_cost`] counts it (`sse.filter_budget_bytes`,
    /// `websocket.filter_budget_bytes`): many long, deep filters are far
    /// dearer than the same number of short ones.
    pub budget_bytes: usize,
}

/// What one level of a filter costs the router, in bytes: a trie node
/// and its place in its parent's table. Measured: a distinct filter of 32
/// levels and 1 KiB grows the process by 20.5 KiB (the test
/// `the_most_subscriptions_allowed_stay_within_the_memory_budget`), which
/// this, with the text counted twice, rounds up to 22 KiB.
pub const LEVEL_COST: usize = 640;

/// What one filter costs the router, in bytes: its text (kept by the
/// subscriber and the router) and a trie node per level. An estimate of
/// the worst case, where no other subscriber shares its nodes.
pub fn filter_cost(filter: &str) -> usize {
    let levels = filter.bytes().filter(|&b| b == b'/').count() + 1;
    2 * filter.len() + levels * LEVEL_COST
}

/// How far a subscriber may fall behind before the router ends it: both
/// bounds hold, so neither many small messages nor a few large ones pile up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    pub messages: usize,
    /// Topic and payload bytes of the queued messages.
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("no topic filter given")]
    NoFilters,
    #[error("too many topic filters: {count}, the limit is {max}")]
    TooManyFilters { count: usize, max: usize },
    #[error("these topic filters would cost {cost} bytes, past the budget of {max}: use fewer, shorter or shallower filters")]
    OverBudget { cost: usize, max: usize },
    #[error("invalid topic filter `{filter}`: {source}")]
    InvalidFilter { filter: String, source: TopicError },
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("the subscription has ended: its queue overflowed")]
    Ended,
    #[error("that time is {messages} messages back, past the limit of {max} (sse.max_replay): ask for a later time")]
    ReplayTooLong { messages: u64, max: usize },
}

impl SubscribeError {
    /// The configured limit that refused it, if one did: what the
    /// transport counts.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            SubscribeError::TooManyFilters { .. } | SubscribeError::OverBudget { .. } => {
                Some(Limit::Subscriptions)
            }
            SubscribeError::InvalidFilter { source, .. } => Limit::of_topic(source),
            _ => None,
        }
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// History after this id was lost (it left the replay ring, or it is
    /// from before a restart); what follows is current state and live.
    Gap {
        after: EventId,
    },
    Message(Arc<Message>),
}

/// Deliveries owed to the subscriber before its live queue, in order.
#[derive(Debug)]
enum Pending {
    Gap(EventId),
    /// Messages older than the ring, read from the log a page at a time:
    /// positions `next..to` on `filters`, less what reached the subscriber
    /// live through its `earlier` filters.
    History {
        next: u64,
        to: u64,
        filters: Vec<String>,
        earlier: Vec<(String, u64)>,
        /// For a `since`: records taken before this time are left out (the
        /// start position is found from an index, a little early).
        since: Option<u64>,
    },
    /// The retained values on these filters set before position `before`
    /// (later ones arrive live), read from the log when their turn comes.
    Retained {
        filters: Vec<String>,
        before: u64,
    },
    Messages(VecDeque<Arc<Message>>),
}

/// What the front of a subscription holds once what was ready is taken.
enum Ready {
    Message(Arc<Message>),
    /// The live queue is next.
    Live,
    /// A gap notice is next (left at the front until it is delivered).
    Gap(EventId),
    /// Retained values must be loaded first.
    Retained,
    /// A page of history must be read from the log first.
    History,
}

/// A registered subscriber. Yields what each addition of filters owes (a gap
/// notice, retained values, replayed messages) before live messages.
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriberId,
    router: Router,
    filters: Vec<String>,
    pending: VecDeque<Pending>,
    live: mpsc::Receiver<Arc<Message>>,
    /// Bytes queued in `live`; the router adds, this side subtracts.
    queued_bytes: Arc<AtomicUsize>,
    /// Whether the last delivery came from the live queue (rather than
    /// retained values or replay), so its latency means something.
    last_live: bool,
    /// Set once a filter was allowed only per message: whose access every
    /// message is checked against before delivery.
    reader: Option<Principal>,
    /// What `filters` cost the router ([`filter_cost`]).
    cost: usize,
}

impl Router {
    /// Registers a subscriber with no filters yet (a WebSocket session).
    pub fn open(&self, bound: QueueBound) -> Subscription {
        let (queue, live) = mpsc::channel(bound.messages.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let mut state = self.lock();
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        state.subscribers.insert(
            id,
            Subscriber {
                filters: Vec::new(),
                queue,
                queued_bytes: queued_bytes.clone(),
                max_bytes: bound.bytes.max(1),
            },
        );
        drop(state);
        Subscription {
            id,
            router: self.clone(),
            filters: Vec::new(),
            pending: VecDeque::new(),
            live,
            queued_bytes,
            last_live: false,
            reader: None,
            cost: 0,
        }
    }

    /// Registers a subscriber with its filters (an SSE stream).
    pub fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription, SubscribeError> {
        if request.filters.is_empty() {
            return Err(SubscribeError::NoFilters);
        }
        let mut subscription = self.open(request.queue);
        subscription.add_from(
            &request.principal,
            &request.filters,
            request.start,
            request.bounds,
        )?;
        Ok(subscription)
    }

    /// Removes a subscriber; called when its [`Subscription`] is dropped.
    fn unsubscribe(&self, id: SubscriberId) {
        let mut state = self.lock();
        super::remove_subscriber(&mut state, id);
    }
}

impl Subscription {
    pub fn filters(&self) -> &[String] {
        &self.filters
    }

    /// Whether the delivery just returned was live (not retained or replayed).
    pub fn last_was_live(&self) -> bool {
        self.last_live
    }

    /// Adds filters (those already present are ignored). Without `resume`
    /// the subscriber first gets the retained values of the new filters;
    /// with it, the messages after that id which match them, or a gap notice
    /// and the retained values if that history is gone.
    pub fn add(
        &mut self,
        principal: &Principal,
        filters: &[String],
        resume: Option<EventId>,
        bounds: FilterBounds,
    ) -> Result<(), SubscribeError> {
        let start = resume.map_or(Start::Now, Start::After);
        self.add_from(principal, filters, start, bounds)
    }

    /// Adds filters, starting where `start` says: [`Start::Now`] and
    /// [`Start::After`] as [`Subscription::add`]; [`Start::Since`] with the
    /// retained values, then every matching message from that time on
    /// (from the log, then the ring), then live messages. A time further
    /// back than the router's `max_replay` messages is refused.
    pub fn add_from(
        &mut self,
        principal: &Principal,
        filters: &[String],
        start: Start,
        bounds: FilterBounds,
    ) -> Result<(), SubscribeError> {
        let resume = match start {
            Start::After(id) => Some(id),
            _ => None,
        };
        let mut added: Vec<String> = Vec::new();
        let mut per_message = false;
        let limits = self.router.topic_limits().at_most(bounds.max_filter_bytes);
        for filter in filters {
            limits
                .filter(filter)
                .map_err(|source| SubscribeError::InvalidFilter {
                    filter: filter.chars().take(256).collect(),
                    source,
                })?;
            let access = self
                .router
                .policy()
                .authorize(principal, Action::Subscribe, filter)?;
            per_message |= access == Access::PerMessage;
            if !self.filters.contains(filter) && !added.contains(filter) {
                added.push(filter.clone());
            }
        }
        let count = self.filters.len() + added.len();
        if count > bounds.max_filters {
            return Err(SubscribeError::TooManyFilters {
                count,
                max: bounds.max_filters,
            });
        }
        let cost = self.cost + added.iter().map(|f| filter_cost(f)).sum::<usize>();
        if cost > bounds.budget_bytes {
            return Err(SubscribeError::OverBudget {
                cost,
                max: bounds.budget_bytes,
            });
        }
        if added.is_empty() {
            return Ok(());
        }
        if per_message {
            self.reader = Some(principal.clone());
        }

        let router = self.router.clone();
        let log = router.log().clone();
        // Where a time falls in the log, from its in-memory index: no
        // storage is read on this (async) thread.
        let since = match start {
            Start::Since(time_ms) => Some((time_ms, log.position_near(time_ms).max(log.first()))),
            _ => None,
        };
        let (gap, replay, history, from_seq) = {
            let mut guard = router.lock();
            let state = &mut *guard;
            let from_seq = state.next_seq;
            if let Some((_, position)) = since {
                let messages = from_seq.saturating_sub(position);
                let max = router.max_replay();
                if messages > max as u64 {
                    return Err(SubscribeError::ReplayTooLong { messages, max });
                }
            }
            let Some(subscriber) = state.subscribers.get_mut(&self.id) else {
                return Err(SubscribeError::Ended);
            };
            let earlier = subscriber.filters.clone();
            for filter in &added {
                subscriber.filters.push((filter.clone(), from_seq));
                state.trie.insert(filter, self.id);
            }
            let owed = |m: &&Arc<Message>| {
                matches_any(added.iter(), &m.topic) && !delivered_live(&earlier, m)
            };
            let mut replay = VecDeque::new();
            let mut history = None;
            if let Some((time_ms, position)) = since {
                let oldest = state.replay.oldest_seq().unwrap_or(from_seq);
                if position < oldest {
                    history = Some(Pending::History {
                        next: position,
                        to: oldest,
                        filters: added.clone(),
                        earlier: earlier.clone(),
                        since: Some(time_ms),
                    });
                }
                let recent = |m: &&Arc<Message>| m.received_at_ms >= time_ms && owed(m);
                replay.extend(state.replay.since(0).filter(recent).cloned());
            }
            let gap = match resume.map(|last| (last, log.resume_after(last))) {
                None => None,
                Some((last, crate::log::Resume::Gap)) => Some(last),
                // Not yet routed: no client can have seen it.
                Some((last, crate::log::Resume::After(after))) if after >= from_seq => Some(last),
                Some((last, crate::log::Resume::After(after))) => {
                    match state.replay.resume_point(after, from_seq) {
                        Resume::From(index) => {
                            replay.extend(state.replay.since(index).filter(owed).cloned());
                            None
                        }
                        // Older than the ring: from the log, while it
                        // still holds it, then the whole ring.
                        Resume::Lost if after + 1 >= log.first() => {
                            let oldest = state.replay.oldest_seq().unwrap_or(from_seq);
                            history = Some(Pending::History {
                                next: after + 1,
                                to: oldest,
                                filters: added.clone(),
                                earlier: earlier.clone(),
                                since: None,
                            });
                            replay.extend(state.replay.since(0).filter(owed).cloned());
                            None
                        }
                        Resume::Lost => Some(last),
                    }
                }
            };
            (gap, replay, history, from_seq)
        };

        let stats = router.stats();
        match (resume, gap, &history) {
            (Some(_), None, Some(_)) => Stats::incr(&stats.log_resumes),
            (Some(_), None, None) => Stats::incr(&stats.replay_hits),
            (Some(_), Some(_), _) => Stats::incr(&stats.replay_misses),
            _ => {}
        }
        if let Some(after) = gap {
            self.pending.push_back(Pending::Gap(after));
        }
        if resume.is_none() || gap.is_some() {
            self.pending.push_back(Pending::Retained {
                filters: added.clone(),
                before: from_seq,
            });
        }
        self.pending.extend(history);
        if !replay.is_empty() {
            self.pending.push_back(Pending::Messages(replay));
        }
        self.cost = cost;
        self.filters.extend(added);
        Ok(())
    }

    /// Removes filters; returns how many were present. Messages already
    /// queued for them are still delivered.
    pub fn remove(&mut self, filters: &[String]) -> usize {
        let before = self.filters.len();
        self.filters.retain(|f| !filters.contains(f));
        self.cost = self.filters.iter().map(|f| filter_cost(f)).sum();
        let mut state = self.router.lock();
        let state = &mut *state;
        if let Some(subscriber) = state.subscribers.get_mut(&self.id) {
            subscriber.filters.retain(|(f, _)| !filters.contains(f));
            for filter in filters {
                state.trie.remove(filter, self.id);
            }
        }
        before - self.filters.len()
    }

    /// The next delivery; `None` once the router has ended this subscription
    /// (its queue overflowed) and everything queued before was delivered.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.ready() {
                Ready::Message(message) => return Some(Delivery::Message(message)),
                Ready::Gap(after) => {
                    self.pending.pop_front();
                    return Some(Delivery::Gap { after });
                }
                Ready::Retained => self.load_retained().await,
                Ready::History => self.load_history().await,
                Ready::Live => {
                    let message = self.live.recv().await?;
                    if let Some(delivery) = self.take_live(message) {
                        return Some(delivery);
                    }
                }
            }
        }
    }

    /// A delivery that is ready now, without waiting; used to batch several
    /// into one write. Never skips ahead of [`Subscription::next`]'s order:
    /// a gap notice or retained values still to load stop it.
    pub fn try_next(&mut self) -> Option<Delivery> {
        loop {
            match self.ready() {
                Ready::Message(message) => return Some(Delivery::Message(message)),
                Ready::Gap(_) | Ready::Retained | Ready::History => return None,
                Ready::Live => {
                    let message = self.live.try_recv().ok()?;
                    if let Some(delivery) = self.take_live(message) {
                        return Some(delivery);
                    }
                }
            }
        }
    }

    /// Takes what the pending entries hold up to the next readable message
    /// (withheld ones are skipped and counted), or says what the front
    /// needs: the live queue, a gap notice, or retained values to load.
    fn ready(&mut self) -> Ready {
        loop {
            self.last_live = self.pending.is_empty();
            match self.pending.front_mut() {
                None => return Ready::Live,
                Some(Pending::Gap(after)) => return Ready::Gap(*after),
                Some(Pending::Retained { .. }) => return Ready::Retained,
                Some(Pending::History { .. }) => return Ready::History,
                Some(Pending::Messages(queue)) => match queue.pop_front() {
                    Some(message) => {
                        if self.readable(&message) {
                            return Ready::Message(message);
                        }
                    }
                    None => {
                        self.pending.pop_front();
                    }
                },
            }
        }
    }

    /// A message taken off the live queue: its bytes leave the queue's
    /// count, and it is delivered if the rules let this subscriber read it.
    fn take_live(&mut self, message: Arc<Message>) -> Option<Delivery> {
        self.queued_bytes
            .fetch_sub(message.queued_size(), Ordering::Relaxed);
        self.readable(&message)
            .then_some(Delivery::Message(message))
    }

    /// Whether the access rules let this subscriber see `message`; a
    /// withheld message is counted.
    fn readable(&self, message: &Message) -> bool {
        let Some(reader) = &self.reader else {
            return true;
        };
        let allowed = self.router.policy().may_read(reader, &message.topic);
        if !allowed {
            Stats::incr(&self.router.stats().deliveries_withheld);
        }
        allowed
    }

    /// Replaces the pending retained entry at the front with its values,
    /// read from the log's store off the async workers.
    async fn load_retained(&mut self) {
        let Some(Pending::Retained { filters, before }) = self.pending.pop_front() else {
            return;
        };
        let router = self.router.clone();
        let log = router.log().clone();
        let max = router.max_retained();
        let read = tokio::task::spawn_blocking(move || {
            log.retained_before(before, &mut |topic| matches_any(filters.iter(), topic), max)
        })
        .await;
        let stats = router.stats();
        let Ok((records, truncated)) = read else {
            Stats::incr(&stats.retained_failures);
            tracing::warn!(
                subscriber = self.id,
                "Retained values unavailable, continuing with live messages."
            );
            return;
        };
        Stats::incr(&stats.retained_snapshots);
        if truncated {
            Stats::incr(&stats.retained_truncated);
        }
        let values: VecDeque<_> = records
            .into_iter()
            .map(|record| router.retained_message(record))
            .collect();
        self.pending.push_front(Pending::Messages(values));
    }
}

impl Subscription {
    /// Replaces the history entry at the front with its next page (and
    /// the rest of it, if any). History the log no longer holds, or cannot
    /// read, becomes a gap notice and the retained values.
    async fn load_history(&mut self) {
        let Some(Pending::History {
            next,
            to,
            filters,
            earlier,
            since,
        }) = self.pending.pop_front()
        else {
            return;
        };
        let router = self.router.clone();
        let log = router.log().clone();
        let page = router.read_page();
        let read = if next < log.first() {
            None
        } else {
            let wanted = filters.clone();
            let read = tokio::task::spawn_blocking(move || {
                log.read(next, to, page, &mut |topic| {
                    matches_any(wanted.iter(), topic)
                })
            })
            .await;
            match read {
                Ok(Ok(read)) => Some(read),
                Ok(Err(e)) => {
                    Stats::incr(&router.stats().log_read_failures);
                    tracing::warn!(subscriber = self.id, error = %e, "Cannot read history from the log.");
                    None
                }
                Err(_) => None,
            }
        };
        // The log may have let these positions go since the subscribe.
        let Some((records, after)) = read.filter(|_| next >= router.log().first()) else {
            self.pending.push_front(Pending::Retained {
                filters,
                before: to,
            });
            self.pending.push_front(Pending::Gap(EventId {
                epoch: router.epoch(),
                seq: next.saturating_sub(1),
            }));
            return;
        };
        Stats::add(&router.stats().log_messages_read, records.len() as u64);
        let messages: VecDeque<_> = records
            .into_iter()
            .filter(|record| since.is_none_or(|time| record.time_ms >= time))
            .map(|record| router.message_from_log(record))
            .filter(|m| !delivered_live(&earlier, m))
            .collect();
        if after < to {
            self.pending.push_front(Pending::History {
                next: after,
                to,
                filters,
                earlier,
                since,
            });
        }
        self.pending.push_front(Pending::Messages(messages));
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.router.unsubscribe(self.id);
    }
}

fn matches_any<'a>(mut filters: impl Iterator<Item = &'a String>, topic: &str) -> bool {
    filters.any(|f| topic::matches(f, topic))
}

/// Whether `message` already reached the subscriber live through one of its
/// earlier filters.
fn delivered_live(earlier: &[(String, u64)], message: &Message) -> bool {
    let seq = message.id.map_or(0, |id| id.seq);
    earlier
        .iter()
        .any(|(filter, from)| seq >= *from && topic::matches(filter, &message.topic))
}
