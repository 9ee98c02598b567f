//! The messages the load generator sends: JSON carrying its send time, and
//! the search that finds that time again in whatever frame delivers it.
//!
//! Every protocol wraps the payload differently (an SSE `data:` line, a JSON
//! string inside a WebSocket frame, a raw MQTT payload), so readers do not
//! parse the wrapper: they look for the `t0` key, escaped or not, and read
//! the number after it. The key is unusual enough not to collide with a
//! wrapper's own fields (Tidewater's frames have a `ts`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: a clock every process on the machine
/// shares, so a publisher and a reader may be different processes.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A JSON payload of exactly `size` bytes (at least the fixed fields):
/// `{"t0":<µs>,"seq":<n>,"dev":<id>,"pad":"xxx…"}`.
pub fn json(t0: u64, seq: u64, dev: u32, size: usize) -> Vec<u8> {
    let mut out = format!("{{\"t0\":{t0},\"seq\":{seq},\"dev\":{dev},\"pad\":\"").into_bytes();
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// The `t0` in `frame`, whether the payload appears as is (`"t0":123`) or
/// escaped inside a JSON string (`\"t0\":123`).
pub fn find_t0(frame: &[u8]) -> Option<u64> {
    let at = find(frame, b"t0")?;
    let rest = &frame[at + 2..];
    let rest = rest
        .strip_prefix(b"\\\":")
        .or_else(|| rest.strip_prefix(b"\":"))?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    rest[..digits].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The first position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload has the asked size and its time is found plain or escaped.
    #[test]
    fn payload_round_trips() {
        let p = json(1_732_240_000_123_456, 7, 3, 120);
        assert_eq!(p.len(), 120);
        assert_eq!(find_t0(&p), Some(1_732_240_000_123_456));
        let text = String::from_utf8(p).expect("ascii");
        let escaped =
            serde_json::to_string(&serde_json::json!({ "payload": text, "ts": 5 })).expect("json");
        assert_eq!(find_t0(escaped.as_bytes()), Some(1_732_240_000_123_456));
        assert_eq!(find_t0(b"data: hello"), None);
    }
}
