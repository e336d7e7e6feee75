//! `wavelink load trace`: open-loop replay of a serverless trace against the proxy.

pub mod plot;
pub mod replay;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use wavelink_core::spec::Track;
use wavelink_core::trace::arrivals::{ArrivalPattern, ScheduleOptions, Work, schedule};
use wavelink_core::trace::report::{Record, Report, summarize};
use wavelink_core::trace::synthetic::{SyntheticOptions, generate};
use wavelink_core::trace::{Trace, azure};

use crate::cli::Target;
use crate::progress::Ticker;

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// A trace directory: invocations.csv, durations.csv and (optional) memory.csv in the Azure
    /// Functions 2019 layout.
    #[arg(value_name = "DIR", required_unless_present = "synthetic", conflicts_with = "synthetic")]
    pub dir: Option<PathBuf>,
    /// Generate a bimodal trace instead (sustained Poisson load plus bursts; see the synthetic
    /// options).
    #[arg(long)]
    pub synthetic: bool,
    #[command(flatten)]
    pub shape: SyntheticArgs,
    /// Write the trace to this directory in the Azure layout and stop (with --synthetic).
    #[arg(long, value_name = "DIR", requires = "synthetic")]
    pub write: Option<PathBuf>,
    /// The proxy to send to.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub target: String,
    /// Functions are reached at <name>.<namespace>.<domain>; names come from the trace's hashes.
    #[arg(long, default_value = "example.com")]
    pub domain: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// How the invocations of a minute are spread over it.
    #[arg(long, default_value = "exponential", value_parser = parse_pattern, value_name = "PATTERN")]
    pub arrivals: ArrivalPattern,
    /// Seed of every random draw: the same seed, the same replay.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Replay only the first minutes of the trace.
    #[arg(long, value_name = "N")]
    pub minutes: Option<usize>,
    /// Run trace time this many times faster (a minute takes 60/F seconds; runtimes are kept):
    /// for quick experiments and tests.
    #[arg(long, default_value_t = 1.0, value_name = "F", value_parser = parse_speedup)]
    pub speedup: f64,
    /// What an invocation's runtime is spent on: `cpu` (burnt, as on a cluster) or `sleep` (a
    /// real trace on a small machine: concurrency, instances, cold starts and memory-time stay
    /// real, the CPU the trace would need does not).
    #[arg(long, default_value = "cpu", value_name = "cpu|sleep")]
    pub work: Work,
    /// Cap on the runtime an invocation asks for (the trace's may not fit the machine).
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub max_runtime_ms: u32,
    /// Cap on the memory an invocation asks for.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub max_memory_mb: u32,
    /// An invocation not answered within this fails.
    #[arg(long, default_value = "120s", value_parser = crate::cli::parse_duration)]
    pub timeout: Duration,
    /// Most connections open at once.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,
    /// Threads sending.
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    /// Record every invocation to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write latency and slowdown CDFs and a timeline as SVG files to this directory.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
}

/// The synthetic trace's shape (used with --synthetic).
#[derive(Debug, Clone, Args)]
pub struct SyntheticArgs {
    /// Functions in the synthetic trace.
    #[arg(long, default_value_t = 8)]
    pub functions: usize,
    /// Of those, functions with no sustained load, only bursts.
    #[arg(long, default_value_t = 2)]
    pub sporadic: usize,
    /// Length of the synthetic trace.
    #[arg(long = "trace-minutes", default_value_t = 10, value_name = "N")]
    pub trace_minutes: usize,
    /// Sustained invocations per second of the least and the most loaded function.
    #[arg(long, default_value = "0.5..4", value_parser = parse_range, value_name = "LOW..HIGH")]
    pub sustained_rps: (f64, f64),
    /// Invocations a burst adds to each of its minutes.
    #[arg(long, default_value_t = 300)]
    pub burst_size: u32,
    /// Minutes a burst lasts.
    #[arg(long, default_value_t = 1)]
    pub burst_minutes: usize,
    /// Minutes between the starts of a function's bursts.
    #[arg(long, default_value_t = 4)]
    pub burst_every: usize,
    /// Median runtime per invocation.
    #[arg(long, default_value_t = 200.0, value_name = "MS")]
    pub runtime_ms: f64,
    /// Median memory per invocation.
    #[arg(long, default_value_t = 16.0, value_name = "MIB")]
    pub memory_mb: f64,
}

/// `--arrivals`: exponential, uniform or equidistant.
pub fn parse_pattern(text: &str) -> Result<ArrivalPattern, String> {
    text.parse()
}

fn parse_speedup(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 1.0 => Ok(f),
        _ => Err(format!("{text:?}: the speedup must be a number of at least 1")),
    }
}

/// A range of numbers written `LOW..HIGH`.
pub fn parse_range(text: &str) -> Result<(f64, f64), String> {
    let (low, high) = text.split_once("..").ok_or_else(|| format!("{text:?} is not a range like 0.5..4"))?;
    let number = |t: &str| t.trim().parse::<f64>().map_err(|_| format!("{t:?} is not a number"));
    Ok((number(low)?, number(high)?))
}

impl TraceArgs {
    fn synthetic_options(&self) -> SyntheticOptions {
        let s = &self.shape;
        SyntheticOptions {
            functions: s.functions,
            sporadic: s.sporadic,
            minutes: s.trace_minutes,
            sustained_rps: s.sustained_rps,
            burst_size: s.burst_size,
            burst_minutes: s.burst_minutes,
            burst_every: s.burst_every,
            runtime_ms: s.runtime_ms,
            memory_mb: s.memory_mb,
            seed: self.seed,
        }
    }

    /// The trace to replay: read from the directory, or generated.
    pub fn load_trace(&self) -> anyhow::Result<Trace> {
        if self.synthetic {
            return generate(&self.synthetic_options()).map_err(|e| anyhow::anyhow!("synthetic trace: {e}"));
        }
        let dir = self.dir.as_deref().context("a trace directory or --synthetic is required")?;
        read_trace(dir)
    }
}

/// Reads a trace directory in the Azure layout.
pub fn read_trace(dir: &Path) -> anyhow::Result<Trace> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let invocations = read("invocations.csv")?;
    let durations = read("durations.csv")?;
    let memory = match std::fs::read_to_string(dir.join("memory.csv")) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.join("memory.csv").display())),
    };
    let (trace, without_durations) = azure::parse(&invocations, &durations, memory.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    if without_durations > 0 {
        eprintln!("note: {without_durations} functions without durations left out");
    }
    if trace.functions.is_empty() {
        bail!("{}: no function has both invocations and durations", dir.display());
    }
    Ok(trace)
}

/// Writes a trace directory in the Azure layout.
pub fn write_trace(trace: &Trace, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (invocations, durations, memory) = azure::write(trace);
    for (name, text) in [("invocations.csv", invocations), ("durations.csv", durations), ("memory.csv", memory)] {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Runs `wavelink load trace`.
pub fn run(args: &TraceArgs) -> anyhow::Result<()> {
    let trace = args.load_trace()?;
    if let Some(dir) = &args.write {
        write_trace(&trace, dir)?;
        println!(
            "wrote a trace of {} functions over {} minutes to {}",
            trace.functions.len(),
            trace.minutes,
            dir.display()
        );
        return Ok(());
    }
    let target = Target::parse(&args.target).map_err(anyhow::Error::msg)?;
    crate::engine::preflight(target.addr).map_err(anyhow::Error::msg)?;
    let options = ScheduleOptions {
        pattern: args.arrivals,
        seed: args.seed,
        minutes: args.minutes,
        speedup: args.speedup,
        max_runtime_ms: args.max_runtime_ms,
        max_memory_mb: args.max_memory_mb,
    };
    let invocations = schedule(&trace, &options);
    let names: Vec<String> = trace.functions.iter().map(|f| f.name()).collect();
    let plan = replay::ReplayPlan {
        addr: target.addr,
        hosts: names.iter().map(|n| format!("{n}.{}.{}", args.namespace, args.domain)).collect(),
        timeout: args.timeout,
        max_connections: args.max_connections,
        threads: args.threads,
        work: args.work,
    };
    let length = invocations.last().map_or(Duration::ZERO, |i| i.at);
    eprintln!(
        "replaying {} invocations of {} functions over {} at {} ({:?} arrivals, seed {}, work: {})",
        invocations.len(),
        names.len(),
        wavelink_core::duration::HumanDuration(Duration::from_secs(length.as_secs() + 1)),
        args.target,
        args.arrivals,
        args.seed,
        args.work.as_str()
    );
    let progress = Arc::new(replay::ReplayProgress::default());
    let ticker = Ticker::start({
        let progress = progress.clone();
        let total = invocations.len();
        move || format!("{} / {total} sent, {} answered", progress.sent.load(Relaxed), progress.done.load(Relaxed))
    });
    let records = replay::replay(&plan, &invocations, &progress).map_err(anyhow::Error::msg)?;
    drop(ticker);
    let report = summarize(&records, names.len());
    print!("{}", report_text(&report, &names));
    if let Some(path) = &args.record {
        write_records(path, &records, &names)?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report).context("encoding the report")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plot {
        write_plots(dir, &[("replay", &records)])?;
    }
    Ok(())
}

/// The report as text.
pub fn report_text(report: &Report, names: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {} invocations, {} failed ({:.2}%), {:.1}% on Emergency Instances",
        report.invocations,
        report.failed,
        100.0 * report.error_share(),
        100.0 * report.emergency_share()
    );
    let _ = writeln!(
        out,
        "  Latency      p50 {:>10.2}ms  p99 {:>10.2}ms  p99.9 {:>10.2}ms",
        report.p50_latency_ms, report.p99_latency_ms, report.p999_latency_ms
    );
    let _ = writeln!(out, "  Slowdown     p50 {:>10.2}x   p99 {:>10.2}x", report.p50_slowdown, report.p99_slowdown);
    let _ = writeln!(out, "  Geometric mean of per-function p99 slowdown: {:.2}x", report.geomean_p99_slowdown);
    let _ = writeln!(
        out,
        "  {:<20} {:>11} {:>9} {:>10} {:>10}",
        "function", "invocations", "failed", "p50 slow", "p99 slow"
    );
    for f in &report.functions {
        let _ = writeln!(
            out,
            "  {:<20} {:>11} {:>9} {:>9.2}x {:>9.2}x",
            names.get(f.function).map_or("?", |n| n.as_str()),
            f.invocations,
            f.invocations - f.succeeded,
            f.p50_slowdown,
            f.p99_slowdown
        );
    }
    out
}

/// One row per invocation.
pub fn write_records(path: &Path, records: &[Record], names: &[String]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "intended_us,function,requested_ms,exec_us,e2e_us,status,track")?;
    for r in records {
        let track = match r.track {
            Some(Track::Regular) => "regular",
            Some(Track::Emergency) => "emergency",
            None => "",
        };
        writeln!(
            out,
            "{},{},{},{},{},{},{track}",
            r.intended_us,
            names.get(r.function).map_or("?", |n| n.as_str()),
            r.requested_ms,
            r.exec_us.map_or(String::new(), |v| v.to_string()),
            r.e2e_us,
            r.status.map_or(String::new(), |s| s.to_string()),
        )?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}

/// Latency and slowdown CDFs (one curve per labelled replay) and the first replay's timeline.
pub fn write_plots(dir: &Path, replays: &[(&str, &[Record])]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ok = |records: &[Record]| -> Vec<Record> { records.iter().copied().filter(Record::succeeded).collect() };
    let latency: Vec<plot::Cdf<'_>> = replays
        .iter()
        .map(|(label, records)| plot::Cdf {
            label,
            values: ok(records).iter().map(|r| r.e2e_us as f64 / 1000.0).collect(),
        })
        .collect();
    plot::draw_cdfs(&dir.join("latency_cdf.svg"), "End-to-end latency", "latency (ms, log scale)", &latency)
        .map_err(anyhow::Error::msg)?;
    let slowdown: Vec<plot::Cdf<'_>> = replays
        .iter()
        .map(|(label, records)| plot::Cdf { label, values: ok(records).iter().map(Record::slowdown).collect() })
        .collect();
    plot::draw_cdfs(
        &dir.join("slowdown_cdf.svg"),
        "Slowdown (end-to-end / requested runtime)",
        "slowdown (log scale)",
        &slowdown,
    )
    .map_err(anyhow::Error::msg)?;
    for (label, records) in replays {
        let name = if replays.len() == 1 { "timeline.svg".to_owned() } else { format!("timeline_{label}.svg") };
        plot::draw_timeline(&dir.join(name), records).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}
