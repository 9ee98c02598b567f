//! Device events: each MQTT device's connects and disconnects (who ended it
//! and why, and whether its will is due), as the gate sees them, for
//! whoever in the bridge wants to know: presence, the log, tests.
//!
//! They go out on a broadcast channel of `mqtt.device_events_capacity`
//! events: a listener that falls further behind than that loses the oldest
//! (it is told how many, and they are counted in
//! `tidewater_device_events_lagged_total`), and with no listener an event
//! costs a counter increment. The gate never waits for a listener.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::now_ms;
use crate::stats::Stats;

/// One device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    /// The client id as the device gave it (never the broker's form).
    pub client_id: String,
    /// The MQTT user it logged in as; `None` for an anonymous device.
    pub username: Option<String>,
    /// The gate's number for the connection, rising with each new one: of
    /// two connections with one client id, the later has the larger.
    pub connection: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: DeviceEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEventKind {
    /// The broker accepted the device's CONNECT.
    Connected {
        /// 4 for MQTT 3.1.1, 5 for MQTT 5.
        level: u8,
        /// Clean Session (3.1.1) or Clean Start (5).
        clean_start: bool,
        /// Seconds, as the device asked (0: none).
        keep_alive: u16,
        /// The topic of its will, if it set one.
        will_topic: Option<String>,
    },
    /// The connection ended.
    Disconnected {
        reason: DisconnectReason,
        /// The will topic the broker now publishes on, if the device set a
        /// will and did not end with a DISCONNECT that discards it.
        will_topic: Option<String>,
    },
}

/// Who ended a device's connection, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The device sent DISCONNECT, with its MQTT 5 reason code (0, normal,
    /// for MQTT 3.1.1). Only 0 discards the will: 0x04 asks for it, and an
    /// error code is no normal ending.
    Client { reason_code: u8 },
    /// The connection closed without a DISCONNECT: the network, a crash, a
    /// power cut.
    ConnectionLost,
    /// A newer connection took its client id (MQTT's session takeover).
    TakenOver,
    /// The broker ended it: its keep-alive ran out, or the broker refused
    /// something it sent.
    Broker,
    /// The gate ended it, for the reason given: a protocol violation, a
    /// packet too large, a device that stopped reading.
    Gate(String),
    /// The bridge is shutting down.
    Shutdown,
}

impl DisconnectReason {
    /// Whether the broker publishes the device's will after this ending.
    pub fn publishes_will(&self) -> bool {
        !matches!(self, DisconnectReason::Client { reason_code: 0 })
    }

    /// A short label, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DisconnectReason::Client { .. } => "client",
            DisconnectReason::ConnectionLost => "connection_lost",
            DisconnectReason::TakenOver => "taken_over",
            DisconnectReason::Broker => "broker",
            DisconnectReason::Gate(_) => "gate",
            DisconnectReason::Shutdown => "shutdown",
        }
    }
}

/// Where device events go out.
#[derive(Debug, Clone)]
pub struct DeviceEvents {
    sender: broadcast::Sender<Arc<DeviceEvent>>,
    stats: Arc<Stats>,
}

impl DeviceEvents {
    pub fn new(capacity: usize, stats: Arc<Stats>) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender, stats }
    }

    /// Sends an event to every listener, without waiting for any.
    pub fn send(
        &self,
        connection: u64,
        client_id: &str,
        username: Option<&str>,
        kind: DeviceEventKind,
    ) {
        match &kind {
            DeviceEventKind::Connected { .. } => Stats::incr(&self.stats.device_connects),
            DeviceEventKind::Disconnected { .. } => Stats::incr(&self.stats.device_disconnects),
        }
        let event = DeviceEvent {
            client_id: client_id.to_owned(),
            username: username.map(str::to_owned),
            connection,
            at_ms: now_ms(),
            kind,
        };
        // No listener is not an error: nobody asked.
        let _ = self.sender.send(Arc::new(event));
    }

    /// A listener for every later event.
    pub fn subscribe(&self) -> DeviceEventReceiver {
        DeviceEventReceiver {
            receiver: self.sender.subscribe(),
            stats: self.stats.clone(),
        }
    }
}

/// One listener's end.
#[derive(Debug)]
pub struct DeviceEventReceiver {
    receiver: broadcast::Receiver<Arc<DeviceEvent>>,
    stats: Arc<Stats>,
}

impl DeviceEventReceiver {
    /// The next event; `Err(n)` when `n` older ones were lost because this
    /// listener fell behind (then the next call goes on from the oldest
    /// kept); `None` once the bridge is gone.
    pub async fn recv(&mut self) -> Option<Result<Arc<DeviceEvent>, u64>> {
        match self.receiver.recv().await {
            Ok(event) => Some(Ok(event)),
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                Stats::add(&self.stats.device_events_lagged, lost);
                Some(Err(lost))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected() -> DeviceEventKind {
        DeviceEventKind::Connected {
            level: 4,
            clean_start: true,
            keep_alive: 30,
            will_topic: None,
        }
    }

    #[tokio::test]
    async fn a_listener_that_falls_behind_is_told_what_it_lost() {
        let stats = Arc::new(Stats::default());
        let events = DeviceEvents::new(2, stats.clone());
        events.send(0, "nobody-listens", None, connected());
        let mut listener = events.subscribe();
        for id in ["a", "b", "c"] {
            events.send(1, id, Some("ann"), connected());
        }
        assert_eq!(listener.recv().await, Some(Err(1)));
        let next = listener.recv().await.expect("open").expect("kept");
        assert_eq!(
            (next.client_id.as_str(), next.username.as_deref()),
            ("b", Some("ann"))
        );
        let snapshot = stats.snapshot();
        assert_eq!(
            (snapshot.device_connects, snapshot.device_events_lagged),
            (4, 1)
        );
    }

    #[test]
    fn only_a_normal_disconnect_discards_the_will() {
        let client = |reason_code| DisconnectReason::Client { reason_code };
        assert!(!client(0).publishes_will());
        assert!(
            client(0x04).publishes_will(),
            "disconnect with will message"
        );
        assert!(
            client(0x80).publishes_will(),
            "an error is no normal ending"
        );
        assert!(DisconnectReason::ConnectionLost.publishes_will());
        assert!(DisconnectReason::Gate("a packet too large".into()).publishes_will());
    }
}
