//! The local backend: Regular Instances as processes on this machine, standing in for a
//! conventional cluster manager.
//!
//! A new RI is started at once but becomes routable only after `ri-start-delay`, modelling what
//! a cluster manager's pod start costs (API server, scheduler, kubelet, readiness probe); the
//! delay is printed with every result. Routable RIs are pushed to every proxy's admin API. An RI
//! scaled away is first taken out of the proxies, left to finish its requests, then destroyed.
//! Instances come from the Wavelet's runtimes: `process` (process group, socket as fd 3) or
//! `containerd` (a container of the function's image on the node's network, with a port of its
//! own; leftovers found by label), started off the lock, each counted as starting until it runs.
//!
//! RI processes outlive the controller, as pods outlive an autoscaler: a controller killed
//! with SIGKILL leaves them serving, and its successor adopts those its state log lists (pid
//! and start time checked) and carries on from their number. Stopping the controller
//! (SIGTERM) removes them. Each decision round re-asserts the ready RIs on every proxy where
//! its list differs (one read per proxy; no write when equal).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::Deserialize;
use tracing::{debug, info, warn};
use wavelink_core::{FunctionDef, FunctionId};
use wavelink_server::auth::InternalAuth;
use wavelink_server::client;
use wavelink_wavelet::cgroup::Cgroup;
use wavelink_wavelet::instance::{Instance, Runtime};
use wavelink_wavelet::runtime::Process;
use wavelink_wavelet::state::{StateDir, Survivor};

use super::{Backend, BackendError, FunctionChanges, ManagedFunction};
use crate::metrics::ControllerMetrics;

/// Longest wait for a new RI that binds its own port to accept connections.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for a removed RI's requests before it is destroyed anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

struct LocalRi {
    id: String,
    /// Order of creation: older RIs are kept over younger ones on scale-down.
    born: u64,
    /// When its memory was last added to the memory-time metric.
    memory_sampled: Mutex<Instant>,
    addr: SocketAddr,
    ready: AtomicBool,
    retiring: AtomicBool,
    process: Mutex<Option<Instance>>,
}

struct LocalFunction {
    def: Arc<FunctionDef>,
    target: u32,
    instances: Vec<Arc<LocalRi>>,
    /// Instances being started (counted as live, not yet in `instances`).
    starting: u32,
    /// (RIs asked for, ready) as last reported by [`Backend::changes`].
    reported: Option<(u32, u32)>,
}

impl LocalFunction {
    /// Its RIs that take requests: ready and not retiring.
    fn serving(&self) -> impl Iterator<Item = &Arc<LocalRi>> {
        self.instances.iter().filter(|ri| ri.ready.load(SeqCst) && !ri.retiring.load(SeqCst))
    }
}

/// A function as a proxy's `GET /v1/functions` lists it (the fields read here).
#[derive(Deserialize)]
struct ProxyFunction {
    function: String,
    instances: Vec<ProxyInstance>,
}

#[derive(Deserialize)]
struct ProxyInstance {
    address: SocketAddr,
    in_flight: u32,
    #[serde(default)]
    draining: bool,
}

/// A handle to the backend's shared state (cloned into the tasks it starts).
#[derive(Clone)]
pub struct LocalBackend(Arc<Inner>);

struct Inner {
    runtime: Arc<Runtime>,
    state: Arc<StateDir>,
    /// Admin addresses of the proxies to tell about RIs.
    proxies: Vec<SocketAddr>,
    /// Sent with every change to a proxy's instances.
    auth: Arc<InternalAuth>,
    start_delay: Duration,
    functions: Mutex<HashMap<FunctionId, LocalFunction>>,
    metrics: Arc<ControllerMetrics>,
    /// Set on shutdown: a start that finishes after it destroys its instance at once.
    stopping: AtomicBool,
    /// Starts and destructions under way, which shutdown waits for so no instance outlives it.
    pending: AtomicUsize,
    /// Wakes starts waiting for their instance to become ready, at shutdown.
    stopped: tokio::sync::Notify,
    /// Next `LocalRi::born`.
    next_born: AtomicU64,
}

/// The proxies a local backend tells about RIs, and the token its changes carry.
pub struct ProxyAdmins {
    pub addrs: Vec<SocketAddr>,
    pub auth: Arc<InternalAuth>,
}

impl LocalBackend {
    pub fn new(
        runtime: Arc<Runtime>,
        state: Arc<StateDir>,
        proxies: ProxyAdmins,
        start_delay: Duration,
        defs: Vec<FunctionDef>,
        adopted: Vec<Survivor>,
        metrics: Arc<ControllerMetrics>,
    ) -> Self {
        let ProxyAdmins { addrs: proxies, auth } = proxies;
        let mut functions: HashMap<FunctionId, LocalFunction> = defs
            .into_iter()
            .map(|def| {
                let function =
                    LocalFunction { def: Arc::new(def), target: 0, instances: Vec::new(), starting: 0, reported: None };
                (function.def.id.clone(), function)
            })
            .collect();
        let next_born = AtomicU64::new(0);
        for survivor in adopted {
            let Some(function) = functions.values_mut().find(|f| f.def.id.to_string() == survivor.function) else {
                continue;
            };
            info!(function = %function.def.id, instance = %survivor.id, pid = survivor.pid, addr = %survivor.addr,
                  "adopted a Regular Instance a previous controller left running");
            let process = Process::adopt(
                survivor.id.clone(),
                survivor.pid,
                survivor.start_ticks,
                survivor.addr,
                survivor.cgroup.map(|path| Cgroup { path }),
            );
            function.instances.push(Arc::new(LocalRi {
                id: survivor.id,
                born: next_born.fetch_add(1, SeqCst),
                memory_sampled: Mutex::new(Instant::now()),
                addr: survivor.addr,
                ready: AtomicBool::new(true),
                retiring: AtomicBool::new(false),
                process: Mutex::new(Some(Instance::Process(process))),
            }));
            // The scale it had: the autoscaler carries on from it rather than from zero.
            function.target += 1;
        }
        LocalBackend(Arc::new(Inner {
            runtime,
            state,
            proxies,
            auth,
            start_delay,
            functions: Mutex::new(functions),
            metrics,
            stopping: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            stopped: tokio::sync::Notify::new(),
            next_born,
        }))
    }

    pub fn start_delay(&self) -> Duration {
        self.0.start_delay
    }

    /// Destroys every RI now (shutdown).
    pub fn destroy_all(&self) {
        self.0.destroy_all();
    }
}

impl Inner {
    /// Starts or retires RIs until the function has its target.
    fn reconcile(self: &Arc<Self>, id: &FunctionId) {
        let mut functions = self.functions.lock();
        let Some(function) = functions.get_mut(id) else { return };
        let live: Vec<Arc<LocalRi>> =
            function.instances.iter().filter(|ri| !ri.retiring.load(SeqCst)).cloned().collect();
        let target = function.target as usize;
        let counted = live.len() + function.starting as usize;
        if counted < target {
            for _ in counted..target {
                if self.stopping.load(SeqCst) {
                    break;
                }
                function.starting += 1;
                self.pending.fetch_add(1, SeqCst);
                let (backend, def, asked) = (self.clone(), function.def.clone(), Instant::now());
                tokio::spawn(async move {
                    backend.clone().start(def, asked).await;
                    backend.pending.fetch_sub(1, SeqCst);
                });
            }
        } else if live.len() > target {
            for ri in retirees(live, target) {
                ri.retiring.store(true, SeqCst);
                let (backend, id) = (self.clone(), id.clone());
                tokio::spawn(async move { backend.retire(&id, ri).await });
            }
        }
    }

    /// Files a started instance with its function, not ready yet; returns it and, unless it was
    /// handed its listening socket, where to wait for it to listen.
    fn file(
        &self,
        function: &mut LocalFunction,
        def: &FunctionDef,
        instance: Instance,
    ) -> (Arc<LocalRi>, Option<wavelink_wavelet::instance::Reach>) {
        self.metrics.regular_started.with_label_values(&[&def.id.to_string()]).inc();
        // Only an instance that was handed its listening socket takes connections at once.
        let handed_socket = matches!(instance, Instance::Process(_)) && def.socket_activation;
        let reach = (!handed_socket).then(|| instance.reach());
        let ri = Arc::new(LocalRi {
            id: instance.id().to_owned(),
            born: self.next_born.fetch_add(1, SeqCst),
            memory_sampled: Mutex::new(Instant::now()),
            addr: instance.addr(),
            ready: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
            process: Mutex::new(Some(instance)),
        });
        function.instances.push(ri.clone());
        (ri, reach)
    }

    /// Starts one RI (off the lock: a container takes a while) and makes it routable once the
    /// modelled pod start, counted from when it was asked for, has passed.
    async fn start(self: Arc<Self>, def: Arc<FunctionDef>, asked: Instant) {
        let id = def.id.clone();
        // A process RI is recorded in the state log as it starts (so a crash does not orphan it).
        let started = self.runtime.start(&def, &self.state).await;
        let filed = {
            let mut functions = self.functions.lock();
            // Read under the lock shutdown drains the instances with, so an instance is either
            // filed before the drain or destroyed below: never left behind. So is one whose
            // function left meanwhile.
            match functions.get_mut(&id).filter(|_| !self.stopping.load(SeqCst)) {
                None => Err(started.ok()),
                Some(function) => {
                    function.starting = function.starting.saturating_sub(1);
                    match started {
                        Ok(instance) => Ok(self.file(function, &def, instance)),
                        Err(e) => {
                            warn!(function = %id, error = %e, "starting a Regular Instance failed");
                            return;
                        }
                    }
                }
            }
        };
        let (ri, reach) = match filed {
            Ok(filed) => filed,
            Err(unwanted) => {
                if let Some(instance) = unwanted {
                    let (runtime, state) = (self.runtime.clone(), self.state.clone());
                    let _ = tokio::task::spawn_blocking(move || runtime.destroy(instance, &state)).await;
                }
                return;
            }
        };
        // The modelled cluster manager's pod start; and, like a readiness probe, the instance
        // must accept connections (a container binds its port itself, which takes a moment more
        // when many start at once). Shutdown cuts both short: the instance is destroyed with
        // the others, and this task must not hold the stop up.
        let became_ready = async {
            tokio::time::sleep(self.start_delay.saturating_sub(asked.elapsed())).await;
            match &reach {
                Some(reach) => reach.wait_listening(READY_LIMIT).await,
                None => true,
            }
        };
        // Registered before `stopping` is read, so a stop in between still wakes it.
        let stopped = self.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        if self.stopping.load(SeqCst) {
            return;
        }
        let listening = tokio::select! {
            listening = became_ready => listening,
            () = stopped => return,
        };
        if self.stopping.load(SeqCst) {
            return;
        }
        if !listening {
            warn!(function = %id, instance = %ri.id, "a Regular Instance never listened; replacing it");
            ri.retiring.store(true, SeqCst);
            self.destroy(&id, &ri);
            self.reconcile(&id);
            return;
        }
        if !ri.retiring.load(SeqCst) {
            ri.ready.store(true, SeqCst);
            self.push(&id).await;
        }
        // A scale-down while it started finds it now.
        self.reconcile(&id);
    }

    /// Takes a retiring RI out of the proxies, waits for its requests, destroys it.
    async fn retire(self: &Arc<Self>, id: &FunctionId, ri: Arc<LocalRi>) {
        let was_ready = ri.ready.swap(false, SeqCst);
        if was_ready {
            self.push(id).await;
            let deadline = Instant::now() + DRAIN_LIMIT;
            while Instant::now() < deadline && self.busy_on_any_proxy(id, ri.addr).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.destroy(id, &ri);
    }

    fn destroy(self: &Arc<Self>, id: &FunctionId, ri: &Arc<LocalRi>) {
        if let Some(mut functions) = self.functions.try_lock_for(Duration::from_secs(1))
            && let Some(function) = functions.get_mut(id)
        {
            function.instances.retain(|other| !Arc::ptr_eq(other, ri));
        }
        let process = ri.process.lock().take();
        if let Some(process) = process {
            self.account_memory(id, ri, process.rss_bytes());
            let (runtime, state) = (self.runtime.clone(), self.state.clone());
            // SIGKILL and reaping, or containerd's calls, block: off the runtime's threads.
            self.pending.fetch_add(1, SeqCst);
            let backend = self.clone();
            std::thread::spawn(move || {
                runtime.destroy(process, &state);
                backend.pending.fetch_sub(1, SeqCst);
            });
        }
    }

    /// Adds the RI's memory since its last sample to the memory-time metric (RSS × elapsed).
    fn account_memory(&self, id: &FunctionId, ri: &LocalRi, rss_bytes: u64) {
        let mut sampled = ri.memory_sampled.lock();
        let now = Instant::now();
        let seconds = now.duration_since(*sampled).as_secs_f64();
        *sampled = now;
        self.metrics.regular_memory.with_label_values(&[&id.to_string()]).inc_by(rss_bytes as f64 * seconds);
    }

    /// Whether any proxy still has requests in flight on `addr` for the function. A proxy that
    /// cannot be asked counts as busy: its requests may still run there.
    async fn busy_on_any_proxy(&self, id: &FunctionId, addr: SocketAddr) -> bool {
        let path = instances_path(id);
        for proxy in &self.proxies {
            let listing = client::call(*proxy, http::Method::GET, &path, None, ADMIN_TIMEOUT)
                .await
                .ok()
                .and_then(|body| serde_json::from_slice::<Vec<ProxyInstance>>(&body).ok());
            let Some(listing) = listing else { return true };
            if listing.iter().any(|i| i.address == addr && i.in_flight > 0) {
                return true;
            }
        }
        false
    }

    /// The function's ready RIs, the list every proxy should have.
    fn ready_addrs(&self, id: &FunctionId) -> Option<Vec<SocketAddr>> {
        let functions = self.functions.lock();
        Some(functions.get(id)?.serving().map(|ri| ri.addr).collect())
    }

    /// Tells every proxy the function's ready RIs.
    async fn push(&self, id: &FunctionId) {
        let Some(addrs) = self.ready_addrs(id) else { return };
        for proxy in &self.proxies {
            self.put(*proxy, id, &addrs).await;
        }
    }

    async fn put(&self, proxy: SocketAddr, id: &FunctionId, addrs: &[SocketAddr]) {
        let body = serde_json::to_vec(addrs).unwrap_or_else(|_| b"[]".to_vec());
        let path = instances_path(id);
        if let Err(e) =
            client::call_authorized(proxy, http::Method::PUT, &path, Some(body), &self.auth, ADMIN_TIMEOUT).await
        {
            debug!(function = %id, proxy = %proxy, error = %e, "could not update a proxy's instances; the next round retries");
        }
    }

    /// Level-triggered: every proxy's list of each function's RIs is read (one call per proxy)
    /// and put right where it differs from the ready RIs, whoever changed it. Only functions
    /// with RIs here or instances on the proxy can differ (the others agree on none), so both
    /// sides list just those: a round costs in proportion to them, not to configured functions.
    async fn reassert(&self) {
        let wanted: HashMap<String, (FunctionId, Vec<SocketAddr>)> = {
            let functions = self.functions.lock();
            functions
                .iter()
                .filter(|(_, f)| !f.instances.is_empty())
                .map(|(id, f)| {
                    let mut want: Vec<SocketAddr> = f.serving().map(|ri| ri.addr).collect();
                    want.sort();
                    (id.to_string(), (id.clone(), want))
                })
                .collect()
        };
        for proxy in &self.proxies {
            let listing = client::call(*proxy, http::Method::GET, "/v1/functions?with-instances", None, ADMIN_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
                .and_then(|body| serde_json::from_slice::<Vec<ProxyFunction>>(&body).map_err(|e| e.to_string()));
            let listing = match listing {
                Ok(listing) => listing,
                Err(e) => {
                    debug!(proxy = %proxy, error = %e, "could not read a proxy's functions; the next round retries");
                    continue;
                }
            };
            let listed: HashMap<&str, Vec<SocketAddr>> = listing
                .iter()
                .map(|f| {
                    let mut has: Vec<SocketAddr> =
                        f.instances.iter().filter(|i| !i.draining).map(|i| i.address).collect();
                    has.sort();
                    (f.function.as_str(), has)
                })
                .collect();
            for (label, (id, want)) in &wanted {
                let has = listed.get(label.as_str()).cloned().unwrap_or_default();
                if *want != has {
                    info!(function = %id, proxy = %proxy, ?has, ?want, "a proxy's instances differ; putting them right");
                    self.put(*proxy, id, want).await;
                }
            }
            // Instances on the proxy of a function of ours that has no RI here.
            for (label, has) in &listed {
                if wanted.contains_key(*label) || has.is_empty() {
                    continue;
                }
                let Some((namespace, name)) = label.split_once('/') else { continue };
                let Ok(id) = FunctionId::new(namespace, name) else { continue };
                if self.functions.lock().contains_key(&id) {
                    info!(function = %id, proxy = %proxy, ?has, "a proxy routes to instances this controller did not start; removing them");
                    self.put(*proxy, &id, &[]).await;
                }
            }
        }
    }

    fn destroy_all(self: &Arc<Self>) {
        self.stopping.store(true, SeqCst);
        self.stopped.notify_waiters();
        let all: Vec<Arc<LocalRi>> = self.functions.lock().values_mut().flat_map(|f| f.instances.drain(..)).collect();
        // Counted as pending up front: a second caller (the signal's thread and the main thread
        // both stop the backend) waits for these instead of letting the process exit under them.
        self.pending.fetch_add(all.len(), SeqCst);
        for ri in all {
            let Some(instance) = ri.process.lock().take() else {
                self.pending.fetch_sub(1, SeqCst);
                continue;
            };
            let backend = self.clone();
            // Containers are removed many at a time; a process is killed at once.
            self.runtime.destroy_then(instance, &self.state, move || {
                backend.pending.fetch_sub(1, SeqCst);
            });
        }
        // Starts and destructions under way finish (a start seeing `stopping` destroys its own).
        let deadline = Instant::now() + DRAIN_LIMIT;
        while self.pending.load(SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A function's instance list on a proxy's admin API.
fn instances_path(id: &FunctionId) -> String {
    format!("/v1/functions/{}/{}/instances", id.namespace, id.name)
}

/// The RIs to retire to bring `live` (those not already retiring) down to `target`, in
/// `core::routing::retirees`' order (the simulator's too): not-yet-ready ones first, then the
/// youngest.
fn retirees(live: Vec<Arc<LocalRi>>, target: usize) -> Vec<Arc<LocalRi>> {
    let excess = live.len().saturating_sub(target);
    let stamps: Vec<(bool, u64)> = live.iter().map(|ri| (ri.ready.load(SeqCst), ri.born)).collect();
    wavelink_core::routing::retirees(&stamps, excess).into_iter().map(|i| live[i].clone()).collect()
}

#[async_trait]
impl Backend for LocalBackend {
    async fn changes(&self) -> Result<FunctionChanges, BackendError> {
        // The set of functions is fixed (the config at start): only counts change, and an idle
        // function's are two integers to compare.
        let mut functions = self.0.functions.lock();
        let changed = functions
            .values_mut()
            .filter_map(|f| {
                let now = (f.target, f.serving().count() as u32);
                (f.reported.replace(now) != Some(now)).then(|| ManagedFunction {
                    id: f.def.id.clone(),
                    spec: f.def.spec.clone(),
                    replicas: now.0,
                    ready: now.1,
                })
            })
            .collect();
        Ok(FunctionChanges { changed, removed: Vec::new() })
    }

    async fn scale(&self, function: &FunctionId, replicas: u32) -> Result<(), BackendError> {
        {
            let mut functions = self.0.functions.lock();
            let f = functions.get_mut(function).ok_or_else(|| BackendError::UnknownFunction(function.clone()))?;
            info!(function = %function, from = f.target, to = replicas, "scaling Regular Instances");
            f.target = replicas;
        }
        self.0.reconcile(function);
        Ok(())
    }

    async fn maintain(&self) -> Vec<BackendError> {
        let this = &self.0;
        let live: Vec<(FunctionId, Arc<LocalRi>)> = this
            .functions
            .lock()
            .iter()
            .flat_map(|(id, f)| f.instances.iter().map(move |ri| (id.clone(), ri.clone())))
            .collect();
        for (id, ri) in live {
            let rss = ri.process.lock().as_ref().map(Instance::rss_bytes);
            if let Some(rss) = rss {
                this.account_memory(&id, &ri, rss);
            }
        }
        // Only functions with RIs, or RIs to start or retire, have anything to maintain: a
        // round costs in proportion to them, not to configured functions.
        let ids: Vec<FunctionId> = this
            .functions
            .lock()
            .iter()
            .filter(|(_, f)| !f.instances.is_empty() || f.starting > 0 || f.target > 0)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            // RIs whose process exited are replaced.
            let dead: Vec<Arc<LocalRi>> = {
                let functions = this.functions.lock();
                let Some(function) = functions.get(&id) else { continue };
                function
                    .instances
                    .iter()
                    .filter(|ri| ri.process.lock().as_mut().is_some_and(|p| p.try_exited()))
                    .cloned()
                    .collect()
            };
            for ri in &dead {
                warn!(function = %id, instance = %ri.id, "a Regular Instance exited; replacing it");
                ri.retiring.store(true, SeqCst);
                ri.ready.store(false, SeqCst);
                this.destroy(&id, ri);
            }
            if !dead.is_empty() {
                this.push(&id).await;
            }
            this.reconcile(&id);
        }
        this.reassert().await;
        // Failed pushes are retried on the next round; they are not API errors.
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ri(id: &str, born: u64, ready: bool) -> Arc<LocalRi> {
        Arc::new(LocalRi {
            id: id.to_owned(),
            born,
            memory_sampled: Mutex::new(Instant::now()),
            addr: SocketAddr::from(([127, 0, 0, 1], 30_000 + born as u16)),
            ready: AtomicBool::new(ready),
            retiring: AtomicBool::new(false),
            process: Mutex::new(None),
        })
    }

    fn ids(ris: &[Arc<LocalRi>]) -> Vec<&str> {
        ris.iter().map(|ri| ri.id.as_str()).collect()
    }

    #[test]
    fn scale_down_retires_only_the_excess_not_ready_first_then_the_youngest() {
        // Ids compare as strings ("ri-1-10" < "ri-1-9"); age is what counts.
        let live = vec![ri("ri-1-0", 0, true), ri("ri-1-9", 9, true), ri("ri-1-10", 10, true)];
        assert_eq!(ids(&retirees(live.clone(), 2)), ["ri-1-10"]);
        assert_eq!(ids(&retirees(live.clone(), 3)), Vec::<&str>::new());
        assert_eq!(ids(&retirees(live.clone(), 0)).len(), 3);
        let starting = vec![ri("ri-1-0", 0, true), ri("ri-1-1", 1, false), ri("ri-1-2", 2, true)];
        assert_eq!(ids(&retirees(starting, 2)), ["ri-1-1"], "a not-ready one costs nothing to drop");
    }
}
