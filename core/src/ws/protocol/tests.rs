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

/// Arbitrary JSON: scalars, arrays and objects, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Requests shaped like the real ones: a known or unknown `op`, a `ref`
/// of any type, and fields the ops use or not, with values of any type.
fn request_object() -> impl Strategy<Value = serde_json::Value> {
    let op = prop_oneof![
        Just("subscribe".to_owned()),
        Just("unsubscribe".to_owned()),
        Just("publish".to_owned()),
        Just("ping".to_owned()),
        "[a-z]{0,8}",
    ];
    let field = prop_oneof![
        Just("topics".to_owned()),
        Just("since".to_owned()),
        Just("topic".to_owned()),
        Just("payload".to_owned()),
        Just("encoding".to_owned()),
        Just("qos".to_owned()),
        Just("retain".to_owned()),
        "[a-z]{1,6}",
    ];
    (
        op,
        proptest::option::of(json_value()),
        proptest::collection::vec((field, json_value()), 0..5),
    )
        .prop_map(|(op, reference, fields)| {
            let mut object = serde_json::Map::new();
            object.insert("op".into(), op.into());
            if let Some(reference) = reference {
                object.insert("ref".into(), reference);
            }
            for (key, value) in fields {
                object.insert(key, value);
            }
            serde_json::Value::Object(object)
        })
}

proptest! {
    /// Whatever the shape of a request, the parser answers without
    /// panicking; a string or number `ref` always comes back; what it
    /// accepts obeys the protocol's rules.
    #[test]
    fn structured_requests_are_answered(request in request_object()) {
        let text = request.to_string();
        let (reference, parsed) = parse(&text);
        let given = &request["ref"];
        if given.is_string() || given.is_number() {
            prop_assert_eq!(reference.as_ref(), Some(given));
        }
        match parsed {
            Ok(Request::Subscribe { topics, .. }) => prop_assert!(!topics.is_empty()),
            Ok(Request::Publish { qos, .. }) => prop_assert!(qos <= 1),
            Ok(_) => {}
            Err(error) => prop_assert!(!error.code.is_empty() && !error.message.is_empty()),
        }
    }
}
