//! Reading a packet's fields front to back, MQTT 5 property blocks
//! included, with errors that name the packet and the field.

use super::{Frame, PacketError, Properties, Version};

/// MQTT 5 property identifiers the gate looks for.
const TOPIC_ALIAS_MAXIMUM: usize = 0x22;
const TOPIC_ALIAS: usize = 0x23;
const SESSION_EXPIRY_INTERVAL: usize = 0x11;
const MAXIMUM_PACKET_SIZE: usize = 0x27;

/// Reads fields front to back from one packet, naming the packet in errors.
#[derive(Debug)]
pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) packet: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(packet: &'a [u8], frame: &Frame, name: &'static str) -> Self {
        Self {
            buf: &packet[..frame.len],
            pos: frame.header_len,
            packet: name,
        }
    }

    pub(super) fn truncated(&self, field: &'static str) -> PacketError {
        PacketError::Truncated {
            packet: self.packet,
            field,
        }
    }

    pub(super) fn malformed(&self, problem: &'static str) -> PacketError {
        PacketError::Malformed {
            packet: self.packet,
            problem,
        }
    }

    pub(super) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], PacketError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| self.truncated(field))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, PacketError> {
        Ok(self.take(1, field)?[0])
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, PacketError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Binary data with a two-byte length prefix.
    pub(super) fn binary(&mut self, field: &'static str) -> Result<&'a [u8], PacketError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    pub(super) fn string(&mut self, field: &'static str) -> Result<&'a str, PacketError> {
        let bytes = self.binary(field)?;
        std::str::from_utf8(bytes).map_err(|_| PacketError::NotUtf8 {
            packet: self.packet,
            field,
        })
    }

    pub(super) fn varint(&mut self, field: &'static str) -> Result<usize, PacketError> {
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

    pub(super) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    /// The packet id and, for MQTT 5, the properties (as bytes, length
    /// included; empty for 3.1.1) that open a SUBSCRIBE, UNSUBSCRIBE or
    /// SUBACK.
    pub(super) fn id_and_properties(
        &mut self,
        version: Version,
    ) -> Result<(u16, &'a [u8]), PacketError> {
        let packet_id = self.u16("packet id")?;
        let properties = match version {
            Version::V5 => {
                let range = self.properties()?.range;
                &self.buf[range]
            }
            Version::V311 => &[],
        };
        Ok((packet_id, properties))
    }

    /// An MQTT 5 property block, every property read by its type (an
    /// unknown identifier is an error: its length cannot be known).
    pub(super) fn properties(&mut self) -> Result<Properties, PacketError> {
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
                    let bytes = self.take(4, "property")?;
                    let value = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    if id == SESSION_EXPIRY_INTERVAL {
                        found.session_expiry = Some(value);
                    } else if id == MAXIMUM_PACKET_SIZE {
                        found.maximum_packet_size = Some(value);
                    }
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
