//! Helpers for the integration tests: run the agent on a command and read its trace
//! (here), recorded traces and golden files (`report`), a database per test (`pg`).
//!
//! eBPF tests need root. Outside CI they skip with a clear message when not root; in
//! CI (`CI` set) a missing capability fails the test instead, so nothing is skipped
//! silently there.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::Value;

pub mod pg;
pub mod python;
pub mod report;

/// The ground-truth workload binary (tests/src/bin/workload.rs).
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_workload");

/// Path of the agent binary: `DENET_AGENT_BIN`, else target/release, else target/debug.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DENET_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("denet-agent");
        if p.is_file() {
            return p;
        }
    }
    panic!("denet-agent binary not found: build it first (scripts/test.sh does) or set DENET_AGENT_BIN");
}

pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Inside a guest of the kernel matrix (`cargo xtask kernel-test`): a machine of
/// its own, booted for the tests, where a test may exhaust its memory.
pub fn in_guest() -> bool {
    std::env::var_os("DENET_IN_GUEST").is_some_and(|v| v == "1")
}

/// The cgroup version runs use here: 1 where v1's memory controller is mounted.
pub fn cgroup_version() -> u64 {
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        1
    } else {
        2
    }
}

/// True when eBPF tests can run. Not root: skip with a message, or fail in CI.
pub fn ebpf_ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Path::new("/sys/kernel/btf/vmlinux").exists() {
        return true;
    }
    let why = if root {
        "no /sys/kernel/btf/vmlinux"
    } else {
        "needs root"
    };
    if in_ci() {
        panic!("{test}: eBPF test cannot run in CI: {why}");
    }
    eprintln!("skipped {test}: {why} (run the suite with sudo)");
    false
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "denet-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A finished agent run.
#[derive(Debug)]
pub struct Trace {
    pub status: ExitStatus,
    pub stderr: String,
    pub records: Vec<Value>,
}

impl Trace {
    pub fn exit_code(&self) -> i32 {
        self.status.code().expect("agent exited by a signal")
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.records.iter().filter(|r| r["kind"] == kind).collect()
    }

    pub fn header(&self) -> &Value {
        let first = self.records.first().expect("empty trace");
        assert_eq!(first["kind"], "header", "first record must be the header");
        first
    }

    pub fn summary(&self) -> &Value {
        let last = self.records.last().expect("empty trace");
        assert_eq!(last["kind"], "summary", "last record must be the summary");
        last
    }

    pub fn processes(&self) -> Vec<&Value> {
        self.of_kind("process")
    }

    /// Process records whose argv[0] ends with `name`.
    pub fn processes_named(&self, name: &str) -> Vec<&Value> {
        self.processes()
            .into_iter()
            .filter(|p| p["argv"][0].as_str().is_some_and(|a| a.ends_with(name)))
            .collect()
    }

    pub fn root_pid(&self) -> u64 {
        self.header()["pid"].as_u64().expect("header pid")
    }

    /// The record of the command itself.
    pub fn root(&self) -> &Value {
        let pid = self.root_pid();
        self.processes()
            .into_iter()
            .find(|p| p["pid"] == pid)
            .expect("record of the command")
    }
}

/// Runs `denet-agent run --standalone ARGS -o FILE -- CMD` (its own programs, even
/// if a node daemon runs on this machine) and parses the trace.
pub fn run_agent(args: &[&str], cmd: &[&str]) -> Trace {
    let dir = scratch_dir("trace");
    let out = dir.join("trace.jsonl");
    let output = Command::new(agent_bin())
        .args(["run", "--standalone"])
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("spawn denet-agent");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let text = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("no trace at {} ({e}); stderr: {stderr}", out.display()));
    let records = parse_jsonl(&text);
    let _ = std::fs::remove_dir_all(&dir);
    Trace {
        status: output.status,
        stderr,
        records,
    }
}

pub fn parse_jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1))
        })
        .collect()
}

/// Relative difference |a - b| / b.
pub fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

pub fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned number: {v}"))
}

/// Serialises the tests that hold it: scheduler-timing tests compare times that
/// other tests running at the same time on these 2 CPUs would distort.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Admin URL of the PostgreSQL server for the job-history tests
/// (`DENET_TEST_PG_URL`, e.g. postgres://denet:denet@127.0.0.1:5432/postgres; the
/// role needs CREATEDB). Unset: skip with a message, or fail in CI.
pub fn pg_admin_url(test: &str) -> Option<String> {
    match std::env::var("DENET_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if in_ci() {
                panic!("{test}: PostgreSQL test cannot run in CI: DENET_TEST_PG_URL unset");
            }
            eprintln!(
                "skipped {test}: DENET_TEST_PG_URL unset (scripts/test.sh sets it; scripts/setup.sh starts PostgreSQL as root)"
            );
            None
        }
    }
}

/// A local test user (created with `useradd` if missing, with a home directory);
/// its uid. Needs root, like the eBPF tests that use it.
pub fn test_user(name: &str) -> u32 {
    let uid = |name: &str| {
        Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    };
    if let Some(u) = uid(name) {
        return u;
    }
    let out = Command::new("useradd")
        .args(["--create-home", "--shell", "/bin/sh", name])
        .output()
        .expect("run useradd");
    // Another test may have created it meanwhile (exit 9: already exists).
    assert!(
        out.status.success() || out.status.code() == Some(9),
        "useradd {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    uid(name).unwrap_or_else(|| panic!("no uid for {name} after useradd"))
}

/// Runs the agent as `user` (through runuser, as a login-less user would run it):
/// exit status, stdout, stderr.
pub fn agent_as(user: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(agent_bin())
        .args(args)
        .output()
        .expect("run runuser");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `burn` child's CPU in a trace against its wait4 rusage written to `truth`
/// by `workload rusage-child`: within 2% (the tick-based user/system split).
pub fn assert_burner_cpu_matches_rusage(t: &Trace, truth: &Path) {
    let ru: Value =
        serde_json::from_str(&std::fs::read_to_string(truth).expect("truth file")).expect("truth");
    let expected = (u(&ru["utime_ns"]) + u(&ru["stime_ns"])) as f64;
    let burner = t
        .processes()
        .into_iter()
        .find(|p| p["argv"][1] == "burn")
        .expect("burner record");
    let measured = (u(&burner["cpu_user_ns"]) + u(&burner["cpu_sys_ns"])) as f64;
    assert!(expected > 0.9e9, "burner ran {expected} ns");
    assert!(
        rel_diff(measured, expected) < 0.02,
        "cpu {measured} ns vs rusage {expected} ns"
    );
}

/// The count of syscall `name` in a record's `syscalls`: a list of `{name, count}`
/// since schema 3, an object keyed by name in the recorded schema 2 traces; 0 when
/// it is not listed.
pub fn syscall(rec: &Value, name: &str) -> u64 {
    match &rec["syscalls"] {
        Value::Array(list) => list
            .iter()
            .find(|e| e["name"] == name)
            .map_or(0, |e| u(&e["count"])),
        Value::Object(map) => map.get(name).map_or(0, u),
        other => panic!("no syscall counts ({other}) in {rec}"),
    }
}
