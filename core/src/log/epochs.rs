//! The epochs file: every epoch the log has had, with the position it
//! began at. A new epoch begins whenever positions may have been lost (the
//! log's tail was cut short); an id of an earlier epoch still names the
//! same message as long as its position is below where the next epoch
//! began.
//!
//! One line per epoch, `<epoch in hex> <first position>`, rewritten whole
//! (a temporary file, synced, then renamed over the old one).

use std::io::Write;
use std::path::Path;

use super::LogError;

pub const FILE: &str = "epochs";

/// Epochs kept; older ones are dropped (their ids become gaps), so the
/// file cannot grow with every power cut.
const MAX_EPOCHS: usize = 64;

/// One epoch: its id and the position it began at.
pub type Epoch = (u64, u64);

/// The epochs in `dir`, oldest first; empty if there is no file yet.
pub fn load(dir: &Path) -> Result<Vec<Epoch>, LogError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LogError::Io { file: path, source }),
    };
    let mut epochs = Vec::new();
    let mut offset = 0u64;
    for line in text.lines() {
        let parsed = line.split_once(' ').and_then(|(epoch, first)| {
            Some((u64::from_str_radix(epoch, 16).ok()?, first.parse().ok()?))
        });
        match parsed {
            Some(epoch) => epochs.push(epoch),
            None => {
                return Err(LogError::Damaged {
                    file: path,
                    offset,
                    what: format!("a line that is not `<epoch> <position>`: {line:.80}"),
                })
            }
        }
        offset += line.len() as u64 + 1;
    }
    Ok(epochs)
}

/// Begins a new epoch at position `first`, after those in `epochs`, and
/// writes the file; the new epoch's id is later than every earlier one.
pub fn begin(dir: &Path, epochs: &mut Vec<Epoch>, first: u64) -> Result<u64, LogError> {
    let last = epochs.last().map_or(0, |e| e.0);
    let epoch = crate::router::now_ms().max(last + 1);
    epochs.push((epoch, first));
    if epochs.len() > MAX_EPOCHS {
        epochs.drain(..epochs.len() - MAX_EPOCHS);
    }
    let mut text = String::new();
    for (epoch, first) in epochs.iter() {
        text.push_str(&format!("{epoch:x} {first}\n"));
    }
    let path = dir.join(FILE);
    let temporary = dir.join(format!("{FILE}.new"));
    let io = |file: &Path| {
        let file = file.to_path_buf();
        move |source| LogError::Io { file, source }
    };
    let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(text.as_bytes()).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    sync_dir(dir)?;
    Ok(epoch)
}

/// Makes a directory's entries (a new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| LogError::Dir {
            dir: dir.to_path_buf(),
            source,
        })
}

/// Where epoch `epoch` ended: the position the next one began at, or
/// `None` if it is the current one (or not one of these).
pub fn end_of(epochs: &[Epoch], epoch: u64) -> Option<Option<u64>> {
    let at = epochs.iter().position(|e| e.0 == epoch)?;
    Some(epochs.get(at + 1).map(|next| next.1))
}
