//! Passive health of an upstream (a Regular Instance or a Wavelet), as Envoy's outlier
//! detection or nginx's `max_fails` keep it: one that refuses or breaks a connection, or does
//! not answer in time, is ejected for a back-off (1 s, doubling with each failure in a row up to
//! 30 s) and gets no new requests meanwhile; once the back-off has passed it is eligible again,
//! and its first good answer clears the record. A refused instance has nothing in flight, so
//! without this it would keep winning the power-of-two choice.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// First ejection; doubled with each failure in a row.
pub const EJECTION_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_EJECTION: Duration = Duration::from_secs(30);

/// The clock of ejections: milliseconds since the first use, from 1 (0 means "not ejected").
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Default)]
pub struct Health {
    /// Not chosen before this (milliseconds on [`EPOCH`]); 0: healthy.
    ejected_until_ms: AtomicU64,
    /// Failures in a row, for the back-off.
    failures: AtomicU32,
}

impl Health {
    /// Takes the upstream out of the choice for a back-off that grows with failures in a row;
    /// returns the back-off.
    pub fn eject(&self) -> Duration {
        let failures = self.failures.fetch_add(1, Relaxed).min(5);
        let backoff = EJECTION_BACKOFF.saturating_mul(1 << failures).min(MAX_EJECTION);
        self.ejected_until_ms.store(now_ms() + backoff.as_millis() as u64, Relaxed);
        backoff
    }

    /// It answered: the failure record is cleared (one load on the healthy path).
    pub fn answered(&self) {
        if self.failures.load(Relaxed) > 0 {
            self.failures.store(0, Relaxed);
            self.ejected_until_ms.store(0, Relaxed);
        }
    }

    /// Whether it may be chosen now.
    pub fn eligible(&self) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until == 0 || until <= now_ms()
    }

    #[cfg(test)]
    pub(crate) fn expire(&self) {
        self.ejected_until_ms.store(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_with_failures_in_a_row_is_capped_and_an_answer_clears_it() {
        let health = Health::default();
        assert!(health.eligible());
        assert_eq!(health.eject(), EJECTION_BACKOFF);
        assert!(!health.eligible());
        assert_eq!(health.eject(), EJECTION_BACKOFF * 2);
        health.expire();
        assert!(health.eligible(), "eligible again once the back-off has passed");
        health.answered();
        assert_eq!(health.eject(), EJECTION_BACKOFF, "an answer starts the record afresh");
        assert!((0..100).all(|_| health.eject() <= MAX_EJECTION));
    }
}
