//! A driver for the bridge's own tests, never for deployment: it echoes
//! every message on `test/panic/in/<x>` to `test/panic/out/<x>` and panics
//! on `test/panic/in/now`, to prove that a panicking plugin is marked failed
//! while the bridge keeps serving everyone else.

use tidewater_plugin::{export_plugin, Error, Host, Plugin};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

#[derive(Debug)]
pub struct TestPanic {
    host: Host,
}

impl Plugin for TestPanic {
    type Config = Config;

    fn new(host: Host, _config: Config) -> Result<Self, Error> {
        host.subscribe("test/panic/in/+")?;
        Ok(Self { host })
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let leaf = topic.rsplit('/').next().unwrap_or_default();
        if leaf == "now" {
            panic!("asked to panic by a message on {topic}");
        }
        self.host
            .publish(&format!("test/panic/out/{leaf}"), payload, false)?;
        Ok(())
    }
}

export_plugin!(TestPanic);

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_plugin::api::TwStatus;
    use tidewater_plugin::testing::TestHost;

    /// Echoes ordinary messages and answers PANICKED (without unwinding) on `now`.
    #[test]
    fn echoes_then_panics() {
        let test = TestHost::new();
        let mut instance = test.create::<TestPanic>("{}").expect("created");
        assert_eq!(instance.on_message("test/panic/in/a", b"x"), TwStatus::OK);
        assert_eq!(test.published()[0].topic, "test/panic/out/a");
        assert_eq!(
            instance.on_message("test/panic/in/now", b""),
            TwStatus::PANICKED
        );
    }
}
