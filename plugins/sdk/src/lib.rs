//! Write a Tidewater device-driver plugin in safe Rust.
//!
//! A driver is one struct, one [`Plugin`] impl and one [`export_plugin!`]
//! line; build the crate as a `cdylib` and point a `[[plugins]]` entry of
//! `bridge.toml` at the library:
//!
//! ```
//! use tidewater_plugin::{export_plugin, Host, Plugin};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     greeting: String,
//! }
//!
//! struct Echo {
//!     host: Host,
//!     greeting: String,
//! }
//!
//! impl Plugin for Echo {
//!     type Config = Config;
//!
//!     fn new(host: Host, config: Config) -> Result<Self, tidewater_plugin::Error> {
//!         host.subscribe("echo/in")?;
//!         Ok(Echo { host, greeting: config.greeting })
//!     }
//!
//!     fn on_message(&mut self, _topic: &str, payload: &[u8]) -> Result<(), tidewater_plugin::Error> {
//!         let reply = format!("{} {}", self.greeting, String::from_utf8_lossy(payload));
//!         self.host.publish("echo/out", reply, false)?;
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(Echo);
//! ```
//!
//! # Layout
//! - [`Plugin`] (this file): what a driver implements; [`Error`], what its
//!   methods return.
//! - [`host`]: [`Host`], the handle to the bridge (`publish`, `subscribe`,
//!   `log`), `Send + Sync + Clone`, usable from any thread the driver starts.
//! - `ffi`: the C entry points [`export_plugin!`] exports. Each wraps the
//!   driver's method in `catch_unwind`, so a panic becomes
//!   [`api::TwStatus::PANICKED`] and never crosses into the bridge.
//! - [`testing`]: [`testing::TestHost`], a host that records what a driver
//!   does, for its unit tests (linked statically, no bridge needed).
//!
//! # Threads
//! The bridge calls `new`, `start`, `on_message` and `stop` on the plugin's
//! own thread (`plugin-<name>`), one call at a time, so a driver needs no
//! locking for its own state. Threads a driver starts must be joined in
//! [`Plugin::stop`]: after `stop` returns, no [`Host`] may be used.

#[doc(hidden)]
pub mod ffi;
pub mod host;
pub mod testing;

use std::fmt;

pub use host::{Host, HostError, Level};
pub use serde;
pub use serde_json;
/// The C ABI this SDK implements.
pub use tidewater_plugin_api as api;

/// A device driver.
pub trait Plugin: Sized + 'static {
    /// The driver's `[plugins.config]` table, deserialised from JSON. Use
    /// `#[serde(deny_unknown_fields)]` so a misspelt key is an error.
    type Config: serde::de::DeserializeOwned;

    /// Creates the driver. Subscriptions made here are in place, with their
    /// retained values, before the first message. An error stops the
    /// bridge's startup (or skips the plugin, if it is optional) with this
    /// error's message.
    fn new(host: Host, config: Self::Config) -> Result<Self, Error>;

    /// Starts the driver's own work, e.g. a polling thread. The default does
    /// nothing.
    fn start(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// One message matching the driver's filters. An error is logged (and
    /// shown as the plugin's last error); the driver keeps receiving.
    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<(), Error> {
        let _ = (topic, payload);
        Ok(())
    }

    /// Stops the driver: join every thread it started. The default does
    /// nothing.
    fn stop(&mut self) {}
}

/// A driver's error: a message for the bridge's log and `GET /plugins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

impl From<HostError> for Error {
    fn from(error: HostError) -> Self {
        Self(error.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Self(error.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self(error.to_string())
    }
}

/// Exports a [`Plugin`] as a Tidewater plugin library: defines the
/// `tidewater_plugin_v1` symbol, whose descriptor carries the crate's name
/// and version and entry points that never let a panic through.
///
/// Use it once per library, at the crate root: `export_plugin!(MyDriver);`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The plugin's entry point (see `tidewater_plugin_api::ENTRY_SYMBOL`).
        // The symbol is the whole point of a plugin library; the descriptor
        // it returns is static and immutable.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn tidewater_plugin_v1() -> *const $crate::api::TwPluginDescriptor {
            static DESCRIPTOR: $crate::ffi::Descriptor = $crate::ffi::descriptor::<$plugin>(
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
            );
            DESCRIPTOR.as_ptr()
        }
    };
}
