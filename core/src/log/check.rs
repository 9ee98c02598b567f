//! `tidewater log check` and `tidewater log repair`: what a disk log's
//! files hold, where they are damaged, and cutting them back to what comes
//! before the damage.
//!
//! `check` only reads, so it may run beside a bridge using the directory
//! (it then reports on what was written so far). `repair` takes the
//! directory's lock, so never while a bridge uses it; it keeps every record
//! before the first damage, removes what follows, and begins a new epoch,
//! so ids issued for what was removed are announced as a gap.

use std::fmt;
use std::path::{Path, PathBuf};

use super::disk::{RETAINED, SEGMENTS};
use super::epochs;
use super::segment::{self, End, Segment};
use super::LogError;

/// What a check found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    pub file: PathBuf,
    pub records: u64,
    pub bytes: u64,
    /// Where the file stops being records, and why; `None` when whole.
    pub damage: Option<(u64, String)>,
}

/// What a check found in a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub dir: PathBuf,
    pub epochs: Vec<(u64, u64)>,
    pub first: Option<u64>,
    pub next: Option<u64>,
    pub segments: Vec<FileReport>,
    pub retained: FileReport,
    pub retained_values: usize,
}

impl Report {
    /// Whether every file is whole.
    pub fn is_whole(&self) -> bool {
        self.segments.iter().all(|s| s.damage.is_none()) && self.retained.damage.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "log directory  {}", self.dir.display())?;
        match self.epochs.last() {
            Some((epoch, first)) => writeln!(
                f,
                "epoch          {epoch:x} (since position {first}; {} in all)",
                self.epochs.len()
            )?,
            None => writeln!(f, "epoch          none yet")?,
        }
        match (self.first, self.next) {
            (Some(first), Some(next)) => writeln!(
                f,
                "positions      {first} to {} ({} records)",
                next - 1,
                next - first
            )?,
            _ => writeln!(f, "positions      none")?,
        }
        writeln!(f, "retained       {} values", self.retained_values)?;
        for file in self.segments.iter().chain([&self.retained]) {
            let name = file.file.file_name().unwrap_or_default().to_string_lossy();
            match &file.damage {
                None => writeln!(
                    f,
                    "  ok       {name}: {} records, {} bytes",
                    file.records, file.bytes
                )?,
                Some((offset, what)) => writeln!(
                    f,
                    "  DAMAGED  {name}: {} records, then at byte {offset}: {what}",
                    file.records
                )?,
            }
        }
        if self.is_whole() {
            write!(f, "every file is whole")
        } else {
            write!(
                f,
                "damaged: `tidewater log repair` keeps everything before the damage"
            )
        }
    }
}

/// Reads every file of the log in `dir` and says what it holds.
pub fn check(dir: &Path) -> Result<Report, LogError> {
    if !dir.is_dir() {
        return Err(LogError::Dir {
            dir: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let epochs = epochs::load(dir)?;
    let mut segments = Vec::new();
    let mut first = None;
    let mut next: Option<u64> = None;
    for start in segment::list(&dir.join(SEGMENTS))? {
        let path = dir.join(SEGMENTS).join(Segment::file_name(start));
        let (scanned, end) = segment::scan(&path, start)?;
        let mut damage = describe(end);
        if damage.is_none() {
            if let Some(expected) = next.filter(|&n| n != start) {
                damage = Some((0, format!("starts at position {start}, not {expected}")));
            }
        }
        first.get_or_insert(start);
        next = Some(scanned.next);
        segments.push(FileReport {
            file: path,
            records: scanned.next - scanned.first,
            bytes: scanned.len,
            damage,
        });
    }
    let (retained, retained_values) = check_retained(&dir.join(RETAINED))?;
    Ok(Report {
        dir: dir.to_path_buf(),
        epochs,
        first,
        next,
        segments,
        retained,
        retained_values,
    })
}

/// Cuts the log in `dir` back to what comes before its first damage and
/// begins a new epoch; returns the report from before and what was
/// removed, one line per file.
pub fn repair(dir: &Path) -> Result<(Report, Vec<String>), LogError> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(super::disk::LOCK))
        .map_err(|source| LogError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
    if lock.try_lock().is_err() {
        return Err(LogError::Locked(dir.to_path_buf()));
    }
    let report = check(dir)?;
    let mut done = Vec::new();
    let mut cut = None;
    for file in &report.segments {
        if cut.is_some() {
            remove(&file.file)?;
            done.push(format!(
                "removed {} ({} records after the damage)",
                file.file.display(),
                file.records
            ));
            continue;
        }
        if let Some((offset, what)) = &file.damage {
            segment::truncate(&file.file, *offset)?;
            done.push(format!(
                "cut {} at byte {offset} ({what})",
                file.file.display()
            ));
            cut = Some(());
        }
    }
    if let Some((offset, what)) = &report.retained.damage {
        segment::truncate(&report.retained.file, *offset)?;
        done.push(format!(
            "cut {} at byte {offset} ({what})",
            report.retained.file.display()
        ));
    }
    if !done.is_empty() {
        let after = check(dir)?;
        let mut epochs = after.epochs.clone();
        let next = after.next.unwrap_or(1);
        let epoch = epochs::begin(dir, &mut epochs, next)?;
        done.push(format!(
            "began epoch {epoch:x} at position {next}: ids after the cut are a gap"
        ));
    }
    Ok((report, done))
}

fn describe(end: End) -> Option<(u64, String)> {
    match end {
        End::Clean => None,
        End::Torn(offset) => Some((offset, "a record cut short (a write cut off)".into())),
        End::Damaged(offset, what) => Some((offset, what.into())),
    }
}

fn check_retained(path: &Path) -> Result<(FileReport, usize), LogError> {
    let mut report = FileReport {
        file: path.to_path_buf(),
        records: 0,
        bytes: 0,
        damage: None,
    };
    if !path.exists() {
        return Ok((report, 0));
    }
    let mut values = std::collections::HashMap::new();
    let mut reader = segment::Reader::open(path, 0)?;
    loop {
        match reader.next()? {
            Ok((record, offset)) => {
                report.records += 1;
                report.bytes = offset + record.encoded_len() as u64;
                super::retained::apply_record(&mut values, record);
            }
            Err(end) => {
                report.damage = describe(end);
                break;
            }
        }
    }
    Ok((report, values.len()))
}

fn remove(path: &Path) -> Result<(), LogError> {
    std::fs::remove_file(path).map_err(|source| LogError::Io {
        file: path.to_path_buf(),
        source,
    })
}
