//! The JSONL records: a public interface, documented in docs/jsonl-format.md.
//!
//! Field order here is the order in the output. Units are in the field names
//! (`_ns`, `_kb`, `_ms`, `_percent`) or, for byte and event counts, documented.

use serde::Serialize;

use crate::tracker::ProcessInfo;

/// Bumped when a field changes meaning or is removed; adding fields does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct ClockAnchor {
    /// Clock of every `*_boot_ns` field: CLOCK_BOOTTIME, the clock of the kernel events.
    pub clock: &'static str,
    /// CLOCK_BOOTTIME read at the anchor instant.
    pub boot_ns: u64,
    /// CLOCK_REALTIME (Unix epoch) read at the same instant.
    pub unix_ns: u64,
    /// CLOCK_MONOTONIC read at the same instant.
    pub monotonic_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub kind: &'static str,
    pub schema_version: u32,
    pub agent_version: &'static str,
    pub hostname: String,
    pub kernel: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub agent_pid: u32,
    /// Pid of the command; null when it could not be started.
    pub pid: Option<u32>,
    pub clock: ClockAnchor,
    /// Time the command was held between fork and release (programs attached, pid
    /// tracked), in nanoseconds.
    pub hold_ns: Option<u64>,
    pub ebpf: bool,
    /// Why eBPF is off, when it is.
    pub ebpf_unavailable_reason: Option<String>,
    pub interval_ms: u64,
    pub max_interval_ms: u64,
    pub argv_max_bytes: usize,
    pub timeout_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub kind: &'static str,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub exe: Option<String>,
    pub execs: u32,
    pub start_boot_ns: Option<u64>,
    pub end_boot_ns: Option<u64>,
    pub wall_ns: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    pub cpu_user_ns: Option<u64>,
    pub cpu_sys_ns: Option<u64>,
    pub peak_rss_kb: Option<u64>,
    pub peak_vm_kb: Option<u64>,
    pub rchar: Option<u64>,
    pub wchar: Option<u64>,
    pub syscr: Option<u64>,
    pub syscw: Option<u64>,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    pub cancelled_write_bytes: Option<u64>,
    pub minflt: Option<u64>,
    pub majflt: Option<u64>,
    pub vol_ctxt: Option<u64>,
    pub inv_ctxt: Option<u64>,
    pub threads: Option<u32>,
    /// "ebpf" (exact, read at exit), "proc" (last /proc sample), or "missing" (the
    /// exit was not seen: events were lost).
    pub source: &'static str,
}

/// Splits a wait status into (exit_code, signal, core_dumped).
pub fn decode_wait_status(raw: u32) -> (Option<i32>, Option<i32>, bool) {
    let sig = (raw & 0x7f) as i32;
    if sig == 0 {
        (Some(((raw >> 8) & 0xff) as i32), None, false)
    } else {
        (None, Some(sig), raw & 0x80 != 0)
    }
}

impl Process {
    pub fn from_info(p: &ProcessInfo) -> Self {
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
        Process {
            kind: "process",
            pid: p.pid,
            ppid: p.ppid,
            argv: p.argv.clone(),
            argv_truncated: p.argv_truncated,
            exe: p.exe.clone(),
            execs: p.execs,
            start_boot_ns: p.start_boot_ns,
            end_boot_ns: p.end_boot_ns,
            wall_ns,
            exit_code,
            signal,
            core_dumped,
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
            source: if exact { "ebpf" } else { "missing" },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcSample {
    pub pid: u32,
    pub cpu_percent: f64,
    pub rss_kb: u64,
    pub threads: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub kind: &'static str,
    pub ts_boot_ns: u64,
    /// Time since the previous sample (the window of the CPU percentages), ms.
    pub interval_ms: f64,
    pub process_count: u32,
    pub thread_count: u32,
    /// Sum over live tracked processes; 100 = one CPU busy.
    pub cpu_percent: f64,
    pub rss_kb: u64,
    pub procs: Vec<ProcSample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub start_boot_ns: u64,
    pub end_boot_ns: u64,
    pub wall_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_sys_ns: u64,
    pub process_count: u64,
    /// Largest sampled sum of RSS over the live tree, KiB (sampled, see docs).
    pub peak_tree_rss_kb: u64,
    /// Largest `peak_rss_kb` of any single process, KiB (exact).
    pub max_process_peak_rss_kb: u64,
    pub samples: u64,
    /// Kernel events lost (ring buffer full), plus gaps seen in sequence numbers.
    pub lost_events: u64,
    /// Processes whose exit was not seen ("source": "missing").
    pub incomplete_processes: u64,
    pub ebpf_read_errors: u64,
    pub ebpf_track_errors: u64,
    pub threads_created: u64,
    pub error: Option<String>,
}
