//! `wavelink simulate`: a trace through a simulated cluster, once per scaling mode, with the
//! policy code the real components run (core::sim), and the same table as `wavelink experiment`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use wavelink_core::sim::{SimConfig, SimOutcome, StartDelay, simulate};
use wavelink_core::trace::arrivals::{ArrivalPattern, Invocation, ScheduleOptions};
use wavelink_core::trace::report::{Report, summarize};
use wavelink_core::{FunctionSpec, ScalingMode};
use wavelink_loadtest::trace::parse_pattern;
use wavelink_loadtest::trace::plot::draw_instances;
use wavelink_loadtest::trace::write_plots;

use super::experiment::{
    MODE_COLUMNS, SyntheticTraceArgs, mode_annotations, mode_cells, mode_name, parse_annotation, parse_mode,
};
use super::parse_duration;

/// What `wavelink simulate --help` says after the options: the model, with where each default
/// comes from (kept next to the flags it names).
pub const MODEL_HELP: &str = "\
Run as the components run them (the same functions, in core/): the proxy's per-request choice
(an RI slot, a spill to a Wavelet, or the queue) and its pick of an RI (the better of two drawn
at random); the autoscaler (Knative's KPA as the controller runs it, with the sporadic rule), the
controller's scale-down order, and sync-mode pokes as the proxy paces them; the Wavelets' reuse
(the newest EI with room), keep-alive and per-node cap. Time is virtual: the 500-function,
8-hour Azure sample takes seconds.

What is modelled, with where each default comes from:
  - an RI is routable --ri-start-delay after the autoscaler asks for it (the experiment's
    modelled pod start; give a range such as 1s..5s for a spread);
  - an EI serves its first request --ei-cold-start after it is asked for (the process runtime's
    first byte, bench/ei.py: about 2 ms; the containerd runtime's about 12 ms with prepared
    instances and 94 ms without, bench/ei_containerd.py);
  - an instance holds --instance-base-mib while alive (the RSS of an idle wavelink-fn), plus
    the most its invocations held at once in allocations of up to 32 MiB (the allocator keeps
    those), plus larger invocations' memory while they run (from the trace's memory.csv);
    touching an invocation's memory costs 0.68 ms per fresh MiB, 0.09 per kept one (measured);
  - a node's --cores-per-node are shared equally among the invocations running on it (processor
    sharing, as the kernel shares cores among busy threads): with more running than cores each
    progresses at cores/running; --no-contention turns it off (what `--work sleep` does to a
    real replay);
  - --hop-latency on every request end to end (client, proxy, instance and back);
  - functions are deployed before the trace starts: initial-scale RIs are warm at its start.

Not modelled: network delays, failures, more than one proxy.

The output is the table of `wavelink experiment` (without CPU, which is not simulated) with
ratios to dual, per-minute instance timelines and latency/slowdown CDFs as SVG, and the
simulated events per second.";

/// `wavelink simulate`'s flags (the model is described in [`MODEL_HELP`]).
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// A trace directory in the Azure Functions layout [default: the synthetic trace of
    /// `wavelink experiment`].
    #[arg(value_name = "DIR")]
    trace: Option<PathBuf>,
    /// Scaling modes to simulate, in this order; ratios are to `dual`.
    #[arg(long, value_delimiter = ',', default_value = "dual,async,sync,fast-only", value_parser = parse_mode)]
    modes: Vec<ScalingMode>,
    /// Where results go: results.md, results.json, plots.
    #[arg(long, default_value = "target/simulate", value_name = "DIR")]
    out: PathBuf,
    /// Simulate only the first N minutes of the trace.
    #[arg(long, value_name = "N")]
    minutes: Option<usize>,
    /// Trace time runs this many times faster (runtimes are kept), as in `wavelink experiment`.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    speedup: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How a minute's invocations spread over it (exponential, uniform, equidistant).
    #[arg(long, default_value = "exponential", value_parser = parse_pattern)]
    arrivals: ArrivalPattern,
    /// An annotation for every function, e.g. wavelink.dev/window=30s (repeatable; the mode's
    /// own scaling-mode always wins).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    annotations: Vec<(String, String)>,
    /// Cap on the runtime an invocation asks for.
    #[arg(long, default_value_t = 600_000, value_name = "MS")]
    max_runtime_ms: u32,
    /// Cap on the memory an invocation asks for.
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    max_memory_mb: u32,
    /// Nodes in the cluster, each with a Wavelet.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    nodes: u32,
    /// CPU cores per node.
    #[arg(long, default_value_t = 2.0, value_name = "N")]
    cores_per_node: f64,
    /// Most Emergency Instances alive per node (the Wavelet's --max-instances).
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_instances: u32,
    /// How long a new RI takes to become routable: a duration, or a range LOW..HIGH drawn
    /// uniformly.
    #[arg(long, default_value = "1500ms", value_name = "DELAY")]
    ri_start_delay: StartDelay,
    /// How long a new EI takes to serve its first request.
    #[arg(long, default_value = "2ms", value_parser = parse_duration, value_name = "DURATION")]
    ei_cold_start: Duration,
    /// Memory an idle instance holds.
    #[arg(long, default_value_t = 3.5, value_name = "MIB")]
    instance_base_mib: f64,
    /// No CPU contention: each invocation takes its runtime whatever else runs.
    #[arg(long)]
    no_contention: bool,
    /// What the way from the client to the instance and back adds to each request (bench/proxy.sh:
    /// about 0.5 ms through the proxy on loopback under load).
    #[arg(long, default_value = "500us", value_parser = parse_duration, value_name = "DURATION")]
    hop_latency: Duration,
    /// How often the autoscaler decides (the controller's decide-interval).
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    decide_interval: Duration,
    #[command(flatten)]
    synthetic: SyntheticTraceArgs,
}

/// What one mode's simulation gave.
#[derive(Debug, Clone, Serialize)]
pub struct SimulatedMode {
    pub mode: &'static str,
    pub report: Report,
    pub regular_starts: u64,
    pub emergency_starts: u64,
    pub regular_memory_gib_s: f64,
    pub emergency_memory_gib_s: f64,
    /// RIs' and EIs' lifetimes, summed.
    pub regular_instance_s: f64,
    pub emergency_instance_s: f64,
    pub events: u64,
    pub wall_seconds: f64,
}

impl SimulatedMode {
    pub fn memory_gib_s(&self) -> f64 {
        self.regular_memory_gib_s + self.emergency_memory_gib_s
    }

    fn of(mode: ScalingMode, outcome: &SimOutcome, functions: usize, wall: Duration) -> SimulatedMode {
        SimulatedMode {
            mode: mode_name(mode),
            report: summarize(&outcome.records, functions),
            regular_starts: outcome.regular_starts,
            emergency_starts: outcome.emergency_starts,
            regular_memory_gib_s: outcome.regular_memory_mib_s / 1024.0,
            emergency_memory_gib_s: outcome.emergency_memory_mib_s / 1024.0,
            regular_instance_s: outcome.regular_instance_s,
            emergency_instance_s: outcome.emergency_instance_s,
            events: outcome.events,
            wall_seconds: wall.as_secs_f64(),
        }
    }
}

pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if !(args.cores_per_node.is_finite() && args.cores_per_node > 0.0) {
        bail!("--cores-per-node must be more than 0");
    }
    let options = ScheduleOptions {
        pattern: args.arrivals,
        seed: args.seed,
        minutes: args.minutes,
        speedup: args.speedup,
        max_runtime_ms: args.max_runtime_ms,
        max_memory_mb: args.max_memory_mb,
    };
    let (trace, invocations) =
        args.synthetic.per_mode_schedule(&args.modes, args.trace.as_deref(), &options, "simulate")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let config = SimConfig {
        nodes: args.nodes,
        cores_per_node: args.cores_per_node,
        max_emergency_per_node: args.max_instances,
        ri_start_delay: args.ri_start_delay,
        ei_cold_start: args.ei_cold_start,
        instance_base_mib: args.instance_base_mib,
        cpu_contention: !args.no_contention,
        decide_interval: args.decide_interval,
        hop_latency: args.hop_latency,
        seed: args.seed,
        ..SimConfig::default()
    };
    let length = invocations.last().map_or(Duration::ZERO, |i| i.at);
    println!(
        "simulate: {} invocations of {} functions over {:.0} min on {} nodes x {} cores, modes {}",
        invocations.len(),
        trace.functions.len(),
        length.as_secs_f64() / 60.0,
        args.nodes,
        args.cores_per_node,
        args.modes.iter().map(|m| mode_name(*m)).collect::<Vec<_>>().join(", ")
    );
    let mut results = Vec::new();
    let mut outcomes = Vec::new();
    for &mode in &args.modes {
        let (result, outcome) = simulate_mode(&config, mode, &args.annotations, trace.functions.len(), &invocations)?;
        println!(
            "simulate: {} done in {:.1} s ({:.1} M events/s): geomean p99 slowdown {:.2}x",
            result.mode,
            result.wall_seconds,
            result.events as f64 / result.wall_seconds.max(1e-9) / 1e6,
            result.report.geomean_p99_slowdown
        );
        results.push(result);
        outcomes.push(outcome);
    }
    let table = simulated_table(&results, &config);
    print!("\n{table}");
    std::fs::write(args.out.join("results.md"), &table).context("writing results.md")?;
    let json = serde_json::to_vec_pretty(&results).context("encoding results")?;
    std::fs::write(args.out.join("results.json"), json).context("writing results.json")?;
    write_sim_plots(&args.out.join("plots"), &results, &outcomes)?;
    println!("simulate: results and plots in {}", args.out.display());
    Ok(())
}

/// One mode through the simulator: the functions get the experiment's annotations for it.
pub fn simulate_mode(
    config: &SimConfig,
    mode: ScalingMode,
    annotations: &[(String, String)],
    functions: usize,
    invocations: &[Invocation],
) -> anyhow::Result<(SimulatedMode, SimOutcome)> {
    let annotations = mode_annotations(mode, annotations);
    let spec = FunctionSpec::from_annotations(annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| anyhow::anyhow!("--annotation: {e}"))?;
    // One spec shared by every function, as the real components share equal specs.
    let spec = Arc::new(spec);
    let specs: Vec<Arc<FunctionSpec>> = (0..functions).map(|_| spec.clone()).collect();
    let started = Instant::now();
    let outcome = simulate(config, &specs, invocations).map_err(anyhow::Error::msg)?;
    let result = SimulatedMode::of(mode, &outcome, functions, started.elapsed());
    Ok((result, outcome))
}

/// The table of `wavelink experiment`, without CPU, with ratios to dual.
pub fn simulated_table(results: &[SimulatedMode], config: &SimConfig) -> String {
    let dual = results.iter().find(|r| r.mode == "dual").map(|d| (&d.report, d.memory_gib_s()));
    let mut out = String::new();
    let delay = match config.ri_start_delay {
        StartDelay::Fixed(d) => format!("{} ms", d.as_millis()),
        StartDelay::Uniform(lo, hi) => format!("{}-{} ms", lo.as_millis(), hi.as_millis()),
    };
    let _ = writeln!(
        out,
        "Simulated: {} nodes x {} cores, {} EIs per node, RI start delay {delay}, EI cold start {} ms, {} MiB per idle instance, contention {}\n",
        config.nodes,
        config.cores_per_node,
        config.max_emergency_per_node,
        config.ei_cold_start.as_millis(),
        config.instance_base_mib,
        if config.cpu_contention { "on" } else { "off" }
    );
    let _ = writeln!(out, "| mode | {MODE_COLUMNS} | events/s |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let starts = (r.regular_starts as f64, r.emergency_starts as f64);
        let cells = mode_cells(&r.report, starts, r.memory_gib_s(), dual);
        let events_per_second = r.events as f64 / r.wall_seconds.max(1e-9) / 1e6;
        let _ = writeln!(out, "| {} | {cells} | {events_per_second:.2}M |", r.mode);
    }
    out
}

fn write_sim_plots(dir: &std::path::Path, results: &[SimulatedMode], outcomes: &[SimOutcome]) -> anyhow::Result<()> {
    let labelled: Vec<(&str, &[wavelink_core::trace::report::Record])> =
        results.iter().zip(outcomes).map(|(r, o)| (r.mode, o.records.as_slice())).collect();
    write_plots(dir, &labelled)?;
    for (result, outcome) in results.iter().zip(outcomes) {
        let minutes: Vec<(u32, u32)> = outcome.minutes.iter().map(|m| (m.regular, m.emergency)).collect();
        let title = format!("Instances alive per minute ({})", result.mode);
        draw_instances(&dir.join(format!("instances_{}.svg", result.mode)), &title, &minutes)
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
