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
    /// The agent's own CPU time (getrusage RUSAGE_SELF; the in-kernel eBPF work runs
    /// in the traced tasks and counts in their system time).
    pub agent_cpu_user_ns: u64,
    pub agent_cpu_sys_ns: u64,
    /// The agent's own peak RSS (ru_maxrss), KiB.
    pub agent_peak_rss_kb: u64,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{output::JsonlWriter, tracker::ExitStats};

    /// One record of each kind with fixed values, as written to a trace. The golden
    /// file pins field names, order, types and encodings: a change here is a change
    /// of the public format (update docs/jsonl-format.md, and schema_version when a
    /// field changes meaning). Regenerate with UPDATE_GOLDEN=1.
    #[test]
    fn golden_records() {
        let header = Header {
            kind: "header",
            schema_version: SCHEMA_VERSION,
            agent_version: "0.1.0",
            hostname: "node1".into(),
            kernel: "6.18.0".into(),
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            cwd: "/data".into(),
            agent_pid: 100,
            pid: Some(101),
            clock: ClockAnchor {
                clock: "CLOCK_BOOTTIME",
                boot_ns: 5_000_000_000,
                unix_ns: 1_800_000_000_000_000_000,
                monotonic_ns: 4_900_000_000,
            },
            hold_ns: Some(250_000),
            ebpf: true,
            ebpf_unavailable_reason: None,
            interval_ms: 100,
            max_interval_ms: 1000,
            argv_max_bytes: 4096,
            timeout_s: Some(60.0),
        };
        let info = ProcessInfo {
            pid: 102,
            ppid: Some(101),
            start_boot_ns: Some(5_001_000_000),
            end_boot_ns: Some(5_003_000_000),
            argv: vec!["/bin/true".into()],
            argv_truncated: false,
            exe: Some("/bin/true".into()),
            execs: 1,
            exit_status_raw: Some(2 << 8),
            stats: ExitStats {
                utime_ns: 4_000_000,
                stime_ns: 0,
                runtime_ns: 1_500_000,
                peak_rss_kb: 1024,
                peak_vm_kb: 2400,
                rchar: 3980,
                wchar: 12,
                syscr: 8,
                syscw: 1,
                read_bytes: 4096,
                write_bytes: 0,
                cancelled_write_bytes: 0,
                minflt: 50,
                majflt: 1,
                vol_ctxt: 2,
                inv_ctxt: 3,
                threads: 1,
            },
        };
        let killed = ProcessInfo {
            pid: 103,
            exit_status_raw: Some(0x80 | 11),
            ..info.clone()
        };
        let sample = Sample {
            kind: "sample",
            ts_boot_ns: 5_002_000_000,
            interval_ms: 100.25,
            process_count: 1,
            thread_count: 2,
            cpu_percent: 99.5,
            rss_kb: 2048,
            procs: vec![ProcSample {
                pid: 101,
                cpu_percent: 99.5,
                rss_kb: 2048,
                threads: 2,
            }],
        };
        let summary = Summary {
            kind: "summary",
            exit_code: Some(2),
            start_boot_ns: 5_000_000_000,
            end_boot_ns: 5_004_000_000,
            wall_ns: 4_000_000,
            cpu_user_ns: 1_500_000,
            process_count: 2,
            peak_tree_rss_kb: 2048,
            max_process_peak_rss_kb: 1024,
            samples: 1,
            threads_created: 1,
            agent_cpu_user_ns: 2_000_000,
            agent_cpu_sys_ns: 1_000_000,
            agent_peak_rss_kb: 9000,
            ..Default::default()
        };
        let dir = std::env::temp_dir().join(format!("denet-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        w.write(&header).unwrap();
        w.write(&Process::from_info(&info)).unwrap();
        w.write(&Process::from_info(&killed)).unwrap();
        w.write(&sample).unwrap();
        w.write(&summary).unwrap();
        drop(w);
        let got = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let golden =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/records.jsonl");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want =
            std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 creates it)");
        assert_eq!(
            got, want,
            "JSONL format changed; see the comment on this test"
        );
    }

    #[test]
    fn wait_status_decoding() {
        assert_eq!(decode_wait_status(3 << 8), (Some(3), None, false));
        assert_eq!(decode_wait_status(9), (None, Some(9), false));
        assert_eq!(decode_wait_status(0x80 | 11), (None, Some(11), true));
        assert_eq!(decode_wait_status(0), (Some(0), None, false));
    }
}
