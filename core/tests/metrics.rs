//! `GET /metrics` against a running bridge: Prometheus text whose counters
//! move with real traffic.

mod common;

use common::{get, post, start, ws_connect, ws_next, ws_request, ws_request_collecting, SseClient};
use serde_json::json;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Publishing over HTTP and WebSocket and delivering to SSE and WebSocket
/// moves the counters by protocol and fills the latency histogram.
#[tokio::test]
async fn counters_move_with_traffic() {
    let bridge = start().await;
    let before = get(bridge.http, "/metrics").await;
    assert_eq!(before.status, 200);
    assert!(before
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));

    let mut sse = SseClient::connect(bridge.http, "/events?topic=m", &[]).await;
    let mut ws = ws_connect(bridge.ws).await;
    ws_request(&mut ws, json!({"op":"subscribe","topics":["m"]}), "s").await;
    assert_eq!(
        post(bridge.http, "/publish/m?qos=1", b"1").await.status,
        200
    );
    let mut received = Vec::new();
    let publish = json!({"op":"publish","topic":"m","payload":"2","qos":1});
    ws_request_collecting(&mut ws, publish, "p", &mut received).await;
    while received.len() < 2 {
        received.push(ws_next(&mut ws).await);
    }
    assert!(received.iter().all(|m| m["op"] == "message"));
    for _ in 0..2 {
        sse.expect_event().await;
    }

    let text = String::from_utf8(get(bridge.http, "/metrics").await.body).expect("UTF-8");
    assert_eq!(value(&text, "tidewater_connections{protocol=\"sse\"}"), 1.0);
    assert_eq!(
        value(&text, "tidewater_connections{protocol=\"websocket\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "tidewater_messages_in_total{protocol=\"http\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "tidewater_messages_in_total{protocol=\"websocket\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "tidewater_messages_out_total{protocol=\"sse\"}"),
        2.0
    );
    assert!(value(&text, "tidewater_messages_routed_total") >= 2.0);
    assert_eq!(
        value(
            &text,
            "tidewater_delivery_latency_seconds_count{protocol=\"sse\"}"
        ),
        2.0
    );
    bridge.shutdown().await;
}
