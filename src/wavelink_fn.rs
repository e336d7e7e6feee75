//! `wavelink-fn`: the function workload as a small binary of its own — the same code as
//! `wavelink fn`, without the proxy, Wavelet and allocator the main binary carries, so an
//! instance starts in about half the CPU time (docs/benchmarks.md). Emergency Instances are
//! started thousands of times; this is the binary they run.
#![forbid(unsafe_code)]
use clap::Parser;

#[derive(Parser)]
#[command(name = "wavelink-fn", version)]
struct Args {
    #[command(flatten)]
    workload: wavelink_loadtest::workload::FnArgs,
}

fn main() -> std::process::ExitCode {
    match wavelink_loadtest::workload::run(Args::parse().workload) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wavelink-fn: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
