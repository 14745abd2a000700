//! Clock reads. Kernel events carry CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`), so the
//! agent stamps everything with the same clock and anchors it to wall time once.

use nix::time::{clock_gettime, ClockId};

use crate::trace::Clock;

fn read_ns(id: ClockId) -> u64 {
    // clock_gettime cannot fail for these clock ids on Linux.
    clock_gettime(id)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// CLOCK_MONOTONIC: the clock of `bpf_ktime_get_ns()` (scheduler state times).
pub fn monotonic_ns() -> u64 {
    read_ns(ClockId::CLOCK_MONOTONIC)
}

pub fn boottime_ns() -> u64 {
    read_ns(ClockId::CLOCK_BOOTTIME)
}

/// Reads the three clocks back to back; the boottime read is bracketed by the
/// realtime read so the pair is consistent to well under a microsecond.
pub fn anchor() -> Clock {
    let monotonic_ns = read_ns(ClockId::CLOCK_MONOTONIC);
    let boot_ns = boottime_ns();
    let unix_ns = read_ns(ClockId::CLOCK_REALTIME);
    Clock {
        clock: "CLOCK_BOOTTIME".into(),
        boot_ns,
        unix_ns,
        monotonic_ns,
    }
}
