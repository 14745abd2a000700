//! `denet-agent stats` as text: run facts, totals, the process tree with per-line
//! numbers, top processes, and the depth sections when the trace has them.

use std::fmt::Write;

use super::{
    stats::{ProcRow, StatsReport, TreeNode},
    units,
};

/// Widest label column (tree guides included).
const LABEL_WIDTH_MAX: usize = 56;
/// Rows of each top list in the text report.
const TOP_SHOWN: usize = 5;

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        format!("{s}{}", " ".repeat(width - n))
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn secs(ns: i64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

pub fn render(r: &StatsReport) -> String {
    let mut o = String::new();
    let run = &r.run;
    let t = &r.totals;
    let _ = writeln!(o, "Run      {}", run.command);
    let mut facts = Vec::new();
    if let Some(pid) = run.pid {
        facts.push(format!("pid {pid}"));
    }
    if let Some(h) = &run.hostname {
        facts.push(format!(
            "on {h}{}",
            run.kernel
                .as_ref()
                .map_or(String::new(), |k| format!(" (kernel {k})"))
        ));
    }
    facts.push(match run.ebpf {
        Some(true) => "eBPF: exact per-process accounting".to_string(),
        Some(false) => format!(
            "no eBPF (/proc sampling: short processes missed{})",
            run.ebpf_unavailable_reason
                .as_ref()
                .map_or(String::new(), |w| format!("; {w}"))
        ),
        None => "tracking mode unknown".to_string(),
    });
    let _ = writeln!(o, "         {}", facts.join(", "));
    if let Some(start) = &run.start_utc {
        let _ = writeln!(
            o,
            "         started {start}{}",
            run.cwd
                .as_ref()
                .map_or(String::new(), |c| format!(" in {c}"))
        );
    }
    let cpu = t.cpu_user_ns + t.cpu_sys_ns;
    let _ = writeln!(
        o,
        "Result   exit {}{}, wall {}, CPU {} (user {}, system {}){}",
        t.exit,
        if t.timed_out == Some(true) {
            " (timed out)"
        } else {
            ""
        },
        units::duration_ns(t.wall_ns),
        units::duration_ns(cpu),
        units::duration_ns(t.cpu_user_ns),
        units::duration_ns(t.cpu_sys_ns),
        t.cpu_percent.map_or(String::new(), |p| format!(
            ", {} of one CPU on average",
            units::percent(p)
        ))
    );
    if let Some(e) = &t.error {
        let _ = writeln!(o, "         error: {e}");
    }
    let mut procs = format!("{} processes", units::count(t.processes));
    if t.failed + t.killed > 0 {
        procs.push_str(&format!(
            " ({} failed, {} killed by a signal)",
            t.failed, t.killed
        ));
    }
    let _ = writeln!(
        o,
        "         {procs}; largest peak RSS {}, whole tree {} (sampled peak)",
        opt(t.max_process_peak_rss_kb, units::kib),
        opt(t.peak_tree_rss_kb, units::kib),
    );
    let _ = writeln!(
        o,
        "         I/O: read {}, written {} (read/write calls); storage: read {}, written {}",
        opt(t.io.rchar, units::bytes),
        opt(t.io.wchar, units::bytes),
        opt(t.io.read_bytes, units::bytes),
        opt(t.io.write_bytes, units::bytes),
    );
    if !r.tasks.is_empty() {
        let _ = writeln!(
            o,
            "Tasks    {} workflow tasks in {} groups ({} failed): denet-agent stats --by task",
            r.tasks.len(),
            r.task_groups.len(),
            r.tasks.iter().filter(|t| t.failed()).count()
        );
    }
    let _ = writeln!(
        o,
        "         {} samples{}",
        units::count(t.samples),
        t.lost_events
            .map_or(String::new(), |l| format!(", {l} kernel events lost"))
    );
    if r.has_time_breakdown() {
        let parts = [
            ("on CPU", t.depth.oncpu_ns),
            ("waiting for a CPU", t.depth.cpu_wait_ns),
            ("waiting for I/O", t.depth.io_wait_ns),
            ("sleeping", t.depth.sleep_ns),
        ];
        let total: u64 = parts.iter().filter_map(|(_, v)| *v).sum();
        let text: Vec<String> = parts
            .iter()
            .filter_map(|(n, v)| {
                v.map(|v| {
                    let pct = if total > 0 {
                        v as f64 * 100.0 / total as f64
                    } else {
                        0.0
                    };
                    format!("{n} {} ({})", units::duration_ns(v), units::percent(pct))
                })
            })
            .collect();
        let _ = writeln!(o, "Time     summed over processes: {}", text.join(", "));
    }
    if let (Some(w), Some(p50), Some(p99)) = (
        t.runq_waits,
        t.runq_quantile_us(0.5),
        t.runq_quantile_us(0.99),
    ) {
        let _ = writeln!(
            o,
            "Sched    {} run-queue waits: half under {p50} µs, 99% under {p99} µs",
            units::count(w)
        );
    }
    if r.has_block_or_net() {
        let _ = writeln!(
            o,
            "Devices  block: read {}, written {}; network: sent {}, received {}",
            opt(t.depth.blk_read_bytes, units::bytes),
            opt(t.depth.blk_write_bytes, units::bytes),
            opt(t.depth.net_tx_bytes, units::bytes),
            opt(t.depth.net_rx_bytes, units::bytes),
        );
    }

    render_tree(&mut o, r);
    render_top(&mut o, "Top processes by CPU time", &r.top.cpu);
    render_top(&mut o, "Top processes by peak RSS", &r.top.peak_rss);
    render_top(&mut o, "Top processes by I/O (read + written)", &r.top.io);

    if !r.syscalls.is_empty() {
        let _ = writeln!(o, "\nSyscalls (summed over processes, most frequent first)");
        let list: Vec<String> = r
            .syscalls
            .iter()
            .take(super::stats::LIST_N)
            .map(|s| format!("{} {}", s.name, units::count(s.count)))
            .collect();
        let _ = writeln!(o, "  {}", list.join(", "));
    }
    if !r.files.is_empty() {
        let _ = writeln!(o, "\nFiles (most bytes first)");
        let _ = writeln!(
            o,
            "  {:>10}  {:>10}  {:>5}  path",
            "read", "written", "opens"
        );
        for f in &r.files {
            let _ = writeln!(
                o,
                "  {:>10}  {:>10}  {:>5}  {}",
                units::bytes(f.read_bytes),
                units::bytes(f.write_bytes),
                f.records,
                f.path
            );
        }
    }
    render_notes(&mut o, r);
    o
}

fn render_tree(o: &mut String, r: &StatsReport) {
    let rows = r.tree_rows();
    if rows.is_empty() {
        let _ = writeln!(o, "\nNo process records.");
        return;
    }
    // Guides: for each depth, whether the ancestor at that depth was a last child.
    let mut labels = Vec::with_capacity(rows.len());
    let mut open: Vec<bool> = Vec::new();
    for (depth, last, n) in &rows {
        open.truncate(*depth);
        let mut prefix = String::new();
        for (d, ancestor_last) in open.iter().enumerate() {
            if d == 0 {
                continue;
            }
            prefix.push_str(if *ancestor_last { "   " } else { "│  " });
        }
        if *depth > 0 {
            prefix.push_str(if *last { "└─ " } else { "├─ " });
        }
        open.push(*last);
        let count = if n.count > 1 {
            format!(" ×{}", n.count)
        } else {
            String::new()
        };
        labels.push(format!("{prefix}{}{count}", n.label));
    }
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(12, LABEL_WIDTH_MAX);
    let _ = writeln!(
        o,
        "\n{} {:>7} {:>8} {:>10} {:>10} {:>5} {:>10} {:>10} {:>10}  exit",
        fit("Process tree (×N: N processes, summed)", width),
        "pid",
        "start s",
        "wall",
        "CPU",
        "CPU%",
        "peak RSS",
        "read",
        "written"
    );
    for ((_, _, n), label) in rows.iter().zip(&labels) {
        if n.placeholder {
            // No numbers on this line: the whole label fits.
            let _ = writeln!(o, "{label}");
        } else {
            let _ = writeln!(o, "{} {}", fit(label, width), node_cells(n));
        }
    }
}

fn node_cells(n: &TreeNode) -> String {
    if n.placeholder {
        return String::new();
    }
    let cpu = match (n.cpu_user_ns, n.cpu_sys_ns) {
        (None, None) => None,
        (u, s) => Some(u.unwrap_or(0) + s.unwrap_or(0)),
    };
    format!(
        "{:>7} {:>8} {:>10} {:>10} {:>5} {:>10} {:>10} {:>10}  {}",
        opt(n.pid, |p| p.to_string()),
        opt(n.start_ns, secs),
        opt(n.wall_ns, units::duration_ns),
        opt(cpu, units::duration_ns),
        opt(n.cpu_percent, |p| format!("{p:.0}")),
        opt(n.peak_rss_kb, units::kib),
        opt(n.io.rchar, units::bytes),
        opt(n.io.wchar, units::bytes),
        n.exit
    )
}

/// `stats --by task`: per task name, then every task instance.
pub fn render_tasks(r: &StatsReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Run      {}", r.run.command);
    if r.tasks.is_empty() {
        let _ = writeln!(
            o,
            "Tasks    none: no process of this trace ran in a Snakemake job, a Nextflow \
             task or a Slurm job (docs/workflows.md)"
        );
        return o;
    }
    let failed = r.tasks.iter().filter(|t| t.failed()).count();
    let _ = writeln!(
        o,
        "Tasks    {} in {} group{}, {failed} failed",
        r.tasks.len(),
        r.task_groups.len(),
        if r.task_groups.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        o,
        "\n  {} {:>6} {:>6} {:>4} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        fit("name", 24),
        "tasks",
        "failed",
        "OOM",
        "wall sum",
        "wall max",
        "CPU",
        "peak RSS",
        "read",
        "written"
    );
    for g in &r.task_groups {
        let _ = writeln!(
            o,
            "  {} {:>6} {:>6} {:>4} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            fit(&g.name, 24),
            g.tasks,
            g.failed,
            g.oom_killed,
            units::duration_ns(g.wall_ns),
            units::duration_ns(g.wall_max_ns),
            units::duration_ns(g.cpu_ns),
            opt(g.peak_rss_kb, units::kib),
            units::bytes(g.rchar),
            units::bytes(g.wchar),
        );
    }
    let _ = writeln!(
        o,
        "\n  {} {:>8} {:>10} {:>10} {:>5} {:>10}  exit",
        fit("task", 24),
        "id",
        "wall",
        "CPU",
        "procs",
        "peak RSS",
    );
    for t in &r.tasks {
        let mut name = t.task.group_name().to_string();
        let w = t.task.wildcards_text();
        if !w.is_empty() {
            name = format!("{name} [{w}]");
        }
        let _ = writeln!(
            o,
            "  {} {:>8} {:>10} {:>10} {:>5} {:>10}  {}{}",
            fit(&name, 24),
            t.task.id.as_deref().unwrap_or("-"),
            opt(t.wall_ns(), units::duration_ns),
            units::duration_ns(t.cpu_ns()),
            t.processes,
            opt(t.peak_rss_kb, units::kib),
            units::exit_status(t.exit_code, t.signal, false),
            if t.oom_kills > 0 { " (OOM kill)" } else { "" },
        );
    }
    o
}

fn render_top(o: &mut String, title: &str, rows: &[ProcRow]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n{title}");
    let _ = writeln!(
        o,
        "  {:>7} {:>10} {:>5} {:>10} {:>10} {:>10}  command",
        "pid", "CPU", "CPU%", "peak RSS", "read", "written"
    );
    for p in rows.iter().take(TOP_SHOWN) {
        let _ = writeln!(
            o,
            "  {:>7} {:>10} {:>5} {:>10} {:>10} {:>10}  {}",
            opt(p.pid, |v| v.to_string()),
            opt(p.cpu_ns, units::duration_ns),
            opt(p.cpu_percent, |v| format!("{v:.0}")),
            opt(p.peak_rss_kb, units::kib),
            opt(p.rchar, units::bytes),
            opt(p.wchar, units::bytes),
            p.label
        );
    }
}

fn render_notes(o: &mut String, r: &StatsReport) {
    let t = &r.totals;
    let mut notes = Vec::new();
    if !r.trace.complete {
        notes.push(format!(
            "the trace has no summary (the agent was killed or is still running): totals are computed from the {} process records read.",
            units::count(t.processes)
        ));
    }
    if !r.still_running.is_empty() {
        let shown: Vec<String> = r
            .still_running
            .iter()
            .take(10)
            .map(u32::to_string)
            .collect();
        notes.push(format!(
            "{} processes were alive at the last sample and have no exit record (pids {}{}).",
            r.still_running.len(),
            shown.join(", "),
            if r.still_running.len() > 10 {
                ", …"
            } else {
                ""
            }
        ));
    }
    if let Some(n) = t.summary_process_count {
        if n != t.processes {
            notes.push(format!(
                "the summary counts {n} processes but {} process records were read.",
                t.processes
            ));
        }
    }
    if let Some(m) = t.incomplete_processes.filter(|m| *m > 0) {
        notes.push(format!(
            "{m} processes have no exit accounting (kernel events lost)."
        ));
    }
    if !r.trace.warnings.is_empty() {
        notes.push(format!(
            "{} warnings while reading (see above).",
            r.trace.warnings.len()
        ));
    }
    if !notes.is_empty() {
        let _ = writeln!(o);
        for n in notes {
            let _ = writeln!(o, "Note: {n}");
        }
    }
}
