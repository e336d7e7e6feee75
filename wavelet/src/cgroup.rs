//! Memory limits for instances with cgroups, where the kernel lets us.
//!
//! Each instance gets its own memory cgroup below this process's:
//! `<own>/wavelink-instances/pid-<pid>/instance-<n>`, one subtree per process running instances
//! (Wavelets, the local backend), so several can share a node.
//! A destroyed instance's empty cgroup is kept for the next one (creating and removing one cost
//! a twelfth of the Wavelet's CPU per instance in a profile); subtrees of Wavelets that are no
//! longer running are removed at start-up.
//! cgroup v1 (a `memory` hierarchy) needs only write access. cgroup v2 also needs the memory
//! controller enabled for the subtree, which a cgroup holding processes cannot do ("no internal
//! processes"), so the Wavelet first moves itself into a leaf `<own>/wavelink-agent`, as a
//! delegated systemd service would. Any step that fails disables limits with the reason.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

/// Directory under this process's cgroup that holds the instances' cgroups.
const BASE: &str = "wavelink-instances";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
    version: Version,
    memory_max: u64,
    /// Empty cgroups of destroyed instances, ready for new ones.
    free: Mutex<Vec<Cgroup>>,
    next: AtomicU64,
}

/// One instance's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroups {
    /// Prepares per-instance memory cgroups limited to `memory_max` bytes.
    pub fn setup(memory_max: u64) -> Result<Cgroups, String> {
        let membership =
            fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
        let (version, own) = own_memory_cgroup(&membership, Path::new("/sys/fs/cgroup"))
            .ok_or("no writable memory cgroup hierarchy (neither a v1 memory controller nor v2 with memory)")?;
        let shared = own.join(BASE);
        let base = shared.join(format!("pid-{}", std::process::id()));
        if version == Version::V2 {
            enable_v2_memory(&own)
                .map_err(|e| format!("enabling the v2 memory controller under {}: {e}", own.display()))?;
        }
        for dir in [&shared, &base] {
            create_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            if version == Version::V2 {
                fs::write(dir.join("cgroup.subtree_control"), "+memory")
                    .map_err(|e| format!("enabling memory in {}: {e}", dir.display()))?;
            }
        }
        remove_departed_wavelets(&shared);
        let cgroups = Cgroups { base, version, memory_max, free: Mutex::new(Vec::new()), next: AtomicU64::new(0) };
        // Prove it works end to end before promising limits (the cgroup is then kept for reuse).
        let probe = cgroups.create()?;
        cgroups.free.lock().push(probe);
        Ok(cgroups)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    fn create(&self) -> Result<Cgroup, String> {
        let path = self.base.join(format!("instance-{}", self.next.fetch_add(1, Relaxed)));
        create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let limit_file = match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        if let Err(e) = fs::write(path.join(limit_file), self.memory_max.to_string()) {
            let _ = fs::remove_dir(&path);
            return Err(format!("setting {limit_file} in {}: {e}", path.display()));
        }
        Ok(Cgroup { path })
    }

    /// An empty instance cgroup with the memory limit: a kept one, or a new one. The instance
    /// moves itself in before it executes anything ([`Cgroup::procs`]).
    pub fn take(&self) -> Result<Cgroup, String> {
        let kept = self.free.lock().pop();
        match kept {
            Some(cgroup) => Ok(cgroup),
            None => self.create(),
        }
    }

    /// Takes back the cgroup of a destroyed instance: kept for the next one once empty.
    pub fn release(&self, cgroup: Cgroup) {
        let empty = fs::read_to_string(cgroup.procs()).is_ok_and(|procs| procs.trim().is_empty());
        if empty {
            self.free.lock().push(cgroup);
        } else {
            // Group members still exiting: remove it once they are gone.
            cgroup.remove();
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for cgroup in self.free.lock().drain(..) {
            cgroup.remove();
        }
        let _ = fs::remove_dir(&self.base);
    }
}

/// Removes the subtrees of processes that are no longer running (only empty cgroups can be
/// removed; the restarted Wavelet's cleanup has killed what ran in them).
fn remove_departed_wavelets(shared: &Path) {
    let Ok(entries) = fs::read_dir(shared) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("pid-")).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(children) = fs::read_dir(entry.path()) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(entry.path());
    }
}

impl Cgroup {
    /// The file a process writes its pid (or "0", itself) to, to join the cgroup.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// SIGKILL to every process left in the cgroup: `cgroup.kill` on v2 (Linux 5.14+), else
    /// each listed process (a process forking meanwhile may escape this one round; the cgroup
    /// is then not reused but removed once empty).
    pub fn kill_all(&self, version: Version) {
        if version == Version::V2 && fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let Ok(procs) = fs::read_to_string(self.procs()) else { return };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Removes the cgroup once its processes are gone (briefly retried: killed processes may
    /// take a moment to leave).
    pub fn remove(self) {
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        tracing::warn!(cgroup = %self.path.display(), "could not remove an instance cgroup; it will be retried at the next start");
    }
}

fn create_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Where this process's memory cgroup is, from `/proc/self/cgroup` (v1 `memory` line first).
fn own_memory_cgroup(membership: &str, root: &Path) -> Option<(Version, PathBuf)> {
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let dir = root.join("memory").join(path.trim_start_matches('/'));
            if dir.is_dir() {
                return Some((Version::V1, dir));
            }
        }
    }
    let path = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    let available = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
    available.split_whitespace().any(|c| c == "memory").then(|| (Version::V2, root.join(path.trim_start_matches('/'))))
}

/// Lets `own` hand the memory controller to children, moving this process into a leaf first.
fn enable_v2_memory(own: &Path) -> io::Result<()> {
    let control = own.join("cgroup.subtree_control");
    if fs::read_to_string(&control)?.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    if fs::write(&control, "+memory").is_ok() {
        return Ok(());
    }
    let leaf = own.join("wavelink-agent");
    create_dir(&leaf)?;
    fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())?;
    fs::write(&control, "+memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_memory_cgroup_before_v2() {
        let root = std::env::temp_dir().join(format!("wavelink-cgroup-test-{}", std::process::id()));
        let v1 = root.join("memory/kubepods/pod1");
        fs::create_dir_all(&v1).unwrap();
        fs::write(root.join("cgroup.controllers"), "cpu memory\n").unwrap();
        let hybrid = "4:memory:/kubepods/pod1\n0::/system.slice/x\n";
        assert_eq!(own_memory_cgroup(hybrid, &root), Some((Version::V1, v1)));
        let unified = "0::/system.slice/x\n";
        assert_eq!(own_memory_cgroup(unified, &root), Some((Version::V2, root.join("system.slice/x"))));
        fs::write(root.join("cgroup.controllers"), "cpu\n").unwrap();
        assert_eq!(own_memory_cgroup(unified, &root), None);
        fs::remove_dir_all(&root).unwrap();
    }
}
