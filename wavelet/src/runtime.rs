//! The `process` instance runtime: a function command as a process group on this node.
//!
//! With socket activation (the default) the Wavelet binds the instance's listening socket itself
//! and hands it over as fd 3 (`LISTEN_FDS=1`), so the request that caused the spawn can be
//! forwarded at once and wait in the kernel backlog while the process starts. Without it the
//! instance gets `HOST`/`PORT` and the Wavelet polls until the port accepts.
//!
//! Every instance: its own process group (killed as a whole), a clean environment, no inherited
//! descriptors but fd 3, an unprivileged user when the Wavelet runs as root, and a memory cgroup
//! where the kernel lets us. An Emergency Instance dies with its Wavelet (`PR_SET_PDEATHSIG`);
//! a Regular Instance of the local backend outlives its controller, as a pod outlives the
//! autoscaler, and a restarted controller adopts it ([`Process::adopt`]).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::warn;
use wavelink_core::FunctionId;

use crate::cgroup::{Cgroup, Cgroups};
use crate::spawn::{self, Plan};
use crate::spawner::Spawner;

/// The user instances run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    pub fn lookup(user: &str) -> Result<RunAs, String> {
        match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => Ok(RunAs { user: user.to_owned(), uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
            Ok(None) => Err(format!("no user {user:?} on this system")),
            Err(e) => Err(format!("looking up user {user:?}: {e}")),
        }
    }
}

/// What to start.
pub struct Launch<'a> {
    pub function: &'a FunctionId,
    pub command: &'a [String],
    /// The function's literal environment (before the platform's own variables).
    pub env: &'a [(String, String)],
    pub socket_activation: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the function has no command to start instances with")]
    NoCommand,
    #[error("binding the instance's socket: {0}")]
    Bind(std::io::Error),
    #[error("starting {program:?}: {source}")]
    Exec { program: String, source: std::io::Error },
    #[error("the instance did not listen on its PORT within {0:?}")]
    NotListening(Duration),
    #[error("the instance exited before it listened on its PORT")]
    ExitedEarly,
    #[error("the thread starting the instance failed: {0}")]
    Thread(String),
}

/// A running instance.
pub struct Process {
    /// Unique on this node for the Wavelet's lifetime (`ei-<wavelet pid>-<n>`).
    pub id: String,
    pub pid: u32,
    pub addr: SocketAddr,
    pub started: Instant,
    /// Kernel start time (`/proc/<pid>/stat` field 22), to tell the process from a later one that
    /// reuses its pid.
    pub start_ticks: u64,
    pub cgroup: Option<Cgroup>,
    /// Started by this process (so reaped with `waitpid`), not adopted from a predecessor.
    child: bool,
    reaped: bool,
}

/// Longest wait for an adopted process (not ours to reap) to be gone after SIGKILL.
const ADOPTED_EXIT_LIMIT: Duration = Duration::from_secs(5);

impl Process {
    /// Takes over a process a previous run started (its pid and start time checked by the
    /// caller): watched through `/proc`, killed as a group like the others.
    pub fn adopt(id: String, pid: u32, start_ticks: u64, addr: SocketAddr, cgroup: Option<Cgroup>) -> Process {
        Process { id, pid, addr, started: Instant::now(), start_ticks, cgroup, child: false, reaped: false }
    }

    /// Whether the process has exited (it is reaped then, if it is our child).
    pub fn try_exited(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        self.reaped = if self.child {
            spawn::wait(self.pid, false).is_some()
        } else {
            !crate::procfs::running(self.pid, self.start_ticks)
        };
        self.reaped
    }

    /// Resident memory in bytes, from `/proc/<pid>/statm` (0 if it is gone).
    pub fn rss_bytes(&self) -> u64 {
        resident_bytes(self.pid)
    }
}

pub fn resident_bytes(pid: u32) -> u64 {
    let page_size = 4096;
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page_size)
}

/// Kernel start time of a process in clock ticks, `None` if there is no such process.
pub fn start_ticks(pid: u32) -> Option<u64> {
    crate::procfs::stat(pid).map(|s| s.start_ticks)
}

/// Loopback ports for instances, handed out in turn.
///
/// Binding port 0 makes the kernel search the ephemeral range for a free port, which a profile
/// showed to be a fifth of the Wavelet's CPU per instance once thousands of short connections
/// have passed; binding a given port is a hash lookup. The range should lie outside
/// `net.ipv4.ip_local_port_range` so outgoing connections never take these ports.
#[derive(Debug)]
pub struct PortRange {
    first: u16,
    len: u32,
    next: AtomicU64,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Result<Self, String> {
        if first == 0 || last < first {
            return Err(format!("port range {first}-{last} is empty or starts at 0"));
        }
        // A random start, so Wavelets sharing a range (tests, restarts) rarely collide.
        Ok(PortRange { first, len: u32::from(last - first) + 1, next: AtomicU64::new(fastrand::u64(..)) })
    }

    /// The next port of the range that is free now, for an instance that binds it itself.
    pub fn free_port(&self) -> std::io::Result<u16> {
        Ok(self.bind()?.local_addr()?.port())
    }

    /// A loopback listener on the next free port of the range.
    fn bind(&self) -> std::io::Result<TcpListener> {
        for _ in 0..self.len {
            let offset = (self.next.fetch_add(1, Relaxed) % u64::from(self.len)) as u16;
            match TcpListener::bind(("127.0.0.1", self.first + offset)) {
                Ok(listener) => return Ok(listener),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "every port of the instance port range is in use"))
    }
}

pub struct ProcessRuntime {
    run_as: Option<RunAs>,
    cgroups: Option<Cgroups>,
    ports: PortRange,
    /// This binary; its directory holds the project's own programs.
    self_exe: PathBuf,
    /// Instance ids are `<kind>-<pid>-<n>`: `ei` on a Wavelet, `ri` in the local backend.
    kind: &'static str,
    /// Instances get SIGKILL when this process dies (not for RIs, which outlive it).
    die_with_parent: bool,
    next: AtomicU64,
    /// The thread instances are started from (their parent-death signal is tied to it).
    spawner: Spawner,
}

/// The project's own programs, found next to the running binary before `PATH` is searched, so
/// a command like `["wavelink-fn"]` works wherever WaveLink is installed.
const OWN_PROGRAMS: [&str; 2] = ["wavelink", "wavelink-fn"];

impl ProcessRuntime {
    /// A runtime for Emergency Instances.
    pub fn new(run_as: Option<RunAs>, cgroups: Option<Cgroups>, ports: PortRange) -> std::io::Result<Self> {
        Self::for_kind("ei", run_as, cgroups, ports)
    }

    /// A runtime whose instance ids start with `kind` (`ri` for Regular Instances).
    pub fn for_kind(
        kind: &'static str,
        run_as: Option<RunAs>,
        cgroups: Option<Cgroups>,
        ports: PortRange,
    ) -> std::io::Result<Self> {
        let self_exe = std::env::current_exe()?;
        Ok(ProcessRuntime {
            run_as,
            cgroups,
            ports,
            self_exe,
            kind,
            die_with_parent: true,
            next: AtomicU64::new(0),
            spawner: Spawner::new()?,
        })
    }

    /// Instances outlive this process (the local backend's RIs); a successor adopts them.
    pub fn outliving_parent(mut self) -> Self {
        self.die_with_parent = false;
        self
    }

    /// Where instances must be started from: see [`crate::spawner`].
    pub fn spawner(&self) -> &Spawner {
        &self.spawner
    }

    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    pub fn memory_limited(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Why instances of `command` would fail to start as the unprivileged user, if they would:
    /// the program, or a directory above it, is not executable by others (a build under a
    /// private home directory, say). Checked at start-up so the operator hears of it before
    /// the first burst.
    pub fn unreachable(&self, command: &[String]) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let run_as = self.run_as.as_ref().filter(|r| r.uid != 0)?;
        let program = self.program_path(command.first()?);
        if !program.is_absolute() {
            return None;
        }
        let blocked = program
            .ancestors()
            .find(|p| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o001 == 0).unwrap_or(true))?;
        Some(format!(
            "{} is not reachable by user {} ({} lacks execute permission for others): instances will fail to \
             start; move the program, or pass --run-as with a user that can run it",
            program.display(),
            run_as.user,
            blocked.display()
        ))
    }

    /// The project's own programs live next to this binary; anything else is used as given.
    fn program_path(&self, program: &str) -> PathBuf {
        OWN_PROGRAMS
            .contains(&program)
            .then(|| self.self_exe.with_file_name(program))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(program))
    }

    /// Starts an instance. Returns as soon as the process exists: with socket activation it can
    /// take requests at once (they wait in the backlog); without, wait for [`wait_listening`].
    pub fn spawn(&self, launch: &Launch<'_>) -> Result<Process, SpawnError> {
        let (program, args) = launch.command.split_first().ok_or(SpawnError::NoCommand)?;
        let id = format!("{}-{}-{}", self.kind, std::process::id(), self.next.fetch_add(1, Relaxed));
        let listener = self.ports.bind().map_err(SpawnError::Bind)?;
        let addr = listener.local_addr().map_err(SpawnError::Bind)?;

        let program = self.program_path(program);
        let program = program.as_path();
        let mut env =
            vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))];
        // The function's own variables (its PATH replaces ours); the platform's take precedence.
        for (name, value) in launch.env.iter().filter(|(name, _)| !PLATFORM_ENV.contains(&name.as_str())) {
            match env.iter_mut().find(|(n, _)| n == name) {
                Some(entry) => entry.1 = value.clone(),
                None => env.push((name.clone(), value.clone())),
            }
        }
        env.push(("WAVELINK_FUNCTION".to_owned(), launch.function.to_string()));
        env.push(("WAVELINK_INSTANCE_ID".to_owned(), id.clone()));
        if launch.socket_activation {
            env.push(("LISTEN_FDS".to_owned(), "1".to_owned()));
        } else {
            env.push(("HOST".to_owned(), "127.0.0.1".to_owned()));
            env.push(("PORT".to_owned(), addr.port().to_string()));
        }
        let plan = Plan {
            program,
            args,
            env: &env,
            listen_fd: launch.socket_activation.then(|| listener.as_raw_fd()),
            credentials: self.run_as.as_ref().map(|r| (r.uid, r.gid)),
            die_with_parent: self.die_with_parent,
            cgroup_procs: None,
        };
        if !launch.socket_activation {
            // The instance binds the port itself.
            drop(listener);
            return self.start(&plan, id, addr);
        }
        let process = self.start(&plan, id, addr);
        // The instance has its own copy of the socket now (or failed to start).
        drop(listener);
        process
    }

    fn start(&self, plan: &Plan<'_>, id: String, addr: SocketAddr) -> Result<Process, SpawnError> {
        let cgroup = self.cgroups.as_ref().and_then(|cgroups| match cgroups.take() {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                warn!(instance = %id, error = %e, "no memory limit for this instance");
                None
            }
        });
        let procs = cgroup.as_ref().map(|c| c.procs());
        let plan = Plan { cgroup_procs: procs.as_deref(), ..*plan };
        let pid = match spawn::spawn(&plan) {
            Ok(pid) => pid,
            Err(source) => {
                if let (Some(cgroup), Some(cgroups)) = (cgroup, &self.cgroups) {
                    cgroups.release(cgroup);
                }
                return Err(SpawnError::Exec { program: plan.program.display().to_string(), source });
            }
        };
        let start_ticks = start_ticks(pid).unwrap_or(0);
        Ok(Process { id, pid, addr, started: Instant::now(), start_ticks, cgroup, child: true, reaped: false })
    }

    /// Kills the instance's whole process group and reaps it. Blocks until the main process is
    /// gone (immediately after SIGKILL), so call it off the request path.
    pub fn destroy(&self, mut process: Process) {
        let _ = killpg(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
        if !process.reaped && process.child {
            spawn::wait(process.pid, true);
        } else if !process.reaped {
            // Not ours to reap: its new parent does; wait until it is gone.
            let deadline = Instant::now() + ADOPTED_EXIT_LIMIT;
            while crate::procfs::running(process.pid, process.start_ticks) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let (Some(cgroup), Some(cgroups)) = (process.cgroup.take(), &self.cgroups) {
            // Whatever the instance started that left its process group dies with it.
            cgroup.kill_all(cgroups.version());
            cgroups.release(cgroup);
        }
    }
}

/// Variables the platform sets for every instance; a function's own `env` cannot replace them.
const PLATFORM_ENV: [&str; 6] =
    ["WAVELINK_FUNCTION", "WAVELINK_INSTANCE_ID", "LISTEN_FDS", "LISTEN_PID", "HOST", "PORT"];

/// Polls until `addr` accepts connections (for instances started without socket activation),
/// giving up after `timeout` or as soon as `alive` says the instance is gone.
pub async fn wait_listening(addr: SocketAddr, timeout: Duration, alive: impl Fn() -> bool) -> bool {
    poll_until_accepted(|| async move { tokio::net::TcpStream::connect(addr).await.is_ok() }, timeout, alive).await
}

/// Calls `connect` (200 µs apart, doubling to 10 ms) until it succeeds; `false` after `timeout`
/// or as soon as `alive` says the instance is gone. Shared by both runtimes' readiness waits.
pub async fn poll_until_accepted<F: Future<Output = bool>>(
    connect: impl Fn() -> F,
    timeout: Duration,
    alive: impl Fn() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    while tokio::time::Instant::now() < deadline {
        if connect().await {
            return true;
        }
        if !alive() {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_of_this_process_are_stable_and_of_a_missing_one_absent() {
        let me = std::process::id();
        assert!(start_ticks(me).is_some());
        assert_eq!(start_ticks(me), start_ticks(me));
        assert_eq!(start_ticks(u32::MAX - 1), None);
        assert!(resident_bytes(me) > 0);
        assert_eq!(resident_bytes(u32::MAX - 1), 0);
    }

    #[test]
    fn ports_come_from_the_range_in_turn_skipping_busy_ones() {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let range = PortRange::new(port, port.saturating_add(2)).unwrap();
        let first = range.bind().unwrap();
        assert_ne!(first.local_addr().unwrap().port(), port, "the busy port is skipped");
        assert!((port..=port + 2).contains(&first.local_addr().unwrap().port()));
        assert!(PortRange::new(30000, 29999).is_err());
        assert!(PortRange::new(0, 10).is_err());
    }

    #[test]
    fn unknown_users_are_reported() {
        assert!(RunAs::lookup("no-such-user-wavelink").is_err());
        assert_eq!(RunAs::lookup("root").map(|r| r.uid), Ok(0));
    }
}
