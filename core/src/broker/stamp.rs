//! The stamp: one byte the bridge puts before every payload it gives the
//! broker, carrying what rumqttd 0.20 forgets about a message: the QoS it
//! was published with and its retain flag (the broker clears the flag
//! before its log, and hands local links every message at their own
//! subscription QoS).
//!
//! Every payload enters the broker through the gate (device publishes and
//! wills) or the ingress link (web clients and plugins), and each stamps
//! it; it leaves through the gate (deliveries to devices, which get it
//! back without the stamp) and the egress link (which reads
//! the stamp into the router's message). So no client ever sees one.
//!
//! One publish stays unstamped: a retained empty payload, which is how MQTT
//! deletes a retained value, and the only way rumqttd knows to delete one.
//! An empty payload published without retain is stamped, so (unlike in
//! rumqttd alone) it is an ordinary message and deletes nothing.
//!
//! The byte is `0b1010_xrqq`: a marker in the high bits, so a payload that
//! somehow arrives unstamped is recognised and counted rather than misread
//! (no UTF-8 text starts with such a byte), then whether the message is a
//! retained value put back from the log at start (`x`: the egress link
//! skips those, the log has them), the retain flag and the QoS.

/// Bytes a stamp adds to a payload.
pub const LEN: usize = 1;

const MARK: u8 = 0b1010_0000;
const MARK_MASK: u8 = 0b1111_0000;
const RESTORED: u8 = 0b1000;

/// What the stamp says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub qos: u8,
    pub retain: bool,
}

/// The stamp byte for a publish, or `None` for one that goes unstamped (a
/// retained empty payload: the deletion of a retained value).
pub fn byte(meta: Meta, payload_len: usize) -> Option<u8> {
    if meta.retain && payload_len == 0 {
        return None;
    }
    Some(MARK | (u8::from(meta.retain) << 2) | (meta.qos & 0b11))
}

/// `payload` with its stamp in front, as the broker must get it.
pub fn stamp(meta: Meta, payload: &[u8]) -> bytes::Bytes {
    stamp_byte(byte(meta, payload.len()), payload)
}

/// A retained value put back from the log, stamped as such.
pub fn stamp_restored(meta: Meta, payload: &[u8]) -> bytes::Bytes {
    stamp_byte(byte(meta, payload.len()).map(|b| b | RESTORED), payload)
}

fn stamp_byte(stamp: Option<u8>, payload: &[u8]) -> bytes::Bytes {
    match stamp {
        None => bytes::Bytes::new(),
        Some(stamp) => {
            let mut stamped = Vec::with_capacity(LEN + payload.len());
            stamped.push(stamp);
            stamped.extend_from_slice(payload);
            stamped.into()
        }
    }
}

/// What a payload from the broker turns out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A stamped message: what it says, and that the data starts after
    /// [`LEN`] bytes.
    Stamped(Meta),
    /// The same, for a retained value put back from the log.
    Restored(Meta),
    /// An empty payload: a retained value deleted (QoS unknown, so 0).
    Deletion,
    /// A payload no part of the bridge stamped; passed on as it is.
    Unstamped,
}

pub fn read(payload: &[u8]) -> Read {
    match payload.first() {
        None => Read::Deletion,
        Some(&b) if b & MARK_MASK == MARK && b & 0b11 != 0b11 => {
            let meta = Meta {
                qos: b & 0b11,
                retain: b & 0b100 != 0,
            };
            if b & RESTORED == 0 {
                Read::Stamped(meta)
            } else {
                Read::Restored(meta)
            }
        }
        Some(_) => Read::Unstamped,
    }
}

/// A payload from the broker as the bridge's clients see it: the data
/// without the stamp, and what the stamp said (an unstamped payload whole,
/// as QoS 0 without retain).
pub fn split(payload: bytes::Bytes) -> (bytes::Bytes, Meta, Read) {
    let read = read(&payload);
    match read {
        Read::Stamped(meta) | Read::Restored(meta) => (payload.slice(LEN..), meta, read),
        Read::Deletion => (
            payload,
            Meta {
                qos: 0,
                retain: true,
            },
            read,
        ),
        Read::Unstamped => (payload, Meta::default(), read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_publish_but_a_deletion_is_stamped_and_read_back() {
        for qos in 0..=2 {
            for retain in [false, true] {
                let meta = Meta { qos, retain };
                for payload in [&b"21.5"[..], b"", &[MARK, 0xff]] {
                    let stamped = stamp(meta, payload);
                    if retain && payload.is_empty() {
                        assert!(stamped.is_empty(), "a deletion stays empty");
                        assert_eq!(read(&stamped), Read::Deletion);
                        continue;
                    }
                    let (data, read_meta, how) = split(stamped);
                    assert_eq!(how, Read::Stamped(meta));
                    assert_eq!((&data[..], read_meta), (payload, meta));
                }
            }
        }
    }

    #[test]
    fn a_restored_value_is_told_apart_and_read_alike() {
        let meta = Meta {
            qos: 1,
            retain: true,
        };
        let (data, read_meta, how) = split(stamp_restored(meta, b"19"));
        assert_eq!(
            (how, &data[..], read_meta),
            (Read::Restored(meta), &b"19"[..], meta)
        );
    }

    #[test]
    fn a_payload_nobody_stamped_is_told_apart() {
        assert_eq!(read(b"{\"t\":21}"), Read::Unstamped);
        assert_eq!(read(&[MARK | 0b11]), Read::Unstamped, "QoS 3 is no stamp");
    }
}
