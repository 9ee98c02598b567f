//! One segment file of the disk log: records of consecutive positions,
//! named after the first (`00000000000000000001.seg`), with a sparse index
//! kept in memory so a read from a position starts near it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::record::{self, Decoded, Record};
use super::LogError;

/// One index entry per this many records: a read skips at most this many
/// before its first record, and the index costs 24 bytes per stride.
pub const INDEX_STRIDE: u64 = 64;

/// Bytes read from a file at a time.
const READ_CHUNK: usize = 256 * 1024;

/// A point in a segment a read can start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub position: u64,
    pub offset: u64,
    pub time_ms: u64,
}

#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    /// Its first position (the one in its name).
    pub first: u64,
    /// The position after its last record.
    pub next: u64,
    /// Bytes of whole records in it.
    pub len: u64,
    /// When its newest record was taken (0 when it has none).
    pub last_time_ms: u64,
    pub index: Vec<Mark>,
}

impl Segment {
    pub fn file_name(first: u64) -> String {
        format!("{first:020}.seg")
    }

    /// The first position a segment file's name says, if it is one.
    pub fn parse_name(name: &str) -> Option<u64> {
        let digits = name.strip_suffix(".seg")?;
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    }

    pub fn empty(dir: &Path, first: u64) -> Self {
        Self {
            path: dir.join(Self::file_name(first)),
            first,
            next: first,
            len: 0,
            last_time_ms: 0,
            index: Vec::new(),
        }
    }

    /// Notes a record written at `offset`.
    pub fn note(&mut self, position: u64, offset: u64, time_ms: u64, len: u64) {
        if (position - self.first).is_multiple_of(INDEX_STRIDE) {
            self.index.push(Mark {
                position,
                offset,
                time_ms,
            });
        }
        self.next = position + 1;
        self.len = offset + len;
        self.last_time_ms = time_ms;
    }

    /// Where a read of `position` starts: the last mark at or before it.
    pub fn start_for(&self, position: u64) -> Mark {
        let at = self.index.partition_point(|m| m.position <= position);
        self.index.get(at.wrapping_sub(1)).copied().unwrap_or(Mark {
            position: self.first,
            offset: 0,
            time_ms: 0,
        })
    }

    /// Where a search for the first record at or after `time_ms` starts.
    pub fn start_for_time(&self, time_ms: u64) -> Mark {
        let at = self.index.partition_point(|m| m.time_ms < time_ms);
        self.index.get(at.wrapping_sub(1)).copied().unwrap_or(Mark {
            position: self.first,
            offset: 0,
            time_ms: 0,
        })
    }
}

/// How a scan of a whole file ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// At the end of the file, on a record boundary.
    Clean,
    /// The file ends inside a record, or with zeros where one should start
    /// (a write cut short by a power cut), at this offset.
    Torn(u64),
    /// Bytes that are no record, at this offset, followed by more data.
    Damaged(u64, &'static str),
}

/// Reads the records of one file in order, from an offset.
pub struct Reader {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// Where `buf[at]` is in the file.
    offset: u64,
    at: usize,
    eof: bool,
}

impl Reader {
    pub fn open(path: &Path, offset: u64) -> Result<Self, LogError> {
        use std::io::Seek;
        let io = |source| LogError::Io {
            file: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        file.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            buf: Vec::new(),
            offset,
            at: 0,
            eof: false,
        })
    }

    /// The next record and the offset it starts at; `Ok(Err(end))` once
    /// there is none.
    pub fn next(&mut self) -> Result<Result<(Record, u64), End>, LogError> {
        loop {
            match record::decode(&self.buf[self.at..]) {
                Decoded::Record(record, len) => {
                    let offset = self.offset;
                    self.at += len;
                    self.offset += len as u64;
                    return Ok(Ok((record, offset)));
                }
                Decoded::Damaged(what) => {
                    // A write cut short leaves the last record incomplete
                    // and zeros (or nothing) after it: a torn tail, not
                    // damage. Anything else after it is damage.
                    self.read_to_end()?;
                    let rest = &self.buf[self.at..];
                    let claimed = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
                    let frame = record::FRAME_HEADER.saturating_add(claimed as usize);
                    let after = if frame <= record::FRAME_HEADER + record::MAX_BODY {
                        rest.get(frame..).unwrap_or(&[])
                    } else {
                        rest
                    };
                    return Ok(Err(if after.iter().all(|&b| b == 0) {
                        End::Torn(self.offset)
                    } else {
                        End::Damaged(self.offset, what)
                    }));
                }
                Decoded::Short if self.eof => {
                    let rest = &self.buf[self.at..];
                    return Ok(Err(if rest.is_empty() {
                        End::Clean
                    } else {
                        End::Torn(self.offset)
                    }));
                }
                Decoded::Short => self.fill()?,
            }
        }
    }

    fn fill(&mut self) -> Result<(), LogError> {
        self.buf.drain(..self.at);
        self.at = 0;
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let read = self
            .file
            .read(&mut self.buf[start..])
            .map_err(|source| LogError::Io {
                file: self.path.clone(),
                source,
            })?;
        self.buf.truncate(start + read);
        self.eof = read == 0;
        Ok(())
    }

    fn read_to_end(&mut self) -> Result<(), LogError> {
        while !self.eof {
            self.fill()?;
        }
        Ok(())
    }
}

/// Scans a whole segment file: its records' positions must follow on
/// from `first`. Returns the segment and how the file ended.
pub fn scan(path: &Path, first: u64) -> Result<(Segment, End), LogError> {
    let mut segment = Segment {
        path: path.to_path_buf(),
        ..Segment::empty(path.parent().unwrap_or(Path::new(".")), first)
    };
    let mut reader = Reader::open(path, 0)?;
    loop {
        match reader.next()? {
            Ok((record, offset)) => {
                if record.position != segment.next {
                    return Ok((segment, End::Damaged(offset, "a record out of order")));
                }
                let len = record.encoded_len() as u64;
                segment.note(record.position, offset, record.time_ms, len);
            }
            Err(end) => return Ok((segment, end)),
        }
    }
}

/// The first positions of the segment files in `dir`, in order (none if
/// there is no such directory yet).
pub fn list(dir: &Path) -> Result<Vec<u64>, LogError> {
    let dir_error = |source| LogError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(dir_error(source)),
    };
    let mut firsts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(dir_error)?;
        if let Some(first) = entry.file_name().to_str().and_then(Segment::parse_name) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Cuts the file at `path` to `len` bytes, durably.
pub fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let io = |source| LogError::Io {
        file: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    file.set_len(len).map_err(io)?;
    file.sync_all().map_err(io)
}
