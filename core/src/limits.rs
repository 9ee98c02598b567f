//! Publish rates: a token bucket per web client, so that one client cannot
//! fill the broker's ingress queue for everyone else, and one per MQTT
//! connection of the gate (`limits.mqtt_publish_rate`).
//!
//! A bucket holds up to `burst` tokens and gains `rate` per second; each
//! publish takes one, and a publish that finds none is refused with the
//! time until the next token. A WebSocket session owns its bucket; HTTP
//! clients share a bounded map keyed by user (or by address when
//! anonymous), pruned of buckets that have refilled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// HTTP clients tracked at once; past this, buckets that have refilled are
/// dropped (they hold no state worth keeping), and if none has, the one
/// heard from longest ago.
const MAX_TRACKED: usize = 65_536;

/// One client's publish allowance.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket for web clients; `None` when `config` turns the
    /// limit off.
    pub fn new(config: &LimitsConfig, now: Instant) -> Option<Self> {
        Self::with_rate(config.publish_rate, config.publish_burst, now)
    }

    /// A full bucket of `burst` tokens gaining `rate` a second; `None` when
    /// `rate` is 0 (unlimited).
    pub fn with_rate(rate: u32, burst: u32, now: Instant) -> Option<Self> {
        (rate > 0).then(|| {
            let burst = f64::from(burst.max(1));
            Self {
                rate: f64::from(rate),
                burst,
                tokens: burst,
                updated: now,
            }
        })
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// Whether the bucket would be full by `now`: it can be forgotten.
    fn refilled(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Buckets for clients that come and go between requests (HTTP publish).
#[derive(Debug)]
pub struct RateLimiter {
    config: LimitsConfig,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    pub fn new(config: LimitsConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `client`'s bucket, or says how long to wait.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let Some(fresh) = TokenBucket::new(&self.config, now) else {
            return Ok(());
        };
        // Plain data behind the lock: a panic elsewhere leaves it usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(client) {
            buckets.retain(|_, bucket| !bucket.refilled(now));
            // Every tracked client is still being held back: forget the one
            // heard from longest ago, never everyone's limits at once (a
            // flood of new addresses would otherwise reset them all).
            if buckets.len() >= MAX_TRACKED {
                let oldest = buckets
                    .iter()
                    .min_by_key(|(_, bucket)| bucket.updated)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    buckets.remove(&oldest);
                }
            }
        }
        buckets.entry(client.to_owned()).or_insert(fresh).take(now)
    }
}

/// How long to tell a client to wait, in whole seconds (`Retry-After`).
pub fn retry_after_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_millis().div_ceil(1_000).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(rate: u32, burst: u32) -> LimitsConfig {
        LimitsConfig {
            publish_rate: rate,
            publish_burst: burst,
            ..LimitsConfig::default()
        }
    }

    /// A full bucket allows a burst, then one publish per 1/rate seconds.
    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&config(10, 3), start).expect("limited");
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
        assert!(bucket.take(start + Duration::from_millis(100)).is_err());
    }

    /// A rate of 0 turns the limit off.
    #[test]
    fn zero_rate_is_unlimited() {
        assert!(TokenBucket::new(&config(0, 5), Instant::now()).is_none());
        let limiter = RateLimiter::new(config(0, 1));
        for _ in 0..1_000 {
            assert_eq!(limiter.check("a"), Ok(()));
        }
    }

    /// Clients have separate buckets.
    #[test]
    fn clients_are_separate() {
        let limiter = RateLimiter::new(config(1, 1));
        assert_eq!(limiter.check("a"), Ok(()));
        assert!(limiter.check("a").is_err());
        assert_eq!(limiter.check("b"), Ok(()));
    }

    /// Waits round up to whole seconds, never zero.
    /// A flood of new clients cannot reset a throttled client's bucket:
    /// when the table is full, the client heard from longest ago goes.
    #[test]
    fn a_full_table_forgets_only_the_oldest() {
        let limiter = RateLimiter::new(config(1, 1));
        for i in 0..MAX_TRACKED - 1 {
            limiter.check(&format!("flood-{i}")).expect("first token");
        }
        limiter.check("victim").expect("first token");
        assert!(limiter.check("victim").is_err(), "throttled");
        limiter.check("newcomer").expect("room is made");
        assert!(limiter.check("victim").is_err(), "still throttled");
        assert!(limiter.buckets.lock().expect("lock").len() <= MAX_TRACKED);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
    }

    proptest! {
        /// Over any run of requests, a bucket allows at most its burst plus
        /// its rate times the time elapsed.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 1u32..50,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0u64..200, 1..200),
        ) {
            let start = Instant::now();
            let mut bucket = TokenBucket::new(&config(rate, burst), start).expect("limited");
            let mut now = start;
            let mut allowed = 0u32;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if bucket.take(now).is_ok() {
                    allowed += 1;
                }
            }
            let elapsed = now.duration_since(start).as_secs_f64();
            prop_assert!(f64::from(allowed) <= f64::from(burst) + elapsed * f64::from(rate) + 1e-6);
        }
    }
}
