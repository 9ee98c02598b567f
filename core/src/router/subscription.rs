//! One subscriber's view of the router: what it receives, in which order,
//! and its removal from the router when it goes away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{EventId, Message, RetainedSnapshot, Router, SubscriberId};
use crate::stats::Stats;
use crate::topic;

/// How long a new subscriber waits for the broker's retained values before
/// going on to live messages without them (counted as a failure).
const RETAINED_TIMEOUT: Duration = Duration::from_secs(3);

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

/// A registered subscriber. Yields a gap notice (if any), then retained
/// values (for a fresh subscription or after a gap), then the replayed
/// messages, then live messages. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    id: SubscriberId,
    router: Router,
    filters: Arc<[String]>,
    gap: Option<EventId>,
    retained: Option<oneshot::Receiver<Result<RetainedSnapshot, ()>>>,
    backlog: VecDeque<Arc<Message>>,
    replay: VecDeque<Arc<Message>>,
    live: mpsc::Receiver<Arc<Message>>,
}

impl Subscription {
    pub(super) fn new(
        id: SubscriberId,
        router: Router,
        filters: Arc<[String]>,
        gap: Option<EventId>,
        retained: Option<oneshot::Receiver<Result<RetainedSnapshot, ()>>>,
        replay: Vec<Arc<Message>>,
        live: mpsc::Receiver<Arc<Message>>,
    ) -> Self {
        Self {
            id,
            router,
            filters,
            gap,
            retained,
            backlog: VecDeque::new(),
            replay: replay.into(),
            live,
        }
    }

    pub fn filters(&self) -> &[String] {
        &self.filters
    }

    /// The next delivery; `None` once the router has ended this subscription
    /// (its queue overflowed) and everything queued before was delivered.
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(after) = self.gap.take() {
            return Some(Delivery::Gap { after });
        }
        if let Some(pending) = self.retained.take() {
            self.load_retained(pending).await;
        }
        if let Some(message) = self.backlog.pop_front().or_else(|| self.replay.pop_front()) {
            return Some(Delivery::Message(message));
        }
        self.live.recv().await.map(Delivery::Message)
    }

    /// A delivery that is ready now, without waiting; used to batch several
    /// into one write. Never skips ahead of [`Subscription::next`]'s order.
    pub fn try_next(&mut self) -> Option<Delivery> {
        if self.gap.is_some() || self.retained.is_some() {
            return None;
        }
        if let Some(message) = self.backlog.pop_front().or_else(|| self.replay.pop_front()) {
            return Some(Delivery::Message(message));
        }
        self.live.try_recv().ok().map(Delivery::Message)
    }

    async fn load_retained(&mut self, pending: oneshot::Receiver<Result<RetainedSnapshot, ()>>) {
        let stats = self.router.stats().clone();
        let snapshot = match tokio::time::timeout(RETAINED_TIMEOUT, pending).await {
            Ok(Ok(Ok(snapshot))) => snapshot,
            _ => {
                Stats::incr(&stats.retained_failures);
                tracing::warn!(
                    subscriber = self.id,
                    "Retained values unavailable, continuing with live messages."
                );
                return;
            }
        };
        self.backlog.extend(
            snapshot
                .iter()
                .filter(|m| self.filters.iter().any(|f| topic::matches(f, &m.topic)))
                .cloned(),
        );
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.router.unsubscribe(self.id);
    }
}
