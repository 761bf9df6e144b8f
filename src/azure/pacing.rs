//! Client-side pacing: a token bucket per subscription and operation type, mirroring ARM's own
//! (../shared/azure-facts.md §A.7: reads 250 + 25/s, writes 200 + 10/s, deletes 200 + 10/s). keyless
//! waits for a token before each ARM call, so a burst (a resync of many accounts) is spread out
//! instead of provoking 429s that would slow every other caller of the same subscription.
//!
//! ARM reports what is left in its bucket (`x-ms-ratelimit-remaining-subscription-*`). That bucket is
//! shared with every other client of the same principal, so when ARM says fewer tokens are left than
//! ours holds, ours is lowered to match.
//!
//! keyless leaves a token of each bucket unused (`reserve`). Paced exactly at ARM's rate, ARM's
//! bucket is as empty as ours when each request arrives, so a request that arrives a few
//! milliseconds closer to the one before than it was sent (a timer firing late, a connection
//! slower than the next) finds less than a token and is throttled: the controller bench provoked
//! one 429 in 2 of 9 10,000-grant runs. With one token held back, ARM's bucket keeps one
//! too, which absorbs a whole refill interval of such jitter (100 ms at 10 writes a second), for
//! the cost of one request's worth of burst.
//!
//! Time comes from `tokio::time`, so tests drive it with a paused clock, never the wall clock.

use reqwest::header::HeaderMap;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// The three operation types ARM throttles separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationClass {
    Read,
    Write,
    Delete,
}

impl OperationClass {
    /// The suffix of ARM's `x-ms-ratelimit-remaining-subscription-*` header for this class.
    pub const fn header(self) -> &'static str {
        match self {
            OperationClass::Read => "x-ms-ratelimit-remaining-subscription-reads",
            OperationClass::Write => "x-ms-ratelimit-remaining-subscription-writes",
            OperationClass::Delete => "x-ms-ratelimit-remaining-subscription-deletes",
        }
    }
}

/// One bucket's size and refill rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketLimits {
    pub capacity: u32,
    pub refill_per_second: f64,
}

/// The buckets' sizes; the defaults are ARM's documented per-subscription limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PacingConfig {
    pub reads: BucketLimits,
    pub writes: BucketLimits,
    pub deletes: BucketLimits,
    /// Tokens of each bucket keyless never takes (see the module's documentation); at most the
    /// capacity less one, so a bucket always admits requests.
    pub reserve: u32,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            reads: BucketLimits {
                capacity: 250,
                refill_per_second: 25.0,
            },
            writes: BucketLimits {
                capacity: 200,
                refill_per_second: 10.0,
            },
            deletes: BucketLimits {
                capacity: 200,
                refill_per_second: 10.0,
            },
            reserve: 1,
        }
    }
}

impl PacingConfig {
    fn limits(&self, class: OperationClass) -> BucketLimits {
        match class {
            OperationClass::Read => self.reads,
            OperationClass::Write => self.writes,
            OperationClass::Delete => self.deletes,
        }
    }
}

/// What ARM last reported as remaining in its buckets for one subscription (`None` = not seen yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitRemaining {
    pub reads: Option<u64>,
    pub writes: Option<u64>,
    pub deletes: Option<u64>,
}

#[derive(Debug)]
struct Bucket {
    limits: BucketLimits,
    /// Tokens left untaken: a request goes when `1 + reserve` are there.
    reserve: f64,
    tokens: f64,
    updated: Instant,
    /// Closed by a 429 until this instant: ARM's Retry-After for the whole bucket.
    closed_until: Option<Instant>,
}

impl Bucket {
    fn full(limits: BucketLimits, reserve: u32, now: Instant) -> Bucket {
        Bucket {
            limits,
            reserve: f64::from(reserve.min(limits.capacity.saturating_sub(1))),
            tokens: f64::from(limits.capacity),
            updated: now,
            closed_until: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limits.refill_per_second)
            .min(f64::from(self.limits.capacity));
        self.updated = now;
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if let Some(until) = self.closed_until {
            if until > now {
                return Err(until - now);
            }
            self.closed_until = None;
        }
        self.refill(now);
        let needed = 1.0 + self.reserve;
        if self.tokens >= needed {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.limits.refill_per_second <= 0.0 {
            // A bucket that never refills would block forever; one second keeps a caller polling
            // while ARM's remaining-count headers may still raise it.
            return Err(Duration::from_secs(1));
        }
        let missing = needed - self.tokens;
        Err(Duration::from_secs_f64(
            missing / self.limits.refill_per_second,
        ))
    }

    fn lower_to(&mut self, remaining: u64, now: Instant) {
        self.refill(now);
        // u64 → f64 loses precision only above 2^53, far beyond any ARM bucket.
        let remaining = remaining as f64;
        if remaining < self.tokens {
            self.tokens = remaining;
        }
    }
}

/// Token buckets per (subscription, operation type).
#[derive(Debug)]
pub struct Pacer {
    config: PacingConfig,
    buckets: Mutex<HashMap<(String, OperationClass), Bucket>>,
    remaining: Mutex<HashMap<String, RateLimitRemaining>>,
}

// A poisoned lock only means another task panicked mid-update of plain numbers; the numbers are
// still usable, and pacing must not turn one panic into a stuck operator.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pacer {
    pub fn new(config: PacingConfig) -> Pacer {
        Pacer {
            config,
            buckets: Mutex::new(HashMap::new()),
            remaining: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &PacingConfig {
        &self.config
    }

    /// Waits until the subscription's bucket for this operation type has a token, and takes it.
    pub async fn acquire(&self, subscription: &str, class: OperationClass) {
        let key = (subscription.to_ascii_lowercase(), class);
        loop {
            let wait = {
                let now = Instant::now();
                let mut buckets = lock(&self.buckets);
                let bucket = buckets.entry(key.clone()).or_insert_with(|| {
                    Bucket::full(self.config.limits(class), self.config.reserve, now)
                });
                bucket.take(now)
            };
            match wait {
                Ok(()) => return,
                Err(wait) => {
                    tracing::debug!(
                        operation = ?class,
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "pacing ARM calls"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Records ARM's `x-ms-ratelimit-remaining-subscription-*` headers from a response, lowering
    /// our bucket when ARM's is emptier.
    pub fn observe(&self, subscription: &str, headers: &HeaderMap) {
        let subscription = subscription.to_ascii_lowercase();
        let now = Instant::now();
        let mut seen = RateLimitRemaining::default();
        for class in [
            OperationClass::Read,
            OperationClass::Write,
            OperationClass::Delete,
        ] {
            let Some(value) = headers
                .get(class.header())
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
            else {
                continue;
            };
            match class {
                OperationClass::Read => seen.reads = Some(value),
                OperationClass::Write => seen.writes = Some(value),
                OperationClass::Delete => seen.deletes = Some(value),
            }
            let mut buckets = lock(&self.buckets);
            let bucket = buckets
                .entry((subscription.clone(), class))
                .or_insert_with(|| {
                    Bucket::full(self.config.limits(class), self.config.reserve, now)
                });
            bucket.lower_to(value, now);
        }
        if seen != RateLimitRemaining::default() {
            let mut remaining = lock(&self.remaining);
            let entry = remaining.entry(subscription).or_default();
            entry.reads = seen.reads.or(entry.reads);
            entry.writes = seen.writes.or(entry.writes);
            entry.deletes = seen.deletes.or(entry.deletes);
        }
    }

    /// Closes the subscription's bucket for this operation type for `wait` (a 429's Retry-After):
    /// no call of that type goes out before, whoever makes it.
    pub fn hold(&self, subscription: &str, class: OperationClass, wait: Duration) {
        let now = Instant::now();
        let until = now + wait;
        let mut buckets = lock(&self.buckets);
        let bucket = buckets
            .entry((subscription.to_ascii_lowercase(), class))
            .or_insert_with(|| Bucket::full(self.config.limits(class), self.config.reserve, now));
        bucket.closed_until = Some(bucket.closed_until.map_or(until, |u| u.max(until)));
    }

    /// What ARM last reported as remaining for this subscription.
    pub fn remaining(&self, subscription: &str) -> RateLimitRemaining {
        lock(&self.remaining)
            .get(&subscription.to_ascii_lowercase())
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    fn small(capacity: u32, refill_per_second: f64) -> PacingConfig {
        let limits = BucketLimits {
            capacity,
            refill_per_second,
        };
        PacingConfig {
            reads: limits,
            writes: limits,
            deletes: limits,
            reserve: 0,
        }
    }

    #[test]
    fn defaults_mirror_arms_documented_buckets() {
        let config = PacingConfig::default();
        assert_eq!(
            (config.reads.capacity, config.reads.refill_per_second),
            (250, 25.0)
        );
        assert_eq!(
            (config.writes.capacity, config.writes.refill_per_second),
            (200, 10.0)
        );
        assert_eq!(
            (config.deletes.capacity, config.deletes.refill_per_second),
            (200, 10.0)
        );
        assert_eq!(config.reserve, 1, "one token of each left unused");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_beyond_the_bucket_waits_for_the_refill() {
        let pacer = Pacer::new(small(5, 10.0));
        let start = Instant::now();
        for _ in 0..5 {
            pacer.acquire(SUB, OperationClass::Read).await;
        }
        assert_eq!(
            Instant::now(),
            start,
            "the bucket's capacity passes without waiting"
        );
        for _ in 0..10 {
            pacer.acquire(SUB, OperationClass::Read).await;
        }
        // Ten more at 10/s: one second of (paused, virtual) time.
        let waited = Instant::now() - start;
        assert!(
            waited >= Duration::from_millis(990) && waited <= Duration::from_millis(1010),
            "{waited:?}"
        );
    }

    /// ARM's side of the bucket: the same limits, taking a token at each request's arrival.
    struct ArmBucket {
        limits: BucketLimits,
        tokens: f64,
        at: Instant,
    }

    impl ArmBucket {
        /// Whether ARM admits a request arriving at `arrival` (arrivals in order).
        fn admits(&mut self, arrival: Instant) -> bool {
            let elapsed = arrival.saturating_duration_since(self.at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.limits.refill_per_second)
                .min(f64::from(self.limits.capacity));
            self.at = arrival;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                true
            } else {
                false
            }
        }
    }

    /// Requests paced by `pacer` reach ARM after a latency that varies by up to 40 ms (a late
    /// timer, a slower connection): how many ARM throttles. The latencies are a fixed sequence,
    /// so the test is the same every run.
    async fn throttled_with_jitter(pacer: &Pacer, limits: BucketLimits, requests: u32) -> u32 {
        let start = Instant::now();
        let mut arm = ArmBucket {
            limits,
            tokens: f64::from(limits.capacity),
            at: start,
        };
        let mut arrivals = Vec::new();
        for n in 0..requests {
            pacer.acquire(SUB, OperationClass::Write).await;
            // 100 ms of latency, but every seventh request 40 ms less: it arrives closer to the
            // one before than it left.
            let latency = Duration::from_millis(if n % 7 == 6 { 60 } else { 100 });
            arrivals.push(Instant::now() + latency);
        }
        // ARM sees them in the order they arrive.
        arrivals.sort();
        let mut throttled = 0;
        for arrival in arrivals {
            if !arm.admits(arrival) {
                throttled += 1;
            }
        }
        throttled
    }

    #[tokio::test(start_paused = true)]
    async fn the_reserve_keeps_a_token_in_arms_bucket_through_jitter() {
        let limits = BucketLimits {
            capacity: 20,
            refill_per_second: 10.0,
        };
        let reserved = Pacer::new(PacingConfig {
            reads: limits,
            writes: limits,
            deletes: limits,
            reserve: 1,
        });
        assert_eq!(throttled_with_jitter(&reserved, limits, 200).await, 0);

        // The control: paced exactly at ARM's rate, the early arrivals are throttled.
        let exact = Pacer::new(PacingConfig {
            reserve: 0,
            ..*reserved.config()
        });
        assert!(throttled_with_jitter(&exact, limits, 200).await > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reserve_costs_one_request_of_burst_and_never_blocks_a_tiny_bucket() {
        let pacer = Pacer::new(PacingConfig {
            reserve: 1,
            ..small(5, 10.0)
        });
        let start = Instant::now();
        for _ in 0..4 {
            pacer.acquire(SUB, OperationClass::Read).await;
        }
        assert_eq!(Instant::now(), start, "four of five go at once");
        pacer.acquire(SUB, OperationClass::Read).await;
        assert_eq!(Instant::now() - start, Duration::from_millis(100));

        // A bucket of one token has no room for a reserve: it still admits a request a second.
        let tiny = Pacer::new(PacingConfig {
            reserve: 1,
            ..small(1, 1.0)
        });
        let start = Instant::now();
        tiny.acquire(SUB, OperationClass::Write).await;
        tiny.acquire(SUB, OperationClass::Write).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_closes_the_bucket_for_every_caller_until_its_retry_after() {
        let pacer = Pacer::new(small(100, 10.0));
        let start = Instant::now();
        pacer.hold(SUB, OperationClass::Read, Duration::from_secs(2));
        // A shorter hold never shortens a longer one.
        pacer.hold(
            &SUB.to_uppercase(),
            OperationClass::Read,
            Duration::from_secs(1),
        );
        pacer.acquire(SUB, OperationClass::Write).await;
        assert_eq!(Instant::now(), start, "other operation types are not held");
        pacer.acquire(SUB, OperationClass::Read).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        pacer.acquire(SUB, OperationClass::Read).await;
        assert_eq!(
            Instant::now() - start,
            Duration::from_secs(2),
            "once reopened, the bucket's tokens are there"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn subscriptions_and_operation_types_have_separate_buckets() {
        let pacer = Pacer::new(small(1, 1.0));
        let start = Instant::now();
        pacer.acquire(SUB, OperationClass::Read).await;
        pacer.acquire(SUB, OperationClass::Write).await;
        pacer.acquire(SUB, OperationClass::Delete).await;
        pacer
            .acquire("00000000-0000-0000-0000-000000000002", OperationClass::Read)
            .await;
        assert_eq!(Instant::now(), start);
        pacer
            .acquire(&SUB.to_uppercase(), OperationClass::Read)
            .await;
        assert!(
            Instant::now() > start,
            "the same subscription in another case shares its bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn arms_remaining_count_lowers_our_bucket_and_is_exposed() {
        let pacer = Pacer::new(small(100, 10.0));
        let mut headers = HeaderMap::new();
        headers.insert(
            OperationClass::Write.header(),
            HeaderValue::from_static("0"),
        );
        headers.insert(
            OperationClass::Read.header(),
            HeaderValue::from_static("11999"),
        );
        pacer.observe(SUB, &headers);
        assert_eq!(
            pacer.remaining(SUB),
            RateLimitRemaining {
                reads: Some(11999),
                writes: Some(0),
                deletes: None
            }
        );
        let start = Instant::now();
        pacer.acquire(SUB, OperationClass::Read).await;
        assert_eq!(
            Instant::now(),
            start,
            "a higher remaining count does not raise our bucket"
        );
        pacer.acquire(SUB, OperationClass::Write).await;
        assert!(
            Instant::now() > start,
            "ARM said no writes are left, so keyless waits"
        );
    }
}
