//! Which filters the devices connected right now hold, as the gate let
//! them through: so a command can be refused at once when no device could
//! receive it (`POST /command` answers 404 `no-subscriber`).
//!
//! Bounded by what the gate already bounds: `mqtt.max_connections`
//! connections of at most `mqtt.max_subscriptions` filters, each within the
//! topic limits. A connection's filters leave with it; a persistent
//! session's subscriptions stay in the broker, but a device that is away
//! cannot answer a command in time, so it does not count here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::router::trie::FilterTrie;

/// The filters of live device connections.
#[derive(Debug, Default)]
pub struct DeviceFilters {
    next: AtomicU64,
    trie: Mutex<FilterTrie<u64>>,
}

impl DeviceFilters {
    /// A fresh id for a new connection.
    pub fn connection(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes that connection `id` holds `filter` (a shared subscription
    /// as the filter it shares).
    pub fn add(&self, id: u64, filter: &str) {
        self.lock().insert(shared_filter(filter), id);
    }

    pub fn remove(&self, id: u64, filter: &str) {
        self.lock().remove(shared_filter(filter), id);
    }

    /// Calls `f` with each connection holding a filter that matches
    /// `topic` (once per such filter), MQTT's `$` rule applied.
    pub fn for_each_holder(&self, topic: &str, f: impl FnMut(u64)) {
        self.lock().for_each_match(topic, f);
    }

    /// Whether any live device holds a filter matching `topic`.
    pub fn any_match(&self, topic: &str) -> bool {
        let mut found = false;
        self.lock().for_each_match(topic, |_| found = true);
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FilterTrie<u64>> {
        self.trie.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `$share/<group>/<filter>` is `<filter>`; anything else is itself.
fn shared_filter(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, shared)| shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A topic matches while some connection holds a filter for it, and
    /// no longer once every such filter is gone; shared subscriptions
    /// count as the filter they share.
    #[test]
    fn matches_follow_the_filters_held() {
        let filters = DeviceFilters::default();
        let (a, b) = (filters.connection(), filters.connection());
        assert!(!filters.any_match("home/light/1/set"));
        filters.add(a, "home/+/1/set");
        filters.add(b, "$share/lights/home/light/#");
        assert!(filters.any_match("home/light/1/set"));
        filters.remove(a, "home/+/1/set");
        assert!(filters.any_match("home/light/1/set"), "b still holds one");
        filters.remove(b, "$share/lights/home/light/#");
        assert!(!filters.any_match("home/light/1/set"));
        assert!(!filters.any_match("$SYS/x"));
    }
}
