//! The proxy's `/stats` document: what the controller scrapes every second.
//!
//! Each function carries up to a minute of one-second samples, oldest first, so a scraper that
//! missed a few seconds can catch up (samples are keyed by `end_unix_ms`).

use serde::{Deserialize, Serialize};

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
