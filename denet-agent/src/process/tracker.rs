//! Builds one record per process from the kernel's lifecycle events: fork opens it,
//! exec names it, every thread's exit adds its counters, and the last thread's exit
//! (group dead) closes it.

use std::collections::HashMap;

use super::decode_wait_status;
use crate::{
    kernel::{counters::ProcDepth, syscall_names::syscall_name},
    task::Marks,
    trace::Process,
};
use denet_common::{
    ExecEvent, ExitEvent, ForkEvent, OomKillEvent, EXEC_ARGV_TRUNCATED, EXEC_ARGV_UNREADABLE,
    EXIT_GROUP_DEAD,
};

/// Exit accounting of a process: its threads' counters summed, memory high-water
/// marks from its address space at exit.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitStats {
    /// Tick-sampled user/system split (only its ratio is used).
    pub utime_ns: u64,
    pub stime_ns: u64,
    /// Precise on-CPU time (scheduler runtime).
    pub runtime_ns: u64,
    pub peak_rss_kb: u64,
    pub peak_vm_kb: u64,
    pub rchar: u64,
    pub wchar: u64,
    pub syscr: u64,
    pub syscw: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
    pub minflt: u64,
    pub majflt: u64,
    pub vol_ctxt: u64,
    pub inv_ctxt: u64,
    /// Thread exits summed (1 for a single-threaded process).
    pub threads: u32,
}

impl ExitStats {
    fn add(&mut self, e: &ExitEvent, page_kb: u64) {
        self.utime_ns += e.utime_ns;
        self.stime_ns += e.stime_ns;
        self.runtime_ns += e.sum_exec_runtime_ns;
        self.rchar += e.io.rchar;
        self.wchar += e.io.wchar;
        self.syscr += e.io.syscr;
        self.syscw += e.io.syscw;
        self.read_bytes += e.io.read_bytes;
        self.write_bytes += e.io.write_bytes;
        self.cancelled_write_bytes += e.io.cancelled_write_bytes;
        self.minflt += e.min_flt;
        self.majflt += e.maj_flt;
        self.vol_ctxt += e.nvcsw;
        self.inv_ctxt += e.nivcsw;
        self.threads += 1;
        if e.flags & EXIT_GROUP_DEAD != 0 {
            // VmHWM: max(hiwater_rss, current rss), as get_mm_hiwater_rss().
            self.peak_rss_kb = e.hiwater_rss_pages.max(e.rss_pages) * page_kb;
            self.peak_vm_kb = e.hiwater_vm_pages * page_kb;
        }
    }

    /// User and system CPU time: the precise runtime split in the ratio of the
    /// tick-sampled user/system times, as the kernel's `cputime_adjust()` does for
    /// getrusage and wait4.
    pub fn cpu_user_sys_ns(&self) -> (u64, u64) {
        let (rt, u, s) = (self.runtime_ns, self.utime_ns, self.stime_ns);
        if s == 0 {
            return (rt, 0);
        }
        if u == 0 {
            return (0, rt);
        }
        let sys = (u128::from(rt) * u128::from(s) / (u128::from(u) + u128::from(s))) as u64;
        (rt - sys, sys)
    }
}

/// Everything known about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Parent process id; `None` when the fork event was lost.
    pub ppid: Option<u32>,
    pub start_boot_ns: Option<u64>,
    pub end_boot_ns: Option<u64>,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub exe: Option<String>,
    pub execs: u32,
    /// Wait-status encoded exit code of the last thread.
    pub exit_status_raw: Option<u32>,
    /// Counters of the threads that have exited so far.
    pub stats: ExitStats,
    /// Scheduler, block I/O, network and syscall counters, collected at exit.
    pub depth: Option<ProcDepth>,
    /// The OOM killer chose it: its resident KiB then.
    pub oom_rss_kb: Option<u64>,
    /// What workflow engines left on it or its ancestors.
    #[serde(default)]
    pub marks: Marks,
}

/// Splits NUL-separated argv bytes as in /proc/PID/cmdline.
pub fn split_argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The bytes before the first NUL, as (lossy) UTF-8.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[derive(Debug)]
pub struct Tracker {
    live: HashMap<u32, ProcessInfo>,
    page_kb: u64,
    /// Processes started (fork seen or root added), for the summary.
    pub started: u64,
}

impl Tracker {
    pub fn new(page_kb: u64) -> Self {
        Self {
            live: HashMap::new(),
            page_kb,
            started: 0,
        }
    }

    /// The command itself: its pid is tracked before it is released.
    pub fn add_root(
        &mut self,
        pid: u32,
        ppid: u32,
        start_boot_ns: u64,
        argv: Vec<String>,
        marks: Marks,
    ) {
        self.started += 1;
        self.live.insert(
            pid,
            ProcessInfo {
                pid,
                ppid: Some(ppid),
                start_boot_ns: Some(start_boot_ns),
                argv,
                marks,
                ..Default::default()
            },
        );
    }

    /// A fork inherits the parent's argv and exe until it execs.
    pub fn on_fork(&mut self, ev: &ForkEvent, done: &mut Vec<ProcessInfo>) {
        let pid = ev.header.tgid;
        // The previous holder of a reused pid whose exit event was lost.
        if let Some(stale) = self.live.remove(&pid) {
            done.push(stale);
        }
        let (argv, argv_truncated, exe, marks) = match self.live.get(&ev.parent_tgid) {
            Some(parent) => (
                parent.argv.clone(),
                parent.argv_truncated,
                parent.exe.clone(),
                parent.marks.clone(),
            ),
            None => Default::default(),
        };
        self.started += 1;
        self.live.insert(
            pid,
            ProcessInfo {
                pid,
                ppid: Some(ev.parent_tgid),
                start_boot_ns: Some(ev.header.ts_ns),
                argv,
                argv_truncated,
                exe,
                marks,
                ..Default::default()
            },
        );
    }

    fn entry(&mut self, pid: u32) -> &mut ProcessInfo {
        self.live.entry(pid).or_insert_with(|| ProcessInfo {
            pid,
            ..Default::default()
        })
    }

    pub fn on_exec(&mut self, ev: &ExecEvent) {
        let argv_len = (ev.argv_len as usize).min(ev.argv.len());
        let p = self.entry(ev.header.tgid);
        p.execs += 1;
        p.exe = Some(c_string(&ev.filename));
        if ev.flags & EXEC_ARGV_UNREADABLE == 0 {
            p.argv = split_argv(&ev.argv[..argv_len]);
            let pid = p.pid;
            // Read only when the argv starts a task that needs it (a relative
            // `.command.run`).
            p.marks.after_exec(&p.argv, || super::procfs::read_cwd(pid));
        }
        p.argv_truncated = ev.flags & EXEC_ARGV_TRUNCATED != 0;
    }

    /// A thread exited; the last one completes the process.
    pub fn on_exit(&mut self, ev: &ExitEvent, done: &mut Vec<ProcessInfo>) {
        let pid = ev.header.tgid;
        let page_kb = self.page_kb;
        let p = self.entry(pid);
        p.stats.add(ev, page_kb);
        if ev.flags & EXIT_GROUP_DEAD != 0 {
            p.end_boot_ns = Some(ev.header.ts_ns);
            p.exit_status_raw = Some(ev.exit_code);
            if let Some(p) = self.live.remove(&pid) {
                done.push(p);
            }
        }
    }

    /// The OOM killer chose the process (its exit follows, by SIGKILL).
    pub fn on_oom(&mut self, ev: &OomKillEvent) {
        let page_kb = self.page_kb;
        self.entry(ev.header.tgid).oom_rss_kb = Some(ev.rss_pages * page_kb);
    }

    /// At the end of a run: processes whose exit was never seen (events lost).
    pub fn flush(&mut self) -> Vec<ProcessInfo> {
        let mut rest: Vec<ProcessInfo> = self.live.drain().map(|(_, p)| p).collect();
        rest.sort_by_key(|p| p.start_boot_ns);
        rest
    }
}

impl ProcessInfo {
    /// The trace record of this process.
    pub fn to_record(&self) -> Process {
        let p = self;
        let s = &p.stats;
        // A process whose last thread was never seen (events lost) has partial counters.
        let exact = p.end_boot_ns.is_some();
        let v = |x: u64| exact.then_some(x);
        let (exit_code, signal, core_dumped) = match p.exit_status_raw {
            Some(raw) => decode_wait_status(raw),
            None => (None, None, false),
        };
        let wall_ns = match (p.start_boot_ns, p.end_boot_ns) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let (user, sys) = s.cpu_user_sys_ns();
        let mut rec = Process {
            pid: Some(p.pid),
            ppid: p.ppid,
            argv: p.argv.clone(),
            argv_truncated: p.argv_truncated,
            exe: p.exe.clone(),
            execs: Some(p.execs),
            start_boot_ns: p.start_boot_ns,
            end_boot_ns: p.end_boot_ns,
            wall_ns,
            exit_code,
            signal,
            core_dumped,
            oom_killed: Some(p.oom_rss_kb.is_some()),
            cpu_user_ns: v(user),
            cpu_sys_ns: v(sys),
            peak_rss_kb: v(s.peak_rss_kb),
            peak_vm_kb: v(s.peak_vm_kb),
            rchar: v(s.rchar),
            wchar: v(s.wchar),
            syscr: v(s.syscr),
            syscw: v(s.syscw),
            read_bytes: v(s.read_bytes),
            write_bytes: v(s.write_bytes),
            cancelled_write_bytes: v(s.cancelled_write_bytes),
            minflt: v(s.minflt),
            majflt: v(s.majflt),
            vol_ctxt: v(s.vol_ctxt),
            inv_ctxt: v(s.inv_ctxt),
            threads: v(u64::from(s.threads)).map(|t| t as u32),
            source: Some(if exact { "ebpf" } else { "missing" }.into()),
            ..Default::default()
        };
        if let Some(d) = &p.depth {
            set_depth_fields(&mut rec, d);
        }
        rec
    }
}

/// A histogram without its trailing empty buckets.
fn trim_hist(h: &[u32]) -> Vec<u64> {
    let end = h.iter().rposition(|c| *c > 0).map_or(0, |i| i + 1);
    h[..end].iter().map(|&c| u64::from(c)).collect()
}

/// The depth fields of a process record from its kernel counters.
fn set_depth_fields(rec: &mut Process, d: &ProcDepth) {
    let s = &d.stats;
    rec.oncpu_ns = Some(s.oncpu_ns);
    rec.cpu_wait_ns = Some(s.cpu_wait_ns);
    rec.io_wait_ns = Some(s.io_wait_ns);
    rec.sleep_ns = Some(s.sleep_ns);
    rec.runq_waits = Some(s.runq_waits);
    rec.runq_delay_hist_log2_us = Some(trim_hist(&s.runq_hist));
    rec.blk_read_bytes = Some(s.blk_read_bytes);
    rec.blk_write_bytes = Some(s.blk_write_bytes);
    rec.blk_read_ops = Some(s.blk_read_ops);
    rec.blk_write_ops = Some(s.blk_write_ops);
    rec.blk_latency_hist_log2_us = Some(trim_hist(&s.blk_lat_hist));
    rec.net_tx_bytes = Some(s.net_tx_bytes);
    rec.net_rx_bytes = Some(s.net_rx_bytes);
    rec.syscalls = d.syscalls.as_ref().map(|calls| {
        calls
            .iter()
            .map(|(nr, c)| (syscall_name(usize::from(*nr)).into_owned(), *c))
            .collect()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use denet_common::{EventHeader, EventKind, IoAccounting};

    fn fork(parent: u32, child: u32, ts: u64) -> ForkEvent {
        ForkEvent {
            header: EventHeader {
                kind: EventKind::Fork as u32,
                ts_ns: ts,
                pid: child,
                tgid: child,
                ..Default::default()
            },
            parent_tgid: parent,
            parent_pid: parent,
        }
    }

    fn exit(tid: u32, tgid: u32, ts: u64, last: bool, runtime: u64) -> ExitEvent {
        ExitEvent {
            header: EventHeader {
                kind: EventKind::Exit as u32,
                ts_ns: ts,
                pid: tid,
                tgid,
                ..Default::default()
            },
            exit_code: 3 << 8,
            flags: if last { EXIT_GROUP_DEAD } else { 0 },
            utime_ns: 3,
            stime_ns: 1,
            sum_exec_runtime_ns: runtime,
            io: IoAccounting {
                wchar: 10,
                ..Default::default()
            },
            hiwater_rss_pages: 100,
            rss_pages: 120,
            ..Default::default()
        }
    }

    #[test]
    fn threads_sum_and_last_thread_completes() {
        let mut t = Tracker::new(4);
        let mut done = Vec::new();
        t.add_root(10, 1, 5, vec!["sh".into()], Marks::default());
        t.on_fork(&fork(10, 11, 7), &mut done);
        t.on_exit(&exit(13, 11, 9, false, 400), &mut done);
        assert!(done.is_empty());
        t.on_exit(&exit(11, 11, 20, true, 400), &mut done);
        assert_eq!(done.len(), 1);
        let p = &done[0];
        assert_eq!((p.pid, p.ppid), (11, Some(10)));
        assert_eq!(p.argv, vec!["sh".to_string()]);
        assert_eq!(p.end_boot_ns, Some(20));
        assert_eq!(p.exit_status_raw, Some(3 << 8));
        assert_eq!(p.stats.threads, 2);
        assert_eq!(p.stats.wchar, 20);
        assert_eq!(p.stats.peak_rss_kb, 480);
        assert_eq!(p.stats.cpu_user_sys_ns(), (600, 200));
        assert_eq!(t.started, 2);
        let rest = t.flush();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].pid, 10);
    }

    #[test]
    fn cputime_split_edges() {
        let s = |u, s, rt| ExitStats {
            utime_ns: u,
            stime_ns: s,
            runtime_ns: rt,
            ..Default::default()
        };
        assert_eq!(s(0, 0, 7).cpu_user_sys_ns(), (7, 0));
        assert_eq!(s(0, 5, 7).cpu_user_sys_ns(), (0, 7));
        assert_eq!(s(1, 1, 7).cpu_user_sys_ns(), (4, 3));
    }

    #[test]
    fn split_argv_like_proc_cmdline() {
        assert_eq!(split_argv(b"ls\0-l\0"), vec!["ls", "-l"]);
        assert_eq!(split_argv(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert!(split_argv(b"").is_empty());
    }
}
