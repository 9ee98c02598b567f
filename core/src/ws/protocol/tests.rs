use proptest::prelude::*;

use super::*;

fn code(text: &str) -> &'static str {
    parse(text).1.expect_err("refused").code
}

/// Each documented request parses, with its `ref` returned.
#[test]
fn documented_requests_parse() {
    let (r, req) =
        parse(r#"{"op":"subscribe","topics":["home/+/temperature"],"since":"1-2","ref":"r1"}"#);
    assert_eq!(r, Some(Value::from("r1")));
    assert_eq!(
        req,
        Ok(Request::Subscribe {
            topics: vec!["home/+/temperature".into()],
            since: Some("1-2".into())
        })
    );
    let (_, req) = parse(
        r#"{"op":"publish","topic":"a","payload":"b24=","encoding":"base64","qos":1,"retain":true,"ref":7}"#,
    );
    assert_eq!(
        req,
        Ok(Request::Publish {
            topic: "a".into(),
            payload: Bytes::from_static(b"on"),
            qos: 1,
            retain: true
        })
    );
    assert_eq!(parse(r#"{"op":"ping"}"#).1, Ok(Request::Ping));
    assert_eq!(
        parse(r#"{"op":"unsubscribe","topics":["a"]}"#).1,
        Ok(Request::Unsubscribe {
            topics: vec!["a".into()]
        })
    );
}

/// Malformed requests get a code that says what is wrong.
#[test]
fn malformed_requests_are_named() {
    assert_eq!(code("not json"), "invalid-json");
    assert_eq!(code("[1]"), "invalid-request");
    assert_eq!(code(r#"{"topics":["a"]}"#), "invalid-request");
    assert_eq!(code(r#"{"op":"dance"}"#), "unknown-op");
    assert_eq!(code(r#"{"op":"subscribe"}"#), "invalid-request");
    assert_eq!(
        code(r#"{"op":"subscribe","topics":"a"}"#),
        "invalid-request"
    );
    assert_eq!(code(r#"{"op":"subscribe","topics":[]}"#), "invalid-request");
    assert_eq!(
        code(r#"{"op":"subscribe","topics":["a"],"extra":1}"#),
        "invalid-request"
    );
    assert_eq!(
        code(r#"{"op":"publish","topic":"a","payload":"***","encoding":"base64"}"#),
        "invalid-payload"
    );
    assert_eq!(
        code(r#"{"op":"publish","topic":"a","qos":2}"#),
        "invalid-request"
    );
    assert_eq!(
        code(r#"{"op":"publish","topic":"a","encoding":"hex"}"#),
        "invalid-request"
    );
    let message = parse(r#"{"op":"subscribe"}"#)
        .1
        .expect_err("refused")
        .message;
    assert!(message.contains("topics"), "{message}");
}

/// The `ref` comes back even when the rest of the request is invalid.
#[test]
fn ref_survives_errors() {
    assert_eq!(
        parse(r#"{"op":"nope","ref":"x"}"#).0,
        Some(Value::from("x"))
    );
    let reply: Value =
        serde_json::from_str(&error(Some(Value::from(3)), ProtocolError::new("c", "m")))
            .expect("json");
    assert_eq!(reply["ref"], 3);
    assert_eq!(reply["op"], "error");
}

proptest! {
    /// No input makes the parser panic; it answers or refuses.
    #[test]
    fn parser_never_panics(text in ".{0,200}") {
        let _ = parse(&text);
    }
}
