//! Who may connect, read and write: identities, and the one access check
//! every subscribe and publish passes, whatever the protocol it came in on.
//!
//! - [`Principal`]: who is asking (anonymous, a user with roles, client id
//!   and token grants, or a plugin).
//! - [`Policy::authorize`]: the single check the router makes for every
//!   subscribe and publish, from SSE, WebSocket, HTTP and plugins alike; and
//!   [`Policy::may_read`], the per-message check for subscriptions that need
//!   one (see [`acl`]).
//! - [`acl`], [`pattern`], [`filter`]: the rules, their `%u`/`%c` patterns,
//!   and the filter comparisons that decide subscriptions.
//! - [`password`]: argon2 password hashes for MQTT users, the gate's check
//!   of every CONNECT, and the per-start secret the broker demands;
//!   [`client_id`]: which client ids belong to which user.
//! - [`token`]: JSON Web Tokens for web clients; [`carrier`]: where a
//!   request carries one.
//!
//! Without any identity source or rule configured the policy allows every
//! admitted principal everything (who is admitted is decided at each
//! protocol's door). Once `[auth]` configures users, tokens or rules, a
//! request that no rule allows is denied.

pub mod acl;
pub mod carrier;
pub mod client_id;
pub mod filter;
pub mod password;
pub mod pattern;
pub mod token;

use std::fmt;
use std::sync::Arc;

pub use acl::{Access, Acl, Refusal};

use crate::config::{AuthConfig, ConfigError};
use crate::topic;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A client that presented no credentials, where that is allowed.
    Anonymous,
    /// An MQTT user or a web client with a valid token.
    User(Arc<Identity>),
    /// A device-driver plugin, by its configured name.
    Plugin(String),
}

impl Principal {
    /// When this principal's credential stops being accepted, for sessions
    /// that outlive a request; `None` if it does not expire.
    pub fn valid_until(&self) -> Option<std::time::Instant> {
        let Self::User(identity) = self else {
            return None;
        };
        let expires_at = identity.expires_at?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let left = std::time::Duration::from_secs(expires_at.saturating_sub(now));
        std::time::Instant::now().checked_add(left)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous"),
            Self::User(identity) => write!(f, "user `{}`", identity.name),
            Self::Plugin(name) => write!(f, "plugin `{name}`"),
        }
    }
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The MQTT username, or the token's `sub`.
    pub name: String,
    pub roles: Vec<String>,
    /// The MQTT client id, or the token's `client_id` claim; `%c` in rules.
    pub client_id: Option<String>,
    /// The token's own filters, which narrow what the rules allow.
    pub grants: Option<Grants>,
    /// When the credential stops being valid (the token's `exp`), in
    /// seconds since the Unix epoch; long-lived sessions end then.
    pub expires_at: Option<u64>,
}

/// Filters a token carries in its `tidewater` claim. A token with the claim
/// may only subscribe to filters covered by `subscribe` and publish to
/// topics matched by `publish` (a missing list allows nothing), on top of
/// what the rules allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
}

/// What they ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Publish,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Subscribe => "subscribe to",
            Self::Publish => "publish on",
        })
    }
}

/// A refusal, with the reason a client may be shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not allowed to {action} `{topic}`: {reason}")]
pub struct Denied {
    pub action: Action,
    pub topic: String,
    pub reason: String,
}

/// The access rules in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    acl: Acl,
    /// False when nothing in `[auth]` is configured: everything admitted is
    /// allowed, as before access control existed.
    enforced: bool,
}

impl Policy {
    /// Allows everything: no identities and no rules configured.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Enforces `acl`, denying what it does not allow.
    pub fn enforce(acl: Acl) -> Self {
        Self {
            acl,
            enforced: true,
        }
    }

    /// The policy `[auth]` describes; errors name the rule at fault.
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(config.acl.len());
        for (i, rule) in config.acl.iter().enumerate() {
            let parsed = acl::Rule::parse(&rule.principal, rule.effect, rule.action, &rule.filter)
                .map_err(|e| {
                    let key = match e {
                        acl::RuleError::Principal(_) => "principal",
                        acl::RuleError::Pattern(_) => "filter",
                    };
                    ConfigError::invalid(format!("auth.acl[{i}].{key}"), e.to_string())
                })?;
            rules.push(parsed);
        }
        let acl = Acl::new(rules);
        Ok(if config.configures_identities() || !acl.is_empty() {
            Self::enforce(acl)
        } else {
            Self::allow_all()
        })
    }

    pub fn is_enforced(&self) -> bool {
        self.enforced
    }

    pub fn has_rules(&self) -> bool {
        !self.acl.is_empty()
    }

    /// Decides whether `principal` may perform `action` on `topic` (a topic
    /// name for publish, a filter for subscribe). An allowed subscription
    /// says whether its messages must be checked one by one.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        topic: &str,
    ) -> Result<Access, Denied> {
        if !self.enforced {
            return Ok(Access::Full);
        }
        let denied = |reason: String| Denied {
            action,
            topic: topic.chars().take(256).collect(),
            reason,
        };
        let access = match action {
            Action::Publish => self
                .acl
                .decide_topic(principal, action, topic)
                .map(|()| Access::Full),
            Action::Subscribe => self.acl.decide_filter(principal, topic),
        }
        .map_err(|refusal| {
            tracing::debug!(%principal, ?action, topic, ?refusal, "Access denied.");
            denied(refusal.to_string())
        })?;
        if let Principal::User(identity) = principal {
            if let Some(grants) = &identity.grants {
                let granted = match action {
                    Action::Publish => grants.publish.iter().any(|f| topic::matches(f, topic)),
                    Action::Subscribe => grants.subscribe.iter().any(|f| filter::covers(f, topic)),
                };
                if !granted {
                    return Err(denied("the token does not grant it".into()));
                }
            }
        }
        Ok(access)
    }

    /// Whether a message on `topic` may be delivered to `principal`, for a
    /// subscription allowed with [`Access::PerMessage`]. (The token's
    /// grants need no second look: the filter was covered by one of them.)
    pub fn may_read(&self, principal: &Principal, topic: &str) -> bool {
        !self.enforced
            || self
                .acl
                .decide_topic(principal, Action::Subscribe, topic)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::acl::{Actions, Effect, Rule};
    use super::*;

    fn resident(grants: Option<Grants>) -> Principal {
        Principal::User(Arc::new(Identity {
            name: "ann".into(),
            roles: vec!["resident".into()],
            client_id: None,
            grants,
            expires_at: None,
        }))
    }

    fn policy() -> Policy {
        Policy::enforce(Acl::new(vec![
            Rule::parse("any", Effect::Deny, Actions::Both, "home/secret/#").expect("rule"),
            Rule::parse("role:resident", Effect::Allow, Actions::Both, "home/#").expect("rule"),
        ]))
    }

    /// With nothing configured, everything admitted is allowed.
    #[test]
    fn nothing_configured_allows_all() {
        let policy = Policy::allow_all();
        assert_eq!(
            policy.authorize(&Principal::Anonymous, Action::Publish, "a"),
            Ok(Access::Full)
        );
        assert!(policy.may_read(&Principal::Anonymous, "a"));
    }

    /// An enforced policy without rules denies everything.
    #[test]
    fn enforced_without_rules_denies() {
        let policy = Policy::enforce(Acl::default());
        let denied = policy
            .authorize(&resident(None), Action::Subscribe, "home/#")
            .expect_err("denied");
        assert_eq!(denied.reason, "no access rule allows it");
    }

    /// A token's grants narrow the rules but never widen them.
    #[test]
    fn grants_narrow_the_rules() {
        let policy = policy();
        let narrow = resident(Some(Grants {
            subscribe: vec!["home/kitchen/#".into(), "garden/#".into()],
            publish: vec![],
        }));
        assert_eq!(
            policy.authorize(&narrow, Action::Subscribe, "home/kitchen/+"),
            Ok(Access::Full)
        );
        assert!(policy
            .authorize(&narrow, Action::Subscribe, "home/hall/+")
            .is_err());
        assert!(
            policy
                .authorize(&narrow, Action::Subscribe, "garden/tap")
                .is_err(),
            "granted by the token but not by the rules"
        );
        assert!(
            policy
                .authorize(&narrow, Action::Publish, "home/kitchen/light")
                .is_err(),
            "no publish grant"
        );
    }

    /// A subscription that overlaps a denied area is checked per message,
    /// and the check withholds exactly the denied topics.
    #[test]
    fn per_message_reads() {
        let policy = policy();
        let ann = resident(None);
        assert_eq!(
            policy.authorize(&ann, Action::Subscribe, "home/+/temperature"),
            Ok(Access::PerMessage)
        );
        assert!(policy.may_read(&ann, "home/kitchen/temperature"));
        assert!(!policy.may_read(&ann, "home/secret/temperature"));
    }
}
