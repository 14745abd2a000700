//! Snakemake's benchmark table, one row per workflow task of the trace: the columns
//! and units of a `benchmark:` file (`s h:m:s max_rss max_vms max_uss max_pss io_in
//! io_out mean_load cpu_time`), then `jobid rule_name wildcards` as in Snakemake's
//! extended format, so tables that read benchmark files read this one.
//!
//! Where the numbers come from (docs/workflows.md): `s` the task's wall time (first
//! process start to last process end); `max_rss`/`max_vms` its largest process's
//! peak RSS and virtual size in MiB (Snakemake sums the tree at each of its samples;
//! the peaks of a task's processes need not coincide, so the largest exact peak is
//! given instead); `max_uss`/`max_pss` have no exact source and are `NA`, as
//! Snakemake writes for what it could not measure; `io_in`/`io_out` the storage
//! bytes read and written (read_bytes, write_bytes, as Snakemake's psutil reads),
//! MiB; `cpu_time` user + system seconds of all its processes; `mean_load` CPU time
//! over wall time, in percent of one CPU.

use std::io::Write;
use std::path::Path;

use super::{at, ExportError};
use crate::report::{stats::StatsReport, tasks::TaskRun};

pub const COLUMNS: &[&str] = &[
    "s",
    "h:m:s",
    "max_rss",
    "max_vms",
    "max_uss",
    "max_pss",
    "io_in",
    "io_out",
    "mean_load",
    "cpu_time",
    "jobid",
    "rule_name",
    "wildcards",
];

const MIB: f64 = 1024.0 * 1024.0;

/// `H:MM:SS` without fractions (Snakemake's `timedelta_to_str`).
fn hms(secs: f64) -> String {
    let total = secs.max(0.0) as u64;
    let (days, rest) = (total / 86_400, total % 86_400);
    let s = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => s,
        1 => format!("1 day, {s}"),
        d => format!("{d} days, {s}"),
    }
}

/// Wildcards as Snakemake's extended format prints them (a Python dict).
fn py_dict(t: &TaskRun) -> String {
    let items: Vec<String> = t
        .task
        .wildcards
        .iter()
        .flatten()
        .map(|(k, v)| format!("'{}': '{}'", k.replace('\'', "\\'"), v.replace('\'', "\\'")))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn row(t: &TaskRun) -> Vec<String> {
    let s = t.wall_ns().map(|ns| ns as f64 / 1e9);
    let cpu_s = t.cpu_ns() as f64 / 1e9;
    let f2 = |v: f64| format!("{v:.2}");
    let mib = |kb: Option<u64>| kb.map_or("NA".to_string(), |kb| f2(kb as f64 * 1024.0 / MIB));
    vec![
        s.map_or("NA".to_string(), f2),
        s.map_or("NA".to_string(), hms),
        mib(t.peak_rss_kb),
        mib(t.peak_vm_kb),
        "NA".into(),
        "NA".into(),
        f2(t.read_bytes as f64 / MIB),
        f2(t.write_bytes as f64 / MIB),
        match s {
            Some(s) if s > 0.0 => f2(cpu_s / s * 100.0),
            _ => "NA".into(),
        },
        f2(cpu_s),
        t.task.id.clone().unwrap_or_else(|| "-".into()),
        t.task.group_name().to_string(),
        py_dict(t),
    ]
}

pub fn export(report: &StatsReport, w: &mut dyn Write, out: &Path) -> Result<(), ExportError> {
    writeln!(w, "{}", COLUMNS.join("\t")).map_err(at(out))?;
    for t in &report.tasks {
        let cells: Vec<String> = row(t)
            .into_iter()
            .map(|c| c.replace(['\t', '\n', '\r'], " "))
            .collect();
        writeln!(w, "{}", cells.join("\t")).map_err(at(out))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snakemake_time_format() {
        assert_eq!(hms(0.4), "0:00:00");
        assert_eq!(hms(3661.9), "1:01:01");
        assert_eq!(hms(90_000.0), "1 day, 1:00:00");
        assert_eq!(hms(200_000.0), "2 days, 7:33:20");
    }
}
