//! A node's CPU as processor sharing: with `n` invocations running on `c` cores, each progresses
//! at `min(1, c / n)` of real time, as the kernel's fair scheduler shares cores among busy
//! threads. An invocation's requested runtime is CPU work; it ends when it has received that much.
//!
//! Every running invocation progresses at the same rate, so one clock of "work received by each"
//! serves them all: an invocation ends when that clock passes its start reading plus its work.
//! A change in the number running changes the rate from then on, so the next completion is
//! computed again and earlier predictions are dropped by a generation number.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub struct SharedCpu {
    cores: f64,
    /// Off: every invocation runs at full speed however many run (sleeping work).
    contention: bool,
    /// Work each running invocation has received, in nanoseconds, as of `at_us`.
    clock_ns: f64,
    at_us: u64,
    /// Running invocations by the clock reading at which they end.
    jobs: BinaryHeap<Reverse<(u64, u32)>>,
    generation: u32,
}

/// When to look at the node next, unless the generation has moved on by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTick {
    pub at_us: u64,
    pub generation: u32,
}

impl SharedCpu {
    pub fn new(cores: f64, contention: bool) -> Self {
        SharedCpu { cores, contention, clock_ns: 0.0, at_us: 0, jobs: BinaryHeap::new(), generation: 0 }
    }

    /// Real nanoseconds of progress per real microsecond, for each running invocation.
    fn rate(&self) -> f64 {
        let n = self.jobs.len() as f64;
        if self.contention && n > self.cores { 1000.0 * self.cores / n } else { 1000.0 }
    }

    fn advance(&mut self, now_us: u64) {
        self.clock_ns += now_us.saturating_sub(self.at_us) as f64 * self.rate();
        self.at_us = now_us;
    }

    /// `job` starts `work_us` of CPU work now; returns when the next invocation on the node ends.
    pub fn start(&mut self, now_us: u64, job: u32, work_us: u64) -> CpuTick {
        self.advance(now_us);
        let ends = (self.clock_ns + work_us as f64 * 1000.0).ceil() as u64;
        self.jobs.push(Reverse((ends, job)));
        self.next()
    }

    /// At a tick: the invocations that have received all their work leave (into `done`, in the
    /// order they end), and the next tick is returned. A stale tick (the generation moved on)
    /// does nothing and returns `None`.
    pub fn tick(&mut self, tick: CpuTick, done: &mut Vec<u32>) -> Option<CpuTick> {
        if tick.generation != self.generation {
            return None;
        }
        self.advance(tick.at_us);
        // The tick was rounded up to a whole microsecond, so the first job has ended; a second
        // within rounding of the clock ends with it.
        while let Some(&Reverse((ends, job))) = self.jobs.peek() {
            if ends as f64 > self.clock_ns + 1.0 {
                break;
            }
            self.jobs.pop();
            done.push(job);
        }
        (!self.jobs.is_empty()).then(|| self.next())
    }

    /// The first end among those running at the current rate; earlier predictions go stale.
    fn next(&mut self) -> CpuTick {
        self.generation = self.generation.wrapping_add(1);
        let first = self.jobs.peek().map_or(0, |Reverse((ends, _))| *ends);
        let remaining_ns = (first as f64 - self.clock_ns).max(0.0);
        let at_us = self.at_us + (remaining_ns / self.rate()).ceil() as u64;
        CpuTick { at_us, generation: self.generation }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs ticks in time order until the node is idle; returns (job, end in µs).
    fn drain(cpu: &mut SharedCpu, mut tick: CpuTick) -> Vec<(u32, u64)> {
        let mut ends = Vec::new();
        for _ in 0..100 {
            let mut done = Vec::new();
            let next = cpu.tick(tick, &mut done);
            ends.extend(done.into_iter().map(|job| (job, tick.at_us)));
            match next {
                Some(next) => tick = next,
                None => break,
            }
        }
        ends
    }

    #[test]
    fn one_core_shared_by_two_halves_each_ones_speed() {
        let mut cpu = SharedCpu::new(1.0, true);
        cpu.start(0, 1, 100);
        let tick = cpu.start(0, 2, 300);
        // Both at half speed until job 1 has had 100 µs of work at 200 µs; job 2 then has 200 µs
        // of work left at full speed: it ends at 400.
        assert_eq!(drain(&mut cpu, tick), [(1, 200), (2, 400)]);
    }

    #[test]
    fn a_newcomer_slows_those_already_running_from_when_it_comes() {
        let mut cpu = SharedCpu::new(1.0, true);
        let stale = cpu.start(0, 1, 100);
        assert_eq!(stale.at_us, 100);
        // At 50 job 1 has 50 left; from then both run at half speed: job 1 ends at 150, and job
        // 2 (100 of work, 50 received by then) at 200.
        let tick = cpu.start(50, 2, 100);
        assert_eq!(cpu.tick(stale, &mut Vec::new()), None, "the first prediction is stale");
        assert_eq!(drain(&mut cpu, tick), [(1, 150), (2, 200)]);
    }

    #[test]
    fn with_as_many_cores_as_invocations_nobody_slows_down() {
        let mut cpu = SharedCpu::new(2.0, true);
        cpu.start(0, 1, 100);
        let tick = cpu.start(10, 2, 100);
        assert_eq!(drain(&mut cpu, tick), [(1, 100), (2, 110)]);
        assert!(cpu.jobs.is_empty());
    }

    #[test]
    fn without_contention_every_invocation_runs_at_full_speed() {
        let mut cpu = SharedCpu::new(1.0, false);
        cpu.start(0, 1, 100);
        cpu.start(0, 2, 100);
        let tick = cpu.start(0, 3, 50);
        assert_eq!(drain(&mut cpu, tick), [(3, 50), (1, 100), (2, 100)]);
    }
}
