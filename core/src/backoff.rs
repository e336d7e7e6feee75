//! Back-off after failures in a row: the one policy behind ejecting an upstream (proxy), a
//! function's crash loop (Wavelet), restarting a component (`wavelink up`) and retrying a scale
//! write (controller). The first failure waits `first`; each further one in a row doubles it, up
//! to `max`.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The wait after `failures` in a row (1 for the first; 0 counts as 1).
pub fn doubling(first: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1)).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(max)
}

/// Milliseconds since the first use, from 1 (0 means "not blocked").
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// Failures in a row of one thing, and until when it is not tried again. Lock-free: the proxy
/// asks [`FailureRecord::eligible`] of each candidate on the request path (one load when
/// healthy).
#[derive(Debug)]
pub struct FailureRecord {
    first: Duration,
    max: Duration,
    in_a_row: AtomicU32,
    /// Not tried before this (on the module's clock); 0: not blocked.
    until_ms: AtomicU64,
}

impl FailureRecord {
    pub const fn new(first: Duration, max: Duration) -> Self {
        FailureRecord { first, max, in_a_row: AtomicU32::new(0), until_ms: AtomicU64::new(0) }
    }

    /// Records a failure: returns the failures in a row and the back-off it starts.
    pub fn fail(&self) -> (u32, Duration) {
        let in_a_row = self.in_a_row.fetch_add(1, Relaxed).saturating_add(1);
        let backoff = doubling(self.first, in_a_row, self.max);
        self.until_ms.store(now_ms() + backoff.as_millis() as u64, Relaxed);
        (in_a_row, backoff)
    }

    /// It worked: the record is cleared (one load when it was clear already).
    pub fn succeeded(&self) {
        if self.in_a_row.load(Relaxed) > 0 {
            self.in_a_row.store(0, Relaxed);
            self.until_ms.store(0, Relaxed);
        }
    }

    pub fn in_a_row(&self) -> u32 {
        self.in_a_row.load(Relaxed)
    }

    /// How long until it may be tried again, if not now.
    pub fn blocked_for(&self) -> Option<Duration> {
        let until = self.until_ms.load(Relaxed);
        if until == 0 {
            return None;
        }
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Whether it may be tried now.
    pub fn eligible(&self) -> bool {
        self.blocked_for().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_the_first_and_is_capped() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let waits: Vec<u64> = (0..=7).map(|n| doubling(first, n, max).as_secs()).collect();
        assert_eq!(waits, [1, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(doubling(first, u32::MAX, max), max, "no overflow however many failures");
    }

    #[test]
    fn a_record_blocks_for_its_backoff_and_a_success_clears_it() {
        let record = FailureRecord::new(Duration::from_millis(20), Duration::from_secs(30));
        assert!(record.eligible());
        assert_eq!(record.fail(), (1, Duration::from_millis(20)));
        assert!(!record.eligible());
        std::thread::sleep(Duration::from_millis(30));
        assert!(record.eligible(), "eligible once the back-off has passed");
        assert_eq!(record.fail(), (2, Duration::from_millis(40)), "the record is kept until a success");
        record.succeeded();
        assert!(record.eligible());
        assert_eq!(record.fail(), (1, Duration::from_millis(20)), "a success starts it afresh");
        assert!((0..100).all(|_| record.fail().1 <= Duration::from_secs(30)));
    }
}
