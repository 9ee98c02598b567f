//! The disk log (`[log] kind = "disk"`, the default): segment files under
//! `log.dir`, the retained values in a file of their own, and the epochs.
//!
//! ```text
//! data/
//!   lock                      held while a bridge uses the directory
//!   epochs                    see `epochs`
//!   retained.seg              every retained set and delete, compacted at start
//!   segments/00000000000000000001.seg, ...
//! ```
//!
//! An append writes its records to the active segment with one `write`
//! before the router sees them, so a process crash (SIGKILL) loses nothing
//! a client was given; `fsync` decides what a power cut may lose. At start
//! the last segment is checked record by record: a tail cut short is cut
//! off and a new epoch begins at the first lost position, so no id ever
//! names two messages; damage anywhere else stops the start with the file
//! and offset.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::epochs::{self, Epoch};
use super::segment::{self, End, Reader, Segment};
use super::{Entry, Fsync, Log, LogConfig, LogError, Record, Resume};
use crate::router::EventId;

pub(super) const SEGMENTS: &str = "segments";
pub(super) const RETAINED: &str = "retained.seg";
pub(super) const LOCK: &str = "lock";

/// The retained file is rewritten with only the live values once it holds
/// this many times their bytes (plus a floor, so small files stay).
const RETAINED_COMPACT_FACTOR: u64 = 4;
const RETAINED_COMPACT_FLOOR: u64 = 1024 * 1024;

/// How often the age bound is checked.
const AGE_CHECK: Duration = Duration::from_secs(10);

/// How long after a failed append publishes are turned away before the
/// log tries again (a full disk may have room by then).
const FAILING_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct DiskLog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    epochs: Vec<Epoch>,
    segment_bytes: u64,
    max_bytes: u64,
    max_age_ms: u64,
    fsync: Fsync,
    next: AtomicU64,
    first: AtomicU64,
    bytes: AtomicU64,
    /// Written since the last fsync.
    dirty: AtomicBool,
    /// Set by `close`: no more appends, and the directory is let go.
    closed: AtomicBool,
    appends: AtomicU64,
    append_micros: AtomicU64,
    fsyncs: AtomicU64,
    evictions: AtomicU64,
    /// The last append's failure, and when: publishes are turned away for
    /// [`FAILING_PAUSE`] after it (see `Log::accepting`).
    failure: Mutex<Option<(String, std::time::Instant)>>,
    inner: Mutex<Inner>,
    /// Held for as long as the log is open: one bridge per directory.
    lock: File,
}

#[derive(Debug)]
struct Inner {
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    active: Arc<File>,
    /// Reused by every append: the batch's bytes, written at once.
    buf: Vec<u8>,
    retained: HashMap<Box<str>, Record>,
    retained_file: Arc<File>,
    retained_len: u64,
    retained_live: u64,
    retained_buf: Vec<u8>,
}

impl DiskLog {
    /// Opens (or creates) the log in `config.dir`, checking every file.
    pub fn open(config: &LogConfig) -> Result<Self, LogError> {
        let dir = config.dir.clone();
        let dir_error = |source| LogError::Dir {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir.join(SEGMENTS)).map_err(dir_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(dir_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LogError::Locked(dir)),
            Err(std::fs::TryLockError::Error(source)) => return Err(dir_error(source)),
        }

        let mut epochs = epochs::load(&dir)?;
        let (mut segments, lost) = open_segments(&dir.join(SEGMENTS))?;
        let next = segments.back().map_or(1, |s| s.next);
        // A new directory, a tail cut short, or segments gone: positions
        // from here on may differ from what clients saw, so a new epoch.
        let continues = epochs.last().is_some_and(|&(_, first)| first <= next) && !lost;
        if !continues {
            if lost {
                tracing::warn!(dir = %dir.display(), next, "The log's tail was cut short (a power cut?): a new epoch begins; clients that saw later messages are told of a gap.");
            }
            epochs::begin(&dir, &mut epochs, next)?;
        }
        if segments.is_empty() {
            segments.push_back(Segment::empty(&dir.join(SEGMENTS), next));
        }
        let active = open_append(&segments.back().expect("one segment").path)?;
        let (retained, retained_len, retained_live) = open_retained(&dir.join(RETAINED))?;
        let retained_file = open_append(&dir.join(RETAINED))?;
        epochs::sync_dir(&dir.join(SEGMENTS))?;

        let first = segments.front().map_or(next, |s| s.first);
        let bytes = segments.iter().map(|s| s.len).sum();
        let shared = Arc::new(Shared {
            dir,
            epochs,
            segment_bytes: config.segment_bytes.max(1),
            max_bytes: config.max_bytes,
            max_age_ms: config.max_age_secs.saturating_mul(1000),
            fsync: config.fsync,
            next: AtomicU64::new(next),
            first: AtomicU64::new(first),
            bytes: AtomicU64::new(bytes),
            dirty: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            appends: AtomicU64::new(0),
            append_micros: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            failure: Mutex::new(None),
            inner: Mutex::new(Inner {
                segments,
                active: Arc::new(active),
                buf: Vec::new(),
                retained,
                retained_file: Arc::new(retained_file),
                retained_len,
                retained_live,
                retained_buf: Vec::new(),
            }),
            lock,
        });
        {
            let mut inner = shared.lock();
            shared.evict(&mut inner, crate::router::now_ms());
            if retained_len > retained_live * RETAINED_COMPACT_FACTOR + RETAINED_COMPACT_FLOOR {
                shared.compact_retained(&mut inner)?;
            }
        }
        spawn_background(Arc::downgrade(&shared), config)?;
        tracing::info!(
            dir = %shared.dir.display(),
            first,
            next,
            bytes,
            retained = shared.lock().retained.len(),
            "Log opened."
        );
        Ok(Self { shared })
    }
}

/// Every segment in `dir`, checked; whether the last one's tail was cut
/// off (and truncated here).
fn open_segments(dir: &Path) -> Result<(VecDeque<Segment>, bool), LogError> {
    let firsts = segment::list(dir)?;
    let mut segments = VecDeque::new();
    let mut lost = false;
    let count = firsts.len();
    for (i, first) in firsts.into_iter().enumerate() {
        let path = dir.join(Segment::file_name(first));
        let last = i + 1 == count;
        if let Some(previous) = segments.back().map(|s: &Segment| s.next) {
            if previous != first {
                return Err(LogError::Damaged {
                    file: path,
                    offset: 0,
                    what: format!(
                        "it starts at position {first}, the segment before ends before {previous}"
                    ),
                });
            }
        }
        let (segment, end) = segment::scan(&path, first)?;
        match end {
            End::Clean => {}
            End::Torn(offset) if last => {
                segment::truncate(&path, offset)?;
                lost = true;
            }
            End::Torn(offset) | End::Damaged(offset, _) if !last => {
                return Err(LogError::Damaged {
                    file: path,
                    offset,
                    what: "a record cut short inside the log (run `tidewater log check`)".into(),
                })
            }
            End::Torn(_) => unreachable!("handled above"),
            End::Damaged(offset, what) => {
                return Err(LogError::Damaged {
                    file: path,
                    offset,
                    what: format!("{what} (run `tidewater log check`)"),
                })
            }
        }
        segments.push_back(segment);
    }
    Ok((segments, lost))
}

/// The retained values in a file: the map, the file's length and the bytes
/// of the live values.
type RetainedFile = (HashMap<Box<str>, Record>, u64, u64);

/// The retained values in `path`: the map, the file's length and the bytes
/// of the live values. A tail cut short is cut off.
fn open_retained(path: &Path) -> Result<RetainedFile, LogError> {
    let mut retained = HashMap::new();
    if !path.exists() {
        return Ok((retained, 0, 0));
    }
    let mut reader = Reader::open(path, 0)?;
    let len = loop {
        match reader.next()? {
            Ok((record, _)) => super::retained::apply_record(&mut retained, record),
            Err(End::Clean) => break std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            Err(End::Torn(offset)) => {
                tracing::warn!(file = %path.display(), offset, "The retained file's tail was cut short; cut off there.");
                segment::truncate(path, offset)?;
                break offset;
            }
            Err(End::Damaged(offset, what)) => {
                return Err(LogError::Damaged {
                    file: path.to_path_buf(),
                    offset,
                    what: what.into(),
                })
            }
        }
    };
    let live = retained.values().map(|r| r.encoded_len() as u64).sum();
    Ok((retained, len, live))
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Io {
            file: path.to_path_buf(),
            source,
        })
}

/// The fsync interval and the age bound, on a thread of their own; it ends
/// once the log is dropped.
fn spawn_background(shared: Weak<Shared>, config: &LogConfig) -> Result<(), LogError> {
    let tick = Duration::from_millis(config.fsync_interval_ms.clamp(10, 60_000)).min(AGE_CHECK);
    let interval = config.fsync == Fsync::Interval;
    std::thread::Builder::new()
        .name("tidewater-log".into())
        .spawn(move || {
            let mut since_age_check = Duration::ZERO;
            loop {
                std::thread::sleep(tick);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
                if interval {
                    if let Err(e) = shared.sync() {
                        tracing::error!(error = %e, "Log fsync failed.");
                    }
                }
                since_age_check += tick;
                if since_age_check >= AGE_CHECK {
                    since_age_check = Duration::ZERO;
                    let mut inner = shared.lock();
                    shared.evict(&mut inner, crate::router::now_ms());
                }
            }
        })
        .map(|_| ())
        .map_err(|source| LogError::Dir {
            dir: config.dir.clone(),
            source,
        })
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is files and counters: carrying on after a panic
        // elsewhere is safe.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(path: &Path) -> impl Fn(std::io::Error) -> LogError + '_ {
        move |source| LogError::Io {
            file: path.to_path_buf(),
            source,
        }
    }

    /// Forces what was written to disk, if anything was.
    fn sync(&self) -> Result<(), LogError> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let (active, path, retained) = {
            let inner = self.lock();
            let path = inner
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            (inner.active.clone(), path, inner.retained_file.clone())
        };
        active.sync_data().map_err(Self::io(&path))?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        retained
            .sync_data()
            .map_err(Self::io(&self.dir.join(RETAINED)))
    }

    /// Drops the oldest segments past the byte or the age bound; the
    /// active segment always stays.
    fn evict(&self, inner: &mut Inner, now_ms: u64) {
        let mut bytes: u64 = inner.segments.iter().map(|s| s.len).sum();
        while inner.segments.len() > 1 {
            let oldest = &inner.segments[0];
            let too_old = self.max_age_ms > 0
                && oldest.last_time_ms > 0
                && now_ms.saturating_sub(oldest.last_time_ms) > self.max_age_ms;
            if bytes <= self.max_bytes && !too_old {
                break;
            }
            let oldest = inner.segments.pop_front().expect("more than one");
            bytes -= oldest.len;
            self.evictions.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(&oldest.path) {
                tracing::warn!(file = %oldest.path.display(), error = %e, "Cannot remove an evicted log segment.");
            }
            tracing::debug!(file = %oldest.path.display(), "Log segment evicted.");
        }
        let first = inner
            .segments
            .front()
            .map_or(self.next.load(Ordering::Acquire), |s| s.first);
        self.first.store(first, Ordering::Release);
        self.bytes.store(bytes, Ordering::Release);
    }

    /// Starts a new active segment at `first`.
    fn roll(&self, inner: &mut Inner, first: u64) -> Result<(), LogError> {
        let dir = self.dir.join(SEGMENTS);
        let segment = Segment::empty(&dir, first);
        let file = open_append(&segment.path)?;
        // What was written to the old one goes to disk before it is left.
        if self.fsync != Fsync::Never {
            let old = inner
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            inner.active.sync_data().map_err(Self::io(&old))?;
        }
        epochs::sync_dir(&dir)?;
        inner.active = Arc::new(file);
        inner.segments.push_back(segment);
        Ok(())
    }

    fn compact_retained(&self, inner: &mut Inner) -> Result<(), LogError> {
        let path = self.dir.join(RETAINED);
        let temporary = self.dir.join(format!("{RETAINED}.new"));
        let mut bytes = Vec::new();
        for record in inner.retained.values() {
            record.encode(&mut bytes);
        }
        let mut file = File::create(&temporary).map_err(Self::io(&temporary))?;
        file.write_all(&bytes).map_err(Self::io(&temporary))?;
        file.sync_all().map_err(Self::io(&temporary))?;
        std::fs::rename(&temporary, &path).map_err(Self::io(&path))?;
        epochs::sync_dir(&self.dir)?;
        inner.retained_file = Arc::new(open_append(&path)?);
        inner.retained_len = bytes.len() as u64;
        inner.retained_live = bytes.len() as u64;
        Ok(())
    }
}

/// Writes `bytes` at the end of `file`; on failure, cuts the file back to
/// `len` so no half record stays behind.
fn write_or_undo(file: &File, path: &Path, len: u64, bytes: &[u8]) -> Result<(), LogError> {
    let mut writer = file;
    if let Err(source) = writer.write_all(bytes) {
        let _ = file.set_len(len);
        return Err(LogError::Io {
            file: path.to_path_buf(),
            source,
        });
    }
    Ok(())
}

impl DiskLog {
    /// One batch into the active segment (see `Log::append`).
    fn append_batch(&self, entries: &[Entry]) -> Result<u64, LogError> {
        let shared = &*self.shared;

        let mut guard = shared.lock();
        let inner = &mut *guard;
        if shared.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let first = shared.next.load(Ordering::Acquire);
        if entries.is_empty() {
            return Ok(first);
        }
        // A batch goes whole into one segment, which may so pass
        // `segment_bytes` by one batch.
        let active = inner.segments.back().expect("an active segment");
        if active.len >= shared.segment_bytes && active.next > active.first {
            shared.roll(inner, first)?;
        }
        inner.buf.clear();
        inner.retained_buf.clear();
        let segment = inner.segments.back().expect("an active segment");
        let (base, path) = (segment.len, segment.path.clone());
        let mut marks = Vec::new();
        let mut retained_changes = Vec::new();
        for (position, entry) in (first..).zip(entries) {
            let record = super::retained::to_record(position, entry);
            let offset = base + inner.buf.len() as u64;
            record.encode(&mut inner.buf);
            if (position - segment.first).is_multiple_of(segment::INDEX_STRIDE) {
                marks.push(segment::Mark {
                    position,
                    offset,
                    time_ms: entry.time_ms,
                });
            }
            if entry.retain {
                record.encode(&mut inner.retained_buf);
                retained_changes.push(record);
            }
        }
        write_or_undo(&inner.active, &path, base, &inner.buf)?;
        if !retained_changes.is_empty() {
            let retained_path = shared.dir.join(RETAINED);
            let written = write_or_undo(
                &inner.retained_file,
                &retained_path,
                inner.retained_len,
                &inner.retained_buf,
            );
            if let Err(e) = written {
                // Neither file keeps any of the batch.
                let _ = inner.active.set_len(base);
                return Err(e);
            }
        }
        let next = first + entries.len() as u64;
        let written = inner.buf.len() as u64;
        let segment = inner.segments.back_mut().expect("an active segment");
        segment.index.extend(marks);
        segment.next = next;
        segment.len = base + written;
        segment.last_time_ms = entries.last().map_or(segment.last_time_ms, |e| e.time_ms);
        if !retained_changes.is_empty() {
            inner.retained_len += inner.retained_buf.len() as u64;
            for record in retained_changes {
                let added = if record.payload.is_empty() {
                    0
                } else {
                    record.encoded_len() as u64
                };
                let old = if record.payload.is_empty() {
                    inner.retained.remove(&record.topic)
                } else {
                    inner.retained.insert(record.topic.clone(), record)
                };
                let removed = old.map_or(0, |r| r.encoded_len() as u64);
                inner.retained_live = (inner.retained_live + added).saturating_sub(removed);
            }
        }
        shared.next.store(next, Ordering::Release);
        if shared.fsync == Fsync::Always {
            inner.active.sync_data().map_err(Shared::io(&path))?;
            if !inner.retained_buf.is_empty() {
                inner
                    .retained_file
                    .sync_data()
                    .map_err(Shared::io(&shared.dir.join(RETAINED)))?;
            }
        } else {
            shared.dirty.store(true, Ordering::Release);
        }
        let bytes = shared.bytes.load(Ordering::Acquire) + written;
        shared.bytes.store(bytes, Ordering::Release);
        if bytes > shared.max_bytes {
            shared.evict(inner, crate::router::now_ms());
        }
        if inner.retained_len
            > inner.retained_live * RETAINED_COMPACT_FACTOR + RETAINED_COMPACT_FLOOR
        {
            if let Err(e) = shared.compact_retained(inner) {
                tracing::warn!(error = %e, "Cannot compact the retained file; it keeps growing until it can.");
            }
        }
        Ok(first)
    }
}

impl Log for DiskLog {
    fn epoch(&self) -> u64 {
        self.shared.epochs.last().map_or(0, |e| e.0)
    }

    fn next(&self) -> u64 {
        self.shared.next.load(Ordering::Acquire)
    }

    fn first(&self) -> u64 {
        self.shared.first.load(Ordering::Acquire)
    }

    fn append(&self, entries: &[Entry]) -> Result<u64, LogError> {
        let started = std::time::Instant::now();
        let result = self.append_batch(entries);
        let shared = &*self.shared;
        shared.appends.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        shared.append_micros.fetch_add(micros, Ordering::Relaxed);
        let mut failure = shared.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => *failure = None,
            Err(LogError::Closed) => {}
            Err(e) => *failure = Some((e.to_string(), std::time::Instant::now())),
        }
        result
    }

    fn accepting(&self) -> bool {
        let failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        failure
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= FAILING_PAUSE)
    }

    fn status(&self) -> super::LogStatus {
        let shared = &*self.shared;
        let (segments, retained) = {
            let inner = shared.lock();
            (inner.segments.len(), inner.retained.len())
        };
        let last_error = shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(e, _)| e.clone());
        super::LogStatus {
            kind: "disk",
            state: if last_error.is_some() {
                "failing"
            } else {
                "ok"
            },
            epoch: format!("{:x}", self.epoch()),
            first: self.first(),
            next: self.next(),
            bytes: self.bytes(),
            segments,
            retained,
            appends: shared.appends.load(Ordering::Relaxed),
            append_micros: shared.append_micros.load(Ordering::Relaxed),
            fsyncs: shared.fsyncs.load(Ordering::Relaxed),
            evictions: shared.evictions.load(Ordering::Relaxed),
            last_error,
        }
    }

    fn read(
        &self,
        from: u64,
        to: u64,
        max: usize,
        filter: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(Vec<Record>, u64), LogError> {
        let to = to.min(self.next());
        let mut records = Vec::new();
        let mut from = from.max(self.first());
        while from < to && records.len() < max {
            // Where to start, found under the lock; read without it.
            let start = {
                let inner = self.shared.lock();
                let at = inner.segments.partition_point(|s| s.next <= from);
                inner
                    .segments
                    .get(at)
                    .map(|s| (s.path.clone(), s.start_for(from), s.next))
            };
            let Some((path, mark, segment_next)) = start else {
                break;
            };
            let mut reader = match Reader::open(&path, mark.offset) {
                Ok(reader) => reader,
                // Evicted since: the caller sees `first()` has moved on.
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    break;
                }
                Err(e) => return Err(e),
            };
            let end = to.min(segment_next);
            let mut position = mark.position;
            while position < end && records.len() < max {
                match reader.next()? {
                    Ok((record, _)) => {
                        position = record.position + 1;
                        if record.position >= from && filter(&record.topic) {
                            records.push(record);
                        }
                    }
                    Err(End::Clean | End::Torn(_)) => break,
                    Err(End::Damaged(offset, what)) => {
                        return Err(LogError::Damaged {
                            file: path,
                            offset,
                            what: what.into(),
                        })
                    }
                }
            }
            if position <= from {
                // The segment ended early (cut back after a failed write).
                from = end;
            } else {
                from = position;
            }
        }
        Ok((records, from.min(to).max(from)))
    }

    fn position_near(&self, time_ms: u64) -> u64 {
        let inner = self.shared.lock();
        let at = inner
            .segments
            .partition_point(|s| s.last_time_ms < time_ms && s.next > s.first);
        match inner.segments.get(at) {
            Some(segment) => segment.start_for_time(time_ms).position,
            None => self.next(),
        }
    }

    fn retained(&self) -> Vec<Record> {
        self.shared.lock().retained.values().cloned().collect()
    }

    fn retained_before(
        &self,
        before: u64,
        filter: &mut dyn FnMut(&str) -> bool,
        max: usize,
    ) -> (Vec<Record>, bool) {
        super::retained::before(&self.shared.lock().retained, before, filter, max)
    }

    fn resume_after(&self, id: EventId) -> Resume {
        match epochs::end_of(&self.shared.epochs, id.epoch) {
            Some(end) if id.seq < end.unwrap_or(u64::MAX) && id.seq < self.next() => {
                Resume::After(id.seq)
            }
            _ => Resume::Gap,
        }
    }

    fn sync(&self) -> Result<(), LogError> {
        self.shared.sync()
    }

    fn close(&self) -> Result<(), LogError> {
        // Under the lock, so no append is half done.
        let inner = self.shared.lock();
        self.shared.closed.store(true, Ordering::Release);
        self.shared.dirty.store(true, Ordering::Release);
        drop(inner);
        let synced = self.shared.sync();
        let _ = self.shared.lock.unlock();
        synced
    }

    fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
