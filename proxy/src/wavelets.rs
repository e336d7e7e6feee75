//! The Wavelets the proxy spills to, with the requests it has in flight on each.
//!
//! A spilled request goes to the Wavelet with the fewest in flight from this proxy. One that
//! answers "full" (node-wide instance cap) is skipped for [`FULL_BACKOFF`] and the request is
//! tried on another; one that cannot be reached is ejected for a growing back-off
//! ([`crate::health`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use pingora_core::upstreams::peer::HttpPeer;

use crate::instance::PeerSettings;

/// How long a Wavelet that said "full" gets no new requests from this proxy.
pub const FULL_BACKOFF: Duration = Duration::from_millis(200);

pub struct WaveletTarget {
    pub addr: SocketAddr,
    pub peer: HttpPeer,
    in_flight: AtomicU32,
    /// Skip until this instant (ms since the set's epoch).
    full_until_ms: AtomicU64,
    /// Ejected while it cannot be reached.
    pub health: wavelink_core::backoff::FailureRecord,
}

impl WaveletTarget {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(SeqCst)
    }

    pub(crate) fn release(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
    }
}

pub struct Wavelets {
    targets: Vec<Arc<WaveletTarget>>,
    epoch: Instant,
}

impl Wavelets {
    pub fn new(addrs: &[SocketAddr], settings: PeerSettings) -> Self {
        let targets = addrs
            .iter()
            .map(|&addr| {
                let mut peer = HttpPeer::new(addr, false, String::new());
                peer.options.connection_timeout = Some(settings.connect_timeout);
                Arc::new(WaveletTarget {
                    addr,
                    peer,
                    in_flight: AtomicU32::new(0),
                    full_until_ms: AtomicU64::new(0),
                    health: crate::health::new_record(),
                })
            })
            .collect();
        Wavelets { targets, epoch: Instant::now() }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn targets(&self) -> &[Arc<WaveletTarget>] {
        &self.targets
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The least busy Wavelet not marked full and not in `exclude`, with one more in flight.
    pub fn take(&self, exclude: &[SocketAddr]) -> Option<Arc<WaveletTarget>> {
        let now = self.now_ms();
        let chosen = self
            .targets
            .iter()
            .filter(|t| t.full_until_ms.load(Relaxed) <= now && t.health.eligible() && !exclude.contains(&t.addr))
            .min_by_key(|t| t.in_flight())?;
        chosen.in_flight.fetch_add(1, SeqCst);
        Some(chosen.clone())
    }

    /// The Wavelet said it is at its instance cap.
    pub fn mark_full(&self, target: &WaveletTarget) {
        target.full_until_ms.store(self.now_ms() + FULL_BACKOFF.as_millis() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wavelets(n: u16) -> Wavelets {
        let addrs: Vec<SocketAddr> = (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 40_000 + i))).collect();
        Wavelets::new(&addrs, PeerSettings::default())
    }

    #[test]
    fn the_least_busy_wavelet_is_taken() {
        let set = wavelets(3);
        let first = set.take(&[]).unwrap();
        let second = set.take(&[]).unwrap();
        let third = set.take(&[]).unwrap();
        let addrs: std::collections::HashSet<_> = [first.addr, second.addr, third.addr].into();
        assert_eq!(addrs.len(), 3, "spread over all three");
        second.release();
        assert_eq!(set.take(&[]).unwrap().addr, second.addr);
    }

    #[test]
    fn full_and_excluded_wavelets_are_skipped() {
        let set = wavelets(2);
        let a = set.targets()[0].clone();
        let b = set.targets()[1].clone();
        set.mark_full(&a);
        for _ in 0..3 {
            assert_eq!(set.take(&[]).unwrap().addr, b.addr);
        }
        assert!(set.take(&[b.addr]).is_none(), "a is full and b excluded");
        assert!(wavelets(0).take(&[]).is_none());
    }
}
