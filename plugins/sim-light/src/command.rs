//! The commands a light accepts on `<prefix>/<id>/set`, and the state they
//! change.
//!
//! Text (case and surrounding space ignored): `on`, `off`, `toggle`,
//! `brightness <0-100>`. Or a JSON object with either or both of
//! `"on": true|false` and `"brightness": 0-100`.
//!
//! Brightness and on/off are linked the way wall dimmers are: a brightness
//! above 0 turns the light on, 0 turns it off, and `on` restores the last
//! non-zero brightness. An explicit `"on"` in JSON wins over the rule.

use serde::{Deserialize, Serialize};

/// A light's state, published retained as `{"on":true,"brightness":80}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct State {
    pub on: bool,
    pub brightness: u8,
}

impl Default for State {
    fn default() -> Self {
        Self {
            on: false,
            brightness: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    On,
    Off,
    Toggle,
    Set {
        on: Option<bool>,
        brightness: Option<u8>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCommand {
    on: Option<bool>,
    brightness: Option<u8>,
}

const USAGE: &str =
    "expected on, off, toggle, brightness <0-100>, or JSON such as {\"on\":true,\"brightness\":80}";

impl Command {
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| format!("the command is not UTF-8: {USAGE}"))?
            .trim();
        if text.starts_with('{') {
            let json: JsonCommand = serde_json::from_str(text)
                .map_err(|e| format!("bad JSON command ({e}): {USAGE}"))?;
            if json.brightness.is_some_and(|b| b > 100) {
                return Err(format!("brightness must be 0 to 100: {USAGE}"));
            }
            if json.on.is_none() && json.brightness.is_none() {
                return Err(format!("the JSON command sets nothing: {USAGE}"));
            }
            return Ok(Self::Set {
                on: json.on,
                brightness: json.brightness,
            });
        }
        let lower = text.to_ascii_lowercase();
        let mut words = lower.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("on"), None, _) => Ok(Self::On),
            (Some("off"), None, _) => Ok(Self::Off),
            (Some("toggle"), None, _) => Ok(Self::Toggle),
            (Some("brightness"), Some(level), None) => match level.parse::<u8>() {
                Ok(level) if level <= 100 => Ok(Self::Set {
                    on: None,
                    brightness: Some(level),
                }),
                _ => Err(format!(
                    "brightness must be 0 to 100, not `{level}`: {USAGE}"
                )),
            },
            _ => Err(format!(
                "unknown command `{}`: {USAGE}",
                text.chars().take(64).collect::<String>()
            )),
        }
    }

    pub fn apply(self, state: State) -> State {
        match self {
            Self::On => State { on: true, ..state },
            Self::Off => State { on: false, ..state },
            Self::Toggle => State {
                on: !state.on,
                ..state
            },
            Self::Set { on, brightness } => {
                let mut next = state;
                if let Some(level) = brightness {
                    // Keep the last non-zero level for the next `on`.
                    if level > 0 {
                        next.brightness = level;
                    }
                    next.on = level > 0;
                }
                if let Some(on) = on {
                    next.on = on;
                }
                next
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: State, command: &str) -> State {
        Command::parse(command.as_bytes())
            .expect("valid command")
            .apply(state)
    }

    /// Text commands: case and surrounding space do not matter.
    #[test]
    fn text_commands() {
        let off = State::default();
        assert!(run(off, " ON\n").on);
        assert!(!run(run(off, "on"), "off").on);
        assert!(run(off, "toggle").on);
        assert_eq!(
            run(off, "brightness 40"),
            State {
                on: true,
                brightness: 40
            }
        );
    }

    /// Brightness 0 turns the light off and `on` restores the last level.
    #[test]
    fn dimmer_rules() {
        let dimmed = run(State::default(), "brightness 30");
        let dark = run(dimmed, "brightness 0");
        assert_eq!(
            dark,
            State {
                on: false,
                brightness: 30
            }
        );
        assert_eq!(
            run(dark, "on"),
            State {
                on: true,
                brightness: 30
            }
        );
    }

    /// JSON commands set either field or both; an explicit `on` wins.
    #[test]
    fn json_commands() {
        let off = State::default();
        assert_eq!(
            run(off, r#"{"on": true, "brightness": 80}"#),
            State {
                on: true,
                brightness: 80
            }
        );
        assert_eq!(
            run(off, r#"{"brightness": 80, "on": false}"#),
            State {
                on: false,
                brightness: 80
            }
        );
        assert!(run(off, r#"{"on": true}"#).on);
    }

    /// Nonsense is refused with a message that shows the accepted forms.
    #[test]
    fn bad_commands_are_refused() {
        for bad in [
            "dim",
            "brightness",
            "brightness 101",
            "brightness -1",
            "on now",
            r#"{"brightness": 300}"#,
            r#"{"colour": "red"}"#,
            "{}",
        ] {
            let err = Command::parse(bad.as_bytes()).expect_err(bad);
            assert!(err.contains("expected on, off"), "{bad}: {err}");
        }
        assert!(Command::parse(&[0xff, 0xfe]).is_err());
    }
}
