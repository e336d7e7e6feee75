//! `wavelink`: one binary for every WaveLink component and tool.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use wavelink_core::LocalConfig;
use wavelink_loadtest::workload::FnArgs;
use wavelink_proxy::Proxy;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// WaveLink: a dual-track serverless platform for Kubernetes.
///
/// Regular Instances serve sustained load; bursts spill to Emergency Instances that Wavelets
/// start in milliseconds. Every component is a subcommand of this one binary.
#[derive(Debug, Parser)]
#[command(name = "wavelink", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or a RUST_LOG-style directive list.
    #[arg(long, global = true, env = "WAVELINK_LOG", default_value = "info", value_name = "FILTER")]
    log: String,
    /// Log line format.
    #[arg(long, global = true, env = "WAVELINK_LOG_FORMAT", default_value = "text", value_name = "FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ingress proxy: routes by Host to function instances, holding per-instance slots.
    ///
    /// Functions are reached at <name>.<namespace>.<domain>. The admin listener serves
    /// /healthz, /readyz, /metrics, /stats and PUT /v1/functions/{ns}/{name}/instances.
    /// SIGTERM drains in-flight requests (up to the grace period) and exits 0.
    Proxy(ProxyArgs),
    /// Run a Wavelet: the node agent that starts Emergency Instances for spilled requests.
    ///
    /// Takes requests from the proxy (marked x-wavelink-function: <ns>/<name>) and serves each on
    /// an instance of that function, reusing an idle one within wavelink.dev/emergency-keepalive
    /// or starting one in milliseconds. Instances are process groups of the function's command,
    /// handed a listening socket as fd 3. SIGTERM drains, then destroys every instance.
    Wavelet(WaveletArgs),
    /// Run the function workload: ?ms=N burns CPU, ?sleep=N sleeps, ?mb=M touches memory.
    ///
    /// Listens on --listen, on a socket inherited as fd 3 (LISTEN_FDS=1), or on $HOST:$PORT.
    Fn(FnArgs),
    /// Generate load: wrk-style against a URL (closed loop, or open loop with --rate), or
    /// replay a serverless trace against the proxy (`wavelink load trace`).
    Load(Box<wavelink_loadtest::cli::LoadArgs>),
    /// Print the annotation reference: every wavelink.dev/* key, its default and accepted values.
    Annotations,
}

#[derive(Debug, clap::Args)]
struct ProxyArgs {
    /// The local config file (see wavelink.yaml in the repository).
    #[arg(long, short = 'c', env = "WAVELINK_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Client listener; overrides proxy.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener; overrides proxy.admin.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Worker threads; overrides proxy.threads.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Longest drain on SIGTERM; overrides proxy.grace-period.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    grace_period: Option<Duration>,
    /// Validate the config, print what would be served, and exit (non-zero if any function is
    /// rejected).
    #[arg(long)]
    check: bool,
}

#[derive(Debug, clap::Args)]
struct WaveletArgs {
    /// The local config file: functions (command, annotations) and the wavelets: list.
    #[arg(long, short = 'c', env = "WAVELINK_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Which entry of wavelets: this is (its address, admin and max-instances are the defaults).
    #[arg(long, default_value_t = 0, value_name = "N")]
    index: usize,
    /// Listener for the proxy's requests [default: the entry's address, else 127.0.0.1:8091].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener [default: the entry's admin, else 127.0.0.1:9091].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Most Emergency Instances alive at once on this node [default: the entry's, else 256].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_instances: Option<u32>,
    /// Where live instances are recorded, so a restart can kill what a crash left behind
    /// [default: $XDG_RUNTIME_DIR/wavelink/wavelet-<port>, else /tmp/wavelink-<uid>/wavelet-<port>].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Run instances as this user; only when the Wavelet runs as root [default as root: nobody].
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Memory limit per instance, enforced with a cgroup where the kernel allows; 0 for none.
    #[arg(long, default_value = "1Gi", value_name = "SIZE", value_parser = parse_size)]
    memory_max: u64,
    /// How long an instance started without socket activation may take to listen on $PORT.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    spawn_timeout: Duration,
    /// Loopback ports for instances; keep it outside net.ipv4.ip_local_port_range.
    #[arg(long, default_value = "20000-29999", value_name = "FIRST-LAST", value_parser = parse_port_range)]
    port_range: (u16, u16),
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Longest drain on SIGTERM before instances are destroyed anyway.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    grace_period: Duration,
}

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (first, last) = text.split_once('-').ok_or_else(|| format!("{text:?} is not a range like 20000-29999"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("{p:?} is not a port"));
    let (first, last) = (port(first)?, port(last)?);
    if first == 0 || last < first {
        return Err(format!("{text:?} is empty or starts at port 0"));
    }
    Ok((first, last))
}

fn parse_size(text: &str) -> Result<u64, String> {
    wavelink_core::size::parse_size(text)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    wavelink_core::duration::parse_duration(text)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log, cli.log_format) {
        eprintln!("wavelink: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Proxy(args) => run_proxy(args),
        Command::Wavelet(args) => run_wavelet(args),
        Command::Fn(args) => wavelink_loadtest::workload::run(args),
        Command::Load(args) => wavelink_loadtest::run(*args),
        Command::Annotations => {
            print!("{}", wavelink_core::spec::markdown_table());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wavelink: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("bad --log filter {filter:?}"))?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&args.config).with_context(|| format!("reading config {}", args.config.display()))?;
    let mut config = LocalConfig::from_yaml(&text).with_context(|| format!("config {}", args.config.display()))?;
    if let Some(listen) = args.listen {
        config.proxy.listen = listen;
    }
    if let Some(admin) = args.admin {
        config.proxy.admin = admin;
    }
    if let Some(threads) = args.threads {
        config.proxy.threads = usize::from(threads);
    }
    if let Some(grace) = args.grace_period {
        config.proxy.grace_period = grace;
    }
    if args.check {
        return check_config(&config);
    }
    let proxy = Proxy::from_config(&config).context("setting up the proxy")?;
    let shutdown = proxy.signal_shutdown();
    proxy.run(shutdown, true);
    Ok(())
}

fn load_config(path: &std::path::Path) -> anyhow::Result<LocalConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    LocalConfig::from_yaml(&text).with_context(|| format!("config {}", path.display()))
}

fn run_wavelet(args: WaveletArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    let entry = config.wavelets.get(args.index);
    if entry.is_none() && args.index > 0 {
        bail!("--index {}: the config lists {} wavelets", args.index, config.wavelets.len());
    }
    let listen = args.listen.or(entry.map(|w| w.address)).unwrap_or_else(|| "127.0.0.1:8091".parse().expect("literal"));
    let admin =
        args.admin.or(entry.and_then(|w| w.admin)).unwrap_or_else(|| "127.0.0.1:9091".parse().expect("literal"));
    let state_dir = args.state_dir.unwrap_or_else(|| {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("wavelink"))
            .unwrap_or_else(|| std::env::temp_dir().join(format!("wavelink-{}", nix::unistd::geteuid())));
        base.join(format!("wavelet-{}", listen.port()))
    });
    let run_as = args.run_as.or_else(|| nix::unistd::geteuid().is_root().then(|| "nobody".to_owned()));
    let settings = wavelink_wavelet::WaveletSettings {
        listen,
        admin,
        threads: usize::from(args.threads),
        grace_period: args.grace_period,
        max_instances: args.max_instances.or(entry.map(|w| w.max_instances)).unwrap_or(256),
        state_dir,
        run_as,
        memory_max: (args.memory_max > 0).then_some(args.memory_max),
        spawn_timeout: args.spawn_timeout,
        port_range: args.port_range,
    };
    let wavelet = wavelink_wavelet::Wavelet::new(settings).context("setting up the wavelet")?;
    let (functions, rejected) = config.functions();
    for r in &rejected {
        tracing::error!(function = %r.function, error = %r.error, "function rejected");
    }
    wavelet.pools().apply(functions);
    for (function, why) in wavelet.pools().unreachable_commands() {
        tracing::warn!(%function, "{why}");
    }
    let shutdown = wavelet.signal_shutdown();
    wavelet.run(shutdown, true);
    Ok(())
}

fn check_config(config: &LocalConfig) -> anyhow::Result<()> {
    let (accepted, rejected) = config.functions();
    println!("proxy    listen {} admin {}", config.proxy.listen, config.proxy.admin);
    for w in &config.wavelets {
        let admin = w.admin.map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!("wavelet  address {} admin {admin} max-instances {}", w.address, w.max_instances);
    }
    for f in &accepted {
        println!("ok       {} at http://{}  ({} instances)", f.id, f.id.host(&config.domain), f.instances.len());
    }
    for r in &rejected {
        println!("rejected {}: {}", r.function, r.error);
    }
    if !rejected.is_empty() {
        bail!("{} of {} functions rejected", rejected.len(), accepted.len() + rejected.len());
    }
    Ok(())
}
