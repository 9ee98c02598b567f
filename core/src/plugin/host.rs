//! The host's side of the ABI: the `TwHostApi` table each plugin instance
//! receives, and the C callbacks behind it (`publish`, `subscribe`, `log`).
//!
//! Every callback is thread-safe and never blocks: a publish is
//! [`Broker::try_publish`](crate::broker::Broker::try_publish) (a full ingress queue is BUSY, and the plugin's
//! SDK surfaces it as an error), a subscribe is a `try_send` to the plugin's
//! own thread, which owns its subscription. Once the plugin has failed or
//! been torn down, every call answers CLOSED.
//!
//! The table and its context are leaked on purpose, like the library: a
//! misbehaving plugin thread that calls after `destroy` then gets CLOSED
//! instead of touching freed memory. What they point to (the services) is
//! released at teardown, so the leak is a few hundred bytes per plugin.
#![allow(unsafe_code)] // C callbacks: raw pointers in, statuses out

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tidewater_plugin_api::{
    TwBytes, TwHostApi, TwLogLevel, TwStatus, TwStr, ABI_VERSION, HOST_API_SIZE,
};
use tokio::sync::mpsc;

use super::loader::borrowed;
use super::status::PluginStatus;
use crate::auth::{Action, Principal};
use crate::broker::PublishError;
use crate::services::Services;
use crate::stats::{Limit, Protocol, Stats};

/// Longest log line kept from a plugin, in bytes; the rest is cut.
const MAX_LOG_BYTES: usize = 4_096;

/// What one plugin instance's callbacks reach.
#[derive(Debug)]
pub(super) struct HostContext {
    status: Arc<PluginStatus>,
    principal: Principal,
    /// `None` after teardown: calls answer CLOSED.
    live: RwLock<Option<Live>>,
}

#[derive(Debug)]
struct Live {
    services: Services,
    /// Filters for the plugin's thread, which owns the subscription.
    subscribe: mpsc::Sender<String>,
}

impl HostContext {
    /// A context and its table, both leaked (see the module docs).
    pub(super) fn leak(
        status: Arc<PluginStatus>,
        services: Services,
        subscribe: mpsc::Sender<String>,
    ) -> (&'static HostContext, HostTable) {
        let context: &'static HostContext = Box::leak(Box::new(HostContext {
            principal: Principal::Plugin(status.name().to_owned()),
            status,
            live: RwLock::new(Some(Live {
                services,
                subscribe,
            })),
        }));
        let table = Box::leak(Box::new(TwHostApi {
            abi_version: ABI_VERSION,
            struct_size: HOST_API_SIZE,
            ctx: std::ptr::from_ref(context).cast_mut().cast(),
            publish: Some(callback_publish),
            subscribe: Some(callback_subscribe),
            log: Some(callback_log),
            presence: Some(callback_presence),
        }));
        (context, HostTable(table))
    }

    /// Refuses every later call and releases the services; after `destroy`.
    pub(super) fn tear_down(&self) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn with_live(&self, call: impl FnOnce(&Live) -> TwStatus) -> TwStatus {
        if !self.status.accepting() {
            return TwStatus::CLOSED;
        }
        match &*self.live.read().unwrap_or_else(|p| p.into_inner()) {
            Some(live) => call(live),
            None => TwStatus::CLOSED,
        }
    }

    fn publish(&self, topic: &[u8], payload: &[u8], qos: u8, retain: u8) -> TwStatus {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return TwStatus::INVALID_ARGUMENT;
        };
        if qos > 1 || retain > 1 {
            return TwStatus::INVALID_ARGUMENT;
        }
        self.with_live(|live| {
            let payload = Bytes::copy_from_slice(payload);
            match live.services.broker.try_publish(
                &self.principal,
                topic,
                payload,
                qos,
                retain == 1,
            ) {
                Ok(()) => {
                    Stats::incr(&self.status.messages_out);
                    TwStatus::OK
                }
                // A full disk is backpressure too: the driver retries.
                Err(PublishError::Busy | PublishError::StorageFull) => {
                    Stats::incr(&self.status.publishes_busy);
                    TwStatus::BUSY
                }
                Err(
                    PublishError::InvalidTopic { .. }
                    | PublishError::TopicTooLong { .. }
                    | PublishError::TopicTooDeep { .. }
                    | PublishError::TooLarge { .. },
                ) => TwStatus::INVALID_ARGUMENT,
                Err(PublishError::Denied(_) | PublishError::Reserved) => {
                    live.services.stats.deny(Protocol::Plugin, Action::Publish);
                    TwStatus::DENIED
                }
                Err(_) => TwStatus::CLOSED,
            }
        })
    }

    fn subscribe(&self, filter: &[u8]) -> TwStatus {
        let Ok(filter) = std::str::from_utf8(filter) else {
            return TwStatus::INVALID_ARGUMENT;
        };
        self.with_live(|live| {
            if let Err(e) = live.services.router.topic_limits().filter(filter) {
                if let Some(limit) = Limit::of_topic(&e) {
                    live.services.stats.limit(Protocol::Plugin, limit);
                }
                return TwStatus::INVALID_ARGUMENT;
            }
            let policy = &live.services.policy;
            if policy
                .authorize(&self.principal, Action::Subscribe, filter)
                .is_err()
            {
                live.services
                    .stats
                    .deny(Protocol::Plugin, Action::Subscribe);
                return TwStatus::DENIED;
            }
            match live.subscribe.try_send(filter.to_owned()) {
                Ok(()) => TwStatus::OK,
                Err(mpsc::error::TrySendError::Full(_)) => TwStatus::BUSY,
                Err(mpsc::error::TrySendError::Closed(_)) => TwStatus::CLOSED,
            }
        })
    }

    /// A device behind the driver online or not: its presence, published
    /// by the bridge (see `crate::presence`).
    fn presence(&self, device: &[u8], online: u8) -> TwStatus {
        let Ok(device) = std::str::from_utf8(device) else {
            return TwStatus::INVALID_ARGUMENT;
        };
        if device.is_empty()
            || device.len() > MAX_DEVICE_ID_BYTES
            || device.contains('\0')
            || online > 1
        {
            return TwStatus::INVALID_ARGUMENT;
        }
        self.with_live(|live| {
            let driver = self.status.name();
            match crate::presence::report(&live.services, driver, device, online == 1) {
                Ok(()) => TwStatus::OK,
                Err(crate::presence::ReportError::Busy) => TwStatus::BUSY,
                Err(crate::presence::ReportError::Refused) => TwStatus::INVALID_ARGUMENT,
                // No more devices are kept: not a state a retry changes.
                Err(crate::presence::ReportError::Full) => TwStatus::DENIED,
            }
        })
    }

    fn log(&self, level: TwLogLevel, message: &[u8]) {
        let cut = &message[..message.len().min(MAX_LOG_BYTES)];
        let message = String::from_utf8_lossy(cut);
        let plugin = self.status.name();
        match level {
            TwLogLevel::ERROR => {
                Stats::incr(&self.status.errors_logged);
                self.status.set_last_error(message.as_ref());
                tracing::error!(plugin, "{message}");
            }
            TwLogLevel::WARN => tracing::warn!(plugin, "{message}"),
            TwLogLevel::DEBUG => tracing::debug!(plugin, "{message}"),
            TwLogLevel::TRACE => tracing::trace!(plugin, "{message}"),
            _ => tracing::info!(plugin, "{message}"),
        }
    }
}

/// Longest device id a driver may report presence for.
const MAX_DEVICE_ID_BYTES: usize = 256;

/// A leaked host table, handed to the plugin's thread.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostTable(pub(super) &'static TwHostApi);

// SAFETY: the table is never written after it is built, and its callbacks
// are thread-safe (they only reach `HostContext`, which is Sync).
unsafe impl Send for HostTable {}

/// # Safety
/// `ctx` is the pointer [`HostContext::leak`] put in the table: leaked,
/// so valid for the life of the process.
unsafe fn context<'a>(ctx: *mut c_void) -> Option<&'a HostContext> {
    // SAFETY: per the function's contract (null is refused by `as_ref`).
    unsafe { ctx.cast::<HostContext>().as_ref() }
}

/// Runs a callback body so that a bug on our side can never unwind into
/// plugin code (which would abort the process).
fn guarded(body: impl FnOnce() -> TwStatus) -> TwStatus {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(TwStatus::ERROR)
}

unsafe extern "C" fn callback_publish(
    ctx: *mut c_void,
    topic: TwStr,
    payload: TwBytes,
    qos: u8,
    retain: u8,
) -> TwStatus {
    guarded(|| {
        // SAFETY: our own table's ctx.
        let Some(context) = (unsafe { context(ctx) }) else {
            return TwStatus::INVALID_ARGUMENT;
        };
        // SAFETY: the ABI: topic and payload are borrowed for this call.
        let (topic, payload) = unsafe {
            (
                borrowed(topic.ptr, topic.len),
                borrowed(payload.ptr, payload.len),
            )
        };
        context.publish(topic, payload, qos, retain)
    })
}

unsafe extern "C" fn callback_subscribe(ctx: *mut c_void, filter: TwStr) -> TwStatus {
    guarded(|| {
        // SAFETY: our own table's ctx.
        let Some(context) = (unsafe { context(ctx) }) else {
            return TwStatus::INVALID_ARGUMENT;
        };
        // SAFETY: the ABI: the filter is borrowed for this call.
        context.subscribe(unsafe { borrowed(filter.ptr, filter.len) })
    })
}

unsafe extern "C" fn callback_presence(ctx: *mut c_void, device: TwStr, online: u8) -> TwStatus {
    guarded(|| {
        // SAFETY: our own table's ctx.
        let Some(context) = (unsafe { context(ctx) }) else {
            return TwStatus::INVALID_ARGUMENT;
        };
        // SAFETY: the ABI: the device id is borrowed for this call.
        context.presence(unsafe { borrowed(device.ptr, device.len) }, online)
    })
}

unsafe extern "C" fn callback_log(ctx: *mut c_void, level: TwLogLevel, message: TwStr) {
    guarded(|| {
        // SAFETY: our own table's ctx.
        if let Some(context) = unsafe { context(ctx) } {
            // SAFETY: the ABI: the message is borrowed for this call.
            context.log(level, unsafe { borrowed(message.ptr, message.len) });
        }
        TwStatus::OK
    });
}
