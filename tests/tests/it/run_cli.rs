//! `denet-agent run` behaviour that does not depend on eBPF: start failures, the
//! /proc fallback, stream passthrough, signal forwarding, bad input.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::helpers::{agent_bin, ebpf_ready, parse_jsonl, run_agent, scratch_dir, u};
use serde_json::Value;

use crate::helpers::WORKLOAD;

#[test]
fn command_not_found_exits_127_with_header_and_summary() {
    let t = run_agent(&[], &["denet-no-such-command-xyz"]);
    assert_eq!(t.exit_code(), 127);
    assert!(t.stderr.contains("command not found"), "{}", t.stderr);
    assert_eq!(t.records.len(), 2);
    assert_eq!(t.header()["pid"], Value::Null);
    let s = t.summary();
    assert_eq!(s["exit_code"], 127);
    assert!(s["error"].as_str().unwrap().contains("command not found"));
}

#[test]
fn command_not_executable_exits_126() {
    let dir = scratch_dir("noexec");
    let script = dir.join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let t = run_agent(&[], &[script.to_str().unwrap()]);
    assert_eq!(t.exit_code(), 126, "{}", t.stderr);
    assert!(t.summary()["error"]
        .as_str()
        .unwrap()
        .contains("cannot execute"));
    let t = run_agent(&[], &[dir.to_str().unwrap()]);
    assert_eq!(t.exit_code(), 126);
}

#[test]
fn no_ebpf_falls_back_to_proc_sampling() {
    let t = run_agent(
        &["--no-ebpf", "--interval-ms", "20"],
        &["sh", "-c", &format!("{WORKLOAD} burn 300; exit 3")],
    );
    assert_eq!(t.exit_code(), 3);
    assert_eq!(t.header()["ebpf"], false);
    assert!(t.header()["ebpf_unavailable_reason"]
        .as_str()
        .unwrap()
        .contains("--no-ebpf"));
    assert!(!t.of_kind("sample").is_empty());
    let root = t.root();
    assert_eq!(root["source"], "proc");
    assert_eq!(root["exit_code"], 3);
    // The burner lived long enough to be sampled several times.
    let burner = t.processes_named("workload");
    assert_eq!(burner.len(), 1, "{:?}", t.processes());
    assert!(u(&burner[0]["cpu_user_ns"]) + u(&burner[0]["cpu_sys_ns"]) > 100_000_000);
    assert_eq!(t.summary()["exit_code"], 3);
}

#[test]
fn samples_ramp_and_carry_tree_aggregates() {
    let t = run_agent(
        &["--interval-ms", "20", "--max-interval-ms", "80"],
        &[WORKLOAD, "alloc", "64", "600"],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let samples = t.of_kind("sample");
    assert!(samples.len() >= 5, "{} samples", samples.len());
    let max_rss = samples.iter().map(|s| u(&s["rss_kb"])).max().unwrap();
    assert!(max_rss > 60 * 1024, "sampled tree RSS {max_rss} KiB");
    assert_eq!(u(&t.summary()["peak_tree_rss_kb"]), max_rss);
    for s in &samples {
        assert!(u(&s["process_count"]) <= 1);
        let procs = s["procs"].as_array().unwrap();
        assert_eq!(procs.len() as u64, u(&s["process_count"]));
    }
    let intervals: Vec<f64> = samples
        .iter()
        .map(|s| s["window_ms"].as_f64().unwrap())
        .collect();
    assert!(
        intervals.last().unwrap() > &50.0,
        "interval ramps up: {intervals:?}"
    );
}

#[test]
fn stdout_passes_through_or_is_redirected() {
    let dir = scratch_dir("streams");
    let trace = dir.join("t.jsonl");
    let out = Command::new(agent_bin())
        .args(["run", "-o"])
        .arg(&trace)
        .args(["--", "sh", "-c", "echo to-stdout; echo to-stderr >&2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr\n"));
    let (o, e) = (dir.join("o.txt"), dir.join("e.txt"));
    let out = Command::new(agent_bin())
        .args(["run", "-o"])
        .arg(&trace)
        .arg("--stdout")
        .arg(&o)
        .arg("--stderr")
        .arg(&e)
        .args(["--", "sh", "-c", "echo to-stdout; echo to-stderr >&2"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_to_string(&o).unwrap(), "to-stdout\n");
    assert_eq!(std::fs::read_to_string(&e).unwrap(), "to-stderr\n");
    // stdin passes through too.
    let mut child = Command::new(agent_bin())
        .args(["run", "-o"])
        .arg(&trace)
        .args(["--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped input\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped input\n");
}

#[test]
fn sigterm_to_agent_is_forwarded_to_the_command() {
    let dir = scratch_dir("sigterm");
    let trace = dir.join("t.jsonl");
    let mut child = Command::new(agent_bin())
        .args(["run", "-o"])
        .arg(&trace)
        .args(["--", "sleep", "30"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the header is out: the command is running.
    for _ in 0..100 {
        if std::fs::read_to_string(&trace).is_ok_and(|t| t.contains("header")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    let records = parse_jsonl(&std::fs::read_to_string(&trace).unwrap());
    let summary = records.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(summary["signal"], 15);
    assert_eq!(summary["timed_out"], false);
}

#[test]
fn bad_arguments_are_rejected_clearly() {
    let run = |args: &[&str]| {
        Command::new(agent_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CMD"));
    let out = run(&["run", "--timeout=-1", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));
    let out = run(&["run", "--ringbuf-mib", "3", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = run(&["run", "-o", "/nonexistent-dir/x.jsonl", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write trace"));
}

#[test]
fn without_root_falls_back_or_fails_when_required() {
    if !ebpf_ready("without_root_falls_back_or_fails_when_required") {
        return;
    }
    // Drop to nobody with setpriv (util-linux) to check the non-root paths for real.
    let dir = scratch_dir("nonroot");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let trace = dir.join("t.jsonl");
    // A copy nobody can reach, wherever the checkout lives (e.g. under /root).
    let agent = dir.join("denet-agent");
    std::fs::copy(agent_bin(), &agent).unwrap();
    let as_nobody = |extra: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&agent)
            .arg("run")
            .args(extra)
            .arg("-o")
            .arg(&trace)
            .args(["--", "sh", "-c", "exit 5"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = as_nobody(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("falling back to /proc"), "{stderr}");
    let records = parse_jsonl(&std::fs::read_to_string(&trace).unwrap());
    assert_eq!(records[0]["ebpf"], false);
    assert!(records[0]["ebpf_unavailable_reason"]
        .as_str()
        .unwrap()
        .contains("root"));
    let out = as_nobody(&["--require-ebpf"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--require-ebpf"));
}
