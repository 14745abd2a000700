//! The JSONL records: a public interface, documented in docs/jsonl-format.md.
//!
//! Field order here is the order in the output. Units are in the field names
//! (`_ns`, `_kb`, `_ms`, `_percent`) or, for byte and event counts, documented.

use serde::Serialize;

use std::collections::BTreeMap;

/// Where the time went and what the process did on disk, network and in syscalls
/// (eBPF mode only; absent in /proc mode).
#[derive(Debug, Clone, Serialize)]
pub struct DepthFields {
    pub oncpu_ns: u64,
    pub cpu_wait_ns: u64,
    pub io_wait_ns: u64,
    pub sleep_ns: u64,
    pub runq_waits: u64,
    /// Run-queue delays: bucket i counts waits in [2^i, 2^(i+1)) us (bucket 0: < 2 us);
    /// trailing empty buckets are dropped.
    pub runq_delay_hist_log2_us: Vec<u32>,
    pub blk_read_bytes: u64,
    pub blk_write_bytes: u64,
    pub blk_read_ops: u64,
    pub blk_write_ops: u64,
    /// Block request latency (queue to completion), same buckets.
    pub blk_latency_hist_log2_us: Vec<u32>,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    /// Syscall name -> count; only with `--syscalls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<BTreeMap<String, u64>>,
}

/// `--events`: one raw kernel event.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub kind: &'static str,
    /// "sched": a thread left a scheduler state; "block": a block request completed.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    /// End of the span (sched) or completion (block).
    pub ts_boot_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// sched: "running", "runnable", "io_wait" or "sleep".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    /// sched: time spent in `state`; block: queueing to completion.
    pub duration_ns: u64,
    /// block: "read" or "write".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'static str>,
    /// block: bytes of the bio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
}

/// One file a process opened: written when it is closed or the process exits.
#[derive(Debug, Clone, Serialize)]
pub struct FileRecord {
    pub kind: &'static str,
    pub pid: u32,
    pub fd: u32,
    /// Absolute, lexically normalised path (see `path_source`).
    pub path: String,
    /// "absolute" (opened by absolute path), "cwd" or "dirfd" (relative path joined
    /// with the working directory or the directory fd), "relative" (could not be
    /// resolved: the process was gone).
    pub path_source: &'static str,
    pub path_truncated: bool,
    /// Open flags (O_*) as passed to open.
    pub open_flags: u32,
    /// "r", "w" or "rw" (from O_ACCMODE).
    pub access: &'static str,
    /// O_CREAT was given (by this process's own open).
    pub created: bool,
    /// The process got this fd from its parent (fork) or by duplicating another
    /// (dup, dup2, dup3, fcntl F_DUPFD), e.g. a shell redirection; counts are this
    /// process's own reads and writes through it.
    pub inherited: bool,
    /// Bytes read through this fd: read, pread64, readv, preadv, preadv2, and the
    /// source side of sendfile, splice and copy_file_range. Not reads of mmap'd pages.
    pub read_bytes: u64,
    /// Bytes written through this fd (the write-side counterparts).
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    pub open_boot_ns: u64,
    pub close_boot_ns: Option<u64>,
    /// "close", "reopen" (the fd was replaced without a close the agent saw: dup2
    /// onto it, exec closing it), "exit" (still open when the process exited).
    pub closed_by: &'static str,
}

/// Bumped when a field changes meaning or is removed; adding fields does not bump it.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// Whose kernel programs traced the run: "node" (the node daemon's, shared by
    /// every run on the machine), "own" (loaded by this run); null without eBPF.
    pub tracer: Option<&'static str>,
    /// Why eBPF is off, when it is.
    pub ebpf_unavailable_reason: Option<String>,
    /// Per-process syscall counts are collected (eBPF mode with `--syscalls`).
    pub syscalls: bool,
    /// `file` records are written (eBPF mode with `--files`).
    pub files: bool,
    /// Raw `event` records are written (`--events`).
    pub events: bool,
    pub interval_ms: u64,
    pub max_interval_ms: u64,
    pub argv_max_bytes: usize,
    pub timeout_s: Option<f64>,
    /// The run's own cgroup (v1), or the one it was left in; null without one.
    pub cgroup: Option<CgroupHeader>,
    /// Why the run has no cgroup of its own, when it has none.
    pub cgroup_unavailable_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CgroupHeader {
    /// The memory controller's directory of the run's cgroup.
    pub path: String,
    /// Made for the run; false: the cgroup the run was left in (a manager's, where
    /// it may not make one), read only, so its numbers include whatever else ran there.
    pub own: bool,
    pub memory_limit_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub max_pids: Option<u64>,
}

/// A process the OOM killer chose.
#[derive(Debug, Clone, Serialize)]
pub struct OomVictim {
    pub pid: u32,
    pub argv: Vec<String>,
    /// Resident KiB when it was chosen.
    pub rss_kb: u64,
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
    /// The kernel's OOM killer chose this process (null: not known, /proc mode).
    pub oom_killed: Option<bool>,
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
    #[serde(flatten)]
    pub depth: Option<DepthFields>,
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

#[derive(Debug, Clone, Serialize)]
pub struct ProcSample {
    pub pid: u32,
    pub cpu_percent: f64,
    pub rss_kb: u64,
    pub threads: u32,
    #[serde(flatten)]
    pub delta: Option<SampleDelta>,
}

/// Kernel counters accumulated during one sample window (eBPF mode only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SampleDelta {
    pub oncpu_ns: u64,
    pub cpu_wait_ns: u64,
    pub io_wait_ns: u64,
    pub sleep_ns: u64,
    pub blk_read_bytes: u64,
    pub blk_write_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    /// Syscalls made in the window; only with `--syscalls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall_count: Option<u64>,
}

impl SampleDelta {
    pub fn add(&mut self, o: &SampleDelta) {
        self.oncpu_ns += o.oncpu_ns;
        self.cpu_wait_ns += o.cpu_wait_ns;
        self.io_wait_ns += o.io_wait_ns;
        self.sleep_ns += o.sleep_ns;
        self.blk_read_bytes += o.blk_read_bytes;
        self.blk_write_bytes += o.blk_write_bytes;
        self.net_tx_bytes += o.net_tx_bytes;
        self.net_rx_bytes += o.net_rx_bytes;
        if let Some(n) = o.syscall_count {
            *self.syscall_count.get_or_insert(0) += n;
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub kind: &'static str,
    pub ts_boot_ns: u64,
    /// Time since the previous sample (the window of the CPU percentages), ms.
    /// Named `interval_ms` in schema 1 (it clashed with the header's integer field).
    pub window_ms: f64,
    pub process_count: u32,
    pub thread_count: u32,
    /// Sum over live tracked processes; 100 = one CPU busy.
    pub cpu_percent: f64,
    pub rss_kb: u64,
    /// Tree totals of the per-process window counters (eBPF mode only).
    #[serde(flatten)]
    pub delta: Option<SampleDelta>,
    /// Syscall name -> calls by the tree in the window (eBPF mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<BTreeMap<String, u64>>,
    pub procs: Vec<ProcSample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Stopped on request (`denet-agent jobs stop`, or the service shutting down).
    pub cancelled: bool,
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
    /// Per-process or per-file kernel counters that could not be created (map full).
    pub ebpf_stats_errors: u64,
    /// File records written.
    pub file_count: u64,
    /// Event records written (`--events`).
    pub event_count: u64,
    /// The agent's own CPU time (getrusage RUSAGE_SELF; the in-kernel eBPF work runs
    /// in the traced tasks and counts in their system time).
    pub agent_cpu_user_ns: u64,
    pub agent_cpu_sys_ns: u64,
    /// The agent's own peak RSS (ru_maxrss), KiB.
    pub agent_peak_rss_kb: u64,
    pub error: Option<String>,
    /// The kernel tracing failed during the run (the node daemon went away): what
    /// happened. Processes that ended after it are sampled from /proc.
    pub tracer_error: Option<String>,
    /// Processes of the run the OOM killer chose (from the kernel's `mark_victim`).
    pub oom_kills: u64,
    pub oom_victims: Vec<OomVictim>,
    /// Whose memory ran out when there were OOM kills: "run_limit" (the run's own
    /// cgroup limit: its cgroup counted the kills) or "machine"; null without kills.
    pub oom_scope: Option<&'static str>,
    /// The run cgroup's peak memory, bytes, page cache included (cgroup v1
    /// `memory.max_usage_in_bytes`); null without a cgroup.
    pub memory_peak_bytes: Option<u64>,
    /// The run's memory limit, bytes; null without one.
    pub memory_limit_bytes: Option<u64>,
    /// `memory_peak_bytes` as a percentage of `memory_limit_bytes`.
    pub memory_peak_percent: Option<f64>,
    /// Most of the run's processes alive at once (from the kernel's fork and exit
    /// events; null without eBPF).
    pub pids_peak: Option<u64>,
    /// CPU time of everything that ran in the run's cgroup, ns (`cpuacct.usage`):
    /// the per-process sums' check, including anything the tree lost sight of.
    pub cgroup_cpu_ns: Option<u64>,
    /// Block device bytes read and written by everything in the run's cgroup
    /// (`blkio.throttle.io_service_bytes`).
    pub cgroup_blk_read_bytes: Option<u64>,
    pub cgroup_blk_write_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::counters::ProcDepth,
        process::tracker::{ExitStats, ProcessInfo},
        trace::writer::JsonlWriter,
    };

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
            tracer: Some("own"),
            ebpf_unavailable_reason: None,
            syscalls: true,
            files: true,
            events: false,
            interval_ms: 100,
            max_interval_ms: 1000,
            argv_max_bytes: 4096,
            timeout_s: Some(60.0),
            cgroup: Some(CgroupHeader {
                path: "/sys/fs/cgroup/memory/denet-100-101".into(),
                own: true,
                memory_limit_bytes: Some(1 << 30),
                cpus: None,
                max_pids: Some(64),
            }),
            cgroup_unavailable_reason: None,
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
            depth: Some(ProcDepth {
                stats: denet_common::ProcStats {
                    oncpu_ns: 1_400_000,
                    cpu_wait_ns: 50_000,
                    io_wait_ns: 30_000,
                    sleep_ns: 500_000,
                    runq_waits: 3,
                    blk_read_bytes: 4096,
                    blk_read_ops: 1,
                    net_tx_bytes: 10,
                    runq_hist: {
                        let mut h = [0; denet_common::HIST_BUCKETS];
                        h[2] = 3;
                        h
                    },
                    ..Default::default()
                },
                syscalls: Some(vec![(0, 8), (1, 1), (231, 1)]),
            }),
            oom_rss_kb: None,
        };
        // Chosen by the OOM killer (SIGKILL).
        let killed = ProcessInfo {
            pid: 103,
            exit_status_raw: Some(9),
            oom_rss_kb: Some(1024),
            ..info.clone()
        };
        let sample = Sample {
            kind: "sample",
            ts_boot_ns: 5_002_000_000,
            window_ms: 100.25,
            process_count: 1,
            thread_count: 2,
            cpu_percent: 99.5,
            rss_kb: 2048,
            procs: vec![ProcSample {
                pid: 101,
                cpu_percent: 99.5,
                rss_kb: 2048,
                threads: 2,
                delta: Some(SampleDelta {
                    oncpu_ns: 99_500_000,
                    syscall_count: Some(12),
                    ..Default::default()
                }),
            }],
            delta: Some(SampleDelta {
                oncpu_ns: 99_500_000,
                syscall_count: Some(12),
                ..Default::default()
            }),
            syscalls: Some(BTreeMap::from([("read".to_string(), 12)])),
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
            oom_kills: 1,
            oom_victims: vec![OomVictim {
                pid: 103,
                argv: vec!["/bin/true".into()],
                rss_kb: 1024,
            }],
            oom_scope: Some("run_limit"),
            memory_peak_bytes: Some(536_870_912),
            memory_limit_bytes: Some(1 << 30),
            memory_peak_percent: Some(50.0),
            pids_peak: Some(2),
            cgroup_cpu_ns: Some(1_600_000),
            cgroup_blk_read_bytes: Some(4096),
            cgroup_blk_write_bytes: Some(0),
            ..Default::default()
        };
        let dir = std::env::temp_dir().join(format!("denet-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        w.write(&header).unwrap();
        w.write(&info.to_record()).unwrap();
        w.write(&killed.to_record()).unwrap();
        w.write(&FileRecord {
            kind: "file",
            pid: 102,
            fd: 1,
            path: "/data/out.txt".into(),
            path_source: "cwd",
            path_truncated: false,
            open_flags: 0o1101,
            access: "w",
            created: false,
            inherited: true,
            read_bytes: 0,
            write_bytes: 12,
            reads: 0,
            writes: 1,
            open_boot_ns: 5_001_500_000,
            close_boot_ns: Some(5_002_900_000),
            closed_by: "close",
        })
        .unwrap();
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
