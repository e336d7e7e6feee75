//! Leader election over a lease (Kubernetes `coordination.k8s.io/v1` Lease), as a decision on
//! what was read: who holds it, since when it was renewed, for how long it is valid.
//!
//! The edge reads the lease, asks [`decide`], and writes with the resourceVersion it read, so two
//! candidates that decide to take the same expired lease cannot both succeed: the second write
//! gets a conflict and that candidate stays a follower. Same rules as client-go's leaderelection.

use std::time::Duration;

/// A lease as read (times in milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    pub renewed_at_ms: Option<u64>,
    pub duration: Duration,
    pub transitions: u32,
}

/// What a candidate does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// No lease exists: create it, held by us.
    Create,
    /// We hold it: write a new renew time.
    Renew,
    /// It is free or expired: take it (one more transition).
    Acquire { transitions: u32 },
    /// Someone else holds a valid lease: do not write anything guarded by it.
    Follow { holder: String },
}

/// Decides from the lease read at `now_ms` (`None` when it does not exist).
pub fn decide(lease: Option<&LeaseRecord>, me: &str, now_ms: u64) -> LeaseAction {
    let Some(lease) = lease else { return LeaseAction::Create };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => LeaseAction::Renew,
        Some(holder) if !holder.is_empty() && !expired(lease, now_ms) => {
            LeaseAction::Follow { holder: holder.to_owned() }
        }
        _ => LeaseAction::Acquire { transitions: lease.transitions.saturating_add(1) },
    }
}

/// Whether a lease renewed at `renewed_at_ms` has run out at `now_ms`. A lease never renewed is
/// expired. Clock skew between candidates shortens or lengthens it; durations of several renew
/// intervals absorb that, as in client-go.
pub fn expired(lease: &LeaseRecord, now_ms: u64) -> bool {
    match lease.renewed_at_ms {
        Some(at) => now_ms >= at.saturating_add(duration_ms(lease.duration)),
        None => true,
    }
}

/// Until when a leader that renewed at `renewed_at_ms` may act. It stops a little before the lease
/// expires, so that it is never acting while another candidate may already have taken over.
pub fn acting_until_ms(renewed_at_ms: u64, duration: Duration) -> u64 {
    let margin = duration_ms(duration) / 5;
    renewed_at_ms.saturating_add(duration_ms(duration) - margin)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, renewed_at_ms: u64) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            renewed_at_ms: Some(renewed_at_ms),
            duration: DURATION,
            transitions: 3,
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "a", 1_000), LeaseAction::Create);
    }

    #[test]
    fn the_holder_renews_even_late() {
        assert_eq!(decide(Some(&held_by("a", 0)), "a", 1_000_000), LeaseAction::Renew);
    }

    #[test]
    fn others_follow_a_valid_lease() {
        let lease = held_by("a", 10_000);
        assert_eq!(decide(Some(&lease), "b", 24_999), LeaseAction::Follow { holder: "a".into() });
    }

    #[test]
    fn an_expired_lease_is_taken_with_one_more_transition() {
        let lease = held_by("a", 10_000);
        assert_eq!(decide(Some(&lease), "b", 25_000), LeaseAction::Acquire { transitions: 4 });
    }

    #[test]
    fn a_released_or_never_renewed_lease_is_free() {
        let mut lease = held_by("", 10_000);
        assert_eq!(decide(Some(&lease), "b", 10_001), LeaseAction::Acquire { transitions: 4 });
        lease.holder = Some("a".into());
        lease.renewed_at_ms = None;
        assert_eq!(decide(Some(&lease), "b", 10_001), LeaseAction::Acquire { transitions: 4 });
        lease.holder = None;
        assert_eq!(decide(Some(&lease), "b", 10_001), LeaseAction::Acquire { transitions: 4 });
    }

    #[test]
    fn a_leader_stops_acting_before_others_may_take_over() {
        let until = acting_until_ms(10_000, DURATION);
        assert_eq!(until, 22_000);
        assert!(!expired(&held_by("a", 10_000), until));
    }
}
