//! `wavelink up`: the whole platform on this machine, from one config file.
//!
//! Starts the first Wavelet of `wavelets:`, the controller (local backend) and the proxy as child
//! processes of this one (each in its own process group, killed if this process dies), waits
//! until they are ready, prints where to send requests, and on Ctrl-C or SIGTERM stops them in
//! turn (SIGTERM, then SIGKILL after the grace period) so that no process is left behind.
//!
//! A component that exits on its own is restarted, after a back-off that doubles with each
//! quick failure (1 s up to 30 s, reset once it has run a minute), as kubelet restarts a
//! crashing container; the others keep serving meanwhile (Regular Instances outlive a crashed
//! controller, and the restarted one adopts them).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use wavelink_core::LocalConfig;
use wavelink_core::backoff::doubling;
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

/// First restart delay; it doubles with each quick failure.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);
/// A component that ran this long before exiting starts its back-off afresh.
const RAN_WELL: Duration = Duration::from_secs(60);

struct Child {
    name: &'static str,
    argv: Vec<String>,
    /// `None` while it waits to be restarted.
    pid: Option<u32>,
    started: Instant,
    /// Exits in a row that came soon after a start.
    failures: u32,
    restart_at: Option<Instant>,
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
    let token = InternalToken::for_components(&config)?;
    let component = |name: &str| {
        let mut argv = vec![name.to_owned(), "--config".to_owned(), config_arg.clone()];
        if let Some(file) = token.file() {
            argv.extend(["--token-file".to_owned(), file.display().to_string()]);
        }
        argv
    };
    if let Some(wavelet) = config.wavelets.first() {
        let admin = wavelet.admin.context("wavelets[0] needs an admin address for `up` to watch it")?;
        plan.push(("wavelet", component("wavelet"), admin));
    }
    // The proxy before the controller, which pushes instances to it.
    plan.push(("proxy", component("proxy"), config.proxy.admin));
    plan.push(("controller", component("controller"), controller.admin));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut children: Vec<Child> = Vec::new();
    let started = runtime.block_on(async {
        for (name, argv, admin) in plan {
            let pid = start(&exe, &argv, &[]).with_context(|| format!("starting the {name}"))?;
            children.push(Child { name, argv, pid: Some(pid), started: Instant::now(), failures: 0, restart_at: None });
            wait_ready(name, pid, admin).await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    if let Err(e) = started {
        stop(&children);
        return Err(e);
    }
    print_endpoints(&config, &functions, controller.ri_start_delay);
    let outcome = runtime.block_on(watch(&exe, &mut children));
    stop(&children);
    outcome
}

/// The token of the components' internal calls: the config's or the environment's, else a new
/// one in a private directory removed when `up` ends.
struct InternalToken {
    made: Option<PathBuf>,
}

impl InternalToken {
    fn for_components(config: &LocalConfig) -> anyhow::Result<Self> {
        if config.internal_token_file.is_some() || std::env::var_os("WAVELINK_TOKEN_FILE").is_some() {
            return Ok(InternalToken { made: None });
        }
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("wavelink-up-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join("internal-token");
        wavelink_server::auth::write_new_token(&file).with_context(|| format!("writing {}", file.display()))?;
        Ok(InternalToken { made: Some(file) })
    }

    fn file(&self) -> Option<&Path> {
        self.made.as_deref()
    }
}

impl Drop for InternalToken {
    fn drop(&mut self) {
        if let Some(dir) = self.made.as_deref().and_then(Path::parent) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
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
    let plan = Plan {
        program: exe,
        args: argv,
        env: &env,
        listen_fd: None,
        credentials: None,
        die_with_parent: true,
        cgroup_procs: None,
    };
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

/// Waits for Ctrl-C or SIGTERM, restarting any component that exits on its own.
async fn watch(exe: &Path, children: &mut [Child]) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for child in children.iter_mut() {
                    supervise(exe, child);
                }
            }
        }
    }
}

/// Notices that a component exited and restarts it once its back-off has passed.
fn supervise(exe: &Path, child: &mut Child) {
    if let Some(pid) = child.pid
        && let Some(status) = wait(pid, false)
    {
        child.pid = None;
        child.failures = if child.started.elapsed() >= RAN_WELL { 1 } else { child.failures + 1 };
        let delay = doubling(RESTART_BACKOFF, child.failures, MAX_RESTART_BACKOFF);
        eprintln!(
            "up: the {} exited ({}); restarting it in {delay:?} (failure {} in a row)",
            child.name,
            describe(pid, status),
            child.failures
        );
        child.restart_at = Some(Instant::now() + delay);
    }
    if child.pid.is_none() && child.restart_at.is_some_and(|at| Instant::now() >= at) {
        child.started = Instant::now();
        match start(exe, &child.argv, &[]) {
            Ok(pid) => {
                eprintln!("up: the {} restarted (pid {pid})", child.name);
                (child.pid, child.restart_at) = (Some(pid), None);
            }
            Err(e) => {
                child.failures += 1;
                eprintln!("up: restarting the {} failed: {e:#}; trying again later", child.name);
                child.restart_at = Some(Instant::now() + MAX_RESTART_BACKOFF);
            }
        }
    }
}

/// A wait status in words.
fn describe(pid: u32, status: i32) -> String {
    use nix::sys::wait::WaitStatus;
    match WaitStatus::from_raw(Pid::from_raw(pid as i32), status) {
        Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
        Ok(WaitStatus::Signaled(_, signal, _)) => format!("killed by {signal}"),
        _ => format!("wait status {status:#x}"),
    }
}

/// Stops the proxy first, so it takes no more requests before what serves them goes away, then
/// the others in reverse order of starting.
fn stop(children: &[Child]) {
    let proxy_first =
        children.iter().filter(|c| c.name == "proxy").chain(children.iter().rev().filter(|c| c.name != "proxy"));
    for child in proxy_first {
        let Some(pid) = child.pid else { continue };
        let group = Pid::from_raw(pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && wait(pid, false).is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of its group goes now.
        let _ = killpg(group, Signal::SIGKILL);
        wait(pid, true);
        eprintln!("up: {} stopped", child.name);
    }
}
