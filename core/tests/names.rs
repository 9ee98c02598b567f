//! Every topic and client id MQTT allows, end to end through the gate:
//! names rumqttd 0.20 cannot take on its own (a topic whose first
//! character is not ASCII panicked its router thread; a client id holding
//! `/`, `+`, `#` or `$` connected twice broke its listener) reach every
//! kind of subscriber with their exact bytes, and the bridge keeps routing.

mod common;

use common::raw::{self, RawMqtt};
use common::{get, post, start, Device, SseClient};

/// Topics whose first character is not ASCII, and one that starts with the
/// broker's escape character.
const TOPICS: [&str; 4] = ["温度/客厅", "°C/salon", "été/salon", "\u{1}odd/start"];

/// A JSON SSE event's topic and payload.
fn topic_and_data(event: &common::SseEvent) -> (String, String) {
    let json: serde_json::Value = serde_json::from_str(&event.data).expect("a JSON event");
    (
        json["topic"].as_str().expect("a topic").to_owned(),
        json["payload"]
            .as_str()
            .expect("a UTF-8 payload")
            .to_owned(),
    )
}

/// A device's publishes on non-ASCII topics reach an SSE stream on `#`,
/// an MQTT subscriber on `#` and one on wildcard filters naming the
/// non-ASCII levels, each with the topic exactly as sent; retained values
/// come back the same; and an ASCII message after them still routes.
#[tokio::test]
async fn non_ascii_topics_reach_every_subscriber_unchanged() {
    let bridge = start().await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=%23&format=json", &[]).await;
    let mut everything = Device::connect(bridge.mqtt, "everything").await;
    everything.subscribe("#").await;
    let mut living = Device::connect(bridge.mqtt, "living").await;
    living.subscribe("+/客厅").await;
    living.subscribe("°C/#").await;

    let device = Device::connect(bridge.mqtt, "sensor").await;
    for (i, topic) in TOPICS.iter().enumerate() {
        device.publish(topic, format!("{i}"), true).await;
    }
    device.publish("home/after", "still routing", false).await;

    for (i, topic) in TOPICS.iter().enumerate() {
        let event = sse.expect_event().await;
        assert_eq!(topic_and_data(&event), (topic.to_string(), i.to_string()));
        let message = everything.next().await;
        assert_eq!(
            (message.topic.as_str(), &message.payload[..]),
            (*topic, i.to_string().as_bytes())
        );
    }
    assert_eq!(topic_and_data(&sse.expect_event().await).0, "home/after");
    assert_eq!(everything.next().await.topic, "home/after");
    let mut matched = vec![living.next().await.topic, living.next().await.topic];
    matched.sort();
    assert_eq!(matched, ["°C/salon", "温度/客厅"]);

    // Retained values, read back from the broker for a new subscriber.
    let mut late = SseClient::connect(
        bridge.http,
        "/events?topic=%E6%B8%A9%E5%BA%A6/%23&format=json",
        &[],
    )
    .await;
    assert_eq!(
        topic_and_data(&late.expect_event().await),
        ("温度/客厅".into(), "0".into())
    );
    let mut late_device = Device::connect(bridge.mqtt, "late").await;
    late_device.subscribe("été/+").await;
    let retained = late_device.next().await;
    assert_eq!(
        (retained.topic.as_str(), retained.retain),
        ("été/salon", true)
    );

    assert_eq!(get(bridge.http, "/healthz").await.status, 200);
    bridge.shutdown().await;
}

/// `POST /publish/été/salon` (percent-encoded, as curl sends it) reaches an
/// MQTT subscriber, and the broker keeps serving after it.
#[tokio::test]
async fn http_publish_on_a_non_ascii_topic_is_routed() {
    let bridge = start().await;
    let mut device = Device::connect(bridge.mqtt, "listener").await;
    device.subscribe("#").await;
    let answer = post(bridge.http, "/publish/%C3%A9t%C3%A9/salon", b"1").await;
    assert!(answer.status < 300, "accepted: {}", answer.status);
    assert_eq!(device.next().await.topic, "été/salon");
    post(bridge.http, "/publish/home/after", b"2").await;
    assert_eq!(device.next().await.topic, "home/after");
    assert_eq!(get(bridge.http, "/healthz").await.status, 200);
    bridge.shutdown().await;
}

/// Client ids with `/`, `+`, `#`, `$`, a dot or non-ASCII characters,
/// each connected twice (the second takes the first's session, as MQTT
/// says), leave every listener serving the next client.
#[tokio::test]
async fn any_client_id_can_connect_twice() {
    let bridge = start().await;
    for id in ["a/b", "a+b", "a#", "$id", "a.2fb", "客厅-1"] {
        for level in [4, 5] {
            // Every gate port takes both versions.
            let addr = bridge.mqtt;
            for _ in 0..2 {
                let options = raw::Connect {
                    level,
                    client_id: id,
                    login: None,
                    will_topic: Some("wills/x"),
                };
                let (_client, code) = RawMqtt::connect(addr, options).await;
                assert_eq!(code, Some(0), "client id {id:?}, MQTT level {level}");
            }
        }
    }
    let mut device = Device::connect(bridge.mqtt, "after").await;
    device.subscribe("home/#").await;
    device.publish("home/x", "1", false).await;
    assert_eq!(device.next().await.topic, "home/x");
    assert_eq!(get(bridge.http, "/healthz").await.status, 200);
    bridge.shutdown().await;
}
