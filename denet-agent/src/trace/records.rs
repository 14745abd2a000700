//! The records as read back. Every field but the identifying ones is optional, so
//! older traces, `null` values and records of killed runs all read; the depth fields
//! (time breakdown, block and network bytes, syscalls, `file` records) are here so
//! they are shown when present and not warned about. A unit test reads
//! tests/golden/records.jsonl, written by the writer's types, so the two cannot drift.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The newest `schema_version` this reader understands.
pub const SUPPORTED_SCHEMA_VERSION: u64 = super::format::SCHEMA_VERSION as u64;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Clock {
    pub clock: Option<String>,
    pub boot_ns: Option<u64>,
    pub unix_ns: Option<u64>,
    pub monotonic_ns: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Header {
    pub schema_version: Option<u64>,
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub agent_pid: Option<u32>,
    pub pid: Option<u32>,
    pub clock: Option<Clock>,
    pub hold_ns: Option<u64>,
    pub ebpf: Option<bool>,
    /// "node" or "own"; absent in traces of agents before 0.1 had the node daemon.
    pub tracer: Option<String>,
    pub ebpf_unavailable_reason: Option<String>,
    /// Per-process syscall counts were collected (`--syscalls`).
    pub syscalls: Option<bool>,
    /// `file` records were written (`--files`).
    pub files: Option<bool>,
    /// Raw `event` records were written (`--events`).
    pub events: Option<bool>,
    pub interval_ms: Option<u64>,
    pub max_interval_ms: Option<u64>,
    pub argv_max_bytes: Option<u64>,
    pub timeout_s: Option<f64>,
    pub cgroup: Option<CgroupHeader>,
    pub cgroup_unavailable_reason: Option<String>,
}

impl Header {
    /// Best estimate of when the command was forked, from the header alone (the
    /// clock anchor is read just after the release): used by streaming exports, which
    /// cannot wait for the summary's exact `start_boot_ns`.
    pub fn start_estimate_boot_ns(&self) -> Option<u64> {
        let anchor = self.clock.as_ref()?.boot_ns?;
        Some(anchor.saturating_sub(self.hold_ns.unwrap_or(0)))
    }

    /// Converts a CLOCK_BOOTTIME timestamp to Unix nanoseconds with the anchor.
    pub fn boot_to_unix_ns(&self, boot_ns: u64) -> Option<u64> {
        let c = self.clock.as_ref()?;
        let (b, u) = (c.boot_ns?, c.unix_ns?);
        Some((u as i128 + boot_ns as i128 - b as i128).max(0) as u64)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Process {
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub exe: Option<String>,
    pub execs: Option<u32>,
    pub start_boot_ns: Option<u64>,
    pub end_boot_ns: Option<u64>,
    pub wall_ns: Option<u64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    /// Absent in traces before OOM kills were named.
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
    pub source: Option<String>,
    // Depth fields (eBPF mode); absent in older traces.
    pub oncpu_ns: Option<u64>,
    pub cpu_wait_ns: Option<u64>,
    pub io_wait_ns: Option<u64>,
    pub sleep_ns: Option<u64>,
    pub blk_read_bytes: Option<u64>,
    pub blk_write_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub syscalls: Option<BTreeMap<String, u64>>,
    pub runq_waits: Option<u64>,
    /// Element i counts run-queue waits of [2^i, 2^(i+1)) µs (element 0: under 2 µs).
    pub runq_delay_hist_log2_us: Option<Vec<u64>>,
    pub blk_read_ops: Option<u64>,
    pub blk_write_ops: Option<u64>,
    pub blk_latency_hist_log2_us: Option<Vec<u64>>,
}

impl Process {
    pub fn cpu_ns(&self) -> Option<u64> {
        match (self.cpu_user_ns, self.cpu_sys_ns) {
            (None, None) => None,
            (u, s) => Some(u.unwrap_or(0) + s.unwrap_or(0)),
        }
    }

    /// Wall time: `wall_ns`, else end - start.
    pub fn wall(&self) -> Option<u64> {
        self.wall_ns
            .or(match (self.start_boot_ns, self.end_boot_ns) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            })
    }

    /// CPU time over wall time, percent of one CPU (Nextflow's `%cpu`).
    pub fn cpu_percent(&self) -> Option<f64> {
        let wall = self.wall()?;
        let cpu = self.cpu_ns()?;
        (wall > 0).then(|| cpu as f64 * 100.0 / wall as f64)
    }

    pub fn io_bytes(&self) -> Option<u64> {
        match (self.rchar, self.wchar) {
            (None, None) => None,
            (r, w) => Some(r.unwrap_or(0) + w.unwrap_or(0)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcSample {
    pub pid: Option<u32>,
    pub cpu_percent: Option<f64>,
    pub rss_kb: Option<u64>,
    pub threads: Option<u32>,
    // Window counters (eBPF mode): this sample window only.
    pub oncpu_ns: Option<u64>,
    pub cpu_wait_ns: Option<u64>,
    pub io_wait_ns: Option<u64>,
    pub sleep_ns: Option<u64>,
    pub blk_read_bytes: Option<u64>,
    pub blk_write_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub syscall_count: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Sample {
    pub ts_boot_ns: Option<u64>,
    /// `interval_ms` in schema 1 traces.
    #[serde(alias = "interval_ms")]
    pub window_ms: Option<f64>,
    pub process_count: Option<u32>,
    pub thread_count: Option<u32>,
    pub cpu_percent: Option<f64>,
    pub rss_kb: Option<u64>,
    // Window counters (eBPF mode): this sample window only.
    pub oncpu_ns: Option<u64>,
    pub cpu_wait_ns: Option<u64>,
    pub io_wait_ns: Option<u64>,
    pub sleep_ns: Option<u64>,
    pub blk_read_bytes: Option<u64>,
    pub blk_write_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub syscall_count: Option<u64>,
    pub syscalls: Option<BTreeMap<String, u64>>,
    pub procs: Vec<ProcSample>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: Option<bool>,
    pub cancelled: Option<bool>,
    pub start_boot_ns: Option<u64>,
    pub end_boot_ns: Option<u64>,
    pub wall_ns: Option<u64>,
    pub cpu_user_ns: Option<u64>,
    pub cpu_sys_ns: Option<u64>,
    pub process_count: Option<u64>,
    pub peak_tree_rss_kb: Option<u64>,
    pub max_process_peak_rss_kb: Option<u64>,
    pub samples: Option<u64>,
    pub lost_events: Option<u64>,
    pub incomplete_processes: Option<u64>,
    pub ebpf_read_errors: Option<u64>,
    pub ebpf_track_errors: Option<u64>,
    pub threads_created: Option<u64>,
    pub agent_cpu_user_ns: Option<u64>,
    pub agent_cpu_sys_ns: Option<u64>,
    pub agent_peak_rss_kb: Option<u64>,
    pub ebpf_stats_errors: Option<u64>,
    pub file_count: Option<u64>,
    pub event_count: Option<u64>,
    pub error: Option<String>,
    pub tracer_error: Option<String>,
    #[serde(default)]
    pub oom_kills: Option<u64>,
    #[serde(default)]
    pub oom_victims: Vec<OomVictim>,
    pub oom_scope: Option<String>,
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub memory_peak_percent: Option<f64>,
    pub pids_peak: Option<u64>,
    pub cgroup_cpu_ns: Option<u64>,
    pub cgroup_blk_read_bytes: Option<u64>,
    pub cgroup_blk_write_bytes: Option<u64>,
}

/// One file descriptor of a file a process opened (`--files`), written when it closed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FileRecord {
    pub pid: Option<u32>,
    pub fd: Option<u32>,
    pub path: Option<String>,
    pub path_source: Option<String>,
    pub path_truncated: Option<bool>,
    pub open_flags: Option<u64>,
    pub access: Option<String>,
    pub created: Option<bool>,
    pub inherited: Option<bool>,
    pub read_bytes: Option<u64>,
    pub write_bytes: Option<u64>,
    pub reads: Option<u64>,
    pub writes: Option<u64>,
    pub open_boot_ns: Option<u64>,
    pub close_boot_ns: Option<u64>,
    pub closed_by: Option<String>,
}

/// A raw kernel event (`--events`): a scheduler span a thread left, or a completed
/// block request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventRecord {
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// End of the span (sched) or completion (block).
    pub ts_boot_ns: Option<u64>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub cpu: Option<u32>,
    pub state: Option<String>,
    pub duration_ns: Option<u64>,
    pub op: Option<String>,
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub enum Record {
    Process(Box<Process>),
    Sample(Sample),
    Summary(Box<Summary>),
    File(FileRecord),
    Event(EventRecord),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceReader;

    /// The golden file the writer's types produce (trace::format's golden test) read
    /// back with these types: every field written must be known here (an unknown one
    /// warns), and the values come back as written.
    #[test]
    fn golden_records_read_back_without_warnings() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/records.jsonl");
        let mut reader = TraceReader::open(&path, Box::new(|_| {})).expect("golden header");
        let h = reader.header().clone();
        assert_eq!(h.schema_version, Some(SUPPORTED_SCHEMA_VERSION));
        assert_eq!(h.hostname.as_deref(), Some("node1"));
        assert_eq!(h.files, Some(true));
        assert_eq!(h.syscalls, Some(true));
        assert_eq!(h.cgroup.as_ref().and_then(|c| c.max_pids), Some(64));
        let mut kinds = Vec::new();
        while let Some(rec) = reader.next_record().expect("golden record") {
            match &rec {
                Record::Process(p) if p.pid == Some(102) => {
                    assert_eq!(p.exe.as_deref(), Some("/bin/true"));
                    assert_eq!(p.exit_code, Some(2));
                    assert!(p
                        .syscalls
                        .as_ref()
                        .is_some_and(|s| s["read"] == 8 && s["exit_group"] == 1));
                }
                Record::Process(p) => {
                    assert_eq!(p.signal, Some(9));
                    assert!(!p.core_dumped);
                    assert_eq!(p.oom_killed, Some(true));
                }
                Record::File(f) => {
                    assert_eq!(f.path.as_deref(), Some("/data/out.txt"));
                    assert_eq!(f.write_bytes, Some(12));
                }
                Record::Sample(s) => {
                    assert_eq!(s.window_ms, Some(100.25));
                    assert_eq!(s.syscall_count, Some(12));
                    assert_eq!(s.procs.len(), 1);
                    assert_eq!(s.procs[0].syscall_count, Some(12));
                }
                Record::Summary(s) => {
                    assert_eq!(s.exit_code, Some(2));
                    assert_eq!(s.oom_kills, Some(1));
                    assert_eq!(s.oom_victims[0].pid, 103);
                    assert_eq!(s.oom_scope.as_deref(), Some("run_limit"));
                    assert_eq!(s.memory_peak_percent, Some(50.0));
                }
                Record::Event(_) => {}
            }
            kinds.push(std::mem::discriminant(&rec));
        }
        assert_eq!(kinds.len(), 5, "records after the header");
        assert!(reader.summary_seen());
        assert!(
            reader.warnings().is_empty(),
            "writer fields the reader does not know: {:?}",
            reader.warnings()
        );
    }
}

/// The header's `cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CgroupHeader {
    pub path: String,
    pub own: Option<bool>,
    pub memory_limit_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub max_pids: Option<u64>,
}

/// One of the summary's `oom_victims`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct OomVictim {
    pub pid: u32,
    #[serde(default)]
    pub argv: Vec<String>,
    pub rss_kb: u64,
}
