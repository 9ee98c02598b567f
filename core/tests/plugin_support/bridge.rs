//! A bridge with plugins for the end-to-end tests: started from the test
//! configuration plus the shipped routes, with `GET /plugins` helpers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tidewater::config::PluginConfig;
use tidewater::plugin::PluginStatuses;
use tidewater::{Bridge, StartError};
use tokio_util::sync::CancellationToken;

use super::workspace_root;
use crate::common::{self, get, SseClient, TIMEOUT};

pub fn plugin(name: &str, path: &Path, config: Value) -> PluginConfig {
    let Value::Object(config) = config else {
        panic!("a plugin's config is a JSON object");
    };
    PluginConfig {
        name: name.into(),
        path: path.to_path_buf(),
        required: true,
        inbox_capacity: 1_024,
        config,
    }
}

/// A bridge with plugins, keeping their statuses for after shutdown.
pub struct PluginBridge {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub statuses: PluginStatuses,
    cancel: CancellationToken,
    stopped: Option<tokio::task::JoinHandle<()>>,
}

impl PluginBridge {
    /// Shuts down (plugins get stop and destroy) and waits for the end.
    pub async fn shutdown(&mut self) {
        self.cancel.cancel();
        if let Some(stopped) = self.stopped.take() {
            tokio::time::timeout(TIMEOUT, stopped)
                .await
                .expect("bridge stops in time")
                .expect("stop task");
        }
    }
}

impl Drop for PluginBridge {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The test configuration with the shipped `bridge.toml`'s routes, which
/// the drivers' topics are meant to match.
pub fn config_with(plugins: Vec<PluginConfig>) -> tidewater::Config {
    let shipped = std::fs::read_to_string(workspace_root().join("bridge.toml"))
        .expect("read the shipped bridge.toml");
    let mut config = common::test_config();
    config.routes = tidewater::config::from_toml_str(&shipped)
        .expect("the shipped bridge.toml is valid")
        .routes;
    config.plugins = plugins;
    config
}

pub async fn start(plugins: Vec<PluginConfig>) -> PluginBridge {
    start_config(config_with(plugins)).await
}

/// A bridge from `config` (made with [`config_with`]).
pub async fn start_config(config: tidewater::Config) -> PluginBridge {
    let cancel = CancellationToken::new();
    let bridge = Bridge::start(config, cancel.clone())
        .await
        .expect("bridge starts with its plugins");
    PluginBridge {
        http: bridge.http_addr,
        mqtt: bridge.mqtt_addr,
        statuses: bridge.plugins(),
        cancel,
        stopped: Some(tokio::spawn(bridge.stopped())),
    }
}

pub async fn start_error(plugins: Vec<PluginConfig>) -> String {
    let config = config_with(plugins);
    match Bridge::start(config, CancellationToken::new()).await {
        Ok(_) => panic!("the bridge started despite a broken required plugin"),
        Err(e @ StartError::Plugin(_)) => e.to_string(),
        Err(other) => panic!("expected a plugin error, got: {other}"),
    }
}

/// `GET /plugins`, as JSON.
pub async fn plugins_json(bridge: &PluginBridge) -> Vec<Value> {
    let response = get(bridge.http, "/plugins").await;
    assert_eq!(response.status, 200);
    match response.json() {
        Value::Array(list) => list,
        other => panic!("GET /plugins is not a list: {other}"),
    }
}

pub async fn plugin_entry(bridge: &PluginBridge, name: &str) -> Value {
    plugins_json(bridge)
        .await
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from GET /plugins"))
}

/// Waits until `GET /plugins` shows `name` in `state`.
pub async fn wait_for_state(bridge: &PluginBridge, name: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let entry = plugin_entry(bridge, name).await;
        if entry["state"] == state {
            return entry;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {state}: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn next_event(sse: &mut SseClient) -> common::SseEvent {
    tokio::time::timeout(TIMEOUT, sse.expect_event())
        .await
        .expect("an SSE event in time")
}
