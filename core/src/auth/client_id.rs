//! Which MQTT client ids belong to which user, so that `%c` in a rule can be
//! trusted: a user connects only with ids bound to it, and nobody else,
//! user or anonymous device, may take them (taking an id closes the
//! session that holds it, in MQTT).
//!
//! A user owns its name, every id that starts with `<name>-` or `<name>/`,
//! and the ids its `[[auth.users]]` entry lists in `client_ids`: exact ids,
//! or prefixes ending in `*`. Configuration refuses two users whose ids
//! could meet, so every id has at most one owner. An id nobody owns is free
//! for anonymous devices (where `auth.anonymous_mqtt` lets them in), and
//! refused to users. The empty id (the broker picks one) is allowed to all.

use crate::config::UserConfig;

/// One id or family of ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    Exact(String),
    Prefix(String),
}

impl IdPattern {
    /// Reads `text`: `*` may only end it, and not be all of it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (stem, wildcard) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        if stem.is_empty() {
            return Err(format!(
                "`{text}` names no client id: give an id, or a prefix before the `*`"
            ));
        }
        if stem.contains('*') {
            return Err(format!("`{text}`: `*` may only end a client id pattern"));
        }
        Ok(if wildcard {
            Self::Prefix(stem.to_owned())
        } else {
            Self::Exact(stem.to_owned())
        })
    }

    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::Exact(exact) => id == exact,
            Self::Prefix(prefix) => id.starts_with(prefix.as_str()),
        }
    }

    /// Whether some id matches both.
    pub fn overlaps(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(id), prefix @ Self::Prefix(_))
            | (prefix @ Self::Prefix(_), Self::Exact(id)) => prefix.matches(id),
            (Self::Prefix(a), Self::Prefix(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
        }
    }
}

/// The patterns `user` owns, its implicit ones first.
pub fn patterns_of(user: &UserConfig) -> Result<Vec<IdPattern>, String> {
    let name = &user.name;
    let mut patterns = vec![
        IdPattern::Exact(name.clone()),
        IdPattern::Prefix(format!("{name}-")),
        IdPattern::Prefix(format!("{name}/")),
    ];
    for text in &user.client_ids {
        patterns.push(IdPattern::parse(text)?);
    }
    Ok(patterns)
}

/// Every user's client ids. Looking an id up walks every pattern: a
/// CONNECT does it once, next to an argon2 check that costs far more.
#[derive(Debug, Default)]
pub struct ClientIds {
    owners: Vec<(String, Vec<IdPattern>)>,
}

impl ClientIds {
    /// From validated users (see [`validate`]); a pattern that does not
    /// parse is left out.
    pub fn new(users: &[UserConfig]) -> Self {
        Self {
            owners: users
                .iter()
                .filter_map(|u| Some((u.name.clone(), patterns_of(u).ok()?)))
                .collect(),
        }
    }

    /// The user that owns `id`, if any.
    pub fn owner(&self, id: &str) -> Option<&str> {
        self.owners
            .iter()
            .find(|(_, patterns)| patterns.iter().any(|p| p.matches(id)))
            .map(|(name, _)| name.as_str())
    }

    /// Whether `user` (`None`: anonymous) may connect with `id`.
    pub fn may_use(&self, user: Option<&str>, id: &str) -> bool {
        id.is_empty() || self.owner(id) == user
    }
}

/// Checks that every user's patterns parse and that no two users' ids
/// could meet; the offending entry's index and the reason if not.
pub fn validate(users: &[UserConfig]) -> Result<(), (usize, String)> {
    let mut seen: Vec<(&str, Vec<IdPattern>)> = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let patterns = patterns_of(user).map_err(|e| (i, e))?;
        for (other, theirs) in &seen {
            for mine in &patterns {
                if let Some(clash) = theirs.iter().find(|t| t.overlaps(mine)) {
                    return Err((
                        i,
                        format!(
                            "its client ids ({}) meet user `{other}`'s ({}): a client id must have one owner",
                            describe(mine),
                            describe(clash)
                        ),
                    ));
                }
            }
        }
        seen.push((&user.name, patterns));
    }
    Ok(())
}

fn describe(pattern: &IdPattern) -> String {
    match pattern {
        IdPattern::Exact(id) => format!("`{id}`"),
        IdPattern::Prefix(prefix) => format!("`{prefix}*`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, ids: &[&str]) -> UserConfig {
        UserConfig {
            name: name.into(),
            password_hash: String::new(),
            roles: Vec::new(),
            client_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A user owns its name, `<name>-…`, `<name>/…` and what it lists;
    /// nobody else may use them, and a user may use nothing else.
    #[test]
    fn ids_have_one_owner() {
        let ids = ClientIds::new(&[user("alice", &["kitchen-*", "sensor-17"]), user("bob", &[])]);
        for id in [
            "alice",
            "alice-phone",
            "alice/car",
            "kitchen-1",
            "sensor-17",
        ] {
            assert!(ids.may_use(Some("alice"), id), "{id}");
            assert!(!ids.may_use(Some("bob"), id), "{id}");
            assert!(!ids.may_use(None, id), "{id}");
        }
        for id in ["alicephone", "sensor-170", "kitchen", "other"] {
            assert!(!ids.may_use(Some("alice"), id), "{id}");
            assert!(ids.may_use(None, id), "{id}");
        }
        assert!(ids.may_use(Some("bob"), "bob-phone"));
        assert!(ids.may_use(Some("bob"), "") && ids.may_use(None, ""));
    }

    /// Ids two users could both claim are refused at startup.
    #[test]
    fn overlapping_ids_are_refused() {
        let clash = |users: &[UserConfig]| validate(users).map_err(|(i, _)| i);
        assert_eq!(clash(&[user("a", &[]), user("b", &[])]), Ok(()));
        assert_eq!(clash(&[user("a", &[]), user("b", &["a-x"])]), Err(1));
        assert_eq!(
            clash(&[user("a", &["dev*"]), user("b", &["device-1"])]),
            Err(1)
        );
        assert_eq!(clash(&[user("a", &["dev*"]), user("b", &["d*"])]), Err(1));
        assert_eq!(
            clash(&[user("a", &[]), user("a-b", &[])]),
            Err(1),
            "a-b is a-…"
        );
        assert_eq!(clash(&[user("a", &["*"])]), Err(0));
        assert_eq!(clash(&[user("a", &["x*y"])]), Err(0));
    }
}
