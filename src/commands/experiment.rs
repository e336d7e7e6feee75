//! `wavelink experiment`: the same trace through the embedded stack (`wavelink up`) once per
//! scaling mode, side by side: slowdown, latency, EI share, cold starts, instance memory-time and
//! platform CPU, with ratios to `dual`.
//!
//! Each mode gets a fresh stack on free loopback ports and the same seeded schedule, replayed
//! once the controller reports every function's initial RIs ready (traffic comes to deployed
//! functions, as the simulator assumes). Counters are read from the components' `/metrics` when
//! the replay starts and ends; CPU from `/proc` (each component's own time) and from
//! `getrusage(RUSAGE_CHILDREN)` once the stack has exited (the whole tree, instances included).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Serialize;
use wavelink_core::ScalingMode;
use wavelink_core::trace::Trace;
use wavelink_core::trace::arrivals::{ArrivalPattern, Invocation, ScheduleOptions, Work, schedule};
use wavelink_core::trace::report::{Record, Report, summarize};
use wavelink_core::trace::synthetic::{SyntheticOptions, generate};
use wavelink_loadtest::trace::replay::{ReplayPlan, ReplayProgress, replay};
use wavelink_loadtest::trace::{parse_pattern, parse_range, read_trace, write_plots, write_records};
use wavelink_server::client;
use wavelink_wavelet::procfs;
use wavelink_wavelet::spawn::wait;

use super::image::{ImageSpec, write_image};
use super::{RuntimeKind, parse_duration};
use wavelink_wavelet::containerd::private::PrivateContainerd;

const NAMESPACE: &str = "default";
const DOMAIN: &str = "example.com";
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(150);

#[derive(Debug, clap::Args)]
pub struct ExperimentArgs {
    /// A trace directory in the Azure Functions layout [default: a synthetic bimodal trace sized
    /// for about 10 minutes on 2 cores, by the options below].
    #[arg(value_name = "DIR")]
    trace: Option<PathBuf>,
    /// Scaling modes to run, in this order; ratios are to `dual`.
    #[arg(long, value_delimiter = ',', default_value = "dual,async,sync,fast-only", value_parser = parse_mode)]
    modes: Vec<ScalingMode>,
    /// Where results go: results.md, results.json, per-mode records and logs, plots.
    #[arg(long, default_value = "target/experiment", value_name = "DIR")]
    out: PathBuf,
    /// Replay only the first N minutes of the trace.
    #[arg(long, value_name = "N")]
    minutes: Option<usize>,
    /// Trace time runs this many times faster (runtimes are kept).
    #[arg(long, default_value_t = 2.0, value_name = "F")]
    speedup: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How a minute's invocations spread over it (exponential, uniform, equidistant).
    #[arg(long, default_value = "exponential", value_parser = parse_pattern)]
    arrivals: ArrivalPattern,
    /// How long a new RI takes to become routable (the modelled cluster manager's pod start).
    #[arg(long, default_value = "1500ms", value_parser = parse_duration, value_name = "DURATION")]
    ri_start_delay: Duration,
    /// An annotation for every function, e.g. wavelink.dev/window=30s (repeatable; the mode's
    /// own scaling-mode always wins).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    annotations: Vec<(String, String)>,
    /// Most Emergency Instances alive on the node at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_instances: u32,
    /// What an invocation's runtime is spent on: `cpu` (burnt) or `sleep` (for real traces,
    /// whose CPU needs exceed this machine: concurrency, instances, cold starts and memory-time
    /// stay real).
    #[arg(long, default_value = "cpu", value_name = "cpu|sleep")]
    work: Work,
    /// Cap on the runtime an invocation asks for.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    max_runtime_ms: u32,
    #[command(flatten)]
    synthetic: SyntheticTraceArgs,
    /// Also simulate each mode (`wavelink simulate`'s model, same trace, seed and settings, this
    /// machine as one node) and print simulated next to measured: the simulator's validation.
    #[arg(long)]
    simulate: bool,
    /// How instances run: `process`, or `containerd` (every EI, and every RI of the local
    /// backend, a container of the `wavelink-fn` image, so sandbox cold starts cost what they
    /// cost; needs root).
    #[arg(long, default_value = "process", value_name = "RUNTIME")]
    runtime: RuntimeKind,
    /// containerd's socket for `--runtime containerd` [default: a private containerd started
    /// under --out for the run, and stopped after].
    #[arg(long, value_name = "PATH")]
    containerd_socket: Option<PathBuf>,
}

/// The synthetic trace used when no trace directory is given (shared with `wavelink simulate`,
/// so both run the same trace by default).
#[derive(Debug, Clone, clap::Args)]
pub struct SyntheticTraceArgs {
    /// Synthetic trace: functions in all.
    #[arg(long, default_value_t = 6)]
    pub functions: usize,
    /// Synthetic trace: of those, functions with bursts only.
    #[arg(long, default_value_t = 2)]
    pub sporadic: usize,
    /// Synthetic trace: its length.
    #[arg(long = "trace-minutes", default_value_t = 5, value_name = "N")]
    pub trace_minutes: usize,
    /// Synthetic trace: sustained invocations per second of the least and most loaded function.
    #[arg(long, default_value = "0.5..4", value_parser = parse_range, value_name = "LOW..HIGH")]
    pub sustained_rps: (f64, f64),
    /// Synthetic trace: invocations a burst adds to each of its minutes.
    #[arg(long, default_value_t = 300)]
    pub burst_size: u32,
    /// Synthetic trace: minutes between a function's bursts.
    #[arg(long, default_value_t = 3)]
    pub burst_every: usize,
    /// Synthetic trace: median runtime per invocation.
    #[arg(long, default_value_t = 20.0, value_name = "MS")]
    pub runtime_ms: f64,
    /// Synthetic trace: median memory per invocation.
    #[arg(long, default_value_t = 8.0, value_name = "MIB")]
    pub memory_mb: f64,
}

impl SyntheticTraceArgs {
    /// What `experiment` and `simulate` check and build first: at least one mode, a speedup of at
    /// least 1, then the trace (in `dir`, or this synthetic one) and its schedule, not empty
    /// (`doing`: what would be done with it, for the message).
    pub fn per_mode_schedule(
        &self,
        modes: &[ScalingMode],
        dir: Option<&std::path::Path>,
        options: &ScheduleOptions,
        doing: &str,
    ) -> anyhow::Result<(Trace, Vec<Invocation>)> {
        if modes.is_empty() {
            bail!("--modes: at least one mode");
        }
        if !(options.speedup.is_finite() && options.speedup >= 1.0) {
            bail!("--speedup must be at least 1");
        }
        let trace = self.trace(dir, options.seed)?;
        let invocations = schedule(&trace, options);
        if invocations.is_empty() {
            bail!("the trace has no invocation to {doing}");
        }
        Ok((trace, invocations))
    }

    /// The trace in `dir`, or this synthetic one.
    pub fn trace(&self, dir: Option<&std::path::Path>, seed: u64) -> anyhow::Result<Trace> {
        match dir {
            Some(dir) => read_trace(dir),
            None => generate(&SyntheticOptions {
                functions: self.functions,
                sporadic: self.sporadic,
                minutes: self.trace_minutes,
                sustained_rps: self.sustained_rps,
                burst_size: self.burst_size,
                burst_minutes: 1,
                burst_every: self.burst_every,
                runtime_ms: self.runtime_ms,
                memory_mb: self.memory_mb,
                seed,
            })
            .map_err(|e| anyhow::anyhow!("synthetic trace: {e}")),
        }
    }
}

/// The containerd namespace the experiment's image and instances live in.
const CONTAINERD_NAMESPACE: &str = "wavelink-experiment";
/// The image functions run with `--runtime containerd`.
const IMAGE: &str = concat!("localhost/wavelink-fn:", env!("CARGO_PKG_VERSION"));

pub fn parse_mode(text: &str) -> Result<ScalingMode, String> {
    match text {
        "dual" => Ok(ScalingMode::Dual),
        "async" => Ok(ScalingMode::Async),
        "sync" => Ok(ScalingMode::Sync),
        "fast-only" => Ok(ScalingMode::FastOnly),
        _ => Err(format!("{text:?} is not a scaling mode (dual, async, sync, fast-only)")),
    }
}

pub fn mode_name(mode: ScalingMode) -> &'static str {
    match mode {
        ScalingMode::Dual => "dual",
        ScalingMode::Async => "async",
        ScalingMode::Sync => "sync",
        ScalingMode::FastOnly => "fast-only",
    }
}

pub fn parse_annotation(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

/// What one mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub mode: &'static str,
    /// What each runtime was spent on (`cpu` or `sleep`).
    pub work: &'static str,
    pub report: Report,
    /// RIs and EIs started during the replay.
    pub regular_starts: f64,
    pub emergency_starts: f64,
    /// RSS × lifetime of every RI and EI during the replay, GiB-s.
    pub regular_memory_gib_s: f64,
    pub emergency_memory_gib_s: f64,
    /// CPU seconds over the stack's life.
    pub cpu: CpuSeconds,
    pub replay_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuSeconds {
    pub proxy: f64,
    pub wavelet: f64,
    pub controller: f64,
    /// Every instance (RI and EI), start-up and requested work included.
    pub instances: f64,
    /// The CPU work the invocations asked for (`?ms=`), which any platform must spend.
    pub requested_work: f64,
}

impl CpuSeconds {
    /// Proxy, Wavelet, controller, and what instances spent beyond the requested work (start-up,
    /// HTTP, memory touching): what the platform costs on top of the functions' own work.
    pub fn platform(&self) -> f64 {
        self.proxy + self.wavelet + self.controller + (self.instances - self.requested_work).max(0.0)
    }
}

impl ModeResult {
    pub fn memory_gib_s(&self) -> f64 {
        self.regular_memory_gib_s + self.emergency_memory_gib_s
    }
}

pub fn run(args: ExperimentArgs) -> anyhow::Result<()> {
    let options = ScheduleOptions {
        pattern: args.arrivals,
        seed: args.seed,
        minutes: args.minutes,
        speedup: args.speedup,
        max_runtime_ms: args.max_runtime_ms,
        max_memory_mb: 512,
    };
    let (trace, invocations) =
        args.synthetic.per_mode_schedule(&args.modes, args.trace.as_deref(), &options, "replay")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let names: Vec<String> = trace.functions.iter().map(|f| f.name()).collect();
    let length = invocations.last().map_or(Duration::ZERO, |i| i.at);
    println!(
        "experiment: {} invocations of {} functions over {:.0} s per mode, modes {}, RI start delay {:?}, work {}",
        invocations.len(),
        names.len(),
        length.as_secs_f64(),
        args.modes.iter().map(|m| mode_name(*m)).collect::<Vec<_>>().join(", "),
        args.ri_start_delay,
        args.work.as_str()
    );
    // With containers: containerd (given, or a private one for this run) and the image in it.
    let (_containerd, runtime_env) = match args.runtime {
        RuntimeKind::Process => (None, Vec::new()),
        RuntimeKind::Containerd => {
            let (private, socket) = match &args.containerd_socket {
                Some(socket) => (None, socket.clone()),
                None => {
                    let private = PrivateContainerd::start(&args.out.join("containerd"))
                        .context("starting a private containerd (or pass --containerd-socket)")?;
                    let socket = private.socket.clone();
                    (Some(private), socket)
                }
            };
            import_image(&args.out, &socket)?;
            let env = vec![
                ("WAVELINK_RUNTIME".to_owned(), "containerd".to_owned()),
                ("WAVELINK_CONTAINERD_SOCKET".to_owned(), socket.display().to_string()),
                ("WAVELINK_CONTAINERD_NAMESPACE".to_owned(), CONTAINERD_NAMESPACE.to_owned()),
            ];
            println!("experiment: instances are containers of {IMAGE} (containerd at {})", socket.display());
            (private, env)
        }
    };
    let mut results = Vec::new();
    let mut all_records = Vec::new();
    for &mode in &args.modes {
        println!("experiment: running {} ...", mode_name(mode));
        let (result, records) = run_mode(&args, mode, &trace, &names, &invocations, &runtime_env)
            .with_context(|| format!("mode {}", mode_name(mode)))?;
        println!(
            "experiment: {} done: geomean p99 slowdown {:.2}x, {} of {} failed",
            result.mode, result.report.geomean_p99_slowdown, result.report.failed, result.report.invocations
        );
        results.push(result);
        all_records.push(records);
    }
    let mut table = results_table(&results, args.ri_start_delay, args.runtime, args.work);
    if args.simulate {
        table.push_str(&validation(&args, &results, trace.functions.len(), &invocations)?);
    }
    print!("\n{table}");
    std::fs::write(args.out.join("results.md"), &table).context("writing results.md")?;
    let json = serde_json::to_vec_pretty(&results).context("encoding results")?;
    std::fs::write(args.out.join("results.json"), json).context("writing results.json")?;
    let labelled: Vec<(&str, &[Record])> =
        results.iter().zip(&all_records).map(|(r, records)| (r.mode, records.as_slice())).collect();
    write_plots(&args.out.join("plots"), &labelled)?;
    println!("experiment: results, records, logs and plots in {}", args.out.display());
    Ok(())
}

/// The simulator on the same trace and settings, next to what was measured.
fn validation(
    args: &ExperimentArgs,
    measured: &[ModeResult],
    functions: usize,
    invocations: &[wavelink_core::trace::arrivals::Invocation],
) -> anyhow::Result<String> {
    let config = wavelink_core::sim::SimConfig {
        nodes: 1,
        cores_per_node: std::thread::available_parallelism().map_or(2.0, |n| n.get() as f64),
        max_emergency_per_node: args.max_instances,
        ri_start_delay: wavelink_core::sim::StartDelay::Fixed(args.ri_start_delay),
        // bench/ei.py and bench/ei_containerd.py: first byte of a new EI.
        ei_cold_start: match args.runtime {
            RuntimeKind::Process => Duration::from_millis(2),
            RuntimeKind::Containerd => Duration::from_millis(12),
        },
        cpu_contention: args.work == Work::Cpu,
        seed: args.seed,
        ..Default::default()
    };
    let error = |simulated: f64, real: f64| {
        if real == 0.0 { "-".to_owned() } else { format!("{:+.0}%", 100.0 * (simulated - real) / real) }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nSimulated (core::sim, same trace, seed and settings, this machine as one node of {} cores, contention {}) next to measured; goals: memory-time within 15%, cold starts within 20%, geomean p99 slowdown within 25%:\n",
        config.cores_per_node,
        if config.cpu_contention { "on" } else { "off" }
    );
    let _ = writeln!(
        out,
        "| mode | memory GiB-s measured | simulated | error | cold starts measured | simulated | error | geomean p99 slowdown measured | simulated | error |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for real in measured {
        let mode = parse_mode(real.mode).map_err(anyhow::Error::msg)?;
        let (sim, _) = super::simulate::simulate_mode(&config, mode, &args.annotations, functions, invocations)?;
        let real_starts = real.regular_starts + real.emergency_starts;
        let sim_starts = (sim.regular_starts + sim.emergency_starts) as f64;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {} |",
            real.mode,
            real.memory_gib_s(),
            sim.memory_gib_s(),
            error(sim.memory_gib_s(), real.memory_gib_s()),
            real_starts,
            sim_starts,
            error(sim_starts, real_starts),
            real.report.geomean_p99_slowdown,
            sim.report.geomean_p99_slowdown,
            error(sim.report.geomean_p99_slowdown, real.report.geomean_p99_slowdown),
        );
    }
    Ok(out)
}

/// A stopped stack must have removed every container it started (checked with `ctr`).
fn ensure_no_containers_left(runtime_env: &[(String, String)]) -> anyhow::Result<()> {
    let socket = runtime_env.iter().find(|(k, _)| k == "WAVELINK_CONTAINERD_SOCKET").map(|(_, v)| v.as_str());
    let listed = std::process::Command::new("ctr")
        .args(["--address", socket.unwrap_or_default(), "--namespace", CONTAINERD_NAMESPACE, "containers", "ls", "-q"])
        .output()
        .context("running ctr to check for containers left behind")?;
    let left: Vec<String> = String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect();
    if !left.is_empty() {
        bail!("the stopped stack left {} containers in containerd: {}", left.len(), left.join(", "));
    }
    Ok(())
}

/// Writes the `wavelink-fn` image and imports it into containerd at `socket` with `ctr`.
fn import_image(out: &std::path::Path, socket: &std::path::Path) -> anyhow::Result<()> {
    let program = std::env::current_exe().context("finding this executable")?.with_file_name("wavelink-fn");
    let tar = out.join("wavelink-fn-image.tar");
    let spec = ImageSpec { name: IMAGE, program: &program, args: &[], files: &[], env: &[], user: None };
    write_image(&tar, &spec)?;
    let imported = std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", CONTAINERD_NAMESPACE, "images", "import"])
        .arg(&tar)
        .output()
        .context("running ctr (containerd's client) to import the image")?;
    if !imported.status.success() {
        bail!("importing {IMAGE}: {}", String::from_utf8_lossy(&imported.stderr).trim());
    }
    Ok(())
}

/// The columns every per-mode table has (the experiment's and the simulator's).
pub const MODE_COLUMNS: &str =
    "geomean p99 slowdown | ×dual | p50 ms | p99 ms | EI share | failed | cold starts (RI+EI) | memory GiB-s | ×dual";

/// `value` over `base` as "1.23", or "-" without a base.
pub fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{:.2}", value / b),
        _ => "-".to_owned(),
    }
}

/// The cells of [`MODE_COLUMNS`] for one mode; `dual` is dual's report and memory-time.
pub fn mode_cells(report: &Report, starts: (f64, f64), memory_gib_s: f64, dual: Option<(&Report, f64)>) -> String {
    format!(
        "{:.2} | {} | {:.1} | {:.1} | {:.1}% | {} | {:.0}+{:.0} | {:.1} | {}",
        report.geomean_p99_slowdown,
        ratio(report.geomean_p99_slowdown, dual.map(|(d, _)| d.geomean_p99_slowdown)),
        report.p50_latency_ms,
        report.p99_latency_ms,
        100.0 * report.emergency_share(),
        report.failed,
        starts.0,
        starts.1,
        memory_gib_s,
        ratio(memory_gib_s, dual.map(|(_, m)| m)),
    )
}

/// The side-by-side table (Markdown), with ratios to `dual` when it ran.
pub fn results_table(results: &[ModeResult], ri_start_delay: Duration, runtime: RuntimeKind, work: Work) -> String {
    let dual_result = results.iter().find(|r| r.mode == "dual");
    let dual = dual_result.map(|d| (&d.report, d.memory_gib_s()));
    let dual_cpu = dual_result.map(|d| d.cpu.platform());
    let mut out = String::new();
    let runtime = match runtime {
        RuntimeKind::Process => "process (instances are process groups of wavelink-fn)",
        RuntimeKind::Containerd => "containerd (instances are containers of the wavelink-fn image)",
    };
    let work = match work {
        Work::Cpu => "cpu (each runtime burnt as CPU)",
        Work::Sleep => "sleep (each runtime slept: the trace's CPU is not spent)",
    };
    let _ = writeln!(
        out,
        "RI start delay (modelled pod start): {} ms; runtime: {runtime}; work: {work}\n",
        ri_start_delay.as_millis()
    );
    let _ = writeln!(out, "| mode | {MODE_COLUMNS} | platform CPU s | ×dual |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let cells = mode_cells(&r.report, (r.regular_starts, r.emergency_starts), r.memory_gib_s(), dual);
        let cpu = r.cpu.platform();
        let _ = writeln!(out, "| {} | {cells} | {cpu:.1} | {} |", r.mode, ratio(cpu, dual_cpu));
    }
    let _ = writeln!(out, "\nCPU seconds by part:\n");
    let _ = writeln!(out, "| mode | proxy | Wavelet | controller | instances | of which requested work |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in results {
        let c = &r.cpu;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.mode, c.proxy, c.wavelet, c.controller, c.instances, c.requested_work
        );
    }
    out
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}

/// The annotations every function gets in `mode`'s run: container-concurrency 1, then the
/// user's, then the mode (shared with `wavelink simulate`, so both model the same functions).
pub fn mode_annotations(mode: ScalingMode, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut annotations: Vec<(String, String)> = vec![("wavelink.dev/container-concurrency".into(), "1".into())];
    if mode == ScalingMode::FastOnly {
        // FaaS-only: an idle instance lives as long as the autoscaler would keep an RI (its
        // stable window), like a keep-alive policy of Dirigent-style platforms.
        let window = extra.iter().find(|(k, _)| k == "wavelink.dev/window").map_or("60s", |(_, v)| v);
        annotations.push(("wavelink.dev/emergency-keepalive".into(), window.to_owned()));
    }
    for (key, value) in extra {
        annotations.retain(|(k, _)| k != key);
        annotations.push((key.clone(), value.clone()));
    }
    annotations.retain(|(k, _)| k != "wavelink.dev/scaling-mode");
    annotations.push(("wavelink.dev/scaling-mode".into(), mode_name(mode).into()));
    annotations
}

/// The config of one mode's stack.
fn config_text(args: &ExperimentArgs, mode: ScalingMode, names: &[String], addrs: &[SocketAddr; 5]) -> String {
    let [listen, admin, wavelet, wavelet_admin, controller] = addrs;
    let annotations = mode_annotations(mode, &args.annotations);
    let annotations: Vec<String> = annotations.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
    let mut text = format!(
        "domain: {DOMAIN}\n\
         proxy: {{ listen: \"{listen}\", admin: \"{admin}\", grace-period: 5s, access-log: false }}\n\
         wavelets:\n  - {{ address: \"{wavelet}\", admin: \"{wavelet_admin}\", max-instances: {} }}\n\
         controller: {{ backend: local, admin: \"{controller}\", ri-start-delay: {}ms }}\n\
         functions:\n",
        args.max_instances,
        args.ri_start_delay.as_millis()
    );
    for name in names {
        let _ = writeln!(
            text,
            "  - {{ name: {name}, namespace: {NAMESPACE}, command: [\"wavelink-fn\"], image: {IMAGE}, annotations: {{ {} }} }}",
            annotations.join(", ")
        );
    }
    text
}

fn run_mode(
    args: &ExperimentArgs,
    mode: ScalingMode,
    trace: &Trace,
    names: &[String],
    invocations: &[wavelink_core::trace::arrivals::Invocation],
    runtime_env: &[(String, String)],
) -> anyhow::Result<(ModeResult, Vec<Record>)> {
    let dir = args.out.join(mode_name(mode));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let addrs = [free_addr()?, free_addr()?, free_addr()?, free_addr()?, free_addr()?];
    let [listen, proxy_admin, _, wavelet_admin, controller_admin] = addrs;
    let config = dir.join("wavelink.yaml");
    std::fs::write(&config, config_text(args, mode, names, &addrs)).context("writing the config")?;
    let children_before = children_cpu();
    let containers = runtime_env.iter().any(|(k, v)| k == "WAVELINK_RUNTIME" && v == "containerd");
    let containers_before = if containers { container_cpu_seconds() } else { 0.0 };
    let exe = std::env::current_exe().context("finding this executable")?;
    // Own process group, killed if this process dies (so Ctrl-C leaves nothing behind); only
    // warnings from the stack reach the terminal unless WAVELINK_LOG says otherwise.
    let log_level = std::env::var("WAVELINK_LOG").unwrap_or_else(|_| "warn".into());
    let argv = ["up".to_owned(), "--config".to_owned(), config.display().to_string()];
    let mut env = vec![("WAVELINK_LOG".to_owned(), log_level)];
    env.extend(runtime_env.iter().cloned());
    let up_pid = super::up::start(&exe, &argv, &env).context("starting wavelink up")?;
    let stack = Stack { pid: up_pid };
    let admin_calls = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for admin calls")?;
    for (name, admin) in [("proxy", proxy_admin), ("wavelet", wavelet_admin), ("controller", controller_admin)] {
        admin_calls.block_on(super::up::wait_ready(&format!("stack (waiting for its {name})"), up_pid, admin))?;
    }
    // Traffic comes to functions already deployed: their initial RIs are up first (what the
    // simulator's `deployed_before` models), so no mode starts its replay with a cold queue.
    admin_calls.block_on(wait_deployed(up_pid, controller_admin, names.len()))?;
    let before = Counters::read(&admin_calls, wavelet_admin, controller_admin);
    let plan = ReplayPlan {
        addr: listen,
        hosts: names.iter().map(|n| format!("{n}.{NAMESPACE}.{DOMAIN}")).collect(),
        timeout: Duration::from_secs(120),
        max_connections: 4096,
        threads: 2,
        work: args.work,
    };
    let started = Instant::now();
    let records = replay(&plan, invocations, &Arc::new(ReplayProgress::default())).map_err(anyhow::Error::msg)?;
    let replay_seconds = started.elapsed().as_secs_f64();
    let after = Counters::read(&admin_calls, wavelet_admin, controller_admin);
    let components = component_cpu(up_pid);
    drop(stack); // SIGTERM: `up` stops its children in order.
    if !wait_for_exit(up_pid, STOP_TIMEOUT) {
        // Its children and their instances die with it (parent-death signal).
        let _ = nix::sys::signal::kill(Pid::from_raw(up_pid as i32), Signal::SIGKILL);
        let _ = wait(up_pid, true);
    }
    // Containers are not our children (their shims are containerd's): their CPU comes from
    // their cgroups' parent instead.
    let container_cpu = if containers {
        ensure_no_containers_left(runtime_env)?;
        container_cpu_seconds() - containers_before
    } else {
        0.0
    };
    let tree = children_cpu() - children_before;
    // Sleeping asks for no CPU.
    let requested_work: f64 = match args.work {
        Work::Cpu => records.iter().filter(|r| r.succeeded()).map(|r| f64::from(r.requested_ms) / 1000.0).sum(),
        Work::Sleep => 0.0,
    };
    let own = components.proxy + components.wavelet + components.controller + components.up;
    let cpu = CpuSeconds {
        proxy: components.proxy,
        wavelet: components.wavelet,
        controller: components.controller,
        instances: (tree - own).max(0.0) + container_cpu,
        requested_work,
    };
    write_records(&dir.join("records.csv"), &records, names)?;
    let report = summarize(&records, trace.functions.len());
    let gib = 1024.0 * 1024.0 * 1024.0;
    Ok((
        ModeResult {
            mode: mode_name(mode),
            work: args.work.as_str(),
            report,
            regular_starts: after.regular_starts - before.regular_starts,
            emergency_starts: after.emergency_starts - before.emergency_starts,
            regular_memory_gib_s: (after.regular_memory - before.regular_memory) / gib,
            emergency_memory_gib_s: (after.emergency_memory - before.emergency_memory) / gib,
            cpu,
            replay_seconds,
        },
        records,
    ))
}

/// Stops the stack if anything fails on the way.
struct Stack {
    pid: u32,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
    }
}

/// Waits (reaping it) for `pid` to exit, at most `limit`.
fn wait_for_exit(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if wait(pid, false).is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Sum of every sample of a Prometheus series family in an exposition.
fn metric_sum(exposition: &str, family: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(family).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[derive(Debug, Default)]
struct Counters {
    regular_starts: f64,
    emergency_starts: f64,
    regular_memory: f64,
    emergency_memory: f64,
}

/// How long the initial RIs of every function may take to be ready.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until the controller lists all `functions` with every RI it asked for ready.
async fn wait_deployed(up_pid: u32, controller_admin: SocketAddr, functions: usize) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct View {
        replicas: u32,
        ready: u32,
    }
    let deadline = Instant::now() + DEPLOY_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if wait(up_pid, false).is_some() {
            bail!("the stack exited while its functions were deploying (its log above says why)");
        }
        let call = client::call(controller_admin, http::Method::GET, "/v1/functions", None, ADMIN_TIMEOUT).await;
        match call.map(|body| serde_json::from_slice::<Vec<View>>(&body)) {
            Ok(Ok(view)) if view.len() == functions && view.iter().all(|f| f.ready >= f.replicas) => return Ok(()),
            Ok(Ok(view)) => {
                let waiting = view.iter().filter(|f| f.ready < f.replicas).count();
                last = format!("{} of {functions} functions listed, {waiting} with RIs not ready", view.len());
            }
            Ok(Err(e)) => last = format!("unexpected answer: {e}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the functions' initial RIs were not ready after {DEPLOY_TIMEOUT:?} ({last})")
}

impl Counters {
    fn read(runtime: &tokio::runtime::Runtime, wavelet_admin: SocketAddr, controller_admin: SocketAddr) -> Counters {
        let metrics = |admin| {
            let call = client::call(admin, http::Method::GET, "/metrics", None, ADMIN_TIMEOUT);
            runtime.block_on(call).map(|body| String::from_utf8_lossy(&body).into_owned()).unwrap_or_default()
        };
        let (wavelet, controller) = (metrics(wavelet_admin), metrics(controller_admin));
        Counters {
            regular_starts: metric_sum(&controller, "wavelink_regular_instances_started_total"),
            emergency_starts: metric_sum(&wavelet, "wavelink_emergency_instances_spawned_total"),
            regular_memory: metric_sum(&controller, "wavelink_regular_memory_byte_seconds_total"),
            emergency_memory: metric_sum(&wavelet, "wavelink_emergency_memory_byte_seconds_total"),
        }
    }
}

/// CPU seconds of every child this process has waited for (and theirs, recursively).
/// CPU seconds of every container ever run under the instances' default cgroup parent
/// (`/wavelink`): the parent's counter keeps the time of children already removed. 0 before
/// the first container created it.
fn container_cpu_seconds() -> f64 {
    let v1 = ["/sys/fs/cgroup/cpuacct/wavelink/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/wavelink/cpuacct.usage"];
    for path in v1 {
        if let Some(nanos) = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<f64>().ok()) {
            return nanos / 1e9;
        }
    }
    std::fs::read_to_string("/sys/fs/cgroup/wavelink/cpu.stat")
        .ok()
        .and_then(|stat| stat.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok()))
        .map_or(0.0, |micros| micros / 1e6)
}

fn children_cpu() -> f64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}

#[derive(Debug, Default)]
struct ComponentCpu {
    up: f64,
    proxy: f64,
    wavelet: f64,
    controller: f64,
}

/// Own CPU (user + system) of `wavelink up` and of each component it runs, from /proc.
fn component_cpu(up_pid: u32) -> ComponentCpu {
    let per_second = procfs::ticks_per_second() as f64;
    let seconds = |stat: &procfs::ProcStat| (stat.utime + stat.stime) as f64 / per_second;
    let mut cpu = ComponentCpu { up: procfs::stat(up_pid).map_or(0.0, |s| seconds(&s)), ..Default::default() };
    for pid in procfs::pids() {
        let Some(stat) = procfs::stat(pid).filter(|s| s.ppid == up_pid) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        match cmdline.split(|&b| b == 0).nth(1) {
            Some(b"proxy") => cpu.proxy += seconds(&stat),
            Some(b"wavelet") => cpu.wavelet += seconds(&stat),
            Some(b"controller") => cpu.controller += seconds(&stat),
            _ => {}
        }
    }
    cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_families_are_summed_over_labels_without_prefix_clashes() {
        let text = "# HELP x\nwavelink_a_total{function=\"f\"} 2\nwavelink_a_total{function=\"g\"} 3.5\nwavelink_a_total_more 9\nwavelink_a_total 1\n";
        assert_eq!(metric_sum(text, "wavelink_a_total"), 6.5);
        assert_eq!(metric_sum(text, "wavelink_b_total"), 0.0);
    }

    #[test]
    fn platform_cpu_counts_instance_overhead_not_requested_work() {
        let cpu = CpuSeconds { proxy: 1.0, wavelet: 2.0, controller: 0.5, instances: 10.0, requested_work: 8.0 };
        assert_eq!(cpu.platform(), 5.5);
        let cpu = CpuSeconds { instances: 1.0, requested_work: 2.0, ..Default::default() };
        assert_eq!(cpu.platform(), 0.0);
    }

    #[test]
    fn annotations_apply_to_every_function_and_the_mode_wins() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ExperimentArgs,
        }
        let flags = ["x", "--annotation", "wavelink.dev/scaling-mode=async", "--annotation", "wavelink.dev/window=30s"];
        let args = <Cli as clap::Parser>::parse_from(flags).args;
        let addrs = [SocketAddr::from(([127, 0, 0, 1], 1)); 5];
        let text = config_text(&args, ScalingMode::FastOnly, &["a".into(), "b".into()], &addrs);
        let config = wavelink_core::LocalConfig::from_yaml(&text).expect("a valid config");
        let (functions, rejected) = config.functions();
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(functions.len(), 2);
        assert_eq!(functions[0].spec.scaling_mode, ScalingMode::FastOnly);
        assert_eq!(functions[0].spec.window, Duration::from_secs(30));
        assert_eq!(
            functions[0].spec.emergency_keepalive,
            Duration::from_secs(30),
            "fast-only keeps EIs for the window"
        );
    }
}
