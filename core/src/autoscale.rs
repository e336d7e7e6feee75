//! The Regular Instance autoscaler's decision, Knative's KPA as a plain state machine.
//!
//! Every tick it gets the last seconds of concurrency (Regular + Emergency + queued: a burst
//! served by Emergency Instances still asks for Regular ones, so a lasting burst turns into RIs
//! and the EIs drain away), whether every proxy's data is there, and the RIs asked for and
//! ready; it returns how many RIs there should be:
//!
//! 1. no observation in the stable window: no decision, the RIs asked for stay (a silent proxy
//!    or a restarted controller never scales a function down, let alone to zero);
//! 2. observed demand over the stable window (`window`) and the panic window
//!    (`panic-window-percentage` of it), aggregated by `metric-aggregation`: `max` of the
//!    per-second peaks, or `avg` of the per-second averages;
//! 3. desired = ceil(demand / (container-concurrency × target-utilization)) per window;
//! 4. panic starts when the panic window asks for at least `panic-threshold-percentage` of the
//!    ready RIs and ends a stable window after the condition last held; while panicking the
//!    highest recommendation of the panic holds (it never falls while RIs start);
//! 5. the highest recommendation of the last `scale-down-delay` holds; then at most 1000x up
//!    and 2x down of the RIs asked for per tick;
//! 6. a proxy's data missing beyond its staleness bound makes demand a lower bound: the count
//!    may rise, never fall;
//! 7. a function first seen with nothing ready gets at least `initial-scale` for one stable
//!    window (a running function is never reset to it); then `min-scale`..`max-scale`.
//!
//! Where this differs from Knative: rate limits count the RIs asked for rather than the ready
//! ones (RIs still starting are not scaled away twice), and rule 6 (Knative extrapolates
//! from the pods it could scrape).
//!
//! In `dual` mode a sporadic function (mean inter-arrival time above `sporadic-threshold`) has
//! its load ignored: it lives on Emergency Instances and never holds an idle RI. `fast-only`
//! has no RIs at all.

use std::collections::VecDeque;
use std::time::Duration;

use crate::spec::{FunctionSpec, MetricAggregation, ScalingMode};
use crate::stats::Sample;

/// Largest factor RIs may grow by in one tick.
pub const MAX_SCALE_UP_RATE: f64 = 1000.0;
/// Largest factor RIs may shrink by in one tick.
pub const MAX_SCALE_DOWN_RATE: f64 = 2.0;

/// One second of a function's demand, summed over every proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observation {
    /// The second (Unix time) the sample ends in.
    pub second: u64,
    /// Highest concurrency of the second, Regular + Emergency + queued together.
    pub peak: f64,
    /// Time-average concurrency of the second: Regular + Emergency + queued.
    pub avg: f64,
    pub arrivals: u64,
}

impl Observation {
    pub fn from_sample(sample: &Sample) -> Self {
        Observation {
            second: sample.end_unix_ms / 1000,
            peak: f64::from(sample.total.peak),
            avg: sample.total.avg,
            arrivals: sample.arrivals,
        }
    }

    /// Adds another proxy's demand for the same second.
    pub fn merge(&mut self, other: &Observation) {
        self.peak += other.peak;
        self.avg += other.avg;
        self.arrivals += other.arrivals;
    }
}

/// What one tick knows about a function.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    /// Unix seconds.
    pub now: u64,
    /// Demand per second, any order, any age (only the windows' are used).
    pub observations: &'a [Observation],
    /// Some proxy's data for the stable window is missing beyond its staleness bound, so the
    /// observations are a lower bound of the demand.
    pub incomplete: bool,
    /// RIs asked for (a Deployment's `spec.replicas`).
    pub asked: u32,
    /// RIs ready to serve.
    pub ready: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub panic: bool,
    /// The function's load was not counted (dual mode, sporadic).
    pub sporadic: bool,
    /// The count was not lowered because some proxy's data is missing.
    pub incomplete: bool,
    /// Demand over the stable and the panic window, as aggregated.
    pub stable_demand: f64,
    pub panic_demand: f64,
    pub reason: Reason,
}

/// What decided the number, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Initial,
    NoData,
    FastOnly,
    Stable,
    Panic,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::NoData => "no_data",
            Reason::FastOnly => "fast_only",
            Reason::Stable => "stable",
            Reason::Panic => "panic",
        }
    }
}

/// Why a `sync` poke (a proxy's "one more RI now") is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PokeRefusal {
    /// Only `sync` functions scale on the request path; the others' RIs follow the autoscaler.
    #[error("the function's scaling mode is {0}; only sync functions take pokes")]
    NotSync(&'static str),
}

/// A proxy pokes for one function at most this often; each poke carries the need of that moment.
pub const POKE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// When a proxy pokes the controller for one `sync` function (the proxy and the simulator both
/// pace pokes with it): at once when a request starts waiting, unless a poke went out less than
/// [`POKE_INTERVAL`] ago; then once more at the end of that interval, carrying the need of that
/// moment, so a burst's requests are all announced within an interval rather than one poke per
/// interval for as long as requests keep arriving.
#[derive(Debug, Default, Clone)]
pub struct PokePacer {
    /// When the last poke went out, µs on the caller's clock.
    last_us: Option<u64>,
    /// A trailing poke is due at this time.
    trailing_at_us: Option<u64>,
}

/// What to do about a request that started waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PokeWhen {
    /// Poke now.
    Now,
    /// Poke at this time (µs), with the need of then: schedule it.
    At(u64),
    /// A poke is already due; it will carry this request's need too.
    Pending,
}

impl PokePacer {
    /// A request of the function started waiting at `now_us`.
    pub fn request_waits(&mut self, now_us: u64) -> PokeWhen {
        let interval = POKE_INTERVAL.as_micros() as u64;
        if let Some(due) = self.trailing_at_us {
            if now_us < due + interval {
                return PokeWhen::Pending;
            }
            // Long overdue: whoever was to send it never did (its task was dropped); a lost
            // trailing poke must not silence the function's pokes for good.
            self.trailing_at_us = None;
        }
        match self.last_us {
            Some(last) if now_us < last + interval => {
                self.trailing_at_us = Some(last + interval);
                PokeWhen::At(last + interval)
            }
            _ => {
                self.last_us = Some(now_us);
                PokeWhen::Now
            }
        }
    }

    /// The trailing poke scheduled by [`PokeWhen::At`] goes out now.
    pub fn trailing_sent(&mut self, now_us: u64) {
        self.trailing_at_us = None;
        self.last_us = Some(now_us);
    }
}

/// The RIs a poke may ask for: what it wants, at most `max-scale`, or `ceiling` when that is
/// unbounded, so a caller cannot start more RIs than the function may have.
pub fn poke_target(spec: &FunctionSpec, want: u32, ceiling: u32) -> Result<u32, PokeRefusal> {
    if spec.scaling_mode != ScalingMode::Sync {
        return Err(PokeRefusal::NotSync(spec.scaling_mode.as_str()));
    }
    Ok(want.min(spec.max_scale.unwrap_or(ceiling)))
}

/// One function's autoscaler state between ticks.
#[derive(Debug, Clone, Default)]
pub struct Decider {
    /// When the first decision was made.
    started: Option<u64>,
    /// Whether the function had nothing ready when first seen: only then `initial-scale`
    /// applies (for one stable window), so a restarted controller never resets a running one.
    initial_phase: bool,
    /// When the panic condition last held, while panicking.
    panic_since_trigger: Option<u64>,
    /// The highest recommendation of the current panic.
    max_panic: u32,
    /// Recommendations of recent ticks, for the scale-down delay.
    recent: VecDeque<(u64, u32)>,
}

impl Decider {
    /// The number of RIs there should be.
    pub fn decide(&mut self, spec: &FunctionSpec, tick: Tick<'_>) -> Decision {
        let Tick { now, observations, incomplete, asked, ready } = tick;
        let mut decision = Decision {
            desired: asked,
            panic: false,
            sporadic: false,
            incomplete,
            stable_demand: 0.0,
            panic_demand: 0.0,
            reason: Reason::Stable,
        };
        if spec.scaling_mode == ScalingMode::FastOnly {
            decision.desired = 0;
            decision.reason = Reason::FastOnly;
            return decision;
        }
        let stable_window = spec.window.as_secs().max(1);
        let panic_window = ((spec.window.as_secs_f64() * spec.panic_window_percentage / 100.0).round() as u64).max(1);
        let in_window = |window: u64| observations.iter().filter(move |o| o.second <= now && o.second + window > now);
        if self.started.is_none() {
            self.started = Some(now);
            self.initial_phase = ready == 0;
        }
        let initial = match self.started {
            Some(started) if self.initial_phase && now < started + stable_window => bound(spec, spec.initial_scale),
            _ => 0,
        };
        let floor_initial = |desired: u32, reason: &mut Reason| {
            if initial > desired {
                *reason = Reason::Initial;
            }
            bound(spec, desired.max(initial))
        };

        if in_window(stable_window).next().is_none() {
            decision.reason = Reason::NoData;
            decision.panic = self.panic_since_trigger.is_some();
            decision.desired = floor_initial(asked, &mut decision.reason);
            return decision;
        }

        let arrivals: u64 = in_window(stable_window).map(|o| o.arrivals).sum();
        if spec.scaling_mode == ScalingMode::Dual
            && let Some(threshold) = spec.sporadic_threshold
        {
            // Mean inter-arrival time over the window; no arrival at all counts as sporadic.
            let mean_gap = if arrivals == 0 { f64::INFINITY } else { stable_window as f64 / arrivals as f64 };
            decision.sporadic = mean_gap > threshold.as_secs_f64();
        }
        let demand = |window: u64| -> f64 {
            let values = in_window(window).map(|o| match spec.metric_aggregation {
                MetricAggregation::Max => o.peak,
                MetricAggregation::Avg => o.avg,
            });
            match spec.metric_aggregation {
                MetricAggregation::Max => values.fold(0.0, f64::max),
                MetricAggregation::Avg => {
                    let (sum, count) = values.fold((0.0, 0u32), |(s, c), v| (s + v, c + 1));
                    if count == 0 { 0.0 } else { sum / f64::from(count) }
                }
            }
        };
        if !decision.sporadic {
            decision.stable_demand = demand(stable_window);
            decision.panic_demand = demand(panic_window);
        }
        let per_instance = f64::from(spec.container_concurrency) * spec.target_utilization;
        let stable_raw = (decision.stable_demand / per_instance).ceil() as u32;
        let panic_raw = (decision.panic_demand / per_instance).ceil() as u32;
        let over_threshold = f64::from(panic_raw) / f64::from(ready.max(1)) >= spec.panic_threshold_percentage / 100.0;
        if over_threshold {
            self.panic_since_trigger = Some(now);
        } else if self.panic_since_trigger.is_some_and(|at| now >= at + stable_window) {
            // The surge has made its way into the stable window: panic ends.
            self.panic_since_trigger = None;
            self.max_panic = 0;
        }
        decision.panic = self.panic_since_trigger.is_some();
        let mut desired = stable_raw;
        if decision.panic {
            decision.reason = Reason::Panic;
            // Never down while panicking: the panic's highest recommendation holds.
            self.max_panic = self.max_panic.max(desired.max(panic_raw));
            desired = self.max_panic;
        }
        // The delay holds the highest recommendation of its period; the rate limits then pace
        // the way there, so a drop after the delay still takes one halving per tick.
        desired = self.hold_for_scale_down_delay(spec.scale_down_delay, now, desired);
        let most = (f64::from(asked.max(1)) * MAX_SCALE_UP_RATE).ceil() as u32;
        let fewest = (f64::from(asked) / MAX_SCALE_DOWN_RATE).floor() as u32;
        desired = desired.clamp(fewest, most);
        if incomplete {
            desired = desired.max(asked);
        }
        decision.desired = floor_initial(desired, &mut decision.reason);
        decision
    }

    /// Whether a decision now would change nothing and could be skipped: the function is past
    /// its first decision and its initial phase, not panicking, at its floor (`min-scale`,
    /// capped by `max-scale`) with nothing higher held for the scale-down delay, and has had
    /// no demand over its stable window (`demand_in_window` false). Then [`Decider::decide`]
    /// would answer `asked`. The controller skips such functions, so a round costs in
    /// proportion to the functions with something to decide, not to all configured ones.
    pub fn at_rest(&self, spec: &FunctionSpec, now: u64, demand_in_window: bool, asked: u32) -> bool {
        // fast-only decides 0, always (and keeps no state to be at rest in).
        if spec.scaling_mode == ScalingMode::FastOnly {
            return asked == 0;
        }
        let Some(started) = self.started else { return false };
        let stable_window = spec.window.as_secs().max(1);
        let floor = bound(spec, 0);
        let delay = spec.scale_down_delay.as_secs();
        !demand_in_window
            && asked == floor
            // With a threshold of 0, no demand at all still counts as a panic.
            && spec.panic_threshold_percentage > 0.0
            && self.panic_since_trigger.is_none()
            && !(self.initial_phase && now < started + stable_window)
            && self.recent.iter().all(|&(at, desired)| desired <= floor || at + delay < now)
    }

    /// A decider equivalent to any that is [`at_rest`](Self::at_rest): past its first decision
    /// and initial phase, not panicking, with no recommendation above the floor to hold. What
    /// it remembers beyond that (recommendations at or below the floor, when it started) can
    /// change no later decision, so a caller may drop a resting decider and use this when the
    /// function wakes (the controller does, for thousands of idle functions).
    pub fn rested() -> Decider {
        Decider {
            started: Some(0),
            initial_phase: false,
            panic_since_trigger: None,
            max_panic: 0,
            recent: VecDeque::new(),
        }
    }

    /// The highest recommendation of the last `delay` (Knative's scale-down delay).
    fn hold_for_scale_down_delay(&mut self, delay: Duration, now: u64, desired: u32) -> u32 {
        self.recent.push_back((now, desired));
        let delay = delay.as_secs();
        while self.recent.front().is_some_and(|(at, _)| *at + delay < now) {
            self.recent.pop_front();
        }
        if delay == 0 {
            self.recent.clear();
            return desired;
        }
        self.recent.iter().map(|(_, d)| *d).max().unwrap_or(desired)
    }
}

fn bound(spec: &FunctionSpec, desired: u32) -> u32 {
    let desired = desired.max(spec.min_scale);
    spec.max_scale.map_or(desired, |max| desired.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::keys;

    fn spec(extra: &[(&str, &str)]) -> FunctionSpec {
        let mut pairs = vec![(keys::WINDOW, "60s"), (keys::INITIAL_SCALE, "0"), (keys::SPORADIC_THRESHOLD, "0")];
        pairs.extend_from_slice(extra);
        FunctionSpec::from_annotations(pairs).unwrap()
    }

    /// A flat stretch of demand: `level` concurrency (peak and average) for `seconds` seconds
    /// ending at `end`, with plenty of arrivals.
    fn flat(end: u64, seconds: u64, level: f64) -> Vec<Observation> {
        (end + 1 - seconds..=end).map(|second| Observation { second, peak: level, avg: level, arrivals: 10 }).collect()
    }

    /// One tick with complete data and `current` RIs asked for and ready.
    fn tick(now: u64, observations: &[Observation], current: u32) -> Tick<'_> {
        Tick { now, observations, incomplete: false, asked: current, ready: current }
    }

    /// Runs ticks every 2 s; `demand(t)` is the concurrency in second t; RIs asked for become
    /// ready `ready_after` ticks later (and go at once when scaled away). Returns the desired
    /// count after each tick.
    fn simulate_with(
        spec: &FunctionSpec,
        start: u32,
        seconds: u64,
        ready_after: usize,
        demand: impl Fn(u64) -> f64,
    ) -> Vec<u32> {
        let mut decider = Decider::default();
        let history: Vec<Observation> =
            (1..=seconds).map(|s| Observation { second: s, peak: demand(s), avg: demand(s), arrivals: 10 }).collect();
        let mut asked_history = vec![start; ready_after + 1];
        let mut out = Vec::new();
        for now in (2..=seconds).step_by(2) {
            let seen: Vec<Observation> = history.iter().copied().filter(|o| o.second <= now).collect();
            let asked = *asked_history.last().unwrap();
            // Ready: what was asked for `ready_after` ticks ago, never more than asked now.
            let ready = asked_history[asked_history.len() - 1 - ready_after].min(asked);
            let desired =
                decider.decide(spec, Tick { now, observations: &seen, incomplete: false, asked, ready }).desired;
            asked_history.push(desired);
            out.push(desired);
        }
        out
    }

    fn simulate(spec: &FunctionSpec, start: u32, seconds: u64, demand: impl Fn(u64) -> f64) -> Vec<u32> {
        simulate_with(spec, start, seconds, 0, demand)
    }

    #[test]
    fn desired_is_demand_over_target_per_instance() {
        // container-concurrency 1 at 70%: 7 concurrent need 10 RIs.
        let s = spec(&[]);
        let d = Decider::default().decide(&s, tick(100, &flat(100, 60, 7.0), 10));
        assert_eq!((d.desired, d.panic, d.reason), (10, false, Reason::Stable));
        let s = spec(&[(keys::CONTAINER_CONCURRENCY, "10"), (keys::TARGET_UTILIZATION, "100")]);
        assert_eq!(Decider::default().decide(&s, tick(100, &flat(100, 60, 25.0), 3)).desired, 3);
    }

    #[test]
    fn table_of_scenarios() {
        struct Case {
            name: &'static str,
            annotations: &'static [(&'static str, &'static str)],
            start: u32,
            seconds: u64,
            demand: fn(u64) -> f64,
            check: fn(&[u32]) -> Result<(), String>,
        }
        let cases = [
            Case {
                name: "a burst panics straight to what the panic window needs",
                annotations: &[],
                start: 2,
                seconds: 100,
                demand: |t| if t > 80 { 20.0 } else { 1.0 },
                check: |out| {
                    let before = out[38]; // tick at 78 s
                    let after = out[41]; // tick at 84 s
                    if before != 2 {
                        return Err(format!("steady 1 concurrent keeps 2 RIs, got {before}"));
                    }
                    if after != 29 {
                        return Err(format!("20 concurrent at 70% need 29 RIs at once, got {after}"));
                    }
                    Ok(())
                },
            },
            Case {
                name: "a ramp is followed without overshoot",
                annotations: &[],
                start: 1,
                seconds: 120,
                demand: |t| (t / 10) as f64,
                check: |out| {
                    if out.windows(2).any(|w| w[1] < w[0]) {
                        return Err(format!("a rising ramp never scales down: {out:?}"));
                    }
                    let last = *out.last().unwrap();
                    if last != 18 {
                        return Err(format!("12 concurrent need 18 RIs, got {last}"));
                    }
                    Ok(())
                },
            },
            Case {
                name: "after the load ends RIs decay to min-scale, at most halving per tick",
                annotations: &[(keys::MIN_SCALE, "2")],
                start: 40,
                seconds: 200,
                demand: |t| if t <= 60 { 28.0 } else { 0.0 },
                check: |out| {
                    for w in out.windows(2) {
                        if w[1] < w[0] / 2 {
                            return Err(format!("halved more than 2x: {out:?}"));
                        }
                    }
                    if out[28] != 40 {
                        return Err(format!("held during the window after the load: {out:?}"));
                    }
                    if *out.last().unwrap() != 2 {
                        return Err(format!("ends at min-scale: {out:?}"));
                    }
                    Ok(())
                },
            },
            Case {
                name: "panic ends a stable window after its last trigger, then scale-down resumes",
                annotations: &[],
                start: 2,
                seconds: 240,
                demand: |t| if (81..=90).contains(&t) { 20.0 } else { 1.0 },
                check: |out| {
                    let peak = *out.iter().max().unwrap();
                    if peak != 29 {
                        return Err(format!("burst peak {peak}"));
                    }
                    // Last trigger at 90 s; panic holds until 150 s; the stable window holds the
                    // burst until 150 s too; then scale down, halving per tick.
                    if out[72] != 29 {
                        return Err(format!("still up at 146 s: {out:?}"));
                    }
                    if *out.last().unwrap() != 2 {
                        return Err(format!("back to 2: {out:?}"));
                    }
                    Ok(())
                },
            },
            Case {
                name: "max-scale caps, min-scale floors",
                annotations: &[(keys::MIN_SCALE, "3"), (keys::MAX_SCALE, "5")],
                start: 1,
                seconds: 60,
                demand: |t| if t > 30 { 100.0 } else { 0.0 },
                check: |out| {
                    if out[0] != 3 {
                        return Err(format!("floored at 3: {out:?}"));
                    }
                    if *out.last().unwrap() != 5 {
                        return Err(format!("capped at 5: {out:?}"));
                    }
                    Ok(())
                },
            },
            Case {
                name: "scale-down delay holds the highest recent recommendation",
                annotations: &[(keys::SCALE_DOWN_DELAY, "30s"), (keys::WINDOW, "6s")],
                start: 10,
                seconds: 80,
                demand: |t| if t <= 20 { 7.0 } else { 0.0 },
                check: |out| {
                    // The 6 s window forgets the load at 26 s; the delay holds 10 until about 56 s.
                    if out[24] != 10 {
                        return Err(format!("held at 50 s: {out:?}"));
                    }
                    if *out.last().unwrap() != 0 {
                        return Err(format!("released by 80 s: {out:?}"));
                    }
                    Ok(())
                },
            },
        ];
        for case in cases {
            let s = spec(case.annotations);
            let out = simulate(&s, case.start, case.seconds, case.demand);
            if let Err(e) = (case.check)(&out) {
                panic!("{}: {e}", case.name);
            }
        }
    }

    #[test]
    fn initial_scale_holds_for_a_stable_window_then_no_data_keeps_the_count() {
        let s = spec(&[(keys::INITIAL_SCALE, "3")]);
        let mut decider = Decider::default();
        let first = decider.decide(&s, tick(100, &flat(100, 5, 0.0), 0));
        assert_eq!((first.desired, first.reason), (3, Reason::Initial));
        let idle = decider.decide(&s, tick(150, &flat(150, 50, 0.0), 3));
        assert_eq!(idle.desired, 3, "no load yet, but the window has not passed");
        let after = decider.decide(&s, tick(162, &flat(162, 60, 0.0), 3));
        assert_eq!(after.desired, 1, "halving towards zero once the window has passed");
        // Old observations outside the window are no data: the count stays.
        let stale = decider.decide(&s, tick(500, &flat(100, 60, 50.0), 1));
        assert_eq!((stale.desired, stale.reason), (1, Reason::NoData));
    }

    #[test]
    fn no_data_keeps_the_ris_asked_for_even_when_none_is_ready() {
        // RIs still starting (none ready) and the proxy silent for the whole window: the
        // count asked for stays; it is not lowered to the ready ones, let alone to zero.
        let s = spec(&[(keys::INITIAL_SCALE, "1")]);
        let mut decider = Decider::default();
        let busy = decider
            .decide(&s, Tick { now: 100, observations: &flat(100, 60, 8.0), incomplete: false, asked: 12, ready: 0 });
        assert_eq!(busy.desired, 12);
        for now in [160, 170, 400] {
            let silent = decider
                .decide(&s, Tick { now, observations: &flat(100, 60, 8.0), incomplete: false, asked: 12, ready: 0 });
            assert_eq!((silent.desired, silent.reason), (12, Reason::NoData), "at {now}");
        }
        // When data comes back, scaling resumes from there.
        let back = decider
            .decide(&s, Tick { now: 500, observations: &flat(500, 60, 0.0), incomplete: false, asked: 12, ready: 12 });
        assert_eq!(back.desired, 6);
    }

    #[test]
    fn missing_data_of_a_proxy_lets_the_count_rise_but_never_fall() {
        let s = spec(&[]);
        fn partial(observations: &[Observation], asked: u32) -> Tick<'_> {
            Tick { now: 100, observations, incomplete: true, asked, ready: asked }
        }
        let d = Decider::default().decide(&s, partial(&flat(100, 60, 1.0), 12));
        assert_eq!((d.desired, d.incomplete), (12, true), "one proxy's half of the demand is not a fall");
        let d = Decider::default().decide(&s, partial(&flat(100, 60, 14.0), 12));
        assert_eq!(d.desired, 20, "what the others see still scales up");
        let complete = Decider::default().decide(&s, tick(100, &flat(100, 60, 1.0), 12));
        assert_eq!(complete.desired, 6, "with every proxy's data the same demand scales down");
    }

    #[test]
    fn a_restarted_controller_keeps_a_running_function_at_its_scale() {
        // initial-scale applies to a function that had nothing ready when first seen, never
        // to one already serving: a fresh decider (a restart) does not reset 12 to 1.
        let s = spec(&[(keys::INITIAL_SCALE, "1")]);
        let mut restarted = Decider::default();
        let d = restarted.decide(&s, tick(1000, &[], 12));
        assert_eq!((d.desired, d.reason), (12, Reason::NoData));
        let d = restarted.decide(&s, tick(1002, &flat(1002, 2, 8.0), 12));
        assert_eq!(d.desired, 12);
        // A function first seen with nothing ready does get its initial scale.
        let s = spec(&[(keys::INITIAL_SCALE, "3")]);
        assert_eq!(Decider::default().decide(&s, tick(1000, &[], 0)).desired, 3);
    }

    #[test]
    fn rate_limits_count_the_ris_asked_for() {
        // 20 asked for, none ready yet, no demand: one halving, not all the way to zero.
        let s = spec(&[]);
        let d = Decider::default()
            .decide(&s, Tick { now: 100, observations: &flat(100, 60, 0.0), incomplete: false, asked: 20, ready: 0 });
        assert_eq!(d.desired, 10);
    }

    #[test]
    fn panic_holds_its_peak_while_ris_take_ticks_to_become_ready() {
        // A burst of 20 for 10 s, then 4: RIs take 4 ticks (8 s) to become ready. Knative
        // holds the highest panic recommendation until panic ends; the count must not fall
        // from 29 while the stable window still has the burst.
        let s = spec(&[]);
        let out = simulate_with(&s, 2, 240, 4, |t| match t {
            81..=90 => 20.0,
            91..=140 => 4.0,
            _ => 1.0,
        });
        let peak_at = out.iter().position(|&d| d == 29).expect("the burst reaches 29");
        // Last trigger no later than 90 s (tick 44); panic and the stable window hold until 150 s.
        let held_until = 146 / 2 - 1;
        assert!(out[peak_at..=held_until].iter().all(|&d| d == 29), "panic fell: {out:?}");
        assert_eq!(*out.last().unwrap(), 2, "scales back down after: {out:?}");
        for w in out.windows(2) {
            assert!(w[1] >= w[0] / 2, "halved more than 2x: {out:?}");
        }
    }

    #[test]
    fn avg_aggregation_averages_where_max_takes_the_peak() {
        let mut observations = flat(100, 60, 1.0);
        observations[59].peak = 30.0; // one spiky second
        let max = spec(&[(keys::PANIC_THRESHOLD_PERCENTAGE, "1000")]);
        let avg = spec(&[(keys::METRIC_AGGREGATION, "avg"), (keys::PANIC_THRESHOLD_PERCENTAGE, "1000")]);
        assert_eq!(Decider::default().decide(&max, tick(100, &observations, 20)).desired, 43);
        assert_eq!(Decider::default().decide(&avg, tick(100, &observations, 2)).desired, 2);
    }

    #[test]
    fn a_sporadic_function_in_dual_mode_never_holds_an_ri() {
        let s = spec(&[(keys::SPORADIC_THRESHOLD, "60s")]);
        // One invocation in the last minute, running 5 s: mean gap 60 s is not above 60 s...
        let mut observations = flat(100, 60, 0.0);
        for o in &mut observations {
            o.arrivals = 0;
        }
        observations[55].arrivals = 1;
        for o in &mut observations[55..] {
            o.peak = 1.0;
            o.avg = 1.0;
        }
        let d = Decider::default().decide(&s, tick(100, &observations, 0));
        assert!(!d.sporadic, "exactly at the threshold is not above it");
        assert_eq!(d.desired, 2);
        // ...but no arrival at all, or one every two minutes, is.
        observations[55].arrivals = 0;
        let d = Decider::default().decide(&s, tick(100, &observations, 1));
        assert!(d.sporadic);
        assert_eq!(d.desired, 0, "load of a sporadic function is not counted");
        let async_mode = spec(&[(keys::SPORADIC_THRESHOLD, "60s"), (keys::SCALING_MODE, "async")]);
        assert!(!Decider::default().decide(&async_mode, tick(100, &observations, 1)).sporadic, "only dual mode");
    }

    #[test]
    fn fast_only_has_no_regular_instances() {
        let s = spec(&[(keys::SCALING_MODE, "fast-only"), (keys::MIN_SCALE, "2")]);
        let d = Decider::default().decide(&s, tick(100, &flat(100, 60, 50.0), 4));
        assert_eq!((d.desired, d.reason), (0, Reason::FastOnly));
    }

    #[test]
    fn scale_up_is_limited_to_a_thousandfold_per_tick() {
        let s = spec(&[(keys::CONTAINER_CONCURRENCY, "1"), (keys::TARGET_UTILIZATION, "100")]);
        let d = Decider::default().decide(&s, tick(100, &flat(100, 60, 5000.0), 2));
        assert_eq!(d.desired, 2000);
    }

    #[test]
    fn observations_of_several_proxies_add_up() {
        let sample = |regular: u32, emergency: u32| Sample {
            end_unix_ms: 100_500,
            regular: crate::stats::Concurrency { avg: f64::from(regular), peak: regular },
            emergency: crate::stats::Concurrency { avg: f64::from(emergency), peak: emergency },
            queued: crate::stats::Concurrency::default(),
            total: crate::stats::Concurrency { avg: f64::from(regular + emergency), peak: regular + emergency },
            arrivals: 3,
        };
        let mut a = Observation::from_sample(&sample(2, 1));
        a.merge(&Observation::from_sample(&sample(4, 0)));
        assert_eq!(a, Observation { second: 100, peak: 7.0, avg: 7.0, arrivals: 6 });
    }

    #[test]
    fn pokes_are_for_sync_functions_and_capped() {
        let sync = spec(&[(keys::SCALING_MODE, "sync")]);
        assert_eq!(poke_target(&sync, 5, 100), Ok(5));
        assert_eq!(poke_target(&sync, 5000, 100), Ok(100), "unbounded max-scale: the ceiling");
        let bounded = spec(&[(keys::SCALING_MODE, "sync"), (keys::MAX_SCALE, "3")]);
        assert_eq!(poke_target(&bounded, 60, 100), Ok(3));
        for mode in ["dual", "async", "fast-only"] {
            let other = spec(&[(keys::SCALING_MODE, mode)]);
            assert!(matches!(poke_target(&other, 1, 100), Err(PokeRefusal::NotSync(m)) if m == mode), "{mode}");
        }
    }

    #[test]
    fn a_function_at_rest_is_decided_as_it_is_leaves_rest_with_demand_and_needs_no_past() {
        // Many runs of ticks with demand switched on and off; whenever the rule says "at rest",
        // a decision would have kept the count (and new demand always ends the rest).
        let specs = [
            spec(&[]),
            spec(&[(keys::MIN_SCALE, "2"), (keys::SCALE_DOWN_DELAY, "10s")]),
            spec(&[(keys::MIN_SCALE, "1"), (keys::MAX_SCALE, "3"), (keys::INITIAL_SCALE, "2")]),
            spec(&[(keys::SCALING_MODE, "fast-only")]),
            // A fresh decider would scale this one to 2 on waking: a rested one must not.
            spec(&[(keys::INITIAL_SCALE, "2"), (keys::WINDOW, "10s")]),
        ];
        let mut rests = 0;
        let mut twin_decisions = 0;
        for (n, spec) in specs.iter().enumerate() {
            let mut decider = Decider::default();
            // Made with Decider::rested() at the last rest: must decide as the decider does.
            let mut twin: Option<Decider> = None;
            let mut asked = 0;
            let mut observations = Vec::new();
            for now in 1000..1400u64 {
                // Demand in bursts: on for 20 s every 150 s (varying by spec).
                let busy = (now + 40 * n as u64) % 150 < 20;
                // A quiet second is reported as such (the controller fills them in).
                let (peak, avg, arrivals) = if busy { (5.0, 4.0, 20) } else { (0.0, 0.0, 0) };
                observations.push(Observation { second: now, peak, avg, arrivals });
                let window = spec.window.as_secs();
                let demand = observations.iter().any(|o| o.arrivals > 0 && o.second + window > now);
                let rest = decider.at_rest(spec, now, demand, asked);
                // The same decision with a proxy's data missing (the controller rests functions
                // whatever the coverage): the quiet seconds are then gaps, not zeros.
                let seen: Vec<Observation> = observations.iter().filter(|o| o.arrivals > 0).copied().collect();
                let on_partial_data =
                    decider.clone().decide(spec, Tick { incomplete: true, ..tick(now, &seen, asked) });
                let decision = decider.decide(spec, tick(now, &observations, asked));
                if rest {
                    twin = Some(Decider::rested());
                }
                if let Some(twin) = twin.as_mut() {
                    twin_decisions += 1;
                    let twin_decision = twin.decide(spec, tick(now, &observations, asked));
                    assert_eq!(twin_decision, decision, "spec {n}, t={now}: a rested decider decides otherwise");
                }
                if rest {
                    rests += 1;
                    assert_eq!(decision.desired, asked, "spec {n}, t={now}: at rest but decided otherwise");
                    assert_eq!(on_partial_data.desired, asked, "spec {n}, t={now}: at rest, but not on partial data");
                }
                if busy && spec.scaling_mode != ScalingMode::FastOnly {
                    assert!(!rest, "spec {n}, t={now}: demand is never rest");
                }
                asked = decision.desired;
            }
        }
        assert!(rests > 500, "the rule applies in the quiet stretches ({rests})");
        assert!(twin_decisions > rests, "rested deciders also decided through bursts ({twin_decisions})");
        assert!(!Decider::default().at_rest(&spec(&[]), 1000, false, 0), "never before a first decision");
    }

    #[test]
    fn pokes_go_at_once_then_at_most_one_per_interval_with_a_trailing_one() {
        let interval = POKE_INTERVAL.as_micros() as u64;
        let mut pacer = PokePacer::default();
        assert_eq!(pacer.request_waits(1_000), PokeWhen::Now);
        // A burst within the interval: one trailing poke at its end, for all of them.
        assert_eq!(pacer.request_waits(1_010), PokeWhen::At(1_000 + interval));
        assert_eq!(pacer.request_waits(1_020), PokeWhen::Pending);
        pacer.trailing_sent(1_000 + interval);
        // The trailing poke counts as a poke: the next request within an interval of it waits.
        assert_eq!(pacer.request_waits(1_000 + interval + 5), PokeWhen::At(1_000 + 2 * interval));
        pacer.trailing_sent(1_000 + 2 * interval);
        assert_eq!(pacer.request_waits(10 * interval), PokeWhen::Now);
        // A trailing poke that never went out does not hold pokes back past another interval.
        assert_eq!(pacer.request_waits(10 * interval + 1), PokeWhen::At(11 * interval));
        assert_eq!(pacer.request_waits(12 * interval - 1), PokeWhen::Pending);
        assert_eq!(pacer.request_waits(12 * interval), PokeWhen::Now);
    }
}
