//! Prometheus metrics of a Wavelet (`wavelink_emergency_*`, labelled by `function`; every series
//! also carries `runtime`: `process` or `containerd`).

use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use wavelink_core::wire::{STATUS_CLASSES, status_class};

/// Why an Emergency Instance was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyReason {
    /// Idle for longer than the function's emergency-keepalive.
    Idle,
    /// emergency-keepalive 0: one request per instance.
    OneShot,
    /// The process exited by itself.
    Exited,
    /// The function was removed from the configuration.
    Removed,
    /// The Wavelet is shutting down.
    Shutdown,
}

impl DestroyReason {
    pub const ALL: [DestroyReason; 5] = [
        DestroyReason::Idle,
        DestroyReason::OneShot,
        DestroyReason::Exited,
        DestroyReason::Removed,
        DestroyReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DestroyReason::Idle => "idle",
            DestroyReason::OneShot => "one_shot",
            DestroyReason::Exited => "exited",
            DestroyReason::Removed => "removed",
            DestroyReason::Shutdown => "shutdown",
        }
    }
}

/// Spawn-to-first-byte and start-phase buckets, from a fast process start to a slow container.
const START_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25,
    0.5, 1.0, 2.5,
];

pub struct WaveletMetrics {
    registry: Registry,
    spawned: IntCounterVec,
    reused: IntCounterVec,
    destroyed: IntCounterVec,
    spawn_failures: IntCounterVec,
    live: IntGaugeVec,
    first_byte: HistogramVec,
    memory: CounterVec,
    requests: IntCounterVec,
    phases: HistogramVec,
    pub full: IntCounter,
    pub live_total: IntGauge,
    pub orphans_reaped: IntCounter,
}

impl WaveletMetrics {
    /// Metrics of a Wavelet whose instances run on `runtime` (`process`, `containerd`).
    pub fn new(runtime: &str) -> Result<Self, prometheus::Error> {
        let labels = std::collections::HashMap::from([("runtime".to_owned(), runtime.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let spawned = IntCounterVec::new(
            Opts::new("wavelink_emergency_instances_spawned_total", "Emergency Instances started"),
            &["function"],
        )?;
        let reused = IntCounterVec::new(
            Opts::new(
                "wavelink_emergency_instances_reused_total",
                "Requests served by an already running Emergency Instance",
            ),
            &["function"],
        )?;
        let destroyed = IntCounterVec::new(
            Opts::new("wavelink_emergency_instances_destroyed_total", "Emergency Instances destroyed, by reason"),
            &["function", "reason"],
        )?;
        let spawn_failures = IntCounterVec::new(
            Opts::new("wavelink_emergency_spawn_failures_total", "Emergency Instances that could not be started"),
            &["function"],
        )?;
        let live = IntGaugeVec::new(
            Opts::new("wavelink_emergency_instances", "Emergency Instances alive now"),
            &["function"],
        )?;
        let first_byte = HistogramVec::new(
            HistogramOpts::new(
                "wavelink_emergency_spawn_to_first_byte_seconds",
                "From deciding to start an instance to the first response byte from it",
            )
            .buckets(START_BUCKETS.to_vec()),
            &["function"],
        )?;
        let memory = CounterVec::new(
            Opts::new(
                "wavelink_emergency_memory_byte_seconds_total",
                "Resident memory of Emergency Instances integrated over their lifetime (bytes x seconds, from /proc)",
            ),
            &["function"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new("wavelink_wavelet_requests_total", "Requests the Wavelet finished, by function and status class"),
            &["function", "code"],
        )?;
        let phases = HistogramVec::new(
            HistogramOpts::new(
                "wavelink_emergency_start_phase_seconds",
                "Time of each phase of starting a container instance (image, snapshot, container, task_create, \
                 network with --egress=nat, task_start; all but task_start are off the request path for \
                 prepared instances)",
            )
            .buckets(START_BUCKETS.to_vec()),
            &["phase", "prepared"],
        )?;
        let full =
            IntCounter::new("wavelink_wavelet_full_total", "Requests turned away at the node-wide instance cap")?;
        let live_total = IntGauge::new("wavelink_wavelet_instances", "Emergency Instances alive on this node")?;
        let orphans_reaped = IntCounter::new(
            "wavelink_wavelet_orphans_reaped_total",
            "Exited processes that instances left behind, reaped by the Wavelet (their subreaper)",
        )?;
        for collector in [
            Box::new(spawned.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reused.clone()),
            Box::new(destroyed.clone()),
            Box::new(spawn_failures.clone()),
            Box::new(live.clone()),
            Box::new(first_byte.clone()),
            Box::new(memory.clone()),
            Box::new(requests.clone()),
            Box::new(phases.clone()),
            Box::new(full.clone()),
            Box::new(live_total.clone()),
            Box::new(orphans_reaped.clone()),
        ] {
            registry.register(collector)?;
        }
        Ok(WaveletMetrics {
            registry,
            spawned,
            reused,
            destroyed,
            spawn_failures,
            live,
            first_byte,
            memory,
            requests,
            phases,
            full,
            live_total,
            orphans_reaped,
        })
    }

    /// Records how long each phase of a container start took.
    pub fn observe_phases(&self, phases: &crate::containerd::StartPhases) {
        let prepared = if phases.prepared { "true" } else { "false" };
        let observed = [
            ("image", phases.image),
            ("snapshot", phases.snapshot),
            ("container", phases.container),
            ("task_create", phases.task_create),
            ("network", phases.network),
            ("task_start", phases.task_start),
        ];
        for (phase, took) in observed {
            // Without egress there is no network phase.
            if phase == "network" && took.is_zero() {
                continue;
            }
            // A prepared instance did its first phases ahead of time; only what ran now counts.
            if phases.prepared && phase != "task_start" {
                continue;
            }
            self.phases.with_label_values(&[phase, prepared]).observe(took.as_secs_f64());
        }
    }

    pub fn for_function(&self, label: &str) -> FunctionMetrics {
        FunctionMetrics {
            spawned: self.spawned.with_label_values(&[label]),
            reused: self.reused.with_label_values(&[label]),
            destroyed: DestroyReason::ALL.map(|r| self.destroyed.with_label_values(&[label, r.as_str()])),
            spawn_failures: self.spawn_failures.with_label_values(&[label]),
            live: self.live.with_label_values(&[label]),
            first_byte: self.first_byte.with_label_values(&[label]),
            memory: self.memory.with_label_values(&[label]),
            requests: STATUS_CLASSES.map(|code| self.requests.with_label_values(&[label, code])),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// One function's pre-resolved handles.
pub struct FunctionMetrics {
    pub spawned: IntCounter,
    pub reused: IntCounter,
    destroyed: [IntCounter; 5],
    pub spawn_failures: IntCounter,
    pub live: IntGauge,
    pub first_byte: Histogram,
    pub memory: Counter,
    requests: [IntCounter; STATUS_CLASSES.len()],
}

impl FunctionMetrics {
    pub fn destroyed(&self, reason: DestroyReason) {
        self.destroyed[reason as usize].inc();
    }

    pub fn record_request(&self, status: Option<u16>) {
        self.requests[status_class(status)].inc();
    }
}
