//! The driver's thread: owns the connection, polls every register each
//! interval, carries out writes in between, and reports the device's
//! availability on `<prefix>/status`.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tidewater_plugin::{Host, HostError};

use crate::client::{Client, ModbusError};
use crate::config::{Config, Register};
use crate::value;

/// A write asked for on `<prefix>/<name>/set`.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Index into `Config::registers`.
    pub register: usize,
    /// The value as published (before dividing by the scale).
    pub value: f64,
}

#[derive(Debug)]
pub struct Poller {
    host: Host,
    config: Config,
    client: Option<Client>,
    /// What `<prefix>/status` last said; `None` before the first attempt.
    online: Option<bool>,
}

impl Poller {
    pub fn new(host: Host, config: Config) -> Self {
        Self {
            host,
            config,
            client: None,
            online: None,
        }
    }

    /// Polls and writes until `writes` is closed (the driver's `stop`).
    pub fn run(mut self, writes: Receiver<Write>) {
        let interval = Duration::from_millis(self.config.interval_ms);
        let mut next_poll = Instant::now();
        loop {
            if Instant::now() >= next_poll {
                self.poll_all();
                next_poll = Instant::now() + interval;
            }
            let wait = next_poll.saturating_duration_since(Instant::now());
            match writes.recv_timeout(wait) {
                Ok(write) => self.write(&write),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// The connection, opened if needed; `None` (status published) when the
    /// device does not answer.
    fn client(&mut self) -> Option<&mut Client> {
        if self.client.is_none() {
            let timeout = Duration::from_millis(self.config.timeout_ms);
            match Client::connect(&self.config.address, self.config.unit_id, timeout) {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    self.set_online(false, Some(&e));
                    return None;
                }
            }
        }
        self.client.as_mut()
    }

    /// Reads and publishes every register. A connection or protocol error
    /// ends the round (and the connection); an exception only skips that
    /// register.
    pub fn poll_all(&mut self) {
        for index in 0..self.config.registers.len() {
            if let Err(e) = self.poll(index) {
                if !e.keeps_connection() {
                    self.client = None;
                    self.set_online(false, Some(&e));
                    return;
                }
                let name = &self.config.registers[index].name;
                self.host.warn(&format!("Register `{name}`: {e}"));
            }
        }
        if self.client.is_some() {
            self.set_online(true, None);
        }
    }

    fn poll(&mut self, index: usize) -> Result<(), ModbusError> {
        let register = self.config.registers[index].clone();
        let Some(client) = self.client() else {
            return Ok(()); // offline, already reported
        };
        let words = client.read(register.table, register.address, register.data_type.words())?;
        self.publish_value(&register, &words);
        Ok(())
    }

    fn publish_value(&self, register: &Register, words: &[u16]) {
        let raw = value::decode(words, register.data_type, register.word_order);
        let value = value::scaled(raw, register.scale);
        let mut json = serde_json::json!({ "value": value });
        if !register.unit.is_empty() {
            json["unit"] = register.unit.clone().into();
        }
        let topic = format!("{}/{}", self.config.topic_prefix, register.name);
        self.publish(&topic, &json.to_string());
    }

    fn publish(&self, topic: &str, payload: &str) {
        match self.host.publish(topic, payload, self.config.retain) {
            Ok(()) => {}
            // The next poll brings a fresh value.
            Err(HostError::Busy) => self.host.debug("Bridge busy, value skipped."),
            Err(e) => self.host.warn(&format!("Cannot publish on {topic}: {e}")),
        }
    }

    /// Writes a register, then reads it back and publishes what the device
    /// now holds, as confirmation; and answers the command on
    /// `<prefix>/<name>/set/reply` (the bridge's command convention):
    /// `{"ok": true, "value": …}` once the device acknowledged the write,
    /// else `{"ok": false, "error": …}` with the Modbus exception or why.
    pub fn write(&mut self, write: &Write) {
        let register = self.config.registers[write.register].clone();
        let result = self.apply(write, &register);
        let answer = match &result {
            Ok(()) => {
                self.host.info(&format!(
                    "Register `{}` set to {}.",
                    register.name, write.value
                ));
                serde_json::json!({"ok": true, "value": write.value})
            }
            Err(error) => {
                self.host
                    .error(&format!("Register `{}`: {error}", register.name));
                serde_json::json!({"ok": false, "error": error})
            }
        };
        let topic = format!("{}/{}/set/reply", self.config.topic_prefix, register.name);
        if let Err(e) = self.host.publish(&topic, answer.to_string(), false) {
            self.host.warn(&format!("Cannot publish on {topic}: {e}"));
        }
    }

    /// The write itself; why it did not happen, if it did not.
    fn apply(&mut self, write: &Write, register: &Register) -> Result<(), String> {
        let words = value::encode(
            write.value / register.scale,
            register.data_type,
            register.word_order,
        )
        .map_err(|e| format!("cannot write: {e}"))?;
        let Some(client) = self.client() else {
            return Err(format!(
                "write of {} dropped: the device is offline",
                write.value
            ));
        };
        let written = client.write(register.address, &words);
        written
            .and_then(|()| self.poll(write.register))
            .map_err(|e| {
                let message = format!("write failed: {e}");
                if !e.keeps_connection() {
                    self.client = None;
                    self.set_online(false, Some(&e));
                }
                message
            })
    }

    /// Publishes `<prefix>/status` (retained) when availability changes.
    fn set_online(&mut self, online: bool, error: Option<&ModbusError>) {
        if self.online == Some(online) {
            return;
        }
        self.online = Some(online);
        let mut json = serde_json::json!({ "online": online });
        if let Some(error) = error {
            json["error"] = error.to_string().into();
            self.host.warn(&format!(
                "Device {} unavailable: {error}",
                self.config.address
            ));
        } else {
            self.host
                .info(&format!("Device {} answers.", self.config.address));
        }
        let topic = format!("{}/status", self.config.topic_prefix);
        if let Err(e) = self.host.publish(&topic, json.to_string(), true) {
            self.host.warn(&format!("Cannot publish on {topic}: {e}"));
        }
    }
}
