//! One upstream instance, its slot counter and its passive health ([`crate::health`]).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use wavelink_core::slots::SlotCounter;

use wavelink_core::backoff::FailureRecord;

/// An instance the proxy can send requests to. Shared (`Arc`) between the routing snapshot and the
/// slot guards of requests on it, so a removed instance lives until its last request finishes.
pub struct Instance {
    pub addr: SocketAddr,
    /// Built at the first request (most instances of thousands of idle functions never get
    /// one), then cloned by the request path instead of building a peer per request.
    peer: OnceLock<Box<HttpPeer>>,
    /// Milliseconds (it packs beside the slot counter: thousands of idle instances).
    connect_timeout_ms: u32,
    /// Requests holding a slot on this instance.
    slots: SlotCounter,
    /// Ejected after a failure, for a back-off.
    pub health: FailureRecord,
}

/// How the proxy talks to instances.
///
/// No idle timeout on pooled connections: Pingora would arm a timer on every release, on the
/// request path. A pooled connection goes when the instance closes it (Pingora watches for
/// that) or when the pool's LRU evicts it.
#[derive(Debug, Clone, Copy)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings { connect_timeout: Duration::from_secs(1) }
    }
}

impl Instance {
    pub fn new(addr: SocketAddr, settings: PeerSettings) -> Self {
        Instance {
            addr,
            peer: OnceLock::new(),
            connect_timeout_ms: u32::try_from(settings.connect_timeout.as_millis()).unwrap_or(u32::MAX),
            slots: SlotCounter::default(),
            health: crate::health::new_record(),
        }
    }

    pub fn peer(&self) -> &HttpPeer {
        self.peer.get_or_init(|| {
            let mut peer = HttpPeer::new(self.addr, false, String::new());
            peer.options.connection_timeout = Some(Duration::from_millis(u64::from(self.connect_timeout_ms)));
            Box::new(peer)
        })
    }

    pub fn in_flight(&self) -> u32 {
        self.slots.get()
    }

    /// A slot, if the instance is eligible and has one free.
    pub(crate) fn try_reserve(&self, capacity: u32) -> bool {
        self.health.eligible() && self.slots.try_reserve(capacity)
    }

    pub(crate) fn release(&self) {
        self.slots.release()
    }
}

/// Picks an eligible instance with a free slot by `core::routing::pick_instance` (the power of
/// two choices, then a scan so a free slot anywhere is found): the simulator places requests on
/// RIs with the same function.
pub(crate) fn reserve_any(instances: &[std::sync::Arc<Instance>], capacity: u32) -> Option<&std::sync::Arc<Instance>> {
    let mut rng = fastrand::Rng::new();
    let chosen = wavelink_core::routing::pick_instance(
        instances.len(),
        &mut rng,
        |i| instances[i].in_flight(),
        |i| instances[i].try_reserve(capacity),
    )?;
    Some(&instances[chosen])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

    fn instances(n: u16) -> Vec<Arc<Instance>> {
        let settings = PeerSettings::default();
        (0..n).map(|i| Arc::new(Instance::new(SocketAddr::from(([127, 0, 0, 1], 10_000 + i)), settings))).collect()
    }

    #[test]
    fn every_free_slot_is_found_before_giving_up() {
        for n in 1..6 {
            let set = instances(n);
            for _ in 0..(n as usize * 3) {
                assert!(reserve_any(&set, 3).is_some(), "n={n}");
            }
            assert!(reserve_any(&set, 3).is_none(), "n={n}");
            assert!(set.iter().all(|i| i.in_flight() == 3));
        }
    }

    #[test]
    fn an_ejected_instance_is_skipped_until_it_answers_again() {
        let set = instances(2);
        set[0].health.fail();
        for _ in 0..20 {
            let chosen = reserve_any(&set, 100).unwrap();
            assert_eq!(chosen.addr, set[1].addr, "never the ejected one");
        }
        assert!(reserve_any(&set[..1], 100).is_none());
        set[0].health.succeeded();
        assert!(reserve_any(&set[..1], 100).is_some());
    }

    #[test]
    fn two_choices_prefer_the_less_loaded_instance() {
        let set = instances(2);
        for _ in 0..4 {
            assert!(set[0].try_reserve(10));
        }
        for _ in 0..4 {
            let chosen = reserve_any(&set, 10).unwrap();
            assert_eq!(chosen.addr, set[1].addr);
        }
    }

    #[test]
    fn concurrent_reservations_respect_capacity() {
        let set = Arc::new(instances(3));
        let taken = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let set = set.clone();
                let taken = taken.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if let Some(instance) = reserve_any(&set, 2) {
                            taken.fetch_add(1, SeqCst);
                            assert!(instance.in_flight() <= 2);
                            taken.fetch_sub(1, SeqCst);
                            instance.release();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(set.iter().all(|i| i.in_flight() == 0));
    }
}
