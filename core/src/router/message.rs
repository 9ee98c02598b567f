//! The unit the router moves: one broker message with its place in the
//! stream, plus the event ids web clients see and resume from.
//!
//! A [`Message`] is created once per broker message and shared as an
//! `Arc` by every subscriber queue, the replay ring and the retained
//! snapshot. Its wire encodings (SSE raw, SSE JSON, ...) are built lazily,
//! at most once each, by whichever consumer needs them first: fan-out to N
//! subscribers costs N reference-count increments, not N encodings.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Where a message stands in the router's stream: the router's start time
/// (the epoch) and an arrival counter. The pair never repeats across
/// restarts, so an id from before a restart is recognised as such instead of
/// being mistaken for a new message. Clients treat the text form as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{:x}", self.epoch, self.seq)
    }
}

/// An event id that is not one the bridge could have issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event id `{0}`: expected the value of an earlier `id:` field")]
pub struct MalformedId(pub String);

impl FromStr for EventId {
    type Err = MalformedId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || MalformedId(text.chars().take(64).collect());
        let (epoch, seq) = text.split_once('-').ok_or_else(malformed)?;
        let parse = |part: &str| {
            // from_str_radix accepts a leading '+', which no id of ours has.
            if part.is_empty() || part.len() > 16 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            u64::from_str_radix(part, 16).map_err(|_| malformed())
        };
        Ok(EventId {
            epoch: parse(epoch)?,
            seq: parse(seq)?,
        })
    }
}

/// One lazily built encoding per output format, shared by all subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    SseRaw = 0,
    SseJson = 1,
    WsJson = 2,
}

const ENCODINGS: usize = 3;

/// A broker message as the router hands it out.
#[derive(Debug)]
pub struct Message {
    /// `None` for a retained value delivered from the broker's store on
    /// subscribe: it is current state, not a position in the stream.
    pub id: Option<EventId>,
    pub topic: Box<str>,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: u8,
    /// Its retain flag as published (for a retained value from the
    /// broker's store, always set).
    pub retain: bool,
    /// Milliseconds since the Unix epoch when the router received it.
    pub received_at_ms: u64,
    /// The same moment on the monotonic clock, for delivery latency.
    pub received: Instant,
    /// The SSE event name from `[[routes]]`, shared between messages.
    pub event: Arc<str>,
    encoded: [OnceLock<Bytes>; ENCODINGS],
}

impl Message {
    /// What the message weighs in a subscriber's queue: its topic and
    /// payload (the encoded frames are proportional, and shared).
    pub fn queued_size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    pub fn new(
        id: Option<EventId>,
        topic: Box<str>,
        payload: Bytes,
        retain: bool,
        event: Arc<str>,
    ) -> Self {
        Self {
            id,
            topic,
            payload,
            // Set by whoever knows it: the broker's stamp (see
            // `broker::stamp`) says what the publisher used.
            qos: 0,
            retain,
            received_at_ms: now_ms(),
            received: Instant::now(),
            event,
            encoded: Default::default(),
        }
    }

    /// The message in `encoding`, built by `build` the first time and shared
    /// after that.
    pub fn encoded(&self, encoding: Encoding, build: impl FnOnce(&Message) -> Bytes) -> Bytes {
        self.encoded[encoding as usize]
            .get_or_init(|| build(self))
            .clone()
    }

    /// Whether a client receives it as a retained value: one from the
    /// broker's store, on subscribe. A live message is not, whatever its
    /// publisher's flag, as MQTT delivers it (and as pages that tell the
    /// current state from live readings rely on).
    pub fn delivered_retained(&self) -> bool {
        self.id.is_none() && self.retain
    }

    /// Bytes this message holds on to, for the replay ring's byte budget.
    pub fn weight(&self) -> usize {
        self.payload.len() + self.topic.len() + std::mem::size_of::<Self>()
    }
}

/// Milliseconds since the Unix epoch; 0 if the clock is before it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id survives its text form unchanged.
    #[test]
    fn id_round_trips_through_text() {
        let id = EventId {
            epoch: 0x018c_2f3a_1b2c,
            seq: 42,
        };
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    }

    /// Text that no id of ours looks like is refused, not guessed at.
    #[test]
    fn malformed_ids_are_refused() {
        for text in [
            "",
            "-",
            "12",
            "12-",
            "-12",
            "x-1",
            "1-+2",
            "1-2-3",
            "11111111111111111-1",
        ] {
            assert!(text.parse::<EventId>().is_err(), "{text:?} accepted");
        }
    }

    /// The encoding closure runs once, and later calls share its bytes.
    #[test]
    fn each_encoding_is_built_once() {
        let message = Message::new(
            None,
            "t".into(),
            Bytes::from_static(b"p"),
            false,
            "message".into(),
        );
        let mut builds = 0;
        let first = message.encoded(Encoding::SseRaw, |_| {
            builds += 1;
            Bytes::from_static(b"frame")
        });
        let second = message.encoded(Encoding::SseRaw, |_| {
            builds += 1;
            Bytes::from_static(b"other")
        });
        assert_eq!(builds, 1);
        assert_eq!(first.as_ptr(), second.as_ptr());
    }
}
