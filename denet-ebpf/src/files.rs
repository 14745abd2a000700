//! Per-file accounting: bytes and calls of read-like and write-like syscalls per
//! (process, fd), from open to close. Counters live in a per-CPU hash map; at close
//! the kernel sums the CPUs itself and sends the totals, because the agent reads the
//! ring buffer later and the fd number may be reused by then.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use denet_common::{
    counter, EventKind, FileCloseEvent, FileDupEvent, FileKey, FileOpenEvent, FileStats,
    CLOSE_BY_CLOSE, CLOSE_BY_REOPEN, FILE_INHERIT_FDS, FILE_PATH_TRUNCATED, FILE_STATS_MAX_ENTRIES,
    PATH_MAX,
};

use crate::{bump, dropped, header, setting, wakeup_flags, EVENTS};

#[map]
static FILE_STATS: PerCpuHashMap<FileKey, FileStats> =
    PerCpuHashMap::with_max_entries(FILE_STATS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Where an open event is assembled (4 KiB path: too large for the stack).
#[map]
static OPEN_SCRATCH: PerCpuArray<FileOpenEvent> = PerCpuArray::with_max_entries(1, 0);

/// Upper bound of the CPU loop in `close_out` (the agent passes the real count).
const MAX_CPUS: u32 = 256;

/// A u64 from user memory (0 when unreadable).
#[inline(always)]
pub(crate) fn user_u64(addr: u64) -> u64 {
    // SAFETY: bpf_probe_read_user validates the address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.unwrap_or(0)
}

#[inline(always)]
pub(crate) fn add(tgid: u32, fd: u32, bytes: u64, write: bool) {
    let key = FileKey { tgid, fd };
    let Some(s) = FILE_STATS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: this CPU's slot; programs run with preemption disabled.
    unsafe {
        if write {
            (*s).write_bytes += bytes;
            (*s).writes += 1;
        } else {
            (*s).read_bytes += bytes;
            (*s).reads += 1;
        }
    }
}

/// Sends the totals of `key` summed over CPUs and forgets it.
#[inline(always)]
fn close_out(key: &FileKey, tid: u32, reason: u32) {
    let mut total = FileStats::default();
    let nr_cpus = setting!(nr_cpus);
    let map = core::ptr::addr_of!(FILE_STATS) as *mut core::ffi::c_void;
    for cpu in 0..MAX_CPUS {
        if cpu >= nr_cpus {
            break;
        }
        // SAFETY: map and key pointers are valid; the helper returns null or a
        // pointer to that CPU's value.
        let p = unsafe {
            generated::bpf_map_lookup_percpu_elem(map, (key as *const FileKey).cast(), cpu)
        } as *const FileStats;
        if p.is_null() {
            break;
        }
        // SAFETY: non-null pointer to a FileStats value.
        let v = unsafe { *p };
        total.read_bytes += v.read_bytes;
        total.write_bytes += v.write_bytes;
        total.reads += v.reads;
        total.writes += v.writes;
    }
    let _ = FILE_STATS.remove(key);
    let event = FileCloseEvent {
        header: header(EventKind::FileClose, tid, key.tgid),
        fd: key.fd,
        reason,
        stats: total,
    };
    if EVENTS
        .output::<FileCloseEvent>(&event, wakeup_flags())
        .is_err()
    {
        dropped(&event.header);
    }
}

#[inline(always)]
pub(crate) fn close(tgid: u32, tid: u32, fd: u32) {
    let key = FileKey { tgid, fd };
    // SAFETY: existence check only.
    if unsafe { FILE_STATS.get(&key) }.is_some() {
        close_out(&key, tid, CLOSE_BY_CLOSE);
    }
}

#[inline(always)]
pub(crate) fn opened(tgid: u32, tid: u32, fd: u32, path: u64, open_flags: u32, dirfd: i32) {
    let key = FileKey { tgid, fd };
    // The fd was closed in a way we did not see (exec, dup2, close_range).
    // SAFETY: existence check only.
    if unsafe { FILE_STATS.get(&key) }.is_some() {
        close_out(&key, tid, CLOSE_BY_REOPEN);
    }
    let zero = FileStats::default();
    if FILE_STATS.insert(&key, &zero, 0).is_err() {
        bump(counter::STATS_INSERT_ERRORS);
        return;
    }
    emit_path(EventKind::FileOpen, tgid, tid, fd, path, open_flags, dirfd);
}

/// Sends a path event (open or chdir) with the path read from user memory.
#[inline(always)]
pub(crate) fn emit_path(
    kind: EventKind,
    tgid: u32,
    tid: u32,
    fd: u32,
    path: u64,
    open_flags: u32,
    dirfd: i32,
) {
    let Some(event) = OPEN_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let hdr = header(kind, tid, tgid);
    // SAFETY: `event` is this CPU's scratch slot; written through the pointer.
    let len = unsafe {
        (*event).header = hdr;
        (*event).fd = fd;
        (*event).open_flags = open_flags;
        (*event).dirfd = dirfd;
        let n = if path == 0 {
            0
        } else {
            generated::bpf_probe_read_user_str(
                (*event).path.as_mut_ptr().cast(),
                PATH_MAX as u32,
                path as *const core::ffi::c_void,
            )
        };
        // n counts the NUL; a full buffer means the path may have been cut.
        let len = if n > 0 { (n - 1) as u32 } else { 0 };
        let len = len & (PATH_MAX as u32 - 1);
        (*event).flags = if n as usize >= PATH_MAX {
            FILE_PATH_TRUNCATED
        } else {
            0
        };
        (*event).path_len = len;
        (*event).path[len as usize & (PATH_MAX - 1)] = 0;
        len
    };
    let size = core::mem::offset_of!(FileOpenEvent, path) + len as usize + 1;
    let size = size & (size_of::<FileOpenEvent>().next_power_of_two() - 1);
    if size > size_of::<FileOpenEvent>() {
        bump(counter::READ_ERRORS);
        return;
    }
    // SAFETY: `size` is within the scratch value.
    let bytes = unsafe { core::slice::from_raw_parts(event.cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        dropped(&hdr);
    }
}

#[inline(always)]
fn exists(key: &FileKey) -> bool {
    // SAFETY: existence check only.
    unsafe { FILE_STATS.get(key) }.is_some()
}

/// `old_fd` was duplicated onto `new_fd`: a tracked file gets counters on the new fd
/// too (shell redirections: open, dup2 onto stdout, exec).
#[inline(always)]
pub(crate) fn duplicated(tgid: u32, tid: u32, old_fd: u32, new_fd: u32) {
    let new_key = FileKey { tgid, fd: new_fd };
    if exists(&new_key) {
        close_out(&new_key, tid, CLOSE_BY_REOPEN);
    }
    if !exists(&FileKey { tgid, fd: old_fd }) {
        return;
    }
    let zero = FileStats::default();
    if FILE_STATS.insert(&new_key, &zero, 0).is_err() {
        bump(counter::STATS_INSERT_ERRORS);
        return;
    }
    let event = FileDupEvent {
        header: header(EventKind::FileDup, tid, tgid),
        fd: new_fd,
        old_fd,
    };
    if EVENTS
        .output::<FileDupEvent>(&event, wakeup_flags())
        .is_err()
    {
        dropped(&event.header);
    }
}

/// A forked child shares its parent's open files: it gets counters of its own for
/// every tracked fd below `FILE_INHERIT_FDS` (the agent copies the paths).
#[inline(always)]
pub(crate) fn inherit(parent: u32, child: u32) {
    let zero = FileStats::default();
    for fd in 0..FILE_INHERIT_FDS {
        if exists(&FileKey { tgid: parent, fd }) {
            let key = FileKey { tgid: child, fd };
            if FILE_STATS.insert(&key, &zero, 0).is_err() {
                bump(counter::STATS_INSERT_ERRORS);
            }
        }
    }
}
