//! One SSE response body: a `retry:` line, then the subscription's
//! deliveries, with heartbeat comments while idle, until the client goes,
//! the subscription ends, or the bridge shuts down.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::frame::{self, Format};
use crate::config::SseConfig;
use crate::http::AppState;
use crate::router::{Delivery, Subscription};
use crate::stats::Stats;

/// Deliveries joined into one write when several are ready at once.
const MAX_BATCH_MESSAGES: usize = 64;
const MAX_BATCH_BYTES: usize = 64 * 1024;

pub struct SseStream {
    subscription: Subscription,
    format: Format,
    heartbeat: Duration,
    /// Fires at the earliest moment a heartbeat may be due; moved on
    /// lazily when it fires, not on every write. One timer and one
    /// cancellation wait for the life of the stream, instead of a new
    /// registration of each per write: at hundreds of thousands of
    /// deliveries a second that churn is measurable.
    heartbeat_timer: Pin<Box<Sleep>>,
    last_write: Instant,
    first: Option<Bytes>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Fires when the client's token stops being accepted; the stream ends
    /// then, and the browser reconnects with a fresh one.
    expiry: Option<Pin<Box<Sleep>>>,
    open: OpenStream,
    /// The stream's place under `sse.max_streams`, freed when it ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("filters", &self.subscription.filters())
            .field("format", &self.format)
            .finish()
    }
}

/// Counts the stream as open for as long as it lives.
struct OpenStream(Arc<Stats>);

impl OpenStream {
    fn new(stats: Arc<Stats>) -> Self {
        Stats::incr(&stats.sse_streams_opened);
        Stats::incr(&stats.sse_streams_open);
        Self(stats)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        Stats::decr(&self.0.sse_streams_open);
    }
}

impl SseStream {
    pub fn new(
        subscription: Subscription,
        format: Format,
        config: &SseConfig,
        state: &AppState,
        valid_until: Option<std::time::Instant>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        let heartbeat = Duration::from_secs(config.heartbeat_secs);
        let now = Instant::now();
        Self {
            subscription,
            format,
            heartbeat,
            heartbeat_timer: Box::pin(tokio::time::sleep_until(now + heartbeat)),
            last_write: now,
            first: Some(frame::retry(config.retry_ms)),
            cancelled: Box::pin(state.cancel.clone().cancelled_owned()),
            expiry: valid_until
                .map(|deadline| Box::pin(tokio::time::sleep_until(Instant::from_std(deadline)))),
            open: OpenStream::new(state.services.stats.clone()),
            _slot: slot,
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
        futures_util::stream::unfold(self, |mut this| async move {
            let chunk = this.next_chunk().await?;
            Some((Ok(chunk), this))
        })
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            self.last_write = Instant::now();
            return Some(first);
        }
        loop {
            tokio::select! {
                biased;
                () = &mut self.cancelled => return None,
                () = expired(&mut self.expiry) => return None,
                delivery = self.subscription.next() => {
                    // None: the router ended the subscription (its queue was
                    // full); ending the response makes the browser reconnect
                    // and replay.
                    let first = self.encode(delivery?);
                    self.last_write = Instant::now();
                    return Some(self.batch(first));
                }
                () = &mut self.heartbeat_timer => {
                    let due = self.last_write + self.heartbeat;
                    let now = Instant::now();
                    if due <= now {
                        self.last_write = now;
                        self.heartbeat_timer.as_mut().reset(now + self.heartbeat);
                        return Some(Bytes::from_static(frame::HEARTBEAT));
                    }
                    // Something was written since the timer was set.
                    self.heartbeat_timer.as_mut().reset(due);
                }
            }
        }
    }

    /// Joins whatever else is ready into the same write, so a burst costs one
    /// write per stream instead of one per message.
    fn batch(&mut self, first: Bytes) -> Bytes {
        let Some(second) = self.subscription.try_next() else {
            return first;
        };
        let mut buffer = BytesMut::with_capacity(first.len() * 4);
        buffer.extend_from_slice(&first);
        buffer.extend_from_slice(&self.encode(second));
        let mut count = 2;
        while count < MAX_BATCH_MESSAGES && buffer.len() < MAX_BATCH_BYTES {
            let Some(next) = self.subscription.try_next() else {
                break;
            };
            buffer.extend_from_slice(&self.encode(next));
            count += 1;
        }
        buffer.freeze()
    }

    /// The frame for a delivery just taken from the subscription, counted,
    /// and timed if it was live.
    fn encode(&self, delivery: Delivery) -> Bytes {
        match delivery {
            Delivery::Message(message) => {
                let stats = &self.open.0;
                Stats::incr(&stats.sse_messages_out);
                if self.subscription.last_was_live() {
                    stats.latency_sse.observe(message.received.elapsed());
                }
                frame::message(&message, self.format)
            }
            Delivery::Gap { after } => frame::gap(after),
        }
    }
}

/// Completes when the token's validity ends; never without one.
async fn expired(expiry: &mut Option<Pin<Box<Sleep>>>) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
