//! A discrete-event simulation, in virtual time, of a cluster running a trace through WaveLink's
//! own policy code: the per-request choice of [`crate::routing`] (the proxy's), the autoscaler's
//! [`Decider`] with the sporadic rule and `sync` pokes ([`poke_target`]), and a model of the
//! Wavelets (reuse of the newest EI with room, keep-alive, a cap of instances per node), and the
//! controller's choice of RIs to retire — each through the same function the component calls.
//! What the real stack measures with processes and sockets, this computes for clusters and traces
//! too large to run (`wavelink simulate`); `wavelink experiment --simulate` checks it against the
//! real stack.
//!
//! Modelled costs (each a [`SimConfig`] field with a documented default):
//! - an RI becomes routable `ri_start_delay` after the autoscaler asks for it (a pod start);
//! - an EI serves its first request `ei_cold_start` after the Wavelet is asked for it;
//! - an instance holds `instance_base_mib` while it lives, plus the most memory its running
//!   invocations asked for at once so far in allocations up to `retained_max_mib` (glibc keeps
//!   those; larger ones are unmapped when freed), plus what larger requests hold while they run;
//!   touching an invocation's memory takes `touch_ms_per_mib` for fresh pages and
//!   `retouch_ms_per_mib` for kept ones (measured on wavelink-fn: 0.68 and 0.09 ms per MiB);
//! - CPU contention: a node's cores are shared equally among the invocations running on it
//!   (processor sharing, as the kernel's fair scheduler shares them among busy threads; see
//!   `cpu.rs`): with more running than cores, each progresses at cores/running of real time;
//! - `hop_latency` on every request, end to end (client → proxy → instance and back).
//!
//! Scope: one proxy (its queue bounds are the proxy's), one Wavelet per node, RIs placed on the
//! node with the fewest instances. No network delay and no failure is modelled.

mod cpu;
mod queue;
mod state;

use std::sync::Arc;
use std::time::Duration;

use crate::spec::{FunctionSpec, Track};
use crate::trace::arrivals::Invocation;
use crate::trace::report::Record;

pub use state::simulate;

/// How long a new Regular Instance takes to become routable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StartDelay {
    Fixed(Duration),
    /// Uniform between the two.
    Uniform(Duration, Duration),
}

impl StartDelay {
    fn draw(self, rng: &mut fastrand::Rng) -> Duration {
        match self {
            StartDelay::Fixed(d) => d,
            StartDelay::Uniform(lo, hi) if hi > lo => lo + (hi - lo).mul_f64(rng.f64()),
            StartDelay::Uniform(lo, _) => lo,
        }
    }
}

impl std::str::FromStr for StartDelay {
    type Err = String;

    /// `1500ms`, or a range `1s..3s`.
    fn from_str(text: &str) -> Result<Self, String> {
        let parse = |t: &str| crate::duration::parse_duration(t.trim());
        match text.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if hi < lo {
                    return Err(format!("{text:?}: the range's end is before its start"));
                }
                Ok(StartDelay::Uniform(lo, hi))
            }
            None => Ok(StartDelay::Fixed(parse(text)?)),
        }
    }
}

/// The cluster and the costs the simulation models.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes, each with a Wavelet.
    pub nodes: u32,
    /// CPU cores per node (for contention).
    pub cores_per_node: f64,
    /// Most EIs alive per node (the Wavelet's `max-instances`).
    pub max_emergency_per_node: u32,
    pub ri_start_delay: StartDelay,
    pub ei_cold_start: Duration,
    /// Memory an idle instance holds.
    pub instance_base_mib: f64,
    /// Requests' memory up to this stays with an instance after them (the allocator keeps it);
    /// larger allocations go with the request.
    pub retained_max_mib: f64,
    /// Time to touch a MiB of fresh memory (page faults), and of memory an instance kept.
    pub touch_ms_per_mib: f64,
    pub retouch_ms_per_mib: f64,
    /// Slow invocations down when a node runs more than it has cores.
    pub cpu_contention: bool,
    /// How often the autoscaler decides (the controller's `decide-interval`).
    pub decide_interval: Duration,
    /// Most RIs a `sync` poke may ask for when `max-scale` is unbounded.
    pub poke_ceiling: u32,
    /// Most requests waiting at the proxy, every function together (`proxy.max-queued`).
    pub max_queued: u32,
    /// What the way to the instance and back adds to each request end to end (the client to the
    /// proxy to the instance, on a cluster's network): the simulation charges it, never queues
    /// on it.
    pub hop_latency: Duration,
    /// Functions were deployed before the trace starts (as the experiment's stack is ready before
    /// its replay): their `initial-scale` RIs are routable at 0 and not counted as cold starts.
    pub deployed_before: bool,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1,
            cores_per_node: 2.0,
            max_emergency_per_node: 256,
            ri_start_delay: StartDelay::Fixed(Duration::from_millis(1500)),
            ei_cold_start: Duration::from_millis(5),
            instance_base_mib: 3.5,
            retained_max_mib: 32.0,
            touch_ms_per_mib: 0.68,
            retouch_ms_per_mib: 0.09,
            cpu_contention: true,
            decide_interval: Duration::from_secs(2),
            poke_ceiling: 100,
            max_queued: 10_000,
            deployed_before: true,
            hop_latency: Duration::from_micros(500),
            seed: 1,
        }
    }
}

/// One minute of the simulated cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Minute {
    /// Instances alive at the minute's end.
    pub regular: u32,
    pub emergency: u32,
    /// Most of each alive at once during the minute.
    pub regular_peak: u32,
    pub emergency_peak: u32,
    pub arrivals: u64,
}

/// What a simulation produced.
#[derive(Debug, Clone, Default)]
pub struct SimOutcome {
    /// One per invocation, in schedule order, as a real replay records them.
    pub records: Vec<Record>,
    pub regular_starts: u64,
    pub emergency_starts: u64,
    pub regular_memory_mib_s: f64,
    pub emergency_memory_mib_s: f64,
    /// Lifetime of every RI and EI, summed (memory-time is this times the mean footprint).
    pub regular_instance_s: f64,
    pub emergency_instance_s: f64,
    pub minutes: Vec<Minute>,
    /// Events processed (for events per second).
    pub events: u64,
}

impl SimOutcome {
    pub fn memory_gib_s(&self) -> f64 {
        (self.regular_memory_mib_s + self.emergency_memory_mib_s) / 1024.0
    }
}

/// The functions of a simulation: each one's spec, by the index invocations use.
pub type Specs = [Arc<FunctionSpec>];

/// A placement of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Regular { ri: u32 },
    Emergency { ei: u32 },
}

impl Placement {
    fn track(self) -> Track {
        match self {
            Placement::Regular { .. } => Track::Regular,
            Placement::Emergency { .. } => Track::Emergency,
        }
    }
}

/// Checks a schedule against the functions it names.
pub fn check_schedule(specs: &Specs, invocations: &[Invocation]) -> Result<(), String> {
    if let Some(bad) = invocations.iter().find(|i| i.function >= specs.len()) {
        return Err(format!("an invocation names function {} of {}", bad.function, specs.len()));
    }
    if invocations.windows(2).any(|w| w[1].at < w[0].at) {
        return Err("the schedule is not sorted by time".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
