//! One message as the log keeps it, and its bytes on disk.
//!
//! A record on disk is a frame: `len: u32`, `crc: u32` (CRC-32 of the
//! body), then the body: `position: u64`, `time_ms: u64`, `flags: u8`
//! (QoS in bits 0-1, retain in bit 2), `topic_len: u16`, the topic, the
//! payload. All integers little-endian. The checksum is what tells a
//! record cut short by a power cut, or damaged on disk, from a whole one.

use bytes::Bytes;

/// Bytes before a record's body: its length and checksum.
pub const FRAME_HEADER: usize = 8;

/// Bytes of a body before its topic.
const BODY_HEADER: usize = 8 + 8 + 1 + 2;

/// Largest body a frame may claim: a length past it is damage, not a
/// record (payloads are bounded far lower by `mqtt.max_payload_bytes`).
pub const MAX_BODY: usize = 256 * 1024 * 1024;

/// One message in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it stands in the log: positions start at 1 and never repeat.
    pub position: u64,
    /// Milliseconds since the Unix epoch when the log took it.
    pub time_ms: u64,
    pub qos: u8,
    /// Its retain flag as published.
    pub retain: bool,
    pub topic: Box<str>,
    pub payload: Bytes,
}

impl Record {
    /// What this record takes on disk.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER + BODY_HEADER + self.topic.len() + self.payload.len()
    }

    /// Appends the record's frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.push((self.qos & 0b11) | (u8::from(self.retain) << 2));
        // Topics are bounded by `mqtt.max_topic_bytes`, far below u16.
        let topic_len = u16::try_from(self.topic.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&topic_len.to_le_bytes());
        out.extend_from_slice(&self.topic.as_bytes()[..usize::from(topic_len)]);
        out.extend_from_slice(&self.payload);
        let body = &out[start + FRAME_HEADER..];
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(body);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What a buffer holds at its start.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole record, and the bytes its frame took.
    Record(Record, usize),
    /// The start of a frame, cut short: more bytes may complete it (or, at
    /// the end of a file, the write was cut short).
    Short,
    /// Bytes that are no record: a bad checksum, an impossible length or
    /// a body that does not parse.
    Damaged(&'static str),
}

/// Decodes the frame at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    if bytes.len() < FRAME_HEADER {
        return Decoded::Short;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if !(BODY_HEADER..=MAX_BODY).contains(&len) {
        return Decoded::Damaged("a record length out of range");
    }
    let Some(body) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Decoded::Short;
    };
    if crc32fast::hash(body) != crc {
        return Decoded::Damaged("a record checksum that does not match");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let flags = body[16];
    let topic_len = usize::from(u16::from_le_bytes([body[17], body[18]]));
    let Some(topic) = body.get(BODY_HEADER..BODY_HEADER + topic_len) else {
        return Decoded::Damaged("a topic longer than its record");
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        return Decoded::Damaged("a topic that is not UTF-8");
    };
    if flags & 0b11 == 0b11 || flags >> 3 != 0 {
        return Decoded::Damaged("record flags no version of the log writes");
    }
    Decoded::Record(
        Record {
            position: u64_at(0),
            time_ms: u64_at(8),
            qos: flags & 0b11,
            retain: flags & 0b100 != 0,
            topic: topic.into(),
            payload: Bytes::copy_from_slice(&body[BODY_HEADER + topic_len..]),
        },
        FRAME_HEADER + len,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, payload: &[u8]) -> Record {
        Record {
            position: 42,
            time_ms: 1_700_000_000_000,
            qos: 2,
            retain: true,
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        for r in [
            record("温度/客厅", b"21.5"),
            record("°C/salon", b""),
            record("a", &[0xff; 300]),
        ] {
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(out.len(), r.encoded_len());
            assert_eq!(decode(&out), Decoded::Record(r.clone(), out.len()));
        }
    }

    #[test]
    fn a_record_cut_short_is_short_at_every_length() {
        let mut out = Vec::new();
        record("home/kitchen", b"19").encode(&mut out);
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut]), Decoded::Short, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_damage_never_a_record() {
        let mut out = Vec::new();
        record("home/kitchen", b"19").encode(&mut out);
        for at in 0..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[at] ^= 1 << bit;
                assert!(
                    !matches!(decode(&bad), Decoded::Record(..)),
                    "byte {at} bit {bit}"
                );
            }
        }
    }
}
