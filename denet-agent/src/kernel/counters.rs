//! Reads the counters the eBPF programs aggregate per process (scheduler, block
//! I/O, network, syscalls) and per open file, summing the per-CPU values.

use aya::maps::{HashMap, Map, MapData, PerCpuHashMap, PerCpuValues};
use denet_common::{
    FileKey, FileStats, ProcStats, SyscallCounts, TaskState, TASK_BLOCKED_IO, TASK_RUNNABLE,
    TASK_RUNNING,
};

use super::tracer::{map_err, names, TracerError};

/// A process's counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcDepth {
    pub stats: ProcStats,
    /// (syscall number, count), non-zero counts only, by number; None when
    /// syscalls are not counted (without `--syscalls`).
    pub syscalls: Option<Vec<(u16, u64)>>,
}

pub struct StatsMaps {
    /// One shared entry per process (the kernel adds atomically).
    procs: HashMap<MapData, u32, ProcStats>,
    syscalls: PerCpuHashMap<MapData, u32, SyscallCounts>,
    files: PerCpuHashMap<MapData, FileKey, FileStats>,
    /// Per-thread scheduler states (sampler only): the time a thread has spent in
    /// its current state is not in `procs` until it leaves that state.
    task_state: Option<HashMap<MapData, u32, TaskState>>,
    nr_cpus: usize,
    /// Syscalls may be counted by the loaded programs (else SYSCALLS stays empty
    /// and is never read). Whether a given process is counted is whether it has an
    /// entry: its run asked for it.
    pub may_count_syscalls: bool,
}

/// A second handle on the same kernel map (for another thread).
fn dup(map: &MapData, name: &'static str) -> Result<MapData, TracerError> {
    let fd = std::os::fd::AsFd::as_fd(map.fd())
        .try_clone_to_owned()
        .map_err(|e| TracerError::Btf(format!("dup of map {name}: {e}")))?;
    MapData::from_fd(fd).map_err(map_err(name))
}

/// The MapData inside a hash map of the kind the agent reads it as (a per-CPU map
/// read as a plain one would overrun the value buffer).
fn data(map: Map, name: &'static str, per_cpu: bool) -> Result<MapData, TracerError> {
    match (map, per_cpu) {
        (Map::PerCpuHashMap(d), true) | (Map::HashMap(d), false) => Ok(d),
        _ => Err(TracerError::Missing(name)),
    }
}

impl StatsMaps {
    fn from_data(
        procs: MapData,
        syscalls: MapData,
        files: MapData,
        nr_cpus: usize,
    ) -> Result<Self, TracerError> {
        Ok(Self {
            procs: HashMap::try_from(Map::HashMap(procs)).map_err(map_err(names::PROC_STATS))?,
            syscalls: PerCpuHashMap::try_from(Map::PerCpuHashMap(syscalls))
                .map_err(map_err(names::SYSCALLS))?,
            files: PerCpuHashMap::try_from(Map::PerCpuHashMap(files))
                .map_err(map_err(names::FILE_STATS))?,
            task_state: None,
            nr_cpus,
            may_count_syscalls: true,
        })
    }

    /// Handles on the same kernel maps, one per user (the collector thread, the
    /// sampler, the tracer's own), each able to read live scheduler states.
    pub fn handles(
        procs: Map,
        syscalls: Map,
        files: Map,
        task_state: Map,
        nr_cpus: usize,
        count: usize,
    ) -> Result<Vec<Self>, TracerError> {
        let (p, s, f) = (
            data(procs, names::PROC_STATS, false)?,
            data(syscalls, names::SYSCALLS, true)?,
            data(files, names::FILE_STATS, true)?,
        );
        let t = data(task_state, names::TASK_STATE, false)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let mut h = Self::from_data(
                dup(&p, names::PROC_STATS)?,
                dup(&s, names::SYSCALLS)?,
                dup(&f, names::FILE_STATS)?,
                nr_cpus,
            )?;
            h.task_state = Some(
                HashMap::try_from(Map::HashMap(dup(&t, names::TASK_STATE)?))
                    .map_err(map_err(names::TASK_STATE))?,
            );
            out.push(h);
        }
        Ok(out)
    }

    /// Like [`Self::read`], plus the time each thread has spent so far in the state
    /// it is in (so a thread running through a whole sample window shows up in it).
    pub fn read_live(&self, tgid: u32, now_mono_ns: u64) -> Option<ProcDepth> {
        let mut depth = self.read(tgid)?;
        let Some(states) = &self.task_state else {
            return Some(depth);
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{tgid}/task")) else {
            return Some(depth);
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(st) = states.get(&tid, 0) else {
                continue;
            };
            let d = now_mono_ns.saturating_sub(st.since_ns);
            let s = &mut depth.stats;
            match st.state {
                TASK_RUNNING => s.oncpu_ns += d,
                TASK_RUNNABLE => s.cpu_wait_ns += d,
                TASK_BLOCKED_IO => s.io_wait_ns += d,
                _ => s.sleep_ns += d,
            }
        }
        Some(depth)
    }

    /// Zeroed counters for a process the agent tracks itself (the command); the
    /// kernel creates them for every process forked from it.
    pub fn create(&mut self, tgid: u32, syscalls: bool) -> Result<(), TracerError> {
        self.procs
            .insert(tgid, ProcStats::default(), 0)
            .map_err(map_err(names::PROC_STATS))?;
        if !(syscalls && self.may_count_syscalls) {
            return Ok(());
        }
        let counts = PerCpuValues::try_from(vec![SyscallCounts::default(); self.nr_cpus])
            .map_err(|e| TracerError::Btf(format!("per-CPU values: {e}")))?;
        self.syscalls
            .insert(tgid, counts, 0)
            .map_err(map_err(names::SYSCALLS))
    }

    /// Current counters of a live process (None when it has none).
    pub fn read(&self, tgid: u32) -> Option<ProcDepth> {
        let stats = self.procs.get(&tgid, 0).ok()?;
        Some(ProcDepth {
            stats,
            syscalls: self.syscall_counts(tgid),
        })
    }

    /// (syscall number, count) of a live process, non-zero counts only; None when
    /// it is not counted.
    fn syscall_counts(&self, tgid: u32) -> Option<Vec<(u16, u64)>> {
        if !self.may_count_syscalls {
            return None;
        }
        let per_cpu = self.syscalls.get(&tgid, 0).ok()?;
        let mut counts = [0u64; denet_common::SYSCALL_SLOTS];
        for v in per_cpu.iter() {
            for (total, c) in counts.iter_mut().zip(v.counts.iter()) {
                *total += u64::from(*c);
            }
        }
        Some(
            counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(nr, c)| (nr as u16, *c))
                .collect(),
        )
    }

    /// Final counters of an exited process; its entries are deleted.
    pub fn take(&mut self, tgid: u32) -> Option<ProcDepth> {
        let depth = self.read(tgid);
        let _ = self.procs.remove(&tgid);
        if depth.as_ref().is_some_and(|d| d.syscalls.is_some()) {
            let _ = self.syscalls.remove(&tgid);
        }
        depth
    }

    /// Final counters of a file still open when its process exited.
    pub fn take_file(&mut self, tgid: u32, fd: u32) -> Option<FileStats> {
        let key = FileKey { tgid, fd };
        let per_cpu = self.files.get(&key, 0).ok()?;
        let mut total = FileStats::default();
        for v in per_cpu.iter() {
            total.read_bytes += v.read_bytes;
            total.write_bytes += v.write_bytes;
            total.reads += v.reads;
            total.writes += v.writes;
        }
        let _ = self.files.remove(&key);
        Some(total)
    }
}
