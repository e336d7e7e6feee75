//! Which stretches of time each proxy has reported, so a decision can tell "no traffic" from
//! "no data".
//!
//! A proxy lists the intervals (one second each) it has samples for; every function has a
//! sample for each of them. Time a proxy should have reported (after it started, before the
//! last scrape could have seen it) but did not — it was stopped, unreachable, starved, or this
//! controller had not yet read it — is missing, and demand summed over the proxies is then
//! only a lower bound.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use wavelink_core::stats::ProxyStats;

/// One interval's length.
const INTERVAL_MS: u64 = 1000;
/// Lateness tolerated between intervals and at the window's ends: intervals drift by a few
/// tens of milliseconds, and the newest one may not have been scraped yet.
const TOLERANCE_MS: u64 = 1000;

#[derive(Debug, Default)]
struct ProxyCoverage {
    /// When the proxy started (0: never heard from). Before it, there is nothing to miss.
    started_ms: u64,
    /// Ends of the intervals it reported.
    ends: BTreeSet<u64>,
}

/// The proxies' coverage, for the proxies the controller reads.
#[derive(Debug, Default)]
pub struct Coverage {
    proxies: HashMap<SocketAddr, ProxyCoverage>,
}

impl Coverage {
    /// The proxies to expect data from: new ones are expected from now on (and for the
    /// windows' past, which nobody has told this controller about), gone ones are forgotten.
    pub fn expect(&mut self, proxies: &[SocketAddr]) {
        self.proxies.retain(|addr, _| proxies.contains(addr));
        for proxy in proxies {
            self.proxies.entry(*proxy).or_default();
        }
    }

    pub fn record(&mut self, proxy: SocketAddr, stats: &ProxyStats) {
        let coverage = self.proxies.entry(proxy).or_default();
        coverage.started_ms = stats.started_unix_ms;
        coverage.ends.extend(stats.intervals.iter().copied());
    }

    /// Milliseconds of `from_ms..to_ms` each proxy should have reported and did not; only
    /// proxies with something missing are listed.
    pub fn missing(&self, from_ms: u64, to_ms: u64) -> Vec<(SocketAddr, u64)> {
        let mut out: Vec<(SocketAddr, u64)> = self
            .proxies
            .iter()
            .filter_map(|(addr, coverage)| {
                let missing = coverage.missing(from_ms, to_ms);
                (missing > 0).then_some((*addr, missing))
            })
            .collect();
        out.sort();
        out
    }

    /// The seconds (of interval ends) some proxy reported in `from_ms..=to_ms`: a function
    /// without a sample in one of them had no demand at that proxy then (a proxy reports
    /// every function it serves; one it does not serve gets no requests there).
    pub fn reported_seconds(&self, from_ms: u64, to_ms: u64) -> BTreeSet<u64> {
        self.proxies.values().flat_map(|c| c.ends.range(from_ms..=to_ms).map(|end| end / 1000)).collect()
    }

    /// The end of the newest interval `proxy` reported: its next scrape needs only what came
    /// after (`/stats?since=`), every function's samples up to it having been read.
    pub fn newest(&self, proxy: SocketAddr) -> Option<u64> {
        self.proxies.get(&proxy).and_then(|c| c.ends.last().copied())
    }

    /// Milliseconds since each proxy's newest reported interval (`None`: never heard from).
    pub fn ages(&self, now_ms: u64) -> Vec<(SocketAddr, Option<u64>)> {
        self.proxies.iter().map(|(addr, c)| (*addr, c.ends.last().map(|end| now_ms.saturating_sub(*end)))).collect()
    }

    pub fn forget_before(&mut self, before_ms: u64) {
        for coverage in self.proxies.values_mut() {
            coverage.ends = coverage.ends.split_off(&before_ms);
        }
    }
}

impl ProxyCoverage {
    fn missing(&self, from_ms: u64, to_ms: u64) -> u64 {
        let from = from_ms.max(self.started_ms);
        if to_ms <= from {
            return 0;
        }
        let mut covered_until = from;
        let mut missing = 0;
        for end in self.ends.range(from..=to_ms + INTERVAL_MS) {
            let start = end.saturating_sub(INTERVAL_MS);
            if start > covered_until + TOLERANCE_MS {
                missing += start.min(to_ms).saturating_sub(covered_until);
            }
            covered_until = covered_until.max(*end);
        }
        if to_ms > covered_until + TOLERANCE_MS {
            missing += to_ms - covered_until;
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(started_ms: u64, ends: impl IntoIterator<Item = u64>) -> ProxyStats {
        ProxyStats {
            sample_interval_ms: 1000,
            started_unix_ms: started_ms,
            intervals: ends.into_iter().collect(),
            functions: Vec::new(),
            rejected: Vec::new(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn intervals_with_jitter_cover_the_window() {
        let mut coverage = Coverage::default();
        coverage.expect(&[addr(1)]);
        // A second apart give or take drift, the last one 1.4 s before the window's end.
        let ends = (0..60).map(|i| 100_000 + i * 1000 + (i % 7) * 40);
        coverage.record(addr(1), &stats(50_000, ends));
        assert_eq!(coverage.missing(100_000, 160_000), []);
    }

    #[test]
    fn a_stop_or_an_unreachable_proxy_is_missing_time() {
        let mut coverage = Coverage::default();
        coverage.expect(&[addr(1), addr(2)]);
        coverage.record(addr(1), &stats(50_000, (100..=160).map(|s| s * 1000)));
        // The second proxy was stopped between 120 s and 150 s.
        coverage.record(addr(2), &stats(50_000, (100..120).chain(150..=160).map(|s| s * 1000)));
        let missing = coverage.missing(100_000, 160_000);
        assert_eq!(missing, [(addr(2), 30_000)]);
        // A proxy never heard from misses the whole window.
        coverage.expect(&[addr(1), addr(2), addr(3)]);
        assert_eq!(coverage.missing(100_000, 160_000).last(), Some(&(addr(3), 60_000)));
        // Gone from the set: not expected any more.
        coverage.expect(&[addr(1)]);
        assert_eq!(coverage.missing(100_000, 160_000), []);
    }

    #[test]
    fn reported_seconds_are_those_of_any_proxy() {
        let mut coverage = Coverage::default();
        coverage.record(addr(1), &stats(0, [100_200, 101_200]));
        coverage.record(addr(2), &stats(0, [101_900, 103_100]));
        assert_eq!(coverage.reported_seconds(100_000, 102_000).into_iter().collect::<Vec<_>>(), [100, 101]);
    }

    #[test]
    fn nothing_is_missing_before_a_proxy_started() {
        let mut coverage = Coverage::default();
        coverage.record(addr(1), &stats(140_000, (141..=160).map(|s| s * 1000)));
        assert_eq!(coverage.missing(100_000, 160_000), []);
        // A controller that restarted has only the last minute a proxy keeps: older time of a
        // longer window is missing.
        coverage.record(addr(2), &stats(10_000, (100..=160).map(|s| s * 1000)));
        assert_eq!(coverage.missing(40_000, 160_000), [(addr(2), 59_000)]);
    }
}
