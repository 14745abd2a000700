//! `cargo xtask bench --suite cost`: what a run costs the rest of the machine and the
//! traced command, default flags against `--files --syscalls`: an untraced `dd bs=1`
//! beside N running agents, traced workloads against bare ones, the fixed cost of a
//! run, the agent's own CPU and memory, and each kernel program's calls and ns per
//! call from the kernel's BPF statistics.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench::{run_quiet, run_timed, stats, trace_numbers, traced_argv_with, BenchOptions};

const FULL: &[&str] = &["--files", "--syscalls"];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Agents tracing `sleep` in the background, released and attached.
pub(crate) struct Background {
    agents: Vec<Child>,
    dir: PathBuf,
}

impl Background {
    /// N agents with FLAGS (their own programs unless FLAGS name a node socket).
    pub(crate) fn start(agent: &Path, n: usize, flags: &[&str]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("denet-bench-bg-{}", std::process::id()));
        let standalone: &[&str] = if flags.contains(&"--node-socket") {
            &[]
        } else {
            &["--standalone"]
        };
        std::fs::create_dir_all(&dir)?;
        let mut agents = Vec::with_capacity(n);
        for i in 0..n {
            let out = dir.join(format!("{i}.jsonl"));
            let _ = std::fs::remove_file(&out);
            let child = Command::new(agent)
                .arg("run")
                .arg("--require-ebpf")
                .args(standalone)
                .args(flags)
                .arg("-o")
                .arg(&out)
                .args(["--", "sleep", "100000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a background agent")?;
            agents.push(child);
            // Released once the header is written (programs attached, sleep tracked).
            let deadline = Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&out).is_ok_and(|t| t.contains("\"header\"")) {
                if Instant::now() > deadline {
                    bail!("background agent {i} never started");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(Self { agents, dir })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for a in &self.agents {
            // SAFETY: signalling our own children (the agent forwards it to sleep).
            unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
        }
        for a in &mut self.agents {
            let _ = a.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Untraced `dd bs=1` with N agents running beside it, each configuration measured
/// in turn within every round (so slow drift hits all of them alike).
fn beside(agent: &Path, runs: usize, dd: &[String], configs: &[(usize, &[&str])]) -> Result<()> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    run_quiet(dd)?;
    for round in 0..runs {
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            let (n, flags) = configs[i];
            let _bg = Background::start(agent, n, flags)?;
            let (wall, cpu_s) = run_timed(dd)?;
            times[i].push(wall);
            cpu[i].push(cpu_s);
        }
    }
    let base = stats(times[0].clone()).median;
    let base_cpu = stats(cpu[0].clone()).median;
    println!(
        "### An untraced `{}` beside N running agents\n\n{} rounds, configurations \
         rotated within each round. Target for default flags: at most 1.05x. Wall time, \
         and dd's own CPU time (user + system, wait4), which does not count waiting for a \
         CPU on this shared machine.\n",
        dd.join(" "),
        runs
    );
    println!(
        "| agents beside it | flags | wall median s (min-max) | wall ratio | CPU median s | CPU ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for (((n, flags), t), c) in configs.iter().zip(times).zip(cpu) {
        let (s, c) = (stats(t), stats(c));
        println!(
            "| {n} | {} | {:.3} ({:.3}-{:.3}) | {:.2}x | {:.3} | {:.2}x |",
            if flags.is_empty() {
                "default".to_owned()
            } else {
                flags.join(" ")
            },
            s.median,
            s.min,
            s.max,
            s.median / base,
            c.median,
            c.median / base_cpu
        );
    }
    println!();
    Ok(())
}

/// Traced against bare, interleaved: default flags and everything on.
fn traced(agent: &Path, opts: &BenchOptions, workloads: &[(&str, Vec<String>, f64)]) -> Result<()> {
    let trace = std::env::temp_dir().join(format!("denet-bench-cost-{}.jsonl", std::process::id()));
    println!(
        "### Traced workloads\n\n{} rounds; each round runs bare, default and \
         `--files --syscalls` once, rotated. Whole-command wall seconds (the traced ones \
         include the agent's start and end), medians (min-max); the CPU ratio is of all \
         the CPU time the run took (user + system of the tree, and of the agent when \
         traced, from wait4), steadier than wall time on a shared machine; agent CPU and \
         peak RSS from the trace summaries (medians).\n",
        opts.runs
    );
    println!("| workload | bare s | default s | ratio | target | --files --syscalls s | ratio | CPU ratio (default / full) | agent CPU ms (default / full) | agent peak RSS MiB (default / full) | hold ms median (max) | lost events |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, cmd, target) in workloads {
        let modes = [
            cmd.clone(),
            traced_argv_with(agent, &trace, &[], cmd),
            traced_argv_with(agent, &trace, FULL, cmd),
        ];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
        // CPU of everything the run took: the command's tree, and the agent when traced.
        let mut total_cpu: Vec<Vec<f64>> = vec![Vec::new(); 3];
        let (mut cpu, mut rss) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        let (mut holds, mut lost) = (Vec::new(), 0.0);
        for m in &modes {
            run_quiet(m)?;
        }
        for round in 0..opts.runs {
            for k in 0..modes.len() {
                let i = (k + round) % modes.len();
                let (wall, cpu_s) = run_timed(&modes[i])?;
                times[i].push(wall);
                total_cpu[i].push(cpu_s);
                if i > 0 {
                    let (h, c, r, _, l) = trace_numbers(&trace)?;
                    cpu[i - 1].push(c);
                    rss[i - 1].push(r / 1024.0);
                    holds.push(h);
                    lost += l;
                }
            }
        }
        let m: Vec<f64> = times.iter().map(|t| stats(t.clone()).median).collect();
        let c: Vec<f64> = total_cpu.iter().map(|t| stats(t.clone()).median).collect();
        let range = |t: &Vec<f64>| {
            let s = stats(t.clone());
            format!("{:.3} ({:.3}-{:.3})", s.median, s.min, s.max)
        };
        let h = stats(holds);
        println!(
            "| {name} | {} | {} | {:.3}x | {target:.2}x | {} | {:.3}x | {:.3}x / {:.3}x | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} ({:.2}) | {lost} |",
            range(&times[0]),
            range(&times[1]),
            m[1] / m[0],
            range(&times[2]),
            m[2] / m[0],
            c[1] / c[0],
            c[2] / c[0],
            stats(cpu[0].clone()).median,
            stats(cpu[1].clone()).median,
            stats(rss[0].clone()).median,
            stats(rss[1].clone()).median,
            h.median,
            h.max,
        );
    }
    let _ = std::fs::remove_file(&trace);
    println!();
    Ok(())
}

/// The fixed cost of a run: a traced `/bin/true` against a bare one.
fn fixed_cost(agent: &Path, opts: &BenchOptions) -> Result<()> {
    let trace =
        std::env::temp_dir().join(format!("denet-bench-fixed-{}.jsonl", std::process::id()));
    let bare = strings(&["/bin/true"]);
    let runs = opts.runs * 5;
    let mut out = Vec::new();
    for flags in [&[][..], FULL] {
        let traced = traced_argv_with(agent, &trace, flags, &bare);
        let (mut b, mut t, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        run_quiet(&traced)?;
        for _ in 0..runs {
            b.push(run_quiet(&bare)?);
            t.push(run_quiet(&traced)?);
            rss.push(trace_numbers(&trace)?.2 / 1024.0);
        }
        let (b, t, r) = (stats(b), stats(t), stats(rss));
        out.push(format!(
            "| {} | {:.1} ({:.1}-{:.1}) | {:.1} (max {:.1}) |",
            if flags.is_empty() {
                "default".to_owned()
            } else {
                flags.join(" ")
            },
            (t.median - b.median) * 1e3,
            (t.min - b.median) * 1e3,
            (t.max - b.median) * 1e3,
            r.median,
            r.max
        ));
    }
    let _ = std::fs::remove_file(&trace);
    println!(
        "### Fixed cost of a run\n\nA traced `/bin/true` minus a bare one ({runs} \
         interleaved pairs); targets: at most 15 ms and 20 MiB.\n"
    );
    println!("| flags | fixed cost ms median (min-max) | agent peak RSS MiB median |");
    println!("|---|---|---|");
    for line in out {
        println!("{line}");
    }
    println!();
    Ok(())
}

/// Per-program kernel statistics of one traced run (`kernel.bpf_stats_enabled`):
/// the agent's links name each program's tracepoint, the program's fdinfo has its
/// run count and total run time. Read until the agent exits; the last reading is
/// taken during the command's final sleep, after its work.
fn program_stats(
    agent: &Path,
    cmd: &[String],
    flags: &[&str],
) -> Result<BTreeMap<String, (u64, u64)>> {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(SYSCTL).unwrap_or_default();
    std::fs::write(SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
    let trace =
        std::env::temp_dir().join(format!("denet-bench-stats-{}.jsonl", std::process::id()));
    let script = format!("{}; sleep 0.5", shell_words(cmd));
    let mut child = Command::new(agent)
        .args(["run", "--require-ebpf"])
        .args(flags)
        .arg("-o")
        .arg(&trace)
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut last = BTreeMap::new();
    while child.try_wait()?.is_none() {
        if let Ok(now) = read_program_stats(child.id()) {
            if !now.is_empty() {
                last = now;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::write(SYSCTL, before.trim());
    let _ = std::fs::remove_file(&trace);
    Ok(last)
}

fn shell_words(cmd: &[String]) -> String {
    cmd.iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// tracepoint -> (run_cnt, run_time_ns) of the programs the agent `pid` has attached.
fn read_program_stats(pid: u32) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut by_prog: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut links: Vec<(u64, String)> = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(":\t"))
                .map(str::to_string)
        };
        let num = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
        if let (Some(tp), Some(id)) = (field("tp_name"), num("prog_id")) {
            links.push((id, tp));
        } else if let (Some(id), Some(cnt), Some(ns)) =
            (num("prog_id"), num("run_cnt"), num("run_time_ns"))
        {
            by_prog.insert(id, (cnt, ns));
        }
    }
    Ok(links
        .into_iter()
        .filter_map(|(id, tp)| by_prog.get(&id).map(|s| (tp, *s)))
        .collect())
}

fn programs(agent: &Path, workloads: &[(&str, Vec<String>, f64)]) -> Result<()> {
    println!(
        "### Kernel programs per workload\n\nOne traced run each with \
         `kernel.bpf_stats_enabled=1`: calls and mean ns per call of each program, as \
         the kernel counts them (every call on the machine, traced task or not).\n"
    );
    println!("| workload | flags | program (tracepoint) | calls | ns per call | total ms |");
    println!("|---|---|---|---|---|---|");
    for (name, cmd, _) in workloads {
        for flags in [&[][..], FULL] {
            let st = program_stats(agent, cmd, flags)?;
            if st.is_empty() {
                bail!("no program statistics read for {name}");
            }
            for (tp, (cnt, ns)) in st {
                println!(
                    "| {name} | {} | {tp} | {cnt} | {:.0} | {:.2} |",
                    if flags.is_empty() { "default" } else { "full" },
                    if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 },
                    ns as f64 / 1e6
                );
            }
        }
    }
    println!();
    Ok(())
}

pub fn run(root: &Path, agent: &Path, opts: &BenchOptions) -> Result<()> {
    let count = if opts.quick { "200K" } else { "2M" };
    let loops = if opts.quick { 200 } else { 2000 };
    let dd = strings(&[
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=1",
        &format!("count={count}"),
    ]);
    let bwa_dir = std::env::temp_dir().join("denet-bench-bwa");
    let pipeline = vec![
        root.join("scripts/bwa-pipeline.sh")
            .to_string_lossy()
            .into_owned(),
        bwa_dir.to_string_lossy().into_owned(),
    ];
    // Generates the reference, reads and index once.
    run_quiet(&pipeline)
        .context("the bwa + samtools pipeline (are bwa and samtools installed?)")?;
    let workloads = vec![
        ("dd bs=1", dd.clone(), 1.3),
        (
            "fork-heavy",
            strings(&[
                "sh",
                "-c",
                &format!("i=0; while [ $i -lt {loops} ]; do /bin/true; i=$((i+1)); done"),
            ]),
            1.05,
        ),
        ("bwa mem + samtools sort", pipeline, 1.03),
    ];
    println!("## What a run costs the machine (`--suite cost`)\n");
    let configs: &[(usize, &[&str])] = &[
        (0, &[]),
        (1, &[]),
        (4, &[]),
        (16, &[]),
        (1, FULL),
        (4, FULL),
        (16, FULL),
    ];
    beside(agent, opts.runs, &dd, configs)?;
    if opts.suite == "beside" {
        return Ok(());
    }
    traced(agent, opts, &workloads)?;
    fixed_cost(agent, opts)?;
    programs(agent, &workloads)?;
    Ok(())
}

/// The `beside` table inside a kernel-test guest: alone, beside four default runs,
/// four with `--files` (the file trampolines where the kernel takes them) and four
/// with the syscall hooks, on a smaller dd (guest code is slow).
pub fn guest_beside(root: &Path, runs: usize) -> Result<()> {
    let agent = root.join("target/release/denet-agent");
    let dd = strings(&["dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count=200K"]);
    beside(
        &agent,
        runs,
        &dd,
        &[(0, &[]), (4, &[]), (4, &["--files"]), (4, FULL)],
    )
}
