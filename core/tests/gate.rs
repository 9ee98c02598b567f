//! The MQTT gate end to end: devices held to the access rules on what they
//! subscribe to, publish and receive, on every MQTT listener and in both
//! protocol versions; its limits; and an open bridge, which is a gate that
//! allows everything. The rules are [`common::gated`]'s.

mod common;

use std::net::SocketAddr;

use common::raw::{self, RawMqtt};
use common::{gated, password, start, start_with};
use tidewater::stats::{Limit, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBCOMP: u8 = 7;

/// A client logged in as `user` (with its password) that the gate admitted.
async fn login(addr: SocketAddr, level: u8, user: &str, client_id: &str) -> RawMqtt {
    let password = password(user);
    let options = raw::Connect {
        level,
        client_id,
        login: Some((user, &password)),
        will_topic: None,
    };
    let (client, code) = RawMqtt::connect(addr, options).await;
    assert_eq!(code, Some(0), "{user} connects");
    client
}

/// A subscription to `home/#` is allowed but checked per message: what the
/// rules deny (`home/secret/…`, which only the admin may write) never
/// reaches it, live or retained, at QoS 0, 1 or 2. The gate acknowledges
/// what it withholds, so the broker's in-flight window (4 here) never
/// fills and later messages still arrive.
#[tokio::test]
async fn deliveries_the_rules_deny_are_withheld() {
    let bridge = start_with(|c| {
        gated(c);
        c.mqtt.max_inflight = 4;
    })
    .await;
    let mut admin = login(bridge.mqtt, 4, "admin", "admin").await;
    assert_eq!(admin.subscribe(1, &[("home/secret/#", 0)]).await, [0x80]);
    admin.publish_retained("home/secret/code", b"1234").await;
    admin.publish_retained("home/kitchen/mode", b"eco").await;
    // The admin's publishes are in the broker once it answers a PINGREQ.
    admin.send(&[0xc0, 0]).await;
    assert_eq!(admin.next_control().await.kind(), 13);

    let mut readers = Vec::new();
    for (qos, level) in [(0, 4), (1, 4), (2, 4), (1, 5), (2, 5)] {
        let id = format!("sensor-reader-{qos}-{level}");
        let mut reader = login(bridge.mqtt, level, "sensor", &id).await;
        assert_eq!(reader.subscribe(1, &[("home/#", qos)]).await, [qos]);
        let retained = reader.next_publish().await;
        assert_eq!(retained.topic, "home/kitchen/mode", "retained, QoS {qos}");
        assert!(retained.retain);
        readers.push(reader);
    }
    for i in 0..10 {
        admin
            .publish("home/secret/door", format!("{i}").as_bytes(), 0, 0)
            .await;
    }
    admin.publish("home/kitchen/light", b"on", 0, 0).await;
    for reader in &mut readers {
        let next = reader.next_publish().await;
        assert_eq!(next.topic, "home/kitchen/light");
        assert_eq!(next.payload, b"on");
    }
    let stats = bridge.stats();
    assert_eq!(stats.mqtt_deliveries_withheld, 5 * 11, "5 readers, 11 each");
    assert_eq!(stats.deliveries_withheld, 5 * 11);
    bridge.shutdown().await;
}

/// A will on a topic the client may not publish is refused at CONNECT,
/// with return code 5 (MQTT 3.1.1) or reason code 0x87 (MQTT 5), and
/// counted; an allowed will connects.
#[tokio::test]
async fn wills_must_be_publishable() {
    let bridge = start_with(gated).await;
    let password = password("sensor");
    for (level, refused) in [(4, 5), (5, 0x87)] {
        for (will, expected) in [("home/secret/will", refused), ("home/kitchen/will", 0)] {
            let options = raw::Connect {
                level,
                client_id: "sensor-willing",
                login: Some(("sensor", &password)),
                will_topic: Some(will),
            };
            let (_, code) = RawMqtt::connect(bridge.mqtt, options).await;
            assert_eq!(code, Some(expected), "{will} at level {level}");
        }
    }
    assert_eq!(bridge.stats().mqtt_publishes_denied, 2);
    bridge.shutdown().await;
}

/// `%u` and `%c` work for MQTT users: the username and the client id.
#[tokio::test]
async fn usernames_and_client_ids_in_rules() {
    let bridge = start_with(gated).await;
    let mut guest = login(bridge.mqtt, 4, "guest", "guest-1").await;
    let codes = guest
        .subscribe(
            1,
            &[("users/guest/#", 1), ("users/sensor/#", 1), ("home/#", 0)],
        )
        .await;
    assert_eq!(codes, [1, 0x80, 0x80], "its own space only, and no role");
    guest.publish("clients/guest-1/out", b"mine", 1, 2).await;
    guest.ack(PUBACK, 2).await;
    guest
        .publish("clients/guest-2/out", b"not mine", 1, 3)
        .await;
    guest.ack(PUBACK, 3).await;
    guest.publish("users/guest/note", b"end", 0, 0).await;
    assert_eq!(
        guest.topics_until("users/guest/note").await,
        ["users/guest/note"]
    );
    assert_eq!(
        bridge.stats().mqtt_publishes_denied,
        1,
        "clients/guest-2/out"
    );
    bridge.shutdown().await;
}

/// MQTT 5 clients get reason code 0x87 in SUBACK, PUBACK and PUBREC; an
/// MQTT 3.1.1 QoS 2 publish that was refused is completed by the gate.
/// Topic aliases are resolved before the check, and an alias the client
/// re-pointed at a denied topic stays denied (the broker still holds the
/// old topic for it, and never gets the publish).
#[tokio::test]
async fn mqtt5_reason_codes_and_topic_aliases() {
    let bridge = start_with(gated).await;
    let mut v5 = login(bridge.mqtt, 5, "sensor", "sensor-v5").await;
    let codes = v5
        .subscribe(1, &[("home/secret/#", 0), ("home/kitchen/#", 0)])
        .await;
    assert_eq!(codes, [0x87, 0]);
    v5.publish("home/secret/a", b"x", 1, 2).await;
    assert_eq!(v5.ack(PUBACK, 2).await, 0x87);
    v5.publish("home/secret/b", b"x", 2, 3).await;
    assert_eq!(v5.ack(PUBREC, 3).await, 0x87);

    let publishes = [
        ("home/kitchen/a", Some(1), "set 1", 0),
        ("home/secret/c", Some(2), "set 2", 0x87),
        ("", Some(2), "use 2", 0x87),
        ("", Some(1), "use 1", 0),
        ("home/secret/d", Some(1), "re-point 1", 0x87),
        ("", Some(1), "use 1 again", 0x87),
        ("home/kitchen/b", Some(1), "re-point 1 back", 0),
        ("", Some(1), "use 1 last", 0),
    ];
    for (i, (topic, alias, payload, reason)) in publishes.into_iter().enumerate() {
        let id = 10 + i as u16;
        let bytes = v5.publish_packet(topic, payload.as_bytes(), 1, id, alias);
        v5.send(&bytes).await;
        assert_eq!(v5.ack(PUBACK, id).await, reason, "{payload}");
    }
    let mut received = Vec::new();
    for _ in 0..4 {
        let message = v5.next_publish().await;
        received.push((
            message.topic,
            String::from_utf8(message.payload).expect("text"),
        ));
    }
    let expected = [
        ("home/kitchen/a", "set 1"),
        ("home/kitchen/a", "use 1"),
        ("home/kitchen/b", "re-point 1 back"),
        ("home/kitchen/b", "use 1 last"),
    ];
    assert_eq!(
        received,
        expected.map(|(t, p)| (t.to_owned(), p.to_owned()))
    );

    let mut v4 = login(bridge.mqtt, 4, "sensor", "sensor-v4").await;
    v4.publish("home/secret/e", b"x", 2, 7).await;
    assert_eq!(v4.ack(PUBREC, 7).await, 0);
    v4.send(&[0x62, 2, 0, 7]).await;
    assert_eq!(v4.ack(PUBCOMP, 7).await, 0, "the gate completes the flow");
    assert_eq!(bridge.stats().mqtt_publishes_denied, 2 + 4 + 1);
    bridge.shutdown().await;
}

/// MQTT over WebSocket goes through the gate too, with the same rules.
#[tokio::test]
async fn mqtt_over_websocket_follows_the_rules() {
    let bridge = start_with(|c| {
        gated(c);
        c.mqtt.websocket_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let ws_addr = bridge.mqtt_ws.expect("MQTT over WebSocket listener");
    let password = password("sensor");
    let options = raw::Connect {
        level: 4,
        client_id: "sensor-browser",
        login: Some(("sensor", &password)),
        will_topic: None,
    };
    let (mut browser, code) = RawMqtt::connect_ws(ws_addr, options).await;
    assert_eq!(code, Some(0));
    let codes = browser
        .subscribe(1, &[("home/secret/#", 0), ("home/#", 0)])
        .await;
    assert_eq!(codes, [0x80, 0]);
    let mut admin = login(bridge.mqtt, 4, "admin", "admin").await;
    admin.publish("home/secret/x", b"hidden", 0, 0).await;
    admin.publish("home/kitchen/y", b"seen", 0, 0).await;
    browser.publish("home/secret/z", b"refused", 1, 2).await;
    browser.ack(PUBACK, 2).await;
    assert_eq!(
        browser.topics_until("home/kitchen/y").await,
        ["home/kitchen/y"]
    );
    let stats = bridge.stats();
    assert_eq!(
        (stats.mqtt_publishes_denied, stats.mqtt_deliveries_withheld),
        (1, 1)
    );
    bridge.shutdown().await;
}

/// An open bridge (no `[auth]` rules or identities) is a gate with no
/// rules: its MQTT port takes both protocol versions, like every gate
/// port, and nothing is checked or counted.
#[tokio::test]
async fn an_open_bridge_is_a_gate_that_allows_everything() {
    let bridge = start().await;
    let anonymous = |level, client_id| raw::Connect {
        level,
        client_id,
        login: None,
        will_topic: None,
    };
    let (_, code) = RawMqtt::connect(bridge.mqtt, anonymous(5, "open-5")).await;
    assert_eq!(code, Some(0), "the gate routes MQTT 5 on the plain port");
    let (mut device, code) = RawMqtt::connect(bridge.mqtt, anonymous(4, "open")).await;
    assert_eq!(code, Some(0));
    assert_eq!(device.subscribe(1, &[("#", 0)]).await, [0]);
    device.publish("home/secret/door", b"open", 0, 0).await;
    assert_eq!(device.next_publish().await.topic, "home/secret/door");
    let stats = bridge.stats();
    assert_eq!(
        (stats.mqtt_publishes_denied, stats.mqtt_subscriptions_denied),
        (0, 0)
    );
    assert!(stats.mqtt_connections_opened >= 2, "counted by the gate");
    bridge.shutdown().await;
}

/// Even on an open bridge the MQTT 5 listener is the gate's: clients that
/// send packets only a server sends (rumqttd 0.20's MQTT 5 reader panics on
/// them, and enough panics leave its listener refusing everyone) are cut
/// off at the gate, and the next client is served.
#[tokio::test]
async fn mqtt5_clients_cannot_break_the_listener() {
    let bridge =
        start_with(|c| c.mqtt.listen_v5 = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let v5 = bridge.mqtt_v5.expect("MQTT 5 listener");
    let options = || raw::Connect {
        level: 5,
        client_id: "same-id",
        login: None,
        will_topic: None,
    };
    for _ in 0..300 {
        let (mut client, code) = RawMqtt::connect(v5, options()).await;
        assert_eq!(code, Some(0));
        client.send(&[0x20, 3, 0, 0, 0]).await; // a CONNACK, from a client
        assert!(client.next().await.is_none(), "the gate closes it");
    }
    let (mut device, code) = RawMqtt::connect(v5, options()).await;
    assert_eq!(code, Some(0), "the listener still serves");
    assert_eq!(device.subscribe(1, &[("after/#", 0)]).await, [0]);
    device.publish("after/1", b"ok", 0, 0).await;
    assert_eq!(device.next_publish().await.topic, "after/1");
    bridge.shutdown().await;
}

/// A packet larger than `mqtt.max_payload_bytes` plus the gate's headroom
/// closes its connection as soon as its fixed header arrives, counted.
#[tokio::test]
async fn oversized_packets_close_the_connection() {
    let bridge = start_with(|c| {
        gated(c);
        c.mqtt.max_payload_bytes = 1_024;
    })
    .await;
    let mut sensor = login(bridge.mqtt, 4, "sensor", "sensor-big").await;
    let mut header = vec![0x30];
    raw::varint(&mut header, 1_000_000);
    sensor.send(&header).await;
    assert_eq!(sensor.next().await, None, "closed");
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::Payload), 1);
    bridge.shutdown().await;
}

/// Past `mqtt.max_connections` open connections on a gate listener, a new
/// one is closed at once, and counted.
#[tokio::test]
async fn connections_past_the_limit_are_closed() {
    let bridge = start_with(|c| {
        gated(c);
        c.mqtt.max_connections = 4;
        // The four stay open without a CONNECT for the whole test.
        c.mqtt.connection_timeout_ms = 60_000;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(bridge.mqtt)
            .await
            .expect("connect");
        // A byte of a CONNECT, so the connection is surely accepted.
        stream.write_all(&[0x10]).await.expect("write");
        open.push(stream);
    }
    // The listener accepts in arrival order: these four hold every slot.
    let mut fifth = tokio::net::TcpStream::connect(bridge.mqtt)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(common::TIMEOUT, fifth.read(&mut byte))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::Connections), 1);
    bridge.shutdown().await;
}

/// `mqtt.max_subscriptions` bounds the filters one connection holds: the
/// extra ones get a failure code (MQTT 5: 0x97) and are counted; a filter
/// held already is not counted twice, and an unsubscribe makes room.
#[tokio::test]
async fn subscriptions_past_the_limit_are_refused() {
    let bridge = start_with(|c| {
        gated(c);
        c.mqtt.max_subscriptions = 2;
    })
    .await;
    let mut sensor = login(bridge.mqtt, 5, "sensor", "sensor-many").await;
    let codes = sensor
        .subscribe(1, &[("home/a/#", 0), ("home/b/#", 0), ("home/c/#", 0)])
        .await;
    assert_eq!(codes, [0, 0, 0x97]);
    assert_eq!(sensor.subscribe(2, &[("home/a/#", 1)]).await, [1]);
    sensor.unsubscribe(3, &["home/b/#"]).await;
    assert_eq!(sensor.subscribe(4, &[("home/c/#", 0)]).await, [0]);
    sensor.publish("home/c/1", b"held", 0, 0).await;
    assert_eq!(sensor.next_publish().await.topic, "home/c/1");
    let mut device = login(bridge.mqtt, 4, "sensor", "sensor-few").await;
    let codes = device
        .subscribe(1, &[("home/a/#", 0), ("home/b/#", 0), ("home/c/#", 0)])
        .await;
    assert_eq!(
        codes,
        [0, 0, 0x80],
        "MQTT 3.1.1: 0x80, each connection counted apart"
    );
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(refusals.limited(Protocol::Mqtt, Limit::Subscriptions), 2);
    bridge.shutdown().await;
}

/// Connections through the gate are in `/metrics`, open and opened.
#[tokio::test]
async fn gate_connections_are_in_metrics() {
    let bridge = start_with(gated).await;
    let connections = |series: &'static str| {
        let http = bridge.http;
        async move {
            let text = String::from_utf8(common::get(http, "/metrics").await.body).expect("UTF-8");
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        }
    };
    let first = login(bridge.mqtt, 4, "sensor", "sensor-one").await;
    let _second = login(bridge.mqtt, 5, "sensor", "sensor-two").await;
    assert_eq!(
        connections("tidewater_connections{protocol=\"mqtt\"}").await,
        2
    );
    drop(first);
    let mut open = 2;
    for _ in 0..100 {
        open = connections("tidewater_connections{protocol=\"mqtt\"}").await;
        if open == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(open, 1, "a closed connection leaves the gauge");
    assert_eq!(
        connections("tidewater_connections_opened_total{protocol=\"mqtt\"}").await,
        2
    );
    bridge.shutdown().await;
}

/// `limits.mqtt_publish_rate` gives each MQTT connection a token bucket:
/// past the burst, publishes are dropped and counted, and QoS 1 still gets
/// its PUBACK (MQTT 5: reason 0x97, quota exceeded).
#[tokio::test]
async fn mqtt_publish_rate_is_limited() {
    let bridge = start_with(|c| {
        gated(c);
        c.limits.mqtt_publish_rate = 1;
        c.limits.mqtt_publish_burst = 2;
    })
    .await;
    let mut sensor = login(bridge.mqtt, 5, "sensor", "sensor-fast").await;
    let mut reasons = Vec::new();
    for id in 1..=10 {
        sensor.publish("home/kitchen/fast", b"x", 1, id).await;
    }
    for id in 1..=10 {
        reasons.push(sensor.ack(PUBACK, id).await);
    }
    assert_eq!(reasons[..2], [0, 0], "the burst passes");
    let refused = reasons.iter().filter(|r| **r == 0x97).count();
    assert!(refused >= 1, "{reasons:?}");
    assert_eq!(refused + reasons.iter().filter(|r| **r == 0).count(), 10);
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(
        refusals.limited(Protocol::Mqtt, Limit::Rate),
        refused as u64
    );
    bridge.shutdown().await;
}

/// The gate's MQTT-over-WebSocket listener upgrades each client in its own
/// task: a connection that says nothing holds up nobody (rumqttd's own
/// listener, on an open bridge, waits behind it; see `core/tests/broker.rs`).
#[tokio::test]
async fn a_silent_client_does_not_stall_the_gate() {
    let bridge = start_with(|c| {
        gated(c);
        c.mqtt.websocket_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let ws_addr = bridge.mqtt_ws.expect("MQTT over WebSocket listener");
    let _silent = tokio::net::TcpStream::connect(ws_addr)
        .await
        .expect("connect");
    let _silent_tcp = tokio::net::TcpStream::connect(bridge.mqtt)
        .await
        .expect("connect");
    let password = password("sensor");
    let options = |client_id| raw::Connect {
        level: 4,
        client_id,
        login: Some(("sensor", &password)),
        will_topic: None,
    };
    let (_, code) = RawMqtt::connect_ws(ws_addr, options("sensor-after-silent-ws")).await;
    assert_eq!(code, Some(0));
    let (_, code) = RawMqtt::connect(bridge.mqtt, options("sensor-after-silent-tcp")).await;
    assert_eq!(code, Some(0));
    bridge.shutdown().await;
}

/// The broker's own listeners, on loopback ports, take no login but the
/// gate's (a secret made at each start): a client on the machine that finds
/// them cannot log in with a user's password, as anonymous, or by guessing
/// the gate's, even where the gate lets anonymous clients in. The gate
/// still admits the same clients.
#[tokio::test]
async fn the_broker_takes_only_the_gates_login() {
    let bridge = start_with(|c| {
        gated(c);
        c.auth.anonymous_mqtt = true;
    })
    .await;
    let sensor = password("sensor");
    let logins = [
        None,
        Some(("sensor", sensor.as_str())),
        Some(("$tidewater-gate", "guess")),
    ];
    let internal = [
        (bridge.broker.mqtt, 4),
        (bridge.broker.mqtt_v5.expect("internal MQTT 5 listener"), 5),
    ];
    for (addr, level) in internal {
        for login in logins {
            let options = raw::Connect {
                level,
                client_id: "sensor-direct",
                login,
                will_topic: None,
            };
            let (_, code) = RawMqtt::connect(addr, options).await;
            assert_ne!(code, Some(0), "{login:?} straight to the broker at {addr}");
        }
    }
    let mut through = login(bridge.mqtt, 4, "sensor", "sensor-direct").await;
    assert_eq!(through.subscribe(1, &[("home/#", 0)]).await, [0]);
    let anonymous = raw::Connect {
        level: 5,
        client_id: "panel",
        login: None,
        will_topic: None,
    };
    let (_, code) = RawMqtt::connect(bridge.mqtt, anonymous).await;
    assert_eq!(code, Some(0), "anonymous through the gate");
    bridge.shutdown().await;
}

/// A client id belongs to one user: its name, `<name>-…` and `<name>/…`,
/// and the patterns in its `client_ids`. Another user or an anonymous
/// client claiming it is refused at CONNECT (return code 2, reason code
/// 0x85) and counted, so nobody can take over someone else's session or
/// will. Ids nobody owns are free for anonymous clients.
#[tokio::test]
async fn client_ids_belong_to_their_users() {
    let bridge = start_with(|c| {
        gated(c);
        c.auth.anonymous_mqtt = true;
        let guest = c.auth.users.iter_mut().find(|u| u.name == "guest");
        guest.expect("guest").client_ids = vec!["kiosk-*".into()];
    })
    .await;
    let guest = password("guest");
    let as_guest = Some(("guest", guest.as_str()));
    let claims = [
        (as_guest, "sensor", false),
        (as_guest, "sensor-1", false),
        (as_guest, "sensor/door", false),
        (as_guest, "kiosk-7", true),
        (as_guest, "guest-1", true),
        (None, "sensor-2", false),
        (None, "kiosk-8", false),
        (None, "panel-1", true),
    ];
    let mut refused = 0;
    for (level, refusal) in [(4, 2), (5, 0x85)] {
        for (login, client_id, admitted) in claims {
            let options = raw::Connect {
                level,
                client_id,
                login,
                will_topic: None,
            };
            let (_, code) = RawMqtt::connect(bridge.mqtt, options).await;
            let expected = if admitted { 0 } else { refusal };
            assert_eq!(
                code,
                Some(expected),
                "{login:?} as {client_id}, level {level}"
            );
            refused += u64::from(!admitted);
        }
    }
    let refusals = &bridge.router.stats().refusals;
    assert_eq!(
        refusals.auth(Protocol::Mqtt, tidewater::stats::AuthFailure::ClientId),
        refused
    );
    bridge.shutdown().await;
}

/// Opens `count` connections from `from` that each send a CONNECT with a
/// wrong password; each task answers the CONNACK code (`None`: closed
/// without one) and how long it took.
fn bogus_logins(
    gate: SocketAddr,
    from: std::net::IpAddr,
    count: usize,
) -> tokio::task::JoinSet<(Option<u8>, std::time::Duration)> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..count {
        set.spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::new(from, 0)).expect("bind");
            let mut stream = socket.connect(gate).await.expect("connect");
            let connect = raw::connect_packet(&raw::Connect {
                level: 4,
                client_id: &format!("bogus-{i}"),
                login: Some(("sensor", "not the password")),
                will_topic: None,
            });
            let started = std::time::Instant::now();
            stream.write_all(&connect).await.expect("CONNECT");
            let mut connack = [0u8; 4];
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                stream.read_exact(&mut connack),
            )
            .await
            .expect("an answer in time");
            (read.ok().map(|_| connack[3]), started.elapsed())
        });
    }
    set
}

/// A flood of bogus logins from one address fills that address's share
/// of the password-check queue (`mqtt.max_pending_logins_per_address`)
/// and no more: the rest are refused at once as busy, and a device
/// elsewhere logs in as quickly as with no flood (the target is 1 s;
/// asserted with a wide margin for slow CI machines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_login_gets_in_while_a_flood_of_bogus_ones_waits() {
    const FLOOD: usize = 400;
    let bridge = start_with(gated).await;
    let flooder = "127.0.0.2".parse().expect("address");
    let mut flood = bogus_logins(bridge.mqtt, flooder, FLOOD);
    let refusals = &bridge.router.stats().refusals;
    // Logins past the share are being refused: the share is full.
    common::eventually("the flood to overflow its share", || {
        refusals.limited(Protocol::Mqtt, Limit::Logins) >= 100
    })
    .await;
    let started = std::time::Instant::now();
    let device = login(bridge.mqtt, 4, "sensor", "sensor-real").await;
    let took = started.elapsed();
    println!("a real login during the flood took {took:?}");
    assert!(
        took < std::time::Duration::from_secs(3),
        "the real login waited {took:?}"
    );
    drop(device);
    let mut codes = std::collections::BTreeMap::new();
    while let Some(answer) = flood.join_next().await {
        *codes.entry(answer.expect("task").0).or_insert(0) += 1;
    }
    // Each was answered: refused as busy, or checked and refused.
    assert_eq!(codes.get(&None), None, "{codes:?}");
    assert_eq!(
        codes.get(&Some(3)).copied().map(|n: usize| n as u64),
        Some(refusals.limited(Protocol::Mqtt, Limit::Logins)),
        "{codes:?}"
    );
    assert_eq!(codes.values().sum::<usize>(), FLOOD);
    bridge.shutdown().await;
}

/// `mqtt.connection_timeout_ms` covers the login too: a CONNECT whose
/// password check has not come round by then is answered "server busy"
/// at the deadline instead of waiting for the whole queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_timeout_covers_the_password_check() {
    const LOGINS: usize = 100;
    let bridge = start_with(|c| {
        gated(c);
        c.mqtt.connection_timeout_ms = 300;
        c.mqtt.max_pending_logins_per_address = LOGINS;
    })
    .await;
    let mut logins = bogus_logins(bridge.mqtt, "127.0.0.2".parse().expect("address"), LOGINS);
    let mut codes = std::collections::BTreeMap::new();
    let mut slowest = std::time::Duration::ZERO;
    while let Some(answer) = logins.join_next().await {
        let (code, took) = answer.expect("task");
        *codes.entry(code).or_insert(0) += 1;
        slowest = slowest.max(took);
    }
    println!("{codes:?}, the slowest answer after {slowest:?}");
    assert!(codes.contains_key(&Some(3)), "some timed out: {codes:?}");
    assert_eq!(codes.get(&None), None, "every one was answered: {codes:?}");
    assert!(
        slowest < std::time::Duration::from_secs(3),
        "a login waited {slowest:?}, past the 300 ms timeout"
    );
    let timed_out = codes[&Some(3)] as u64;
    assert_eq!(
        bridge
            .router
            .stats()
            .refusals
            .limited(Protocol::Mqtt, Limit::Logins),
        timed_out
    );
    bridge.shutdown().await;
}
