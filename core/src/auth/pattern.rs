//! ACL topic patterns: a topic filter that may name the asking principal,
//! `%u` for its user name and `%c` for its client id (`%%` is a literal `%`).
//!
//! A substitution can never widen what a rule allows nor narrow what it
//! denies: a value that is empty, or holds `/`, `+`, `#` or NUL, or starts
//! with `$`, would change the filter's shape (a user called `#`, a client
//! id `a/b`). An allow rule whose value is unusable does not apply to that
//! principal at all ([`Pattern::resolve`]); a deny rule applies to every
//! value the placeholder's level could take ([`Pattern::resolve_widest`]),
//! so a principal without a client id is denied `devices/%c/config` for
//! every device rather than for none.

use std::borrow::Cow;

use crate::topic::{self, TopicError};

/// A parsed ACL pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    parts: Vec<Part>,
    /// The pattern with no placeholder left, when it had none.
    literal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    User,
    ClientId,
}

/// Why a pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("unknown placeholder `%{0}`: use %u (user), %c (client id) or %% (a literal %)")]
    UnknownPlaceholder(char),
    #[error("a `%` at the end: use %u, %c or %%")]
    TrailingPercent,
    #[error("not a valid topic filter: {0}")]
    Filter(#[from] TopicError),
}

/// The values a pattern's placeholders take for one principal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    pub user: Option<&'a str>,
    pub client_id: Option<&'a str>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut parts = Vec::new();
        let mut text_part = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                text_part.push(c);
                continue;
            }
            let placeholder = match chars.next() {
                None => return Err(PatternError::TrailingPercent),
                Some('%') => {
                    text_part.push('%');
                    continue;
                }
                Some('u') => Part::User,
                Some('c') => Part::ClientId,
                Some(other) => return Err(PatternError::UnknownPlaceholder(other)),
            };
            if !text_part.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text_part)));
            }
            parts.push(placeholder);
        }
        if !text_part.is_empty() {
            parts.push(Part::Text(text_part));
        }
        // The shape is checked with a stand-in value: substitutions are
        // plain level text, so a valid shape stays valid once filled in.
        let shape = render(&parts, "x", "x");
        topic::validate_filter(&shape, topic::MAX_TOPIC_BYTES)?;
        let literal = parts
            .iter()
            .all(|p| matches!(p, Part::Text(_)))
            .then(|| render(&parts, "", ""));
        Ok(Self { parts, literal })
    }

    /// The filter for `subject`, or `None` if a placeholder has no usable
    /// value for it (then the rule does not apply).
    pub fn resolve(&self, subject: Subject<'_>) -> Option<Cow<'_, str>> {
        if let Some(literal) = &self.literal {
            return Some(Cow::Borrowed(literal));
        }
        let user = subject.user.filter(|v| usable(v));
        let client = subject.client_id.filter(|v| usable(v));
        let needs = |part: &Part| match part {
            Part::User => user.is_some(),
            Part::ClientId => client.is_some(),
            Part::Text(_) => true,
        };
        if !self.parts.iter().all(needs) {
            return None;
        }
        Some(Cow::Owned(render(
            &self.parts,
            user.unwrap_or_default(),
            client.unwrap_or_default(),
        )))
    }
}

impl Pattern {
    /// The filter for `subject` where a placeholder with no usable value
    /// stands for any value: its whole level becomes `+`. What a deny rule
    /// denies a principal it cannot name.
    pub fn resolve_widest(&self, subject: Subject<'_>) -> Cow<'_, str> {
        if let Some(literal) = &self.literal {
            return Cow::Borrowed(literal);
        }
        // NUL is never in a pattern's text (filters refuse it): it marks
        // the levels that lost their value.
        const MISSING: &str = "\0";
        let user = subject.user.filter(|v| usable(v)).unwrap_or(MISSING);
        let client = subject.client_id.filter(|v| usable(v)).unwrap_or(MISSING);
        let rendered = render(&self.parts, user, client);
        if !rendered.contains('\0') {
            return Cow::Owned(rendered);
        }
        let levels: Vec<&str> = rendered
            .split('/')
            .map(|level| if level.contains('\0') { "+" } else { level })
            .collect();
        Cow::Owned(levels.join("/"))
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(text) => f.write_str(&text.replace('%', "%%"))?,
                Part::User => f.write_str("%u")?,
                Part::ClientId => f.write_str("%c")?,
            }
        }
        Ok(())
    }
}

fn render(parts: &[Part], user: &str, client: &str) -> String {
    let mut out = String::new();
    for part in parts {
        out.push_str(match part {
            Part::Text(text) => text,
            Part::User => user,
            Part::ClientId => client,
        });
    }
    out
}

/// Whether a value may stand in a filter without changing its shape.
fn usable(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with('$')
        && !value.contains(['/', '+', '#', '\0'])
        && value.len() <= 1_024
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subject<'a>(user: &'a str, client: &'a str) -> Subject<'a> {
        Subject {
            user: Some(user),
            client_id: Some(client),
        }
    }

    /// `%u` and `%c` take the principal's values; `%%` is a literal `%`.
    #[test]
    fn placeholders_are_substituted() {
        let pattern = Pattern::parse("home/%u/%c/100%%").expect("valid");
        assert_eq!(
            pattern.resolve(subject("alice", "phone")).as_deref(),
            Some("home/alice/phone/100%")
        );
        assert_eq!(pattern.to_string(), "home/%u/%c/100%%");
    }

    /// A value that would widen or reshape the filter makes the rule not
    /// apply, as does a missing value.
    #[test]
    fn unusable_values_do_not_apply() {
        let pattern = Pattern::parse("users/%u/#").expect("valid");
        for user in ["#", "+", "a/b", "", "$SYS", "a\0"] {
            assert_eq!(pattern.resolve(subject(user, "c")), None, "user {user:?}");
        }
        assert_eq!(pattern.resolve(Subject::default()), None);
        let literal = Pattern::parse("public/#").expect("valid");
        assert_eq!(
            literal.resolve(Subject::default()).as_deref(),
            Some("public/#")
        );
    }

    /// Unknown placeholders and invalid filter shapes are refused by name.
    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(
            Pattern::parse("a/%x"),
            Err(PatternError::UnknownPlaceholder('x'))
        );
        assert_eq!(Pattern::parse("a/%"), Err(PatternError::TrailingPercent));
        assert!(matches!(
            Pattern::parse("a/%u+"),
            Err(PatternError::Filter(_))
        ));
        assert!(matches!(
            Pattern::parse("#/%u"),
            Err(PatternError::Filter(_))
        ));
        assert!(matches!(Pattern::parse(""), Err(PatternError::Filter(_))));
    }

    proptest! {
        /// Any input either parses into a pattern that prints back to an
        /// equivalent pattern, or is refused; never a panic.
        #[test]
        fn parse_never_panics_and_round_trips(text in "[a-z%/+#$ucx]{0,24}") {
            if let Ok(pattern) = Pattern::parse(&text) {
                let printed = pattern.to_string();
                prop_assert_eq!(Pattern::parse(&printed), Ok(pattern.clone()));
                if let Some(filter) = pattern.resolve(subject("u1", "c1")) {
                    prop_assert!(topic::validate_filter(&filter, topic::MAX_TOPIC_BYTES).is_ok());
                }
            }
        }

        /// A substituted pattern is always a valid filter, whatever the
        /// principal's name.
        #[test]
        fn substitution_keeps_filters_valid(user in "\\PC{0,12}", client in "\\PC{0,12}") {
            let pattern = Pattern::parse("a/%u/+/%c/#").expect("valid");
            if let Some(filter) = pattern.resolve(subject(&user, &client)) {
                prop_assert!(topic::validate_filter(&filter, topic::MAX_TOPIC_BYTES).is_ok());
                prop_assert_eq!(filter.split('/').count(), 5);
            }
        }
    }
}
