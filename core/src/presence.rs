//! Device presence: the bridge publishes each MQTT device's state on
//! `$tidewater/presence/<client id>`, retained, so any subscriber (SSE,
//! WebSocket, MQTT, plugins) and a bridge that restarted see who is online
//! now, and since when.
//!
//! The state comes from the gate's device events (a connect, and exactly
//! one disconnect with who ended it). It goes through the broker and the
//! log like any message, so resumes, `since` and the access rules apply
//! to it: a subscription to `$tidewater/presence/+` needs a rule that
//! allows it (`#` never covers a `$` topic), and a user can be kept from
//! another's devices with rules on their presence topics. Nobody but the
//! bridge may publish under `$tidewater/`.
//!
//! Of two connections with one client id (a takeover), the later one's
//! events decide: the old connection's `taken-over` is published only if
//! it comes before the new one's connect, which follows it at once.
//!
//! A client id becomes one topic level: `%`, `/`, `+` and `#` are written
//! `%25`, `%2F`, `%2B`, `%23` (ids may hold them). A device with an empty
//! client id has no presence: nothing tells it from the next one.
//!
//! A bridge that stopped without saying so (a crash, a power cut) left
//! devices marked online: at start, before its listeners open ([`sweep`],
//! awaited by the start), every device still online is published offline
//! with the reason `bridge-stopped`. On a clean stop the same is done for
//! the devices connected then.
//!
//! Bounded: `presence.max_devices` distinct client ids are kept (each is a
//! retained topic the broker keeps for good); past it a new device gets
//! no presence, counted in `tidewater_presence_dropped_total`.
//!
//! Each driver plugin's state goes the same way, on
//! `$tidewater/drivers/<name>` (`{"name", "state", "since",
//! "last_error"}`), checked every [`DRIVER_POLL`]: a plugin changes state
//! on its own thread, which the bridge does not wait on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::PresenceConfig;
use crate::plugin::PluginStatuses;
use crate::router::{now_ms, DeviceEvent, DeviceEventKind, DeviceEventReceiver, DisconnectReason};
use crate::services::Services;
use crate::stats::Stats;

/// Where presence is published: one level per device below it.
pub const PREFIX: &str = "$tidewater/presence/";

/// Where each driver plugin's state is published (plugin names are one
/// level already).
pub const DRIVERS: &str = "$tidewater/drivers/";

/// How often the drivers' states are looked at.
pub const DRIVER_POLL: Duration = Duration::from_millis(250);

/// How long a clean stop may take to publish the devices still online.
const STOP_DEADLINE: Duration = Duration::from_secs(1);

/// The presence topic of `client_id`.
pub fn topic_for(client_id: &str) -> String {
    let mut topic = String::with_capacity(PREFIX.len() + client_id.len());
    topic.push_str(PREFIX);
    push_level(&mut topic, client_id);
    topic
}

/// `id` as one topic level: `%`, `/`, `+` and `#` escaped.
fn push_level(topic: &mut String, id: &str) {
    for c in id.chars() {
        match c {
            '%' => topic.push_str("%25"),
            '/' => topic.push_str("%2F"),
            '+' => topic.push_str("%2B"),
            '#' => topic.push_str("%23"),
            other => topic.push(other),
        }
    }
}

/// One device's state, as published (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub client_id: String,
    pub username: Option<String>,
    pub online: bool,
    /// Milliseconds since the Unix epoch when it came online or went away.
    pub since: u64,
    /// Why it went offline; absent while online.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Whether the broker published its will as it went.
    pub will_sent: bool,
    /// For a device behind a driver plugin: the plugin, which reported it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub driver: Option<String>,
}

impl DeviceState {
    /// Where this state is published: `$tidewater/presence/<client id>`,
    /// or `$tidewater/presence/<plugin>/<device>` for a driver's device.
    pub fn topic(&self) -> String {
        match &self.driver {
            None => topic_for(&self.client_id),
            Some(driver) => {
                let mut topic = format!("{PREFIX}{driver}/");
                push_level(&mut topic, &self.client_id);
                topic
            }
        }
    }
}

/// Why a driver's report was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// The broker's ingress queue is full: retry.
    Busy,
    /// `presence.max_devices` devices are kept already.
    Full,
    /// Its topic is past the limits, or the broker refused it.
    Refused,
}

/// A driver plugin's report that `device` is online or not: published
/// (retained) when it changes what is known, on the device's topic.
pub fn report(
    services: &Services,
    driver: &str,
    device: &str,
    online: bool,
) -> Result<(), ReportError> {
    let presence = &services.presence;
    if !presence.enabled {
        return Ok(());
    }
    let state = DeviceState {
        client_id: device.to_owned(),
        username: None,
        online,
        since: now_ms(),
        reason: (!online).then(|| "driver-reported".to_owned()),
        will_sent: false,
        driver: Some(driver.to_owned()),
    };
    let topic = state.topic();
    let stats = &services.stats;
    if presence
        .lock()
        .get(&topic)
        .is_some_and(|known| known.online == online)
    {
        return Ok(());
    }
    if services.router.topic_limits().topic(&topic).is_err() {
        Stats::incr(&stats.presence_dropped);
        return Err(ReportError::Refused);
    }
    if !presence.record(&state) {
        Stats::incr(&stats.presence_dropped);
        return Err(ReportError::Full);
    }
    let payload = serde_json::to_vec(&state).unwrap_or_default();
    match services
        .broker
        .try_publish_own(&topic, payload.into(), true)
    {
        Ok(()) => {
            Stats::incr(&stats.presence_published);
            Ok(())
        }
        Err(e) => {
            // Not published: forgotten, so the driver's retry publishes it.
            presence.lock().remove(&topic);
            Stats::incr(&stats.presence_dropped);
            Err(match e {
                crate::broker::PublishError::Busy => ReportError::Busy,
                _ => ReportError::Refused,
            })
        }
    }
}

/// One driver plugin's state, as published (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverState {
    pub name: String,
    /// `loaded`, `running`, `failed` or `stopped`, as `GET /plugins` says.
    pub state: String,
    /// When it entered that state (as the bridge saw it), in milliseconds
    /// since the Unix epoch.
    pub since: u64,
    pub last_error: Option<String>,
}

/// The drivers' states as last published, to publish only changes.
#[derive(Debug, Default)]
struct Drivers {
    published: HashMap<String, (String, Option<String>)>,
}

impl Drivers {
    /// Publishes the state of every driver whose state or last error
    /// changed since it was last published.
    async fn check(&mut self, statuses: &PluginStatuses, services: &Services) {
        for status in statuses.iter() {
            let snapshot = status.snapshot();
            let state = serde_json::to_value(snapshot.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let now = (state.clone(), snapshot.last_error.clone());
            if self.published.get(&snapshot.name) == Some(&now) {
                continue;
            }
            let driver = DriverState {
                name: snapshot.name.clone(),
                state,
                since: now_ms(),
                last_error: snapshot.last_error,
            };
            publish_driver(services, &driver).await;
            self.published.insert(snapshot.name, now);
        }
    }
}

async fn publish_driver(services: &Services, driver: &DriverState) {
    let topic = format!("{DRIVERS}{}", driver.name);
    publish_retained(services, &topic, driver).await;
}

/// Publishes `state` retained on `topic`, counting whether it went.
async fn publish_retained(services: &Services, topic: &str, state: &impl Serialize) {
    let payload = serde_json::to_vec(state).unwrap_or_default();
    let stats = &services.stats;
    match services
        .broker
        .publish_own(topic, payload.into(), true)
        .await
    {
        Ok(()) => Stats::incr(&stats.presence_published),
        Err(e) => {
            Stats::incr(&stats.presence_dropped);
            tracing::debug!(topic, error = %e, "State not published.");
        }
    }
}

/// What an offline device's `reason` says.
fn reason(ending: &DisconnectReason) -> &'static str {
    match ending {
        DisconnectReason::Client { .. } => "client-disconnect",
        DisconnectReason::ConnectionLost => "connection-lost",
        DisconnectReason::TakenOver => "taken-over",
        // After the gate's checks, what the broker closes is a device whose
        // keep-alive ran out.
        DisconnectReason::Broker => "keep-alive-timeout",
        DisconnectReason::Gate(_) => "protocol-error",
        DisconnectReason::Shutdown => "bridge-stopped",
    }
}

/// Every device's last known state.
#[derive(Debug)]
pub struct Presence {
    enabled: bool,
    max_devices: usize,
    devices: Mutex<HashMap<String, DeviceState>>,
    /// The latest connection (the gate's number) seen per client id: the
    /// events of two connections with one id race (a takeover's connect
    /// and the old one's disconnect), and the later connection decides.
    latest: Mutex<HashMap<String, u64>>,
}

impl Presence {
    pub fn new(config: &PresenceConfig) -> Self {
        Self {
            enabled: config.enabled,
            max_devices: config.max_devices.max(1),
            devices: Mutex::default(),
            latest: Mutex::default(),
        }
    }

    /// Whether `event` is about the latest connection of its client id
    /// (noting it if it is newer): an older connection's disconnect says
    /// nothing about a device a newer one holds.
    fn is_latest(&self, event: &DeviceEvent) -> bool {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        match latest.get(&event.client_id) {
            Some(&seen) if seen > event.connection => false,
            _ if latest.len() >= self.max_devices && !latest.contains_key(&event.client_id) => {
                // Past the bound `record` refuses the device anyway.
                true
            }
            _ => {
                latest.insert(event.client_id.clone(), event.connection);
                true
            }
        }
    }

    /// Every device known, in client id order.
    pub fn devices(&self) -> Vec<DeviceState> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeviceState>> {
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `state`; `false` if it is a new device past
    /// `presence.max_devices`. Devices are known by their topic.
    fn record(&self, state: &DeviceState) -> bool {
        let topic = state.topic();
        let mut devices = self.lock();
        if !devices.contains_key(&topic) && devices.len() >= self.max_devices {
            return false;
        }
        devices.insert(topic, state.clone());
        true
    }
}

/// Publishes presence from `events` until `cancel`: every connect and
/// disconnect, and the drivers' states. [`sweep`] has run before.
pub async fn run(
    presence: Arc<Presence>,
    services: Services,
    mut events: DeviceEventReceiver,
    drivers: PluginStatuses,
    cancel: CancellationToken,
) {
    let mut published = Drivers::default();
    let mut poll = tokio::time::interval(DRIVER_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            _ = poll.tick() => {
                published.check(&drivers, &services).await;
                continue;
            }
            event = events.recv() => event,
        };
        match event {
            Some(Ok(event)) => {
                if let Some(state) = state_of(&event).filter(|_| presence.is_latest(&event)) {
                    publish(&presence, &services, state).await;
                }
            }
            // Lost events are counted by the receiver; the next event of
            // each device sets its state right.
            Some(Err(_)) => {}
            None => break,
        }
    }
    // A clean stop: the devices still online go offline with it.
    let online: Vec<_> = presence
        .devices()
        .into_iter()
        .filter(|d| d.online)
        .collect();
    let stop = async {
        for device in online {
            publish(&presence, &services, went_away(device, "bridge-stopped")).await;
        }
        // The drivers are stopped with the bridge, next.
        for status in drivers.iter() {
            let snapshot = status.snapshot();
            let failed = snapshot.state == crate::plugin::PluginState::Failed;
            let driver = DriverState {
                name: snapshot.name,
                state: if failed { "failed" } else { "stopped" }.to_owned(),
                since: now_ms(),
                last_error: snapshot.last_error,
            };
            publish_driver(&services, &driver).await;
        }
    };
    let _ = tokio::time::timeout(STOP_DEADLINE, stop).await;
}

/// Marks offline what the log's retained presence says is online: a
/// previous run that ended without saying so; and stopped, the drivers a
/// previous run had that this one has not (`drivers`, the configured ones,
/// get their state on the first look). Run before the plugins start, so
/// that nothing this run reports is taken for a leftover.
pub async fn sweep(presence: &Presence, services: &Services, drivers: &[String]) {
    let log = services.log.clone();
    let before = log.next();
    let max = presence.max_devices;
    let read = tokio::task::spawn_blocking(move || {
        log.retained_before(
            before,
            &mut |topic| topic.starts_with(PREFIX) || topic.starts_with(DRIVERS),
            max,
        )
    })
    .await;
    let Ok((records, _)) = read else {
        tracing::warn!("Presence: the retained states could not be read; devices a previous run left online stay so until they connect.");
        return;
    };
    for record in records {
        if record.topic.starts_with(DRIVERS) {
            let Ok(driver) = serde_json::from_slice::<DriverState>(&record.payload) else {
                continue;
            };
            let configured = drivers.contains(&driver.name);
            if !configured && !matches!(driver.state.as_str(), "stopped" | "failed") {
                let stopped = DriverState {
                    state: "stopped".into(),
                    since: now_ms(),
                    ..driver
                };
                publish_driver(services, &stopped).await;
            }
            continue;
        }
        let Ok(state) = serde_json::from_slice::<DeviceState>(&record.payload) else {
            continue;
        };
        if state.online {
            publish(presence, services, went_away(state, "bridge-stopped")).await;
        } else {
            presence.record(&state);
        }
    }
}

fn went_away(state: DeviceState, why: &str) -> DeviceState {
    DeviceState {
        online: false,
        since: now_ms(),
        reason: Some(why.to_owned()),
        will_sent: false,
        ..state
    }
}

/// The state a device event sets, if the device can have one.
fn state_of(event: &DeviceEvent) -> Option<DeviceState> {
    if event.client_id.is_empty() {
        return None;
    }
    let (online, why, will_sent) = match &event.kind {
        DeviceEventKind::Connected { .. } => (true, None, false),
        DeviceEventKind::Disconnected {
            reason: ending,
            will_topic,
        } => (false, Some(reason(ending).to_owned()), will_topic.is_some()),
    };
    Some(DeviceState {
        client_id: event.client_id.clone(),
        username: event.username.clone(),
        online,
        since: event.at_ms,
        reason: why,
        will_sent,
        driver: None,
    })
}

/// Publishes `state` as its device's retained presence, counting what
/// cannot be.
async fn publish(presence: &Presence, services: &Services, state: DeviceState) {
    let stats = &services.stats;
    let topic = state.topic();
    // Checked before the device takes a place: an id whose topic is past
    // the limits would hold one and never be shown.
    if let Err(e) = services.router.topic_limits().topic(&topic) {
        Stats::incr(&stats.presence_dropped);
        tracing::debug!(client_id = state.client_id, error = %e, "Presence not published: its topic is past the limits.");
        return;
    }
    if !presence.record(&state) {
        Stats::incr(&stats.presence_dropped);
        tracing::debug!(
            client_id = state.client_id,
            "Presence not kept: presence.max_devices reached."
        );
        return;
    }
    publish_retained(services, &topic, &state).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client id is one level, whatever it holds, and two ids never
    /// share a topic.
    #[test]
    fn a_client_id_is_one_level() {
        assert_eq!(topic_for("cam-1"), "$tidewater/presence/cam-1");
        assert_eq!(topic_for("a/b+c#d"), "$tidewater/presence/a%2Fb%2Bc%23d");
        assert_eq!(topic_for("50%"), "$tidewater/presence/50%25");
        assert_ne!(topic_for("a/b"), topic_for("a%2Fb"));
        assert_eq!(topic_for("温度"), "$tidewater/presence/温度");
        for id in ["a/b", "+", "#", "x/+/#"] {
            let level = &topic_for(id)[PREFIX.len()..];
            assert!(!level.contains(['/', '+', '#']), "{id}");
        }
    }

    /// Past `max_devices`, a new device is refused; a known one is not.
    #[test]
    fn devices_are_bounded() {
        let presence = Presence::new(&PresenceConfig {
            enabled: true,
            max_devices: 1,
        });
        let state = |id: &str| DeviceState {
            client_id: id.into(),
            username: None,
            online: true,
            since: 1,
            reason: None,
            will_sent: false,
            driver: None,
        };
        assert!(presence.record(&state("a")));
        assert!(!presence.record(&state("b")));
        assert!(presence.record(&went_away(state("a"), "taken-over")));
        assert_eq!(presence.devices().len(), 1);
    }
}
