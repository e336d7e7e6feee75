//! `wavelink`: one binary for every WaveLink component and tool.
// Unsafe only in `allocator`, one FFI call with no preconditions.
#![deny(unsafe_code)]

mod allocator;
mod commands;
mod logging;

use clap::{Parser, Subcommand};
use logging::LogFormat;
use wavelink_loadtest::workload::FnArgs;

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything locally from a config file: proxy, a Wavelet and the controller.
    ///
    /// Prints where to send requests; Ctrl-C stops everything with no process left behind.
    Up(commands::up::UpArgs),
    /// Run the ingress proxy: routes by Host to function instances, holding per-instance slots.
    ///
    /// Functions are reached at <name>.<namespace>.<domain>. The admin listener serves
    /// /healthz, /readyz, /metrics, /stats and PUT /v1/functions/{ns}/{name}/instances.
    /// SIGTERM drains in-flight requests (up to the grace period) and exits 0.
    Proxy(commands::proxy::ProxyArgs),
    /// Run a Wavelet: the node agent that starts Emergency Instances for spilled requests.
    ///
    /// Takes requests from the proxy (marked x-wavelink-function: <ns>/<name>) and serves each on
    /// an instance of that function, reusing an idle one within wavelink.dev/emergency-keepalive
    /// or starting one in milliseconds. Instances are process groups of the function's command,
    /// handed a listening socket as fd 3. SIGTERM drains, then destroys every instance.
    Wavelet(commands::wavelet::WaveletArgs),
    /// Run the autoscaler of Regular Instances (the standard track).
    ///
    /// Reads every proxy's /stats each second, decides each two seconds (stable and panic
    /// windows over RI + EI + queued concurrency), and sets the number of RIs: processes on this
    /// machine (local backend) or Deployment replicas (Kubernetes).
    Controller(commands::controller::ControllerArgs),
    /// Run the function workload: ?ms=N burns CPU, ?sleep=N sleeps, ?mb=M touches memory.
    ///
    /// Listens on --listen, on a socket inherited as fd 3 (LISTEN_FDS=1), or on $HOST:$PORT.
    Fn(FnArgs),
    /// Generate load: wrk-style against a URL (closed loop, or open loop with --rate), or
    /// replay a serverless trace against the proxy (`wavelink load trace`).
    Load(Box<wavelink_loadtest::cli::LoadArgs>),
    /// Run the same trace through the local stack once per scaling mode and compare them.
    ///
    /// For each mode (dual, async, sync, fast-only) a fresh `wavelink up` on free loopback ports,
    /// the same seeded replay once every function's initial RIs are ready, then a side-by-side
    /// table: geometric mean of per-function p99
    /// slowdown, latency, EI share, cold starts, instance memory-time, platform CPU, and ratios to
    /// dual. Results, records, logs and plots go to --out.
    Experiment(Box<commands::experiment::ExperimentArgs>),
    /// Simulate a trace on a cluster of N nodes through WaveLink's own policy code, per mode.
    ///
    /// The proxy's per-request choice, the autoscaler and the Wavelets' reuse and keep-alive run
    /// in virtual time against modelled pod starts, EI cold starts, instance memory and CPU
    /// contention: traces and clusters too large for this machine. Same table as `experiment`.
    #[command(after_long_help = commands::simulate::MODEL_HELP)]
    Simulate(Box<commands::simulate::SimulateArgs>),
    /// Print the annotation reference: every wavelink.dev/* key, its default and accepted values.
    Annotations,
    /// Write an OCI image (a layout tar for `ctr images import`) of a program and its libraries.
    ///
    /// By default the image holds wavelink-fn, the function workload, so the containerd runtime
    /// can be tried without a registry or a container engine:
    ///   wavelink image -o fn.tar && ctr -n k8s.io images import fn.tar
    Image(commands::image::ImageArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log, cli.log_format) {
        eprintln!("wavelink: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Up(args) => commands::up::run(args),
        Command::Proxy(args) => commands::proxy::run(args),
        Command::Wavelet(args) => commands::wavelet::run(args),
        Command::Controller(args) => commands::controller::run(args),
        Command::Fn(args) => wavelink_loadtest::workload::run(args),
        Command::Load(args) => wavelink_loadtest::run(*args),
        Command::Experiment(args) => commands::experiment::run(*args),
        Command::Simulate(args) => commands::simulate::run(*args),
        Command::Image(args) => commands::image::run(args),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn simulate_help_teaches_the_model() {
        let mut cli = super::Cli::command();
        let simulate = cli.find_subcommand_mut("simulate").expect("a simulate subcommand");
        let help = simulate.render_long_help().to_string();
        for part in ["What is modelled", "--ri-start-delay", "processor", "sharing", "Not modelled"] {
            assert!(help.contains(part), "`simulate --help` does not say {part:?}:\n{help}");
        }
    }
}
