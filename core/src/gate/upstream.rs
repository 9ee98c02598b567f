//! What a client sends, packet by packet, before it reaches the broker:
//! PUBLISH checked against the rules (and the publish rate), SUBSCRIBE
//! reduced to the filters the rules allow, the gate's own answers for what
//! it refused, and everything else forwarded as it came. Topics and
//! filters reach the broker in its own form ([`name`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::acks::{self, AckOrder, Entry, Phase};
use super::packet::{self, kind, Edit, Frame, Piece, Version};
use super::presence::Presence;
use super::{filters, SessionError, Shared};
use crate::auth::{Action, Principal};
use crate::broker::{name, stamp};
use crate::limits::TokenBucket;
use crate::stats::{Limit, Protocol, Stats};
use crate::topic;

/// The highest topic alias a client may use: the Topic Alias Maximum
/// rumqttd 0.20 announces in its CONNACK (and enforces).
const MAX_TOPIC_ALIAS: u16 = 4_096;

/// Bytes of topics a client may hold in its aliases; past this the
/// connection is closed. (4,096 aliases of 64 KiB topics would otherwise
/// be 256 MiB per connection.)
const MAX_ALIAS_BYTES: usize = 256 * 1024;

/// MQTT 5 reason codes the gate answers with.
pub const NOT_AUTHORIZED: u8 = 0x87;
const QUOTA_EXCEEDED: u8 = 0x97;
const TOPIC_FILTER_INVALID: u8 = 0x8f;
const TOPIC_NAME_INVALID: u8 = 0x90;
const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
const TOPIC_ALIAS_INVALID: u8 = 0x94;
const PROTOCOL_ERROR: u8 = 0x82;
/// DISCONNECT, normal, as both versions write it at its shortest.
const NORMAL_DISCONNECT: [u8; 2] = [0xe0, 0];
/// MQTT 3.1.1's one SUBACK failure code.
const V311_FAILURE: u8 = 0x80;

/// A SUBSCRIBE some of whose filters were refused: for each filter the
/// client asked for, in order, `None` where the broker's code goes and the
/// gate's failure code where it was refused.
pub type SubackPlan = Vec<Option<u8>>;

/// What one read batch from the client produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Bytes for the broker, in the client's order.
    pub to_broker: Vec<u8>,
    /// The gate's own SUBACKs, for the client.
    pub to_client: Vec<u8>,
    /// SUBACKs the broker will send that need the refused codes put back.
    pub subacks: Vec<(u16, SubackPlan)>,
    /// What each QoS 1 and 2 PUBLISH (and PUBREL) will be answered by, in
    /// order, for the acknowledgements the client is sent.
    pub acks: Vec<Entry>,
    /// The client sent DISCONNECT, or broke a limit that ends its
    /// connection: nothing after it counts, and the connection ends once
    /// this batch is forwarded.
    pub end: bool,
    /// Why the gate ends the connection, when it does.
    pub refusal: Option<&'static str>,
}

impl Batch {
    pub fn clear(&mut self) {
        super::pump::reset(&mut self.to_broker);
        super::pump::reset(&mut self.to_client);
        self.subacks.clear();
        self.end = false;
        self.refusal = None;
        self.acks.clear();
    }
}

/// A topic alias as the client set it.
#[derive(Debug)]
struct Alias {
    topic: String,
    /// Whether the broker holds this mapping too: false after the PUBLISH
    /// that set it was refused, so the next use must carry the topic.
    at_broker: bool,
}

/// The client-to-broker half of one connection.
#[derive(Debug)]
pub struct Upstream {
    shared: Arc<Shared>,
    version: Version,
    principal: Principal,
    aliases: HashMap<u16, Alias>,
    alias_bytes: usize,
    /// MQTT 3.1.1 QoS 2 publishes the gate refused with a PUBREC: their
    /// PUBREL is answered here, not forwarded.
    refused_qos2: HashSet<u16>,
    bucket: Option<TokenBucket>,
    /// The filters this client holds (as far as the gate let them through),
    /// for `mqtt.max_subscriptions`, also noted in the bridge's
    /// `DeviceFilters` under `connection`.
    subscribed: HashSet<String>,
    /// How many of `subscribed` stand for each filter in `DeviceFilters`
    /// (`$share/a/x` and `x` both stand for `x`): noted there on the first,
    /// removed on the last.
    held: HashMap<String, usize>,
    connection: u64,
    /// The acknowledgements the broker is sent: the client's, and the
    /// gate's for deliveries it withheld.
    order: AckOrder,
    /// How often the gate pings the broker itself; `None` but for a
    /// client with keep-alive 0.
    gate_pings: Option<std::time::Duration>,
    /// Where the client's DISCONNECT is noted, for its device event.
    presence: Option<Arc<Presence>>,
    /// Packet ids of QoS 2 publishes the broker has and the client has not
    /// released yet, at most `mqtt.max_inflight`.
    unreleased: HashSet<u16>,
}

/// The connection's filters leave the bridge's record with it.
impl Drop for Upstream {
    fn drop(&mut self) {
        for filter in self.held.keys() {
            self.shared.device_filters.remove(self.connection, filter);
        }
    }
}

impl Upstream {
    pub fn new(shared: Arc<Shared>, version: Version, principal: Principal) -> Self {
        let bucket = shared.publish_bucket(Instant::now());
        Self {
            connection: u64::MAX,
            shared,
            version,
            principal,
            aliases: HashMap::new(),
            alias_bytes: 0,
            refused_qos2: HashSet::new(),
            bucket,
            subscribed: HashSet::new(),
            held: HashMap::new(),
            order: AckOrder::new(version),
            gate_pings: None,
            presence: None,
            unreleased: HashSet::new(),
        }
    }

    /// Records this client's filters under `connection` in the bridge's
    /// `DeviceFilters`.
    pub fn with_connection(mut self, connection: u64) -> Self {
        self.connection = connection;
        self
    }

    /// Notes the client's DISCONNECT in `presence`.
    pub fn with_presence(mut self, presence: Arc<Presence>) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Has the gate ping the broker every `every` for this client (one
    /// that asked for keep-alive 0; see the session).
    pub fn with_gate_pings(mut self, every: Option<std::time::Duration>) -> Self {
        self.gate_pings = every;
        self
    }

    pub fn gate_pings(&self) -> Option<std::time::Duration> {
        self.gate_pings
    }

    /// Records what a delivery to the client will be answered by (from
    /// the other pump); the gate's answers that are due go to `out`.
    pub fn owe(&mut self, entry: Entry, out: &mut Vec<u8>) -> Result<(), SessionError> {
        self.order.push(entry, out)
    }

    fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Handles one complete packet from the client.
    pub fn packet(
        &mut self,
        bytes: &[u8],
        frame: Frame,
        batch: &mut Batch,
    ) -> Result<(), SessionError> {
        match frame.kind() {
            kind::PUBLISH => self.publish(bytes, frame, batch),
            kind::SUBSCRIBE => self.subscribe(bytes, frame, batch),
            kind::UNSUBSCRIBE => {
                let filters = packet::unsubscribe_filters(bytes, &frame, self.version)?;
                let mut escaped = Vec::new();
                for (filter, range) in filters {
                    if self.subscribed.remove(filter) {
                        self.release(filter);
                    }
                    if let Cow::Owned(internal) = name::filter_in(filter) {
                        if internal.len() > topic::MAX_TOPIC_BYTES {
                            return Err(SessionError::Protocol("a topic filter too long"));
                        }
                        escaped.push((range, internal));
                    }
                }
                if escaped.is_empty() {
                    batch.to_broker.extend_from_slice(&bytes[..frame.len]);
                } else {
                    let strings: Vec<_> = escaped
                        .iter()
                        .map(|(r, s)| (r.clone(), s.as_str()))
                        .collect();
                    packet::write_with_strings(&mut batch.to_broker, bytes, &frame, &strings);
                }
                Ok(())
            }
            kind::PUBREL => {
                let id = packet::packet_id(bytes, &frame)?;
                self.unreleased.remove(&id);
                acks::pubrel(
                    id,
                    &bytes[..frame.len],
                    &mut self.refused_qos2,
                    &mut batch.to_broker,
                    &mut batch.acks,
                );
                Ok(())
            }
            kind::PUBACK | kind::PUBREC | kind::PUBCOMP => {
                let id = packet::packet_id(bytes, &frame)?;
                self.order
                    .forward(frame.kind(), id, &bytes[..frame.len], &mut batch.to_broker);
                Ok(())
            }
            kind::DISCONNECT => {
                // MQTT 5 reason code, when there is one (0, normal, if not).
                let reason = match self.version {
                    Version::V5 if frame.len > frame.header_len => bytes[frame.header_len],
                    _ => 0,
                };
                if let Some(presence) = &self.presence {
                    presence.client_disconnected(reason);
                }
                // rumqttd 0.20 drops the will on any DISCONNECT, but MQTT 5
                // keeps it for every reason but 0 (0x04 asks for it): such
                // a DISCONNECT stays here, and the broker, seeing the
                // connection close, publishes the will.
                //
                // A normal DISCONNECT goes on in its shortest form, which
                // both versions read alike: rumqttd 0.20's MQTT 5 reader
                // takes a reason code without a property length (valid
                // MQTT 5) for half a packet, never sees the DISCONNECT,
                // and publishes the will as for a lost connection.
                if reason == 0 {
                    batch.to_broker.extend_from_slice(&NORMAL_DISCONNECT);
                }
                batch.end = true;
                Ok(())
            }
            kind::CONNECT => Err(SessionError::Protocol("a second CONNECT")),
            // Only a server sends these (and rumqttd 0.20 has no enhanced
            // authentication): its MQTT 5 reader panics on some of them,
            // so they end the connection here instead.
            kind::CONNACK | kind::SUBACK | kind::UNSUBACK | kind::PINGRESP | kind::AUTH => {
                Err(SessionError::Protocol("a packet only a server sends"))
            }
            _ => {
                batch.to_broker.extend_from_slice(&bytes[..frame.len]);
                Ok(())
            }
        }
    }

    fn publish(
        &mut self,
        bytes: &[u8],
        frame: Frame,
        batch: &mut Batch,
    ) -> Result<(), SessionError> {
        let publish = packet::parse_publish(bytes, &frame, self.version)?;
        // Taken first, so the topic below can be borrowed (from the packet
        // or the alias table) rather than copied for every PUBLISH.
        let within_rate = self.take_token();
        // The topic this PUBLISH is about, and whether it must be written
        // out because the broker does not know the alias's topic.
        let version = self.version;
        let (topic, restore): (&str, bool) = match publish.topic_alias {
            None if publish.topic.is_empty() => {
                end(version, batch, PROTOCOL_ERROR, "a PUBLISH without a topic");
                return Ok(());
            }
            None => (publish.topic, false),
            Some(alias) if alias == 0 || alias > MAX_TOPIC_ALIAS => {
                end(
                    version,
                    batch,
                    TOPIC_ALIAS_INVALID,
                    "a topic alias out of range",
                );
                return Ok(());
            }
            Some(alias) if publish.topic.is_empty() => match self.aliases.get(&alias) {
                Some(known) => (known.topic.as_str(), !known.at_broker),
                None => {
                    end(version, batch, PROTOCOL_ERROR, "an unknown topic alias");
                    return Ok(());
                }
            },
            Some(alias) => {
                self.set_alias(alias, publish.topic)?;
                (publish.topic, false)
            }
        };
        if topic::validate_topic(topic).is_err() {
            return Err(SessionError::Protocol("an invalid topic name"));
        }
        // The broker's form of the topic; written out when it differs and
        // the packet names a topic (an alias the broker knows stands for
        // the internal form it was set with).
        let internal = name::topic_in(topic);
        if internal.len() > topic::MAX_TOPIC_BYTES {
            return Err(SessionError::Protocol("a topic name too long"));
        }
        let restore = restore || (!publish.topic.is_empty() && matches!(internal, Cow::Owned(_)));
        let refusal = if !within_rate {
            self.shared.stats.limit(Protocol::Mqtt, Limit::Rate);
            Some(QUOTA_EXCEEDED)
        } else if let Err(e) = self.shared.topics.topic(topic) {
            if let Some(limit) = Limit::of_topic(&e) {
                self.shared.stats.limit(Protocol::Mqtt, limit);
            }
            Some(TOPIC_NAME_INVALID)
        } else if topic::is_reserved(topic) {
            self.stats().deny(Protocol::Mqtt, Action::Publish);
            Stats::incr(&self.stats().mqtt_publishes_denied);
            tracing::debug!(principal = %self.principal, "MQTT PUBLISH refused: $tidewater/ is the bridge's own.");
            Some(NOT_AUTHORIZED)
        } else if let Err(denied) =
            self.shared
                .policy
                .authorize(&self.principal, Action::Publish, topic)
        {
            self.stats().deny(Protocol::Mqtt, Action::Publish);
            Stats::incr(&self.stats().mqtt_publishes_denied);
            tracing::debug!(principal = %self.principal, reason = %denied, "MQTT PUBLISH refused.");
            Some(NOT_AUTHORIZED)
        } else if !self.shared.log.accepting() {
            self.shared.stats.limit(Protocol::Mqtt, Limit::Storage);
            tracing::debug!(principal = %self.principal, "MQTT PUBLISH refused: the log cannot store it now.");
            Some(QUOTA_EXCEEDED)
        } else if !self.shared.census.admit_topic(&internal) {
            self.shared.stats.limit(Protocol::Mqtt, Limit::Topics);
            tracing::debug!(principal = %self.principal, "MQTT PUBLISH refused: mqtt.max_topics distinct topics reached.");
            Some(QUOTA_EXCEEDED)
        } else {
            None
        };
        // rumqttd holds a QoS 2 publish until its PUBREL, without a bound:
        // past `mqtt.max_inflight` unreleased ones (the receive maximum),
        // the connection ends (MQTT 5: DISCONNECT 0x93), counted.
        if let (None, 2, Some(id)) = (refusal, publish.qos, publish.packet_id) {
            if self.unreleased.insert(id) && self.unreleased.len() > self.shared.max_inflight {
                self.stats().limit(Protocol::Mqtt, Limit::Inflight);
                end(
                    self.version,
                    batch,
                    RECEIVE_MAXIMUM_EXCEEDED,
                    "more unreleased QoS 2 publishes than mqtt.max_inflight",
                );
                return Ok(());
            }
        }
        let Some(reason) = refusal else {
            // The broker's form of the topic where it differs, and the
            // stamp with the publish's QoS and retain flag before its
            // payload (see `broker::stamp`).
            let meta = stamp::Meta {
                qos: publish.qos,
                retain: publish.retain,
            };
            let stamp = stamp::byte(meta, frame.len - publish.payload_at);
            let stamp = stamp.as_ref().map(std::slice::from_ref);
            let at = publish.payload_at;
            // rumqttd 0.20 hands a publish's MQTT 5 properties on to every
            // subscriber, and its 3.1.1 writer panics on them
            // (`unreachable!`), killing the 3.1.1 listener for every
            // device: the broker is given the topic alias only (its own
            // business with this connection), and the other properties
            // (content type, response topic, correlation data, user
            // properties, expiry) do not pass the gate.
            let block = match publish.topic_alias {
                // Length 3: the Topic Alias property (0x23) and its value.
                Some(alias) => {
                    let [hi, lo] = alias.to_be_bytes();
                    [3, 0x23, hi, lo]
                }
                None => [0; 4],
            };
            let alias_only = &block[..if publish.topic_alias.is_some() { 4 } else { 1 }];
            let strip = self.version == Version::V5
                && &bytes[publish.properties_range.clone()] != alias_only;
            if strip {
                Stats::incr(&self.stats().mqtt_properties_dropped);
            }
            let mut edits: Vec<Edit<'_>> = Vec::with_capacity(3);
            if restore {
                edits.push((publish.topic_range, Piece::Field(internal.as_bytes())));
            }
            if strip {
                edits.push((publish.properties_range, Piece::Raw(alias_only)));
            }
            if let Some(stamp) = stamp {
                edits.push((at..at, Piece::Raw(stamp)));
            }
            if edits.is_empty() {
                batch.to_broker.extend_from_slice(&bytes[..frame.len]);
            } else {
                packet::write_edited(&mut batch.to_broker, bytes, &frame, &edits);
            }
            if let Some(alias) = publish.topic_alias.and_then(|a| self.aliases.get_mut(&a)) {
                alias.at_broker = true;
            }
            if let Some(id) = publish.packet_id {
                batch.acks.push(Entry::Peer {
                    phase: Phase::Receipt,
                    id,
                });
            }
            return Ok(());
        };
        // A refused PUBLISH that set an alias left it marked as unknown to
        // the broker (see `set_alias`).
        if let Some(id) = publish.packet_id {
            let kind = if publish.qos == 1 {
                kind::PUBACK
            } else {
                // MQTT 5: a PUBREC reason of 0x80 or more ends the flow.
                // 3.1.1 has no such codes: the client goes on with PUBREL,
                // which the gate answers.
                if self.version == Version::V311 {
                    self.refused_qos2.insert(id);
                }
                kind::PUBREC
            };
            let phase = Phase::Receipt;
            batch.acks.push(Entry::Gate {
                phase,
                kind,
                id,
                reason,
            });
        }
        Ok(())
    }

    fn set_alias(&mut self, alias: u16, topic: &str) -> Result<(), SessionError> {
        let old = self.aliases.get(&alias).map_or(0, |a| a.topic.len());
        let bytes = self.alias_bytes - old + topic.len();
        if bytes > MAX_ALIAS_BYTES {
            return Err(SessionError::Protocol("too many bytes of topic aliases"));
        }
        self.alias_bytes = bytes;
        self.aliases.insert(
            alias,
            Alias {
                topic: topic.to_owned(),
                at_broker: false,
            },
        );
        Ok(())
    }

    /// Whether the publish rate allows one more publish.
    fn take_token(&mut self) -> bool {
        self.bucket
            .as_mut()
            .is_none_or(|bucket| bucket.take(Instant::now()).is_ok())
    }

    fn subscribe(
        &mut self,
        bytes: &[u8],
        frame: Frame,
        batch: &mut Batch,
    ) -> Result<(), SessionError> {
        let subscribe = packet::parse_subscribe(bytes, &frame, self.version)?;
        let plan: SubackPlan = subscribe
            .filters
            .iter()
            .map(|(filter, _)| {
                self.check_filter(filter)
                    .or_else(|| self.count_filter(filter))
                    .or_else(|| self.take_subscription(filter))
            })
            .collect();
        let refused = plan.iter().filter(|code| code.is_some()).count();
        let internal: Vec<(Cow<'_, str>, u8)> = subscribe
            .filters
            .iter()
            .map(|(filter, options)| (name::filter_in(filter), *options))
            .collect();
        if internal
            .iter()
            .any(|(f, _)| f.len() > topic::MAX_TOPIC_BYTES)
        {
            return Err(SessionError::Protocol("a topic filter too long"));
        }
        let escaped = internal.iter().any(|(f, _)| matches!(f, Cow::Owned(_)));
        if refused == 0 && !escaped {
            batch.to_broker.extend_from_slice(&bytes[..frame.len]);
            return Ok(());
        }
        if refused == 0 {
            let all = internal.iter().map(|(f, o)| (f.as_ref(), *o));
            packet::write_subscribe(
                &mut batch.to_broker,
                subscribe.packet_id,
                subscribe.properties,
                all,
            );
            return Ok(());
        }
        Stats::add(&self.stats().mqtt_subscriptions_denied, refused as u64);
        let id = subscribe.packet_id;
        if refused == plan.len() {
            let codes: Vec<u8> = plan.iter().flatten().copied().collect();
            packet::write_suback(&mut batch.to_client, self.version, id, &[], &codes);
            return Ok(());
        }
        let allowed = internal
            .iter()
            .zip(&plan)
            .filter(|(_, code)| code.is_none())
            .map(|((filter, options), _)| (filter.as_ref(), *options));
        packet::write_subscribe(&mut batch.to_broker, id, subscribe.properties, allowed);
        batch.subacks.push((id, plan));
        Ok(())
    }

    /// Records `filter` as held; `Some` failure code (counted) if that
    /// would exceed `mqtt.max_subscriptions`. A filter already held is
    /// replaced, not added.
    fn take_subscription(&mut self, filter: &str) -> Option<u8> {
        if self.subscribed.contains(filter) {
            return None;
        }
        if self.subscribed.len() >= self.shared.max_subscriptions {
            self.stats().limit(Protocol::Mqtt, Limit::Subscriptions);
            tracing::debug!(principal = %self.principal, filter, "MQTT subscription refused: mqtt.max_subscriptions reached.");
            return Some(match self.version {
                Version::V311 => V311_FAILURE,
                Version::V5 => QUOTA_EXCEEDED,
            });
        }
        self.subscribed.insert(filter.to_owned());
        let noted = filters::shared_filter(filter);
        let count = self.held.entry(noted.to_owned()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.shared.device_filters.add(self.connection, noted);
        }
        None
    }

    /// One filter of `subscribed` less, in `DeviceFilters` too once none
    /// stands for it.
    fn release(&mut self, filter: &str) {
        let noted = filters::shared_filter(filter);
        if let Some(count) = self.held.get_mut(noted) {
            *count -= 1;
            if *count == 0 {
                self.held.remove(noted);
                self.shared.device_filters.remove(self.connection, noted);
            }
        }
    }

    /// `None` if the broker may be given `filter` (see `broker::census`),
    /// else the failure code to answer (counted).
    fn count_filter(&self, filter: &str) -> Option<u8> {
        if self.shared.census.admit_filter(&name::filter_in(filter)) {
            return None;
        }
        self.stats().limit(Protocol::Mqtt, Limit::Filters);
        tracing::debug!(principal = %self.principal, "MQTT subscription refused: mqtt.max_filters distinct filters reached.");
        Some(match self.version {
            Version::V311 => V311_FAILURE,
            Version::V5 => QUOTA_EXCEEDED,
        })
    }

    /// `None` if the rules allow `filter`, else the failure code to answer.
    fn check_filter(&self, filter: &str) -> Option<u8> {
        let failure = |v5_code| match self.version {
            Version::V311 => V311_FAILURE,
            Version::V5 => v5_code,
        };
        if filter.len() > self.shared.topics.max_bytes {
            self.stats().limit(Protocol::Mqtt, Limit::TopicLength);
            return Some(failure(TOPIC_FILTER_INVALID));
        }
        // A shared subscription is checked as the filter it shares.
        let checked = match filter.strip_prefix("$share/") {
            Some(shared) => match shared.split_once('/') {
                Some((group, rest)) if !group.is_empty() && !group.contains(['+', '#']) => rest,
                _ => return Some(failure(TOPIC_FILTER_INVALID)),
            },
            None => filter,
        };
        if let Err(e) = self.shared.topics.filter(checked) {
            if let Some(limit) = Limit::of_topic(&e) {
                self.stats().limit(Protocol::Mqtt, limit);
            }
            return Some(failure(TOPIC_FILTER_INVALID));
        }
        match self
            .shared
            .policy
            .authorize(&self.principal, Action::Subscribe, checked)
        {
            Ok(_) => None,
            Err(denied) => {
                self.stats().deny(Protocol::Mqtt, Action::Subscribe);
                tracing::debug!(principal = %self.principal, reason = %denied, "MQTT subscription refused.");
                Some(failure(NOT_AUTHORIZED))
            }
        }
    }
}

/// Ends the connection once `batch` is forwarded, for `reason`: an MQTT 5
/// client is told with a DISCONNECT carrying `code`; MQTT 3.1.1 has no way
/// to say why.
fn end(version: Version, batch: &mut Batch, code: u8, reason: &'static str) {
    if version == Version::V5 {
        batch.to_client.extend_from_slice(&[0xe0, 1, code]);
    }
    batch.refusal = Some(reason);
    batch.end = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(version: Version) -> Upstream {
        Upstream::new(Shared::for_tests(), version, Principal::Anonymous)
    }

    fn publish(topic: &str, alias: u16) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&[3, 0x23]);
        body.extend_from_slice(&alias.to_be_bytes());
        body.extend_from_slice(b"payload");
        let mut packet = vec![0x30, body.len() as u8];
        packet.extend(body);
        packet
    }

    fn send(up: &mut Upstream, packet: &[u8]) -> Result<Batch, SessionError> {
        let frame = packet::frame(packet, 1 << 16)?.expect("whole packet");
        let mut batch = Batch::default();
        up.packet(packet, frame, &mut batch)?;
        Ok(batch)
    }

    /// Packets only a server sends end the connection at the gate in both
    /// versions, before they reach rumqttd (whose MQTT 5 reader panics on
    /// a CONNACK or UNSUBACK from a client).
    #[test]
    fn server_packets_from_a_client_are_refused() {
        for version in [Version::V311, Version::V5] {
            for packet in [
                &[0x20, 2, 0, 0][..],
                &[0x90, 3, 0, 1, 0],
                &[0xb0, 2, 0, 1],
                &[0xd0, 0],
                &[0xf0, 0],
            ] {
                let mut up = upstream(version);
                assert!(
                    matches!(send(&mut up, packet), Err(SessionError::Protocol(_))),
                    "{version:?} {packet:?}"
                );
            }
            let mut up = upstream(version);
            assert!(send(&mut up, &[0xc0, 0]).is_ok(), "PINGREQ goes on");
        }
    }

    /// An alias the broker never learned (its PUBLISH was dropped) is
    /// written out in full the next time an allowed PUBLISH uses it, which
    /// also teaches it to the broker; after that, the alias alone goes.
    #[test]
    fn aliases_unknown_to_the_broker_are_written_out() {
        let mut up = upstream(Version::V5);
        up.set_alias(1, "a/b").expect("alias");
        let batch = send(&mut up, &publish("", 1)).expect("allowed");
        let restored = packet::frame(&batch.to_broker, 1 << 16)
            .expect("valid")
            .expect("whole");
        let parsed =
            packet::parse_publish(&batch.to_broker, &restored, Version::V5).expect("PUBLISH");
        assert_eq!((parsed.topic, parsed.topic_alias), ("a/b", Some(1)));
        let again = send(&mut up, &publish("", 1)).expect("allowed");
        let mut stamped = publish("", 1);
        stamped[1] += 1;
        stamped.insert(stamped.len() - b"payload".len(), 0xa0);
        assert_eq!(
            again.to_broker, stamped,
            "the alias alone, the payload stamped"
        );
    }

    /// Aliases out of range, unknown, or a PUBLISH without topic or alias
    /// end the connection, MQTT 5 clients told why (0x94, 0x82).
    #[test]
    fn bad_aliases_are_refused() {
        for (packet, code, what) in [
            (publish("", 7), PROTOCOL_ERROR, "unknown"),
            (publish("t", 0), TOPIC_ALIAS_INVALID, "zero"),
            (publish("t", 5_000), TOPIC_ALIAS_INVALID, "too high"),
        ] {
            let batch = send(&mut upstream(Version::V5), &packet).expect("handled");
            assert!(
                batch.end && batch.to_broker.is_empty(),
                "{what}: the connection ends"
            );
            assert_eq!(
                batch.to_client,
                [0xe0, 1, code],
                "{what}: DISCONNECT with its reason"
            );
        }
        let batch = send(&mut upstream(Version::V311), &[0x30, 2, 0, 0]).expect("handled");
        assert!(
            batch.end && batch.to_client.is_empty(),
            "no topic: closed, nothing to say"
        );
    }
}
