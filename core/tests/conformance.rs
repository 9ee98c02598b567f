//! MQTT behaviours rumqttd 0.20 gets wrong on its own and the gate puts
//! right, each against raw packets. (Delivery QoS, wills, empty payloads
//! and keep-alive 0: `core/tests/broker.rs`; reason codes of refusals and
//! topic aliases: `core/tests/gate.rs`, `core/tests/growth.rs`.)

mod common;

use common::raw::{self, RawMqtt};
use common::start;

/// An MQTT 5 CONNECT with the given flags and properties, client id `id`.
fn connect_v5(id: &str, flags: u8, properties: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    raw::string(&mut body, "MQTT");
    body.extend_from_slice(&[5, flags, 0, 30]);
    raw::varint(&mut body, properties.len());
    body.extend_from_slice(properties);
    raw::string(&mut body, id);
    raw::packet(0x10, &body)
}

/// An empty client id cannot keep a session: with Clean Session 0 (MQTT
/// 3.1.1) or Clean Start 0 (MQTT 5) it is refused with "identifier
/// rejected" (2) or "client identifier not valid" (0x85); with a clean
/// session it connects, and the broker names it.
#[tokio::test]
async fn an_empty_client_id_cannot_keep_a_session() {
    let bridge = start().await;
    let (_, code) = RawMqtt::connect_with(bridge.mqtt, 5, &connect_v5("", 0x00, &[])).await;
    assert_eq!(code, Some(0x85));
    let (_, code) = RawMqtt::connect_with(bridge.mqtt, 5, &connect_v5("", 0x02, &[])).await;
    assert_eq!(code, Some(0));
    let options = raw::Connect {
        level: 4,
        client_id: "",
        login: None,
        will_topic: None,
    };
    let mut v4 = raw::connect_packet(&options);
    v4[2 + 6 + 1] &= !0x02;
    let (_, code) = RawMqtt::connect_with(bridge.mqtt, 4, &v4).await;
    assert_eq!(code, Some(2));
    bridge.shutdown().await;
}

/// An MQTT 5 client that set a Maximum Packet Size is sent no larger
/// packet: the message is dropped for it (and acknowledged to the broker,
/// so the ones after it flow), and counted.
#[tokio::test]
async fn the_clients_maximum_packet_size_is_respected() {
    let bridge = start().await;
    // Maximum Packet Size (0x27): 64 bytes.
    let connect = connect_v5("small", 0x02, &[0x27, 0, 0, 0, 64]);
    let (mut small, code) = RawMqtt::connect_with(bridge.mqtt, 5, &connect).await;
    assert_eq!(code, Some(0));
    assert_eq!(small.subscribe(1, &[("m/#", 1)]).await, [1]);
    let options = raw::Connect {
        level: 4,
        client_id: "sender",
        login: None,
        will_topic: None,
    };
    let (mut sender, code) = RawMqtt::connect(bridge.mqtt, options).await;
    assert_eq!(code, Some(0));
    for id in 1..=120u16 {
        sender.publish("m/big", &[b'x'; 200], 1, id).await;
        sender.ack(4, id).await;
    }
    sender.publish("m/small", b"fits", 1, 121).await;
    let delivered = small.next_publish().await;
    assert_eq!(
        (delivered.topic.as_str(), &delivered.payload[..]),
        ("m/small", &b"fits"[..])
    );
    assert_eq!(bridge.stats().mqtt_deliveries_too_large, 120);
    bridge.shutdown().await;
}
