//! Periodic /proc readings of the live tracked processes, and the adaptive interval.

use std::collections::{BTreeMap, HashMap};

use super::procfs::{self, ProcStat};
use crate::{
    engine::clock,
    kernel::{
        counters::{ProcDepth, StatsMaps},
        syscall_names::syscall_name,
    },
    trace::{
        records::{add_window, WINDOW_COUNTERS},
        ProcSample, Sample,
    },
};

/// Sampling interval that starts short (short jobs get detail) and grows by a
/// quarter per sample up to the maximum (long jobs stay cheap).
#[derive(Debug, Clone)]
pub struct AdaptiveInterval {
    current_ms: f64,
    max_ms: f64,
}

impl AdaptiveInterval {
    pub const GROWTH: f64 = 1.25;

    pub fn new(start_ms: u64, max_ms: u64) -> Self {
        let start = start_ms.max(1) as f64;
        Self {
            current_ms: start,
            max_ms: (max_ms as f64).max(start),
        }
    }

    /// The next interval, then grows the one after.
    pub fn next_ms(&mut self) -> u64 {
        let now = self.current_ms;
        self.current_ms = (self.current_ms * Self::GROWTH).min(self.max_ms);
        now.round() as u64
    }
}

/// Where a sample's kernel counters come from: the maps of programs the run loaded
/// itself, or the node daemon that tracks the run.
pub trait LiveCounters: Send {
    /// The counters of each pid now (None for one that has none), with the time
    /// threads have spent so far in their current scheduler state.
    fn read_live(&mut self, pids: &[u32], now_mono_ns: u64) -> Vec<Option<ProcDepth>>;
    /// Syscalls are counted for this run.
    fn counts_syscalls(&self) -> bool;
}

impl LiveCounters for StatsMaps {
    fn read_live(&mut self, pids: &[u32], now_mono_ns: u64) -> Vec<Option<ProcDepth>> {
        pids.iter()
            .map(|&pid| StatsMaps::read_live(self, pid, now_mono_ns))
            .collect()
    }

    fn counts_syscalls(&self) -> bool {
        self.may_count_syscalls
    }
}

pub struct Sampler {
    tck: u64,
    page_kb: u64,
    prev_ticks: HashMap<u32, u64>,
    prev_ts_ns: u64,
    /// Kernel counters (eBPF mode) and their previous readings per pid.
    kernel: Option<Box<dyn LiveCounters>>,
    prev_depth: HashMap<u32, ProcDepth>,
}

/// The window counters of one process (in the order of `WINDOW_COUNTERS`):
/// accumulated since `prev` (everything since the start when `prev` is None: the
/// process started in this window or the counters were just created).
fn delta(
    now: &ProcDepth,
    prev: Option<&ProcDepth>,
    syscalls: &mut BTreeMap<u16, u64>,
) -> [Option<u64>; WINDOW_COUNTERS.len()] {
    let (a, p) = (&now.stats, prev.map(|p| &p.stats));
    let d = |f: fn(&denet_common::ProcStats) -> u64| f(a).saturating_sub(p.map_or(0, f));
    let mut calls = 0;
    for (nr, c) in now.syscalls.iter().flatten() {
        let before = prev
            .and_then(|p| p.syscalls.as_ref())
            .and_then(|calls| calls.iter().find(|(n, _)| n == nr))
            .map_or(0, |(_, c)| *c);
        let n = c.saturating_sub(before);
        if n > 0 {
            *syscalls.entry(*nr).or_default() += n;
            calls += n;
        }
    }
    [
        Some(d(|s| s.oncpu_ns)),
        Some(d(|s| s.cpu_wait_ns)),
        Some(d(|s| s.io_wait_ns)),
        Some(d(|s| s.sleep_ns)),
        Some(d(|s| s.blk_read_bytes)),
        Some(d(|s| s.blk_write_bytes)),
        Some(d(|s| s.net_tx_bytes)),
        Some(d(|s| s.net_rx_bytes)),
        now.syscalls.is_some().then_some(calls),
    ]
}

impl Sampler {
    pub fn new(start_boot_ns: u64, kernel: Option<Box<dyn LiveCounters>>) -> Self {
        let (tck, page_kb) = procfs::clock_ticks_and_page_kb();
        Self {
            tck,
            page_kb,
            prev_ticks: HashMap::new(),
            prev_ts_ns: start_boot_ns,
            kernel,
            prev_depth: HashMap::new(),
        }
    }

    fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1_000_000_000) / self.tck
    }

    /// Reads every pid in `pids` (gone ones are skipped) and returns the sample plus
    /// the raw readings (used by the /proc-only mode).
    pub fn sample(&mut self, pids: &[u32], now_ns: u64) -> (Sample, Vec<(u32, ProcStat)>) {
        let window_ns = now_ns.saturating_sub(self.prev_ts_ns).max(1);
        let mut procs = Vec::with_capacity(pids.len());
        let mut stats = Vec::with_capacity(pids.len());
        let mut ticks_now = HashMap::with_capacity(pids.len());
        let (mut cpu_total, mut rss_total, mut threads_total) = (0.0, 0u64, 0u32);
        // The tree's window counters: zero, not unknown, in eBPF mode; the syscall
        // count is known once a process reports one.
        let mut tree_delta = self.kernel.as_ref().map(|_| {
            let mut w = [Some(0); WINDOW_COUNTERS.len()];
            w[WINDOW_COUNTERS.len() - 1] = None;
            w
        });
        let mut tree_syscalls = BTreeMap::new();
        let mut depth_now = HashMap::with_capacity(pids.len());
        let mono_ns = clock::monotonic_ns();
        let mut read = Vec::with_capacity(pids.len());
        for &pid in pids {
            let Ok(st) = procfs::read_stat(pid) else {
                continue;
            };
            if st.state == 'Z' || st.state == 'X' {
                continue;
            }
            read.push((pid, st));
        }
        let live_pids: Vec<u32> = read.iter().map(|(pid, _)| *pid).collect();
        let mut depths = match &mut self.kernel {
            Some(k) => k.read_live(&live_pids, mono_ns),
            None => Vec::new(),
        }
        .into_iter();
        for (pid, st) in read {
            let ticks = st.utime_ticks + st.stime_ticks;
            // A process first seen now counts from its start when that was inside the
            // window, else from now (its earlier CPU belongs to earlier windows).
            let base = match self.prev_ticks.get(&pid) {
                Some(&prev) => prev,
                None if self.ticks_to_ns(st.start_ticks) >= self.prev_ts_ns => 0,
                None => ticks,
            };
            let cpu_ns = self.ticks_to_ns(ticks.saturating_sub(base));
            let cpu_percent = round2(cpu_ns as f64 * 100.0 / window_ns as f64);
            let rss_kb = st.rss_pages * self.page_kb;
            cpu_total += cpu_percent;
            rss_total += rss_kb;
            threads_total += st.threads;
            ticks_now.insert(pid, ticks);
            let delta = depths.next().flatten().map(|now| {
                let d = delta(&now, self.prev_depth.get(&pid), &mut tree_syscalls);
                depth_now.insert(pid, now);
                d
            });
            let mut proc_sample = ProcSample {
                pid: Some(pid),
                cpu_percent: Some(cpu_percent),
                rss_kb: Some(rss_kb),
                threads: Some(st.threads),
                ..Default::default()
            };
            if let Some(d) = delta {
                if let Some(total) = &mut tree_delta {
                    add_window(total, &d);
                }
                proc_sample.set_window(d);
            }
            procs.push(proc_sample);
            stats.push((pid, st));
        }
        self.prev_ticks = ticks_now;
        self.prev_ts_ns = now_ns;
        self.prev_depth = depth_now;
        let mut sample = Sample {
            ts_boot_ns: Some(now_ns),
            window_ms: Some(round2(window_ns as f64 / 1e6)),
            process_count: Some(procs.len() as u32),
            thread_count: Some(threads_total),
            cpu_percent: Some(round2(cpu_total)),
            rss_kb: Some(rss_total),
            syscalls: self
                .kernel
                .as_ref()
                .filter(|k| k.counts_syscalls())
                .map(|_| {
                    tree_syscalls
                        .into_iter()
                        .map(|(nr, c)| (syscall_name(usize::from(nr)).into_owned(), c))
                        .collect()
                }),
            procs,
            ..Default::default()
        };
        if let Some(w) = tree_delta {
            sample.set_window(w);
        }
        (sample, stats)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_ramps_to_max() {
        let mut i = AdaptiveInterval::new(100, 1000);
        let seq: Vec<u64> = (0..14).map(|_| i.next_ms()).collect();
        assert_eq!(&seq[..3], &[100, 125, 156]);
        assert_eq!(*seq.last().unwrap(), 1000);
        assert!(seq.windows(2).all(|w| w[0] <= w[1]));
        let mut fixed = AdaptiveInterval::new(500, 100);
        assert_eq!(fixed.next_ms(), 500);
        assert_eq!(fixed.next_ms(), 500);
    }

    #[test]
    fn samples_own_process() {
        let mut s = Sampler::new(0, None);
        let me = std::process::id();
        let (sample, raw) = s.sample(&[me, u32::MAX - 1], clock::boottime_ns());
        assert_eq!(sample.process_count, Some(1));
        assert_eq!(raw.len(), 1);
        assert!(sample.rss_kb > Some(0));
        assert!(sample.thread_count >= Some(1));
    }
}
