//! The access-control list: ordered rules, each `principal → allow|deny,
//! action, topic pattern`, where the first rule that applies decides.
//!
//! For a publish, a rule applies when its pattern matches the topic. For a
//! subscription, the filter asked for is compared with each pattern: the
//! first rule whose pattern *covers* the filter (matches every topic it
//! does) decides. Earlier rules that only *intersect* it decide some of its
//! topics differently, so an allowed subscription with such rules before its
//! deciding rule is marked [`Access::PerMessage`] and its messages are
//! checked one by one. A request no rule decides is denied.

use std::fmt;

use super::filter::{covers, intersects};
use super::pattern::{Pattern, PatternError, Subject};
use super::{Action, Principal};
use crate::topic;

/// Who a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Everyone, including anonymous clients and plugins.
    Any,
    /// Clients that presented no credentials.
    Anonymous,
    /// Any user: an MQTT user or a web client with a valid token.
    Authenticated,
    /// One user, by name (MQTT username or the token's `sub`).
    User(String),
    /// Users holding this role.
    Role(String),
    /// Every plugin.
    Plugins,
    /// One plugin, by its configured name.
    Plugin(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown principal `{0}`: use any, anonymous, authenticated, plugins, user:NAME, role:NAME or plugin:NAME")]
pub struct SelectorError(pub String);

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let named = |prefix: &str| {
            text.strip_prefix(prefix)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
        };
        Ok(match text {
            "any" => Self::Any,
            "anonymous" => Self::Anonymous,
            "authenticated" => Self::Authenticated,
            "plugins" => Self::Plugins,
            _ => {
                if let Some(name) = named("user:") {
                    Self::User(name)
                } else if let Some(name) = named("role:") {
                    Self::Role(name)
                } else if let Some(name) = named("plugin:") {
                    Self::Plugin(name)
                } else {
                    return Err(SelectorError(text.to_owned()));
                }
            }
        })
    }
}

impl Selector {
    fn selects(&self, principal: &Principal) -> bool {
        match (self, principal) {
            (Self::Any, _) => true,
            (Self::Anonymous, Principal::Anonymous) => true,
            (Self::Authenticated, Principal::User(_)) => true,
            (Self::User(name), Principal::User(identity)) => &identity.name == name,
            (Self::Role(role), Principal::User(identity)) => identity.roles.contains(role),
            (Self::Plugins, Principal::Plugin(_)) => true,
            (Self::Plugin(name), Principal::Plugin(plugin)) => plugin == name,
            _ => false,
        }
    }
}

/// What a rule does when it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// Which actions a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Actions {
    Subscribe,
    Publish,
    Both,
}

impl Actions {
    fn includes(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Self::Both, _)
                | (Self::Subscribe, Action::Subscribe)
                | (Self::Publish, Action::Publish)
        )
    }
}

/// One rule, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub selector: Selector,
    pub effect: Effect,
    pub actions: Actions,
    pub pattern: Pattern,
}

/// Why a rule from the configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(transparent)]
    Principal(#[from] SelectorError),
    #[error(transparent)]
    Pattern(#[from] PatternError),
}

impl Rule {
    pub fn parse(
        principal: &str,
        effect: Effect,
        actions: Actions,
        filter: &str,
    ) -> Result<Self, RuleError> {
        Ok(Self {
            selector: principal.parse()?,
            effect,
            actions,
            pattern: Pattern::parse(filter)?,
        })
    }
}

/// An allowed subscription's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Every topic the filter matches is allowed.
    Full,
    /// Some topics the filter matches are denied by an earlier rule: check
    /// each message before delivering it.
    PerMessage,
}

/// Why the ACL refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Rule `index` (from 0) denies it.
    DeniedBy(usize),
    /// No rule allows it.
    NoRule,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeniedBy(_) => f.write_str("an access rule denies it"),
            Self::NoRule => f.write_str("no access rule allows it"),
        }
    }
}

/// The ordered rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules that apply to `principal` and `action`, each with its
    /// index and its pattern resolved for the principal.
    fn applicable<'a>(
        &'a self,
        principal: &'a Principal,
        action: Action,
    ) -> impl Iterator<Item = (usize, &'a Rule, std::borrow::Cow<'a, str>)> + 'a {
        let subject = subject(principal);
        self.rules
            .iter()
            .enumerate()
            .filter(move |(_, rule)| {
                rule.actions.includes(action) && rule.selector.selects(principal)
            })
            .filter_map(move |(index, rule)| {
                // A deny fails closed: it covers whatever value it could
                // not name (see `auth::pattern`).
                match rule.effect {
                    Effect::Allow => rule.pattern.resolve(subject),
                    Effect::Deny => Some(rule.pattern.resolve_widest(subject)),
                }
                .map(|filter| (index, rule, filter))
            })
    }

    /// Decides a publish on `topic`, or whether a message on `topic` may be
    /// delivered to a subscriber (`Action::Subscribe`).
    pub fn decide_topic(
        &self,
        principal: &Principal,
        action: Action,
        topic: &str,
    ) -> Result<(), Refusal> {
        for (index, rule, filter) in self.applicable(principal, action) {
            if topic::matches(&filter, topic) {
                return match rule.effect {
                    Effect::Allow => Ok(()),
                    Effect::Deny => Err(Refusal::DeniedBy(index)),
                };
            }
        }
        Err(Refusal::NoRule)
    }

    /// Decides a subscription to `filter`.
    pub fn decide_filter(&self, principal: &Principal, filter: &str) -> Result<Access, Refusal> {
        let mut mixed = false;
        for (index, rule, pattern) in self.applicable(principal, Action::Subscribe) {
            if covers(&pattern, filter) {
                return match rule.effect {
                    Effect::Allow if mixed => Ok(Access::PerMessage),
                    Effect::Allow => Ok(Access::Full),
                    Effect::Deny => Err(Refusal::DeniedBy(index)),
                };
            }
            // An earlier allow that intersects changes nothing for a later
            // allow; an earlier deny does.
            if rule.effect == Effect::Deny && intersects(&pattern, filter) {
                mixed = true;
            }
        }
        Err(Refusal::NoRule)
    }
}

fn subject(principal: &Principal) -> Subject<'_> {
    match principal {
        Principal::Anonymous => Subject::default(),
        Principal::User(identity) => Subject {
            user: Some(&identity.name),
            client_id: identity.client_id.as_deref(),
        },
        Principal::Plugin(name) => Subject {
            user: Some(name),
            client_id: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::Identity;
    use proptest::prelude::*;

    fn rule(principal: &str, effect: Effect, actions: Actions, filter: &str) -> Rule {
        Rule::parse(principal, effect, actions, filter).expect("valid rule")
    }

    fn user(name: &str, roles: &[&str], client: Option<&str>) -> Principal {
        Principal::User(Arc::new(Identity {
            name: name.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            client_id: client.map(str::to_owned),
            grants: None,
            expires_at: None,
        }))
    }

    /// A deny rule whose placeholder has no value for a principal still
    /// applies, to every value (fails closed); an allow rule in the same
    /// case does not apply at all. Each principal it can name is denied
    /// its own topic only.
    #[test]
    fn a_deny_that_cannot_name_the_principal_denies_every_value() {
        let acl = Acl::new(vec![
            rule("any", Effect::Deny, Actions::Publish, "devices/%c/config"),
            rule(
                "any",
                Effect::Deny,
                Actions::Subscribe,
                "inbox/%u-private/#",
            ),
            rule("any", Effect::Allow, Actions::Both, "#"),
        ]);
        let named = user("alice", &[], Some("cam-1"));
        let web = user("alice", &[], None);
        let publish = |p: &Principal, topic| acl.decide_topic(p, Action::Publish, topic);
        assert_eq!(
            publish(&named, "devices/cam-1/config"),
            Err(Refusal::DeniedBy(0))
        );
        assert_eq!(publish(&named, "devices/cam-2/config"), Ok(()));
        assert_eq!(
            publish(&web, "devices/cam-2/config"),
            Err(Refusal::DeniedBy(0))
        );
        assert_eq!(
            publish(&Principal::Anonymous, "devices/x/config"),
            Err(Refusal::DeniedBy(0))
        );
        assert_eq!(publish(&web, "devices/cam-2/state"), Ok(()));
        let hash = user("#", &[], None);
        assert_eq!(
            acl.decide_filter(&hash, "inbox/bob-private/#"),
            Err(Refusal::DeniedBy(1)),
            "a user called `#` is denied every inbox, not none"
        );
        assert_eq!(
            acl.decide_filter(&named, "inbox/bob-private/#"),
            Ok(Access::Full)
        );
        assert_eq!(
            acl.decide_filter(&named, "inbox/alice-private/#"),
            Err(Refusal::DeniedBy(1))
        );
    }

    /// A token's `sub` and an MQTT username are one namespace, as
    /// documented: `user:NAME` selects both, because the configured issuer
    /// is trusted to name users. Keeping them apart is done with roles.
    #[test]
    fn a_token_subject_is_the_user_of_that_name() {
        let acl = Acl::new(vec![rule("user:admin", Effect::Allow, Actions::Both, "#")]);
        let from_token = user("admin", &[], None);
        assert_eq!(acl.decide_topic(&from_token, Action::Publish, "a"), Ok(()));
        let other = user("admin2", &[], None);
        assert_eq!(
            acl.decide_topic(&other, Action::Publish, "a"),
            Err(Refusal::NoRule)
        );
    }

    fn home_acl() -> Acl {
        Acl::new(vec![
            rule("any", Effect::Deny, Actions::Both, "home/secret/#"),
            rule("role:resident", Effect::Allow, Actions::Both, "home/#"),
            rule(
                "authenticated",
                Effect::Allow,
                Actions::Subscribe,
                "users/%u/#",
            ),
            rule(
                "authenticated",
                Effect::Allow,
                Actions::Publish,
                "clients/%c/out",
            ),
            rule("anonymous", Effect::Allow, Actions::Subscribe, "public/#"),
        ])
    }

    /// The first rule that applies decides; nothing applicable is a denial.
    #[test]
    fn first_match_wins_and_default_deny() {
        let acl = home_acl();
        let resident = user("ann", &["resident"], None);
        assert_eq!(
            acl.decide_topic(&resident, Action::Publish, "home/light/1/set"),
            Ok(())
        );
        assert_eq!(
            acl.decide_topic(&resident, Action::Publish, "home/secret/door"),
            Err(Refusal::DeniedBy(0))
        );
        assert_eq!(
            acl.decide_topic(&resident, Action::Publish, "garden/tap"),
            Err(Refusal::NoRule)
        );
        assert_eq!(
            acl.decide_topic(&Principal::Anonymous, Action::Publish, "public/x"),
            Err(Refusal::NoRule),
            "anonymous may only subscribe to public/#"
        );
    }

    /// A filter covered by an allow is allowed, wholly or per message; one
    /// covered by a deny, or by nothing, is refused.
    #[test]
    fn subscriptions_are_decided_by_coverage() {
        let acl = home_acl();
        let resident = user("ann", &["resident"], None);
        assert_eq!(
            acl.decide_filter(&resident, "home/kitchen/+"),
            Ok(Access::Full)
        );
        assert_eq!(
            acl.decide_filter(&resident, "home/+/temperature"),
            Ok(Access::PerMessage),
            "home/secret/temperature is denied by the first rule"
        );
        assert_eq!(
            acl.decide_filter(&resident, "home/secret/#"),
            Err(Refusal::DeniedBy(0))
        );
        assert_eq!(acl.decide_filter(&resident, "#"), Err(Refusal::NoRule));
        assert_eq!(
            acl.decide_filter(&Principal::Anonymous, "public/+/x"),
            Ok(Access::Full)
        );
        assert_eq!(
            acl.decide_filter(&Principal::Anonymous, "home/#"),
            Err(Refusal::NoRule)
        );
    }

    /// `%u` and `%c` give each principal its own space and no one else's.
    #[test]
    fn substitutions_are_per_principal() {
        let acl = home_acl();
        let bob = user("bob", &[], Some("phone"));
        assert_eq!(acl.decide_filter(&bob, "users/bob/#"), Ok(Access::Full));
        assert_eq!(acl.decide_filter(&bob, "users/ann/#"), Err(Refusal::NoRule));
        assert_eq!(acl.decide_filter(&bob, "users/+/#"), Err(Refusal::NoRule));
        assert_eq!(
            acl.decide_topic(&bob, Action::Publish, "clients/phone/out"),
            Ok(())
        );
        let hash = user("#", &[], None);
        assert_eq!(acl.decide_filter(&hash, "users/#"), Err(Refusal::NoRule));
    }

    /// Plugin selectors name one plugin or all of them, and nobody else.
    #[test]
    fn plugin_selectors() {
        let acl = Acl::new(vec![
            rule("plugin:thermo", Effect::Allow, Actions::Publish, "home/#"),
            rule("plugins", Effect::Allow, Actions::Subscribe, "home/+/set"),
        ]);
        let thermo = Principal::Plugin("thermo".into());
        let lights = Principal::Plugin("lights".into());
        assert_eq!(acl.decide_topic(&thermo, Action::Publish, "home/t"), Ok(()));
        assert!(acl
            .decide_topic(&lights, Action::Publish, "home/t")
            .is_err());
        assert_eq!(acl.decide_filter(&lights, "home/+/set"), Ok(Access::Full));
        assert!(acl
            .decide_filter(&user("thermo", &[], None), "home/+/set")
            .is_err());
    }

    /// Selectors parse from their documented spellings only.
    #[test]
    fn selectors_parse() {
        assert_eq!("any".parse(), Ok(Selector::Any));
        assert_eq!("role:admin".parse(), Ok(Selector::Role("admin".into())));
        assert!("role:".parse::<Selector>().is_err());
        assert!("everyone".parse::<Selector>().is_err());
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just("home"), Just("secret"), Just("x"), Just("$s")],
            1..4,
        )
        .prop_map(|levels| levels.join("/"))
    }

    proptest! {
        /// Whatever the filter, a subscription the ACL allows never lets
        /// through a message the ACL would deny: either every topic of the
        /// filter is allowed, or the subscription is checked per message.
        #[test]
        fn allowed_subscriptions_never_leak(
            filter in proptest::collection::vec(
                prop_oneof![Just("home"), Just("secret"), Just("x"), Just("$s"), Just("+"), Just("#")], 1..4
            ).prop_map(|l| l.join("/")).prop_filter("valid", |f| topic::validate_filter(f, 64).is_ok()),
            topics in proptest::collection::vec(topic_strategy(), 1..20),
        ) {
            let acl = home_acl();
            let resident = user("ann", &["resident"], None);
            if let Ok(Access::Full) = acl.decide_filter(&resident, &filter) {
                for t in topics.iter().filter(|t| topic::matches(&filter, t)) {
                    prop_assert_eq!(acl.decide_topic(&resident, Action::Subscribe, t), Ok(()), "{} via {}", t, filter);
                }
            }
        }
    }
}
