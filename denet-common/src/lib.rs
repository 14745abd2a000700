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

/// The last thread of a tracked process exited (the process is gone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    /// `task->exit_code` in wait-status encoding (`code << 8 | signal`).
    pub exit_code: u32,
    pub _pad: u32,
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
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub binprm_filename: u32,
    pub _pad: u32,
}

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
