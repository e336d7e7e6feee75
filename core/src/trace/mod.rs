//! Serverless traces: the Azure Functions layout, synthetic bimodal traces, the invocation
//! schedule derived from per-minute counts, and the slowdown report of a replay.
//!
//! All of it is plain computation over data (seeded, so a schedule is reproducible); reading
//! files, sending requests and drawing plots happen in the load tool.

pub mod arrivals;
pub mod azure;
pub mod report;
pub mod synthetic;

use std::fmt;

/// A trace: per function, invocations per minute and the distributions of runtime and memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub functions: Vec<TraceFunction>,
    /// Minutes covered (the length of every `per_minute`).
    pub minutes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TraceFunction {
    pub hash_owner: String,
    pub hash_app: String,
    pub hash_function: String,
    pub trigger: String,
    pub per_minute: Vec<u32>,
    /// Runtime per invocation, in milliseconds.
    pub durations_ms: Percentiles,
    /// Memory per invocation, in MiB (per application in the Azure data).
    pub memory_mb: Option<Percentiles>,
}

impl TraceFunction {
    /// The function's name on the platform: a DNS label derived from its hash.
    pub fn name(&self) -> String {
        let hex: String = self
            .hash_function
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .take(12)
            .collect();
        format!("fn-{hex}")
    }

    pub fn invocations(&self) -> u64 {
        self.per_minute.iter().map(|&c| u64::from(c)).sum()
    }
}

/// A distribution given by values at increasing percentile levels (0 to 1); sampling draws
/// a level uniformly and interpolates linearly between the two nearest points, so every sample
/// falls within the band of its level.
#[derive(Debug, Clone, PartialEq)]
pub struct Percentiles {
    points: Vec<(f64, f64)>,
}

impl Percentiles {
    /// Points `(level, value)`: levels from 0 to 1, increasing; values not decreasing.
    pub fn new(points: Vec<(f64, f64)>) -> Result<Percentiles, String> {
        let starts_at_0 = points.first().is_some_and(|(level, _)| *level == 0.0);
        let ends_at_1 = points.last().is_some_and(|(level, _)| *level == 1.0);
        if points.len() < 2 || !starts_at_0 || !ends_at_1 {
            return Err("percentiles must run from level 0 to level 1".into());
        }
        for pair in points.windows(2) {
            let ((l0, v0), (l1, v1)) = (pair[0], pair[1]);
            if l1 <= l0 {
                return Err(format!("percentile levels must increase ({l0} then {l1})"));
            }
            if v1 < v0 {
                return Err(format!("percentile values decrease ({v0} at {l0}, then {v1} at {l1})"));
            }
        }
        Ok(Percentiles { points })
    }

    /// The value at `level` (0 to 1), interpolated.
    pub fn value_at(&self, level: f64) -> f64 {
        let level = level.clamp(0.0, 1.0);
        let upper = self.points.iter().position(|(l, _)| *l >= level).unwrap_or(self.points.len() - 1);
        if upper == 0 {
            return self.points[0].1;
        }
        let ((l0, v0), (l1, v1)) = (self.points[upper - 1], self.points[upper]);
        v0 + (v1 - v0) * (level - l0) / (l1 - l0)
    }

    /// A sample for a uniform draw `u` in [0, 1).
    pub fn sample(&self, u: f64) -> f64 {
        self.value_at(u)
    }

    pub fn points(&self) -> &[(f64, f64)] {
        &self.points
    }
}

/// A trace file could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file} line {line}: {message}")]
pub struct TraceError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl TraceError {
    pub fn new(file: &str, line: usize, message: impl fmt::Display) -> Self {
        TraceError { file: file.to_owned(), line, message: message.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durations() -> Percentiles {
        Percentiles::new(vec![(0.0, 10.0), (0.25, 50.0), (0.5, 100.0), (0.99, 900.0), (1.0, 1000.0)]).unwrap()
    }

    #[test]
    fn values_interpolate_between_points() {
        let p = durations();
        assert_eq!(p.value_at(0.0), 10.0);
        assert_eq!(p.value_at(0.5), 100.0);
        assert_eq!(p.value_at(0.375), 75.0);
        assert_eq!(p.value_at(1.0), 1000.0);
        assert_eq!(p.value_at(2.0), 1000.0);
    }

    #[test]
    fn samples_fall_within_the_band_of_their_level() {
        let p = durations();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let u = rng.f64();
            let value = p.sample(u);
            let band = p.points().windows(2).find(|w| u >= w[0].0 && u <= w[1].0).unwrap();
            assert!(value >= band[0].1 && value <= band[1].1, "u={u} value={value} band={band:?}");
        }
    }

    #[test]
    fn malformed_percentiles_are_refused() {
        assert!(Percentiles::new(vec![(0.0, 1.0)]).is_err());
        assert!(Percentiles::new(vec![(0.1, 1.0), (1.0, 2.0)]).is_err());
        assert!(Percentiles::new(vec![(0.0, 1.0), (0.5, 3.0), (0.5, 4.0), (1.0, 5.0)]).is_err());
        assert!(Percentiles::new(vec![(0.0, 5.0), (1.0, 4.0)]).is_err());
    }

    #[test]
    fn names_are_dns_labels_from_the_hash() {
        let f = TraceFunction {
            hash_owner: "o".into(),
            hash_app: "a".into(),
            hash_function: "9A3F00bb112233445566".into(),
            trigger: "http".into(),
            per_minute: vec![1, 2],
            durations_ms: durations(),
            memory_mb: None,
        };
        assert_eq!(f.name(), "fn-9a3f00bb1122");
        assert!(crate::FunctionId::new("default", &f.name()).is_ok());
        assert_eq!(f.invocations(), 3);
    }
}
