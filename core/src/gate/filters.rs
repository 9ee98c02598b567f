//! Which filters the devices connected right now hold, as the gate let
//! them through: so a command can be refused at once when no device could
//! receive it (`POST /command` answers 404 `no-subscriber`), and so the
//! gate can apply MQTT's `$` rule to the bridge's own `$tidewater/`
//! topics, which the broker is given in a form its wildcards match (see
//! `broker::name`).
//!
//! Bounded by what the gate already bounds: `mqtt.max_connections`
//! connections of at most `mqtt.max_subscriptions` filters, each within the
//! topic limits. Each connection notes a filter once however many times it
//! holds it (`$share/a/x` and `x` are both `x`; the connection counts), and
//! its filters leave with it. A persistent session's subscriptions stay in
//! the broker, but a device that is away cannot answer a command in time,
//! so it does not count here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::router::trie::FilterTrie;
use crate::topic;

/// The filters of live device connections.
#[derive(Debug, Default)]
pub struct DeviceFilters {
    next: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    trie: FilterTrie<u64>,
    /// Each connection's filters under `$tidewater/`, for its deliveries
    /// of those topics (few: who watches presence).
    reserved: HashMap<u64, Vec<String>>,
}

impl DeviceFilters {
    /// A fresh id for a new connection.
    pub fn connection(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes that connection `id` holds `filter`, the filter a shared
    /// subscription shares (see [`shared_filter`]); once per filter.
    pub fn add(&self, id: u64, filter: &str) {
        let mut inner = self.lock();
        inner.trie.insert(filter, id);
        if topic::is_reserved(filter) {
            inner
                .reserved
                .entry(id)
                .or_default()
                .push(filter.to_owned());
        }
    }

    pub fn remove(&self, id: u64, filter: &str) {
        let mut inner = self.lock();
        inner.trie.remove(filter, id);
        if let Some(held) = inner.reserved.get_mut(&id) {
            held.retain(|f| f != filter);
            if held.is_empty() {
                inner.reserved.remove(&id);
            }
        }
    }

    /// Whether any live device holds a filter matching `topic`.
    pub fn any_match(&self, topic: &str) -> bool {
        let mut found = false;
        self.lock().trie.for_each_match(topic, |_| found = true);
        found
    }

    /// Whether connection `id` holds a filter under `$tidewater/` that
    /// matches `topic`: MQTT's `$` rule, for the bridge's own topics.
    pub fn reserved_match(&self, id: u64, topic: &str) -> bool {
        self.lock()
            .reserved
            .get(&id)
            .is_some_and(|held| held.iter().any(|f| topic::matches(f, topic)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `$share/<group>/<filter>` is `<filter>`; anything else is itself.
pub fn shared_filter(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, shared)| shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic matches while some connection holds a filter for it, and
    /// no longer once every such filter is gone.
    #[test]
    fn matches_follow_the_filters_held() {
        let filters = DeviceFilters::default();
        let (a, b) = (filters.connection(), filters.connection());
        assert!(!filters.any_match("home/light/1/set"));
        filters.add(a, "home/+/1/set");
        filters.add(b, shared_filter("$share/lights/home/light/#"));
        assert!(filters.any_match("home/light/1/set"));
        filters.remove(a, "home/+/1/set");
        assert!(filters.any_match("home/light/1/set"), "b still holds one");
        filters.remove(b, "home/light/#");
        assert!(!filters.any_match("home/light/1/set"));
        assert!(!filters.any_match("$SYS/x"));
    }

    /// Only a connection's own `$tidewater/` filters let it read those
    /// topics; `#` never does.
    #[test]
    fn reserved_topics_need_a_filter_that_names_them() {
        let filters = DeviceFilters::default();
        let (watcher, other) = (filters.connection(), filters.connection());
        filters.add(watcher, "$tidewater/presence/+");
        filters.add(other, "#");
        let topic = "$tidewater/presence/door";
        assert!(filters.reserved_match(watcher, topic));
        assert!(!filters.reserved_match(other, topic));
        assert!(!filters.reserved_match(watcher, "$tidewater/drivers/x"));
        filters.remove(watcher, "$tidewater/presence/+");
        assert!(!filters.reserved_match(watcher, topic));
    }
}
