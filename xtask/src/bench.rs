//! `cargo xtask bench`: wall time of workloads bare vs under the agent, interleaved,
//! plus the hold time and the agent's own cost as recorded in each trace's summary.
//! Prints a Markdown report (docs/benchmarks.md collects the results).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

pub struct BenchOptions {
    pub runs: usize,
    pub quick: bool,
    /// Which part: "core", "depth", "serve", "cost", "beside", "node" or "all".
    pub suite: String,
}

struct Workload {
    name: &'static str,
    cmd: Vec<String>,
    target_ratio: f64,
}

pub(crate) struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub(crate) fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stats {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

/// `denet-agent run --require-ebpf -o TRACE -- CMD...`
fn traced_argv(agent: &Path, trace: &Path, cmd: &[String]) -> Vec<String> {
    traced_argv_with(agent, trace, &[], cmd)
}

/// `denet-agent run --require-ebpf FLAGS -o TRACE -- CMD...`; `--standalone` (the
/// run's own programs) unless FLAGS name a node daemon's socket.
pub(crate) fn traced_argv_with(
    agent: &Path,
    trace: &Path,
    flags: &[&str],
    cmd: &[String],
) -> Vec<String> {
    let standalone = (!flags.contains(&"--node-socket")).then(|| "--standalone".to_string());
    [
        agent.to_string_lossy().into_owned(),
        "run".into(),
        "--require-ebpf".into(),
    ]
    .into_iter()
    .chain(standalone)
    .chain(flags.iter().map(|f| f.to_string()))
    .chain([
        "-o".into(),
        trace.to_string_lossy().into_owned(),
        "--".into(),
    ])
    .chain(cmd.iter().cloned())
    .collect()
}

pub(crate) fn run_quiet(cmd: &[String]) -> Result<f64> {
    Ok(run_timed(cmd)?.0)
}

/// Runs `cmd` quietly: (wall seconds, CPU seconds of the command and its children,
/// user + system, from wait4's rusage). CPU time is the steadier measure on a shared
/// machine: it does not count time the command spent waiting for a CPU.
pub(crate) fn run_timed(cmd: &[String]) -> Result<(f64, f64)> {
    let start = Instant::now();
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is a valid value for it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    if r < 0 {
        bail!("waiting for {cmd:?}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed: wait status {status}");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((secs, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

/// Numbers read back from a trace: (hold ms, agent CPU ms, agent peak RSS KiB,
/// command wall s, lost events).
pub(crate) fn trace_numbers(path: &Path) -> Result<(f64, f64, f64, f64, f64)> {
    let text = std::fs::read_to_string(path)?;
    let field = |line: &str, key: &str| -> f64 {
        let pat = format!("\"{key}\":");
        line.find(&pat)
            .map(|i| &line[i + pat.len()..])
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let header = text.lines().next().unwrap_or_default();
    let summary = text.lines().last().unwrap_or_default();
    if !summary.contains("\"kind\":\"summary\"") {
        bail!("{} has no summary", path.display());
    }
    Ok((
        field(header, "hold_ns") / 1e6,
        (field(summary, "agent_cpu_user_ns") + field(summary, "agent_cpu_sys_ns")) / 1e6,
        field(summary, "agent_peak_rss_kb"),
        field(summary, "wall_ns") / 1e9,
        field(summary, "lost_events"),
    ))
}

pub fn run(root: &Path, opts: &BenchOptions) -> Result<()> {
    let (agent, workload) = build(root)?;
    if opts.suite == "core" || opts.suite == "all" {
        core(&agent, &workload, opts)?;
    }
    if opts.suite == "depth" || opts.suite == "all" {
        depth(&agent, &workload, opts)?;
    }
    if opts.suite == "serve" || opts.suite == "all" {
        serve(&agent, opts)?;
    }
    if ["cost", "beside", "all"].contains(&opts.suite.as_str()) {
        crate::cost::run(root, &agent, opts)?;
    }
    if ["node", "all"].contains(&opts.suite.as_str()) {
        crate::node::run(&agent, opts)?;
    }
    Ok(())
}

fn build(root: &Path) -> Result<(std::path::PathBuf, String)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (the agent must run with eBPF)");
    }
    let status = Command::new("cargo")
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "denet-agent",
            "-p",
            "denet-tests",
            "--bins",
        ])
        .status()?;
    if !status.success() {
        bail!("build failed");
    }
    let agent = root.join("target/release/denet-agent");
    let workload = root
        .join("target/release/workload")
        .to_string_lossy()
        .into_owned();
    Ok((agent, workload))
}

fn core(agent: &Path, workload: &str, opts: &BenchOptions) -> Result<()> {
    let loops = if opts.quick { 200 } else { 2000 };
    let spin = if opts.quick {
        "200000000"
    } else {
        "6000000000"
    };
    let workloads = vec![
        Workload {
            name: "fork-heavy",
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!("i=0; while [ $i -lt {loops} ]; do /bin/true; i=$((i+1)); done"),
            ],
            target_ratio: 1.10,
        },
        Workload {
            name: "cpu-bound",
            cmd: vec![workload.to_string(), "spin".into(), spin.into()],
            target_ratio: 1.01,
        },
    ];
    let trace = std::env::temp_dir().join(format!("denet-bench-{}.jsonl", std::process::id()));
    println!("## denet-agent run overhead\n");
    println!(
        "{} interleaved runs per workload (bare and traced alternate, order flipped every run); \
         times are whole-command wall seconds, the traced one including the agent's start-up \
         (eBPF load and attach) and shutdown.\n",
        opts.runs
    );
    println!("| workload | bare median s (min-max) | traced median s (min-max) | ratio | target | traced command wall (summary) s | hold ms | agent CPU ms | agent peak RSS MiB | lost events |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for w in &workloads {
        let mut bare = Vec::new();
        let mut traced = Vec::new();
        let mut inner = Vec::new();
        let (mut holds, mut cpus, mut rss, mut lost) = (Vec::new(), Vec::new(), Vec::new(), 0.0);
        let traced_cmd = traced_argv(agent, &trace, &w.cmd);
        // Warm-up: page cache, binaries.
        run_quiet(&w.cmd)?;
        run_quiet(&traced_cmd)?;
        for i in 0..opts.runs {
            let mut one_traced = || -> Result<()> {
                traced.push(run_quiet(&traced_cmd)?);
                let (h, c, r, wall, l) = trace_numbers(&trace)?;
                holds.push(h);
                cpus.push(c);
                rss.push(r);
                inner.push(wall);
                lost += l;
                Ok(())
            };
            if i % 2 == 0 {
                bare.push(run_quiet(&w.cmd)?);
                one_traced()?;
            } else {
                one_traced()?;
                bare.push(run_quiet(&w.cmd)?);
            }
        }
        let (b, t, n) = (stats(bare), stats(traced), stats(inner));
        let (h, c, r) = (stats(holds), stats(cpus), stats(rss));
        println!(
            "| {} | {:.3} ({:.3}-{:.3}) | {:.3} ({:.3}-{:.3}) | {:.3}x | {:.2}x | {:.3} | {:.2} (max {:.2}) | {:.1} | {:.1} (max {:.1}) | {} |",
            w.name, b.median, b.min, b.max, t.median, t.min, t.max, t.median / b.median,
            w.target_ratio, n.median, h.median, h.max, c.median, r.median / 1024.0, r.max / 1024.0, lost
        );
    }
    let _ = std::fs::remove_file(&trace);
    println!();
    Ok(())
}

/// Everything on (scheduler, block, network, `--files --syscalls`) against bare,
/// `strace -f -c` and `perf trace -s`, interleaved per round.
fn depth(agent: &Path, workload: &str, opts: &BenchOptions) -> Result<()> {
    let count = if opts.quick { "200K" } else { "2M" };
    let rounds = if opts.quick { "20000" } else { "200000" };
    let loops = if opts.quick { 200 } else { 2000 };
    let workloads: Vec<(&str, Vec<String>)> = vec![
        (
            "syscall-heavy (dd bs=1)",
            [
                "dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=1",
                &format!("count={count}"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        (
            "context-switch-heavy (pipe ping-pong)",
            vec![workload.to_string(), "pingpong".into(), rounds.into()],
        ),
        (
            "fork-heavy",
            vec![
                "sh".into(),
                "-c".into(),
                format!("i=0; while [ $i -lt {loops} ]; do /bin/true; i=$((i+1)); done"),
            ],
        ),
    ];
    let trace =
        std::env::temp_dir().join(format!("denet-bench-depth-{}.jsonl", std::process::id()));
    let wrap = |prefix: &[&str], cmd: &[String]| -> Vec<String> {
        prefix
            .iter()
            .map(|s| s.to_string())
            .chain(cmd.iter().cloned())
            .collect()
    };
    let agent_s = agent.to_string_lossy().into_owned();
    let trace_s = trace.to_string_lossy().into_owned();
    println!("## Depth accounting overhead, everything on\n");
    println!(
        "{} rounds per workload; each round runs bare, denet-agent --files --syscalls, \
         `strace -f -c -o /dev/null` and `perf trace -s -o /dev/null` once, in that \
         order rotated by one each round. Medians of whole-command wall seconds.\n",
        opts.runs
    );
    println!("| workload | bare s | denet-agent s (ratio) | strace -f -c s (ratio) | perf trace -s s (ratio) |");
    println!("|---|---|---|---|---|");
    for (name, cmd) in &workloads {
        let modes: Vec<Vec<String>> = vec![
            cmd.clone(),
            wrap(
                &[
                    &agent_s,
                    "run",
                    "--require-ebpf",
                    "--files",
                    "--syscalls",
                    "-o",
                    &trace_s,
                    "--",
                ],
                cmd,
            ),
            wrap(&["strace", "-f", "-c", "-o", "/dev/null"], cmd),
            wrap(&["perf", "trace", "-s", "-o", "/dev/null"], cmd),
        ];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for m in &modes {
            run_quiet(m)?; // warm-up
        }
        for round in 0..opts.runs {
            for k in 0..modes.len() {
                let i = (k + round) % modes.len();
                times[i].push(run_quiet(&modes[i])?);
            }
        }
        let med: Vec<f64> = times.into_iter().map(|t| stats(t).median).collect();
        println!(
            "| {name} | {:.3} | {:.3} ({:.2}x) | {:.3} ({:.2}x) | {:.3} ({:.2}x) |",
            med[0],
            med[1],
            med[1] / med[0],
            med[2],
            med[2] / med[0],
            med[3],
            med[3] / med[0]
        );
    }
    let _ = std::fs::remove_file(&trace);
    Ok(())
}

fn vm_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{field} of {pid}"))
}

/// Issue 5: N short jobs submitted at once to `serve` (each a traced run), against
/// the same N run one after another with `denet-agent run`; the service's memory.
fn serve(agent: &Path, opts: &BenchOptions) -> Result<()> {
    use std::io::BufRead;
    let jobs: usize = if opts.quick { 50 } else { 200 };
    let dir = std::env::temp_dir().join(format!("denet-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(agent)
        .args(["serve", "--require-ebpf", "--socket"])
        .arg(dir.join("agent.sock"))
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting serve")?;
    let stderr = child.stderr.take().context("serve stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let server = loop {
        let line = lines.next().context("serve exited before listening")??;
        if let Some(addr) = line.split("listening on ").nth(1) {
            break addr.to_string();
        }
    };
    let pid = child.id();
    let rss_idle = vm_kb(pid, "VmRSS:")?;
    let started = Instant::now();
    let submitters: Vec<_> = (0..jobs)
        .map(|i| {
            let (agent, server) = (agent.to_path_buf(), server.clone());
            std::thread::spawn(move || {
                Command::new(agent)
                    .args([
                        "jobs",
                        "--server",
                        &server,
                        "spawn",
                        "--name",
                        &format!("b{i}"),
                        "--",
                        "true",
                    ])
                    .stdout(Stdio::null())
                    .status()
            })
        })
        .collect();
    for s in submitters {
        let st = s
            .join()
            .map_err(|_| anyhow::anyhow!("submitter panicked"))??;
        if !st.success() {
            bail!("a job submission failed: {st}");
        }
    }
    let submitted = started.elapsed().as_secs_f64();
    let rows = loop {
        let out = Command::new(agent)
            .args([
                "jobs", "--server", &server, "history", "--json", "--limit", "10000",
            ])
            .output()?;
        let n = String::from_utf8_lossy(&out.stdout)
            .matches("\"id\":")
            .count();
        if n >= jobs || started.elapsed().as_secs() > 600 {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let all_done = started.elapsed().as_secs_f64();
    let hwm = vm_kb(pid, "VmHWM:")?;
    // SAFETY: plain kill of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let trace = std::env::temp_dir().join("denet-bench-serve-run.jsonl");
    let seq_runs = jobs.min(50);
    let seq_started = Instant::now();
    for _ in 0..seq_runs {
        run_quiet(&traced_argv(agent, &trace, &["true".to_string()]))?;
    }
    let per_run = seq_started.elapsed().as_secs_f64() / seq_runs as f64;
    let _ = std::fs::remove_file(&trace);
    println!("\n### serve: {jobs} short jobs submitted at once\n");
    println!("| measure | value |\n|---|---|");
    println!("| jobs with a history row | {rows} of {jobs} |");
    println!("| all {jobs} submitted (parallel `jobs spawn`) | {submitted:.2} s |");
    println!(
        "| all {jobs} ended with their row | {all_done:.2} s ({:.1} jobs/s) |",
        jobs as f64 / all_done
    );
    println!("| one `denet-agent run true`, sequential ({seq_runs} runs) | {:.0} ms each, {:.1} runs/s |", per_run * 1e3, 1.0 / per_run);
    println!("| service RSS idle / peak (VmHWM) | {rss_idle} KiB / {hwm} KiB |");
    if rows < jobs {
        bail!("{} jobs have no history row", jobs - rows);
    }
    Ok(())
}
