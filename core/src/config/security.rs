//! The security sections of the configuration: `[auth]` (who may connect,
//! read and write), `[tls]` (the certificate the TLS listeners present) and
//! `[limits]` (publish rates; the other limits live in their protocol's
//! section), with the rules their values must obey.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::auth::acl::{Actions, Effect};
use crate::auth::{password, Policy};

/// `[auth]`: identities and access rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Web clients (SSE, WebSocket, HTTP publish) without a token are let in
    /// as `anonymous`. Off by default.
    pub anonymous_web: bool,
    /// MQTT clients without a username are let in as `anonymous`. Off by
    /// default. With `[[auth.users]]` too, a CONNECT with a username must
    /// still carry its password.
    pub anonymous_mqtt: bool,
    /// MQTT users and their argon2 password hashes.
    pub users: Vec<UserConfig>,
    /// JSON Web Tokens for web clients; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Access rules, first match wins; with any identity or rule
    /// configured, what no rule allows is denied.
    pub acl: Vec<AclRuleConfig>,
}

/// `[[auth.users]]`: one MQTT user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// An argon2 PHC string from `tidewater hash-password`.
    pub password_hash: String,
    /// Roles for `role:NAME` rules, as a web client's token carries them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Client ids this user may connect with, besides its own name and
    /// `<name>-…` / `<name>/…` (always allowed): exact ids, or a prefix
    /// ending in `*` (`"kitchen-*"`). No other user, and no anonymous
    /// client, may use them, so `%c` in a rule names this user's devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_ids: Vec<String>,
}

/// `[auth.jwt]`: how web clients' tokens are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HS256 shared secret, at least 32 bytes; empty turns HS256 off.
    /// Better given in the environment: `TIDEWATER_AUTH__JWT__SECRET`.
    #[serde(serialize_with = "redact")]
    pub secret: String,
    /// PEM files of RS256 (RSA) or ES256 (P-256) public keys.
    pub public_keys: Vec<PathBuf>,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The `iss` every token must carry; not checked when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim holding the user's roles (a list of strings).
    pub roles_claim: String,
    /// The cookie a token may travel in; empty turns cookies off.
    pub cookie: String,
    /// Whether a token may travel in the `access_token` query parameter.
    pub query_parameter: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: String::new(),
            public_keys: Vec::new(),
            audience: String::new(),
            issuer: None,
            leeway_secs: 30,
            roles_claim: "roles".into(),
            cookie: "tidewater_token".into(),
            query_parameter: true,
        }
    }
}

/// `[[auth.acl]]`: one access rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    /// `any`, `anonymous`, `authenticated`, `plugins`, `user:NAME`,
    /// `role:NAME` or `plugin:NAME`.
    pub principal: String,
    pub effect: Effect,
    /// `subscribe`, `publish` or `both`.
    pub action: Actions,
    /// A topic filter; `%u` is the user name, `%c` the client id.
    pub filter: String,
}

/// `[tls]`: the certificate every TLS listener presents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_path: Option<PathBuf>,
}

/// `[limits]`: how fast clients may publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Publishes per second per web client (a WebSocket session; an HTTP
    /// client by user, or by address when anonymous); 0 is unlimited.
    pub publish_rate: u32,
    /// Publishes a client may make at once before the rate applies.
    pub publish_burst: u32,
    /// Publishes per second per MQTT connection, applied by the MQTT gate
    /// (so on the listeners it serves: all with `[auth]` configured, else
    /// `mqtt.listen_v5` and the TLS ones);
    /// 0 is unlimited.
    pub mqtt_publish_rate: u32,
    /// Publishes an MQTT connection may make at once before its rate applies.
    pub mqtt_publish_burst: u32,
    /// How long a command (`POST /command`, the WebSocket `command` op)
    /// waits for its device's answer when the client names no timeout, and
    /// the longest it may name, in milliseconds.
    pub command_timeout_ms: u64,
    pub max_command_timeout_ms: u64,
    /// Commands waiting for an answer at once, in total and per client
    /// (a user, or an address when anonymous); past them a command is
    /// refused (503, 429). Each holds a subscription and a request.
    pub max_pending_commands: usize,
    pub max_pending_commands_per_client: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            publish_rate: 100,
            publish_burst: 200,
            mqtt_publish_rate: 0,
            mqtt_publish_burst: 200,
            command_timeout_ms: 5_000,
            max_command_timeout_ms: 30_000,
            max_pending_commands: 1_024,
            max_pending_commands_per_client: 16,
        }
    }
}

fn redact<S: serde::Serializer>(secret: &str, serializer: S) -> Result<S::Ok, S::Error> {
    if secret.is_empty() {
        serializer.serialize_str("")
    } else {
        serializer.serialize_str("<redacted>")
    }
}

impl AuthConfig {
    /// Whether any way of proving an identity is configured.
    pub fn configures_identities(&self) -> bool {
        !self.users.is_empty() || self.jwt.is_some()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, user) in self.users.iter().enumerate() {
            let name = &user.name;
            if name.is_empty() || name.starts_with('$') || name.contains(['/', '+', '#', '\0']) {
                return Err(ConfigError::invalid(
                    format!("auth.users[{i}].name"),
                    format!("`{name}` must be non-empty, not start with $ and hold no /, + or #"),
                ));
            }
            if self.users[..i].iter().any(|u| &u.name == name) {
                return Err(ConfigError::invalid(
                    format!("auth.users[{i}].name"),
                    format!("`{name}` is used by an earlier user: names must be unique"),
                ));
            }
            password::check_hash(&user.password_hash).map_err(|problem| {
                ConfigError::invalid(format!("auth.users[{i}].password_hash"), problem)
            })?;
        }
        crate::auth::client_id::validate(&self.users).map_err(|(i, problem)| {
            ConfigError::invalid(format!("auth.users[{i}].client_ids"), problem)
        })?;
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        Policy::from_config(self).map(|_| ())
    }
}

impl JwtConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.secret.is_empty() && self.public_keys.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt",
                "needs a secret (HS256) or public_keys (RS256, ES256)",
            ));
        }
        if !self.secret.is_empty() && self.secret.len() < 32 {
            return Err(ConfigError::invalid(
                "auth.jwt.secret",
                "must be at least 32 bytes: a shorter HS256 secret can be guessed",
            ));
        }
        if self.audience.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt.audience",
                "must name this bridge: tokens must carry it in `aud`, so a token minted for another service is refused",
            ));
        }
        if self.roles_claim.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt.roles_claim",
                "must not be empty",
            ));
        }
        let cookie_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if !self.cookie.chars().all(cookie_char) {
            return Err(ConfigError::invalid(
                "auth.jwt.cookie",
                format!("`{}` is not a cookie name", self.cookie),
            ));
        }
        if self.leeway_secs > 300 {
            return Err(ConfigError::invalid(
                "auth.jwt.leeway_secs",
                "must be at most 300: a larger leeway keeps expired tokens alive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml_str;

    fn hash() -> String {
        password::hash("pw").expect("hash")
    }

    /// A complete `[auth]` section parses and validates.
    #[test]
    fn auth_section_parses() {
        let text = format!(
            r#"
[auth]
anonymous_web = true
[[auth.users]]
name = "sensor-1"
password_hash = "{}"
[auth.jwt]
secret = "0123456789abcdef0123456789abcdef"
audience = "tidewater"
[[auth.acl]]
principal = "role:resident"
effect = "allow"
action = "both"
filter = "home/#"
"#,
            hash()
        );
        let config = from_toml_str(&text).expect("valid");
        assert!(config.auth.anonymous_web);
        assert_eq!(config.auth.users[0].name, "sensor-1");
        assert_eq!(config.auth.acl[0].action, Actions::Both);
        assert_eq!(config.auth.jwt.as_ref().map(|j| j.leeway_secs), Some(30));
    }

    /// Each mistake is refused with the key that holds it.
    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            (
                "[[auth.users]]\nname = \"a\"\npassword_hash = \"plain\"\n".to_owned(),
                "auth.users[0].password_hash",
            ),
            (
                format!("[[auth.users]]\nname = \"a/b\"\npassword_hash = \"{}\"\n", hash()),
                "auth.users[0].name",
            ),
            (
                format!("[[auth.users]]\nname = \"a\"\npassword_hash = \"{0}\"\n[[auth.users]]\nname = \"b\"\npassword_hash = \"{0}\"\nclient_ids = [\"a-1\"]\n", hash()),
                "auth.users[1].client_ids",
            ),
            ("[auth.jwt]\nsecret = \"short\"\naudience = \"x\"\n".to_owned(), "auth.jwt.secret"),
            (
                "[auth.jwt]\nsecret = \"0123456789abcdef0123456789abcdef\"\n".to_owned(),
                "auth.jwt.audience",
            ),
            (
                "[[auth.acl]]\nprincipal = \"everyone\"\neffect = \"allow\"\naction = \"both\"\nfilter = \"#\"\n".to_owned(),
                "auth.acl[0].principal",
            ),
            (
                "[[auth.acl]]\nprincipal = \"any\"\neffect = \"allow\"\naction = \"both\"\nfilter = \"a/%x\"\n".to_owned(),
                "auth.acl[0].filter",
            ),
        ];
        for (text, key) in cases {
            let err = from_toml_str(&text).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    /// The secret never appears when the configuration is printed.
    #[test]
    fn secret_is_redacted() {
        let jwt = JwtConfig {
            secret: "0123456789abcdef0123456789abcdef".into(),
            audience: "x".into(),
            ..JwtConfig::default()
        };
        let printed = toml::to_string(&jwt).expect("serialise");
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
