//! A private containerd for tests: its own root, state and socket in a temporary directory (the
//! machine's containerd, if any, is never touched), the `wavelink-fn` image built by
//! `wavelink image` and imported, and `ctr` to look inside. Dropping it removes every task,
//! container and snapshot, then stops containerd.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{PATIENCE, Proc, TempDir, wait_until};

/// The image every containerd test runs: `wavelink-fn` plus busybox (a shell for tests that
/// look around from inside an instance).
pub const IMAGE: &str = "localhost/wavelink-fn-test:1";

pub struct PrivateContainerd {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub namespace: String,
    proc: Option<Proc>,
}

/// Why containerd cannot run here, or `None` when it can.
fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("containerd tests need root".into());
    }
    for program in ["containerd", "ctr", "runc", "busybox"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("{program} is not installed (scripts/deps.sh test installs it)"));
        }
    }
    None
}

/// Starts a private containerd with the test image imported, or says why the test is skipped.
pub fn containerd(test: &str) -> Option<PrivateContainerd> {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    let dir = TempDir::new("containerd");
    let root = &dir.0;
    let socket = root.join("containerd.sock");
    let config = format!(
        "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = \"{s}\"\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{r}/opt\"\n",
        r = root.display(),
        s = socket.display()
    );
    std::fs::write(root.join("config.toml"), config).expect("containerd config");
    let log = std::fs::File::create(root.join("containerd.log")).expect("log");
    let mut command = Command::new("containerd");
    command.arg("--config").arg(root.join("config.toml")).stdout(Stdio::null()).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let proc = Proc::spawn("containerd", &mut command);
    let namespace = format!("wl-test-{:06x}", super::nonce() & 0xff_ffff);
    let containerd = PrivateContainerd { dir, socket, namespace, proc: Some(proc) };
    wait_until("containerd answers", || containerd.ctr(&["version"]).status.success());
    let imported = containerd.ctr(&["images", "import", image_tar().to_str().expect("path")]);
    assert!(imported.status.success(), "importing the test image: {}", String::from_utf8_lossy(&imported.stderr));
    Some(containerd)
}

/// The test image, built once per test binary.
pub fn image_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("wavelink-test-image-{}.tar", std::process::id()));
        let busybox = Command::new("sh").args(["-c", "command -v busybox"]).output().expect("busybox");
        let busybox = String::from_utf8_lossy(&busybox.stdout).trim().to_owned();
        let status = super::wavelink()
            .args(["image", "--name", IMAGE, "--program", env!("CARGO_BIN_EXE_wavelink-fn"), "--out"])
            .arg(&path)
            .args(["--file", &format!("{busybox}:/bin/busybox"), "--env", "FN_IMAGE_ONLY=yes"])
            .stdout(Stdio::null())
            .status()
            .expect("wavelink image");
        assert!(status.success(), "wavelink image failed");
        path
    })
}

impl PrivateContainerd {
    /// Runs `ctr` against this containerd, in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ctr")
    }

    /// The first column of a `ctr ... ls` listing, header skipped.
    fn ids(&self, what: &str) -> Vec<String> {
        let out = self.ctr(&[what, "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    pub fn containers(&self) -> Vec<String> {
        self.ids("containers")
    }

    pub fn tasks(&self) -> Vec<String> {
        self.ids("tasks")
    }

    /// Active snapshots (instances' root file systems); the image's committed layers are not
    /// counted.
    pub fn active_snapshots(&self) -> Vec<String> {
        let out = self.ctr(&["snapshots", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|l| l.contains("Active"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Runs `args` inside the running container `id` (as root there), with a time limit.
    pub fn exec(&self, id: &str, args: &[&str]) -> Output {
        let exec_id = format!("t{:06x}", super::nonce() & 0xff_ffff);
        let mut all = vec!["tasks", "exec", "--exec-id", &exec_id, id];
        all.extend_from_slice(args);
        let started = Instant::now();
        let output = self.ctr(&all);
        assert!(started.elapsed() < PATIENCE, "exec in {id} took {:?}", started.elapsed());
        output
    }

    /// Arguments that make a Wavelet use this containerd.
    pub fn wavelet_args(&self) -> Vec<String> {
        vec![
            "--runtime".into(),
            "containerd".into(),
            "--containerd-socket".into(),
            self.socket.display().to_string(),
            "--containerd-namespace".into(),
            self.namespace.clone(),
            "--cgroup-parent".into(),
            format!("/wavelink-test-{}", self.namespace),
        ]
    }

    /// Removes every task, container and instance snapshot in the namespace.
    pub fn remove_everything(&self) {
        for task in self.tasks() {
            let _ = self.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", &task]);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for task in self.tasks() {
            while Instant::now() < deadline && !self.ctr(&["tasks", "delete", &task]).status.success() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for container in self.containers() {
            let _ = self.ctr(&["containers", "delete", &container]);
        }
        for snapshot in self.active_snapshots() {
            let _ = self.ctr(&["snapshots", "remove", &snapshot]);
        }
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.remove_everything();
        if let Some(mut proc) = self.proc.take() {
            proc.signal(nix::sys::signal::Signal::SIGTERM);
            proc.wait_timeout(Duration::from_secs(10));
        }
        // The instances' parent cgroup, in every hierarchy (runc removes only the leaves).
        let parent = format!("wavelink-test-{}", self.namespace);
        for base in ["/sys/fs/cgroup"].iter().map(Path::new) {
            let _ = std::fs::remove_dir(base.join(&parent));
            for hierarchy in std::fs::read_dir(base).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(hierarchy.path().join(&parent));
            }
        }
        // Whatever is still mounted under the root would keep the directory from going.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.dir.0.display().to_string();
            for target in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(&root)) {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
