//! What the broker sends a client, packet by packet: PUBLISHes on topics
//! the client may not read are withheld (and acknowledged to the broker by
//! the gate, in order, so its in-flight window does not fill; see
//! [`acks`](super::acks)), SUBACKs of reduced SUBSCRIBEs get their refused
//! codes back, and everything else passes.
//!
//! Why a per-message check: an allowed filter (`home/#`) can cover a topic
//! the rules deny (`home/secret/x`), and the broker, knowing nothing of
//! the rules, delivers it (live or retained).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::acks::{self, AckOrder, Entry, Phase};
use super::packet::{self, kind, Edit, Frame, Piece, Version};
use super::presence::Presence;
use super::upstream::SubackPlan;
use super::{SessionError, Shared};
use crate::auth::Principal;
use crate::broker::{name, stamp};
use crate::stats::Stats;

/// Reduced SUBSCRIBEs waiting for their SUBACK. The broker answers each
/// in turn, so only a client that floods SUBSCRIBEs reaches this; it is
/// then closed rather than remembered without bound.
const MAX_PENDING_SUBACKS: usize = 1_024;

/// What one read batch from the broker produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Bytes for the client, in the broker's order.
    pub to_client: Vec<u8>,
    /// What each QoS 1 and 2 PUBLISH (and PUBREL) will be answered by, in
    /// order, for the acknowledgements the broker is sent.
    pub acks: Vec<Entry>,
}

impl Batch {
    pub fn clear(&mut self) {
        super::pump::reset(&mut self.to_client);
        self.acks.clear();
    }
}

/// The broker-to-client half of one connection.
#[derive(Debug)]
pub struct Downstream {
    shared: Arc<Shared>,
    version: Version,
    principal: Principal,
    pending: HashMap<u16, SubackPlan>,
    /// QoS 2 messages the gate withheld and answered with PUBREC: the
    /// broker's PUBREL for them is answered here.
    withheld_qos2: HashSet<u16>,
    connack_seen: bool,
    /// PINGRESPs owed to the gate's own PINGREQs (keep-alive 0), kept from
    /// the client.
    gate_pings: u32,
    /// The acknowledgements the client is sent: the broker's, and the
    /// gate's for publishes it refused.
    order: AckOrder,
    /// Told when the broker accepts the CONNECT, for its device event.
    presence: Option<Arc<Presence>>,
    /// MQTT 5: the largest packet the client accepts, if it set a limit.
    client_max_packet: Option<usize>,
    /// This connection's id in `DeviceFilters`.
    connection: u64,
}

impl Downstream {
    pub fn new(shared: Arc<Shared>, version: Version, principal: Principal) -> Self {
        Self {
            shared,
            version,
            principal,
            pending: HashMap::new(),
            withheld_qos2: HashSet::new(),
            connack_seen: false,
            gate_pings: 0,
            order: AckOrder::new(version),
            presence: None,
            client_max_packet: None,
            connection: u64::MAX,
        }
    }

    /// The connection's id in the bridge's `DeviceFilters`, where its
    /// filters are.
    pub fn with_connection(mut self, connection: u64) -> Self {
        self.connection = connection;
        self
    }

    /// MQTT's `$` rule for the bridge's own topics: the broker is given
    /// `$tidewater/…` in a form its wildcards match (see `broker::name`),
    /// so a client gets such a message only through a filter that names
    /// `$tidewater` itself, never through `#` or `+/…`.
    fn dollar_rule(&self, topic: &str) -> bool {
        if !crate::topic::is_reserved(topic) {
            return true;
        }
        self.shared
            .device_filters
            .reserved_match(self.connection, topic)
    }

    /// Sends the client no packet larger than `max` bytes.
    pub fn with_max_packet(mut self, max: Option<u32>) -> Self {
        self.client_max_packet = max.map(|m| m as usize);
        self
    }

    /// Tells `presence` when the broker accepts the CONNECT.
    pub fn with_presence(mut self, presence: Arc<Presence>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Records what a publish of the client will be answered by (from the
    /// other pump); the gate's answers that are due go to `out`.
    pub fn owe(&mut self, entry: Entry, out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.order.push(entry, out)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether the broker has answered the CONNECT.
    pub fn connack_seen(&self) -> bool {
        self.connack_seen
    }

    /// Counts PINGREQs the gate sent the broker itself.
    pub fn expect_gate_pings(&mut self, pings: u32) {
        self.gate_pings = self.gate_pings.saturating_add(pings);
    }

    /// Remembers a reduced SUBSCRIBE until its SUBACK.
    pub fn expect_suback(&mut self, id: u16, plan: SubackPlan) -> Result<(), SessionError> {
        if self.pending.len() >= MAX_PENDING_SUBACKS && !self.pending.contains_key(&id) {
            return Err(SessionError::Protocol(
                "too many SUBSCRIBEs waiting for their SUBACK",
            ));
        }
        self.pending.insert(id, plan);
        Ok(())
    }

    /// Handles one complete packet from the broker.
    pub fn packet(
        &mut self,
        bytes: &[u8],
        frame: Frame,
        batch: &mut Batch,
    ) -> Result<(), SessionError> {
        let whole = &bytes[..frame.len];
        match frame.kind() {
            kind::CONNACK => {
                self.connack_seen = true;
                // Flags, then the return (or reason) code: 0 is success.
                if whole.get(3) == Some(&0) {
                    if let Some(presence) = &self.presence {
                        presence.connected();
                    }
                }
                batch.to_client.extend_from_slice(whole);
            }
            kind::PUBLISH => {
                let publish = packet::parse_publish(bytes, &frame, self.version)?;
                // The real topic behind the broker's form of it.
                let topic = name::topic_out(publish.topic);
                // The gate set the client's Topic Alias Maximum to 0, so
                // the broker names every topic; an empty one is unreadable.
                let readable = !topic.is_empty()
                    && self.shared.policy.may_read(&self.principal, topic)
                    && self.dollar_rule(topic);
                let phase = Phase::Receipt;
                if readable {
                    // The topic as it was published, and the payload
                    // without the bridge's stamp (see `broker::stamp`).
                    let at = publish.payload_at;
                    let read = stamp::read(&bytes[at..frame.len]);
                    let stamped =
                        matches!(read, stamp::Read::Stamped(_) | stamp::Read::Restored(_));
                    // rumqttd delivers at the subscription's QoS; MQTT says
                    // at most the publisher's. A message published at QoS 0
                    // goes to the client at QoS 0, and the gate acknowledges
                    // the broker's QoS 1 or 2 delivery itself.
                    let downgrade = matches!(read, stamp::Read::Stamped(m) | stamp::Read::Restored(m) if m.qos == 0)
                        && publish.qos > 0;
                    let mut edits: Vec<Edit<'_>> = Vec::new();
                    if topic.len() != publish.topic.len() {
                        edits.push((publish.topic_range.clone(), Piece::Field(topic.as_bytes())));
                    }
                    if downgrade {
                        // The packet id follows the topic.
                        let id_at = publish.topic_range.end;
                        edits.push((id_at..id_at + 2, Piece::Raw(&[])));
                    }
                    if stamped {
                        edits.push((at..at + stamp::LEN, Piece::Raw(&[])));
                    }
                    let start = batch.to_client.len();
                    if edits.is_empty() {
                        batch.to_client.extend_from_slice(whole);
                    } else {
                        // At QoS 0 the QoS bits and DUP are cleared.
                        let first = if downgrade {
                            frame.first & 0xf1
                        } else {
                            frame.first
                        };
                        packet::write_edited_as(&mut batch.to_client, first, bytes, &frame, &edits);
                    }
                    // MQTT 5: a packet larger than the client's Maximum
                    // Packet Size is not sent, but dealt with as if it had
                    // been (rumqttd 0.20 ignores the limit).
                    if self
                        .client_max_packet
                        .is_some_and(|max| batch.to_client.len() - start > max)
                    {
                        batch.to_client.truncate(start);
                        Stats::incr(&self.shared.stats.mqtt_deliveries_too_large);
                        if let Some(id) = publish.packet_id {
                            self.answer_for_client(publish.qos, id, batch);
                        }
                        return Ok(());
                    }
                    match publish.packet_id {
                        Some(id) if downgrade => self.answer_for_client(publish.qos, id, batch),
                        Some(id) => batch.acks.push(Entry::Peer { phase, id }),
                        None => {}
                    }
                    return Ok(());
                }
                let stats = &self.shared.stats;
                Stats::incr(&stats.deliveries_withheld);
                Stats::incr(&stats.mqtt_deliveries_withheld);
                tracing::trace!(principal = %self.principal, topic, "MQTT delivery withheld.");
                if let Some(id) = publish.packet_id {
                    self.answer_for_client(publish.qos, id, batch);
                }
            }
            kind::PUBREL => {
                let id = packet::packet_id(bytes, &frame)?;
                acks::pubrel(
                    id,
                    whole,
                    &mut self.withheld_qos2,
                    &mut batch.to_client,
                    &mut batch.acks,
                );
            }
            kind::PUBACK | kind::PUBREC | kind::PUBCOMP => {
                let id = packet::packet_id(bytes, &frame)?;
                self.order
                    .forward(frame.kind(), id, whole, &mut batch.to_client);
            }
            kind::SUBACK => {
                let suback = packet::parse_suback(bytes, &frame, self.version)?;
                match self.pending.remove(&suback.packet_id) {
                    None => batch.to_client.extend_from_slice(whole),
                    Some(plan) => {
                        let codes = merge(&plan, suback.codes)?;
                        packet::write_suback(
                            &mut batch.to_client,
                            self.version,
                            suback.packet_id,
                            suback.properties,
                            &codes,
                        );
                    }
                }
            }
            // PINGRESPs are all alike: the first ones answer the gate's.
            kind::PINGRESP if self.gate_pings > 0 => self.gate_pings -= 1,
            _ => batch.to_client.extend_from_slice(whole),
        }
        Ok(())
    }
}

impl Downstream {
    /// Acknowledges to the broker, in the client's place, a QoS 1 or 2
    /// delivery the client does not acknowledge itself (withheld, or sent
    /// to it at QoS 0); a QoS 2 one's PUBREL is then answered here too.
    fn answer_for_client(&mut self, qos: u8, id: u16, batch: &mut Batch) {
        let kind = if qos == 1 {
            kind::PUBACK
        } else {
            self.withheld_qos2.insert(id);
            kind::PUBREC
        };
        batch.acks.push(Entry::Gate {
            phase: Phase::Receipt,
            kind,
            id,
            reason: 0,
        });
    }
}

/// The codes for every filter the client asked for: the gate's failure
/// codes where it refused, the broker's in order elsewhere.
fn merge(plan: &[Option<u8>], broker: &[u8]) -> Result<Vec<u8>, SessionError> {
    let mut from_broker = broker.iter();
    let codes: Option<Vec<u8>> = plan
        .iter()
        .map(|code| code.or_else(|| from_broker.next().copied()))
        .collect();
    match codes {
        Some(codes) if from_broker.next().is_none() => Ok(codes),
        _ => Err(SessionError::Protocol(
            "the broker's SUBACK does not match the SUBSCRIBE",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downstream() -> Downstream {
        Downstream::new(Shared::for_tests(), Version::V311, Principal::Anonymous)
    }

    /// What the client is sent for `packet` from the broker.
    fn to_client(down: &mut Downstream, packet: &[u8]) -> Vec<u8> {
        let frame = packet::frame(packet, 1 << 20)
            .expect("valid")
            .expect("whole");
        let mut batch = Batch::default();
        down.packet(packet, frame, &mut batch).expect("handled");
        batch.to_client
    }

    /// The PINGRESPs that answer the gate's own PINGREQs (for a client
    /// with keep-alive 0) stay at the gate; the client's own get through.
    #[test]
    fn pingresps_for_the_gate_are_kept_from_the_client() {
        let mut down = downstream();
        down.expect_gate_pings(2);
        assert!(to_client(&mut down, &[0xd0, 0]).is_empty());
        assert!(to_client(&mut down, &[0xd0, 0]).is_empty());
        assert_eq!(to_client(&mut down, &[0xd0, 0]), [0xd0, 0]);
    }

    /// A delivery on a topic in the broker's escaped form reaches the
    /// client with the topic it was published on.
    #[test]
    fn escaped_topics_are_delivered_as_published() {
        let mut down = downstream();
        let internal = name::topic_in("温度/客厅");
        let mut publish = vec![0x30, (2 + internal.len() + 2) as u8];
        publish.extend_from_slice(&(internal.len() as u16).to_be_bytes());
        publish.extend_from_slice(internal.as_bytes());
        publish.extend_from_slice(b"21");
        let sent = to_client(&mut down, &publish);
        let frame = packet::frame(&sent, 1 << 20)
            .expect("valid")
            .expect("whole");
        let parsed = packet::parse_publish(&sent, &frame, Version::V311).expect("a PUBLISH");
        assert_eq!(parsed.topic, "温度/客厅");
        assert_eq!(&sent[frame.len - 2..frame.len], b"21");
    }

    /// Refused positions keep the gate's code; the broker's codes fill the
    /// rest in order; a count that does not match is an error.
    #[test]
    fn suback_codes_merge() {
        let plan = [None, Some(0x87), None, Some(0x80)];
        assert_eq!(merge(&plan, &[1, 2]).ok(), Some(vec![1, 0x87, 2, 0x80]));
        assert!(merge(&plan, &[1]).is_err());
        assert!(merge(&plan, &[1, 2, 3]).is_err());
    }
}
