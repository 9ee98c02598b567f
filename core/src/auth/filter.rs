//! Comparing two topic filters, as the ACL needs: does one filter match every
//! topic another matches ([`covers`]), and can they match a topic in common
//! ([`intersects`])?
//!
//! A subscription is allowed when the first rule that *covers* its filter
//! allows it. Rules before that one which merely *intersect* it decide some of
//! its topics differently, so such a subscription is checked again per
//! message. Both functions follow [`crate::topic::matches`] exactly, including
//! its rule that a wildcard first level never matches a `$` topic; the tests
//! compare them with it over every small topic.

/// Whether every topic that `filter` matches is also matched by `rule`.
/// Both are assumed to be valid filters.
pub fn covers(rule: &str, filter: &str) -> bool {
    let mut rule_levels = rule.split('/');
    let mut filter_levels = filter.split('/');
    let mut first = true;
    // Whether the filter's first level is the empty literal, so that its
    // one-level topic would be the empty string, which is no topic.
    let mut empty_first = false;
    loop {
        let levels = (rule_levels.next(), filter_levels.next());
        let parent_is_no_topic = empty_first;
        empty_first = first && levels.1 == Some("");
        match levels {
            // `#` takes the rest, but a wildcard first level never takes a
            // `$` topic, which a literal `$` first level of the filter names.
            (Some("#"), Some(level)) => return !(first && level.starts_with('$')),
            // `a/#` matches `a` itself, the only topic of filter `a` left.
            (Some("#"), None) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            // `+/#` matches what `#` does except the parent topic, which a
            // first-level `#` does not have, nor a `#` after an empty first
            // level (its parent would be the empty string).
            (Some("+"), Some("#")) => {
                return (first || parent_is_no_topic) && rule_levels.eq(["#"])
            }
            (Some("+"), Some(level)) => {
                if first && level.starts_with('$') {
                    return false;
                }
            }
            // A literal rule level covers only the same literal; against a
            // wildcard filter level it is never equal.
            (Some(rule_level), Some(level)) => {
                if rule_level != level {
                    return false;
                }
            }
        }
        first = false;
    }
}

/// Whether some topic is matched by both `a` and `b`. Both are assumed to be
/// valid filters.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    let mut first = true;
    // Whether the common topic's first level must be empty: a topic made of
    // that level alone would be the empty string, which is no topic.
    let mut empty_first = false;
    loop {
        match (a_levels.next(), b_levels.next()) {
            (None, None) | (Some("#"), None) | (None, Some("#")) => return !empty_first,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                empty_first = first && (x.is_empty() || y.is_empty());
                let (x_wild, y_wild) = (is_wildcard(x), is_wildcard(y));
                if first && ((x_wild && y.starts_with('$')) || (y_wild && x.starts_with('$'))) {
                    return false;
                }
                if x == "#" || y == "#" {
                    return true;
                }
                if !x_wild && !y_wild && x != y {
                    return false;
                }
            }
        }
        first = false;
    }
}

fn is_wildcard(level: &str) -> bool {
    level == "+" || level == "#"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{matches, validate_filter, MAX_TOPIC_BYTES};
    use proptest::prelude::*;

    /// Every topic of up to four levels over a small alphabet that includes
    /// a `$` level, an empty level and a level no generated filter names.
    fn all_topics() -> Vec<String> {
        let alphabet = ["a", "b", "z", "$a", ""];
        let mut topics: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        let mut last = topics.clone();
        for _ in 1..4 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|t| alphabet.iter().map(move |l| format!("{t}/{l}")))
                .collect();
            topics.extend(next.iter().cloned());
            last = next;
        }
        topics.retain(|t| !t.is_empty());
        topics
    }

    /// Valid filters of up to three levels over the same alphabet, built so
    /// that `#` only ever comes last.
    fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop_oneof![Just("a"), Just("b"), Just("$a"), Just(""), Just("+")];
        (proptest::collection::vec(level, 0..3), any::<bool>()).prop_filter_map(
            "non-empty",
            |(mut levels, hash)| {
                if hash || levels.is_empty() {
                    levels.push("#");
                }
                let filter = levels.join("/");
                validate_filter(&filter, MAX_TOPIC_BYTES)
                    .is_ok()
                    .then_some(filter)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// `covers` agrees with the reference matcher over every small topic.
        #[test]
        fn covers_agrees_with_matching(rule in filter_strategy(), filter in filter_strategy()) {
            let topics = all_topics();
            let expected = topics
                .iter()
                .filter(|t| matches(&filter, t))
                .all(|t| matches(&rule, t));
            prop_assert_eq!(covers(&rule, &filter), expected, "rule {} filter {}", rule, filter);
        }

        /// `intersects` agrees with the reference matcher and is symmetric.
        #[test]
        fn intersects_agrees_with_matching(a in filter_strategy(), b in filter_strategy()) {
            let topics = all_topics();
            let expected = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
            prop_assert_eq!(intersects(&a, &b), expected, "{} and {}", a, b);
            prop_assert_eq!(intersects(&b, &a), expected);
        }
    }

    /// The cases the ACL relies on, spelled out.
    #[test]
    fn examples() {
        assert!(covers("home/#", "home/+/temperature"));
        assert!(covers("home/#", "home"));
        assert!(covers("#", "#"));
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("home/+", "home/#"));
        assert!(!covers("home/kitchen/#", "home/#"));
        assert!(intersects("home/secret/#", "home/+/temperature"));
        assert!(!intersects("home/secret/#", "home/kitchen/+"));
        assert!(!intersects("+/#", "$SYS/x"));
    }
}
