//! The web entry points fuzzed against a real bridge: arbitrary sequences
//! of WebSocket requests and arbitrary SSE query strings, shaped like the
//! real ones where that reaches deeper (known ops and keys, filters with
//! many levels, long, Unicode or wildcard-laden), and plain noise.
//!
//! What must hold for every input: each request is answered (an `ack`,
//! `pong` or `error` per WebSocket request; a stream or a JSON refusal per
//! SSE request), nothing takes the bridge down, and everyone else goes on
//! being served. `PROPTEST_CASES` sets how many cases run (256 by default,
//! a few seconds, so CI runs it on every change).

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{get, start_with, ws_connect, SseClient, TestBridge};

/// How many cases each target runs.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A topic or filter: ordinary, deep (up to thousands of levels), long,
/// Unicode, or with wildcards anywhere.
fn filter() -> impl Strategy<Value = String> {
    filter_within(20_000)
}

/// The same, with at most `deepest` empty levels: a request line has room
/// for fewer (past about 8 KiB, actix refuses the request itself).
fn filter_within(deepest: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z+#/]{1,12}",
        "\\PC{1,24}",
        (1usize..deepest).prop_map(|n| "/".repeat(n)),
        (1usize..80).prop_map(|n| vec!["l"; n].join("/")),
        (1usize..3000.min(deepest)).prop_map(|n| "x".repeat(n)),
        Just("温度/客厅".to_owned()),
        Just("°C/+/#".to_owned()),
        Just("$SYS/#".to_owned()),
    ]
}

/// A value of any JSON type, with filters among the strings.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        filter().prop_map(Value::from),
        Just(Value::from("-5m")),
        Just(Value::from("2026-01-01T00:00:00Z")),
        Just(Value::from("1-1")),
    ];
    leaf.prop_recursive(2, 16, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::vec(filter(), 0..70).prop_map(Value::from),
        ]
    })
}

/// One WebSocket text frame: a request shaped like the protocol's, or noise.
fn ws_request() -> impl Strategy<Value = String> {
    let op = prop_oneof![
        Just("subscribe"),
        Just("unsubscribe"),
        Just("publish"),
        Just("command"),
        Just("ping"),
        Just("nope"),
    ];
    let key = prop_oneof![
        Just("topics"),
        Just("topic"),
        Just("since"),
        Just("payload"),
        Just("encoding"),
        Just("qos"),
        Just("retain"),
        Just("timeout_ms"),
        Just("ref"),
        Just("extra"),
    ];
    let shaped = (op, proptest::collection::vec((key, value()), 0..5)).prop_map(|(op, fields)| {
        let mut object = serde_json::Map::new();
        object.insert("op".into(), op.into());
        for (key, value) in fields {
            object.insert(key.into(), value);
        }
        Value::Object(object).to_string()
    });
    prop_oneof![4 => shaped, 1 => "\\PC{0,64}"]
}

/// The reply to the request just sent: the next `ack`, `pong` or `error`,
/// past any deliveries. `None` if the session was closed instead.
async fn reply(ws: &mut common::Ws) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply in time")?;
        match frame.ok()? {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("the bridge sends JSON");
                match frame["op"].as_str() {
                    Some("ack" | "pong" | "error" | "reply") => return Some(frame),
                    Some("message" | "gap") => {}
                    other => panic!("unknown frame {other:?}: {frame}"),
                }
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// The bridge still serves: health, and a fresh WebSocket session.
async fn still_serving(bridge: &TestBridge) {
    assert_eq!(get(bridge.http, "/healthz").await.status, 200);
    let mut ws = ws_connect(bridge.ws).await;
    ws.send(Message::Text(json!({"op": "ping"}).to_string().into()))
        .await
        .expect("ping");
    assert_eq!(reply(&mut ws).await.expect("pong")["op"], "pong");
}

/// Every request of every session is answered, and nothing any session
/// sends stops the bridge serving others.
#[test]
fn websocket_sessions_answer_every_request() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Commands that find a subscriber wait for an answer that never
    // comes: briefly.
    let bridge = runtime.block_on(start_with(|c| {
        c.limits.command_timeout_ms = 100;
        c.limits.max_command_timeout_ms = 300;
    }));
    let mut runner = TestRunner::new(config());
    let requests = proptest::collection::vec(ws_request(), 1..8);
    runner
        .run(&requests, |requests| {
            runtime.block_on(async {
                let mut ws = ws_connect(bridge.ws).await;
                for request in &requests {
                    if ws
                        .send(Message::Text(request.clone().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    match reply(&mut ws).await {
                        Some(frame) if frame["op"] == "error" => {
                            assert!(frame["code"].is_string(), "{frame}");
                            assert!(frame["message"].is_string(), "{frame}");
                        }
                        Some(_) => {}
                        // Closed with a reason (a limit): the rest are moot.
                        None => break,
                    }
                }
                still_serving(&bridge).await;
            });
            Ok(())
        })
        .expect("every WebSocket request answered");
    runtime.block_on(bridge.shutdown());
}

/// A query string for `GET /events`: known keys and junk, with values
/// percent-encoded or raw.
fn sse_query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("topic"),
        Just("since"),
        Just("last_event_id"),
        Just("format"),
        Just("access_token"),
        Just("bogus"),
        Just(""),
    ];
    let raw_value = prop_oneof![
        filter_within(2_000),
        Just("-5m".to_owned()),
        Just("-99999999999999s".to_owned()),
        Just("2026-13-01T00:00:00Z".to_owned()),
        Just("json".to_owned()),
        Just("1-2".to_owned()),
        "\\PC{0,16}",
    ];
    let pair = (key, raw_value, any::<bool>()).prop_map(|(key, value, encode)| {
        let value = if encode {
            percent_encoding::utf8_percent_encode(&value, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        } else {
            // What a request line may carry raw (anything else is the HTTP
            // parser's to refuse, before the bridge sees it).
            value
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "-._~:/?@!$&'()*+,;=%".contains(*c))
                .collect()
        };
        format!("{key}={value}")
    });
    prop_oneof![
        4 => proptest::collection::vec(pair, 0..20).prop_map(|pairs| pairs.join("&")),
        1 => "[-._~:/?@!$&'()*+,;=%a-zA-Z0-9]{0,64}",
    ]
}

/// Every SSE request is a stream or a JSON refusal with a code (never a
/// server error, never a hang), and the bridge keeps serving.
#[test]
fn sse_requests_are_a_stream_or_a_clear_refusal() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bridge = runtime.block_on(start_with(|_| {}));
    let mut runner = TestRunner::new(config());
    runner
        .run(&sse_query(), |query| {
            runtime.block_on(async {
                let path = format!("/events?{query}");
                let client = SseClient::open(bridge.http, &path, &[]).await;
                let status = client.status();
                assert!(
                    matches!(status, 200 | 400 | 401 | 403 | 414 | 431),
                    "{path}: status {status}"
                );
                if status != 200 {
                    let refusal = common::request(bridge.http, "GET", &path, &[], b"").await;
                    if refusal.body.is_empty() {
                        // Only the HTTP parser answers without a body: a
                        // request line past its limit.
                        assert!(path.len() > 8 * 1024, "{status} with no body for {path}");
                    } else if status == 400 {
                        assert!(refusal.json()["error"].is_string(), "{path}");
                    }
                }
                still_serving(&bridge).await;
            });
            Ok(())
        })
        .expect("every SSE request answered");
    runtime.block_on(bridge.shutdown());
}
