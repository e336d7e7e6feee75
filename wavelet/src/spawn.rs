//! Starting a process without copying the Wavelet: `clone(CLONE_VM | CLONE_VFORK)`, as glibc's
//! `posix_spawn` does, but with what `posix_spawn` cannot do (switching user, the parent-death
//! signal, marking every inherited descriptor close-on-exec).
//!
//! A profile of the Wavelet starting instances with `fork` put 29% of its CPU in copying its page
//! tables and 15% in the copy-on-write faults it took afterwards. With `CLONE_VM` the child
//! borrows the parent's memory and the parent waits until the child has called `execve`, so
//! there is nothing to copy. The price is discipline: everything the child needs is prepared
//! before the clone, and the child makes only raw system calls (no allocation, no locks, no
//! glibc wrappers that touch process-wide state such as `setuid`'s thread broadcast).

// The clone child and the raw system calls it makes are unavoidably unsafe; the module exposes a
// safe function whose inputs are checked before anything unsafe happens.
#![allow(unsafe_code)]

use std::ffi::{CString, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What to start.
pub struct Plan<'a> {
    /// Absolute path, or a name searched in `PATH` of `env`.
    pub program: &'a Path,
    /// Arguments after the program name.
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    /// Handed over as fd 3.
    pub listen_fd: Option<RawFd>,
    /// `(uid, gid)` to switch to; supplementary groups are dropped.
    pub credentials: Option<(u32, u32)>,
    /// SIGKILL when the parent dies (Emergency Instances, a stack's components); a Regular
    /// Instance of the local backend outlives a controller that crashes, as a pod would.
    pub die_with_parent: bool,
    /// The `cgroup.procs` file the child moves itself into before anything else, so that
    /// nothing it runs or starts is ever outside its limits.
    pub cgroup_procs: Option<&'a Path>,
}

/// Child stack size: the child only makes system calls.
const STACK_SIZE: usize = 64 * 1024;

/// Everything the child reads, built before the clone. `err` is the one thing it writes.
struct Child {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    dev_null: RawFd,
    listen_fd: RawFd,
    credentials: Option<(libc::uid_t, libc::gid_t)>,
    die_with_parent: bool,
    /// NUL-terminated path, or null.
    cgroup_procs: *const libc::c_char,
    parent: libc::pid_t,
    mask: libc::sigset_t,
    err: c_int,
}

/// Starts the process in its own process group, stdin and stdout on /dev/null, stderr shared,
/// fd 3 the given listener, nothing else inherited, killed if the parent dies when asked.
/// Returns its pid.
pub fn spawn(plan: &Plan<'_>) -> io::Result<u32> {
    let program = resolve(plan.program, plan.env)?;
    let program = CString::new(program.as_os_str().as_bytes())?;
    let cstrings = |items: Vec<Vec<u8>>| items.into_iter().map(CString::new).collect::<Result<Vec<_>, _>>();
    let argv_owned = cstrings(
        std::iter::once(plan.program.as_os_str().as_bytes().to_vec())
            .chain(plan.args.iter().map(|a| a.as_bytes().to_vec()))
            .collect(),
    )?;
    let envp_owned = cstrings(plan.env.iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect())?;
    let pointers = |strings: &[CString]| {
        strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect::<Vec<_>>()
    };
    let cgroup_procs = plan.cgroup_procs.map(|path| CString::new(path.as_os_str().as_bytes())).transpose()?;
    let dev_null = std::fs::File::options().read(true).write(true).open("/dev/null")?;
    let mut stack = vec![0u8; STACK_SIZE];
    let mut child = Child {
        argv: pointers(&argv_owned),
        envp: pointers(&envp_owned),
        program,
        dev_null: dev_null.as_raw_fd(),
        listen_fd: plan.listen_fd.unwrap_or(-1),
        credentials: plan.credentials,
        die_with_parent: plan.die_with_parent,
        cgroup_procs: cgroup_procs.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        // SAFETY: an all-zero sigset_t is a valid (empty) set; it is overwritten below.
        mask: unsafe { std::mem::zeroed() },
        err: 0,
    };
    // SAFETY: the stack is ours and outlives the child (the parent resumes only once the child
    // has exec'd or exited, CLONE_VFORK); `child` and the strings it points into live until
    // after that too. Signals are blocked around the clone so no handler of the parent runs on
    // the child's stack before the child resets them.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut child.mask);
        // The stack grows down; keep the top 16-byte aligned.
        let top = (stack.as_mut_ptr().add(STACK_SIZE) as usize & !15) as *mut c_void;
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut child as *mut Child as *mut c_void,
        );
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &child.mask, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        pid
    };
    drop(dev_null);
    if child.err != 0 {
        // The child failed before exec and exited (CLONE_VFORK resumed us after its `_exit`):
        // reap it, waiting, so no zombie is left behind.
        let _ = wait(pid as u32, true);
        return Err(io::Error::from_raw_os_error(child.err));
    }
    Ok(pid as u32)
}

/// The child: raw system calls only, then exec. Never returns on success.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Child`, alive and not touched by the parent until we exec
    // or exit; every call below is a plain system call on values prepared by the parent.
    unsafe {
        let child = &mut *(arg as *mut Child);
        let fail = |child: &mut Child| -> c_int {
            child.err = *libc::__errno_location();
            if child.err == 0 {
                child.err = libc::EINVAL;
            }
            libc::_exit(127)
        };
        // Handlers live in the parent's memory: back to defaults (SIGPIPE too, which Rust
        // ignores in its own processes) before signals are unblocked.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                // glibc's sigaction is a plain wrapper (posix_spawn's child uses it too); it
                // refuses glibc's internal signals, which is fine.
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        if !child.cgroup_procs.is_null() {
            // "0" is the writing process itself (cgroup v1 and v2).
            let fd = libc::open(child.cgroup_procs, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr() as *const c_void, 1) != 1 {
                return fail(child);
            }
            libc::close(fd);
        }
        if libc::setpgid(0, 0) < 0 || libc::dup2(child.dev_null, 0) < 0 || libc::dup2(child.dev_null, 1) < 0 {
            return fail(child);
        }
        if child.listen_fd >= 0 {
            // dup2 clears close-on-exec on the copy; a listener already at fd 3 needs the flag
            // cleared by hand.
            let result =
                if child.listen_fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(child.listen_fd, 3) };
            if result < 0 {
                return fail(child);
            }
        }
        // Nothing else is inherited.
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
        if let Some((uid, gid)) = child.credentials {
            // Raw calls: glibc's wrappers would signal the parent's threads to change their ids.
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setgid, gid) < 0
                || libc::syscall(libc::SYS_setuid, uid) < 0
            {
                return fail(child);
            }
        }
        // Die with the Wavelet; if it is already gone, do not start at all.
        if child.die_with_parent
            && (libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0
                || libc::getppid() != child.parent)
        {
            *libc::__errno_location() = libc::ESRCH;
            return fail(child);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &child.mask, std::ptr::null_mut());
        libc::execve(child.program.as_ptr(), child.argv.as_ptr(), child.envp.as_ptr());
        fail(child)
    }
}

/// A program name without a slash is looked up in the `PATH` of the child's environment.
fn resolve(program: &Path, env: &[(String, String)]) -> io::Result<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return Ok(program.to_owned());
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            let c = CString::new(candidate.as_os_str().as_bytes());
            // SAFETY: access() only reads the NUL-terminated path.
            c.is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{} not found in PATH", program.display())))
}

/// Reaps the child: `Some(exit status word)` once it has exited; with `block`, waits for it.
pub fn wait(pid: u32, block: bool) -> Option<i32> {
    let mut status = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: waitpid writes the status into our local.
        let result = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, flags) };
        match result {
            r if r == pid as libc::pid_t => return Some(status),
            -1 if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            // Not exited yet (0), or not our child any more (-1: already reaped).
            0 => return None,
            _ => return Some(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn env() -> Vec<(String, String)> {
        vec![("PATH".into(), std::env::var("PATH").unwrap_or_default()), ("MARK".into(), "on".into())]
    }

    fn run(args: &[&str], listen_fd: Option<RawFd>) -> i32 {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env = env();
        let plan = Plan {
            program: Path::new("sh"),
            args: &args,
            env: &env,
            listen_fd,
            credentials: None,
            die_with_parent: true,
            cgroup_procs: None,
        };
        let pid = spawn(&plan).expect("spawn");
        let status = wait(pid, true).expect("exited");
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn runs_the_program_with_its_arguments_and_environment() {
        assert_eq!(run(&["-c", "exit 7"], None), 7);
        assert_eq!(run(&["-c", "test \"$MARK\" = on && test \"$0\" = sh"], None), 0);
    }

    #[test]
    fn the_child_leads_its_own_group_with_only_stdio_and_fd_3() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let env = env();
        let args = vec!["30".to_owned()];
        let plan = Plan {
            program: Path::new("sleep"),
            args: &args,
            env: &env,
            listen_fd: Some(listener.as_raw_fd()),
            credentials: None,
            die_with_parent: true,
            cgroup_procs: None,
        };
        let pid = spawn(&plan).unwrap();
        let read_fds = || -> std::collections::BTreeMap<String, String> {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
                .map(|fd| {
                    let target = std::fs::read_link(fd.path()).unwrap_or_default();
                    (fd.file_name().to_string_lossy().into_owned(), target.to_string_lossy().into_owned())
                })
                .collect()
        };
        // The parent resumes as exec begins, slightly before the kernel closes the
        // close-on-exec descriptors; give it a moment to finish.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut fds = read_fds();
        while fds.len() > 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            fds = read_fds();
        }
        let pgrp = crate::procfs::stat(pid).expect("the child's stat").pgrp;
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        wait(pid, true);
        assert_eq!(fds.keys().map(String::as_str).collect::<Vec<_>>(), ["0", "1", "2", "3"], "{fds:?}");
        assert_eq!(fds["0"], "/dev/null");
        assert_eq!(fds["1"], "/dev/null");
        assert!(fds["3"].starts_with("socket:"), "{fds:?}");
        assert_eq!(pgrp, pid);
    }

    #[test]
    fn a_program_that_cannot_start_is_an_error_not_a_child() {
        let env = env();
        for program in ["/nonexistent/program", "no-such-program-wavelink"] {
            let plan = Plan {
                program: Path::new(program),
                args: &[],
                env: &env,
                listen_fd: None,
                credentials: None,
                die_with_parent: true,
                cgroup_procs: None,
            };
            let error = spawn(&plan).expect_err(program);
            assert_eq!(error.kind(), io::ErrorKind::NotFound, "{program}: {error}");
        }
        let not_executable = std::env::temp_dir().join(format!("wavelink-spawn-test-{}", std::process::id()));
        std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
        let plan = Plan {
            program: &not_executable,
            args: &[],
            env: &env,
            listen_fd: None,
            credentials: None,
            die_with_parent: true,
            cgroup_procs: None,
        };
        let error = spawn(&plan).expect_err("not executable");
        std::fs::remove_file(&not_executable).unwrap();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
    }

    #[test]
    fn credentials_are_switched_when_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let args = vec!["-c".to_owned(), "test \"$(id -u)\" = 65534 && test \"$(id -G)\" = 65534".to_owned()];
        let env = env();
        let plan = Plan {
            program: Path::new("sh"),
            args: &args,
            env: &env,
            listen_fd: None,
            credentials: Some((65534, 65534)),
            die_with_parent: true,
            cgroup_procs: None,
        };
        let pid = spawn(&plan).unwrap();
        let status = wait(pid, true).unwrap();
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
