//! The JSONL records: one type per record kind, written by the agent and read back
//! by `stats`, `export` and the service. A public interface, documented in
//! docs/jsonl-format.md and pinned by tests/golden/records.jsonl (written by these
//! types, then read back by them).
//!
//! Field order here is the order in the output. Units are in the field names
//! (`_ns`, `_kb`, `_ms`, `_percent`) or, for byte and event counts, documented.
//! Reading is forgiving: every field is optional (`#[serde(default)]`), so older
//! traces, `null`s and the records of killed runs read. A value the writer may not
//! know is an `Option`, written as `null` or, for the depth and window counters that
//! exist only in eBPF mode, left out. Each record's `kind` is written by
//! [`Tagged`] from [`Kind::KIND`], not stored in the record.
//!
//! One job, one file: the public format (every field documented where declared,
//! about 600 lines) and its golden tests (about 300).

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize, Serializer};

/// Bumped when a field changes meaning or shape, or is removed; adding fields does
/// not bump it. 2: the sample's `interval_ms` became `window_ms`. 3: syscall counts
/// are lists of `{"name", "count"}` (they were objects keyed by name, whose varying
/// keys columnar readers cannot load), and the header's `syscalls` flag became
/// `syscalls_counted` (one name, one type in every record kind). The reader reads
/// all three.
pub const SCHEMA_VERSION: u32 = 3;

/// The newest `schema_version` the reader understands.
pub const SUPPORTED_SCHEMA_VERSION: u64 = SCHEMA_VERSION as u64;

/// A word from a fixed vocabulary ("ebpf", "close", "read"...): borrowed when
/// written, owned when read, so the writer does not allocate for it.
pub type Word = Cow<'static, str>;

/// The `kind` of a record type.
pub trait Kind {
    const KIND: &'static str;
}

/// A record with its `kind` first, as every line of a trace starts.
pub struct Tagged<'a, T>(pub &'a T);

impl<T: Kind + Serialize> Serialize for Tagged<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct WithKind<'a, T> {
            kind: &'static str,
            #[serde(flatten)]
            record: &'a T,
        }
        WithKind {
            kind: T::KIND,
            record: self.0,
        }
        .serialize(s)
    }
}

macro_rules! kinds {
    ($($t:ty => $k:literal),* $(,)?) => {
        $(impl Kind for $t { const KIND: &'static str = $k; })*
    };
}
kinds! {
    Header => "header",
    Process => "process",
    Sample => "sample",
    Summary => "summary",
    FileRecord => "file",
    EventRecord => "event",
}

/// Every record after the header, as the reader yields them.
#[derive(Debug, Clone)]
pub enum Record {
    Process(Box<Process>),
    Sample(Sample),
    Summary(Box<Summary>),
    File(FileRecord),
    Event(EventRecord),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Clock {
    /// Clock of every `*_boot_ns` field: CLOCK_BOOTTIME, the clock of the kernel events.
    pub clock: Word,
    /// CLOCK_BOOTTIME read at the anchor instant.
    pub boot_ns: u64,
    /// CLOCK_REALTIME (Unix epoch) read at the same instant.
    pub unix_ns: u64,
    /// CLOCK_MONOTONIC read at the same instant.
    pub monotonic_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    pub schema_version: Option<u64>,
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub agent_pid: Option<u32>,
    /// Pid of the command; null when it could not be started.
    pub pid: Option<u32>,
    pub clock: Option<Clock>,
    /// Time the command was held between fork and release (programs attached, pid
    /// tracked), in nanoseconds.
    pub hold_ns: Option<u64>,
    pub ebpf: Option<bool>,
    /// Whose kernel programs traced the run: "node" (the node daemon's, shared by
    /// every run on the machine), "own" (loaded by this run); null without eBPF.
    pub tracer: Option<Word>,
    /// Why eBPF is off, when it is.
    pub ebpf_unavailable_reason: Option<String>,
    /// Which kernel hook serves each feature on this kernel (`raw_tp/…`,
    /// `fentry/…`, `fexit/…`), for a run with its own programs; null otherwise.
    pub kernel_hooks: Option<BTreeMap<String, Vec<String>>>,
    /// Features this kernel cannot serve, with the reason (their fields read 0).
    pub kernel_hooks_unavailable: Option<BTreeMap<String, String>>,
    /// Per-process syscall counts are collected (eBPF mode with `--syscalls`).
    /// Named `syscalls` before schema 3, the name of the records' syscall lists.
    #[serde(alias = "syscalls")]
    pub syscalls_counted: Option<bool>,
    /// `file` records are written (eBPF mode with `--files`).
    pub files: Option<bool>,
    /// Raw `event` records are written (`--events`).
    pub events: Option<bool>,
    pub interval_ms: Option<u64>,
    pub max_interval_ms: Option<u64>,
    pub argv_max_bytes: Option<u64>,
    pub timeout_s: Option<f64>,
    /// The run's own cgroup (v1), or the one it was left in; null without one.
    pub cgroup: Option<CgroupHeader>,
    /// Why the run has no cgroup of its own, when it has none.
    pub cgroup_unavailable_reason: Option<String>,
}

impl Summary {
    /// The summary of a run that started at `start_boot_ns`, before anything
    /// happened: the fields every trace of this agent carries are known.
    pub fn started_at(start_boot_ns: u64) -> Self {
        Summary {
            start_boot_ns,
            cancelled: Some(false),
            oom_kills: Some(0),
            ..Default::default()
        }
    }
}

impl Header {
    /// Best estimate of when the command was forked, from the header alone (the
    /// clock anchor is read just after the release): used by streaming exports, which
    /// cannot wait for the summary's exact `start_boot_ns`.
    pub fn start_estimate_boot_ns(&self) -> Option<u64> {
        let anchor = self.clock.as_ref()?.boot_ns;
        Some(anchor.saturating_sub(self.hold_ns.unwrap_or(0)))
    }

    /// Converts a CLOCK_BOOTTIME timestamp to Unix nanoseconds with the anchor.
    pub fn boot_to_unix_ns(&self, boot_ns: u64) -> Option<u64> {
        let c = self.clock.as_ref()?;
        Some((c.unix_ns as i128 + boot_ns as i128 - c.boot_ns as i128).max(0) as u64)
    }
}

/// The header's `cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupHeader {
    /// The memory controller's directory of the run's cgroup (v2: its directory).
    pub path: String,
    /// The cgroup version, 1 or 2; null when the node daemon made the cgroup.
    pub version: Option<u8>,
    /// Made for the run; false: the cgroup the run was left in (a manager's, where
    /// it may not make one), read only, so its numbers include whatever else ran there.
    pub own: bool,
    pub memory_limit_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub max_pids: Option<u64>,
}

/// One process: written when it exits (or, for processes whose exit was not seen,
/// at the end of the run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// The kernel's OOM killer chose this process (null: not known, /proc mode;
    /// absent in traces before OOM kills were named).
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
    // Where the time went and what the process did on disk, network and in syscalls:
    // eBPF mode only, left out in /proc mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oncpu_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_wait_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_wait_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runq_waits: Option<u64>,
    /// Run-queue delays: element i counts waits in [2^i, 2^(i+1)) µs (element 0:
    /// under 2 µs); trailing empty buckets are dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runq_delay_hist_log2_us: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blk_read_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blk_write_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blk_read_ops: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blk_write_ops: Option<u64>,
    /// Block request latency (queue to completion), same buckets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blk_latency_hist_log2_us: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    /// Syscall name -> count; only with `--syscalls`.
    #[serde(with = "syscall_counts", skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<BTreeMap<String, u64>>,
    /// "ebpf" (exact, read at exit), "proc" (last /proc sample), or "missing" (the
    /// exit was not seen: events were lost).
    pub source: Option<Word>,
    /// The workflow task the process belongs to (left out when it belongs to none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
}

/// A workflow engine's task: a Snakemake job, a Nextflow task, a Slurm job. A
/// process belongs to the task of the nearest ancestor (itself included) that an
/// engine marked; a Snakemake or Nextflow task inside a Slurm job keeps the Slurm
/// fields too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Task {
    /// "snakemake", "nextflow" or "slurm".
    pub engine: Word,
    /// Snakemake's rule, Nextflow's process, Slurm's job name (null: not known).
    pub name: Option<String>,
    /// The engine's id of this task: Snakemake's job id, Nextflow's hash (`ab/cdef12`,
    /// as in its trace), Slurm's job id (`123`, or `123_4` for an array task). Null
    /// where the engine gives none.
    pub id: Option<String>,
    /// Snakemake's wildcards of the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wildcards: Option<BTreeMap<String, String>>,
    /// Nextflow's tag of the task (`sayHello (1)` has tag `1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Nextflow's work directory of the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<String>,
    /// The Slurm job the process ran in (also under Snakemake or Nextflow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slurm: Option<SlurmJob>,
}

/// Where a process ran under Slurm, from the variables Slurm sets for a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlurmJob {
    /// `SLURM_JOB_ID`.
    pub job_id: u64,
    /// `SLURM_ARRAY_JOB_ID` and `SLURM_ARRAY_TASK_ID`, for an array job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_job_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_task_id: Option<u64>,
    /// `SLURM_STEP_ID` ("batch" for the batch script, which sets none).
    pub step: Option<String>,
    /// `SLURM_JOB_NAME`.
    pub job_name: Option<String>,
    /// `SLURM_JOB_USER`.
    pub user: Option<String>,
    /// `SLURM_CLUSTER_NAME`.
    pub cluster: Option<String>,
}

impl Task {
    /// What `stats --by task` and the exports group by: the rule or process name,
    /// else the engine.
    pub fn group_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.engine)
    }

    /// One task instance: engine, name, id and wildcards (two processes with the
    /// same key belong to the same task).
    pub fn key(&self) -> String {
        let mut k = format!(
            "{}:{}:{}",
            self.engine,
            self.group_name(),
            self.id.as_deref().unwrap_or("")
        );
        if let Some(w) = &self.wildcards {
            for (name, value) in w {
                k.push_str(&format!(":{name}={value}"));
            }
        }
        k
    }

    /// Wildcards as Snakemake prints them: `sample=A,lane=1`.
    pub fn wildcards_text(&self) -> String {
        self.wildcards
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
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

/// Kernel counters of one sample window (eBPF mode only; left out in /proc mode):
/// the same fields in a `sample` (the tree's totals) and in each of its `procs`.
macro_rules! window_counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)*
        }
        then { $($(#[$tmeta:meta])* pub $tfield:ident: $tty:ty,)* }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            #[serde(skip_serializing_if = "Option::is_none")]
            pub oncpu_ns: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub cpu_wait_ns: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub io_wait_ns: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub sleep_ns: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub blk_read_bytes: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub blk_write_bytes: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub net_tx_bytes: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub net_rx_bytes: Option<u64>,
            /// Syscalls made in the window; only with `--syscalls`.
            #[serde(skip_serializing_if = "Option::is_none")]
            pub syscall_count: Option<u64>,
            $($(#[$tmeta])* pub $tfield: $tty,)*
        }

        impl $name {
            /// The window counters, in the order of [`WINDOW_COUNTERS`].
            pub fn window(&self) -> [Option<u64>; WINDOW_COUNTERS.len()] {
                [
                    self.oncpu_ns,
                    self.cpu_wait_ns,
                    self.io_wait_ns,
                    self.sleep_ns,
                    self.blk_read_bytes,
                    self.blk_write_bytes,
                    self.net_tx_bytes,
                    self.net_rx_bytes,
                    self.syscall_count,
                ]
            }

            /// Sets the window counters, in the order of [`WINDOW_COUNTERS`].
            pub fn set_window(&mut self, w: [Option<u64>; WINDOW_COUNTERS.len()]) {
                [
                    self.oncpu_ns,
                    self.cpu_wait_ns,
                    self.io_wait_ns,
                    self.sleep_ns,
                    self.blk_read_bytes,
                    self.blk_write_bytes,
                    self.net_tx_bytes,
                    self.net_rx_bytes,
                    self.syscall_count,
                ] = w;
            }
        }
    };
}

/// The window counters' names, in the order of `window()` (unit in the name; the
/// byte and syscall counts are counts).
pub const WINDOW_COUNTERS: [&str; 9] = [
    "oncpu_ns",
    "cpu_wait_ns",
    "io_wait_ns",
    "sleep_ns",
    "blk_read_bytes",
    "blk_write_bytes",
    "net_tx_bytes",
    "net_rx_bytes",
    "syscall_count",
];

window_counters! {
    /// One live process in a sample.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct ProcSample {
        pub pid: Option<u32>,
        pub cpu_percent: Option<f64>,
        pub rss_kb: Option<u64>,
        pub threads: Option<u32>,
    }
    then {}
}

window_counters! {
    /// The live tree every interval.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub struct Sample {
        pub ts_boot_ns: Option<u64>,
        /// Time since the previous sample (the window of the CPU percentages), ms.
        /// Named `interval_ms` in schema 1 (it clashed with the header's integer field).
        #[serde(alias = "interval_ms")]
        pub window_ms: Option<f64>,
        pub process_count: Option<u32>,
        pub thread_count: Option<u32>,
        /// Sum over live tracked processes; 100 = one CPU busy.
        pub cpu_percent: Option<f64>,
        pub rss_kb: Option<u64>,
    }
    then {
        /// Syscall name -> calls by the tree in the window (eBPF mode with `--syscalls`).
        #[serde(with = "syscall_counts", skip_serializing_if = "Option::is_none")]
        pub syscalls: Option<BTreeMap<String, u64>>,
        pub procs: Vec<ProcSample>,
    }
}

/// Adds window counters (a process's to the tree's): a counter stays unknown until
/// some process reports it.
pub fn add_window(
    total: &mut [Option<u64>; WINDOW_COUNTERS.len()],
    w: &[Option<u64>; WINDOW_COUNTERS.len()],
) {
    for (t, v) in total.iter_mut().zip(w) {
        if let Some(v) = v {
            *t = Some(t.unwrap_or(0).saturating_add(*v));
        }
    }
}

/// Syscall counts as written since schema 3: `[{"name": "read", "count": 8}, ...]`,
/// by name; read also in the object form of older schemas (`{"read": 8}`).
mod syscall_counts {
    use std::collections::BTreeMap;

    use serde::{ser::SerializeSeq, Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct NameCount<'a> {
        #[serde(borrow)]
        name: std::borrow::Cow<'a, str>,
        count: u64,
    }

    pub fn serialize<S: Serializer>(
        v: &Option<BTreeMap<String, u64>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let Some(map) = v else {
            return s.serialize_none();
        };
        let mut seq = s.serialize_seq(Some(map.len()))?;
        for (name, &count) in map {
            seq.serialize_element(&NameCount {
                name: name.as_str().into(),
                count,
            })?;
        }
        seq.end()
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        List(Vec<Entry>),
        Map(BTreeMap<String, u64>),
    }

    #[derive(Deserialize)]
    struct Entry {
        name: String,
        count: u64,
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<BTreeMap<String, u64>>, D::Error> {
        Ok(match Option::<Shape>::deserialize(d)? {
            None => None,
            Some(Shape::Map(m)) => Some(m),
            Some(Shape::List(l)) => Some(l.into_iter().map(|e| (e.name, e.count)).collect()),
        })
    }
}

/// The last record of a complete trace. The counters the agent always writes are
/// plain numbers (read as 0 when absent); the ones it may not know, or that older
/// agents did not write, are `Option`s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Stopped on request (`denet-agent jobs stop`, or the service shutting down);
    /// absent (None) in traces of agents that predate it, like `oom_kills`.
    pub cancelled: Option<bool>,
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
    pub oom_kills: Option<u64>,
    pub oom_victims: Vec<OomVictim>,
    /// Whose memory ran out when there were OOM kills: "run_limit" (the run's own
    /// cgroup limit: its cgroup counted the kills) or "machine"; null without kills.
    pub oom_scope: Option<Word>,
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
    /// With `--stderr FILE`, when the run failed: what the last recognisable error
    /// block of the stderr is ("python_traceback", "r_error", "java_exception",
    /// "rust_panic", "signal", "htslib_error", or "last_lines") and its text.
    pub failure_kind: Option<Word>,
    pub failure_excerpt: Option<String>,
}

/// A process the OOM killer chose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OomVictim {
    pub pid: u32,
    pub argv: Vec<String>,
    /// Resident KiB when it was chosen.
    pub rss_kb: u64,
}

/// One file a process opened (`--files`): written when it is closed or the process
/// exits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FileRecord {
    pub pid: Option<u32>,
    pub fd: Option<u32>,
    /// Absolute, lexically normalised path (see `path_source`).
    pub path: Option<String>,
    /// "absolute" (opened by absolute path), "cwd" or "dirfd" (relative path joined
    /// with the working directory or the directory fd), "relative" (could not be
    /// resolved: the process was gone).
    pub path_source: Option<Word>,
    pub path_truncated: Option<bool>,
    /// Open flags (O_*) as passed to open.
    pub open_flags: Option<u64>,
    /// "r", "w" or "rw" (from O_ACCMODE).
    pub access: Option<Word>,
    /// O_CREAT was given (by this process's own open).
    pub created: Option<bool>,
    /// The process got this fd from its parent (fork) or by duplicating another
    /// (dup, dup2, dup3, fcntl F_DUPFD), e.g. a shell redirection; counts are this
    /// process's own reads and writes through it.
    pub inherited: Option<bool>,
    /// Bytes read through this fd: read, pread64, readv, preadv, preadv2, and the
    /// source side of sendfile, splice and copy_file_range. Not reads of mmap'd pages.
    pub read_bytes: Option<u64>,
    /// Bytes written through this fd (the write-side counterparts).
    pub write_bytes: Option<u64>,
    pub reads: Option<u64>,
    pub writes: Option<u64>,
    pub open_boot_ns: Option<u64>,
    pub close_boot_ns: Option<u64>,
    /// "close", "reopen" (the fd was replaced without a close the agent saw: dup2
    /// onto it, exec closing it), "exit" (still open when the process exited).
    pub closed_by: Option<Word>,
}

/// `--events`: one raw kernel event, a scheduler span a thread left or a completed
/// block request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EventRecord {
    /// "sched": a thread left a scheduler state; "block": a block request completed.
    #[serde(rename = "type")]
    pub event_type: Word,
    /// End of the span (sched) or completion (block).
    pub ts_boot_ns: Option<u64>,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub cpu: Option<u32>,
    /// sched: "running", "runnable", "io_wait" or "sleep".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Word>,
    /// sched: time spent in `state`; block: queueing to completion.
    pub duration_ns: Option<u64>,
    /// block: "read" or "write".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<Word>,
    /// block: bytes of the bio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        kernel::counters::ProcDepth,
        process::tracker::{ExitStats, ProcessInfo},
        trace::{writer::JsonlWriter, TraceReader},
    };

    /// One record of each kind with fixed values, as written to a trace. The golden
    /// file pins field names, order, types and encodings: a change here is a change
    /// of the public format (update docs/jsonl-format.md, and schema_version when a
    /// field changes meaning). Regenerate with UPDATE_GOLDEN=1.
    #[test]
    fn golden_records() {
        let header = Header {
            schema_version: Some(SCHEMA_VERSION.into()),
            agent_version: Some("0.1.0".into()),
            hostname: Some("node1".into()),
            kernel: Some("6.18.0".into()),
            argv: vec!["sh".into(), "-c".into(), "true".into()],
            cwd: Some("/data".into()),
            agent_pid: Some(100),
            pid: Some(101),
            clock: Some(Clock {
                clock: "CLOCK_BOOTTIME".into(),
                boot_ns: 5_000_000_000,
                unix_ns: 1_800_000_000_000_000_000,
                monotonic_ns: 4_900_000_000,
            }),
            hold_ns: Some(250_000),
            ebpf: Some(true),
            tracer: Some("own".into()),
            ebpf_unavailable_reason: None,
            kernel_hooks: None,
            kernel_hooks_unavailable: None,
            syscalls_counted: Some(true),
            files: Some(true),
            events: Some(false),
            interval_ms: Some(100),
            max_interval_ms: Some(1000),
            argv_max_bytes: Some(4096),
            timeout_s: Some(60.0),
            cgroup: Some(CgroupHeader {
                path: "/sys/fs/cgroup/memory/denet-100-101".into(),
                own: true,
                version: Some(1),
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
            marks: Default::default(),
        };
        // Chosen by the OOM killer (SIGKILL).
        let killed = ProcessInfo {
            pid: 103,
            exit_status_raw: Some(9),
            oom_rss_kb: Some(1024),
            ..info.clone()
        };
        let window = |oncpu_ns, syscalls| {
            ProcSample {
                oncpu_ns: Some(oncpu_ns),
                syscall_count: Some(syscalls),
                ..Default::default()
            }
            .window()
            .map(|v| v.or(Some(0)))
        };
        let mut proc_sample = ProcSample {
            pid: Some(101),
            cpu_percent: Some(99.5),
            rss_kb: Some(2048),
            threads: Some(2),
            ..Default::default()
        };
        proc_sample.set_window(window(99_500_000, 12));
        let mut sample = Sample {
            ts_boot_ns: Some(5_002_000_000),
            window_ms: Some(100.25),
            process_count: Some(1),
            thread_count: Some(2),
            cpu_percent: Some(99.5),
            rss_kb: Some(2048),
            procs: vec![proc_sample],
            syscalls: Some(BTreeMap::from([("read".to_string(), 12)])),
            ..Default::default()
        };
        sample.set_window(window(99_500_000, 12));
        let summary = Summary {
            exit_code: Some(2),
            cancelled: Some(false),
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
            oom_kills: Some(1),
            oom_victims: vec![OomVictim {
                pid: 103,
                argv: vec!["/bin/true".into()],
                rss_kb: 1024,
            }],
            oom_scope: Some("run_limit".into()),
            memory_peak_bytes: Some(536_870_912),
            memory_limit_bytes: Some(1 << 30),
            memory_peak_percent: Some(50.0),
            pids_peak: Some(2),
            cgroup_cpu_ns: Some(1_600_000),
            cgroup_blk_read_bytes: Some(4096),
            cgroup_blk_write_bytes: Some(0),
            failure_kind: Some("python_traceback".into()),
            failure_excerpt: Some(
                "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\n"
                    .into(),
            ),
            ..Summary::started_at(5_000_000_000)
        };
        let dir = std::env::temp_dir().join(format!("denet-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        w.write(&header).unwrap();
        w.write(&info.to_record()).unwrap();
        w.write(&killed.to_record()).unwrap();
        // A Snakemake job's process, in a Slurm array task.
        w.write(&Process {
            pid: Some(104),
            task: Some(Task {
                engine: "snakemake".into(),
                name: Some("map_reads".into()),
                id: Some("12".into()),
                wildcards: Some(BTreeMap::from([("sample".into(), "A1".into())])),
                slurm: Some(SlurmJob {
                    job_id: 124,
                    array_job_id: Some(120),
                    array_task_id: Some(4),
                    step: Some("batch".into()),
                    job_name: Some("wf".into()),
                    user: Some("alice".into()),
                    cluster: Some("denet".into()),
                }),
                ..Task::default()
            }),
            ..info.to_record()
        })
        .unwrap();
        w.write(&FileRecord {
            pid: Some(102),
            fd: Some(1),
            path: Some("/data/out.txt".into()),
            path_source: Some("cwd".into()),
            path_truncated: Some(false),
            open_flags: Some(0o1101),
            access: Some("w".into()),
            created: Some(false),
            inherited: Some(true),
            read_bytes: Some(0),
            write_bytes: Some(12),
            reads: Some(0),
            writes: Some(1),
            open_boot_ns: Some(5_001_500_000),
            close_boot_ns: Some(5_002_900_000),
            closed_by: Some("close".into()),
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

    /// The golden file the writer's types produce (`golden_records`) read
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
        assert_eq!(h.syscalls_counted, Some(true));
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
                Record::Process(p) if p.pid == Some(104) => {
                    let t = p.task.as_ref().expect("the task reads back");
                    assert_eq!(t.key(), "snakemake:map_reads:12:sample=A1");
                    let slurm = t.slurm.as_ref().expect("with its Slurm job");
                    assert_eq!(slurm.display_id(), "120_4");
                }
                Record::Process(p) => {
                    assert!(p.task.is_none());
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
        assert_eq!(kinds.len(), 6, "records after the header");
        assert!(reader.summary_seen());
        assert!(
            reader.warnings().is_empty(),
            "writer fields the reader does not know: {:?}",
            reader.warnings()
        );
    }

    /// Syscall counts read in the list form (schema 3) and the object form of
    /// older traces; written as a list.
    #[test]
    fn syscall_counts_read_in_both_shapes() {
        let old: Process =
            serde_json::from_str(r#"{"pid":1,"syscalls":{"read":8,"write":1}}"#).unwrap();
        let new: Process = serde_json::from_str(
            r#"{"pid":1,"syscalls":[{"name":"read","count":8},{"name":"write","count":1}]}"#,
        )
        .unwrap();
        assert_eq!(old.syscalls, new.syscalls);
        assert_eq!(old.syscalls.as_ref().unwrap()["read"], 8);
        let none: Process = serde_json::from_str(r#"{"pid":1,"syscalls":null}"#).unwrap();
        assert_eq!(none.syscalls, None);
        let line = serde_json::to_string(&Tagged(&new)).unwrap();
        assert!(
            line.contains(r#""syscalls":[{"name":"read","count":8},{"name":"write","count":1}]"#)
        );
        assert!(
            serde_json::from_str::<Process>(r#"{"pid":1,"syscalls":[{"name":"read"}]}"#).is_err()
        );
    }
}
