//! The proxy's `/stats` document: what the controller scrapes every second.
//!
//! Each function carries up to a minute of one-second samples, oldest first, so a scraper that
//! missed a few seconds can catch up (samples are keyed by `end_unix_ms`).

use serde::{Deserialize, Serialize};

/// Media type of [`ProxyStats`] in its compact encoding, what the controller asks for (`Accept`):
/// postcard (fields in declaration order, integers as varints), about a fifth of the JSON.
/// JSON stays the default for people and tools; a proxy that does not know this type answers
/// JSON, which the controller reads too (so either may be upgraded first).
pub const COMPACT_STATS: &str = "application/vnd.wavelink.stats.v1+postcard";

#[derive(Debug, thiserror::Error)]
#[error("stats are not in the compact encoding: {0}")]
pub struct CompactStatsError(#[from] postcard::Error);

impl ProxyStats {
    /// The [`COMPACT_STATS`] encoding.
    pub fn to_compact(&self) -> Result<Vec<u8>, CompactStatsError> {
        Ok(postcard::to_allocvec(self)?)
    }

    pub fn from_compact(bytes: &[u8]) -> Result<Self, CompactStatsError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

/// Everything one proxy reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStats {
    /// Length of one sample, in milliseconds.
    pub sample_interval_ms: u64,
    /// When the proxy started: it has no data for earlier seconds because it did not exist.
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Ends of the intervals every function has a sample for (oldest first): a second not
    /// listed is a gap in this proxy's data (it was stopped or starved), not zero demand.
    #[serde(default)]
    pub intervals: Vec<u64>,
    pub functions: Vec<FunctionStats>,
    /// Functions in the config that were rejected, with why.
    #[serde(default)]
    pub rejected: Vec<RejectedStats>,
}

/// One function's counters and recent samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionStats {
    pub namespace: String,
    pub name: String,
    pub scaling_mode: String,
    /// Regular Instances currently routable (draining ones excluded).
    pub regular_instances: u32,
    /// Right now, not averaged.
    pub in_flight: TrackCounts,
    /// Requests finished since the proxy started, by the track that served them.
    pub completed: TrackCounts,
    /// Requests answered 503 because no slot came in time or the queue was full.
    pub rejected_overload: u64,
    /// Oldest first, the last minute's; intervals in which the function was idle have none.
    pub samples: Vec<Sample>,
}

/// A count per track; `queued` are waiting for a slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackCounts {
    pub regular: u64,
    pub emergency: u64,
    pub queued: u64,
}

/// Concurrency over one sample interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Concurrency {
    /// Time-average over the interval.
    pub avg: f64,
    /// Highest value reached at any moment of the interval.
    pub peak: u32,
}

/// One second of one function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// End of the interval, milliseconds since the Unix epoch.
    pub end_unix_ms: u64,
    pub regular: Concurrency,
    pub emergency: Concurrency,
    pub queued: Concurrency,
    /// All of the function's requests at the proxy (regular + emergency + queued), measured as
    /// one level: its peak is the true peak of the sum, which the three peaks above are not.
    #[serde(default)]
    pub total: Concurrency,
    /// Requests that arrived during the interval.
    pub arrivals: u64,
}

impl Sample {
    /// Nothing arrived, ran or waited: the same as no sample (a reported interval without a
    /// function's sample is zero demand), so a proxy keeps and sends none for it.
    pub fn is_idle(&self) -> bool {
        let idle = |c: &Concurrency| c.peak == 0 && c.avg == 0.0;
        self.arrivals == 0 && [&self.regular, &self.emergency, &self.queued, &self.total].into_iter().all(idle)
    }
}

/// A function the proxy does not serve because its configuration is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedStats {
    pub function: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(functions: usize) -> ProxyStats {
        let level = |peak: u32| Concurrency { avg: f64::from(peak) * 0.75, peak };
        let function = |i: usize| FunctionStats {
            namespace: "default".into(),
            name: format!("fn-{i}"),
            scaling_mode: "dual".into(),
            regular_instances: 3,
            in_flight: TrackCounts { regular: 2, emergency: 1, queued: 0 },
            completed: TrackCounts { regular: 123_456, emergency: 789, queued: 0 },
            rejected_overload: 4,
            samples: vec![Sample {
                end_unix_ms: 1_796_000_000_000 + i as u64,
                regular: level(3),
                emergency: level(1),
                queued: level(0),
                total: level(4),
                arrivals: 250,
            }],
        };
        ProxyStats {
            sample_interval_ms: 1000,
            started_unix_ms: 1_795_999_000_000,
            intervals: vec![1_796_000_000_000],
            functions: (0..functions).map(function).collect(),
            rejected: vec![RejectedStats { function: "default/bad".into(), error: "window: 0s".into() }],
        }
    }

    #[test]
    fn the_compact_encoding_round_trips_and_is_a_fraction_of_json() {
        let stats = stats(100);
        let compact = stats.to_compact().unwrap();
        assert_eq!(ProxyStats::from_compact(&compact).unwrap(), stats);
        let json = serde_json::to_vec(&stats).unwrap();
        assert!(compact.len() * 3 < json.len(), "compact {} B, JSON {} B", compact.len(), json.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let compact = stats(2).to_compact().unwrap();
        assert!(ProxyStats::from_compact(&compact[..compact.len() / 2]).is_err());
        assert!(ProxyStats::from_compact(b"{\"functions\": []}").is_err());
    }
}
