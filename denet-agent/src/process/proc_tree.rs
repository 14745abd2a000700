//! The /proc-only fallback: finds the tree by walking children links from the command
//! (and the agent itself, which adopts orphans as a subreaper) at every sample, and
//! writes a process record from the last reading once a process is gone.
//!
//! Processes that live and die between two samples are not seen: that is exactly what
//! the eBPF mode exists for, and why the header says `"ebpf": false`.

use std::collections::{HashMap, HashSet};

use super::procfs::{self, ProcIo, ProcStat};
use crate::{task::Marks, trace::Process};

struct Seen {
    ppid: u32,
    argv: Vec<String>,
    exe: Option<String>,
    start_boot_ns: u64,
    last_seen_ns: u64,
    stat: ProcStat,
    io: Option<ProcIo>,
    hwm_kb: Option<u64>,
    /// Task marks: the parent's when first seen, then what its argv adds.
    marks: Marks,
}

pub struct ProcTree {
    root: u32,
    agent: u32,
    tck: u64,
    seen: HashMap<u32, Seen>,
    root_marks: Marks,
}

impl ProcTree {
    pub fn new(root: u32, agent: u32, root_marks: Marks) -> Self {
        Self {
            root,
            agent,
            tck: procfs::clock_ticks_and_page_kb().0,
            seen: HashMap::new(),
            root_marks,
        }
    }

    /// Live descendants of the command (the command included), breadth first.
    pub fn discover(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut visited = HashSet::new();
        let mut queue: Vec<u32> = vec![self.root];
        // Orphans adopted by the agent (subreaper) are its children now.
        queue.extend(procfs::children(self.agent));
        while let Some(pid) = queue.pop() {
            if !visited.insert(pid) {
                continue;
            }
            out.push(pid);
            queue.extend(procfs::children(pid));
        }
        out
    }

    /// Records the latest readings; returns records of processes that are gone, with
    /// their task marks.
    pub fn update(&mut self, readings: &[(u32, ProcStat)], now_ns: u64) -> Vec<(Process, Marks)> {
        let mut alive = HashSet::with_capacity(readings.len());
        // Parents come before their children in the readings (`discover`).
        for (pid, stat) in readings {
            alive.insert(*pid);
            let io = procfs::read_io(*pid);
            let hwm = procfs::read_vm_hwm_kb(*pid);
            if !self.seen.contains_key(pid) {
                // First seen: its parent's marks (the command: the run's).
                let marks = if *pid == self.root {
                    self.root_marks.clone()
                } else {
                    self.seen
                        .get(&stat.ppid)
                        .map(|p| p.marks.clone())
                        .unwrap_or_default()
                };
                let seen = Seen {
                    ppid: stat.ppid,
                    argv: Vec::new(),
                    exe: procfs::read_exe(*pid),
                    start_boot_ns: stat.start_ticks.saturating_mul(1_000_000_000) / self.tck,
                    last_seen_ns: now_ns,
                    stat: stat.clone(),
                    io: None,
                    hwm_kb: None,
                    marks,
                };
                self.seen.insert(*pid, seen);
            }
            let Some(entry) = self.seen.get_mut(pid) else {
                continue;
            };
            // An exec since the last reading changes the command line.
            let argv = procfs::read_cmdline(*pid);
            if !argv.is_empty() && argv != entry.argv {
                let pid = *pid;
                entry.marks.after_exec(&argv, || procfs::read_cwd(pid));
                entry.argv = argv;
            }
            entry.last_seen_ns = now_ns;
            entry.stat = stat.clone();
            entry.io = io.or(entry.io.take());
            entry.hwm_kb = hwm.or(entry.hwm_kb);
        }
        let gone: Vec<u32> = self
            .seen
            .keys()
            .filter(|p| !alive.contains(p))
            .copied()
            .collect();
        gone.into_iter()
            .filter_map(|pid| self.seen.remove(&pid).map(|s| self.record(pid, s, None)))
            .collect()
    }

    /// Records for everything still known (end of run). `root_status` is the wait
    /// status of the command, the one exit status the agent knows in this mode.
    pub fn flush(&mut self, root_status: Option<u32>) -> Vec<(Process, Marks)> {
        let all: Vec<(u32, Seen)> = self.seen.drain().collect();
        all.into_iter()
            .map(|(pid, s)| {
                let status = (pid == self.root).then_some(root_status).flatten();
                self.record(pid, s, status)
            })
            .collect()
    }

    fn record(&self, pid: u32, s: Seen, status: Option<u32>) -> (Process, Marks) {
        let ns = |ticks: u64| ticks.saturating_mul(1_000_000_000) / self.tck;
        let (exit_code, signal, core_dumped) = match status {
            Some(raw) => super::decode_wait_status(raw),
            None => (None, None, false),
        };
        let have_io = s.io.is_some();
        let io = s.io.unwrap_or_default();
        let opt = |v: u64| have_io.then_some(v);
        let process = Process {
            pid: Some(pid),
            ppid: Some(s.ppid),
            argv: s.argv,
            argv_truncated: false,
            exe: s.exe,
            execs: Some(0),
            start_boot_ns: Some(s.start_boot_ns),
            end_boot_ns: Some(s.last_seen_ns),
            wall_ns: Some(s.last_seen_ns.saturating_sub(s.start_boot_ns)),
            exit_code,
            signal,
            core_dumped,
            // Not known without the kernel's programs.
            oom_killed: None,
            cpu_user_ns: Some(ns(s.stat.utime_ticks)),
            cpu_sys_ns: Some(ns(s.stat.stime_ticks)),
            peak_rss_kb: s.hwm_kb,
            peak_vm_kb: None,
            rchar: opt(io.rchar),
            wchar: opt(io.wchar),
            syscr: opt(io.syscr),
            syscw: opt(io.syscw),
            read_bytes: opt(io.read_bytes),
            write_bytes: opt(io.write_bytes),
            cancelled_write_bytes: opt(io.cancelled_write_bytes),
            minflt: Some(s.stat.minflt),
            majflt: Some(s.stat.majflt),
            vol_ctxt: None,
            inv_ctxt: None,
            threads: Some(s.stat.threads),
            source: Some("proc".into()),
            ..Default::default()
        };
        (process, s.marks)
    }
}
