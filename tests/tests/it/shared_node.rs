//! The node's service on a shared machine: jobs run as the user who asked, a user
//! reaches only their own jobs and history, and nobody gets root's rights through
//! it. Real unprivileged users (`useradd`), driven through `runuser` and the real
//! `jobs` client over the node socket; the service runs as root.

use std::{
    collections::HashSet,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    helpers::{
        agent_as, agent_bin, ebpf_ready, parse_jsonl, rel_diff, scratch_dir, test_user, u, Trace,
        WORKLOAD,
    },
    serve_api::Svc,
};

/// A node daemon (`serve` as root) for one test, and a directory every user may
/// write in (like /tmp) for their traces.
struct Node {
    dir: PathBuf,
    svc: Svc,
    work: PathBuf,
}

impl Node {
    /// `short`: the scratch directory's name (socket paths must stay short).
    fn start(test: &str, short: &str) -> Option<Node> {
        if !ebpf_ready(test) {
            return None;
        }
        let dir = scratch_dir(short);
        let work = dir.join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let svc = Svc::start(&dir.join("data"), &[]);
        Some(Node { dir, svc, work })
    }

    fn tracer_socket(&self) -> PathBuf {
        self.dir.join("data.tracer.sock")
    }

    /// `denet-agent run ARGS -- CMD` as `user` through the node daemon; the trace
    /// is written by the user's own agent, into the shared directory.
    fn run_as(&self, user: &str, args: &[&str], cmd: &[&str]) -> (Trace, PathBuf) {
        let out = self.work.join(format!(
            "{user}-{}.jsonl",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let output = Command::new("runuser")
            .args(["-u", user, "--"])
            .arg(agent_bin())
            .arg("run")
            .arg("--node-socket")
            .arg(self.tracer_socket())
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg("--")
            .args(cmd)
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let text = std::fs::read_to_string(&out)
            .unwrap_or_else(|e| panic!("no trace at {} ({e}): {stderr}", out.display()));
        (
            Trace {
                status: output.status,
                stderr,
                records: parse_jsonl(&text),
            },
            out,
        )
    }
}

/// Exact, through the node: every record from the kernel, nothing lost.
fn assert_exact_through_the_node(t: &Trace) {
    let h = t.header();
    assert_eq!(
        (&h["ebpf"], &h["tracer"]),
        (&json!(true), &json!("node")),
        "{h} {}",
        t.stderr
    );
    let s = t.summary();
    assert_eq!(s["lost_events"], 0, "{s}");
    assert_eq!(s["incomplete_processes"], 0, "{s}");
    assert_eq!(s["tracer_error"], Value::Null, "{s}");
    let procs = t.processes();
    assert_eq!(u(&s["process_count"]), procs.len() as u64);
    for p in &procs {
        assert_eq!(p["source"], "ebpf", "{p}");
    }
}

/// Raw-tracepoint links attached on the machine, by tracepoint (from bpftool).
fn links(tp: &str) -> usize {
    let out = Command::new("bpftool")
        .args(["link", "show", "-j"])
        .output()
        .expect("run bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|l| l.iter().filter(|l| l["tp_name"] == tp).count())
        .unwrap_or(0)
}

/// `jobs --server unix:SOCK ARGS` as `user`.
fn jobs_as(user: &str, svc: &Svc, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["jobs", "--server", svc.server.as_str()];
    all.extend_from_slice(args);
    agent_as(user, &all)
}

fn owner_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .uid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_their_caller_and_nobody_reaches_another_users_jobs() {
    if !ebpf_ready("jobs_run_as_their_caller_and_nobody_reaches_another_users_jobs") {
        return;
    }
    let alice = test_user("denet-alice");
    let bob = test_user("denet-bob");
    let nobody = 65534;
    let dir = scratch_dir("shared-node");
    // A directory every user may write in (like /tmp), for the jobs' cwd.
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let w = work.to_string_lossy().into_owned();
    let data = dir.join("data");
    let svc = Svc::start(&data, &["--job-memory-limit", "8G"]);

    // The exploit that used to work: `nobody` asks for a command; it runs as nobody.
    let (code, out, err) = jobs_as(
        "nobody",
        &svc,
        &[
            "spawn",
            "--name",
            "x",
            "--cwd",
            &w,
            "--",
            "sh",
            "-c",
            "id; grep CapEff /proc/self/status; touch made-by-job",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let x = out.trim().to_string();
    let v = svc.wait_end(&x, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        (v["user"].as_str(), v["uid"].as_u64()),
        (Some("nobody"), Some(nobody.into()))
    );
    let (code, logs, err) = jobs_as("nobody", &svc, &["logs", &x]);
    assert_eq!(code, 0, "{err}");
    assert!(logs.contains("uid=65534(nobody)"), "{logs}");
    assert!(!logs.contains("uid=0"), "{logs}");
    // No capability left either.
    assert!(logs.contains("CapEff:\t0000000000000000"), "{logs}");
    assert_eq!(owner_of(&work.join("made-by-job")), nobody);
    // Its directory, trace and logs are the user's.
    let job_dir = data.join("jobs").join(&x);
    for f in ["", "trace.jsonl", "stdout.log", "stderr.log"] {
        assert_eq!(owner_of(&job_dir.join(f)), nobody, "{f}");
    }
    let (code, trace, err) = jobs_as("nobody", &svc, &["trace", &x]);
    assert_eq!(code, 0, "{err}");
    assert!(
        trace.lines().last().unwrap_or("").contains("\"summary\""),
        "{trace}"
    );

    // A job of root's and one of alice's, still running.
    let root_job = svc
        .spawn(json!({"name": "sleeper", "cmd": ["sleep", "60"], "cwd": w}))
        .await;
    let (code, out, err) = jobs_as(
        "denet-alice",
        &svc,
        &[
            "spawn", "--name", "sleeper", "--cwd", &w, "--", "sleep", "60",
        ],
    );
    // Users do not share job names: alice's "sleeper" is not root's.
    assert_eq!(code, 0, "{err}");
    let alice_job = out.trim().to_string();
    svc.wait_running(&root_job).await;
    svc.wait_running(&alice_job).await;
    assert_eq!(svc.job(&alice_job).await["uid"], alice);

    // Nothing of root's or alice's is nobody's to see or touch: 403 every time.
    for target in [&root_job, &alice_job] {
        for action in [
            &["show", target.as_str()][..],
            &["stop", target],
            &["pause", target],
            &["resume", target],
            &["logs", target],
            &["logs", "--follow", target],
            &["trace", target],
        ] {
            let (code, out, err) = jobs_as("nobody", &svc, action);
            assert_ne!(code, 0, "{action:?} as nobody: {out}");
            assert!(err.contains("403"), "{action:?} as nobody: {err}");
        }
        // Bob is no more allowed than nobody.
        let (code, _, err) = jobs_as("denet-bob", &svc, &["stop", target]);
        assert_ne!(code, 0);
        assert!(err.contains("another user"), "{err}");
    }
    // Still running after all that.
    for id in [&root_job, &alice_job] {
        assert_eq!(svc.job(id).await["status"], "running");
    }

    // Each user lists their own jobs; root lists everyone's.
    let list = |user: &str| -> Vec<String> {
        let (code, out, err) = jobs_as(user, &svc, &["list", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(list("nobody"), std::slice::from_ref(&x));
    assert_eq!(list("denet-alice"), std::slice::from_ref(&alice_job));
    assert!(list("denet-bob").is_empty());
    let all = list("root");
    for id in [&x, &root_job, &alice_job] {
        assert!(all.contains(id), "{all:?}");
    }
    // The history too.
    let (code, out, err) = jobs_as("nobody", &svc, &["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let rows = rows["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["uid"] == nobody), "{rows:?}");

    // A directory the caller may not enter is refused as the caller would be.
    let (code, _, err) = jobs_as(
        "nobody",
        &svc,
        &["spawn", "--name", "y", "--cwd", "/root", "--", "true"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("cwd") && err.contains("400"), "{err}");

    // A job with a memory limit: its cgroup, made by the daemon, OOM-kills in it
    // and the job's trace names the victim.
    let (code, out, err) = jobs_as(
        "denet-alice",
        &svc,
        &[
            "spawn",
            "--name",
            "big",
            "--cwd",
            &w,
            "--memory-limit",
            "100M",
            "--",
            WORKLOAD,
            "alloc",
            "300",
            "50",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let big = out.trim().to_string();
    let v = svc.wait_end(&big, Duration::from_secs(30)).await;
    assert_eq!(v["signal"], 9, "{v}");
    assert_eq!(v["limits"]["memory_bytes"], 100 << 20, "{v}");
    // The history row keeps it: the OOM kill, the limit and the peak.
    let row = &v["resources"];
    assert_eq!(
        (&row["oom_kills"], &row["memory_limit_bytes"]),
        (&json!(1), &json!(100 << 20)),
        "{row}"
    );
    assert!(
        row["memory_peak_bytes"].as_u64().unwrap() > 95 << 20,
        "{row}"
    );
    let (_, trace, _) = jobs_as("denet-alice", &svc, &["trace", &big]);
    let recs = parse_jsonl(&trace);
    let s = recs.iter().find(|r| r["kind"] == "summary").unwrap();
    assert_eq!(
        (&s["oom_kills"], &s["oom_scope"]),
        (&json!(1), &json!("run_limit")),
        "{s}"
    );
    // The job's agent itself is in the job's cgroup (made by the service as root),
    // so the limits hold whatever the agent is made to ask the daemon for.
    let (code, out, err) = jobs_as(
        "denet-alice",
        &svc,
        &[
            "spawn",
            "--name",
            "held",
            "--cwd",
            &w,
            "--memory-limit",
            "200M",
            "--",
            "sleep",
            "5",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let held = out.trim().to_string();
    svc.wait_running(&held).await;
    let agent_pid = svc.job(&held).await["agent_pid"].as_u64().unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{agent_pid}/cgroup")).unwrap();
    let memory = cgroups.lines().find(|l| l.contains(":memory:")).unwrap();
    assert!(memory.ends_with(&format!("/denet-job-{held}")), "{cgroups}");
    let limit_file = format!(
        "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
        memory.split(':').nth(2).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(&limit_file).unwrap().trim(),
        (200u64 << 20).to_string()
    );
    assert!(svc
        .post(&format!("/jobs/{held}/stop"))
        .await
        .status
        .is_success());
    svc.wait_end(&held, Duration::from_secs(30)).await;
    // Removed with the job.
    let until = Instant::now() + Duration::from_secs(5);
    while Path::new(&limit_file).exists() {
        assert!(Instant::now() < until, "{limit_file} left behind");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Above the service's cap: 400, and nothing runs.
    let (code, _, err) = jobs_as(
        "denet-alice",
        &svc,
        &[
            "spawn",
            "--name",
            "huge",
            "--cwd",
            &w,
            "--memory-limit",
            "64G",
            "--",
            "true",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("memory_limit") && err.contains("cap") && err.contains("400"),
        "{err}"
    );

    // Alice may stop her own job; root may stop anyone's.
    let (code, _, err) = jobs_as("denet-alice", &svc, &["stop", &alice_job]);
    assert_eq!(code, 0, "{err}");
    assert!(svc
        .post(&format!("/jobs/{root_job}/stop"))
        .await
        .status
        .is_success());
    for id in [&root_job, &alice_job] {
        let v = svc.wait_end(id, Duration::from_secs(30)).await;
        assert_eq!(v["status"], "cancelled", "{v}");
    }
    let _ = bob;
}

#[test]
fn an_ordinary_user_gets_the_exact_trace_through_the_node_daemon() {
    let Some(node) = Node::start(
        "an_ordinary_user_gets_the_exact_trace_through_the_node_daemon",
        "node-exact",
    ) else {
        return;
    };
    let alice = test_user("denet-alice");

    // 1000 short children: every one recorded, none lost.
    let (t, out) = node.run_as(
        "denet-alice",
        &[],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done; id -u > uid.txt",
        ],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_exact_through_the_node(&t);
    assert_eq!(t.processes_named("/bin/true").len(), 1000);
    // The command ran as alice, and the trace is hers: her agent wrote it.
    assert_eq!(
        std::fs::read_to_string(node.work.join("uid.txt"))
            .unwrap()
            .trim(),
        alice.to_string()
    );
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), alice);
    // The client stays small: the programs and their maps are the daemon's.
    let agent_rss = u(&t.summary()["agent_peak_rss_kb"]);
    assert!(agent_rss < 10 * 1024, "client peak RSS {agent_rss} KiB");

    // CPU against the child's wait4 rusage (2%), as for a root run.
    let truth = node.work.join("truth.json");
    let tp = truth.to_str().unwrap();
    let (t, _) = node.run_as(
        "denet-alice",
        &[],
        &[WORKLOAD, "rusage-child", tp, "--", WORKLOAD, "burn", "1000"],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_exact_through_the_node(&t);
    crate::helpers::assert_burner_cpu_matches_rusage(&t, &truth);

    // Peak RSS of a 256 MiB allocation (5%, and against the child's own VmHWM).
    let (t, _) = node.run_as(
        "denet-alice",
        &[],
        &["sh", "-c", &format!("{WORKLOAD} alloc 256 50 {tp}; true")],
    );
    assert_exact_through_the_node(&t);
    let peak = u(&t.processes_named("workload")[0]["peak_rss_kb"]) as f64;
    assert!(rel_diff(peak, 256.0 * 1024.0) < 0.05, "peak {peak} KiB");
    let hwm: Value = serde_json::from_str(&std::fs::read_to_string(&truth).unwrap()).unwrap();
    assert!(rel_diff(peak, u(&hwm["vm_hwm_kb"]) as f64) < 0.05);

    // Her own limit: the daemon made the run's cgroup, and the OOM kill is named.
    let (t, _) = node.run_as(
        "denet-alice",
        &["--memory-limit", "100M"],
        &["sh", "-c", &format!("{WORKLOAD} alloc 300 50; true")],
    );
    assert_exact_through_the_node(&t);
    let s = t.summary();
    assert_eq!(
        (&s["oom_kills"], &s["oom_scope"]),
        (&json!(1), &json!("run_limit")),
        "{s}"
    );
    assert_eq!(s["oom_victims"][0]["argv"][1], "alloc");
    assert_eq!(s["memory_limit_bytes"], 100 << 20);
    // The daemon removes it once the kernel lets go of it (off the run's path).
    let cg = t.header()["cgroup"]["path"].as_str().unwrap().to_string();
    let until = Instant::now() + Duration::from_secs(5);
    while Path::new(&cg).exists() {
        assert!(Instant::now() < until, "the daemon left {cg} behind");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Files and syscall counts through the node: exact byte counts.
    let (t, _) = node.run_as(
        "denet-alice",
        &["--files", "--syscalls"],
        &["sh", "-c", "head -c 100000 /dev/zero > zeros.bin"],
    );
    assert_exact_through_the_node(&t);
    assert_eq!(
        (&t.header()["files"], &t.header()["syscalls_counted"]),
        (&json!(true), &json!(true))
    );
    // The shell opens it, head writes to it through the inherited fd 1.
    let written: u64 = t
        .of_kind("file")
        .into_iter()
        .filter(|f| {
            f["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/zeros.bin"))
        })
        .map(|f| u(&f["write_bytes"]))
        .sum();
    assert_eq!(written, 100_000);
    let head = t
        .processes()
        .into_iter()
        .find(|p| p["argv"][0] == "head")
        .expect("head record");
    assert!(crate::helpers::syscall(head, "write") >= 1, "{head}");
}

#[test]
fn a_user_cannot_get_another_users_process_tracked() {
    let Some(node) = Node::start(
        "a_user_cannot_get_another_users_process_tracked",
        "node-refuse",
    ) else {
        return;
    };
    // A process of root's, which nobody will try to claim by pid.
    let mut roots = Command::new("sleep").arg("30").spawn().unwrap();
    let sock = node.tracer_socket();
    // nobody speaks the protocol by hand (Python, not our client), as an attacker would.
    let script = format!(
        r#"
import json, socket, subprocess, sys
def ask(first, raw=False):
    s = socket.socket(socket.AF_UNIX)
    s.connect({sock:?})
    s.sendall(first if raw else (json.dumps(first) + "\n").encode())
    s.settimeout(15)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
def track(pid, version=1):
    return {{"track": {{"version": version, "pid": pid, "start_boot_ns": 0, "argv": [], "cwd": None, "files": False, "syscalls": False, "events": False}}}}
print("root:", ask(track({root})))
# Our own child, but running setuid root: not ours to trace.
p = subprocess.Popen(["/usr/bin/passwd"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
import time; time.sleep(0.5)
print("setuid:", ask(track(p.pid)))
p.kill()
q = subprocess.Popen(["sleep", "30"])
print("version:", ask(track(q.pid, version=99)))
print("order:", ask({{"tracked_pids": None}}))
print("garbage:", repr(ask(b"{{not json\n", raw=True)))
q.kill()
"#,
        sock = sock.to_str().unwrap(),
        root = roots.id()
    );
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "/usr/bin/python3", "-c", &script])
        .output()
        .unwrap();
    let _ = roots.kill();
    let _ = roots.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |what: &str| -> Value {
        let l = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{what}: ")))
            .unwrap_or_else(|| panic!("no {what} line: {text}"));
        serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}"))
    };
    let reason = |what: &str| {
        line(what)["refused"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        reason("root").contains("not a child of the caller"),
        "{text}"
    );
    assert!(
        reason("setuid").contains("does not belong to the caller"),
        "{text}"
    );
    assert!(reason("version").contains("protocol version 99"), "{text}");
    assert!(
        reason("order").contains("first request must be `track`"),
        "{text}"
    );
    // Garbage: the daemon just closes the connection.
    assert!(text.contains("garbage: ''"), "{text}");
    // None of those became a run of the node.
    let (st, body) = crate::serve_api::get_raw(&node.svc.addr, "/health", "");
    assert_eq!(st, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["node_tracer"]["active_runs"], 0, "{health}");
}

#[test]
fn sixteen_concurrent_user_runs_share_one_set_of_programs() {
    let Some(node) = Node::start(
        "sixteen_concurrent_user_runs_share_one_set_of_programs",
        "node-16",
    ) else {
        return;
    };
    test_user("denet-alice");
    test_user("denet-bob");
    let before = links("sched_process_fork");
    assert_eq!(
        links("sys_enter"),
        0,
        "no syscall hook while no run asks for one"
    );
    let node = std::sync::Arc::new(node);
    // Each run forks its own number of children with its own marker in argv.
    let runs: Vec<_> = (0..16)
        .map(|i| {
            let node = node.clone();
            std::thread::spawn(move || {
                let user = if i % 2 == 0 { "denet-alice" } else { "denet-bob" };
                let n = 40 + i;
                let script = format!(
                    "i=0; while [ $i -lt {n} ]; do /bin/echo run-{i}-marker > /dev/null; i=$((i+1)); done; sleep 2"
                );
                let files: &[&str] = if i == 3 { &["--files"] } else { &[] };
                let (t, _) = node.run_as(user, files, &["sh", "-c", &script]);
                (i, n, t)
            })
        })
        .collect();
    // While they run: the node's programs, attached once, and the syscall hooks
    // attached once, for the one run that asked for files.
    let until = Instant::now() + Duration::from_secs(10);
    while links("sys_enter") == 0 {
        assert!(
            Instant::now() < until,
            "the --files run never attached the hooks"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(links("sys_enter"), 1);
    assert_eq!(
        links("sched_process_fork"),
        before,
        "programs attached per run"
    );
    assert_eq!(before, 1);
    for r in runs {
        let (i, n, t) = r.join().unwrap();
        assert_eq!(t.exit_code(), 0, "run {i}: {}", t.stderr);
        assert_exact_through_the_node(&t);
        // Exactly its own processes: its echoes, its shell, its sleep; no one else's.
        let echoes = t.processes_named("/bin/echo");
        assert_eq!(echoes.len() as u32, n, "run {i}");
        for e in &echoes {
            assert_eq!(e["argv"][1], format!("run-{i}-marker"), "run {i}: {e}");
        }
        assert_eq!(t.processes().len() as u32, n + 2, "run {i}");
        let pids: HashSet<u64> = t.processes().iter().map(|p| u(&p["pid"])).collect();
        let agent = u(&t.header()["agent_pid"]);
        for p in t.processes() {
            assert!(
                pids.contains(&u(&p["ppid"])) || u(&p["ppid"]) == agent,
                "run {i}: {p}"
            );
        }
    }
    // The one run with --files is over: the hooks are gone again.
    assert_eq!(links("sys_enter"), 0);
    assert_eq!(links("sched_process_fork"), 1);
}

#[test]
fn a_killed_node_daemon_ends_user_runs_clearly_and_the_next_one_serves() {
    let Some(mut node) = Node::start(
        "a_killed_node_daemon_ends_user_runs_clearly_and_the_next_one_serves",
        "node-kill",
    ) else {
        return;
    };
    test_user("denet-alice");
    let node_ref = &node;
    let (t, _) = std::thread::scope(|s| {
        let run = s.spawn(|| {
            node_ref.run_as(
                "denet-alice",
                &[],
                &["sh", "-c", "/bin/true; sleep 1; /bin/true; sleep 1; exit 3"],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: signalling the service process this test started.
        unsafe { libc::kill(node_ref.svc.pid() as i32, libc::SIGKILL) };
        run.join().unwrap()
    });
    // The run ends as the command did, its trace readable and saying what happened.
    assert_eq!(t.exit_code(), 3, "{}", t.stderr);
    let s = t.summary();
    assert!(
        s["tracer_error"]
            .as_str()
            .is_some_and(|e| e.contains("node tracer went away")),
        "{s}"
    );
    assert_eq!(s["exit_code"], 3);
    // The first /bin/true ended while the daemon lived: exact. The root is followed
    // from /proc after.
    assert!(
        t.processes()
            .iter()
            .any(|p| p["argv"][0] == "/bin/true" && p["source"] == "ebpf"),
        "{:?}",
        t.processes()
    );
    assert!(t.stderr.contains("node tracer went away"), "{}", t.stderr);

    // A new daemon on the same sockets serves the next run.
    node.svc = Svc::start(&node.dir.join("data"), &[]);
    let (t, _) = node.run_as("denet-alice", &[], &["sh", "-c", "/bin/true"]);
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    assert_exact_through_the_node(&t);
    assert_eq!(t.processes().len(), 2);
}

#[test]
fn file_capabilities_let_a_user_load_the_programs_without_root() {
    if !ebpf_ready("file_capabilities_let_a_user_load_the_programs_without_root") {
        return;
    }
    test_user("denet-alice");
    let dir = scratch_dir("filecaps");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bin = dir.join("denet-agent");
    std::fs::copy(agent_bin(), &bin).unwrap();
    let st = Command::new("setcap")
        .args(["cap_bpf,cap_perfmon+ep"])
        .arg(&bin)
        .status()
        .expect("run setcap");
    assert!(st.success());
    let out = dir.join("caps.jsonl");
    let output = Command::new("runuser")
        .args(["-u", "denet-alice", "--"])
        .arg(&bin)
        .args(["run", "--standalone", "--require-ebpf", "-o"])
        .arg(&out)
        .args([
            "--",
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let t = Trace {
        status: output.status,
        stderr: stderr.into_owned(),
        records: parse_jsonl(&std::fs::read_to_string(&out).unwrap()),
    };
    assert_eq!(t.header()["tracer"], "own", "{}", t.stderr);
    assert_eq!(t.summary()["lost_events"], 0);
    // No cgroup of its own for a user without the daemon: the one it is in is read
    // (and said to be somebody else's), never changed.
    let cg = &t.header()["cgroup"];
    assert_eq!(cg["own"], false, "{cg}");
    assert!(t.header()["cgroup_unavailable_reason"].is_string());
    assert!(t.summary()["memory_peak_bytes"].is_u64());
    assert_eq!(t.processes_named("/bin/true").len(), 200);
    // A user's standalone run cannot make a cgroup: asked for limits, it refuses.
    let output = Command::new("runuser")
        .args(["-u", "denet-alice", "--"])
        .arg(&bin)
        .args(["run", "--standalone", "--memory-limit", "1G", "-o"])
        .arg(dir.join("limits.jsonl"))
        .args(["--", "true"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("need a cgroup"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Without the capabilities the same user gets no eBPF (and --require-ebpf fails).
    let output = Command::new("runuser")
        .args(["-u", "denet-alice", "--"])
        .arg(agent_bin())
        .args(["run", "--standalone", "--require-ebpf", "-o"])
        .arg(dir.join("nocaps.jsonl"))
        .args(["--", "true"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cap_bpf,cap_perfmon"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Debian package `cargo xtask dist` built (scripts/test.sh builds it first and
/// sets DENET_DIST_DIR); `None` outside CI when it is missing.
fn dist_package(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DENET_DIST_DIR").map(PathBuf::from);
    let deb = dir.and_then(|d| {
        std::fs::read_dir(d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
    });
    if deb.is_none() {
        if crate::helpers::in_ci() {
            panic!("{test}: no .deb in DENET_DIST_DIR (scripts/test.sh runs `cargo xtask dist`)");
        }
        eprintln!("skipped {test}: no package (run `cargo xtask dist`, set DENET_DIST_DIR)");
    }
    deb
}

/// Removes the package and stops its daemon, also when the test fails half-way.
struct Installed {
    daemon: Option<std::process::Child>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("dpkg")
            .args(["--purge", "denet-agent"])
            .output();
    }
}

#[test]
fn the_debian_package_installs_and_its_daemon_serves_a_user() {
    let test = "the_debian_package_installs_and_its_daemon_serves_a_user";
    if !ebpf_ready(test) {
        return;
    }
    let Some(deb) = dist_package(test) else {
        return;
    };
    test_user("denet-alice");
    let work = scratch_dir("pkg");
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = Command::new("dpkg").arg("-i").arg(&deb).output().unwrap();
    let mut installed = Installed { daemon: None };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/denet-agent.service").unwrap();
    // No systemd here: start what the unit starts.
    let exec: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart in the unit")
        .split_whitespace()
        .collect();
    assert_eq!(exec[0], "/usr/bin/denet-agent");
    let mut daemon = Command::new(exec[0])
        .args(&exec[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    installed.daemon = Some(daemon);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut log = String::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the daemon exited: {log}"))
            .unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening on unix:/run/denet-agent/agent.sock") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(
        log.contains("node tracer on unix:/run/denet-agent/tracer.sock"),
        "{log}"
    );

    // An ordinary user's run, with the installed binary and its defaults.
    let trace = work.join("pkg.jsonl");
    let out = Command::new("runuser")
        .args([
            "-u",
            "denet-alice",
            "--",
            "/usr/bin/denet-agent",
            "run",
            "-o",
        ])
        .arg(&trace)
        .args(["--", "sh", "-c", "/bin/true; /bin/true"])
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Trace {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        records: parse_jsonl(&std::fs::read_to_string(&trace).unwrap()),
    };
    assert_exact_through_the_node(&t);
    assert_eq!(t.processes_named("/bin/true").len(), 2);

    // And a job, through the installed client's default socket, run as the user.
    let w = work.to_string_lossy().into_owned();
    let jobs = |args: &[&str]| {
        let mut all = vec!["/usr/bin/denet-agent", "jobs"];
        all.extend_from_slice(args);
        let out = Command::new("runuser")
            .args(["-u", "denet-alice", "--"])
            .args(&all)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, id, err) = jobs(&["spawn", "--name", "pkg", "--cwd", &w, "--", "id", "-un"]);
    assert_eq!(code, Some(0), "{err}");
    let id = id.trim().to_string();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, show, _) = jobs(&["show", "--json", &id]);
        if show.contains("\"status\": \"succeeded\"") {
            break;
        }
        assert!(Instant::now() < until, "{show}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, logs, _) = jobs(&["logs", &id]);
    assert_eq!(logs.trim(), "denet-alice");

    // Stopped cleanly; removed without a trace.
    let mut daemon = installed.daemon.take().unwrap();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    assert!(!Path::new("/run/denet-agent/tracer.sock").exists());
    drop(installed);
    assert!(!Path::new("/usr/bin/denet-agent").exists());
}
