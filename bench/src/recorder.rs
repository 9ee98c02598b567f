//! Where readers report what they received: counts and an HDR latency
//! histogram for one measurement window at a time.
//!
//! The generator stamps each message with its send time; a message counts
//! toward a window only if it was sent inside it, so "delivered ÷ offered"
//! compares like with like, and late arrivals after the window closes still
//! count while the run drains. Readers record a whole read's worth of
//! messages under one lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Latencies up to 60 s, three significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Debug)]
pub struct Recorder {
    window_start: AtomicU64,
    window_end: AtomicU64,
    /// Messages sent inside the window and received (by anyone).
    received: AtomicU64,
    /// Streams the server ended (slow-consumer drops, errors) and readers
    /// that reconnected afterwards.
    pub closed: AtomicU64,
    pub reconnects: AtomicU64,
    /// Connections that failed to open or subscribe.
    pub failed: AtomicU64,
    /// Latencies of messages sent in the first and the second half of the
    /// window: a server falling behind shows as the second half's median
    /// growing above the first's.
    histogram: Mutex<Halves>,
    half_at: AtomicU64,
}

#[derive(Debug)]
struct Halves {
    early: Histogram<u64>,
    late: Histogram<u64>,
}

/// What one window produced.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowStats {
    pub received: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Medians of the window's first and second half.
    pub early_p50_us: u64,
    pub late_p50_us: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            // Closed until the first window opens: nothing counts.
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            received: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            histogram: Mutex::new(Halves {
                early: new_histogram(),
                late: new_histogram(),
            }),
            half_at: AtomicU64::new(u64::MAX),
        }
    }

    /// Starts counting messages sent from `start_us` on, forgetting the
    /// previous window.
    /// Starts counting messages sent from `start_us` on, forgetting the
    /// previous window; `half_us` later begins its second half.
    pub fn open_halves(&self, start_us: u64, half_us: u64) {
        self.open(start_us);
        self.half_at
            .store(start_us.saturating_add(half_us), Ordering::Relaxed);
    }

    pub fn open(&self, start_us: u64) {
        let mut histogram = self.lock();
        histogram.early.reset();
        histogram.late.reset();
        self.half_at.store(u64::MAX, Ordering::Relaxed);
        self.received.store(0, Ordering::Relaxed);
        self.window_end.store(u64::MAX, Ordering::Relaxed);
        self.window_start.store(start_us, Ordering::Relaxed);
    }

    /// Messages sent from `end_us` on no longer count.
    pub fn close(&self, end_us: u64) {
        self.window_end.store(end_us, Ordering::Relaxed);
    }

    /// Records messages received at `now_us` that were sent at each `t0`;
    /// their latency too if `timed`.
    pub fn record(&self, now_us: u64, sent: &[u64], timed: bool) {
        if sent.is_empty() {
            return;
        }
        let start = self.window_start.load(Ordering::Relaxed);
        let end = self.window_end.load(Ordering::Relaxed);
        if !timed {
            let counted = sent.iter().filter(|t0| (start..end).contains(*t0)).count();
            self.received.fetch_add(counted as u64, Ordering::Relaxed);
            return;
        }
        let half_at = self.half_at.load(Ordering::Relaxed);
        let mut counted = 0;
        let mut histogram = self.lock();
        for &t0 in sent.iter().filter(|t0| (start..end).contains(*t0)) {
            counted += 1;
            let latency = now_us.saturating_sub(t0).clamp(1, MAX_LATENCY_US);
            // Clamped into the histogram's range, so recording cannot fail.
            let half = if t0 < half_at {
                &mut histogram.early
            } else {
                &mut histogram.late
            };
            let _ = half.record(latency);
        }
        drop(histogram);
        self.received.fetch_add(counted, Ordering::Relaxed);
    }

    /// The current window's figures.
    pub fn stats(&self) -> WindowStats {
        let halves = self.lock();
        let mut histogram = halves.early.clone();
        // Same bounds, so adding cannot fail.
        let _ = histogram.add(&halves.late);
        WindowStats {
            received: self.received.load(Ordering::Relaxed),
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            early_p50_us: halves.early.value_at_quantile(0.50),
            late_p50_us: halves.late.value_at_quantile(0.50),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Halves> {
        self.histogram
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant, valid bounds")
}
