//! What `top` shows, kept up to date from records and job views; rendering is in
//! `view`, so everything here is plain data, tested without a terminal.

use std::collections::{HashMap, VecDeque};

use crate::{
    process::procfs,
    report::{command, units},
    service::job::JobView,
    trace::{Header, ProcSample, Process, Record, Summary},
};

/// Samples kept for the sparklines.
pub const HISTORY: usize = 240;
/// Exits listed.
const EXITS: usize = 8;

/// A process that ended, as the exits list shows it.
#[derive(Debug, Clone)]
pub struct Exit {
    pub pid: u32,
    pub label: String,
    pub exit: String,
    pub cpu_ns: Option<u64>,
    pub peak_rss_kb: Option<u64>,
    pub wall_ns: Option<u64>,
}

/// One live process of the latest sample.
#[derive(Debug, Clone)]
pub struct LiveProc {
    pub pid: u32,
    /// Its parent, when known (from /proc, for a trace of this machine).
    pub ppid: Option<u32>,
    /// Depth in the live tree (0: a root of it), once ordered by [`tree_order`].
    pub depth: usize,
    pub label: String,
    /// 100 = one CPU, over the last sample window.
    pub cpu_percent: f64,
    pub rss_kb: u64,
    pub threads: u32,
    /// Where its time went in the window (eBPF): "running", "waiting for CPU", "in
    /// I/O" or "asleep", whichever took most of it.
    pub state: Option<&'static str>,
}

/// A trace being written (or finished): the live tree, its history and its exits.
#[derive(Debug, Default)]
pub struct TraceModel {
    pub header: Header,
    /// (CPU percent, RSS KiB) of the whole tree per sample, oldest first.
    pub history: VecDeque<(f64, u64)>,
    pub live: Vec<LiveProc>,
    pub exits: VecDeque<Exit>,
    pub processes_ended: u64,
    pub failed: u64,
    pub peak_rss_kb: u64,
    /// CLOCK_BOOTTIME of the first and latest record with a time.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    pub summary: Option<Summary>,
    /// Names of pids from their records (exited) or /proc (alive).
    names: HashMap<u32, String>,
    /// Live pids are named from /proc: the trace is of this machine and running.
    proc_names: bool,
}

impl TraceModel {
    /// `proc_names`: name live pids from /proc (only for a trace of this machine that
    /// is still being written; else they show as `pid N` until their record comes).
    pub fn new(header: Header, proc_names: bool) -> Self {
        TraceModel {
            first_ns: header.start_estimate_boot_ns(),
            header,
            proc_names,
            ..Default::default()
        }
    }

    pub fn apply(&mut self, rec: Record) {
        match rec {
            Record::Sample(s) => {
                let ts = s.ts_boot_ns.unwrap_or(0);
                self.last_ns = Some(ts);
                self.first_ns.get_or_insert(ts);
                let rss = s.rss_kb.unwrap_or(0);
                self.peak_rss_kb = self.peak_rss_kb.max(rss);
                self.history.push_back((s.cpu_percent.unwrap_or(0.0), rss));
                while self.history.len() > HISTORY {
                    self.history.pop_front();
                }
                self.live = s.procs.iter().map(|p| self.live_proc(p)).collect();
                tree_order(&mut self.live);
            }
            Record::Process(p) => self.on_exit(&p),
            Record::Summary(s) => {
                self.last_ns = Some(s.end_boot_ns);
                self.live.clear();
                self.summary = Some(*s);
            }
            Record::File(_) | Record::Event(_) => {}
        }
    }

    fn on_exit(&mut self, p: &Process) {
        let pid = p.pid.unwrap_or(0);
        let label = command::label(&p.argv, p.exe.as_deref());
        // The pid may come back as another process: name it afresh then.
        self.names.remove(&pid);
        self.processes_ended += 1;
        if p.signal.is_some() || p.exit_code.is_some_and(|c| c != 0) {
            self.failed += 1;
        }
        if let Some(end) = p.end_boot_ns {
            self.last_ns = Some(self.last_ns.map_or(end, |l| l.max(end)));
        }
        self.exits.push_front(Exit {
            pid,
            label,
            exit: units::exit_status(p.exit_code, p.signal, p.core_dumped),
            cpu_ns: p.cpu_ns(),
            peak_rss_kb: p.peak_rss_kb,
            wall_ns: p.wall(),
        });
        self.exits.truncate(EXITS);
    }

    fn live_proc(&mut self, p: &ProcSample) -> LiveProc {
        let pid = p.pid.unwrap_or(0);
        let from_proc = self.proc_names;
        let label = self
            .names
            .entry(pid)
            .or_insert_with(|| {
                if from_proc {
                    proc_label(pid)
                } else {
                    format!("pid {pid}")
                }
            })
            .clone();
        LiveProc {
            pid,
            ppid: if from_proc { proc_ppid(pid) } else { None },
            depth: 0,
            label,
            cpu_percent: p.cpu_percent.unwrap_or(0.0),
            rss_kb: p.rss_kb.unwrap_or(0),
            threads: p.threads.unwrap_or(0),
            state: state_of(p),
        }
    }

    /// Seconds from the start to the latest record.
    pub fn elapsed_s(&self) -> f64 {
        match (self.first_ns, self.last_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => 0.0,
        }
    }
}

/// The command line of a live pid, from /proc (top runs on the traced node); its
/// pid when it is gone or not ours to read.
fn proc_label(pid: u32) -> String {
    let argv = procfs::read_cmdline(pid);
    if argv.is_empty() {
        return format!("pid {pid}");
    }
    command::label(&argv, None)
}

/// The parent of a live pid, from /proc/PID/stat.
fn proc_ppid(pid: u32) -> Option<u32> {
    procfs::read_stat(pid).ok().map(|s| s.ppid)
}

/// Orders the live processes as their tree (parents before their children, each
/// level by CPU, then RSS, then pid) and sets their depth; without parents known,
/// that is a flat list by CPU.
pub fn tree_order(live: &mut Vec<LiveProc>) {
    use std::collections::{BTreeMap, HashSet};
    live.sort_by(|a, b| {
        b.cpu_percent
            .total_cmp(&a.cpu_percent)
            .then(b.rss_kb.cmp(&a.rss_kb))
            .then(a.pid.cmp(&b.pid))
    });
    let pids: HashSet<u32> = live.iter().map(|p| p.pid).collect();
    let mut children: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (i, p) in live.iter().enumerate() {
        match p.ppid.filter(|pp| pids.contains(pp) && *pp != p.pid) {
            Some(pp) => children.entry(pp).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut order = Vec::with_capacity(live.len());
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    let mut seen = HashSet::new();
    while let Some((i, depth)) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        order.push((i, depth));
        if let Some(kids) = children.get(&live[i].pid) {
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    // A cycle of parents (pids reused while reading /proc) leaves some unplaced.
    for i in 0..live.len() {
        if !seen.contains(&i) {
            order.push((i, 0));
        }
    }
    let mut taken: Vec<Option<LiveProc>> = std::mem::take(live).into_iter().map(Some).collect();
    for (i, depth) in order {
        if let Some(mut p) = taken[i].take() {
            p.depth = depth;
            live.push(p);
        }
    }
}

/// Where most of a process's window went, from its eBPF window counters.
fn state_of(p: &ProcSample) -> Option<&'static str> {
    let parts = [
        (p.oncpu_ns?, "running"),
        (p.cpu_wait_ns?, "waiting for CPU"),
        (p.io_wait_ns?, "in I/O"),
        (p.sleep_ns?, "asleep"),
    ];
    parts
        .iter()
        .filter(|(ns, _)| *ns > 0)
        .max_by_key(|(ns, _)| *ns)
        .map(|(_, s)| *s)
}

/// The job list's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Started,
    Cpu,
    Memory,
    Name,
}

impl SortBy {
    pub fn next(self) -> Self {
        match self {
            SortBy::Started => SortBy::Cpu,
            SortBy::Cpu => SortBy::Memory,
            SortBy::Memory => SortBy::Name,
            SortBy::Name => SortBy::Started,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SortBy::Started => "started",
            SortBy::Cpu => "CPU",
            SortBy::Memory => "memory",
            SortBy::Name => "name",
        }
    }
}

/// Which jobs the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    Running,
    Ended,
    Failed,
}

impl Filter {
    pub fn next(self) -> Self {
        match self {
            Filter::All => Filter::Running,
            Filter::Running => Filter::Ended,
            Filter::Ended => Filter::Failed,
            Filter::Failed => Filter::All,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Filter::All => "all",
            Filter::Running => "running",
            Filter::Ended => "ended",
            Filter::Failed => "failed",
        }
    }

    fn keeps(self, j: &JobView) -> bool {
        use crate::history::Status;
        match self {
            Filter::All => true,
            Filter::Running => matches!(j.status, Status::Queued | Status::Running),
            Filter::Ended => !matches!(j.status, Status::Queued | Status::Running),
            Filter::Failed => matches!(
                j.status,
                Status::Failed | Status::TimedOut | Status::StartupFailed
            ),
        }
    }
}

/// A plain `denet-agent run` the node daemon traces (not a job of the service).
#[derive(Debug, Clone)]
pub struct RunRow {
    pub pid: u32,
    pub user: String,
    pub command: String,
    pub elapsed_s: f64,
    /// The run's cgroup memory (its whole tree), when it has a cgroup.
    pub memory_bytes: Option<u64>,
}

/// The node's jobs as the service shows them to this user, and the runs the node
/// daemon traces for them.
#[derive(Debug)]
pub struct JobsModel {
    pub jobs: Vec<JobView>,
    pub runs: Vec<RunRow>,
    pub selected: usize,
    pub sort: SortBy,
    pub filter: Filter,
    /// The last error talking to the service, shown instead of stale data.
    pub error: Option<String>,
}

impl Default for JobsModel {
    fn default() -> Self {
        JobsModel {
            jobs: Vec::new(),
            runs: Vec::new(),
            selected: 0,
            sort: SortBy::Started,
            filter: Filter::All,
            error: None,
        }
    }
}

impl JobsModel {
    /// Replaces the list, keeping the selected job selected.
    pub fn set(&mut self, jobs: Vec<JobView>) {
        let keep = self.selected_job().map(|j| j.id.clone());
        self.jobs = jobs;
        self.error = None;
        let shown = self.shown();
        self.selected = keep
            .and_then(|id| shown.iter().position(|j| j.id == id))
            .unwrap_or(0)
            .min(shown.len().saturating_sub(1));
    }

    /// The jobs the filter keeps, in the chosen order.
    pub fn shown(&self) -> Vec<&JobView> {
        let mut v: Vec<&JobView> = self.jobs.iter().filter(|j| self.filter.keeps(j)).collect();
        match self.sort {
            SortBy::Started => {}
            SortBy::Cpu => v.sort_by(|a, b| cpu(b).total_cmp(&cpu(a))),
            SortBy::Memory => v.sort_by_key(|j| std::cmp::Reverse(rss_kb(j))),
            SortBy::Name => v.sort_by(|a, b| a.name.cmp(&b.name)),
        }
        v
    }

    pub fn selected_job(&self) -> Option<&JobView> {
        self.shown().get(self.selected).copied()
    }

    pub fn move_by(&mut self, delta: isize) {
        let n = self.shown().len();
        if n == 0 {
            return;
        }
        self.selected = (self.selected as isize + delta).clamp(0, n as isize - 1) as usize;
    }
}

/// Live CPU while running, the summary's once ended.
pub fn cpu(j: &JobView) -> f64 {
    match (&j.live, &j.resources) {
        (Some(l), _) => l.cpu_percent,
        (None, Some(r)) => r.cpu_percent,
        _ => 0.0,
    }
}

/// Live RSS while running, the peak once ended.
pub fn rss_kb(j: &JobView) -> u64 {
    match (&j.live, &j.resources) {
        (Some(l), _) => l.rss_kb,
        (None, Some(r)) => r.peak_rss_kb.max(0) as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: Option<u32>, cpu: f64) -> LiveProc {
        LiveProc {
            pid,
            ppid,
            depth: 0,
            label: format!("p{pid}"),
            cpu_percent: cpu,
            rss_kb: 0,
            threads: 1,
            state: None,
        }
    }

    #[test]
    fn live_processes_are_ordered_as_their_tree() {
        // 1 -> {2 -> {4}, 3}; 3 is busier than 2; 9's parent is not live.
        let mut live = vec![
            p(4, Some(2), 50.0),
            p(2, Some(1), 1.0),
            p(3, Some(1), 90.0),
            p(1, None, 0.0),
            p(9, Some(77), 5.0),
        ];
        tree_order(&mut live);
        let got: Vec<(u32, usize)> = live.iter().map(|p| (p.pid, p.depth)).collect();
        assert_eq!(got, [(9, 0), (1, 0), (3, 1), (2, 1), (4, 2)]);
        // No parents known: by CPU.
        let mut flat = vec![p(1, None, 1.0), p(2, None, 3.0)];
        tree_order(&mut flat);
        assert_eq!(flat[0].pid, 2);
        // A parent cycle does not lose anyone.
        let mut cyc = vec![p(1, Some(2), 1.0), p(2, Some(1), 1.0)];
        tree_order(&mut cyc);
        assert_eq!(cyc.len(), 2);
    }
}
