//! The two pumps of a connection: client to broker ([`up`]) and broker to
//! client ([`down`]). Each reads one side and writes the other, a batch at
//! a time: every complete packet of a read is decided on, and what passes
//! goes out in one write.
//!
//! What one pump must tell the other (the gate's acknowledgements, which go
//! to the side the other pump writes, in order with the peer's; the record
//! of a reduced SUBSCRIBE, needed when its SUBACK comes back) travels as a
//! [`Note`] through a bounded channel, sent before the packet it concerns
//! is forwarded. The receiving pump takes every note queued before it
//! decides on a read, so a note always arrives before the answer to its
//! packet. No lock is shared and neither pump waits on the other.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::acks::Entry;
use super::downstream::{self, Downstream};
use super::packet::{self, Frame, Version};
use super::session::{write_client, SessionError, V311_NOT_AUTHORIZED};
use super::upstream::{self, SubackPlan, Upstream, NOT_AUTHORIZED};

/// Notes waiting for the other pump, beyond the broker's in-flight window
/// (`mqtt.max_inflight`, added by the session). A note carries everything
/// one read produced. Notes with acknowledgements are bounded by the
/// in-flight windows (a delivery the client has not acknowledged holds the
/// broker's next one back); the rest of the room is for SUBACKs, which
/// only a client that floods SUBSCRIBEs without reading can exhaust.
pub const NOTES_MARGIN: usize = 64;

/// Bytes read at a time, at least.
pub const READ_CHUNK: usize = 4 * 1024;

/// Past this, a buffer a large packet grew is given back once empty, so an
/// idle connection holds a few KiB whatever it once carried.
const KEEP_BYTES: usize = 64 * 1024;

/// Empties `out`, giving back what a large batch made it grow to.
pub fn reset(out: &mut Vec<u8>) {
    out.clear();
    if out.capacity() > KEEP_BYTES {
        out.shrink_to(READ_CHUNK);
    }
}

/// What one pump tells the other, in the order it must be taken.
#[derive(Debug, Default)]
pub struct Note {
    /// What PUBLISHes and PUBRELs just forwarded or refused will be
    /// answered by.
    acks: Vec<Entry>,
    /// For the client: the gate's own SUBACKs.
    subacks_answered: Vec<u8>,
    /// For the client: reduced SUBSCRIBEs whose SUBACK needs merging.
    subacks_expected: Vec<(u16, SubackPlan)>,
    /// PINGREQs the gate sent the broker itself: their PINGRESPs are not
    /// the client's.
    gate_pings: u32,
}

impl Note {
    fn is_empty(&self) -> bool {
        self.acks.is_empty()
            && self.subacks_answered.is_empty()
            && self.subacks_expected.is_empty()
            && self.gate_pings == 0
    }
}

/// Reads until one whole packet is buffered; `None` if the stream ended
/// cleanly first.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, SessionError> {
    loop {
        if let Some(frame) = packet::frame(buf, max)? {
            return Ok(Some(frame));
        }
        if fill(reader, buf, max).await? == 0 {
            return Ok(None);
        }
    }
}

/// One read into `buf`, with room for the rest of the packet being read
/// (at most `max` plus its header), so a large packet takes few reads.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<usize, SessionError> {
    let missing = match packet::fixed_header(buf, max)? {
        Some(header) => header.len.saturating_sub(buf.len()),
        None => 0,
    };
    if buf.is_empty() && buf.capacity() > KEEP_BYTES {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    }
    buf.reserve(missing.max(READ_CHUNK));
    Ok(reader.read_buf(buf).await?)
}

/// Sends a note to the other pump. Full means that pump has a window's
/// worth of notes it has not taken: it is stuck writing to a peer that does
/// not read. Waiting here could close a cycle through that peer (each pump
/// waiting on the other); dropping the note would break the protocol.
/// Closing the connection is the one safe choice.
fn send(notes: &mpsc::Sender<Note>, note: Note, side: &'static str) -> Result<(), SessionError> {
    if note.is_empty() {
        return Ok(());
    }
    notes
        .try_send(note)
        .map_err(|_| SessionError::Overflow(side))
}

/// How the client-to-broker side ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpEnd {
    /// The client closed the connection.
    Closed,
    /// The client sent DISCONNECT (and the broker was sent it, or kept
    /// from it, as the will requires).
    Disconnected,
    /// The gate ends the connection, for this reason (the client was told
    /// where its protocol can say so).
    Refused(&'static str),
}

/// Client to broker. `buf` may already hold what followed the CONNECT.
/// Returns how it ended, with the broker's write half, still open, for
/// the caller to close when it sees fit.
pub async fn up<R, W>(
    mut state: Upstream,
    mut client: R,
    mut buf: BytesMut,
    mut broker: W,
    mut notes_in: mpsc::Receiver<Note>,
    notes_out: mpsc::Sender<Note>,
    max: usize,
) -> Result<(UpEnd, W), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut batch = upstream::Batch::default();
    let mut out = Vec::new();
    let mut ping = state.gate_pings().map(|every| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        reset(&mut out);
        // Bytes that arrived with the CONNECT are decided on before reading.
        if packet::frame(&buf, max)?.is_none() {
            tokio::select! {
                biased;
                Some(note) = notes_in.recv() => {
                    take_up(&mut state, note, &mut out)?;
                    broker.write_all(&out).await?;
                    continue;
                }
                read = fill(&mut client, &mut buf, max) => {
                    if read? == 0 {
                        return Ok((UpEnd::Closed, broker));
                    }
                }
                () = next_tick(&mut ping) => {
                    let note = Note { gate_pings: 1, ..Note::default() };
                    send(&notes_out, note, "client")?;
                    broker.write_all(&PINGREQ).await?;
                    continue;
                }
            }
        }
        // Notes queued before this read concern deliveries the client may
        // be acknowledging in it.
        while let Ok(note) = notes_in.try_recv() {
            take_up(&mut state, note, &mut out)?;
        }
        batch.clear();
        while let Some(frame) = packet::frame(&buf, max)? {
            state.packet(&buf, frame, &mut batch)?;
            buf.advance(frame.len);
            if batch.end {
                break;
            }
        }
        // Sent before the batch is forwarded, so it is there before the
        // broker's answers.
        let note = Note {
            acks: std::mem::take(&mut batch.acks),
            subacks_answered: std::mem::take(&mut batch.to_client),
            subacks_expected: std::mem::take(&mut batch.subacks),
            gate_pings: 0,
        };
        send(&notes_out, note, "client")?;
        out.extend_from_slice(&batch.to_broker);
        if !out.is_empty() {
            broker.write_all(&out).await?;
        }
        if batch.end {
            let end = batch.refusal.map_or(UpEnd::Disconnected, UpEnd::Refused);
            return Ok((end, broker));
        }
    }
}

/// A PINGREQ, as the gate sends it for a client with keep-alive 0.
const PINGREQ: [u8; 2] = [0xc0, 0];

/// The next tick of the gate's own pings; never, without them.
async fn next_tick(ping: &mut Option<tokio::time::Interval>) {
    match ping {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn take_up(state: &mut Upstream, note: Note, out: &mut Vec<u8>) -> Result<(), SessionError> {
    for entry in note.acks {
        state.owe(entry, out)?;
    }
    Ok(())
}

/// Broker to client. `buf` may already hold the broker's first packets.
pub async fn down<R, W>(
    mut state: Downstream,
    mut broker: R,
    mut buf: BytesMut,
    mut client: W,
    mut notes_in: mpsc::Receiver<Note>,
    notes_out: mpsc::Sender<Note>,
    max: usize,
) -> Result<(), SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut batch = downstream::Batch::default();
    let mut out = Vec::new();
    loop {
        reset(&mut out);
        // Bytes already read (the CONNACK) are handled before reading more.
        let read = if packet::frame(&buf, max)?.is_some() {
            None
        } else {
            tokio::select! {
                biased;
                Some(note) = notes_in.recv() => {
                    take_down(&mut state, note, &mut out)?;
                    None
                }
                read = fill(&mut broker, &mut buf, max) => Some(read?),
            }
        };
        if read == Some(0) {
            if !state.connack_seen() {
                // rumqttd 0.20 refuses a CONNECT (a bad password, too many
                // connections) by closing without a CONNACK: say so.
                let code = match state.version() {
                    Version::V5 => NOT_AUTHORIZED,
                    Version::V311 => V311_NOT_AUTHORIZED,
                };
                let _ = write_client(&mut client, &packet::connack_refusal(state.version(), code))
                    .await;
            }
            return Ok(());
        }
        // Notes queued before this read completed (a SUBACK record, the
        // acknowledgements owed for the client's publishes) come first.
        while let Ok(note) = notes_in.try_recv() {
            take_down(&mut state, note, &mut out)?;
        }
        batch.clear();
        while let Some(frame) = packet::frame(&buf, max)? {
            state.packet(&buf, frame, &mut batch)?;
            buf.advance(frame.len);
        }
        let note = Note {
            acks: std::mem::take(&mut batch.acks),
            ..Note::default()
        };
        send(&notes_out, note, "broker")?;
        out.extend_from_slice(&batch.to_client);
        if !out.is_empty() {
            write_client(&mut client, &out).await?;
        }
    }
}

fn take_down(state: &mut Downstream, note: Note, out: &mut Vec<u8>) -> Result<(), SessionError> {
    for (id, plan) in note.subacks_expected {
        state.expect_suback(id, plan)?;
    }
    out.extend_from_slice(&note.subacks_answered);
    state.expect_gate_pings(note.gate_pings);
    for entry in note.acks {
        state.owe(entry, out)?;
    }
    Ok(())
}
