//! The embedded broker as devices see it, including the rumqttd 0.20
//! behaviours the README lists under "known limits": each is pinned here so
//! an upgrade that changes one is noticed.

mod common;

use std::time::Duration;

use common::{eventually, get, post, request, start, start_with, Device, SseClient, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An MQTT 3.1.1 CONNECT with the given keep-alive, as raw bytes.
fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut variable = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02];
    variable.extend_from_slice(&keep_alive.to_be_bytes());
    variable.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    variable.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend(variable);
    packet
}

/// The first bytes the broker answers a CONNECT with (empty if it closed).
async fn answer_to_connect(addr: std::net::SocketAddr, keep_alive: u16) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&connect_packet("raw", keep_alive))
        .await
        .expect("send CONNECT");
    let mut answer = vec![0; 4];
    match tokio::time::timeout(TIMEOUT, stream.read(&mut answer)).await {
        Ok(Ok(n)) => answer.truncate(n),
        Ok(Err(_)) => answer.clear(),
        Err(_) => panic!("the broker neither answered nor closed"),
    }
    answer
}

/// A CONNECT with keep-alive 0 ("off" in the MQTT spec, which rumqttd
/// 0.20 refuses on its own) is accepted like keep-alive 60: the gate
/// tells the broker a keep-alive of its own and keeps that side alive
/// (the gate's unit tests pin that its PINGRESPs never reach the device).
#[tokio::test]
async fn keep_alive_zero_is_accepted() {
    let bridge = start().await;
    assert_eq!(
        answer_to_connect(bridge.mqtt, 60).await,
        vec![0x20, 0x02, 0x00, 0x00]
    );
    assert_eq!(
        answer_to_connect(bridge.mqtt, 0).await,
        vec![0x20, 0x02, 0x00, 0x00]
    );
    bridge.shutdown().await;
}

/// A message is delivered at the lower of its publisher's QoS and the
/// subscription's: a QoS 0 publish reaches a QoS 2 subscriber at QoS 0
/// (rumqttd alone sends it at QoS 2; the gate acknowledges the broker in
/// the subscriber's place), and later messages keep flowing. Known limit:
/// a QoS 1 publish still reaches a QoS 2 subscription at QoS 2.
#[tokio::test]
async fn delivery_qos_is_at_most_the_publishers() {
    let bridge = start().await;
    let mut subscriber = Device::connect(bridge.mqtt, "qos2").await;
    subscriber
        .client
        .subscribe("q", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let publisher = Device::connect(bridge.mqtt, "qos0").await;
    for i in 0..150 {
        publisher
            .client
            .publish("q", rumqttc::QoS::AtMostOnce, false, format!("{i}"))
            .await
            .expect("publish");
    }
    for i in 0..150 {
        let message = subscriber.next().await;
        assert_eq!(
            (message.qos, &message.payload[..]),
            (rumqttc::QoS::AtMostOnce, format!("{i}").as_bytes())
        );
    }
    publisher.publish("q", "one", false).await;
    assert_eq!(subscriber.next().await.qos, rumqttc::QoS::ExactlyOnce);
    bridge.shutdown().await;
}

/// As MQTT says, only a *retained* publish with an empty payload deletes a
/// topic's retained value; an empty payload published without retain is an
/// ordinary message (rumqttd alone deletes on both: the gate's stamp keeps
/// the second from looking empty to it).
#[tokio::test]
async fn only_a_retained_empty_publish_deletes_the_retained_value() {
    let bridge = start().await;
    let mut device = Device::connect(bridge.mqtt, "eraser").await;
    device.subscribe("state").await;
    device.publish("state", "kept", true).await;
    device.publish("state", "", false).await;
    assert_eq!(device.next().await.payload, "kept");
    let empty = device.next().await;
    assert!(empty.payload.is_empty(), "delivered as an empty message");
    let sse = SseClient::connect(bridge.http, "/events?topic=state", &[]).await;
    let mut sse = sse;
    assert_eq!(sse.expect_event().await.data, "kept", "still retained");

    device.publish("state", "", true).await;
    eventually("all three routed", || bridge.stats().messages_routed >= 3).await;
    let mut later = SseClient::connect(bridge.http, "/events?topic=state", &[]).await;
    device.publish("state", "live", false).await;
    assert_eq!(
        later.expect_event().await.data,
        "live",
        "no retained value is left"
    );
    bridge.shutdown().await;
}

/// Known limit, and the bridge's answer to it: a new QoS 1 MQTT subscriber
/// gets at most 100 retained messages (rumqttd's fixed in-flight window),
/// while a web subscriber gets all of them.
#[tokio::test]
async fn web_subscribers_get_every_retained_value() {
    let bridge = start().await;
    let device = Device::connect(bridge.mqtt, "fleet").await;
    for i in 0..150 {
        device
            .publish(&format!("fleet/{i}/state"), "up", true)
            .await;
    }
    eventually("all routed", || bridge.stats().messages_routed >= 150).await;

    let mut sse = SseClient::connect(bridge.http, "/events?topic=fleet/%2B/state", &[]).await;
    let mut web = 0;
    while web < 150 {
        assert_eq!(sse.expect_event().await.id, None);
        web += 1;
    }

    let mut mqtt = Device::connect(bridge.mqtt, "late-mqtt").await;
    mqtt.client
        .subscribe("fleet/+/state", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(300)).await;
    device.publish("fleet/end/state", "marker", false).await;
    let mut retained = 0;
    loop {
        let message = mqtt.next().await;
        if &message.payload[..] == b"marker" {
            break;
        }
        retained += 1;
    }
    assert_eq!(
        retained, 100,
        "rumqttd caps retained delivery at its in-flight window"
    );
    bridge.shutdown().await;
}

/// MQTT 5 clients connect on `listen_v5` and exchange messages with 3.1.1
/// devices and SSE streams.
#[tokio::test]
async fn mqtt5_listener_exchanges_with_everyone() {
    let bridge =
        start_with(|c| c.mqtt.listen_v5 = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let v5_addr = bridge.mqtt_v5.expect("v5 listener");
    let mut options = rumqttc::v5::MqttOptions::new("v5-device", "127.0.0.1", v5_addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) =
                event
            {
                let _ = tx.send(p).await;
            }
        }
    });
    client
        .subscribe("from/v4", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let mut sse = SseClient::connect(bridge.http, "/events?topic=from/v5", &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let v4 = Device::connect(bridge.mqtt, "v4-device").await;
    v4.publish("from/v4", "hello v5", false).await;
    let got = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(&got.payload[..], b"hello v5");

    client
        .publish(
            "from/v5",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "hello web",
        )
        .await
        .expect("publish");
    assert_eq!(sse.expect_event().await.data, "hello web");
    task.abort();
    bridge.shutdown().await;
}

/// `/healthz` answers 200 with the counters; unknown paths get a JSON 404.
#[tokio::test]
async fn health_and_unknown_paths() {
    let bridge = start().await;
    assert_eq!(post(bridge.http, "/publish/h", b"1").await.status, 202);
    eventually("routed", || bridge.stats().messages_routed >= 1).await;
    let health = get(bridge.http, "/healthz").await;
    assert_eq!(health.status, 200);
    let body = health.json();
    assert_eq!(body["status"], "ok");
    assert!(body["stats"]["messages_routed"].as_u64() >= Some(1));
    let missing = get(bridge.http, "/nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not-found");
    bridge.shutdown().await;
}

/// CORS: a configured origin is allowed, with `Last-Event-ID` in the
/// preflight; other origins get no CORS grant.
#[tokio::test]
async fn cors_follows_the_configured_origins() {
    let bridge =
        start_with(|c| c.http.cors_allowed_origins = vec!["https://dash.example".into()]).await;
    let allowed = request(
        bridge.http,
        "GET",
        "/healthz",
        &[("Origin", "https://dash.example")],
        b"",
    )
    .await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://dash.example")
    );
    let preflight = request(
        bridge.http,
        "OPTIONS",
        "/publish/a",
        &[
            ("Origin", "https://dash.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(preflight.status, 200);
    let other = request(
        bridge.http,
        "GET",
        "/healthz",
        &[("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    bridge.shutdown().await;
}

/// With `http.static_dir` set, files are served at `/` while the API keeps
/// its paths, and a missing file is a JSON 404.
#[tokio::test]
async fn static_dir_is_served_beside_the_api() {
    let dir = std::env::temp_dir().join(format!("tidewater-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create dir");
    std::fs::write(dir.join("index.html"), "<h1>dashboard</h1>").expect("write index");
    let static_dir = dir.clone();
    let bridge = start_with(move |c| c.http.static_dir = Some(static_dir)).await;
    let index = get(bridge.http, "/").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.body, b"<h1>dashboard</h1>");
    assert_eq!(get(bridge.http, "/healthz").await.status, 200);
    let missing = get(bridge.http, "/nope.js").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not-found");
    bridge.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that opens a connection to the MQTT over WebSocket listener
/// and sends nothing holds up no one: the gate runs each handshake on its
/// own, with a timeout (rumqttd 0.20 ran them in its accept loop).
#[tokio::test]
async fn a_silent_client_does_not_stall_the_mqtt_websocket_listener() {
    let bridge =
        start_with(|c| c.mqtt.websocket_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let addr = bridge.mqtt_ws.expect("MQTT over WebSocket listener");
    let upgrade = || async move {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{addr}/mqtt")
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
        tokio_tungstenite::connect_async(request).await
    };
    let _silent = TcpStream::connect(addr).await.expect("connect");
    let upgraded = tokio::time::timeout(TIMEOUT, upgrade())
        .await
        .expect("upgrade in time beside the silent client");
    assert!(upgraded.is_ok());
    bridge.shutdown().await;
}

/// Past `mqtt.max_connections` the gate closes a new connection at once
/// (MQTT has no way to refuse before CONNECT), and counts it; the broker's
/// own limit is above the gate's, so a device retrying against a full
/// bridge never reaches rumqttd's (which left its listener broken), and
/// once a place is free the next device is served.
#[tokio::test]
async fn past_the_connection_limit_the_gate_closes_and_keeps_serving() {
    let bridge = start_with(|c| c.mqtt.max_connections = 1).await;
    let first = Device::connect(bridge.mqtt, "first").await;
    for attempt in 0..20 {
        let mut stream = TcpStream::connect(bridge.mqtt).await.expect("connect");
        let _ = stream.write_all(&connect_packet("second", 30)).await;
        let mut answer = [0u8; 4];
        let read = tokio::time::timeout(TIMEOUT, stream.read(&mut answer))
            .await
            .expect("an answer or a close in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "attempt {attempt}: closed, no CONNACK: {answer:?}"
        );
    }
    drop(first);
    let mut connected = None;
    for _ in 0..50 {
        if let Ok(device) = Device::try_connect(bridge.mqtt, "third", None).await {
            connected = Some(device);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut third = connected.expect("a device is served once a place is free");
    third.subscribe("home/#").await;
    third.publish("home/x", "1", false).await;
    assert_eq!(third.next().await.topic, "home/x");
    bridge.shutdown().await;
}

/// A broker that dies anyway is never left serving. Here rumqttd's router
/// thread panics on a topic whose first character is not ASCII, sent
/// straight to the broker with the gate's login (the gate's translation
/// keeps such topics from it otherwise): `/healthz` answers 503 with the
/// cause, the gate stops accepting, and the bridge shuts itself down, after
/// which the binary exits non-zero for its supervisor to restart it.
#[tokio::test]
async fn a_dead_broker_stops_the_bridge() {
    use common::raw::{self, RawMqtt};
    let mut bridge = start().await;
    let (user, password) = bridge.broker_login.clone();
    let options = raw::Connect {
        level: 4,
        client_id: "past-the-gate",
        login: Some((&user, &password)),
        will_topic: None,
    };
    let (mut direct, code) = RawMqtt::connect(bridge.broker.mqtt, options).await;
    assert_eq!(code, Some(0), "the gate's login opens the broker");
    direct.publish("°C/salon", b"21.5", 0, 0).await;

    let health = bridge.broker_health.clone();
    eventually("the broker declared down", || health.cause().is_some()).await;
    let cause = health.cause().expect("cause").to_owned();
    assert!(cause.contains("link closed"), "{cause}");
    let answer = get(bridge.http, "/healthz").await;
    assert_eq!(answer.status, 503, "within the grace period");
    assert_eq!(answer.json()["status"], "broker-down");
    assert_eq!(answer.json()["cause"], cause.as_str());
    eventually("the gate closed its listener", || {
        std::net::TcpStream::connect(bridge.mqtt).is_err()
    })
    .await;
    bridge.stops_on_its_own().await;
}

/// A will is published as it was set, whichever way it was: a device that
/// vanishes without DISCONNECT has its will (QoS 1, retained) delivered to
/// MQTT subscribers with its exact payload, and to web clients with its
/// QoS; it stays the topic's retained value.
#[tokio::test]
async fn a_will_reaches_everyone_as_it_was_set() {
    use common::raw;
    let bridge = start().await;
    let mut watcher = Device::connect(bridge.mqtt, "watcher").await;
    watcher.subscribe("wills/#").await;
    let mut sse = SseClient::connect(bridge.http, "/events?topic=wills/%23&format=json", &[]).await;
    for level in [4, 5] {
        let topic = format!("wills/{level}");
        let options = raw::Connect {
            level,
            client_id: "mortal",
            login: None,
            will_topic: Some(&topic),
        };
        let mut connect = raw::connect_packet(&options);
        // Will QoS 1 and will retain, in the flags after "MQTT" and the level.
        connect[2 + 6 + 1] |= 0x08 | 0x20;
        let mut stream = TcpStream::connect(bridge.mqtt).await.expect("connect");
        stream.write_all(&connect).await.expect("CONNECT");
        let mut connack = [0u8; 4];
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut connack))
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        assert_eq!((connack[0], connack[3]), (0x20, 0), "level {level}");
        drop(stream);

        let will = watcher.next().await;
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            (topic.as_str(), &b"gone"[..])
        );
        let json: serde_json::Value =
            serde_json::from_str(&sse.expect_event().await.data).expect("json");
        assert_eq!(json["topic"], topic.as_str());
        assert_eq!(json["payload"], "gone");
        assert_eq!(
            (json["qos"].as_u64(), json["retain"].as_bool()),
            (Some(1), Some(false)),
            "live, at the will's QoS"
        );
    }
    let mut later = SseClient::connect(bridge.http, "/events?topic=wills/%23", &[]).await;
    let mut retained = vec![
        later.expect_event().await.data,
        later.expect_event().await.data,
    ];
    retained.sort();
    assert_eq!(retained, ["gone", "gone"]);
    bridge.shutdown().await;
}

/// Devices that drop their connection and reconnect at once, with the
/// same client id and a will, many at a time and alternating MQTT 3.1.1
/// and 5, with sessions that end with the connection or outlive it, are
/// let back in every time, and the broker keeps serving: rumqttd 0.20
/// alone panics on such reconnects while holding a lock, and its MQTT 5
/// listener then refuses everyone (see `gate::registry`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_reconnect_at_once_are_let_back_in() {
    use common::raw;
    let bridge = start().await;
    let addr = bridge.mqtt;
    let mut flappers = Vec::new();
    for device in 0..8 {
        flappers.push(tokio::spawn(async move {
            let client_id = format!("flappy/{device}");
            let persistent = device % 2 == 1;
            for round in 0..30 {
                let level = 4 + (round % 2) as u8;
                let options = raw::Connect {
                    level,
                    client_id: &client_id,
                    login: None,
                    will_topic: Some("wills/flappy"),
                };
                let mut connect = raw::connect_packet(&options);
                if persistent {
                    // Clean Session / Clean Start off, in the connect flags.
                    connect[2 + 6 + 1] &= !0x02;
                }
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                stream.write_all(&connect).await.expect("CONNECT");
                let mut connack = [0u8; 4];
                let answer = tokio::time::timeout(TIMEOUT, stream.read_exact(&mut connack)).await;
                assert!(
                    matches!(answer, Ok(Ok(_))) && connack[0] == 0x20 && connack[3] == 0,
                    "{client_id}, level {level}, round {round}: {connack:?}"
                );
            }
        }));
    }
    for flapper in flappers {
        flapper.await.expect("every reconnect admitted");
    }
    for level in [4, 5] {
        let options = common::raw::Connect {
            level,
            client_id: "after",
            login: None,
            will_topic: None,
        };
        let (_, code) = common::raw::RawMqtt::connect(bridge.mqtt, options).await;
        assert_eq!(code, Some(0), "the MQTT {level} listener still serves");
    }
    assert_eq!(get(bridge.http, "/healthz").await.status, 200);
    bridge.shutdown().await;
}

/// rumqttd 0.20 hands an MQTT 5 publish's properties (content type,
/// response topic, correlation data) to every subscriber, and its 3.1.1
/// writer panics on them, which stopped the 3.1.1 listener for every
/// device. The gate passes no properties but the topic alias: the 3.1.1
/// subscriber gets the message, and the listener goes on serving.
#[tokio::test]
async fn mqtt5_publish_properties_do_not_take_down_mqtt311_devices() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, MqttOptions};
    let bridge =
        start_with(|c| c.mqtt.listen_v5 = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let mut v4 = Device::connect(bridge.mqtt, "v4-sub").await;
    v4.subscribe("props/x").await;
    let addr = bridge.mqtt_v5.expect("v5");
    let mut options = MqttOptions::new("v5-pub", "127.0.0.1", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let props = PublishProperties {
        response_topic: Some("props/x/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"c1")),
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    client
        .publish_with_properties("props/x", QoS::AtLeastOnce, false, "hello", props)
        .await
        .expect("pub");
    let got = v4.next().await;
    assert_eq!(&got.payload[..], b"hello");
    v4.publish("props/x", "again", false).await;
    assert_eq!(&v4.next().await.payload[..], b"again");
    bridge.shutdown().await;
}

/// The same for a will's properties: the will reaches a 3.1.1 subscriber,
/// plain, and the listener goes on.
#[tokio::test]
async fn mqtt5_will_properties_do_not_take_down_mqtt311_devices() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, MqttOptions};
    let bridge =
        start_with(|c| c.mqtt.listen_v5 = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let mut v4 = Device::connect(bridge.mqtt, "v4-sub").await;
    v4.subscribe("wills/x").await;
    let addr = bridge.mqtt_v5.expect("v5");
    let mut options = MqttOptions::new("v5-will", "127.0.0.1", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let props = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: Some("a/b".into()),
        correlation_data: None,
        user_properties: Vec::new(),
    };
    options.set_last_will(LastWill::new(
        "wills/x",
        "gone",
        QoS::AtMostOnce,
        false,
        Some(props),
    ));
    let (_client, mut eventloop) = AsyncClient::new(options, 64);
    let task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let got = v4.next().await;
    assert_eq!(&got.payload[..], b"gone");
    v4.publish("wills/x", "again", false).await;
    assert_eq!(&v4.next().await.payload[..], b"again");
    bridge.shutdown().await;
}
