//! The reversible internal form of the names the embedded broker sees:
//! topics, filters and client ids.
//!
//! rumqttd 0.20 cannot take every name MQTT allows. Its topic matcher
//! slices `topic[..1]`, so a topic whose first character is not ASCII
//! (`温度/客厅`, `°C/salon`, `été/salon`) panics its router thread and
//! nothing is routed again; a client id holding `/`, `+`, `#` or `$`
//! connected twice poisons the lock of the listener that served it. Every
//! name therefore crosses into the broker in a form it can take, and back
//! out in the form the client sent, with its exact bytes:
//! - a **topic** or **filter** whose first character is not ASCII, or is
//!   the escape character itself, gets [`ESCAPE`] in front. The escape
//!   stays inside the first level, so `+` and `#` match the internal forms
//!   exactly as they match the real names, and no topic starts with `$`
//!   that did not before. Decoding strips one leading escape.
//! - the bridge's own topics, under `$tidewater/` (presence), get the
//!   escape too. rumqttd 0.20 matches no `$` topic against any wildcard
//!   filter at all (MQTT only forbids a wildcard *first* level), so
//!   `$tidewater/presence/+` would never see one, nor would the egress
//!   link's `#`. Escaped, both match; the gate then keeps these topics
//!   from filters whose first level is a wildcard, as MQTT says
//!   (`gate::downstream`).
//! - a **client id** keeps ASCII letters, digits, `-` and `_`; every other
//!   byte becomes `.` and two hex digits (`a/b` is `a.2fb`). The broker
//!   never hands a client id back, so only the gate encodes it.
//!
//! The gate ([`crate::gate`]) applies these to every packet in both
//! directions, and the broker's local links ([`super`]) to what they
//! publish and read.

use std::borrow::Cow;

/// Marks a name whose first character rumqttd cannot take. A control
/// character, so a real topic starting with it (which the form doubles)
/// is as rare as can be.
pub const ESCAPE: char = '\u{1}';

/// The broker's form of `topic`.
pub fn topic_in(topic: &str) -> Cow<'_, str> {
    match topic.chars().next() {
        Some(c) if !c.is_ascii() || c == ESCAPE || crate::topic::is_reserved(topic) => {
            let mut escaped = String::with_capacity(topic.len() + 1);
            escaped.push(ESCAPE);
            escaped.push_str(topic);
            Cow::Owned(escaped)
        }
        _ => Cow::Borrowed(topic),
    }
}

/// The broker's form of `filter`: like a topic, and for a shared
/// subscription (`$share/group/filter`) the filter after the group.
pub fn filter_in(filter: &str) -> Cow<'_, str> {
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((group, shared)) = rest.split_once('/') {
            return match topic_in(shared) {
                Cow::Borrowed(_) => Cow::Borrowed(filter),
                Cow::Owned(escaped) => Cow::Owned(format!("$share/{group}/{escaped}")),
            };
        }
    }
    topic_in(filter)
}

/// The real topic behind the broker's form `internal`.
pub fn topic_out(internal: &str) -> &str {
    internal.strip_prefix(ESCAPE).unwrap_or(internal)
}

/// The broker's form of a client id (see the module comment).
pub fn client_id_in(id: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if id.bytes().all(plain) {
        return Cow::Borrowed(id);
    }
    let mut encoded = String::with_capacity(id.len() * 3);
    for b in id.bytes() {
        if plain(b) {
            encoded.push(b as char);
        } else {
            encoded.push('.');
            encoded.push_str(&format!("{b:02x}"));
        }
    }
    Cow::Owned(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// ASCII names pass unchanged: the common case costs no copy.
    #[test]
    fn ascii_names_are_unchanged() {
        assert!(matches!(
            topic_in("home/kitchen"),
            Cow::Borrowed("home/kitchen")
        ));
        assert!(matches!(filter_in("+/kitchen/#"), Cow::Borrowed(_)));
        assert!(matches!(client_id_in("sensor-1_a"), Cow::Borrowed(_)));
    }

    /// A name starting with a non-ASCII character or the escape gets one
    /// escape in front; shared subscriptions escape the shared filter.
    #[test]
    fn names_rumqttd_cannot_take_are_escaped() {
        assert_eq!(topic_in("温度/客厅"), "\u{1}温度/客厅");
        assert_eq!(topic_in("°C/salon"), "\u{1}°C/salon");
        assert_eq!(topic_in("\u{1}x"), "\u{1}\u{1}x");
        assert_eq!(topic_in("salon/°C"), "salon/°C");
        assert_eq!(filter_in("$share/g/温度/#"), "$share/g/\u{1}温度/#");
        assert_eq!(client_id_in("a/b"), "a.2fb");
        assert_eq!(client_id_in("$#+."), ".24.23.2b.2e");
    }

    proptest! {
        /// Decoding gives back every topic exactly.
        #[test]
        fn topics_round_trip(topic in "\\PC{1,12}") {
            let internal = topic_in(&topic);
            prop_assert_eq!(topic_out(&internal), topic.as_str());
        }

        /// The internal form never starts with a non-ASCII character, nor
        /// with `$` unless the real name did: rumqttd's matcher then sees
        /// only what it can take, and `$`-topics keep their meaning.
        #[test]
        fn internal_topics_start_with_ascii(topic in "\\PC{1,12}") {
            let internal = topic_in(&topic);
            prop_assert!(internal.as_bytes()[0].is_ascii());
            prop_assert_eq!(internal.starts_with('$'), topic.starts_with('$'));
        }

        /// Distinct client ids stay distinct.
        #[test]
        fn client_ids_stay_distinct(a in "\\PC{0,8}", b in "\\PC{0,8}") {
            prop_assume!(a != b);
            prop_assert_ne!(client_id_in(&a), client_id_in(&b));
        }

        /// Wildcards match internal forms as they match real names.
        #[test]
        fn matching_is_unchanged(
            topic in "[a°温\u{1}$]{1,2}(/[a°温]{1,2}){0,2}",
            filter in "([a°温\u{1}$]{1,2}|\\+)(/([a°温]{1,2}|\\+)){0,2}(/#)?",
        ) {
            prop_assert_eq!(
                crate::topic::matches(&filter_in(&filter), &topic_in(&topic)),
                crate::topic::matches(&filter, &topic),
            );
        }
    }
}
