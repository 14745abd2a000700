//! Where the time went, block I/O, files, network and syscalls, against
//! ground truth. Needs root; in CI these must run, elsewhere they skip with a message.
//! The tests of this file run one at a time (`exclusive`): they measure scheduler
//! times, which other tests on the same 2 CPUs would distort.

use crate::helpers::{ebpf_ready, exclusive, rel_diff, run_agent, scratch_dir, syscall, u, Trace};
use serde_json::Value;

use crate::helpers::WORKLOAD;

fn clean(t: &Trace) {
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let s = t.summary();
    assert_eq!(t.header()["ebpf"], true);
    assert_eq!(s["lost_events"], 0, "{s}");
    assert_eq!(s["ebpf_stats_errors"], 0, "{s}");
}

fn named<'a>(t: &'a Trace, name: &str) -> Vec<&'a Value> {
    t.processes_named(name)
}

fn files_of(t: &Trace, pid: u64) -> Vec<&Value> {
    t.of_kind("file")
        .into_iter()
        .filter(|f| f["pid"] == pid)
        .collect()
}

#[test]
fn sleeping_child_shows_sleep_not_cpu() {
    if !ebpf_ready("sleeping_child_shows_sleep_not_cpu") {
        return;
    }
    let _serial = exclusive();
    let t = run_agent(&[], &["sh", "-c", "sleep 0.5"]);
    clean(&t);
    let p = named(&t, "sleep");
    assert_eq!(p.len(), 1);
    let sleep = u(&p[0]["sleep_ns"]) as f64;
    // Tolerance: 5% of 500 ms.
    assert!(rel_diff(sleep, 5e8) < 0.05, "sleep_ns {sleep}");
    let oncpu = u(&p[0]["oncpu_ns"]);
    assert!(oncpu < 20_000_000, "oncpu_ns {oncpu}");
    // The accounting covers the process's life: the states add up to its wall time
    // (minus the slice between fork and its first switch, and the exit tail).
    let states = ["oncpu_ns", "cpu_wait_ns", "io_wait_ns", "sleep_ns"]
        .iter()
        .map(|k| u(&p[0][k]))
        .sum::<u64>() as f64;
    let wall = u(&p[0]["wall_ns"]) as f64;
    assert!(
        rel_diff(states, wall) < 0.05,
        "states {states} vs wall {wall}"
    );
}

#[test]
fn two_burners_on_one_cpu_wait_as_long_as_they_run() {
    if !ebpf_ready("two_burners_on_one_cpu_wait_as_long_as_they_run") {
        return;
    }
    let _serial = exclusive();
    let cmd =
        format!("taskset -c 1 {WORKLOAD} burn 1000 & taskset -c 1 {WORKLOAD} burn 1000 & wait");
    let t = run_agent(&[], &["sh", "-c", &cmd]);
    clean(&t);
    let burners = named(&t, "workload");
    assert_eq!(burners.len(), 2, "taskset execs the workload in place");
    for b in burners {
        let on = u(&b["oncpu_ns"]) as f64;
        let wait = u(&b["cpu_wait_ns"]) as f64;
        assert!(on > 0.9e9, "oncpu {on}");
        // Tolerance: 15%.
        assert!(rel_diff(wait, on) < 0.15, "cpu_wait {wait} vs oncpu {on}");
        // The run-queue histogram counts every wait.
        let hist: u64 = b["runq_delay_hist_log2_us"]
            .as_array()
            .unwrap()
            .iter()
            .map(u)
            .sum();
        assert_eq!(hist, u(&b["runq_waits"]));
        assert!(hist > 10);
    }
}

#[test]
fn direct_read_counts_block_io_and_the_file() {
    if !ebpf_ready("direct_read_counts_block_io_and_the_file") {
        return;
    }
    let _serial = exclusive();
    // A file on the root filesystem (ext4 on the VM's disk), not a tmpfs.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/denet-test-data")
        .join(format!("direct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.canonicalize().unwrap().join("input.bin");
    let n: u64 = 8 << 20;
    std::fs::write(&path, vec![3u8; n as usize]).unwrap();
    let t = run_agent(
        &["--files"],
        &[WORKLOAD, "read-direct", path.to_str().unwrap()],
    );
    let _ = std::fs::remove_dir_all(&dir);
    clean(&t);
    let p = t.root();
    assert!(
        u(&p["blk_read_bytes"]) >= n,
        "blk_read_bytes {}",
        p["blk_read_bytes"]
    );
    assert!(u(&p["blk_read_ops"]) >= 1);
    let lat: u64 = p["blk_latency_hist_log2_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(u)
        .sum();
    assert!(lat >= 1, "block latency histogram is empty");
    let files = files_of(&t, u(&p["pid"]));
    let f = files
        .iter()
        .find(|f| f["path"] == path.to_str().unwrap())
        .unwrap_or_else(|| panic!("no file record for {}: {files:?}", path.display()));
    assert_eq!(u(&f["read_bytes"]), n);
    assert_eq!(f["access"], "r");
    assert_eq!(f["closed_by"], "close");
}

#[test]
fn written_file_has_its_path_and_bytes() {
    if !ebpf_ready("written_file_has_its_path_and_bytes") {
        return;
    }
    let _serial = exclusive();
    let dir = scratch_dir("filewrite");
    let n = 3_000_001u64;
    // Relative path from a known working directory: resolved to the absolute one.
    let t = run_agent(
        &["--files"],
        &[
            "sh",
            "-c",
            &format!("cd {} && {WORKLOAD} write {n} out.bin", dir.display()),
        ],
    );
    clean(&t);
    let w = named(&t, "workload");
    let files = files_of(&t, u(&w[0]["pid"]));
    let want = dir.canonicalize().unwrap().join("out.bin");
    let f = files
        .iter()
        .find(|f| f["path"] == want.to_str().unwrap())
        .unwrap_or_else(|| panic!("no record for {}: {files:?}", want.display()));
    assert_eq!(u(&f["write_bytes"]), n);
    assert_eq!(u(&f["read_bytes"]), 0);
    assert_eq!(f["access"], "w");
    assert_eq!(f["created"], true);
    assert_eq!(f["path_source"], "cwd");
    // And a shell redirection: the child writes through an inherited fd.
    let out = dir.join("redir.txt");
    let t = run_agent(
        &["--files"],
        &[
            "sh",
            "-c",
            &format!("head -c 777 /dev/zero > {}", out.display()),
        ],
    );
    clean(&t);
    let head = named(&t, "head");
    let f = files_of(&t, u(&head[0]["pid"]))
        .into_iter()
        .find(|f| f["path"] == out.to_str().unwrap())
        .expect("record of the redirected stdout");
    assert_eq!(u(&f["write_bytes"]), 777);
    assert_eq!(f["inherited"], true);
    assert_eq!(f["fd"], 1);
}

#[test]
fn loopback_tcp_bytes_per_process() {
    if !ebpf_ready("loopback_tcp_bytes_per_process") {
        return;
    }
    let _serial = exclusive();
    let n = 5_000_000u64;
    let t = run_agent(&[], &[WORKLOAD, "tcp-pair", &n.to_string()]);
    clean(&t);
    let receiver = t.root();
    let sender = t
        .processes()
        .into_iter()
        .find(|p| p["pid"] != receiver["pid"])
        .expect("sender record");
    assert_eq!(u(&sender["net_tx_bytes"]), n);
    assert_eq!(u(&receiver["net_rx_bytes"]), n);
    assert_eq!(u(&sender["net_rx_bytes"]), 0);
    assert_eq!(u(&receiver["net_tx_bytes"]), 0);
}

#[test]
fn exact_syscall_count_while_others_do_the_same() {
    if !ebpf_ready("exact_syscall_count_while_others_do_the_same") {
        return;
    }
    let _serial = exclusive();
    // An untraced process hammers getppid meanwhile.
    let mut bg = std::process::Command::new(WORKLOAD)
        .args(["getppid", "50000000"])
        .spawn()
        .unwrap();
    let k = 123_457u64;
    let t = run_agent(&["--syscalls"], &[WORKLOAD, "getppid", &k.to_string()]);
    let _ = bg.kill();
    let _ = bg.wait();
    clean(&t);
    assert_eq!(t.processes().len(), 1);
    let p = t.root();
    assert_eq!(syscall(p, "getppid"), k);
    assert!(syscall(p, "execve") >= 1 || syscall(p, "exit_group") == 1);
    assert_eq!(syscall(p, "exit_group"), 1);
}

#[test]
fn samples_carry_window_deltas() {
    if !ebpf_ready("samples_carry_window_deltas") {
        return;
    }
    let _serial = exclusive();
    let t = run_agent(
        &["--interval-ms", "50", "--max-interval-ms", "50"],
        &[WORKLOAD, "burn", "600"],
    );
    clean(&t);
    let samples = t.of_kind("sample");
    assert!(samples.len() >= 5);
    let oncpu: u64 = samples.iter().map(|s| u(&s["oncpu_ns"])).sum();
    let total = u(&t.root()["oncpu_ns"]);
    // The windows cover the run up to the last sample: most of the process's time.
    assert!(
        oncpu <= total && oncpu as f64 > 0.7 * total as f64,
        "{oncpu} of {total}"
    );
    for s in &samples {
        // Syscall counts only with --syscalls.
        assert!(s.get("syscall_count").is_none(), "{s}");
        for p in s["procs"].as_array().unwrap() {
            assert!(p.get("oncpu_ns").is_some(), "{p}");
        }
    }
    let t = run_agent(
        &[
            "--syscalls",
            "--interval-ms",
            "50",
            "--max-interval-ms",
            "50",
        ],
        &[WORKLOAD, "burn", "300"],
    );
    clean(&t);
    let samples = t.of_kind("sample");
    assert!(samples.len() >= 2);
    for s in &samples {
        assert!(s["syscall_count"].is_u64(), "{s}");
    }
}

#[test]
fn files_and_syscalls_are_opt_in() {
    if !ebpf_ready("files_and_syscalls_are_opt_in") {
        return;
    }
    let _serial = exclusive();
    // Default: no syscall hooks, so no counts and no file records; everything else
    // (scheduler split, exit accounting) stays.
    let t = run_agent(&[], &[WORKLOAD, "getppid", "1000"]);
    clean(&t);
    assert_eq!(t.header()["files"], false);
    assert_eq!(t.header()["syscalls_counted"], false);
    assert!(t.of_kind("file").is_empty());
    assert_eq!(t.summary()["file_count"], 0);
    assert!(t.root().get("syscalls").is_none(), "{}", t.root());
    assert!(u(&t.root()["oncpu_ns"]) > 0);
    // syscr counts read-type syscalls from the task's own I/O accounting, hooks or not.
    assert!(t.root()["syscr"].is_u64(), "{}", t.root());
    // --syscalls alone: counts, no file records.
    let t = run_agent(&["--syscalls"], &[WORKLOAD, "getppid", "1000"]);
    clean(&t);
    assert_eq!(t.header()["syscalls_counted"], true);
    assert_eq!(t.header()["files"], false);
    assert_eq!(syscall(t.root(), "getppid"), 1000);
    assert!(t.of_kind("file").is_empty());
    // --files alone: file records, no syscall counts; by trampolines on the file
    // syscalls where the kernel takes them (Debian's 6.1 and 6.12), else by the raw
    // syscall hooks (this machine kind's kernel refuses trampolines).
    let t = run_agent(&["--files"], &["sh", "-c", "cat /etc/hostname >/dev/null"]);
    clean(&t);
    assert_eq!(t.header()["files"], true);
    assert_eq!(t.header()["syscalls_counted"], false);
    let hooks = &t.header()["kernel_hooks"];
    match t.header()["kernel_hooks_unavailable"].get("files") {
        Some(why) => {
            assert!(why.as_str().unwrap().contains("refuse"), "{}", t.header());
            assert!(hooks.get("files").is_none() && hooks.get("syscalls").is_some());
        }
        None => {
            assert_eq!(hooks["files"].as_array().unwrap().len(), 24, "{hooks}");
            assert!(hooks.get("syscalls").is_none(), "{hooks}");
        }
    }
    assert!(t.processes().iter().all(|p| p.get("syscalls").is_none()));
    let cat = named(&t, "cat");
    assert!(
        files_of(&t, u(&cat[0]["pid"]))
            .iter()
            .any(|f| f["path"] == "/etc/hostname"),
        "no record of /etc/hostname"
    );
    assert_eq!(
        u(&t.summary()["file_count"]),
        t.of_kind("file").len() as u64
    );
}

#[test]
fn old_opt_out_flags_are_accepted_with_a_note() {
    if !ebpf_ready("old_opt_out_flags_are_accepted_with_a_note") {
        return;
    }
    let _serial = exclusive();
    for flag in ["--no-files", "--no-syscalls"] {
        let t = run_agent(&[flag], &["sh", "-c", "cat /etc/hostname >/dev/null"]);
        clean(&t);
        assert!(
            t.stderr.contains(&format!("{flag} is the default now")),
            "{}",
            t.stderr
        );
        assert_eq!(t.header()["files"], false);
        assert_eq!(t.header()["syscalls_counted"], false);
        assert!(t.of_kind("file").is_empty());
    }
    // Contradictions are refused before anything runs.
    let out = std::process::Command::new(crate::helpers::agent_bin())
        .args(["run", "--files", "--no-files", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn raw_events_add_up_to_the_aggregates() {
    if !ebpf_ready("raw_events_add_up_to_the_aggregates") {
        return;
    }
    let _serial = exclusive();
    let t = run_agent(
        &["--events", "--ringbuf-mib", "16"],
        &["sh", "-c", "sleep 0.2; true"],
    );
    clean(&t);
    assert_eq!(t.header()["events"], true);
    let events = t.of_kind("event");
    assert_eq!(u(&t.summary()["event_count"]), events.len() as u64);
    // Every span the kernel aggregated was also reported, so per process and state
    // the raw spans sum exactly to the record's totals.
    for p in t.processes() {
        for (state, field) in [
            ("running", "oncpu_ns"),
            ("runnable", "cpu_wait_ns"),
            ("io_wait", "io_wait_ns"),
            ("sleep", "sleep_ns"),
        ] {
            let sum: u64 = events
                .iter()
                .filter(|e| e["type"] == "sched" && e["pid"] == p["pid"] && e["state"] == state)
                .map(|e| u(&e["duration_ns"]))
                .sum();
            assert_eq!(sum, u(&p[field]), "{state} of {}", p["argv"]);
        }
    }
    let runq: u64 = t.root()["runq_waits"].as_u64().unwrap();
    let spans = events
        .iter()
        .filter(|e| e["pid"] == t.root()["pid"] && e["state"] == "runnable")
        .count() as u64;
    assert_eq!(spans, runq);
}
