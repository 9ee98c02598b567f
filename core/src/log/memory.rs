//! The memory log (`[log] kind = "memory"`): positions and retained values
//! for as long as the process lives, and no records beyond the router's
//! ring. A restart begins a new epoch, so every earlier id is a gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{Entry, Log, LogError, Record, Resume};
use crate::router::EventId;

#[derive(Debug)]
pub struct MemoryLog {
    epoch: u64,
    next: AtomicU64,
    /// Topic → last retained value; bounded by the broker's topic census
    /// (`mqtt.max_topics`), as every retained topic is a broker topic.
    retained: Mutex<HashMap<Box<str>, Record>>,
}

impl MemoryLog {
    /// A new, empty log in `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next: AtomicU64::new(1),
            retained: Mutex::default(),
        }
    }
}

impl Log for MemoryLog {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    fn first(&self) -> u64 {
        self.next()
    }

    fn append(&self, entries: &[Entry]) -> Result<u64, LogError> {
        let first = self.next.fetch_add(entries.len() as u64, Ordering::AcqRel);
        let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        for (position, entry) in (first..).zip(entries) {
            super::retained::apply(&mut retained, position, entry);
        }
        Ok(first)
    }

    fn read(
        &self,
        _from: u64,
        to: u64,
        _max: usize,
        _filter: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Vec<Record>, u64), LogError> {
        Ok((Vec::new(), to))
    }

    fn position_near(&self, _time_ms: u64) -> u64 {
        self.next()
    }

    fn retained(&self) -> Vec<Record> {
        let retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        retained.values().cloned().collect()
    }

    fn retained_before(
        &self,
        before: u64,
        filter: &mut dyn FnMut(&str) -> bool,
        max: usize,
    ) -> (Vec<Record>, bool) {
        let retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        super::retained::before(&retained, before, filter, max)
    }

    fn resume_after(&self, id: EventId) -> Resume {
        if id.epoch == self.epoch && id.seq < self.next() {
            Resume::After(id.seq)
        } else {
            Resume::Gap
        }
    }

    fn sync(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn close(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn bytes(&self) -> u64 {
        0
    }

    fn status(&self) -> super::LogStatus {
        super::LogStatus {
            kind: "memory",
            state: "ok",
            epoch: format!("{:x}", self.epoch),
            first: self.first(),
            next: self.next(),
            retained: self.retained.lock().map_or(0, |r| r.len()),
            ..Default::default()
        }
    }

    fn accepting(&self) -> bool {
        true
    }
}
