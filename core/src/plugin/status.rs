//! What the bridge knows about each configured plugin, for `GET /plugins`
//! and the logs: its state, its counters and its last error. Shared between
//! the plugin's thread, its host callbacks (any thread) and HTTP handlers.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The life of a plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Library loaded and instance created; not started yet.
    Loaded,
    /// Started and receiving messages.
    Running,
    /// It failed to load, create or start, or it panicked: it receives
    /// nothing more and its calls to the host are refused.
    Failed,
    /// Stopped and destroyed at shutdown.
    Stopped,
}

impl PluginState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Loaded,
            1 => Self::Running,
            2 => Self::Failed,
            _ => Self::Stopped,
        }
    }
}

/// Live status of one plugin.
#[derive(Debug)]
pub struct PluginStatus {
    name: String,
    version: Mutex<Option<String>>,
    state: AtomicU8,
    /// Messages delivered to `on_message` that it accepted.
    pub(super) messages_in: AtomicU64,
    /// Messages the plugin published that the broker's queue accepted.
    pub(super) messages_out: AtomicU64,
    /// Publishes refused because the broker's ingress queue was full.
    pub(super) publishes_busy: AtomicU64,
    /// `on_message` calls that returned an error status.
    pub(super) errors: AtomicU64,
    /// Times the plugin fell `inbox_capacity` messages behind and was
    /// re-subscribed from its last message (replayed from the ring).
    pub(super) inbox_overflows: AtomicU64,
    /// Times messages were lost for good: the ring no longer held what an
    /// overflowing plugin had missed.
    pub(super) gaps: AtomicU64,
    /// ERROR-level lines the plugin logged, to tell whether a failing call
    /// explained itself.
    pub(super) errors_logged: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A point-in-time copy of [`PluginStatus`], as `GET /plugins` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStatusSnapshot {
    pub name: String,
    pub version: Option<String>,
    pub state: PluginState,
    pub messages_in: u64,
    pub messages_out: u64,
    pub publishes_busy: u64,
    pub errors: u64,
    pub inbox_overflows: u64,
    pub gaps: u64,
    pub last_error: Option<String>,
}

/// Every configured plugin, in configuration order.
pub type PluginStatuses = Arc<[Arc<PluginStatus>]>;

impl PluginStatus {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: Mutex::new(None),
            state: AtomicU8::new(PluginState::Loaded as u8),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            publishes_busy: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            inbox_overflows: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            errors_logged: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> PluginState {
        PluginState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(super) fn set_state(&self, state: PluginState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Marks the plugin failed with `error`; a failure is final.
    pub(super) fn fail(&self, error: impl Into<String>) {
        self.set_last_error(error);
        self.set_state(PluginState::Failed);
    }

    /// Whether the host still accepts the plugin's calls.
    pub(super) fn accepting(&self) -> bool {
        matches!(self.state(), PluginState::Loaded | PluginState::Running)
    }

    pub(super) fn set_version(&self, version: String) {
        *self.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
    }

    pub(super) fn set_last_error(&self, error: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.into());
    }

    pub fn snapshot(&self) -> PluginStatusSnapshot {
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PluginStatusSnapshot {
            name: self.name.clone(),
            version: self
                .version
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            state: self.state(),
            messages_in: count(&self.messages_in),
            messages_out: count(&self.messages_out),
            publishes_busy: count(&self.publishes_busy),
            errors: count(&self.errors),
            inbox_overflows: count(&self.inbox_overflows),
            gaps: count(&self.gaps),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// States serialise as the lowercase words `GET /plugins` documents.
    #[test]
    fn states_serialise_lowercase() {
        let json = serde_json::to_string(&[
            PluginState::Loaded,
            PluginState::Running,
            PluginState::Failed,
            PluginState::Stopped,
        ])
        .expect("serialise");
        assert_eq!(json, r#"["loaded","running","failed","stopped"]"#);
    }

    /// A failed plugin no longer has its host calls accepted, and keeps its error.
    #[test]
    fn failure_closes_the_host_and_keeps_the_error() {
        let status = PluginStatus::new("p");
        assert!(status.accepting());
        status.fail("boom");
        assert!(!status.accepting());
        let snapshot = status.snapshot();
        assert_eq!(snapshot.state, PluginState::Failed);
        assert_eq!(snapshot.last_error.as_deref(), Some("boom"));
    }
}
