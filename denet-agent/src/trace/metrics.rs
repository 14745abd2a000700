//! The counters of a process record, declared once: the field, its unit and how it
//! combines over several processes. Drives the per-group sums of the process tree
//! (`report::tree::Agg`) and the counter columns of the CSV export.

use super::Process;

/// The unit of a counter, also what its CSV column is called and how it is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds (CSV: seconds, `_s`).
    Ns,
    /// KiB (CSV: `_kib`).
    KiB,
    Bytes,
    Count,
}

/// How a counter of several processes is combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Sum,
    /// Peaks: the largest member's.
    Max,
}

/// Where a counter comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The kernel's accounting at exit (eBPF) or the last /proc reading.
    Exit,
    /// The eBPF programs' own counters (absent in /proc mode).
    Depth,
}

pub struct Metric {
    pub id: M,
    /// The record's field.
    pub field: &'static str,
    pub unit: Unit,
    pub combine: Combine,
    pub source: Source,
    pub of: fn(&Process) -> Option<u64>,
}

impl Metric {
    /// The CSV column: the unit in the name, times in seconds.
    pub fn column(&self) -> String {
        let f = self.field;
        match self.unit {
            Unit::Ns => format!("{}_s", f.strip_suffix("_ns").unwrap_or(f)),
            Unit::KiB => format!("{}_kib", f.strip_suffix("_kb").unwrap_or(f)),
            Unit::Bytes if f.ends_with("_bytes") => f.to_string(),
            Unit::Bytes => format!("{f}_bytes"),
            Unit::Count => format!("{f}_count"),
        }
    }
}

macro_rules! metrics {
    ($($id:ident: $field:ident, $unit:ident, $combine:ident, $source:ident, $of:expr;)*) => {
        /// A counter of [`METRICS`], by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum M { $($id,)* }

        pub const METRICS: &[Metric] = &[$(Metric {
            id: M::$id,
            field: stringify!($field),
            unit: Unit::$unit,
            combine: Combine::$combine,
            source: Source::$source,
            of: $of,
        },)*];
    };
}

/// Counts of the syscall map.
fn syscalls_total(p: &Process) -> Option<u64> {
    p.syscalls.as_ref().map(|s| s.values().sum())
}

metrics! {
    CpuUserNs: cpu_user_ns, Ns, Sum, Exit, |p| p.cpu_user_ns;
    CpuSysNs: cpu_sys_ns, Ns, Sum, Exit, |p| p.cpu_sys_ns;
    PeakRssKb: peak_rss_kb, KiB, Max, Exit, |p| p.peak_rss_kb;
    PeakVmKb: peak_vm_kb, KiB, Max, Exit, |p| p.peak_vm_kb;
    Rchar: rchar, Bytes, Sum, Exit, |p| p.rchar;
    Wchar: wchar, Bytes, Sum, Exit, |p| p.wchar;
    Syscr: syscr, Count, Sum, Exit, |p| p.syscr;
    Syscw: syscw, Count, Sum, Exit, |p| p.syscw;
    ReadBytes: read_bytes, Bytes, Sum, Exit, |p| p.read_bytes;
    WriteBytes: write_bytes, Bytes, Sum, Exit, |p| p.write_bytes;
    CancelledWriteBytes: cancelled_write_bytes, Bytes, Sum, Exit, |p| p.cancelled_write_bytes;
    Minflt: minflt, Count, Sum, Exit, |p| p.minflt;
    Majflt: majflt, Count, Sum, Exit, |p| p.majflt;
    VolCtxt: vol_ctxt, Count, Sum, Exit, |p| p.vol_ctxt;
    InvCtxt: inv_ctxt, Count, Sum, Exit, |p| p.inv_ctxt;
    Threads: threads, Count, Sum, Exit, |p| p.threads.map(u64::from);
    OncpuNs: oncpu_ns, Ns, Sum, Depth, |p| p.oncpu_ns;
    CpuWaitNs: cpu_wait_ns, Ns, Sum, Depth, |p| p.cpu_wait_ns;
    IoWaitNs: io_wait_ns, Ns, Sum, Depth, |p| p.io_wait_ns;
    SleepNs: sleep_ns, Ns, Sum, Depth, |p| p.sleep_ns;
    BlkReadBytes: blk_read_bytes, Bytes, Sum, Depth, |p| p.blk_read_bytes;
    BlkWriteBytes: blk_write_bytes, Bytes, Sum, Depth, |p| p.blk_write_bytes;
    NetTxBytes: net_tx_bytes, Bytes, Sum, Depth, |p| p.net_tx_bytes;
    NetRxBytes: net_rx_bytes, Bytes, Sum, Depth, |p| p.net_rx_bytes;
    Syscalls: syscalls, Count, Sum, Depth, syscalls_total;
    RunqWaits: runq_waits, Count, Sum, Depth, |p| p.runq_waits;
    BlkReadOps: blk_read_ops, Count, Sum, Depth, |p| p.blk_read_ops;
    BlkWriteOps: blk_write_ops, Count, Sum, Depth, |p| p.blk_write_ops;
}

/// The counters of one process or combined over a group (`None`: no member
/// reported it), indexed by [`M`].
#[derive(Debug, Clone, PartialEq)]
pub struct Counters([Option<u64>; METRICS.len()]);

impl Default for Counters {
    fn default() -> Self {
        Counters([None; METRICS.len()])
    }
}

impl Counters {
    pub fn of(p: &Process) -> Self {
        let mut c = Counters::default();
        c.add_process(p);
        c
    }

    pub fn get(&self, m: M) -> Option<u64> {
        self.0[m as usize]
    }

    pub fn add_process(&mut self, p: &Process) {
        for (slot, m) in self.0.iter_mut().zip(METRICS) {
            combine(slot, (m.of)(p), m.combine);
        }
    }

    pub fn merge(&mut self, o: &Counters) {
        for ((slot, v), m) in self.0.iter_mut().zip(o.0).zip(METRICS) {
            combine(slot, v, m.combine);
        }
    }
}

fn combine(slot: &mut Option<u64>, v: Option<u64>, how: Combine) {
    let Some(v) = v else { return };
    *slot = Some(match (*slot, how) {
        (None, _) => v,
        (Some(a), Combine::Sum) => a.saturating_add(v),
        (Some(a), Combine::Max) => a.max(v),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_its_ids_and_names_record_fields() {
        let fields = serde_json::to_value(Process {
            pid: Some(1),
            threads: Some(1),
            oncpu_ns: Some(0),
            cpu_wait_ns: Some(0),
            io_wait_ns: Some(0),
            sleep_ns: Some(0),
            runq_waits: Some(0),
            blk_read_bytes: Some(0),
            blk_write_bytes: Some(0),
            blk_read_ops: Some(0),
            blk_write_ops: Some(0),
            net_tx_bytes: Some(0),
            net_rx_bytes: Some(0),
            syscalls: Some(Default::default()),
            ..Default::default()
        })
        .unwrap();
        for (i, m) in METRICS.iter().enumerate() {
            assert_eq!(m.id as usize, i, "{} out of place", m.field);
            assert!(fields.get(m.field).is_some(), "{} is not a field", m.field);
        }
    }

    #[test]
    fn sums_and_peaks() {
        let a = Process {
            cpu_user_ns: Some(5),
            peak_rss_kb: Some(100),
            ..Default::default()
        };
        let b = Process {
            cpu_user_ns: Some(7),
            peak_rss_kb: Some(40),
            rchar: Some(3),
            ..Default::default()
        };
        let mut c = Counters::of(&a);
        c.merge(&Counters::of(&b));
        assert_eq!(c.get(M::CpuUserNs), Some(12));
        assert_eq!(c.get(M::PeakRssKb), Some(100));
        assert_eq!(c.get(M::Rchar), Some(3));
        assert_eq!(c.get(M::Wchar), None);
        assert_eq!(METRICS[M::CpuUserNs as usize].column(), "cpu_user_s");
        assert_eq!(METRICS[M::PeakRssKb as usize].column(), "peak_rss_kib");
        assert_eq!(METRICS[M::Rchar as usize].column(), "rchar_bytes");
        assert_eq!(METRICS[M::Syscalls as usize].column(), "syscalls_count");
    }
}
