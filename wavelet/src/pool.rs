//! Emergency Instances per function: reuse a running one with a free slot, else start one, up to
//! the node-wide cap; destroy them when idle past the function's `emergency-keepalive`.
//!
//! Reuse prefers the most recently started instance with a free slot
//! (`core::routing::reuse_newest`), so load concentrates on few instances and the rest go idle
//! and are destroyed. With keepalive 0 an instance serves exactly one request. Destruction
//! (SIGKILL to the process group, reaping, cgroup removal) runs on a dedicated thread, never on
//! the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora_core::upstreams::peer::HttpPeer;
use tracing::{info, warn};
use wavelink_core::backoff::FailureRecord;
use wavelink_core::slots::SlotCounter;
use wavelink_core::{FunctionDef, FunctionId};

use crate::instance::{Instance, Reach, Runtime, StartError};
use crate::metrics::{DestroyReason, FunctionMetrics, WaveletMetrics};
use crate::state::StateDir;

/// Longest wait at shutdown for instances being destroyed.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

/// One Emergency Instance.
pub struct Ei {
    pub id: String,
    pub addr: SocketAddr,
    /// Keyed to this instance (`group_key`), so pooled connections are never reused on a later
    /// instance that happens to get the same port.
    pub peer: HttpPeer,
    /// Where it listens, and whether it still runs (without taking the instance's lock).
    pub reach: Reach,
    pub pid: u32,
    pub spawned: Instant,
    slots: SlotCounter,
    /// Set when chosen for destruction; an acquire that races with it backs off.
    retired: AtomicBool,
    /// emergency-keepalive 0: this instance serves one request, then goes.
    single_use: bool,
    /// Started without a listening socket handed over (containers, `socket-activation: false`).
    wait_listening: bool,
    /// When the last request finished, in ms since the pools' epoch.
    last_release_ms: AtomicU64,
    process: Mutex<Option<Instance>>,
    memory: Mutex<MemorySample>,
}

/// Resident memory integrated over time.
struct MemorySample {
    at: Instant,
    rss: u64,
}

impl Ei {
    /// The instance binds its port itself (no socket handed over): a request must wait until it
    /// listens.
    pub fn must_wait_listening(&self) -> bool {
        self.wait_listening
    }

    pub fn in_flight(&self) -> u32 {
        self.slots.get()
    }

    /// Adds resident memory × time since the last sample to `counter`; returns the current RSS.
    fn account_memory(&self, counter: &prometheus::Counter) -> u64 {
        let rss = crate::runtime::resident_bytes(self.pid);
        let mut sample = self.memory.lock();
        let now = Instant::now();
        // The latest reading stands for the whole interval: instances mostly grow, so this errs
        // towards counting more memory, not less.
        let rss_for_interval = rss.max(sample.rss);
        counter.inc_by(rss_for_interval as f64 * now.duration_since(sample.at).as_secs_f64());
        *sample = MemorySample { at: now, rss };
        rss
    }

    pub fn rss_bytes(&self) -> u64 {
        self.memory.lock().rss
    }
}

/// The instances of one function.
pub struct FunctionPool {
    pub id: FunctionId,
    pub def: ArcSwap<FunctionDef>,
    /// Its series, made when it first has an instance: a function that never spills to this
    /// node costs no metric series (10,000 configured functions, a few dozen bursting).
    metrics: OnceLock<Box<FunctionMetrics>>,
    registry: Arc<WaveletMetrics>,
    instances: Mutex<Vec<Arc<Ei>>>,
    /// Instances that died before serving, for the crash-loop back-off.
    crashes: CrashLoop,
}

impl FunctionPool {
    pub fn metrics(&self) -> &FunctionMetrics {
        self.metrics.get_or_init(|| Box::new(self.registry.for_function(&self.id.to_string())))
    }

    pub fn instances(&self) -> Vec<Arc<Ei>> {
        self.instances.lock().clone()
    }

    /// A new instance served its first response: the function starts fine.
    pub fn started_fine(&self) {
        self.crashes.record.succeeded();
    }
}

/// First wait after an instance died before serving; doubled with each such death in a row,
/// as kubelet's CrashLoopBackOff does (which starts at 10 s: an EI is for bursts, so sooner).
pub const CRASH_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_CRASH_BACKOFF: Duration = Duration::from_secs(30);

/// A function whose instances cannot start, or die before they serve, gets no new one for a
/// back-off ([`wavelink_core::backoff`]).
struct CrashLoop {
    record: FailureRecord,
    /// Why the last start failed, when it failed to start at all (answered again, as it was,
    /// during the back-off); `None` when the last instance started and died.
    start_error: Mutex<Option<String>>,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop { record: FailureRecord::new(CRASH_BACKOFF, MAX_CRASH_BACKOFF), start_error: Mutex::new(None) }
    }
}

impl CrashLoop {
    /// Records a failure; returns the failures in a row and the back-off.
    fn record(&self, start_error: Option<String>) -> (u32, Duration) {
        *self.start_error.lock() = start_error;
        self.record.fail()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error("this node runs its maximum of {0} Emergency Instances")]
    Full(u32),
    #[error(
        "the function's instances exit before they serve ({in_a_row} in a row); the next starts in {} ms",
        retry_in.as_millis()
    )]
    CrashLoop { in_a_row: u32, retry_in: Duration },
    #[error("could not start an instance: {error} ({in_a_row} failures in a row; the next try in {} ms)", retry_in.as_millis())]
    StartBackoff { error: String, in_a_row: u32, retry_in: Duration },
    #[error("could not start an instance: {0}")]
    Start(#[from] StartError),
}

/// A place under the node cap, reserved while an instance starts; released on drop unless kept.
struct NodePlace<'a>(Option<&'a SlotCounter>);

impl NodePlace<'_> {
    /// The instance started: the place is its own now (released when it is destroyed).
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for NodePlace<'_> {
    fn drop(&mut self) {
        if let Some(live) = self.0 {
            live.release();
        }
    }
}

/// A slot on an instance, held for one request; dropping it releases the slot.
pub struct Lease {
    pools: Arc<Pools>,
    pool: Arc<FunctionPool>,
    pub ei: Arc<Ei>,
    /// This request started the instance.
    pub cold: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.ei.slots.release();
        self.ei.last_release_ms.store(self.pools.now_ms(), SeqCst);
        if self.ei.single_use {
            self.pools.retire(&self.pool, &self.ei, DestroyReason::OneShot);
        }
    }
}

pub struct Pools {
    functions: ArcSwap<HashMap<FunctionId, Arc<FunctionPool>>>,
    /// Functions no longer served whose instances were busy when they left: destroyed as each
    /// goes idle (by the reaper), then forgotten. Back in `functions` if the function returns.
    departed: Mutex<Vec<Arc<FunctionPool>>>,
    runtime: Arc<Runtime>,
    state: Arc<StateDir>,
    metrics: Arc<WaveletMetrics>,
    /// Time to connect to an instance before the attempt counts as failed.
    connect_timeout: Duration,
    /// Instances alive on this node, against `max_instances`.
    live: Arc<SlotCounter>,
    /// Instances doomed and not yet gone (queued for the destroyer, or being removed): shutdown
    /// waits for them, so no instance outlives the Wavelet.
    destroying: Arc<std::sync::atomic::AtomicUsize>,
    max_instances: u32,
    epoch: Instant,
    destroyer: Mutex<mpsc::Sender<Doomed>>,
}

struct Doomed {
    pool: Arc<FunctionPool>,
    ei: Arc<Ei>,
    reason: DestroyReason,
}

impl Pools {
    pub fn new(
        runtime: Arc<Runtime>,
        state: Arc<StateDir>,
        metrics: Arc<WaveletMetrics>,
        max_instances: u32,
    ) -> Arc<Pools> {
        let (destroyer, doomed) = mpsc::channel::<Doomed>();
        let pools = Arc::new(Pools {
            functions: ArcSwap::from_pointee(HashMap::new()),
            departed: Mutex::new(Vec::new()),
            runtime,
            state,
            metrics,
            connect_timeout: Duration::from_secs(1),
            live: Arc::new(SlotCounter::default()),
            destroying: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_instances,
            epoch: Instant::now(),
            destroyer: Mutex::new(destroyer),
        });
        let worker = Arc::downgrade(&pools);
        let spawned = std::thread::Builder::new().name("ei-destroyer".into()).spawn(move || {
            while let Ok(doomed) = doomed.recv() {
                match worker.upgrade() {
                    Some(pools) => pools.destroy(doomed),
                    None => return,
                }
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the destroyer thread; instances are destroyed inline");
        }
        pools
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn metrics(&self) -> &Arc<WaveletMetrics> {
        &self.metrics
    }

    pub fn function(&self, id: &FunctionId) -> Option<Arc<FunctionPool>> {
        self.functions.load().get(id).cloned()
    }

    pub fn functions(&self) -> Vec<Arc<FunctionPool>> {
        let mut all: Vec<_> = self.functions.load().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Instances alive on this node.
    pub fn live(&self) -> u32 {
        self.live.get()
    }

    /// Requests holding a lease, over all functions (removed ones too: a drain waits for them).
    pub fn in_flight(&self) -> u64 {
        self.every_pool().iter().flat_map(|p| p.instances()).map(|ei| u64::from(ei.in_flight())).sum()
    }

    /// Functions whose image cannot be used on this node, with why.
    pub fn image_failures(&self) -> Vec<(FunctionId, String)> {
        let defs: Vec<_> = self.functions.load().values().map(|p| p.def.load_full()).collect();
        self.runtime.image_failures(defs.iter().map(|d| d.as_ref()))
    }

    /// Functions whose instances could not start as the configured user, with why.
    pub fn unreachable_commands(&self) -> Vec<(FunctionId, String)> {
        self.functions()
            .iter()
            .filter_map(|p| self.runtime.unreachable(&p.def.load()).map(|why| (p.id.clone(), why)))
            .collect()
    }

    /// Makes `defs` the functions this Wavelet serves. Instances of a removed function are
    /// destroyed as each goes idle; a changed definition applies to instances started from now on.
    pub fn apply(&self, defs: Vec<FunctionDef>) {
        let old = self.functions.load_full();
        let mut departed = self.departed.lock();
        let mut functions = HashMap::with_capacity(defs.len());
        for def in defs {
            let returning = || {
                let at = departed.iter().position(|p| p.id == def.id)?;
                Some(departed.swap_remove(at))
            };
            let pool = match old.get(&def.id).cloned().or_else(returning) {
                Some(pool) => {
                    pool.def.store(Arc::new(def));
                    pool
                }
                None => Arc::new(FunctionPool {
                    id: def.id.clone(),
                    metrics: OnceLock::new(),
                    registry: self.metrics.clone(),
                    def: ArcSwap::from_pointee(def),
                    instances: Mutex::new(Vec::new()),
                    crashes: CrashLoop::default(),
                }),
            };
            functions.insert(pool.id.clone(), pool);
        }
        let removed: Vec<_> = old.values().filter(|p| !functions.contains_key(&p.id)).cloned().collect();
        self.functions.store(Arc::new(functions));
        for pool in removed {
            info!(function = %pool.id, "function removed; destroying its instances as each goes idle");
            for ei in pool.instances() {
                self.retire_if_idle(&pool, &ei, DestroyReason::Removed);
            }
            if !pool.instances.lock().is_empty() {
                departed.push(pool);
            }
        }
    }

    /// Functions served now and removed ones whose instances are still being wound down.
    pub fn every_pool(&self) -> Vec<Arc<FunctionPool>> {
        let mut all: Vec<_> = self.functions.load().values().cloned().collect();
        all.extend(self.departed.lock().iter().cloned());
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// A slot on an instance of `pool`: a running one if any has a free slot, else a new one.
    pub async fn acquire(self: &Arc<Self>, pool: &Arc<FunctionPool>) -> Result<Lease, AcquireError> {
        let def = pool.def.load_full();
        let capacity = def.spec.container_concurrency;
        {
            // In start order, so `reuse_newest` (the simulator's choice too) takes the newest.
            let instances = pool.instances.lock();
            let reused = wavelink_core::routing::reuse_newest(instances.len(), |i| {
                let ei = &instances[i];
                if ei.single_use || !ei.slots.try_reserve(capacity) {
                    return false;
                }
                if ei.retired.load(SeqCst) {
                    ei.slots.release();
                    return false;
                }
                true
            });
            if let Some(i) = reused {
                pool.metrics().reused.inc();
                return Ok(Lease { pools: self.clone(), pool: pool.clone(), ei: instances[i].clone(), cold: false });
            }
        }
        if let Some(retry_in) = pool.crashes.record.blocked_for() {
            let in_a_row = pool.crashes.record.in_a_row();
            return Err(match pool.crashes.start_error.lock().clone() {
                Some(error) => AcquireError::StartBackoff { error, in_a_row, retry_in },
                None => AcquireError::CrashLoop { in_a_row, retry_in },
            });
        }
        if !self.live.try_reserve(self.max_instances) {
            self.metrics.full.inc();
            return Err(AcquireError::Full(self.max_instances));
        }
        // The place is given back unless an instance takes it, also when this future is dropped
        // while a container starts (the runtime removes a container nobody took).
        let place = NodePlace(Some(self.live.as_ref()));
        let instance = match self.runtime.start(&def, &self.state).await {
            Ok(instance) => {
                place.keep();
                instance
            }
            Err(e) => {
                drop(place);
                if !e.is_unavailable() {
                    pool.metrics().spawn_failures.inc();
                    let (in_a_row, backoff) = pool.crashes.record(Some(e.to_string()));
                    warn!(function = %def.id, error = %e, in_a_row, ?backoff,
                          "starting an Emergency Instance failed; no new one until the back-off passes");
                }
                return Err(e.into());
            }
        };
        if let Some(phases) = instance.phases() {
            self.metrics.observe_phases(&phases);
        }
        let reach = instance.reach();
        let slots = SlotCounter::default();
        slots.try_reserve(1);
        let ei = Arc::new(Ei {
            id: instance.id().to_owned(),
            addr: instance.addr(),
            peer: reach.peer(self.connect_timeout),
            reach,
            pid: instance.pid(),
            spawned: instance.started(),
            slots,
            retired: AtomicBool::new(false),
            single_use: def.spec.emergency_keepalive.is_zero(),
            wait_listening: matches!(instance, Instance::Container(_)) || !def.socket_activation,
            last_release_ms: AtomicU64::new(self.now_ms()),
            memory: Mutex::new(MemorySample { at: instance.started(), rss: 0 }),
            process: Mutex::new(Some(instance)),
        });
        pool.instances.lock().push(ei.clone());
        pool.metrics().spawned.inc();
        pool.metrics().live.inc();
        self.metrics.live_total.inc();
        Ok(Lease { pools: self.clone(), pool: pool.clone(), ei, cold: true })
    }

    /// Destroys idle instances past their keepalive; with `full_scan`, also samples memory and
    /// forgets instances whose process exited. Called periodically by the reaper.
    pub fn reap(&self, full_scan: bool) {
        let now = self.now_ms();
        if full_scan {
            let defs = self.functions.load().iter().map(|(id, pool)| (id.clone(), pool.def.load_full())).collect();
            self.runtime.maintain(&defs);
            self.reap_orphans();
        }
        for pool in self.functions.load().values() {
            let keepalive_ms = pool.def.load().spec.emergency_keepalive.as_millis() as u64;
            self.reap_pool(pool, now, full_scan, Some(keepalive_ms));
        }
        let departed = self.departed.lock().clone();
        for pool in &departed {
            self.reap_pool(pool, now, full_scan, None);
        }
        if !departed.is_empty() {
            self.departed.lock().retain(|pool| !pool.instances.lock().is_empty());
        }
    }

    /// Reaps exited children that are not instances: what instances started and left behind
    /// (the Wavelet is their subreaper, or PID 1 of its container), which would otherwise stay
    /// zombies for as long as the Wavelet runs. Instances are reaped by their own bookkeeping.
    fn reap_orphans(&self) {
        if !matches!(*self.runtime, Runtime::Process(_)) {
            return;
        }
        let instances: std::collections::HashSet<u32> =
            self.every_pool().iter().flat_map(|p| p.instances()).map(|ei| ei.pid).collect();
        for child in crate::procfs::children(std::process::id()) {
            let zombie = crate::procfs::stat(child).is_some_and(|s| s.state == 'Z');
            if zombie && !instances.contains(&child) && crate::spawn::wait(child, false).is_some() {
                self.metrics.orphans_reaped.inc();
                tracing::debug!(pid = child, "reaped a process an instance left behind");
            }
        }
    }

    /// Destroys `pool`'s instances that exited, and those idle for `keepalive_ms` (at once when
    /// `None`: the function is gone).
    fn reap_pool(&self, pool: &Arc<FunctionPool>, now: u64, full_scan: bool, keepalive_ms: Option<u64>) {
        for ei in pool.instances() {
            if full_scan {
                let exited = ei.process.lock().as_mut().is_some_and(|p| p.try_exited());
                if exited {
                    self.retire(pool, &ei, DestroyReason::Exited);
                    continue;
                }
                ei.account_memory(&pool.metrics().memory);
            }
            match keepalive_ms {
                None => self.retire_if_idle(pool, &ei, DestroyReason::Removed),
                Some(keepalive_ms) => {
                    let idle_for = now.saturating_sub(ei.last_release_ms.load(SeqCst));
                    if !ei.single_use && idle_for >= keepalive_ms {
                        self.retire_if_idle(pool, &ei, DestroyReason::Idle);
                    }
                }
            }
        }
    }

    /// The instance behind `lease` does not take connections (it died, or never started
    /// listening): destroy it, and let the caller try another. A new one that never served
    /// counts towards the function's crash-loop back-off.
    pub fn discard(&self, lease: Lease) {
        if lease.cold {
            let (in_a_row, backoff) = lease.pool.crashes.record(None);
            lease.pool.metrics().spawn_failures.inc();
            // One line per death, and deaths are spaced by the back-off: no flood.
            warn!(function = %lease.pool.id, instance = %lease.ei.id, in_a_row, ?backoff,
                  "an Emergency Instance died before it served; no new one until the back-off passes");
        }
        self.retire(&lease.pool, &lease.ei, DestroyReason::Exited);
    }

    /// Retires the instance unless a request holds or just took a slot on it.
    fn retire_if_idle(&self, pool: &Arc<FunctionPool>, ei: &Arc<Ei>, reason: DestroyReason) {
        if ei.in_flight() > 0 || ei.retired.swap(true, SeqCst) {
            return;
        }
        // An acquire may have reserved between the check and the swap: it will see `retired`
        // and back off, but if it already holds the slot, the instance stays.
        if ei.in_flight() > 0 {
            ei.retired.store(false, SeqCst);
            return;
        }
        self.doom(pool, ei, reason);
    }

    /// Retires the instance now (it exited, or served its one request).
    fn retire(&self, pool: &Arc<FunctionPool>, ei: &Arc<Ei>, reason: DestroyReason) {
        if !ei.retired.swap(true, SeqCst) {
            self.doom(pool, ei, reason);
        }
    }

    fn doom(&self, pool: &Arc<FunctionPool>, ei: &Arc<Ei>, reason: DestroyReason) {
        pool.instances.lock().retain(|other| !Arc::ptr_eq(other, ei));
        let doomed = Doomed { pool: pool.clone(), ei: ei.clone(), reason };
        self.destroying.fetch_add(1, SeqCst);
        if let Err(mpsc::SendError(doomed)) = self.destroyer.lock().send(doomed) {
            self.destroy(doomed);
        }
    }

    /// Destroys a doomed instance (counted in `destroying` by the caller); the bookkeeping
    /// follows once it is gone: at once for a process, when containerd is done for a container
    /// (removals run concurrently there, so a burst's worth of them do not queue up).
    fn destroy(&self, doomed: Doomed) {
        let Some(instance) = doomed.ei.process.lock().take() else {
            self.destroying.fetch_sub(1, SeqCst);
            return;
        };
        doomed.ei.account_memory(&doomed.pool.metrics().memory);
        let (live, metrics, destroying) = (self.live.clone(), self.metrics.clone(), self.destroying.clone());
        let Doomed { pool, reason, .. } = doomed;
        self.runtime.destroy_then(instance, &self.state, move || {
            live.release();
            pool.metrics().live.dec();
            pool.metrics().destroyed(reason);
            metrics.live_total.dec();
            destroying.fetch_sub(1, SeqCst);
        });
    }

    /// Destroys every instance now, busy or not, and whatever the runtime prepared (shutdown).
    pub fn destroy_all(&self) {
        self.runtime.shutdown();
        for pool in self.every_pool() {
            for ei in pool.instances() {
                ei.retired.store(true, SeqCst);
                pool.instances.lock().retain(|other| !Arc::ptr_eq(other, &ei));
                self.destroying.fetch_add(1, SeqCst);
                self.destroy(Doomed { pool: pool.clone(), ei, reason: DestroyReason::Shutdown });
            }
        }
        // Instances retired earlier may still be queued or being removed.
        let deadline = Instant::now() + SHUTDOWN_LIMIT;
        while self.destroying.load(SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.destroying.load(SeqCst);
        if left > 0 {
            warn!(left, "instances still being destroyed at exit; a restarted Wavelet removes them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{PortRange, ProcessRuntime};
    use wavelink_core::FunctionSpec;
    use wavelink_core::spec::keys;

    fn def(name: &str) -> FunctionDef {
        FunctionDef {
            id: FunctionId::new("default", name).expect("valid id"),
            spec: std::sync::Arc::new(
                FunctionSpec::from_annotations([(keys::EMERGENCY_KEEPALIVE, "60s")]).expect("valid spec"),
            ),
            command: vec!["sleep".into(), "60".into()],
            env: vec![],
            container: None,
            instances: vec![],
            socket_activation: true,
        }
    }

    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pools() -> (Arc<Pools>, Scratch) {
        let dir = std::env::temp_dir().join(format!("wavelink-pool-{}-{}", std::process::id(), fastrand::u32(..)));
        let state = Arc::new(StateDir::open(&dir).expect("state dir"));
        let first = 20_000 + fastrand::u16(..20_000);
        let runtime =
            ProcessRuntime::new(None, None, PortRange::new(first, first + 100).expect("ports")).expect("runtime");
        let metrics = Arc::new(WaveletMetrics::new("process").expect("metrics"));
        (Pools::new(Arc::new(Runtime::Process(runtime)), state, metrics, 8), Scratch(dir))
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_function_has_metric_series_only_once_it_has_had_an_instance() {
        let (pools, _scratch) = pools();
        pools.apply(vec![def("spills"), def("never")]);
        let series = |name: &str| {
            let text = String::from_utf8(pools.metrics.encode().expect("encode")).expect("utf-8");
            text.lines().filter(|l| !l.starts_with('#') && l.contains(&format!("function=\"default/{name}\""))).count()
        };
        assert_eq!((series("spills"), series("never")), (0, 0), "configured functions cost no series");
        let spills = pools.function(&def("spills").id).expect("pool");
        drop(pools.acquire(&spills).await.expect("an instance"));
        assert!(series("spills") > 0, "its first instance brings its series");
        let text = String::from_utf8(pools.metrics.encode().expect("encode")).expect("utf-8");
        let spawned = "wavelink_emergency_instances_spawned_total{function=\"default/spills\",runtime=\"process\"} 1";
        assert!(text.contains(spawned), "{text}");
        assert_eq!(series("never"), 0);
        pools.apply(vec![]);
        wait_for("the instance destroyed", || pools.live() == 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_functions_busy_instance_is_destroyed_when_its_request_ends() {
        let (pools, _scratch) = pools();
        pools.apply(vec![def("busy"), def("idle")]);
        let busy = pools.function(&def("busy").id).expect("pool");
        let idle = pools.function(&def("idle").id).expect("pool");
        let lease = pools.acquire(&busy).await.expect("an instance");
        drop(pools.acquire(&idle).await.expect("an instance"));
        assert_eq!(pools.live(), 2);

        pools.apply(vec![]);
        wait_for("the idle instance destroyed", || pools.live() == 1);
        pools.reap(true);
        assert_eq!(pools.live(), 1, "the busy instance serves on");
        assert_eq!(pools.in_flight(), 1, "and counts for a drain");
        drop(lease);
        pools.reap(false);
        wait_for("the busy instance destroyed once idle", || pools.live() == 0);
        pools.reap(false);
        assert!(pools.every_pool().is_empty(), "the removed function is forgotten");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_function_back_before_its_busy_instance_ends_keeps_it() {
        let (pools, _scratch) = pools();
        pools.apply(vec![def("back")]);
        let pool = pools.function(&def("back").id).expect("pool");
        let lease = pools.acquire(&pool).await.expect("an instance");
        pools.apply(vec![]);
        pools.apply(vec![def("back")]);
        let returned = pools.function(&def("back").id).expect("pool");
        assert!(Arc::ptr_eq(&pool, &returned), "the same pool, with its instance");
        drop(lease);
        pools.reap(false);
        assert_eq!(pools.live(), 1, "kept for its keepalive like any idle instance");
        pools.destroy_all();
        assert_eq!(pools.live(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_destroys_busy_instances_of_removed_functions_too() {
        let (pools, _scratch) = pools();
        pools.apply(vec![def("gone")]);
        let pool = pools.function(&def("gone").id).expect("pool");
        let lease = pools.acquire(&pool).await.expect("an instance");
        let pid = lease.ei.pid;
        pools.apply(vec![]);
        pools.destroy_all();
        assert_eq!(pools.live(), 0);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the process is gone");
        drop(lease);
    }
}
