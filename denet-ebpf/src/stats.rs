//! Per-process counters aggregated in the kernel: per-CPU hash maps keyed by tgid,
//! created when a process enters the tracked set, read and deleted by the agent
//! when the process exits (and read, not deleted, at every sample).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use denet_common::{counter, ProcStats, SyscallCounts, HIST_BUCKETS, TRACKED_MAX_ENTRIES};

use crate::{bump, setting};

#[map]
pub(crate) static PROC_STATS: PerCpuHashMap<u32, ProcStats> =
    PerCpuHashMap::with_max_entries(TRACKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub(crate) static SYSCALLS: PerCpuHashMap<u32, SyscallCounts> =
    PerCpuHashMap::with_max_entries(TRACKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Never written: zeroed values to insert from (too large for the eBPF stack).
#[map]
static ZERO_STATS: PerCpuArray<ProcStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static ZERO_SYSCALLS: PerCpuArray<SyscallCounts> = PerCpuArray::with_max_entries(1, 0);

/// Creates the zeroed counters of a newly tracked process.
#[inline(always)]
pub(crate) fn create(tgid: u32) {
    if let Some(zero) = ZERO_STATS.get_ptr(0) {
        // SAFETY: `zero` points into a map value of the right type.
        if PROC_STATS.insert(&tgid, unsafe { &*zero }, 0).is_err() {
            bump(counter::STATS_INSERT_ERRORS);
        }
    }
    if setting!(syscalls) == 0 {
        return;
    }
    if let Some(zero) = ZERO_SYSCALLS.get_ptr(0) {
        // SAFETY: as above.
        if SYSCALLS.insert(&tgid, unsafe { &*zero }, 0).is_err() {
            bump(counter::STATS_INSERT_ERRORS);
        }
    }
}

/// This CPU's counters of process `tgid` (None for processes not set up, e.g. in
/// the last microseconds after the agent collected them at exit).
#[inline(always)]
pub(crate) fn of(tgid: u32) -> Option<&'static mut ProcStats> {
    // SAFETY: a per-CPU slot, touched only by programs on this CPU, which run with
    // preemption disabled.
    PROC_STATS.get_ptr_mut(&tgid).map(|p| unsafe { &mut *p })
}

/// log2 bucket of a duration in nanoseconds, in microseconds.
#[inline(always)]
pub(crate) fn bucket_us(ns: u64) -> usize {
    let us = ns / 1000;
    if us == 0 {
        return 0;
    }
    let b = 63 - us.leading_zeros() as usize;
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}
