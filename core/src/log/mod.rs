//! The log beneath the router: every message, whoever published it, is
//! appended here first, and the log gives it its position; the router's
//! ring is a cache in front of it.
//!
//! One small interface ([`Log`]) with the shape a shared log on another
//! engine needs too: append, read from a position with a filter, the
//! retained values, the epoch, the first and next position. Two kinds
//! here: [`disk::DiskLog`] (the default, segment files under `log.dir`)
//! and [`memory::MemoryLog`] (nothing kept across a restart).
//!
//! An id is `<epoch>-<position>`. Positions are never reused within an
//! epoch: whenever positions may have been lost (a log cut short by a power
//! cut, a new memory log), a new epoch begins, and [`Log::resume_after`]
//! tells which ids of earlier epochs still name the same messages.

pub mod check;
pub mod disk;
mod epochs;
pub mod memory;
pub mod record;
mod retained;
mod segment;

pub use record::Record;

use std::fmt;
use std::path::PathBuf;

use crate::router::EventId;

/// A message on its way into the log; the log adds its position.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time_ms: u64,
    pub qos: u8,
    pub retain: bool,
    pub topic: Box<str>,
    pub payload: bytes::Bytes,
}

/// What the log could not do, with where.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("log directory {0} is in use by another process (or another bridge in this one)")]
    Locked(PathBuf),
    #[error("the log is closed: the bridge is stopping")]
    Closed,
    #[error("log file {file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("log file {file} is damaged at byte {offset}: {what}")]
    Damaged {
        file: PathBuf,
        offset: u64,
        what: String,
    },
}

/// Where a client resuming after an id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Everything after this position is still in the log (or the ring):
    /// replay from the position after it.
    After(u64),
    /// What followed the id is gone (evicted, or lost with a cut-off
    /// tail), or the id was never this log's: a gap.
    Gap,
}

/// The log interface. `append` is called by the one thread that reads the
/// broker, in broker order; everything else may be called from anywhere.
/// Reads may block on storage: call them off the async workers.
pub trait Log: Send + Sync + fmt::Debug {
    /// The current epoch: the first half of every id issued now.
    fn epoch(&self) -> u64;

    /// The position the next append gets.
    fn next(&self) -> u64;

    /// The oldest position still held; `next()` when the log is empty.
    fn first(&self) -> u64;

    /// Appends `entries` in order and returns the position of the first
    /// (they get consecutive positions). Once this returns, a process
    /// crash loses none of them; what a power cut may lose is `fsync`'s
    /// business. On an error no position is given out.
    fn append(&self, entries: &[Entry]) -> Result<u64, LogError>;

    /// Up to `max` records from position `from` (inclusive) to `to`
    /// (exclusive) whose topic `filter` accepts, oldest first, and the
    /// position to go on from (`to` once done).
    fn read(
        &self,
        from: u64,
        to: u64,
        max: usize,
        filter: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Vec<Record>, u64), LogError>;

    /// A position at or before that of the first record taken at or after
    /// `time_ms` (`next()` if none), found without touching storage (from
    /// an in-memory index): where a reader of everything since `time_ms`
    /// starts, dropping the earlier records it meets.
    fn position_near(&self, time_ms: u64) -> u64;

    /// The retained values now: per topic, the last retained message that
    /// was not a deletion.
    fn retained(&self) -> Vec<Record>;

    /// The retained values set before position `before` on topics `filter`
    /// accepts, oldest first, at most `max` (and whether there were more).
    /// A value set at or after `before` is left out: whoever asks receives
    /// that message live.
    fn retained_before(
        &self,
        before: u64,
        filter: &mut dyn FnMut(&str) -> bool,
        max: usize,
    ) -> (Vec<Record>, bool);

    /// Whether a client whose last message had `id` can resume exactly.
    fn resume_after(&self, id: EventId) -> Resume;

    /// Makes everything appended durable now.
    fn sync(&self) -> Result<(), LogError>;

    /// Syncs and lets go of the storage (at shutdown): appends fail from
    /// now on, and another log may open the same directory.
    fn close(&self) -> Result<(), LogError>;

    /// Bytes the log holds on its storage.
    fn bytes(&self) -> u64;

    /// Where the log stands, for `/healthz` and `/metrics`.
    fn status(&self) -> LogStatus;

    /// Whether publishes should be taken now: `false` while storage is
    /// failing (a full disk), so entry points turn them away instead of
    /// accepting what cannot be kept. Tried again after a pause.
    fn accepting(&self) -> bool;
}

/// A log's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStatus {
    pub kind: &'static str,
    /// `ok`, or `failing` while appends fail (see `last_error`).
    pub state: &'static str,
    pub epoch: String,
    pub first: u64,
    pub next: u64,
    pub bytes: u64,
    pub segments: usize,
    pub retained: usize,
    /// Batches appended, and the time they took in all.
    pub appends: u64,
    pub append_micros: u64,
    pub fsyncs: u64,
    /// Segments removed by the age or byte bound.
    pub evictions: u64,
    pub last_error: Option<String>,
}

/// `[log] fsync`: when appended records are forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Before any subscriber sees a message: a power cut loses nothing the
    /// bridge has delivered.
    Always,
    /// Every `fsync_interval_ms`: a power cut loses at most that much.
    Interval,
    /// When the system writes its cache back: a power cut may lose
    /// seconds (the kernel's own flush interval).
    Never,
}

/// `[log] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Disk,
    Memory,
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub kind: Kind,
    /// Where a disk log keeps its files, relative to the working
    /// directory; created if missing.
    pub dir: PathBuf,
    /// Bytes of records one segment file holds before the next begins;
    /// eviction removes whole segments.
    pub segment_bytes: u64,
    /// Bytes of records kept; past it the oldest segments go (retained
    /// values are kept apart and never evicted).
    pub max_bytes: u64,
    /// Seconds a record is kept; 0 keeps records until `max_bytes`.
    pub max_age_secs: u64,
    pub fsync: Fsync,
    pub fsync_interval_ms: u64,
    /// Records read from the log for one page of a resume or a `since`
    /// replay; bounds what one reader holds in memory at once.
    pub read_page: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            kind: Kind::Disk,
            dir: PathBuf::from("data"),
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            max_age_secs: 24 * 60 * 60,
            fsync: Fsync::Interval,
            fsync_interval_ms: 1_000,
            read_page: 1_024,
        }
    }
}

/// Opens the log `config` describes.
pub fn open(config: &LogConfig) -> Result<std::sync::Arc<dyn Log>, LogError> {
    Ok(match config.kind {
        Kind::Memory => std::sync::Arc::new(memory::MemoryLog::new(crate::router::now_ms())),
        Kind::Disk => std::sync::Arc::new(disk::DiskLog::open(config)?),
    })
}
