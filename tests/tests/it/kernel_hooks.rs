//! The header names the hook each feature uses on the running kernel, and the agent
//! picks by what the kernel offers. Runs on this machine and in every guest of the
//! kernel matrix (`cargo xtask kernel-test`), where the expected hooks follow from
//! the kernel version: the tracepoints the programs read changed shape in 6.3
//! (`sock_send_length` added) and 6.16 (`sched_process_exit` passes `group_dead` and
//! fires before `exit_mm()`).

use crate::helpers::{ebpf_ready, in_guest, run_agent};
use serde_json::Value;

/// (major, minor) of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn hooks_of(header: &Value, feature: &str) -> Vec<String> {
    header["kernel_hooks"][feature]
        .as_array()
        .unwrap_or_else(|| panic!("no hooks for {feature}: {header}"))
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_header_names_each_features_hook() {
    if !ebpf_ready("the_header_names_each_features_hook") {
        return;
    }
    let t = run_agent(&[], &["/bin/true"]);
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let h = t.header();
    assert_eq!(h["ebpf"], true, "{}", t.stderr);
    assert_eq!(h["tracer"], "own");
    // Every feature is served on the kernels we support, but for the file
    // trampolines where a kernel refuses trampolines (this machine kind's: known
    // once a run tried them; until then the feature is merely not attached).
    if let Some(m) = h["kernel_hooks_unavailable"].as_object() {
        assert_eq!(m.keys().collect::<Vec<_>>(), ["files"], "{h}");
        assert!(m["files"].as_str().unwrap().contains("refuse"), "{h}");
        assert!(!in_guest(), "Debian's kernels take trampolines: {h}");
    }
    // No file records, and so no file hooks, unless asked for.
    assert_eq!(h["files"], false);
    assert!(h["kernel_hooks"].get("files").is_none(), "{h}");
    let v = kernel_version();
    let expect = |feature: &str, hooks: &[&str]| {
        assert_eq!(hooks_of(h, feature), hooks, "{feature} on {v:?}");
    };
    expect("fork", &["raw_tp/sched_process_fork"]);
    expect("exec", &["raw_tp/sched_process_exec"]);
    expect(
        "scheduler",
        &[
            "raw_tp/sched_switch",
            "raw_tp/sched_wakeup",
            "raw_tp/sched_wakeup_new",
        ],
    );
    expect(
        "block_io",
        &["raw_tp/block_bio_queue", "raw_tp/block_rq_complete"],
    );
    if v >= (6, 16) {
        expect("exit", &["raw_tp/sched_process_exit"]);
    } else {
        expect("exit", &["fentry/taskstats_exit"]);
    }
    expect("oom_victim", &["raw_tp/mark_victim"]);
    if v >= (6, 3) {
        expect(
            "network",
            &["raw_tp/sock_send_length", "raw_tp/sock_recv_length"],
        );
    } else {
        expect(
            "network",
            &[
                "fexit/inet_sendmsg",
                "fexit/inet6_sendmsg",
                "fexit/inet_recvmsg",
                "fexit/inet6_recvmsg",
            ],
        );
    }
    // The syscall-path hooks only when a run asks for what needs them.
    assert!(h["kernel_hooks"].get("syscalls").is_none(), "{h}");
    let t = run_agent(&["--syscalls"], &["/bin/true"]);
    assert_eq!(
        hooks_of(t.header(), "syscalls"),
        ["raw_tp/sys_enter", "raw_tp/sys_exit"]
    );
    // Files by trampolines on the file syscalls where the kernel takes them.
    let t = run_agent(&["--files"], &["/bin/true"]);
    let h = t.header();
    if in_guest() {
        let files = hooks_of(h, "files");
        assert_eq!(files.len(), 24, "{files:?}");
        assert!(
            files.contains(&"fexit/__x64_sys_openat".to_owned()),
            "{files:?}"
        );
        assert!(
            files.contains(&"fentry/__x64_sys_close".to_owned()),
            "{files:?}"
        );
        assert!(h["kernel_hooks"].get("syscalls").is_none(), "{h}");
    }
}
