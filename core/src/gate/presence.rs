//! One device connection as the router's device events tell it (see
//! [`crate::router::device`]): connected once the broker accepts its
//! CONNECT, then disconnected exactly once, however it ends, with who ended
//! it and whether its will is due. Shared by the connection's two pumps
//! (the client's DISCONNECT goes up, the broker's CONNACK comes down) and
//! the task that serves it (which sees how it ended).

use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use super::packet::{Connect, Version};
use super::session::SessionError;
use crate::auth::Principal;
use crate::router::{DeviceEventKind, DeviceEvents, DisconnectReason};

/// No DISCONNECT from the client yet (reason codes fit a byte).
const NO_DISCONNECT: u16 = u16::MAX;

/// How a served connection ended, as the task serving it saw it.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// The client closed its side.
    ClientClosed,
    /// The broker closed its side.
    BrokerClosed,
    /// The bridge is shutting down.
    Shutdown,
    /// A newer connection took the client id.
    TakenOver,
    /// The gate ended it.
    Error(&'a SessionError),
}

#[derive(Debug)]
pub struct Presence {
    events: DeviceEvents,
    /// The gate's number for this connection (see `DeviceFilters`).
    connection: u64,
    client_id: String,
    username: Option<String>,
    level: u8,
    clean_start: bool,
    keep_alive: u16,
    will_topic: Option<String>,
    connected: AtomicBool,
    ended: AtomicBool,
    disconnect: AtomicU16,
}

impl Presence {
    pub fn new(
        connect: &Connect,
        principal: &Principal,
        events: DeviceEvents,
        connection: u64,
    ) -> Self {
        Self {
            events,
            connection,
            client_id: connect.client_id.clone(),
            username: match principal {
                Principal::User(identity) => Some(identity.name.clone()),
                // Plugins never come through the gate.
                Principal::Anonymous | Principal::Plugin(_) => None,
            },
            level: match connect.version {
                Version::V311 => 4,
                Version::V5 => 5,
            },
            clean_start: connect.clean_start,
            keep_alive: connect.keep_alive,
            will_topic: connect.will_topic.clone(),
            connected: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            disconnect: AtomicU16::new(NO_DISCONNECT),
        }
    }

    /// The broker accepted the CONNECT.
    pub fn connected(&self) {
        if self.connected.swap(true, Ordering::AcqRel) {
            return;
        }
        self.events.send(
            self.connection,
            &self.client_id,
            self.username.as_deref(),
            DeviceEventKind::Connected {
                level: self.level,
                clean_start: self.clean_start,
                keep_alive: self.keep_alive,
                will_topic: self.will_topic.clone(),
            },
        );
    }

    /// The client sent DISCONNECT with `reason_code` (0 for MQTT 3.1.1).
    pub fn client_disconnected(&self, reason_code: u8) {
        self.disconnect
            .store(u16::from(reason_code), Ordering::Release);
    }

    /// The connection is over; reported if it was ever connected, once.
    pub fn ended(&self, ending: Ending<'_>) {
        if !self.connected.load(Ordering::Acquire) || self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        let disconnect = self.disconnect.load(Ordering::Acquire);
        let reason = if disconnect != NO_DISCONNECT {
            DisconnectReason::Client {
                reason_code: disconnect as u8,
            }
        } else {
            match ending {
                Ending::ClientClosed | Ending::Error(SessionError::Io(_)) => {
                    DisconnectReason::ConnectionLost
                }
                Ending::BrokerClosed => DisconnectReason::Broker,
                Ending::Shutdown => DisconnectReason::Shutdown,
                Ending::TakenOver => DisconnectReason::TakenOver,
                Ending::Error(e) => DisconnectReason::Gate(e.to_string()),
            }
        };
        let will_topic = self.will_topic.clone().filter(|_| reason.publishes_will());
        tracing::debug!(
            client_id = self.client_id,
            reason = reason.label(),
            "MQTT device disconnected."
        );
        self.events.send(
            self.connection,
            &self.client_id,
            self.username.as_deref(),
            DeviceEventKind::Disconnected { reason, will_topic },
        );
    }
}
