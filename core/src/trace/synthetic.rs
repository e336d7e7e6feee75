//! A bimodal trace without the real data set: functions with sustained Poisson load, plus
//! sporadic bursts, sized by parameters to fit the machine. Written in the Azure layout, it is
//! replayed like any other trace.

use super::{Percentiles, Trace, TraceFunction};

#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    /// Functions in all.
    pub functions: usize,
    /// Of those, how many have no sustained load, only bursts (the "sporadic" ones).
    pub sporadic: usize,
    pub minutes: usize,
    /// Sustained invocations per second of the least and the most loaded function; the others
    /// are spread geometrically in between.
    pub sustained_rps: (f64, f64),
    /// Invocations added in each burst minute.
    pub burst_size: u32,
    /// Length of a burst, in minutes.
    pub burst_minutes: usize,
    /// Minutes between the starts of a function's bursts; functions are staggered.
    pub burst_every: usize,
    /// Median runtime per invocation (the spread around it is fixed: 0.3x to 3x).
    pub runtime_ms: f64,
    /// Median memory per invocation (0.8x to 1.5x around it).
    pub memory_mb: f64,
    pub seed: u64,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            functions: 8,
            sporadic: 2,
            minutes: 10,
            sustained_rps: (0.5, 4.0),
            burst_size: 300,
            burst_minutes: 1,
            burst_every: 4,
            runtime_ms: 200.0,
            memory_mb: 16.0,
            seed: 1,
        }
    }
}

impl SyntheticOptions {
    pub fn validate(&self) -> Result<(), String> {
        if self.functions == 0 || self.minutes == 0 {
            return Err("a synthetic trace needs at least one function and one minute".into());
        }
        if self.sporadic > self.functions {
            return Err(format!("{} sporadic functions out of {}", self.sporadic, self.functions));
        }
        let (low, high) = self.sustained_rps;
        if !(low.is_finite() && high.is_finite() && low >= 0.0 && high >= low) {
            return Err(format!("sustained rate range {low}..{high} is not a range of rates"));
        }
        if self.burst_every == 0 || self.burst_minutes == 0 || self.burst_minutes > self.burst_every {
            return Err("bursts need 0 < burst-minutes <= burst-every".into());
        }
        if !(self.runtime_ms.is_finite()
            && self.runtime_ms >= 0.0
            && self.memory_mb.is_finite()
            && self.memory_mb >= 0.0)
        {
            return Err("runtime and memory must be numbers >= 0".into());
        }
        Ok(())
    }
}

/// Generates the trace (deterministic for a seed).
pub fn generate(options: &SyntheticOptions) -> Result<Trace, String> {
    options.validate()?;
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let sustained = options.functions - options.sporadic;
    let m = options.runtime_ms;
    let durations_ms = Percentiles::new(vec![
        (0.0, 0.3 * m),
        (0.01, 0.5 * m),
        (0.25, 0.8 * m),
        (0.5, m),
        (0.75, 1.25 * m),
        (0.99, 2.0 * m),
        (1.0, 3.0 * m),
    ])?;
    let mem = options.memory_mb;
    let memory_mb = Percentiles::new(vec![(0.0, 0.8 * mem), (0.5, mem), (0.99, 1.3 * mem), (1.0, 1.5 * mem)])?;
    let functions = (0..options.functions)
        .map(|i| {
            let rate = if i < sustained {
                let (low, high) = options.sustained_rps;
                let position = if sustained > 1 { i as f64 / (sustained - 1) as f64 } else { 0.0 };
                if low > 0.0 { low * (high / low).powf(position) } else { high * position }
            } else {
                0.0
            };
            let phase = i * options.burst_every / options.functions.max(1);
            let per_minute = (0..options.minutes)
                .map(|minute| {
                    let in_burst = (minute + options.burst_every - phase % options.burst_every) % options.burst_every
                        < options.burst_minutes;
                    let burst = if in_burst { options.burst_size } else { 0 };
                    poisson(rate * 60.0, &mut rng) + burst
                })
                .collect();
            TraceFunction {
                hash_owner: format!("{:016x}", options.seed),
                hash_app: format!("{:016x}{:04x}", rng.u64(..), i),
                hash_function: format!("{:04x}{:012x}", i, rng.u64(..) >> 16),
                trigger: "http".into(),
                per_minute,
                durations_ms: durations_ms.clone(),
                memory_mb: Some(memory_mb.clone()),
            }
        })
        .collect();
    Ok(Trace { functions, minutes: options.minutes })
}

/// A Poisson draw (inversion for small means, a normal approximation for large ones).
fn poisson(mean: f64, rng: &mut fastrand::Rng) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 50.0 {
        // Box-Muller.
        let (u1, u2) = (1.0 - rng.f64(), rng.f64());
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (mean + normal * mean.sqrt()).round().max(0.0) as u32;
    }
    let limit = (-mean).exp();
    let (mut count, mut product) = (0, rng.f64());
    while product > limit {
        count += 1;
        product *= rng.f64();
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::azure;

    #[test]
    fn sustained_functions_carry_load_and_sporadic_ones_only_bursts() {
        let options =
            SyntheticOptions { functions: 4, sporadic: 1, minutes: 12, burst_size: 100, ..Default::default() };
        let trace = generate(&options).unwrap();
        assert_eq!(trace.functions.len(), 4);
        let sporadic = &trace.functions[3];
        let burst_minutes: Vec<usize> = (0..12).filter(|&m| sporadic.per_minute[m] > 0).collect();
        assert_eq!(burst_minutes.len(), 3, "one burst minute every 4: {:?}", sporadic.per_minute);
        assert!(burst_minutes.iter().all(|&m| sporadic.per_minute[m] == 100));
        for f in &trace.functions[..3] {
            // At least 0.5/s: every minute has invocations, bursts or not.
            assert!(f.per_minute.iter().all(|&c| c > 0), "sustained load: {:?}", f.per_minute);
        }
        // The most loaded sustained function has about 4/s = 240/min outside bursts.
        let busiest = &trace.functions[2];
        let outside: Vec<u32> = busiest.per_minute.iter().copied().filter(|&c| c < 300).collect();
        let mean = outside.iter().sum::<u32>() as f64 / outside.len() as f64;
        assert!((200.0..280.0).contains(&mean), "{mean}");
        assert!(trace.functions.iter().all(|f| crate::FunctionId::new("default", &f.name()).is_ok()));
    }

    #[test]
    fn generation_is_reproducible_and_round_trips_through_the_azure_layout() {
        let options = SyntheticOptions::default();
        let trace = generate(&options).unwrap();
        assert_eq!(trace, generate(&options).unwrap());
        assert_ne!(trace, generate(&SyntheticOptions { seed: 2, ..options.clone() }).unwrap());
        let (invocations, durations, memory) = azure::write(&trace);
        let (again, skipped) = azure::parse(&invocations, &durations, Some(&memory)).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(again.minutes, trace.minutes);
        for (a, b) in again.functions.iter().zip(&trace.functions) {
            assert_eq!(a.per_minute, b.per_minute);
            assert_eq!(a.name(), b.name());
            assert_eq!(a.durations_ms.value_at(0.5), b.durations_ms.value_at(0.5));
        }
    }

    #[test]
    fn bad_options_are_refused() {
        for options in [
            SyntheticOptions { functions: 0, ..Default::default() },
            SyntheticOptions { sporadic: 9, ..Default::default() },
            SyntheticOptions { sustained_rps: (4.0, 1.0), ..Default::default() },
            SyntheticOptions { burst_minutes: 5, burst_every: 4, ..Default::default() },
            SyntheticOptions { runtime_ms: f64::NAN, ..Default::default() },
        ] {
            assert!(generate(&options).is_err(), "{options:?}");
        }
    }

    #[test]
    fn poisson_draws_have_the_right_mean() {
        let mut rng = fastrand::Rng::with_seed(5);
        for mean in [0.5, 3.0, 120.0] {
            let total: u64 = (0..20_000).map(|_| u64::from(poisson(mean, &mut rng))).sum();
            let observed = total as f64 / 20_000.0;
            assert!((observed - mean).abs() < mean * 0.05 + 0.05, "mean {mean}: {observed}");
        }
    }
}
