//! Kernel side of denet-agent: follows a process tree from fork to exit.
//!
//! Raw tracepoints: their arguments are the tracepoint's `TP_PROTO` arguments (no
//! tracefs, no BTF needed to attach), and every kernel read goes through
//! `bpf_probe_read_kernel` with offsets resolved by the agent.
//!
//! Every program first checks whether the current task's process is in `TRACKED`
//! and returns at once when it is not, so untracked tasks pay one hash lookup.
//! Nothing here panics, and everything that cannot be delivered is counted in
//! `COUNTERS` (see `denet_common::counter`).
#![no_std]
#![no_main]
// Atomic adds on shared map values (see stats::add).
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::{fentry, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, RawTracePointContext},
};
mod block;
mod file_hooks;
mod files;
mod net;
mod sched;
mod stats;
mod syscalls;

use denet_common::{
    counter, run_counter, run_flag, EventHeader, EventKind, ExecEvent, ExitEvent, ForkEvent,
    IoAccounting, KernelOffsets, OomKillEvent, Settings, ARGV_MAX, EXEC_ARGV_TRUNCATED,
    EXEC_ARGV_UNREADABLE, EXEC_FILENAME_TRUNCATED, EXIT_GROUP_DEAD, FILENAME_MAX, MAX_RUNS,
    RSS_COUNTERS, TRACKED_MAX_ENTRIES,
};

/// Struct member offsets, filled in by the agent from vmlinux BTF before loading.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_mm: 0,
    task_exit_code: 0,
    task_utime: 0,
    task_stime: 0,
    task_sum_exec_runtime: 0,
    task_nvcsw: 0,
    task_nivcsw: 0,
    task_min_flt: 0,
    task_maj_flt: 0,
    task_ioac: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    mm_hiwater_rss: 0,
    mm_hiwater_vm: 0,
    mm_rss_stat: 0,
    percpu_counter_size: 0,
    percpu_counter_count: 0,
    binprm_filename: 0,
    regs_di: 0,
    regs_si: 0,
    regs_dx: 0,
    regs_orig_ax: 0,
    sock_family: 0,
    sock_protocol: 0,
    bio_opf: 0,
    bio_size: 0,
    request_bio: 0,
    socket_sk: 0,
};

/// Tracked processes: tgid -> run id (the run whose tree the process is in).
#[map]
static TRACKED: HashMap<u32, u32> =
    HashMap::with_max_entries(TRACKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// What each run asks for (`denet_common::run_flag` bits), indexed by run id.
#[map]
static RUNS: Array<u32> = Array::with_max_entries(MAX_RUNS, 0);

/// Per-run event and drop counts (`denet_common::run_counter`), per CPU.
#[map]
static RUN_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(MAX_RUNS * run_counter::SLOTS, 0);

/// Lifecycle events (fork, exec, exit); size overridden by the agent.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Per-CPU scratch space where an exec event is assembled before only its used
/// bytes are copied to the ring buffer (argv is usually far shorter than ARGV_MAX).
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sequence numbers and error/drop counters, indexed by
/// `denet_common::counter`. Per-CPU so increments need no atomics: these tracepoints
/// run with preemption disabled, so nothing else touches a CPU's slot meanwhile.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Ring-buffer bytes waiting before a submit wakes the agent. Below this the agent
/// is not woken (it polls every few milliseconds anyway): a wake-up per event would
/// cost the traced processes a cross-CPU wake-up each.
const WAKEUP_BYTES: u64 = 256 * 1024;

#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// One field of `OFFSETS`, read volatile so the compiler cannot constant-fold the
/// zero initialiser (the agent patches the real values in before loading).
macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: plain read of a field of a static.
        let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::OFFSETS.$field)) };
        v
    }};
}
pub(crate) use off;

/// Settings written by the agent before loading.
#[unsafe(no_mangle)]
pub(crate) static SETTINGS: Settings = Settings {
    nr_cpus: 1,
    _pad: 0,
};

macro_rules! setting {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: plain read of a field of a static.
        let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::SETTINGS.$field)) };
        v
    }};
}
pub(crate) use setting;

#[inline(always)]
pub(crate) fn bump(slot: u32) -> u64 {
    match COUNTERS.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from the map and is valid for this CPU's slot.
        Some(ptr) => unsafe {
            let old = *ptr;
            *ptr = old + 1;
            old
        },
        None => 0,
    }
}

/// The tracked set again, as an array indexed by tgid (sized to pid_max by the
/// agent), holding the run id: the check every hot-path program makes first, for
/// every task on the machine, and array lookups are inlined by the verifier where
/// hash lookups are not. `TRACKED` stays the authoritative set the agent iterates.
#[map]
static TRACKED_FAST: Array<u32> = Array::with_max_entries(32_768, 0);

/// The run `tgid` belongs to, 0 when it is not tracked.
#[inline(always)]
pub(crate) fn run_of(tgid: u32) -> u32 {
    match TRACKED_FAST.get(tgid) {
        Some(v) => *v,
        // A tgid beyond the array (pid_max raised after load): ask the hash map.
        // SAFETY: the value is copied out at once.
        None => unsafe { TRACKED.get(&tgid) }.copied().unwrap_or(0),
    }
}

#[inline(always)]
pub(crate) fn is_tracked(tgid: u32) -> bool {
    run_of(tgid) != 0
}

/// Does `run` ask for this `run_flag`?
#[inline(always)]
pub(crate) fn wants(run: u32, flag: u32) -> bool {
    RUNS.get(run).is_some_and(|f| *f & flag != 0)
}

#[inline(always)]
fn bump_run(run: u32, slot: u32) {
    if let Some(ptr) = RUN_COUNTERS.get_ptr_mut(run * run_counter::SLOTS + slot) {
        // SAFETY: this CPU's slot; these programs run with preemption disabled.
        unsafe { *ptr += 1 };
    }
}

/// An event that did not fit in the ring buffer: counted for the node and its run.
#[inline(always)]
pub(crate) fn dropped(hdr: &EventHeader) {
    bump(counter::RINGBUF_DROPS);
    bump_run(hdr.run, run_counter::DROPS);
}

#[inline(always)]
fn set_tracked(tgid: u32, run: u32) {
    if run != 0 {
        if TRACKED.insert(&tgid, &run, 0).is_err() {
            bump(counter::TRACK_INSERT_ERRORS);
        }
    } else {
        // Removal failure only means it was already gone.
        let _ = TRACKED.remove(&tgid);
    }
    if let Some(slot) = TRACKED_FAST.get_ptr_mut(tgid) {
        // SAFETY: pointer to the array slot of `tgid`.
        unsafe { *slot = run };
    }
}

/// Read a kernel value at `base + off`; counts a read error and yields zero on failure.
#[inline(always)]
pub(crate) fn read_at<T: Default>(base: *const u8, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel validates the address; a fault returns an error.
    match unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize).cast::<T>()) } {
        Ok(v) => v,
        Err(_) => {
            bump(counter::READ_ERRORS);
            T::default()
        }
    }
}

#[inline(always)]
pub(crate) fn header(kind: EventKind, pid: u32, tgid: u32) -> EventHeader {
    let run = run_of(tgid);
    bump_run(run, run_counter::EMITTED);
    EventHeader {
        kind: kind as u32,
        // SAFETY: plain helper call without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        seq: bump(counter::SEQ),
        // SAFETY: plain helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid,
        tgid,
        run,
        _pad: 0,
    }
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent_tgid = (pid_tgid >> 32) as u32;
    let run = run_of(parent_tgid);
    // A run that has ended takes no new processes (its id may be handed out again).
    if run == 0 || !wants(run, run_flag::ACTIVE) {
        return 0;
    }
    let child: *const u8 = ctx.arg(1);
    let child_pid: u32 = read_at(child, off!(task_pid));
    let child_tgid: u32 = read_at(child, off!(task_tgid));
    if child_pid != child_tgid {
        // A new thread: its work is accounted to its process, which is tracked already.
        bump(counter::THREADS_CREATED);
        return 0;
    }
    set_tracked(child_tgid, run);
    stats::create(child_tgid, run);
    if wants(run, run_flag::FILES) {
        files::inherit(parent_tgid, child_tgid);
    }
    let event = ForkEvent {
        header: header(EventKind::Fork, child_pid, child_tgid),
        parent_tgid,
        parent_pid: pid_tgid as u32,
    };
    if EVENTS.output::<ForkEvent>(&event, wakeup_flags()).is_err() {
        dropped(&event.header);
    }
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return 0;
    }
    let Some(event) = EXEC_SCRATCH.get_ptr_mut(0) else {
        bump(counter::READ_ERRORS);
        return 0;
    };
    let hdr = header(EventKind::Exec, pid_tgid as u32, tgid);
    let task: *const u8 = ctx.arg(0);
    let old_pid: u64 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    // SAFETY: `event` points to this CPU's scratch slot, large enough for an
    // ExecEvent; fields are written through the pointer so the 4 KiB event never
    // lands on the 512-byte eBPF stack.
    let len = unsafe {
        (*event).header = hdr;
        (*event).old_pid = old_pid as u32;
        let mut flags = 0u32;

        let filename_ptr: *const u8 = read_at(bprm, off!(binprm_filename));
        let filename = &mut (*event).filename;
        match bpf_probe_read_kernel_str_bytes(filename_ptr, filename) {
            Ok(s) => {
                if s.len() >= FILENAME_MAX - 1 {
                    flags |= EXEC_FILENAME_TRUNCATED;
                }
            }
            Err(_) => {
                filename[0] = 0;
                bump(counter::READ_ERRORS);
            }
        }

        let mm: *const u8 = read_at(task, off!(task_mm));
        let arg_start: u64 = read_at(mm, off!(mm_arg_start));
        let arg_end: u64 = read_at(mm, off!(mm_arg_end));
        let total = arg_end.saturating_sub(arg_start);
        let mut len = total;
        if len > ARGV_MAX as u64 {
            len = ARGV_MAX as u64;
            flags |= EXEC_ARGV_TRUNCATED;
        }
        // The mask restates the bound in a form the verifier tracks.
        let len = (len as u32) & (2 * ARGV_MAX as u32 - 1);
        let len = if len > ARGV_MAX as u32 {
            ARGV_MAX as u32
        } else {
            len
        };
        let ret = if len > 0 {
            generated::bpf_probe_read_user(
                (*event).argv.as_mut_ptr().cast(),
                len,
                arg_start as *const core::ffi::c_void,
            )
        } else {
            0
        };
        let len = if ret != 0 {
            flags |= EXEC_ARGV_UNREADABLE;
            0
        } else {
            len
        };
        (*event).argv_len = len;
        (*event).argv_total_len = total as u32;
        (*event).flags = flags;
        len
    };
    // Send the fixed part plus the argv bytes actually used.
    let size = core::mem::offset_of!(ExecEvent, argv) + len as usize;
    // A power-of-two mask the verifier can track, then the exact bound.
    let size = size & (size_of::<ExecEvent>().next_power_of_two() - 1);
    if size > size_of::<ExecEvent>() {
        bump(counter::READ_ERRORS);
        return 0;
    }
    // SAFETY: `size` is at most size_of::<ExecEvent>() and `event` is a valid slot.
    let bytes = unsafe { core::slice::from_raw_parts(event.cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        dropped(&hdr);
    }
    0
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)` (6.16 on): fires for
/// every exiting thread, before `exit_mm()`.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    task_exit(ctx.arg(0), ctx.arg::<u64>(1) & 0xff != 0)
}

/// `taskstats_exit(struct task_struct *tsk, int group_dead)`, for kernels whose exit
/// tracepoint takes only the task and fires after `exit_mm()`: called by `do_exit()`
/// just before `exit_mm()`, with the exit code set, so it sees what the newer
/// tracepoint sees.
#[fentry(function = "taskstats_exit")]
pub fn taskstats_exit(ctx: FEntryContext) -> i32 {
    task_exit(ctx.arg(0), ctx.arg::<u64>(1) as u32 != 0)
}

/// One exiting thread. Each thread's counters are sent so the agent can sum them; the
/// last thread (group_dead) ends the process and adds its memory marks.
#[inline(always)]
fn task_exit(task: *const u8, group_dead: bool) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let run = run_of(tgid);
    if run == 0 {
        return 0;
    }
    sched::thread_exit(pid_tgid as u32, tgid, run);
    let hdr = header(EventKind::Exit, pid_tgid as u32, tgid);
    if group_dead {
        set_tracked(tgid, 0);
    }
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        dropped(&hdr);
        return 0;
    };
    let event = ExitEvent {
        header: hdr,
        exit_code: read_at(task, off!(task_exit_code)),
        flags: if group_dead { EXIT_GROUP_DEAD } else { 0 },
        utime_ns: read_at(task, off!(task_utime)),
        stime_ns: read_at(task, off!(task_stime)),
        sum_exec_runtime_ns: read_at(task, off!(task_sum_exec_runtime)),
        nvcsw: read_at(task, off!(task_nvcsw)),
        nivcsw: read_at(task, off!(task_nivcsw)),
        min_flt: read_at(task, off!(task_min_flt)),
        maj_flt: read_at(task, off!(task_maj_flt)),
        io: read_at::<IoAccounting>(task, off!(task_ioac)),
        hiwater_rss_pages: 0,
        hiwater_vm_pages: 0,
        rss_pages: 0,
    };
    entry.write(event);
    if group_dead {
        let mm: *const u8 = read_at(task, off!(task_mm));
        if !mm.is_null() {
            let rss = rss_pages(mm);
            // SAFETY: the record was fully initialised by `write` above.
            unsafe {
                let e = entry.as_mut_ptr();
                (*e).hiwater_rss_pages = read_at(mm, off!(mm_hiwater_rss));
                (*e).hiwater_vm_pages = read_at(mm, off!(mm_hiwater_vm));
                (*e).rss_pages = rss;
            }
        }
    }
    entry.submit(wakeup_flags());
    0
}

/// Resident pages of an address space: file + anon + shmem counters, each
/// `percpu_counter_read_positive()` (the folded count, never negative).
#[inline(always)]
fn rss_pages(mm: *const u8) -> u64 {
    let mut rss: u64 = 0;
    for slot in RSS_COUNTERS {
        let at = off!(mm_rss_stat) + slot * off!(percpu_counter_size) + off!(percpu_counter_count);
        let count: i64 = read_at(mm, at);
        if count > 0 {
            rss += count as u64;
        }
    }
    rss
}

/// `mark_victim(struct task_struct *task, uid_t uid)`: the OOM killer chose
/// `task` (of any cgroup or the whole machine). Fires in the context of the task that
/// ran out of memory, so the victim is read from the argument.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim(ctx: RawTracePointContext) -> i32 {
    oom_victim(ctx.arg(0))
}

#[inline(always)]
fn oom_victim(task: *const u8) -> i32 {
    let tgid: u32 = read_at(task, off!(task_tgid));
    if !is_tracked(tgid) {
        return 0;
    }
    let pid: u32 = read_at(task, off!(task_pid));
    let mm: *const u8 = read_at(task, off!(task_mm));
    let event = OomKillEvent {
        header: header(EventKind::OomKill, pid, tgid),
        rss_pages: if mm.is_null() { 0 } else { rss_pages(mm) },
    };
    if EVENTS
        .output::<OomKillEvent>(&event, wakeup_flags())
        .is_err()
    {
        dropped(&event.header);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
