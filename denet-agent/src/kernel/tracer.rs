//! Loads and attaches the embedded eBPF programs and gives typed access to their maps.
//!
//! One job, one file: the program table, parallel loading, attaching and detaching,
//! the tracked set and typed map access all belong to one loaded object.

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{raw_trace_point::RawTracePointLinkId, FEntry, FExit, RawTracePoint},
    Ebpf,
};
use std::collections::BTreeMap;

use denet_common::{
    counter, run_counter, run_flag, IoAccounting, KernelOffsets, Settings, FILE_STATS_MAX_ENTRIES,
    MAX_RUNS, TRACKED_MAX_ENTRIES,
};

use super::{
    btf::Btf,
    counters::{ProcDepth, StatsMaps},
    hooks::{Feature, Hook, Missing, Needs, Plan, Program},
    offsets_cache,
};

/// The eBPF object built by build.rs from `denet-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/denet.bpf.o"));

/// Names of the eBPF object's maps and globals the agent uses (the identifiers of
/// the statics in denet-ebpf; a unit test checks them against the object).
pub(crate) mod names {
    pub const TRACKED: &str = "TRACKED";
    pub const TRACKED_FAST: &str = "TRACKED_FAST";
    pub const RUNS: &str = "RUNS";
    pub const RUN_COUNTERS: &str = "RUN_COUNTERS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const PROC_STATS: &str = "PROC_STATS";
    pub const SYSCALLS: &str = "SYSCALLS";
    pub const FILE_STATS: &str = "FILE_STATS";
    pub const TASK_STATE: &str = "TASK_STATE";
    pub const OFFSETS: &str = "OFFSETS";
    pub const SETTINGS: &str = "SETTINGS";
    /// The maps above, for the check against the object.
    #[cfg(test)]
    pub const MAPS: &[&str] = &[
        TRACKED,
        TRACKED_FAST,
        RUNS,
        RUN_COUNTERS,
        COUNTERS,
        EVENTS,
        PROC_STATS,
        SYSCALLS,
        FILE_STATS,
        TASK_STATE,
    ];
}

/// What the kernel side collects besides the lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct TracerOptions {
    pub ringbuf_bytes: u32,
    /// Per-file accounting (open/read/write/close per fd).
    pub files: bool,
    /// Per-process syscall counts.
    pub syscalls: bool,
    /// Raw scheduler and block I/O events through the ring buffer.
    pub events: bool,
    /// Serve many runs (the node daemon): the maps of every feature get their full
    /// size, and the syscall hooks are loaded (verified) but attached only while a
    /// run needs them ([`KernelTracer::set_syscall_hooks`]).
    pub shared: bool,
}

impl TracerOptions {
    /// Files and syscall counts share one program pair on `raw_syscalls`; it runs
    /// for every syscall of every task on the machine while attached. (Files need it
    /// only where the kernel refuses the file trampolines.)
    pub fn syscall_hooks(&self) -> bool {
        self.files || self.syscalls
    }

    /// The `run_flag` bits of a run asking for these features.
    pub fn run_flags(&self) -> u32 {
        let mut flags = run_flag::ACTIVE;
        for (on, bit) in [
            (self.files, run_flag::FILES),
            (self.syscalls, run_flag::SYSCALLS),
            (self.events, run_flag::EVENTS),
        ] {
            if on {
                flags |= bit;
            }
        }
        flags
    }
}

/// The run a standalone `run` uses (the node daemon hands out 1..MAX_RUNS).
pub const STANDALONE_RUN: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    #[error("kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    Btf(String),
    #[error("this kernel cannot serve {feature}: {reason}")]
    Unsupported {
        feature: &'static str,
        reason: String,
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
    #[error("a thread loading the eBPF programs panicked")]
    LoaderThread,
}

/// Wraps a map error with the map's name.
pub(crate) fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> TracerError {
    move |source| TracerError::Map { name, source }
}

/// One run's event counts, summed over CPUs (see `denet_common::run_counter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunCounters {
    pub emitted: u64,
    pub drops: u64,
}

/// Kernel counters, summed over CPUs (see `denet_common::counter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    pub events_emitted: u64,
    pub ringbuf_drops: u64,
    pub track_insert_errors: u64,
    pub read_errors: u64,
    pub threads_created: u64,
    pub stats_insert_errors: u64,
}

/// Attached programs plus the maps the agent uses.
/// Size of the tgid-indexed tracked array: the kernel's pid_max.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304)
}

pub struct KernelTracer {
    // Owns the attached programs: dropping it detaches them.
    ebpf: Ebpf,
    tracked: HashMap<MapData, u32, u32>,
    tracked_fast: Array<MapData, u32>,
    runs: Array<MapData, u32>,
    run_counters: PerCpuArray<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    /// The tracer's own handle on the counters: creates them for a command it
    /// tracks, and reads live ones for the node daemon's clients.
    own_stats: StatsMaps,
    /// Two more handles (collector, sampler), handed out once.
    stats: Option<(StatsMaps, StatsMaps)>,
    /// The syscall hooks while they are attached.
    syscall_links: Vec<(&'static str, RawTracePointLinkId)>,
    nr_cpus: usize,
    /// The hook of each feature on this kernel, and what it cannot serve.
    plan: Plan,
    missing: Vec<Missing>,
    /// The file trampolines are attached (a run of its own with files, where the
    /// kernel takes them).
    file_hooks: bool,
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
    if size("task_io_accounting")? as usize != size_of::<IoAccounting>() {
        return Err(TracerError::Btf(
            "unexpected task_io_accounting size".into(),
        ));
    }
    // The RSS counters: per-CPU counters since 6.2, an atomic_long_t array before.
    let (rss_stride, rss_count) = match btf.struct_size("mm_rss_stat") {
        Ok(_) => (8, off("mm_rss_stat", "count")?),
        Err(_) => (size("percpu_counter")?, off("percpu_counter", "count")?),
    };
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
        percpu_counter_size: rss_stride,
        percpu_counter_count: rss_count,
        binprm_filename: off("linux_binprm", "filename")?,
        regs_di: off("pt_regs", "di")?,
        regs_si: off("pt_regs", "si")?,
        regs_dx: off("pt_regs", "dx")?,
        regs_orig_ax: off("pt_regs", "orig_ax")?,
        sock_family: off("sock", "__sk_common")? + off("sock_common", "skc_family")?,
        sock_protocol: off("sock", "sk_protocol")?,
        bio_opf: off("bio", "bi_opf")?,
        bio_size: off("bio", "bi_iter")? + off("bvec_iter", "bi_size")?,
        request_bio: off("request", "bio")?,
        socket_sk: off("socket", "sk")?,
    })
}

/// What this kernel offers: the struct offsets and the hook of each feature, from
/// the cache root keeps for this kernel build, else from its BTF. The parsed BTF is
/// freed before aya's loader runs, so the two never sit in memory together. A kernel
/// that lacks a feature is never cached, so its reasons are always current.
fn kernel_offsets() -> Result<(KernelOffsets, Plan, Vec<Missing>), TracerError> {
    let cache = offsets_cache::path();
    if let Some((offsets, plan)) = cache.as_deref().and_then(offsets_cache::read) {
        return Ok((offsets, plan, Vec::new()));
    }
    let btf = Btf::from_sys_fs().map_err(|e| TracerError::Btf(e.to_string()))?;
    let (plan, missing) = Plan::from_btf(&btf);
    if let Some(m) = missing.iter().find(|m| m.feature.essential()) {
        return Err(TracerError::Unsupported {
            feature: m.feature.name(),
            reason: m.reason.clone(),
        });
    }
    let offsets = resolve_offsets(&btf)?;
    if let (Some(path), true) = (&cache, missing.is_empty()) {
        offsets_cache::write(path, &offsets, &plan);
    }
    Ok((offsets, plan, missing))
}

/// A program of the plan and whether the kernel accepted it.
type Loaded = (&'static Program, Result<(), TracerError>);

/// Loads (verifies) the programs of the plan that `needed` selects, on every CPU at
/// once: the kernel's verifier is most of a run's start-up and runs in the loading
/// thread. Returns each program's result. Trampolines (fentry/fexit) need aya's own
/// parse of the kernel BTF, done only when the plan has one.
fn load_programs(
    ebpf: &mut Ebpf,
    plan: &Plan,
    needed: impl Fn(&Program) -> bool,
) -> Result<Vec<Loaded>, TracerError> {
    let wanted: Vec<&'static Program> = plan.programs().filter(|p| needed(p)).collect();
    let kernel_btf = if wanted.iter().any(|p| p.hook.is_trampoline()) {
        Some(aya::Btf::from_sys_fs().map_err(|e| TracerError::Btf(e.to_string()))?)
    } else {
        None
    };
    let mut jobs: Vec<(&'static Program, &mut aya::programs::Program)> = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        if let Some(p) = wanted.iter().find(|p| p.name == name) {
            jobs.push((p, program));
        }
    }
    // A needed program missing from the object is reported by the attach loop.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, jobs.len().max(1));
    let per_worker = jobs.len().div_ceil(workers).max(1);
    let btf = kernel_btf.as_ref();
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = jobs
            .chunks_mut(per_worker)
            .map(|part| {
                scope.spawn(move || {
                    part.iter_mut()
                        .map(|(p, program)| (*p, load_one(p, program, btf)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| TracerError::LoaderThread))
            .collect::<Result<Vec<_>, _>>()
    })?;
    Ok(results.into_iter().flatten().collect())
}

fn load_one(
    p: &'static Program,
    program: &mut aya::programs::Program,
    btf: Option<&aya::Btf>,
) -> Result<(), TracerError> {
    let name = p.name;
    let err = |source| TracerError::Program { name, source };
    match p.hook {
        Hook::RawTp { .. } => {
            let program: &mut RawTracePoint = program.try_into().map_err(err)?;
            program.load().map_err(err)
        }
        Hook::FEntry(function) => {
            let program: &mut FEntry = program.try_into().map_err(err)?;
            program.load(function, trampoline_btf(btf)?).map_err(err)
        }
        Hook::FExit(function) => {
            let program: &mut FExit = program.try_into().map_err(err)?;
            program.load(function, trampoline_btf(btf)?).map_err(err)
        }
    }
}

fn trampoline_btf(btf: Option<&aya::Btf>) -> Result<&aya::Btf, TracerError> {
    btf.ok_or(TracerError::Missing("kernel BTF for a trampoline"))
}

/// Why a trampoline feature is missing on a kernel that refuses them.
const TRAMPOLINES_REFUSED: &str = "this kernel refuses trampoline (fentry/fexit) programs";

/// Attaches one loaded program. The link stays with the object: dropping the
/// tracer detaches it.
fn attach_one(ebpf: &mut Ebpf, p: &'static Program) -> Result<(), TracerError> {
    let name = p.name;
    let err = |source| TracerError::Program { name, source };
    let program = ebpf.program_mut(name).ok_or(TracerError::Missing(name))?;
    match p.hook {
        Hook::RawTp { tracepoint, .. } => {
            let program: &mut RawTracePoint = program.try_into().map_err(err)?;
            program.attach(tracepoint).map_err(err)?;
        }
        Hook::FEntry(_) => {
            let program: &mut FEntry = program.try_into().map_err(err)?;
            program.attach().map_err(err)?;
        }
        Hook::FExit(_) => {
            let program: &mut FExit = program.try_into().map_err(err)?;
            program.attach().map_err(err)?;
        }
    }
    Ok(())
}

fn raw_tp<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, TracerError> {
    ebpf.program_mut(name)
        .ok_or(TracerError::Missing(name))?
        .try_into()
        .map_err(|source| TracerError::Program { name, source })
}

impl KernelTracer {
    /// Loads the programs with offsets from this kernel's BTF and attaches them.
    pub fn load(options: TracerOptions) -> Result<Self, TracerError> {
        let (offsets, mut plan, mut missing) = kernel_offsets()?;
        // A plan with features BTF cannot serve is never cached (their reasons are
        // not kept), not even to record a refusal of trampolines.
        let cacheable = missing.is_empty();
        let nr_cpus =
            aya::util::nr_cpus().map_err(|(what, e)| TracerError::Btf(format!("{what}: {e}")))?;
        let settings = Settings {
            nr_cpus: nr_cpus as u32,
            _pad: 0,
        };
        let (files, syscalls) = (
            options.files || options.shared,
            options.syscalls || options.shared,
        );
        // No BTF for aya: the programs carry no CO-RE relocations and raw tracepoints
        // attach by name.
        let mut ebpf = super::aya_loader::without_kernel_btf()
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::SETTINGS, &settings, true)
            .map_max_entries(names::EVENTS, options.ringbuf_bytes)
            .map_max_entries(names::TRACKED_FAST, pid_max())
            // Maps of what is off get one entry, not room for every process.
            .map_max_entries(
                names::FILE_STATS,
                if files { FILE_STATS_MAX_ENTRIES } else { 1 },
            )
            .map_max_entries(
                names::SYSCALLS,
                if syscalls { TRACKED_MAX_ENTRIES } else { 1 },
            )
            .load(OBJECT)?;
        // The syscall hooks put every syscall on the machine on the kernel's slow
        // path: a standalone run neither loads nor attaches them unless asked; the
        // node daemon loads them once and attaches them while a run needs them. The
        // file trampolines cost only the file syscalls: a run of its own with files
        // uses them where the kernel takes them. The node daemon does not, so it never
        // leaves them on the machine's file syscalls; its runs' files use the
        // syscall hooks.
        let syscall_hooks = options.syscall_hooks();
        let want_file_hooks = !options.shared && options.files;
        let loaded = load_programs(&mut ebpf, &plan, |p| match p.needs {
            Needs::Always => true,
            Needs::SyscallHooks => syscall_hooks || options.shared,
            Needs::Files => want_file_hooks,
        })?;
        // A program the kernel refuses (trampolines on some kernels) costs its
        // feature, or the run when the feature is essential. The refusal is kept
        // with the plan, so later runs on this kernel build do not try again.
        let mut refused = false;
        for (p, result) in loaded {
            let Err(e) = result else { continue };
            if p.feature.essential() || p.feature == Feature::Syscalls {
                return Err(e);
            }
            if p.hook.is_trampoline() {
                refused = true;
            }
            if plan.serves(p.feature) {
                plan.drop_feature(p.feature);
                missing.push(Missing {
                    feature: p.feature,
                    reason: format!("this kernel refused the program: {e}"),
                });
            }
        }
        if refused {
            for feature in plan.trampolines_refused() {
                missing.push(Missing {
                    feature,
                    reason: TRAMPOLINES_REFUSED.into(),
                });
            }
            if let (Some(path), true) = (offsets_cache::path(), cacheable) {
                offsets_cache::write(&path, &offsets, &plan);
            }
        }
        // Said only to a run that asked for files, so a default run's header does not
        // depend on whether an earlier run tried.
        if want_file_hooks
            && plan.refuses_trampolines()
            && !missing.iter().any(|m| m.feature == Feature::Files)
        {
            missing.push(Missing {
                feature: Feature::Files,
                reason: format!(
                    "{TRAMPOLINES_REFUSED} (found by an earlier run on this kernel build)"
                ),
            });
        }
        let file_hooks = want_file_hooks && plan.serves(Feature::Files);
        for p in plan.programs() {
            if p.needs == Needs::Always || (p.needs == Needs::Files && file_hooks) {
                attach_one(&mut ebpf, p)?;
            }
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(TracerError::Missing(name))
        };
        let tracked =
            HashMap::try_from(take(&mut ebpf, names::TRACKED)?).map_err(map_err(names::TRACKED))?;
        let tracked_fast = Array::try_from(take(&mut ebpf, names::TRACKED_FAST)?)
            .map_err(map_err(names::TRACKED_FAST))?;
        let runs = Array::try_from(take(&mut ebpf, names::RUNS)?).map_err(map_err(names::RUNS))?;
        let run_counters = PerCpuArray::try_from(take(&mut ebpf, names::RUN_COUNTERS)?)
            .map_err(map_err(names::RUN_COUNTERS))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, names::COUNTERS)?)
            .map_err(map_err(names::COUNTERS))?;
        let events =
            RingBuf::try_from(take(&mut ebpf, names::EVENTS)?).map_err(map_err(names::EVENTS))?;
        let mut handles = StatsMaps::handles(
            take(&mut ebpf, names::PROC_STATS)?,
            take(&mut ebpf, names::SYSCALLS)?,
            take(&mut ebpf, names::FILE_STATS)?,
            take(&mut ebpf, names::TASK_STATE)?,
            nr_cpus,
            3,
        )?;
        for h in &mut handles {
            h.may_count_syscalls = syscalls;
        }
        let (Some(sampler), Some(collector), Some(own_stats)) =
            (handles.pop(), handles.pop(), handles.pop())
        else {
            return Err(TracerError::Missing(names::PROC_STATS));
        };
        let mut tracer = Self {
            ebpf,
            tracked,
            tracked_fast,
            runs,
            run_counters,
            counters,
            events: Some(events),
            own_stats,
            stats: Some((collector, sampler)),
            syscall_links: Vec::new(),
            nr_cpus,
            plan,
            missing,
            file_hooks,
        };
        if !options.shared && tracer.needs_syscall_hooks(options.files, options.syscalls) {
            tracer.set_syscall_hooks(true)?;
        }
        Ok(tracer)
    }

    /// Attaches or detaches the syscall hooks (loaded at start when `shared`).
    pub fn set_syscall_hooks(&mut self, on: bool) -> Result<(), TracerError> {
        if on != self.syscall_links.is_empty() {
            return Ok(());
        }
        if on {
            for p in self
                .plan
                .programs()
                .filter(|p| p.needs == Needs::SyscallHooks)
            {
                let link = raw_tp(&mut self.ebpf, p.name)?
                    .attach(p.name)
                    .map_err(|source| TracerError::Program {
                        name: p.name,
                        source,
                    })?;
                self.syscall_links.push((p.name, link));
            }
        } else {
            for (name, link) in std::mem::take(&mut self.syscall_links) {
                raw_tp(&mut self.ebpf, name)?
                    .detach(link)
                    .map_err(|source| TracerError::Program { name, source })?;
            }
        }
        Ok(())
    }

    pub fn syscall_hooks_attached(&self) -> bool {
        !self.syscall_links.is_empty()
    }

    /// Feature name to the hooks serving it now (the syscall hooks while attached,
    /// the file trampolines when attached).
    pub fn hooks(&self) -> BTreeMap<String, Vec<String>> {
        self.plan
            .hooks(self.syscall_hooks_attached(), self.file_hooks)
    }

    /// Whether a run with these features needs the raw syscall hooks: syscall
    /// counts always do, files only where the trampolines do not serve them.
    pub fn needs_syscall_hooks(&self, files: bool, syscalls: bool) -> bool {
        syscalls || (files && !self.file_hooks)
    }

    /// Features this kernel cannot serve, with the reasons.
    pub fn unavailable(&self) -> BTreeMap<String, String> {
        self.missing
            .iter()
            .map(|m| (m.feature.name().to_owned(), m.reason.clone()))
            .collect()
    }

    /// Starts run `run` asking for `flags` (`denet_common::run_flag`), with its
    /// event counters at zero and nothing of an earlier run of the same id left in
    /// the tracked set.
    pub fn open_run(&mut self, run: u32, mut flags: u32) -> Result<(), TracerError> {
        if flags & run_flag::FILES != 0 && self.file_hooks {
            flags |= run_flag::FILE_TRAMPOLINES;
        }
        for pid in self.tracked_pids(run) {
            self.untrack(pid);
        }
        for slot in [run_counter::EMITTED, run_counter::DROPS] {
            let zeros = PerCpuValues::try_from(vec![0u64; self.nr_cpus])
                .map_err(|e| TracerError::Btf(format!("per-CPU values: {e}")))?;
            self.run_counters
                .set(run * run_counter::SLOTS + slot, zeros, 0)
                .map_err(map_err(names::RUN_COUNTERS))?;
        }
        self.runs
            .set(run, flags | run_flag::ACTIVE, 0)
            .map_err(map_err(names::RUNS))
    }

    /// Ends run `run`: whatever of it is still tracked is forgotten.
    pub fn close_run(&mut self, run: u32) {
        let _ = self.runs.set(run, 0, 0);
        for pid in self.tracked_pids(run) {
            self.untrack(pid);
        }
    }

    /// Puts `pid` into the kernel's tracked set as part of `run` (its forks are
    /// followed from now on) with zeroed counters.
    pub fn track(&mut self, pid: u32, run: u32, syscalls: bool) -> Result<(), TracerError> {
        if !(1..MAX_RUNS).contains(&run) {
            return Err(TracerError::Btf(format!("run id {run} out of range")));
        }
        self.own_stats.create(pid, syscalls)?;
        self.tracked
            .insert(pid, run, 0)
            .map_err(map_err(names::TRACKED))?;
        self.tracked_fast
            .set(pid, run, 0)
            .map_err(map_err(names::TRACKED_FAST))
    }

    /// The run `pid` is tracked in, 0 when none.
    pub fn run_of(&self, pid: u32) -> u32 {
        match self.tracked_fast.get(&pid, 0) {
            Ok(run) => run,
            Err(_) => self.tracked.get(&pid, 0).unwrap_or(0),
        }
    }

    /// Drops a pid the kernel side failed to remove (its exit was not seen).
    pub fn untrack(&mut self, pid: u32) {
        let _ = self.tracked.remove(&pid);
        let _ = self.tracked_fast.set(pid, 0, 0);
    }

    /// The counter maps: (for the collector, for the sampler); handed out once.
    pub fn take_stats(&mut self) -> Option<(StatsMaps, StatsMaps)> {
        self.stats.take()
    }

    /// Processes of `run` currently in the kernel's tracked set.
    pub fn tracked_pids(&self, run: u32) -> Vec<u32> {
        self.tracked
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, r)| *r == run)
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Live counters of processes of `run` (None for a pid that is not in it).
    pub fn read_live(&self, run: u32, pids: &[u32], now_mono_ns: u64) -> Vec<Option<ProcDepth>> {
        pids.iter()
            .map(|&pid| {
                (self.run_of(pid) == run)
                    .then(|| self.own_stats.read_live(pid, now_mono_ns))
                    .flatten()
            })
            .collect()
    }

    /// The lifecycle ring buffer; handed out once, to the collector.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    pub fn run_counters(&self, run: u32) -> Result<RunCounters, TracerError> {
        let sum = |slot: u32| -> Result<u64, TracerError> {
            let values = self
                .run_counters
                .get(&(run * run_counter::SLOTS + slot), 0)
                .map_err(map_err(names::RUN_COUNTERS))?;
            Ok(values.iter().sum())
        };
        Ok(RunCounters {
            emitted: sum(run_counter::EMITTED)?,
            drops: sum(run_counter::DROPS)?,
        })
    }

    pub fn counters(&self) -> Result<KernelCounters, TracerError> {
        let sum = |slot: u32| -> Result<u64, TracerError> {
            let values = self
                .counters
                .get(&slot, 0)
                .map_err(map_err(names::COUNTERS))?;
            Ok(values.iter().sum())
        };
        Ok(KernelCounters {
            events_emitted: sum(counter::SEQ)?,
            ringbuf_drops: sum(counter::RINGBUF_DROPS)?,
            track_insert_errors: sum(counter::TRACK_INSERT_ERRORS)?,
            read_errors: sum(counter::READ_ERRORS)?,
            threads_created: sum(counter::THREADS_CREATED)?,
            stats_insert_errors: sum(counter::STATS_INSERT_ERRORS)?,
        })
    }
}

impl KernelCounters {
    /// What happened between `earlier` and `self` (a run's share of the node's
    /// totals, as seen over its lifetime).
    pub fn since(&self, earlier: &KernelCounters) -> KernelCounters {
        KernelCounters {
            events_emitted: self.events_emitted.saturating_sub(earlier.events_emitted),
            ringbuf_drops: self.ringbuf_drops.saturating_sub(earlier.ringbuf_drops),
            track_insert_errors: self
                .track_insert_errors
                .saturating_sub(earlier.track_insert_errors),
            read_errors: self.read_errors.saturating_sub(earlier.read_errors),
            threads_created: self.threads_created.saturating_sub(earlier.threads_created),
            stats_insert_errors: self
                .stats_insert_errors
                .saturating_sub(earlier.stats_insert_errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program table and the map names are the eBPF object's: every program in
    /// the table exists and every program in the object is in the table.
    #[test]
    fn program_table_and_map_names_match_the_object() {
        let obj = aya_obj::Object::parse(OBJECT).expect("embedded eBPF object");
        let mut in_object: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        in_object.sort_unstable();
        let mut in_table: Vec<&str> = super::super::hooks::PROGRAMS
            .iter()
            .map(|p| p.name)
            .collect();
        in_table.sort_unstable();
        assert_eq!(in_table, in_object);
        for map in names::MAPS {
            assert!(obj.maps.contains_key(*map), "no map {map} in the object");
        }
    }
}
