//! A plugin's inbox: its router subscription, grown one filter at a time,
//! delivering every matching message once and in order.
//!
//! A filter the plugin adds later joins the same router subscription, so
//! nothing already queued is disturbed and only the new filter's retained
//! values are delivered, as for any new subscriber.
//!
//! An inbox whose queue overflowed (the router ends such a subscription
//! instead of waiting for it) is re-subscribed from its last message, which
//! replays what it missed from the replay ring; if the ring no longer has
//! it, the loss is logged and counted (`gaps`), never silent.

use std::sync::Arc;

use super::status::PluginStatus;
use crate::auth::Principal;
use crate::router::{
    Delivery, EventId, FilterBounds, Message, QueueBound, Router, SubscribeError, SubscribeRequest,
    Subscription,
};
use crate::stats::Stats;

/// Filters one plugin may hold.
pub const MAX_FILTERS: usize = 256;

/// A plugin is configured by the integrator, not a remote client: its
/// filters are bounded by [`MAX_FILTERS`] and the topic limits, with no
/// budget of their own.
const PLUGIN_BOUNDS: FilterBounds = FilterBounds {
    max_filters: MAX_FILTERS,
    max_filter_bytes: usize::MAX,
    budget_bytes: usize::MAX,
};

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

    /// Adds filters (known ones are ignored). Their retained values come
    /// next; messages already queued for older filters are not disturbed.
    pub(super) fn add(&mut self, filters: impl IntoIterator<Item = String>) {
        let mut added = Vec::new();
        for filter in filters {
            if self.filters.contains(&filter) || added.contains(&filter) {
                continue;
            }
            if self.filters.len() + added.len() >= MAX_FILTERS {
                tracing::warn!(
                    plugin = self.status.name(),
                    filter,
                    "Plugin filter limit ({MAX_FILTERS}) reached, filter ignored."
                );
                continue;
            }
            added.push(filter);
        }
        if added.is_empty() {
            return;
        }
        let principal = Principal::Plugin(self.status.name().to_owned());
        let bound = self.bound();
        let subscription = self
            .subscription
            .get_or_insert_with(|| self.router.open(bound));
        let result = subscription.add(&principal, &added, None, PLUGIN_BOUNDS);
        self.filters.extend(added);
        match result {
            Ok(()) => {}
            // The queue overflowed just now: the re-subscription that
            // `next` makes from the last message includes the new filters.
            Err(SubscribeError::Ended) => {}
            Err(e) => {
                // Filters were validated by the host callback; this is the
                // access check, or a bug: say so rather than go quiet.
                self.status.set_last_error(format!("cannot subscribe: {e}"));
                tracing::error!(plugin = self.status.name(), error = %e, "Plugin subscription refused.");
            }
        }
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

    /// The plugin's inbox holds a message count; every message is already
    /// within `mqtt.max_payload_bytes`, so a byte bound would add nothing.
    fn bound(&self) -> QueueBound {
        QueueBound {
            messages: self.capacity,
            bytes: usize::MAX,
        }
    }

    fn subscribe(&self, resume: Option<EventId>) -> Option<Subscription> {
        let request = SubscribeRequest {
            principal: Principal::Plugin(self.status.name().to_owned()),
            filters: self.filters.clone(),
            start: resume.map_or(crate::router::Start::Now, crate::router::Start::After),
            queue: self.bound(),
            bounds: PLUGIN_BOUNDS,
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
