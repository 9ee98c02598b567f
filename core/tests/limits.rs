//! Limits end to end: each one hit is a clear error to that client and a
//! counter in `/metrics`, and everyone else goes on being served.

mod common;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use common::{
    eventually, get, post, request, start_with, ws_close_code, ws_connect, ws_connect_with,
    ws_request, SseClient,
};

/// The value of one series in the `/metrics` text.
async fn metric(http: std::net::SocketAddr, series: &str) -> u64 {
    let text = String::from_utf8(get(http, "/metrics").await.body).expect("UTF-8");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Past its burst, an HTTP client gets 429 with `Retry-After`; another
/// client is not affected.
#[tokio::test]
async fn http_publish_rate() {
    let bridge = start_with(|c| {
        c.limits.publish_rate = 1;
        c.limits.publish_burst = 2;
    })
    .await;
    for _ in 0..2 {
        assert_eq!(post(bridge.http, "/publish/a", b"x").await.status, 202);
    }
    let refused = post(bridge.http, "/publish/a", b"x").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate-limited");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        metric(
            bridge.http,
            "tidewater_limit_refusals_total{protocol=\"http\",limit=\"rate\"}"
        )
        .await,
        1
    );
    // A WebSocket session has its own allowance.
    let mut ws = ws_connect(bridge.ws).await;
    let publish = json!({"op": "publish", "topic": "a", "payload": "x"});
    assert_eq!(ws_request(&mut ws, publish, "p").await["op"], "ack");
    bridge.shutdown().await;
}

/// A client over its rate keeps its keep-alive connection: the 429 is an
/// answer, not a hang-up, and the same connection publishes again once its
/// allowance refills.
#[tokio::test]
async fn http_rate_limit_keeps_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bridge = start_with(|c| {
        c.limits.publish_rate = 1;
        c.limits.publish_burst = 1;
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(bridge.http)
        .await
        .expect("connect");
    let request = b"POST /publish/a HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx";
    let mut statuses = Vec::new();
    for _ in 0..3 {
        stream.write_all(request).await.expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(common::TIMEOUT, stream.read(&mut byte))
                .await
                .expect("answer in time")
                .expect("read");
            assert_eq!(n, 1, "the connection stays open; so far {statuses:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(!head.contains("connection: close"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.expect("body");
        statuses.push(head[9..12].to_owned());
        if statuses.len() == 2 {
            // Let the allowance refill (1 a second) for the third.
            tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        }
    }
    assert_eq!(statuses, ["202", "429", "202"]);
    bridge.shutdown().await;
}

/// Past its burst, a WebSocket session gets a `rate-limited` error and
/// stays open.
#[tokio::test]
async fn websocket_publish_rate() {
    let bridge = start_with(|c| {
        c.limits.publish_rate = 1;
        c.limits.publish_burst = 1;
    })
    .await;
    let mut ws = ws_connect(bridge.ws).await;
    let publish = json!({"op": "publish", "topic": "a", "payload": "x"});
    assert_eq!(ws_request(&mut ws, publish.clone(), "1").await["op"], "ack");
    let refused = ws_request(&mut ws, publish, "2").await;
    assert_eq!(refused["code"], "rate-limited");
    assert!(refused["retry_after_ms"].as_u64().is_some());
    assert_eq!(
        ws_request(&mut ws, json!({"op": "ping"}), "3").await["op"],
        "pong"
    );
    bridge.shutdown().await;
}

/// Past `sse.max_streams`, a stream is refused with 503; once one ends,
/// there is room again.
#[tokio::test]
async fn sse_stream_limit() {
    let bridge = start_with(|c| {
        c.sse.max_streams = 1;
        // A closed client is noticed at the next write.
        c.sse.heartbeat_secs = 1;
    })
    .await;
    let first = SseClient::connect(bridge.http, "/events?topic=a", &[]).await;
    let refused = request(bridge.http, "GET", "/events?topic=a", &[], b"").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "too-many-connections");
    assert!(refused.header("retry-after").is_some());
    drop(first);
    eventually("the first stream to close", || {
        bridge.stats().sse_streams_open == 0
    })
    .await;
    let again = SseClient::open(bridge.http, "/events?topic=a", &[]).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        metric(
            bridge.http,
            "tidewater_limit_refusals_total{protocol=\"sse\",limit=\"connections\"}"
        )
        .await,
        1
    );
    bridge.shutdown().await;
}

/// Past `websocket.max_connections`, an upgrade is refused with 503 and a
/// JSON body; once a session ends, there is room again.
#[tokio::test]
async fn websocket_connection_limit() {
    let bridge = start_with(|c| c.websocket.max_connections = 1).await;
    let mut first = ws_connect(bridge.ws).await;
    let refused = ws_connect_with(bridge.ws, "/ws", &[]).await;
    let (status, body) = refused.expect_err("refused");
    assert_eq!(status, 503);
    assert_eq!(body["error"], "too-many-connections");
    first.close(None).await.expect("close");
    drop(first);
    eventually("the first session to end", || {
        bridge.stats().ws_sessions_open == 0
    })
    .await;
    assert!(ws_connect_with(bridge.ws, "/ws", &[]).await.is_ok());
    bridge.shutdown().await;
}

/// Connections that never finish their upgrade request hold no session
/// slot: with `websocket.max_connections` slots and every place of
/// `websocket.max_handshakes` taken by half-sent requests, real clients
/// still get every slot (each pushes out the oldest half-sent one), and
/// only past the slots is one refused.
#[tokio::test]
async fn half_sent_upgrades_keep_nobody_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bridge = start_with(|c| {
        c.websocket.max_connections = 4;
        c.websocket.max_handshakes = 8;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut socket = tokio::net::TcpStream::connect(bridge.ws)
            .await
            .expect("connect");
        socket
            .write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n")
            .await
            .expect("half a request");
        stalled.push(socket);
    }
    // Accepted before the real clients arrive (not a timing assertion).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(ws_connect(bridge.ws).await);
    }
    let subscribe = json!({"op": "subscribe", "topics": ["a"]});
    assert_eq!(
        ws_request(&mut sessions[3], subscribe, "s").await["op"],
        "ack"
    );
    let (status, body) = ws_connect_with(bridge.ws, "/ws", &[])
        .await
        .expect_err("every slot is a real session's");
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("too-many-connections"))
    );
    // The oldest half-sent one was closed to make room, well before the
    // handshake timeout (5 s) would have closed it.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stalled[0].read(&mut byte),
    );
    assert!(
        matches!(read.await, Ok(Ok(0) | Err(_))),
        "the oldest was dropped"
    );
    bridge.shutdown().await;
}

/// Too many filters for a session is refused and counted, for SSE and
/// WebSocket alike.
#[tokio::test]
async fn subscription_limits_are_counted() {
    let bridge = start_with(|c| {
        c.sse.max_filters = 1;
        c.websocket.max_filters = 1;
    })
    .await;
    let sse = request(bridge.http, "GET", "/events?topic=a&topic=b", &[], b"").await;
    assert_eq!(sse.status, 400);
    assert_eq!(sse.json()["error"], "too-many-filters");
    let mut ws = ws_connect(bridge.ws).await;
    let reply = ws_request(
        &mut ws,
        json!({"op": "subscribe", "topics": ["a", "b"]}),
        "s",
    )
    .await;
    assert_eq!(reply["code"], "too-many-filters");
    for protocol in ["sse", "websocket"] {
        let series = format!(
            "tidewater_limit_refusals_total{{protocol=\"{protocol}\",limit=\"subscriptions\"}}"
        );
        assert_eq!(metric(bridge.http, &series).await, 1, "{protocol}");
    }
    bridge.shutdown().await;
}

/// Payload limits: 413 over HTTP, `payload-too-large` for a WebSocket
/// publish larger than the broker takes, and 1009 for a frame over
/// `websocket.max_message_bytes`; each counted.
#[tokio::test]
async fn payload_limits_are_counted() {
    let bridge = start_with(|c| {
        c.http.max_publish_bytes = 8;
        // rumqttd applies this to whole packets, CONNECT included.
        c.mqtt.max_payload_bytes = 128;
        c.websocket.max_message_bytes = 512;
    })
    .await;
    assert_eq!(
        post(bridge.http, "/publish/a", &[b'x'; 9]).await.status,
        413
    );
    let mut ws = ws_connect(bridge.ws).await;
    let big = json!({"op": "publish", "topic": "a", "payload": "x".repeat(129)});
    assert_eq!(
        ws_request(&mut ws, big, "p").await["code"],
        "payload-too-large"
    );
    ws.send(Message::Text("x".repeat(1_000).into()))
        .await
        .expect("send");
    assert_eq!(ws_close_code(&mut ws).await, 1009);
    for protocol in ["http", "websocket"] {
        let series =
            format!("tidewater_limit_refusals_total{{protocol=\"{protocol}\",limit=\"payload\"}}");
        let expected = if protocol == "http" { 1 } else { 2 };
        assert_eq!(metric(bridge.http, &series).await, expected, "{protocol}");
    }
    assert_eq!(post(bridge.http, "/publish/a", b"small").await.status, 202);
    bridge.shutdown().await;
}

/// Reads from `stream` until it closes (or 10 s pass); what arrived.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "no answer and no close within 10 s");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A body trickling in slower than `http.body_timeout_secs` allows is
/// cut: 408 `body-timeout`, the connection closed, and counted; a prompt
/// publish on another connection goes through meanwhile.
#[tokio::test]
async fn slow_bodies_are_cut_with_408() {
    use tokio::io::AsyncWriteExt;
    let bridge = start_with(|c| c.http.body_timeout_secs = 1).await;
    let mut slow = tokio::net::TcpStream::connect(bridge.http)
        .await
        .expect("connect");
    slow.write_all(b"POST /publish/a HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nx")
        .await
        .expect("headers");
    let trickle = tokio::spawn(async move {
        // A byte every 300 ms: alive, never done.
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            if slow.write_all(b"x").await.is_err() {
                break;
            }
        }
        slow
    });
    assert_eq!(post(bridge.http, "/publish/a", b"prompt").await.status, 202);
    let mut slow = trickle.await.expect("trickle");
    let answer = read_to_close(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert_eq!(
        metric(
            bridge.http,
            "tidewater_limit_refusals_total{protocol=\"http\",limit=\"bodies\"}"
        )
        .await,
        1
    );
    bridge.shutdown().await;
}

/// Bodies being received hold at most `http.max_body_bytes_in_flight`
/// between them, each its `Content-Length` from the start: past it a
/// request gets 503 `busy` at once instead of another buffer, and a body
/// that fits still goes through.
#[tokio::test]
async fn bodies_in_flight_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let bridge = start_with(|c| {
        c.http.max_publish_bytes = 600;
        c.http.max_body_bytes_in_flight = 1_000;
    })
    .await;
    let mut half_sent = tokio::net::TcpStream::connect(bridge.http)
        .await
        .expect("connect");
    half_sent
        .write_all(b"POST /publish/a HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\n\r\nxx")
        .await
        .expect("headers");
    // Once the first holds its 600 bytes, a second of 600 does not fit.
    eventually("the first body's 600 bytes reserved", || {
        bridge.stats().http_body_bytes_in_flight == 600
    })
    .await;
    let refused = post(bridge.http, "/publish/a", &[b'y'; 600]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "busy");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        post(bridge.http, "/publish/a", &[b'z'; 300]).await.status,
        202
    );
    // The held body, finished, is a publish like any other.
    half_sent.write_all(&[b'x'; 598]).await.expect("the rest");
    let answer = first_answer(&mut half_sent).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    eventually("every reservation given back", || {
        bridge.stats().http_body_bytes_in_flight == 0
    })
    .await;
    assert_eq!(
        metric(bridge.http, "tidewater_http_body_bytes_in_flight").await,
        0,
        "the gauge is exported"
    );
    bridge.shutdown().await;
}

/// The first answer on `stream` (its status line and headers at least).
async fn first_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
