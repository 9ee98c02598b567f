//! The SSE wire format: turning messages into `text/event-stream` frames.
//!
//! A payload becomes one `data:` line per line of text. The SSE format has
//! no way to carry a carriage return, so in `raw` format CR LF and lone CR
//! arrive as LF (use `format=json` for byte-exact payloads), and a payload
//! that is not UTF-8 is sent base64-encoded. Event names come from the
//! validated configuration and ids are hex, so neither can break a line;
//! the encoder still strips line breaks from names as a last guard.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::router::{Encoding, EventId, Message};

/// How payloads are written into `data:` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The payload as text (base64 if it is not UTF-8).
    Raw,
    /// A JSON object with topic, payload, encoding, qos, retain and ts.
    Json,
}

/// Sent while idle so proxies and browsers keep the connection open.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// The first frame: how long the browser waits before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A message's frame, encoded once per format and shared by every stream.
pub fn message(message: &Message, format: Format) -> Bytes {
    match format {
        Format::Raw => message.encoded(Encoding::SseRaw, encode_raw),
        Format::Json => message.encoded(Encoding::SseJson, encode_json),
    }
}

/// Tells the client that history after `after` is lost; current state and
/// live messages follow.
pub fn gap(after: EventId) -> Bytes {
    let data = serde_json::json!({
        "after": after.to_string(),
        "message": "messages after this id are no longer available; current values and live messages follow",
    });
    let mut frame = BytesMut::with_capacity(160);
    frame.put_slice(b"event: gap\ndata: ");
    frame.put_slice(data.to_string().as_bytes());
    frame.put_slice(b"\n\n");
    frame.freeze()
}

/// How a payload travels in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    Utf8,
    Base64,
}

/// The payload as text and how it was encoded.
pub fn payload_text(payload: &[u8]) -> (std::borrow::Cow<'_, str>, PayloadEncoding) {
    match std::str::from_utf8(payload) {
        Ok(text) => (text.into(), PayloadEncoding::Utf8),
        Err(_) => (
            base64::engine::general_purpose::STANDARD
                .encode(payload)
                .into(),
            PayloadEncoding::Base64,
        ),
    }
}

fn encode_raw(message: &Message) -> Bytes {
    let (text, _) = payload_text(&message.payload);
    let mut frame = header(message, text.len() + 32);
    for line in split_lines(&text) {
        frame.put_slice(b"data: ");
        frame.put_slice(line.as_bytes());
        frame.put_u8(b'\n');
    }
    frame.put_u8(b'\n');
    frame.freeze()
}

#[derive(Serialize)]
struct JsonData<'a> {
    topic: &'a str,
    payload: &'a str,
    encoding: PayloadEncoding,
    qos: u8,
    retain: bool,
    ts: u64,
}

fn encode_json(message: &Message) -> Bytes {
    let (payload, encoding) = payload_text(&message.payload);
    let data = JsonData {
        topic: &message.topic,
        payload: &payload,
        encoding,
        qos: message.qos,
        retain: message.delivered_retained(),
        ts: message.received_at_ms,
    };
    let mut frame = header(message, payload.len() + message.topic.len() + 96);
    frame.put_slice(b"data: ");
    // serde_json escapes every control character, so this is one line.
    let mut writer = (&mut frame).writer();
    if serde_json::to_writer(&mut writer, &data).is_err() {
        // Serialising strings and numbers into memory cannot fail.
        tracing::error!(topic = %message.topic, "Cannot encode message as JSON.");
    }
    frame.put_slice(b"\n\n");
    frame.freeze()
}

/// `id:` (absent for retained values, which are state, not stream
/// positions) and `event:` lines.
fn header(message: &Message, extra: usize) -> BytesMut {
    let mut frame = BytesMut::with_capacity(64 + message.event.len() + extra);
    if let Some(id) = message.id {
        frame.put_slice(format!("id: {id}\n").as_bytes());
    }
    frame.put_slice(b"event: ");
    for part in split_lines(&message.event) {
        frame.put_slice(part.as_bytes());
    }
    frame.put_u8(b'\n');
    frame
}

/// Splits on CR LF, CR and LF, the line ends the SSE parser recognises.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            Some(at) => {
                let skip = if current[at..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[at + skip..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

#[cfg(test)]
mod tests;
