//! End-to-end tests of device-driver plugins, loaded as real shared
//! libraries through the real loader into a bridge on loopback port 0: the
//! workspace's Rust drivers (built once per run by `plugin_support`), the C
//! driver, and deliberately broken libraries, one per loader error.

mod common;
mod plugin_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{get, Device, SseClient, TIMEOUT};
use plugin_support::{c_compiler, c_plugin, compile_c, rust_plugin, scratch_dir, workspace_root};
use serde_json::{json, Value};
use tidewater::config::PluginConfig;
use tidewater::plugin::{PluginState, PluginStatuses};
use tidewater::{Bridge, StartError};
use tokio_util::sync::CancellationToken;

fn plugin(name: &str, path: &Path, config: Value) -> PluginConfig {
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
struct PluginBridge {
    http: SocketAddr,
    mqtt: SocketAddr,
    statuses: PluginStatuses,
    cancel: CancellationToken,
    stopped: Option<tokio::task::JoinHandle<()>>,
}

impl PluginBridge {
    /// Shuts down (plugins get stop and destroy) and waits for the end.
    async fn shutdown(&mut self) {
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
fn config_with(plugins: Vec<PluginConfig>) -> tidewater::Config {
    let shipped = std::fs::read_to_string(workspace_root().join("bridge.toml"))
        .expect("read the shipped bridge.toml");
    let mut config = common::test_config();
    config.routes = tidewater::config::from_toml_str(&shipped)
        .expect("the shipped bridge.toml is valid")
        .routes;
    config.plugins = plugins;
    config
}

async fn start(plugins: Vec<PluginConfig>) -> PluginBridge {
    let config = config_with(plugins);
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

async fn start_error(plugins: Vec<PluginConfig>) -> String {
    let config = config_with(plugins);
    match Bridge::start(config, CancellationToken::new()).await {
        Ok(_) => panic!("the bridge started despite a broken required plugin"),
        Err(e @ StartError::Plugin(_)) => e.to_string(),
        Err(other) => panic!("expected a plugin error, got: {other}"),
    }
}

/// `GET /plugins`, as JSON.
async fn plugins_json(bridge: &PluginBridge) -> Vec<Value> {
    let response = get(bridge.http, "/plugins").await;
    assert_eq!(response.status, 200);
    match response.json() {
        Value::Array(list) => list,
        other => panic!("GET /plugins is not a list: {other}"),
    }
}

async fn plugin_entry(bridge: &PluginBridge, name: &str) -> Value {
    plugins_json(bridge)
        .await
        .into_iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from GET /plugins"))
}

/// Waits until `GET /plugins` shows `name` in `state`.
async fn wait_for_state(bridge: &PluginBridge, name: &str, state: &str) -> Value {
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

async fn next_event(sse: &mut SseClient) -> common::SseEvent {
    tokio::time::timeout(TIMEOUT, sse.expect_event())
        .await
        .expect("an SSE event in time")
}

// ------------------------------------------------------------ drivers ---

/// sim-thermo's readings reach an SSE client on the shipped routes' topic,
/// as plain numbers, and `GET /plugins` shows it running with its version.
#[tokio::test]
async fn sim_thermo_readings_reach_sse() {
    let library = rust_plugin("sim-thermo");
    let mut bridge = start(vec![plugin(
        "thermo",
        &library,
        json!({"rooms": ["kitchen"], "interval_ms": 50}),
    )])
    .await;
    let mut sse =
        SseClient::connect(bridge.http, "/events?topic=home/kitchen/temperature", &[]).await;
    for _ in 0..2 {
        let event = next_event(&mut sse).await;
        assert_eq!(event.event, "temperature");
        event.data.parse::<f64>().expect("a plain number");
    }
    let entry = plugin_entry(&bridge, "thermo").await;
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"));
    assert!(entry["messages_out"].as_u64() > Some(1), "{entry}");
    bridge.shutdown().await;
    assert_eq!(bridge.statuses[0].state(), PluginState::Stopped);
}

/// sim-light publishes its retained state at start, takes a command from an
/// MQTT device, and its new state reaches both an SSE client and the device.
#[tokio::test]
async fn sim_light_takes_mqtt_commands() {
    let library = rust_plugin("sim-light");
    let mut bridge = start(vec![plugin("lights", &library, json!({"lights": ["1"]}))]).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=home/light/1/state", &[]).await;
    let initial = next_event(&mut sse).await;
    assert_eq!(initial.data, r#"{"on":false,"brightness":100}"#);
    assert_eq!(initial.id, None, "the initial state is retained");

    let mut device = Device::connect(bridge.mqtt, "light-switch").await;
    device.subscribe("home/light/1/state").await;
    let retained = device.next().await;
    assert_eq!(&retained.payload[..], br#"{"on":false,"brightness":100}"#);
    device
        .publish("home/light/1/set", "brightness 80", false)
        .await;

    let changed = next_event(&mut sse).await;
    assert_eq!(changed.event, "light");
    assert_eq!(changed.data, r#"{"on":true,"brightness":80}"#);
    let on_mqtt = device.next().await;
    assert_eq!(&on_mqtt.payload[..], br#"{"on":true,"brightness":80}"#);
    let entry = plugin_entry(&bridge, "lights").await;
    assert_eq!(entry["messages_in"], 1);
    bridge.shutdown().await;
}

/// The C driver, compiled with `cc`, decodes a binary frame from an MQTT
/// device into JSON that reaches an SSE client; a corrupt frame is an error
/// shown in `GET /plugins`, and decoding goes on.
#[tokio::test]
async fn c_vendor_frame_decodes_binary_frames() {
    let Some(cc) = c_compiler() else { return };
    let library = compile_c(
        &cc,
        &workspace_root().join("plugins/vendor-frame/vendor_frame.c"),
        &scratch_dir().join("libvendor_frame.so"),
    );
    let mut bridge = start(vec![plugin("vendor", &library, json!({}))]).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=vendor/%2B/decoded", &[]).await;
    let device = Device::connect(bridge.mqtt, "vendor-sensor").await;
    // 21.50 °C (0x0866), 45.25 %RH (0x11AD), battery 97, then the XOR.
    let mut frame = vec![0xA5, 0x01, 0x08, 0x66, 0x11, 0xAD, 97];
    frame.push(frame.iter().fold(0, |x, b| x ^ b));
    let mut corrupt = frame.clone();
    corrupt[7] ^= 0xFF;
    device.publish("vendor/dev7/raw", corrupt, false).await;
    device.publish("vendor/dev7/raw", frame, false).await;

    let event = next_event(&mut sse).await;
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).expect("JSON"),
        json!({"temperature": 21.5, "humidity": 45.25, "battery": 97})
    );
    let entry = plugin_entry(&bridge, "vendor").await;
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["errors"], 1);
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Bad checksum")),
        "{entry}"
    );
    bridge.shutdown().await;
}

/// modbus-tcp polls a real Modbus server (pymodbus): its decoded, scaled
/// values reach an SSE client as JSON, and an MQTT publish on a `set` topic
/// writes the register, which the next value shows.
#[tokio::test]
async fn modbus_values_reach_sse_and_commands_write_registers() {
    let Some(server) = plugin_support::ModbusServer::start() else {
        return;
    };
    let library = rust_plugin("modbus-tcp");
    let config = json!({
        "address": server.address,
        "interval_ms": 100,
        "topic_prefix": "plant/boiler",
        "registers": [
            {"name": "temperature", "table": "holding", "address": 0, "type": "i16", "scale": 0.1, "unit": "°C"},
            {"name": "flow", "table": "holding", "address": 3, "type": "f32", "unit": "m3/h"},
            {"name": "counter", "table": "input", "address": 0},
            {"name": "setpoint", "table": "holding", "address": 10, "writable": true, "unit": "%"}
        ]
    });
    let mut bridge = start(vec![plugin("boiler", &library, config)]).await;
    let mut sse = SseClient::connect(
        bridge.http,
        "/events?topic=plant/boiler/%2B&format=json",
        &[],
    )
    .await;
    let mut latest = std::collections::HashMap::new();
    while latest.len() < 5 {
        let event: Value = serde_json::from_str(&next_event(&mut sse).await.data).expect("JSON");
        let payload: Value = serde_json::from_str(event["payload"].as_str().expect("text payload"))
            .expect("JSON payload");
        latest.insert(event["topic"].as_str().expect("topic").to_owned(), payload);
    }
    assert_eq!(
        latest["plant/boiler/temperature"],
        json!({"value": 21.5, "unit": "°C"})
    );
    assert_eq!(
        latest["plant/boiler/flow"],
        json!({"value": 3.5, "unit": "m3/h"})
    );
    assert_eq!(latest["plant/boiler/counter"], json!({"value": 1234.0}));
    assert_eq!(
        latest["plant/boiler/setpoint"],
        json!({"value": 50.0, "unit": "%"})
    );
    assert_eq!(latest["plant/boiler/status"], json!({"online": true}));

    let device = Device::connect(bridge.mqtt, "operator").await;
    device
        .publish("plant/boiler/setpoint/set", "65", false)
        .await;
    loop {
        let event: Value = serde_json::from_str(&next_event(&mut sse).await.data).expect("JSON");
        let payload: Value = serde_json::from_str(event["payload"].as_str().unwrap_or("null"))
            .expect("JSON payload");
        if event["topic"] == "plant/boiler/setpoint" && payload["value"] == 65.0 {
            break;
        }
    }
    let entry = plugin_entry(&bridge, "boiler").await;
    assert_eq!(entry["messages_in"], 1, "{entry}");
    bridge.shutdown().await;
}

// -------------------------------------------------------------- loader ---

/// A missing file is refused with the plugin's name and the path.
#[tokio::test]
async fn missing_library_is_named() {
    let error = start_error(vec![plugin(
        "ghost",
        Path::new("/nonexistent/libghost.so"),
        json!({}),
    )])
    .await;
    assert!(error.contains("plugin `ghost`"), "{error}");
    assert!(
        error.contains("/nonexistent/libghost.so` not found"),
        "{error}"
    );
}

/// A file that is not a shared library is refused as not loadable.
#[tokio::test]
async fn text_file_is_not_a_library() {
    let path = scratch_dir().join("libtext.so");
    std::fs::write(&path, "this is not ELF\n").expect("write a text file");
    let error = start_error(vec![plugin("text", &path, json!({}))]).await;
    assert!(error.contains("plugin `text`"), "{error}");
    assert!(error.contains("is not a loadable library"), "{error}");
}

/// A library for another architecture is refused, saying which one.
#[tokio::test]
async fn other_architecture_is_named() {
    let Some(library) = c_plugin("arch_source", include_str!("plugin_support/c/no_symbol.c"))
    else {
        return;
    };
    let mut bytes = std::fs::read(&library).expect("read the library");
    // e_machine, little-endian on every host we build for: claim another
    // architecture than this one.
    let other: u16 = if std::env::consts::ARCH == "aarch64" {
        62
    } else {
        183
    };
    bytes[18..20].copy_from_slice(&other.to_le_bytes());
    let path = scratch_dir().join("libother_arch.so");
    std::fs::write(&path, bytes).expect("write the patched library");
    let error = start_error(vec![plugin("foreign", &path, json!({}))]).await;
    assert!(error.contains("plugin `foreign`"), "{error}");
    assert!(error.contains("is not a loadable library"), "{error}");
    assert!(error.contains("it is built for"), "{error}");
}

/// A library without `tidewater_plugin_v1` is not a Tidewater plugin.
#[tokio::test]
async fn library_without_the_symbol_is_not_a_plugin() {
    let Some(library) = c_plugin("no_symbol", include_str!("plugin_support/c/no_symbol.c")) else {
        return;
    };
    let error = start_error(vec![plugin("nosym", &library, json!({}))]).await;
    assert!(error.contains("plugin `nosym`"), "{error}");
    assert!(
        error.contains("is not a Tidewater plugin: it does not export `tidewater_plugin_v1`"),
        "{error}"
    );
}

/// A descriptor of another ABI version is refused, naming both versions.
#[tokio::test]
async fn abi_mismatch_names_both_versions() {
    let Some(library) = c_plugin("wrong_abi", include_str!("plugin_support/c/wrong_abi.c")) else {
        return;
    };
    let error = start_error(vec![plugin("future", &library, json!({}))]).await;
    assert!(error.contains("plugin `future`"), "{error}");
    assert!(
        error.contains("ABI version mismatch (host = 1, plugin = 2)"),
        "{error}"
    );
}

/// A failing `create` stops startup with the plugin's own message.
#[tokio::test]
async fn create_failure_carries_its_message() {
    let Some(library) = c_plugin(
        "create_fails",
        include_str!("plugin_support/c/create_fails.c"),
    ) else {
        return;
    };
    let error = start_error(vec![plugin("gateway", &library, json!({}))]).await;
    assert_eq!(
        error,
        "plugin `gateway`: create failed: cannot reach the vendor's gateway at 10.0.0.9"
    );
}

/// A Rust driver's configuration error is its `create` message, naming the key.
#[tokio::test]
async fn driver_config_error_names_the_key() {
    let library = rust_plugin("sim-thermo");
    let error = start_error(vec![plugin("thermo", &library, json!({"room": ["x"]}))]).await;
    assert!(
        error.starts_with("plugin `thermo`: create failed:"),
        "{error}"
    );
    assert!(error.contains("room"), "{error}");
}

/// An optional plugin that fails is reported and skipped: the bridge
/// starts, serves, and shows it failed with the reason; the others run.
#[tokio::test]
async fn optional_plugin_failure_is_skipped() {
    let mut ghost = plugin("ghost", Path::new("/nonexistent/libghost.so"), json!({}));
    ghost.required = false;
    let lights = plugin(
        "lights",
        &rust_plugin("sim-light"),
        json!({"lights": ["9"]}),
    );
    let mut bridge = start(vec![ghost, lights]).await;
    let list = plugins_json(&bridge).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "ghost");
    assert_eq!(list[0]["state"], "failed");
    assert!(
        list[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not found")),
        "{}",
        list[0]
    );
    assert_eq!(list[1]["state"], "running");
    bridge.shutdown().await;
}

// ------------------------------------------------------------ runtime ---

/// A plugin that panics in `on_message` is marked failed and receives
/// nothing more, while the bridge keeps serving: SSE keeps flowing, and
/// `GET /plugins` shows the failure and its panic message.
#[tokio::test]
async fn panicking_plugin_fails_alone() {
    let mut bridge = start(vec![plugin(
        "panicky",
        &rust_plugin("test-panic"),
        json!({}),
    )])
    .await;
    let mut echoes = SseClient::connect(bridge.http, "/events?topic=test/panic/out/%2B", &[]).await;
    let mut others = SseClient::connect(bridge.http, "/events?topic=other/%23", &[]).await;
    let device = Device::connect(bridge.mqtt, "panic-trigger").await;

    device.publish("test/panic/in/a", "before", false).await;
    assert_eq!(next_event(&mut echoes).await.data, "before");
    device.publish("test/panic/in/now", "", false).await;
    let entry = wait_for_state(&bridge, "panicky", "failed").await;
    assert!(
        entry["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("asked to panic")),
        "{entry}"
    );

    device.publish("test/panic/in/b", "after", false).await;
    device.publish("other/topic", "still flowing", false).await;
    assert_eq!(next_event(&mut others).await.data, "still flowing");
    let health = get(bridge.http, "/healthz").await;
    assert_eq!(health.status, 200);
    let entry = plugin_entry(&bridge, "panicky").await;
    assert_eq!(
        entry["messages_in"], 1,
        "a failed plugin receives nothing: {entry}"
    );
    bridge.shutdown().await;
    assert_eq!(bridge.statuses[0].state(), PluginState::Failed);
}

/// A filter added while running receives matching messages, and the switch
/// to the wider subscription loses and repeats none of the messages that
/// match the filters held before.
#[tokio::test]
async fn subscribing_later_loses_nothing() {
    let Some(library) = c_plugin("late", include_str!("plugin_support/c/late_subscriber.c")) else {
        return;
    };
    let mut bridge = start(vec![plugin("late", &library, json!({}))]).await;
    let mut echoes = SseClient::connect(bridge.http, "/events?topic=late/echo", &[]).await;
    let device = Device::connect(bridge.mqtt, "late-driver").await;
    // The x's pile up behind the command in the old subscription's queue
    // while the plugin switches to the wider one: each must arrive once.
    device
        .publish("late/control", "sub late/data/#", false)
        .await;
    for i in 0..30 {
        device.publish("late/control", format!("x{i}"), false).await;
    }
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &String| e == "late/control x29") {
        seen.push(next_event(&mut echoes).await.data);
    }
    // x29's echo left after the switch: the new filter is in place.
    device.publish("late/data/1", "y", false).await;
    seen.push(next_event(&mut echoes).await.data);
    let expected: Vec<String> = std::iter::once("late/control sub late/data/#".to_owned())
        .chain((0..30).map(|i| format!("late/control x{i}")))
        .chain(std::iter::once("late/data/1 y".to_owned()))
        .collect();
    assert_eq!(seen, expected);
    bridge.shutdown().await;
}

/// A required plugin that fails stops the real binary with a non-zero exit
/// and an error naming the plugin.
#[test]
fn required_plugin_failure_fails_the_binary() {
    let dir = scratch_dir();
    let config = dir.join("broken-plugin.toml");
    std::fs::write(
        &config,
        "[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[plugins]]\nname = \"ghost\"\npath = \"/nonexistent/libghost.so\"\n",
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .arg("--config")
        .arg(&config)
        .env_remove("TIDEWATER_HTTP__LISTEN")
        .env_remove("TIDEWATER_MQTT__LISTEN")
        .output()
        .expect("run tidewater");
    assert!(
        !output.status.success(),
        "started despite a missing required plugin"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: plugin `ghost`: library `/nonexistent/libghost.so` not found"),
        "{stderr}"
    );
}
