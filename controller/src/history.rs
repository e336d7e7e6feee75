//! A function's demand per second, per proxy: each scrape's samples replace that proxy's
//! earlier ones for the same seconds (a proxy reports its last minute every time), and proxies
//! add up.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use wavelink_core::autoscale::Observation;
use wavelink_core::stats::Sample;

#[derive(Debug, Default)]
pub struct History {
    per_proxy: HashMap<SocketAddr, BTreeMap<u64, Observation>>,
}

impl History {
    pub fn record(&mut self, proxy: SocketAddr, samples: &[Sample]) {
        let seconds = self.per_proxy.entry(proxy).or_default();
        for sample in samples {
            let observation = Observation::from_sample(sample);
            seconds.insert(observation.second, observation);
        }
    }

    /// Demand in seconds after `since`, summed over proxies, oldest first.
    pub fn since(&self, since: u64) -> Vec<Observation> {
        let mut merged: BTreeMap<u64, Observation> = BTreeMap::new();
        for seconds in self.per_proxy.values() {
            for (second, observation) in seconds.range(since + 1..) {
                merged.entry(*second).and_modify(|m| m.merge(observation)).or_insert(*observation);
            }
        }
        merged.into_values().collect()
    }

    /// Whether any proxy reported demand in a second after `since`.
    pub fn has_since(&self, since: u64) -> bool {
        self.per_proxy.values().any(|seconds| seconds.range(since + 1..).next().is_some())
    }

    /// Whether it holds no second at all.
    pub fn is_empty(&self) -> bool {
        self.per_proxy.is_empty()
    }

    /// Forgets seconds up to `before` (and proxies with nothing left).
    pub fn forget_before(&mut self, before: u64) {
        for seconds in self.per_proxy.values_mut() {
            *seconds = seconds.split_off(&before);
        }
        self.per_proxy.retain(|_, seconds| !seconds.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wavelink_core::stats::Concurrency;

    fn sample(second: u64, regular: u32) -> Sample {
        Sample {
            end_unix_ms: second * 1000 + 250,
            regular: Concurrency { avg: f64::from(regular), peak: regular },
            emergency: Concurrency::default(),
            queued: Concurrency::default(),
            total: Concurrency { avg: f64::from(regular), peak: regular },
            arrivals: 1,
        }
    }

    #[test]
    fn rescrapes_replace_and_proxies_add_up() {
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        let mut history = History::default();
        history.record(a, &[sample(10, 1), sample(11, 2)]);
        // The next scrape of the same proxy reports the same seconds again, and one more.
        history.record(a, &[sample(10, 1), sample(11, 2), sample(12, 3)]);
        history.record(b, &[sample(11, 5)]);
        let all = history.since(0);
        assert_eq!(all.iter().map(|o| (o.second, o.peak)).collect::<Vec<_>>(), [(10, 1.0), (11, 7.0), (12, 3.0)]);
        assert_eq!(history.since(10).len(), 2);
        history.forget_before(12);
        assert_eq!(history.since(0).len(), 1);
        history.forget_before(100);
        assert!(history.per_proxy.is_empty());
    }
}
