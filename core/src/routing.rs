//! The per-request routing choice, one implementation for the proxy and the simulator: a
//! request takes a slot on the first of its scaling mode's tracks that has one (dual: a Regular
//! Instance, else an Emergency Instance; fast-only: EIs; async and sync: RIs), never ahead of
//! requests already waiting; without a slot it waits in its function's bounded FIFO if there is
//! room, else it is turned away at once.
//!
//! What "has a slot" means is the caller's: the proxy reserves one with a compare-and-swap on an
//! instance's counter, the simulator looks at its model of the cluster. Both go through
//! [`take_slot`] and [`admit_to_queue`], so the order of tracks, the no-overtaking rule and the
//! queue bounds are the same code in both.

use crate::spec::{ScalingMode, Track};

/// Why a request that found no slot is not allowed to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// The function's queue holds `queue-depth` requests already.
    FunctionQueueFull,
    /// The proxy's queues hold `max-queued` requests, every function together.
    ProxyQueueFull,
}

/// A slot on the first of `mode`'s tracks where `take` finds one, in the mode's order; none
/// while `waiting` requests are queued for the function (a newcomer never overtakes them; freed
/// slots go to the head of the queue).
pub fn take_slot<T>(mode: ScalingMode, waiting: u32, take: impl FnMut(Track) -> Option<T>) -> Option<T> {
    if waiting > 0 {
        return None;
    }
    mode.tracks().iter().copied().find_map(take)
}

/// Whether a request that found no slot may wait: its function's queue has room (`waiting` <
/// `queue_depth`), then the proxy-wide bound (`reserve_proxy_place`, asked only if the first
/// holds, takes one of the proxy's places when there is one).
pub fn admit_to_queue(
    waiting: u32,
    queue_depth: u32,
    reserve_proxy_place: impl FnOnce() -> bool,
) -> Result<(), QueueRefusal> {
    if waiting >= queue_depth {
        return Err(QueueRefusal::FunctionQueueFull);
    }
    if !reserve_proxy_place() {
        return Err(QueueRefusal::ProxyQueueFull);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_free(mode: ScalingMode, waiting: u32, free: &[Track]) -> Option<Track> {
        take_slot(mode, waiting, |track| free.contains(&track).then_some(track))
    }

    #[test]
    fn each_mode_tries_its_tracks_in_order() {
        let both = [Track::Regular, Track::Emergency];
        assert_eq!(first_free(ScalingMode::Dual, 0, &both), Some(Track::Regular));
        assert_eq!(first_free(ScalingMode::Dual, 0, &[Track::Emergency]), Some(Track::Emergency));
        assert_eq!(first_free(ScalingMode::FastOnly, 0, &both), Some(Track::Emergency));
        assert_eq!(first_free(ScalingMode::Async, 0, &[Track::Emergency]), None);
        assert_eq!(first_free(ScalingMode::Sync, 0, &both), Some(Track::Regular));
    }

    #[test]
    fn nobody_overtakes_a_waiting_request() {
        let mut asked = 0;
        let taken = take_slot(ScalingMode::Dual, 1, |track| {
            asked += 1;
            Some(track)
        });
        assert_eq!(taken, None);
        assert_eq!(asked, 0, "no slot is even tried while others wait");
    }

    #[test]
    fn the_queue_bounds_are_the_functions_then_the_proxys() {
        assert_eq!(admit_to_queue(0, 10, || true), Ok(()));
        assert_eq!(admit_to_queue(10, 10, || true), Err(QueueRefusal::FunctionQueueFull));
        assert_eq!(admit_to_queue(0, 0, || true), Err(QueueRefusal::FunctionQueueFull), "queue-depth 0: never wait");
        assert_eq!(admit_to_queue(3, 10, || false), Err(QueueRefusal::ProxyQueueFull));
        let mut reserved = false;
        let _ = admit_to_queue(10, 10, || {
            reserved = true;
            true
        });
        assert!(!reserved, "no proxy place is taken for a request its function turns away");
    }
}
