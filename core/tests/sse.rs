//! SSE end to end: a real bridge on loopback, rumqttc devices publishing,
//! and a client reading the raw `text/event-stream`.

mod common;

use std::time::Duration;

use common::{eventually, get, start, start_with, Device, SseClient, SseItem, TIMEOUT};

/// A device's publish arrives as an SSE event with an id, the routed event
/// name and the payload, after a `retry:` line, with the streaming headers.
#[tokio::test]
async fn device_publish_reaches_sse_with_id_event_and_data() {
    let bridge = start_with(|c| {
        c.routes.push(tidewater::config::Route {
            filter: "home/+/temperature".into(),
            event: "temperature".into(),
        })
    })
    .await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=home/%2B/temperature", &[]).await;
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert_eq!(
        sse.next_item().await,
        Some(SseItem::Retry(2000)),
        "retry comes first"
    );

    let device = Device::connect(bridge.mqtt, "sensor").await;
    device
        .publish("home/livingroom/temperature", "21.5", false)
        .await;
    let event = sse.expect_event().await;
    assert_eq!(event.event, "temperature");
    assert_eq!(event.data, "21.5");
    assert!(event.id.is_some(), "live messages carry an id");
    bridge.shutdown().await;
}

/// `+`, `#` and several `topic` parameters select exactly the matching
/// topics, each message once even when two filters match it.
#[tokio::test]
async fn wildcard_and_multiple_filters() {
    let bridge = start().await;
    let mut sse = SseClient::connect(
        bridge.http,
        "/events?topic=home/+/temperature&topic=garden/%23&topic=home/kitchen/temperature",
        &[],
    )
    .await;
    let device = Device::connect(bridge.mqtt, "multi").await;
    for (topic, payload) in [
        ("home/kitchen/temperature", "1"),
        ("home/kitchen/humidity", "skip"),
        ("garden", "2"),
        ("garden/soil/moisture", "3"),
        ("home/a/b/temperature", "skip"),
        ("last/marker", "skip"),
    ] {
        device.publish(topic, payload, false).await;
    }
    device.publish("garden/end", "4", false).await;
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(sse.expect_event().await.data);
    }
    assert_eq!(got, vec!["1", "2", "3", "4"]);
    bridge.shutdown().await;
}

/// A new stream first receives the retained value of each matching topic
/// (without an id, flagged retained in JSON), then live messages.
#[tokio::test]
async fn retained_values_come_first() {
    let bridge = start().await;
    let device = Device::connect(bridge.mqtt, "lights").await;
    device.publish("home/light/1/state", "on", true).await;
    device.publish("home/light/2/state", "off", true).await;
    device
        .publish("home/light/3/state", "not-retained", false)
        .await;
    // Wait until the broker has routed all three.
    eventually("three messages routed", || {
        bridge.stats().messages_routed >= 3
    })
    .await;

    let mut sse = SseClient::connect(
        bridge.http,
        "/events?topic=home/light/%2B/state&format=json",
        &[],
    )
    .await;
    let mut retained = Vec::new();
    for _ in 0..2 {
        let event = sse.expect_event().await;
        assert_eq!(
            event.id, None,
            "retained values are state, not stream positions"
        );
        let json: serde_json::Value = serde_json::from_str(&event.data).expect("json");
        assert_eq!(json["retain"], true);
        assert_eq!(json["qos"], 1, "as the device published it");
        retained.push((
            json["topic"].as_str().unwrap_or_default().to_owned(),
            json["payload"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    retained.sort();
    assert_eq!(
        retained,
        vec![
            ("home/light/1/state".to_owned(), "on".to_owned()),
            ("home/light/2/state".to_owned(), "off".to_owned()),
        ]
    );
    device.publish("home/light/1/state", "off", true).await;
    let live = sse.expect_event().await;
    let json: serde_json::Value = serde_json::from_str(&live.data).expect("json");
    assert_eq!(json["payload"], "off");
    assert_eq!(
        json["retain"], false,
        "live messages are not flagged retained, as MQTT delivers them"
    );
    assert!(live.id.is_some());
    bridge.shutdown().await;
}

/// JSON format carries topic, payload, encoding, qos, retain and ts; `qos`
/// is the publisher's, whichever protocol it used; `retain` marks retained
/// values from the store only, as MQTT delivers messages.
#[tokio::test]
async fn json_format_fields() {
    use common::raw::{self, RawMqtt};
    let bridge = start().await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=bin/%23&format=json", &[]).await;
    let device = Device::connect(bridge.mqtt, "bin").await;
    device.publish("bin/x", vec![0xff, 0x00], false).await;
    let event = sse.expect_event().await;
    let json: serde_json::Value = serde_json::from_str(&event.data).expect("json");
    assert_eq!(json["topic"], "bin/x");
    assert_eq!(json["payload"], "/wA=");
    assert_eq!(json["encoding"], "base64");
    assert_eq!(json["qos"], 1, "rumqttc publishes at QoS 1 here");
    assert_eq!(json["retain"], false);
    assert!(json["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000));

    for level in [4, 5] {
        let options = raw::Connect {
            level,
            client_id: "raw-publisher",
            login: None,
            will_topic: None,
        };
        let (mut raw, code) = RawMqtt::connect(bridge.mqtt, options).await;
        assert_eq!(code, Some(0));
        for (qos, retain) in [(0, true), (2, false), (1, true)] {
            let topic = format!("bin/{level}/{qos}");
            if retain {
                let mut packet = raw.publish_packet(&topic, b"v", qos, u16::from(qos), None);
                packet[0] |= 1;
                raw.send(&packet).await;
            } else {
                raw.publish(&topic, b"v", qos, u16::from(qos)).await;
            }
            match qos {
                1 => _ = raw.ack(4, 1).await,
                // The broker routes a QoS 2 message once it is released.
                2 => {
                    raw.ack(5, 2).await;
                    raw.send(&[0x62, 2, 0, 2]).await;
                    raw.ack(7, 2).await;
                }
                _ => {}
            }
            let json: serde_json::Value =
                serde_json::from_str(&sse.expect_event().await.data).expect("json");
            assert_eq!(json["topic"], topic.as_str());
            assert_eq!(
                (json["qos"].as_u64(), json["retain"].as_bool()),
                (Some(u64::from(qos)), Some(false)),
                "{topic}, published retained: {retain}"
            );
        }
    }
    let post = common::request(
        bridge.http,
        "POST",
        "/publish/bin/web?qos=1&retain=true",
        &[],
        b"w",
    )
    .await;
    assert!(post.status < 300, "{}", post.status);
    let json: serde_json::Value =
        serde_json::from_str(&sse.expect_event().await.data).expect("json");
    assert_eq!(
        (json["qos"].as_u64(), json["retain"].as_bool()),
        (Some(1), Some(false)),
        "a web publish that waited for the broker"
    );
    bridge.shutdown().await;
}

/// A client that disconnects while publishes continue, then reconnects
/// with `Last-Event-ID`, receives every later message exactly once.
#[tokio::test]
async fn resume_with_last_event_id_loses_and_duplicates_nothing() {
    let bridge = start().await;
    let device = Device::connect(bridge.mqtt, "counter").await;
    let publisher = device.count_in_background("count", 300);
    let mut seen: Vec<u32> = Vec::new();
    let mut last_id: Option<String> = None;
    // Three connections, each dropped after a few messages.
    for round in 0..3 {
        let headers: Vec<(&str, &str)> = match &last_id {
            Some(id) => vec![("Last-Event-ID", id.as_str())],
            None => vec![],
        };
        let path = if round == 0 {
            "/events?topic=count"
        } else {
            "/events?topic=count&lastEventId=0-1"
        };
        let mut sse = SseClient::connect(bridge.http, path, &headers).await;
        for _ in 0..40 {
            let event = sse.expect_event().await;
            seen.push(event.data.parse().expect("number"));
            last_id = event.id;
        }
        drop(sse);
    }
    let headers = vec![("Last-Event-ID", last_id.as_deref().expect("an id"))];
    let mut sse = SseClient::connect(bridge.http, "/events?topic=count", &headers).await;
    while seen.last() != Some(&299) {
        let event = sse.expect_event().await;
        seen.push(event.data.parse().expect("number"));
    }
    publisher.await.expect("publisher");
    let first = seen[0];
    let expected: Vec<u32> = (first..300).collect();
    assert_eq!(seen, expected, "every message once, in order");
    bridge.shutdown().await;
}

/// `lastEventId` in the query resumes like the header (for a first
/// `EventSource` connection, which cannot set headers).
#[tokio::test]
async fn last_event_id_query_parameter_resumes() {
    let bridge = start().await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=q", &[]).await;
    let device = Device::connect(bridge.mqtt, "q").await;
    device.publish("q", "a", false).await;
    let first = sse.expect_event().await;
    drop(sse);
    device.publish("q", "b", false).await;
    eventually("b routed", || bridge.stats().messages_routed >= 2).await;
    let id = first.id.expect("id");
    let mut sse = SseClient::connect(
        bridge.http,
        &format!("/events?topic=q&lastEventId={id}"),
        &[],
    )
    .await;
    assert_eq!(sse.expect_event().await.data, "b");
    bridge.shutdown().await;
}

/// An id whose history left the replay ring, or from another epoch (before
/// a restart), gets a `gap` event, then current values, then live ones.
#[tokio::test]
async fn lost_history_is_announced_with_a_gap_event() {
    let bridge = start_with(|c| c.sse.replay_capacity = 3).await;
    let device = Device::connect(bridge.mqtt, "gap").await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=g", &[]).await;
    device.publish("g", "0", false).await;
    let old = sse.expect_event().await.id.expect("id");
    drop(sse);
    for i in 1..=5 {
        device.publish("g", i.to_string(), false).await;
    }
    eventually("six routed", || bridge.stats().messages_routed >= 6).await;

    let mut sse =
        SseClient::connect(bridge.http, "/events?topic=g", &[("Last-Event-ID", &old)]).await;
    let gap = sse.expect_event().await;
    assert_eq!(gap.event, "gap");
    let data: serde_json::Value = serde_json::from_str(&gap.data).expect("json");
    assert_eq!(data["after"], old.as_str());
    device.publish("g", "live", false).await;
    assert_eq!(sse.expect_event().await.data, "live");

    let mut other_epoch =
        SseClient::connect(bridge.http, "/events?topic=g&lastEventId=1-5", &[]).await;
    assert_eq!(other_epoch.expect_event().await.event, "gap");
    assert!(bridge.stats().replay_misses >= 2);
    bridge.shutdown().await;
}

/// A comment heartbeat is sent while the stream is idle.
#[tokio::test]
async fn heartbeat_while_idle() {
    let bridge = start_with(|c| c.sse.heartbeat_secs = 1).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=quiet", &[]).await;
    assert_eq!(sse.next_item().await, Some(SseItem::Retry(2000)));
    let item = tokio::time::timeout(TIMEOUT, sse.next_item())
        .await
        .expect("heartbeat in time");
    assert!(matches!(item, Some(SseItem::Comment(_))), "{item:?}");
    bridge.shutdown().await;
}

/// Messages postpone the heartbeat: none is sent while messages arrive
/// more often than the heartbeat interval, and one follows once idle.
#[tokio::test]
async fn heartbeat_waits_for_idleness() {
    let bridge = start_with(|c| c.sse.heartbeat_secs = 1).await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=busy", &[]).await;
    assert_eq!(sse.next_item().await, Some(SseItem::Retry(2000)));
    let device = Device::connect(bridge.mqtt, "busy").await;
    for n in 0..5 {
        device.publish("busy", format!("m{n}"), false).await;
        let item = tokio::time::timeout(TIMEOUT, sse.next_item())
            .await
            .expect("message in time");
        assert!(
            matches!(&item, Some(SseItem::Event(e)) if e.data == format!("m{n}")),
            "{item:?}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let item = tokio::time::timeout(TIMEOUT, sse.next_item())
        .await
        .expect("heartbeat in time");
    assert!(matches!(item, Some(SseItem::Comment(_))), "{item:?}");
    bridge.shutdown().await;
}

/// A client that stops reading is disconnected and counted, while a
/// reader on the same topic keeps receiving everything.
#[tokio::test]
async fn a_stalled_reader_does_not_delay_another() {
    let bridge = start_with(|c| {
        c.sse.queue_capacity = 64;
        // The message count is the bound under test here.
        c.sse.queue_max_bytes = 64 * 64 * 1024;
    })
    .await;
    let stalled = SseClient::connect(bridge.http, "/events?topic=flood", &[]).await;
    let mut reader = SseClient::connect(bridge.http, "/events?topic=flood", &[]).await;
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
                // Paced so a reading client never falls 64 messages behind,
                // while 12 MB overflow the stalled one's socket and queue.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for _ in 0..total {
        assert_eq!(reader.expect_event().await.data.len(), payload.len());
    }
    publisher.await.expect("publisher");
    eventually("the stalled reader is dropped", || {
        bridge.stats().slow_consumer_disconnects >= 1
    })
    .await;
    drop(stalled);
    bridge.shutdown().await;
}

/// What a stalled reader may hold is bounded in bytes: the socket's send
/// buffer is fixed (no autotuning to megabytes) and the queue counts bytes,
/// so 800 KiB of 4 KiB messages, far below the message-count bound, get it
/// dropped and counted, while a reader keeping up is not.
#[tokio::test]
async fn a_stalled_reader_is_dropped_within_its_byte_bound() {
    let bridge = start_with(|c| {
        c.sse.queue_max_bytes = 64 * 1024;
        c.http.send_buffer_bytes = 16 * 1024;
    })
    .await;
    let stalled = SseClient::connect(bridge.http, "/events?topic=big", &[]).await;
    let mut reader = SseClient::connect(bridge.http, "/events?topic=big", &[]).await;
    let device = Device::connect(bridge.mqtt, "big").await;
    let payload = "x".repeat(4 * 1024);
    for _ in 0..200 {
        device.publish("big", payload.as_str(), false).await;
        assert_eq!(reader.expect_event().await.data.len(), payload.len());
    }
    eventually("the stalled reader is dropped", || {
        bridge.stats().slow_consumer_disconnects >= 1
    })
    .await;
    assert_eq!(
        bridge.stats().slow_consumer_disconnects,
        1,
        "only the stalled reader"
    );
    drop(stalled);
    bridge.shutdown().await;
}

/// Every malformed request gets a 400 with a JSON body naming the problem.
#[tokio::test]
async fn bad_requests_are_refused_with_reasons() {
    let bridge = start_with(|c| c.sse.max_filters = 2).await;
    let cases = [
        ("/events", "missing-topic"),
        ("/events?topic=", "invalid-filter"),
        ("/events?topic=a/%23/b", "invalid-filter"),
        ("/events?topic=a/b%2Bc", "invalid-filter"),
        ("/events?topic=a&topic=b&topic=c", "too-many-filters"),
        ("/events?topic=a&lastEventId=nonsense", "malformed-id"),
        ("/events?topic=a&format=xml", "invalid-format"),
        ("/events?topics=a", "unknown-parameter"),
    ];
    for (path, code) in cases {
        let response = get(bridge.http, path).await;
        assert_eq!(response.status, 400, "{path}");
        let body = response.json();
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let long = format!("/events?topic={}", "a".repeat(2000));
    let body = get(bridge.http, &long).await.json();
    assert_eq!(body["rule"], "too-long");
    let body = get(bridge.http, "/events?topic=a/%23/b").await.json();
    assert_eq!(body["filter"], "a/#/b");
    assert_eq!(body["rule"], "hash-not-last");
    // The bridge still serves after all of that.
    assert_eq!(get(bridge.http, "/healthz").await.status, 200);
    bridge.shutdown().await;
}

/// Shutdown ends open SSE streams instead of leaving them hanging.
#[tokio::test]
async fn shutdown_ends_streams() {
    let bridge = start().await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=x", &[]).await;
    assert_eq!(sse.next_item().await, Some(SseItem::Retry(2000)));
    bridge.shutdown().await;
    let end = tokio::time::timeout(TIMEOUT, sse.next_item())
        .await
        .expect("stream ends in time");
    assert_eq!(end, None);
}
