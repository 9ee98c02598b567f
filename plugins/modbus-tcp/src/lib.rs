//! `modbus-tcp`: a real device driver. It polls holding and input registers
//! of a Modbus TCP device every `interval_ms`, publishes each decoded value
//! (u16, i16, u32, i32 or f32, scaled, with its unit) as JSON on
//! `<topic_prefix>/<name>`, and writes a writable holding register when a
//! value arrives on `<topic_prefix>/<name>/set`, answering each on
//! `<topic_prefix>/<name>/set/reply` once the device acknowledged the
//! write (or with the Modbus exception), so `POST /command` gets the
//! outcome. See README.md.
//!
//! # Layout
//! - [`client`]: the Modbus TCP protocol (functions 3, 4, 6 and 16).
//! - [`value`]: registers to numbers and back.
//! - [`config`]: the `[plugins.config]` table and its rules.
//! - [`poller`]: the driver's own thread, which owns the connection.
//! - this file: the plugin, which routes `set` commands to that thread.

pub mod client;
pub mod config;
pub mod poller;
pub mod value;

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use tidewater_plugin::{export_plugin, Error, Host, Plugin};

pub use config::Config;
use poller::{Poller, Write};

/// Writes waiting for the driver's thread; past this a command is refused
/// (and logged) rather than queued without bound.
const WRITE_QUEUE: usize = 16;

#[derive(Debug)]
pub struct ModbusTcp {
    host: Host,
    config: Config,
    writes: Option<SyncSender<Write>>,
    thread: Option<JoinHandle<()>>,
}

impl Plugin for ModbusTcp {
    type Config = Config;

    fn new(host: Host, config: Config) -> Result<Self, Error> {
        config.validate()?;
        for register in config.registers.iter().filter(|r| r.writable) {
            host.subscribe(&format!("{}/{}/set", config.topic_prefix, register.name))?;
        }
        Ok(Self {
            host,
            config,
            writes: None,
            thread: None,
        })
    }

    fn start(&mut self) -> Result<(), Error> {
        let (writes, queue) = mpsc::sync_channel(WRITE_QUEUE);
        let poller = Poller::new(self.host.clone(), self.config.clone());
        let thread = std::thread::Builder::new()
            .name("modbus-tcp".into())
            .spawn(move || poller.run(queue))?;
        self.writes = Some(writes);
        self.thread = Some(thread);
        Ok(())
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let queued = self.queue_write(topic, payload);
        if let Err(error) = &queued {
            // Answered at once, so a waiting command learns why; a write
            // that was queued is answered by the thread once it is done.
            let answer = serde_json::json!({"ok": false, "error": error.to_string()});
            self.host
                .publish(&format!("{topic}/reply"), answer.to_string(), false)?;
        }
        queued
    }

    fn stop(&mut self) {
        // Closing the queue ends the thread after its current request.
        drop(self.writes.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl ModbusTcp {
    /// Queues the write `payload` asks of the register `topic` names.
    fn queue_write(&mut self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let name = topic
            .strip_prefix(&self.config.topic_prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix("/set"))
            .ok_or_else(|| format!("unexpected topic {topic}"))?;
        let register = self
            .config
            .registers
            .iter()
            .position(|r| r.name == name && r.writable)
            .ok_or_else(|| format!("register `{name}` is not writable"))?;
        let value = parse_value(payload).map_err(|e| format!("register `{name}`: {e}"))?;
        let writes = self.writes.as_ref().ok_or("the driver is not started")?;
        match writes.try_send(Write { register, value }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(format!(
                "register `{name}`: {WRITE_QUEUE} writes already waiting; command dropped"
            )
            .into()),
            Err(TrySendError::Disconnected(_)) => Err("the driver's thread has ended".into()),
        }
    }
}

/// A written value: a plain number (`42.5`), or JSON: a number or
/// `{"value": 42.5}`.
pub fn parse_value(payload: &[u8]) -> Result<f64, String> {
    const USAGE: &str = "expected a number such as 42.5, or {\"value\": 42.5}";
    let text = std::str::from_utf8(payload)
        .map_err(|_| format!("not UTF-8: {USAGE}"))?
        .trim();
    if let Ok(number) = text.parse::<f64>() {
        if number.is_finite() {
            return Ok(number);
        }
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => object.get("value").and_then(|v| v.as_f64()),
        Ok(other) => other.as_f64(),
        Err(_) => None,
    }
    .ok_or_else(|| {
        format!(
            "`{}` is not a value: {USAGE}",
            text.chars().take(64).collect::<String>()
        )
    })
}

export_plugin!(ModbusTcp);

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_plugin::api::TwStatus;
    use tidewater_plugin::testing::TestHost;

    const CONFIG: &str = r#"{
        "address": "127.0.0.1:1", "topic_prefix": "plant",
        "registers": [
            {"name": "temperature", "table": "input", "address": 0, "type": "i16", "scale": 0.1, "unit": "°C"},
            {"name": "setpoint", "table": "holding", "address": 10, "writable": true}
        ]
    }"#;

    /// Only writable registers get a `set` subscription.
    #[test]
    fn subscribes_to_writable_registers() {
        let test = TestHost::new();
        let _instance = test.create::<ModbusTcp>(CONFIG).expect("created");
        assert_eq!(test.subscriptions(), ["plant/setpoint/set"]);
    }

    /// Values are plain numbers or JSON; anything else is refused.
    #[test]
    fn parses_written_values() {
        assert_eq!(parse_value(b" 42.5\n"), Ok(42.5));
        assert_eq!(parse_value(b"-3"), Ok(-3.0));
        assert_eq!(parse_value(br#"{"value": 7}"#), Ok(7.0));
        assert_eq!(parse_value(b"8e1"), Ok(80.0));
        assert!(parse_value(b"warm").is_err());
        assert!(parse_value(b"NaN").is_err());
        assert!(parse_value(br#"{"v": 1}"#).is_err());
    }

    /// A command for a read-only register is refused and logged.
    #[test]
    fn read_only_register_refuses_writes() {
        let test = TestHost::new();
        let mut instance = test.create::<ModbusTcp>(CONFIG).expect("created");
        assert_eq!(
            instance.on_message("plant/temperature/set", b"1"),
            TwStatus::ERROR
        );
        assert!(test.logs().iter().any(|(_, m)| m.contains("not writable")));
    }

    /// Configuration mistakes are refused at create, naming the register.
    #[test]
    fn bad_configs_are_refused() {
        let test = TestHost::new();
        let register = |extra: &str| {
            format!(
                r#"{{"address": "h:502", "topic_prefix": "p", "registers": [{{"name": "r", "table": "input", "address": 0{extra}}}]}}"#
            )
        };
        for (json, expected) in [
            (register(r#", "writable": true"#), "only holding"),
            (register(r#", "scale": 0"#), "scale"),
            (register(r#", "type": "u64""#), "u64"),
            (register(r#", "adress": 1"#), "adress"),
            (
                r#"{"address": "h:502", "topic_prefix": "p", "registers": []}"#.into(),
                "at least one",
            ),
        ] {
            let (_, message) = test.create::<ModbusTcp>(&json).expect_err(&json);
            assert!(message.contains(expected), "{json}: {message}");
        }
    }

    /// With no device to talk to, the driver says so on `<prefix>/status`
    /// (retained) instead of failing, and stops promptly.
    #[test]
    fn unreachable_device_is_reported_offline() {
        let test = TestHost::new();
        let mut instance = test.create::<ModbusTcp>(CONFIG).expect("created");
        assert_eq!(instance.start(), TwStatus::OK);
        let published = test.wait_for_published(1, std::time::Duration::from_secs(5));
        assert_eq!(instance.stop(), TwStatus::OK);
        assert_eq!(published[0].topic, "plant/status");
        assert!(published[0].retain);
        assert!(
            published[0].text().starts_with(r#"{"error":"#)
                || published[0].text().contains(r#""online":false"#),
            "{}",
            published[0].text()
        );
    }
}
