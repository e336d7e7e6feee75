//! From per-minute counts to an invocation schedule: when each invocation is sent, to which
//! function, asking for how much runtime and memory.
//!
//! Each minute gets exactly its count of arrivals. `exponential` spaces them like a Poisson
//! process (exponential gaps, scaled to the minute: given the count, that is the Poisson
//! process's own law), `uniform` with uniform gaps (more regular), `equidistant` evenly.
//! Every function draws from its own generator seeded from the seed and its position, so a
//! schedule is reproducible and one function's draws do not depend on another's.

use std::str::FromStr;
use std::time::Duration;

use super::Trace;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalPattern {
    Exponential,
    Uniform,
    Equidistant,
}

impl FromStr for ArrivalPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "exponential" => Ok(ArrivalPattern::Exponential),
            "uniform" => Ok(ArrivalPattern::Uniform),
            "equidistant" => Ok(ArrivalPattern::Equidistant),
            other => Err(format!("{other:?} is not an arrival pattern (exponential, uniform, equidistant)")),
        }
    }
}

/// What an invocation's runtime is spent on when it is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Work {
    /// Burning CPU for the runtime (`?ms=`): real work, slowed by contention as on a cluster.
    #[default]
    Cpu,
    /// Sleeping for it (`?sleep=`): concurrency, instance counts, cold starts and memory-time are
    /// real while the CPU the trace would need on a cluster is not (a real trace on a small
    /// machine).
    Sleep,
}

impl Work {
    /// The function workload's query asking for this invocation's work and memory.
    pub fn query(self, runtime_ms: u32, memory_mb: u32) -> String {
        let key = match self {
            Work::Cpu => "ms",
            Work::Sleep => "sleep",
        };
        if memory_mb > 0 { format!("/?{key}={runtime_ms}&mb={memory_mb}") } else { format!("/?{key}={runtime_ms}") }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Work::Cpu => "cpu",
            Work::Sleep => "sleep",
        }
    }
}

impl std::str::FromStr for Work {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "cpu" => Ok(Work::Cpu),
            "sleep" => Ok(Work::Sleep),
            other => Err(format!("{other:?} is not a kind of work (cpu, sleep)")),
        }
    }
}

/// One invocation of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Invocation {
    /// When to send it, from the start of the replay.
    pub at: Duration,
    /// Index into the trace's functions.
    pub function: usize,
    pub runtime_ms: u32,
    pub memory_mb: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleOptions {
    pub pattern: ArrivalPattern,
    pub seed: u64,
    /// Replay only the first minutes of the trace.
    pub minutes: Option<usize>,
    /// Replay time runs this many times faster than trace time (runtimes are not scaled): a
    /// trace minute takes `60 / speedup` seconds.
    pub speedup: f64,
    /// Caps, so a trace fits the machine it is replayed on.
    pub max_runtime_ms: u32,
    pub max_memory_mb: u32,
}

/// Arrival offsets within one minute, in seconds, sorted, exactly `count` of them.
pub fn minute_offsets(count: u32, pattern: ArrivalPattern, rng: &mut fastrand::Rng) -> Vec<f64> {
    let n = count as usize;
    match pattern {
        ArrivalPattern::Equidistant => (0..n).map(|i| 60.0 * i as f64 / n as f64).collect(),
        ArrivalPattern::Exponential | ArrivalPattern::Uniform => {
            // n + 1 gaps; the last one closes the minute, so the n arrivals fall strictly inside.
            let gaps: Vec<f64> = (0..=n)
                .map(|_| {
                    let u = 1.0 - rng.f64(); // (0, 1]
                    if pattern == ArrivalPattern::Exponential { -u.ln() } else { u }
                })
                .collect();
            let total: f64 = gaps.iter().sum();
            let mut at = 0.0;
            gaps[..n]
                .iter()
                .map(|gap| {
                    at += gap;
                    60.0 * at / total
                })
                .collect()
        }
    }
}

/// The whole replay, sorted by send time.
pub fn schedule(trace: &Trace, options: &ScheduleOptions) -> Vec<Invocation> {
    let minutes = options.minutes.unwrap_or(trace.minutes).min(trace.minutes);
    let mut invocations = Vec::new();
    for (index, function) in trace.functions.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(options.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for (minute, &count) in function.per_minute.iter().take(minutes).enumerate() {
            for offset in minute_offsets(count, options.pattern, &mut rng) {
                let runtime = function.durations_ms.sample(rng.f64()).round();
                let memory = function.memory_mb.as_ref().map_or(0.0, |m| m.sample(rng.f64()).round());
                invocations.push(Invocation {
                    at: Duration::from_secs_f64(
                        (60.0 * minute as f64 + offset) / options.speedup.max(f64::MIN_POSITIVE),
                    ),
                    function: index,
                    runtime_ms: (runtime as u32).min(options.max_runtime_ms),
                    memory_mb: (memory as u32).min(options.max_memory_mb),
                });
            }
        }
    }
    invocations.sort_by_key(|i| (i.at, i.function));
    invocations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_asks_the_workload_to_burn_or_to_sleep() {
        assert_eq!(Work::Cpu.query(20, 0), "/?ms=20");
        assert_eq!(Work::Sleep.query(20, 8), "/?sleep=20&mb=8");
        assert_eq!("sleep".parse::<Work>(), Ok(Work::Sleep));
        assert!("idle".parse::<Work>().is_err());
    }
    use crate::trace::azure;

    fn trace() -> Trace {
        let invocations = "HashOwner,HashApp,HashFunction,Trigger,1,2,3\no,a,f1,http,7,0,30\no,a,f2,http,1,100,2\n";
        let durations = "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,percentile_Average_75,percentile_Average_99,percentile_Average_100\n\
            o,a,f1,100,37,10,1000,10,20,50,100,200,900,1000\n\
            o,a,f2,100,103,10,1000,10,20,50,100,200,900,1000\n";
        azure::parse(invocations, durations, None).unwrap().0
    }

    fn options(pattern: ArrivalPattern, seed: u64) -> ScheduleOptions {
        ScheduleOptions { pattern, seed, minutes: None, speedup: 1.0, max_runtime_ms: 60_000, max_memory_mb: 1024 }
    }

    #[test]
    fn every_minute_gets_exactly_its_count_for_every_pattern() {
        let trace = trace();
        for pattern in [ArrivalPattern::Exponential, ArrivalPattern::Uniform, ArrivalPattern::Equidistant] {
            let schedule = schedule(&trace, &options(pattern, 1));
            for (index, function) in trace.functions.iter().enumerate() {
                for (minute, &count) in function.per_minute.iter().enumerate() {
                    let start = Duration::from_secs(60 * minute as u64);
                    let end = start + Duration::from_secs(60);
                    let got = schedule.iter().filter(|i| i.function == index && i.at >= start && i.at < end).count();
                    assert_eq!(got, count as usize, "{pattern:?} f{index} minute {minute}");
                }
            }
            assert!(schedule.windows(2).all(|w| w[0].at <= w[1].at), "sorted");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let trace = trace();
        let a = schedule(&trace, &options(ArrivalPattern::Exponential, 42));
        let b = schedule(&trace, &options(ArrivalPattern::Exponential, 42));
        let c = schedule(&trace, &options(ArrivalPattern::Exponential, 43));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn runtimes_come_from_the_trace_bands_and_respect_the_caps() {
        let trace = trace();
        let full = schedule(&trace, &options(ArrivalPattern::Uniform, 3));
        assert!(full.iter().all(|i| (10..=1000).contains(&i.runtime_ms)));
        let median = {
            let mut r: Vec<u32> = full.iter().map(|i| i.runtime_ms).collect();
            r.sort_unstable();
            r[r.len() / 2]
        };
        assert!((60..=160).contains(&median), "median {median} near the trace's 100 ms");
        let capped = schedule(&trace, &ScheduleOptions { max_runtime_ms: 50, ..options(ArrivalPattern::Uniform, 3) });
        assert!(capped.iter().all(|i| i.runtime_ms <= 50));
        let first_minute =
            schedule(&trace, &ScheduleOptions { minutes: Some(1), ..options(ArrivalPattern::Uniform, 3) });
        assert_eq!(first_minute.len(), 8);
        let fast = schedule(&trace, &ScheduleOptions { speedup: 10.0, ..options(ArrivalPattern::Uniform, 3) });
        assert!(fast.iter().all(|i| i.at < Duration::from_secs(18)), "3 minutes in 18 s");
        assert_eq!(fast.len(), full.len());
    }

    #[test]
    fn equidistant_spacing_is_even_and_exponential_is_not() {
        let mut rng = fastrand::Rng::with_seed(9);
        assert_eq!(minute_offsets(4, ArrivalPattern::Equidistant, &mut rng), [0.0, 15.0, 30.0, 45.0]);
        let offsets = minute_offsets(1000, ArrivalPattern::Exponential, &mut rng);
        let gaps: Vec<f64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        // Exponential gaps have a coefficient of variation of 1.
        assert!((0.8..1.2).contains(&(sd / mean)), "cv {}", sd / mean);
        assert!(offsets.iter().all(|&t| (0.0..60.0).contains(&t)));
        assert!("poisson".parse::<ArrivalPattern>().is_err());
    }
}
