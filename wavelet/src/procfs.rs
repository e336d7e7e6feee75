//! What `/proc` says about processes: the few fields of `/proc/<pid>/stat` WaveLink reads, in one
//! parser (the command name may contain spaces and parentheses, so fields are counted from the
//! last `)`).

use std::fs;

/// Fields of `/proc/<pid>/stat` (see proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// CPU time in user and system mode, in clock ticks.
    pub utime: u64,
    pub stime: u64,
    /// When the process started, in clock ticks since boot: with the pid, it tells a process
    /// from a later one that reuses the pid.
    pub start_ticks: u64,
}

/// `None` when there is no such process.
pub fn stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // After the name: state(3) ppid(4) pgrp(5) ... utime(14) stime(15) ... starttime(22).
    let fields: Vec<&str> = text.get(text.rfind(')')? + 1..)?.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: u32::try_from(number(1)?).ok()?,
        pgrp: u32::try_from(number(2)?).ok()?,
        utime: number(11)?,
        stime: number(12)?,
        start_ticks: number(19)?,
    })
}

/// Whether `pid` is still the process that started at `start_ticks` and has not exited (a
/// zombie waiting to be reaped counts as gone; a later process reusing the pid is not it).
pub fn running(pid: u32, start_ticks: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_ticks == start_ticks && s.state != 'Z')
}

/// Every process id in `/proc` now.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())).collect()
}

/// The children of `pid` now: from each of its threads' `children` list, else (a kernel
/// without `CONFIG_PROC_CHILDREN`) from every process's parent.
pub fn children(pid: u32) -> Vec<u32> {
    let tasks = match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) if fs::metadata(format!("/proc/{pid}/task/{pid}/children")).is_ok() => tasks,
        _ => return pids().into_iter().filter(|&child| stat(child).is_some_and(|s| s.ppid == pid)).collect(),
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).collect::<Vec<_>>())
        .collect()
}

/// Clock ticks per second, the unit of [`ProcStat`]'s times.
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_runs_only_with_its_own_start_time() {
        let me = std::process::id();
        let ticks = stat(me).expect("this process").start_ticks;
        assert!(running(me, ticks));
        assert!(!running(me, ticks + 1), "a later process reusing the pid is not this one");
        assert!(!running(u32::MAX - 1, ticks));
    }

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() {
        let text = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 25 13 0 0 20 0 1 0 123456 1000 200";
        let stat = parse_stat(text).expect("parsed");
        assert_eq!(stat, ProcStat { state: 'S', ppid: 7, pgrp: 42, utime: 25, stime: 13, start_ticks: 123456 });
        assert_eq!(parse_stat("42 (truncated"), None);
    }

    #[test]
    fn this_process_is_found() {
        let me = stat(std::process::id()).expect("our own stat");
        assert_eq!(me.pgrp, u32::try_from(nix::unistd::getpgrp().as_raw()).unwrap());
        assert!(pids().contains(&std::process::id()));
        assert!(ticks_per_second() > 0);
    }
}
