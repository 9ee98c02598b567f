//! Every way a device could grow the broker's memory is bounded before the
//! broker sees it: topic and filter length, distinct topics and filters
//! store-wide, unreleased QoS 2 publishes per connection. Each refusal is
//! the protocol's own answer and a counter, and what was within the bounds
//! goes on working.

mod common;

use common::raw::{self, RawMqtt};
use common::{request, start_with, SseClient};
use tidewater::stats::{Limit, Protocol};

const PUBACK: u8 = 4;
const PUBREC: u8 = 5;

async fn client(addr: std::net::SocketAddr, level: u8, client_id: &str) -> RawMqtt {
    let options = raw::Connect {
        level,
        client_id,
        login: None,
        will_topic: None,
    };
    let (client, code) = RawMqtt::connect(addr, options).await;
    assert_eq!(code, Some(0));
    client
}

/// A topic or filter longer than `mqtt.max_topic_bytes` is refused: MQTT 5
/// PUBACK 0x90 and SUBACK 0x8F, MQTT 3.1.1 an acknowledged drop and SUBACK
/// 0x80, HTTP 400 `topic-too-long`; all counted.
#[tokio::test]
async fn long_topics_and_filters_are_refused() {
    let bridge = start_with(|c| c.mqtt.max_topic_bytes = 64).await;
    let long = format!("home/{}", "x".repeat(64));
    let mut v5 = client(bridge.mqtt, 5, "long-5").await;
    v5.publish(&long, b"1", 1, 1).await;
    assert_eq!(v5.ack(PUBACK, 1).await, 0x90);
    assert_eq!(
        v5.subscribe(2, &[(&format!("{long}/#"), 0), ("home/#", 0)])
            .await,
        [0x8f, 0]
    );
    let mut v4 = client(bridge.mqtt, 4, "long-4").await;
    v4.publish(&long, b"1", 1, 1).await;
    v4.ack(PUBACK, 1).await;
    assert_eq!(v4.subscribe(2, &[(&format!("{long}/#"), 0)]).await, [0x80]);
    v4.publish("home/short", b"ok", 0, 0).await;
    assert_eq!(
        v5.next_publish().await.topic,
        "home/short",
        "the long one never came"
    );
    let path = format!("/publish/{long}");
    let answer = request(bridge.http, "POST", &path, &[], b"1").await;
    assert_eq!(
        (answer.status, answer.json()["error"].as_str()),
        (400, Some("topic-too-long"))
    );
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::TopicLength), 4);
    assert_eq!(refusals.limited(Protocol::Http, Limit::TopicLength), 1);
    bridge.shutdown().await;
}

/// Past `mqtt.max_topics` distinct topics the broker holds, a publish on a
/// new one is refused (MQTT 5: PUBACK 0x97; HTTP 507 `topic-limit`) and
/// counted, whoever sends it, while every known topic goes on working and
/// keeps its retained value. Filters the same, with `mqtt.max_filters`.
#[tokio::test]
async fn new_topics_and_filters_past_the_caps_are_refused() {
    let bridge = start_with(|c| {
        c.mqtt.max_topics = 3;
        c.mqtt.max_filters = 2;
    })
    .await;
    let mut device = client(bridge.mqtt, 5, "many-topics").await;
    // The broker's own "#" subscriptions (egress, retained) are not counted:
    // they never pass the census.
    assert_eq!(
        device
            .subscribe(1, &[("t/#", 1), ("u/#", 1), ("v/#", 1)])
            .await,
        [1, 1, 0x97]
    );
    assert_eq!(
        device.subscribe(2, &[("t/#", 0)]).await,
        [0],
        "a known filter again"
    );
    for (id, topic) in [(10, "t/1"), (11, "t/2"), (12, "t/3")] {
        device.publish(topic, b"kept", 1, id).await;
        assert_eq!(device.ack(PUBACK, id).await, 0, "{topic}");
        assert_eq!(device.next_publish().await.topic, topic);
    }
    device.publish("t/4", b"new", 1, 13).await;
    assert_eq!(device.ack(PUBACK, 13).await, 0x97, "a fourth topic");
    let answer = request(bridge.http, "POST", "/publish/t/5", &[], b"new").await;
    assert_eq!(
        (answer.status, answer.json()["error"].as_str()),
        (507, Some("topic-limit"))
    );
    let mut retained = client(bridge.mqtt, 4, "retainer").await;
    retained.publish_retained("t/1", b"state").await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=t/1", &[]).await;
    assert_eq!(
        sse.expect_event().await.data,
        "state",
        "known topics keep working"
    );
    let will = raw::Connect {
        level: 5,
        client_id: "new-will",
        login: None,
        will_topic: Some("t/will"),
    };
    let (_, code) = RawMqtt::connect(bridge.mqtt, will).await;
    assert_eq!(code, Some(0x97), "a will on a new topic");
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::Topics), 2);
    assert_eq!(refusals.limited(Protocol::Http, Limit::Topics), 1);
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::Filters), 1);
    bridge.shutdown().await;
}

/// rumqttd holds a QoS 2 publish until its PUBREL. A device may have
/// `mqtt.max_inflight` of them unreleased; one more ends its connection
/// (MQTT 5: DISCONNECT 0x93, "receive maximum exceeded"), counted. Released
/// ones make room.
#[tokio::test]
async fn unreleased_qos2_publishes_are_bounded() {
    let bridge = start_with(|c| c.mqtt.max_inflight = 4).await;
    let mut polite = client(bridge.mqtt, 5, "polite").await;
    for id in 1..=20u16 {
        polite.publish("q/polite", b"x", 2, id).await;
        polite.ack(PUBREC, id).await;
        polite.send(&[0x62, 2, 0, id as u8]).await;
        polite.ack(7, id).await;
    }
    let mut hoarder = client(bridge.mqtt, 5, "hoarder").await;
    for id in 1..=4u16 {
        hoarder.publish("q/hoard", &[0; 1024], 2, id).await;
        hoarder.ack(PUBREC, id).await;
    }
    hoarder.publish("q/hoard", &[0; 1024], 2, 5).await;
    let disconnect = hoarder.next_control().await;
    assert_eq!(
        (disconnect.kind(), disconnect.body.first().copied()),
        (14, Some(0x93))
    );
    assert!(hoarder.next().await.is_none(), "and the connection closes");
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::Inflight), 1);
    // Everyone else is still served.
    let mut after = client(bridge.mqtt, 4, "after").await;
    assert_eq!(after.subscribe(1, &[("q/#", 0)]).await, [0]);
    bridge.shutdown().await;
}
