//! Every way a device could grow the broker's memory is bounded before the
//! broker sees it: topic and filter length, distinct topics and filters
//! store-wide, unreleased QoS 2 publishes per connection. Each refusal is
//! the protocol's own answer and a counter, and what was within the bounds
//! goes on working.

mod common;

use common::raw::{self, RawMqtt};
use common::{request, start_with, ws_connect, ws_request, SseClient};
use serde_json::json;
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

/// Every entry point counts levels the same way, against
/// `mqtt.max_topic_levels` (32 by default): a WebSocket filter of 8,000
/// empty levels is an error, not an abort, and so is a 33-level topic or
/// filter over MQTT, SSE, HTTP and WebSocket; each refusal is counted and
/// the client, and everyone else, goes on being served.
#[tokio::test]
async fn deep_topics_and_filters_are_refused_everywhere() {
    let bridge = start_with(|_| {}).await;
    let deep = ["d"; 33].join("/");
    let mut ws = ws_connect(bridge.ws).await;
    let empty_levels = "/".repeat(8_000);
    let reply = ws_request(
        &mut ws,
        json!({"op": "subscribe", "topics": [empty_levels]}),
        "s1",
    )
    .await;
    assert_eq!(reply["code"], "invalid-filter", "{reply}");
    let reply = ws_request(
        &mut ws,
        json!({"op": "subscribe", "topics": [format!("{deep}/#")]}),
        "s2",
    )
    .await;
    assert_eq!(
        (reply["code"].as_str(), reply["rule"].as_str()),
        (Some("invalid-filter"), Some("too-many-levels")),
        "{reply}"
    );
    let reply = ws_request(
        &mut ws,
        json!({"op": "publish", "topic": deep, "payload": "x"}),
        "p1",
    )
    .await;
    assert_eq!(reply["code"], "topic-too-deep", "{reply}");
    let at_limit = ["d"; 32].join("/");
    let reply = ws_request(
        &mut ws,
        json!({"op": "subscribe", "topics": [at_limit]}),
        "s3",
    )
    .await;
    assert_eq!(reply["op"], "ack", "32 levels are fine: {reply}");

    let sse = request(
        bridge.http,
        "GET",
        &format!("/events?topic={deep}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(
        (sse.status, sse.json()["rule"].as_str()),
        (400, Some("too-many-levels"))
    );
    let http = request(bridge.http, "POST", &format!("/publish/{deep}"), &[], b"1").await;
    assert_eq!(
        (http.status, http.json()["error"].as_str()),
        (400, Some("topic-too-deep"))
    );

    let mut v5 = client(bridge.mqtt, 5, "deep-5").await;
    assert_eq!(
        v5.subscribe(1, &[(deep.as_str(), 0), ("d/#", 0)]).await,
        [0x8f, 0]
    );
    v5.publish(&deep, b"1", 1, 2).await;
    assert_eq!(v5.ack(PUBACK, 2).await, 0x90);
    v5.publish("d/ok", b"ok", 0, 0).await;
    assert_eq!(
        v5.next_publish().await.topic,
        "d/ok",
        "the deep one never came"
    );

    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::WebSocket, Limit::TopicLength), 1);
    assert_eq!(refusals.limited(Protocol::WebSocket, Limit::TopicLevels), 2);
    assert_eq!(refusals.limited(Protocol::Sse, Limit::TopicLevels), 1);
    assert_eq!(refusals.limited(Protocol::Http, Limit::TopicLevels), 1);
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::TopicLevels), 2);
    bridge.shutdown().await;
}

/// A stream's or session's filters together stay within its budget
/// (`sse.filter_budget_bytes`, `websocket.filter_budget_bytes`): deep
/// filters run out of it long before short ones, the refusal names the
/// budget and is counted, and what was held keeps being served.
#[tokio::test]
async fn filters_together_stay_within_a_budget() {
    let bridge = start_with(|c| {
        c.sse.filter_budget_bytes = 12 * 1024;
        c.websocket.filter_budget_bytes = 12 * 1024;
    })
    .await;
    // Twelve levels cost a little over 7.5 KiB: one fits in 12 KiB, two do not.
    let deep = |n: usize| format!("{n}/{}", ["x"; 11].join("/"));
    let sse = request(
        bridge.http,
        "GET",
        &format!("/events?topic={}&topic={}", deep(1), deep(2)),
        &[],
        b"",
    )
    .await;
    assert_eq!(
        (sse.status, sse.json()["error"].as_str()),
        (400, Some("filter-budget"))
    );
    let mut ws = ws_connect(bridge.ws).await;
    let first = json!({"op": "subscribe", "topics": [deep(1)]});
    assert_eq!(ws_request(&mut ws, first, "a").await["op"], "ack");
    let second = json!({"op": "subscribe", "topics": [deep(2)]});
    let reply = ws_request(&mut ws, second, "b").await;
    assert_eq!(reply["code"], "filter-budget", "{reply}");
    // Short filters are cheap: many fit beside the deep one.
    let short: Vec<String> = (0..3).map(|i| format!("s/{i}")).collect();
    let reply = ws_request(&mut ws, json!({"op": "subscribe", "topics": short}), "c").await;
    assert_eq!(reply["op"], "ack", "{reply}");
    // Giving a filter back makes room again.
    let gone = json!({"op": "unsubscribe", "topics": [deep(1)]});
    assert_eq!(ws_request(&mut ws, gone, "d").await["op"], "ack");
    let again = json!({"op": "subscribe", "topics": [deep(2)]});
    assert_eq!(ws_request(&mut ws, again, "e").await["op"], "ack");
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::Sse, Limit::Subscriptions), 1);
    assert_eq!(
        refusals.limited(Protocol::WebSocket, Limit::Subscriptions),
        1
    );
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

/// This process's resident memory, in KiB (Linux).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The memory budget of subscriptions holds: every session filling its
/// `websocket.filter_budget_bytes` with the dearest filters there are
/// (distinct, `mqtt.max_topic_levels` deep, so no trie node is shared)
/// grows the process by no more than sessions x budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_subscriptions_allowed_stay_within_the_memory_budget() {
    const SESSIONS: usize = 200;
    let bridge = start_with(|c| c.websocket.max_connections = SESSIONS).await;
    let budget = tidewater::config::Config::default()
        .websocket
        .filter_budget_bytes;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(ws_connect(bridge.ws).await);
    }
    // Each subscribe reads its retained values on the blocking pool: its
    // threads (and their allocator arenas) are started before measuring.
    for (i, ws) in sessions.iter_mut().enumerate() {
        let warm = json!({"op": "subscribe", "topics": [format!("warm/{i}")]});
        assert_eq!(ws_request(ws, warm, "w").await["op"], "ack");
        let gone = json!({"op": "unsubscribe", "topics": [format!("warm/{i}")]});
        assert_eq!(ws_request(ws, gone, "u").await["op"], "ack");
    }
    let before = rss_kib();
    let mut filters = 0;
    for (i, ws) in sessions.iter_mut().enumerate() {
        for j in 0.. {
            // 32 levels, each a distinct 30-byte name: the longest a
            // filter of 32 levels may be within 1 KiB.
            let filter: Vec<String> = (0..32).map(|l| format!("{i:09}-{j:09}-{l:09}")).collect();
            let filter = filter.join("/");
            assert!(filter.len() <= 1024);
            let reply = ws_request(ws, json!({"op": "subscribe", "topics": [filter]}), "s").await;
            if reply["op"] != "ack" {
                assert_eq!(reply["code"], "filter-budget", "{reply}");
                break;
            }
            filters += 1;
        }
    }
    let grown = rss_kib().saturating_sub(before);
    let allowed = (SESSIONS * budget / 1024) as u64;
    println!(
        "{filters} filters in {SESSIONS} sessions: +{grown} KiB, budget {allowed} KiB ({} KiB a filter)",
        grown as f64 / filters as f64
    );
    assert!(filters >= SESSIONS, "every session holds at least one");
    assert!(
        grown <= allowed,
        "grew {grown} KiB, past the budget of {allowed} KiB"
    );
    bridge.shutdown().await;
}
