//! Writing the packets the gate answers or rewrites itself.

use std::ops::Range;

use super::{Frame, Version, MAX_VARINT};

/// Appends `n` as an MQTT variable byte integer.
pub fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    debug_assert!(n <= MAX_VARINT);
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// A fixed header for a packet of type byte `first` and `body` bytes.
pub(super) fn header(out: &mut Vec<u8>, first: u8, body: usize) {
    out.push(first);
    put_varint(out, body);
}

/// A CONNACK that refuses the connection with `code` (a 3.1.1 return code
/// or an MQTT 5 reason code, by `version`).
pub fn connack_refusal(version: Version, code: u8) -> Vec<u8> {
    match version {
        Version::V311 => vec![0x20, 2, 0, code],
        // Flags, reason code, no properties.
        Version::V5 => vec![0x20, 3, 0, code, 0],
    }
}

/// A PUBACK, PUBREC or PUBCOMP (by `kind`) for `packet_id`. MQTT 5 carries
/// `reason` when it is not 0 (success may be left out); 3.1.1 has none.
pub fn ack(out: &mut Vec<u8>, kind: u8, version: Version, packet_id: u16, reason: u8) {
    let id = packet_id.to_be_bytes();
    if version == Version::V5 && reason != 0 {
        out.extend_from_slice(&[kind << 4, 3, id[0], id[1], reason]);
    } else {
        out.extend_from_slice(&[kind << 4, 2, id[0], id[1]]);
    }
}

/// A SUBSCRIBE with the given filters only, the packet id and properties
/// of the original kept.
pub fn write_subscribe<'a>(
    out: &mut Vec<u8>,
    packet_id: u16,
    properties: &[u8],
    filters: impl Iterator<Item = (&'a str, u8)> + Clone,
) {
    let body = 2 + properties.len() + filters.clone().map(|(f, _)| 3 + f.len()).sum::<usize>();
    header(out, 0x82, body);
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(properties);
    for (filter, options) in filters {
        // Filters come from a parsed packet: each fits its two-byte length.
        out.extend_from_slice(&(filter.len() as u16).to_be_bytes());
        out.extend_from_slice(filter.as_bytes());
        out.push(options);
    }
}

/// A SUBACK (3.1.1 return codes or MQTT 5 reason codes by `version`; for
/// MQTT 5, `properties` is a whole property block, or empty for none).
pub fn write_suback(
    out: &mut Vec<u8>,
    version: Version,
    packet_id: u16,
    properties: &[u8],
    codes: &[u8],
) {
    let properties: &[u8] = match version {
        Version::V5 if properties.is_empty() => &[0],
        Version::V5 => properties,
        Version::V311 => &[],
    };
    header(out, 0x90, 2 + properties.len() + codes.len());
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(properties);
    out.extend_from_slice(codes);
}

/// What takes the place of a range of a packet the gate rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// An MQTT string or binary field: its two-byte length, then the bytes
    /// (which must fit that length).
    Field(&'a [u8]),
    /// A binary field whose data gets a stamp byte first (a will payload,
    /// see [`crate::broker::stamp`]).
    StampedField(u8, &'a [u8]),
    /// Bytes as they are; empty to remove the range.
    Raw(&'a [u8]),
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::Field(bytes) => 2 + bytes.len(),
            Piece::StampedField(_, bytes) => 3 + bytes.len(),
            Piece::Raw(bytes) => bytes.len(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Piece::Field(bytes) => {
                debug_assert!(bytes.len() <= usize::from(u16::MAX));
                out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Piece::StampedField(stamp, bytes) => {
                debug_assert!(bytes.len() < usize::from(u16::MAX));
                out.extend_from_slice(&(bytes.len() as u16 + 1).to_be_bytes());
                out.push(stamp);
                out.extend_from_slice(bytes);
            }
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
}

/// One change to a packet: the bytes at the range (an empty range inserts)
/// replaced by the piece.
pub type Edit<'a> = (Range<usize>, Piece<'a>);

/// `packet` with each edit applied (the ranges in order and apart),
/// everything else unchanged, under a fixed header of the new length.
pub fn write_edited(out: &mut Vec<u8>, packet: &[u8], frame: &Frame, edits: &[Edit<'_>]) {
    write_edited_as(out, frame.first, packet, frame, edits);
}

/// [`write_edited`] under the type and flags byte `first` (a PUBLISH whose
/// QoS changes).
pub fn write_edited_as(
    out: &mut Vec<u8>,
    first: u8,
    packet: &[u8],
    frame: &Frame,
    edits: &[Edit<'_>],
) {
    let removed: usize = edits.iter().map(|(range, _)| range.len()).sum();
    let added: usize = edits.iter().map(|(_, piece)| piece.len()).sum();
    header(out, first, frame.len - frame.header_len - removed + added);
    splice(out, packet, frame.header_len, frame.len, edits);
}

/// `packet[from..to]` with the edits (all inside it) applied.
fn splice(out: &mut Vec<u8>, packet: &[u8], from: usize, to: usize, edits: &[Edit<'_>]) {
    let mut at = from;
    for (range, piece) in edits {
        debug_assert!(at <= range.start && range.end <= to);
        out.extend_from_slice(&packet[at..range.start]);
        piece.write(out);
        at = range.end;
    }
    out.extend_from_slice(&packet[at..to]);
}

/// `packet` (a PUBLISH whose topic lies at `topic_range`) with `topic` in
/// place of its topic, everything else unchanged.
pub fn write_publish_with_topic(
    out: &mut Vec<u8>,
    packet: &[u8],
    frame: &Frame,
    topic_range: Range<usize>,
    topic: &str,
) {
    write_with_strings(out, packet, frame, &[(topic_range, topic)]);
}

/// `packet` with each string at a range (length prefix included; the
/// ranges in order and apart) replaced by its new value, everything else
/// unchanged. Each new string must fit its two-byte length.
pub fn write_with_strings(
    out: &mut Vec<u8>,
    packet: &[u8],
    frame: &Frame,
    strings: &[(Range<usize>, &str)],
) {
    let edits: Vec<Edit<'_>> = strings
        .iter()
        .map(|(range, s)| (range.clone(), Piece::Field(s.as_bytes())))
        .collect();
    write_edited(out, packet, frame, &edits);
}

/// A CONNECT as the broker gets it from the gate: `packet` with the edits
/// applied (every range before `login_at`), and its login, whatever it was
/// (none, a username, a username and password), replaced by `login`: the
/// device's own was checked by the gate and means nothing to the broker.
pub fn write_connect(
    out: &mut Vec<u8>,
    packet: &[u8],
    frame: &Frame,
    edits: &[Edit<'_>],
    (flags_at, login_at): (usize, usize),
    (username, password): (&str, &str),
) {
    let mut body = Vec::with_capacity(frame.len + username.len() + password.len() + 8);
    debug_assert!(edits.iter().all(|(range, _)| range.start > flags_at));
    splice(&mut body, packet, frame.header_len, login_at, edits);
    // The flags' offset in the new body: only what comes after it moved.
    body[flags_at - frame.header_len] |= 0xc0;
    for field in [username, password] {
        Piece::Field(field.as_bytes()).write(&mut body);
    }
    header(out, frame.first, body.len());
    out.extend_from_slice(&body);
}
