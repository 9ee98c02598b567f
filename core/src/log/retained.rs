//! Retained values as the log keeps them: per topic, the last retained
//! message; an empty retained payload deletes (MQTT's rule).

use std::collections::HashMap;

use super::{Entry, Record};

/// Applies one appended entry to the retained values; returns whether it
/// changed them (it was retained).
pub fn apply(retained: &mut HashMap<Box<str>, Record>, position: u64, entry: &Entry) -> bool {
    if !entry.retain {
        return false;
    }
    if entry.payload.is_empty() {
        retained.remove(&entry.topic);
    } else {
        retained.insert(entry.topic.clone(), to_record(position, entry));
    }
    true
}

pub fn to_record(position: u64, entry: &Entry) -> Record {
    Record {
        position,
        time_ms: entry.time_ms,
        qos: entry.qos,
        retain: entry.retain,
        topic: entry.topic.clone(),
        payload: entry.payload.clone(),
    }
}

/// Applies a record read back from the retained file.
pub fn apply_record(retained: &mut HashMap<Box<str>, Record>, record: Record) {
    if record.payload.is_empty() {
        retained.remove(&record.topic);
    } else {
        retained.insert(record.topic.clone(), record);
    }
}

/// The values set before `before` on topics `filter` accepts, oldest
/// first, at most `max`, and whether there were more.
pub fn before(
    retained: &HashMap<Box<str>, Record>,
    before: u64,
    filter: &mut dyn FnMut(&str) -> bool,
    max: usize,
) -> (Vec<Record>, bool) {
    let mut values: Vec<Record> = retained
        .values()
        .filter(|r| r.position < before && filter(&r.topic))
        .cloned()
        .collect();
    values.sort_unstable_by_key(|r| r.position);
    let truncated = values.len() > max;
    values.truncate(max);
    (values, truncated)
}
