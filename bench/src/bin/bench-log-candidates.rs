//! The log's own segment files side by side with the two embedded stores it
//! could have been built on (fjall, an LSM tree; redb, a copy-on-write
//! B-tree), on the workload the log sees: S1's messages (JSON on
//! `devices/<i>/telemetry`, 1,000 topics), appended by one thread in the
//! egress thread's batches, never updated, read forward from a position.
//!
//! For each store and payload size it measures: sustained appends (1M
//! messages, 256 and 1 per batch); the time each append takes at a paced
//! 20k msg/s, one message per batch; a read forward of 100k messages from
//! 100k back; the time to reopen a million messages and append and read
//! again; bytes on disk, memory and CPU; and appends made durable one batch
//! at a time (`fsync = "always"`).
//!
//! Durability as the log's default (`fsync = "interval"`, 1 s): the disk
//! log's own background fsync; fjall writes each batch to its journal (to
//! the system, as the log does) and a thread here calls
//! `persist(SyncData)` every second, since fjall 3 has no timer of its own;
//! redb commits each batch with `Durability::None` and a thread here
//! commits an empty transaction with `Durability::Immediate` every second.
//! redb's `None` commits live in the process's memory until then, so unlike
//! the other two a process crash there loses up to a second (see the
//! "always" rows for redb's like-for-like mode).
//!
//! `cargo run --release -p bench --features candidates --bin
//! bench-log-candidates [-- --messages N --payloads 120,1024 --dir D]`
//! prints markdown tables. Every measurement runs in a fresh child process
//! (this binary again), so memory and CPU are that store's alone; the
//! stores' directories live under a fresh temporary directory (or `--dir`),
//! each removed once measured. Reads and the reopen find the files in the
//! page cache, as after a restart of the bridge alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tidewater::log::{self, Entry, Fsync, Kind, Log, LogConfig, Record};

#[path = "../procstat.rs"]
#[allow(dead_code)] // only this process's own usage is needed here
mod procstat;

#[derive(Debug, Parser)]
struct Cli {
    /// Messages appended for the sustained rates, the reopen and the
    /// read.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload sizes in bytes, one set of tables each (S1 sends 120).
    #[arg(long, value_delimiter = ',', default_value = "120,1024")]
    payloads: Vec<usize>,
    /// Appends per second for the latency measurement.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Seconds the latency is measured for (after one of warm-up).
    #[arg(long, default_value_t = 10)]
    paced_secs: u64,
    /// Where the stores go (a fresh temporary directory by default).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only these stores (`segments`, `fjall`, `redb`).
    #[arg(long, value_delimiter = ',', default_value = "segments,fjall,redb")]
    stores: Vec<String>,
    /// Set by the parent: run one measurement in this process.
    #[arg(long, hide = true)]
    step: Option<String>,
    #[arg(long, hide = true)]
    store: Option<String>,
    #[arg(long, hide = true)]
    payload: Option<usize>,
}

/// How often the interval durability makes everything durable, as the
/// log's default `fsync_interval_ms`.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Distinct messages cycled through; a multiple of every batch size.
const POOL: usize = 4096;

/// Messages read per call, as the log's default `read_page`.
const READ_PAGE: usize = 1024;

/// How far back the read starts.
const READ_BACK: u64 = 100_000;

/// What each append must guarantee before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// Durable within a second (`fsync = "interval"`).
    Interval,
    /// Durable when the append returns (`fsync = "always"`).
    EveryBatch,
}

/// One way of keeping the log: append at the end, read forward.
trait Store {
    fn append(&mut self, entries: &[Entry]) -> anyhow::Result<()>;
    /// Up to `max` records from `from` (inclusive) to `to` (exclusive),
    /// and the position to go on from.
    fn read(&mut self, from: u64, to: u64, max: usize) -> anyhow::Result<(Vec<Record>, u64)>;
    /// The position the next append gets.
    fn next(&self) -> u64;
    /// Makes everything durable and lets go of the files.
    fn close(self: Box<Self>) -> anyhow::Result<()>;
}

fn open(store: &str, dir: &Path, durability: Durability) -> anyhow::Result<Box<dyn Store>> {
    Ok(match store {
        "segments" => Box::new(Segments::open(dir, durability)?),
        "fjall" => Box::new(Fjall::open(dir, durability)?),
        "redb" => Box::new(Redb::open(dir, durability)?),
        other => bail!("no store {other:?}"),
    })
}

/// The project's disk log, as the bridge opens it, with no bound on bytes
/// or age so a 1 KiB run keeps all its million messages.
struct Segments(Arc<dyn Log>);

impl Segments {
    fn open(dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        let config = LogConfig {
            kind: Kind::Disk,
            dir: dir.to_path_buf(),
            fsync: match durability {
                Durability::Interval => Fsync::Interval,
                Durability::EveryBatch => Fsync::Always,
            },
            fsync_interval_ms: SYNC_INTERVAL.as_millis() as u64,
            max_bytes: u64::MAX,
            max_age_secs: 0,
            ..LogConfig::default()
        };
        Ok(Self(log::open(&config)?))
    }
}

impl Store for Segments {
    fn append(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        self.0.append(entries)?;
        Ok(())
    }

    fn read(&mut self, from: u64, to: u64, max: usize) -> anyhow::Result<(Vec<Record>, u64)> {
        Ok(self.0.read(from, to, max, &mut |_| true)?)
    }

    fn next(&self) -> u64 {
        self.0.next()
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(self.0.close()?)
    }
}

/// A thread that makes a store durable every [`SYNC_INTERVAL`] until it is
/// stopped: the candidates' equivalent of `fsync = "interval"`.
struct Syncer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl Syncer {
    fn spawn(mut sync: impl FnMut() -> anyhow::Result<()> + Send + 'static) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || loop {
            match stopped.recv_timeout(SYNC_INTERVAL) {
                Err(RecvTimeoutError::Timeout) => sync()?,
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        });
        Self { stop, thread }
    }

    fn stop(self) -> anyhow::Result<()> {
        drop(self.stop);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => bail!("the sync thread panicked"),
        }
    }
}

/// A record's fields but its position (the key holds it): `time_ms: u64`,
/// `flags: u8`, `topic_len: u16`, the topic, the payload, little-endian as
/// in the log's own records. No checksum: both stores checksum their
/// blocks or pages themselves.
fn encode_value(entry: &Entry, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&entry.time_ms.to_le_bytes());
    out.push((entry.qos & 0b11) | (u8::from(entry.retain) << 2));
    let topic_len = u16::try_from(entry.topic.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(&entry.topic.as_bytes()[..usize::from(topic_len)]);
    out.extend_from_slice(&entry.payload);
}

/// The record at `position` from a value [`encode_value`] wrote; the
/// payload is copied out, as the log's own reader does.
fn decode_value(position: u64, value: &[u8]) -> anyhow::Result<Record> {
    ensure!(value.len() >= 11, "a value of {} bytes", value.len());
    let time_ms = u64::from_le_bytes(value[0..8].try_into()?);
    let flags = value[8];
    let topic_len = usize::from(u16::from_le_bytes([value[9], value[10]]));
    let topic = value
        .get(11..11 + topic_len)
        .context("a topic longer than its value")?;
    Ok(Record {
        position,
        time_ms,
        qos: flags & 0b11,
        retain: flags & 0b100 != 0,
        topic: std::str::from_utf8(topic)?.into(),
        payload: Bytes::copy_from_slice(&value[11 + topic_len..]),
    })
}

/// fjall with its defaults: one keyspace, keyed by the big-endian position
/// so keys sort in log order.
struct Fjall {
    db: fjall::Database,
    log: fjall::Keyspace,
    next: u64,
    durability: Durability,
    syncer: Option<Syncer>,
    buf: Vec<u8>,
}

impl Fjall {
    fn open(dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        let db = fjall::Database::builder(dir).open()?;
        let log = db.keyspace("log", fjall::KeyspaceCreateOptions::default)?;
        // Where the log stands is part of being ready to append.
        let next = match log.last_key_value() {
            Some(last) => u64::from_be_bytes(<[u8; 8]>::try_from(&last.key()?[..])?) + 1,
            None => 1,
        };
        let syncer = (durability == Durability::Interval).then(|| {
            let db = db.clone();
            Syncer::spawn(move || Ok(db.persist(fjall::PersistMode::SyncData)?))
        });
        Ok(Self {
            db,
            log,
            next,
            durability,
            syncer,
            buf: Vec::new(),
        })
    }
}

impl Store for Fjall {
    fn append(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        let mut batch = self.db.batch();
        if self.durability == Durability::EveryBatch {
            batch = batch.durability(Some(fjall::PersistMode::SyncData));
        }
        for (position, entry) in (self.next..).zip(entries) {
            encode_value(entry, &mut self.buf);
            batch.insert(&self.log, position.to_be_bytes(), self.buf.as_slice());
        }
        // Without `manual_journal_persist` the commit hands the journal's
        // bytes to the system, so a process crash loses none of the batch.
        batch.commit()?;
        self.next += entries.len() as u64;
        Ok(())
    }

    fn read(&mut self, from: u64, to: u64, max: usize) -> anyhow::Result<(Vec<Record>, u64)> {
        let mut records = Vec::with_capacity(max.min(READ_PAGE));
        for guard in self
            .log
            .range(from.to_be_bytes()..to.to_be_bytes())
            .take(max)
        {
            let (key, value) = guard.into_inner()?;
            let position = u64::from_be_bytes(<[u8; 8]>::try_from(&key[..])?);
            records.push(decode_value(position, &value)?);
        }
        let next = match records.last() {
            Some(last) if records.len() == max => last.position + 1,
            _ => to,
        };
        Ok((records, next))
    }

    fn next(&self) -> u64 {
        self.next
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        let Self {
            db, log, syncer, ..
        } = *self;
        if let Some(syncer) = syncer {
            syncer.stop()?;
        }
        db.persist(fjall::PersistMode::SyncAll)?;
        drop(log);
        // Waits for a flush or compaction under way.
        drop(db);
        Ok(())
    }
}

const REDB_LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");

/// redb with its defaults: one table from position to value, one write
/// transaction per batch.
struct Redb {
    db: Arc<redb::Database>,
    next: u64,
    durability: Durability,
    syncer: Option<Syncer>,
    buf: Vec<u8>,
}

impl Redb {
    fn open(dir: &Path, durability: Durability) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let db = Arc::new(redb::Database::create(dir.join("log.redb"))?);
        // The table exists from here on, so reads need not handle its
        // absence.
        let txn = db.begin_write()?;
        txn.open_table(REDB_LOG)?;
        txn.commit()?;
        let next = {
            use redb::{ReadableDatabase as _, ReadableTable as _};
            let txn = db.begin_read()?;
            let table = txn.open_table(REDB_LOG)?;
            let last = table.last()?;
            last.map_or(1, |(key, _)| key.value() + 1)
        };
        let syncer = (durability == Durability::Interval).then(|| {
            let db = db.clone();
            Syncer::spawn(move || {
                // An empty durable commit makes every `None` commit before
                // it durable; it waits for the appender's transaction, and
                // the appender for it.
                let mut txn = db.begin_write()?;
                txn.set_durability(redb::Durability::Immediate)?;
                txn.commit()?;
                Ok(())
            })
        });
        Ok(Self {
            db,
            next,
            durability,
            syncer,
            buf: Vec::new(),
        })
    }
}

impl Store for Redb {
    fn append(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(match self.durability {
            Durability::Interval => redb::Durability::None,
            Durability::EveryBatch => redb::Durability::Immediate,
        })?;
        {
            let mut table = txn.open_table(REDB_LOG)?;
            for (position, entry) in (self.next..).zip(entries) {
                encode_value(entry, &mut self.buf);
                table.insert(position, self.buf.as_slice())?;
            }
        }
        txn.commit()?;
        self.next += entries.len() as u64;
        Ok(())
    }

    fn read(&mut self, from: u64, to: u64, max: usize) -> anyhow::Result<(Vec<Record>, u64)> {
        use redb::{ReadableDatabase as _, ReadableTable as _};
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDB_LOG)?;
        let mut records = Vec::with_capacity(max.min(READ_PAGE));
        for item in table.range(from..to)?.take(max) {
            let (key, value) = item?;
            records.push(decode_value(key.value(), value.value())?);
        }
        let next = match records.last() {
            Some(last) if records.len() == max => last.position + 1,
            _ => to,
        };
        Ok((records, next))
    }

    fn next(&self) -> u64 {
        self.next
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        let Self { db, syncer, .. } = *self;
        if let Some(syncer) = syncer {
            syncer.stop()?;
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        match Arc::try_unwrap(db) {
            Ok(db) => db.close()?,
            Err(_) => bail!("redb is still shared at close"),
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// [`POOL`] distinct messages shaped as S1's: JSON of `size` bytes on
/// 1,000 topics. S1 pads its JSON with `x`; here the pad is pseudo-random
/// hex, so fjall's LZ4 cannot shrink it to nothing (real readings are not
/// a run of one letter).
fn messages(size: usize) -> Vec<Entry> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut random = move || {
        // xorshift64: cheap, deterministic, good enough for filler.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..POOL as u64)
        .map(|seq| {
            let dev = seq % 1000;
            let t0 = 1_732_240_000_000_000 + seq * 50;
            let mut payload =
                format!("{{\"t0\":{t0},\"seq\":{seq},\"dev\":{dev},\"pad\":\"").into_bytes();
            while payload.len() + 2 < size {
                payload.push(b"0123456789abcdef"[(random() & 15) as usize]);
            }
            payload.extend_from_slice(b"\"}");
            Entry {
                time_ms: 0,
                qos: 0,
                retain: false,
                topic: format!("devices/{dev}/telemetry").into(),
                payload: payload.into(),
            }
        })
        .collect()
}

/// The next `batch` messages of the pool, stamped now as the egress thread
/// stamps what it takes from the broker.
fn next_batch(pool: &mut [Entry], at: &mut usize, batch: usize) -> std::ops::Range<usize> {
    if *at + batch > pool.len() {
        *at = 0;
    }
    let range = *at..*at + batch;
    *at += batch;
    let now = now_ms();
    for entry in &mut pool[range.clone()] {
        entry.time_ms = now;
    }
    range
}

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes of every file under `dir`: as their lengths add up, and as
/// allocated on the disk (a store may preallocate, or leave holes).
fn disk_usage(dir: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let (mut apparent, mut allocated) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path())?;
            apparent += a;
            allocated += b;
        } else {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    Ok((apparent, allocated))
}

/// One measurement, in this (child) process; its result as JSON.
fn step(cli: &Cli, step: &str, store: &str, dir: &Path, size: usize) -> anyhow::Result<Value> {
    let mut pool = messages(size);
    let mut at = 0;
    match step {
        // Sustained appends into an empty store. The 256-batch run's
        // store stays for `reopen`.
        "append256" | "append1" | "always256" | "always1" => {
            let (batch, durability, messages) = match step {
                "append256" => (256, Durability::Interval, cli.messages),
                "append1" => (1, Durability::Interval, cli.messages),
                // A disk flush per batch: fewer messages, or minutes.
                "always256" => (256, Durability::EveryBatch, cli.messages / 10),
                _ => (1, Durability::EveryBatch, cli.messages / 100),
            };
            let before = procstat::own();
            let mut log = open(store, dir, durability)?;
            let opened = procstat::own();
            let started = Instant::now();
            let mut done = 0;
            while done < messages {
                let range = next_batch(&mut pool, &mut at, batch);
                log.append(&pool[range])?;
                done += batch as u64;
            }
            let elapsed = started.elapsed();
            let peak = peak_rss_kib();
            ensure!(log.next() == done + 1, "positions do not follow on");
            log.close()?;
            let closed = procstat::own();
            let (apparent, allocated) = disk_usage(dir)?;
            Ok(json!({
                "rate": done as f64 / elapsed.as_secs_f64(),
                "rss_kib": peak.saturating_sub(opened.rss_kib),
                "cpu_us_per_msg": closed.cpu_since(&before) as f64 / done as f64,
                "apparent": apparent,
                "allocated": allocated,
            }))
        }
        // A restart with `append256`'s million messages: open, find the
        // end, read the newest record and append one; then a resume from
        // 100k back, a page at a time, every message matching.
        "reopen" => {
            let before = procstat::own();
            let started = Instant::now();
            let mut log = open(store, dir, Durability::Interval)?;
            let next = log.next();
            ensure!(next > READ_BACK, "only {} messages to reopen", next - 1);
            let (newest, _) = log.read(next - 1, next, 1)?;
            ensure!(newest.len() == 1 && newest[0].position == next - 1);
            let range = next_batch(&mut pool, &mut at, 1);
            log.append(&pool[range])?;
            let ready = started.elapsed();
            let after = procstat::own();

            let to = log.next();
            let mut from = to - READ_BACK;
            let started = Instant::now();
            let mut read = 0;
            let mut expected = from;
            while from < to {
                let (records, next) = log.read(from, to, READ_PAGE)?;
                ensure!(records.first().is_none_or(|r| r.position == expected));
                expected += records.len() as u64;
                read += records.len() as u64;
                from = next;
            }
            let elapsed = started.elapsed();
            ensure!(read == READ_BACK, "read {read} of {READ_BACK}");
            log.close()?;
            Ok(json!({
                "ready_ms": ready.as_secs_f64() * 1000.0,
                "rss_kib": after.rss_kib.saturating_sub(before.rss_kib),
                "read_rate": read as f64 / elapsed.as_secs_f64(),
            }))
        }
        // One message per append at a steady rate, as the egress thread
        // appends when the broker is not busy. The pacing spins: a sleep's
        // wake-up is coarser than the 50 µs between appends.
        "paced" => {
            let mut log = open(store, dir, Durability::Interval)?;
            let warm = cli.rate;
            let total = cli.rate * (1 + cli.paced_secs);
            let mut took = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let mut late = took.clone();
            let start = Instant::now();
            for i in 0..total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / cli.rate);
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                let range = next_batch(&mut pool, &mut at, 1);
                let began = Instant::now();
                log.append(&pool[range])?;
                let ended = Instant::now();
                if i >= warm {
                    took.saturating_record((ended - began).as_nanos() as u64);
                    // Counted from when it was due: a stall delays the
                    // appends queued behind it too.
                    late.saturating_record((ended - due).as_nanos() as u64);
                }
            }
            log.close()?;
            let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            Ok(json!({
                "p50": us(&took, 0.5),
                "p99": us(&took, 0.99),
                "p999": us(&took, 0.999),
                "max": took.max() as f64 / 1000.0,
                "due_p99": us(&late, 0.99),
                "due_p999": us(&late, 0.999),
                "due_max": late.max() as f64 / 1000.0,
                "count": took.len(),
            }))
        }
        other => bail!("no step {other:?}"),
    }
}

/// The measurements, in the order they run; each runs for every store
/// before the next begins, so a change in the machine's load falls on all
/// alike.
const STEPS: [&str; 6] = [
    "append256",
    "reopen",
    "append1",
    "paced",
    "always256",
    "always1",
];

fn name(store: &str) -> &str {
    match store {
        "segments" => "segment files (DiskLog)",
        "fjall" => "fjall 3",
        "redb" => "redb 5",
        other => other,
    }
}

fn rate(v: &Value) -> String {
    let r = v.as_f64().unwrap_or(0.0);
    if r >= 1e6 {
        format!("{:.2}M msg/s", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.0}k msg/s", r / 1e3)
    } else {
        format!("{r:.0} msg/s")
    }
}

fn us(v: &Value) -> String {
    let u = v.as_f64().unwrap_or(0.0);
    if u >= 1000.0 {
        format!("{:.1} ms", u / 1000.0)
    } else if u >= 10.0 {
        format!("{u:.0} µs")
    } else {
        format!("{u:.1} µs")
    }
}

fn mib(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What each measurement returned, by step and store.
type Results = HashMap<(String, String), Value>;

/// One store's results.
struct Of<'a> {
    results: &'a Results,
    store: &'a str,
}

impl<'a> Of<'a> {
    fn get(&self, step: &str) -> Option<&'a Value> {
        self.results
            .get(&(step.to_string(), self.store.to_string()))
    }
}

fn table(cli: &Cli, size: usize, results: &Results) {
    let stores: Vec<&str> = cli.stores.iter().map(String::as_str).collect();
    let m = cli.messages;
    println!("\n{size} B payloads, `devices/<i>/telemetry` on 1,000 topics:\n");
    print!("| measurement |");
    for store in &stores {
        print!(" {} |", name(store));
    }
    print!("\n| --- |");
    for _ in &stores {
        print!(" --- |");
    }
    println!();
    // A cell reads the store's results by step; a step that failed (or
    // did not run) leaves the cell saying so.
    let row = |label: String, cell: &dyn Fn(&Of) -> Option<String>| {
        print!("| {label} |");
        for store in &stores {
            let of = Of { results, store };
            print!(" {} |", cell(&of).unwrap_or_else(|| "failed".into()));
        }
        println!();
    };
    let f = |v: &Value, key: &str| v[key].as_f64().unwrap_or(0.0);
    row(format!("append {m}, 256 per batch"), &|of| {
        Some(rate(&of.get("append256")?["rate"]))
    });
    row(format!("append {m}, 1 per batch"), &|of| {
        Some(rate(&of.get("append1")?["rate"]))
    });
    row(
        format!(
            "one append at {}k msg/s, 1 per batch: p50 / p99 / p99.9 / max",
            cli.rate / 1000
        ),
        &|of| {
            let v = of.get("paced")?;
            Some(format!(
                "{} / {} / {} / {}",
                us(&v["p50"]),
                us(&v["p99"]),
                us(&v["p999"]),
                us(&v["max"])
            ))
        },
    );
    row(
        "same, counted from when each was due: p99 / p99.9 / max".into(),
        &|of| {
            let v = of.get("paced")?;
            Some(format!(
                "{} / {} / {}",
                us(&v["due_p99"]),
                us(&v["due_p999"]),
                us(&v["due_max"])
            ))
        },
    );
    row(
        format!("read forward {READ_BACK} from {READ_BACK} back, pages of {READ_PAGE}"),
        &|of| Some(rate(&of.get("reopen")?["read_rate"])),
    );
    row(
        format!("reopen {m}: open, read the newest, append one"),
        &|of| Some(format!("{:.0} ms", f(of.get("reopen")?, "ready_ms"))),
    );
    row(format!("on disk after {m} (allocated)"), &|of| {
        let v = of.get("append256")?;
        Some(format!(
            "{:.0} MiB ({:.0} MiB)",
            mib(&v["apparent"]),
            mib(&v["allocated"])
        ))
    });
    row(
        "memory: peak growth appending them / growth reopening them".into(),
        &|of| {
            let grew = |step: &str| Some(f(of.get(step)?, "rss_kib") / 1024.0);
            Some(format!(
                "+{:.0} MiB / +{:.0} MiB",
                grew("append256")?,
                grew("reopen")?
            ))
        },
    );
    row(
        "CPU per message appended, 256 per batch (all threads, close included)".into(),
        &|of| {
            Some(format!(
                "{:.2} µs",
                f(of.get("append256")?, "cpu_us_per_msg")
            ))
        },
    );
    row(
        format!("durable every batch: append {}, 256 per batch", m / 10),
        &|of| Some(rate(&of.get("always256")?["rate"])),
    );
    row(
        format!("durable every batch: append {}, 1 per batch", m / 100),
        &|of| Some(rate(&of.get("always1")?["rate"])),
    );
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let (Some(step_name), Some(store), Some(size), Some(dir)) =
        (&cli.step, &cli.store, cli.payload, &cli.dir)
    {
        let result = step(&cli, step_name, store, dir, size)?;
        println!("{result}");
        return Ok(());
    }

    let (root, owned) = match &cli.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("tidewater-log-candidates-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&root)?;
    let exe = std::env::current_exe()?;
    println!("load average before: {}", load_average());
    let started = Instant::now();
    for &size in &cli.payloads {
        let mut results = HashMap::new();
        for step_name in STEPS {
            for store in &cli.stores {
                // `reopen` opens what `append256` left; everything else
                // starts empty.
                let dir = match step_name {
                    "append256" | "reopen" => root.join(format!("{store}-{size}-full")),
                    _ => root.join(format!("{store}-{size}-{step_name}")),
                };
                // Whatever the last measurement left for the disk to do
                // (writeback, the discards of a removed directory) is done
                // before this one starts, so it does not fall on this one.
                let _ = Command::new("sync").status();
                eprintln!("{step_name} {store} {size} B ...");
                let output = Command::new(&exe)
                    .arg("--step")
                    .arg(step_name)
                    .arg("--store")
                    .arg(store)
                    .arg("--payload")
                    .arg(size.to_string())
                    .arg("--dir")
                    .arg(&dir)
                    .arg("--messages")
                    .arg(cli.messages.to_string())
                    .arg("--rate")
                    .arg(cli.rate.to_string())
                    .arg("--paced-secs")
                    .arg(cli.paced_secs.to_string())
                    .stderr(std::process::Stdio::inherit())
                    .output()?;
                let stdout = String::from_utf8_lossy(&output.stdout);
                match stdout.lines().last().map(serde_json::from_str::<Value>) {
                    Some(Ok(value)) if output.status.success() => {
                        eprintln!("  {value}");
                        results.insert((step_name.to_string(), store.clone()), value);
                    }
                    _ => eprintln!("  failed: {}", output.status),
                }
                if step_name != "append256" {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        table(&cli, size, &results);
    }
    println!(
        "\nload average after: {} ({:.0} s)",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    if owned {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}
