use super::write::header;
use super::*;
use proptest::prelude::*;

/// A packet from a type byte and a body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, first, body.len());
    out.extend_from_slice(body);
    out
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn framed(bytes: &[u8]) -> Frame {
    frame(bytes, 1 << 20).expect("valid").expect("complete")
}

/// A CONNECT of `level`, with optional will topic, username and password,
/// and for MQTT 5 a Topic Alias Maximum of 10.
fn connect(level: u8, will: Option<&str>, login: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(level);
    let mut flags = 0x02;
    if will.is_some() {
        flags |= 0x04;
    }
    if login.is_some() {
        flags |= 0xc0;
    }
    body.push(flags);
    body.extend_from_slice(&[0, 30]);
    if level == 5 {
        body.extend_from_slice(&[3, 0x22, 0, 10]);
    }
    string(&mut body, "client-1");
    if let Some(topic) = will {
        if level == 5 {
            body.extend_from_slice(&[5, 0x18, 0, 0, 0, 9]); // will delay
        }
        string(&mut body, topic);
        string(&mut body, "bye");
    }
    if let Some((user, password)) = login {
        string(&mut body, user);
        string(&mut body, password);
    }
    packet(0x10, &body)
}

/// Framing: complete packets are found, partial ones wait for more bytes,
/// and a fixed header alone is enough to refuse an oversized packet.
#[test]
fn framing() {
    assert_eq!(frame(&[], 10), Ok(None));
    assert_eq!(frame(&[0xc0], 10), Ok(None));
    assert_eq!(
        frame(&[0xc0, 0, 0xd0], 10),
        Ok(Some(Frame {
            first: 0xc0,
            header_len: 2,
            len: 2
        }))
    );
    assert_eq!(frame(&[0x30, 5, 0, 1], 10), Ok(None), "truncated body");
    // 200 = 0xc8 0x01.
    assert_eq!(frame(&[0x30, 0xc8, 0x01], 1_000), Ok(None));
    assert_eq!(
        frame(&[0x30, 0xc8, 0x01], 100),
        Err(PacketError::TooLarge {
            size: 200,
            max: 100
        })
    );
    assert_eq!(frame(&[0x30, 0xff, 0xff, 0xff], 10), Ok(None));
    assert_eq!(
        frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], usize::MAX),
        Err(PacketError::BadLength)
    );
}

/// Variable byte integers round-trip at each width boundary.
#[test]
fn varints_round_trip() {
    for n in [
        0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT,
    ] {
        let mut out = vec![0x30];
        put_varint(&mut out, n);
        let header = fixed_header(&out, usize::MAX)
            .expect("valid")
            .expect("header");
        assert_eq!(header.len, out.len() + n, "{n}");
        assert_eq!(frame(&out, usize::MAX), Ok((n == 0).then_some(header)));
        let mut r = Reader {
            buf: &out,
            pos: 1,
            packet: "test",
        };
        assert_eq!(r.varint("n"), Ok(n));
    }
}

/// CONNECT: protocol version, client id, username and will topic; MQTT 5
/// properties (connect and will) are read past, and the Topic Alias
/// Maximum is located.
#[test]
fn connect_fields() {
    for level in [4, 5] {
        let bytes = connect(level, Some("wills/a"), Some(("ann", "pw")));
        let parsed = parse_connect(&bytes, &framed(&bytes)).expect("valid CONNECT");
        assert_eq!(parsed.client_id, "client-1");
        assert_eq!(parsed.username.as_deref(), Some("ann"));
        assert_eq!(parsed.will_topic.as_deref(), Some("wills/a"));
        if level == 5 {
            assert_eq!(parsed.version, Version::V5);
            let at = parsed.topic_alias_maximum_at.expect("alias maximum");
            assert_eq!(&bytes[at..at + 2], &[0, 10]);
        } else {
            assert_eq!(parsed.version, Version::V311);
            assert_eq!(parsed.topic_alias_maximum_at, None);
        }
    }
    let anonymous = connect(4, None, None);
    let parsed = parse_connect(&anonymous, &framed(&anonymous)).expect("valid");
    assert_eq!((parsed.username, parsed.will_topic), (None, None));
}

/// The broker's CONNECT carries the gate's login in place of the
/// device's, whatever the device sent, with every other field as it was
/// (the client id in the broker's form, the will payload stamped).
#[test]
fn connect_rewritten_with_the_gates_login() {
    for level in [4, 5] {
        for login in [None, Some(("ann", "pw")), Some(("a-much-longer-name", ""))] {
            let bytes = connect(level, Some("wills/a"), login);
            let parsed = parse_connect(&bytes, &framed(&bytes)).expect("valid CONNECT");
            assert_eq!(parsed.password.as_deref(), login.map(|l| l.1.as_bytes()));
            let mut out = Vec::new();
            let will = parsed.will_payload_range.clone().expect("a will");
            assert_eq!(&bytes[will.clone()], b"\0\x03bye");
            let edits = [
                (parsed.client_id_range.clone(), Piece::Field(b"client.2d1")),
                (will, Piece::StampedField(0xa0, b"bye")),
            ];
            let at = (parsed.flags_at, parsed.login_at);
            write_connect(
                &mut out,
                &bytes,
                &framed(&bytes),
                &edits,
                at,
                ("$gate", "s3"),
            );
            let again = parse_connect(&out, &framed(&out)).expect("rewritten CONNECT parses");
            assert_eq!(again.client_id, "client.2d1");
            assert_eq!(again.username.as_deref(), Some("$gate"));
            assert_eq!(again.password.as_deref(), Some(&b"s3"[..]));
            assert_eq!(again.will_topic.as_deref(), Some("wills/a"));
            let will = again.will_payload_range.clone().expect("a will");
            assert_eq!(&out[will], b"\0\x04\xa0bye");
            assert_eq!(
                (again.version, again.keep_alive),
                (parsed.version, parsed.keep_alive)
            );
            assert_eq!(
                out[again.flags_at] & 0x3f,
                bytes[parsed.flags_at] & 0x3f,
                "will and clean flags kept"
            );
        }
    }
}

/// Malformed CONNECTs are typed errors: a truncated field, an unknown
/// protocol, an unsupported level, an unknown property, bad UTF-8.
#[test]
fn connect_errors() {
    let good = connect(5, Some("w"), Some(("u", "p")));
    // Cut the packet short while keeping its header's length.
    let mut short = good.clone();
    short.truncate(good.len() - 3);
    let cut = Frame {
        len: short.len(),
        ..framed(&good)
    };
    assert!(matches!(
        parse_connect(&short, &cut),
        Err(PacketError::Truncated { .. })
    ));
    let mut level = connect(4, None, None);
    level[8] = 6;
    assert_eq!(
        parse_connect(&level, &framed(&level)),
        Err(PacketError::UnsupportedLevel(6))
    );
    let mut name = connect(4, None, None);
    name[4] = b'X';
    assert!(matches!(
        parse_connect(&name, &framed(&name)),
        Err(PacketError::Malformed { .. })
    ));
    let mut property = connect(5, None, None);
    property[13] = 0x7f; // the Topic Alias Maximum's identifier
    assert!(matches!(
        parse_connect(&property, &framed(&property)),
        Err(PacketError::Malformed { .. })
    ));
    let mut utf8 = connect(4, None, None);
    let at = utf8.len() - 1;
    utf8[at] = 0xff;
    assert!(matches!(
        parse_connect(&utf8, &framed(&utf8)),
        Err(PacketError::NotUtf8 { .. })
    ));
}

/// PUBLISH: QoS, packet id, topic and (MQTT 5) topic alias; QoS 3 and
/// packet id 0 are refused.
#[test]
fn publish_fields() {
    let mut body = Vec::new();
    string(&mut body, "a/b");
    body.extend_from_slice(&[0, 7]);
    // Properties: payload format indicator 1, topic alias 4.
    body.extend_from_slice(&[5, 0x01, 1, 0x23, 0, 4]);
    body.extend_from_slice(b"payload");
    let bytes = packet(0x32, &body);
    let parsed = parse_publish(&bytes, &framed(&bytes), Version::V5).expect("valid");
    assert_eq!(parsed.qos, 1);
    assert_eq!(parsed.packet_id, Some(7));
    assert_eq!(parsed.topic, "a/b");
    assert_eq!(parsed.topic_alias, Some(4));
    assert_eq!(&bytes[parsed.topic_range.clone()], b"\0\x03a/b");

    let mut v4 = Vec::new();
    string(&mut v4, "t");
    v4.extend_from_slice(b"x");
    let qos0 = packet(0x30, &v4);
    let parsed = parse_publish(&qos0, &framed(&qos0), Version::V311).expect("valid");
    assert_eq!((parsed.qos, parsed.packet_id, parsed.topic), (0, None, "t"));

    let qos3 = packet(0x36, &v4);
    assert!(parse_publish(&qos3, &framed(&qos3), Version::V311).is_err());
    let mut zero = Vec::new();
    string(&mut zero, "t");
    zero.extend_from_slice(&[0, 0]);
    let zero = packet(0x32, &zero);
    assert!(parse_publish(&zero, &framed(&zero), Version::V311).is_err());
}

/// A PUBLISH rewritten with a topic keeps everything else.
#[test]
fn publish_gets_its_topic_back() {
    let mut body = Vec::new();
    string(&mut body, "");
    body.extend_from_slice(&[0, 9, 3, 0x23, 0, 1]);
    body.extend_from_slice(b"data");
    let bytes = packet(0x33, &body);
    let frame = framed(&bytes);
    let parsed = parse_publish(&bytes, &frame, Version::V5).expect("valid");
    assert_eq!((parsed.topic, parsed.topic_alias), ("", Some(1)));
    let mut out = Vec::new();
    write_publish_with_topic(&mut out, &bytes, &frame, parsed.topic_range, "x/y");
    let again = parse_publish(&out, &framed(&out), Version::V5).expect("valid");
    assert_eq!(again.topic, "x/y");
    assert_eq!(again.topic_alias, Some(1));
    assert_eq!(again.packet_id, Some(9));
    assert!(out.ends_with(b"data"));
    assert_eq!(out[0], 0x33, "flags kept");
}

/// SUBSCRIBE and SUBACK parse, and a rewritten SUBSCRIBE and a built
/// SUBACK parse back to what was written.
#[test]
fn subscribe_round_trip() {
    for version in [Version::V311, Version::V5] {
        let properties: &[u8] = match version {
            Version::V5 => &[2, 0x0b, 5],
            Version::V311 => &[],
        };
        let filters = [("a/#", 1u8), ("$share/g/b/+", 0)];
        let mut bytes = Vec::new();
        write_subscribe(&mut bytes, 42, properties, filters.iter().copied());
        let parsed = parse_subscribe(&bytes, &framed(&bytes), version).expect("valid");
        assert_eq!(parsed.packet_id, 42);
        assert_eq!(parsed.properties, properties);
        assert_eq!(parsed.filters, filters);

        let mut ack = Vec::new();
        write_suback(&mut ack, version, 42, &[], &[0, 0x80]);
        let parsed = parse_suback(&ack, &framed(&ack), version).expect("valid");
        assert_eq!(parsed.packet_id, 42);
        assert_eq!(parsed.codes, &[0, 0x80]);
    }
    let empty = packet(0x82, &[0, 1]);
    assert!(parse_subscribe(&empty, &framed(&empty), Version::V311).is_err());
    let no_options = packet(0x82, &[0, 1, 0, 1, b'a']);
    assert!(matches!(
        parse_subscribe(&no_options, &framed(&no_options), Version::V311),
        Err(PacketError::Truncated { .. })
    ));
}

/// An UNSUBSCRIBE names its filters, after the MQTT 5 properties; one
/// without a filter is refused.
#[test]
fn unsubscribe_filters() {
    let mut v311 = vec![0, 7];
    string(&mut v311, "a/#");
    string(&mut v311, "b");
    let bytes = packet(0xa2, &v311);
    let parsed = parse_unsubscribe(&bytes, &framed(&bytes), Version::V311).expect("valid");
    assert_eq!(parsed, ["a/#", "b"]);
    let mut v5 = vec![0, 7, 0];
    string(&mut v5, "a/#");
    let bytes = packet(0xa2, &v5);
    let parsed = parse_unsubscribe(&bytes, &framed(&bytes), Version::V5).expect("valid");
    assert_eq!(parsed, ["a/#"]);
    let empty = packet(0xa2, &[0, 7]);
    assert!(parse_unsubscribe(&empty, &framed(&empty), Version::V311).is_err());
}

/// The gate's own answers have the layouts MQTT prescribes.
#[test]
fn answers() {
    assert_eq!(connack_refusal(Version::V311, 5), [0x20, 2, 0, 5]);
    assert_eq!(connack_refusal(Version::V5, 0x87), [0x20, 3, 0, 0x87, 0]);
    let mut out = Vec::new();
    ack(&mut out, kind::PUBACK, Version::V311, 0x0102, 0x87);
    ack(&mut out, kind::PUBREC, Version::V5, 0x0102, 0x87);
    ack(&mut out, kind::PUBCOMP, Version::V5, 3, 0);
    assert_eq!(
        out,
        [0x40, 2, 1, 2, 0x50, 3, 1, 2, 0x87, 0x70, 2, 0, 3],
        "3.1.1 has no reason code; MQTT 5 leaves out success"
    );
}

proptest! {
    /// Arbitrary bytes never panic the framer or any parser: each answers
    /// with a packet or a typed error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some(frame)) = frame(&bytes, 1 << 16) {
            for version in [Version::V311, Version::V5] {
                let _ = parse_connect(&bytes, &frame);
                let _ = parse_publish(&bytes, &frame, version);
                let _ = parse_subscribe(&bytes, &frame, version);
                let _ = parse_unsubscribe(&bytes, &frame, version);
                let _ = parse_suback(&bytes, &frame, version);
                let _ = packet_id(&bytes, &frame);
            }
        }
    }

    /// The same, for bodies behind a well-formed fixed header, which reach
    /// the field parsers far more often than random headers do.
    #[test]
    fn arbitrary_bodies_never_panic(
        first in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let bytes = packet(first, &body);
        let frame = framed(&bytes);
        for version in [Version::V311, Version::V5] {
            let _ = parse_connect(&bytes, &frame);
            let _ = parse_publish(&bytes, &frame, version);
            let _ = parse_subscribe(&bytes, &frame, version);
            let _ = parse_unsubscribe(&bytes, &frame, version);
            let _ = parse_suback(&bytes, &frame, version);
        }
    }
}
