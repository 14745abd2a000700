//! The HTML report: one self-contained file (inline CSS, SVG and a small script; no
//! network) with the run summary, a process timeline grouped by parent, CPU and
//! memory over time, top processes by CPU, memory and I/O, and the depth sections
//! (time breakdown, syscalls, files) when the trace has them. A script at the end
//! checks that the timeline and both charts rendered and publishes the result as
//! `window.denetReportChecks` and `<html data-checks="pass|fail">`.

use std::io::{self, Write};

use super::svg::{self, esc, Bar};
use crate::report::{
    stats::{ProcRow, StatsReport, TreeNode},
    units,
};

/// Timeline rows drawn; deeper or later lines are left out (the tree in `stats`
/// and the CSV export have them all).
pub const MAX_TIMELINE_ROWS: usize = 400;

const STYLE: &str = r#"
:root { --fg:#1d2430; --muted:#5b6473; --line:#d8dde5; --ok:#4e79a7; --failed:#e15759; --killed:#f28e2b; --open:#9aa3af; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; background: #f6f7f9; }
header, section, footer { max-width: 1180px; margin: 0 auto; padding: 12px 24px; }
header { padding-top: 24px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 8px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin-top: 16px; }
code, .cmd { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.cmd { background: #eef1f5; padding: 6px 10px; border-radius: 6px; word-break: break-all; }
.muted { color: var(--muted); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.kv th { width: 240px; font-weight: 500; color: var(--muted); }
.tops > div { margin-bottom: 18px; }
svg.chart { display: block; margin-top: 4px; }
svg text { font-size: 11px; fill: var(--fg); }
svg text.tick { fill: var(--muted); }
svg text.empty { fill: var(--muted); font-size: 13px; }
svg .grid { stroke: #eceff3; }
svg .axis { stroke: #9aa3af; }
svg .bar.ok { fill: var(--ok); }
svg .bar.failed { fill: var(--failed); }
svg .bar.killed { fill: var(--killed); }
svg .bar.open { fill: var(--open); }
svg .bar.group { fill-opacity: .65; }
svg .row:hover text.label { font-weight: 600; }
svg .series { fill: none; stroke: var(--ok); stroke-width: 1.6; }
svg .area { fill: var(--ok); fill-opacity: .12; stroke: none; }
svg .dot { fill: var(--ok); fill-opacity: 0; }
svg .dot:hover { fill-opacity: 1; }
#memory-chart .series, #memory-chart .dot { stroke: #59a14f; fill: #59a14f; }
#memory-chart .series { fill: none; }
#memory-chart .area { fill: #59a14f; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
.breakdown { display: flex; height: 22px; border-radius: 4px; overflow: hidden; margin: 6px 0; }
.breakdown div { height: 100%; }
.note { color: #8a4b00; }
footer { color: var(--muted); font-size: 12px; padding-bottom: 32px; }
"#;

const CHECKS: &str = r#"
(function () {
  "use strict";
  function chart(id) {
    var svg = document.getElementById(id);
    if (!svg) return false;
    var n = Number(svg.getAttribute("data-points"));
    var line = svg.querySelector("polyline.series");
    var box = svg.getBoundingClientRect();
    if (box.width <= 0 || box.height <= 0) return false;
    if (n === 0) return svg.querySelector("text.empty") !== null;
    return line !== null && line.points.length === n && line.getBBox().width >= 0;
  }
  function timeline() {
    var svg = document.getElementById("timeline");
    if (!svg) return false;
    var bars = svg.querySelectorAll("rect.bar");
    var rows = svg.querySelectorAll("g.row");
    if (rows.length !== Number(svg.getAttribute("data-rows"))) return false;
    if (rows.length === 0) return svg.querySelector("text.empty") !== null && svg.getBoundingClientRect().width > 0;
    for (var i = 0; i < bars.length; i++) {
      if (!(bars[i].getBBox().width > 0)) return false;
    }
    return bars.length > 0 && svg.getBoundingClientRect().width > 0;
  }
  function run() {
    var r = { timeline: timeline(), cpu: chart("cpu-chart"), memory: chart("memory-chart") };
    r.ok = r.timeline && r.cpu && r.memory;
    window.denetReportChecks = r;
    document.documentElement.setAttribute("data-checks", r.ok ? "pass" : "fail");
    var out = document.getElementById("checks");
    if (out) {
      out.textContent = "Self-check: timeline " + (r.timeline ? "ok" : "MISSING") +
        ", CPU chart " + (r.cpu ? "ok" : "MISSING") + ", memory chart " + (r.memory ? "ok" : "MISSING") + ".";
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run); else run();
})();
"#;

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".to_string(), f)
}

fn bar_class(n: &TreeNode) -> String {
    let base = if n.placeholder {
        "open"
    } else if n.killed > 0 {
        "killed"
    } else if n.failed > 0 {
        "failed"
    } else {
        "ok"
    };
    if n.count > 1 {
        format!("{base} group")
    } else {
        base.to_string()
    }
}

fn tooltip(n: &TreeNode) -> String {
    if n.placeholder {
        return n.label.clone();
    }
    let cpu = n.cpu_user_ns.unwrap_or(0) + n.cpu_sys_ns.unwrap_or(0);
    let mut t = if n.count > 1 {
        format!(
            "{} ×{} (first pid {})\n",
            n.command,
            n.count,
            opt(n.pid, |p| p.to_string())
        )
    } else {
        format!("{} (pid {})\n", n.command, opt(n.pid, |p| p.to_string()))
    };
    t.push_str(&format!(
        "start {} s, wall {}{}, CPU {} ({}), peak RSS {}, read {}, written {}, exit {}",
        opt(n.start_ns, |s| format!("{:.3}", s as f64 / 1e9)),
        opt(n.wall_ns, units::duration_ns),
        if n.count > 1 { " (sum)" } else { "" },
        units::duration_ns(cpu),
        opt(n.cpu_percent, units::percent),
        opt(n.peak_rss_kb, units::kib),
        opt(n.io.rchar, units::bytes),
        opt(n.io.wchar, units::bytes),
        n.exit
    ));
    t
}

fn kv(o: &mut String, k: &str, v: &str) {
    o.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), v));
}

fn summary(o: &mut String, r: &StatsReport) {
    let t = &r.totals;
    o.push_str(r#"<section id="summary"><h2>Summary</h2><table class="kv">"#);
    let cpu = t.cpu_user_ns + t.cpu_sys_ns;
    kv(
        o,
        "Exit",
        &esc(&format!(
            "{}{}",
            t.exit,
            if t.timed_out == Some(true) {
                " (timed out)"
            } else {
                ""
            }
        )),
    );
    kv(o, "Wall time", &units::duration_ns(t.wall_ns));
    kv(
        o,
        "CPU time",
        &esc(&format!(
            "{} (user {}, system {}){}",
            units::duration_ns(cpu),
            units::duration_ns(t.cpu_user_ns),
            units::duration_ns(t.cpu_sys_ns),
            t.cpu_percent.map_or(String::new(), |p| format!(
                ", {} of one CPU on average",
                units::percent(p)
            ))
        )),
    );
    kv(
        o,
        "Processes",
        &esc(&format!(
            "{} ({} failed, {} killed by a signal)",
            units::count(t.processes),
            t.failed,
            t.killed
        )),
    );
    kv(
        o,
        "Largest peak RSS (one process, exact)",
        &opt(t.max_process_peak_rss_kb, units::kib),
    );
    kv(
        o,
        "Peak RSS of the whole tree (sampled)",
        &opt(t.peak_tree_rss_kb, units::kib),
    );
    kv(
        o,
        "Read / written (read/write calls)",
        &format!(
            "{} / {}",
            opt(t.io.rchar, units::bytes),
            opt(t.io.wchar, units::bytes)
        ),
    );
    kv(
        o,
        "Storage read / written",
        &format!(
            "{} / {}",
            opt(t.io.read_bytes, units::bytes),
            opt(t.io.write_bytes, units::bytes)
        ),
    );
    if r.has_block_or_net() {
        kv(
            o,
            "Block device read / written",
            &format!(
                "{} / {}",
                opt(t.depth.blk_read_bytes, units::bytes),
                opt(t.depth.blk_write_bytes, units::bytes)
            ),
        );
        kv(
            o,
            "Network sent / received",
            &format!(
                "{} / {}",
                opt(t.depth.net_tx_bytes, units::bytes),
                opt(t.depth.net_rx_bytes, units::bytes)
            ),
        );
    }
    kv(o, "Samples", &units::count(t.samples));
    if let Some(l) = t.lost_events {
        kv(o, "Kernel events lost", &l.to_string());
    }
    if let Some(e) = &t.error {
        kv(o, "Error", &esc(e));
    }
    o.push_str("</table>");
    if r.has_time_breakdown() {
        let parts = [
            ("on CPU", t.depth.oncpu_ns, "#4e79a7"),
            ("waiting for a CPU", t.depth.cpu_wait_ns, "#f28e2b"),
            ("waiting for I/O", t.depth.io_wait_ns, "#e15759"),
            ("sleeping", t.depth.sleep_ns, "#bab0ac"),
        ];
        let total: u64 = parts.iter().filter_map(|p| p.1).sum();
        o.push_str(r#"<h2 style="margin-top:12px">Where the time went <span class="muted">(summed over processes)</span></h2><div class="breakdown" id="time-breakdown">"#);
        for (name, v, color) in parts {
            if let Some(v) = v.filter(|_| total > 0) {
                let pct = v as f64 * 100.0 / total as f64;
                o.push_str(&format!(
                    r#"<div style="width:{pct:.3}%;background:{color}" title="{}: {} ({})"></div>"#,
                    name,
                    units::duration_ns(v),
                    units::percent(pct)
                ));
            }
        }
        o.push_str(r#"</div><div class="legend">"#);
        for (name, v, color) in parts {
            if let Some(v) = v {
                o.push_str(&format!(
                    r#"<span><i style="background:{color}"></i>{name} {}</span>"#,
                    units::duration_ns(v)
                ));
            }
        }
        o.push_str("</div>");
    }
    o.push_str("</section>");
}

fn top_table(o: &mut String, id: &str, title: &str, rows: &[ProcRow]) {
    o.push_str(&format!(r#"<div><h2>{}</h2><table id="{id}"><tr><th>command</th><th class="n">pid</th><th class="n">CPU</th><th class="n">peak RSS</th><th class="n">read</th><th class="n">written</th><th class="n">exit</th></tr>"#, esc(title)));
    for p in rows {
        o.push_str(&format!(
            r#"<tr><td title="{}"><code>{}</code></td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(&p.command),
            esc(&p.label),
            opt(p.pid, |v| v.to_string()),
            opt(p.cpu_ns, units::duration_ns),
            opt(p.peak_rss_kb, units::kib),
            opt(p.rchar, units::bytes),
            opt(p.wchar, units::bytes),
            esc(&p.exit)
        ));
    }
    o.push_str("</table></div>");
}

/// Per task name (rule, Nextflow process, Slurm job name): only for traces of
/// workflows.
fn tasks_section(o: &mut String, r: &StatsReport) {
    if r.task_groups.is_empty() {
        return;
    }
    o.push_str(r#"<section id="tasks"><h2>Workflow tasks <span class="muted">(per rule or process; peak RSS: the largest process's)</span></h2><table><tr><th>engine</th><th>name</th><th class="n">tasks</th><th class="n">failed</th><th class="n">OOM killed</th><th class="n">wall (sum)</th><th class="n">wall (max)</th><th class="n">CPU</th><th class="n">peak RSS</th><th class="n">read</th><th class="n">written</th></tr>"#);
    for g in &r.task_groups {
        o.push_str(&format!(
            r#"<tr><td>{}</td><td><code>{}</code></td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(&g.engine),
            esc(&g.name),
            g.tasks,
            g.failed,
            g.oom_killed,
            units::duration_ns(g.wall_ns),
            units::duration_ns(g.wall_max_ns),
            units::duration_ns(g.cpu_ns),
            opt(g.peak_rss_kb, units::kib),
            units::bytes(g.rchar),
            units::bytes(g.wchar),
        ));
    }
    o.push_str("</table></section>");
}

pub fn render(r: &StatsReport) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let run = &r.run;
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    o.push_str(&format!(
        "<title>denet report: {}</title><style>{STYLE}</style></head><body>",
        esc(&run.command)
    ));
    o.push_str(&format!(
        r#"<header><h1>denet-agent report</h1><div class="cmd">{}</div><p class="muted">{}</p></header>"#,
        esc(&crate::report::command::full(&run.argv)),
        esc(&[
            run.hostname.as_ref().map(|h| format!("host {h}")),
            run.kernel.as_ref().map(|k| format!("kernel {k}")),
            run.start_utc.as_ref().map(|s| format!("started {s}")),
            run.cwd.as_ref().map(|c| format!("in {c}")),
            Some(match run.ebpf {
                Some(true) => "eBPF: exact per-process accounting".to_string(),
                Some(false) => "no eBPF: /proc sampling (short processes missed)".to_string(),
                None => "tracking mode unknown".to_string(),
            }),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" · "))
    ));
    summary(&mut o, r);
    tasks_section(&mut o, r);

    let span_s = r.totals.wall_ns as f64 / 1e9;
    let rows = r.tree_rows();
    let omitted = rows.len().saturating_sub(MAX_TIMELINE_ROWS);
    let bars: Vec<Bar> = rows
        .iter()
        .take(MAX_TIMELINE_ROWS)
        .map(|(depth, _, n)| Bar {
            depth: *depth,
            label: if n.count > 1 {
                format!("{} ×{}", n.label, n.count)
            } else {
                n.label.clone()
            },
            start_s: n.start_ns.map(|s| s as f64 / 1e9),
            end_s: n.end_ns.map(|s| s as f64 / 1e9),
            class: bar_class(n),
            tooltip: tooltip(n),
        })
        .collect();
    o.push_str(r#"<section id="timeline-section"><h2>Process timeline <span class="muted">(grouped by parent; ×N: N processes with the same command, drawn from first start to last end)</span></h2>"#);
    o.push_str(r#"<div class="legend"><span><i style="background:var(--ok)"></i>exit 0</span><span><i style="background:var(--failed)"></i>non-zero exit</span><span><i style="background:var(--killed)"></i>killed by a signal</span><span><i style="background:var(--open)"></i>no exit record</span></div>"#);
    o.push_str(&svg::timeline(&bars, span_s, omitted));
    if omitted > 0 {
        o.push_str(&format!(
            r#"<p class="note">{omitted} more lines are not drawn; <code>denet-agent stats</code> and the CSV export list them all.</p>"#
        ));
    }
    o.push_str("</section>");

    let t0 = run.start_boot_ns;
    let at = |ts: u64| (ts as i64 - t0 as i64) as f64 / 1e9;
    let cpu: Vec<(f64, f64)> = r
        .series
        .points
        .iter()
        .map(|p| (at(p.ts_boot_ns), p.cpu_percent))
        .collect();
    let mem: Vec<(f64, f64)> = r
        .series
        .points
        .iter()
        .map(|p| (at(p.ts_boot_ns), p.rss_kb as f64 / 1024.0))
        .collect();
    let merged = if r.series.per_point > 1 {
        format!(" · each point merges {} samples", r.series.per_point)
    } else {
        String::new()
    };
    o.push_str(&format!(r#"<section id="cpu-section"><h2>CPU over time <span class="muted">(whole tree, 100% = one CPU{merged})</span></h2>"#));
    o.push_str(&svg::line_chart(
        "cpu-chart",
        "CPU of the tree over time",
        &cpu,
        span_s,
        "%",
    ));
    o.push_str("</section>");
    o.push_str(&format!(r#"<section id="memory-section"><h2>Memory over time <span class="muted">(RSS of the whole tree, sampled{merged})</span></h2>"#));
    o.push_str(&svg::line_chart(
        "memory-chart",
        "RSS of the tree over time",
        &mem,
        span_s,
        "MiB",
    ));
    o.push_str("</section>");

    o.push_str(r#"<section id="top"><div class="tops">"#);
    top_table(&mut o, "top-cpu", "Top processes by CPU time", &r.top.cpu);
    top_table(
        &mut o,
        "top-memory",
        "Top processes by peak RSS",
        &r.top.peak_rss,
    );
    top_table(
        &mut o,
        "top-io",
        "Top processes by I/O (read + written)",
        &r.top.io,
    );
    o.push_str("</div></section>");

    if !r.syscalls.is_empty() {
        o.push_str(r#"<section id="syscalls"><h2>Syscalls <span class="muted">(summed over processes)</span></h2><table><tr><th>syscall</th><th class="n">calls</th></tr>"#);
        for s in r.syscalls.iter().take(crate::report::stats::LIST_N) {
            o.push_str(&format!(
                r#"<tr><td><code>{}</code></td><td class="n">{}</td></tr>"#,
                esc(&s.name),
                units::count(s.count)
            ));
        }
        o.push_str("</table></section>");
    }
    if !r.files.is_empty() {
        o.push_str(r#"<section id="files"><h2>Files <span class="muted">(most bytes first)</span></h2><table><tr><th>path</th><th class="n">read</th><th class="n">written</th><th class="n">opens</th></tr>"#);
        for f in &r.files {
            o.push_str(&format!(
                r#"<tr><td><code>{}</code></td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                esc(&f.path),
                units::bytes(f.read_bytes),
                units::bytes(f.write_bytes),
                f.records
            ));
        }
        o.push_str("</table></section>");
    }

    let mut notes = Vec::new();
    if !r.trace.complete {
        notes.push("The trace has no summary (the agent was killed or is still running): totals are computed from the records read.".to_string());
    }
    if !r.still_running.is_empty() {
        notes.push(format!(
            "{} processes were alive at the last sample and have no exit record.",
            r.still_running.len()
        ));
    }
    notes.extend(r.trace.warnings.iter().map(|w| format!("Warning: {w}")));
    if !notes.is_empty() {
        o.push_str(r#"<section id="notes"><h2>Notes</h2>"#);
        for n in notes {
            o.push_str(&format!(r#"<p class="note">{}</p>"#, esc(&n)));
        }
        o.push_str("</section>");
    }
    o.push_str(&format!(
        r#"<footer><p>Generated by denet-agent {} from <code>{}</code> ({} lines). <span id="checks"></span></p></footer>"#,
        env!("CARGO_PKG_VERSION"),
        esc(&r.trace.path),
        r.trace.lines
    ));
    o.push_str(&format!("<script>{CHECKS}</script></body></html>\n"));
    o
}

pub fn write(w: &mut dyn Write, r: &StatsReport) -> io::Result<()> {
    w.write_all(render(r).as_bytes())
}
