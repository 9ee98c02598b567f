use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// One event as the WHATWG event-stream parser dispatches it.
#[derive(Debug, Default, PartialEq)]
struct Parsed {
    id: Option<String>,
    event: String,
    data: String,
}

/// A spec-conformant parser (HTML Living Standard, "Event stream
/// interpretation"), independent of the encoder, so the encoder is checked
/// against what a browser would see.
fn parse(stream: &str) -> Vec<Parsed> {
    let mut events = Vec::new();
    let (mut data, mut event, mut id) = (String::new(), String::new(), None::<String>);
    let mut last_id_seen = None;
    let mut rest = stream;
    while !rest.is_empty() {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = rest.get(end + skip..).unwrap_or("");
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(Parsed {
                    id: last_id_seen.clone(),
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event.clone()
                    },
                    data: std::mem::take(&mut data),
                });
            }
            data.clear();
            event.clear();
            last_id_seen = id.take().or(last_id_seen);
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.find(':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => event = value.to_owned(),
            "id" if !value.contains('\0') => {
                id = Some(value.to_owned());
                last_id_seen = Some(value.to_owned());
            }
            _ => {}
        }
    }
    events
}

fn message(id: Option<u64>, topic: &str, payload: &[u8], event: &str) -> Message {
    Message::new(
        id.map(|seq| EventId { epoch: 7, seq }),
        topic.into(),
        Bytes::copy_from_slice(payload),
        false,
        Arc::from(event),
    )
}

fn as_text(frame: &Bytes) -> &str {
    std::str::from_utf8(frame).expect("frames are UTF-8")
}

/// A simple message becomes `id:`, `event:` and one `data:` line.
#[test]
fn raw_frame_layout() {
    let frame = super::message(
        &message(Some(10), "home/t", b"21.5", "temperature"),
        Format::Raw,
    );
    assert_eq!(
        as_text(&frame),
        "id: 7-a\nevent: temperature\ndata: 21.5\n\n"
    );
}

/// A multi-line payload is split into several `data:` lines, and the
/// browser joins them back with LF.
#[test]
fn multi_line_payload_uses_several_data_lines() {
    let frame = super::message(
        &message(Some(1), "t", b"a\nb\r\nc\rd", "message"),
        Format::Raw,
    );
    assert_eq!(
        as_text(&frame),
        "id: 7-1\nevent: message\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    );
    assert_eq!(parse(as_text(&frame))[0].data, "a\nb\nc\nd");
}

/// A payload that is not UTF-8 travels as base64, and JSON says so.
#[test]
fn binary_payload_is_base64() {
    let msg = message(Some(1), "t", &[0xff, 0x00, 0x10], "message");
    assert_eq!(
        parse(as_text(&super::message(&msg, Format::Raw)))[0].data,
        "/wAQ"
    );
    let json: serde_json::Value =
        serde_json::from_str(&parse(as_text(&super::message(&msg, Format::Json)))[0].data)
            .expect("json data");
    assert_eq!(json["encoding"], "base64");
    assert_eq!(json["payload"], "/wAQ");
}

/// A retained value has no `id:`, so the client's resume point stays put.
#[test]
fn retained_value_has_no_id() {
    let frame = super::message(&message(None, "t", b"on", "message"), Format::Raw);
    assert!(!as_text(&frame).contains("id:"));
}

/// An empty payload still dispatches an event (with empty data).
#[test]
fn empty_payload_dispatches() {
    let frame = super::message(&message(Some(3), "t", b"", "message"), Format::Raw);
    let events = parse(as_text(&frame));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "");
}

/// The gap notice is its own event type with the lost id in its data.
#[test]
fn gap_frame_names_the_id() {
    let events = parse(as_text(&gap(EventId { epoch: 1, seq: 2 })));
    assert_eq!(events[0].event, "gap");
    let data: serde_json::Value = serde_json::from_str(&events[0].data).expect("json");
    assert_eq!(data["after"], "1-2");
}

proptest! {
    /// Any text payload, topic and event name survive a spec-conformant parse:
    /// exactly one event, the right id and event name, and the payload with
    /// its line breaks as the SSE format carries them (CR LF and CR as LF).
    #[test]
    fn raw_frames_survive_parsing(
        payload in "(?s).{0,200}",
        topic in "[^\0]{1,40}",
        event in "[^\0]{1,20}",
        seq in 1u64..u64::MAX,
    ) {
        let msg = message(Some(seq), &topic, payload.as_bytes(), &event);
        let events = parse(as_text(&super::message(&msg, Format::Raw)));
        prop_assert_eq!(events.len(), 1);
        prop_assert_eq!(events[0].id.clone(), Some(EventId { epoch: 7, seq }.to_string()));
        let expected_event: String = event.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        let expected_event = if expected_event.is_empty() { "message".to_owned() } else { expected_event };
        prop_assert_eq!(&events[0].event, &expected_event);
        let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(&events[0].data, &expected);
    }

    /// In JSON format any payload bytes and topic come back exactly.
    #[test]
    fn json_frames_are_exact(
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        topic in "[^\0]{1,40}",
    ) {
        let msg = message(Some(1), &topic, &payload, "message");
        let events = parse(as_text(&super::message(&msg, Format::Json)));
        prop_assert_eq!(events.len(), 1);
        let json: serde_json::Value = serde_json::from_str(&events[0].data).expect("json data");
        prop_assert_eq!(json["topic"].as_str(), Some(topic.as_str()));
        let text = json["payload"].as_str().expect("payload string");
        let decoded = match json["encoding"].as_str() {
            Some("utf8") => text.as_bytes().to_vec(),
            Some("base64") => base64::engine::general_purpose::STANDARD.decode(text).expect("base64"),
            other => panic!("unexpected encoding {other:?}"),
        };
        prop_assert_eq!(decoded, payload);
    }
}
