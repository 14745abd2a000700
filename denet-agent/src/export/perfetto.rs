//! Chrome trace-event JSON (the "JSON Object Format"), which the Perfetto UI and
//! chrome://tracing open. Each traced process is a Perfetto process (pid = its pid)
//! with one thread track holding its lifetime as a complete (`X`) span named by its
//! command, `exec` and `exit` instants on that track, and `cpu_percent` / `rss_kib`
//! counter tracks from the samples. Tracks are ordered depth-first by parent (names
//! prefixed `· ` per level) so children sit under their parent. A separate "run"
//! process carries the whole tree's CPU and RSS counters. Timestamps are
//! CLOCK_BOOTTIME microseconds.
//!
//! Events are written as records arrive; only pid -> (parent, start, label) is kept
//! for the track metadata written at the end.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{json, Value};

use super::{at, ExportError};
use crate::report::{command, units};
use crate::trace::{Process, Record, Sample, TraceReader};

/// Microseconds (the format's unit), keeping nanoseconds as decimals.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Per pid: what the track metadata needs. Labels are interned (few distinct
/// commands), so this is ~40 bytes per distinct pid, bounded by the kernel's pid_max.
struct Track {
    ppid: Option<u32>,
    start: Option<u64>,
    label: u32,
}

#[derive(Default)]
struct Labels {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Labels {
    fn intern(&mut self, s: String) -> u32 {
        if let Some(id) = self.ids.get(&s) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.clone());
        self.ids.insert(s, id);
        id
    }

    fn get(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("?", String::as_str)
    }
}

struct Writer<'a> {
    w: &'a mut dyn Write,
    out: &'a Path,
    first: bool,
}

impl Writer<'_> {
    fn event(&mut self, v: &Value) -> Result<(), ExportError> {
        let sep = if self.first { "\n" } else { ",\n" };
        self.first = false;
        write!(self.w, "{sep}").map_err(at(self.out))?;
        serde_json::to_writer(&mut *self.w, v)
            .map_err(std::io::Error::other)
            .map_err(at(self.out))
    }
}

fn process_events(p: &Process, wr: &mut Writer) -> Result<(), ExportError> {
    let Some(pid) = p.pid else { return Ok(()) };
    let label = command::label(&p.argv, p.exe.as_deref());
    let exit = units::exit_status(p.exit_code, p.signal, p.core_dumped);
    if let (Some(start), Some(end)) = (p.start_boot_ns, p.end_boot_ns) {
        wr.event(&json!({
            "ph": "X", "cat": "process", "name": label, "pid": pid, "tid": pid,
            "ts": us(start), "dur": us(end.saturating_sub(start)),
            "args": {
                "pid": pid, "ppid": p.ppid, "argv": command::full(&p.argv), "exe": p.exe,
                "exit": exit, "cpu_user_ms": p.cpu_user_ns.map(|v| v as f64 / 1e6),
                "cpu_sys_ms": p.cpu_sys_ns.map(|v| v as f64 / 1e6),
                "cpu_percent": p.cpu_percent(), "peak_rss_kib": p.peak_rss_kb,
                "rchar": p.rchar, "wchar": p.wchar, "read_bytes": p.read_bytes,
                "write_bytes": p.write_bytes, "threads": p.threads, "source": p.source,
            }
        }))?;
    }
    if let Some(start) = p.start_boot_ns {
        if p.execs.unwrap_or(0) > 0 {
            // The trace records the fork time, not the exec time: the exec is marked at
            // the start of the process (it follows the fork within microseconds).
            wr.event(&json!({
                "ph": "i", "s": "t", "cat": "lifecycle", "name": "exec", "pid": pid, "tid": pid,
                "ts": us(start), "args": { "exe": p.exe, "execs": p.execs, "argv": command::full(&p.argv) }
            }))?;
        }
    }
    if let Some(end) = p.end_boot_ns {
        wr.event(&json!({
            "ph": "i", "s": "t", "cat": "lifecycle", "name": format!("exit {exit}"),
            "pid": pid, "tid": pid, "ts": us(end),
            "args": { "exit_code": p.exit_code, "signal": p.signal, "core_dumped": p.core_dumped }
        }))?;
    }
    Ok(())
}

fn sample_events(s: &Sample, run_pid: u32, wr: &mut Writer) -> Result<(), ExportError> {
    let Some(ts) = s.ts_boot_ns else {
        return Ok(());
    };
    let ts = us(ts);
    wr.event(
        &json!({"ph": "C", "name": "tree cpu_percent", "pid": run_pid, "ts": ts,
        "args": {"cpu_percent": s.cpu_percent.unwrap_or(0.0)}}),
    )?;
    wr.event(
        &json!({"ph": "C", "name": "tree rss_kib", "pid": run_pid, "ts": ts,
        "args": {"rss_kib": s.rss_kb.unwrap_or(0)}}),
    )?;
    for p in &s.procs {
        let Some(pid) = p.pid else { continue };
        if let Some(c) = p.cpu_percent {
            wr.event(
                &json!({"ph": "C", "name": "cpu_percent", "pid": pid, "ts": ts,
                "args": {"cpu_percent": c}}),
            )?;
        }
        if let Some(r) = p.rss_kb {
            wr.event(&json!({"ph": "C", "name": "rss_kib", "pid": pid, "ts": ts,
                "args": {"rss_kib": r}}))?;
        }
    }
    Ok(())
}

/// Depth-first order of the tracks by parent, children by start time.
fn track_order(tracks: &HashMap<u32, Track>) -> Vec<(u32, usize)> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (&pid, t) in tracks {
        match t.ppid.filter(|pp| tracks.contains_key(pp) && *pp != pid) {
            Some(pp) => children.entry(pp).or_default().push(pid),
            None => roots.push(pid),
        }
    }
    let key = |pid: &u32| (tracks.get(pid).and_then(|t| t.start), *pid);
    roots.sort_by_key(key);
    for c in children.values_mut() {
        c.sort_by_key(key);
    }
    let mut order = Vec::with_capacity(tracks.len());
    let mut stack: Vec<(u32, usize)> = roots.into_iter().rev().map(|p| (p, 0)).collect();
    while let Some((pid, depth)) = stack.pop() {
        // A pid-reuse cycle cannot loop: each pid is visited once.
        if order.len() > tracks.len() {
            break;
        }
        order.push((pid, depth));
        if let Some(c) = children.remove(&pid) {
            stack.extend(c.into_iter().rev().map(|p| (p, depth + 1)));
        }
    }
    order
}

pub fn export<R: BufRead>(
    reader: &mut TraceReader<R>,
    w: &mut dyn Write,
    out: &Path,
) -> Result<(), ExportError> {
    let header = reader.header().clone();
    let run_pid = header.agent_pid.unwrap_or(0);
    write!(w, "{{\"displayTimeUnit\":\"ms\",\"traceEvents\":[").map_err(at(out))?;
    let mut wr = Writer {
        w,
        out,
        first: true,
    };
    let mut tracks: HashMap<u32, Track> = HashMap::new();
    let mut labels = Labels::default();
    while let Some(rec) = reader.next_record()? {
        match rec {
            Record::Process(p) => {
                process_events(&p, &mut wr)?;
                if let Some(pid) = p.pid {
                    tracks.insert(
                        pid,
                        Track {
                            ppid: p.ppid,
                            start: p.start_boot_ns,
                            label: labels.intern(command::label(&p.argv, p.exe.as_deref())),
                        },
                    );
                }
            }
            Record::Sample(s) => sample_events(&s, run_pid, &mut wr)?,
            Record::Summary(_) | Record::File(_) | Record::Event(_) => {}
        }
    }
    let run_name = format!("run: {}", command::label(&header.argv, None));
    wr.event(
        &json!({"ph": "M", "name": "process_name", "pid": run_pid, "tid": run_pid,
        "args": {"name": run_name}}),
    )?;
    wr.event(
        &json!({"ph": "M", "name": "process_sort_index", "pid": run_pid, "tid": run_pid,
        "args": {"sort_index": 0}}),
    )?;
    for (i, (pid, depth)) in track_order(&tracks).into_iter().enumerate() {
        let Some(t) = tracks.get(&pid) else { continue };
        let label = labels.get(t.label);
        let name = format!("{}{label}", "· ".repeat(depth));
        wr.event(
            &json!({"ph": "M", "name": "process_name", "pid": pid, "tid": pid,
            "args": {"name": name}}),
        )?;
        wr.event(
            &json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": pid,
            "args": {"sort_index": i + 1}}),
        )?;
        wr.event(
            &json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": pid,
            "args": {"name": label}}),
        )?;
        if let Some(pp) = t.ppid {
            let parent = tracks.get(&pp).map_or_else(
                || format!("parent pid {pp}"),
                |p| format!("parent {} ({pp})", p.label),
            );
            wr.event(
                &json!({"ph": "M", "name": "process_labels", "pid": pid, "tid": pid,
                "args": {"labels": parent}}),
            )?;
        }
    }
    write!(wr.w, "\n]}}\n").map_err(at(out))
}
