//! `denet-agent run` with eBPF, checked against ground truth. Needs root; in CI these
//! must run (a missing capability fails them), elsewhere they skip with a message.

use std::collections::HashSet;

use crate::helpers::{ebpf_ready, rel_diff, run_agent, scratch_dir, u, Trace};
use serde_json::Value;

use crate::helpers::WORKLOAD;

fn assert_clean(t: &Trace) {
    let h = t.header();
    assert_eq!(h["ebpf"], true, "eBPF must be on: {}", t.stderr);
    let s = t.summary();
    assert_eq!(s["lost_events"], 0, "lost events: {s}");
    assert_eq!(s["incomplete_processes"], 0, "{s}");
    assert_eq!(s["ebpf_read_errors"], 0, "{s}");
    assert_eq!(s["ebpf_track_errors"], 0, "{s}");
    // One record per process, and every one exact.
    let procs = t.processes();
    let pids: HashSet<u64> = procs.iter().map(|p| u(&p["pid"])).collect();
    assert_eq!(pids.len(), procs.len(), "duplicate process records");
    assert_eq!(u(&s["process_count"]), procs.len() as u64);
    for p in &procs {
        assert_eq!(p["source"], "ebpf", "{p}");
    }
}

/// Every record descends from the command: its parent is the command, another
/// record, or the agent (orphans adopted by the subreaper).
fn assert_tree(t: &Trace) {
    let agent = u(&t.header()["agent_pid"]);
    let pids: HashSet<u64> = t.processes().iter().map(|p| u(&p["pid"])).collect();
    for p in t.processes() {
        let ppid = u(&p["ppid"]);
        assert!(
            pids.contains(&ppid) || ppid == agent,
            "process outside the tree: {p}"
        );
    }
}

#[test]
fn shell_loop_of_1000_children_all_recorded() {
    if !ebpf_ready("shell_loop_of_1000_children_all_recorded") {
        return;
    }
    let t = run_agent(
        &[],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done",
        ],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    assert_tree(&t);
    let trues = t.processes_named("/bin/true");
    assert_eq!(trues.len(), 1000, "records of /bin/true");
    let root = t.root_pid();
    for p in &trues {
        assert_eq!(u(&p["ppid"]), root);
        assert_eq!(p["exit_code"], 0);
        assert_eq!(p["exe"], "/bin/true");
        assert_eq!(u(&p["execs"]), 1);
        assert!(u(&p["end_boot_ns"]) >= u(&p["start_boot_ns"]));
    }
    assert_eq!(t.processes().len(), 1001);
    assert_eq!(t.root()["argv"][0], "sh");
}

#[test]
fn parallel_fork_storm_all_recorded() {
    if !ebpf_ready("parallel_fork_storm_all_recorded") {
        return;
    }
    // 4 workers x 500 children, forked as fast as possible without exec.
    let t = run_agent(&[], &[WORKLOAD, "forkstorm", "4", "500"]);
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    assert_tree(&t);
    assert_eq!(t.processes().len(), 1 + 4 + 4 * 500);
    // And with exec: 4 shells starting 500 /bin/true each in the background.
    let script = "for w in 1 2 3 4; do (i=0; while [ $i -lt 500 ]; do /bin/true & i=$((i+1)); done; wait) & done; wait";
    let t = run_agent(&[], &["sh", "-c", script]);
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    assert_tree(&t);
    assert_eq!(t.processes_named("/bin/true").len(), 2000);
}

#[test]
fn exit_codes_and_signals_of_grandchildren() {
    if !ebpf_ready("exit_codes_and_signals_of_grandchildren") {
        return;
    }
    // sh (command) -> sh (child) -> workload (grandchildren).
    let inner = format!(
        "for c in 0 1 2 3 4 5; do {w} exit $c; done; {w} signal 9; {w} signal 11; exit 4",
        w = WORKLOAD
    );
    let t = run_agent(&[], &["sh", "-c", &format!("sh -c '{inner}'; exit 7")]);
    assert_eq!(
        t.exit_code(),
        7,
        "agent exit status = command's: {}",
        t.stderr
    );
    assert_clean(&t);
    assert_tree(&t);
    let s = t.summary();
    assert_eq!(s["exit_code"], 7);
    assert_eq!(s["signal"], Value::Null);
    let work = t.processes_named("workload");
    assert_eq!(work.len(), 8);
    let mut codes: Vec<i64> = work
        .iter()
        .filter_map(|p| p["exit_code"].as_i64())
        .collect();
    codes.sort();
    assert_eq!(codes, vec![0, 1, 2, 3, 4, 5]);
    let mut signals: Vec<i64> = work.iter().filter_map(|p| p["signal"].as_i64()).collect();
    signals.sort();
    assert_eq!(signals, vec![9, 11]);
    for p in &work {
        // Exactly one of exit_code and signal is set.
        assert!(p["exit_code"].is_null() != p["signal"].is_null(), "{p}");
    }
    // The middle shell exited 4, and is the grandchildren's parent.
    let middle = t
        .processes_named("sh")
        .into_iter()
        .find(|p| u(&p["pid"]) != t.root_pid())
        .expect("middle shell");
    assert_eq!(middle["exit_code"], 4);
    for p in &work {
        assert_eq!(p["ppid"], middle["pid"]);
    }
}

#[test]
fn agent_exit_status_is_128_plus_signal() {
    if !ebpf_ready("agent_exit_status_is_128_plus_signal") {
        return;
    }
    let t = run_agent(&[], &[WORKLOAD, "signal", "9"]);
    assert_eq!(t.exit_code(), 128 + 9);
    assert_eq!(t.summary()["signal"], 9);
    assert_eq!(t.summary()["exit_code"], Value::Null);
    assert_eq!(t.root()["signal"], 9);
}

fn truth(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("truth file")).expect("truth json")
}

#[test]
fn cpu_time_matches_wait4_rusage() {
    if !ebpf_ready("cpu_time_matches_wait4_rusage") {
        return;
    }
    let dir = scratch_dir("cpu");
    let truth_path = dir.join("truth.json");
    let tp = truth_path.to_str().unwrap();
    let t = run_agent(
        &[],
        &[WORKLOAD, "rusage-child", tp, "--", WORKLOAD, "burn", "1000"],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    crate::helpers::assert_burner_cpu_matches_rusage(&t, &truth_path);
}

#[test]
fn peak_rss_of_a_256_mib_child() {
    if !ebpf_ready("peak_rss_of_a_256_mib_child") {
        return;
    }
    let dir = scratch_dir("rss");
    let truth_path = dir.join("truth.json");
    let tp = truth_path.to_str().unwrap();
    let t = run_agent(
        &[],
        &["sh", "-c", &format!("{WORKLOAD} alloc 256 50 {tp}; true")],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    let alloc = t.processes_named("workload");
    assert_eq!(alloc.len(), 1);
    let peak = u(&alloc[0]["peak_rss_kb"]) as f64;
    // Ground truth 1: what was touched. Ground truth 2: the child's own VmHWM.
    let touched_kb = 256.0 * 1024.0;
    assert!(
        rel_diff(peak, touched_kb) < 0.05,
        "peak {peak} KiB vs 256 MiB"
    );
    let hwm = u(&truth(&truth_path)["vm_hwm_kb"]) as f64;
    assert!(
        rel_diff(peak, hwm) < 0.05,
        "peak {peak} KiB vs VmHWM {hwm} KiB"
    );
    // The shell did not touch it.
    assert!(u(&t.root()["peak_rss_kb"]) < 16 * 1024);
}

#[test]
fn small_child_of_big_parent_has_its_own_peak() {
    if !ebpf_ready("small_child_of_big_parent_has_its_own_peak") {
        return;
    }
    let t = run_agent(
        &[],
        &[WORKLOAD, "alloc-then-exec", "256", "--", "/bin/true"],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    let parent = u(&t.root()["peak_rss_kb"]);
    assert!(parent > 250 * 1024, "parent peak {parent} KiB");
    let child = t.processes_named("/bin/true");
    assert_eq!(child.len(), 1);
    let child_peak = u(&child[0]["peak_rss_kb"]);
    assert!(
        child_peak < 16 * 1024,
        "exec'd child reports {child_peak} KiB"
    );
}

#[test]
fn wchar_equals_bytes_written() {
    if !ebpf_ready("wchar_equals_bytes_written") {
        return;
    }
    let dir = scratch_dir("wchar");
    let file = dir.join("out.bin");
    let n = 1_234_567u64;
    let t = run_agent(
        &[],
        &[WORKLOAD, "write", &n.to_string(), file.to_str().unwrap()],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), n);
    // The Rust workload writes nothing else (no loader slack on the write side).
    assert_eq!(u(&t.root()["wchar"]), n);
    assert_eq!(u(&t.root()["syscw"]), n.div_ceil(64 * 1024));
}

#[test]
fn unrelated_processes_leave_no_records() {
    if !ebpf_ready("unrelated_processes_leave_no_records") {
        return;
    }
    let marker = "denet-unrelated-marker";
    let mut bg = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("while :; do /bin/echo {marker} >/dev/null; done"),
        ])
        .spawn()
        .expect("background load");
    let t = run_agent(&[], &["sh", "-c", "sleep 0.3; /bin/true"]);
    let _ = bg.kill();
    let _ = bg.wait();
    assert_eq!(t.exit_code(), 0);
    assert_clean(&t);
    assert_tree(&t);
    assert_eq!(t.processes().len(), 3, "sh, sleep, true only");
    for p in t.processes() {
        assert!(
            !p.to_string().contains(marker),
            "unrelated process recorded: {p}"
        );
    }
}

fn alive_with_marker(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmd).contains(marker) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn timeout_kills_whole_tree_including_double_forked_orphan() {
    if !ebpf_ready("timeout_kills_whole_tree_including_double_forked_orphan") {
        return;
    }
    let marker = "737.25";
    // The orphan ignores SIGTERM, so only the SIGKILL escalation stops it.
    let script = format!("(sh -c \"trap '' TERM; sleep {marker}; sleep 1\" &) ; sleep {marker}");
    let t = run_agent(
        &["--timeout", "1", "--kill-grace", "0.5"],
        &["sh", "-c", &script],
    );
    assert_eq!(t.summary()["timed_out"], true);
    assert_eq!(
        t.exit_code(),
        128 + 15,
        "command killed by SIGTERM: {}",
        t.stderr
    );
    assert_clean(&t);
    assert_tree(&t);
    let left = alive_with_marker(marker);
    assert!(left.is_empty(), "survivors: {left:?}");
    // The orphan was re-parented to the agent and recorded.
    let agent = u(&t.header()["agent_pid"]);
    let sleeps = t.processes_named("sleep");
    assert!(sleeps.len() >= 2, "{sleeps:?}");
    assert!(
        t.processes()
            .iter()
            .any(|p| u(&p["ppid"]) != agent && p["signal"] == 9),
        "something died of SIGKILL"
    );
}

#[test]
fn exec_event_has_argv_exe_and_truncation_flag() {
    if !ebpf_ready("exec_event_has_argv_exe_and_truncation_flag") {
        return;
    }
    let long = "x".repeat(5000);
    let t = run_agent(
        &[],
        &[
            "sh",
            "-c",
            &format!("/bin/echo a 'b c' {long} >/dev/null; /bin/true 1 '' 3"),
        ],
    );
    assert_eq!(t.exit_code(), 0);
    assert_clean(&t);
    let echo = &t.processes_named("/bin/echo")[0];
    assert_eq!(echo["argv_truncated"], true);
    assert_eq!(echo["argv"][1], "a");
    assert_eq!(echo["argv"][2], "b c");
    assert_eq!(echo["exe"], "/bin/echo");
    let tr = &t.processes_named("/bin/true")[0];
    assert_eq!(tr["argv"], serde_json::json!(["/bin/true", "1", "", "3"]));
    assert_eq!(tr["argv_truncated"], false);
}

#[test]
fn hold_time_and_header_fields() {
    if !ebpf_ready("hold_time_and_header_fields") {
        return;
    }
    let t = run_agent(&[], &["/bin/true"]);
    let h = t.header();
    assert_eq!(h["schema_version"], 3);
    assert!(u(&h["hold_ns"]) > 0);
    assert!(u(&h["clock"]["unix_ns"]) > 1_600_000_000_000_000_000);
    // The command's own exec is seen (it was tracked before it was released).
    assert_eq!(u(&t.root()["execs"]), 1);
    assert_eq!(t.root()["exe"], "/bin/true");
    // Start of the command is not before the agent forked it, nor after its exit.
    let s = t.summary();
    assert!(u(&t.root()["start_boot_ns"]) >= u(&s["start_boot_ns"]));
    assert!(u(&t.root()["end_boot_ns"]) <= u(&s["end_boot_ns"]));
}

#[test]
fn threads_are_not_processes_but_count() {
    if !ebpf_ready("threads_are_not_processes_but_count") {
        return;
    }
    // 4 threads burn 200 ms of CPU each, then exit.
    let t = run_agent(&[], &[WORKLOAD, "threads", "4", "200"]);
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_clean(&t);
    assert_eq!(t.processes().len(), 1);
    let p = t.root();
    assert!(u(&p["threads"]) >= 5, "{p}");
    let cpu = u(&p["cpu_user_ns"]) + u(&p["cpu_sys_ns"]);
    // Each thread measured its own CPU time, so the process has at least 0.8 s.
    assert!(cpu >= 800_000_000, "4 threads x 0.2 s, got {cpu} ns");
    assert!(cpu < 1_000_000_000, "4 threads x 0.2 s, got {cpu} ns");
    assert!(u(&t.summary()["threads_created"]) >= 4);
}
