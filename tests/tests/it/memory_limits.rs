//! A cgroup per run: the tree's exact memory peak, the limits a run asks for, and
//! OOM kills named (the kernel's `mark_victim`, confirmed by the cgroup's own OOM
//! counter). cgroup v1 on this machine kind, v2 in the guests of the kernel matrix
//! (`cargo xtask kernel-test`); root (the run makes its cgroup).

use serde_json::Value;

use crate::helpers::{
    agent_bin, cgroup_version, ebpf_ready, in_guest, run_agent, u, Trace, WORKLOAD,
};

fn summary_u(t: &Trace, key: &str) -> u64 {
    u(&t.summary()[key])
}

#[test]
fn a_run_over_its_memory_limit_names_the_oom_victim() {
    if !ebpf_ready("a_run_over_its_memory_limit_names_the_oom_victim") {
        return;
    }
    let t = run_agent(
        &["--memory-limit", "100M"],
        &[
            "sh",
            "-c",
            &format!("{WORKLOAD} alloc 300 50; echo status=$?"),
        ],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let h = t.header();
    let cg = &h["cgroup"];
    assert_eq!(cg["memory_limit_bytes"], 100 << 20, "{h}");
    assert_eq!(cg["version"], cgroup_version(), "{h}");
    let path = cg["path"].as_str().unwrap();
    assert!(
        !std::path::Path::new(path).exists(),
        "the cgroup is removed: {path}"
    );
    let s = t.summary();
    assert_eq!(s["oom_kills"], 1, "{s}");
    assert_eq!(s["oom_scope"], "run_limit", "{s}");
    let victim = &s["oom_victims"][0];
    assert_eq!(victim["argv"][1], "alloc", "{s}");
    // Chosen with about the limit resident (it was touching 300 MiB; RSS also counts
    // the program's mapped files, which the cgroup may have charged elsewhere).
    let rss = u(&victim["rss_kb"]) as f64;
    assert!((80.0 * 1024.0..=110.0 * 1024.0).contains(&rss), "{victim}");
    assert_eq!(summary_u(&t, "memory_limit_bytes"), 100 << 20);
    // The cgroup's peak is the limit (page cache included), within 2%.
    let peak = summary_u(&t, "memory_peak_bytes") as f64;
    assert!(
        peak >= 0.98 * (100 << 20) as f64 && peak <= (100 << 20) as f64,
        "{s}"
    );
    assert!(s["memory_peak_percent"].as_f64().unwrap() >= 98.0, "{s}");
    // The records say who it was, by the kernel's SIGKILL, and who it was not.
    let procs = t.processes();
    let w = procs.iter().find(|p| p["argv"][1] == "alloc").unwrap();
    assert_eq!(
        (&w["oom_killed"], &w["signal"]),
        (&Value::Bool(true), &Value::from(9))
    );
    assert_eq!(u(&w["pid"]), u(&victim["pid"]));
    let sh = t.root();
    assert_eq!(sh["oom_killed"], false);
    assert_eq!(s["pids_peak"], 2, "{s}");
}

#[test]
fn the_memory_peak_of_a_known_allocation_without_a_limit() {
    if !ebpf_ready("the_memory_peak_of_a_known_allocation_without_a_limit") {
        return;
    }
    let t = run_agent(
        &[],
        &["sh", "-c", &format!("{WORKLOAD} alloc 256 50; true")],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let s = t.summary();
    assert_eq!(s["memory_limit_bytes"], Value::Null);
    assert_eq!(s["memory_peak_percent"], Value::Null);
    assert_eq!(
        (&s["oom_kills"], &s["oom_scope"]),
        (&Value::from(0), &Value::Null)
    );
    // 256 MiB touched, plus the programs' own pages and page cache: at most 32 MiB more.
    let peak = summary_u(&t, "memory_peak_bytes");
    assert!(
        (256 << 20..(256 + 32) << 20).contains(&peak),
        "memory_peak_bytes {peak}"
    );
    // The cgroup's CPU covers the tree's (within 10 ms: the agent's own accounting
    // and the kernel's tick rounding differ).
    let tree = summary_u(&t, "cpu_user_ns") + summary_u(&t, "cpu_sys_ns");
    let cg = summary_u(&t, "cgroup_cpu_ns");
    assert!(cg + 10_000_000 >= tree, "cgroup {cg} ns, tree {tree} ns");
    assert!(t.processes().iter().all(|p| p["oom_killed"] == false));
    // The cgroup's block I/O counts are there beside the per-process ones.
    assert!(
        s["cgroup_blk_read_bytes"].is_u64() && s["cgroup_blk_write_bytes"].is_u64(),
        "{s}"
    );
    assert_eq!(t.header()["cgroup"]["own"], true);
}

#[test]
fn max_pids_and_cpus_are_enforced() {
    if !ebpf_ready("max_pids_and_cpus_are_enforced") {
        return;
    }
    // Eight background sleeps, but the cgroup holds at most 4 tasks: sh and 3.
    let t = run_agent(
        &["--max-pids", "4"],
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8; do sleep 0.5 & done 2>/dev/null; wait; true",
        ],
    );
    assert_eq!(t.header()["cgroup"]["max_pids"], 4);
    let sleeps = t.processes_named("sleep").len();
    assert_eq!(sleeps, 3, "{:?}", t.processes());
    assert!(u(&t.summary()["pids_peak"]) <= 4);

    // A fork storm of 200 against --max-pids 20: forks fail past 20 tasks, nothing
    // escapes (every process the kernel saw is in the trace, at most 20 at once),
    // and the run ends with its summary.
    let t = run_agent(
        &["--max-pids", "20"],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do sleep 1 & i=$((i+1)); done 2>/dev/null; wait; true",
        ],
    );
    // dash gives up on its first failed fork ("Cannot fork", status 2).
    assert_eq!(t.summary()["exit_code"], 2, "{}", t.stderr);
    assert_eq!(t.processes_named("sleep").len(), 19, "sh and 19 sleeps");
    assert!(u(&t.summary()["pids_peak"]) <= 20, "{}", t.summary());
    assert_eq!(t.summary()["incomplete_processes"], 0);

    // Half a CPU: a 1 s busy loop gets about 1 s of CPU over about 2 s of wall time.
    // CPU: the 1 s burned, less tick rounding, plus start-up (up to 0.6 s under the
    // kernel matrix's emulation).
    let t = run_agent(&["--cpus", "0.5"], &[WORKLOAD, "burn", "1000"]);
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let s = t.summary();
    let cpu = (u(&s["cpu_user_ns"]) + u(&s["cpu_sys_ns"])) as f64;
    let wall = u(&s["wall_ns"]) as f64;
    assert!((0.95e9..1.6e9).contains(&cpu), "cpu {cpu} ns");
    assert!(
        (0.35..=0.6).contains(&(cpu / wall)),
        "cpu {cpu} over wall {wall}"
    );
}

/// Two children hold 100 MiB each at the same time, then a third holds 150 MiB
/// alone: the cgroup's peak is the concurrent 200 MiB (plus the programs' own pages
/// and page cache), which no per-process peak (at most 150 MiB) could tell.
#[test]
fn the_concurrent_peak_of_the_tree_is_exact() {
    if !ebpf_ready("the_concurrent_peak_of_the_tree_is_exact") {
        return;
    }
    let t = run_agent(
        &[],
        &[
            "sh",
            "-c",
            &format!(
                "{WORKLOAD} alloc 100 1500 & {WORKLOAD} alloc 100 1500 & wait; {WORKLOAD} alloc 150 200"
            ),
        ],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let peak = summary_u(&t, "memory_peak_bytes") as f64;
    let mib = (1u64 << 20) as f64;
    // Within 5% of 200 MiB, plus at most 16 MiB of baseline (binaries, page cache).
    assert!(
        peak >= 200.0 * mib && peak <= 210.0 * mib + 16.0 * mib,
        "memory_peak_bytes {} MiB",
        peak / mib
    );
    let largest = summary_u(&t, "max_process_peak_rss_kb") as f64 * 1024.0;
    assert!(
        largest < 160.0 * mib,
        "largest process {} MiB",
        largest / mib
    );
}

/// `--oom-exit-code N`: the tool turns the kill into exit 1; the agent exits N, and
/// its summary line says why.
#[test]
fn oom_exit_code_replaces_the_tools_status() {
    if !ebpf_ready("oom_exit_code_replaces_the_tools_status") {
        return;
    }
    let cmd = format!("{WORKLOAD} alloc 300 50 || exit 1");
    let t = run_agent(&["--memory-limit", "100M"], &["sh", "-c", &cmd]);
    assert_eq!(t.exit_code(), 1, "{}", t.stderr);
    assert!(
        t.stderr
            .contains("1 process killed by the OOM killer (limit 100 MiB reached)"),
        "{}",
        t.stderr
    );
    let t = run_agent(
        &["--memory-limit", "100M", "--oom-exit-code", "137"],
        &["sh", "-c", &cmd],
    );
    assert_eq!(t.exit_code(), 137, "{}", t.stderr);
    assert_eq!(
        t.summary()["exit_code"],
        1,
        "the command's own status is kept"
    );
    // Without a kill, the command's status stands.
    let t = run_agent(&["--oom-exit-code", "137"], &["sh", "-c", "exit 3"]);
    assert_eq!(t.exit_code(), 3, "{}", t.stderr);
    assert!(!t.stderr.contains("OOM killer"), "{}", t.stderr);
}

#[test]
fn bad_limits_are_refused() {
    let agent = agent_bin();
    for (args, says) in [
        (&["--memory-limit", "lots"][..], "unknown unit"),
        (&["--memory-limit", "100k"][..], "at least 1 MiB"),
        (&["--cpus", "0"][..], "--cpus must be"),
        (&["--cpus", "nan"][..], "--cpus must be"),
        (&["--max-pids", "0"][..], "max-pids"),
    ] {
        let out = std::process::Command::new(&agent)
            .arg("run")
            .args(args)
            .args(["-o", "/dev/null", "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The cgroup v2 root, with memory and pids enabled for its children; None (and a
/// message) where runs use cgroup v1, as on this machine kind.
fn v2_root(test: &str) -> Option<&'static std::path::Path> {
    if cgroup_version() != 2 {
        eprintln!(
            "skipped {test}: cgroup v1 here; it runs in the cgroup v2 guests of \
             cargo xtask kernel-test"
        );
        return None;
    }
    let root = std::path::Path::new("/sys/fs/cgroup");
    std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids").unwrap();
    Some(root)
}

/// `denet-agent run --standalone ARGS -- sh -c CMD` started inside `cgroup`: the
/// agent enters it itself, so the cgroup holds a process of its own. Returns the
/// agent's output and the trace's records (none when it wrote no trace).
fn run_in_cgroup(
    cgroup: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
    cmd: &str,
) -> (std::process::Output, Vec<Value>) {
    let out = dir.join("trace.jsonl");
    let _ = std::fs::remove_file(&out);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} run --standalone {} -o {} -- {cmd}",
        cgroup.display(),
        agent_bin().display(),
        args.join(" "),
        out.display()
    );
    let output = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    (output, crate::helpers::parse_jsonl(&text))
}

/// Removes a cgroup the test made; the kernel lets go of it a moment after its last
/// task is reaped.
fn remove_cgroup(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir(dir) {
        assert!(
            std::time::Instant::now() < deadline,
            "removing {dir:?}: {e}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// cgroup v2 gives controllers only to the children of a cgroup without processes:
/// an agent inside a manager's cgroup that holds processes (a login scope, a Slurm
/// task) reads that cgroup, says why in the header, and refuses limits it cannot set.
#[test]
fn a_v2_cgroup_with_processes_is_read_not_fought() {
    if !ebpf_ready("a_v2_cgroup_with_processes_is_read_not_fought") {
        return;
    }
    let Some(root) = v2_root("a_v2_cgroup_with_processes_is_read_not_fought") else {
        return;
    };
    let managed = root.join(format!("denet-managed-{}", std::process::id()));
    std::fs::create_dir(&managed).unwrap();
    let dir = crate::helpers::scratch_dir("managed");
    let alloc = format!("{WORKLOAD} alloc 64 50");
    let (status, records) = run_in_cgroup(&managed, &dir, &[], &alloc);
    assert!(status.status.success(), "{status:?}");
    let h = &records[0];
    let cg = &h["cgroup"];
    assert_eq!(cg["own"], false, "{h}");
    assert_eq!(cg["version"], 2, "{h}");
    assert_eq!(cg["path"], managed.display().to_string(), "{h}");
    let why = h["cgroup_unavailable_reason"].as_str().unwrap();
    assert!(why.contains("holds processes"), "{why}");
    // Still read: the 64 MiB the command touched is within the cgroup's peak.
    let s = records.iter().find(|r| r["kind"] == "summary").unwrap();
    assert!(u(&s["memory_peak_bytes"]) >= 64 << 20, "{s}");
    // A limit it cannot set is refused, not ignored.
    let (status, _) = run_in_cgroup(&managed, &dir, &["--memory-limit", "100M"], &alloc);
    assert_eq!(status.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("need a cgroup") && stderr.contains("holds processes"),
        "{stderr}"
    );
    // The agent's cgroup is left as it was: no child made in it.
    let children: Vec<_> = std::fs::read_dir(&managed)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(children.is_empty(), "{children:?}");
    remove_cgroup(&managed);
    let _ = std::fs::remove_dir_all(&dir);
}

/// cgroup v2 where the agent's cgroup offers no memory controller (its parent did not
/// enable it): a clear reason in the header, and the run goes on without a cgroup.
#[test]
fn a_v2_cgroup_without_the_memory_controller_is_said() {
    if !ebpf_ready("a_v2_cgroup_without_the_memory_controller_is_said") {
        return;
    }
    let Some(root) = v2_root("a_v2_cgroup_without_the_memory_controller_is_said") else {
        return;
    };
    // `outer` enables nothing for its children, so `inner` has no controllers.
    let outer = root.join(format!("denet-nomem-{}", std::process::id()));
    let inner = outer.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    let dir = crate::helpers::scratch_dir("nomem");
    let (status, records) = run_in_cgroup(&inner, &dir, &[], "/bin/true");
    assert!(status.status.success(), "{status:?}");
    let h = &records[0];
    assert!(h["cgroup"].is_null(), "{h}");
    let why = h["cgroup_unavailable_reason"].as_str().unwrap();
    assert!(why.contains("memory controller is not available"), "{why}");
    let s = records.iter().find(|r| r["kind"] == "summary").unwrap();
    assert_eq!(s["exit_code"], 0, "{s}");
    assert!(s["memory_peak_bytes"].is_null(), "{s}");
    remove_cgroup(&inner);
    remove_cgroup(&outer);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent that must report an OOM kill is the OOM killer's last choice, and the
/// command keeps the score its caller had: it gains no protection from the agent.
#[test]
fn the_agent_shields_itself_from_the_oom_killer_but_not_the_command() {
    if !ebpf_ready("the_agent_shields_itself_from_the_oom_killer_but_not_the_command") {
        return;
    }
    let ours = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap();
    let dir = crate::helpers::scratch_dir("oomadj");
    let out = std::process::Command::new(agent_bin())
        .args(["run", "--standalone", "-o"])
        .arg(dir.join("t.jsonl"))
        .args([
            "--",
            "sh",
            "-c",
            // $PPID of the shell is the agent; cat is the command's descendant.
            "cat /proc/self/oom_score_adj /proc/$PPID/oom_score_adj",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Lowering a score takes CAP_SYS_RESOURCE, which the containers of this machine
    // kind withhold even from root; the kernel matrix's guests have it.
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let agent = if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        "-999"
    } else {
        eprintln!("no CAP_SYS_RESOURCE here: the agent keeps the caller's score");
        ours.trim()
    };
    if in_guest() {
        assert_eq!(agent, "-999", "the guests' root has CAP_SYS_RESOURCE");
    }
    assert_eq!(lines, [ours.trim(), agent], "command's, then agent's score");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bit of CAP_SYS_RESOURCE in the capability sets (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;

/// The machine runs out of memory (no limit on the run): the victim is named and the
/// scope says it was not the run's own limit. Only where the machine is the test's
/// own: a guest of the kernel matrix, with 2 GiB.
#[test]
fn a_machine_wide_oom_is_told_from_the_runs_limit() {
    if !ebpf_ready("a_machine_wide_oom_is_told_from_the_runs_limit") {
        return;
    }
    if !in_guest() {
        eprintln!(
            "skipped a_machine_wide_oom_is_told_from_the_runs_limit: it exhausts the \
             machine's memory, so it runs only in the guests of cargo xtask kernel-test"
        );
        return;
    }
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024;
    let t = run_agent(
        &[],
        &[
            "sh",
            "-c",
            // Two allocations of 60% of the machine's memory at once: the kernel
            // grants each (more than the memory would be refused at once), and
            // touching both runs the machine out. Usually one is killed and the
            // other then fits; sometimes the kernel takes both. (One allocation just
            // under the memory was not always enough: the kernel found room for it
            // by reclaiming everything else.)
            &format!(
                "{WORKLOAD} alloc {mib} 50 & {WORKLOAD} alloc {mib} 50; wait",
                mib = total_mib * 6 / 10
            ),
        ],
    );
    assert_eq!(t.exit_code(), 0, "{}", t.stderr);
    let s = t.summary();
    let kills = u(&s["oom_kills"]);
    assert!((1..=2).contains(&kills), "{s}");
    assert_eq!(s["oom_scope"], "machine", "{s}");
    assert_eq!(s["memory_limit_bytes"], Value::Null, "{s}");
    let victims = s["oom_victims"].as_array().unwrap();
    assert_eq!(victims.len() as u64, kills, "{s}");
    assert!(victims.iter().all(|v| v["argv"][1] == "alloc"), "{s}");
    assert!(
        t.stderr.contains("ran out of memory"),
        "the summary line says who ran out: {}",
        t.stderr
    );
    let allocs: Vec<&Value> = t
        .processes()
        .into_iter()
        .filter(|p| p["argv"][1] == "alloc")
        .collect();
    assert_eq!(allocs.len(), 2, "{s}");
    // The records say the same as the summary: exactly the victims were killed.
    let mut killed: Vec<u64> = allocs
        .iter()
        .filter(|p| p["oom_killed"] == true)
        .map(|p| u(&p["pid"]))
        .collect();
    let mut named: Vec<u64> = victims.iter().map(|v| u(&v["pid"])).collect();
    killed.sort_unstable();
    named.sort_unstable();
    assert_eq!(killed, named, "{allocs:?}");
}
