//! `cargo xtask kernel-test`: the root eBPF integration tests on Debian's stock
//! kernels, each booted under QEMU with the host's root shared read-only, so the
//! guest runs the very binaries the host suite just tested. See docs/kernels.md.

mod fetch;
mod guest;
mod initramfs;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// The kernel series of the matrix: Debian 12's own and its backported one.
pub const MATRIX: &[&str] = &["6.1", "6.12"];

/// The tests that prove the kernel side, by their names in the `it` binary. None of
/// them asserts on time: guest code runs 5-20x slower than the host.
const GUEST_TESTS: &[&str] = &[
    "run_ebpf::shell_loop_of_1000_children_all_recorded",
    "run_ebpf::exit_codes_and_signals_of_grandchildren",
    "run_ebpf::agent_exit_status_is_128_plus_signal",
    "run_ebpf::cpu_time_matches_wait4_rusage",
    "run_ebpf::peak_rss_of_a_256_mib_child",
    "run_ebpf::small_child_of_big_parent_has_its_own_peak",
    "run_ebpf::wchar_equals_bytes_written",
    "run_ebpf::unrelated_processes_leave_no_records",
    "run_ebpf::exec_event_has_argv_exe_and_truncation_flag",
    "run_ebpf::threads_are_not_processes_but_count",
    "depth_ebpf::written_file_has_its_path_and_bytes",
    "depth_ebpf::loopback_tcp_bytes_per_process",
    "depth_ebpf::files_and_syscalls_are_opt_in",
    "machine_cost::syscall_hooks_only_when_asked_for_and_as_one_pair",
    "memory_limits::a_run_over_its_memory_limit_names_the_oom_victim",
    "memory_limits::the_memory_peak_of_a_known_allocation_without_a_limit",
    "memory_limits::max_pids_and_cpus_are_enforced",
    "memory_limits::bad_limits_are_refused",
    "memory_limits::a_v2_cgroup_with_processes_is_read_not_fought",
    "memory_limits::a_v2_cgroup_without_the_memory_controller_is_said",
    "memory_limits::a_machine_wide_oom_is_told_from_the_runs_limit",
    "memory_limits::the_agent_shields_itself_from_the_oom_killer_but_not_the_command",
    "memory_limits::the_concurrent_peak_of_the_tree_is_exact",
    "memory_limits::oom_exit_code_replaces_the_tools_status",
    "kernel_hooks::the_header_names_each_features_hook",
];

/// How long one kernel's boot and tests may take before the guest is killed.
const GUEST_LIMIT: Duration = Duration::from_secs(40 * 60);

pub struct Options {
    /// Series to run (`6.1`, `6.12`); empty means the whole matrix.
    pub kernels: Vec<String>,
    /// Rounds of the cost measurement inside the guest.
    pub cost_runs: usize,
    /// A script to run instead of the tests.
    pub job: Option<PathBuf>,
}

fn cargo_build(root: &Path) -> Result<PathBuf> {
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["build", "--locked", "--release", "-p", "denet-agent"])
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("building the agent failed");
    }
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "test",
            "--locked",
            "--release",
            "-p",
            "denet-tests",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "building the integration tests failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "it")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo built no `it` test binary")
}

/// What one kernel showed.
struct Outcome {
    kernel: String,
    package: String,
    wall_s: f64,
    phases: String,
    header: serde_json::Value,
    tests: String,
    tests_ok: bool,
    cost: String,
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn rc(dir: &Path, name: &str) -> Option<i32> {
    read(dir, name).trim().parse().ok()
}

fn outcome(kernel: &fetch::Kernel, out: &Path, wall: Duration) -> Outcome {
    let header = read(out, "probe.jsonl")
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    let log = read(out, "tests.log");
    let tests = log
        .lines()
        .rfind(|l| l.starts_with("test result:"))
        .unwrap_or("no test result (see tests.log)")
        .to_owned();
    // Phase lengths from the guest's uptime marks.
    let marks: Vec<(String, f64)> = read(out, "times")
        .lines()
        .filter_map(|l| {
            let (name, t) = l.split_once(' ')?;
            Some((name.to_owned(), t.trim().parse().ok()?))
        })
        .collect();
    let phases = marks
        .windows(2)
        .map(|w| format!("{} {:.0} s", w[0].0, w[1].1 - w[0].1))
        .collect::<Vec<_>>()
        .join(", ");
    let boot = marks.first().map_or(0.0, |(_, t)| *t);
    Outcome {
        kernel: kernel.release.clone(),
        package: format!("{} {}", kernel.package, kernel.version),
        wall_s: wall.as_secs_f64(),
        phases: format!("boot {boot:.0} s (guest uptime), {phases}"),
        header,
        tests_ok: rc(out, "tests.rc") == Some(0) && rc(out, "rc") == Some(0),
        tests,
        cost: read(out, "cost.md"),
    }
}

fn report(outcomes: &[Outcome]) -> String {
    let mut md = String::from("## Kernel matrix (cargo xtask kernel-test)\n\n");
    for o in outcomes {
        let h = &o.header;
        md += &format!(
            "### {}\n\n- package: {}\n- wall time of boot and job: {:.0} s ({})\n\
             - eBPF: {}{}\n- hooks: {}\n- cgroup: {}{}\n- tests: {}\n\n{}\n",
            o.kernel,
            o.package,
            o.wall_s,
            o.phases,
            h["ebpf"],
            h["ebpf_unavailable_reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            h["kernel_hooks"],
            h["cgroup"],
            h["cgroup_unavailable_reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            o.tests,
            o.cost
        );
    }
    md
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let missing: Vec<&str> = ["qemu-system-x86_64", "busybox", "depmod"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool} || test -x /sbin/{tool}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "kernel-test needs {} (scripts/setup-tests.sh installs them)",
            missing.join(", ")
        );
        if ci {
            bail!(msg);
        }
        eprintln!("kernel-test: SKIPPED: {msg}");
        return Ok(());
    }
    let series: Vec<String> = if opts.kernels.is_empty() {
        MATRIX.iter().map(|s| s.to_string()).collect()
    } else {
        opts.kernels.clone()
    };
    let test_binary = if opts.job.is_some() {
        PathBuf::new()
    } else {
        cargo_build(root)?
    };
    let job = guest::Job {
        root: root.to_path_buf(),
        agent: root.join("target/release/denet-agent"),
        test_binary,
        tests: GUEST_TESTS.iter().map(|s| s.to_string()).collect(),
        xtask: std::env::current_exe().context("the xtask binary")?,
        cost_runs: opts.cost_runs,
        custom: match &opts.job {
            Some(p) => Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ),
            None => None,
        },
    };
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for s in &series {
        let kernel = fetch::kernel(root, s)?;
        let out = root.join("target/kernel-test").join(&kernel.release);
        eprintln!(
            "kernel-test: booting {} ({})",
            kernel.release, kernel.package
        );
        let wall = match guest::boot(&kernel, &job, &out, GUEST_LIMIT) {
            Ok(wall) => wall,
            Err(e) => {
                failed.push(format!("{}: {e:#}", kernel.release));
                continue;
            }
        };
        if job.custom.is_some() {
            eprintln!(
                "kernel-test: {} ran the script in {:.0} s",
                kernel.release,
                wall.as_secs_f64()
            );
            continue;
        }
        let o = outcome(&kernel, &out, wall);
        if !o.tests_ok {
            failed.push(format!(
                "{}: {} (logs in {})",
                o.kernel,
                o.tests,
                out.display()
            ));
        }
        outcomes.push(o);
    }
    if job.custom.is_some() {
        return Ok(());
    }
    let md = report(&outcomes);
    let path = root.join("target/kernel-test/report.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!("{md}");
    if !failed.is_empty() {
        bail!("kernel matrix failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}
