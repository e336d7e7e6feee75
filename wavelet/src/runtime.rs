//! The `process` instance runtime: a function command as a process group on this node.
//!
//! With socket activation (the default) the Wavelet binds the instance's listening socket itself
//! and hands it over as fd 3 (`LISTEN_FDS=1`), so the request that caused the spawn can be
//! forwarded at once and wait in the kernel backlog while the process starts. Without it the
//! instance gets `HOST`/`PORT` and the Wavelet polls until the port accepts.
//!
//! Every instance: its own process group (killed as a whole), a clean environment, no inherited
//! descriptors but fd 3, SIGKILL if the Wavelet dies (`PR_SET_PDEATHSIG`), an unprivileged user
//! when the Wavelet runs as root, and a memory cgroup where the kernel lets us.

// `pre_exec` is the only way to dup2 the listener onto fd 3 and set the parent-death signal
// between fork and exec; the closure below only makes async-signal-safe system calls.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::warn;
use wavelink_core::FunctionId;

use crate::cgroup::{Cgroup, Cgroups};

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
    child: Child,
}

impl Process {
    /// `Some` once the process has exited (it is reaped then).
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

pub struct ProcessRuntime {
    run_as: Option<RunAs>,
    cgroups: Option<Cgroups>,
    /// What `wavelink` in a function's command means: this very binary.
    self_exe: PathBuf,
    next: AtomicU64,
}

impl ProcessRuntime {
    pub fn new(run_as: Option<RunAs>, cgroups: Option<Cgroups>) -> std::io::Result<Self> {
        Ok(ProcessRuntime { run_as, cgroups, self_exe: std::env::current_exe()?, next: AtomicU64::new(0) })
    }

    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    pub fn memory_limited(&self) -> bool {
        self.cgroups.is_some()
    }

    /// Starts an instance. Returns as soon as the process exists: with socket activation it can
    /// take requests at once (they wait in the backlog); without, wait for [`wait_listening`].
    pub fn spawn(&self, launch: &Launch<'_>) -> Result<Process, SpawnError> {
        let (program, args) = launch.command.split_first().ok_or(SpawnError::NoCommand)?;
        let id = format!("ei-{}-{}", std::process::id(), self.next.fetch_add(1, Relaxed));
        let listener = TcpListener::bind("127.0.0.1:0").map_err(SpawnError::Bind)?;
        let addr = listener.local_addr().map_err(SpawnError::Bind)?;

        let program_path: OsString =
            if program == "wavelink" { self.self_exe.clone().into_os_string() } else { program.into() };
        let mut command = Command::new(&program_path);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("WAVELINK_FUNCTION", launch.function.to_string())
            .env("WAVELINK_INSTANCE_ID", &id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        if let Some(run_as) = &self.run_as {
            command.uid(run_as.uid).gid(run_as.gid);
        }
        let listen_fd = if launch.socket_activation {
            command.env("LISTEN_FDS", "1");
            listener.as_raw_fd()
        } else {
            command.env("HOST", "127.0.0.1").env("PORT", addr.port().to_string());
            -1
        };
        // SAFETY: between fork and exec the closure only calls async-signal-safe functions
        // (getppid, dup2, fcntl, close_range, prctl) and allocates nothing.
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            command.pre_exec(move || {
                if listen_fd >= 0 {
                    // dup2 clears close-on-exec on the copy; a listener already at fd 3 needs
                    // the flag cleared by hand.
                    let result =
                        if listen_fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(listen_fd, 3) };
                    if result < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Nothing else is inherited: mark every other descriptor close-on-exec (std's own
                // error pipe must stay open until exec, so close-on-exec rather than close).
                libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                // Die with the Wavelet; if it already died, do not start at all.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 || libc::getppid() != parent
                {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        if !launch.socket_activation {
            // The instance binds the port itself.
            drop(listener);
            return self.start(command, id, addr, program);
        }
        let process = self.start(command, id, addr, program);
        // The instance has its own copy of the socket now (or failed to start).
        drop(listener);
        process
    }

    fn start(&self, mut command: Command, id: String, addr: SocketAddr, program: &str) -> Result<Process, SpawnError> {
        let child = command.spawn().map_err(|source| SpawnError::Exec { program: program.to_owned(), source })?;
        let pid = child.id();
        let cgroup = self.cgroups.as_ref().and_then(|cgroups| match cgroups.attach(&id, pid) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                warn!(instance = %id, error = %e, "no memory limit for this instance");
                None
            }
        });
        let start_ticks = start_ticks(pid).unwrap_or(0);
        Ok(Process { id, pid, addr, started: Instant::now(), start_ticks, cgroup, child })
    }

    /// Kills the instance's whole process group and reaps it. Blocks until the main process is
    /// gone (immediately after SIGKILL), so call it off the request path.
    pub fn destroy(&self, mut process: Process) {
        let _ = killpg(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
        let _ = process.child.wait();
        if let Some(cgroup) = process.cgroup.take() {
            cgroup.remove();
        }
    }
}

/// Polls until `addr` accepts connections (for instances started without socket activation).
pub async fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
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
    fn unknown_users_are_reported() {
        assert!(RunAs::lookup("no-such-user-wavelink").is_err());
        assert_eq!(RunAs::lookup("root").map(|r| r.uid), Ok(0));
    }
}
