//! The order of acknowledgements on one side of a connection, when some
//! come from the peer and some from the gate.
//!
//! rumqttd 0.20 accepts acknowledgements only in the order it sent the
//! PUBLISHes (and PUBRELs) they answer: an early one closes the connection.
//! MQTT asks the same of every receiver of QoS 1 and 2 publishes. So when
//! the gate withholds a delivery (or refuses a publish) and acknowledges it
//! itself, that acknowledgement waits behind the ones the peer still owes
//! for earlier packets, and goes out right after them.
//!
//! Each pump keeps an [`AckOrder`] for the side it writes; the other pump,
//! which sees the PUBLISHes, tells it in order what each one will be
//! answered by ([`Entry`]), before the PUBLISH goes on, so the entry is
//! always there before the peer's acknowledgement.

use std::collections::{HashSet, VecDeque};

use super::packet::{self, kind, Version};
use super::SessionError;

/// Acknowledgements owed at once on one side; MQTT's packet ids bound a
/// well-behaved peer far below this.
const MAX_OWED: usize = 65_536;

/// Which acknowledgement of a QoS flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// PUBACK (QoS 1) or PUBREC (QoS 2), answering a PUBLISH.
    Receipt,
    /// PUBCOMP, answering a PUBREL.
    Completion,
}

/// What one PUBLISH or PUBREL will be answered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The peer answers: it was forwarded.
    Peer { phase: Phase, id: u16 },
    /// The gate answers with a packet of `kind` (PUBACK, PUBREC, PUBCOMP)
    /// and an MQTT 5 `reason`.
    Gate {
        phase: Phase,
        kind: u8,
        id: u16,
        reason: u8,
    },
}

/// A PUBREL passing through, in either direction: if its QoS 2 flow is one
/// the gate took over (`gate_flows`: a publish it refused, a delivery it
/// withheld), the gate answers it with a PUBCOMP of its own; otherwise it
/// is forwarded to `out` and the peer's PUBCOMP is owed. Either way what
/// answers it goes to `owed`, in order.
pub fn pubrel(
    id: u16,
    whole: &[u8],
    gate_flows: &mut HashSet<u16>,
    out: &mut Vec<u8>,
    owed: &mut Vec<Entry>,
) {
    let phase = Phase::Completion;
    if gate_flows.remove(&id) {
        owed.push(Entry::Gate {
            phase,
            kind: kind::PUBCOMP,
            id,
            reason: 0,
        });
    } else {
        out.extend_from_slice(whole);
        owed.push(Entry::Peer { phase, id });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    Peer(u16),
    Gate { kind: u8, id: u16, reason: u8 },
}

/// The acknowledgements owed on one side, in the order they must go.
#[derive(Debug)]
pub struct AckOrder {
    version: Version,
    receipts: VecDeque<Owed>,
    completions: VecDeque<Owed>,
}

impl AckOrder {
    pub fn new(version: Version) -> Self {
        Self {
            version,
            receipts: VecDeque::new(),
            completions: VecDeque::new(),
        }
    }

    fn queue(&mut self, phase: Phase) -> &mut VecDeque<Owed> {
        match phase {
            Phase::Receipt => &mut self.receipts,
            Phase::Completion => &mut self.completions,
        }
    }

    /// Records what the next PUBLISH or PUBREL will be answered by; the
    /// gate's own answers that are due are written to `out`.
    pub fn push(&mut self, entry: Entry, out: &mut Vec<u8>) -> Result<(), SessionError> {
        let (phase, owed) = match entry {
            Entry::Peer { phase, id } => (phase, Owed::Peer(id)),
            Entry::Gate {
                phase,
                kind,
                id,
                reason,
            } => (phase, Owed::Gate { kind, id, reason }),
        };
        let queue = self.queue(phase);
        if queue.len() >= MAX_OWED {
            return Err(SessionError::Protocol("too many unacknowledged packets"));
        }
        queue.push_back(owed);
        self.flush(phase, out);
        Ok(())
    }

    /// The peer's acknowledgement of `id` has just been written to `out`:
    /// the gate's answers queued behind it follow. An acknowledgement the
    /// order does not expect is left for the receiver to judge.
    pub fn acked(&mut self, phase: Phase, id: u16, out: &mut Vec<u8>) {
        let queue = self.queue(phase);
        if let Some(at) = queue.iter().position(|owed| *owed == Owed::Peer(id)) {
            queue.remove(at);
        }
        self.flush(phase, out);
    }

    /// A PUBACK, PUBREC or PUBCOMP (`kind`) passing through: forwarded to
    /// `out` whole, then the gate's answers it unblocks.
    pub fn forward(&mut self, kind: u8, id: u16, whole: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(whole);
        let phase = if kind == kind::PUBCOMP {
            Phase::Completion
        } else {
            Phase::Receipt
        };
        self.acked(phase, id, out);
    }

    /// Writes the gate's answers at the front of `phase`'s queue.
    fn flush(&mut self, phase: Phase, out: &mut Vec<u8>) {
        let version = self.version;
        let queue = self.queue(phase);
        while let Some(Owed::Gate { kind, id, reason }) = queue.front().copied() {
            packet::ack(out, kind, version, id, reason);
            queue.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::packet::kind;

    fn gate(id: u16) -> Entry {
        Entry::Gate {
            phase: Phase::Receipt,
            kind: kind::PUBACK,
            id,
            reason: 0,
        }
    }

    fn peer(id: u16) -> Entry {
        Entry::Peer {
            phase: Phase::Receipt,
            id,
        }
    }

    /// The gate's acknowledgements wait for the peer's earlier ones and
    /// follow them at once; with nothing owed before them they go at once.
    #[test]
    fn gate_acknowledgements_keep_the_order() {
        let mut order = AckOrder::new(Version::V311);
        let mut out = Vec::new();
        order.push(gate(1), &mut out).expect("push");
        assert_eq!(out, [0x40, 2, 0, 1], "nothing owed before it");
        out.clear();
        order.push(peer(2), &mut out).expect("push");
        order.push(gate(3), &mut out).expect("push");
        order.push(gate(4), &mut out).expect("push");
        order.push(peer(5), &mut out).expect("push");
        assert!(out.is_empty(), "3 and 4 wait for 2");
        out.extend_from_slice(&[0x40, 2, 0, 2]); // the peer's PUBACK for 2
        order.acked(Phase::Receipt, 2, &mut out);
        assert_eq!(out, [0x40, 2, 0, 2, 0x40, 2, 0, 3, 0x40, 2, 0, 4]);
        out.clear();
        order.acked(Phase::Receipt, 5, &mut out);
        assert!(out.is_empty());
        // Completions are a queue of their own.
        order
            .push(
                Entry::Gate {
                    phase: Phase::Completion,
                    kind: kind::PUBCOMP,
                    id: 6,
                    reason: 0,
                },
                &mut out,
            )
            .expect("push");
        assert_eq!(out, [0x70, 2, 0, 6]);
    }
}
