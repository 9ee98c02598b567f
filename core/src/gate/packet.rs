//! MQTT 3.1.1 and 5 packets, as far as the gate needs them: framing a byte
//! stream into packets, reading the fields access control depends on
//! (CONNECT, PUBLISH, SUBSCRIBE, SUBACK, packet ids), and writing the few
//! packets the gate answers or rewrites itself.
//!
//! Fields are read by [`reader`], packets written by [`write`]; everything
//! else passes through as bytes, untouched. Parsing is strict
//! where the gate decides something (a field that runs past its packet, a
//! string that is not UTF-8, an unknown MQTT 5 property, QoS 3 are errors,
//! never guesses), so that the gate never reads a packet differently from
//! the broker behind it. Every error is a [`PacketError`]; nothing here
//! panics on any input (a property test feeds it arbitrary bytes).

mod reader;
mod write;

use std::ops::Range;

use self::reader::Reader;
pub use self::write::{
    ack, connack_refusal, put_varint, write_connect, write_edited, write_edited_as,
    write_publish_with_topic, write_suback, write_subscribe, write_with_strings, Edit, Piece,
};

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
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

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
/// What the gate reads from an MQTT 5 property block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// The block in its packet, length prefix included.
    pub range: Range<usize>,
    pub topic_alias: Option<u16>,
    /// Offset of the Topic Alias Maximum's two-byte value, if present.
    pub topic_alias_maximum_at: Option<usize>,
    /// The Session Expiry Interval, in seconds, if present.
    pub session_expiry: Option<u32>,
    /// The Maximum Packet Size the sender accepts, if it set one.
    pub maximum_packet_size: Option<u32>,
}

/// The fields of a CONNECT the gate decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    pub username: Option<String>,
    pub will_topic: Option<String>,
    /// Where the client id and the will topic (length prefixes included)
    /// lie in the packet, so the gate can give the broker its own form of
    /// them (see [`crate::broker::name`]).
    pub client_id_range: Range<usize>,
    pub will_topic_range: Option<Range<usize>>,
    /// Where an MQTT 5 will's property block (its length included) lies.
    pub will_properties_range: Option<Range<usize>>,
    /// Where the will payload (length prefix included) lies, and the will's
    /// QoS and retain flag, so the gate can stamp it (see
    /// [`crate::broker::stamp`]).
    pub will_payload_range: Option<Range<usize>>,
    pub will_qos: u8,
    pub will_retain: bool,
    /// Clean Session (MQTT 3.1.1) or Clean Start (MQTT 5).
    pub clean_start: bool,
    /// MQTT 5's Session Expiry Interval in seconds (0 when absent: the
    /// session ends with the connection).
    pub session_expiry: u32,
    /// MQTT 5: the largest packet the client accepts, if it set a limit.
    pub maximum_packet_size: Option<u32>,
    /// The keep-alive in seconds (0 is "off"), and where it lies.
    pub keep_alive: u16,
    pub keep_alive_at: usize,
    /// MQTT 5: where the client's Topic Alias Maximum value lies in the
    /// packet, so the gate can set it to 0 (see the session).
    pub topic_alias_maximum_at: Option<usize>,
    /// The password, when the CONNECT has one (MQTT calls it binary data).
    pub password: Option<Vec<u8>>,
    /// Where the connect flags lie, and where the login (username and
    /// password, always last) starts: the end of the packet without one.
    /// The gate replaces the login with its own (see the session).
    pub flags_at: usize,
    pub login_at: usize,
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
    let flags_at = r.pos;
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(r.malformed("the reserved connect flag is set"));
    }
    let keep_alive_at = r.pos;
    let keep_alive = r.u16("keep alive")?;
    let mut topic_alias_maximum_at = None;
    let mut session_expiry = 0;
    let mut maximum_packet_size = None;
    if version == Version::V5 {
        let properties = r.properties()?;
        topic_alias_maximum_at = properties.topic_alias_maximum_at;
        session_expiry = properties.session_expiry.unwrap_or(0);
        maximum_packet_size = properties.maximum_packet_size;
    }
    let start = r.pos;
    let client_id = r.string("client id")?.to_owned();
    let client_id_range = start..r.pos;
    let mut will_topic = None;
    let mut will_topic_range = None;
    let mut will_payload_range = None;
    let mut will_properties_range = None;
    let will_qos = (flags >> 3) & 0x03;
    if will_qos == 3 {
        return Err(r.malformed("will QoS 3"));
    }
    if flags & 0x04 != 0 {
        if version == Version::V5 {
            will_properties_range = Some(r.properties()?.range);
        }
        let start = r.pos;
        will_topic = Some(r.string("will topic")?.to_owned());
        will_topic_range = Some(start..r.pos);
        let start = r.pos;
        r.binary("will payload")?;
        will_payload_range = Some(start..r.pos);
    } else if flags & 0x38 != 0 {
        return Err(r.malformed("will QoS or retain without a will"));
    }
    let login_at = r.pos;
    let username = if flags & 0x80 != 0 {
        Some(r.string("username")?.to_owned())
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(r.binary("password")?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        version,
        client_id,
        username,
        will_topic,
        client_id_range,
        will_topic_range,
        will_properties_range,
        will_payload_range,
        will_qos,
        will_retain: flags & 0x20 != 0,
        clean_start: flags & 0x02 != 0,
        session_expiry,
        maximum_packet_size,
        keep_alive,
        keep_alive_at,
        topic_alias_maximum_at,
        password,
        flags_at,
        login_at,
    })
}

/// The fields of a PUBLISH the gate decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub qos: u8,
    pub retain: bool,
    /// Present for QoS 1 and 2 (and never 0).
    pub packet_id: Option<u16>,
    /// Empty when an MQTT 5 topic alias stands for it.
    pub topic: &'a str,
    /// Where the topic (length prefix included) lies in the packet.
    pub topic_range: Range<usize>,
    pub topic_alias: Option<u16>,
    /// Where the MQTT 5 property block (its length included) lies; empty,
    /// at the payload, for 3.1.1.
    pub properties_range: Range<usize>,
    /// Where the payload starts (it runs to the end of the packet).
    pub payload_at: usize,
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
    let (topic_alias, properties_range) = match version {
        Version::V5 => {
            let properties = r.properties()?;
            (properties.topic_alias, properties.range)
        }
        Version::V311 => (None, r.pos..r.pos),
    };
    Ok(Publish {
        properties_range,
        qos,
        retain: frame.first & 0x01 != 0,
        payload_at: r.pos,
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
    let (packet_id, properties) = r.id_and_properties(version)?;
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

/// The filters an UNSUBSCRIBE names.
pub fn parse_unsubscribe<'a>(
    packet: &'a [u8],
    frame: &Frame,
    version: Version,
) -> Result<Vec<&'a str>, PacketError> {
    Ok(unsubscribe_filters(packet, frame, version)?
        .into_iter()
        .map(|(filter, _)| filter)
        .collect())
}

/// The filters an UNSUBSCRIBE names, each with where it lies in the
/// packet (length prefix included).
pub fn unsubscribe_filters<'a>(
    packet: &'a [u8],
    frame: &Frame,
    version: Version,
) -> Result<Vec<(&'a str, Range<usize>)>, PacketError> {
    let mut r = Reader::new(packet, frame, "UNSUBSCRIBE");
    r.id_and_properties(version)?;
    let mut filters = Vec::new();
    while r.pos < r.buf.len() {
        let start = r.pos;
        let filter = r.string("topic filter")?;
        filters.push((filter, start..r.pos));
    }
    if filters.is_empty() {
        return Err(r.malformed("no topic filter"));
    }
    Ok(filters)
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
    let (packet_id, properties) = r.id_and_properties(version)?;
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

#[cfg(test)]
mod tests;
