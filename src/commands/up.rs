//! `wavelink up`: the whole platform on this machine, from one config file.
//!
//! Starts the first Wavelet of `wavelets:`, the controller (local backend) and the proxy as child
//! processes of this one (each in its own process group, killed if this process dies), waits
//! until they are ready, prints where to send requests, and on Ctrl-C or SIGTERM stops them in
//! turn (SIGTERM, then SIGKILL after the grace period) so that no process is left behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use wavelink_core::LocalConfig;
use wavelink_wavelet::spawn::{Plan, spawn, wait};

use super::load_config;

/// How long each component may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a component may take to stop after SIGTERM before it is killed: a Wavelet or
/// controller with hundreds of containers removes them first (each component bounds its own
/// drain and clean-up; this only catches one that hangs).
const STOP_GRACE: Duration = Duration::from_secs(45);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The local config file.
    #[arg(long, short = 'c', env = "WAVELINK_CONFIG", default_value = "wavelink.yaml", value_name = "FILE")]
    config: PathBuf,
}

struct Child {
    name: &'static str,
    pid: u32,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    let (functions, rejected) = config.functions();
    for r in &rejected {
        eprintln!("up: {r}");
    }
    if functions.is_empty() {
        bail!("{}: no function to serve", args.config.display());
    }
    let controller = config.controller.clone().unwrap_or_default();
    let mut plan: Vec<(&'static str, Vec<String>, SocketAddr)> = Vec::new();
    let config_path = args.config.canonicalize().with_context(|| format!("finding {}", args.config.display()))?;
    let config_arg = config_path.display().to_string();
    if let Some(wavelet) = config.wavelets.first() {
        let admin = wavelet.admin.context("wavelets[0] needs an admin address for `up` to watch it")?;
        plan.push(("wavelet", vec!["wavelet".into(), "--config".into(), config_arg.clone()], admin));
    }
    // The proxy before the controller, which pushes instances to it.
    plan.push(("proxy", vec!["proxy".into(), "--config".into(), config_arg.clone()], config.proxy.admin));
    plan.push(("controller", vec!["controller".into(), "--config".into(), config_arg], controller.admin));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut children: Vec<Child> = Vec::new();
    let started = runtime.block_on(async {
        for (name, argv, admin) in plan {
            let pid = start(&exe, &argv, &[]).with_context(|| format!("starting the {name}"))?;
            children.push(Child { name, pid });
            wait_ready(name, pid, admin).await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = started {
        stop(&children);
        return Err(e);
    }
    print_endpoints(&config, &functions, controller.ri_start_delay);
    let outcome = runtime.block_on(watch(&children));
    stop(&children);
    outcome
}

/// Starts `exe argv` in its own process group, killed when this process dies, with the
/// environment that matters to it (plus `extra`, which wins).
pub fn start(exe: &Path, argv: &[String], extra: &[(String, String)]) -> anyhow::Result<u32> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            matches!(k.as_str(), "PATH" | "HOME" | "USER" | "LANG" | "TZ" | "XDG_RUNTIME_DIR" | "RUST_BACKTRACE")
                || k.starts_with("WAVELINK_")
        })
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .collect();
    env.extend_from_slice(extra);
    let plan = Plan { program: exe, args: argv, env: &env, listen_fd: None, credentials: None };
    Ok(spawn(&plan)?)
}

/// Waits until the admin listener at `admin` says ready, or fails if `pid` (the process that
/// runs it) exits first or it takes longer than the ready timeout.
pub async fn wait_ready(name: &str, pid: u32, admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if wait(pid, false).is_some() {
            bail!("the {name} exited while starting (its log above says why)");
        }
        let ready =
            wavelink_server::client::call(admin, http::Method::GET, "/readyz", None, Duration::from_secs(1)).await;
        if ready.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the {name} was not ready after {READY_TIMEOUT:?}")
}

fn print_endpoints(config: &LocalConfig, functions: &[wavelink_core::FunctionDef], ri_start_delay: Duration) {
    let listen = config.proxy.listen;
    println!("up: WaveLink is running (Regular Instances start after {ri_start_delay:?}, the modelled pod start)");
    for f in functions {
        let host = f.id.host(&config.domain);
        println!("    {}: curl -i -H 'Host: {host}' 'http://{listen}/?ms=5'", f.id);
    }
    println!("    proxy admin http://{}/stats  /metrics", config.proxy.admin);
    if let Some(w) = config.wavelets.first().and_then(|w| w.admin) {
        println!("    wavelet admin http://{w}/v1/instances");
    }
    let controller = config.controller.clone().unwrap_or_default();
    println!("    controller admin http://{}/v1/functions", controller.admin);
    println!("up: Ctrl-C stops everything");
}

/// Waits for Ctrl-C or SIGTERM, or for a component to exit on its own (an error).
async fn watch(children: &[Child]) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(child) = children.iter().find(|c| wait(c.pid, false).is_some()) {
                    bail!("the {} exited; stopping the others", child.name);
                }
            }
        }
    }
}

/// Stops the proxy first, so it takes no more requests before what serves them goes away, then
/// the others in reverse order of starting.
fn stop(children: &[Child]) {
    let proxy_first =
        children.iter().filter(|c| c.name == "proxy").chain(children.iter().rev().filter(|c| c.name != "proxy"));
    for child in proxy_first {
        let group = Pid::from_raw(child.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && wait(child.pid, false).is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of its group goes now.
        let _ = killpg(group, Signal::SIGKILL);
        wait(child.pid, true);
        eprintln!("up: {} stopped", child.name);
    }
}
