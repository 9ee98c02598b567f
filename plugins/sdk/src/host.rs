//! [`Host`]: a driver's handle to the bridge, safe over the C host table.
#![allow(unsafe_code)] // calls through the host's C function table

use std::fmt;
use std::ptr::NonNull;

use tidewater_plugin_api::{TwBytes, TwHostApi, TwLogLevel, TwStatus, TwStr};

/// The bridge, as a driver sees it: publish, subscribe, log.
///
/// `Send + Sync + Clone`: clone it into every thread the driver starts.
/// Every call returns at once; none waits for the broker. A handle must not
/// be used after the driver's [`Plugin::stop`](crate::Plugin::stop) has
/// returned (join your threads there).
#[derive(Clone)]
pub struct Host {
    api: NonNull<TwHostApi>,
}

// SAFETY: the ABI requires every TwHostApi callback to be thread-safe and
// callable from any thread, and the table itself is never written after
// `create`; the host keeps it alive until `destroy` returns, which is after
// `stop`, by which time the driver has joined its threads.
unsafe impl Send for Host {}
// SAFETY: as for Send: shared use is concurrent calls, which the ABI allows.
unsafe impl Sync for Host {}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").field("api", &self.api).finish()
    }
}

/// Why the bridge refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The broker's ingress queue (or the subscribe queue) is full right
    /// now: the message was not sent. Retry later, or drop it.
    Busy,
    /// A topic with wildcards or not UTF-8, an invalid filter, a bad QoS.
    InvalidArgument,
    /// The access check refused it.
    Denied,
    /// The bridge no longer accepts calls from this plugin (it failed, is
    /// stopping, or the broker is gone).
    Closed,
    /// A status this SDK does not know (from a newer bridge).
    Other(u32),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy => {
                f.write_str("the bridge is busy (its ingress queue is full); retry later")
            }
            Self::InvalidArgument => f.write_str("the bridge refused an invalid argument"),
            Self::Denied => f.write_str("the bridge's access check refused it"),
            Self::Closed => f.write_str("the bridge no longer accepts calls from this plugin"),
            Self::Other(status) => write!(f, "the bridge answered status {status}"),
        }
    }
}

impl std::error::Error for HostError {}

impl HostError {
    fn check(status: TwStatus) -> Result<(), Self> {
        match status {
            TwStatus::OK => Ok(()),
            TwStatus::BUSY => Err(Self::Busy),
            TwStatus::INVALID_ARGUMENT => Err(Self::InvalidArgument),
            TwStatus::DENIED => Err(Self::Denied),
            TwStatus::CLOSED => Err(Self::Closed),
            TwStatus(other) => Err(Self::Other(other)),
        }
    }
}

/// Severity of a log line. `Error` lines also become the plugin's
/// `last_error` in `GET /plugins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    fn raw(self) -> TwLogLevel {
        match self {
            Self::Error => TwLogLevel::ERROR,
            Self::Warn => TwLogLevel::WARN,
            Self::Info => TwLogLevel::INFO,
            Self::Debug => TwLogLevel::DEBUG,
            Self::Trace => TwLogLevel::TRACE,
        }
    }
}

impl Host {
    /// Wraps the host's table.
    ///
    /// # Safety
    /// `api` must point to a `TwHostApi` of ABI version 1 that stays valid
    /// for as long as this handle and its clones are used.
    pub unsafe fn from_raw(api: NonNull<TwHostApi>) -> Self {
        Self { api }
    }

    fn table(&self) -> &TwHostApi {
        // SAFETY: `from_raw`'s contract: the table outlives every handle.
        unsafe { self.api.as_ref() }
    }

    /// Publishes at QoS 0 through the broker, so devices, web clients and
    /// other plugins receive it. Returns at once; [`HostError::Busy`] when
    /// the broker's ingress queue is full (the message was not sent).
    pub fn publish(
        &self,
        topic: &str,
        payload: impl AsRef<[u8]>,
        retain: bool,
    ) -> Result<(), HostError> {
        self.publish_with_qos(topic, payload.as_ref(), 0, retain)
    }

    /// Like [`Host::publish`] with an explicit QoS (0 or 1).
    pub fn publish_with_qos(
        &self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
    ) -> Result<(), HostError> {
        let table = self.table();
        let publish = table.publish.ok_or(HostError::Closed)?;
        // SAFETY: the table's ctx goes back to its own callback; topic and
        // payload are borrowed for the duration of the call, as the ABI says.
        let status = unsafe {
            publish(
                table.ctx,
                TwStr::new(topic),
                TwBytes::new(payload),
                qos,
                u8::from(retain),
            )
        };
        HostError::check(status)
    }

    /// Adds a topic filter (MQTT wildcards `+` and `#` allowed); matching
    /// messages arrive in [`Plugin::on_message`](crate::Plugin::on_message).
    /// Callable at any time, from any thread.
    pub fn subscribe(&self, filter: &str) -> Result<(), HostError> {
        let table = self.table();
        let subscribe = table.subscribe.ok_or(HostError::Closed)?;
        // SAFETY: as in `publish_with_qos`; the filter is borrowed for the call.
        HostError::check(unsafe { subscribe(table.ctx, TwStr::new(filter)) })
    }

    /// Reports whether a device behind the driver is online; the bridge
    /// publishes it, retained, on `$tidewater/presence/<plugin>/<device>`.
    /// [`HostError::InvalidArgument`] for an id that is empty, longer than
    /// 256 bytes or holds NUL; [`HostError::Closed`] from a bridge too old
    /// to offer it.
    pub fn presence(&self, device: &str, online: bool) -> Result<(), HostError> {
        let table = self.table();
        let covered = std::mem::offset_of!(TwHostApi, presence)
            + std::mem::size_of::<Option<tidewater_plugin_api::TwPresenceFn>>();
        if (table.struct_size as usize) < covered {
            return Err(HostError::Closed);
        }
        let presence = table.presence.ok_or(HostError::Closed)?;
        // SAFETY: as in `publish_with_qos`; the id is borrowed for the call,
        // and `struct_size` says the table has the field.
        HostError::check(unsafe { presence(table.ctx, TwStr::new(device), u8::from(online)) })
    }

    /// Writes a line to the bridge's log, tagged with the plugin's name.
    pub fn log(&self, level: Level, message: &str) {
        let table = self.table();
        if let Some(log) = table.log {
            // SAFETY: as in `publish_with_qos`; the message is borrowed for the call.
            unsafe { log(table.ctx, level.raw(), TwStr::new(message)) }
        }
    }

    pub fn error(&self, message: &str) {
        self.log(Level::Error, message);
    }

    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message);
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }

    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message);
    }
}
