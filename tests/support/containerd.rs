//! The containerd tests' fixture: a private containerd (`wavelink_wavelet::containerd::private`:
//! own root, state and socket in a temporary directory; the machine's containerd, if any, is
//! never touched), a namespace of the test's own with the `wavelink-fn` image built by
//! `wavelink image` imported, and `ctr` to look inside. Dropping it removes every task,
//! container and snapshot, then stops containerd.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use wavelink_wavelet::containerd::private::{self, PrivateContainerd};

use super::{PATIENCE, TempDir};

/// The image every containerd test runs: `wavelink-fn` plus busybox (a shell for tests that
/// look around from inside an instance).
pub const IMAGE: &str = "localhost/wavelink-fn-test:1";

pub struct TestContainerd {
    pub namespace: String,
    pub socket: PathBuf,
    // Dropped first (fields drop in order): containerd, then its directory.
    containerd: PrivateContainerd,
    _dir: TempDir,
}

/// Starts a private containerd with the test image imported, or says why the test is skipped.
pub fn containerd(test: &str) -> Option<TestContainerd> {
    let missing_busybox = private::which("busybox").is_none().then(|| "busybox is not installed".to_owned());
    if let Some(why) = private::unavailable().or(missing_busybox) {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    let dir = TempDir::new("containerd");
    // Named relative to the working directory, as `wavelink experiment --out target/...` names
    // it: containerd must still find its root and state.
    let containerd =
        PrivateContainerd::start(&relative_to_cwd(&dir.0)).unwrap_or_else(|e| panic!("private containerd: {e}"));
    let namespace = format!("wl-test-{:06x}", super::nonce() & 0xff_ffff);
    containerd.import(&namespace, image_tar()).unwrap_or_else(|e| panic!("importing the test image: {e}"));
    Some(TestContainerd { namespace, socket: containerd.socket.clone(), containerd, _dir: dir })
}

/// `path` (absolute) as a path relative to the working directory (`../..` up to the root).
fn relative_to_cwd(path: &Path) -> PathBuf {
    let Ok(cwd) = std::env::current_dir() else { return path.to_owned() };
    let up = cwd.components().filter(|c| matches!(c, std::path::Component::Normal(_))).count();
    let mut relative: PathBuf = std::iter::repeat_n("..", up).collect();
    relative.extend(path.components().filter(|c| matches!(c, std::path::Component::Normal(_))));
    relative
}

/// The test image, built once per test binary run, in cargo's temporary directory for tests
/// under one name per test binary (a later run replaces it: nothing accumulates in /tmp).
pub fn image_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let binary = std::env::current_exe().ok().and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()));
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("wavelink-test-image-{}.tar", binary.as_deref().unwrap_or("tests")));
        let busybox = private::which("busybox").expect("busybox");
        let status = super::wavelink()
            .args(["image", "--name", IMAGE, "--program", env!("CARGO_BIN_EXE_wavelink-fn"), "--out"])
            .arg(&path)
            .args(["--file", &format!("{}:/bin/busybox", busybox.display()), "--env", "FN_IMAGE_ONLY=yes"])
            .stdout(Stdio::null())
            .status()
            .expect("wavelink image");
        assert!(status.success(), "wavelink image failed");
        path
    })
}

impl TestContainerd {
    /// Runs `ctr` in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.containerd.ctr(&self.namespace, args).expect("running ctr")
    }

    /// Stops containerd's daemon alone (its shims and containers keep running).
    pub fn stop_daemon(&mut self) {
        self.containerd.stop_daemon();
    }

    pub fn restart_daemon(&mut self) {
        self.containerd.restart_daemon().unwrap_or_else(|e| panic!("restarting containerd: {e}"));
    }

    pub fn containers(&self) -> Vec<String> {
        self.containerd.list(&self.namespace, "containers", None)
    }

    pub fn tasks(&self) -> Vec<String> {
        self.containerd.list(&self.namespace, "tasks", None)
    }

    /// Active snapshots (instances' root file systems); the image's committed layers are not
    /// counted.
    pub fn active_snapshots(&self) -> Vec<String> {
        self.containerd.list(&self.namespace, "snapshots", Some("Active"))
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
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        // The containers first, then the instances' parent cgroup in every hierarchy (runc
        // removes only the leaves).
        self.containerd.remove_everything();
        let parent = format!("wavelink-test-{}", self.namespace);
        let base = Path::new("/sys/fs/cgroup");
        let _ = std::fs::remove_dir(base.join(&parent));
        for hierarchy in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join(&parent));
        }
    }
}
