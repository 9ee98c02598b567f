//! Layering the configuration sources and turning their failures into one
//! error type that names the key at fault.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::Config;

/// The file the bridge reads when no `--config` is given.
pub const DEFAULT_PATH: &str = "bridge.toml";

/// Where the file layer came from, for the startup summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file was read.
    File(PathBuf),
    /// No `--config` was given and `bridge.toml` does not exist: defaults and
    /// environment only.
    Defaults,
}

/// Why a configuration could not be used. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file `{path}` not found")]
    Missing { path: PathBuf },
    /// A key that does not exist, a value of the wrong type, an address that
    /// does not parse; figment's message names the key and the source.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("invalid configuration: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Loads the configuration: built-in defaults, then the TOML file (`path`, or
/// `bridge.toml` in the working directory if it exists), then environment
/// variables such as `TIDEWATER_HTTP__LISTEN=127.0.0.1:9000` (`__` nests).
pub fn load(path: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
    load_with_env(path, Env::prefixed("TIDEWATER_").split("__"))
}

fn load_with_env(path: Option<&Path>, env: Env) -> Result<(Config, ConfigSource), ConfigError> {
    let (file, source) = match path {
        Some(path) if !path.exists() => {
            return Err(ConfigError::Missing {
                path: path.to_path_buf(),
            })
        }
        Some(path) => (
            Some(path.to_path_buf()),
            ConfigSource::File(path.to_path_buf()),
        ),
        None if Path::new(DEFAULT_PATH).exists() => (
            Some(PathBuf::from(DEFAULT_PATH)),
            ConfigSource::File(PathBuf::from(DEFAULT_PATH)),
        ),
        None => (None, ConfigSource::Defaults),
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    let config: Config = figment
        .merge(env)
        .extract()
        .map_err(|e| ConfigError::Parse(Box::new(e)))?;
    config.validate()?;
    Ok((config, source))
}

/// Parses a configuration held in a string, with no environment layer: for
/// tests and for checking snippets.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    let config: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(|e| ConfigError::Parse(Box::new(e)))?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;

    fn shipped_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bridge.toml")
    }

    /// The shipped `bridge.toml` parses, validates, and states every default
    /// it documents: its `[mqtt]`, `[http]` and `[sse]` sections equal the
    /// built-in defaults, so the comments and the code cannot drift.
    #[test]
    fn shipped_bridge_toml_matches_the_defaults() {
        let text = std::fs::read_to_string(shipped_path()).expect("bridge.toml at the root");
        let config = from_toml_str(&text).expect("shipped config is valid");
        let defaults = Config::default();
        // MQTT over WebSocket is off by default and on in the shipped file.
        assert!(config.mqtt.websocket_listen.is_some());
        let mqtt = MqttConfig {
            websocket_listen: None,
            ..config.mqtt.clone()
        };
        assert_eq!(mqtt, defaults.mqtt);
        assert_eq!(config.http, defaults.http);
        assert_eq!(config.sse, defaults.sse);
        assert_eq!(config.websocket, defaults.websocket);
        assert_eq!(config.log, defaults.log);
        assert_eq!(config.tls, defaults.tls);
        assert_eq!(config.limits, defaults.limits);
        // Anonymous access is off by default and explicitly on in the
        // shipped file, for the README's tour; nothing else in [auth].
        assert!(!defaults.auth.anonymous_web && !defaults.auth.anonymous_mqtt);
        let auth = crate::config::AuthConfig {
            anonymous_web: false,
            anonymous_mqtt: false,
            ..config.auth.clone()
        };
        assert_eq!(auth, defaults.auth);
        assert!(config.auth.anonymous_web && config.auth.anonymous_mqtt);
        let mut documented = defaults.clone();
        documented.mqtt.listen_v5 = Some(documented.mqtt.listen);
        documented.mqtt.websocket_listen = Some(documented.mqtt.listen);
        documented.mqtt.tls_listen = Some(documented.mqtt.listen);
        documented.http.static_dir = Some("dashboard".into());
        documented.tls.cert_path = Some("bridge.crt".into());
        documented.tls.key_path = Some("bridge.key".into());
        documented.auth.jwt = Some(crate::config::JwtConfig {
            issuer: Some("https://id.example".into()),
            ..Default::default()
        });
        let every_key = toml::to_string(&documented).expect("serialise defaults");
        // Keys inside sections; the top-level `routes = []` has its own
        // documented `[[routes]]` examples.
        let in_sections = every_key.lines().skip_while(|l| !l.starts_with('['));
        for line in in_sections.filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap_or_default();
            assert!(
                text.lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(key)),
                "bridge.toml does not document `{key}`"
            );
        }
    }

    /// The commented `[[plugins]]` examples of the shipped `bridge.toml`
    /// are valid once uncommented, so the documentation cannot drift.
    #[test]
    fn shipped_plugin_examples_parse() {
        let text = std::fs::read_to_string(shipped_path()).expect("bridge.toml at the root");
        let start = text
            .find("# [[plugins]]")
            .expect("a commented plugin example");
        let example: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let config = from_toml_str(&example).expect("the examples are valid");
        let names: Vec<&str> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["thermo", "lights", "boiler"]);
        assert!(!config.plugins[1].required);
        // Uncommented, nothing else changes: plugins are off by default.
        assert!(from_toml_str(&text).expect("shipped").plugins.is_empty());
    }

    /// The commented secure setup of the shipped `bridge.toml` is valid once
    /// uncommented, and locks the bridge down: no anonymous access, users
    /// with hashed passwords, tokens, and rules.
    #[test]
    fn shipped_secure_example_parses() {
        let text = std::fs::read_to_string(shipped_path()).expect("bridge.toml at the root");
        let start = text
            .find("# ---- A secure setup")
            .expect("a secure example");
        let end = text[start..]
            .find("# ---- End of the secure setup.")
            .map(|e| start + e)
            .expect("its end");
        let example: String = text[start..end]
            .lines()
            .filter(|l| !l.starts_with("# ----") && !l.starts_with("# (") && !l.starts_with("# #"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let config = from_toml_str(&example).expect("the secure example is valid");
        assert!(!config.auth.anonymous_web && !config.auth.anonymous_mqtt);
        assert_eq!(config.auth.users.len(), 1);
        assert_eq!(config.auth.users[0].roles, ["resident"]);
        assert!(config.auth.jwt.is_some());
        assert_eq!(config.auth.acl.len(), 4);
    }

    /// A misspelt key is an error naming that key.
    #[test]
    fn unknown_key_is_named() {
        let err = from_toml_str("[http]\nlisten_adress = \"127.0.0.1:1\"\n")
            .expect_err("unknown key refused")
            .to_string();
        assert!(err.contains("listen_adress"), "{err}");
    }

    /// An address that does not parse names its key.
    #[test]
    fn unparsable_address_is_named() {
        let err = from_toml_str("[mqtt]\nlisten = \"localhost\"\n")
            .expect_err("bad address refused")
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }

    /// Environment variables override the file, `__` nesting into sections.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("b.toml", "[http]\nlisten = \"127.0.0.1:1\"\n")?;
            jail.set_env("TIDEWATER_HTTP__LISTEN", "127.0.0.1:9000");
            jail.set_env("TIDEWATER_SSE__QUEUE_CAPACITY", "7");
            let (config, source) = load(Some(Path::new("b.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.http.listen.port(), 9000);
            assert_eq!(config.sse.queue_capacity, 7);
            assert_eq!(source, ConfigSource::File(PathBuf::from("b.toml")));
            Ok(())
        });
    }

    /// An explicit `--config` that does not exist is an error, not defaults.
    #[test]
    fn missing_explicit_file_is_an_error() {
        let err =
            load(Some(Path::new("/nonexistent/tidewater.toml"))).expect_err("missing file refused");
        assert!(matches!(err, ConfigError::Missing { .. }));
    }

    /// A `[[plugins]]` entry parses with `required` defaulting to true and
    /// its `config` table kept as JSON; an unknown key in the entry is named.
    #[test]
    fn plugins_parse() {
        let config = from_toml_str(
            "[[plugins]]\nname = \"thermo\"\npath = \"libsim_thermo.so\"\n\
             [plugins.config]\nrooms = [\"kitchen\"]\ninterval_ms = 500\n",
        )
        .expect("valid plugin");
        let plugin = &config.plugins[0];
        assert!(plugin.required);
        assert_eq!(
            serde_json::Value::Object(plugin.config.clone()),
            serde_json::json!({"rooms": ["kitchen"], "interval_ms": 500})
        );
        let err = from_toml_str("[[plugins]]\nname = \"a\"\npath = \"b\"\nrequire = false\n")
            .expect_err("unknown key refused")
            .to_string();
        assert!(err.contains("require"), "{err}");
    }

    /// Routes parse as an array of tables.
    #[test]
    fn routes_parse() {
        let config =
            from_toml_str("[[routes]]\nfilter = \"home/+/temperature\"\nevent = \"temperature\"\n")
                .expect("valid routes");
        assert_eq!(config.routes[0].event, "temperature");
    }
}
