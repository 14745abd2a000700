//! `cargo xtask bench --suite node`: runs through the node daemon against runs with
//! their own programs. The fixed cost of a run and the client's memory, the programs
//! attached while 16 runs are in flight, and an untraced `dd` beside 16 runs.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{
    bench::{run_quiet, run_timed, stats, trace_numbers, traced_argv_with, BenchOptions},
    cost::Background,
};

/// `denet-agent serve` as the node daemon, on sockets of its own.
struct Daemon {
    child: Child,
    dir: PathBuf,
    tracer: String,
}

impl Daemon {
    fn start(agent: &Path) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("denet-bench-node-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let tracer = dir.join("tracer.sock").to_string_lossy().into_owned();
        let mut child = Command::new(agent)
            .arg("serve")
            .arg("--socket")
            .arg(dir.join("agent.sock"))
            .args(["--tracer-socket", &tracer])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the node daemon")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .context("the node daemon exited before listening")??;
            if line.contains("listening on") {
                break;
            }
        }
        // Keep draining what it prints, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Daemon { child, dir, tracer })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Raw-tracepoint links of the machine on `tp` (bpftool).
fn links(tp: &str) -> Result<usize> {
    let out = Command::new("bpftool")
        .args(["link", "show", "-j"])
        .output()
        .context("running bpftool")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool output")?;
    Ok(v.as_array()
        .map(|l| l.iter().filter(|l| l["tp_name"] == tp).count())
        .unwrap_or(0))
}

pub fn run(agent: &Path, opts: &BenchOptions) -> Result<()> {
    let daemon = Daemon::start(agent)?;
    let node: [&str; 2] = ["--node-socket", &daemon.tracer];
    println!("## Runs through the node daemon (`--suite node`)\n");

    // Fixed cost: bare, through the node, standalone; interleaved.
    let trace = daemon.dir.join("fixed.jsonl");
    let bare = vec!["/bin/true".to_string()];
    let via_node = traced_argv_with(agent, &trace, &node, &bare);
    let standalone = traced_argv_with(agent, &trace, &[], &bare);
    let runs = opts.runs * 5;
    let (mut b, mut n, mut s, mut n_rss, mut s_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    run_quiet(&via_node)?;
    run_quiet(&standalone)?;
    for _ in 0..runs {
        b.push(run_quiet(&bare)?);
        n.push(run_quiet(&via_node)?);
        n_rss.push(trace_numbers(&trace)?.2 / 1024.0);
        s.push(run_quiet(&standalone)?);
        s_rss.push(trace_numbers(&trace)?.2 / 1024.0);
    }
    let b = stats(b).median;
    println!(
        "### Fixed cost of a run\n\nA traced `/bin/true` minus a bare one ({runs} interleaved \
         triples). Targets through the node: at most 5 ms and a client of at most 10 MiB.\n"
    );
    println!("| run | fixed cost ms median (min-max) | client peak RSS MiB median (max) |");
    println!("|---|---|---|");
    for (name, t, r) in [
        ("through the node daemon", n, n_rss),
        ("own programs (--standalone)", s, s_rss),
    ] {
        let (t, r) = (stats(t), stats(r));
        println!(
            "| {name} | {:.1} ({:.1}-{:.1}) | {:.1} ({:.1}) |",
            (t.median - b) * 1e3,
            (t.min - b) * 1e3,
            (t.max - b) * 1e3,
            r.median,
            r.max
        );
    }
    println!();

    // Programs attached while 16 runs are in flight.
    let before = links("sched_process_fork")?;
    let attached_node = {
        let _bg = Background::start(agent, 16, &node)?;
        links("sched_process_fork")?
    };
    let attached_own = {
        let _bg = Background::start(agent, 16, &[])?;
        links("sched_process_fork")?
    };
    println!(
        "### Programs attached with 16 runs in flight\n\n`sched_process_fork` links on the \
         machine (bpftool): {before} with the daemon idle, {attached_node} with 16 runs \
         through it, {attached_own} with 16 runs with their own programs.\n"
    );
    if attached_node != before {
        bail!("runs through the node attached programs of their own");
    }

    // An untraced dd beside 16 runs, rotated within each round.
    let count = if opts.quick { "200K" } else { "2M" };
    let dd: Vec<String> = ["dd", "if=/dev/zero", "of=/dev/null", "bs=1"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("count={count}")])
        .collect();
    let full_node: [&str; 4] = ["--node-socket", &daemon.tracer, "--files", "--syscalls"];
    let configs: [(&str, usize, &[&str]); 4] = [
        ("none", 0, &[]),
        ("16 through the node", 16, &node),
        ("16 through the node, --files --syscalls", 16, &full_node),
        ("16 with their own programs", 16, &[]),
    ];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    run_quiet(&dd)?;
    for round in 0..opts.runs {
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            let (_, n, flags) = configs[i];
            let _bg = Background::start(agent, n, flags)?;
            let (w, c) = run_timed(&dd)?;
            wall[i].push(w);
            cpu[i].push(c);
        }
    }
    let base = stats(wall[0].clone()).median;
    let base_cpu = stats(cpu[0].clone()).median;
    println!(
        "### An untraced `{}` beside 16 runs\n\n{} rounds, configurations rotated within \
         each round. Target through the node with default flags: at most 1.05x.\n",
        dd.join(" "),
        opts.runs
    );
    println!(
        "| runs beside it | wall median s (min-max) | wall ratio | CPU median s | CPU ratio |"
    );
    println!("|---|---|---|---|---|");
    for (((name, _, _), w), c) in configs.iter().zip(wall).zip(cpu) {
        let (w, c) = (stats(w), stats(c));
        println!(
            "| {name} | {:.3} ({:.3}-{:.3}) | {:.2}x | {:.3} | {:.2}x |",
            w.median,
            w.min,
            w.max,
            w.median / base,
            c.median,
            c.median / base_cpu
        );
    }
    println!();
    Ok(())
}
