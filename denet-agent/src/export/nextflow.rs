//! A Nextflow trace file: tab-separated, Nextflow's column names, and its default
//! (non-raw) value formats, so tools that parse `trace.txt` read it unchanged. One
//! row per process record, in the order processes exited (as Nextflow writes tasks
//! as they complete). Formats follow Nextflow's `TraceRecord`: durations `850ms`,
//! `12.3s`, `1m 5s`; memory `1.5 MB` (binary units, Nextflow's names); `%cpu`
//! `99.5%`; dates `yyyy-MM-dd HH:mm:ss.SSS` in local time; `-` when unknown.

use std::io::{BufRead, Write};
use std::path::Path;

use super::{at, ExportError};
use crate::report::command;
use crate::trace::{Process, Record, TraceReader};

pub const COLUMNS: &[&str] = &[
    "task_id",
    "hash",
    "native_id",
    "process",
    "name",
    "status",
    "exit",
    "submit",
    "start",
    "complete",
    "duration",
    "realtime",
    "%cpu",
    "peak_rss",
    "peak_vmem",
    "rchar",
    "wchar",
    "syscr",
    "syscw",
    "read_bytes",
    "write_bytes",
    "vol_ctxt",
    "inv_ctxt",
    "tag",
    "workdir",
];

const NA: &str = "-";

/// Nextflow `Duration.toString()` of milliseconds.
pub fn fmt_time(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let tenths = (ms + 50) / 100;
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs_total = (ms + 500) / 1_000;
    let (secs, mins_total) = (secs_total % 60, secs_total / 60);
    let (mins, hours_total) = (mins_total % 60, mins_total / 60);
    let (hours, days) = (hours_total % 24, hours_total / 24);
    let mut parts = Vec::new();
    if days > 0 {
        parts.push(format!("{days}d"));
    }
    if hours > 0 {
        parts.push(format!("{hours}h"));
    }
    if mins > 0 {
        parts.push(format!("{mins}m"));
    }
    if secs > 0 {
        parts.push(format!("{secs}s"));
    }
    parts.join(" ")
}

/// Nextflow `MemoryUnit.toString()` of bytes: `0`, `512 B`, `1.5 KB`, `12 MB`.
pub fn fmt_mem(bytes: u64) -> String {
    const UNITS: [&str; 8] = ["B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB"];
    if bytes == 0 {
        return "0".into();
    }
    let group = ((bytes as f64).log10() / 1024f64.log10()) as usize;
    let group = group.min(UNITS.len() - 1);
    let v = bytes as f64 / 1024f64.powi(group as i32);
    // DecimalFormat("0.#"): one decimal at most, half-even, no trailing ".0".
    let s = format!("{v:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s} {}", UNITS[group])
}

pub fn fmt_percent(p: f64) -> String {
    format!("{p:.1}%")
}

/// `yyyy-MM-dd HH:mm:ss.SSS` in the local time zone (as Nextflow writes dates).
pub fn fmt_date(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as libc::time_t;
    let ms = (unix_ns / 1_000_000) % 1000;
    // SAFETY: localtime_r writes only into `tm`, which is a plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `secs` and `tm` are valid for the call; localtime_r is thread-safe.
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return NA.into();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{ms:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn opt(v: Option<u64>, f: fn(u64) -> String) -> String {
    v.map_or_else(|| NA.to_string(), f)
}

fn num(v: Option<u64>) -> String {
    opt(v, |v| v.to_string())
}

/// No tabs or newlines inside a cell.
fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

fn row(task_id: u64, p: &Process, to_unix: &dyn Fn(u64) -> Option<u64>) -> Vec<String> {
    let (status, exit) = match (p.exit_code, p.signal) {
        (_, Some(sig)) => ("FAILED", (128 + sig).to_string()),
        (Some(0), None) => ("COMPLETED", "0".to_string()),
        (Some(c), None) => ("FAILED", c.to_string()),
        (None, None) => ("ABORTED", NA.to_string()),
    };
    let date = |t: Option<u64>| t.and_then(to_unix).map_or_else(|| NA.to_string(), fmt_date);
    let wall_ms = p.wall().map(|ns| ns / 1_000_000);
    // A process of a workflow task carries the task's columns: its hash (Nextflow)
    // or job id, its process or rule, and `NAME (TAG)` as Nextflow names tasks.
    let (hash, process, name, tag, workdir) = match &p.task {
        Some(t) => {
            let tag = t.tag.clone().or_else(|| {
                let w = t.wildcards_text();
                (!w.is_empty()).then_some(w)
            });
            let name = match &tag {
                Some(tag) => format!("{} ({tag})", t.group_name()),
                None => t.group_name().to_string(),
            };
            (
                t.id.clone().unwrap_or_else(|| NA.to_string()),
                t.group_name().to_string(),
                name,
                tag.unwrap_or_else(|| NA.to_string()),
                t.work_dir.clone().unwrap_or_else(|| NA.to_string()),
            )
        }
        None => (
            NA.to_string(),
            command::program(&p.argv, p.exe.as_deref()),
            command::label(&p.argv, p.exe.as_deref()),
            NA.to_string(),
            NA.to_string(),
        ),
    };
    vec![
        task_id.to_string(),
        clean(&hash),
        num(p.pid.map(u64::from)),
        clean(&process),
        clean(&name),
        status.to_string(),
        exit,
        date(p.start_boot_ns),
        date(p.start_boot_ns),
        date(p.end_boot_ns),
        opt(wall_ms, fmt_time),
        opt(wall_ms, fmt_time),
        p.cpu_percent().map_or_else(|| NA.to_string(), fmt_percent),
        opt(p.peak_rss_kb.map(|k| k * 1024), fmt_mem),
        opt(p.peak_vm_kb.map(|k| k * 1024), fmt_mem),
        opt(p.rchar, fmt_mem),
        opt(p.wchar, fmt_mem),
        num(p.syscr),
        num(p.syscw),
        opt(p.read_bytes, fmt_mem),
        opt(p.write_bytes, fmt_mem),
        num(p.vol_ctxt),
        num(p.inv_ctxt),
        clean(&tag),
        clean(&workdir),
    ]
}

pub fn export<R: BufRead>(
    reader: &mut TraceReader<R>,
    w: &mut dyn Write,
    out: &Path,
) -> Result<(), ExportError> {
    let header = reader.header().clone();
    let to_unix = |t: u64| header.boot_to_unix_ns(t);
    writeln!(w, "{}", COLUMNS.join("\t")).map_err(at(out))?;
    let mut task_id = 0;
    while let Some(rec) = reader.next_record()? {
        if let Record::Process(p) = rec {
            task_id += 1;
            writeln!(w, "{}", row(task_id, &p, &to_unix).join("\t")).map_err(at(out))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected strings are what Nextflow's Duration and MemoryUnit print.
    #[test]
    fn nextflow_value_formats() {
        assert_eq!(fmt_time(0), "0ms");
        assert_eq!(fmt_time(999), "999ms");
        assert_eq!(fmt_time(1000), "1.0s");
        assert_eq!(fmt_time(1234), "1.2s");
        assert_eq!(fmt_time(1250), "1.3s");
        assert_eq!(fmt_time(59_940), "59.9s");
        assert_eq!(fmt_time(60_000), "1m");
        assert_eq!(fmt_time(65_400), "1m 5s");
        assert_eq!(fmt_time(3_600_000 + 2_000), "1h 2s");
        assert_eq!(fmt_time(90_061_000), "1d 1h 1m 1s");
        assert_eq!(fmt_mem(0), "0");
        assert_eq!(fmt_mem(512), "512 B");
        assert_eq!(fmt_mem(1024), "1 KB");
        assert_eq!(fmt_mem(1536), "1.5 KB");
        assert_eq!(fmt_mem(1_717_986), "1.6 MB");
        assert_eq!(fmt_mem(3 * 1024 * 1024 * 1024), "3 GB");
        assert_eq!(fmt_percent(99.54), "99.5%");
        assert_eq!(fmt_percent(0.0), "0.0%");
    }
}
