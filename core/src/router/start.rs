//! Where a subscription starts: now, after an id, or at a time.
//!
//! Clients name a start as text: an id (`1a2b3c-2f`) resumes after that
//! message; a time replays from then on, either relative to now (`-5m`,
//! `-30s`, `-2h`, `-1d`, `-500ms`) or absolute in RFC 3339
//! (`2026-12-07T15:00:00Z`, `2026-12-07T16:00:00+01:00`).

use super::EventId;

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Retained values, then live messages.
    Now,
    /// The messages after this one (exact resume).
    After(EventId),
    /// Retained values, then every message from this time (milliseconds
    /// since the Unix epoch) on, then live.
    Since(u64),
}

/// A start that is neither an id nor a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is neither an event id nor a time: use an id from an earlier `id:` field, a time before now such as -5m, -30s, -2h, -1d, or an RFC 3339 time such as 2026-12-07T15:00:00Z")]
pub struct MalformedStart(pub String);

/// Reads a time: relative (`-5m`) or RFC 3339, as milliseconds since the
/// Unix epoch, given the time now.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, MalformedStart> {
    let malformed = || MalformedStart(text.chars().take(64).collect());
    if let Some(relative) = text.strip_prefix('-') {
        let digits = relative.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = relative.split_at(digits);
        let number: u64 = number.parse().map_err(|_| malformed())?;
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(malformed()),
        };
        return Ok(now_ms.saturating_sub(number.saturating_mul(unit_ms)));
    }
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| malformed())?;
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    Ok(u64::try_from(ms).unwrap_or(0))
}

/// Reads a start given as an id or a time (a WebSocket `since`).
pub fn parse(text: &str, now_ms: u64) -> Result<Start, MalformedStart> {
    if let Ok(id) = text.parse::<EventId>() {
        return Ok(Start::After(id));
    }
    parse_time(text, now_ms).map(Start::Since)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_time("-5m", NOW), Ok(NOW - 300_000));
        assert_eq!(parse_time("-30s", NOW), Ok(NOW - 30_000));
        assert_eq!(parse_time("-2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse_time("-1d", NOW), Ok(NOW - 86_400_000));
        assert_eq!(parse_time("-500ms", NOW), Ok(NOW - 500));
        assert_eq!(parse_time("-99999999999d", NOW), Ok(0));
    }

    #[test]
    fn rfc_3339_times_with_any_offset() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z", NOW), Ok(1_000));
        assert_eq!(parse_time("1970-01-01T01:00:01.5+01:00", NOW), Ok(1_500));
    }

    #[test]
    fn ids_and_times_are_told_apart() {
        assert_eq!(
            parse("1a-2f", NOW),
            Ok(Start::After(EventId {
                epoch: 0x1a,
                seq: 0x2f
            }))
        );
        assert_eq!(parse("-1s", NOW), Ok(Start::Since(NOW - 1_000)));
        for bad in [
            "",
            "-",
            "-5",
            "-5y",
            "5m",
            "yesterday",
            "2026-13-01T00:00:00Z",
        ] {
            assert!(parse(bad, NOW).is_err(), "{bad}");
        }
    }
}
