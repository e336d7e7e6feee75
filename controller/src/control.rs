//! The control loop: read every proxy's `/stats` each scrape interval, decide each decide
//! interval, write the backend only on change, back off after errors. Nothing here is on a
//! request's path: a slow or failing backend delays scaling, never a request.
//!
//! Decisions start from the RIs asked for (the backend's current scale, read every round, so a
//! restarted controller carries on from it) and know which proxies' data is missing: a proxy
//! that cannot be read makes the summed demand a lower bound, which may scale up but never down.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::Serialize;
use tracing::{debug, info, warn};
use wavelink_core::FunctionId;
use wavelink_core::autoscale::{Decider, Observation, Reason, Tick};
use wavelink_core::backoff::doubling;
use wavelink_core::stats::ProxyStats;
use wavelink_server::client;

use crate::backend::{Backend, BackendError, ManagedFunction};
use crate::coverage::Coverage;
use crate::history::History;
use crate::metrics::ControllerMetrics;

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// History kept per function: the longest stable window an annotation allows.
const KEEP_SECONDS: u64 = 3600;
/// Longest a backend call may hold the loop (an apiserver that accepts connections and never
/// answers would otherwise stall every function's decisions for the client's own timeout).
const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before retrying a failed write; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Default)]
struct FunctionControl {
    /// The backend's record of it (`None`: seen in a proxy's data only, not ours to scale).
    managed: Option<ManagedFunction>,
    history: History,
    decider: Decider,
    last_reason: Option<Reason>,
    panic: bool,
    /// Proxies whose data was missing from the last decision's window, with how much.
    missing: Vec<(SocketAddr, u64)>,
    failures: u32,
    retry_at: Option<Instant>,
    /// What the last decision published (desired, ready), so a skipped one leaves true gauges.
    published: Option<(u32, u32)>,
    /// Whether the function has metric series: made with its first decision that is not all
    /// zeros, so thousands of functions that never ran cost none.
    has_series: bool,
}

/// What the proxies covered of one window: milliseconds missing per proxy, and the seconds some
/// proxy reported.
struct WindowCoverage {
    missing: Vec<(SocketAddr, u64)>,
    reported: BTreeSet<u64>,
}

pub struct Controller {
    backend: Arc<dyn Backend>,
    /// Admin addresses of the proxies to read.
    proxies: Vec<SocketAddr>,
    metrics: Arc<ControllerMetrics>,
    /// Boxed: a map's empty slots then cost a pointer, not a whole record.
    functions: Mutex<HashMap<FunctionId, Box<FunctionControl>>>,
    /// Functions the next round decides: those with new samples, changed in the backend, or
    /// not at rest last round. The others would decide what they have, so they are not visited.
    awake: Mutex<BTreeSet<FunctionId>>,
    /// Functions the backend has (entries of `functions` with `managed`).
    managed_count: Mutex<usize>,
    coverage: Mutex<Coverage>,
    /// Proxies whose last read failed (to log the change, not every failure).
    unreadable: Mutex<HashSet<SocketAddr>>,
    pub scrape_interval: Duration,
    pub decide_interval: Duration,
}

/// A function as `/v1/functions` shows it.
#[derive(Debug, Serialize)]
pub struct FunctionView {
    pub function: String,
    pub replicas: u32,
    pub ready: u32,
    pub panic: bool,
    pub last_reason: Option<&'static str>,
    /// Proxies whose data is missing from the stable window ("addr: N s"): the count was
    /// not lowered because of it.
    pub missing_data: Vec<String>,
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How far behind now a proxy's newest interval may be before its absence counts: it closes
/// every second and is read every scrape interval.
const SCRAPE_LAG_MS: u64 = 2000;

impl Controller {
    pub fn new(
        backend: Arc<dyn Backend>,
        proxies: Vec<SocketAddr>,
        metrics: Arc<ControllerMetrics>,
        scrape_interval: Duration,
        decide_interval: Duration,
    ) -> Self {
        Controller {
            backend,
            proxies,
            metrics,
            functions: Mutex::new(HashMap::new()),
            awake: Mutex::new(BTreeSet::new()),
            managed_count: Mutex::new(0),
            coverage: Mutex::new(Coverage::default()),
            unreadable: Mutex::new(HashSet::new()),
            scrape_interval,
            decide_interval,
        }
    }

    pub fn metrics(&self) -> &Arc<ControllerMetrics> {
        &self.metrics
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Reads every proxy's one-second samples into the functions' histories.
    pub async fn scrape(&self) {
        let proxies = self.backend.proxies().unwrap_or_else(|| self.proxies.clone());
        self.coverage.lock().expect(&proxies);
        for proxy in &proxies {
            // After the first read, only what is new: functions active since then, so a round
            // costs in proportion to active functions, not configured ones.
            let path = match self.coverage.lock().newest(*proxy) {
                Some(since) => format!("/stats?since={since}"),
                None => "/stats".to_owned(),
            };
            let stats = client::call(*proxy, http::Method::GET, &path, None, SCRAPE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
                .and_then(|body| serde_json::from_slice::<ProxyStats>(&body).map_err(|e| e.to_string()));
            match stats {
                Ok(stats) => {
                    if self.unreadable.lock().remove(proxy) {
                        info!(proxy = %proxy, "reading the proxy's /stats again");
                    }
                    self.coverage.lock().record(*proxy, &stats);
                    let mut functions = self.functions.lock();
                    let mut awake = self.awake.lock();
                    for f in stats.functions {
                        // The first read lists every function; one without samples adds nothing
                        // (a reported second without its sample counts as zero anyway).
                        if f.samples.is_empty() {
                            continue;
                        }
                        let Ok(id) = FunctionId::new(&f.namespace, &f.name) else { continue };
                        functions.entry(id.clone()).or_default().history.record(*proxy, &f.samples);
                        awake.insert(id);
                    }
                }
                Err(e) => {
                    if self.unreadable.lock().insert(*proxy) {
                        warn!(proxy = %proxy, error = %e, "cannot read a proxy's /stats; no function scales down until its data is back");
                    } else {
                        debug!(proxy = %proxy, error = %e, "reading /stats failed");
                    }
                    self.metrics.scrape_errors.with_label_values(&[&proxy.to_string()]).inc();
                }
            }
        }
        let now_ms = unix_now_ms();
        let mut coverage = self.coverage.lock();
        coverage.forget_before(now_ms.saturating_sub(KEEP_SECONDS * 1000));
        for (proxy, age) in coverage.ages(now_ms) {
            // Never heard from: as stale as the longest window.
            let age = age.map_or(KEEP_SECONDS as f64, |ms| ms as f64 / 1000.0);
            self.metrics.proxy_data_age.with_label_values(&[&proxy.to_string()]).set(age);
        }
    }

    /// Applies what changed in the backend to the controller's copy of its functions.
    async fn sync_functions(&self) -> Result<(), BackendError> {
        let changes = tokio::time::timeout(BACKEND_TIMEOUT, self.backend.changes())
            .await
            .unwrap_or(Err(BackendError::Timeout { operation: "list", after: BACKEND_TIMEOUT }))?;
        let mut functions = self.functions.lock();
        let mut awake = self.awake.lock();
        let mut managed_count = self.managed_count.lock();
        for function in changes.changed {
            let control = functions.entry(function.id.clone()).or_default();
            *managed_count += usize::from(control.managed.is_none());
            awake.insert(function.id.clone());
            control.managed = Some(function);
        }
        for id in changes.removed {
            if functions.remove(&id).is_some_and(|c| c.managed.is_some()) {
                *managed_count -= 1;
            }
            awake.remove(&id);
        }
        Ok(())
    }

    /// One decision per function with something to decide; writes where the number changes.
    pub async fn decide(&self) {
        if let Err(e) = self.sync_functions().await {
            self.api_error(&e);
            return;
        }
        let leader = self.backend.is_leader();
        self.metrics.leader.set(i64::from(leader));
        let now_ms = unix_now_ms();
        let now = now_ms / 1000;
        // What the proxies reported depends on the window only: worked out once per window, not
        // once per function (thousands share a few windows).
        let mut coverage_by_window: HashMap<u64, Arc<WindowCoverage>> = HashMap::new();
        let visit: Vec<FunctionId> = self.awake.lock().iter().cloned().collect();
        for id in visit {
            let (function, decision, retry_blocked, publish) = {
                let mut functions = self.functions.lock();
                let Some(control) = functions.get_mut(&id) else { continue };
                let Some(function) = control.managed.clone() else {
                    // Seen in a proxy's data but not the backend's: nothing to scale.
                    self.awake.lock().remove(&id);
                    continue;
                };
                let window = function.spec.window.as_secs();
                let covered = coverage_by_window
                    .entry(window)
                    .or_insert_with(|| {
                        let from_ms = now_ms.saturating_sub(window * 1000);
                        let coverage = self.coverage.lock();
                        Arc::new(WindowCoverage {
                            missing: coverage.missing(from_ms, now_ms.saturating_sub(SCRAPE_LAG_MS)),
                            reported: coverage.reported_seconds(from_ms, now_ms),
                        })
                    })
                    .clone();
                let (missing, reported) = (covered.missing.clone(), &covered.reported);
                control.history.forget_before(now.saturating_sub(KEEP_SECONDS));
                // Nothing to decide (no demand, at its floor, gauges already true): it rests
                // until it has samples or the backend changes it. Missing data does not keep it
                // awake: it only stops a count from falling, and one at its floor cannot fall.
                let demand = control.history.has_since(now.saturating_sub(window + 1));
                if control.retry_at.is_none()
                    && control.published == Some((function.replicas, function.ready))
                    && control.decider.at_rest(&function.spec, now, demand, function.replicas)
                {
                    // Samples older than the window decide nothing any more, and no count was
                    // held up for want of data.
                    control.history.forget_before(now.saturating_sub(window + 1));
                    control.missing = Vec::new();
                    self.awake.lock().remove(&id);
                    continue;
                }
                let mut observations = control.history.since(now.saturating_sub(window + 1));
                // A reported second without a sample of the function is a second of no demand.
                let seen: HashSet<u64> = observations.iter().map(|o| o.second).collect();
                observations.extend(
                    reported
                        .iter()
                        .filter(|s| !seen.contains(s))
                        .map(|&second| Observation { second, ..Default::default() }),
                );
                let tick = Tick {
                    now,
                    observations: &observations,
                    incomplete: !missing.is_empty(),
                    asked: function.replicas,
                    ready: function.ready,
                };
                let decision = control.decider.decide(&function.spec, tick);
                control.missing = missing;
                control.last_reason = Some(decision.reason);
                control.panic = decision.panic;
                control.published = Some((decision.desired, function.ready));
                let blocked = control.retry_at.is_some_and(|at| Instant::now() < at);
                // Missing data cannot hold a count of zero up: not worth a series either.
                let quiet = decision.desired == 0 && function.replicas == 0 && function.ready == 0 && !decision.panic;
                let publish = control.has_series || !quiet;
                control.has_series = publish;
                (function, decision, blocked, publish)
            };
            if publish {
                let label = function.id.to_string();
                self.metrics.desired.with_label_values(&[&label]).set(i64::from(decision.desired));
                self.metrics.ready.with_label_values(&[&label]).set(i64::from(function.ready));
                self.metrics.panic.with_label_values(&[&label]).set(i64::from(decision.panic));
                self.metrics.incomplete.with_label_values(&[&label]).set(i64::from(decision.incomplete));
                self.metrics.decisions.with_label_values(&[&label, decision.reason.as_str()]).inc();
            }
            if decision.desired != function.replicas && leader && !retry_blocked {
                self.write(&function, decision.desired).await;
            }
        }
        let awake = self.awake.lock().len();
        self.metrics.at_rest.set(self.managed_count.lock().saturating_sub(awake) as i64);
        match tokio::time::timeout(BACKEND_TIMEOUT, self.backend.maintain()).await {
            Ok(errors) => errors.iter().for_each(|e| self.api_error(e)),
            Err(_) => self.api_error(&BackendError::Timeout { operation: "maintain", after: BACKEND_TIMEOUT }),
        }
    }

    async fn write(&self, function: &ManagedFunction, replicas: u32) {
        let label = function.id.to_string();
        let scaled = tokio::time::timeout(BACKEND_TIMEOUT, self.backend.scale(&function.id, replicas))
            .await
            .unwrap_or(Err(BackendError::Timeout { operation: "scale", after: BACKEND_TIMEOUT }));
        match scaled {
            Ok(()) => {
                self.metrics.writes.with_label_values(&[&label]).inc();
                if let Some(control) = self.functions.lock().get_mut(&function.id) {
                    control.failures = 0;
                    control.retry_at = None;
                }
            }
            Err(e) => {
                self.api_error(&e);
                if let Some(control) = self.functions.lock().get_mut(&function.id) {
                    control.failures += 1;
                    let backoff = doubling(FIRST_BACKOFF, control.failures, MAX_BACKOFF);
                    control.retry_at = Some(Instant::now() + backoff);
                    warn!(function = %function.id, error = %e, ?backoff, "scaling failed; retrying later");
                }
            }
        }
    }

    fn api_error(&self, error: &BackendError) {
        warn!(error = %error, "backend call failed");
        self.metrics.api_errors.with_label_values(&[error.operation()]).inc();
    }

    /// `sync` mode: a request found no slot; make sure at least `want` RIs are asked for, now.
    pub async fn poke(&self, id: &FunctionId, want: u32) -> Result<u32, BackendError> {
        self.metrics.pokes.with_label_values(&[&id.to_string()]).inc();
        self.sync_functions().await?;
        let function = self
            .functions
            .lock()
            .get(id)
            .and_then(|c| c.managed.clone())
            .ok_or_else(|| BackendError::UnknownFunction(id.clone()))?;
        let capped = function.spec.max_scale.map_or(want, |max| want.min(max));
        if capped > function.replicas && self.backend.is_leader() {
            info!(function = %id, from = function.replicas, to = capped, "one more RI asked for (sync mode)");
            self.write(&function, capped).await;
            return Ok(capped);
        }
        Ok(function.replicas)
    }

    pub async fn view(&self) -> Result<Vec<FunctionView>, BackendError> {
        self.sync_functions().await?;
        let functions = self.functions.lock();
        let mut view: Vec<FunctionView> = functions
            .values()
            .filter_map(|control| {
                let f = control.managed.as_ref()?;
                Some(FunctionView {
                    function: f.id.to_string(),
                    replicas: f.replicas,
                    ready: f.ready,
                    panic: control.panic,
                    last_reason: control.last_reason.map(Reason::as_str),
                    missing_data: control
                        .missing
                        .iter()
                        .map(|(proxy, ms)| format!("{proxy}: {} s", ms / 1000))
                        .collect(),
                })
            })
            .collect();
        view.sort_by(|a, b| a.function.cmp(&b.function));
        Ok(view)
    }
}

/// The background task running the loop.
pub struct ControlLoop {
    pub controller: Arc<Controller>,
}

#[async_trait]
impl BackgroundService for ControlLoop {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let controller = &self.controller;
        let mut ticker = tokio::time::interval(controller.scrape_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_decision: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            controller.scrape().await;
            if last_decision.is_none_or(|at| at.elapsed() >= controller.decide_interval) {
                last_decision = Some(Instant::now());
                controller.decide().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FunctionChanges;
    use wavelink_core::FunctionSpec;

    /// A backend whose functions a test changes by hand; `changes` reports the dirty ones.
    #[derive(Default)]
    struct HandBackend {
        functions: Mutex<Vec<(ManagedFunction, bool)>>,
        scaled: Mutex<Vec<(String, u32)>>,
    }

    impl HandBackend {
        fn set(&self, name: &str, replicas: u32) {
            let mut functions = self.functions.lock();
            let id = FunctionId::new("default", name).unwrap();
            match functions.iter_mut().find(|(f, _)| f.id == id) {
                Some((f, dirty)) => (f.replicas, f.ready, *dirty) = (replicas, replicas, true),
                None => {
                    let spec = Arc::new(FunctionSpec {
                        window: Duration::from_secs(2),
                        initial_scale: 0,
                        // Created at its floor.
                        min_scale: replicas,
                        scale_down_delay: Duration::ZERO,
                        ..FunctionSpec::default()
                    });
                    functions.push((ManagedFunction { id, spec, replicas, ready: replicas }, true));
                }
            }
        }
    }

    #[async_trait]
    impl Backend for HandBackend {
        async fn changes(&self) -> Result<FunctionChanges, BackendError> {
            let mut functions = self.functions.lock();
            let changed = functions
                .iter_mut()
                .filter(|(_, dirty)| *dirty)
                .map(|(f, dirty)| (*dirty = false, f.clone()).1)
                .collect();
            Ok(FunctionChanges { changed, removed: vec![] })
        }

        async fn scale(&self, function: &FunctionId, replicas: u32) -> Result<(), BackendError> {
            self.scaled.lock().push((function.name.clone(), replicas));
            self.set(&function.name, replicas);
            Ok(())
        }
    }

    fn decisions(controller: &Controller, name: &str) -> u64 {
        let label = format!("default/{name}");
        [Reason::Initial, Reason::NoData, Reason::FastOnly, Reason::Stable, Reason::Panic]
            .iter()
            .map(|r| controller.metrics.decisions.with_label_values(&[&label, r.as_str()]).get())
            .sum()
    }

    #[tokio::test]
    async fn functions_at_rest_are_not_visited_until_the_backend_changes_them() {
        let backend = Arc::new(HandBackend::default());
        // At a floor of 1 decisions have metric series; all-zero ones ("never") have none.
        for name in ["idle", "other"] {
            backend.set(name, 1);
        }
        backend.set("never", 0);
        let metrics = Arc::new(ControllerMetrics::new().unwrap());
        let controller =
            Controller::new(backend.clone(), vec![], metrics, Duration::from_secs(1), Duration::from_secs(2));
        // The first round decides both (first decisions are never at rest), the next finds them
        // at rest once the initial phase is over; after that a round visits neither.
        let mut rounds = 0;
        while controller.metrics.at_rest.get() < 3 {
            controller.decide().await;
            rounds += 1;
            assert!(rounds < 200, "never at rest");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = decisions(&controller, "idle");
        for _ in 0..3 {
            controller.decide().await;
        }
        assert_eq!(decisions(&controller, "idle"), before, "a function at rest costs no decision");
        assert!(controller.awake.lock().is_empty());
        let exposition = String::from_utf8(controller.metrics.encode().unwrap()).unwrap();
        assert!(exposition.contains("default/other") && !exposition.contains("default/never"), "{exposition}");
        // Someone scales it by hand: the change wakes it. Without any proxy's data it keeps
        // what it has (never down on missing data), so it stays awake.
        backend.set("idle", 3);
        controller.decide().await;
        assert_eq!(decisions(&controller, "idle"), before + 1);
        controller.decide().await;
        assert_eq!(decisions(&controller, "idle"), before + 2, "not at rest at 3");
        assert_eq!(decisions(&controller, "other"), before, "the other one was not visited");
        assert!(backend.scaled.lock().is_empty());
        let view = controller.view().await.unwrap();
        assert_eq!(
            view.iter().map(|f| (f.function.as_str(), f.replicas)).collect::<Vec<_>>(),
            [("default/idle", 3), ("default/never", 0), ("default/other", 1)]
        );
        // Back at its floor by hand: decided once more, then at rest again.
        backend.set("idle", 1);
        controller.decide().await;
        assert_eq!(decisions(&controller, "idle"), before + 3);
        controller.decide().await;
        assert_eq!(decisions(&controller, "idle"), before + 3);
        assert_eq!(controller.metrics.at_rest.get(), 3);
    }
}
