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
//!
//! Which instance a slot is on is policy too, and shared the same way: an RI by the power of two
//! choices ([`pick_instance`], the proxy's), an EI by reusing the newest one with room
//! ([`reuse_newest`], the Wavelet's), and RIs to retire when the autoscaler asks for fewer
//! ([`retirees`], the controller's).

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

/// The instance a request takes among `count`: the less loaded of two drawn at random (the power
/// of two choices: load spreads over every instance without a scan), then, if neither takes it,
/// the first that does scanning from a random start, so a free slot anywhere is found.
/// `load(i)` is instance `i`'s requests in flight; `try_take(i)` takes a slot on it if it is
/// eligible and has one free (the proxy's compare-and-swap, the simulator's bookkeeping).
pub fn pick_instance(
    count: usize,
    rng: &mut fastrand::Rng,
    load: impl Fn(usize) -> u32,
    mut try_take: impl FnMut(usize) -> bool,
) -> Option<usize> {
    match count {
        0 => None,
        1 => try_take(0).then_some(0),
        _ => {
            let a = rng.usize(..count);
            let mut b = rng.usize(..count - 1);
            if b >= a {
                b += 1;
            }
            let (first, second) = if load(a) <= load(b) { (a, b) } else { (b, a) };
            if try_take(first) {
                return Some(first);
            }
            if try_take(second) {
                return Some(second);
            }
            (1..count).map(|offset| (a + offset) % count).find(|&i| i != b && try_take(i))
        }
    }
}

/// The Emergency Instance a request reuses among `count`, in the order they started: the newest
/// that takes it (`try_take`), so load concentrates on few instances and the others go idle and
/// reach their keep-alive.
pub fn reuse_newest(count: usize, mut try_take: impl FnMut(usize) -> bool) -> Option<usize> {
    (0..count).rev().find(|&i| try_take(i))
}

/// Which RIs go when a function has `excess` more than the autoscaler wants, given each one's
/// readiness and when it was started (any increasing stamp): the not-yet-ready first (dropping
/// them costs nothing), then the youngest (the oldest are proven and warm). Busy ones are among
/// them; they drain before they go. Returns indices into `instances`.
pub fn retirees(instances: &[(bool, u64)], excess: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..instances.len()).collect();
    order.sort_by_key(|&i| (instances[i].0, std::cmp::Reverse(instances[i].1)));
    order.truncate(excess);
    order
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

    #[test]
    fn two_random_choices_take_the_less_loaded_and_any_free_slot_is_found() {
        let mut rng = fastrand::Rng::with_seed(7);
        for count in 1..6 {
            let capacity = 3;
            let mut in_flight = vec![0u32; count];
            for _ in 0..count * capacity as usize {
                let load = in_flight.clone();
                let taken = pick_instance(
                    count,
                    &mut rng,
                    |i| load[i],
                    |i| {
                        let free = in_flight[i] < capacity;
                        in_flight[i] += u32::from(free);
                        free
                    },
                );
                assert!(taken.is_some(), "count {count}: a free slot was missed");
            }
            assert!(in_flight.iter().all(|&n| n == capacity));
            let full = in_flight.clone();
            assert_eq!(pick_instance(count, &mut rng, |i| full[i], |_| false), None);
        }
        // With one instance busy and one idle, the idle one is taken whichever two are drawn.
        for _ in 0..20 {
            let load = [5, 0];
            assert_eq!(pick_instance(2, &mut rng, |i| load[i], |_| true), Some(1));
        }
    }

    #[test]
    fn two_random_choices_spread_requests_over_every_instance() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut served = [0u32; 8];
        for _ in 0..800 {
            let i = pick_instance(8, &mut rng, |_| 0, |_| true).expect("a slot");
            served[i] += 1;
        }
        assert!(served.iter().all(|&n| n > 50), "{served:?}");
    }

    #[test]
    fn the_newest_instance_with_room_is_reused() {
        assert_eq!(reuse_newest(3, |_| true), Some(2));
        assert_eq!(reuse_newest(3, |i| i < 2), Some(1));
        assert_eq!(reuse_newest(3, |_| false), None);
        assert_eq!(reuse_newest(0, |_| true), None);
    }

    #[test]
    fn not_ready_instances_retire_first_then_the_youngest() {
        // (ready, started)
        let instances = [(true, 1), (true, 10), (false, 5), (true, 3)];
        assert_eq!(retirees(&instances, 1), [2]);
        assert_eq!(retirees(&instances, 2), [2, 1]);
        assert_eq!(retirees(&instances, 3), [2, 1, 3]);
        assert_eq!(retirees(&instances, 9), [2, 1, 3, 0]);
        assert!(retirees(&instances, 0).is_empty());
    }
}
