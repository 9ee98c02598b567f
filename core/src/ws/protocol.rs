//! The JSON protocol of WebSocket sessions: parsing client requests with
//! errors that name the problem, and encoding what the server sends.
//!
//! Client → server: `subscribe`, `unsubscribe`, `publish`, `command`,
//! `ping`, each with an optional `ref` echoed in the reply. Server →
//! client: `message`, `ack`, `reply` (a command's answer), `error`, `pong`,
//! `gap`. See `docs/websocket.md`.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::router::{EventId, Message};
use crate::sse::frame::{payload_text, PayloadEncoding};

/// A request, parsed and checked for shape (not yet for topic rules).
#[derive(Debug, PartialEq)]
pub enum Request {
    Subscribe {
        topics: Vec<String>,
        since: Option<String>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
    },
    /// Publish, then wait for the device's answer (see `crate::command`).
    Command {
        topic: String,
        payload: Bytes,
        timeout_ms: Option<u64>,
    },
    Ping,
}

/// A refusal to send back as `{"op":"error",...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub code: &'static str,
    pub message: String,
    /// Extra fields, e.g. the filter and the rule it broke.
    pub details: Vec<(&'static str, Value)>,
}

impl ProtocolError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.details.push((key, value.into()));
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFields {
    topics: Vec<String>,
    since: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeFields {
    topics: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishFields {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandFields {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Parses one text frame. Returns the request's `ref` (if it had one, even
/// when the rest is invalid) so the error can carry it.
pub fn parse(text: &str) -> (Option<Value>, Result<Request, ProtocolError>) {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            return (
                None,
                Err(ProtocolError::new("invalid-json", format!("not JSON: {e}"))),
            )
        }
    };
    let Value::Object(mut object) = value else {
        return (
            None,
            Err(ProtocolError::new(
                "invalid-request",
                "a request is a JSON object",
            )),
        );
    };
    let reference = object.remove("ref");
    if let Some(r) = &reference {
        if !(r.is_string() || r.is_number()) {
            let error = ProtocolError::new("invalid-request", "`ref` must be a string or a number");
            return (None, Err(error));
        }
    }
    let op = match object.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => {
            return (
                reference,
                Err(ProtocolError::new(
                    "invalid-request",
                    "`op` must be a string",
                )),
            )
        }
        None => {
            return (
                reference,
                Err(ProtocolError::new("invalid-request", "missing field `op`")),
            )
        }
    };
    let rest = Value::Object(object);
    let request = match op.as_str() {
        "subscribe" => fields::<SubscribeFields>(rest, &op).and_then(|f| {
            if f.topics.is_empty() {
                return Err(ProtocolError::new("invalid-request", "`topics` is empty"));
            }
            Ok(Request::Subscribe {
                topics: f.topics,
                since: f.since,
            })
        }),
        "unsubscribe" => fields::<UnsubscribeFields>(rest, &op)
            .map(|f| Request::Unsubscribe { topics: f.topics }),
        "publish" => fields::<PublishFields>(rest, &op).and_then(publish),
        "command" => fields::<CommandFields>(rest, &op).and_then(|f| {
            if f.timeout_ms == Some(0) {
                return Err(ProtocolError::new(
                    "invalid-timeout",
                    "timeout_ms must be above 0",
                ));
            }
            Ok(Request::Command {
                payload: decode(f.payload, f.encoding.as_deref())?,
                topic: f.topic,
                timeout_ms: f.timeout_ms,
            })
        }),
        "ping" => fields::<serde::de::IgnoredAny>(rest, &op).map(|_| Request::Ping),
        other => Err(ProtocolError::new(
            "unknown-op",
            format!("unknown op `{other}`: use subscribe, unsubscribe, publish, command or ping"),
        )),
    };
    (reference, request)
}

fn fields<T: serde::de::DeserializeOwned>(rest: Value, op: &str) -> Result<T, ProtocolError> {
    serde_json::from_value(rest)
        .map_err(|e| ProtocolError::new("invalid-request", format!("{op}: {e}")))
}

/// A payload as sent: text, or base64 with `"encoding": "base64"`.
fn decode(payload: String, encoding: Option<&str>) -> Result<Bytes, ProtocolError> {
    match encoding {
        None | Some("utf8") => Ok(Bytes::from(payload)),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload.as_bytes())
            .map(Bytes::from)
            .map_err(|e| {
                ProtocolError::new("invalid-payload", format!("payload is not base64: {e}"))
            }),
        Some(other) => Err(ProtocolError::new(
            "invalid-request",
            format!("unknown encoding `{other}`: use utf8 or base64"),
        )),
    }
}

fn publish(fields: PublishFields) -> Result<Request, ProtocolError> {
    let payload = decode(fields.payload, fields.encoding.as_deref())?;
    if fields.qos > 1 {
        return Err(ProtocolError::new(
            "invalid-request",
            format!("qos must be 0 or 1, not {}", fields.qos),
        ));
    }
    Ok(Request::Publish {
        topic: fields.topic,
        payload,
        qos: fields.qos,
        retain: fields.retain,
    })
}

#[derive(Serialize)]
struct MessageFrame<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    topic: &'a str,
    payload: &'a str,
    encoding: PayloadEncoding,
    qos: u8,
    retain: bool,
    ts: u64,
}

/// A message as a text frame, encoded once and shared by every session.
pub fn message(message: &Message) -> Bytes {
    message.encoded(crate::router::Encoding::WsJson, |m| {
        let (payload, encoding) = payload_text(&m.payload);
        let frame = MessageFrame {
            op: "message",
            id: m.id.map(|id| id.to_string()),
            topic: &m.topic,
            payload: &payload,
            encoding,
            qos: m.qos,
            retain: m.delivered_retained(),
            ts: m.received_at_ms,
        };
        Bytes::from(serde_json::to_vec(&frame).unwrap_or_default())
    })
}

pub fn ack(reference: Option<Value>) -> String {
    reply("ack", reference, serde_json::Map::new())
}

/// A command's answer: the topic it came on and its payload, as text or
/// base64 like a `message`.
pub fn command_reply(reference: Option<Value>, topic: &str, payload: &[u8]) -> String {
    let (text, encoding) = payload_text(payload);
    let mut fields = serde_json::Map::new();
    fields.insert("topic".into(), topic.into());
    fields.insert("payload".into(), text.as_ref().into());
    fields.insert(
        "encoding".into(),
        serde_json::to_value(encoding).unwrap_or_default(),
    );
    reply("reply", reference, fields)
}

pub fn pong(reference: Option<Value>) -> String {
    reply("pong", reference, serde_json::Map::new())
}

pub fn error(reference: Option<Value>, error: ProtocolError) -> String {
    let mut fields = serde_json::Map::new();
    fields.insert("code".into(), error.code.into());
    fields.insert("message".into(), error.message.into());
    for (key, value) in error.details {
        fields.insert(key.into(), value);
    }
    reply("error", reference, fields)
}

pub fn gap(after: EventId) -> String {
    let mut fields = serde_json::Map::new();
    fields.insert("after".into(), after.to_string().into());
    fields.insert(
        "message".into(),
        "messages after this id are no longer available; current values and live messages follow"
            .into(),
    );
    reply("gap", None, fields)
}

fn reply(op: &str, reference: Option<Value>, mut fields: serde_json::Map<String, Value>) -> String {
    let mut object = serde_json::Map::new();
    object.insert("op".into(), op.into());
    if let Some(reference) = reference {
        object.insert("ref".into(), reference);
    }
    object.append(&mut fields);
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests;
