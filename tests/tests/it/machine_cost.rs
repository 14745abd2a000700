//! What a run costs the rest of the machine: a default run puts no program on the
//! syscall path (checked against the kernel's own view of the agent's links), the
//! syscall hooks come only with `--files`/`--syscalls` and then as one pair, and
//! concurrent runs each see only their own processes and files. Needs root (eBPF).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{agent_bin, ebpf_ready, parse_jsonl, scratch_dir, u};
use serde_json::Value;

use crate::helpers::WORKLOAD;

/// A run in the background, writing its trace to `out`.
struct Running {
    child: Child,
    out: PathBuf,
}

fn start(flags: &[&str], out: &Path, cmd: &[&str]) -> Running {
    let child = Command::new(agent_bin())
        .arg("run")
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn denet-agent");
    Running {
        child,
        out: out.to_path_buf(),
    }
}

impl Running {
    /// Waits until the command was released (the header is written after the
    /// programs are attached and the command is tracked).
    fn wait_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&self.out).is_ok_and(|t| t.contains("\"kind\":\"header\"")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} never got its header", self.out.display());
    }

    /// The agent's BPF links, read from /proc/PID/fdinfo (the kernel's record of
    /// each): raw tracepoints as `raw_tp/<tracepoint>` (the header's names), and
    /// the count of trampolines (fentry/fexit) by kind.
    fn links(&self) -> BTreeMap<String, usize> {
        let mut links = BTreeMap::new();
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        for entry in std::fs::read_dir(&dir).expect("fdinfo of the agent") {
            let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
                continue;
            };
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
                    .map(str::to_owned)
            };
            let hook = match field("link_type").as_deref() {
                Some("raw_tracepoint") => format!(
                    "raw_tp/{}",
                    field("tp_name").expect("raw tracepoint link without tp_name")
                ),
                // BPF_TRACE_FENTRY 24, BPF_TRACE_FEXIT 25.
                Some("tracing") => match field("attach_type").as_deref() {
                    Some("24") => "fentry".to_owned(),
                    Some("25") => "fexit".to_owned(),
                    other => panic!("tracing link of attach type {other:?}: {info}"),
                },
                _ => continue,
            };
            *links.entry(hook).or_default() += 1;
        }
        links
    }

    /// Stops the command (SIGTERM is forwarded) unless it ended, and reads the trace.
    fn finish(self, stop: bool) -> Vec<Value> {
        if stop {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        }
        let out = self.child.wait_with_output().expect("wait for the agent");
        let text = std::fs::read_to_string(&self.out).expect("trace");
        assert!(
            text.contains("\"kind\":\"summary\""),
            "no summary; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_jsonl(&text)
    }
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

#[test]
fn syscall_hooks_only_when_asked_for_and_as_one_pair() {
    if !ebpf_ready("syscall_hooks_only_when_asked_for_and_as_one_pair") {
        return;
    }
    let dir = scratch_dir("links");
    for (i, (flags, hooks)) in [
        (&[][..], 0),
        (&["--files"][..], 1),
        (&["--syscalls"][..], 1),
        (&["--files", "--syscalls"][..], 1),
    ]
    .into_iter()
    .enumerate()
    {
        let run = start(flags, &dir.join(format!("{i}.jsonl")), &["sleep", "30"]);
        run.wait_released();
        let links = run.links();
        // Every hook the header names is attached once, and nothing else.
        let header = parse_jsonl(&std::fs::read_to_string(&run.out).expect("trace"))
            .into_iter()
            .next()
            .expect("header");
        let mut named: BTreeMap<String, usize> = BTreeMap::new();
        for hook in header["kernel_hooks"]
            .as_object()
            .expect("kernel_hooks")
            .values()
            .flat_map(|v| v.as_array().expect("hooks").iter())
        {
            let hook = hook.as_str().expect("hook");
            let key = match hook.split_once('/') {
                Some(("raw_tp", _)) => hook.to_owned(),
                Some((kind, _)) => kind.to_owned(),
                None => panic!("hook {hook}"),
            };
            *named.entry(key).or_default() += 1;
        }
        assert!(named.contains_key("raw_tp/sched_process_fork"), "{named:?}");
        assert_eq!(links, named, "{flags:?}");
        // The raw syscall hooks, on every syscall of the machine, only for syscall
        // counts, or for files where the kernel refuses the file trampolines; a
        // default run has neither.
        let file_trampolines = header["kernel_hooks"].get("files").is_some();
        let hooks = if file_trampolines && !flags.contains(&"--syscalls") {
            0
        } else {
            hooks
        };
        for tp in ["raw_tp/sys_enter", "raw_tp/sys_exit"] {
            assert_eq!(
                links.get(tp).copied().unwrap_or(0),
                hooks,
                "{flags:?}: {tp} links in {links:?}"
            );
        }
        let records = run.finish(true);
        assert_eq!(records[0]["files"], flags.contains(&"--files"));
        assert_eq!(
            records[0]["syscalls_counted"],
            flags.contains(&"--syscalls")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn concurrent_runs_see_only_their_own() {
    if !ebpf_ready("concurrent_runs_see_only_their_own") {
        return;
    }
    let dir = scratch_dir("concurrent");
    // A default run in the background for the whole test.
    let background = start(&[], &dir.join("bg.jsonl"), &["sleep", "60"]);
    background.wait_released();
    // An untraced process making the same syscall meanwhile.
    let mut untraced = Command::new(WORKLOAD)
        .args(["getppid", "50000000"])
        .spawn()
        .unwrap();
    // Two runs with everything on, each writing its own file, at the same time.
    let k = 100_003u64;
    let (a_file, b_file) = (dir.join("a.bin"), dir.join("b.bin"));
    let a = start(
        &["--files", "--syscalls"],
        &dir.join("a.jsonl"),
        &[
            "sh",
            "-c",
            &format!(
                "{WORKLOAD} getppid {k}; {WORKLOAD} write 1000001 {}",
                a_file.display()
            ),
        ],
    );
    let b = start(
        &["--files", "--syscalls"],
        &dir.join("b.jsonl"),
        &[
            "sh",
            "-c",
            &format!(
                "{WORKLOAD} getppid {k}; {WORKLOAD} write 2000003 {}",
                b_file.display()
            ),
        ],
    );
    let (a, b) = (a.finish(false), b.finish(false));
    let _ = untraced.kill();
    let _ = untraced.wait();
    let bg = background.finish(true);
    for (trace, own, other, bytes) in [
        (&a, &a_file, &b_file, 1_000_001),
        (&b, &b_file, &a_file, 2_000_003),
    ] {
        let s = trace.last().unwrap();
        assert_eq!(s["lost_events"], 0, "{s}");
        let files = of_kind(trace, "file");
        let paths: Vec<&str> = files.iter().filter_map(|f| f["path"].as_str()).collect();
        assert!(!paths.contains(&other.to_str().unwrap()), "{paths:?}");
        let f = files
            .iter()
            .find(|f| f["path"] == own.to_str().unwrap())
            .unwrap_or_else(|| panic!("no record of {}: {paths:?}", own.display()));
        assert_eq!(u(&f["write_bytes"]), bytes);
        // Exactly the workload's own getppid calls, not the untraced process's (the
        // shell makes one of its own at start-up, for $PPID).
        let counted: Vec<u64> = of_kind(trace, "process")
            .iter()
            .filter(|p| p["argv"][1] == "getppid")
            .map(|p| crate::helpers::syscall(p, "getppid"))
            .collect();
        assert_eq!(counted, [k]);
        // Only sh and its two children.
        assert_eq!(of_kind(trace, "process").len(), 3);
    }
    // The default run saw only its sleep: no files, no syscalls, no other process.
    assert!(of_kind(&bg, "file").is_empty());
    let procs = of_kind(&bg, "process");
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert!(procs[0].get("syscalls").is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
