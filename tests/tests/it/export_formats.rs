//! `denet-agent export`: golden files of every format from the recorded traces,
//! the Perfetto output checked against the trace-event format, CSV and Nextflow
//! values against the trace, and streaming in bounded memory.

use std::collections::HashMap;

use crate::helpers::report::{agent, data, golden, of_kind, records, stderr, stdout};
use serde_json::Value;

fn export_to_string(trace: &str, format: &str) -> String {
    let o = agent(&["export", trace, "--format", format, "-o", "-"]);
    assert!(o.status.success(), "export {format}: {}", stderr(&o));
    assert!(
        stderr(&o).is_empty(),
        "no warnings expected: {}",
        stderr(&o)
    );
    stdout(&o)
}

fn export_csv(trace: &str, name: &str) -> std::path::PathBuf {
    let dir = crate::helpers::scratch_dir(name).join("csv");
    let o = agent(&["export", trace, "-f", "csv", "-o", &dir.to_string_lossy()]);
    assert!(o.status.success(), "export csv: {}", stderr(&o));
    dir
}

const CSV_TABLES: [&str; 7] = [
    "processes.csv",
    "samples.csv",
    "sample_totals.csv",
    "files.csv",
    "syscalls.csv",
    "events.csv",
    "run.csv",
];

#[test]
fn golden_exports_of_the_recorded_traces() {
    for (trace, tag) in [
        ("tests/data/pipeline.jsonl", "pipeline"),
        ("tests/data/depth.jsonl", "depth"),
        // A Snakemake workflow (13 jobs of 4 rules, with the logger plugin).
        ("tests/data/snakemake.jsonl", "snakemake"),
    ] {
        golden(
            &format!("{tag}.tasks.txt"),
            &stdout(&agent(&["stats", "--by", "task", trace])),
        );
        golden(
            &format!("{tag}.snakemake-benchmark.tsv"),
            &export_to_string(trace, "snakemake-benchmark"),
        );
        golden(
            &format!("{tag}.stats.txt"),
            &stdout(&agent(&["stats", trace])),
        );
        golden(
            &format!("{tag}.stats.json"),
            &stdout(&agent(&["stats", "--json", trace])),
        );
        golden(
            &format!("{tag}.nextflow.tsv"),
            &export_to_string(trace, "nextflow"),
        );
        golden(
            &format!("{tag}.perfetto.json"),
            &export_to_string(trace, "perfetto"),
        );
        golden(
            &format!("{tag}.report.html"),
            &export_to_string(trace, "html"),
        );
        let dir = export_csv(trace, tag);
        for t in CSV_TABLES {
            golden(
                &format!("{tag}.{t}"),
                &std::fs::read_to_string(dir.join(t)).unwrap(),
            );
        }
    }
}

/// Minimal RFC 4180 reader for the checks below.
fn parse_csv(text: &str) -> Vec<HashMap<String, String>> {
    fn split(line: &str) -> Vec<String> {
        let (mut out, mut cur, mut quoted, mut chars) =
            (Vec::new(), String::new(), false, line.chars().peekable());
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                ('"', q) => quoted = !q,
                (',', false) => out.push(std::mem::take(&mut cur)),
                (c, _) => cur.push(c),
            }
        }
        out.push(cur);
        out
    }
    let mut lines = text.lines();
    let head = split(lines.next().expect("header row"));
    lines
        .map(|l| {
            let cells = split(l);
            assert_eq!(cells.len(), head.len(), "row width: {l}");
            head.iter().cloned().zip(cells).collect()
        })
        .collect()
}

#[test]
fn csv_tables_hold_the_trace_values() {
    let recs = records(&data("depth.jsonl"));
    let dir = export_csv("tests/data/depth.jsonl", "csv-values");
    let procs = parse_csv(&std::fs::read_to_string(dir.join("processes.csv")).unwrap());
    let want = of_kind(&recs, "process");
    assert_eq!(procs.len(), want.len());
    for (row, p) in procs.iter().zip(&want) {
        assert_eq!(row["pid"], p["pid"].to_string());
        let secs = |f: &str| row[f].parse::<f64>().unwrap();
        assert!((secs("wall_s") * 1e9 - p["wall_ns"].as_f64().unwrap()).abs() < 1.0);
        assert!((secs("cpu_user_s") * 1e9 - p["cpu_user_ns"].as_f64().unwrap()).abs() < 1.0);
        assert_eq!(row["peak_rss_kib"], p["peak_rss_kb"].to_string());
        assert_eq!(row["rchar_bytes"], p["rchar"].to_string());
        assert_eq!(
            row["oncpu_s"]
                .parse::<f64>()
                .unwrap()
                .mul_add(1e9, 0.0)
                .round() as u64,
            p["oncpu_ns"].as_u64().unwrap()
        );
        assert_eq!(row["blk_read_bytes"], p["blk_read_bytes"].to_string());
        let sc: u64 = p["syscalls"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(row["syscalls_count"], sc.to_string());
    }
    // Samples in long form: one row per process per sample.
    let samples = parse_csv(&std::fs::read_to_string(dir.join("samples.csv")).unwrap());
    let n: usize = of_kind(&recs, "sample")
        .iter()
        .map(|s| s["procs"].as_array().unwrap().len())
        .sum();
    assert_eq!(samples.len(), n);
    let files = parse_csv(&std::fs::read_to_string(dir.join("files.csv")).unwrap());
    let fr = of_kind(&recs, "file");
    assert_eq!(files.len(), fr.len());
    assert_eq!(files[0]["path"], fr[0]["path"].as_str().unwrap());
    assert_eq!(files[0]["write_bytes"], fr[0]["write_bytes"].to_string());
    let syscalls = parse_csv(&std::fs::read_to_string(dir.join("syscalls.csv")).unwrap());
    let total: u64 = syscalls
        .iter()
        .map(|r| r["count"].parse::<u64>().unwrap())
        .sum();
    let want_total: u64 = want
        .iter()
        .flat_map(|p| p["syscalls"].as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, want_total);
    // A trace without depth fields has the same columns, empty cells.
    let plain = export_csv("tests/data/pipeline.jsonl", "csv-plain");
    let p = parse_csv(&std::fs::read_to_string(plain.join("processes.csv")).unwrap());
    assert_eq!(p[0]["oncpu_s"], "");
    assert_eq!(p[0].len(), procs[0].len());
}

/// Raw `event` records (`run --events`) read without warnings, count in stats and
/// become the events table.
#[test]
fn event_records_become_a_table() {
    let text = std::fs::read_to_string(data("pipeline.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let pid = records(&data("pipeline.jsonl"))[0]["pid"].as_u64().unwrap();
    let start = of_kind(&records(&data("pipeline.jsonl")), "summary")[0]["start_boot_ns"]
        .as_u64()
        .unwrap();
    lines.insert(1, format!(r#"{{"kind":"event","type":"sched","ts_boot_ns":{},"pid":{pid},"tid":{pid},"cpu":1,"state":"runnable","duration_ns":2500}}"#, start + 1_000_000));
    lines.insert(2, format!(r#"{{"kind":"event","type":"block","ts_boot_ns":{},"pid":{pid},"tid":{pid},"cpu":0,"duration_ns":90000,"op":"read","bytes":4096}}"#, start + 2_000_000));
    let dir = crate::helpers::scratch_dir("events");
    let trace = dir.join("t.jsonl");
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let t = trace.to_string_lossy();
    let o = agent(&["stats", "--json", &t]);
    assert!(
        o.status.success() && stderr(&o).is_empty(),
        "{}",
        stderr(&o)
    );
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["totals"]["event_records"], 2);
    let out = dir.join("csv");
    let o = agent(&["export", &t, "-f", "csv", "-o", &out.to_string_lossy()]);
    assert!(
        o.status.success() && stderr(&o).is_empty(),
        "{}",
        stderr(&o)
    );
    let ev = parse_csv(&std::fs::read_to_string(out.join("events.csv")).unwrap());
    assert_eq!(ev.len(), 2);
    assert_eq!(
        (
            ev[0]["type"].as_str(),
            ev[0]["state"].as_str(),
            ev[0]["duration_s"].as_str()
        ),
        ("sched", "runnable", "0.000002500")
    );
    assert_eq!(
        (
            ev[1]["op"].as_str(),
            ev[1]["bytes"].as_str(),
            ev[1]["t_s"].as_str()
        ),
        ("read", "4096", "0.002000000")
    );
}

#[test]
fn nextflow_trace_uses_nextflow_columns_and_formats() {
    let text = export_to_string("tests/data/pipeline.jsonl", "nextflow");
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split('\t').collect();
    for col in [
        "task_id",
        "name",
        "status",
        "exit",
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
    ] {
        assert!(head.contains(&col), "column {col}");
    }
    let rows: Vec<HashMap<&str, &str>> = lines
        .map(|l| head.iter().copied().zip(l.split('\t')).collect())
        .collect();
    let recs = records(&data("pipeline.jsonl"));
    let procs = of_kind(&recs, "process");
    assert_eq!(rows.len(), procs.len());
    let gzip = rows.iter().find(|r| r["name"] == "gzip -1").unwrap();
    let p = procs.iter().find(|p| p["argv"][0] == "gzip").unwrap();
    let wall_ms = p["wall_ns"].as_u64().unwrap() / 1_000_000;
    assert_eq!(
        gzip["realtime"],
        format!("{}ms", wall_ms),
        "under a second: ms"
    );
    let cpu = (p["cpu_user_ns"].as_u64().unwrap() + p["cpu_sys_ns"].as_u64().unwrap()) as f64;
    assert_eq!(
        gzip["%cpu"],
        format!("{:.1}%", cpu * 100.0 / p["wall_ns"].as_f64().unwrap())
    );
    assert_eq!(gzip["status"], "COMPLETED");
    assert_eq!(gzip["syscw"], p["syscw"].to_string());
    let killed = rows
        .iter()
        .find(|r| r["name"] == "sh -c 'kill -TERM $$'")
        .unwrap();
    assert_eq!((killed["status"], killed["exit"]), ("FAILED", "143"));
    let root_pid = recs[0]["pid"].to_string();
    let root = rows
        .iter()
        .find(|r| r["native_id"] == root_pid.as_str())
        .unwrap();
    assert!(
        root["realtime"].ends_with('s') && root["realtime"].contains('.'),
        "{}",
        root["realtime"]
    );
    assert!(
        root["submit"].len() == 23 && root["submit"].starts_with("2026-11-23 08:52:"),
        "{}",
        root["submit"]
    );
}

/// Checks the trace-event format: required fields by phase, and that complete
/// events on one track (pid, tid) are well nested.
fn validate_trace_events(doc: &Value) -> Vec<&Value> {
    let events = doc["traceEvents"].as_array().expect("traceEvents array");
    assert!(!events.is_empty());
    let mut spans: HashMap<(u64, u64), Vec<(f64, f64)>> = HashMap::new();
    for e in events {
        let ph = e["ph"].as_str().unwrap_or_else(|| panic!("ph: {e}"));
        assert!(e["name"].is_string(), "name: {e}");
        assert!(e["pid"].is_u64(), "pid: {e}");
        match ph {
            "X" => {
                let ts = e["ts"].as_f64().expect("X ts");
                let dur = e["dur"].as_f64().expect("X dur");
                assert!(dur >= 0.0 && ts >= 0.0, "{e}");
                let key = (
                    e["pid"].as_u64().unwrap(),
                    e["tid"].as_u64().expect("X tid"),
                );
                spans.entry(key).or_default().push((ts, ts + dur));
            }
            "i" => {
                assert!(e["ts"].is_number() && e["tid"].is_u64(), "{e}");
                assert!(
                    matches!(e["s"].as_str(), Some("t" | "p" | "g")),
                    "instant scope: {e}"
                );
            }
            "C" => {
                assert!(e["ts"].is_number(), "{e}");
                let args = e["args"].as_object().expect("C args");
                assert!(
                    !args.is_empty() && args.values().all(Value::is_number),
                    "{e}"
                );
            }
            "M" => {
                let name = e["name"].as_str().unwrap();
                match name {
                    "process_name" | "thread_name" => assert!(e["args"]["name"].is_string(), "{e}"),
                    "process_sort_index" => assert!(e["args"]["sort_index"].is_u64(), "{e}"),
                    "process_labels" => assert!(e["args"]["labels"].is_string(), "{e}"),
                    other => panic!("unexpected metadata {other}"),
                }
            }
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    for (track, mut s) in spans {
        s.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut open: Vec<f64> = Vec::new();
        for (start, end) in s {
            while open.last().is_some_and(|e| *e <= start) {
                open.pop();
            }
            if let Some(parent_end) = open.last() {
                assert!(
                    end <= *parent_end,
                    "spans overlap without nesting on track {track:?}"
                );
            }
            open.push(end);
        }
    }
    events.iter().collect()
}

#[test]
fn perfetto_output_is_valid_trace_event_json() {
    let recs = records(&data("pipeline.jsonl"));
    let doc: Value =
        serde_json::from_str(&export_to_string("tests/data/pipeline.jsonl", "perfetto")).unwrap();
    let events = validate_trace_events(&doc);
    let procs = of_kind(&recs, "process");
    // One lifetime span per process, at its start, named by its command.
    for p in &procs {
        let pid = p["pid"].as_u64().unwrap();
        let x: Vec<&&Value> = events
            .iter()
            .filter(|e| e["ph"] == "X" && e["pid"] == pid)
            .collect();
        assert_eq!(x.len(), 1, "pid {pid}");
        assert_eq!(
            x[0]["ts"].as_f64().unwrap(),
            p["start_boot_ns"].as_f64().unwrap() / 1000.0
        );
        assert!(
            (x[0]["dur"].as_f64().unwrap() - p["wall_ns"].as_f64().unwrap() / 1000.0).abs() < 1e-3
        );
        let exits = events
            .iter()
            .filter(|e| {
                e["ph"] == "i" && e["pid"] == pid && e["name"].as_str().unwrap().starts_with("exit")
            })
            .count();
        assert_eq!(exits, 1);
        let named = events
            .iter()
            .any(|e| e["ph"] == "M" && e["name"] == "process_name" && e["pid"] == pid);
        assert!(named, "track name for {pid}");
    }
    // Counters: CPU and RSS per process per sample, plus the tree's.
    let samples = of_kind(&recs, "sample");
    let per_proc: usize = samples
        .iter()
        .map(|s| s["procs"].as_array().unwrap().len())
        .sum();
    let counters = events.iter().filter(|e| e["ph"] == "C").count();
    assert_eq!(counters, 2 * per_proc + 2 * samples.len());
    // Children are ordered under their parent, one level deeper.
    let root = recs[0]["pid"].as_u64().unwrap();
    let sort = |pid: u64| {
        events
            .iter()
            .find(|e| e["name"] == "process_sort_index" && e["pid"] == pid)
            .unwrap()["args"]["sort_index"]
            .as_u64()
            .unwrap()
    };
    let name = |pid: u64| {
        events
            .iter()
            .find(|e| e["name"] == "process_name" && e["pid"] == pid)
            .unwrap()["args"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for p in procs.iter().filter(|p| p["ppid"] == root) {
        let pid = p["pid"].as_u64().unwrap();
        assert!(sort(pid) > sort(root));
        assert!(
            name(pid).starts_with("· ") && !name(pid).starts_with("· · "),
            "{}",
            name(pid)
        );
    }
}

/// Peak RSS (KiB) of a child run to completion, from wait4's rusage.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's Child cannot do
/// Runs the agent and returns its exit code and peak RSS (KiB). Measured by
/// /usr/bin/time, a small process: a child of this (large) test process would start
/// with this process's high-water mark, which exec carries into ru_maxrss.
fn run_measured(args: &[&str]) -> (i32, u64) {
    let dir = crate::helpers::scratch_dir("rss");
    let rss_file = dir.join("rss");
    let status = std::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(crate::helpers::agent_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("/usr/bin/time (scripts/setup-tests.sh installs it)");
    let text = std::fs::read_to_string(&rss_file).unwrap();
    // With a non-zero exit, time writes "Command exited with non-zero status N" first.
    let rss_kb = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("time output: {text:?}"));
    let _ = std::fs::remove_dir_all(&dir);
    (status.code().unwrap_or(-1), rss_kb)
}

#[test]
fn large_traces_stream_in_bounded_memory() {
    let dir = crate::helpers::scratch_dir("big");
    let big = dir.join("big.jsonl");
    let gen = std::process::Command::new("python3")
        .arg(crate::helpers::report::repo().join("scripts/make-big-trace.py"))
        .arg(data("depth.jsonl"))
        .arg(&big)
        .args(["--size-mb", "64"])
        .output()
        .expect("python3 runs scripts/make-big-trace.py");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let b = big.to_string_lossy();
    let csv = dir.join("csv");
    let c = csv.to_string_lossy();
    for args in [
        vec!["stats", &*b],
        vec!["stats", "--json", &*b],
        vec!["export", &*b, "-f", "csv", "-o", &*c],
        vec!["export", &*b, "-f", "nextflow", "-o", "/dev/null"],
        vec!["export", &*b, "-f", "perfetto", "-o", "/dev/null"],
        vec!["export", &*b, "-f", "html", "-o", "/dev/null"],
    ] {
        let (code, rss_kb) = run_measured(&args);
        assert_eq!(code, 0, "{args:?}");
        // 64 MiB of trace (15k processes, 120k file records): a reader that kept
        // the records would need well over 100 MiB; the streaming one stays near
        // its baseline (under 10 MiB when measured; Perfetto keeps per-pid tracks).
        assert!(rss_kb < 32 * 1024, "{args:?}: peak RSS {rss_kb} KiB");
    }
}
