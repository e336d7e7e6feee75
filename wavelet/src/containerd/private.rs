//! A private containerd: its own root, state and socket in a directory of the caller's, for
//! tests, experiments and benchmarks on a machine whose own containerd (if any) must not be
//! touched. Driven with `ctr`, containerd's own client. Stopping it removes every task,
//! container and instance snapshot first, so nothing outlives it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("containerd did not answer within {0:?} (its log: {1})")]
    NotReady(Duration, PathBuf),
    #[error("ctr {args}: {stderr}")]
    Ctr { args: String, stderr: String },
}

pub struct PrivateContainerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

/// Why a private containerd cannot run on this machine, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("containerd needs root".into());
    }
    ["containerd", "ctr", "runc"]
        .into_iter()
        .find(|program| which(program).is_none())
        .map(|program| format!("{program} is not installed (scripts/deps.sh test installs it)"))
}

/// The path of `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

impl PrivateContainerd {
    /// Starts containerd with everything under `dir` and waits until it answers. The CRI plugin
    /// is off (nothing here needs kubelet's API, and it would look for CNI).
    pub fn start(dir: &Path) -> Result<PrivateContainerd, PrivateError> {
        if let Some(why) = unavailable() {
            return Err(PrivateError::Unavailable(why));
        }
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| PrivateError::Io { what, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating the containerd directory"))?;
        // containerd hands its root and state to shims that run elsewhere: a relative path (say
        // `--out target/experiment`) would name another directory there.
        let dir = &std::fs::canonicalize(dir).map_err(io("resolving the containerd directory"))?;
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{s}\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{r}/opt\"\n",
            r = dir.display(),
            s = socket.display()
        );
        std::fs::write(dir.join("config.toml"), config).map_err(io("writing containerd's config"))?;
        let mut containerd = PrivateContainerd { dir: dir.to_owned(), socket, child: None };
        containerd.restart_daemon()?;
        Ok(containerd)
    }

    /// Starts the daemon (again, after [`Self::stop_daemon`]) and waits until it answers.
    pub fn restart_daemon(&mut self) -> Result<(), PrivateError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| PrivateError::Io { what, source }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .map_err(io("opening containerd's log"))?;
        let mut command = Command::new("containerd");
        command
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        self.child = Some(command.spawn().map_err(io("starting containerd"))?);
        let limit = Duration::from_secs(30);
        let deadline = Instant::now() + limit;
        while !self.ctr("default", &["version"]).is_ok_and(|o| o.status.success()) {
            if Instant::now() > deadline {
                return Err(PrivateError::NotReady(limit, self.dir.join("containerd.log")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the daemon alone (SIGTERM), as a crash or an upgrade of containerd would: shims and
    /// their containers keep running.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `ctr` against this containerd in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> std::io::Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs `ctr`, failing with its error output unless it succeeds.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> Result<String, PrivateError> {
        let output =
            self.ctr(namespace, args).map_err(|source| PrivateError::Io { what: "running ctr".into(), source })?;
        if !output.status.success() {
            return Err(PrivateError::Ctr {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Imports an OCI image layout tar (as `wavelink image` writes) into `namespace`, unpacked.
    pub fn import(&self, namespace: &str, tar: &Path) -> Result<(), PrivateError> {
        self.ctr_ok(namespace, &["images", "import", &tar.display().to_string()]).map(|_| ())
    }

    /// The first column of `ctr <what> ls` in `namespace`, header skipped; with `only`, rows
    /// containing it.
    pub fn list(&self, namespace: &str, what: &str, only: Option<&str>) -> Vec<String> {
        let out = self.ctr(namespace, &[what, "ls"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        out.unwrap_or_default()
            .lines()
            .skip(1)
            .filter(|l| only.is_none_or(|o| l.contains(o)))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Namespaces that exist in this containerd.
    pub fn namespaces(&self) -> Vec<String> {
        let out =
            self.ctr("default", &["namespaces", "ls", "-q"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        out.unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// Removes every task, container and instance (active) snapshot in every namespace.
    pub fn remove_everything(&self) {
        for namespace in self.namespaces() {
            let ns = namespace.as_str();
            for task in self.list(ns, "tasks", None) {
                let _ = self.ctr(ns, &["tasks", "kill", "--all", "--signal", "SIGKILL", &task]);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            for task in self.list(ns, "tasks", None) {
                while Instant::now() < deadline
                    && !self.ctr(ns, &["tasks", "delete", &task]).is_ok_and(|o| o.status.success())
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            for container in self.list(ns, "containers", None) {
                let _ = self.ctr(ns, &["containers", "delete", &container]);
            }
            for snapshot in self.list(ns, "snapshots", Some("Active")) {
                let _ = self.ctr(ns, &["snapshots", "remove", &snapshot]);
            }
        }
    }
}

impl PrivateContainerd {
    /// Removes everything until nothing is left twice in a row (a create that was under way
    /// when a client died finishes inside containerd a moment later), at most a few seconds.
    fn remove_until_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut quiet = 0;
        while quiet < 2 && Instant::now() < deadline {
            let left = self
                .namespaces()
                .iter()
                .any(|ns| !self.list(ns, "tasks", None).is_empty() || !self.list(ns, "containers", None).is_empty());
            if left {
                quiet = 0;
                self.remove_everything();
            } else {
                quiet += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Shims of this containerd that outlived it (shims are separate processes by design), and
    /// the containers they ran: killed, so nothing of this containerd runs on.
    fn kill_stray_shims(&self) {
        let socket = self.socket.display().to_string();
        let stats: Vec<(u32, crate::procfs::ProcStat)> =
            crate::procfs::pids().into_iter().filter_map(|pid| crate::procfs::stat(pid).map(|s| (pid, s))).collect();
        for pid in crate::procfs::pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_our_shim = String::from_utf8_lossy(&cmdline).contains("containerd-shim")
                && cmdline.split(|b| *b == 0).any(|arg| arg == socket.as_bytes());
            if !is_our_shim {
                continue;
            }
            for (child, _) in stats.iter().filter(|(_, s)| s.ppid == pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*child as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.remove_until_empty();
        self.stop_daemon();
        self.kill_stray_shims();
        // Whatever is still mounted under the directory would keep it from being removed.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.display().to_string();
            for target in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(&root)) {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
