//! End-to-end tests of the drivers and of the plugin runtime: each real
//! shared library (the workspace's Rust drivers, built once per run by
//! `plugin_support`, and C plugins compiled with `cc`) is loaded through the
//! real loader into a bridge on loopback port 0. Load errors are in
//! `plugin_loader.rs`.

mod common;
mod plugin_support;

use common::{get, Device, SseClient};
use plugin_support::bridge::{next_event, plugin, plugin_entry, start, wait_for_state};
use plugin_support::{c_compiler, c_plugin, compile_c, rust_plugin, scratch_dir, workspace_root};
use serde_json::{json, Value};
use tidewater::plugin::PluginState;

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
    // Once the driver's first publish is routed it is state: a stream
    // opened after that gets it as the retained value (before, live).
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let health = common::get(bridge.http, "/healthz").await.json();
        if health["stats"]["messages_routed"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the driver's state was never routed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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

/// A command to a light the sim-light driver serves is answered by the
/// driver with the light's new state (on `{topic}/reply`), and a command it
/// cannot follow with an error, at once rather than at the timeout.
#[tokio::test]
async fn sim_light_answers_commands() {
    let library = rust_plugin("sim-light");
    let mut bridge = start(vec![plugin("lights", &library, json!({"lights": ["1"]}))]).await;
    wait_for_state(&bridge, "lights", "running").await;
    let answer = common::request(
        bridge.http,
        "POST",
        "/command/home/light/1/set?timeout_ms=3000",
        &[],
        b"brightness 40",
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.body, br#"{"on":true,"brightness":40}"#);
    let started = std::time::Instant::now();
    let refused = common::request(
        bridge.http,
        "POST",
        "/command/home/light/1/set?timeout_ms=3000",
        &[],
        b"purple",
    )
    .await;
    assert_eq!(refused.status, 200);
    assert!(refused.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("purple")));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
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
/// writes the register, which the next value shows; a command is answered
/// once the device acknowledged the write, and a command it cannot carry
/// out at once, with why.
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
            {"name": "setpoint", "table": "holding", "address": 10, "writable": true, "unit": "%"},
            {"name": "missing", "table": "holding", "address": 5000, "writable": true}
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

    let command = |path: &'static str, body: &'static [u8]| {
        let http = bridge.http;
        async move { common::request(http, "POST", path, &[], body).await }
    };
    let written = command("/command/plant/boiler/setpoint/set?timeout_ms=5000", b"70").await;
    assert_eq!(
        written.status,
        200,
        "{}",
        String::from_utf8_lossy(&written.body)
    );
    assert_eq!(written.json(), json!({"ok": true, "value": 70.0}));
    let refused = command(
        "/command/plant/boiler/setpoint/set?timeout_ms=5000",
        b"warm",
    )
    .await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.json()["ok"], false, "{}", refused.json());
    assert!(refused.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("expected a number")));
    // The device refuses a write past its registers: the answer carries
    // the Modbus exception.
    let exception = command("/command/plant/boiler/missing/set?timeout_ms=5000", b"1").await;
    assert_eq!(exception.status, 200);
    assert_eq!(exception.json()["ok"], false, "{}", exception.json());
    assert!(
        exception.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("exception")),
        "{}",
        exception.json()
    );
    bridge.shutdown().await;
}

// ------------------------------------------------------------ runtime ---

/// A driver reports the devices behind it (the `presence` host call): each
/// is retained on `$tidewater/presence/<plugin>/<device>`, named with its
/// driver, and listed by `GET /devices`.
#[tokio::test]
async fn drivers_report_the_devices_behind_them() {
    let library = rust_plugin("sim-light");
    let mut config = plugin_support::bridge::config_with(vec![plugin(
        "lights",
        &library,
        json!({"lights": ["1", "porch"]}),
    )]);
    config.presence.enabled = true;
    let mut bridge = plugin_support::bridge::start_config(config).await;
    let mut states = SseClient::connect(
        bridge.http,
        "/events?topic=%24tidewater%2Fpresence%2Flights%2F%2B",
        &[],
    )
    .await;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 2 {
        let state: Value = serde_json::from_str(&next_event(&mut states).await.data).expect("JSON");
        assert_eq!(state["driver"], "lights", "{state}");
        seen.insert(
            state["client_id"].as_str().unwrap_or_default().to_owned(),
            state["online"].clone(),
        );
    }
    assert_eq!(seen["1"], true);
    assert_eq!(seen["porch"], true);
    let devices = get(bridge.http, "/devices").await.json();
    let listed: Vec<_> = devices
        .as_array()
        .expect("a list")
        .iter()
        .filter(|d| d["driver"] == "lights")
        .map(|d| d["client_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(listed, ["1", "porch"]);
    bridge.shutdown().await;
}

/// Each driver's state is retained on `$tidewater/drivers/<name>`: running
/// once started, failed with its last error when it panics.
#[tokio::test]
async fn drivers_publish_their_state() {
    let mut config = plugin_support::bridge::config_with(vec![plugin(
        "panicky",
        &rust_plugin("test-panic"),
        json!({}),
    )]);
    config.presence.enabled = true;
    let mut bridge = plugin_support::bridge::start_config(config).await;
    let mut states = SseClient::connect(
        bridge.http,
        "/events?topic=%24tidewater%2Fdrivers%2Fpanicky",
        &[],
    )
    .await;
    let state = |event: common::SseEvent| -> Value {
        serde_json::from_str(&event.data).expect("a driver state is JSON")
    };
    let mut running = state(next_event(&mut states).await);
    while running["state"] != "running" {
        running = state(next_event(&mut states).await);
    }
    assert_eq!(running["name"], "panicky");
    let device = Device::connect(bridge.mqtt, "panic-trigger").await;
    device.publish("test/panic/in/now", "", false).await;
    // The error may be seen a moment before the state it ends in.
    let mut failed = state(next_event(&mut states).await);
    while failed["state"] == "running" {
        failed = state(next_event(&mut states).await);
    }
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("asked to panic")),
        "{failed}"
    );
    bridge.shutdown().await;
}

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
