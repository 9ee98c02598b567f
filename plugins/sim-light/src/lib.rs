//! `sim-light`: simulated smart lights. Each configured light takes
//! commands on `<prefix>/<id>/set` (see [`command`]) and publishes its state
//! retained on `<prefix>/<id>/state` as `{"on":true,"brightness":80}`: once
//! at start, then after every command. Each command is also answered on
//! `<prefix>/<id>/set/reply` (the bridge's command convention, so
//! `POST /command/<prefix>/<id>/set` gets the light's new state back), or
//! with `{"error": …}` for a command it cannot follow. No thread of its
//! own: commands arrive on the plugin's host thread. See README.md.

pub mod command;

use std::collections::BTreeMap;

use tidewater_plugin::{export_plugin, Error, Host, Plugin};

pub use command::{Command, State};

/// The `[plugins.config]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The lights' ids; each is one topic level.
    pub lights: Vec<String>,
    /// Topic levels before the id.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_prefix() -> String {
    "home/light".into()
}

#[derive(Debug)]
pub struct SimLight {
    host: Host,
    prefix: String,
    lights: BTreeMap<String, State>,
}

impl SimLight {
    /// Tells the bridge whether light `id` is there (its presence), which
    /// a simulated light always is while the driver runs.
    fn report(&self, id: &str, online: bool) {
        if let Err(e) = self.host.presence(id, online) {
            self.host
                .warn(&format!("Cannot report light `{id}`'s presence: {e}"));
        }
    }

    fn publish_state(&self, id: &str, state: State) -> Result<(), Error> {
        let payload = serde_json::to_string(&state)?;
        self.host
            .publish(&format!("{}/{id}/state", self.prefix), payload, true)?;
        Ok(())
    }
}

impl Plugin for SimLight {
    type Config = Config;

    fn new(host: Host, config: Config) -> Result<Self, Error> {
        if config.lights.is_empty() {
            return Err("`lights` must name at least one light".into());
        }
        if config.prefix.is_empty() || config.prefix.contains(['+', '#']) {
            return Err("`prefix` must be a non-empty topic without wildcards".into());
        }
        let mut lights = BTreeMap::new();
        for id in &config.lights {
            if id.is_empty() || id.contains(['/', '+', '#', '\0']) {
                return Err(format!(
                    "light id `{id}` cannot be a topic level (no `/`, `+` or `#`)"
                )
                .into());
            }
            if lights.insert(id.clone(), State::default()).is_some() {
                return Err(format!("light id `{id}` appears twice").into());
            }
            host.subscribe(&format!("{}/{id}/set", config.prefix))?;
        }
        Ok(Self {
            host,
            prefix: config.prefix,
            lights,
        })
    }

    fn start(&mut self) -> Result<(), Error> {
        for (id, state) in &self.lights {
            self.publish_state(id, *state)?;
            self.report(id, true);
        }
        Ok(())
    }

    fn stop(&mut self) {
        for id in self.lights.keys() {
            self.report(id, false);
        }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let id = topic
            .strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix("/set"))
            .ok_or_else(|| format!("unexpected topic {topic}"))?;
        let current = *self
            .lights
            .get(id)
            .ok_or_else(|| format!("no light `{id}`"))?;
        let reply = format!("{topic}/reply");
        let command = match Command::parse(payload) {
            Ok(command) => command,
            Err(e) => {
                // Answered, so a waiting command learns why at once.
                let answer = serde_json::json!({"error": e.to_string()}).to_string();
                self.host.publish(&reply, answer, false)?;
                return Err(format!("light `{id}`: {e}").into());
            }
        };
        let next = command.apply(current);
        self.lights.insert(id.to_owned(), next);
        self.publish_state(id, next)?;
        self.host
            .publish(&reply, serde_json::to_string(&next)?, false)?;
        Ok(())
    }
}

export_plugin!(SimLight);

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_plugin::api::TwStatus;
    use tidewater_plugin::testing::TestHost;

    /// Each light subscribes to its own `set` topic and publishes its
    /// initial state, retained, at start.
    #[test]
    fn subscribes_and_publishes_initial_state() {
        let test = TestHost::new();
        let mut instance = test
            .create::<SimLight>(r#"{"lights": ["1", "porch"]}"#)
            .expect("created");
        assert_eq!(
            test.subscriptions(),
            ["home/light/1/set", "home/light/porch/set"]
        );
        assert_eq!(instance.start(), TwStatus::OK);
        let published = test.take_published();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].topic, "home/light/1/state");
        assert_eq!(published[0].text(), r#"{"on":false,"brightness":100}"#);
        assert!(published[0].retain);
    }

    /// A command changes the light and its new state is published retained.
    #[test]
    fn commands_publish_the_new_state() {
        let test = TestHost::new();
        let mut instance = test
            .create::<SimLight>(r#"{"lights": ["1"]}"#)
            .expect("created");
        assert_eq!(instance.start(), TwStatus::OK);
        test.take_published();
        assert_eq!(
            instance.on_message("home/light/1/set", b"brightness 80"),
            TwStatus::OK
        );
        assert_eq!(
            instance.on_message("home/light/1/set", b"off"),
            TwStatus::OK
        );
        let published = test.take_published();
        let on = |topic: &str| -> Vec<String> {
            published
                .iter()
                .filter(|p| p.topic == topic)
                .map(|p| p.text())
                .collect()
        };
        let states = [
            r#"{"on":true,"brightness":80}"#,
            r#"{"on":false,"brightness":80}"#,
        ];
        assert_eq!(on("home/light/1/state"), states);
        assert_eq!(
            on("home/light/1/set/reply"),
            states,
            "each command answered"
        );
        assert!(published
            .iter()
            .all(|p| p.retain == (p.topic == "home/light/1/state")));
    }

    /// Each light is reported present while the driver runs, and gone
    /// once it stops.
    #[test]
    fn lights_report_their_presence() {
        let test = TestHost::new();
        let mut instance = test
            .create::<SimLight>(r#"{"lights": ["1", "porch"]}"#)
            .expect("created");
        assert_eq!(instance.start(), TwStatus::OK);
        assert_eq!(
            test.presences(),
            [("1".to_owned(), true), ("porch".to_owned(), true)]
        );
        assert_eq!(instance.stop(), TwStatus::OK);
        assert_eq!(
            test.presences()[2..],
            [("1".to_owned(), false), ("porch".to_owned(), false)]
        );
    }

    /// A bad command is an error (logged by the bridge) and changes nothing.
    #[test]
    fn bad_command_changes_nothing() {
        let test = TestHost::new();
        let mut instance = test
            .create::<SimLight>(r#"{"lights": ["1"]}"#)
            .expect("created");
        assert_eq!(
            instance.on_message("home/light/1/set", b"purple"),
            TwStatus::ERROR
        );
        let published = test.take_published();
        assert_eq!(published.len(), 1, "only the answer");
        assert_eq!(published[0].topic, "home/light/1/set/reply");
        assert!(published[0].text().contains("unknown command `purple`"));
        assert!(test
            .logs()
            .iter()
            .any(|(_, m)| m.contains("unknown command `purple`")));
    }

    /// Duplicate or unusable ids are refused at create.
    #[test]
    fn bad_ids_are_refused() {
        let test = TestHost::new();
        for json in [
            r#"{"lights": []}"#,
            r#"{"lights": ["a", "a"]}"#,
            r#"{"lights": ["a/b"]}"#,
        ] {
            assert!(test.create::<SimLight>(json).is_err(), "{json}");
        }
    }
}
