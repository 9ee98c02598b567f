//! `POST /publish/{topic}` end to end: into the embedded broker, out to MQTT
//! devices and SSE streams.

mod common;

use common::{post, request, start, start_with, Device, SseClient};

/// A POST reaches an MQTT device and an SSE stream, answering 202 with a
/// JSON receipt.
#[tokio::test]
async fn post_reaches_mqtt_and_sse_subscribers() {
    let bridge = start().await;
    let mut device = Device::connect(bridge.mqtt, "light-1").await;
    device.subscribe("home/#").await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=home/light/%2B/set", &[]).await;

    let response = post(bridge.http, "/publish/home/light/1/set", b"on").await;
    assert_eq!(response.status, 202);
    let receipt = response.json();
    assert_eq!(receipt["topic"], "home/light/1/set");
    assert_eq!(receipt["bytes"], 2);

    let message = device.next().await;
    assert_eq!(message.topic, "home/light/1/set");
    assert_eq!(&message.payload[..], b"on");
    assert_eq!(sse.expect_event().await.data, "on");
    bridge.shutdown().await;
}

/// With `qos=1` the answer is 200, sent once the broker holds the message,
/// so a subscriber can rely on it being routed.
#[tokio::test]
async fn qos1_is_confirmed_by_the_broker() {
    let bridge = start().await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=cmd", &[]).await;
    let response = post(bridge.http, "/publish/cmd?qos=1", b"go").await;
    assert_eq!(
        response.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["qos"], 1);
    assert_eq!(sse.expect_event().await.data, "go");
    bridge.shutdown().await;
}

/// `retain=true` stores the value in the broker: a device and an SSE stream
/// that subscribe afterwards both get it first.
#[tokio::test]
async fn retained_publish_is_delivered_to_later_subscribers() {
    let bridge = start().await;
    let response = post(
        bridge.http,
        "/publish/home/light/7/state?retain=true&qos=1",
        b"on",
    )
    .await;
    assert_eq!(response.status, 200);

    let mut device = Device::connect(bridge.mqtt, "late").await;
    device.subscribe("home/light/7/state").await;
    let message = device.next().await;
    assert!(message.retain, "MQTT subscribers see the retain flag");
    assert_eq!(&message.payload[..], b"on");

    // Routed (and so in the log's store) before the stream subscribes: it
    // is state for it, not a live message.
    common::eventually("the publish routed", || bridge.stats().messages_routed >= 1).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=home/light/7/state", &[]).await;
    let event = sse.expect_event().await;
    assert_eq!(event.data, "on");
    assert_eq!(event.id, None);
    bridge.shutdown().await;
}

/// Bad topics, parameters and sizes are refused with a status and a JSON
/// body that names the problem; the bridge keeps serving.
#[tokio::test]
async fn bad_publishes_are_refused() {
    let bridge = start_with(|c| c.http.max_publish_bytes = 16).await;
    let cases: [(&str, &[u8], u16, &str); 9] = [
        ("/publish/home/%2B/set", b"x", 400, "invalid-topic"),
        ("/publish/home/%23", b"x", 400, "invalid-topic"),
        ("/publish/home/+/set", b"x", 400, "invalid-topic"),
        ("/publish/", b"x", 400, "invalid-topic"),
        ("/publish", b"x", 400, "invalid-topic"),
        ("/publish/%FF", b"x", 400, "invalid-topic"),
        ("/publish/a?qos=2", b"x", 400, "invalid-qos"),
        ("/publish/a?retain=maybe", b"x", 400, "invalid-retain"),
        ("/publish/a", &[b'x'; 17], 413, "payload-too-large"),
    ];
    for (path, body, status, code) in cases {
        let response = post(bridge.http, path, body).await;
        assert_eq!(response.status, status, "{path}");
        assert_eq!(response.json()["error"], code, "{path}");
    }
    let wildcard = post(bridge.http, "/publish/a/%23", b"x").await.json();
    assert_eq!(wildcard["rule"], "wildcard-in-topic");
    let unknown = request(bridge.http, "POST", "/publish/a?ttl=1", &[], b"x").await;
    assert_eq!(unknown.json()["error"], "unknown-parameter");
    assert_eq!(
        post(bridge.http, "/publish/ok", &[b'x'; 16]).await.status,
        202
    );
    bridge.shutdown().await;
}

/// An empty body is a valid (empty) message.
#[tokio::test]
async fn empty_body_is_published() {
    let bridge = start().await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=ping", &[]).await;
    assert_eq!(post(bridge.http, "/publish/ping", b"").await.status, 202);
    assert_eq!(sse.expect_event().await.data, "");
    bridge.shutdown().await;
}
