//! The simulated cluster and the handling of each event.

use std::collections::VecDeque;
use std::sync::Arc;

use super::cpu::{CpuTick, SharedCpu};
use super::queue::{Event, EventQueue};
use super::{Minute, Placement, SimConfig, SimOutcome, Specs, check_schedule};
use crate::autoscale::{Decider, Observation, PokePacer, PokeWhen, Tick, poke_target};
use crate::routing::{admit_to_queue, pick_instance, retirees, reuse_newest, take_slot};
use crate::spec::{FunctionSpec, ScalingMode, Track};
use crate::trace::arrivals::Invocation;
use crate::trace::report::Record;

const US: u64 = 1_000_000;
const MINUTE_US: u64 = 60 * US;
/// Virtual Unix second of the simulation's start (the autoscaler counts whole seconds).
const EPOCH_S: u64 = 1_000_000;
/// Seconds of demand kept per function: the longest stable window.
const KEEP_SECONDS: u64 = 3600;
/// The status of a request turned away (queue full, queue timeout), as the proxy answers.
const OVERLOADED: u16 = 503;

/// Simulates `invocations` (sorted by time, functions indexing `specs`) on the cluster.
pub fn simulate(config: &SimConfig, specs: &Specs, invocations: &[Invocation]) -> Result<SimOutcome, String> {
    check_schedule(specs, invocations)?;
    if config.nodes == 0 || config.cores_per_node <= 0.0 || config.decide_interval.is_zero() {
        return Err("the cluster needs nodes, cores and a decide interval above 0".into());
    }
    let mut sim = Sim::new(config, specs, invocations);
    if config.deployed_before {
        sim.deploy();
    }
    sim.run();
    Ok(sim.finish())
}

struct Request {
    function: u32,
    arrival_us: u64,
    runtime_us: u64,
    memory_mib: f64,
    placement: Option<Placement>,
    /// When it started running on its instance.
    started_us: u64,
    waiting: bool,
}

struct Regular {
    function: u32,
    node: u32,
    ready: bool,
    in_flight: u32,
    /// Asked to go: takes no new request, goes when its last one ends.
    leaving: bool,
    since_us: u64,
    memory: Held,
}

struct Emergency {
    function: u32,
    node: u32,
    ready: bool,
    in_flight: u32,
    alive: bool,
    /// Bumped whenever it serves again, so an older keep-alive expiry does nothing.
    idle_round: u32,
    since_us: u64,
    memory: Held,
    /// Requests waiting for it to finish starting.
    pending: Vec<u32>,
}

/// What an instance holds beyond its base. Measured on wavelink-fn (glibc): memory a request
/// allocated in pieces of up to 32 MiB stays with the process after it (RSS keeps the largest
/// such request's memory), larger pieces are mapped and unmapped per request and go.
#[derive(Default)]
struct Held {
    /// Running requests' memory that stays after them, and the most of it held at once.
    small_running_mib: f64,
    retained_mib: f64,
    /// Running requests' memory that goes with them.
    large_running_mib: f64,
    /// Memory-time accounted up to here.
    since_us: u64,
    mib_s: f64,
}

impl Held {
    /// A request starts with `mib`; returns whether its memory is fresh (first-touched pages)
    /// rather than retained from earlier requests.
    fn start(&mut self, t_us: u64, mib: f64, retained_max: f64) -> bool {
        self.account(t_us);
        if mib > retained_max {
            self.large_running_mib += mib;
            return true;
        }
        self.small_running_mib += mib;
        let fresh = self.small_running_mib > self.retained_mib;
        self.retained_mib = self.retained_mib.max(self.small_running_mib);
        fresh
    }

    fn end(&mut self, t_us: u64, mib: f64, retained_max: f64) {
        self.account(t_us);
        if mib > retained_max {
            self.large_running_mib = (self.large_running_mib - mib).max(0.0);
        } else {
            self.small_running_mib = (self.small_running_mib - mib).max(0.0);
        }
    }

    fn account(&mut self, t_us: u64) {
        let held = self.retained_mib + self.large_running_mib;
        self.mib_s += held * t_us.saturating_sub(self.since_us) as f64 / US as f64;
        self.since_us = t_us;
    }
}

struct Node {
    /// Invocations running, sharing the node's cores.
    cpu: SharedCpu,
    regular_alive: u32,
    emergency_alive: u32,
    /// Requests on this node's Wavelet now (the proxy sends to the least busy).
    emergency_in_flight: u32,
}

/// A function's demand per second, as the proxy samples it: concurrency (running and waiting)
/// at its peak and on average, and arrivals.
#[derive(Default)]
struct Demand {
    level: u32,
    second: u64,
    peak: u32,
    /// Level × microseconds within the current second.
    area: u64,
    at_us: u64,
    arrivals: u64,
    /// Closed seconds with any demand (the others count as none, as the controller reads them).
    history: VecDeque<Observation>,
}

impl Demand {
    fn advance(&mut self, t_us: u64) {
        let second = t_us / US;
        if second > self.second {
            let end = (self.second + 1) * US;
            self.area += u64::from(self.level) * end.saturating_sub(self.at_us);
            if self.peak > 0 || self.arrivals > 0 {
                self.push(Observation {
                    second: EPOCH_S + self.second + 1,
                    peak: f64::from(self.peak),
                    avg: self.area as f64 / US as f64,
                    arrivals: self.arrivals,
                });
            }
            if self.level > 0 {
                let level = f64::from(self.level);
                for s in (self.second + 1).max(second.saturating_sub(KEEP_SECONDS))..second {
                    self.push(Observation { second: EPOCH_S + s + 1, peak: level, avg: level, arrivals: 0 });
                }
            }
            self.second = second;
            self.peak = self.level;
            self.area = 0;
            self.arrivals = 0;
            self.at_us = second * US;
        }
        self.area += u64::from(self.level) * t_us.saturating_sub(self.at_us);
        self.at_us = t_us;
    }

    fn push(&mut self, observation: Observation) {
        self.history.push_back(observation);
        while self.history.front().is_some_and(|o| o.second + KEEP_SECONDS < observation.second) {
            self.history.pop_front();
        }
    }

    fn change(&mut self, t_us: u64, up: bool) {
        self.advance(t_us);
        if up {
            self.level += 1;
        } else {
            self.level = self.level.saturating_sub(1);
        }
        self.peak = self.peak.max(self.level);
    }

    /// The stable window's observations at Unix second `now`, a second of no demand for every
    /// one without a sample (every second is reported: one proxy, never missing).
    fn window(&self, now: u64, window: u64) -> Vec<Observation> {
        let from = now.saturating_sub(window) + 1;
        let mut observations: Vec<Observation> =
            (from..=now).map(|second| Observation { second, ..Default::default() }).collect();
        for o in self.history.iter().rev().take_while(|o| o.second >= from) {
            if o.second <= now {
                observations[(o.second - from) as usize] = *o;
            }
        }
        observations
    }

    fn any_since(&self, second: u64) -> bool {
        self.level > 0 || self.history.back().is_some_and(|o| o.second > second)
    }
}

struct Function {
    spec: Arc<FunctionSpec>,
    /// RIs alive (starting, ready or leaving), by index into `Sim::regular`.
    regular: Vec<u32>,
    emergency: Vec<u32>,
    /// Waiting requests in arrival order; some may have timed out (`Request::waiting` false).
    queue: VecDeque<u32>,
    waiting: u32,
    emergency_in_flight: u32,
    decider: Decider,
    /// RIs asked for.
    asked: u32,
    demand: Demand,
    /// Has something for the autoscaler to decide.
    awake: bool,
    /// Paces its pokes (`sync`), as the proxy does.
    poke_pacer: PokePacer,
}

struct Sim<'a> {
    config: &'a SimConfig,
    invocations: &'a [Invocation],
    functions: Vec<Function>,
    requests: Vec<Request>,
    regular: Vec<Regular>,
    emergency: Vec<Emergency>,
    nodes: Vec<Node>,
    events: EventQueue,
    rng: fastrand::Rng,
    records: Vec<Option<Record>>,
    outstanding: usize,
    proxy_waiting: u32,
    now_us: u64,
    out: SimOutcome,
    regular_alive: u32,
    emergency_alive: u32,
    minute: Minute,
    /// Reused for the invocations a node tick ends.
    done: Vec<u32>,
}

impl<'a> Sim<'a> {
    fn new(config: &'a SimConfig, specs: &Specs, invocations: &'a [Invocation]) -> Self {
        let functions = specs
            .iter()
            .map(|spec| Function {
                spec: spec.clone(),
                regular: Vec::new(),
                emergency: Vec::new(),
                queue: VecDeque::new(),
                waiting: 0,
                emergency_in_flight: 0,
                decider: Decider::default(),
                asked: 0,
                demand: Demand::default(),
                awake: true,
                poke_pacer: PokePacer::default(),
            })
            .collect();
        let mut events = EventQueue::default();
        // One arrival event at a time: the next is scheduled when one is handled.
        if !invocations.is_empty() {
            events.push(invocations[0].at.as_micros() as u64, Event::Arrive { index: 0 });
        }
        events.push(0, Event::Decide);
        Sim {
            config,
            invocations,
            functions,
            requests: Vec::with_capacity(invocations.len()),
            regular: Vec::new(),
            emergency: Vec::new(),
            nodes: (0..config.nodes)
                .map(|_| Node {
                    cpu: SharedCpu::new(config.cores_per_node, config.cpu_contention),
                    regular_alive: 0,
                    emergency_alive: 0,
                    emergency_in_flight: 0,
                })
                .collect(),
            events,
            rng: fastrand::Rng::with_seed(config.seed),
            records: vec![None; invocations.len()],
            outstanding: invocations.len(),
            proxy_waiting: 0,
            now_us: 0,
            out: SimOutcome::default(),
            regular_alive: 0,
            emergency_alive: 0,
            minute: Minute::default(),
            done: Vec::new(),
        }
    }

    /// The autoscaler's first round before the trace: each function's `initial-scale` RIs, warm
    /// when the trace starts.
    fn deploy(&mut self) {
        self.decide();
        for ri in 0..self.regular.len() {
            self.regular[ri].ready = true;
        }
        self.out.regular_starts = 0;
    }

    fn run(&mut self) {
        while self.outstanding > 0 {
            let Some((at, event)) = self.events.pop() else { break };
            self.roll_minutes(at);
            self.now_us = at;
            self.out.events += 1;
            match event {
                Event::Arrive { index } => self.arrive(index),
                Event::NodeTick { node, generation } => self.node_tick(CpuTick { at_us: at, generation }, node),
                Event::EmergencyReady { ei } => self.emergency_ready(ei),
                Event::RegularReady { function, ri } => self.regular_ready(function, ri),
                Event::EmergencyExpire { ei, idle_round } => {
                    let e = &self.emergency[ei as usize];
                    if e.alive && e.idle_round == idle_round && e.in_flight == 0 {
                        self.end_emergency(ei);
                    }
                }
                Event::QueueTimeout { request } => self.queue_timeout(request),
                Event::TrailingPoke { function } => self.trailing_poke(function as usize),
                Event::Decide => {
                    self.decide();
                    self.events.push(at + self.config.decide_interval.as_micros() as u64, Event::Decide);
                }
            }
        }
    }

    fn finish(mut self) -> SimOutcome {
        // Instances still alive are counted up to the end, as a replay's counters are read then.
        let alive: Vec<u32> = self.functions.iter().flat_map(|f| f.regular.clone()).collect();
        for ri in alive {
            self.end_regular(ri);
        }
        let alive: Vec<u32> = self.functions.iter().flat_map(|f| f.emergency.clone()).collect();
        for ei in alive {
            self.end_emergency(ei);
        }
        self.roll_minutes(self.now_us + MINUTE_US);
        self.out.records = self.records.into_iter().flatten().collect();
        self.out
    }

    // --- arrivals and the routing choice ---

    fn arrive(&mut self, index: u32) {
        let t = self.now_us;
        if let Some(next) = self.invocations.get(index as usize + 1) {
            self.events.push(next.at.as_micros() as u64, Event::Arrive { index: index + 1 });
        }
        let invocation = self.invocations[index as usize];
        let request = self.requests.len() as u32;
        debug_assert_eq!(request, index);
        self.requests.push(Request {
            function: invocation.function as u32,
            arrival_us: t,
            runtime_us: u64::from(invocation.runtime_ms) * 1000,
            memory_mib: f64::from(invocation.memory_mb),
            placement: None,
            started_us: t,
            waiting: false,
        });
        self.minute.arrivals += 1;
        let fi = invocation.function;
        let f = &mut self.functions[fi];
        f.awake = true;
        f.demand.advance(t);
        f.demand.arrivals += 1;
        let (mode, waiting) = (f.spec.scaling_mode, f.waiting);
        if let Some(placement) = take_slot(mode, waiting, |track| self.take(fi, track)) {
            self.functions[fi].demand.change(t, true);
            self.start(request, placement);
            return;
        }
        let f = &mut self.functions[fi];
        let proxy_has_room = self.proxy_waiting < self.config.max_queued;
        match admit_to_queue(f.waiting, f.spec.queue_depth, || proxy_has_room) {
            Ok(()) => {
                f.demand.change(t, true);
                f.queue.push_back(request);
                f.waiting += 1;
                self.proxy_waiting += 1;
                self.requests[request as usize].waiting = true;
                let timeout = f.spec.queue_timeout.as_micros() as u64;
                self.events.push(t + timeout, Event::QueueTimeout { request });
                if f.spec.scaling_mode == ScalingMode::Sync {
                    self.request_waits(fi);
                }
            }
            Err(_) => self.fail(request),
        }
    }

    /// A slot of `track` for function `fi`, if the cluster has one (the proxy's reservation).
    fn take(&mut self, fi: usize, track: Track) -> Option<Placement> {
        match track {
            Track::Regular => self.take_regular(fi),
            Track::Emergency => self.take_emergency(fi),
        }
    }

    /// A ready RI below its concurrency, picked as the proxy picks (`pick_instance`).
    fn take_regular(&mut self, fi: usize) -> Option<Placement> {
        let f = &self.functions[fi];
        let cc = f.spec.container_concurrency;
        let (list, regular) = (&f.regular, &self.regular);
        let chosen = pick_instance(
            list.len(),
            &mut self.rng,
            |i| regular[list[i] as usize].in_flight,
            |i| {
                let r = &regular[list[i] as usize];
                r.ready && !r.leaving && r.in_flight < cc
            },
        )?;
        let ri = list[chosen];
        self.regular[ri as usize].in_flight += 1;
        Some(Placement::Regular { ri })
    }

    /// Under `emergency-max`, the least busy Wavelet that can take it: an idle EI of the
    /// function there, else a new one below the node's cap; a full Wavelet is skipped.
    fn take_emergency(&mut self, fi: usize) -> Option<Placement> {
        let t = self.now_us;
        let f = &self.functions[fi];
        if f.emergency_in_flight >= f.spec.emergency_max {
            return None;
        }
        let cc = f.spec.container_concurrency;
        // Wavelets tried and found full, for this request.
        let mut full: Vec<u32> = Vec::new();
        loop {
            let node = (0..self.config.nodes)
                .filter(|n| !full.contains(n))
                .min_by_key(|&n| (self.nodes[n as usize].emergency_in_flight, n))?;
            // The Wavelet's own choice among its instances of the function (those on its node),
            // kept in start order.
            let (list, emergency) = (&self.functions[fi].emergency, &self.emergency);
            let reusable = reuse_newest(list.len(), |i| {
                let e = &emergency[list[i] as usize];
                e.node == node && e.in_flight < cc
            })
            .map(|i| list[i]);
            let ei = match reusable {
                Some(ei) => ei,
                None if self.nodes[node as usize].emergency_alive < self.config.max_emergency_per_node => {
                    let ei = self.emergency.len() as u32;
                    self.emergency.push(Emergency {
                        function: fi as u32,
                        node,
                        ready: false,
                        in_flight: 0,
                        alive: true,
                        idle_round: 0,
                        since_us: t,
                        memory: Held::default(),
                        pending: Vec::new(),
                    });
                    self.functions[fi].emergency.push(ei);
                    self.nodes[node as usize].emergency_alive += 1;
                    self.emergency_alive += 1;
                    self.minute.emergency_peak = self.minute.emergency_peak.max(self.emergency_alive);
                    self.out.emergency_starts += 1;
                    self.events.push(t + self.config.ei_cold_start.as_micros() as u64, Event::EmergencyReady { ei });
                    ei
                }
                None => {
                    full.push(node);
                    continue;
                }
            };
            let e = &mut self.emergency[ei as usize];
            e.in_flight += 1;
            e.idle_round += 1;
            self.nodes[node as usize].emergency_in_flight += 1;
            self.functions[fi].emergency_in_flight += 1;
            return Some(Placement::Emergency { ei });
        }
    }

    fn start(&mut self, request: u32, placement: Placement) {
        self.requests[request as usize].placement = Some(placement);
        match placement {
            Placement::Regular { ri } => {
                let node = self.regular[ri as usize].node;
                self.run_on(request, node);
            }
            Placement::Emergency { ei } => {
                let e = &mut self.emergency[ei as usize];
                if e.ready {
                    let node = e.node;
                    self.run_on(request, node);
                } else {
                    e.pending.push(request);
                }
            }
        }
    }

    /// The request runs from now on its node's shared cores.
    fn run_on(&mut self, request: u32, node: u32) {
        let t = self.now_us;
        let (memory, placement) =
            (self.requests[request as usize].memory_mib, self.requests[request as usize].placement);
        let retained_max = self.config.retained_max_mib;
        let fresh = match placement {
            Some(Placement::Regular { ri }) => self.regular[ri as usize].memory.start(t, memory, retained_max),
            Some(Placement::Emergency { ei }) => self.emergency[ei as usize].memory.start(t, memory, retained_max),
            None => true,
        };
        // Touching the request's memory is work too: first-touched pages cost a fault each.
        let touch_ms = memory * if fresh { self.config.touch_ms_per_mib } else { self.config.retouch_ms_per_mib };
        let r = &mut self.requests[request as usize];
        r.started_us = t;
        let work_us = (r.runtime_us as f64 + touch_ms * 1000.0).round() as u64;
        let tick = self.nodes[node as usize].cpu.start(t, request, work_us);
        self.events.push(tick.at_us, Event::NodeTick { node, generation: tick.generation });
    }

    /// Invocations on `node` that have had all their work end.
    fn node_tick(&mut self, tick: CpuTick, node: u32) {
        let mut done = std::mem::take(&mut self.done);
        if let Some(next) = self.nodes[node as usize].cpu.tick(tick, &mut done) {
            self.events.push(next.at_us, Event::NodeTick { node, generation: next.generation });
        }
        for &request in &done {
            self.finish_request(request);
        }
        done.clear();
        self.done = done;
    }

    // --- completions ---

    fn finish_request(&mut self, request: u32) {
        let t = self.now_us;
        let r = &self.requests[request as usize];
        let (fi, placement) = (r.function as usize, r.placement);
        let ran_us = t - r.started_us;
        let memory = r.memory_mib;
        let Some(placement) = placement else { return };
        let record = Record {
            intended_us: r.arrival_us,
            function: fi,
            requested_ms: (r.runtime_us / 1000) as u32,
            exec_us: Some(ran_us),
            e2e_us: self.end_to_end_us(r.arrival_us),
            status: Some(200),
            track: Some(placement.track()),
        };
        self.records[request as usize] = Some(record);
        self.outstanding -= 1;
        self.functions[fi].demand.change(t, false);
        match placement {
            Placement::Regular { ri } => {
                let reg = &mut self.regular[ri as usize];
                reg.memory.end(t, memory, self.config.retained_max_mib);
                reg.in_flight -= 1;
                if reg.leaving && reg.in_flight == 0 {
                    self.end_regular(ri);
                }
            }
            Placement::Emergency { ei } => {
                let keepalive = self.functions[fi].spec.emergency_keepalive;
                let e = &mut self.emergency[ei as usize];
                e.memory.end(t, memory, self.config.retained_max_mib);
                self.nodes[e.node as usize].emergency_in_flight -= 1;
                self.functions[fi].emergency_in_flight -= 1;
                e.in_flight -= 1;
                if e.in_flight == 0 {
                    if keepalive.is_zero() {
                        self.end_emergency(ei);
                    } else {
                        e.idle_round += 1;
                        let round = e.idle_round;
                        self.events
                            .push(t + keepalive.as_micros() as u64, Event::EmergencyExpire { ei, idle_round: round });
                    }
                }
            }
        }
        self.dispatch(fi);
    }

    /// Freed capacity goes to the head of the function's queue, as the proxy hands it over.
    fn dispatch(&mut self, fi: usize) {
        while let Some(&head) = self.functions[fi].queue.front() {
            if !self.requests[head as usize].waiting {
                self.functions[fi].queue.pop_front();
                continue;
            }
            let mode = self.functions[fi].spec.scaling_mode;
            let Some(placement) = take_slot(mode, 0, |track| self.take(fi, track)) else { break };
            let f = &mut self.functions[fi];
            f.queue.pop_front();
            f.waiting -= 1;
            self.proxy_waiting -= 1;
            self.requests[head as usize].waiting = false;
            self.start(head, placement);
        }
    }

    fn queue_timeout(&mut self, request: u32) {
        if !self.requests[request as usize].waiting {
            return;
        }
        let t = self.now_us;
        let fi = self.requests[request as usize].function as usize;
        self.requests[request as usize].waiting = false;
        let f = &mut self.functions[fi];
        f.waiting -= 1;
        f.demand.change(t, false);
        self.proxy_waiting -= 1;
        self.fail(request);
    }

    /// From a request's arrival to its answer now, with the way there and back.
    fn end_to_end_us(&self, arrival_us: u64) -> u64 {
        self.now_us - arrival_us + self.config.hop_latency.as_micros() as u64
    }

    fn fail(&mut self, request: u32) {
        let r = &self.requests[request as usize];
        self.records[request as usize] = Some(Record {
            intended_us: r.arrival_us,
            function: r.function as usize,
            requested_ms: (r.runtime_us / 1000) as u32,
            exec_us: None,
            e2e_us: self.end_to_end_us(r.arrival_us),
            status: Some(OVERLOADED),
            track: None,
        });
        self.outstanding -= 1;
    }

    fn emergency_ready(&mut self, ei: u32) {
        let e = &mut self.emergency[ei as usize];
        e.ready = true;
        let (node, pending) = (e.node, std::mem::take(&mut e.pending));
        for request in pending {
            self.run_on(request, node);
        }
    }

    fn regular_ready(&mut self, function: u32, ri: u32) {
        let r = &mut self.regular[ri as usize];
        if r.leaving {
            return;
        }
        r.ready = true;
        self.dispatch(function as usize);
    }

    // --- instances coming and going ---

    fn start_regular(&mut self, fi: usize) {
        let t = self.now_us;
        let node = (0..self.config.nodes).min_by_key(|&n| (self.nodes[n as usize].regular_alive, n)).unwrap_or(0);
        let ri = self.regular.len() as u32;
        self.regular.push(Regular {
            function: fi as u32,
            node,
            ready: false,
            in_flight: 0,
            leaving: false,
            since_us: t,
            memory: Held::default(),
        });
        self.functions[fi].regular.push(ri);
        self.nodes[node as usize].regular_alive += 1;
        self.regular_alive += 1;
        self.minute.regular_peak = self.minute.regular_peak.max(self.regular_alive);
        self.out.regular_starts += 1;
        let delay = self.config.ri_start_delay.draw(&mut self.rng);
        self.events.push(t + delay.as_micros() as u64, Event::RegularReady { function: fi as u32, ri });
    }

    fn end_regular(&mut self, ri: u32) {
        let t = self.now_us;
        let r = &mut self.regular[ri as usize];
        r.leaving = true;
        r.ready = false;
        let (fi, node, since) = (r.function as usize, r.node, r.since_us);
        let list = &mut self.functions[fi].regular;
        let Some(at) = list.iter().position(|&x| x == ri) else { return };
        list.swap_remove(at);
        r.memory.account(t);
        self.nodes[node as usize].regular_alive -= 1;
        self.regular_alive -= 1;
        let lived_s = (t - since) as f64 / US as f64;
        self.out.regular_instance_s += lived_s;
        self.out.regular_memory_mib_s += self.config.instance_base_mib * lived_s + r.memory.mib_s;
    }

    fn end_emergency(&mut self, ei: u32) {
        let t = self.now_us;
        let e = &mut self.emergency[ei as usize];
        if !e.alive {
            return;
        }
        e.alive = false;
        let (fi, node, since) = (e.function as usize, e.node, e.since_us);
        e.memory.account(t);
        let held = e.memory.mib_s;
        // Kept in start order: reuse takes the newest.
        let list = &mut self.functions[fi].emergency;
        if let Some(at) = list.iter().position(|&x| x == ei) {
            list.remove(at);
        }
        self.nodes[node as usize].emergency_alive -= 1;
        self.emergency_alive -= 1;
        let lived_s = (t - since) as f64 / US as f64;
        self.out.emergency_instance_s += lived_s;
        self.out.emergency_memory_mib_s += self.config.instance_base_mib * lived_s + held;
    }

    /// Sets the RIs asked for: new ones start; surplus ones go in the controller's order
    /// (`retirees`: not yet ready, then the youngest), busy ones once their requests end.
    fn scale_to(&mut self, fi: usize, desired: u32) {
        let asked = self.functions[fi].asked;
        if desired > asked {
            for _ in asked..desired {
                self.start_regular(fi);
            }
        } else if desired < asked {
            let staying: Vec<u32> =
                self.functions[fi].regular.iter().copied().filter(|&ri| !self.regular[ri as usize].leaving).collect();
            // An RI's index is its start order.
            let stamps: Vec<(bool, u64)> =
                staying.iter().map(|&ri| (self.regular[ri as usize].ready, u64::from(ri))).collect();
            for ri in retirees(&stamps, (asked - desired) as usize).into_iter().map(|i| staying[i]) {
                if self.regular[ri as usize].in_flight == 0 {
                    self.end_regular(ri);
                } else {
                    self.regular[ri as usize].leaving = true;
                }
            }
        }
        self.functions[fi].asked = desired;
    }

    /// A `sync` function's request started waiting: a poke now or at the end of the pacing
    /// interval, as the proxy sends them.
    fn request_waits(&mut self, fi: usize) {
        match self.functions[fi].poke_pacer.request_waits(self.now_us) {
            PokeWhen::Now => self.poke(fi),
            PokeWhen::At(at) => self.events.push(at, Event::TrailingPoke { function: fi as u32 }),
            PokeWhen::Pending => {}
        }
    }

    fn trailing_poke(&mut self, fi: usize) {
        self.functions[fi].poke_pacer.trailing_sent(self.now_us);
        if self.functions[fi].waiting > 0 {
            self.poke(fi);
        }
    }

    /// Waiting requests each want an RI now (the proxy's poke).
    fn poke(&mut self, fi: usize) {
        let f = &self.functions[fi];
        let ready = f.regular.iter().filter(|&&ri| self.regular[ri as usize].ready).count() as u32;
        let want = ready + f.waiting.div_ceil(f.spec.container_concurrency.max(1));
        if let Ok(target) = poke_target(&f.spec, want, self.config.poke_ceiling)
            && target > f.asked
        {
            self.scale_to(fi, target);
        }
    }

    /// The autoscaler's round: every function with something to decide.
    fn decide(&mut self) {
        let t = self.now_us;
        let now = EPOCH_S + t / US;
        for fi in 0..self.functions.len() {
            if !self.functions[fi].awake {
                continue;
            }
            let f = &mut self.functions[fi];
            f.demand.advance(t);
            let window = f.spec.window.as_secs().max(1);
            let ready = f.regular.iter().filter(|&&ri| self.regular[ri as usize].ready).count() as u32;
            let alive = f.regular.iter().filter(|&&ri| !self.regular[ri as usize].leaving).count() as u32;
            let demand = f.demand.any_since(now.saturating_sub(window + 1));
            if ready == alive && f.decider.at_rest(&f.spec, now, demand, f.asked) {
                f.awake = false;
                continue;
            }
            let observations = f.demand.window(now, window);
            let tick = Tick { now, observations: &observations, incomplete: false, asked: f.asked, ready };
            let decision = f.decider.decide(&f.spec, tick);
            if decision.desired != f.asked {
                self.scale_to(fi, decision.desired);
            }
        }
    }

    // --- the timeline ---

    fn roll_minutes(&mut self, t: u64) {
        while t / MINUTE_US > self.out.minutes.len() as u64 {
            let mut minute = std::mem::take(&mut self.minute);
            minute.regular = self.regular_alive;
            minute.emergency = self.emergency_alive;
            self.out.minutes.push(minute);
            self.minute.regular_peak = self.regular_alive;
            self.minute.emergency_peak = self.emergency_alive;
        }
    }
}
