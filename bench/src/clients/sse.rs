//! SSE readers on raw TCP: one `GET`, then the `text/event-stream` body,
//! chunked or not, split into events at blank lines.
//!
//! A reader does what a browser's `EventSource` does when the server ends
//! its stream: it reconnects with `Last-Event-ID` (after a short delay,
//! bounded in count), so a slow-consumer drop shows up as a reconnect and
//! the replayed messages as late deliveries, not as silent loss.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{connect, Reading};
use crate::payload::{find, find_t0, now_us};

const READ_BUFFER: usize = 16 * 1024;
const MAX_RECONNECTS: u32 = 20;
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a reader subscribes: an address and the path with its query.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
}

/// An SSE response whose headers have arrived (the server has registered
/// the subscription), ready to be read.
#[derive(Debug)]
pub struct Stream {
    target: Target,
    n: usize,
    stream: TcpStream,
    body: Body,
    /// Body bytes read with the headers.
    leftover: Vec<u8>,
}

/// How the body is delimited.
#[derive(Debug)]
enum Body {
    UntilClose,
    Chunked(Dechunk),
}

impl Stream {
    /// Connects from source number `n` and waits for a `200` response.
    pub async fn open(target: &Target, n: usize, last_id: Option<&str>) -> anyhow::Result<Self> {
        let mut stream = connect(target.addr, n).await?;
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
            target.path, target.addr
        );
        if let Some(id) = last_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let (head, leftover) = tokio::time::timeout(HEADER_TIMEOUT, read_head(&mut stream))
            .await
            .context("no SSE response headers in time")??;
        let status_ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
        if !status_ok {
            bail!(
                "SSE request refused: {}",
                head.lines().next().unwrap_or_default()
            );
        }
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok(Self {
            target: target.clone(),
            n,
            stream,
            body: if chunked {
                Body::Chunked(Dechunk::default())
            } else {
                Body::UntilClose
            },
            leftover,
        })
    }

    /// Reads events until the server ends the stream, reconnecting with the
    /// last id (as `EventSource` does) up to a bound. Runs until aborted.
    pub async fn read(mut self, reading: Reading) {
        let recorder = reading.recorder.clone();
        let mut reconnects = 0;
        loop {
            let last_id = self.read_until_end(&reading).await;
            recorder
                .closed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if reconnects >= MAX_RECONNECTS {
                return;
            }
            reconnects += 1;
            tokio::time::sleep(RECONNECT_DELAY).await;
            match Self::open(&self.target, self.n, last_id.as_deref()).await {
                Ok(next) => {
                    recorder
                        .reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self = next;
                }
                Err(_) => {
                    recorder
                        .failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// Reads until end of stream; returns the last event id seen.
    async fn read_until_end(&mut self, reading: &Reading) -> Option<String> {
        let mut input = std::mem::take(&mut self.leftover);
        let mut events: Vec<u8> = Vec::new();
        let mut sent = Vec::new();
        let mut last_id = None;
        loop {
            let ended = match &mut self.body {
                Body::UntilClose => {
                    events.extend_from_slice(&input);
                    false
                }
                Body::Chunked(dechunk) => dechunk.feed(&input, &mut events),
            };
            let consumed = split_events(&events, &mut sent, &mut last_id);
            events.drain(..consumed);
            reading.recorder.record(now_us(), &sent, reading.timed());
            sent.clear();
            if ended {
                return last_id;
            }
            reading.pause().await;
            input.clear();
            input.reserve(READ_BUFFER);
            match self.stream.read_buf(&mut input).await {
                Ok(0) | Err(_) => return last_id,
                Ok(_) => {}
            }
        }
    }
}

/// Reads the response head; returns it and the body bytes read with it.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            bail!("connection closed before the response headers");
        }
        head.extend_from_slice(&buffer[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            let body = head.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&head).into_owned(), body));
        }
        if head.len() > 16 * 1024 {
            bail!("response headers too long");
        }
    }
}

/// Finds complete events (ended by a blank line) in `events`, pushing the
/// send time of each that carries one; returns the bytes consumed.
fn split_events(events: &[u8], sent: &mut Vec<u64>, last_id: &mut Option<String>) -> usize {
    let mut start = 0;
    let mut last_event = None;
    while let Some(end) = find(&events[start..], b"\n\n") {
        let event = &events[start..start + end];
        if let Some(t0) = find_t0(event) {
            sent.push(t0);
            last_event = Some(event);
        }
        start += end + 2;
    }
    if let Some(id) = last_event.and_then(event_id) {
        *last_id = Some(id);
    }
    start
}

/// The value of the event's `id:` field.
fn event_id(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("id:"))
        .map(|id| id.trim().to_owned())
}

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Debug, Default)]
struct Dechunk {
    state: ChunkState,
}

#[derive(Debug, Default)]
enum ChunkState {
    /// Reading the hex size line (extensions after `;` ignored).
    #[default]
    Size,
    SizeValue(usize, bool),
    Data(usize),
    /// Skipping the CR LF after a chunk's data.
    DataEnd,
    Done,
}

impl Dechunk {
    /// Appends the decoded bytes of `input` to `out`; true at the last chunk.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> bool {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => self.state = ChunkState::SizeValue(0, false),
                ChunkState::SizeValue(size, in_extension) => {
                    let byte = input[0];
                    input = &input[1..];
                    self.state = match byte {
                        b'\n' if size == 0 => ChunkState::Done,
                        b'\n' => ChunkState::Data(size),
                        b';' => ChunkState::SizeValue(size, true),
                        _ if in_extension => ChunkState::SizeValue(size, true),
                        _ => match (byte as char).to_digit(16) {
                            Some(d) => ChunkState::SizeValue(size * 16 + d as usize, false),
                            None => ChunkState::SizeValue(size, in_extension),
                        },
                    };
                }
                ChunkState::Data(remaining) => {
                    let take = remaining.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == remaining {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - take)
                    };
                }
                ChunkState::DataEnd => {
                    let byte = input[0];
                    input = &input[1..];
                    if byte == b'\n' {
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Done => return true,
            }
        }
        matches!(self.state, ChunkState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunked bodies decode across arbitrary read boundaries.
    #[test]
    fn dechunks_across_reads() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut dechunk = Dechunk::default();
            let mut out = Vec::new();
            let first = dechunk.feed(&wire[..split], &mut out);
            let second = dechunk.feed(&wire[split..], &mut out);
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(first || second);
        }
    }

    /// Events split at blank lines; the id of the last timed event is kept.
    #[test]
    fn splits_events_and_keeps_last_id() {
        let body = b"retry: 2000\n\nid: 1-1\nevent: message\ndata: {\"t0\":5}\n\nid: 1-2\ndata: {\"t0\":6}\n\nid: 1-3\nda";
        let (mut sent, mut id) = (Vec::new(), None);
        let consumed = split_events(body, &mut sent, &mut id);
        assert_eq!(sent, vec![5, 6]);
        assert_eq!(id.as_deref(), Some("1-2"));
        assert_eq!(&body[consumed..], b"id: 1-3\nda");
    }
}
