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
    /// Run the function workload: ?ms=N burns CPU, ?sleep=N sleeps, ?mb=M touches memory.
    ///
    /// Listens on --listen, on a socket inherited as fd 3 (LISTEN_FDS=1), or on $HOST:$PORT.
    Fn(FnArgs),
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
        Command::Fn(args) => wavelink_loadtest::workload::run(args),
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

fn check_config(config: &LocalConfig) -> anyhow::Result<()> {
    let (accepted, rejected) = config.functions();
    println!("proxy    listen {} admin {}", config.proxy.listen, config.proxy.admin);
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
