//! MQTT topic names and topic filters.
//!
//! This module owns three things that every entry point of the bridge (HTTP
//! publish, SSE and WebSocket subscriptions, plugins) must agree on:
//!
//! * what a valid topic **name** is ([`validate_topic`]): the concrete topic a
//!   message is published to, which may not contain wildcards;
//! * what a valid topic **filter** is ([`validate_filter`]): what a subscriber
//!   asks for, where `+` stands for exactly one level and `#` for any number of
//!   trailing levels (including none);
//! * the reference matching function ([`matches()`]), written for clarity rather
//!   than speed. Faster structures such as the router's filter trie must agree
//!   with it, and their tests compare against it.
//!
//! The rules follow MQTT 3.1.1 section 4.7 and MQTT 5.0 section 4.7: levels are
//! separated by `/`, empty levels are real levels (`"a//b"` has three levels,
//! `"/a"` has two), matching is case-sensitive, and topics whose first level
//! starts with `$` are not matched by a filter whose first level is a wildcard.

/// The longest topic name or filter MQTT can carry, in bytes of UTF-8.
///
/// MQTT encodes strings with a two-byte length prefix, so nothing longer can
/// ever reach the broker.
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Where the bridge publishes its own messages (device presence): nobody
/// else may publish under it, whatever the rules say.
pub const RESERVED_PREFIX: &str = "$tidewater/";

/// Whether `topic` is under [`RESERVED_PREFIX`].
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with(RESERVED_PREFIX)
}

/// Why a topic name or topic filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic or filter is the empty string.
    #[error("a topic or topic filter cannot be empty")]
    Empty,
    /// The topic or filter is longer than the allowed number of bytes.
    #[error("too long: {len} bytes, the limit is {max}")]
    TooLong {
        /// Length of the rejected string, in bytes.
        len: usize,
        /// The limit that applied, in bytes.
        max: usize,
    },
    /// A topic name (as opposed to a filter) contains `+` or `#`.
    #[error("a topic name cannot contain wildcards ('+' or '#')")]
    WildcardInTopic,
    /// A filter has `#` as a whole level, but not as the last one.
    #[error("'#' must be the last level of a filter")]
    HashNotLast,
    /// A filter has `+` or `#` next to other characters in the same level.
    #[error("the wildcard '{wildcard}' must be a whole level on its own, as in \"a/{wildcard}\"")]
    WildcardNotWholeLevel {
        /// The offending wildcard character, `+` or `#`.
        wildcard: char,
    },
    /// The topic or filter contains the NUL character U+0000.
    #[error("a topic or topic filter cannot contain the NUL character (U+0000)")]
    NulCharacter,
    /// The topic or filter has more levels than the allowed number.
    #[error("too many levels: {levels}, the limit is {max}")]
    TooManyLevels {
        /// Levels of the rejected string (one more than its `/`s).
        levels: usize,
        /// The limit that applied.
        max: usize,
    },
}

impl TopicError {
    /// A stable, kebab-case code for the rule that was broken, suitable for
    /// machine-readable error bodies and logs.
    pub fn rule(&self) -> &'static str {
        match self {
            TopicError::Empty => "empty",
            TopicError::TooLong { .. } => "too-long",
            TopicError::WildcardInTopic => "wildcard-in-topic",
            TopicError::HashNotLast => "hash-not-last",
            TopicError::WildcardNotWholeLevel { .. } => "wildcard-not-whole-level",
            TopicError::NulCharacter => "nul-character",
            TopicError::TooManyLevels { .. } => "too-many-levels",
        }
    }
}

/// The one set of limits every entry point applies to a topic or filter
/// (`mqtt.max_topic_bytes`, `mqtt.max_topic_levels`): devices through the
/// gate, HTTP and WebSocket publishes, SSE and WebSocket subscriptions, and
/// plugins. Each level of a filter is a node in the router's trie and in
/// the broker's, so the levels bound what one filter can cost in memory
/// whatever its bytes are (8,000 empty levels are 8 KB of `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest topic or filter, in bytes (at most [`MAX_TOPIC_BYTES`]).
    pub max_bytes: usize,
    /// Most levels in a topic or filter.
    pub max_levels: usize,
}

impl Limits {
    /// Only what MQTT itself allows: for tests and tools.
    pub const MQTT: Limits = Limits {
        max_bytes: MAX_TOPIC_BYTES,
        max_levels: MAX_TOPIC_BYTES + 1,
    };

    /// These limits with a byte limit of `max_bytes` where it is smaller
    /// (an SSE filter has a tighter one of its own).
    pub fn at_most(self, max_bytes: usize) -> Limits {
        Limits {
            max_bytes: self.max_bytes.min(max_bytes),
            ..self
        }
    }

    /// Validates a topic name ([`validate_topic`]) within these limits.
    pub fn topic(&self, topic: &str) -> Result<(), TopicError> {
        validate_common(topic, self.max_bytes.min(MAX_TOPIC_BYTES))?;
        self.levels(topic)?;
        validate_topic(topic)
    }

    /// Validates a topic filter ([`validate_filter`]) within these limits.
    pub fn filter(&self, filter: &str) -> Result<(), TopicError> {
        validate_common(filter, self.max_bytes.min(MAX_TOPIC_BYTES))?;
        self.levels(filter)?;
        validate_filter(filter, self.max_bytes)
    }

    fn levels(&self, s: &str) -> Result<(), TopicError> {
        let levels = s.bytes().filter(|&b| b == b'/').count() + 1;
        if levels > self.max_levels {
            return Err(TopicError::TooManyLevels {
                levels,
                max: self.max_levels,
            });
        }
        Ok(())
    }
}

/// Checks the rules shared by names and filters: non-empty, within `max`
/// bytes, and free of U+0000.
fn validate_common(s: &str, max: usize) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max {
        return Err(TopicError::TooLong { len: s.len(), max });
    }
    if s.contains('\0') {
        return Err(TopicError::NulCharacter);
    }
    Ok(())
}

/// Validates a topic **name**, the topic a message is published to.
///
/// A name must be non-empty, at most [`MAX_TOPIC_BYTES`] bytes, and contain
/// neither wildcard (`+`, `#`) nor U+0000. Empty levels (`"a//b"`, `"/a"`,
/// `"a/"`) and spaces are allowed.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    validate_common(topic, MAX_TOPIC_BYTES)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopic);
    }
    Ok(())
}

/// Validates a topic **filter**, what a subscriber asks for.
///
/// A filter must be non-empty, at most `max_bytes` bytes (and never more than
/// [`MAX_TOPIC_BYTES`]), free of U+0000, use `+` only as a whole level, and
/// use `#` only as the whole last level.
pub fn validate_filter(filter: &str, max_bytes: usize) -> Result<(), TopicError> {
    validate_common(filter, max_bytes.min(MAX_TOPIC_BYTES))?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "+" => {}
            "#" if levels.peek().is_some() => return Err(TopicError::HashNotLast),
            "#" => {}
            _ => {
                if let Some(wildcard) = level.chars().find(|c| matches!(c, '+' | '#')) {
                    return Err(TopicError::WildcardNotWholeLevel { wildcard });
                }
            }
        }
    }
    Ok(())
}

/// The reference MQTT matcher: does `filter` match the topic name `topic`?
///
/// * `+` matches exactly one level, which may be empty (`"a/+"` matches
///   `"a/"` but not `"a"`).
/// * `#` matches the rest of the topic, including the parent level itself
///   (`"a/#"` matches `"a"`, `"a/b"` and `"a/b/c"`).
/// * A topic whose first level starts with `$` is not matched by a filter
///   whose first level is `+` or `#`; `"$SYS/#"` still matches `"$SYS/x"`.
/// * Everything else is compared level by level, exactly and case-sensitively.
///
/// Both arguments are assumed valid ([`validate_filter`], [`validate_topic`]);
/// for invalid input the answer is unspecified but the function never panics.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');

    if topic.starts_with('$') && matches!(filter_levels.clone().next(), Some("+" | "#")) {
        return false;
    }

    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `filter` is a valid filter, panicking with the error otherwise.
    fn assert_valid_filter(filter: &str) {
        assert_eq!(
            validate_filter(filter, MAX_TOPIC_BYTES),
            Ok(()),
            "filter {filter:?}"
        );
    }

    /// Validates `filter` expecting an error, and returns it.
    fn filter_err(filter: &str) -> TopicError {
        match validate_filter(filter, MAX_TOPIC_BYTES) {
            Ok(()) => panic!("filter {filter:?} was accepted"),
            Err(e) => e,
        }
    }

    /// Validates `topic` expecting an error, and returns it.
    fn topic_err(topic: &str) -> TopicError {
        match validate_topic(topic) {
            Ok(()) => panic!("topic {topic:?} was accepted"),
            Err(e) => e,
        }
    }

    /// Asserts that `filter` matches each of `topics`.
    fn assert_matches(filter: &str, topics: &[&str]) {
        assert_valid_filter(filter);
        for topic in topics {
            assert_eq!(validate_topic(topic), Ok(()), "topic {topic:?}");
            assert!(matches(filter, topic), "{filter:?} should match {topic:?}");
        }
    }

    /// Asserts that `filter` matches none of `topics`.
    fn assert_no_match(filter: &str, topics: &[&str]) {
        assert_valid_filter(filter);
        for topic in topics {
            assert_eq!(validate_topic(topic), Ok(()), "topic {topic:?}");
            assert!(
                !matches(filter, topic),
                "{filter:?} should not match {topic:?}"
            );
        }
    }

    /// Spec 4.7.1.2: "sport/tennis/player1/#" matches the parent and any depth below it.
    #[test]
    fn spec_hash_matches_parent_and_descendants() {
        assert_matches(
            "sport/tennis/player1/#",
            &[
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            ],
        );
        assert_no_match(
            "sport/tennis/player1/#",
            &[
                "sport/tennis/player2",
                "sport/tennis",
                "sport/tennis/player10",
            ],
        );
    }

    /// Spec 4.7.1.2: "sport/#" also matches the singular "sport".
    #[test]
    fn spec_hash_matches_single_parent() {
        assert_matches("sport/#", &["sport", "sport/", "sport/tennis"]);
        assert_no_match("sport/#", &["sports", "/sport"]);
    }

    /// Spec 4.7.1.2: "#" is valid and matches every topic not starting with '$'.
    #[test]
    fn spec_hash_alone_matches_everything() {
        assert_matches("#", &["sport", "/", "/finance", "a/b/c", "a//b"]);
    }

    /// Spec 4.7.1.2: "sport/tennis/#" is valid; "sport/tennis#" and "sport/tennis/#/ranking" are not.
    #[test]
    fn spec_hash_placement_validity() {
        assert_valid_filter("sport/tennis/#");
        assert_valid_filter("#");
        assert_eq!(
            filter_err("sport/tennis#"),
            TopicError::WildcardNotWholeLevel { wildcard: '#' }
        );
        assert_eq!(
            filter_err("sport/tennis/#/ranking"),
            TopicError::HashNotLast
        );
    }

    /// Spec 4.7.1.3: "sport/tennis/+" matches one level below, not two.
    #[test]
    fn spec_plus_matches_exactly_one_level() {
        assert_matches(
            "sport/tennis/+",
            &["sport/tennis/player1", "sport/tennis/player2"],
        );
        assert_no_match(
            "sport/tennis/+",
            &["sport/tennis/player1/ranking", "sport/tennis"],
        );
    }

    /// Spec 4.7.1.3: "sport/+" does not match "sport" but does match "sport/".
    #[test]
    fn spec_plus_needs_a_level_but_it_may_be_empty() {
        assert_no_match("sport/+", &["sport"]);
        assert_matches("sport/+", &["sport/"]);
    }

    /// Spec 4.7.1.3: "+", "+/tennis/#" and "sport/+/player1" are valid; "sport+" is not.
    #[test]
    fn spec_plus_placement_validity() {
        assert_valid_filter("+");
        assert_valid_filter("+/tennis/#");
        assert_valid_filter("sport/+/player1");
        assert_valid_filter("+/+");
        assert_eq!(
            filter_err("sport+"),
            TopicError::WildcardNotWholeLevel { wildcard: '+' }
        );
    }

    /// Spec 4.7.1.3: "+/+" and "/+" match "/finance", "+" does not.
    #[test]
    fn spec_leading_empty_level() {
        assert_matches("+/+", &["/finance"]);
        assert_matches("/+", &["/finance"]);
        assert_no_match("+", &["/finance"]);
        assert_matches("+", &["finance"]);
    }

    /// Spec 4.7.2: "#" does not match topics starting with '$'.
    #[test]
    fn spec_hash_skips_dollar_topics() {
        assert_no_match("#", &["$SYS/x", "$SYS", "$SYS/monitor/Clients", "$"]);
    }

    /// Spec 4.7.2: "+/monitor/Clients" does not match "$SYS/monitor/Clients".
    #[test]
    fn spec_plus_skips_dollar_topics() {
        assert_no_match("+/monitor/Clients", &["$SYS/monitor/Clients"]);
        assert_matches("+/monitor/Clients", &["SYS/monitor/Clients"]);
        assert_no_match("+/#", &["$SYS/monitor/Clients"]);
    }

    /// Spec 4.7.2: explicit "$SYS/#" and "$SYS/monitor/+" filters do match "$SYS" topics.
    #[test]
    fn spec_explicit_dollar_filters_match() {
        assert_matches("$SYS/#", &["$SYS/monitor/Clients", "$SYS/x", "$SYS"]);
        assert_matches("$SYS/monitor/+", &["$SYS/monitor/Clients"]);
        assert_matches("$SYS/monitor/Clients", &["$SYS/monitor/Clients"]);
    }

    /// The '$' rule applies only to the first level: "a/+" matches "a/$b".
    #[test]
    fn dollar_rule_only_at_first_level() {
        assert_matches("a/+", &["a/$b"]);
        assert_matches("a/#", &["a/$b/c"]);
        assert_matches("+/$b", &["a/$b"]);
    }

    /// Spec 4.7.3: topic matching is case-sensitive ("ACCOUNTS" vs "Accounts").
    #[test]
    fn spec_case_sensitive() {
        assert_matches("Accounts", &["Accounts"]);
        assert_no_match("Accounts", &["ACCOUNTS", "accounts"]);
    }

    /// Spec 4.7.3: "Accounts payable" is a valid topic name (spaces allowed).
    #[test]
    fn spec_spaces_allowed() {
        assert_eq!(validate_topic("Accounts payable"), Ok(()));
        assert_matches("Accounts payable/+", &["Accounts payable/2024"]);
    }

    /// Spec 4.7.3: "/finance" and "finance" are different topics.
    #[test]
    fn spec_leading_slash_is_distinct() {
        assert_no_match("finance", &["/finance"]);
        assert_no_match("/finance", &["finance"]);
        assert_matches("/finance", &["/finance"]);
    }

    /// Spec 4.7.1.1: adjacent separators make a zero-length level that must be matched.
    #[test]
    fn empty_levels_are_real_levels() {
        assert_matches("a//b", &["a//b"]);
        assert_no_match("a//b", &["a/b", "a///b"]);
        assert_matches("a/+/b", &["a//b"]);
        assert_matches("a/", &["a/"]);
        assert_no_match("a/", &["a"]);
        assert_no_match("a", &["a/"]);
        assert_matches("+/+", &["/"]);
        assert_no_match("+", &["/"]);
    }

    /// "#" in the middle and a level that contains '#' or '+' after text are rejected.
    #[test]
    fn invalid_filters_are_rejected() {
        assert_eq!(filter_err("a/#/b"), TopicError::HashNotLast);
        assert_eq!(filter_err("#/a"), TopicError::HashNotLast);
        assert_eq!(
            filter_err("a/b+c"),
            TopicError::WildcardNotWholeLevel { wildcard: '+' }
        );
        assert_eq!(
            filter_err("#a"),
            TopicError::WildcardNotWholeLevel { wildcard: '#' }
        );
        assert_eq!(
            filter_err("a/++"),
            TopicError::WildcardNotWholeLevel { wildcard: '+' }
        );
        assert_eq!(
            filter_err("a/##"),
            TopicError::WildcardNotWholeLevel { wildcard: '#' }
        );
    }

    /// Empty filters and names are rejected, but a lone "/" is a valid two-level topic.
    #[test]
    fn empty_is_rejected() {
        assert_eq!(topic_err(""), TopicError::Empty);
        assert_eq!(filter_err(""), TopicError::Empty);
        assert_eq!(validate_topic("/"), Ok(()));
        assert_valid_filter("/");
    }

    /// Names and filters over the byte limit are rejected with the length and limit.
    #[test]
    fn too_long_is_rejected() {
        let at_limit = "a".repeat(MAX_TOPIC_BYTES);
        assert_eq!(validate_topic(&at_limit), Ok(()));
        assert_valid_filter(&at_limit);

        let over = "a".repeat(MAX_TOPIC_BYTES + 1);
        let expected = TopicError::TooLong {
            len: MAX_TOPIC_BYTES + 1,
            max: MAX_TOPIC_BYTES,
        };
        assert_eq!(topic_err(&over), expected);
        assert_eq!(filter_err(&over), expected);
    }

    /// The length limit counts UTF-8 bytes, not characters.
    #[test]
    fn length_counts_bytes() {
        // "é" is two bytes, so 32_768 of them is 65_536 bytes.
        let over = "é".repeat(32_768);
        assert_eq!(
            topic_err(&over),
            TopicError::TooLong {
                len: 65_536,
                max: MAX_TOPIC_BYTES
            }
        );
    }

    /// validate_filter honours a smaller caller-supplied limit, and never exceeds MAX_TOPIC_BYTES.
    #[test]
    fn filter_limit_is_caller_supplied_but_capped() {
        assert_eq!(validate_filter("abcd", 4), Ok(()));
        assert_eq!(
            validate_filter("abcde", 4),
            Err(TopicError::TooLong { len: 5, max: 4 })
        );
        let over = "a".repeat(MAX_TOPIC_BYTES + 1);
        assert_eq!(
            validate_filter(&over, usize::MAX),
            Err(TopicError::TooLong {
                len: MAX_TOPIC_BYTES + 1,
                max: MAX_TOPIC_BYTES
            })
        );
    }

    /// Levels are counted as MQTT counts them (empty ones too), for names
    /// and filters alike, and the byte limit still applies.
    #[test]
    fn limits_count_levels() {
        let limits = Limits {
            max_bytes: 64,
            max_levels: 3,
        };
        assert_eq!(limits.topic("a/b/c"), Ok(()));
        assert_eq!(limits.filter("a/+/#"), Ok(()));
        assert_eq!(limits.filter("//"), Ok(()));
        let four = TopicError::TooManyLevels { levels: 4, max: 3 };
        assert_eq!(limits.topic("a/b/c/d"), Err(four.clone()));
        assert_eq!(limits.filter("///"), Err(four.clone()));
        assert_eq!(limits.filter("a/b/c/#"), Err(four));
        assert_eq!(
            limits.filter(&"/".repeat(8_000)),
            Err(TopicError::TooLong {
                len: 8_000,
                max: 64
            })
        );
        assert_eq!(
            limits.at_most(4).topic("abcde"),
            Err(TopicError::TooLong { len: 5, max: 4 })
        );
        assert_eq!(limits.filter("a/b#"), Err(filter_err("a/b#")));
        assert_eq!(limits.topic("a/+"), Err(TopicError::WildcardInTopic));
    }

    /// Spec 4.7.3: names and filters containing U+0000 are rejected.
    #[test]
    fn nul_is_rejected() {
        assert_eq!(topic_err("a\0b"), TopicError::NulCharacter);
        assert_eq!(filter_err("a/\0"), TopicError::NulCharacter);
        assert_eq!(filter_err("\0/#"), TopicError::NulCharacter);
    }

    /// Topic names may not contain '+' or '#' anywhere.
    #[test]
    fn wildcards_in_topic_names_are_rejected() {
        for topic in ["+", "#", "a/+", "a/#", "a+b", "sport/tennis#", "+/x"] {
            assert_eq!(topic_err(topic), TopicError::WildcardInTopic, "{topic:?}");
        }
        assert_eq!(validate_topic("a/b/c"), Ok(()));
        assert_eq!(validate_topic("$SYS/broker"), Ok(()));
    }

    /// Each error's rule() returns its documented, stable code.
    #[test]
    fn rule_codes_are_stable() {
        let cases = [
            (TopicError::Empty, "empty"),
            (TopicError::TooLong { len: 2, max: 1 }, "too-long"),
            (TopicError::WildcardInTopic, "wildcard-in-topic"),
            (TopicError::HashNotLast, "hash-not-last"),
            (
                TopicError::WildcardNotWholeLevel { wildcard: '+' },
                "wildcard-not-whole-level",
            ),
            (TopicError::NulCharacter, "nul-character"),
            (
                TopicError::TooManyLevels { levels: 2, max: 1 },
                "too-many-levels",
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.rule(), code, "{error:?}");
        }
        // And the codes come out of real validation failures, not just constructed values.
        assert_eq!(topic_err("").rule(), "empty");
        assert_eq!(filter_err("a/#/b").rule(), "hash-not-last");
        assert_eq!(filter_err("a/b+c").rule(), "wildcard-not-whole-level");
        assert_eq!(topic_err("a/+").rule(), "wildcard-in-topic");
        assert_eq!(topic_err("a\0").rule(), "nul-character");
        assert_eq!(filter_err(&"a".repeat(70_000)).rule(), "too-long");
    }

    /// Error messages are readable sentences that name the problem.
    #[test]
    fn error_messages_are_human() {
        assert_eq!(
            TopicError::HashNotLast.to_string(),
            "'#' must be the last level of a filter"
        );
        assert_eq!(
            TopicError::WildcardInTopic.to_string(),
            "a topic name cannot contain wildcards ('+' or '#')"
        );
        assert_eq!(
            filter_err(&"a".repeat(70_000)).to_string(),
            "too long: 70000 bytes, the limit is 65535"
        );
        assert_eq!(
            filter_err("sport+").to_string(),
            "the wildcard '+' must be a whole level on its own, as in \"a/+\""
        );
        assert!(topic_err("").to_string().contains("empty"));
        assert!(topic_err("\0").to_string().contains("NUL"));
    }
}
