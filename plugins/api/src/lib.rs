//! The C ABI between the Tidewater bridge (the *host*) and a device-driver
//! plugin, version [`ABI_VERSION`]: plain `#[repr(C)]` data and function
//! pointers, nothing else.
//!
//! `include/tidewater_plugin.h` declares the same types for plugins written
//! in C; a test compiles a C file against it that checks every size, offset,
//! constant and function signature against the values of this crate, so the
//! two cannot drift.
//!
//! # The contract
//! - A plugin is a shared library that exports [`ENTRY_SYMBOL`], a function
//!   returning a pointer to its [`TwPluginDescriptor`]. The major version is
//!   in the symbol's name, so a library built for another major version fails
//!   the lookup instead of being misread.
//! - Every versioned struct starts with `abi_version: u32` and
//!   `struct_size: u32`. Fields are only ever appended: a reader checks the
//!   version first, then that `struct_size` covers the fields it reads.
//! - Strings and bytes cross as `{ptr, len}` ([`TwStr`], [`TwBytes`]),
//!   **borrowed for the duration of the call**. Whoever wants to keep them
//!   copies them. No allocation ever changes sides, so the host's and the
//!   plugin's allocators never mix.
//! - Status codes are a `u32` newtype with constants ([`TwStatus`]), never a
//!   Rust enum: an unknown value from a newer peer is a number, not undefined
//!   behaviour.
//! - No panic or exception crosses the boundary. A plugin that can no longer
//!   be trusted returns [`TwStatus::PANICKED`]; the host then marks it failed.
//!
//! # Lifecycle, all on the plugin's own host thread, one call at a time
//! `create` → `start` → `on_message`* → `stop` → `destroy`. The host calls
//! `stop` and `destroy` even after a failure (so the plugin can join its
//! threads), but never `start` after a failed `create`, nor `on_message`
//! after a failure. The [`TwHostApi`] callbacks are thread-safe and may be
//! called from any thread the plugin starts, until `destroy` returns.
//!
//! Every pointer field says who owns it and for how long (`OWNERSHIP:`).

#![cfg_attr(not(test), no_std)]

use core::ffi::c_void;
use core::fmt;

/// The ABI version this crate describes. A host refuses a descriptor whose
/// `abi_version` differs, naming both numbers.
pub const ABI_VERSION: u32 = 1;

/// The symbol every plugin exports: `const TwPluginDescriptor *tidewater_plugin_v1(void)`.
pub const ENTRY_SYMBOL: &str = "tidewater_plugin_v1";

/// [`ENTRY_SYMBOL`] with its terminating NUL, as `dlsym` wants it.
pub const ENTRY_SYMBOL_NUL: &[u8] = b"tidewater_plugin_v1\0";

/// The type of [`ENTRY_SYMBOL`]. The descriptor it returns is static: it
/// stays valid for as long as the library is loaded, which is the life of
/// the process (the host never unloads a plugin).
pub type TwPluginEntry = unsafe extern "C" fn() -> *const TwPluginDescriptor;

/// The outcome of a call in either direction.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TwStatus(pub u32);

impl TwStatus {
    /// It worked.
    pub const OK: Self = Self(0);
    /// It failed; the details went to the log (a plugin logs them through
    /// [`TwHostApi::log`] before returning this).
    pub const ERROR: Self = Self(1);
    /// A queue is full right now (the broker's ingress, the subscribe
    /// queue): nothing was done; try again later or drop the message.
    pub const BUSY: Self = Self(2);
    /// An argument is not acceptable: a topic that is not UTF-8 or has
    /// wildcards, an invalid filter, a QoS other than 0 or 1, a payload
    /// over `mqtt.max_payload_bytes`.
    pub const INVALID_ARGUMENT: Self = Self(3);
    /// The access check refused it.
    pub const DENIED: Self = Self(4);
    /// The other side no longer accepts calls: the plugin failed or is
    /// stopped, or the broker is gone.
    pub const CLOSED: Self = Self(5);
    /// The plugin caught a panic (or is otherwise in an unknown state): the
    /// host marks it failed and delivers nothing more to it.
    pub const PANICKED: Self = Self(6);

    pub const fn is_ok(self) -> bool {
        self.0 == Self::OK.0
    }

    /// The constant's name, or `UNKNOWN` for a value this version does not know.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "OK",
            1 => "ERROR",
            2 => "BUSY",
            3 => "INVALID_ARGUMENT",
            4 => "DENIED",
            5 => "CLOSED",
            6 => "PANICKED",
            _ => "UNKNOWN",
        }
    }
}

impl fmt::Debug for TwStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TwStatus({} {})", self.0, self.name())
    }
}

impl fmt::Display for TwStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Severity of a [`TwHostApi::log`] line. Values outside 1..=5 are logged
/// at `INFO`.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TwLogLevel(pub u32);

impl TwLogLevel {
    /// Also recorded as the plugin's `last_error` in `GET /plugins`.
    pub const ERROR: Self = Self(1);
    pub const WARN: Self = Self(2);
    pub const INFO: Self = Self(3);
    pub const DEBUG: Self = Self(4);
    pub const TRACE: Self = Self(5);
}

/// UTF-8 text, not NUL-terminated.
///
/// OWNERSHIP: borrowed from the caller for the duration of the call only;
/// the callee copies what it keeps. `ptr` may be null only when `len` is 0.
/// Exception: the `name` and `version` of a [`TwPluginDescriptor`] are
/// static, like the descriptor.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TwStr {
    pub ptr: *const u8,
    pub len: usize,
}

impl TwStr {
    pub const EMPTY: Self = Self {
        ptr: core::ptr::null(),
        len: 0,
    };

    /// Borrows `text`; the result is valid while `text` is.
    pub const fn new(text: &str) -> Self {
        Self {
            ptr: text.as_ptr(),
            len: text.len(),
        }
    }
}

/// Arbitrary bytes (an MQTT payload).
///
/// OWNERSHIP: borrowed from the caller for the duration of the call only;
/// the callee copies what it keeps. `ptr` may be null only when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TwBytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl TwBytes {
    pub const EMPTY: Self = Self {
        ptr: core::ptr::null(),
        len: 0,
    };

    /// Borrows `bytes`; the result is valid while `bytes` is.
    pub const fn new(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

/// A buffer the host lends to `create` for its error message, so the
/// message needs no allocation on the plugin's side.
///
/// OWNERSHIP: owned by the host, writable by the plugin during the `create`
/// call only. The plugin writes at most `cap` bytes of UTF-8 at `ptr` and
/// sets `len` to the number written (truncating a longer message).
#[repr(C)]
#[derive(Debug)]
pub struct TwErrorBuf {
    pub ptr: *mut u8,
    pub cap: usize,
    pub len: usize,
}

/// Publishes `payload` on `topic` through the broker (so devices, web
/// clients and other plugins all receive it). Never blocks: a full ingress
/// queue is [`TwStatus::BUSY`]. `qos` is 0 or 1 (both are queued for the
/// broker at once; the host does not wait for the broker's confirmation);
/// `retain` is 0 or 1.
pub type TwPublishFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    topic: TwStr,
    payload: TwBytes,
    qos: u8,
    retain: u8,
) -> TwStatus;

/// Adds a topic filter to the plugin's subscription, at any time. Messages
/// matching it are delivered through `on_message` on the plugin's host
/// thread. Never blocks: a full subscribe queue is [`TwStatus::BUSY`].
pub type TwSubscribeFn = unsafe extern "C" fn(ctx: *mut c_void, filter: TwStr) -> TwStatus;

/// Writes one line to the bridge's log, tagged with the plugin's name.
pub type TwLogFn = unsafe extern "C" fn(ctx: *mut c_void, level: TwLogLevel, message: TwStr);

/// Reports whether a device behind the driver is online (`online` 1) or
/// not (0). The bridge publishes it, retained, on
/// `$tidewater/presence/<plugin>/<device>` beside its MQTT devices'
/// presence. `device` is the driver's own id for it (UTF-8, 1 to 256
/// bytes). Never blocks: a full ingress queue is [`TwStatus::BUSY`].
///
/// Added after the first three callbacks: a host whose `struct_size` does
/// not cover it does not offer it.
pub type TwPresenceFn =
    unsafe extern "C" fn(ctx: *mut c_void, device: TwStr, online: u8) -> TwStatus;

/// What the host offers a plugin. Every callback is thread-safe and
/// non-blocking, callable from any thread.
///
/// OWNERSHIP: owned by the host. The table and `ctx` stay valid from the
/// `create` call until `destroy` returns; a plugin must join every thread
/// that uses them in `stop`. The plugin never frees them.
#[repr(C)]
#[derive(Debug)]
pub struct TwHostApi {
    pub abi_version: u32,
    pub struct_size: u32,
    /// OWNERSHIP: host; opaque to the plugin, passed back as the first
    /// argument of every callback.
    pub ctx: *mut c_void,
    pub publish: Option<TwPublishFn>,
    pub subscribe: Option<TwSubscribeFn>,
    pub log: Option<TwLogFn>,
    /// Present only when `struct_size` covers it (see [`TwPresenceFn`]).
    pub presence: Option<TwPresenceFn>,
}

/// Creates an instance from its configuration (the `config` table of its
/// `[[plugins]]` entry, as a JSON object). On success stores the instance
/// in `*instance` and returns OK; on failure writes a message into `error`
/// and returns another status.
///
/// OWNERSHIP: `host` is described at [`TwHostApi`]; `config_json` is
/// borrowed for the call; `instance` and `error` are host memory written
/// during the call. The instance itself is owned by the plugin until
/// `destroy`.
pub type TwCreateFn = unsafe extern "C" fn(
    host: *const TwHostApi,
    config_json: TwStr,
    instance: *mut *mut c_void,
    error: *mut TwErrorBuf,
) -> TwStatus;

/// Starts the instance (its own threads, if any). Failure details are
/// logged through the host at `ERROR` before returning a non-OK status.
pub type TwStartFn = unsafe extern "C" fn(instance: *mut c_void) -> TwStatus;

/// Delivers one message matching the plugin's filters. `topic` and
/// `payload` are borrowed for the call.
pub type TwOnMessageFn =
    unsafe extern "C" fn(instance: *mut c_void, topic: TwStr, payload: TwBytes) -> TwStatus;

/// Stops the instance: after it returns, no thread of the plugin may call
/// the host.
pub type TwStopFn = unsafe extern "C" fn(instance: *mut c_void) -> TwStatus;

/// Frees the instance. The host never uses `instance` again.
pub type TwDestroyFn = unsafe extern "C" fn(instance: *mut c_void);

/// What a plugin library offers, returned by [`ENTRY_SYMBOL`].
///
/// OWNERSHIP: owned by the plugin library and static: valid, and never
/// modified, for as long as the library is loaded.
#[repr(C)]
#[derive(Debug)]
pub struct TwPluginDescriptor {
    /// [`ABI_VERSION`] at the time the plugin was built.
    pub abi_version: u32,
    /// `sizeof(TwPluginDescriptor)` at the time the plugin was built.
    pub struct_size: u32,
    /// The driver's name, e.g. `sim-thermo`. OWNERSHIP: static.
    pub name: TwStr,
    /// The driver's version, e.g. `0.1.0`. OWNERSHIP: static.
    pub version: TwStr,
    pub create: Option<TwCreateFn>,
    pub start: Option<TwStartFn>,
    pub on_message: Option<TwOnMessageFn>,
    pub stop: Option<TwStopFn>,
    pub destroy: Option<TwDestroyFn>,
}

/// The `struct_size` of a version-1 descriptor.
pub const DESCRIPTOR_SIZE: u32 = core::mem::size_of::<TwPluginDescriptor>() as u32;

/// The `struct_size` of a version-1 host table.
pub const HOST_API_SIZE: u32 = core::mem::size_of::<TwHostApi>() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status constant has its own name, and an unknown value is not
    /// mistaken for one of them.
    #[test]
    fn status_names_are_distinct() {
        let all = [
            TwStatus::OK,
            TwStatus::ERROR,
            TwStatus::BUSY,
            TwStatus::INVALID_ARGUMENT,
            TwStatus::DENIED,
            TwStatus::CLOSED,
            TwStatus::PANICKED,
        ];
        for (i, a) in all.iter().enumerate() {
            assert_ne!(a.name(), "UNKNOWN");
            for b in &all[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(TwStatus(99).name(), "UNKNOWN");
        assert!(TwStatus::OK.is_ok() && !TwStatus::BUSY.is_ok());
    }

    /// The two fields every reader checks first sit at the start of the
    /// descriptor, where any version of it keeps them.
    #[test]
    fn version_fields_come_first() {
        assert_eq!(core::mem::offset_of!(TwPluginDescriptor, abi_version), 0);
        assert_eq!(core::mem::offset_of!(TwPluginDescriptor, struct_size), 4);
        assert_eq!(core::mem::offset_of!(TwHostApi, abi_version), 0);
        assert_eq!(core::mem::offset_of!(TwHostApi, struct_size), 4);
    }

    /// The entry symbol's NUL-terminated form is the same name.
    #[test]
    fn entry_symbol_forms_agree() {
        assert_eq!(
            &ENTRY_SYMBOL_NUL[..ENTRY_SYMBOL_NUL.len() - 1],
            ENTRY_SYMBOL.as_bytes()
        );
    }
}
