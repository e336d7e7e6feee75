//! Prometheus metrics of the proxy (`wavelink_*`, labelled by `function` and `track`).
//!
//! Label lookups hash and allocate, so each function resolves its handles once
//! ([`FunctionMetrics`]); the request path only touches atomics. Gauges of current state (in
//! flight, queued, instances) are refreshed from the slot counters when `/metrics` is scraped.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use wavelink_core::wire::{STATUS_CLASSES, status_class};
use wavelink_server::connections::ConnectionCounters;
use wavelink_server::tls::{CertificateStore, TlsCounters};

/// Which track served a request. `None` is for requests answered by the proxy itself (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Regular,
    Emergency,
    None,
}

impl Track {
    pub const ALL: [Track; 3] = [Track::Regular, Track::Emergency, Track::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Track::Regular => "regular",
            Track::Emergency => "emergency",
            Track::None => "none",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The `x-wavelink-track` value, for requests an instance served.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Track::None => None,
            track => Some(track.as_str()),
        }
    }
}

impl From<wavelink_core::spec::Track> for Track {
    fn from(track: wavelink_core::spec::Track) -> Self {
        match track {
            wavelink_core::spec::Track::Regular => Track::Regular,
            wavelink_core::spec::Track::Emergency => Track::Emergency,
        }
    }
}

/// Why a request was turned away with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    QueueTimeout,
    QueueFull,
    /// The proxy-wide bound on waiting requests (`proxy.max-queued`) was reached.
    ProxyQueueFull,
}

/// The registry and the metric families; one per proxy.
pub struct ProxyMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    queue_wait: HistogramVec,
    rejections: IntCounterVec,
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    instances: IntGaugeVec,
    ejections: IntCounterVec,
    pub unknown_host: IntCounter,
    pub functions_rejected: IntGauge,
}

/// The client connection bounds' counters (kept by the listener as plain atomics), copied into
/// their metrics at scrape time.
struct ConnectionMetrics {
    counters: Arc<ConnectionCounters>,
    open: IntGauge,
    refused: IntCounter,
    header_timeouts: IntCounter,
    /// Two scrapes at once must not both add the same increase.
    copying: Mutex<()>,
}

impl ConnectionMetrics {
    fn new(counters: Arc<ConnectionCounters>) -> Result<Self, prometheus::Error> {
        Ok(ConnectionMetrics {
            counters,
            open: IntGauge::new("wavelink_client_connections", "Client connections open now")?,
            refused: IntCounter::new(
                "wavelink_client_connections_refused_total",
                "Client connections answered 503 and closed because proxy.max-connections were open",
            )?,
            header_timeouts: IntCounter::new(
                "wavelink_request_header_timeouts_total",
                "Client connections closed because a request header took longer than proxy.header-timeout",
            )?,
            copying: Mutex::new(()),
        })
    }
}

impl Collector for ConnectionMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [&self.open as &dyn Collector, &self.refused, &self.header_timeouts]
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _copying = self.copying.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.open.set(self.counters.open() as i64);
        for (metric, now) in
            [(&self.refused, self.counters.refused()), (&self.header_timeouts, self.counters.header_timeouts())]
        {
            metric.inc_by(now.saturating_sub(metric.get()));
        }
        [&self.open as &dyn Collector, &self.refused, &self.header_timeouts]
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

/// The TLS listener's handshakes and certificates, read at scrape time.
struct TlsMetrics {
    counters: Arc<TlsCounters>,
    store: Arc<CertificateStore>,
    handshakes: IntCounterVec,
    expiry: IntGaugeVec,
    copying: Mutex<()>,
}

impl TlsMetrics {
    fn new(counters: Arc<TlsCounters>, store: Arc<CertificateStore>) -> Result<Self, prometheus::Error> {
        Ok(TlsMetrics {
            counters,
            store,
            handshakes: IntCounterVec::new(
                Opts::new(
                    "wavelink_tls_handshakes_total",
                    "TLS handshakes with clients, by result (ok, failed, timeout)",
                ),
                &["result"],
            )?,
            expiry: IntGaugeVec::new(
                Opts::new(
                    "wavelink_tls_certificate_expiry_timestamp_seconds",
                    "When each certificate served expires (Unix time), by where it came from",
                ),
                &["certificate"],
            )?,
            copying: Mutex::new(()),
        })
    }
}

impl Collector for TlsMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [&self.handshakes as &dyn Collector, &self.expiry].into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _copying = self.copying.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (result, now) in [
            ("ok", self.counters.completed()),
            ("failed", self.counters.failed()),
            ("timeout", self.counters.timed_out()),
        ] {
            let metric = self.handshakes.with_label_values(&[result]);
            metric.inc_by(now.saturating_sub(metric.get()));
        }
        // Certificates come and go with their sources: the gauge shows those served now.
        self.expiry.reset();
        for certificate in self.store.certificates() {
            self.expiry.with_label_values(&[certificate.origin.as_str()]).set(certificate.not_after);
        }
        [&self.handshakes as &dyn Collector, &self.expiry].into_iter().flat_map(|c| c.collect()).collect()
    }
}

/// Histogram buckets in seconds, from sub-millisecond proxying to long function runs.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl ProxyMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_connections(Arc::new(ConnectionCounters::default()))
    }

    /// Adds the TLS listener's metrics.
    pub fn add_tls(&self, counters: Arc<TlsCounters>, store: Arc<CertificateStore>) -> Result<(), prometheus::Error> {
        self.registry.register(Box::new(TlsMetrics::new(counters, store)?))
    }

    /// The metrics, with those of the client connections counted in `connections`.
    pub fn with_connections(connections: Arc<ConnectionCounters>) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        registry.register(Box::new(ConnectionMetrics::new(connections)?))?;
        let requests = IntCounterVec::new(
            Opts::new("wavelink_requests_total", "Requests finished, by function, track and status class"),
            &["function", "track", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "wavelink_request_duration_seconds",
                "Time from request arrival at the proxy to the end of its response, queueing included",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["function", "track"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "wavelink_queue_wait_seconds",
                "Time requests that found no free slot waited before getting one or giving up",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["function"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new("wavelink_overload_rejections_total", "Requests answered 503 for lack of capacity"),
            &["function", "reason"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("wavelink_in_flight_requests", "Requests holding an instance slot now"),
            &["function", "track"],
        )?;
        let queued =
            IntGaugeVec::new(Opts::new("wavelink_queued_requests", "Requests waiting for a slot now"), &["function"])?;
        let instances =
            IntGaugeVec::new(Opts::new("wavelink_instances", "Routable instances now"), &["function", "track"])?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "wavelink_instance_ejections_total",
                "Regular Instances taken out of the choice for a back-off after a refused or broken connection or a timeout",
            ),
            &["function"],
        )?;
        let unknown_host = IntCounter::new(
            "wavelink_unknown_host_requests_total",
            "Requests whose Host matched no function (answered 404)",
        )?;
        let functions_rejected = IntGauge::new(
            "wavelink_functions_rejected",
            "Functions in the configuration that are not served because their settings are invalid",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(unknown_host.clone()))?;
        registry.register(Box::new(functions_rejected.clone()))?;
        Ok(ProxyMetrics {
            registry,
            requests,
            duration,
            queue_wait,
            rejections,
            in_flight,
            queued,
            instances,
            ejections,
            unknown_host,
            functions_rejected,
        })
    }

    /// Resolves every label combination of one function once.
    pub fn for_function(&self, label: &str) -> FunctionMetrics {
        let requests = Track::ALL
            .map(|track| STATUS_CLASSES.map(|code| self.requests.with_label_values(&[label, track.as_str(), code])));
        let duration = Track::ALL.map(|track| self.duration.with_label_values(&[label, track.as_str()]));
        FunctionMetrics {
            label: label.to_owned(),
            requests,
            duration,
            queue_wait: self.queue_wait.with_label_values(&[label]),
            queue_timeout: self.rejections.with_label_values(&[label, "queue_timeout"]),
            queue_full: self.rejections.with_label_values(&[label, "queue_full"]),
            proxy_queue_full: self.rejections.with_label_values(&[label, "proxy_queue_full"]),
            regular_in_flight: self.in_flight.with_label_values(&[label, Track::Regular.as_str()]),
            emergency_in_flight: self.in_flight.with_label_values(&[label, Track::Emergency.as_str()]),
            queued: self.queued.with_label_values(&[label]),
            regular_instances: self.instances.with_label_values(&[label, Track::Regular.as_str()]),
            ejections: self.ejections.with_label_values(&[label]),
        }
    }

    /// Drops every series of a function that is no longer configured.
    pub fn forget_function(&self, label: &str) {
        for track in Track::ALL {
            for code in STATUS_CLASSES {
                let _ = self.requests.remove_label_values(&[label, track.as_str(), code]);
            }
            let _ = self.duration.remove_label_values(&[label, track.as_str()]);
            let _ = self.in_flight.remove_label_values(&[label, track.as_str()]);
            let _ = self.instances.remove_label_values(&[label, track.as_str()]);
        }
        let _ = self.queue_wait.remove_label_values(&[label]);
        let _ = self.queued.remove_label_values(&[label]);
        let _ = self.ejections.remove_label_values(&[label]);
        for reason in ["queue_timeout", "queue_full", "proxy_queue_full"] {
            let _ = self.rejections.remove_label_values(&[label, reason]);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// One function's pre-resolved metric handles.
pub struct FunctionMetrics {
    pub label: String,
    requests: [[IntCounter; STATUS_CLASSES.len()]; 3],
    duration: [Histogram; 3],
    pub queue_wait: Histogram,
    queue_timeout: IntCounter,
    queue_full: IntCounter,
    proxy_queue_full: IntCounter,
    pub regular_in_flight: IntGauge,
    pub emergency_in_flight: IntGauge,
    pub queued: IntGauge,
    pub regular_instances: IntGauge,
    pub ejections: IntCounter,
}

impl FunctionMetrics {
    /// Records one finished request. `status` is `None` when no response was written.
    pub fn record(&self, track: Track, status: Option<u16>, seconds: f64) {
        self.requests[track.index()][status_class(status)].inc();
        self.duration[track.index()].observe(seconds);
    }

    pub fn record_rejection(&self, why: Rejection) {
        match why {
            Rejection::QueueTimeout => self.queue_timeout.inc(),
            Rejection::QueueFull => self.queue_full.inc(),
            Rejection::ProxyQueueFull => self.proxy_queue_full.inc(),
        }
    }

    /// Requests finished on a track, all status classes together.
    pub fn completed(&self, track: Track) -> u64 {
        self.requests[track.index()].iter().map(IntCounter::get).sum()
    }

    pub fn rejected_overload(&self) -> u64 {
        self.queue_timeout.get() + self.queue_full.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_requests_appear_in_the_exposition_and_vanish_when_forgotten() {
        let metrics = ProxyMetrics::new().unwrap();
        let f = metrics.for_function("default/hello");
        f.record(Track::Regular, Some(200), 0.01);
        f.record(Track::None, Some(503), 0.5);
        f.record_rejection(Rejection::QueueTimeout);
        assert_eq!(f.completed(Track::Regular), 1);
        assert_eq!(f.rejected_overload(), 1);
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        assert!(
            text.contains(r#"wavelink_requests_total{code="2xx",function="default/hello",track="regular"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wavelink_overload_rejections_total{function="default/hello",reason="queue_timeout"} 1"#)
        );
        metrics.forget_function("default/hello");
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        assert!(!text.contains("default/hello"), "{text}");
    }
}
