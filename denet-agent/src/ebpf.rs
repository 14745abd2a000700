//! Loads and attaches the embedded eBPF programs and gives typed access to their maps.

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::RawTracePoint,
    Ebpf, EbpfLoader,
};
use denet_common::{counter, IoAccounting, KernelOffsets};

use crate::btf::Btf;

/// The eBPF object built by build.rs from `denet-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/denet.bpf.o"));

/// Programs and the tracepoints they attach to, in attach order. Exit and exec go
/// first so no process can be forked into the tracked set without them watching.
const PROGRAMS: &[(&str, &str)] = &[
    ("sched_process_exit", "sched_process_exit"),
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_fork", "sched_process_fork"),
];

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("tracepoint {name} has {found} arguments on this kernel, expected {expected}")]
    TracepointShape {
        name: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("loading eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
}

/// Kernel counters, summed over CPUs (see `denet_common::counter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub events_emitted: u64,
    pub ringbuf_drops: u64,
    pub track_insert_errors: u64,
    pub read_errors: u64,
    pub threads_created: u64,
}

/// Attached programs plus the maps the agent uses.
pub struct KernelTracer {
    // Owns the attached programs: dropping it detaches them.
    _ebpf: Ebpf,
    tracked: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
}

fn resolve_offsets(btf: &Btf) -> Result<KernelOffsets, TracerError> {
    let off = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .map_err(|e| TracerError::Btf(format!("{s}.{m}: {e}")))
    };
    let size = |s: &str| {
        btf.struct_size(s)
            .map_err(|e| TracerError::Btf(format!("sizeof({s}): {e}")))
    };
    // The exit program reads task_io_accounting as a whole into IoAccounting.
    let io_fields = [
        "rchar",
        "wchar",
        "syscr",
        "syscw",
        "read_bytes",
        "write_bytes",
        "cancelled_write_bytes",
    ];
    for (i, field) in io_fields.iter().enumerate() {
        if off("task_io_accounting", field)? as usize != i * 8 {
            return Err(TracerError::Btf(format!(
                "task_io_accounting.{field} is not at byte {}",
                i * 8
            )));
        }
    }
    if size("task_io_accounting")? as usize != std::mem::size_of::<IoAccounting>() {
        return Err(TracerError::Btf(
            "unexpected task_io_accounting size".into(),
        ));
    }
    Ok(KernelOffsets {
        task_pid: off("task_struct", "pid")?,
        task_tgid: off("task_struct", "tgid")?,
        task_mm: off("task_struct", "mm")?,
        task_exit_code: off("task_struct", "exit_code")?,
        task_utime: off("task_struct", "utime")?,
        task_stime: off("task_struct", "stime")?,
        task_sum_exec_runtime: off("task_struct", "se")? + off("sched_entity", "sum_exec_runtime")?,
        task_nvcsw: off("task_struct", "nvcsw")?,
        task_nivcsw: off("task_struct", "nivcsw")?,
        task_min_flt: off("task_struct", "min_flt")?,
        task_maj_flt: off("task_struct", "maj_flt")?,
        task_ioac: off("task_struct", "ioac")?,
        mm_arg_start: off("mm_struct", "arg_start")?,
        mm_arg_end: off("mm_struct", "arg_end")?,
        mm_hiwater_rss: off("mm_struct", "hiwater_rss")?,
        mm_hiwater_vm: off("mm_struct", "hiwater_vm")?,
        mm_rss_stat: off("mm_struct", "rss_stat")?,
        percpu_counter_size: size("percpu_counter")?,
        percpu_counter_count: off("percpu_counter", "count")?,
        binprm_filename: off("linux_binprm", "filename")?,
    })
}

/// The programs read tracepoint arguments by position: refuse kernels where the
/// prototypes differ rather than read garbage.
fn check_tracepoints(btf: &Btf) -> Result<(), TracerError> {
    for (name, expected) in [
        ("sched_process_fork", 2),
        ("sched_process_exec", 3),
        ("sched_process_exit", 2),
    ] {
        let found = btf
            .tracepoint_arg_count(name)
            .map_err(|e| TracerError::Btf(format!("btf_trace_{name}: {e}")))?;
        if found != expected {
            return Err(TracerError::TracepointShape {
                name,
                found,
                expected,
            });
        }
    }
    Ok(())
}

impl KernelTracer {
    /// Loads the programs with offsets from this kernel's BTF and attaches them.
    pub fn load(ringbuf_bytes: u32) -> Result<Self, TracerError> {
        let btf = Btf::from_sys_fs().map_err(|e| TracerError::Btf(e.to_string()))?;
        check_tracepoints(&btf)?;
        let offsets = resolve_offsets(&btf)?;
        // No BTF for aya: the programs carry no CO-RE relocations and raw tracepoints
        // attach by name, so the loader need not parse the kernel's BTF a second time.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .override_global("OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", ringbuf_bytes)
            .load(OBJECT)?;
        for &(name, tracepoint) in PROGRAMS {
            let program: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(TracerError::Missing(name))?
                .try_into()
                .map_err(|source| TracerError::Program { name, source })?;
            program
                .load()
                .map_err(|source| TracerError::Program { name, source })?;
            program
                .attach(tracepoint)
                .map_err(|source| TracerError::Program { name, source })?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(TracerError::Missing(name))
        };
        let tracked =
            HashMap::try_from(take(&mut ebpf, "TRACKED")?).map_err(|source| TracerError::Map {
                name: "TRACKED",
                source,
            })?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(|source| {
            TracerError::Map {
                name: "COUNTERS",
                source,
            }
        })?;
        let events =
            RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| TracerError::Map {
                name: "EVENTS",
                source,
            })?;
        Ok(Self {
            _ebpf: ebpf,
            tracked,
            counters,
            events: Some(events),
        })
    }

    /// Puts `pid` into the kernel's tracked set (its forks are followed from now on).
    pub fn track(&mut self, pid: u32, parent: u32) -> Result<(), TracerError> {
        self.tracked
            .insert(pid, parent, 0)
            .map_err(|source| TracerError::Map {
                name: "TRACKED",
                source,
            })
    }

    /// Processes currently in the kernel's tracked set.
    pub fn tracked_pids(&self) -> Vec<u32> {
        self.tracked.keys().filter_map(Result::ok).collect()
    }

    /// The lifecycle ring buffer; handed out once, to the collector.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn counters(&self) -> Result<KernelCounters, TracerError> {
        let sum = |slot: u32| -> Result<u64, TracerError> {
            let values = self
                .counters
                .get(&slot, 0)
                .map_err(|source| TracerError::Map {
                    name: "COUNTERS",
                    source,
                })?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            events_emitted: sum(counter::SEQ)?,
            ringbuf_drops: sum(counter::RINGBUF_DROPS)?,
            track_insert_errors: sum(counter::TRACK_INSERT_ERRORS)?,
            read_errors: sum(counter::READ_ERRORS)?,
            threads_created: sum(counter::THREADS_CREATED)?,
        })
    }
}
