//! The Wavelet's state directory: one small file per live instance, so a Wavelet restarted after
//! a crash can find and kill the instances the crashed one left behind.
//!
//! A file holds `pid start_ticks cgroup`. The instance led its own process group, and the whole
//! group is killed, so children it started go too: when the leader still runs (its start time
//! tells it from an unrelated process reusing the pid), and also when it is gone but members of
//! its group remain (instances die with the Wavelet through the parent-death signal, their
//! children do not). A lock file keeps two Wavelets from sharing one directory.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::cgroup::Cgroup;
use crate::runtime::{Process, start_ticks};

const SUFFIX: &str = ".instance";

pub struct StateDir {
    dir: PathBuf,
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("state directory {0} is in use by another Wavelet")]
    Locked(PathBuf),
}

/// What a previous run left behind and what became of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Orphaned instances found alive and killed.
    pub killed: usize,
    /// Records of instances that were already gone.
    pub stale: usize,
}

impl StateDir {
    /// Opens (creating) the directory and takes its lock.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        let io_error = |e| StateError::Io(dir.to_owned(), e);
        fs::create_dir_all(dir).map_err(io_error)?;
        let lock_file =
            File::options().create(true).truncate(false).write(true).open(dir.join("lock")).map_err(io_error)?;
        let lock =
            Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| StateError::Locked(dir.to_owned()))?;
        Ok(StateDir { dir: dir.to_owned(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Kills every instance a previous run recorded and that still runs, and clears the records.
    pub fn clean_up_orphans(&self) -> Cleanup {
        let mut cleanup = Cleanup::default();
        let Ok(entries) = fs::read_dir(&self.dir) else { return cleanup };
        let mut cgroups = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.to_string_lossy().ends_with(SUFFIX) {
                continue;
            }
            match fs::read_to_string(&path).ok().and_then(|text| Record::parse(&text)) {
                Some(record) => {
                    let leader = start_ticks(record.pid);
                    let ours = match leader {
                        Some(ticks) => ticks == record.start_ticks,
                        None => !group_members(record.pid).is_empty(),
                    };
                    if ours {
                        info!(pid = record.pid, "killing an instance orphaned by a previous Wavelet");
                        let _ = killpg(Pid::from_raw(record.pid as i32), Signal::SIGKILL);
                        cleanup.killed += 1;
                    } else {
                        cleanup.stale += 1;
                    }
                    cgroups.extend(record.cgroup);
                }
                None => warn!(file = %path.display(), "unreadable instance record; removing it"),
            }
            let _ = fs::remove_file(&path);
        }
        // Killed processes need a moment to leave their cgroups; removal retries briefly.
        if !cgroups.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        for cgroup in cgroups {
            Cgroup { path: cgroup }.remove();
        }
        cleanup
    }

    /// Records a live instance (written to a temporary file and renamed, so a crash never
    /// leaves a half-written record).
    pub fn record(&self, process: &Process) -> io::Result<()> {
        let record = Record {
            pid: process.pid,
            start_ticks: process.start_ticks,
            cgroup: process.cgroup.as_ref().map(|c| c.path.clone()),
        };
        let path = self.dir.join(format!("{}{SUFFIX}", process.id));
        let temporary = self.dir.join(format!(".{}.tmp", process.id));
        fs::write(&temporary, record.to_string())?;
        fs::rename(&temporary, path)
    }

    pub fn forget(&self, id: &str) {
        let _ = fs::remove_file(self.dir.join(format!("{id}{SUFFIX}")));
    }
}

/// Processes whose process group is `pgid`, from `/proc`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| {
                // Fields after the parenthesised command name: state, ppid, pgrp, ...
                let after_name = &stat[stat.rfind(')')? + 2..];
                after_name.split_whitespace().nth(2)?.parse::<u32>().ok()
            }) == Some(pgid)
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
struct Record {
    pid: u32,
    start_ticks: u64,
    cgroup: Option<PathBuf>,
}

impl Record {
    fn parse(text: &str) -> Option<Record> {
        let mut fields = text.trim().splitn(3, ' ');
        let pid = fields.next()?.parse().ok()?;
        let start_ticks = fields.next()?.parse().ok()?;
        let cgroup = fields.next().filter(|c| !c.is_empty() && *c != "-").map(PathBuf::from);
        Some(Record { pid, start_ticks, cgroup })
    }
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cgroup = self.cgroup.as_ref().map_or_else(|| "-".into(), |c| c.display().to_string());
        write!(f, "{} {} {cgroup}", self.pid, self.start_ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn temp_dir(label: &str) -> PathBuf {
        std::env::temp_dir().join(format!("wavelink-state-{label}-{}-{}", std::process::id(), fastrand::u32(..)))
    }

    #[test]
    fn records_round_trip() {
        let record = Record { pid: 42, start_ticks: 7, cgroup: Some("/sys/fs/cgroup/x y".into()) };
        assert_eq!(Record::parse(&record.to_string()), Some(record));
        let record = Record { pid: 42, start_ticks: 7, cgroup: None };
        assert_eq!(Record::parse(&record.to_string()), Some(record));
        assert_eq!(Record::parse("garbage"), None);
    }

    #[test]
    fn a_directory_has_one_owner_at_a_time() {
        let dir = temp_dir("lock");
        let first = StateDir::open(&dir).expect("first owner");
        assert!(matches!(StateDir::open(&dir), Err(StateError::Locked(_))));
        drop(first);
        assert!(StateDir::open(&dir).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn orphans_that_still_run_are_killed_and_records_of_gone_ones_cleared() {
        let dir = temp_dir("orphans");
        let state = StateDir::open(&dir).unwrap();
        let mut orphan = std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep");
        let pid = orphan.id();
        let live = Record { pid, start_ticks: start_ticks(pid).unwrap(), cgroup: None };
        fs::write(dir.join(format!("a{SUFFIX}")), live.to_string()).unwrap();
        // Same pid, different start time: a process that merely reuses the pid is left alone.
        let impostor = Record { pid, start_ticks: live.start_ticks + 1, cgroup: None };
        fs::write(dir.join(format!("b{SUFFIX}")), impostor.to_string()).unwrap();
        let cleanup = state.clean_up_orphans();
        assert_eq!(cleanup, Cleanup { killed: 1, stale: 1 });
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "killed by the cleanup");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "only the lock file is left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_group_of_a_dead_leader_is_killed_when_members_remain() {
        let dir = temp_dir("group");
        let state = StateDir::open(&dir).unwrap();
        // A leader that starts a child in its group and exits, as an instance killed by the
        // parent-death signal leaves its children.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .process_group(0)
            .output()
            .expect("sh");
        let leader_gone = String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap();
        let pgid = group_pgid_of(leader_gone);
        assert!(start_ticks(pgid).is_none() || pgid == leader_gone, "the leader has exited");
        assert_eq!(group_members(pgid), vec![leader_gone]);
        let record = Record { pid: pgid, start_ticks: 1, cgroup: None };
        fs::write(dir.join(format!("c{SUFFIX}")), record.to_string()).unwrap();
        assert_eq!(state.clean_up_orphans(), Cleanup { killed: 1, stale: 0 });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while start_ticks(leader_gone).is_some_and(|_| !is_zombie(leader_gone)) {
            assert!(std::time::Instant::now() < deadline, "the group member survived");
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    fn group_pgid_of(pid: u32) -> u32 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split_whitespace().nth(2).unwrap().parse().unwrap()
    }

    fn is_zombie(pid: u32) -> bool {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
            .unwrap_or(true)
    }
}
