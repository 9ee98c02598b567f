//! Device-driver plugins: shared libraries loaded at startup that bring in
//! devices speaking neither MQTT nor HTTP, or translate their payloads.
//!
//! A plugin is a router subscriber like an SSE stream, and a publisher like
//! an HTTP client: its messages enter through the broker, so everyone sees
//! them in the same order. It runs on its own thread with a bounded inbox,
//! and never touches the bridge's async runtime.
//!
//! # Layout
//! - `loader`: `dlopen`, the descriptor checks, and `Instance`, the
//!   safe face of a plugin's entry points (unsafe code lives here...)
//! - `host`: ...and here: the `TwHostApi` table and its C callbacks.
//! - `runtime`: the plugin's thread and lifecycle.
//! - `inbox`: its subscription, grown one filter at a time without loss.
//! - [`status`]: state and counters for `GET /plugins`.
//!
//! The ABI itself is the `tidewater-plugin-api` crate; `docs/plugins.md`
//! walks through writing a driver.

mod host;
mod inbox;
mod loader;
mod runtime;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use status::{PluginState, PluginStatus, PluginStatusSnapshot, PluginStatuses};

use crate::config::PluginConfig;
use crate::services::Services;
use loader::Driver;
use runtime::RunningPlugin;

/// What a plugin library says about itself, for `tidewater plugins inspect`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub driver: String,
    pub version: String,
    pub abi_version: u32,
    pub descriptor_size: u32,
}

/// Loads `path` and reads its descriptor, with the same checks (and the same
/// errors) as at startup, without creating an instance.
pub fn inspect(path: &std::path::Path) -> Result<PluginInfo, PluginError> {
    let name = path
        .file_stem()
        .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned());
    let driver = Driver::load(&name, path)?;
    let (abi_version, descriptor_size) = driver.abi();
    Ok(PluginInfo {
        driver: driver.name(),
        version: driver.version(),
        abi_version,
        descriptor_size,
    })
}

/// Why a plugin could not be started. Every message names the plugin as
/// configured, and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{name}`: library `{}` not found", path.display())]
    FileMissing { name: String, path: PathBuf },
    #[error(
        "plugin `{name}`: `{}` is not a loadable library for this platform \
         (not a shared library, or built for another architecture): {reason}",
        path.display()
    )]
    NotALibrary {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "plugin `{name}`: `{}` is not a Tidewater plugin: it does not export \
         `tidewater_plugin_v1` ({reason})",
        path.display()
    )]
    NotAPlugin {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "plugin `{name}`: ABI version mismatch (host = {host}, plugin = {plugin}) in `{}`; \
         rebuild the plugin against this bridge's tidewater-plugin-api",
        path.display()
    )]
    AbiMismatch {
        name: String,
        path: PathBuf,
        host: u32,
        plugin: u32,
    },
    #[error("plugin `{name}`: invalid descriptor in `{}`: {problem}", path.display())]
    BadDescriptor {
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("plugin `{name}`: create failed: {message}")]
    CreateFailed { name: String, message: String },
    #[error("plugin `{name}`: start failed: {message}")]
    StartFailed { name: String, message: String },
    #[error("plugin `{name}`: cannot start its thread: {source}")]
    Thread {
        name: String,
        source: std::io::Error,
    },
    #[error("plugin `{name}`: its thread ended during startup")]
    Crashed { name: String },
    #[error("plugin `{name}`: create and start took longer than {limit:?}")]
    Timeout { name: String, limit: Duration },
}

/// Every configured plugin: the running ones, and the status of all.
#[derive(Debug)]
pub struct Plugins {
    running: Vec<RunningPlugin>,
    statuses: PluginStatuses,
}

impl Plugins {
    /// No plugins at all.
    pub fn none() -> Self {
        Self {
            running: Vec::new(),
            statuses: Arc::new([]),
        }
    }

    /// Loads and starts each configured plugin in order. A required plugin
    /// that fails stops the ones already started and returns its error; an
    /// optional one is logged, shown as failed, and skipped.
    pub async fn start(configs: &[PluginConfig], services: &Services) -> Result<Self, PluginError> {
        let statuses: PluginStatuses = configs
            .iter()
            .map(|c| Arc::new(PluginStatus::new(&c.name)))
            .collect();
        let mut plugins = Self {
            running: Vec::with_capacity(configs.len()),
            statuses: statuses.clone(),
        };
        for (config, status) in configs.iter().zip(statuses.iter()) {
            match start_one(config, services, status.clone()).await {
                Ok(running) => plugins.running.push(running),
                Err(error) if config.required => {
                    status.fail(error.to_string());
                    plugins.stop().await;
                    return Err(error);
                }
                Err(error) => {
                    status.fail(error.to_string());
                    tracing::warn!(plugin = %config.name, %error, "Optional plugin skipped.");
                }
            }
        }
        Ok(plugins)
    }

    /// Every configured plugin's status, in configuration order.
    pub fn statuses(&self) -> PluginStatuses {
        self.statuses.clone()
    }

    /// Stops every running plugin (all asked at once, then each awaited):
    /// `stop`, join, `destroy`.
    pub async fn stop(self) {
        for plugin in &self.running {
            plugin.cancel();
        }
        for plugin in self.running {
            plugin.stop().await;
        }
    }
}

async fn start_one(
    config: &PluginConfig,
    services: &Services,
    status: Arc<PluginStatus>,
) -> Result<RunningPlugin, PluginError> {
    let driver = Driver::load(&config.name, &config.path)?;
    status.set_version(driver.version());
    runtime::spawn(config, driver, services.clone(), status).await
}
