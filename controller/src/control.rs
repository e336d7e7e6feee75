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
use wavelink_core::autoscale::{Decider, Observation, PokeRefusal, Reason, Tick, poke_target};
use wavelink_core::backoff::doubling;
use wavelink_core::config::DEFAULT_POKE_CEILING;
use wavelink_core::stats::{COMPACT_STATS, ProxyStats};
use wavelink_core::{FunctionId, FunctionSpec};
use wavelink_server::auth::InternalAuth;
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

/// What the controller keeps of one function: sized for the idle case, because most of
/// thousands rest.
#[derive(Default)]
struct FunctionControl {
    /// The backend's record of it (`None`: seen in a proxy's data only, not ours to scale).
    record: Option<Record>,
    /// Its autoscaling state; `None` while it rests with nothing to remember (no samples in
    /// its history, no series, no retry pending): a resting decider is [`Decider::rested`].
    state: Option<Box<Autoscaling>>,
    /// The reason of its last decision, kept through rest for `/v1/functions`.
    last_reason: Option<Reason>,
}

/// A [`ManagedFunction`] without its id (the map's key).
#[derive(Clone)]
struct Record {
    spec: Arc<FunctionSpec>,
    replicas: u32,
    ready: u32,
}

impl Record {
    fn managed(&self, id: &FunctionId) -> ManagedFunction {
        ManagedFunction { id: id.clone(), spec: self.spec.clone(), replicas: self.replicas, ready: self.ready }
    }
}

struct Autoscaling {
    history: History,
    decider: Decider,
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

impl Autoscaling {
    /// The state of a function first seen now.
    fn new() -> Box<Self> {
        Self::with(Decider::default())
    }

    /// The state of a function that rested without state and wakes.
    fn after_rest() -> Box<Self> {
        Self::with(Decider::rested())
    }

    fn with(decider: Decider) -> Box<Self> {
        Box::new(Autoscaling {
            history: History::default(),
            decider,
            panic: false,
            missing: Vec::new(),
            failures: 0,
            retry_at: None,
            published: None,
            has_series: false,
        })
    }

    /// Whether dropping this state (and making [`Autoscaling::after_rest`] on waking) loses
    /// nothing: called for a function at rest, whose gauges are true.
    fn forgettable(&self) -> bool {
        self.history.is_empty() && !self.has_series && self.failures == 0 && self.retry_at.is_none()
    }
}

impl FunctionControl {
    /// Its autoscaling state, made if it has none.
    fn state(&mut self) -> &mut Autoscaling {
        // Decided before but without state: it rested, and wakes. Never decided: it is new.
        let rested = self.last_reason.is_some();
        self.state.get_or_insert_with(|| if rested { Autoscaling::after_rest() } else { Autoscaling::new() })
    }
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
    functions: Mutex<HashMap<FunctionId, FunctionControl>>,
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
    /// Called after a round that let many functions' state go (see [`Controller::on_mass_rest`]).
    mass_rest: Option<fn()>,
    /// Most RIs a poke may ask for when `max-scale` is unbounded.
    poke_ceiling: u32,
    /// What a poke must carry.
    auth: Arc<InternalAuth>,
}

/// Why a poke did not scale.
#[derive(Debug, thiserror::Error)]
pub enum PokeError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}: {1}")]
    Refused(FunctionId, PokeRefusal),
}

/// Functions coming to rest in one round that make it worth handing memory back.
const MASS_REST: usize = 1000;

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
            mass_rest: None,
            poke_ceiling: DEFAULT_POKE_CEILING,
            auth: Arc::new(InternalAuth::unchecked()),
        }
    }

    /// The token a poke must carry.
    pub fn with_internal_auth(mut self, auth: Arc<InternalAuth>) -> Self {
        self.auth = auth;
        self
    }

    pub fn internal_auth(&self) -> &Arc<InternalAuth> {
        &self.auth
    }

    /// Most RIs a `sync` poke may ask for when a function's `max-scale` is unbounded.
    pub fn with_poke_ceiling(mut self, ceiling: u32) -> Self {
        self.poke_ceiling = ceiling;
        self
    }

    /// `release` runs (on the control loop's thread) after a round in which at least a
    /// thousand functions came to rest and their state went: the process's allocator may keep
    /// such freed memory per thread (the binary hands it back to the system; about 450 B per
    /// idle function of a 10,000-function start stayed resident otherwise).
    pub fn on_mass_rest(mut self, release: fn()) -> Self {
        self.mass_rest = Some(release);
        self
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
            // The compact encoding, or JSON from a proxy that does not have it.
            let accept = [(http::header::ACCEPT, COMPACT_STATS)];
            let stats = client::call_with(*proxy, http::Method::GET, &path, None, &accept, SCRAPE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
                .and_then(|reply| match reply.content_type.as_deref() {
                    Some(COMPACT_STATS) => ProxyStats::from_compact(&reply.body).map_err(|e| e.to_string()),
                    _ => serde_json::from_slice::<ProxyStats>(&reply.body).map_err(|e| e.to_string()),
                });
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
                        functions.entry(id.clone()).or_default().state().history.record(*proxy, &f.samples);
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
            let ManagedFunction { id, spec, replicas, ready } = function;
            awake.insert(id.clone());
            let control = functions.entry(id).or_default();
            *managed_count += usize::from(control.record.is_none());
            control.record = Some(Record { spec, replicas, ready });
        }
        for id in changes.removed {
            if functions.remove(&id).is_some_and(|c| c.record.is_some()) {
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
        let mut forgotten = 0usize;
        for id in visit {
            let (function, decision, retry_blocked, publish) = {
                let mut functions = self.functions.lock();
                let Some(control) = functions.get_mut(&id) else { continue };
                let Some(function) = control.record.as_ref().map(|r| r.managed(&id)) else {
                    // Seen in a proxy's data but not the backend's: nothing to scale (and only
                    // so much history to keep in case it becomes ours).
                    if let Some(state) = control.state.as_mut() {
                        state.history.forget_before(now.saturating_sub(KEEP_SECONDS));
                    }
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
                let state = control.state();
                state.history.forget_before(now.saturating_sub(KEEP_SECONDS));
                // Nothing to decide (no demand, at its floor, gauges already true): it rests
                // until it has samples or the backend changes it. Missing data does not keep it
                // awake: it only stops a count from falling, and one at its floor cannot fall.
                let demand = state.history.has_since(now.saturating_sub(window + 1));
                if state.retry_at.is_none()
                    && state.published == Some((function.replicas, function.ready))
                    && state.decider.at_rest(&function.spec, now, demand, function.replicas)
                {
                    // Samples older than the window decide nothing any more, and no count was
                    // held up for want of data.
                    state.history.forget_before(now.saturating_sub(window + 1));
                    state.missing = Vec::new();
                    if state.forgettable() {
                        control.state = None;
                        forgotten += 1;
                    }
                    self.awake.lock().remove(&id);
                    continue;
                }
                let mut observations = state.history.since(now.saturating_sub(window + 1));
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
                let decision = state.decider.decide(&function.spec, tick);
                state.missing = missing;
                state.panic = decision.panic;
                state.published = Some((decision.desired, function.ready));
                let blocked = state.retry_at.is_some_and(|at| Instant::now() < at);
                // Missing data cannot hold a count of zero up: not worth a series either.
                let quiet = decision.desired == 0 && function.replicas == 0 && function.ready == 0 && !decision.panic;
                let publish = state.has_series || !quiet;
                state.has_series = publish;
                control.last_reason = Some(decision.reason);
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
                debug!(
                    function = %function.id,
                    from = function.replicas,
                    to = decision.desired,
                    ready = function.ready,
                    reason = decision.reason.as_str(),
                    panic = decision.panic,
                    "scaling"
                );
                self.write(&function, decision.desired).await;
            }
        }
        if forgotten >= MASS_REST
            && let Some(release) = self.mass_rest
        {
            release();
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
                if let Some(state) = self.functions.lock().get_mut(&function.id).and_then(|c| c.state.as_mut()) {
                    state.failures = 0;
                    state.retry_at = None;
                }
            }
            Err(e) => {
                self.api_error(&e);
                if let Some(control) = self.functions.lock().get_mut(&function.id) {
                    let state = control.state();
                    state.failures += 1;
                    let backoff = doubling(FIRST_BACKOFF, state.failures, MAX_BACKOFF);
                    state.retry_at = Some(Instant::now() + backoff);
                    warn!(function = %function.id, error = %e, ?backoff, "scaling failed; retrying later");
                }
            }
        }
    }

    fn api_error(&self, error: &BackendError) {
        warn!(error = %error, "backend call failed");
        self.metrics.api_errors.with_label_values(&[error.operation()]).inc();
    }

    /// `sync` mode: a request found no slot; make sure at least `want` RIs are asked for, now
    /// (at most `max-scale`, or the poke ceiling). Refused for functions in other modes.
    pub async fn poke(&self, id: &FunctionId, want: u32) -> Result<u32, PokeError> {
        self.sync_functions().await?;
        let function = self
            .functions
            .lock()
            .get(id)
            .and_then(|c| c.record.as_ref().map(|r| r.managed(id)))
            .ok_or_else(|| BackendError::UnknownFunction(id.clone()))?;
        let capped =
            poke_target(&function.spec, want, self.poke_ceiling).map_err(|r| PokeError::Refused(id.clone(), r))?;
        // Counted once accepted: a refused caller makes no series.
        self.metrics.pokes.with_label_values(&[&id.to_string()]).inc();
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
            .iter()
            .filter_map(|(id, control)| {
                let f = control.record.as_ref()?;
                let state = control.state.as_deref();
                Some(FunctionView {
                    function: id.to_string(),
                    replicas: f.replicas,
                    ready: f.ready,
                    panic: state.is_some_and(|s| s.panic),
                    last_reason: control.last_reason.map(Reason::as_str),
                    missing_data: state
                        .map(|s| &s.missing[..])
                        .unwrap_or_default()
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
        // Resting with nothing to remember ("never": no samples, no series) keeps no state;
        // "other" has series, so it keeps its state (the gauges must stay true).
        let has_state = |name: &str| {
            let id = FunctionId::new("default", name).unwrap();
            controller.functions.lock().get(&id).map(|c| c.state.is_some())
        };
        assert_eq!((has_state("never"), has_state("other")), (Some(false), Some(true)));
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
        assert_eq!(view[1].last_reason, Some("no_data"), "a resting function's last reason is kept");
        // Back at its floor by hand: decided once more, then at rest again.
        backend.set("idle", 1);
        controller.decide().await;
        assert_eq!(decisions(&controller, "idle"), before + 3);
        controller.decide().await;
        assert_eq!(decisions(&controller, "idle"), before + 3);
        assert_eq!(controller.metrics.at_rest.get(), 3);
        // Woken by hand, the stateless one decides again (from a rested state).
        backend.set("never", 2);
        controller.decide().await;
        assert_eq!(has_state("never"), Some(true));
        assert!(backend.scaled.lock().is_empty(), "missing data: kept at 2");
        assert_eq!(controller.metrics.at_rest.get(), 2, "at 2 without data it stays awake");
    }
}
