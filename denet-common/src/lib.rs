//! Wire types shared by the eBPF programs (`denet-ebpf`) and the agent.
//!
//! Every event in the lifecycle ring buffer starts with [`EventHeader`]; its `kind`
//! says which struct follows. All structs are `#[repr(C)]` with explicit padding so
//! both sides agree on the layout byte for byte.
#![no_std]

/// Event kinds carried in [`EventHeader::kind`].
pub const EVENT_FORK: u32 = 1;
pub const EVENT_EXEC: u32 = 2;
pub const EVENT_EXIT: u32 = 3;

/// Bytes of argv captured per exec (NUL-separated, as in `/proc/PID/cmdline`).
/// A power of two so the eBPF side can bound reads with a mask.
pub const ARGV_MAX: usize = 4096;
/// Bytes of the exec'd filename captured (including the trailing NUL).
pub const FILENAME_MAX: usize = 256;

/// [`ExecEvent::flags`]: argv was longer than [`ARGV_MAX`] and was cut.
pub const EXEC_ARGV_TRUNCATED: u32 = 1;
/// [`ExecEvent::flags`]: the filename was longer than [`FILENAME_MAX`] - 1 and was cut.
pub const EXEC_FILENAME_TRUNCATED: u32 = 2;
/// [`ExecEvent::flags`]: argv could not be read (its pages were not resident).
pub const EXEC_ARGV_UNREADABLE: u32 = 4;

/// Header common to every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the `EVENT_*` constants.
    pub kind: u32,
    /// CPU the event was produced on.
    pub cpu: u32,
    /// Per-CPU sequence number, incremented for every event the kernel side tried to
    /// emit on `cpu` (also those dropped because the ring buffer was full), so gaps in
    /// a CPU's sequence reveal loss.
    pub seq: u64,
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    /// Thread id of the task the event is about (the kernel's `pid`).
    pub pid: u32,
    /// Process id (thread-group id) of that task.
    pub tgid: u32,
}

/// A tracked process created a new process (not a thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    /// `pid`/`tgid`: the new process.
    pub header: EventHeader,
    /// Process (tgid) that called fork/clone.
    pub parent_tgid: u32,
    /// Thread of the parent that called fork/clone.
    pub parent_pid: u32,
}

/// A tracked process successfully executed a new image.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub header: EventHeader,
    /// Thread id that called exec before it took over the group leader's id.
    pub old_pid: u32,
    /// `EXEC_*` flags.
    pub flags: u32,
    /// Valid bytes in `argv`.
    pub argv_len: u32,
    /// Total argv bytes of the new image (may exceed `argv_len` when truncated).
    pub argv_total_len: u32,
    /// `bprm->filename`, NUL-terminated: the path as passed to execve.
    pub filename: [u8; FILENAME_MAX],
    /// NUL-separated arguments read from the new image's `mm->arg_start`.
    pub argv: [u8; ARGV_MAX],
}

/// [`ExitEvent::flags`]: this was the last thread: the process is gone.
pub const EXIT_GROUP_DEAD: u32 = 1;

/// `struct task_io_accounting` (CONFIG_TASK_IO_ACCOUNTING), bytes and syscall counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoAccounting {
    pub rchar: u64,
    pub wchar: u64,
    pub syscr: u64,
    pub syscw: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
}

/// A thread of a tracked process exited. Emitted for every thread, so the agent can
/// sum per-thread counters into the process; the last thread has `EXIT_GROUP_DEAD`
/// and also carries the memory high-water marks of the process's address space.
/// Read at `sched_process_exit`, which fires before `exit_mm()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task->exit_code` in wait-status encoding (`code << 8 | signal`).
    pub exit_code: u32,
    /// `EXIT_*` flags.
    pub flags: u32,
    /// `task->utime`, `task->stime`: tick-sampled user and system time, ns.
    pub utime_ns: u64,
    pub stime_ns: u64,
    /// `task->se.sum_exec_runtime`: precise on-CPU time, ns.
    pub sum_exec_runtime_ns: u64,
    pub nvcsw: u64,
    pub nivcsw: u64,
    pub min_flt: u64,
    pub maj_flt: u64,
    pub io: IoAccounting,
    /// `mm->hiwater_rss`, pages (0 for threads that are not the last, or no mm).
    pub hiwater_rss_pages: u64,
    /// `mm->hiwater_vm`, pages.
    pub hiwater_vm_pages: u64,
    /// Current RSS (file + anon + shmem counters), pages; VmHWM is the max of this
    /// and `hiwater_rss` as in the kernel's `get_mm_hiwater_rss()`.
    pub rss_pages: u64,
}

/// Kernel struct member offsets (bytes), resolved by the agent from
/// `/sys/kernel/btf/vmlinux` at load time and written into the programs' read-only
/// data, because Rust eBPF has no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub task_utime: u32,
    pub task_stime: u32,
    /// `task_struct.se` + `sched_entity.sum_exec_runtime`.
    pub task_sum_exec_runtime: u32,
    pub task_nvcsw: u32,
    pub task_nivcsw: u32,
    pub task_min_flt: u32,
    pub task_maj_flt: u32,
    /// `task_struct.ioac`, laid out as [`IoAccounting`] (checked at load).
    pub task_ioac: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_hiwater_rss: u32,
    pub mm_hiwater_vm: u32,
    /// `mm_struct.rss_stat`: `struct percpu_counter[NR_MM_COUNTERS]`.
    pub mm_rss_stat: u32,
    /// `sizeof(struct percpu_counter)`.
    pub percpu_counter_size: u32,
    /// `percpu_counter.count`.
    pub percpu_counter_count: u32,
    pub binprm_filename: u32,
}

/// `enum mm_counter_type` slots that make up RSS: MM_FILEPAGES, MM_ANONPAGES,
/// MM_SHMEMPAGES (MM_SWAPENTS = 2 is not resident).
pub const RSS_COUNTERS: [u32; 3] = [0, 1, 3];

/// Slots of the per-CPU `COUNTERS` array map (userspace sums the CPUs). Everything the kernel side cannot deliver is
/// counted here, never dropped silently.
pub mod counter {
    /// Next sequence number to hand out on this CPU.
    pub const SEQ: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_DROPS: u32 = 1;
    /// New processes that could not be added to the tracked set (map full).
    pub const TRACK_INSERT_ERRORS: u32 = 2;
    /// Kernel memory reads that failed (fields of an event left zero).
    pub const READ_ERRORS: u32 = 3;
    /// Threads (not processes) created by tracked processes.
    pub const THREADS_CREATED: u32 = 4;
    /// Number of slots.
    pub const COUNT: u32 = 8;
}

/// Default capacity of the tracked-process map (live processes at once).
pub const TRACKED_MAX_ENTRIES: u32 = 65536;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::KernelOffsets {}
}

/// Marker for wire structs that are valid for every bit pattern.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of integers and integer arrays.
pub unsafe trait Wire: Copy {}
// SAFETY: all of these are #[repr(C)] structs of integers and byte arrays.
unsafe impl Wire for EventHeader {}
unsafe impl Wire for ForkEvent {}
unsafe impl Wire for ExecEvent {}
unsafe impl Wire for ExitEvent {}
unsafe impl Wire for IoAccounting {}

/// Read a `T` from the start of `bytes` (userspace side of the ring buffer).
/// Returns `None` when the slice is too short.
pub fn read_event<T: Wire>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked above; read_unaligned handles any alignment, and `Wire`
    // guarantees every bit pattern is a valid T.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Like [`read_event`] for records with a variable-length tail (exec events are sent
/// only up to the argv bytes used): at least `min_len` bytes must be present, and the
/// missing tail reads as zeros.
pub fn read_event_prefix<T: Wire>(bytes: &[u8], min_len: usize) -> Option<T> {
    let size = core::mem::size_of::<T>();
    if bytes.len() < min_len.min(size) {
        return None;
    }
    if bytes.len() >= size {
        return read_event(bytes);
    }
    let mut buf = [0u8; 8192];
    let buf = buf.get_mut(..size)?;
    buf[..bytes.len()].copy_from_slice(bytes);
    read_event(buf)
}
