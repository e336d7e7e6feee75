//! One-second concurrency samples, taken from the slot counters by a background task.
//!
//! The request path only bumps atomics ([`crate::function::FunctionLoad`]). Every
//! [`SUB_SAMPLE`] the sampler adds the current levels to an accumulator (for the time-average);
//! every second it closes the interval with that average, the exact peak (tracked with
//! `fetch_max` on each increment) and the arrivals, and keeps the last [`KEEP_SAMPLES`].
//!
//! An interval that took far longer than a second (the process was stopped, or starved) is
//! dropped rather than reported: its peak holds requests whose clients gave up long ago, and
//! one such "second" would keep the autoscaler's window high. The controller sees the missing
//! second as a gap in this proxy's data, not as demand. [`SampledIntervals`] lists the seconds
//! reported, so the controller can tell "no traffic" from "no data".

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

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
    /// End of the last interval with any activity (0: none since the proxy started).
    last_active_unix_ms: u64,
}

impl StatsWindow {
    fn tick(&mut self, f: &FunctionState) {
        self.regular_sum += u64::from(f.load.regular.now());
        self.emergency_sum += u64::from(f.load.emergency.now());
        self.queued_sum += u64::from(f.load.queued.now());
        self.total_sum += u64::from(f.load.total.now());
        self.ticks += 1;
    }

    /// Ends the interval: its sample is kept, unless the interval spanned a stall (the peaks
    /// and arrivals are taken either way, so the next interval starts afresh).
    fn close(&mut self, f: &FunctionState, close: Close) {
        let ticks = self.ticks.max(1) as f64;
        let level = |sum: u64, gauge: &LoadGauge| Concurrency { avg: sum as f64 / ticks, peak: gauge.take_peak() };
        let sample = Sample {
            end_unix_ms: 0,
            regular: level(self.regular_sum, &f.load.regular),
            emergency: level(self.emergency_sum, &f.load.emergency),
            queued: level(self.queued_sum, &f.load.queued),
            total: level(self.total_sum, &f.load.total),
            arrivals: f.load.arrivals.swap(0, Relaxed),
        };
        (self.regular_sum, self.emergency_sum, self.queued_sum, self.total_sum, self.ticks) = (0, 0, 0, 0, 0);
        let Close::At { end_unix_ms } = close else { return };
        let oldest_kept = end_unix_ms.saturating_sub(KEEP_SAMPLES as u64 * SAMPLE_INTERVAL.as_millis() as u64);
        while self.samples.front().is_some_and(|s| s.end_unix_ms <= oldest_kept) {
            self.samples.pop_front();
        }
        if !sample.is_idle() {
            self.last_active_unix_ms = end_unix_ms;
            self.samples.push_back(Sample { end_unix_ms, ..sample });
        } else if self.samples.is_empty() && self.samples.capacity() > 0 {
            // Idle for a minute: the samples' memory goes back.
            self.samples = VecDeque::new();
        }
    }

    /// Whether nothing ran, waited or arrived since the interval began: every level was zero
    /// all along (a peak restarts at its level when an interval closes, and is at least the
    /// level), so a sub-sample of zeros can be skipped without taking the lock.
    fn nothing_since_close(f: &FunctionState) -> bool {
        let load = &f.load;
        load.total.now() == 0
            && [&load.total, &load.regular, &load.emergency, &load.queued].iter().all(|gauge| gauge.peak() == 0)
            && load.arrivals.load(Relaxed) == 0
    }

    /// Closed samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().copied().collect()
    }

    /// Closed samples of intervals that ended after `since_unix_ms`, oldest first.
    pub fn samples_after(&self, since_unix_ms: u64) -> Vec<Sample> {
        self.samples.iter().filter(|s| s.end_unix_ms > since_unix_ms).copied().collect()
    }
}

/// How an interval ends: reported, or dropped because it spanned a stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    At { end_unix_ms: u64 },
    Stalled,
}

/// An interval longer than this is a stall, not a second of demand.
pub const STALL: Duration = Duration::from_secs(2);

/// The intervals this proxy reported (ends, oldest first, the last [`KEEP_SAMPLES`]) and when
/// it started: every function had a sample for each of them, zero or not.
pub struct SampledIntervals {
    pub started_unix_ms: u64,
    ends: parking_lot::Mutex<VecDeque<u64>>,
}

impl Default for SampledIntervals {
    fn default() -> Self {
        SampledIntervals { started_unix_ms: unix_ms(), ends: parking_lot::Mutex::new(VecDeque::new()) }
    }
}

impl SampledIntervals {
    fn push(&self, end_unix_ms: u64) {
        let mut ends = self.ends.lock();
        if ends.len() == KEEP_SAMPLES {
            ends.pop_front();
        }
        ends.push_back(end_unix_ms);
    }

    pub fn ends(&self) -> Vec<u64> {
        self.ends.lock().iter().copied().collect()
    }
}

/// Takes one sub-sample of every function, and closes the interval when `close` is given; then
/// drops the metric series of functions idle for `metrics_expiry` (`None`: never).
pub fn sample_all(router: &Router, close: Option<Close>, metrics_expiry: Option<Duration>) {
    for f in router.table().functions.iter() {
        if f.queued() > 0 {
            // Capacity that came back on its own (a Wavelet's "full" mark or an instance's
            // ejection expired) reaches waiters within a sub-sample.
            f.wake_waiters();
        }
        // Most of many functions are idle: a sub-sample costs them three atomic loads.
        if close.is_none() && StatsWindow::nothing_since_close(f) {
            continue;
        }
        let mut guard = f.stats.lock();
        if guard.is_none() && StatsWindow::nothing_since_close(f) {
            // Idle and no window: nothing to close (its peaks and arrivals are zero).
            continue;
        }
        let window = guard.get_or_insert_with(Box::default);
        window.tick(f);
        let Some(close) = close else { continue };
        window.close(f, close);
        let idle_since = window.last_active_unix_ms;
        let empty = window.samples.is_empty();
        if let (Close::At { end_unix_ms }, Some(expiry)) = (close, metrics_expiry) {
            let expired = idle_since > 0 && end_unix_ms.saturating_sub(idle_since) >= expiry.as_millis() as u64;
            if expired && f.has_metrics() {
                drop(guard);
                if f.expire_metrics() {
                    debug!(function = %f.id, idle = ?Duration::from_millis(end_unix_ms - idle_since), "metric series dropped after idling");
                }
                guard = f.stats.lock();
            }
        }
        // Nothing kept and nothing to time an expiry from: the window's memory goes back.
        if empty && !f.has_metrics() && StatsWindow::nothing_since_close(f) {
            *guard = None;
        }
    }
    if let Some(Close::At { end_unix_ms }) = close {
        router.sampled().push(end_unix_ms);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The background task.
pub struct StatsSampler {
    pub router: Arc<Router>,
    /// `proxy.metrics-expiry`; `None`: series are kept while the function is configured.
    pub metrics_expiry: Option<Duration>,
}

#[async_trait]
impl BackgroundService for StatsSampler {
    async fn start(&self, shutdown: ShutdownWatch) {
        let ticks_per_sample = (SAMPLE_INTERVAL.as_millis() / SUB_SAMPLE.as_millis()) as u32;
        let mut opened = Instant::now();
        every(SUB_SAMPLE, shutdown, |tick| {
            let close = (tick % ticks_per_sample == 0).then(|| {
                let took = std::mem::replace(&mut opened, Instant::now()).elapsed();
                if took > STALL {
                    warn!(?took, "a one-second sample took much longer (the proxy was stopped or starved); dropped");
                    Close::Stalled
                } else {
                    Close::At { end_unix_ms: unix_ms() }
                }
            });
            sample_all(&self.router, close, self.metrics_expiry);
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::PeerSettings;
    use crate::metrics::{ProxyMetrics, Track};
    use wavelink_core::{FunctionDef, FunctionId, FunctionSpec};

    fn router_with_one_function() -> (Arc<Router>, Arc<FunctionState>) {
        let settings = PeerSettings::default();
        let router = Arc::new(Router::new("example.com", Arc::new(ProxyMetrics::new().unwrap()), settings));
        let def = FunctionDef {
            id: FunctionId::new("default", "f").unwrap(),
            spec: Arc::new(FunctionSpec::default()),
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
        sample_all(&router, None, None);
        drop(b);
        sample_all(&router, None, None);
        sample_all(&router, None, None);
        sample_all(&router, Some(Close::At { end_unix_ms: 1_000 }), None);
        let samples = f.samples();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].regular, Concurrency { avg: 1.25, peak: 2 });
        assert_eq!(samples[0].arrivals, 2);
        assert_eq!(samples[0].end_unix_ms, 1_000);
        // The next interval starts at the current level, not at the old peak.
        drop(a);
        sample_all(&router, Some(Close::At { end_unix_ms: 2_000 }), None);
        let samples = f.samples();
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
        sample_all(&router, Some(Close::At { end_unix_ms: 1_000 }), None);
        let sample = f.samples()[0];
        assert_eq!(sample.total.peak, 1);
        assert_eq!(sample.arrivals, 1);
    }

    #[test]
    fn a_peak_between_sub_samples_is_not_missed() {
        let (router, f) = router_with_one_function();
        drop((f.try_acquire().unwrap(), f.try_acquire().unwrap()));
        sample_all(&router, Some(Close::At { end_unix_ms: 1_000 }), None);
        assert_eq!(f.samples()[0].regular.peak, 2);
    }

    #[test]
    fn only_the_last_minute_is_kept_and_idle_seconds_have_no_sample() {
        let (router, f) = router_with_one_function();
        for second in 1..=(KEEP_SAMPLES as u64 + 5) {
            // A request arrives in every other second.
            if second % 2 == 0 {
                f.load.arrived();
                f.load.left();
            }
            sample_all(&router, Some(Close::At { end_unix_ms: second * 1000 }), None);
        }
        let ends: Vec<u64> = f.samples().iter().map(|s| s.end_unix_ms).collect();
        assert_eq!(ends, (6..=65).filter(|s| s % 2 == 0).map(|s| s * 1000).collect::<Vec<_>>());
        assert_eq!(router.sampled().ends().first(), Some(&6_000), "every interval is listed");
        assert_eq!(f.samples_after(60_000).len(), 2, "seconds 62 and 64");
        // A minute without requests: nothing left, and the window's memory is back.
        for second in 66..=130 {
            sample_all(&router, Some(Close::At { end_unix_ms: second * 1000 }), None);
        }
        assert!(f.samples().is_empty());
        assert!(f.stats.lock().is_none(), "an idle function without metric series holds no window");
    }

    fn exposition(router: &Router) -> String {
        String::from_utf8(router.metrics().encode().unwrap()).unwrap()
    }

    #[test]
    fn metric_series_are_dropped_after_the_expiry_without_requests_and_come_back_with_the_next() {
        let (router, f) = router_with_one_function();
        let expiry = Some(Duration::from_secs(10));
        let series = r#"wavelink_requests_total{code="2xx",function="default/f",track="regular"}"#;
        let close = |second: u64| sample_all(&router, Some(Close::At { end_unix_ms: second * 1000 }), expiry);
        // A request at second 1.
        f.load.arrived();
        f.metrics().record(Track::Regular, Some(200), 0.01);
        f.load.left();
        close(1);
        assert!(exposition(&router).contains(&format!("{series} 1")));
        // A request in flight for longer than the expiry keeps them: it is activity.
        f.load.arrived();
        let slot = f.try_acquire().unwrap();
        for second in 2..=30 {
            close(second);
        }
        assert!(f.has_metrics(), "a request is in flight");
        f.metrics().record(Track::Regular, Some(200), 29.0);
        drop(slot);
        f.load.left();
        close(31);
        // Idle from second 31: kept until 10 s later, then gone from the exposition.
        for second in 32..=40 {
            close(second);
        }
        assert!(exposition(&router).contains(&format!("{series} 2")), "idle for 9 s only");
        close(41);
        assert!(!f.has_metrics());
        assert!(!exposition(&router).contains("default/f"), "{}", exposition(&router));
        // The next request brings them back, counting from zero.
        f.load.arrived();
        f.metrics().record(Track::Regular, Some(200), 0.01);
        f.load.left();
        close(42);
        assert!(exposition(&router).contains(&format!("{series} 1")));
    }

    #[test]
    fn series_taken_by_a_request_that_arrived_in_the_closing_second_are_not_dropped() {
        let (router, f) = router_with_one_function();
        f.load.arrived();
        f.metrics().record(Track::Regular, Some(200), 0.01);
        f.load.left();
        sample_all(&router, Some(Close::At { end_unix_ms: 1_000 }), None);
        for second in 2..=20 {
            sample_all(&router, Some(Close::At { end_unix_ms: second * 1000 }), None);
        }
        // A request arrives and takes the handles just as the series expire.
        f.load.arrived();
        let handles = f.metrics();
        assert!(!f.expire_metrics(), "it arrived since the last close");
        handles.record(Track::Regular, Some(200), 0.01);
        f.load.left();
        assert!(exposition(&router).contains(r#"function="default/f",track="regular"} 2"#));
    }

    #[test]
    fn an_interval_spanning_a_stall_is_dropped_with_its_peak() {
        let (router, f) = router_with_one_function();
        f.load.arrived();
        f.load.left();
        sample_all(&router, Some(Close::At { end_unix_ms: 1_000 }), None);
        // Sixteen requests whose clients left while the proxy was stopped: they end soon
        // after it resumes, within the interval that spans the stall...
        for _ in 0..16 {
            f.load.arrived();
        }
        sample_all(&router, None, None);
        for _ in 0..16 {
            f.load.left();
        }
        sample_all(&router, Some(Close::Stalled), None);
        // ...which is not reported, and its peak is not carried into the next second (idle: no
        // sample at all).
        sample_all(&router, Some(Close::At { end_unix_ms: 2_000 }), None);
        let samples = f.samples();
        assert_eq!(samples.iter().map(|s| s.end_unix_ms).collect::<Vec<_>>(), [1_000]);
        assert_eq!(router.sampled().ends(), [1_000, 2_000]);
    }
}
