//! A function's live state: its routing snapshot, slot guards and the bounded wait queue.
//!
//! Request path: one `ArcSwap` load of the snapshot, a power-of-two-choices slot reservation,
//! and an RAII [`SlotGuard`] that gives the slot back on every exit path. Only a request that
//! finds no free slot takes the queue's lock.
//!
//! A slot is on one of two tracks: a Regular Instance, or — in `dual` and `fast-only` mode — a
//! Wavelet, which serves the request on an Emergency Instance (bounded by `emergency-max` per
//! function). The mode says which tracks a request tries, in order; one that finds none waits.
//!
//! Hand-off, not wake-up: a freed slot goes straight to the oldest waiter (the guard is sent to
//! it), so waiters are served in order and new arrivals never overtake them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use wavelink_core::{FunctionId, FunctionSpec};

use pingora_core::upstreams::peer::HttpPeer;
use wavelink_core::autoscale::{PokePacer, PokeWhen};
use wavelink_core::routing::{QueueRefusal, admit_to_queue, take_slot};
use wavelink_core::spec::{ScalingMode, Track};

use crate::instance::{Instance, reserve_any};
use crate::links::Links;
use crate::metrics::{FunctionMetrics, ProxyMetrics, Rejection};
use crate::stats::StatsWindow;
use crate::wavelets::WaveletTarget;
use wavelink_core::stats::Sample;

/// What the request path reads, swapped as a whole.
pub struct Routing {
    pub spec: Arc<FunctionSpec>,
    pub regular: Vec<Arc<Instance>>,
}

/// A concurrency level and its highest value since the sampler last looked.
#[derive(Default)]
pub struct LoadGauge {
    now: AtomicU32,
    peak: AtomicU32,
}

impl LoadGauge {
    fn inc(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, Relaxed);
    }

    /// Increments unless the level is already `max`.
    fn try_inc(&self, max: u32) -> bool {
        let mut current = self.now.load(SeqCst);
        while current < max {
            match self.now.compare_exchange_weak(current, current + 1, SeqCst, SeqCst) {
                Ok(_) => {
                    self.peak.fetch_max(current + 1, Relaxed);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
        false
    }

    fn dec(&self) {
        self.now.fetch_sub(1, SeqCst);
    }

    pub fn now(&self) -> u32 {
        self.now.load(SeqCst)
    }

    /// The highest level since the sampler last took it.
    pub fn peak(&self) -> u32 {
        self.peak.load(Relaxed)
    }

    /// The peak since the previous call; the next interval starts at the current level.
    pub fn take_peak(&self) -> u32 {
        self.peak.swap(self.now(), Relaxed)
    }
}

/// Load counters the stats sampler reads.
#[derive(Default)]
pub struct FunctionLoad {
    pub regular: LoadGauge,
    /// Requests on Emergency Instances (forwarded to a Wavelet and not finished).
    pub emergency: LoadGauge,
    pub queued: LoadGauge,
    /// Every request of the function at this proxy, from arrival to end, whatever its track.
    pub total: LoadGauge,
    pub arrivals: AtomicU64,
}

impl FunctionLoad {
    /// A request arrived (paired with [`Self::left`]).
    pub fn arrived(&self) {
        // SeqCst: dropping idle metric series reads it to see a request that just arrived.
        self.arrivals.fetch_add(1, SeqCst);
        self.total.inc();
    }

    pub fn left(&self) {
        self.total.dec();
    }
}

struct Waiter {
    ticket: u64,
    hand_off: oneshot::Sender<SlotGuard>,
}

/// Result of replacing a function's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct InstanceChange {
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
}

pub struct FunctionState {
    pub id: FunctionId,
    /// `namespace/name`, the `function` label.
    pub label: String,
    /// Lower-case `<name>.<namespace>.<domain>`, the key of the route table (built once).
    pub host: Arc<str>,
    /// Created with the function's first request and dropped after `proxy.metrics-expiry`
    /// without one: an idle function has no metric series (and holds no room for their handles).
    metrics: ArcSwapOption<FunctionMetrics>,
    /// Held to create or drop the series, so a request never records into dropped ones.
    metrics_lifecycle: Mutex<()>,
    registry: Arc<ProxyMetrics>,
    pub load: FunctionLoad,
    routing: ArcSwap<Routing>,
    /// FIFO of requests waiting for a slot; tickets are increasing, so it is sorted by ticket.
    waiters: Mutex<VecDeque<Waiter>>,
    next_ticket: AtomicU64,
    /// Removed instances that still have requests in flight.
    draining: Mutex<Vec<Arc<Instance>>>,
    /// Recent one-second samples; written by the sampler, read by `/stats`. Made when the
    /// function first has activity and dropped once it has neither samples nor metric series:
    /// an idle function holds no window.
    pub stats: Mutex<Option<Box<StatsWindow>>>,
    /// Wavelets and controller, shared with the router.
    links: Arc<Links>,
    /// Paces pokes of the controller for this function (`sync` mode).
    poke_pacer: Mutex<PokePacer>,
}

impl FunctionState {
    pub fn new(
        id: FunctionId,
        host: Arc<str>,
        spec: Arc<FunctionSpec>,
        instances: &[SocketAddr],
        registry: Arc<ProxyMetrics>,
        links: Arc<Links>,
    ) -> Arc<Self> {
        let regular = dedup(instances).map(|addr| Arc::new(Instance::new(addr, links.peer_settings))).collect();
        Arc::new(FunctionState {
            label: id.to_string(),
            host,
            id,
            metrics: ArcSwapOption::empty(),
            metrics_lifecycle: Mutex::new(()),
            registry,
            load: FunctionLoad::default(),
            routing: ArcSwap::from_pointee(Routing { spec, regular }),
            waiters: Mutex::new(VecDeque::new()),
            next_ticket: AtomicU64::new(0),
            draining: Mutex::new(Vec::new()),
            stats: Mutex::new(None),
            links,
            poke_pacer: Mutex::new(PokePacer::default()),
        })
    }

    /// The function's metric handles, its series created on first use.
    pub fn metrics(&self) -> Arc<FunctionMetrics> {
        if let Some(metrics) = self.metrics.load_full() {
            return metrics;
        }
        let _lifecycle = self.metrics_lifecycle.lock();
        if let Some(metrics) = self.metrics.load_full() {
            return metrics;
        }
        let metrics = Arc::new(self.registry.for_function(&self.label));
        self.metrics.store(Some(metrics.clone()));
        metrics
    }

    /// The metric handles if the function had traffic since its series were last dropped.
    pub fn metrics_if_used(&self) -> Option<Arc<FunctionMetrics>> {
        self.metrics.load_full()
    }

    /// Whether the function has metric series now (cheaper than taking the handles).
    pub fn has_metrics(&self) -> bool {
        self.metrics.load().is_some()
    }

    /// Drops the function's metric series unless a request arrived since the sampler last
    /// closed an interval or is in flight: a request that took the handles before they were
    /// dropped is seen here (it arrived first), so its counts never go to dropped series.
    /// Returns whether they were dropped.
    pub fn expire_metrics(&self) -> bool {
        let _lifecycle = self.metrics_lifecycle.lock();
        let Some(metrics) = self.metrics.swap(None) else { return false };
        if self.load.total.now() > 0 || self.load.arrivals.load(SeqCst) > 0 {
            self.metrics.store(Some(metrics));
            return false;
        }
        self.registry.forget_function(&self.label);
        true
    }

    pub fn routing(&self) -> arc_swap::Guard<Arc<Routing>> {
        self.routing.load()
    }

    pub fn spec(&self) -> Arc<FunctionSpec> {
        self.routing.load().spec.clone()
    }

    /// Closed samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.stats.lock().as_ref().map(|w| w.samples()).unwrap_or_default()
    }

    /// Closed samples of intervals that ended after `since_unix_ms`, oldest first.
    pub fn samples_after(&self, since_unix_ms: u64) -> Vec<Sample> {
        self.stats.lock().as_ref().map(|w| w.samples_after(since_unix_ms)).unwrap_or_default()
    }

    /// Requests waiting for a slot now.
    pub fn queued(&self) -> u32 {
        self.load.queued.now()
    }

    /// A free slot now, or `None`. Never overtakes requests already waiting.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SlotGuard> {
        self.reserve(&self.routing.load(), self.queued())
    }

    /// A slot, waiting in the queue up to the function's `queue-timeout` if none is free.
    /// Cancel-safe: dropping the future gives up the queue position (and any slot handed over).
    pub async fn acquire(self: &Arc<Self>) -> Result<SlotGuard, Rejection> {
        let wait = self.spec().queue_timeout;
        self.acquire_within(wait).await
    }

    /// A slot, waiting in the queue up to `wait` (what is left of `queue-timeout` for a request
    /// that already waited, or whose first slot failed it).
    pub async fn acquire_within(self: &Arc<Self>, wait: std::time::Duration) -> Result<SlotGuard, Rejection> {
        if let Some(slot) = self.try_acquire() {
            return Ok(slot);
        }
        let spec = self.spec();
        let (hand_off, receive) = oneshot::channel();
        let ticket = {
            let mut waiters = self.waiters.lock();
            let waiting = u32::try_from(waiters.len()).unwrap_or(u32::MAX);
            if let Err(refusal) = admit_to_queue(waiting, spec.queue_depth, || self.links.try_enqueue()) {
                let rejection = match refusal {
                    QueueRefusal::FunctionQueueFull => Rejection::QueueFull,
                    QueueRefusal::ProxyQueueFull => Rejection::ProxyQueueFull,
                };
                self.metrics().record_rejection(rejection);
                return Err(rejection);
            }
            let ticket = self.next_ticket.fetch_add(1, Relaxed);
            waiters.push_back(Waiter { ticket, hand_off });
            self.load.queued.inc();
            QueueTicket { function: self, ticket, since: Instant::now() }
        };
        // A slot freed between our failed reservation and the enqueue saw no waiter; look again.
        self.dispatch();
        if spec.scaling_mode == ScalingMode::Sync {
            self.poke_for_waiters();
        }
        let outcome = tokio::time::timeout(wait, receive).await;
        self.metrics().queue_wait.observe(ticket.since.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(slot)) => Ok(slot),
            // The sender is only dropped unsent when the queue itself goes away.
            Ok(Err(_)) | Err(_) => {
                drop(ticket);
                self.metrics().record_rejection(Rejection::QueueTimeout);
                Err(Rejection::QueueTimeout)
            }
        }
    }

    /// A slot on the first of the mode's tracks that has one free, unless `waiting` requests
    /// are ahead (core::routing, the choice the simulator makes too).
    fn reserve(self: &Arc<Self>, routing: &Routing, waiting: u32) -> Option<SlotGuard> {
        take_slot(routing.spec.scaling_mode, waiting, |track| {
            let slot = match track {
                Track::Regular => self.reserve_regular(routing)?,
                Track::Emergency => self.reserve_emergency(routing.spec.emergency_max, &[])?,
            };
            Some(SlotGuard { function: self.clone(), slot })
        })
    }

    fn reserve_regular(&self, routing: &Routing) -> Option<Slot> {
        let instance = reserve_any(&routing.regular, routing.spec.container_concurrency)?;
        self.load.regular.inc();
        Some(Slot::Regular(instance.clone()))
    }

    /// An Emergency Instance slot: under `emergency-max`, on a Wavelet not in `exclude`.
    fn reserve_emergency(&self, emergency_max: u32, exclude: &[SocketAddr]) -> Option<Slot> {
        if !self.load.emergency.try_inc(emergency_max) {
            return None;
        }
        match self.links.wavelets.load().take(exclude) {
            Some(wavelet) => Some(Slot::Emergency(wavelet)),
            None => {
                self.load.emergency.dec();
                None
            }
        }
    }

    /// `sync` mode: a request started waiting. Lambda-like, every waiting request wants an
    /// instance of its own, now: poke at once, or, within an interval of the last poke, once at
    /// its end for every request that waited since.
    fn poke_for_waiters(self: &Arc<Self>) {
        let when = self.poke_pacer.lock().request_waits(self.links.now_us());
        match when {
            PokeWhen::Now => self.poke(),
            PokeWhen::At(at_us) => {
                let this = self.clone();
                tokio::spawn(async move {
                    let wait = at_us.saturating_sub(this.links.now_us());
                    tokio::time::sleep(std::time::Duration::from_micros(wait)).await;
                    this.poke_pacer.lock().trailing_sent(this.links.now_us());
                    if this.queued() > 0 {
                        this.poke();
                    }
                });
            }
            PokeWhen::Pending => {}
        }
    }

    /// Asks the controller for the routable RIs plus one per `container-concurrency` waiting.
    fn poke(&self) {
        let routing = self.routing.load();
        let waiting = self.queued().div_ceil(routing.spec.container_concurrency.max(1));
        self.links.poke(&self.id, routing.regular.len() as u32 + waiting);
    }

    /// Hands free slots to waiters, oldest first.
    fn dispatch(self: &Arc<Self>) {
        let mut undelivered = None;
        {
            let mut waiters = self.waiters.lock();
            let routing = self.routing.load();
            while !waiters.is_empty() {
                let slot = match undelivered.take() {
                    Some(slot) => slot,
                    // For the head of the queue: nobody is ahead of it.
                    None => match self.reserve(&routing, 0) {
                        Some(slot) => slot,
                        None => break,
                    },
                };
                let Some(waiter) = waiters.pop_front() else {
                    undelivered = Some(slot);
                    break;
                };
                self.load.queued.dec();
                self.links.dequeued();
                // A waiter that gave up in this instant: offer the slot to the next one.
                if let Err(slot) = waiter.hand_off.send(slot) {
                    undelivered = Some(slot);
                }
            }
        }
        // Dropped outside the lock: releasing a slot may dispatch again.
        drop(undelivered);
    }

    /// Whether the Regular Instances are exactly `addrs` (in order, duplicates aside): a sync
    /// that lists them again changes nothing and costs no new routing snapshot.
    pub fn has_instances(&self, addrs: &[SocketAddr]) -> bool {
        let routing = self.routing.load();
        routing.regular.len() <= addrs.len() && dedup(addrs).map(Some).eq(routing.regular.iter().map(|i| Some(i.addr)))
    }

    /// Replaces the Regular Instances. Kept addresses keep their in-flight counts; removed ones
    /// get no new requests and finish the ones they have. Waiters get the new capacity at once.
    pub fn set_instances(self: &Arc<Self>, addrs: &[SocketAddr]) -> InstanceChange {
        let current = self.routing.load_full();
        let mut kept = 0;
        let mut draining = self.draining.lock();
        let regular: Vec<Arc<Instance>> = dedup(addrs)
            .map(|addr| match current.regular.iter().find(|i| i.addr == addr) {
                Some(existing) => {
                    kept += 1;
                    existing.clone()
                }
                // Removed but still serving: re-added with its requests counted, so its
                // container-concurrency holds across the change.
                None => match draining.iter().position(|i| i.addr == addr) {
                    Some(position) => draining.swap_remove(position),
                    None => Arc::new(Instance::new(addr, self.links.peer_settings)),
                },
            })
            .collect();
        let removed: Vec<Arc<Instance>> =
            current.regular.iter().filter(|old| !regular.iter().any(|new| new.addr == old.addr)).cloned().collect();
        let change = InstanceChange { added: regular.len() - kept, removed: removed.len(), kept };
        self.routing.store(Arc::new(Routing { spec: current.spec.clone(), regular }));
        draining.extend(removed.into_iter().filter(|i| i.in_flight() > 0));
        drop(draining);
        self.dispatch();
        change
    }

    /// Replaces the spec (for example after an annotation change); capacity changes apply to new
    /// reservations at once.
    pub fn set_spec(self: &Arc<Self>, spec: Arc<FunctionSpec>) {
        let current = self.routing.load_full();
        self.routing.store(Arc::new(Routing { spec, regular: current.regular.clone() }));
        self.dispatch();
    }

    /// Gives waiters any capacity that appeared outside this function (new Wavelets).
    pub fn wake_waiters(self: &Arc<Self>) {
        self.dispatch();
    }

    /// Removed instances that still have requests in flight.
    pub fn draining(&self) -> Vec<Arc<Instance>> {
        let mut draining = self.draining.lock();
        draining.retain(|i| i.in_flight() > 0);
        draining.clone()
    }
}

fn dedup(addrs: &[SocketAddr]) -> impl Iterator<Item = SocketAddr> + '_ {
    addrs.iter().enumerate().filter(|(i, a)| !addrs[..*i].contains(a)).map(|(_, a)| *a)
}

/// A queue position; dropping it before being served leaves the queue.
struct QueueTicket<'a> {
    function: &'a FunctionState,
    ticket: u64,
    since: Instant,
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        let mut waiters = self.function.waiters.lock();
        if let Ok(position) = waiters.binary_search_by_key(&self.ticket, |w| w.ticket) {
            waiters.remove(position);
            self.function.load.queued.dec();
            self.function.links.dequeued();
        }
    }
}

/// Where a reserved slot is.
pub enum Slot {
    Regular(Arc<Instance>),
    Emergency(Arc<WaveletTarget>),
}

/// A reserved slot. Dropping it frees the slot (or hands it to a waiter).
pub struct SlotGuard {
    function: Arc<FunctionState>,
    slot: Slot,
}

impl SlotGuard {
    pub fn track(&self) -> Track {
        match self.slot {
            Slot::Regular(_) => Track::Regular,
            Slot::Emergency(_) => Track::Emergency,
        }
    }

    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    /// The Regular Instance, for a regular slot.
    pub fn instance(&self) -> Option<&Arc<Instance>> {
        match &self.slot {
            Slot::Regular(instance) => Some(instance),
            Slot::Emergency(_) => None,
        }
    }

    /// Where to send the request.
    pub fn peer(&self) -> &HttpPeer {
        match &self.slot {
            Slot::Regular(instance) => instance.peer(),
            Slot::Emergency(wavelet) => &wavelet.peer,
        }
    }

    /// The Wavelet of an emergency slot turned the request away or could not be reached: keep
    /// the emergency slot but move it to another Wavelet, not one of `tried` (with `mark_full`,
    /// the old one is skipped by every function for a moment). False when none is left.
    pub fn move_to_another_wavelet(&mut self, tried: &[SocketAddr], mark_full: bool) -> bool {
        let Slot::Emergency(current) = &self.slot else { return false };
        let wavelets = self.function.links.wavelets.load();
        if mark_full {
            wavelets.mark_full(current);
        }
        match wavelets.take(tried) {
            Some(next) => {
                current.release();
                self.slot = Slot::Emergency(next);
                true
            }
            None => false,
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        match &self.slot {
            Slot::Regular(instance) => {
                instance.release();
                self.function.load.regular.dec();
            }
            Slot::Emergency(wavelet) => {
                wavelet.release();
                self.function.load.emergency.dec();
            }
        }
        if self.function.queued() > 0 {
            self.function.dispatch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProxyMetrics;
    use std::time::Duration;
    use wavelink_core::spec::keys;

    fn function(instances: u16, annotations: &[(&str, &str)]) -> Arc<FunctionState> {
        with_wavelets(instances, 0, annotations)
    }

    fn with_wavelets(instances: u16, wavelets: u16, annotations: &[(&str, &str)]) -> Arc<FunctionState> {
        let metrics = ProxyMetrics::new().unwrap();
        let id = FunctionId::new("default", "f").unwrap();
        let spec = FunctionSpec::from_annotations(annotations.iter().copied()).unwrap();
        let addrs: Vec<SocketAddr> = (0..instances).map(|i| SocketAddr::from(([127, 0, 0, 1], 20_000 + i))).collect();
        let settings = crate::instance::PeerSettings::default();
        let wavelet_addrs: Vec<SocketAddr> =
            (0..wavelets).map(|i| SocketAddr::from(([127, 0, 0, 2], 21_000 + i))).collect();
        let links = Arc::new(Links::new(crate::wavelets::Wavelets::new(&wavelet_addrs, settings), settings));
        FunctionState::new(id, "f.default.example.com".into(), Arc::new(spec), &addrs, Arc::new(metrics), links)
    }

    #[test]
    fn the_proxy_wide_queue_bound_rejects_beyond_it_and_frees_places_as_waiters_leave() {
        runtime().block_on(async {
            let f = function(1, &[]);
            f.links.max_queued.store(2, Relaxed);
            let _busy = f.try_acquire().unwrap();
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let f = f.clone();
                    tokio::spawn(async move { f.acquire().await.map(|_| ()) })
                })
                .collect();
            tokio::task::yield_now().await;
            assert_eq!(f.queued(), 2);
            assert_eq!(f.acquire().await.err(), Some(Rejection::ProxyQueueFull));
            for waiter in waiters {
                waiter.abort();
                let _ = waiter.await;
            }
            assert_eq!(f.queued(), 0);
            assert!(f.links.try_enqueue(), "the places given back");
        });
    }

    #[test]
    fn an_address_removed_and_re_added_while_busy_keeps_its_requests_counted() {
        let f = function(1, &[(keys::CONTAINER_CONCURRENCY, "1")]);
        let addr = f.routing().regular[0].addr;
        let busy = f.try_acquire().unwrap();
        f.set_instances(&[]);
        let change = f.set_instances(&[addr]);
        assert_eq!(change.added, 1);
        assert!(f.try_acquire().is_none(), "a second request would exceed container-concurrency 1");
        drop(busy);
        assert!(f.try_acquire().is_some());
        assert!(f.draining().is_empty());
    }

    #[test]
    fn a_dead_instance_is_ejected_so_dual_spills_and_async_picks_the_other() {
        let dual = with_wavelets(1, 1, &[]);
        dual.routing().regular[0].health.fail();
        assert_eq!(dual.try_acquire().unwrap().track(), Track::Emergency, "an ejected RI is not free capacity");
        let two = function(2, &[]);
        let dead = two.routing().regular[0].clone();
        dead.health.fail();
        for _ in 0..10 {
            let slot = two.try_acquire().unwrap();
            assert_ne!(slot.instance().unwrap().addr, dead.addr);
        }
    }

    #[test]
    fn dual_mode_spills_to_wavelets_only_when_regular_slots_are_taken() {
        let f = with_wavelets(1, 2, &[(keys::EMERGENCY_MAX, "2")]);
        let regular = f.try_acquire().unwrap();
        assert_eq!(regular.track(), Track::Regular);
        let spilled: Vec<_> = (0..2).map(|_| f.try_acquire().expect("emergency slot")).collect();
        assert!(spilled.iter().all(|s| s.track() == Track::Emergency));
        assert_eq!(f.load.emergency.now(), 2);
        assert!(f.try_acquire().is_none(), "emergency-max reached");
        drop(spilled);
        assert_eq!(f.load.emergency.now(), 0);
        assert!(f.links.wavelets.load().targets().iter().all(|w| w.in_flight() == 0));
        drop(regular);
        assert_eq!(f.try_acquire().unwrap().track(), Track::Regular, "a free RI is preferred again");
    }

    #[test]
    fn each_mode_uses_only_its_tracks() {
        let fast = with_wavelets(1, 1, &[(keys::SCALING_MODE, "fast-only")]);
        assert_eq!(fast.try_acquire().unwrap().track(), Track::Emergency, "fast-only skips free RIs");
        let queueing = with_wavelets(1, 1, &[(keys::SCALING_MODE, "async")]);
        let _taken = queueing.try_acquire().unwrap();
        assert!(queueing.try_acquire().is_none(), "async never spills");
        let no_wavelets = with_wavelets(1, 0, &[]);
        let _taken = no_wavelets.try_acquire().unwrap();
        assert!(no_wavelets.try_acquire().is_none(), "dual without Wavelets queues");
        assert_eq!(no_wavelets.load.emergency.now(), 0, "a failed spill gives its reservation back");
    }

    #[test]
    fn a_waiter_gets_a_freed_emergency_slot() {
        runtime().block_on(async {
            let f = with_wavelets(0, 1, &[(keys::EMERGENCY_MAX, "1")]);
            let busy = f.try_acquire().unwrap();
            let f1 = f.clone();
            let waiting = tokio::spawn(async move { f1.acquire().await.map(|slot| slot.track()) });
            tokio::task::yield_now().await;
            assert_eq!(f.queued(), 1);
            drop(busy);
            assert_eq!(waiting.await.unwrap(), Ok(Track::Emergency));
        });
    }

    #[test]
    fn a_full_wavelet_is_traded_for_another_keeping_the_emergency_slot() {
        let f = with_wavelets(0, 2, &[]);
        let mut slot = f.try_acquire().unwrap();
        let Slot::Emergency(first) = slot.slot() else { panic!("emergency slot expected") };
        let first = first.addr;
        assert!(slot.move_to_another_wavelet(&[first], true));
        let Slot::Emergency(second) = slot.slot() else { panic!("emergency slot expected") };
        assert_ne!(second.addr, first);
        assert_eq!(f.load.emergency.now(), 1);
        let second = second.addr;
        assert!(!slot.move_to_another_wavelet(&[first, second], true), "no third Wavelet");
        drop(slot);
        assert!(f.links.wavelets.load().targets().iter().all(|w| w.in_flight() == 0));
        assert_eq!(f.load.emergency.now(), 0);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
    }

    /// A stand-in controller on loopback: answers every call with 200 and keeps each body.
    async fn recording_controller() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // A poke's body is one small JSON object after the headers.
                    while !request.ends_with(b"}") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    kept.lock().push(text.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned());
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
                });
            }
        });
        (addr, bodies)
    }

    #[test]
    fn in_sync_mode_a_burst_is_announced_whole_within_a_poke_interval() {
        // Real time and sockets: the pacing interval must pass.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (controller, pokes) = recording_controller().await;
            let f = function(0, &[(keys::SCALING_MODE, "sync"), (keys::CONTAINER_CONCURRENCY, "1")]);
            f.links.controllers.store(Arc::new(vec![controller]));
            // Five requests start waiting at once: the first pokes for one RI at once; the others
            // come within the interval and are announced by the trailing poke, for five.
            let waiters: Vec<_> = (0..5)
                .map(|_| {
                    let f = f.clone();
                    tokio::spawn(async move { f.acquire().await.map(|_| ()) })
                })
                .collect();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !pokes.lock().iter().any(|p| p == r#"{"want":5}"#) {
                assert!(std::time::Instant::now() < deadline, "no poke for all five: {:?}", pokes.lock());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(pokes.lock().first().map(String::as_str), Some(r#"{"want":1}"#));
            for waiter in waiters {
                waiter.abort();
                let _ = waiter.await;
            }
        });
    }

    #[test]
    fn slots_are_limited_to_capacity_and_returned_on_drop() {
        let f = function(2, &[(keys::CONTAINER_CONCURRENCY, "2")]);
        let slots: Vec<_> = (0..4).map(|_| f.try_acquire().expect("free slot")).collect();
        assert!(f.try_acquire().is_none());
        assert_eq!(f.load.regular.now(), 4);
        drop(slots);
        assert_eq!(f.load.regular.now(), 0);
        assert!(f.routing().regular.iter().all(|i| i.in_flight() == 0));
    }

    #[test]
    fn a_waiter_gets_the_freed_slot_in_order() {
        runtime().block_on(async {
            let f = function(1, &[]);
            let first = f.try_acquire().unwrap();
            let (f1, f2) = (f.clone(), f.clone());
            let second = tokio::spawn(async move { f1.acquire().await.map(|_| Instant::now()) });
            tokio::task::yield_now().await;
            let third = tokio::spawn(async move { f2.acquire().await.map(|_| Instant::now()) });
            tokio::task::yield_now().await;
            assert_eq!(f.queued(), 2);
            // A new arrival does not overtake the queue even when a slot is free in between.
            drop(first);
            assert!(f.try_acquire().is_none());
            let second_at = second.await.unwrap().expect("second served");
            let third_at = third.await.unwrap().expect("third served");
            assert!(second_at <= third_at);
            assert_eq!(f.queued(), 0);
            assert_eq!(f.load.regular.now(), 0);
        });
    }

    #[test]
    fn a_waiter_times_out_with_queue_timeout_and_leaves_the_queue() {
        runtime().block_on(async {
            let f = function(1, &[(keys::QUEUE_TIMEOUT, "500ms")]);
            let _busy = f.try_acquire().unwrap();
            let started = tokio::time::Instant::now();
            assert_eq!(f.acquire().await.err(), Some(Rejection::QueueTimeout));
            assert_eq!(started.elapsed(), Duration::from_millis(500));
            assert_eq!(f.queued(), 0);
            assert_eq!(f.metrics().rejected_overload(), 1);
        });
    }

    #[test]
    fn a_full_queue_rejects_at_once() {
        runtime().block_on(async {
            let f = function(1, &[(keys::QUEUE_DEPTH, "1")]);
            let _busy = f.try_acquire().unwrap();
            let f1 = f.clone();
            let waiting = tokio::spawn(async move { f1.acquire().await.is_ok() });
            tokio::task::yield_now().await;
            assert_eq!(f.acquire().await.err(), Some(Rejection::QueueFull));
            waiting.abort();
            let _ = waiting.await;
            assert_eq!(f.queued(), 0, "an aborted waiter leaves the queue");
        });
    }

    #[test]
    fn a_cancelled_waiter_does_not_leak_the_slot_handed_to_it() {
        runtime().block_on(async {
            let f = function(1, &[]);
            let busy = f.try_acquire().unwrap();
            let f1 = f.clone();
            let waiting = tokio::spawn(async move { f1.acquire().await.map(|_| ()) });
            tokio::task::yield_now().await;
            // Free the slot (handed to the waiter) and cancel the waiter before it runs.
            drop(busy);
            waiting.abort();
            let _ = waiting.await;
            assert_eq!(f.load.regular.now(), 0);
            assert!(f.try_acquire().is_some());
        });
    }

    #[test]
    fn new_instances_wake_waiters() {
        runtime().block_on(async {
            let f = function(0, &[]);
            let f1 = f.clone();
            let waiting = tokio::spawn(async move { f1.acquire().await.map(|slot| slot.instance().unwrap().addr) });
            tokio::task::yield_now().await;
            assert_eq!(f.queued(), 1);
            let addr = SocketAddr::from(([127, 0, 0, 1], 30_000));
            f.set_instances(&[addr]);
            assert_eq!(waiting.await.unwrap(), Ok(addr));
        });
    }

    #[test]
    fn replacing_instances_keeps_counts_and_drains_removed_ones() {
        let f = function(2, &[]);
        let a = f.routing().regular[0].addr;
        let b = f.routing().regular[1].addr;
        let on_a = loop {
            let slot = f.try_acquire().unwrap();
            if slot.instance().unwrap().addr == a {
                break slot;
            }
        };
        let c = SocketAddr::from(([127, 0, 0, 1], 30_001));
        let change = f.set_instances(&[b, c, c]);
        assert_eq!(change, InstanceChange { added: 1, removed: 1, kept: 1 });
        assert_eq!(f.draining().len(), 1, "a keeps its in-flight request");
        for _ in 0..2 {
            let slot = f.try_acquire().expect("b and c are free");
            assert_ne!(slot.instance().unwrap().addr, a, "no new request on a removed instance");
            std::mem::forget(slot);
        }
        drop(on_a);
        assert!(f.draining().is_empty());
    }

    #[test]
    fn slot_accounting_survives_a_storm_of_acquires_timeouts_and_cancels() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let f = function(3, &[(keys::CONTAINER_CONCURRENCY, "2"), (keys::QUEUE_TIMEOUT, "20ms")]);
            let peak = Arc::new(AtomicU32::new(0));
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let f = f.clone();
                    let peak = peak.clone();
                    tokio::spawn(async move {
                        let work = async {
                            if let Ok(slot) = f.acquire().await {
                                peak.fetch_max(slot.instance().unwrap().in_flight(), SeqCst);
                                tokio::time::sleep(Duration::from_millis(i % 5)).await;
                            }
                        };
                        // Every third request is abandoned early, like a client hanging up.
                        if i % 3 == 0 {
                            let _ = tokio::time::timeout(Duration::from_millis(i % 7), work).await;
                        } else {
                            work.await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert!(peak.load(SeqCst) <= 2);
            assert_eq!(f.load.regular.now(), 0);
            assert_eq!(f.queued(), 0);
            assert!(f.routing().regular.iter().all(|i| i.in_flight() == 0));
        });
    }

    /// The proxy and the simulator route with the same code (core::routing): given the same
    /// function (dual, one RI of concurrency 1, emergency-max 1) and three overlapping requests,
    /// both put the first on the RI, spill the second to an EI, and make the third wait.
    #[test]
    fn the_proxy_and_the_simulator_make_the_same_choice() {
        use wavelink_core::sim::{SimConfig, StartDelay, simulate};
        use wavelink_core::trace::arrivals::Invocation;
        let annotations = [
            (keys::CONTAINER_CONCURRENCY, "1"),
            (keys::EMERGENCY_MAX, "1"),
            (keys::MIN_SCALE, "1"),
            (keys::SPORADIC_THRESHOLD, "0"),
        ];
        let f = with_wavelets(1, 1, &annotations);
        let proxy: Vec<Option<Track>> = {
            let held: Vec<Option<SlotGuard>> = (0..3).map(|_| f.try_acquire()).collect();
            held.iter().map(|slot| slot.as_ref().map(SlotGuard::track)).collect()
        };
        assert_eq!(proxy, [Some(Track::Regular), Some(Track::Emergency), None]);

        // The same function in the simulator: its RI routable from the start, three requests
        // of 100 ms arriving 1 ms apart.
        let spec = Arc::new(FunctionSpec::from_annotations(annotations.iter().copied()).unwrap());
        let config = SimConfig {
            ri_start_delay: StartDelay::Fixed(Duration::ZERO),
            ei_cold_start: Duration::ZERO,
            cpu_contention: false,
            hop_latency: Duration::ZERO,
            ..SimConfig::default()
        };
        let arrivals: Vec<Invocation> = (0..3)
            .map(|i| Invocation { at: Duration::from_millis(10 + i), function: 0, runtime_ms: 100, memory_mb: 0 })
            .collect();
        let outcome = simulate(&config, &[spec], &arrivals).unwrap();
        let waited: Vec<bool> = outcome.records.iter().map(|r| r.e2e_us > 100_000).collect();
        let tracks: Vec<Option<Track>> = outcome.records.iter().map(|r| r.track).collect();
        assert_eq!(tracks[..2], proxy[..2], "the first two are placed as the proxy places them");
        assert_eq!(waited, [false, false, true], "and the third waits, as with the proxy");
    }
}
