//! `sim-thermo`: simulated temperature and humidity sensors, one per
//! configured room, publishing `<prefix>/<room>/temperature` and
//! `<prefix>/<room>/humidity` (plain numbers, e.g. `21.5`) every
//! `interval_ms`, from a thread of its own. See README.md.

mod room;

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use tidewater_plugin::{export_plugin, Error, Host, HostError, Plugin};

pub use room::Room;

/// The `[plugins.config]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// One simulated sensor per room; each name is one topic level.
    pub rooms: Vec<String>,
    /// Time between readings, in milliseconds (at least 10).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// First topic level(s).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Publish retained, so a new dashboard shows the current values at once.
    #[serde(default = "default_retain")]
    pub retain: bool,
    /// Seed of the simulation: the same seed gives the same readings.
    #[serde(default)]
    pub seed: u64,
}

fn default_interval_ms() -> u64 {
    5_000
}

fn default_prefix() -> String {
    "home".into()
}

fn default_retain() -> bool {
    true
}

/// Whether `level` can stand as one level of a topic name.
fn is_topic_level(level: &str) -> bool {
    !level.is_empty() && !level.contains(['/', '+', '#', '\0'])
}

#[derive(Debug)]
pub struct SimThermo {
    host: Host,
    config: Config,
    /// Dropping the sender stops the publishing thread at once.
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Plugin for SimThermo {
    type Config = Config;

    fn new(host: Host, config: Config) -> Result<Self, Error> {
        if config.rooms.is_empty() {
            return Err("`rooms` must name at least one room".into());
        }
        if let Some(bad) = config.rooms.iter().find(|r| !is_topic_level(r)) {
            return Err(
                format!("room `{bad}` cannot be a topic level (no `/`, `+` or `#`)").into(),
            );
        }
        if config.interval_ms < 10 {
            return Err("`interval_ms` must be at least 10".into());
        }
        if config.prefix.is_empty() || config.prefix.contains(['+', '#']) {
            return Err("`prefix` must be a non-empty topic without wildcards".into());
        }
        Ok(Self {
            host,
            config,
            stop: None,
            thread: None,
        })
    }

    fn start(&mut self) -> Result<(), Error> {
        let (stop, stopped) = mpsc::sync_channel::<()>(1);
        let host = self.host.clone();
        let config = self.config.clone();
        let thread = std::thread::Builder::new()
            .name("sim-thermo".into())
            .spawn(move || {
                let mut rooms: Vec<Room> = config
                    .rooms
                    .iter()
                    .map(|r| Room::new(r, config.seed))
                    .collect();
                let interval = Duration::from_millis(config.interval_ms);
                loop {
                    if publish_readings(&host, &config, &rooms).is_err() {
                        return; // the bridge no longer accepts calls: stop quietly
                    }
                    // The stop channel doubles as the timer: a message or a
                    // dropped sender ends the loop at once.
                    match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => rooms.iter_mut().for_each(Room::step),
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        self.stop = Some(stop);
        self.thread = Some(thread);
        self.host.info(&format!(
            "Simulating {} room(s) every {} ms.",
            self.config.rooms.len(),
            self.config.interval_ms
        ));
        Ok(())
    }

    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Publishes every room's readings once. A busy bridge costs this round's
/// readings (the next round brings fresh ones); only `Closed` ends the loop.
pub fn publish_readings(host: &Host, config: &Config, rooms: &[Room]) -> Result<(), HostError> {
    for room in rooms {
        for (quantity, payload) in room.readings() {
            let topic = format!("{}/{}/{quantity}", config.prefix, room.name);
            match host.publish(&topic, payload, config.retain) {
                Ok(()) => {}
                Err(HostError::Busy) => host.debug("Bridge busy, reading skipped."),
                Err(HostError::Closed) => return Err(HostError::Closed),
                Err(e) => host.warn(&format!("Cannot publish on {topic}: {e}")),
            }
        }
    }
    Ok(())
}

export_plugin!(SimThermo);

#[cfg(test)]
mod tests {
    use super::*;
    use tidewater_plugin::api::TwStatus;
    use tidewater_plugin::testing::TestHost;

    /// Each room publishes its temperature and humidity on the shipped
    /// routes' topics, as plain numbers, retained by default.
    #[test]
    fn publishes_each_room_on_its_topics() {
        let test = TestHost::new();
        let mut instance = test
            .create::<SimThermo>(r#"{"rooms": ["kitchen", "hall"], "interval_ms": 10}"#)
            .expect("created");
        assert_eq!(instance.start(), TwStatus::OK);
        let published = test.wait_for_published(8, Duration::from_secs(5));
        assert_eq!(instance.stop(), TwStatus::OK);
        let topics: Vec<&str> = published.iter().take(4).map(|p| p.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "home/kitchen/temperature",
                "home/kitchen/humidity",
                "home/hall/temperature",
                "home/hall/humidity"
            ]
        );
        for p in &published {
            assert!(p.retain);
            p.text().parse::<f64>().expect("a plain number");
        }
    }

    /// After `stop` returns, the thread is gone: nothing more is published.
    #[test]
    fn stop_ends_publishing() {
        let test = TestHost::new();
        let mut instance = test
            .create::<SimThermo>(r#"{"rooms": ["a"], "interval_ms": 10}"#)
            .expect("created");
        assert_eq!(instance.start(), TwStatus::OK);
        test.wait_for_published(2, Duration::from_secs(5));
        assert_eq!(instance.stop(), TwStatus::OK);
        let count = test.published().len();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(test.published().len(), count);
    }

    /// A configuration mistake fails `create` with a message naming it.
    #[test]
    fn bad_configs_are_refused_by_name() {
        let test = TestHost::new();
        for (json, expected) in [
            (r#"{"rooms": []}"#, "rooms"),
            (r#"{"rooms": ["a/b"]}"#, "a/b"),
            (r#"{"rooms": ["a"], "interval_ms": 1}"#, "interval_ms"),
            (r#"{"rooms": ["a"], "intervall": 5}"#, "intervall"),
        ] {
            let (_, message) = test.create::<SimThermo>(json).expect_err("refused");
            assert!(message.contains(expected), "{json}: {message}");
        }
    }

    /// A busy bridge costs a reading, not the driver.
    #[test]
    fn busy_skips_a_reading() {
        let test = TestHost::new();
        test.set_busy(true);
        let config: Config =
            tidewater_plugin::serde_json::from_str(r#"{"rooms": ["a"]}"#).expect("config");
        let rooms = [Room::new("a", 0)];
        assert_eq!(publish_readings(&test.host(), &config, &rooms), Ok(()));
        assert!(test.published().is_empty());
    }
}
