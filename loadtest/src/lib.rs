//! WaveLink's load tools and the `fn` function workload.
//!
//! ```text
//! wavelink load URL        cli ─▶ engine (threads × connections, closed or open loop)
//!                                    └─▶ client (raw HTTP/1.1) ─▶ printer (wrk2 layout, JSON)
//! wavelink load trace      trace ─▶ core::trace (parse / synthesize ─▶ schedule) ─▶ replay
//!                                    └─▶ core::trace::report (slowdowns) ─▶ CSV, JSON, SVG plots
//! wavelink fn / wavelink-fn workload
//! ```
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod engine;
pub mod grpc;
pub mod listen_fds;
pub mod printer;
pub mod progress;
pub mod trace;
pub mod websocket;
pub mod workload;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context;

use crate::cli::{LoadArgs, LoadCommand, WrkArgs};

/// Runs `wavelink load`.
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(LoadCommand::Trace(trace)) => trace::run(trace),
        None => run_wrk(&args.wrk),
    }
}

fn run_wrk(args: &WrkArgs) -> anyhow::Result<()> {
    let (url, plan) = args.plan().map_err(anyhow::Error::msg)?;
    engine::preflight(plan.addr).map_err(anyhow::Error::msg)?;
    let progress = Arc::new(engine::Progress::default());
    let ticker = progress::Ticker::start({
        let progress = progress.clone();
        let total = plan.duration.as_secs_f64();
        move || format!("/ {total:.0}s  {} requests", progress.requests.load(Relaxed))
    });
    let result = engine::run(&plan, &progress).map_err(anyhow::Error::msg)?;
    drop(ticker);
    print!("{}", printer::text(&url, &plan, &result, args.latency));
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&printer::json(&url, &plan, &result)).context("encoding the result")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
