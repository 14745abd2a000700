//! `denet-agent stats`: numbers against the trace itself, killed runs, and bad input
//! (clear message with the line number, non-zero exit, never a panic).

use crate::helpers::report::{agent, data, of_kind, records, stats_json, stderr, stdout};
use serde_json::Value;

fn sum(procs: &[&Value], field: &str) -> u64 {
    procs.iter().filter_map(|p| p[field].as_u64()).sum()
}

fn tree_nodes(nodes: &Value, out: &mut Vec<Value>) {
    for n in nodes.as_array().expect("tree is an array") {
        out.push(n.clone());
        tree_nodes(&n["children"], out);
    }
}

#[test]
fn stats_json_matches_the_trace() {
    let path = data("pipeline.jsonl");
    let recs = records(&path);
    let procs = of_kind(&recs, "process");
    let summary = of_kind(&recs, "summary")[0];
    let s = stats_json(&path);
    let t = &s["totals"];
    assert_eq!(t["from_summary"], true);
    assert_eq!(t["processes"], procs.len() as u64);
    assert_eq!(t["cpu_user_ns"], summary["cpu_user_ns"]);
    assert_eq!(t["wall_ns"], summary["wall_ns"]);
    assert_eq!(t["rchar"], sum(&procs, "rchar"));
    assert_eq!(t["write_bytes"], sum(&procs, "write_bytes"));
    let killed = procs.iter().filter(|p| !p["signal"].is_null()).count() as u64;
    assert_eq!(t["killed"], killed);
    assert_eq!(t["samples"], of_kind(&recs, "sample").len() as u64);

    // Every process is in exactly one tree line; the command is the root.
    let mut nodes = Vec::new();
    tree_nodes(&s["tree"], &mut nodes);
    let real: Vec<&Value> = nodes.iter().filter(|n| n["placeholder"] == false).collect();
    assert_eq!(
        real.iter()
            .map(|n| n["count"].as_u64().unwrap())
            .sum::<u64>(),
        procs.len() as u64
    );
    let root = &s["tree"][0];
    assert_eq!(root["pid"], recs[0]["pid"]);
    assert_eq!(root["label"], "sh tests/data/pipeline.sh");
    // The 20 runs of /bin/true are one line with their summed CPU.
    let trues: Vec<&&Value> = procs
        .iter()
        .filter(|p| p["argv"][0] == "/bin/true")
        .collect();
    let line = real
        .iter()
        .find(|n| n["label"] == "true")
        .expect("true line");
    assert_eq!(line["count"], trues.len() as u64);
    let cpu: u64 = trues
        .iter()
        .map(|p| p["cpu_user_ns"].as_u64().unwrap() + p["cpu_sys_ns"].as_u64().unwrap())
        .sum();
    assert_eq!(
        line["cpu_user_ns"].as_u64().unwrap() + line["cpu_sys_ns"].as_u64().unwrap(),
        cpu
    );
    // The orphan (its subshell exited first) is kept, under a placeholder naming it.
    let orphan = nodes
        .iter()
        .find(|n| n["label"] == "sleep 0.2")
        .expect("orphan sleep");
    assert_eq!(orphan["count"], 1);
    assert!(nodes.iter().any(|n| n["placeholder"] == true
        && n["label"]
            .as_str()
            .unwrap()
            .contains("outlived their parent")));

    // Top lists are sorted and agree with the records.
    let top_cpu = s["top"]["cpu"].as_array().unwrap();
    let best = procs
        .iter()
        .max_by_key(|p| p["cpu_user_ns"].as_u64().unwrap() + p["cpu_sys_ns"].as_u64().unwrap())
        .unwrap();
    assert_eq!(top_cpu[0]["pid"], best["pid"]);
    let top_rss = s["top"]["peak_rss"].as_array().unwrap();
    assert_eq!(
        top_rss[0]["peak_rss_kb"],
        summary["max_process_peak_rss_kb"]
    );
}

#[test]
fn stats_text_shows_tree_exit_statuses_and_totals() {
    let o = agent(&["stats", "tests/data/pipeline.jsonl"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "Run      sh tests/data/pipeline.sh",
        "exit 0, wall 1.059 s",
        "35 processes (0 failed, 1 killed by a signal)",
        "├─ sort -n",
        "├─ true ×20",
        "SIGTERM",
        "└─ sleep 0.2",
        "Top processes by peak RSS",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        stderr(&o).is_empty(),
        "no warnings expected: {}",
        stderr(&o)
    );
}

#[test]
fn depth_fields_are_shown_when_present() {
    let path = data("depth.jsonl");
    let recs = records(&path);
    let procs = of_kind(&recs, "process");
    let s = stats_json(&path);
    let t = &s["totals"];
    assert_eq!(t["oncpu_ns"], sum(&procs, "oncpu_ns"));
    assert_eq!(t["io_wait_ns"], sum(&procs, "io_wait_ns"));
    assert_eq!(t["blk_read_bytes"], sum(&procs, "blk_read_bytes"));
    assert_eq!(t["file_records"], of_kind(&recs, "file").len() as u64);
    let writes: u64 = procs
        .iter()
        .filter(|p| p.get("syscalls").is_some())
        .map(|p| crate::helpers::syscall(p, "write"))
        .sum();
    let w = s["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "write")
        .unwrap();
    assert_eq!(w["count"], writes);
    let gz: u64 = of_kind(&recs, "file")
        .iter()
        .filter(|f| f["path"] == "/tmp/denet-pipeline.gz")
        .map(|f| f["write_bytes"].as_u64().unwrap())
        .sum();
    assert!(gz > 0);
    let row = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/tmp/denet-pipeline.gz")
        .unwrap();
    assert_eq!(row["write_bytes"], gz);
    let o = agent(&["stats", "tests/data/depth.jsonl"]);
    let out = stdout(&o);
    for want in [
        "Time     summed over processes: on CPU",
        "Sched    ",
        "Files (most bytes first)",
        "Syscalls",
    ] {
        assert!(out.contains(want), "missing {want:?}");
    }
    assert!(
        stderr(&o).is_empty(),
        "the depth fields are known: {}",
        stderr(&o)
    );
    // And absent from a trace without them.
    let plain = stdout(&agent(&["stats", "tests/data/pipeline.jsonl"]));
    assert!(!plain.contains("Syscalls") && !plain.contains("Time     "));
}

/// Writes `text` to a scratch file and runs `stats` (text and JSON) on it.
fn stats_on(name: &str, text: &[u8]) -> (std::process::Output, std::process::Output) {
    let dir = crate::helpers::scratch_dir(name);
    let p = dir.join("trace.jsonl");
    std::fs::write(&p, text).unwrap();
    let ps = p.to_string_lossy().into_owned();
    (agent(&["stats", &ps]), agent(&["stats", "--json", &ps]))
}

fn pipeline_text() -> String {
    std::fs::read_to_string(data("pipeline.jsonl")).unwrap()
}

fn assert_clean_failure(o: &std::process::Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit 2 expected; stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

#[test]
fn killed_run_without_summary_reads() {
    // A killed agent: no summary, the last line cut in the middle.
    let text = pipeline_text();
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines.len() - 8;
    let mut cut = lines[..keep].join("\n");
    cut.push('\n');
    cut.push_str(&lines[keep][..lines[keep].len() / 2]);
    let (o, j) = stats_on("killed", cut.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("line {}: incomplete last line", keep + 1)),
        "{err}"
    );
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(stdout(&o).contains("the trace has no summary"));
    let s: Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(s["trace"]["complete"], false);
    assert_eq!(s["totals"]["from_summary"], false);
    let recs = crate::helpers::parse_jsonl(&lines[..keep].join("\n"));
    assert_eq!(
        s["totals"]["processes"],
        of_kind(&recs, "process").len() as u64
    );
    // The command itself has no record yet: shown as a placeholder from the header.
    assert!(
        s["tree"][0]["label"]
            .as_str()
            .unwrap()
            .contains("no exit record"),
        "{}",
        s["tree"][0]
    );
}

#[test]
fn unknown_kinds_and_fields_warn_once_each() {
    let mut text = String::new();
    for (i, line) in pipeline_text().lines().enumerate() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        if v["kind"] == "process" {
            v["gpu_ns"] = 5.into();
        }
        if v["kind"] == "sample" {
            if let Some(p) = v["procs"].as_array_mut().and_then(|a| a.first_mut()) {
                p["gpu_percent"] = 1.into();
            }
        }
        text.push_str(&v.to_string());
        text.push('\n');
        if i > 0 && i % 5 == 0 {
            text.push_str("{\"kind\":\"gpu_sample\",\"ts_boot_ns\":1}\n");
        }
    }
    let (o, j) = stats_on("unknown", text.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(
        err.matches("unknown record kind \"gpu_sample\"").count(),
        1,
        "{err}"
    );
    assert_eq!(
        err.matches("unknown field `gpu_ns` in process records")
            .count(),
        1,
        "{err}"
    );
    assert_eq!(
        err.matches("unknown field `procs[].gpu_percent` in sample records")
            .count(),
        1,
        "{err}"
    );
    assert_eq!(err.lines().count(), 3, "{err}");
    // The numbers are unaffected.
    let s: Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(s["totals"]["processes"], 35);
}

#[test]
fn newer_schema_is_refused_with_a_clear_message() {
    let text = pipeline_text().replacen("\"schema_version\":1", "\"schema_version\":4", 1);
    let (o, _) = stats_on("schema", text.as_bytes());
    assert_clean_failure(
        &o,
        "line 1: schema_version 4 is newer than this denet-agent reads (up to 3)",
    );
}

#[test]
fn not_a_trace_fails_cleanly_with_the_line() {
    let (o, _) = stats_on("csv", b"pid,ppid,cmd\n1,0,init\n");
    assert_clean_failure(&o, "line 1: not JSON");
    let (o, _) = stats_on(
        "binary",
        &[0x7f, b'E', b'L', b'F', 0, 1, 2, 255, 254, b'\n', 3],
    );
    assert_clean_failure(&o, "line 1: not JSON");
    let (o, _) = stats_on("empty", b"");
    assert_clean_failure(&o, "the file is empty");
    let (o, _) = stats_on("noheader", b"{\"kind\":\"sample\",\"ts_boot_ns\":1}\n");
    assert_clean_failure(&o, "line 1: the first record must be the header");
    // Garbage in the middle (not the last line): an error naming that line.
    let mut text = pipeline_text();
    let at = text.match_indices('\n').nth(4).unwrap().0;
    text.insert_str(at + 1, "{\"kind\":\"process\",\"pid\":1,oops}\n");
    let (o, _) = stats_on("middle", text.as_bytes());
    assert_clean_failure(&o, "line 6: not JSON");
    // A known field with the wrong type.
    let text = pipeline_text().replacen("\"cpu_user_ns\":", "\"cpu_user_ns\":\"many\",\"x\":", 1);
    let (o, _) = stats_on("type", text.as_bytes());
    assert_clean_failure(
        &o,
        "line 5: bad process record: invalid type: string \"many\", expected u64",
    );
    // Two traces in one file.
    let twice = format!("{}{}", pipeline_text(), pipeline_text());
    let (o, _) = stats_on("twice", twice.as_bytes());
    assert_clean_failure(&o, "a second header");
    // A missing file.
    let o = agent(&["stats", "/nonexistent/trace.jsonl"]);
    assert_clean_failure(&o, "/nonexistent/trace.jsonl: cannot read the trace");
}

#[test]
fn run_writes_the_html_report() {
    let dir = crate::helpers::scratch_dir("run-report");
    let trace = dir.join("t.jsonl");
    let html = dir.join("r.html");
    let o = agent(&[
        "run",
        "--no-ebpf",
        "-o",
        &trace.to_string_lossy(),
        "--report",
        &html.to_string_lossy(),
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "the command's status: {}",
        stderr(&o)
    );
    let page = std::fs::read_to_string(&html).expect("report written");
    assert!(page.contains("<svg id=\"timeline\""));
    assert!(
        page.contains("sh -c &#39;exit 3&#39;"),
        "the command is in the report"
    );
    // The report reads the trace back: stdout as the trace is refused up front.
    let o = agent(&[
        "run",
        "--no-ebpf",
        "-o",
        "-",
        "--report",
        "x.html",
        "--",
        "true",
    ]);
    assert_clean_failure(&o, "--report reads the trace back");
}

/// A trace from the agent as built now reads without a single warning: every field
/// the writer emits (core and depth) is known to the reader, so a new field shows up
/// here until the reader learns it.
#[test]
fn fresh_ebpf_trace_reads_without_warnings() {
    if !crate::helpers::ebpf_ready("fresh_ebpf_trace_reads_without_warnings") {
        return;
    }
    let dir = crate::helpers::scratch_dir("fresh");
    let trace = dir.join("t.jsonl");
    let t = trace.to_string_lossy();
    let script = format!(
        "head -c 3000000 /dev/urandom | gzip -1 > /dev/null; echo x > {0}/out.txt; cat {0}/out.txt; rm {0}/out.txt; sleep 0.05",
        dir.display()
    );
    let o = agent(&[
        "run",
        "--require-ebpf",
        "--files",
        "--syscalls",
        "--interval-ms",
        "10",
        "-o",
        &t,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&trace);
    assert!(!of_kind(&recs, "file").is_empty(), "the run opened files");
    for args in [
        vec!["stats", &*t],
        vec!["stats", "--json", &*t],
        vec!["export", &*t, "-f", "nextflow", "-o", "/dev/null"],
        vec!["export", &*t, "-f", "perfetto", "-o", "/dev/null"],
    ] {
        let o = agent(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}: warnings on a fresh trace");
    }
    let s = stats_json(&trace);
    assert_eq!(
        s["totals"]["processes"],
        of_kind(&recs, "process").len() as u64
    );
    assert!(s["totals"]["oncpu_ns"].as_u64().is_some_and(|v| v > 0));
}
