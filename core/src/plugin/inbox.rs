//! A plugin's inbox: its router subscription, grown one filter at a time,
//! delivering every matching message once and in order.
//!
//! The router's subscriptions have a fixed set of filters, so adding one
//! means subscribing again with the union. The switch loses nothing and
//! repeats nothing: the new subscription is registered first, then what the
//! old one had already queued is taken from it, and the new one's live
//! messages up to the last one taken are skipped (ids are ordered). The new
//! subscription starts with the current retained values of *all* its
//! filters, so a driver sees them again: they are state, not events.
//!
//! An inbox whose queue overflowed (the router ends such a subscription
//! instead of waiting for it) is re-subscribed from its last message, which
//! replays what it missed from the replay ring; if the ring no longer has
//! it, the loss is logged and counted (`gaps`), never silent.

use std::sync::Arc;

use futures_util::FutureExt;

use super::status::PluginStatus;
use crate::auth::Principal;
use crate::router::{Delivery, EventId, Message, Router, SubscribeRequest, Subscription};
use crate::stats::Stats;
use crate::topic;

/// Filters one plugin may hold.
pub const MAX_FILTERS: usize = 256;

#[derive(Debug)]
pub(super) struct Inbox {
    router: Router,
    status: Arc<PluginStatus>,
    capacity: usize,
    filters: Vec<String>,
    subscription: Option<Subscription>,
    /// The id of the last live message delivered: resume point and
    /// duplicate guard.
    last: Option<EventId>,
}

impl Inbox {
    pub(super) fn new(router: Router, status: Arc<PluginStatus>, capacity: usize) -> Self {
        Self {
            router,
            status,
            capacity,
            filters: Vec::new(),
            subscription: None,
            last: None,
        }
    }

    /// Adds filters (known ones are ignored) and returns the messages the
    /// previous subscription had queued, to be delivered before anything
    /// [`Inbox::next`] yields.
    pub(super) fn add(&mut self, filters: impl IntoIterator<Item = String>) -> Vec<Arc<Message>> {
        let before = self.filters.len();
        for filter in filters {
            if self.filters.contains(&filter) {
                continue;
            }
            if self.filters.len() >= MAX_FILTERS {
                tracing::warn!(
                    plugin = self.status.name(),
                    filter,
                    "Plugin filter limit ({MAX_FILTERS}) reached, filter ignored."
                );
                continue;
            }
            self.filters.push(filter);
        }
        if self.filters.len() == before {
            return Vec::new();
        }
        let Some(next) = self.subscribe(None) else {
            return Vec::new();
        };
        let mut carried = Vec::new();
        if let Some(mut old) = self.subscription.replace(next) {
            // Poll once so a subscription still waiting for its retained
            // values lets go of them (the new one brings fresher ones),
            // then take everything already queued.
            let first = old.next().now_or_never().flatten();
            let queued = std::iter::from_fn(|| old.try_next());
            for delivery in first.into_iter().chain(queued) {
                if let Delivery::Message(message) = delivery {
                    if message.id.is_some() && self.fresh(&message) {
                        carried.push(message);
                    }
                }
            }
        }
        carried
    }

    /// The next message for the plugin; waits forever while it has no filter.
    pub(super) async fn next(&mut self) -> Arc<Message> {
        loop {
            let Some(subscription) = self.subscription.as_mut() else {
                return std::future::pending().await;
            };
            match subscription.next().await {
                Some(Delivery::Message(message)) => {
                    if self.fresh(&message) {
                        return message;
                    }
                }
                Some(Delivery::Gap { after }) => {
                    Stats::incr(&self.status.gaps);
                    self.status.set_last_error(format!(
                        "messages after {after} were lost: the plugin fell behind by more than the replay ring holds"
                    ));
                    tracing::warn!(
                        plugin = self.status.name(),
                        %after,
                        "Plugin missed messages that left the replay ring."
                    );
                }
                None => {
                    // The router ended the subscription: its queue was full.
                    Stats::incr(&self.status.inbox_overflows);
                    tracing::warn!(
                        plugin = self.status.name(),
                        capacity = self.capacity,
                        "Plugin inbox overflowed; re-subscribing from its last message."
                    );
                    if self.last.is_none() {
                        // No live message delivered yet: no resume point.
                        Stats::incr(&self.status.gaps);
                    }
                    self.subscription = self.subscribe(self.last);
                }
            }
        }
    }

    /// Drops the subscription: nothing more is delivered.
    pub(super) fn close(&mut self) {
        self.subscription = None;
        self.filters.clear();
    }

    /// Whether `message` is not a repeat, recording it as the last one.
    fn fresh(&mut self, message: &Message) -> bool {
        let Some(id) = message.id else {
            return true; // a retained value: state, delivered as it comes
        };
        if self.last.is_some_and(|last| id <= last) {
            return false;
        }
        self.last = Some(id);
        true
    }

    fn subscribe(&self, resume: Option<EventId>) -> Option<Subscription> {
        let request = SubscribeRequest {
            principal: Principal::Plugin(self.status.name().to_owned()),
            filters: self.filters.clone(),
            resume,
            queue_capacity: self.capacity,
            max_filters: MAX_FILTERS,
            max_filter_bytes: topic::MAX_TOPIC_BYTES,
        };
        match self.router.subscribe(request) {
            Ok(subscription) => Some(subscription),
            Err(e) => {
                // Filters were validated by the host callback; this is the
                // access check, or a bug: say so rather than go quiet.
                self.status.set_last_error(format!("cannot subscribe: {e}"));
                tracing::error!(plugin = self.status.name(), error = %e, "Plugin subscription refused.");
                None
            }
        }
    }
}
