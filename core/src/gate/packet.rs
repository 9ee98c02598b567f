//! MQTT 3.1.1 and 5 packets, as far as the gate needs them: framing a byte
//! stream into packets, reading the fields access control depends on
//! (CONNECT, PUBLISH, SUBSCRIBE, SUBACK, packet ids), and writing the few
//! packets the gate answers or rewrites itself.
//!
//! Everything else passes through as bytes, untouched. Parsing is strict
//! where the gate decides something (a field that runs past its packet, a
//! string that is not UTF-8, an unknown MQTT 5 property, QoS 3 are errors,
//! never guesses), so that the gate never reads a packet differently from
//! the broker behind it. Every error is a [`PacketError`]; nothing here
//! panics on any input (a property test feeds it arbitrary bytes).

use std::ops::Range;

/// Packet types (the high nibble of the first byte).
pub mod kind {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
}

/// MQTT 5 property identifiers the gate reads or writes.
const TOPIC_ALIAS_MAXIMUM: usize = 0x22;
const TOPIC_ALIAS: usize = 0x23;

/// The largest remaining length MQTT's four-byte integer can express.
const MAX_VARINT: usize = 268_435_455;

/// The protocol a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4); level 3 (MQTT 3.1) travels the same
    /// way and is left to the broker to accept or refuse.
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why bytes are not a packet the gate can work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("malformed remaining length: more than four bytes")]
    BadLength,
    #[error("a packet of {size} bytes is over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("{packet}: {field} runs past the end of the packet")]
    Truncated {
        packet: &'static str,
        field: &'static str,
    },
    #[error("{packet}: {field} is not UTF-8")]
    NotUtf8 {
        packet: &'static str,
        field: &'static str,
    },
    #[error("{packet}: {problem}")]
    Malformed {
        packet: &'static str,
        problem: &'static str,
    },
    #[error("CONNECT: unsupported protocol level {0}")]
    UnsupportedLevel(u8),
}

/// Where one complete packet lies at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The first byte: type and flags.
    pub first: u8,
    /// Bytes of the fixed header (type byte and remaining length).
    pub header_len: usize,
    /// Bytes of the whole packet.
    pub len: usize,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// The packet at the start of `buf`, if all of it has arrived. A remaining
/// length over `max` is an error as soon as the fixed header is readable,
/// so an oversized packet is refused before it is buffered.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<Frame>, PacketError> {
    Ok(fixed_header(buf, max)?.filter(|frame| buf.len() >= frame.len))
}

/// The packet that starts `buf`, as soon as its fixed header has arrived
/// (its body may still be on the way).
pub fn fixed_header(buf: &[u8], max: usize) -> Result<Option<Frame>, PacketError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (i, &byte) in buf[1..].iter().enumerate().take(4) {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if remaining > max {
                return Err(PacketError::TooLarge {
                    size: remaining,
                    max,
                });
            }
            let header_len = i + 2;
            return Ok(Some(Frame {
                first,
                header_len,
                len: header_len + remaining,
            }));
        }
    }
    if buf.len() >= 5 {
        Err(PacketError::BadLength)
    } else {
        Ok(None)
    }
}

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

/// Reads fields front to back from one packet, naming the packet in errors.
#[derive(Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    packet: &'static str,
}

impl<'a> Reader<'a> {
    fn new(packet: &'a [u8], frame: &Frame, name: &'static str) -> Self {
        Self {
            buf: &packet[..frame.len],
            pos: frame.header_len,
            packet: name,
        }
    }

    fn truncated(&self, field: &'static str) -> PacketError {
        PacketError::Truncated {
            packet: self.packet,
            field,
        }
    }

    fn malformed(&self, problem: &'static str) -> PacketError {
        PacketError::Malformed {
            packet: self.packet,
            problem,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], PacketError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| self.truncated(field))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, PacketError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, PacketError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Binary data with a two-byte length prefix.
    fn binary(&mut self, field: &'static str) -> Result<&'a [u8], PacketError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    fn string(&mut self, field: &'static str) -> Result<&'a str, PacketError> {
        let bytes = self.binary(field)?;
        std::str::from_utf8(bytes).map_err(|_| PacketError::NotUtf8 {
            packet: self.packet,
            field,
        })
    }

    fn varint(&mut self, field: &'static str) -> Result<usize, PacketError> {
        let mut value = 0usize;
        for i in 0..4 {
            let byte = self.u8(field)?;
            value |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("a variable byte integer is longer than four bytes"))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    /// An MQTT 5 property block, every property read by its type (an
    /// unknown identifier is an error: its length cannot be known).
    fn properties(&mut self) -> Result<Properties, PacketError> {
        let start = self.pos;
        let len = self.varint("property length")?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| self.truncated("properties"))?;
        let mut found = Properties {
            range: start..end,
            ..Properties::default()
        };
        while self.pos < end {
            let id = self.varint("property identifier")?;
            let at = self.pos;
            match id {
                // Byte.
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                    self.take(1, "property")?;
                }
                // Two-byte integer.
                0x13 | 0x21 | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
                    let value = self.u16("property")?;
                    if id == TOPIC_ALIAS {
                        found.topic_alias = Some(value);
                    } else if id == TOPIC_ALIAS_MAXIMUM {
                        found.topic_alias_maximum_at = Some(at);
                    }
                }
                // Four-byte integer.
                0x02 | 0x11 | 0x18 | 0x27 => {
                    self.take(4, "property")?;
                }
                // Variable byte integer (subscription identifier).
                0x0b => {
                    self.varint("property")?;
                }
                // UTF-8 string.
                0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => {
                    self.string("property")?;
                }
                // Binary data.
                0x09 | 0x16 => {
                    self.binary("property")?;
                }
                // String pair (user property).
                0x26 => {
                    self.string("user property")?;
                    self.string("user property")?;
                }
                _ => return Err(self.malformed("unknown property identifier")),
            }
        }
        if self.pos != end {
            return Err(self.malformed("a property runs past the property length"));
        }
        Ok(found)
    }
}

/// What the gate reads from an MQTT 5 property block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// The block in its packet, length prefix included.
    pub range: Range<usize>,
    pub topic_alias: Option<u16>,
    /// Offset of the Topic Alias Maximum's two-byte value, if present.
    pub topic_alias_maximum_at: Option<usize>,
}

/// The fields of a CONNECT the gate decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub username: Option<String>,
    pub will_topic: Option<String>,
    /// MQTT 5: where the client's Topic Alias Maximum value lies in the
    /// packet, so the gate can set it to 0 (see the session).
    pub topic_alias_maximum_at: Option<usize>,
}

pub fn parse_connect(packet: &[u8], frame: &Frame) -> Result<Connect, PacketError> {
    let mut r = Reader::new(packet, frame, "CONNECT");
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let version = match (name, level) {
        ("MQTT", 4) | ("MQIsdp", 3) => Version::V311,
        ("MQTT", 5) => Version::V5,
        ("MQTT" | "MQIsdp", _) => return Err(PacketError::UnsupportedLevel(level)),
        _ => return Err(r.malformed("unknown protocol name")),
    };
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(r.malformed("the reserved connect flag is set"));
    }
    r.u16("keep alive")?;
    let mut topic_alias_maximum_at = None;
    if version == Version::V5 {
        topic_alias_maximum_at = r.properties()?.topic_alias_maximum_at;
    }
    let client_id = r.string("client id")?.to_owned();
    let mut will_topic = None;
    if flags & 0x04 != 0 {
        if version == Version::V5 {
            r.properties()?;
        }
        will_topic = Some(r.string("will topic")?.to_owned());
        r.binary("will payload")?;
    } else if flags & 0x38 != 0 {
        return Err(r.malformed("will QoS or retain without a will"));
    }
    let username = if flags & 0x80 != 0 {
        Some(r.string("username")?.to_owned())
    } else {
        None
    };
    if flags & 0x40 != 0 {
        r.binary("password")?;
    }
    Ok(Connect {
        version,
        client_id,
        username,
        will_topic,
        topic_alias_maximum_at,
    })
}

/// The fields of a PUBLISH the gate decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    /// Present for QoS 1 and 2 (and never 0).
    pub packet_id: Option<u16>,
    /// Empty when an MQTT 5 topic alias stands for it.
    pub topic: &'a str,
    /// Where the topic (length prefix included) lies in the packet.
    pub topic_range: Range<usize>,
    pub topic_alias: Option<u16>,
}

pub fn parse_publish<'a>(
    packet: &'a [u8],
    frame: &Frame,
    version: Version,
) -> Result<Publish<'a>, PacketError> {
    let mut r = Reader::new(packet, frame, "PUBLISH");
    let qos = (frame.first >> 1) & 0x03;
    if qos == 3 {
        return Err(r.malformed("QoS 3"));
    }
    let start = r.pos;
    let topic = r.string("topic")?;
    let topic_range = start..r.pos;
    let packet_id = if qos > 0 {
        let id = r.u16("packet id")?;
        if id == 0 {
            return Err(r.malformed("packet id 0"));
        }
        Some(id)
    } else {
        None
    };
    let topic_alias = match version {
        Version::V5 => r.properties()?.topic_alias,
        Version::V311 => None,
    };
    Ok(Publish {
        qos,
        packet_id,
        topic,
        topic_range,
        topic_alias,
    })
}

/// A SUBSCRIBE: its packet id, MQTT 5 properties (as bytes, length
/// included; empty for 3.1.1), and each filter with its options byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    pub properties: &'a [u8],
    pub filters: Vec<(&'a str, u8)>,
}

pub fn parse_subscribe<'a>(
    packet: &'a [u8],
    frame: &Frame,
    version: Version,
) -> Result<Subscribe<'a>, PacketError> {
    let mut r = Reader::new(packet, frame, "SUBSCRIBE");
    let packet_id = r.u16("packet id")?;
    let properties = match version {
        Version::V5 => {
            let range = r.properties()?.range;
            &r.buf[range]
        }
        Version::V311 => &[],
    };
    let mut filters = Vec::new();
    while r.pos < r.buf.len() {
        let filter = r.string("topic filter")?;
        let options = r.u8("subscription options")?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(r.malformed("no topic filter"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// A SUBACK: packet id, MQTT 5 properties (bytes, length included), and
/// one return or reason code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub packet_id: u16,
    pub properties: &'a [u8],
    pub codes: &'a [u8],
}

pub fn parse_suback<'a>(
    packet: &'a [u8],
    frame: &Frame,
    version: Version,
) -> Result<SubAck<'a>, PacketError> {
    let mut r = Reader::new(packet, frame, "SUBACK");
    let packet_id = r.u16("packet id")?;
    let properties = match version {
        Version::V5 => {
            let range = r.properties()?.range;
            &r.buf[range]
        }
        Version::V311 => &[],
    };
    Ok(SubAck {
        packet_id,
        properties,
        codes: r.rest(),
    })
}

/// The packet id that opens a PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn packet_id(packet: &[u8], frame: &Frame) -> Result<u16, PacketError> {
    Reader::new(packet, frame, "acknowledgement").u16("packet id")
}

/// A fixed header for a packet of type byte `first` and `body` bytes.
fn header(out: &mut Vec<u8>, first: u8, body: usize) {
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

/// `packet` (a PUBLISH whose topic lies at `topic_range`) with `topic` in
/// place of its topic, everything else unchanged.
pub fn write_publish_with_topic(
    out: &mut Vec<u8>,
    packet: &[u8],
    frame: &Frame,
    topic_range: Range<usize>,
    topic: &str,
) {
    let before = &packet[frame.header_len..topic_range.start];
    let after = &packet[topic_range.end..frame.len];
    header(
        out,
        frame.first,
        before.len() + 2 + topic.len() + after.len(),
    );
    out.extend_from_slice(before);
    // A topic the client sent earlier: it fits its two-byte length.
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(after);
}

#[cfg(test)]
mod tests;
