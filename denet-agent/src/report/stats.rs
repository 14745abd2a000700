//! One pass over a trace to everything the reports show: totals, the process tree,
//! top processes, time series, syscalls and files. Memory stays bounded (see
//! `tree`, `series`, and the caps below); `StatsReport` is what `stats --json` prints.
//!
//! One job, one file: the single pass and the report types it fills (their fields
//! are the `stats --json` output, documented in place).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{
    command,
    series::{Point, Series},
    tasks::{TaskGroup, TaskRun, TaskTable},
    tree::{Agg, Group, TreeBuilder},
    units,
};
use crate::trace::{metrics::M, FileRecord, Header, Process, Record, Sample, Summary};

/// Entries in each top list.
pub const TOP_N: usize = 10;
/// Distinct file paths aggregated; later new paths count in one "other files" row.
pub const MAX_FILE_PATHS: usize = 100_000;
/// Files and syscalls listed in reports.
pub const LIST_N: usize = 20;

/// One process, as listed in the top tables.
#[derive(Debug, Clone, Serialize)]
pub struct ProcRow {
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub label: String,
    pub command: String,
    /// Start, ns since the run started.
    pub start_ns: Option<i64>,
    pub wall_ns: Option<u64>,
    pub cpu_ns: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub peak_rss_kb: Option<u64>,
    pub rchar: Option<u64>,
    pub wchar: Option<u64>,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    pub exit: String,
}

/// The N largest by a key, without keeping the rest.
#[derive(Debug, Default)]
struct TopK {
    rows: Vec<(u64, u64, ProcRow)>,
}

impl TopK {
    fn wants(&self, key: u64) -> bool {
        self.rows.len() < TOP_N || self.rows.last().is_some_and(|(k, _, _)| key > *k)
    }

    /// `seq` breaks ties by arrival, so output is deterministic.
    fn offer(&mut self, key: u64, seq: u64, row: impl FnOnce() -> ProcRow) {
        if !self.wants(key) {
            return;
        }
        let at = self
            .rows
            .iter()
            .position(|(k, s, _)| key > *k || (key == *k && seq < *s))
            .unwrap_or(self.rows.len());
        self.rows.insert(at, (key, seq, row()));
        self.rows.truncate(TOP_N);
    }

    fn into_rows(self) -> Vec<ProcRow> {
        self.rows.into_iter().map(|(_, _, r)| r).collect()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct FileRow {
    pub path: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// `file` records for this path (one per process and file).
    pub records: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NameCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub path: String,
    pub lines: u64,
    /// The trace ends with a summary (false: the agent was killed or is still running).
    pub complete: bool,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub command: String,
    pub argv: Vec<String>,
    pub pid: Option<u32>,
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub cwd: Option<String>,
    pub agent_version: Option<String>,
    pub ebpf: Option<bool>,
    pub ebpf_unavailable_reason: Option<String>,
    pub start_unix_ns: Option<u64>,
    pub start_utc: Option<String>,
    /// CLOCK_BOOTTIME of the run's start: every `*_ns` offset here is relative to it.
    pub start_boot_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Values come from the summary record (false: computed from the records read).
    pub from_summary: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub exit: String,
    pub timed_out: Option<bool>,
    /// Stopped on request (summary `cancelled`).
    pub cancelled: Option<bool>,
    pub error: Option<String>,
    /// The kernel tracing failed during the run (summary `tracer_error`).
    pub tracer_error: Option<String>,
    /// The run cgroup's memory peak and limit, bytes, and the OOM kills in the run.
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    pub wall_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_sys_ns: u64,
    /// CPU time over wall time: average CPUs busy x 100.
    pub cpu_percent: Option<f64>,
    /// Process records read.
    pub processes: u64,
    /// Processes that exited non-zero / were killed by a signal.
    pub failed: u64,
    pub killed: u64,
    pub peak_tree_rss_kb: Option<u64>,
    pub max_process_peak_rss_kb: Option<u64>,
    #[serde(flatten)]
    pub io: IoTotals,
    pub samples: u64,
    pub lost_events: Option<u64>,
    pub incomplete_processes: Option<u64>,
    pub summary_process_count: Option<u64>,
    #[serde(flatten)]
    pub depth: DepthTotals,
    pub file_records: u64,
    /// Raw `event` records (`--events`).
    pub event_records: u64,
    /// Run-queue waits and their delays summed over processes: element i counts
    /// waits of [2^i, 2^(i+1)) µs. Empty when the trace has none.
    pub runq_waits: Option<u64>,
    pub runq_delay_hist_log2_us: Vec<u64>,
}

impl Totals {
    /// Upper bound (µs) of the bucket holding the q-quantile run-queue delay.
    pub fn runq_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.runq_delay_hist_log2_us.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.runq_delay_hist_log2_us.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(1u64 << (i + 1).min(63));
            }
        }
        None
    }
}

/// The kernel's I/O accounting (bytes through read/write-like calls, storage bytes,
/// call counts) summed over a set of processes; in the run's totals and in each
/// line of the tree.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IoTotals {
    pub rchar: Option<u64>,
    pub wchar: Option<u64>,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    pub syscr: Option<u64>,
    pub syscw: Option<u64>,
}

impl IoTotals {
    fn of(a: &Agg) -> Self {
        IoTotals {
            rchar: a.get(M::Rchar),
            wchar: a.get(M::Wchar),
            read_bytes: a.get(M::ReadBytes),
            write_bytes: a.get(M::WriteBytes),
            syscr: a.get(M::Syscr),
            syscw: a.get(M::Syscw),
        }
    }
}

/// Where the time went and the block and network bytes (eBPF), summed over a set
/// of processes; in the run's totals and in each line of the tree.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DepthTotals {
    pub oncpu_ns: Option<u64>,
    pub cpu_wait_ns: Option<u64>,
    pub io_wait_ns: Option<u64>,
    pub sleep_ns: Option<u64>,
    pub blk_read_bytes: Option<u64>,
    pub blk_write_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
}

impl DepthTotals {
    fn of(a: &Agg) -> Self {
        DepthTotals {
            oncpu_ns: a.get(M::OncpuNs),
            cpu_wait_ns: a.get(M::CpuWaitNs),
            io_wait_ns: a.get(M::IoWaitNs),
            sleep_ns: a.get(M::SleepNs),
            blk_read_bytes: a.get(M::BlkReadBytes),
            blk_write_bytes: a.get(M::BlkWriteBytes),
            net_tx_bytes: a.get(M::NetTxBytes),
            net_rx_bytes: a.get(M::NetRxBytes),
        }
    }
}

/// A line of the process tree (see `tree::Group`), times relative to the run start.
#[derive(Debug, Clone, Serialize)]
pub struct TreeNode {
    pub label: String,
    pub command: String,
    pub program: String,
    pub pid: Option<u32>,
    /// Processes in this line (siblings with the same command line are merged).
    pub count: u64,
    pub other_args: bool,
    /// A parent without a record (still running at the end, or exited first).
    pub placeholder: bool,
    pub start_ns: Option<i64>,
    pub end_ns: Option<i64>,
    /// Summed over the line's processes (count > 1), with the longest one.
    pub wall_ns: Option<u64>,
    pub wall_max_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_sys_ns: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub peak_rss_kb: Option<u64>,
    pub peak_vm_kb: Option<u64>,
    #[serde(flatten)]
    pub io: IoTotals,
    pub vol_ctxt: Option<u64>,
    pub inv_ctxt: Option<u64>,
    /// `0`, `SIGTERM`, or for merged lines e.g. `3 of 20 failed`.
    pub exit: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub failed: u64,
    pub killed: u64,
    #[serde(flatten)]
    pub depth: DepthTotals,
    pub children: Vec<TreeNode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLists {
    pub cpu: Vec<ProcRow>,
    pub peak_rss: Vec<ProcRow>,
    pub io: Vec<ProcRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    pub trace: TraceInfo,
    pub run: RunInfo,
    pub totals: Totals,
    pub tree: Vec<TreeNode>,
    pub top: TopLists,
    /// Summed over processes; empty when the trace has no per-syscall counts.
    pub syscalls: Vec<NameCount>,
    pub files: Vec<FileRow>,
    /// pids in the last sample that have no exit record after it.
    pub still_running: Vec<u32>,
    /// Workflow task instances (Snakemake jobs, Nextflow tasks, Slurm jobs), by
    /// start; left out when the trace has none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskRun>,
    /// The instances grouped by task name (rule, process).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub task_groups: Vec<TaskGroup>,
    #[serde(skip)]
    pub series: Series,
}

#[derive(Default)]
pub struct StatsBuilder {
    tree: TreeBuilder,
    all: Agg,
    seq: u64,
    top_cpu: TopK,
    top_rss: TopK,
    top_io: TopK,
    samples: u64,
    peak_tree_rss_kb: Option<u64>,
    last_sample_ns: Option<u64>,
    live: HashSet<u32>,
    series: Series,
    syscalls: BTreeMap<String, u64>,
    files: HashMap<String, FileRow>,
    other_files: FileRow,
    file_records: u64,
    event_records: u64,
    summary: Option<Summary>,
    runq_waits: Option<u64>,
    runq_hist: Vec<u64>,
    /// Start estimate from the header, for rows built before the summary is known.
    t0_estimate: u64,
    tasks: TaskTable,
}

fn rel(t: Option<u64>, t0: u64) -> Option<i64> {
    t.map(|t| t as i64 - t0 as i64)
}

impl StatsBuilder {
    pub fn new(header: &Header) -> Self {
        StatsBuilder {
            t0_estimate: header.start_estimate_boot_ns().unwrap_or(0),
            ..Default::default()
        }
    }

    pub fn add(&mut self, rec: &Record) {
        match rec {
            Record::Process(p) => self.add_process(p),
            Record::Sample(s) => self.add_sample(s),
            Record::Summary(s) => self.summary = Some((**s).clone()),
            Record::File(f) => self.add_file(f),
            Record::Event(_) => self.event_records += 1,
        }
    }

    fn add_process(&mut self, p: &Process) {
        self.seq += 1;
        self.all.add_process(p);
        self.tasks.add(p);
        self.tree.add(p);
        if let Some(pid) = p.pid {
            self.live.remove(&pid);
        }
        let t0 = self.t0_estimate;
        let row = || proc_row(p, t0);
        let seq = self.seq;
        if let Some(c) = p.cpu_ns() {
            self.top_cpu.offer(c, seq, row);
        }
        if let Some(r) = p.peak_rss_kb {
            self.top_rss.offer(r, seq, row);
        }
        if let Some(io) = p.io_bytes() {
            self.top_io.offer(io, seq, row);
        }
        if let Some(w) = p.runq_waits {
            self.runq_waits = Some(self.runq_waits.unwrap_or(0) + w);
        }
        if let Some(h) = &p.runq_delay_hist_log2_us {
            if self.runq_hist.len() < h.len() {
                self.runq_hist.resize(h.len().min(64), 0);
            }
            for (acc, c) in self.runq_hist.iter_mut().zip(h) {
                *acc += c;
            }
        }
        if let Some(sc) = &p.syscalls {
            for (name, n) in sc {
                match self.syscalls.get_mut(name) {
                    Some(v) => *v += n,
                    None => {
                        self.syscalls.insert(name.clone(), *n);
                    }
                }
            }
        }
    }

    fn add_sample(&mut self, s: &Sample) {
        self.samples += 1;
        let rss = s
            .rss_kb
            .unwrap_or_else(|| s.procs.iter().filter_map(|p| p.rss_kb).sum());
        self.peak_tree_rss_kb = Some(self.peak_tree_rss_kb.unwrap_or(0).max(rss));
        let ts = s.ts_boot_ns.unwrap_or(0);
        self.last_sample_ns = Some(ts);
        self.live = s.procs.iter().filter_map(|p| p.pid).collect();
        let cpu = s
            .cpu_percent
            .unwrap_or_else(|| s.procs.iter().filter_map(|p| p.cpu_percent).sum());
        self.series.push(Point {
            ts_boot_ns: ts,
            window_ms: s.window_ms.unwrap_or(0.0),
            cpu_percent: cpu,
            cpu_max_percent: cpu,
            rss_kb: rss,
            processes: s.process_count.unwrap_or(s.procs.len() as u32),
        });
    }

    fn add_file(&mut self, f: &FileRecord) {
        self.file_records += 1;
        let path = f.path.as_deref().unwrap_or("?");
        if self.files.len() < MAX_FILE_PATHS && !self.files.contains_key(path) {
            let row = FileRow {
                path: path.to_string(),
                ..Default::default()
            };
            self.files.insert(path.to_string(), row);
        }
        let row = match self.files.get_mut(path) {
            Some(r) => r,
            None => &mut self.other_files,
        };
        row.read_bytes += f.read_bytes.unwrap_or(0);
        row.write_bytes += f.write_bytes.unwrap_or(0);
        row.records += 1;
    }

    pub fn finish(self, header: &Header, trace: TraceInfo) -> StatsReport {
        let s = self.summary.clone();
        let min_start = self.all.first_start_ns;
        let t0 = s
            .as_ref()
            .map(|s| s.start_boot_ns)
            .or_else(|| match (header.start_estimate_boot_ns(), min_start) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
            .unwrap_or(0);
        let end = [self.all.last_end_ns, self.last_sample_ns]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(t0);
        let a = &self.all;
        let mut totals = Totals {
            from_summary: s.is_some(),
            wall_ns: end.saturating_sub(t0),
            cpu_user_ns: a.get(M::CpuUserNs).unwrap_or(0),
            cpu_sys_ns: a.get(M::CpuSysNs).unwrap_or(0),
            processes: a.count,
            failed: a.failed,
            killed: a.killed,
            peak_tree_rss_kb: self.peak_tree_rss_kb,
            max_process_peak_rss_kb: a.get(M::PeakRssKb),
            io: IoTotals::of(a),
            samples: self.samples,
            depth: DepthTotals::of(a),
            file_records: self.file_records,
            event_records: self.event_records,
            runq_waits: self.runq_waits,
            runq_delay_hist_log2_us: self.runq_hist.clone(),
            ..Default::default()
        };
        if let Some(s) = &s {
            totals.exit_code = s.exit_code;
            totals.signal = s.signal;
            totals.timed_out = Some(s.timed_out);
            totals.cancelled = s.cancelled;
            totals.error = s.error.clone();
            totals.tracer_error = s.tracer_error.clone();
            totals.memory_peak_bytes = s.memory_peak_bytes;
            totals.memory_limit_bytes = s.memory_limit_bytes;
            totals.oom_kills = s.oom_kills;
            totals.wall_ns = s.wall_ns;
            totals.cpu_user_ns = s.cpu_user_ns;
            totals.cpu_sys_ns = s.cpu_sys_ns;
            totals.peak_tree_rss_kb = Some(s.peak_tree_rss_kb);
            totals.max_process_peak_rss_kb = Some(s.max_process_peak_rss_kb);
            totals.lost_events = Some(s.lost_events);
            totals.incomplete_processes = Some(s.incomplete_processes);
            totals.summary_process_count = Some(s.process_count);
        }
        totals.exit = match (&s, totals.exit_code, totals.signal) {
            (None, _, _) => "unknown (no summary)".to_string(),
            (Some(_), c, sig) => units::exit_status(c, sig, false),
        };
        let cpu = totals.cpu_user_ns + totals.cpu_sys_ns;
        totals.cpu_percent =
            (totals.wall_ns > 0).then(|| cpu as f64 * 100.0 / totals.wall_ns as f64);

        // Rows were built with the header's estimate; shift them to the exact start.
        let shift = t0 as i64 - self.t0_estimate as i64;
        let fix = |rows: Vec<ProcRow>| -> Vec<ProcRow> {
            rows.into_iter()
                .map(|mut r| {
                    r.start_ns = r.start_ns.map(|s| s - shift);
                    r
                })
                .collect()
        };
        let top = TopLists {
            cpu: fix(self.top_cpu.into_rows()),
            peak_rss: fix(self.top_rss.into_rows()),
            io: fix(self.top_io.into_rows()),
        };
        let mut syscalls: Vec<NameCount> = self
            .syscalls
            .into_iter()
            .map(|(name, count)| NameCount { name, count })
            .collect();
        syscalls.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
        let mut files: Vec<FileRow> = self.files.into_values().collect();
        files.sort_by(|a, b| {
            (b.read_bytes + b.write_bytes)
                .cmp(&(a.read_bytes + a.write_bytes))
                .then(a.path.cmp(&b.path))
        });
        files.truncate(LIST_N);
        if self.other_files.records > 0 {
            let mut o = self.other_files;
            o.path = format!("[other files past the first {MAX_FILE_PATHS}]");
            files.push(o);
        }
        let mut still_running: Vec<u32> = self.live.into_iter().collect();
        still_running.sort_unstable();
        let tree = self
            .tree
            .finish(header)
            .iter()
            .map(|g| tree_node(g, t0))
            .collect();
        let start_unix_ns = header.boot_to_unix_ns(t0);
        let tasks = self.tasks.finish();
        let task_groups = super::tasks::groups(&tasks);
        StatsReport {
            trace,
            run: RunInfo {
                command: command::label(&header.argv, None),
                argv: header.argv.clone(),
                pid: header.pid,
                hostname: header.hostname.clone(),
                kernel: header.kernel.clone(),
                cwd: header.cwd.clone(),
                agent_version: header.agent_version.clone(),
                ebpf: header.ebpf,
                ebpf_unavailable_reason: header.ebpf_unavailable_reason.clone(),
                start_unix_ns,
                start_utc: start_unix_ns.map(units::utc_datetime),
                start_boot_ns: t0,
            },
            totals,
            tree,
            top,
            syscalls,
            files,
            still_running,
            tasks,
            task_groups,
            series: {
                let mut series = self.series;
                series.finish();
                series
            },
        }
    }
}

fn proc_row(p: &Process, t0: u64) -> ProcRow {
    ProcRow {
        pid: p.pid,
        ppid: p.ppid,
        label: command::label(&p.argv, p.exe.as_deref()),
        command: command::full(&p.argv),
        start_ns: rel(p.start_boot_ns, t0),
        wall_ns: p.wall(),
        cpu_ns: p.cpu_ns(),
        cpu_percent: p.cpu_percent(),
        peak_rss_kb: p.peak_rss_kb,
        rchar: p.rchar,
        wchar: p.wchar,
        read_bytes: p.read_bytes,
        write_bytes: p.write_bytes,
        exit: units::exit_status(p.exit_code, p.signal, p.core_dumped),
    }
}

fn group_exit(g: &Group) -> String {
    let a = &g.agg;
    if g.placeholder {
        return String::new();
    }
    if a.count == 1 {
        if a.missing > 0 {
            return "? (exit not seen)".into();
        }
        return units::exit_status(g.exit_code, g.signal, g.core_dumped);
    }
    let bad = a.failed + a.killed;
    match (bad, a.missing) {
        (0, 0) => "all 0".into(),
        (0, m) => format!("{m} of {} not seen", a.count),
        (b, _) if a.killed == 0 => format!("{b} of {} failed", a.count),
        (b, _) => format!("{b} of {} failed ({} killed)", a.count, a.killed),
    }
}

fn tree_node(g: &Group, t0: u64) -> TreeNode {
    let a = &g.agg;
    TreeNode {
        label: g.label.clone(),
        command: command::full(&g.argv),
        program: g.program.clone(),
        pid: g.pid,
        count: a.count,
        other_args: g.other_args,
        placeholder: g.placeholder,
        start_ns: rel(a.first_start_ns, t0),
        end_ns: rel(a.last_end_ns, t0),
        wall_ns: a.wall_ns,
        wall_max_ns: a.wall_max_ns,
        cpu_user_ns: a.get(M::CpuUserNs),
        cpu_sys_ns: a.get(M::CpuSysNs),
        cpu_percent: a.cpu_percent(),
        peak_rss_kb: a.get(M::PeakRssKb),
        peak_vm_kb: a.get(M::PeakVmKb),
        io: IoTotals::of(a),
        vol_ctxt: a.get(M::VolCtxt),
        inv_ctxt: a.get(M::InvCtxt),
        exit: group_exit(g),
        exit_code: g.exit_code,
        signal: g.signal,
        failed: a.failed,
        killed: a.killed,
        depth: DepthTotals::of(a),
        children: g.children.iter().map(|c| tree_node(c, t0)).collect(),
    }
}

impl StatsReport {
    /// True when any process reported the time breakdown (depth fields).
    pub fn has_time_breakdown(&self) -> bool {
        let t = &self.totals;
        t.depth.oncpu_ns.is_some()
            || t.depth.cpu_wait_ns.is_some()
            || t.depth.io_wait_ns.is_some()
            || t.depth.sleep_ns.is_some()
    }

    pub fn has_block_or_net(&self) -> bool {
        let t = &self.totals;
        t.depth.blk_read_bytes.is_some()
            || t.depth.blk_write_bytes.is_some()
            || t.depth.net_tx_bytes.is_some()
            || t.depth.net_rx_bytes.is_some()
    }

    /// The tree in display order with depths, for renderers.
    pub fn tree_rows(&self) -> Vec<(usize, bool, &TreeNode)> {
        fn walk<'a>(
            n: &'a TreeNode,
            depth: usize,
            last: bool,
            out: &mut Vec<(usize, bool, &'a TreeNode)>,
        ) {
            out.push((depth, last, n));
            let k = n.children.len();
            for (i, c) in n.children.iter().enumerate() {
                walk(c, depth + 1, i + 1 == k, out);
            }
        }
        let mut out = Vec::new();
        let k = self.tree.len();
        for (i, n) in self.tree.iter().enumerate() {
            walk(n, 0, i + 1 == k, &mut out);
        }
        out
    }
}
