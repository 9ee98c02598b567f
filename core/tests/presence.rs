//! Device presence end to end: every way a real device comes and goes
//! through the gate shows on `$tidewater/presence/<client id>`, retained,
//! for SSE, WebSocket and MQTT subscribers alike, under the access rules;
//! nobody else may publish there; `GET /devices` lists what the caller may
//! read.

mod common;

use common::raw::{self, RawMqtt};
use common::{gated, get, request, start_with, ws_connect, ws_next, SseClient};
use serde_json::{json, Value};

/// A raw MQTT client named `id`, with a will on `will` if given.
async fn device(addr: std::net::SocketAddr, level: u8, id: &str, will: Option<&str>) -> RawMqtt {
    let options = raw::Connect {
        level,
        client_id: id,
        login: None,
        will_topic: will,
    };
    let (client, code) = RawMqtt::connect(addr, options).await;
    assert_eq!(code, Some(0), "{id} connects");
    client
}

/// A stream of every device's presence.
async fn watch_presence(bridge: &common::TestBridge) -> SseClient {
    let path = "/events?topic=%24tidewater%2Fpresence%2F%2B";
    SseClient::connect(bridge.http, path, &[]).await
}

/// The client ids `GET /devices` lists, in order.
async fn listed_ids(bridge: &common::TestBridge) -> Vec<String> {
    let listed: Value = get(bridge.http, "/devices").await.json();
    listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| d["client_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The next presence state on `sse`, as JSON.
async fn next_state(sse: &mut SseClient) -> Value {
    let event = sse.expect_event().await;
    serde_json::from_str(&event.data).expect("presence is JSON")
}

/// Connect, a clean DISCONNECT, a lost connection, a takeover and a will:
/// each is one state, with who ended it.
#[tokio::test]
async fn presence_follows_every_way_a_device_comes_and_goes() {
    let bridge = start_with(|c| c.presence.enabled = true).await;
    let mut sse = watch_presence(&bridge).await;

    let mut lamp = device(bridge.mqtt, 4, "lamp/1", None).await;
    let online = next_state(&mut sse).await;
    assert_eq!(
        (online["client_id"].as_str(), online["online"].as_bool()),
        (Some("lamp/1"), Some(true)),
        "{online}"
    );
    assert!(online["since"].as_u64().is_some_and(|t| t > 0));
    lamp.send(&[0xe0, 0x00]).await;
    let gone = next_state(&mut sse).await;
    assert_eq!(
        (
            gone["online"].as_bool(),
            gone["reason"].as_str(),
            gone["will_sent"].as_bool()
        ),
        (Some(false), Some("client-disconnect"), Some(false)),
        "{gone}"
    );

    let lost = device(bridge.mqtt, 5, "sensor-9", Some("home/sensor-9/status")).await;
    assert_eq!(next_state(&mut sse).await["online"], true);
    drop(lost);
    let gone = next_state(&mut sse).await;
    assert_eq!(
        (gone["reason"].as_str(), gone["will_sent"].as_bool()),
        (Some("connection-lost"), Some(true)),
        "{gone}"
    );

    let _first = device(bridge.mqtt, 4, "twin", None).await;
    assert_eq!(next_state(&mut sse).await["online"], true);
    // A takeover leaves the device online: the new connection's state is
    // the last word, whichever event comes first (the old connection's
    // `taken-over` shows only if it does).
    let _second = device(bridge.mqtt, 4, "twin", None).await;
    let mut state = next_state(&mut sse).await;
    if state["online"] == false {
        assert_eq!(state["reason"], "taken-over", "{state}");
        state = next_state(&mut sse).await;
    }
    assert_eq!(state["online"], true, "{state}");
    let device_list: Value = get(bridge.http, "/devices").await.json();
    let twin = device_list
        .as_array()
        .expect("a list")
        .iter()
        .find(|d| d["client_id"] == "twin")
        .cloned()
        .expect("twin listed");
    assert_eq!(twin["online"], true, "{twin}");

    // The topic holds the id as one level.
    let retained = SseClient::connect(
        bridge.http,
        "/events?topic=%24tidewater%2Fpresence%2Flamp%252F1",
        &[],
    )
    .await
    .expect_event()
    .await;
    let state: Value = serde_json::from_str(&retained.data).expect("JSON");
    assert_eq!(state["reason"], "client-disconnect", "retained: {state}");
    bridge.shutdown().await;
}

/// A device that stays silent past its keep-alive is ended by the broker,
/// and its presence says so.
#[tokio::test]
async fn a_silent_device_times_out() {
    let bridge = start_with(|c| c.presence.enabled = true).await;
    let mut sse = watch_presence(&bridge).await;
    let mut connect = raw::connect_packet(&raw::Connect {
        level: 4,
        client_id: "sleepy",
        login: None,
        will_topic: None,
    });
    // Keep-alive 1 s: fixed header (2), "MQTT" (6), level, flags.
    connect[10..12].copy_from_slice(&[0, 1]);
    let (_silent, code) = RawMqtt::connect_with(bridge.mqtt, 4, &connect).await;
    assert_eq!(code, Some(0));
    assert_eq!(next_state(&mut sse).await["online"], true);
    let gone = next_state(&mut sse).await;
    assert_eq!(gone["reason"], "keep-alive-timeout", "{gone}");
    bridge.shutdown().await;
}

/// MQTT and WebSocket subscribers see presence too, retained first; and
/// no client may publish under `$tidewater/`.
#[tokio::test]
async fn presence_reaches_every_protocol_and_only_the_bridge_writes_it() {
    let bridge = start_with(|c| c.presence.enabled = true).await;
    let mut everything = device(bridge.mqtt, 4, "everything", None).await;
    assert_eq!(everything.subscribe(1, &[("#", 0)]).await, [0]);
    let _door = device(bridge.mqtt, 4, "door", None).await;
    // Both states retained before anyone subscribes (presence is
    // published as the gate reports, not before the CONNACK).
    common::eventually("two states published", || {
        bridge.stats().presence_published >= 2
    })
    .await;
    let mut ws = ws_connect(bridge.ws).await;
    let subscribe = json!({"op": "subscribe", "topics": ["$tidewater/presence/+"]});
    let mut early = Vec::new();
    let ack = common::ws_request_collecting(&mut ws, subscribe, "s", &mut early).await;
    assert_eq!(ack["op"], "ack");
    while early.len() < 2 {
        early.push(ws_next(&mut ws).await);
    }
    let mut retained: Vec<_> = early.drain(..).map(|f| f["topic"].to_string()).collect();
    retained.sort();
    assert_eq!(
        retained,
        [
            "\"$tidewater/presence/door\"",
            "\"$tidewater/presence/everything\""
        ]
    );

    let mut watcher = device(bridge.mqtt, 5, "watcher", None).await;
    assert_eq!(
        watcher.subscribe(1, &[("$tidewater/presence/#", 0)]).await,
        [0]
    );
    // The two retained states and the watcher's own, in any order.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(watcher.next_publish().await.topic);
    }
    assert!(
        seen.contains(&"$tidewater/presence/door".to_owned()),
        "{seen:?}"
    );

    // `#` never matches a `$` topic: the first thing `everything` gets is
    // an ordinary message.
    watcher.publish("home/hall", b"on", 0, 0).await;
    assert_eq!(everything.next_publish().await.topic, "home/hall");

    watcher
        .publish("$tidewater/presence/door", b"{}", 1, 7)
        .await;
    assert_eq!(watcher.ack(4, 7).await, 0x87, "not authorized");
    let http = request(
        bridge.http,
        "POST",
        "/publish/%24tidewater/presence/door",
        &[],
        b"{}",
    )
    .await;
    assert_eq!(http.status, 403);
    let refused = common::ws_request_collecting(
        &mut ws,
        json!({"op": "publish", "topic": "$tidewater/presence/door", "payload": "{}"}),
        "p",
        &mut early,
    )
    .await;
    assert_eq!(refused["code"], "forbidden");
    let ids = listed_ids(&bridge).await;
    assert_eq!(ids, ["door", "everything", "watcher"]);
    bridge.shutdown().await;
}

/// Presence passes the access rules like any topic: a user sees the
/// devices the rules let it read, and `GET /devices` lists those only.
#[tokio::test]
async fn rules_decide_whose_presence_a_client_sees() {
    use tidewater::auth::acl::{Actions, Effect};
    use tidewater::config::AclRuleConfig;
    let bridge = start_with(|c| {
        gated(c);
        c.presence.enabled = true;
        c.auth.acl.insert(
            0,
            AclRuleConfig {
                principal: "anonymous".into(),
                effect: Effect::Allow,
                action: Actions::Subscribe,
                filter: "$tidewater/presence/sensor-1".into(),
            },
        );
    })
    .await;
    let password = common::password("sensor");
    for id in ["sensor-1", "admin-1"] {
        let user = if id.starts_with("sensor") {
            "sensor"
        } else {
            "admin"
        };
        let password = if user == "sensor" {
            password.clone()
        } else {
            common::password("admin")
        };
        let options = raw::Connect {
            level: 4,
            client_id: id,
            login: Some((user, &password)),
            will_topic: None,
        };
        let (client, code) = RawMqtt::connect(bridge.mqtt, options).await;
        assert_eq!(code, Some(0), "{id}");
        std::mem::forget(client);
    }
    common::eventually("both devices' presence", || {
        bridge.stats().presence_published >= 2
    })
    .await;
    let ids = listed_ids(&bridge).await;
    assert_eq!(ids, ["sensor-1"], "anonymous reads sensor presence only");
    let denied = request(
        bridge.http,
        "GET",
        "/events?topic=%24tidewater%2Fpresence%2F%2B",
        &[],
        b"",
    )
    .await;
    assert_eq!(denied.status, 403, "a filter wider than the rule allows");
    bridge.shutdown().await;
}
