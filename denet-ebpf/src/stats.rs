//! Per-process counters aggregated in the kernel, keyed by tgid, created when a
//! process enters the tracked set, read and deleted by the agent when the process
//! exits (and read, not deleted, at every sample).
//!
//! `PROC_STATS` is one shared entry per process, updated with atomic adds: creating a
//! per-CPU entry costs a per-CPU allocation in the kernel (about 20 us per fork,
//! measured), a shared one a plain allocation. Syscall counts (only with
//! `--syscalls`, incremented on every syscall) stay per-CPU.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
};
use denet_common::{
    counter, run_flag, ProcStats, SyscallCounts, HIST_BUCKETS, TRACKED_MAX_ENTRIES,
};

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use crate::bump;

#[map]
pub(crate) static PROC_STATS: HashMap<u32, ProcStats> =
    HashMap::with_max_entries(TRACKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

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
pub(crate) fn create(tgid: u32, run: u32) {
    if let Some(zero) = ZERO_STATS.get_ptr(0) {
        // SAFETY: `zero` points into a map value of the right type.
        if PROC_STATS.insert(&tgid, unsafe { &*zero }, 0).is_err() {
            bump(counter::STATS_INSERT_ERRORS);
        }
    }
    if !crate::wants(run, run_flag::SYSCALLS) {
        return;
    }
    if let Some(zero) = ZERO_SYSCALLS.get_ptr(0) {
        // SAFETY: as above.
        if SYSCALLS.insert(&tgid, unsafe { &*zero }, 0).is_err() {
            bump(counter::STATS_INSERT_ERRORS);
        }
    }
}

/// The counters of process `tgid` (None for processes not set up, e.g. in the last
/// microseconds after the agent collected them at exit). Shared by every CPU: update
/// them only with [`add`] and [`add32`].
#[inline(always)]
pub(crate) fn of(tgid: u32) -> Option<&'static mut ProcStats> {
    // SAFETY: a pointer to the map value, valid while the entry exists; every write
    // through it is atomic.
    PROC_STATS.get_ptr_mut(&tgid).map(|p| unsafe { &mut *p })
}

/// Atomically adds `v` to a counter of a shared entry: a BPF atomic add (the core
/// atomic types have no read-modify-write on this target, the intrinsic does).
#[inline(always)]
pub(crate) fn add(field: &mut u64, v: u64) {
    // SAFETY: `field` is a valid, aligned u64 inside a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
}

/// [`add`] for the u32 histogram buckets.
#[inline(always)]
pub(crate) fn add32(field: &mut u32, v: u32) {
    // SAFETY: `field` is a valid, aligned u32 inside a map value.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(field, v) };
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
