//! Device events: the router hears of every MQTT device's connect and
//! disconnect from the gate, with who ended the connection and whether
//! its will is due, and the broker publishes wills as MQTT says.

mod common;

use std::sync::Arc;

use common::raw::{self, RawMqtt};
use common::{gated, password, start, start_with, Device, TIMEOUT};
use tidewater::router::device::DeviceEventReceiver;
use tidewater::router::{DeviceEvent, DeviceEventKind, DisconnectReason};

async fn next(events: &mut DeviceEventReceiver) -> Arc<DeviceEvent> {
    tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .expect("a device event in time")
        .expect("the bridge is up")
        .expect("nothing lost")
}

fn with_will<'a>(level: u8, client_id: &'a str, will: &'a str) -> raw::Connect<'a> {
    raw::Connect {
        level,
        client_id,
        login: None,
        will_topic: Some(will),
    }
}

/// The disconnect event of `client_id`, skipping events of the others.
async fn disconnected(
    events: &mut DeviceEventReceiver,
    client_id: &str,
) -> (DisconnectReason, Option<String>) {
    loop {
        let event = next(events).await;
        if event.client_id != client_id {
            continue;
        }
        match &event.kind {
            DeviceEventKind::Disconnected { reason, will_topic } => {
                return (reason.clone(), will_topic.clone())
            }
            DeviceEventKind::Connected { .. } => {}
        }
    }
}

/// A device connects: the event says how (protocol level, clean start,
/// keep-alive, will topic). It says DISCONNECT: the event says so, and its
/// will is discarded; the broker publishes nothing.
#[tokio::test]
async fn a_normal_disconnect_is_the_clients_and_discards_the_will() {
    let bridge = start().await;
    let mut events = bridge.router.devices().subscribe();
    let mut watcher = Device::connect(bridge.mqtt, "watcher").await;
    watcher.subscribe("wills/#").await;
    let watcher_connected = next(&mut events).await;
    assert_eq!(watcher_connected.client_id, "watcher");

    for level in [4, 5] {
        let id = format!("leaver-{level}");
        let (mut leaver, code) =
            RawMqtt::connect(bridge.mqtt, with_will(level, &id, "wills/leaver")).await;
        assert_eq!(code, Some(0));
        let event = next(&mut events).await;
        assert_eq!(
            (event.client_id.as_str(), event.username.as_deref()),
            (id.as_str(), None)
        );
        assert_eq!(
            event.kind,
            DeviceEventKind::Connected {
                level,
                clean_start: true,
                keep_alive: 30,
                will_topic: Some("wills/leaver".into()),
            }
        );
        let disconnect: &[u8] = if level == 5 {
            &[0xe0, 1, 0]
        } else {
            &[0xe0, 0]
        };
        leaver.send(disconnect).await;
        assert_eq!(
            disconnected(&mut events, &id).await,
            (DisconnectReason::Client { reason_code: 0 }, None)
        );
    }
    // A marker after both, and then a will that is due: nothing came
    // between them (a leaver's will, were it due, would be published as
    // soon as its connection closed, before this one's).
    common::post(bridge.http, "/publish/wills/marker", b"m").await;
    assert_eq!(watcher.next().await.topic, "wills/marker");
    let (lost, code) = RawMqtt::connect(bridge.mqtt, with_will(5, "lost", "wills/lost")).await;
    assert_eq!(code, Some(0));
    drop(lost);
    assert_eq!(watcher.next().await.topic, "wills/lost");
    bridge.shutdown().await;
}

/// A connection that just closes, and an MQTT 5 DISCONNECT with reason
/// 0x04 ("disconnect with will message"; rumqttd alone would drop the
/// will): the event says who ended it and that the will is due, and the
/// broker publishes it.
#[tokio::test]
async fn a_lost_connection_or_a_disconnect_with_will_publishes_it() {
    let bridge = start().await;
    let mut events = bridge.router.devices().subscribe();
    let mut watcher = Device::connect(bridge.mqtt, "watcher").await;
    watcher.subscribe("wills/#").await;

    let (lost, code) = RawMqtt::connect(bridge.mqtt, with_will(4, "lost", "wills/lost")).await;
    assert_eq!(code, Some(0));
    drop(lost);
    assert_eq!(
        disconnected(&mut events, "lost").await,
        (DisconnectReason::ConnectionLost, Some("wills/lost".into()))
    );
    assert_eq!(watcher.next().await.topic, "wills/lost");

    let (mut asking, code) =
        RawMqtt::connect(bridge.mqtt, with_will(5, "asking", "wills/asking")).await;
    assert_eq!(code, Some(0));
    asking.send(&[0xe0, 1, 0x04]).await;
    assert_eq!(
        disconnected(&mut events, "asking").await,
        (
            DisconnectReason::Client { reason_code: 4 },
            Some("wills/asking".into())
        )
    );
    let will = watcher.next().await;
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/asking", &b"gone"[..])
    );
    bridge.shutdown().await;
}

/// A second connection with the same client id takes the session over:
/// the first connection's event says so. A bridge that
/// shuts down says so for every device still connected.
#[tokio::test]
async fn a_takeover_is_the_brokers_and_a_shutdown_the_bridges() {
    let bridge = start().await;
    let mut events = bridge.router.devices().subscribe();
    let connect = || raw::Connect {
        level: 4,
        client_id: "twin",
        login: None,
        will_topic: None,
    };
    let (_first, code) = RawMqtt::connect(bridge.mqtt, connect()).await;
    assert_eq!(code, Some(0));
    let (_second, code) = RawMqtt::connect(bridge.mqtt, connect()).await;
    assert_eq!(code, Some(0));
    assert_eq!(
        disconnected(&mut events, "twin").await,
        (DisconnectReason::TakenOver, None)
    );
    bridge.shutdown().await;
    assert_eq!(
        disconnected(&mut events, "twin").await,
        (DisconnectReason::Shutdown, None)
    );
}

/// Events name the user a device logged in as, and a refused CONNECT
/// makes none. Both are counted.
#[tokio::test]
async fn events_name_the_user_and_are_counted() {
    let bridge = start_with(gated).await;
    let mut events = bridge.router.devices().subscribe();
    let wrong = raw::Connect {
        level: 4,
        client_id: "sensor-1",
        login: Some(("sensor", "guess")),
        will_topic: None,
    };
    let (_, code) = RawMqtt::connect(bridge.mqtt, wrong.clone()).await;
    assert_eq!(code, Some(4));
    let secret = password("sensor");
    let right = raw::Connect {
        login: Some(("sensor", &secret)),
        ..wrong
    };
    let (client, code) = RawMqtt::connect(bridge.mqtt, right).await;
    assert_eq!(code, Some(0));
    let event = next(&mut events).await;
    assert_eq!(
        (event.client_id.as_str(), event.username.as_deref()),
        ("sensor-1", Some("sensor"))
    );
    drop(client);
    disconnected(&mut events, "sensor-1").await;
    let stats = bridge.stats();
    assert_eq!((stats.device_connects, stats.device_disconnects), (1, 1));
    bridge.shutdown().await;
}
