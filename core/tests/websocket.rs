//! WebSocket sessions end to end: the JSON protocol against a real bridge,
//! with rumqttc devices, SSE streams and (in CI) MQTT.js over WebSocket.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use common::{
    eventually, post, start, start_with, ws_close_code, ws_connect, ws_next, ws_request,
    ws_request_collecting, Device, SseClient, TIMEOUT,
};

/// A wildcard subscription is acknowledged and receives device publishes
/// with ids, topics and payloads.
#[tokio::test]
async fn wildcard_subscribe_receives_device_publishes() {
    let bridge = start().await;
    let mut ws = ws_connect(bridge.ws).await;
    let ack = ws_request(
        &mut ws,
        json!({"op":"subscribe","topics":["home/+/temperature"]}),
        "r1",
    )
    .await;
    assert_eq!(ack, json!({"op":"ack","ref":"r1"}));
    let device = Device::connect(bridge.mqtt, "thermo").await;
    device
        .publish("home/kitchen/temperature", "19.5", false)
        .await;
    device.publish("home/kitchen/humidity", "40", false).await;
    device.publish("home/hall/temperature", "18", false).await;
    for (topic, payload) in [
        ("home/kitchen/temperature", "19.5"),
        ("home/hall/temperature", "18"),
    ] {
        let message = ws_next(&mut ws).await;
        assert_eq!(message["op"], "message");
        assert_eq!(message["topic"], topic);
        assert_eq!(message["payload"], payload);
        assert_eq!(message["encoding"], "utf8");
        assert!(message["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    bridge.shutdown().await;
}

/// A WebSocket publish reaches an MQTT device and an SSE stream, and the
/// SSE id equals the WebSocket id of the same message.
#[tokio::test]
async fn publish_reaches_mqtt_and_sse_with_the_same_ids() {
    let bridge = start().await;
    let mut device = Device::connect(bridge.mqtt, "light").await;
    device.subscribe("home/light/+/set").await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=home/light/%2B/set", &[]).await;
    let mut ws = ws_connect(bridge.ws).await;
    ws_request(
        &mut ws,
        json!({"op":"subscribe","topics":["home/light/+/set"]}),
        "s",
    )
    .await;
    let ack = ws_request(
        &mut ws,
        json!({"op":"publish","topic":"home/light/1/set","payload":"b24=","encoding":"base64","qos":1}),
        "p",
    )
    .await;
    assert_eq!(ack["op"], "ack");
    assert_eq!(&device.next().await.payload[..], b"on");
    let event = sse.expect_event().await;
    assert_eq!(event.data, "on");
    let echoed = ws_next(&mut ws).await;
    assert_eq!(echoed["payload"], "on");
    assert_eq!(
        echoed["id"].as_str(),
        event.id.as_deref(),
        "one id space for SSE and WebSocket"
    );
    bridge.shutdown().await;
}

/// Resuming with `since` after a dropped connection, while publishes go on,
/// loses nothing and duplicates nothing.
#[tokio::test]
async fn since_after_a_dropped_connection_loses_and_duplicates_nothing() {
    let bridge = start().await;
    let device = Device::connect(bridge.mqtt, "counter").await;
    let publisher = device.count_in_background("count", 300);
    let mut seen: Vec<u32> = Vec::new();
    let mut since = serde_json::Value::Null;
    loop {
        let mut ws = ws_connect(bridge.ws).await;
        let mut request = json!({"op":"subscribe","topics":["count"]});
        if !since.is_null() {
            request["since"] = since.clone();
        }
        ws_request(&mut ws, request, "sub").await;
        for _ in 0..60 {
            let message = ws_next(&mut ws).await;
            assert_eq!(message["op"], "message", "{message}");
            seen.push(
                message["payload"]
                    .as_str()
                    .and_then(|p| p.parse().ok())
                    .expect("number"),
            );
            since = message["id"].clone();
            if seen.last() == Some(&299) {
                break;
            }
        }
        if seen.last() == Some(&299) {
            break;
        }
    }
    publisher.await.expect("publisher");
    let expected: Vec<u32> = (seen[0]..300).collect();
    assert_eq!(seen, expected, "every message once, in order");
    bridge.shutdown().await;
}

/// Every kind of bad input gets an error naming the problem, and the session
/// keeps working afterwards.
#[tokio::test]
async fn bad_input_gets_errors_and_the_session_stays_open() {
    let bridge = start().await;
    let mut ws = ws_connect(bridge.ws).await;
    let cases = [
        ("not json", "invalid-json"),
        (r#"{"op":"dance","ref":"x"}"#, "unknown-op"),
        (r#"{"op":"subscribe","ref":"x"}"#, "invalid-request"),
        (
            r#"{"op":"subscribe","topics":"a","ref":"x"}"#,
            "invalid-request",
        ),
        (
            r#"{"op":"subscribe","topics":["a/#/b"],"ref":"x"}"#,
            "invalid-filter",
        ),
        (
            r#"{"op":"subscribe","topics":["a"],"since":"zzz","ref":"x"}"#,
            "malformed-id",
        ),
        (
            r#"{"op":"publish","topic":"a/+","payload":"x","ref":"x"}"#,
            "invalid-topic",
        ),
        (
            r#"{"op":"publish","topic":"a","payload":"%%%","encoding":"base64","ref":"x"}"#,
            "invalid-payload",
        ),
    ];
    for (text, code) in cases {
        ws.send(Message::Text(text.into())).await.expect("send");
        let reply = ws_next(&mut ws).await;
        assert_eq!(reply["op"], "error", "{text}");
        assert_eq!(reply["code"], code, "{text}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send binary");
    assert_eq!(ws_next(&mut ws).await["code"], "binary-not-supported");
    let bad_filter = ws_request(&mut ws, json!({"op":"subscribe","topics":["a/b+c"]}), "f").await;
    assert_eq!(bad_filter["filter"], "a/b+c");
    assert_eq!(bad_filter["rule"], "wildcard-not-whole-level");
    assert_eq!(
        ws_request(&mut ws, json!({"op":"ping"}), "alive").await,
        json!({"op":"pong","ref":"alive"})
    );
    bridge.shutdown().await;
}

/// A frame over `max_message_bytes` closes the session with 1009.
#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let bridge = start_with(|c| c.websocket.max_message_bytes = 1024).await;
    let mut ws = ws_connect(bridge.ws).await;
    let big = json!({"op":"publish","topic":"a","payload":"x".repeat(4096)}).to_string();
    ws.send(Message::Text(big.into())).await.expect("send");
    assert_eq!(ws_close_code(&mut ws).await, 1009);
    bridge.shutdown().await;
}

/// Unsubscribing stops deliveries for that filter only.
#[tokio::test]
async fn unsubscribe_stops_that_filter() {
    let bridge = start().await;
    let mut ws = ws_connect(bridge.ws).await;
    ws_request(&mut ws, json!({"op":"subscribe","topics":["a","b"]}), "s").await;
    ws_request(&mut ws, json!({"op":"unsubscribe","topics":["a"]}), "u").await;
    assert_eq!(
        post(bridge.http, "/publish/a?qos=1", b"1").await.status,
        200
    );
    assert_eq!(
        post(bridge.http, "/publish/b?qos=1", b"2").await.status,
        200
    );
    let message = ws_next(&mut ws).await;
    assert_eq!(message["topic"], "b");
    bridge.shutdown().await;
}

/// A session that stops reading is closed (1013) and counted, while a
/// reading session keeps receiving everything.
#[tokio::test]
async fn a_stalled_session_is_closed_while_a_fast_one_keeps_receiving() {
    let bridge = start_with(|c| {
        c.websocket.queue_capacity = 64;
        // The message count is the bound under test here.
        c.websocket.queue_max_bytes = 64 * 64 * 1024;
    })
    .await;
    let mut stalled = ws_connect(bridge.ws).await;
    ws_request(
        &mut stalled,
        json!({"op":"subscribe","topics":["flood"]}),
        "s",
    )
    .await;
    let mut reader = ws_connect(bridge.ws).await;
    ws_request(
        &mut reader,
        json!({"op":"subscribe","topics":["flood"]}),
        "s",
    )
    .await;
    let device = Device::connect(bridge.mqtt, "flood").await;
    let payload = "x".repeat(32 * 1024);
    let total = 400;
    let publisher = {
        let client = device.client.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            for _ in 0..total {
                client
                    .publish("flood", rumqttc::QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .expect("publish");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for _ in 0..total {
        assert_eq!(
            ws_next(&mut reader).await["payload"].as_str().map(str::len),
            Some(payload.len())
        );
    }
    publisher.await.expect("publisher");
    eventually("the stalled session is dropped", || {
        bridge.stats().slow_consumer_disconnects >= 1
    })
    .await;
    // What the stalled client finds once it reads again: its backlog, then 1013.
    let code = tokio::time::timeout(TIMEOUT, async {
        loop {
            match stalled.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close in time");
    assert_eq!(code, 1013);
    bridge.shutdown().await;
}

/// Only the configured path upgrades, and only allowed origins when set.
#[tokio::test]
async fn path_and_origin_are_checked() {
    let bridge =
        start_with(|c| c.websocket.allowed_origins = vec!["https://dash.example".into()]).await;
    let wrong_path = tokio_tungstenite::connect_async(format!("ws://{}/nope", bridge.ws)).await;
    assert!(
        matches!(wrong_path, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 404)
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            bridge.ws
        ))
        .expect("request");
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().expect("header"));
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 403)
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            bridge.ws
        ))
        .expect("request");
    request
        .headers_mut()
        .insert("origin", "https://dash.example".parse().expect("header"));
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
    bridge.shutdown().await;
}

/// A client that neither sends nor answers pings is closed after the idle
/// timeout.
#[tokio::test]
async fn silent_clients_are_closed_after_the_idle_timeout() {
    let bridge = start_with(|c| {
        c.websocket.ping_interval_secs = 1;
        c.websocket.idle_timeout_secs = 2;
    })
    .await;
    let mut ws = ws_connect(bridge.ws).await;
    // Not polling the stream means the client library answers no pings.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(ws_close_code(&mut ws).await, 1008);
    bridge.shutdown().await;
}

/// Shutdown closes open sessions with 1001 (going away).
#[tokio::test]
async fn shutdown_closes_sessions_with_1001() {
    let bridge = start().await;
    let mut ws = ws_connect(bridge.ws).await;
    ws_request(&mut ws, json!({"op":"ping"}), "p").await;
    let reader = tokio::spawn(async move { ws_close_code(&mut ws).await });
    bridge.shutdown().await;
    assert_eq!(reader.await.expect("reader"), 1001);
}

/// Every client kind sees every other's publishes: an MQTT device, MQTT.js
/// over WebSocket (Node), a JSON-WebSocket client and an SSE client that
/// publishes with HTTP POST. Needs `node` and `core/tests/js/node_modules`
/// (`npm ci --prefix core/tests/js`); skipped without them unless CI is set.
#[tokio::test]
async fn every_client_kind_sees_every_other() {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok || !js.join("node_modules/mqtt").exists() {
        let reason =
            "node or the npm package `mqtt` is missing (run `npm ci --prefix core/tests/js`)";
        assert!(std::env::var_os("CI").is_none(), "CI is set but {reason}");
        eprintln!("skipping every_client_kind_sees_every_other: {reason}");
        return;
    }
    let bridge =
        start_with(|c| c.mqtt.websocket_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let mqtt_ws = bridge.mqtt_ws.expect("MQTT over WebSocket listener");
    let mut device = Device::connect(bridge.mqtt, "device").await;
    device.subscribe("chat/#").await;
    let mut ws = ws_connect(bridge.ws).await;
    ws_request(&mut ws, json!({"op":"subscribe","topics":["chat/#"]}), "s").await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=chat/%23", &[]).await;

    let mut node = tokio::process::Command::new("node")
        .arg(js.join("mqttjs-exchange.mjs"))
        .args([
            &format!("ws://{mqtt_ws}/mqtt"),
            "chat/#",
            "chat/mqttjs",
            "from mqtt.js",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let stdout = node.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("node in time");
    assert_eq!(first.expect("read").as_deref(), Some("subscribed"));

    device.publish("chat/device", "from device", false).await;
    let mut ws_early = Vec::new();
    let publish = json!({"op":"publish","topic":"chat/ws","payload":"from ws","qos":1});
    ws_request_collecting(&mut ws, publish, "p", &mut ws_early).await;
    assert_eq!(
        post(bridge.http, "/publish/chat/sse?qos=1", b"from sse")
            .await
            .status,
        200
    );

    let all = ["chat/device", "chat/mqttjs", "chat/sse", "chat/ws"];
    let mut node_saw = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("node output")
    {
        let message: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        node_saw.push(message["topic"].as_str().unwrap_or_default().to_owned());
    }
    let status = tokio::time::timeout(TIMEOUT, node.wait())
        .await
        .expect("node exits")
        .expect("status");
    assert!(status.success(), "MQTT.js client failed");
    node_saw.sort();
    assert_eq!(node_saw, all);

    let mut device_saw = Vec::new();
    let mut ws_messages = ws_early;
    while ws_messages.len() < 4 {
        ws_messages.push(ws_next(&mut ws).await);
    }
    let mut ws_saw: Vec<String> = ws_messages
        .iter()
        .map(|m| m["topic"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut sse_saw = Vec::new();
    for _ in 0..4 {
        device_saw.push(device.next().await.topic);
        sse_saw.push(sse.expect_event().await.data);
    }
    device_saw.sort();
    ws_saw.sort();
    sse_saw.sort();
    assert_eq!(device_saw, all);
    assert_eq!(ws_saw, all);
    assert_eq!(
        sse_saw,
        ["from device", "from mqtt.js", "from sse", "from ws"]
    );
    bridge.shutdown().await;
}
