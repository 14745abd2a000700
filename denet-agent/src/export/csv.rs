//! Tidy CSV tables, one file per record kind, units in the column names:
//! `processes.csv` (one row per process), `samples.csv` (long form: one row per
//! process per sample), `sample_totals.csv` (one row per sample), `files.csv` (one
//! row per `file` record), `syscalls.csv` (long form: pid, syscall, count),
//! `events.csv` (one row per `event` record, `--events` traces) and `run.csv` (one
//! row: header and summary facts). Times `*_s` are seconds since the
//! run started; `run.csv` has that start as Unix time. Empty cell: unknown.

use std::{
    fs,
    io::{self, Write},
    path::Path,
};

use super::{at, create, ExportError};
use crate::report::command;
use crate::trace::{
    metrics::{Metric, Source, Unit, M, METRICS},
    records::WINDOW_COUNTERS,
};
use crate::trace::{EventRecord, FileRecord, Header, Process, Record, Summary, TraceReader};

/// The process table's columns: who and when, the exit counters of
/// `trace::metrics` (with the CPU percentage after the CPU times), how it ended,
/// then the eBPF counters.
pub fn process_columns() -> Vec<String> {
    let mut cols: Vec<String> = [
        "pid", "ppid", "command", "argv", "exe", "execs", "start_s", "end_s", "wall_s",
    ]
    .map(String::from)
    .to_vec();
    for m in METRICS.iter().filter(|m| m.source == Source::Exit) {
        cols.push(m.column());
        if m.id == M::CpuSysNs {
            cols.push("cpu_percent".into());
        }
    }
    cols.extend(["exit_code", "signal", "core_dumped", "source"].map(String::from));
    cols.extend(
        METRICS
            .iter()
            .filter(|m| m.source == Source::Depth)
            .map(Metric::column),
    );
    cols
}

pub const FILE_COLUMNS: &[&str] = &[
    "pid",
    "fd",
    "path",
    "path_source",
    "path_truncated",
    "access",
    "open_flags",
    "created",
    "inherited",
    "read_bytes",
    "write_bytes",
    "reads_count",
    "writes_count",
    "open_s",
    "close_s",
    "closed_by",
];

pub const EVENT_COLUMNS: &[&str] = &[
    "type",
    "t_s",
    "pid",
    "tid",
    "cpu",
    "state",
    "duration_s",
    "op",
    "bytes",
];

fn event_cells(e: &EventRecord, t0: u64) -> Vec<String> {
    vec![
        e.event_type.to_string(),
        ts_s(e.ts_boot_ns, t0),
        u(e.pid),
        u(e.tid),
        u(e.cpu),
        u(e.state.clone()),
        ns_s(e.duration_ns),
        u(e.op.clone()),
        u(e.bytes),
    ]
}

/// Window counters of samples (eBPF mode), in both sample tables: the record's
/// `WINDOW_COUNTERS`, times in seconds.
fn window_columns() -> Vec<&'static str> {
    WINDOW_COUNTERS
        .iter()
        .map(|f| match *f {
            "syscall_count" => "syscalls_count",
            "oncpu_ns" => "oncpu_s",
            "cpu_wait_ns" => "cpu_wait_s",
            "io_wait_ns" => "io_wait_s",
            "sleep_ns" => "sleep_s",
            other => other,
        })
        .collect()
}

fn file_cells(f: &FileRecord, t0: u64) -> Vec<String> {
    vec![
        u(f.pid),
        u(f.fd),
        u(f.path.clone()),
        u(f.path_source.clone()),
        u(f.path_truncated),
        u(f.access.clone()),
        u(f.open_flags),
        u(f.created),
        u(f.inherited),
        u(f.read_bytes),
        u(f.write_bytes),
        u(f.reads),
        u(f.writes),
        ts_s(f.open_boot_ns, t0),
        ts_s(f.close_boot_ns, t0),
        u(f.closed_by.clone()),
    ]
}

fn window_cells(w: [Option<u64>; WINDOW_COUNTERS.len()]) -> Vec<String> {
    WINDOW_COUNTERS
        .iter()
        .zip(w)
        .map(|(f, v)| if f.ends_with("_ns") { ns_s(v) } else { u(v) })
        .collect()
}

/// RFC 4180 quoting, only where needed.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn u<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

/// Nanoseconds as seconds, exact (9 decimals).
fn ns_s(v: Option<u64>) -> String {
    v.map_or_else(String::new, |ns| {
        format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
    })
}

/// A timestamp as seconds since the run start (may be negative by a hair when the
/// start is the header's estimate).
fn ts_s(t: Option<u64>, t0: u64) -> String {
    t.map_or_else(String::new, |t| {
        let d = t as i128 - t0 as i128;
        let sign = if d < 0 { "-" } else { "" };
        let a = d.unsigned_abs();
        format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
    })
}

fn f3(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.3}"))
}

fn row(w: &mut dyn Write, cells: &[String]) -> io::Result<()> {
    let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
    writeln!(w, "{}", line.join(","))
}

fn header_row(w: &mut dyn Write, cols: &[&str]) -> io::Result<()> {
    writeln!(w, "{}", cols.join(","))
}

/// One row of the process table, in the order of [`process_columns`].
fn process_cells(p: &Process, t0: u64) -> Vec<String> {
    let counter = |m: &Metric| match m.unit {
        Unit::Ns => ns_s((m.of)(p)),
        _ => u((m.of)(p)),
    };
    let mut cells = vec![
        u(p.pid),
        u(p.ppid),
        command::label(&p.argv, p.exe.as_deref()),
        command::full(&p.argv),
        u(p.exe.clone()),
        u(p.execs),
        ts_s(p.start_boot_ns, t0),
        ts_s(p.end_boot_ns, t0),
        ns_s(p.wall()),
    ];
    for m in METRICS.iter().filter(|m| m.source == Source::Exit) {
        cells.push(counter(m));
        if m.id == M::CpuSysNs {
            cells.push(f3(p.cpu_percent()));
        }
    }
    cells.extend([
        u(p.exit_code),
        u(p.signal),
        p.core_dumped.to_string(),
        u(p.source.clone()),
    ]);
    cells.extend(
        METRICS
            .iter()
            .filter(|m| m.source == Source::Depth)
            .map(counter),
    );
    cells
}

fn run_row(
    h: &Header,
    s: Option<&Summary>,
    t0: u64,
    records: u64,
) -> (Vec<&'static str>, Vec<String>) {
    let cols = vec![
        "command",
        "argv",
        "hostname",
        "kernel",
        "agent_version",
        "ebpf",
        "start_unix_s",
        "wall_s",
        "cpu_user_s",
        "cpu_sys_s",
        "exit_code",
        "signal",
        "timed_out",
        "process_records",
        "peak_tree_rss_kib",
        "max_process_peak_rss_kib",
        "samples_count",
        "lost_events_count",
        "complete",
    ];
    let start_unix = h.boot_to_unix_ns(t0).map(|u| u as f64 / 1e9);
    let cells = vec![
        command::label(&h.argv, None),
        command::full(&h.argv),
        u(h.hostname.clone()),
        u(h.kernel.clone()),
        u(h.agent_version.clone()),
        u(h.ebpf),
        start_unix.map_or_else(String::new, |v| format!("{v:.6}")),
        ns_s(s.map(|s| s.wall_ns)),
        ns_s(s.map(|s| s.cpu_user_ns)),
        ns_s(s.map(|s| s.cpu_sys_ns)),
        u(s.and_then(|s| s.exit_code)),
        u(s.and_then(|s| s.signal)),
        u(s.map(|s| s.timed_out)),
        records.to_string(),
        u(s.map(|s| s.peak_tree_rss_kb)),
        u(s.map(|s| s.max_process_peak_rss_kb)),
        u(s.map(|s| s.samples)),
        u(s.map(|s| s.lost_events)),
        s.is_some().to_string(),
    ];
    (cols, cells)
}

pub fn export<R: io::BufRead>(
    reader: &mut TraceReader<R>,
    run_start: Option<u64>,
    dir: &Path,
) -> Result<(), ExportError> {
    fs::create_dir_all(dir).map_err(at(dir))?;
    let header = reader.header().clone();
    let t0 = run_start
        .or_else(|| header.start_estimate_boot_ns())
        .unwrap_or(0);
    let paths = [
        "processes.csv",
        "samples.csv",
        "sample_totals.csv",
        "files.csv",
        "syscalls.csv",
        "events.csv",
    ]
    .map(|n| dir.join(n));
    let [pp, sp, tp, fp, cp, ep] = &paths;
    let mut procs = create(pp)?;
    let mut samples = create(sp)?;
    let mut totals = create(tp)?;
    let mut files = create(fp)?;
    let mut syscalls = create(cp)?;
    let mut events = create(ep)?;
    let cols = process_columns();
    header_row(
        &mut procs,
        &cols.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .map_err(at(pp))?;
    header_row(&mut events, EVENT_COLUMNS).map_err(at(ep))?;
    let sample_cols = [
        &[
            "sample",
            "t_s",
            "pid",
            "cpu_percent",
            "rss_kib",
            "threads_count",
        ][..],
        &window_columns(),
    ]
    .concat();
    header_row(&mut samples, &sample_cols).map_err(at(sp))?;
    let total_cols = [
        &[
            "sample",
            "t_s",
            "window_ms",
            "process_count",
            "thread_count",
            "cpu_percent",
            "rss_kib",
        ][..],
        &window_columns(),
    ]
    .concat();
    header_row(&mut totals, &total_cols).map_err(at(tp))?;
    header_row(&mut files, FILE_COLUMNS).map_err(at(fp))?;
    header_row(&mut syscalls, &["pid", "syscall", "count"]).map_err(at(cp))?;

    let mut summary = None;
    let (mut n_samples, mut n_procs) = (0u64, 0u64);
    while let Some(rec) = reader.next_record()? {
        match rec {
            Record::Process(p) => {
                n_procs += 1;
                row(&mut procs, &process_cells(&p, t0)).map_err(at(pp))?;
                if let Some(sc) = &p.syscalls {
                    for (name, count) in sc {
                        row(&mut syscalls, &[u(p.pid), name.clone(), count.to_string()])
                            .map_err(at(cp))?;
                    }
                }
            }
            Record::Sample(s) => {
                n_samples += 1;
                let t = ts_s(s.ts_boot_ns, t0);
                let mut cells = vec![
                    n_samples.to_string(),
                    t.clone(),
                    f3(s.window_ms),
                    u(s.process_count),
                    u(s.thread_count),
                    f3(s.cpu_percent),
                    u(s.rss_kb),
                ];
                cells.extend(window_cells(s.window()));
                row(&mut totals, &cells).map_err(at(tp))?;
                for p in &s.procs {
                    let mut cells = vec![
                        n_samples.to_string(),
                        t.clone(),
                        u(p.pid),
                        f3(p.cpu_percent),
                        u(p.rss_kb),
                        u(p.threads),
                    ];
                    cells.extend(window_cells(p.window()));
                    row(&mut samples, &cells).map_err(at(sp))?;
                }
            }
            Record::File(f) => {
                row(&mut files, &file_cells(&f, t0)).map_err(at(fp))?;
            }
            Record::Event(e) => {
                row(&mut events, &event_cells(&e, t0)).map_err(at(ep))?;
            }
            Record::Summary(s) => summary = Some(*s),
        }
    }
    for (w, p) in [
        (&mut procs, pp),
        (&mut samples, sp),
        (&mut totals, tp),
        (&mut files, fp),
        (&mut syscalls, cp),
        (&mut events, ep),
    ] {
        w.flush().map_err(at(p))?;
    }
    let rp = dir.join("run.csv");
    let mut run = create(&rp)?;
    let (cols, cells) = run_row(&header, summary.as_ref(), t0, n_procs);
    header_row(&mut run, &cols).map_err(at(&rp))?;
    row(&mut run, &cells).map_err(at(&rp))?;
    run.flush().map_err(at(&rp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_units() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("plain"), "plain");
        assert_eq!(ns_s(Some(1_500_000_001)), "1.500000001");
        assert_eq!(ts_s(Some(5), 10), "-0.000000005");
        assert_eq!(ts_s(Some(2_000_000_010), 10), "2.000000000");
    }
}
