//! Passive health of an upstream (a Regular Instance or a Wavelet), as Envoy's outlier
//! detection or nginx's `max_fails` keep it: one that refuses or breaks a connection, or does
//! not answer in time, is ejected for a back-off (1 s, doubling with each failure in a row up to
//! 30 s, [`wavelink_core::backoff`]) and gets no new requests meanwhile; once the back-off has
//! passed it is eligible again, and its first good answer clears the record. A refused instance
//! has nothing in flight, so without this it would keep winning the power-of-two choice.

use std::time::Duration;

use wavelink_core::backoff::FailureRecord;

/// First ejection; doubled with each failure in a row.
pub const EJECTION_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_EJECTION: Duration = Duration::from_secs(30);

/// A clean record for a new upstream.
pub fn new_record() -> FailureRecord {
    FailureRecord::new(EJECTION_BACKOFF, MAX_EJECTION)
}
