//! One-second concurrency samples, taken from the slot counters by a background task.
//!
//! The request path only bumps atomics ([`crate::function::FunctionLoad`]). Every
//! [`SUB_SAMPLE`] the sampler adds the current levels to an accumulator (for the time-average);
//! every second it closes the interval with that average, the exact peak (tracked with
//! `fetch_max` on each increment) and the arrivals, and keeps the last [`KEEP_SAMPLES`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use wavelink_core::stats::{Concurrency, Sample};
use wavelink_server::assembly::every;

use crate::function::{FunctionState, LoadGauge};
use crate::router::Router;

/// How often levels are read for the time-average.
pub const SUB_SAMPLE: Duration = Duration::from_millis(50);
/// One sample covers this long.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept per function (a minute).
pub const KEEP_SAMPLES: usize = 60;

/// A function's recent samples and the interval being accumulated.
#[derive(Default)]
pub struct StatsWindow {
    samples: VecDeque<Sample>,
    regular_sum: u64,
    emergency_sum: u64,
    queued_sum: u64,
    total_sum: u64,
    ticks: u64,
}

impl StatsWindow {
    fn tick(&mut self, f: &FunctionState) {
        self.regular_sum += u64::from(f.load.regular.now());
        self.emergency_sum += u64::from(f.load.emergency.now());
        self.queued_sum += u64::from(f.load.queued.now());
        self.total_sum += u64::from(f.load.total.now());
        self.ticks += 1;
    }

    fn close(&mut self, f: &FunctionState, end_unix_ms: u64) {
        let ticks = self.ticks.max(1) as f64;
        let level = |sum: u64, gauge: &LoadGauge| Concurrency { avg: sum as f64 / ticks, peak: gauge.take_peak() };
        let sample = Sample {
            end_unix_ms,
            regular: level(self.regular_sum, &f.load.regular),
            emergency: level(self.emergency_sum, &f.load.emergency),
            queued: level(self.queued_sum, &f.load.queued),
            total: level(self.total_sum, &f.load.total),
            arrivals: f.load.arrivals.swap(0, Relaxed),
        };
        if self.samples.len() == KEEP_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        (self.regular_sum, self.emergency_sum, self.queued_sum, self.total_sum, self.ticks) = (0, 0, 0, 0, 0);
    }

    /// Closed samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().copied().collect()
    }
}

/// Takes one sub-sample of every function, and closes the interval when `close_at` is given.
pub fn sample_all(router: &Router, close_at: Option<u64>) {
    for f in router.functions() {
        let mut window = f.stats.lock();
        window.tick(&f);
        if let Some(end) = close_at {
            window.close(&f, end);
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The background task.
pub struct StatsSampler {
    pub router: Arc<Router>,
}

#[async_trait]
impl BackgroundService for StatsSampler {
    async fn start(&self, shutdown: ShutdownWatch) {
        let ticks_per_sample = (SAMPLE_INTERVAL.as_millis() / SUB_SAMPLE.as_millis()) as u32;
        every(SUB_SAMPLE, shutdown, |tick| {
            let close = (tick % ticks_per_sample == 0).then(unix_ms);
            sample_all(&self.router, close);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::PeerSettings;
    use crate::metrics::ProxyMetrics;
    use wavelink_core::{FunctionDef, FunctionId, FunctionSpec};

    fn router_with_one_function() -> (Arc<Router>, Arc<FunctionState>) {
        let settings = PeerSettings::default();
        let router = Arc::new(Router::new("example.com", Arc::new(ProxyMetrics::new().unwrap()), settings));
        let def = FunctionDef {
            id: FunctionId::new("default", "f").unwrap(),
            spec: FunctionSpec::default(),
            command: vec![],
            env: vec![],
            container: None,
            instances: vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()],
            socket_activation: true,
        };
        router.apply(vec![def], vec![]);
        let f = router.functions().pop().unwrap();
        (router, f)
    }

    #[test]
    fn a_sample_has_the_time_average_and_the_exact_peak() {
        let (router, f) = router_with_one_function();
        // Two requests for one tick, then one for three ticks: average 1.25, peak 2.
        let a = f.try_acquire().unwrap();
        let b = f.try_acquire().unwrap();
        f.load.arrivals.fetch_add(2, Relaxed);
        sample_all(&router, None);
        drop(b);
        sample_all(&router, None);
        sample_all(&router, None);
        sample_all(&router, Some(1_000));
        let samples = f.stats.lock().samples();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].regular, Concurrency { avg: 1.25, peak: 2 });
        assert_eq!(samples[0].arrivals, 2);
        assert_eq!(samples[0].end_unix_ms, 1_000);
        // The next interval starts at the current level, not at the old peak.
        drop(a);
        sample_all(&router, Some(2_000));
        let samples = f.stats.lock().samples();
        assert_eq!(samples[1].regular, Concurrency { avg: 0.0, peak: 1 });
        assert_eq!(samples[1].arrivals, 0);
    }

    #[test]
    fn the_total_is_one_level_not_a_sum_of_peaks() {
        let (router, f) = router_with_one_function();
        // A request waits, then is served: queued and regular each peak at 1 within the second,
        // but there was only ever one request.
        f.load.arrived();
        let slot = f.try_acquire().unwrap();
        drop(slot);
        f.load.left();
        sample_all(&router, Some(1_000));
        let sample = f.stats.lock().samples()[0];
        assert_eq!(sample.total.peak, 1);
        assert_eq!(sample.arrivals, 1);
    }

    #[test]
    fn a_peak_between_sub_samples_is_not_missed() {
        let (router, f) = router_with_one_function();
        drop((f.try_acquire().unwrap(), f.try_acquire().unwrap()));
        sample_all(&router, Some(1_000));
        assert_eq!(f.stats.lock().samples()[0].regular.peak, 2);
    }

    #[test]
    fn only_the_last_minute_is_kept() {
        let (router, f) = router_with_one_function();
        for second in 0..(KEEP_SAMPLES as u64 + 5) {
            sample_all(&router, Some(second * 1000));
        }
        let samples = f.stats.lock().samples();
        assert_eq!(samples.len(), KEEP_SAMPLES);
        assert_eq!(samples[0].end_unix_ms, 5_000);
    }
}
