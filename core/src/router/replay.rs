//! The replay ring: the most recent messages, kept so a client that
//! reconnects with its last event id gets exactly what it missed.
//!
//! Bounded twice, by message count and by bytes, so neither many small nor a
//! few huge messages can grow it without limit. Sequence numbers enter in
//! order without holes, which makes finding a resume point an index
//! computation instead of a search.

use std::collections::VecDeque;
use std::sync::Arc;

use super::message::Message;

#[derive(Debug)]
pub struct ReplayRing {
    messages: VecDeque<Arc<Message>>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
}

/// Where a resume request stands relative to the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Every message after the requested one is still here (possibly none):
    /// replay from this index of the ring.
    From(usize),
    /// Messages after the requested one have already left the ring.
    Lost,
}

impl ReplayRing {
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        }
    }

    /// Adds the newest message, evicting the oldest past either bound. The
    /// newest message always stays, even when it alone exceeds `max_bytes`,
    /// so a reconnect right after it still finds it.
    pub fn push(&mut self, message: Arc<Message>) {
        self.bytes += message.weight();
        self.messages.push_back(message);
        while self.messages.len() > self.max_messages
            || (self.bytes > self.max_bytes && self.messages.len() > 1)
        {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.weight();
            }
        }
    }

    /// Where to resume for a client whose last message had sequence
    /// `after_seq`, given that the next message will get `next_seq`.
    pub fn resume_point(&self, after_seq: u64, next_seq: u64) -> Resume {
        if after_seq >= next_seq {
            // An id this epoch never issued: claim nothing about it.
            return Resume::Lost;
        }
        let oldest = self.oldest_seq().unwrap_or(next_seq);
        if after_seq + 1 < oldest {
            return Resume::Lost;
        }
        Resume::From((after_seq + 1 - oldest) as usize)
    }

    /// Messages from ring index `from` on, oldest first.
    pub fn since(&self, from: usize) -> impl Iterator<Item = &Arc<Message>> {
        self.messages.range(from.min(self.messages.len())..)
    }

    pub fn oldest_seq(&self) -> Option<u64> {
        self.messages.front().and_then(|m| m.id).map(|id| id.seq)
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::message::EventId;
    use bytes::Bytes;

    fn message(seq: u64, payload_len: usize) -> Arc<Message> {
        Arc::new(Message::new(
            Some(EventId { epoch: 1, seq }),
            "t".into(),
            Bytes::from(vec![b'x'; payload_len]),
            false,
            "message".into(),
        ))
    }

    fn seqs(ring: &ReplayRing, from: usize) -> Vec<u64> {
        ring.since(from)
            .filter_map(|m| m.id)
            .map(|id| id.seq)
            .collect()
    }

    /// Past the message bound, the oldest message leaves first.
    #[test]
    fn count_bound_evicts_oldest() {
        let mut ring = ReplayRing::new(3, usize::MAX);
        for seq in 1..=5 {
            ring.push(message(seq, 1));
        }
        assert_eq!(seqs(&ring, 0), vec![3, 4, 5]);
    }

    /// Past the byte bound, old messages leave until the ring fits, but the
    /// newest stays even if it alone is too big.
    #[test]
    fn byte_bound_evicts_but_keeps_newest() {
        let weight = message(0, 100).weight();
        let mut ring = ReplayRing::new(100, weight * 2);
        for seq in 1..=4 {
            ring.push(message(seq, 100));
        }
        assert_eq!(seqs(&ring, 0), vec![3, 4]);
        assert!(ring.bytes() <= weight * 2);
        ring.push(message(5, 10_000));
        assert_eq!(seqs(&ring, 0), vec![5]);
    }

    /// Resuming after a message still in the ring replays exactly the later
    /// ones; after the newest, nothing; before the oldest, history is lost.
    #[test]
    fn resume_points() {
        let mut ring = ReplayRing::new(3, usize::MAX);
        for seq in 1..=5 {
            ring.push(message(seq, 1));
        }
        let next = 6;
        let from = |after| match ring.resume_point(after, next) {
            Resume::From(i) => Some(seqs(&ring, i)),
            Resume::Lost => None,
        };
        assert_eq!(from(2), Some(vec![3, 4, 5]));
        assert_eq!(from(4), Some(vec![5]));
        assert_eq!(from(5), Some(vec![]));
        assert_eq!(from(1), None, "message 2 was evicted");
        assert_eq!(from(6), None, "an id never issued");
    }

    /// An empty ring resumes from the newest id it has seen, and reports loss
    /// for anything older.
    #[test]
    fn empty_ring_resume() {
        let ring = ReplayRing::new(3, usize::MAX);
        assert_eq!(ring.resume_point(0, 1), Resume::From(0));
        assert_eq!(ring.resume_point(3, 10), Resume::Lost);
    }
}
