//! Wire types shared by the eBPF programs (`denet-ebpf`) and the agent.
//!
//! Every event in the lifecycle ring buffer starts with [`EventHeader`]; its `kind`
//! says which struct follows. All structs are `#[repr(C)]` with explicit padding so
//! both sides agree on the layout byte for byte.
#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

/// Event kinds carried in [`EventHeader::kind`]; decoded in one place,
/// [`KernelEvent::decode`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Fork = 1,
    Exec = 2,
    Exit = 3,
    FileOpen = 4,
    FileClose = 5,
    FileDup = 6,
    /// A tracked process changed its working directory: a [`FileOpenEvent`] whose
    /// `path` is the chdir argument, or, for fchdir, empty with the directory's `fd`.
    Chdir = 7,
    /// `--events` only: a thread left a scheduler state ([`SchedSpanEvent`]).
    RawSched = 8,
    /// `--events` only: a block request of a tracked process completed ([`BlockIoEvent`]).
    RawBlock = 9,
    /// The OOM killer chose a tracked process ([`OomKillEvent`]; `oom:mark_victim`).
    OomKill = 10,
}

impl EventKind {
    pub fn from_u32(kind: u32) -> Option<Self> {
        Some(match kind {
            1 => Self::Fork,
            2 => Self::Exec,
            3 => Self::Exit,
            4 => Self::FileOpen,
            5 => Self::FileClose,
            6 => Self::FileDup,
            7 => Self::Chdir,
            8 => Self::RawSched,
            9 => Self::RawBlock,
            10 => Self::OomKill,
            _ => return None,
        })
    }
}

/// Bytes of argv captured per exec (NUL-separated, as in `/proc/PID/cmdline`).
/// A power of two so the eBPF side can bound reads with a mask.
pub const ARGV_MAX: usize = 4096;
/// Bytes of the exec'd filename captured (including the trailing NUL).
pub const FILENAME_MAX: usize = 256;
/// Bytes of an opened path captured (including the trailing NUL); a power of two.
pub const PATH_MAX: usize = 4096;

/// [`ExecEvent::flags`]: argv was longer than [`ARGV_MAX`] and was cut.
pub const EXEC_ARGV_TRUNCATED: u32 = 1;
/// [`ExecEvent::flags`]: the filename was longer than [`FILENAME_MAX`] - 1 and was cut.
pub const EXEC_FILENAME_TRUNCATED: u32 = 2;
/// [`ExecEvent::flags`]: argv could not be read (its pages were not resident).
pub const EXEC_ARGV_UNREADABLE: u32 = 4;

/// The OOM killer marked a tracked process as its victim (the header's pid and tgid
/// are the victim's, not the current task's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomKillEvent {
    pub header: EventHeader,
    /// The victim's resident pages when it was chosen (file + anon + shmem).
    pub rss_pages: u64,
}

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
    /// The run the process belongs to (see [`MAX_RUNS`]); 0 when it left the
    /// tracked set before the event was made.
    pub run: u32,
    pub _pad: u32,
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

/// Buckets of the log2 latency histograms: bucket `i` counts latencies in
/// `[2^i, 2^(i+1))` microseconds (bucket 0 also holds everything below 1 us).
pub const HIST_BUCKETS: usize = 32;

/// Per-process scheduler, block I/O and network counters, aggregated in the kernel
/// in a per-CPU hash map keyed by tgid (the agent sums the CPUs).
#[repr(C)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStats {
    /// Time on a CPU, ns (from sched_switch).
    pub oncpu_ns: u64,
    /// Runnable but waiting for a CPU (run queue), ns.
    pub cpu_wait_ns: u64,
    /// Uninterruptible sleep (D state: mostly disk), ns.
    pub io_wait_ns: u64,
    /// Interruptible sleep (S state: pipes, locks, timers, child waits), ns.
    pub sleep_ns: u64,
    /// Number of run-queue waits (entries in `runq_hist`).
    pub runq_waits: u64,
    /// Block I/O submitted by the process (bio queued in its context).
    pub blk_read_bytes: u64,
    pub blk_write_bytes: u64,
    pub blk_read_ops: u64,
    pub blk_write_ops: u64,
    /// TCP and UDP payload bytes sent and received (loopback included).
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    /// log2 histogram of run-queue delays, microseconds.
    pub runq_hist: [u32; HIST_BUCKETS],
    /// log2 histogram of block request latency (queue to completion), microseconds.
    pub blk_lat_hist: [u32; HIST_BUCKETS],
}

impl Default for ProcStats {
    fn default() -> Self {
        Self {
            oncpu_ns: 0,
            cpu_wait_ns: 0,
            io_wait_ns: 0,
            sleep_ns: 0,
            runq_waits: 0,
            blk_read_bytes: 0,
            blk_write_bytes: 0,
            blk_read_ops: 0,
            blk_write_ops: 0,
            net_tx_bytes: 0,
            net_rx_bytes: 0,
            runq_hist: [0; HIST_BUCKETS],
            blk_lat_hist: [0; HIST_BUCKETS],
        }
    }
}

/// Syscall counters per process (per-CPU hash map keyed by tgid), indexed by
/// syscall number; numbers at or above `SYSCALL_SLOTS` are not counted.
pub const SYSCALL_SLOTS: usize = 512;
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallCounts {
    pub counts: [u32; SYSCALL_SLOTS],
}

impl Default for SyscallCounts {
    fn default() -> Self {
        Self {
            counts: [0; SYSCALL_SLOTS],
        }
    }
}

/// Scheduler state of a tracked thread (hash map keyed by tid).
pub const TASK_RUNNING: u32 = 0;
pub const TASK_RUNNABLE: u32 = 1;
pub const TASK_SLEEPING: u32 = 2;
pub const TASK_BLOCKED_IO: u32 = 3;
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    /// When the thread entered `state`, `bpf_ktime_get_ns()`.
    pub since_ns: u64,
    pub state: u32,
    pub tgid: u32,
}

/// Key of the per-file counters: a file descriptor of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Per-file counters (per-CPU hash map keyed by [`FileKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// [`FileOpenEvent::flags`]: the path was longer than `PATH_MAX - 1` and was cut.
pub const FILE_PATH_TRUNCATED: u32 = 1;

/// A tracked process opened a file (open/openat/openat2/creat returned `fd`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileOpenEvent {
    pub header: EventHeader,
    pub fd: u32,
    /// Open flags (`O_*`) as passed.
    pub open_flags: u32,
    /// Directory fd the path is relative to (`AT_FDCWD` = -100 for the cwd).
    pub dirfd: i32,
    /// `FILE_*` flags.
    pub flags: u32,
    /// Valid bytes in `path` (without the NUL).
    pub path_len: u32,
    pub _pad: u32,
    /// The path as passed to the syscall, NUL-terminated.
    pub path: [u8; PATH_MAX],
}

/// A tracked process duplicated a tracked fd (dup, dup2, dup3, fcntl F_DUPFD):
/// `fd` now refers to the same file as `old_fd` and has counters of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileDupEvent {
    pub header: EventHeader,
    pub fd: u32,
    pub old_fd: u32,
}

/// A thread spent `duration_ns` in `state` (`TASK_*`), ending at `header.ts_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedSpanEvent {
    pub header: EventHeader,
    pub state: u32,
    pub _pad: u32,
    pub duration_ns: u64,
}

/// A bio of a tracked process completed (`header.pid` is the submitting thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockIoEvent {
    pub header: EventHeader,
    /// 0 read, 1 write.
    pub op: u32,
    pub bytes: u32,
    /// Queueing to completion.
    pub latency_ns: u64,
}

/// Open fds below this a forked child inherits counters for (the kernel checks
/// each, so it is kept small).
pub const FILE_INHERIT_FDS: u32 = 64;

/// Why a file's counters were closed out.
pub const CLOSE_BY_CLOSE: u32 = 1;
/// The fd number was opened again without a close the agent saw (exec closed it,
/// dup2 replaced it, close_range).
pub const CLOSE_BY_REOPEN: u32 = 2;

/// A tracked process closed a file: its final counters, summed over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileCloseEvent {
    pub header: EventHeader,
    pub fd: u32,
    /// `CLOSE_BY_*`.
    pub reason: u32,
    pub stats: FileStats,
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
    /// `mm_struct.rss_stat`: `struct percpu_counter[NR_MM_COUNTERS]` (6.2 on), or
    /// `struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }` before.
    pub mm_rss_stat: u32,
    /// The stride of one RSS counter: `sizeof(struct percpu_counter)`, or 8 for
    /// `atomic_long_t`.
    pub percpu_counter_size: u32,
    /// The counter's value within it: `percpu_counter.count`, or 0.
    pub percpu_counter_count: u32,
    pub binprm_filename: u32,
    /// `pt_regs.di`, `.si`, `.dx`, `.orig_ax`: syscall arguments 0-2 and number.
    pub regs_di: u32,
    pub regs_si: u32,
    pub regs_dx: u32,
    pub regs_orig_ax: u32,
    /// `sock.__sk_common` + `sock_common.skc_family`.
    pub sock_family: u32,
    pub sock_protocol: u32,
    pub bio_opf: u32,
    /// `bio.bi_iter` + `bvec_iter.bi_size`.
    pub bio_size: u32,
    pub request_bio: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
}

/// Settings the agent writes into the programs before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Number of possible CPUs (bounds the per-CPU sums done in the kernel).
    pub nr_cpus: u32,
    pub _pad: u32,
}

/// Runs one loaded set of programs serves at once (a run id is 1..MAX_RUNS; 0 means
/// untracked). A standalone `run` is run 1; the node daemon hands out the others.
pub const MAX_RUNS: u32 = 1024;

/// What a run asks of the kernel side: the bits of its `RUNS` entry.
pub mod run_flag {
    /// The run exists (an entry without it is free).
    pub const ACTIVE: u32 = 1;
    /// Per-file accounting (open/read/write/close per fd).
    pub const FILES: u32 = 2;
    /// Per-process syscall counts.
    pub const SYSCALLS: u32 = 4;
    /// Raw scheduler and block I/O events through the ring buffer.
    pub const EVENTS: u32 = 8;
    /// With FILES: the file accounting comes from the trampolines on the file
    /// syscalls' functions, and the raw syscall hooks leave files alone.
    pub const FILE_TRAMPOLINES: u32 = 16;
}

/// Slots of each run in the per-CPU `RUN_COUNTERS` array: run `r` has slots
/// `r * SLOTS + EMITTED` and `r * SLOTS + DROPS`.
pub mod run_counter {
    /// Events the kernel side made for the run (also those the ring buffer dropped).
    pub const EMITTED: u32 = 0;
    /// The run's events the ring buffer had no room for.
    pub const DROPS: u32 = 1;
    pub const SLOTS: u32 = 2;
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
    /// Per-process or per-file counters that could not be created (map full).
    pub const STATS_INSERT_ERRORS: u32 = 5;
    /// Block requests completed whose bio start was not found (latency not counted).
    pub const BLK_UNMATCHED: u32 = 6;
    /// Number of slots.
    pub const COUNT: u32 = 8;
}

/// Default capacity of the tracked-process map (live processes at once).
pub const TRACKED_MAX_ENTRIES: u32 = 65536;
/// Open files tracked at once (per-file counters, `--files`).
pub const FILE_STATS_MAX_ENTRIES: u32 = 262_144;

/// Marker for wire structs that are valid for every bit pattern.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of integers and integer arrays.
pub unsafe trait Wire: Copy {}

/// Declares plain data: `Wire` for ring-buffer records, aya's `Pod` (user space) for
/// map values and globals.
macro_rules! plain_data {
    ($trait:path: $($t:ty),* $(,)?) => {
        $(
            // SAFETY: every type listed is #[repr(C)], made of integers and integer
            // arrays only, with explicit padding fields: every bit pattern is valid.
            unsafe impl $trait for $t {}
        )*
    };
}

plain_data!(Wire: EventHeader, ForkEvent, ExecEvent, ExitEvent, IoAccounting, FileOpenEvent,
    FileCloseEvent, FileDupEvent, SchedSpanEvent, BlockIoEvent, OomKillEvent, KernelOffsets);

#[cfg(feature = "user")]
plain_data!(aya::Pod: KernelOffsets, Settings, ProcStats, SyscallCounts, FileKey, FileStats,
    TaskState);

/// Read a `T` from the start of `bytes` (userspace side of the ring buffer).
/// Returns `None` when the slice is too short.
pub fn read_event<T: Wire>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
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
    let size = size_of::<T>();
    if bytes.len() < min_len.min(size) {
        return None;
    }
    if bytes.len() >= size {
        return read_event(bytes);
    }
    let mut buf = [0u8; 8192];
    const { assert!(size_of::<FileOpenEvent>() <= 8192) };
    let buf = buf.get_mut(..size)?;
    buf[..bytes.len()].copy_from_slice(bytes);
    read_event(buf)
}

/// A ring-buffer record, decoded by its header's kind (user space only). The large
/// records are boxed so every variant moves cheaply.
#[cfg(feature = "user")]
pub enum KernelEvent {
    Fork(ForkEvent),
    Exec(alloc::boxed::Box<ExecEvent>),
    Exit(ExitEvent),
    FileOpen(alloc::boxed::Box<FileOpenEvent>),
    FileClose(FileCloseEvent),
    FileDup(FileDupEvent),
    Chdir(alloc::boxed::Box<FileOpenEvent>),
    RawSched(SchedSpanEvent),
    RawBlock(BlockIoEvent),
    OomKill(OomKillEvent),
}

/// Why a ring-buffer record could not be decoded.
#[cfg(feature = "user")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the event header: nothing about it is known.
    NoHeader { len: usize },
    /// A record of `kind` (of run `run`) shorter than that kind's fixed part.
    Short { kind: u32, run: u32, len: usize },
    /// A kind this agent does not know (in a record of run `run`).
    UnknownKind { kind: u32, run: u32 },
}

#[cfg(feature = "user")]
impl KernelEvent {
    /// The header every record starts with.
    pub fn header(&self) -> &EventHeader {
        match self {
            Self::Fork(e) => &e.header,
            Self::Exec(e) => &e.header,
            Self::Exit(e) => &e.header,
            Self::FileOpen(e) | Self::Chdir(e) => &e.header,
            Self::FileClose(e) => &e.header,
            Self::FileDup(e) => &e.header,
            Self::RawSched(e) => &e.header,
            Self::RawBlock(e) => &e.header,
            Self::OomKill(e) => &e.header,
        }
    }

    /// Decodes one ring-buffer record. Exec and file-open records carry a
    /// variable-length tail (argv, path) and are sent only up to its used bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        use alloc::boxed::Box;
        let header =
            read_event::<EventHeader>(bytes).ok_or(Malformed::NoHeader { len: bytes.len() })?;
        let short = Malformed::Short {
            kind: header.kind,
            run: header.run,
            len: bytes.len(),
        };
        let kind = EventKind::from_u32(header.kind).ok_or(Malformed::UnknownKind {
            kind: header.kind,
            run: header.run,
        })?;
        let exec_fixed = core::mem::offset_of!(ExecEvent, argv);
        let open_fixed = core::mem::offset_of!(FileOpenEvent, path);
        Ok(match kind {
            EventKind::Fork => Self::Fork(read_event(bytes).ok_or(short)?),
            EventKind::Exec => {
                Self::Exec(Box::new(read_event_prefix(bytes, exec_fixed).ok_or(short)?))
            }
            EventKind::Exit => Self::Exit(read_event(bytes).ok_or(short)?),
            EventKind::FileOpen => {
                Self::FileOpen(Box::new(read_event_prefix(bytes, open_fixed).ok_or(short)?))
            }
            EventKind::FileClose => Self::FileClose(read_event(bytes).ok_or(short)?),
            EventKind::FileDup => Self::FileDup(read_event(bytes).ok_or(short)?),
            EventKind::Chdir => {
                Self::Chdir(Box::new(read_event_prefix(bytes, open_fixed).ok_or(short)?))
            }
            EventKind::RawSched => Self::RawSched(read_event(bytes).ok_or(short)?),
            EventKind::RawBlock => Self::RawBlock(read_event(bytes).ok_or(short)?),
            EventKind::OomKill => Self::OomKill(read_event(bytes).ok_or(short)?),
        })
    }
}

// The layout both sides compile against, pinned: a change to a shared struct must be
// deliberate (both sides rebuilt together; the ring-buffer decoder checks lengths).
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<EventHeader>() == 40 && offset_of!(EventHeader, kind) == 0);
    assert!(size_of::<ForkEvent>() == 48 && offset_of!(ForkEvent, header) == 0);
    assert!(size_of::<ExecEvent>() == 4408 && offset_of!(ExecEvent, argv) == 312);
    assert!(size_of::<IoAccounting>() == 56);
    assert!(size_of::<ExitEvent>() == 184 && offset_of!(ExitEvent, header) == 0);
    assert!(size_of::<ProcStats>() == 344);
    assert!(size_of::<SyscallCounts>() == 4 * SYSCALL_SLOTS);
    assert!(size_of::<TaskState>() == 16);
    assert!(size_of::<FileKey>() == 8);
    assert!(size_of::<FileStats>() == 32);
    assert!(size_of::<FileOpenEvent>() == 4160 && offset_of!(FileOpenEvent, path) == 64);
    assert!(size_of::<FileDupEvent>() == 48);
    assert!(size_of::<SchedSpanEvent>() == 56);
    assert!(size_of::<BlockIoEvent>() == 56);
    assert!(size_of::<FileCloseEvent>() == 80);
    assert!(size_of::<OomKillEvent>() == 48);
    assert!(size_of::<KernelOffsets>() == 120);
    assert!(size_of::<Settings>() == 8);
};

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    fn bytes_of<T: Wire>(v: &T) -> &[u8] {
        // SAFETY: `Wire` types are plain integers and byte arrays.
        unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            pid: 7,
            tgid: 7,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_each_kind_and_refuses_what_is_short_or_unknown() {
        let fork = ForkEvent {
            header: header(EventKind::Fork),
            parent_tgid: 3,
            parent_pid: 3,
        };
        match KernelEvent::decode(bytes_of(&fork)) {
            Ok(KernelEvent::Fork(ev)) => assert_eq!(ev.parent_tgid, 3),
            _ => panic!("fork not decoded"),
        }
        // A fork cut short is malformed, not a garbage fork.
        let short = &bytes_of(&fork)[..44];
        assert_eq!(
            KernelEvent::decode(short).err(),
            Some(Malformed::Short {
                kind: EventKind::Fork as u32,
                run: 0,
                len: 44
            })
        );
        // Exec records are sent up to the argv bytes used: the tail reads as zeros.
        // SAFETY: ExecEvent is integers and byte arrays: all zeros is valid.
        let mut exec: ExecEvent = unsafe { core::mem::zeroed() };
        exec.header = header(EventKind::Exec);
        exec.argv_len = 3;
        exec.argv[..3].copy_from_slice(b"ls\0");
        let sent = &bytes_of(&exec)[..core::mem::offset_of!(ExecEvent, argv) + 3];
        match KernelEvent::decode(sent) {
            Ok(KernelEvent::Exec(ev)) => assert_eq!(&ev.argv[..4], b"ls\0\0"),
            _ => panic!("exec not decoded"),
        }
        let unknown = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(
            KernelEvent::decode(bytes_of(&unknown)).err(),
            Some(Malformed::UnknownKind { kind: 99, run: 0 })
        );
        assert_eq!(
            KernelEvent::decode(&[1, 0]).err(),
            Some(Malformed::NoHeader { len: 2 })
        );
        for k in 1..=10 {
            assert_eq!(EventKind::from_u32(k).map(|e| e as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }
}
