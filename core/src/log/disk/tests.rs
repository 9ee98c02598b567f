//! The disk log against real files: what it keeps across a reopen, what it
//! does with a tail cut short or damage, and its bounds.

use std::io::Write;

use bytes::Bytes;

use super::*;
use crate::log::{Entry, Kind};

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        kind: Kind::Disk,
        dir: dir.to_path_buf(),
        fsync: Fsync::Never,
        ..LogConfig::default()
    }
}

fn entry(topic: &str, payload: &str, retain: bool) -> Entry {
    Entry {
        time_ms: crate::router::now_ms(),
        qos: 1,
        retain,
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn all(log: &DiskLog) -> Vec<(u64, String, String)> {
    let (records, _) = log
        .read(1, u64::MAX, usize::MAX, &mut |_| true)
        .expect("read");
    records
        .into_iter()
        .map(|r| {
            (
                r.position,
                r.topic.to_string(),
                String::from_utf8(r.payload.to_vec()).expect("UTF-8 payloads"),
            )
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join(SEGMENTS))
        .expect("the segments directory")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn records_and_retained_values_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let epoch = {
        let log = DiskLog::open(&config(dir.path())).expect("the log opens");
        assert_eq!(
            log.append(&[entry("温度/客厅", "21.5", true)])
                .expect("append"),
            1
        );
        let batch = [
            entry("°C/salon", "19", false),
            entry("温度/客厅", "22", true),
        ];
        assert_eq!(log.append(&batch).expect("append"), 2);
        log.append(&[entry("gone", "x", true), entry("gone", "", true)])
            .expect("append");
        log.epoch()
    };
    let log = DiskLog::open(&config(dir.path())).expect("the log opens");
    assert_eq!(log.epoch(), epoch, "a clean reopen keeps the epoch");
    assert_eq!((log.first(), log.next()), (1, 6));
    assert_eq!(
        all(&log)[..3],
        [
            (1, "温度/客厅".into(), "21.5".into()),
            (2, "°C/salon".into(), "19".into()),
            (3, "温度/客厅".into(), "22".into()),
        ]
    );
    let retained = log.retained();
    assert_eq!(retained.len(), 1, "a deleted value stays deleted");
    assert_eq!(
        (retained[0].position, &*retained[0].payload),
        (3, &b"22"[..])
    );
    assert_eq!(log.append(&[entry("t", "next", false)]).expect("append"), 6);
}

#[test]
fn a_read_starts_anywhere_and_filters() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = DiskLog::open(&LogConfig {
        segment_bytes: 2_000,
        ..config(dir.path())
    })
    .expect("the log opens");
    for i in 0..1_000 {
        let topic = if i % 2 == 0 { "even" } else { "odd" };
        log.append(&[entry(topic, &i.to_string(), false)])
            .expect("append");
    }
    assert!(segment_files(dir.path()).len() > 10, "rolled over");
    for from in [1, 2, 63, 64, 65, 500, 999, 1000] {
        // Odd values went to even positions.
        let (records, next) = log.read(from, 1001, 10, &mut |t| t == "odd").expect("read");
        let positions: Vec<u64> = records.iter().map(|r| r.position).collect();
        let first_even = from + from % 2;
        let expected: Vec<u64> = (first_even..=1000).step_by(2).take(10).collect();
        assert_eq!(positions, expected, "from {from}");
        assert!(next > *positions.last().unwrap_or(&0));
    }
    let (records, next) = log.read(990, 995, 100, &mut |_| true).expect("read");
    assert_eq!((records.len(), next), (5, 995), "`to` is exclusive");
}

#[test]
fn the_oldest_segments_go_past_the_byte_bound_but_retained_values_stay() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = DiskLog::open(&LogConfig {
        segment_bytes: 1_000,
        max_bytes: 5_000,
        ..config(dir.path())
    })
    .expect("the log opens");
    log.append(&[entry("kept", "1", true)]).expect("append");
    for i in 0..500 {
        log.append(&[entry("t", &i.to_string(), false)])
            .expect("append");
    }
    assert!(log.bytes() <= 5_000 + 1_100, "bytes {}", log.bytes());
    assert!(log.first() > 1);
    let (records, _) = log
        .read(1, u64::MAX, usize::MAX, &mut |_| true)
        .expect("read");
    assert_eq!(records[0].position, log.first());
    assert_eq!(log.retained()[0].topic.as_ref(), "kept");
    drop(log);
    let log = DiskLog::open(&config(dir.path())).expect("the log opens");
    assert_eq!(log.retained()[0].topic.as_ref(), "kept");
}

#[test]
fn a_tail_cut_short_is_cut_off_and_begins_a_new_epoch() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let old = {
        let log = DiskLog::open(&config(dir.path())).expect("the log opens");
        for i in 1..=10 {
            log.append(&[entry("t", &i.to_string(), false)])
                .expect("append");
        }
        log.epoch()
    };
    // A power cut: the last record half written, and zeros after it.
    let file = segment_files(dir.path()).pop().expect("a segment");
    let len = std::fs::metadata(&file).expect("its size").len();
    let f = OpenOptions::new().append(true).open(&file).expect("append");
    f.set_len(len - 3).expect("cut the tail");
    (&f).write_all(&[0; 100]).expect("zeros after it");
    drop(f);

    let log = DiskLog::open(&config(dir.path())).expect("the log opens");
    assert_ne!(log.epoch(), old);
    assert_eq!(log.next(), 10, "record 10 is lost");
    let id = |epoch, seq| EventId { epoch, seq };
    assert_eq!(log.resume_after(id(old, 5)), Resume::After(5));
    assert_eq!(log.resume_after(id(old, 9)), Resume::After(9));
    assert_eq!(
        log.resume_after(id(old, 10)),
        Resume::Gap,
        "whoever saw the lost record is told"
    );
    log.append(&[entry("t", "new 10", false)]).expect("append");
    assert_eq!(all(&log).last().expect("records").2, "new 10");
    assert_eq!(log.resume_after(id(log.epoch(), 10)), Resume::After(10));
    assert_eq!(log.resume_after(id(12345, 1)), Resume::Gap);
}

#[test]
fn damage_inside_the_log_stops_the_open_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    {
        let log = DiskLog::open(&config(dir.path())).expect("the log opens");
        for i in 1..=10 {
            log.append(&[entry("t", &i.to_string(), false)])
                .expect("append");
        }
    }
    let file = segment_files(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&file).expect("read the segment");
    let one = bytes.len() / 10;
    bytes[one * 3 + 12] ^= 0x40;
    std::fs::write(&file, &bytes).expect("write it back");
    let error = DiskLog::open(&config(dir.path())).expect_err("the open fails");
    let text = error.to_string();
    assert!(matches!(error, LogError::Damaged { .. }), "{text}");
    assert!(
        text.contains(".seg") && text.contains(&format!("byte {}", one * 3)),
        "{text}"
    );
}

#[test]
fn one_bridge_per_directory() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let _first = DiskLog::open(&config(dir.path())).expect("the log opens");
    let error = DiskLog::open(&config(dir.path())).expect_err("the open fails");
    assert!(matches!(error, LogError::Locked(_)), "{error}");
}

#[test]
fn a_position_by_time() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = DiskLog::open(&config(dir.path())).expect("the log opens");
    for i in 0..300u64 {
        let mut e = entry("t", "x", false);
        e.time_ms = 1_000 + i * 10;
        log.append(&[e]).expect("append");
    }
    // The exact answer, from every record.
    let (records, _) = log
        .read(1, u64::MAX, usize::MAX, &mut |_| true)
        .expect("read");
    let exact = |time: u64| {
        records
            .iter()
            .find(|r| r.time_ms >= time)
            .map_or(log.next(), |r| r.position)
    };
    assert_eq!(log.position_near(0), 1);
    assert_eq!(log.position_near(1_000_000), log.next());
    // From memory only: never after the exact one, within one index stride.
    for time in [0, 1_000, 1_005, 2_000, 3_990, 1_000_000] {
        let (near, exact) = (log.position_near(time), exact(time));
        assert!(
            near <= exact && exact - near <= segment::INDEX_STRIDE,
            "{time}: {near} {exact}"
        );
    }
}
