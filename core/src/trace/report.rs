//! The report of a replay: per-invocation slowdown (end-to-end time over requested runtime),
//! each function's p99 slowdown and their geometric mean (the dual-track paper's headline
//! metric), latency percentiles, and the shares of errors and of Emergency Instances.

use serde::{Deserialize, Serialize};

use crate::spec::Track;

/// What happened to one invocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// Intended send time, microseconds from the start of the replay.
    pub intended_us: u64,
    pub function: usize,
    pub requested_ms: u32,
    /// The instance's own measure of its execution (`x-wavelink-exec-us`).
    pub exec_us: Option<u64>,
    /// From the intended send time to the end of the response.
    pub e2e_us: u64,
    /// `None` when no response came (connection error, timeout).
    pub status: Option<u16>,
    pub track: Option<Track>,
}

impl Record {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// End-to-end time over requested runtime (at least 1 ms, so instant functions do not
    /// divide by zero).
    pub fn slowdown(&self) -> f64 {
        self.e2e_us as f64 / (f64::from(self.requested_ms.max(1)) * 1000.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSummary {
    pub function: usize,
    pub invocations: u64,
    pub succeeded: u64,
    pub p50_slowdown: f64,
    pub p99_slowdown: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub invocations: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Successful invocations served by Emergency Instances.
    pub emergency: u64,
    /// Geometric mean over functions of each function's p99 slowdown.
    pub geomean_p99_slowdown: f64,
    pub p50_slowdown: f64,
    pub p99_slowdown: f64,
    pub p50_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub p999_latency_ms: f64,
    pub functions: Vec<FunctionSummary>,
}

impl Report {
    pub fn error_share(&self) -> f64 {
        ratio(self.failed, self.invocations)
    }

    pub fn emergency_share(&self) -> f64 {
        ratio(self.emergency, self.succeeded)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Nearest-rank percentile of sorted values (`q` in 0..=1); 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// Summarises a replay. Slowdowns and latencies count successful invocations only; failures
/// are reported as a share.
pub fn summarize(records: &[Record], function_count: usize) -> Report {
    let mut per_function: Vec<Vec<f64>> = vec![Vec::new(); function_count];
    let mut invocations_per_function = vec![0u64; function_count];
    let mut slowdowns = Vec::with_capacity(records.len());
    let mut latencies_ms = Vec::with_capacity(records.len());
    let mut emergency = 0;
    for record in records {
        if let Some(count) = invocations_per_function.get_mut(record.function) {
            *count += 1;
        }
        if !record.succeeded() {
            continue;
        }
        let slowdown = record.slowdown();
        if let Some(values) = per_function.get_mut(record.function) {
            values.push(slowdown);
        }
        slowdowns.push(slowdown);
        latencies_ms.push(record.e2e_us as f64 / 1000.0);
        if record.track == Some(Track::Emergency) {
            emergency += 1;
        }
    }
    let sort = |v: &mut Vec<f64>| v.sort_by(f64::total_cmp);
    sort(&mut slowdowns);
    sort(&mut latencies_ms);
    let functions: Vec<FunctionSummary> = per_function
        .into_iter()
        .enumerate()
        .filter(|(i, _)| invocations_per_function[*i] > 0)
        .map(|(function, mut values)| {
            sort(&mut values);
            FunctionSummary {
                function,
                invocations: invocations_per_function[function],
                succeeded: values.len() as u64,
                p50_slowdown: percentile(&values, 0.50),
                p99_slowdown: percentile(&values, 0.99),
            }
        })
        .collect();
    let p99s: Vec<f64> = functions.iter().filter(|f| f.succeeded > 0).map(|f| f.p99_slowdown).collect();
    let geomean =
        if p99s.is_empty() { 0.0 } else { (p99s.iter().map(|s| s.ln()).sum::<f64>() / p99s.len() as f64).exp() };
    let succeeded = slowdowns.len() as u64;
    Report {
        invocations: records.len() as u64,
        succeeded,
        failed: records.len() as u64 - succeeded,
        emergency,
        geomean_p99_slowdown: geomean,
        p50_slowdown: percentile(&slowdowns, 0.50),
        p99_slowdown: percentile(&slowdowns, 0.99),
        p50_latency_ms: percentile(&latencies_ms, 0.50),
        p99_latency_ms: percentile(&latencies_ms, 0.99),
        p999_latency_ms: percentile(&latencies_ms, 0.999),
        functions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(function: usize, requested_ms: u32, e2e_ms: u64, status: Option<u16>, track: Track) -> Record {
        Record {
            intended_us: 0,
            function,
            requested_ms,
            exec_us: Some(u64::from(requested_ms) * 1000),
            e2e_us: e2e_ms * 1000,
            status,
            track: Some(track),
        }
    }

    #[test]
    fn slowdown_is_end_to_end_over_requested_runtime() {
        assert_eq!(record(0, 100, 150, Some(200), Track::Regular).slowdown(), 1.5);
        assert_eq!(record(0, 0, 3, Some(200), Track::Regular).slowdown(), 3.0, "0 ms counts as 1 ms");
    }

    #[test]
    fn the_headline_is_the_geometric_mean_of_per_function_p99s() {
        let mut records = Vec::new();
        // Function 0 always at slowdown 2, function 1 always at 8: p99s 2 and 8, geomean 4.
        for _ in 0..50 {
            records.push(record(0, 100, 200, Some(200), Track::Regular));
            records.push(record(1, 10, 80, Some(200), Track::Emergency));
        }
        // A failure counts as an invocation and an error, not as a slowdown.
        records.push(record(1, 10, 5000, None, Track::Regular));
        let report = summarize(&records, 3);
        assert_eq!(report.functions.len(), 2, "function 2 had no invocations");
        assert_eq!(report.functions[0].p99_slowdown, 2.0);
        assert_eq!(report.functions[1].p99_slowdown, 8.0);
        assert_eq!(report.functions[1].invocations, 51);
        assert_eq!(report.functions[1].succeeded, 50);
        assert!((report.geomean_p99_slowdown - 4.0).abs() < 1e-9);
        assert_eq!(report.invocations, 101);
        assert_eq!(report.failed, 1);
        assert_eq!(report.emergency, 50);
        assert!((report.error_share() - 1.0 / 101.0).abs() < 1e-12);
        assert!((report.emergency_share() - 0.5).abs() < 1e-12);
        assert_eq!(report.p99_latency_ms, 200.0);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.001), 7.0);
    }
}
