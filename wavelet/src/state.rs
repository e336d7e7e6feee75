//! The Wavelet's state directory: a log of instances started and destroyed, so a Wavelet
//! restarted after a crash can find and kill the instances the crashed one left behind.
//!
//! `instances.log` gets one line per event, appended with a single `write` (cheap enough for
//! the request path): `+ <id> <pid> <start_ticks> <function> <addr> <cgroup>` when an instance
//! starts, `- <id>` when it is gone. The log is rewritten with only the live instances when it
//! grows long. The instance led its own process group, and the whole group is killed, so
//! children it started go too: when the leader still runs (its start time tells it from an
//! unrelated process reusing the pid), and also when it is gone but members of its group remain
//! (instances die with the Wavelet through the parent-death signal, their children do not).
//! The controller's local backend instead adopts the Regular Instances that still run and
//! belong to a configured function ([`StateDir::adopt_survivors`]). A lock file keeps two
//! processes from sharing one directory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::cgroup::Cgroup;
use crate::procfs;
use crate::runtime::{Process, start_ticks};

const LOG: &str = "instances.log";

pub struct StateDir {
    dir: PathBuf,
    _lock: Flock<File>,
    log: Mutex<Log>,
}

/// The open log and the live records it holds, for compaction.
struct Log {
    file: File,
    live: HashMap<String, Record>,
    lines: usize,
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
        let file = File::options().create(true).append(true).open(dir.join(LOG)).map_err(io_error)?;
        let log = Log { file, live: HashMap::new(), lines: 0 };
        Ok(StateDir { dir: dir.to_owned(), _lock: lock, log: Mutex::new(log) })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Kills every instance a previous run recorded and that still runs, and clears the log.
    pub fn clean_up_orphans(&self) -> Cleanup {
        self.adopt_survivors(|_| false).1
    }

    /// Instances a previous run recorded that still run (pid and start time checked) and that
    /// `wanted` accepts are handed back, and stay recorded; every other one is killed.
    pub fn adopt_survivors(&self, wanted: impl Fn(&Survivor) -> bool) -> (Vec<Survivor>, Cleanup) {
        let mut cleanup = Cleanup::default();
        let text = fs::read_to_string(self.dir.join(LOG)).unwrap_or_default();
        let mut cgroups = Vec::new();
        let mut survivors = Vec::new();
        for (id, record) in replay(&text) {
            if procfs::running(record.pid, record.start_ticks)
                && let (Some(function), Some(addr)) = (&record.function, record.addr)
            {
                let survivor = Survivor {
                    id: id.clone(),
                    pid: record.pid,
                    start_ticks: record.start_ticks,
                    function: function.clone(),
                    addr,
                    cgroup: record.cgroup.clone(),
                };
                if wanted(&survivor) {
                    survivors.push((survivor, record));
                    continue;
                }
            }
            let ours = match start_ticks(record.pid) {
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
        let mut log = self.log.lock();
        if let Err(e) = log.file.set_len(0) {
            warn!(error = %e, "could not clear the instance log");
        }
        (log.lines, log.live) = (0, HashMap::new());
        let mut adopted = Vec::new();
        for (survivor, record) in survivors {
            if let Err(e) = log.file.write_all(format!("+ {} {record}\n", survivor.id).as_bytes()) {
                warn!(error = %e, "could not re-record an adopted instance");
            }
            log.live.insert(survivor.id.clone(), record);
            log.lines += 1;
            adopted.push(survivor);
        }
        drop(log);
        // Killed processes need a moment to leave their cgroups; removal retries briefly.
        if !cgroups.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        for cgroup in cgroups {
            Cgroup { path: cgroup }.remove();
        }
        (adopted, cleanup)
    }

    /// Records a live instance of `function` (`namespace/name`).
    pub fn record(&self, process: &Process, function: &str) -> io::Result<()> {
        let record = Record {
            pid: process.pid,
            start_ticks: process.start_ticks,
            function: Some(function.to_owned()),
            addr: Some(process.addr),
            cgroup: process.cgroup.as_ref().map(|c| c.path.clone()),
        };
        let mut log = self.log.lock();
        log.file.write_all(format!("+ {} {record}\n", process.id).as_bytes())?;
        log.live.insert(process.id.clone(), record);
        log.lines += 1;
        Ok(())
    }

    /// Records that an instance is gone.
    pub fn forget(&self, id: &str) {
        let mut log = self.log.lock();
        if let Err(e) = log.file.write_all(format!("- {id}\n").as_bytes()) {
            warn!(error = %e, "could not update the instance log");
        }
        log.live.remove(id);
        log.lines += 1;
        if log.lines > 1024 + 4 * log.live.len() {
            self.compact(&mut log);
        }
    }

    /// Rewrites the log with only the live instances (written aside, then renamed over it).
    fn compact(&self, log: &mut Log) {
        let text: String = log.live.iter().map(|(id, record)| format!("+ {id} {record}\n")).collect();
        let temporary = self.dir.join(format!(".{LOG}.tmp"));
        let rewritten = fs::write(&temporary, &text)
            .and_then(|()| fs::rename(&temporary, self.dir.join(LOG)))
            .and_then(|()| File::options().append(true).open(self.dir.join(LOG)));
        match rewritten {
            Ok(file) => (log.file, log.lines) = (file, log.live.len()),
            Err(e) => warn!(error = %e, "could not compact the instance log"),
        }
    }
}

/// The live records of a log: started, and not yet gone.
fn replay(text: &str) -> HashMap<String, Record> {
    let mut live = HashMap::new();
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("+", rest)) => match rest.split_once(' ').and_then(|(id, r)| Some((id, Record::parse(r)?))) {
                Some((id, record)) => {
                    live.insert(id.to_owned(), record);
                }
                None => warn!(line, "unreadable instance record; skipping it"),
            },
            Some(("-", id)) => {
                live.remove(id.trim());
            }
            _ if line.trim().is_empty() => {}
            _ => warn!(line, "unreadable line in the instance log; skipping it"),
        }
    }
    live
}

/// Processes whose process group is `pgid`, from `/proc`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    procfs::pids().into_iter().filter(|&pid| procfs::stat(pid).is_some_and(|s| s.pgrp == pgid)).collect()
}

/// A recorded instance that still runs, as a successor may adopt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor {
    pub id: String,
    pub pid: u32,
    pub start_ticks: u64,
    /// `namespace/name`.
    pub function: String,
    pub addr: SocketAddr,
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    pid: u32,
    start_ticks: u64,
    function: Option<String>,
    addr: Option<SocketAddr>,
    cgroup: Option<PathBuf>,
}

/// A field, unless empty or `-`.
fn present(field: &str) -> Option<&str> {
    Some(field).filter(|f| !f.is_empty() && *f != "-")
}

impl Record {
    fn parse(text: &str) -> Option<Record> {
        let fields: Vec<&str> = text.trim().splitn(5, ' ').collect();
        let pid = fields.first()?.parse().ok()?;
        let start_ticks = fields.get(1)?.parse().ok()?;
        // `pid start_ticks cgroup`, as logs before function and address were recorded read.
        let (function, addr, cgroup) = if fields.len() == 5 {
            let addr = match present(fields[3]) {
                Some(addr) => Some(addr.parse::<SocketAddr>().ok()?),
                None => None,
            };
            (present(fields[2]).map(str::to_owned), addr, present(fields[4]))
        } else {
            (None, None, fields.get(2).and_then(|c| present(c)))
        };
        Some(Record { pid, start_ticks, function, addr, cgroup: cgroup.map(PathBuf::from) })
    }
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cgroup = self.cgroup.as_ref().map_or_else(|| "-".into(), |c| c.display().to_string());
        let function = self.function.as_deref().unwrap_or("-");
        let addr = self.addr.map_or_else(|| "-".into(), |a| a.to_string());
        write!(f, "{} {} {function} {addr} {cgroup}", self.pid, self.start_ticks)
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
        let record = Record {
            pid: 42,
            start_ticks: 7,
            function: Some("default/echo".into()),
            addr: Some("127.0.0.1:30001".parse().unwrap()),
            cgroup: Some("/sys/fs/cgroup/x y".into()),
        };
        assert_eq!(Record::parse(&record.to_string()), Some(record));
        let record = Record { pid: 42, start_ticks: 7, function: None, addr: None, cgroup: None };
        assert_eq!(Record::parse(&record.to_string()), Some(record));
        assert_eq!(Record::parse("garbage"), None);
        // A record written before functions and addresses were.
        let old = Record::parse("42 7 /sys/fs/cgroup/x").unwrap();
        assert_eq!((old.function, old.cgroup), (None, Some("/sys/fs/cgroup/x".into())));
    }

    #[test]
    fn the_log_is_compacted_to_the_live_instances() {
        let dir = temp_dir("compact");
        let state = StateDir::open(&dir).unwrap();
        {
            let mut log = state.log.lock();
            for i in 0..3000 {
                let record = Record { pid: i, start_ticks: 1, function: None, addr: None, cgroup: None };
                log.file.write_all(format!("+ ei-{i} {record}\n").as_bytes()).unwrap();
                log.live.insert(format!("ei-{i}"), record);
                log.lines += 1;
            }
        }
        for i in 1..3000 {
            state.forget(&format!("ei-{i}"));
        }
        let text = fs::read_to_string(dir.join(LOG)).unwrap();
        assert!(text.lines().count() < 2000, "compacted: {} lines", text.lines().count());
        assert_eq!(replay(&text).into_keys().collect::<Vec<_>>(), ["ei-0"]);
        fs::remove_dir_all(&dir).unwrap();
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
        let live = Record { pid, start_ticks: start_ticks(pid).unwrap(), function: None, addr: None, cgroup: None };
        // Same pid, different start time: a process that merely reuses the pid is left alone.
        let impostor = Record { start_ticks: live.start_ticks + 1, ..live.clone() };
        let log = format!("+ a {live}\n+ b {impostor}\n+ c {live}\n- c\ngarbage\n");
        fs::write(dir.join(LOG), log).unwrap();
        let cleanup = state.clean_up_orphans();
        assert_eq!(cleanup, Cleanup { killed: 1, stale: 1 });
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "killed by the cleanup");
        assert_eq!(fs::read_to_string(dir.join(LOG)).unwrap(), "", "the log is cleared");
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
        let record = Record { pid: pgid, start_ticks: 1, function: None, addr: None, cgroup: None };
        fs::write(dir.join(LOG), format!("+ c {record}\n")).unwrap();
        assert_eq!(state.clean_up_orphans(), Cleanup { killed: 1, stale: 0 });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while start_ticks(leader_gone).is_some_and(|_| !is_zombie(leader_gone)) {
            assert!(std::time::Instant::now() < deadline, "the group member survived");
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn survivors_wanted_are_adopted_and_stay_recorded_the_rest_killed() {
        let dir = temp_dir("adopt");
        let state = StateDir::open(&dir).unwrap();
        let spawn = || std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep");
        let (mut kept, mut unwanted) = (spawn(), spawn());
        let record = |pid: u32, function: &str| Record {
            pid,
            start_ticks: start_ticks(pid).unwrap(),
            function: Some(function.into()),
            addr: Some("127.0.0.1:30001".parse().unwrap()),
            cgroup: None,
        };
        let log = format!(
            "+ ri-1-0 {}\n+ ri-1-1 {}\n",
            record(kept.id(), "default/a"),
            record(unwanted.id(), "default/gone")
        );
        fs::write(dir.join(LOG), log).unwrap();
        let (adopted, cleanup) = state.adopt_survivors(|s| s.function == "default/a");
        assert_eq!(adopted.iter().map(|s| (s.id.as_str(), s.pid)).collect::<Vec<_>>(), [("ri-1-0", kept.id())]);
        assert_eq!(cleanup, Cleanup { killed: 1, stale: 0 });
        assert!(!unwanted.wait().unwrap().success(), "the unwanted one is killed");
        assert!(kept.try_wait().unwrap().is_none(), "the adopted one runs on");
        // A later run finds the adopted one recorded still.
        drop(state);
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(state.clean_up_orphans(), Cleanup { killed: 1, stale: 0 });
        assert!(!kept.wait().unwrap().success());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn group_pgid_of(pid: u32) -> u32 {
        procfs::stat(pid).expect("a live process").pgrp
    }

    fn is_zombie(pid: u32) -> bool {
        procfs::stat(pid).is_none_or(|s| s.state == 'Z')
    }
}
