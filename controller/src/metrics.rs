//! Prometheus metrics of the controller (`wavelink_controller_*`, labelled by `function`).

use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct ControllerMetrics {
    registry: Registry,
    pub desired: IntGaugeVec,
    pub ready: IntGaugeVec,
    pub panic: IntGaugeVec,
    /// 1 while some proxy's data is missing from the function's window (no scale-down).
    pub incomplete: IntGaugeVec,
    /// Seconds since a proxy's newest reported interval.
    pub proxy_data_age: GaugeVec,
    pub decisions: IntCounterVec,
    pub writes: IntCounterVec,
    pub api_errors: IntCounterVec,
    pub scrape_errors: IntCounterVec,
    pub pokes: IntCounterVec,
    pub leader: IntGauge,
    /// Functions the last round skipped: nothing to decide (`Decider::at_rest`).
    pub at_rest: IntGauge,
    /// Local backend: RI processes started (cold starts on the standard track).
    pub regular_started: IntCounterVec,
    /// Local backend: resident memory of RIs integrated over their lifetime.
    pub regular_memory: CounterVec,
}

impl ControllerMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["function"]);
        let desired = gauge("wavelink_controller_desired_instances", "Regular Instances the autoscaler asks for")?;
        let ready = gauge("wavelink_controller_instances", "Regular Instances ready")?;
        let panic = gauge("wavelink_controller_panic", "1 while the autoscaler is in panic mode")?;
        let incomplete = gauge(
            "wavelink_controller_incomplete_data",
            "1 while some proxy's data is missing from the stable window (the count may rise, not fall)",
        )?;
        let proxy_data_age = GaugeVec::new(
            Opts::new("wavelink_controller_proxy_data_age_seconds", "Seconds since a proxy's newest one-second sample"),
            &["proxy"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new("wavelink_controller_decisions_total", "Autoscaling decisions, by what decided them"),
            &["function", "reason"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new("wavelink_controller_scale_writes_total", "Changes of the number of Regular Instances written"),
            &["function"],
        )?;
        let api_errors = IntCounterVec::new(
            Opts::new("wavelink_controller_api_errors_total", "Failed backend (API) calls, by operation"),
            &["operation"],
        )?;
        let scrape_errors = IntCounterVec::new(
            Opts::new("wavelink_controller_scrape_errors_total", "Failed reads of a proxy's /stats"),
            &["proxy"],
        )?;
        let pokes = IntCounterVec::new(
            Opts::new("wavelink_controller_pokes_total", "Requests for one more RI (sync mode)"),
            &["function"],
        )?;
        let leader = IntGauge::new("wavelink_controller_leader", "1 while this controller may write")?;
        let at_rest = IntGauge::new(
            "wavelink_controller_functions_at_rest",
            "Functions the last decision round skipped: no demand over their window, at their floor, nothing held",
        )?;
        let regular_started = IntCounterVec::new(
            Opts::new("wavelink_regular_instances_started_total", "Regular Instances started (local backend)"),
            &["function"],
        )?;
        let regular_memory = CounterVec::new(
            Opts::new(
                "wavelink_regular_memory_byte_seconds_total",
                "Resident memory of Regular Instances integrated over their lifetime (local backend)",
            ),
            &["function"],
        )?;
        for c in [
            Box::new(desired.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ready.clone()),
            Box::new(panic.clone()),
            Box::new(incomplete.clone()),
            Box::new(proxy_data_age.clone()),
            Box::new(decisions.clone()),
            Box::new(writes.clone()),
            Box::new(api_errors.clone()),
            Box::new(scrape_errors.clone()),
            Box::new(pokes.clone()),
            Box::new(leader.clone()),
            Box::new(at_rest.clone()),
            Box::new(regular_started.clone()),
            Box::new(regular_memory.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(ControllerMetrics {
            registry,
            desired,
            ready,
            panic,
            incomplete,
            proxy_data_age,
            decisions,
            writes,
            api_errors,
            scrape_errors,
            pokes,
            leader,
            at_rest,
            regular_started,
            regular_memory,
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}
