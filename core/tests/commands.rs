//! Commands end to end: `POST /command/{topic}` publishes to a real device
//! through the gate and answers with what the device sends back on
//! `{topic}/reply`, or 504 when nothing comes, or 404 when nothing could
//! receive it; with their bounds, and the rules, like any publish.

mod common;

use std::time::Duration;

use common::{gated, request, start_with, Device, SseClient};

/// A device on `topic` that answers each command with `ok <payload>` on
/// `{topic}/reply`.
async fn responder(addr: std::net::SocketAddr, id: &str, topic: &'static str) {
    let mut device = Device::connect(addr, id).await;
    device.subscribe(topic).await;
    tokio::spawn(async move {
        while let Some(command) = device.received.recv().await {
            let answer = format!("ok {}", String::from_utf8_lossy(&command.payload));
            device
                .publish(&format!("{topic}/reply"), answer, false)
                .await;
        }
    });
}

fn series(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// The device's answer is the response: 200, its bytes, the reply topic
/// named in a header; and a retained value left on the reply topic is not
/// taken for an answer.
#[tokio::test]
async fn a_command_gets_the_devices_answer() {
    let bridge = start_with(|_| {}).await;
    let stale = Device::connect(bridge.mqtt, "stale").await;
    stale.publish("home/light/1/set/reply", "stale", true).await;
    responder(bridge.mqtt, "light-1", "home/light/1/set").await;
    for payload in ["on", "off"] {
        let answer = request(
            bridge.http,
            "POST",
            "/command/home/light/1/set?timeout_ms=2000",
            &[],
            payload.as_bytes(),
        )
        .await;
        assert_eq!(
            answer.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&answer.body)
        );
        assert_eq!(answer.body, format!("ok {payload}").as_bytes());
        assert_eq!(
            answer.header("x-tidewater-reply-topic"),
            Some("home/light/1/set/reply")
        );
        assert_eq!(
            answer.header("content-type"),
            Some("application/octet-stream")
        );
    }
    let metrics =
        String::from_utf8(common::get(bridge.http, "/metrics").await.body).expect("UTF-8");
    assert_eq!(
        series(&metrics, "tidewater_commands_total{outcome=\"answered\"}"),
        2
    );
    bridge.shutdown().await;
}

/// Nothing subscribed to the topic: 404 `no-subscriber` at once. A web
/// subscriber counts as a receiver like a device does; one that does not
/// answer makes it 504 `device-timeout` after `timeout_ms`.
#[tokio::test]
async fn a_command_nobody_answers_is_404_or_504() {
    let bridge = start_with(|_| {}).await;
    let unrouted = request(bridge.http, "POST", "/command/nobody/home", &[], b"x").await;
    assert_eq!(unrouted.status, 404);
    assert_eq!(unrouted.json()["error"], "no-subscriber");
    let _listener = SseClient::connect(bridge.http, "/events?topic=quiet/%2B", &[]).await;
    let started = std::time::Instant::now();
    let silent = request(
        bridge.http,
        "POST",
        "/command/quiet/one?timeout_ms=300",
        &[],
        b"x",
    )
    .await;
    assert_eq!(silent.status, 504);
    assert_eq!(silent.json()["error"], "device-timeout");
    assert_eq!(silent.json()["timeout_ms"], 300);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A device that left takes its subscriptions with it.
    let mut gone = Device::connect(bridge.mqtt, "gone").await;
    gone.subscribe("away/+").await;
    let waiting = request(
        bridge.http,
        "POST",
        "/command/away/x?timeout_ms=100",
        &[],
        b"x",
    )
    .await;
    assert_eq!(waiting.status, 504);
    drop(gone);
    common::eventually("the device to leave", || {
        bridge.stats().mqtt_connections_open == 0
    })
    .await;
    let away = request(bridge.http, "POST", "/command/away/x", &[], b"x").await;
    assert_eq!(away.status, 404);
    bridge.shutdown().await;
}

/// One command per topic at a time (409), a bound per client (429) and a
/// longest timeout (400), each refused before anything is published.
#[tokio::test]
async fn commands_are_bounded() {
    let bridge = start_with(|c| {
        c.limits.max_pending_commands_per_client = 2;
        c.limits.max_command_timeout_ms = 10_000;
    })
    .await;
    let mut quiet = Device::connect(bridge.mqtt, "quiet").await;
    quiet.subscribe("slow/+").await;
    let http = bridge.http;
    let waiting: Vec<_> = ["slow/a", "slow/b"]
        .into_iter()
        .map(|topic| {
            tokio::spawn(async move {
                let path = format!("/command/{topic}?timeout_ms=1500");
                request(http, "POST", &path, &[], b"x").await
            })
        })
        .collect();
    // Both are waiting once the device has received both.
    for _ in 0..2 {
        quiet.next().await;
    }
    let again = request(http, "POST", "/command/slow/a?timeout_ms=100", &[], b"x").await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["error"], "command-in-flight");
    let third = request(http, "POST", "/command/slow/c?timeout_ms=100", &[], b"x").await;
    assert_eq!(third.status, 429);
    let long = request(http, "POST", "/command/slow/d?timeout_ms=20000", &[], b"x").await;
    assert_eq!(long.status, 400);
    assert_eq!(long.json()["max_timeout_ms"], 10_000);
    for answer in waiting {
        assert_eq!(answer.await.expect("task").status, 504);
    }
    let free = request(http, "POST", "/command/slow/a?timeout_ms=100", &[], b"x").await;
    assert_eq!(free.status, 504, "the places were given back");
    bridge.shutdown().await;
}

/// A command is a publish: the client needs the publish right on the
/// topic (403 without), and the device's rules still decide what it
/// receives and may answer.
#[tokio::test]
async fn a_command_needs_the_publish_right() {
    let bridge = start_with(gated).await;
    let password = common::password("sensor");
    let mut device = Device::try_connect(bridge.mqtt, "sensor-1", Some(("sensor", &password)))
        .await
        .expect("sensor connects");
    device.subscribe("home/#").await;
    // Anonymous web clients may only read home/#.
    let refused = request(bridge.http, "POST", "/command/home/light/1/set", &[], b"on").await;
    assert_eq!(refused.status, 403);
    // Where nobody listens, it is still 403: no right, no news of who
    // listens where.
    let unheard = request(bridge.http, "POST", "/command/office/x", &[], b"on").await;
    assert_eq!(unheard.status, 403);
    bridge.shutdown().await;
}

/// Over WebSocket, `command` is answered by a `reply` carrying its `ref`,
/// or an `error` with the codes HTTP uses; the session goes on serving
/// other requests while a command waits.
#[tokio::test]
async fn websocket_commands_answer_with_a_reply() {
    use common::{ws_connect, ws_next, ws_request, ws_send};
    use serde_json::json;
    let bridge = start_with(|_| {}).await;
    responder(bridge.mqtt, "light-2", "home/light/2/set").await;
    let mut quiet = Device::connect(bridge.mqtt, "quiet-ws").await;
    quiet.subscribe("quiet/#").await;
    let mut ws = ws_connect(bridge.ws).await;
    let command = json!({
        "op": "command", "ref": "c1", "topic": "home/light/2/set", "payload": "on",
        "timeout_ms": 2000,
    });
    ws_send(&mut ws, command).await;
    let reply = ws_next(&mut ws).await;
    assert_eq!(
        (reply["op"].as_str(), reply["ref"].as_str()),
        (Some("reply"), Some("c1")),
        "{reply}"
    );
    assert_eq!(reply["payload"], "ok on");
    assert_eq!(reply["topic"], "home/light/2/set/reply");
    // A command waiting does not hold the session up.
    let waiting = json!({"op": "command", "ref": "c2", "topic": "quiet/x", "timeout_ms": 500});
    ws_send(&mut ws, waiting).await;
    assert_eq!(
        ws_request(&mut ws, json!({"op": "ping"}), "p").await["op"],
        "pong"
    );
    let timed_out = ws_next(&mut ws).await;
    assert_eq!(
        (timed_out["ref"].as_str(), timed_out["code"].as_str()),
        (Some("c2"), Some("device-timeout")),
        "{timed_out}"
    );
    assert_eq!(timed_out["timeout_ms"], 500);
    let unrouted = ws_request(
        &mut ws,
        json!({"op": "command", "topic": "nobody/home"}),
        "c3",
    )
    .await;
    assert_eq!(unrouted["code"], "no-subscriber");
    bridge.shutdown().await;
}

/// A command is no way to read what the rules deny: a client that may
/// publish on a topic but not read its reply topic is refused (403)
/// before anything is published.
#[tokio::test]
async fn a_command_needs_the_right_to_read_the_answer() {
    use tidewater::auth::acl::{Actions, Effect};
    use tidewater::config::AclRuleConfig;
    let bridge = start_with(|c| {
        let rule = |action, filter: &str| AclRuleConfig {
            principal: "any".into(),
            effect: Effect::Allow,
            action,
            filter: filter.into(),
        };
        c.auth.acl = vec![
            rule(Actions::Publish, "cmd/#"),
            rule(Actions::Subscribe, "cmd/+"),
            rule(Actions::Both, "open/#"),
        ];
    })
    .await;
    let mut device = Device::connect(bridge.mqtt, "listener").await;
    device.subscribe("cmd/+").await;
    let refused = request(
        bridge.http,
        "POST",
        "/command/cmd/x?timeout_ms=200",
        &[],
        b"1",
    )
    .await;
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(refused.json()["error"], "forbidden");
    // Nothing was published: the device got no command.
    device.publish("cmd/y", "ordinary", false).await;
    assert_eq!(device.next().await.topic, "cmd/y");
    // Where the answer may be read, the command goes out and is answered.
    responder(bridge.mqtt, "open-1", "open/door").await;
    let answered = request(bridge.http, "POST", "/command/open/door", &[], b"x").await;
    assert_eq!(answered.status, 200);
    bridge.shutdown().await;
}
