//! Drawing `top`'s screens from the models: pure functions of the model and the
//! frame, so they are tested with ratatui's `TestBackend`. Laid out for 80x24 and
//! up: the tables drop their wide columns first.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState},
    Frame,
};

use super::model::{cpu, rss_kb, JobsModel, TraceModel};
use crate::{
    history::Status,
    report::{command, units},
};

const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().add_modifier(Modifier::DIM);
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);

/// A one-line prompt (a confirmation) or message at the bottom, over the key help.
pub struct Footer<'a> {
    pub keys: &'a str,
    pub prompt: Option<&'a str>,
}

fn footer(f: &mut Frame, area: Rect, footer: &Footer) {
    let text = match footer.prompt {
        Some(p) => Line::from(Span::styled(p, BOLD)),
        None => Line::from(Span::styled(footer.keys, DIM)),
    };
    f.render_widget(Paragraph::new(text), area);
}

/// Text shown in place of the latest exits: a job's last output lines or its failure
/// excerpt.
pub struct Panel<'a> {
    pub title: &'a str,
    pub lines: &'a [String],
}

/// One trace: the command, its totals, CPU and memory over time, the live processes
/// and the latest exits (or `panel`).
pub fn trace(f: &mut Frame, m: &TraceModel, title: &str, panel: Option<&Panel>, foot: &Footer) {
    let [head, spark, live, exits, keys] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(4),
        Constraint::Min(5),
        Constraint::Length(if panel.is_some() { 9 } else { 6 }),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let status = match &m.summary {
        Some(s) => format!(
            "ended: {}",
            if s.timed_out {
                "timed out".to_string()
            } else {
                units::exit_status(s.exit_code, s.signal, false)
            }
        ),
        None => "running".into(),
    };
    let (cpu_now, rss_now) = m.history.back().copied().unwrap_or((0.0, 0));
    let lines = vec![
        Line::from(vec![
            Span::styled(command::full(&m.header.argv), BOLD),
            Span::raw(format!("  [{status}]  {title}")),
        ]),
        Line::from(format!(
            "{:.1} s  CPU {}  RSS {} (peak {})  {} live, {} ended ({} failed)",
            m.elapsed_s(),
            units::percent(cpu_now),
            units::kib(rss_now),
            units::kib(m.peak_rss_kb),
            m.live.len(),
            m.processes_ended,
            m.failed
        )),
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::BOTTOM)),
        head,
    );

    let [cpu_area, mem_area] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(spark);
    let width = cpu_area.width.saturating_sub(2) as usize;
    let tail = |v: Vec<u64>| -> Vec<u64> { v[v.len().saturating_sub(width)..].to_vec() };
    let cpu_data = tail(m.history.iter().map(|(c, _)| c.round() as u64).collect());
    let mem_data = tail(m.history.iter().map(|(_, r)| *r).collect());
    f.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::ALL).title("CPU %"))
            .data(&cpu_data),
        cpu_area,
    );
    f.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::ALL).title("RSS"))
            .data(&mem_data),
        mem_area,
    );

    let wide = live.width >= 100;
    let mut header = vec!["PID", "CPU%", "RSS", "THR"];
    if wide {
        header.push("STATE");
    }
    header.push("COMMAND");
    let rows = m.live.iter().map(|p| {
        let mut cells = vec![
            p.pid.to_string(),
            format!("{:.1}", p.cpu_percent),
            units::kib(p.rss_kb),
            p.threads.to_string(),
        ];
        if wide {
            cells.push(p.state.unwrap_or("-").to_string());
        }
        cells.push(format!("{}{}", "  ".repeat(p.depth.min(12)), p.label));
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(4),
    ];
    if wide {
        widths.push(Constraint::Length(16));
    }
    widths.push(Constraint::Min(10));
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(BOLD))
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .title("live processes"),
            ),
        live,
    );

    if let Some(p) = panel {
        // The last lines that fit.
        let room = exits.height.saturating_sub(1) as usize;
        let shown = &p.lines[p.lines.len().saturating_sub(room)..];
        let text: Vec<Line> = shown.iter().map(|l| Line::from(l.as_str())).collect();
        f.render_widget(
            Paragraph::new(text).block(Block::default().borders(Borders::TOP).title(p.title)),
            exits,
        );
        footer(f, keys, foot);
        return;
    }
    let rows = m.exits.iter().map(|e| {
        Row::new(vec![
            e.pid.to_string(),
            e.exit.clone(),
            e.cpu_ns.map_or("-".into(), units::duration_ns),
            e.peak_rss_kb.map_or("-".into(), units::kib),
            e.label.clone(),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(8),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Min(10),
            ],
        )
        .header(Row::new(vec!["PID", "EXIT", "CPU", "PEAK RSS", "COMMAND"]).style(BOLD))
        .block(Block::default().borders(Borders::TOP).title("latest exits")),
        exits,
    );
    footer(f, keys, foot);
}

/// The node's jobs (this user's; root's: all).
pub fn jobs(f: &mut Frame, m: &JobsModel, server: &str, foot: &Footer) {
    let runs_height = if m.runs.is_empty() {
        0
    } else {
        m.runs.len().min(8) as u16 + 2
    };
    let [head, table, runs, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(runs_height),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let shown = m.shown();
    let running = m
        .jobs
        .iter()
        .filter(|j| j.status == Status::Running)
        .count();
    let line = match &m.error {
        Some(e) => Line::from(Span::styled(format!("{server}: {e}"), BOLD)),
        None => Line::from(format!(
            "{server}: {} jobs, {running} running; showing {} ({}), by {}",
            m.jobs.len(),
            shown.len(),
            m.filter.as_str(),
            m.sort.as_str()
        )),
    };
    f.render_widget(
        Paragraph::new(line).block(Block::default().borders(Borders::BOTTOM)),
        head,
    );
    let wide = table.width >= 100;
    let mut header = vec!["NAME", "STATUS", "WALL", "CPU%", "RSS", "PROCS"];
    if wide {
        header.insert(5, "LIMIT");
        header.push("READ/s");
        header.push("WRITE/s");
        header.push("USER");
    }
    let widest = table.width >= 150;
    if widest {
        header.push("ID");
    }
    let rows = shown.iter().map(|j| {
        let mut status = j.status.as_str().to_string();
        if j.stuck {
            status.push_str(" STUCK");
        }
        if j.paused {
            status.push_str(" paused");
        }
        let procs = j
            .live
            .as_ref()
            .map(|l| l.process_count)
            .or_else(|| j.resources.as_ref().map(|r| r.process_count.max(0) as u64));
        let mut cells = vec![
            Cell::from(j.name.clone()),
            Cell::from(status),
            Cell::from(j.duration_s.map_or("-".into(), |d| format!("{d:.1}s"))),
            Cell::from(format!("{:.0}", cpu(j))),
            Cell::from(units::kib(rss_kb(j))),
            Cell::from(procs.map_or("-".into(), |n| n.to_string())),
        ];
        if wide {
            let limit = j
                .limits
                .and_then(|l| l.memory_bytes)
                .map_or("-".into(), units::bytes);
            cells.insert(5, Cell::from(limit));
            let rate = |v: Option<f64>| v.map_or("-".into(), |b| units::bytes(b as u64));
            let live = j.live.as_ref();
            cells.push(Cell::from(rate(live.and_then(|l| l.read_bytes_per_s))));
            cells.push(Cell::from(rate(live.and_then(|l| l.write_bytes_per_s))));
            cells.push(Cell::from(j.user.clone()));
        }
        if widest {
            cells.push(Cell::from(j.id.clone()));
        }
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Min(12),
        Constraint::Length(16),
        Constraint::Length(9),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(6),
    ];
    if wide {
        widths.insert(5, Constraint::Length(10));
        widths.push(Constraint::Length(10));
        widths.push(Constraint::Length(10));
        widths.push(Constraint::Length(10));
    }
    if widest {
        widths.push(Constraint::Length(20));
    }
    if !m.runs.is_empty() {
        let rows = m.runs.iter().map(|r| {
            Row::new(vec![
                r.pid.to_string(),
                r.user.clone(),
                format!("{:.1}s", r.elapsed_s),
                r.memory_bytes.map_or("-".into(), units::bytes),
                r.command.clone(),
            ])
        });
        f.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(8),
                    Constraint::Length(12),
                    Constraint::Length(9),
                    Constraint::Length(10),
                    Constraint::Min(10),
                ],
            )
            .header(Row::new(vec!["PID", "USER", "WALL", "MEMORY", "RUN"]).style(BOLD))
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .title("runs traced by the node daemon"),
            ),
            runs,
        );
    }
    let mut state = TableState::default().with_selected(Some(m.selected));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(Row::new(header).style(BOLD))
            .row_highlight_style(SELECTED)
            .highlight_symbol("> "),
        table,
        &mut state,
    );
    footer(f, keys, foot);
}

/// A trace whose header is not written yet.
pub fn waiting(f: &mut Frame, path: &std::path::Path, foot: &Footer) {
    let [body, keys] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(f.area());
    f.render_widget(
        Paragraph::new(format!("waiting for {} to start…", path.display())),
        body,
    );
    footer(f, keys, foot);
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::{
        history::conformance,
        service::job::{JobView, Live},
        top::model::{Filter, SortBy},
        trace::{Record, TraceReader},
    };

    fn screen(t: &Terminal<TestBackend>) -> String {
        let buf = t.backend().buffer();
        let mut s = String::new();
        for y in 0..buf.area.height {
            let mut line = String::new();
            for x in 0..buf.area.width {
                line.push_str(buf.cell((x, y)).map_or(" ", |c| c.symbol()));
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }

    /// A recorded trace up to its `upto`-th sample (all of it with None).
    fn model_of(name: &str, upto: Option<usize>) -> TraceModel {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(name);
        let mut r = TraceReader::open(&path, Box::new(|_| {})).unwrap();
        let mut m = TraceModel::new(r.header().clone(), false);
        let mut samples = 0;
        while let Some(rec) = r.next_record().unwrap() {
            let sample = matches!(rec, Record::Sample(_));
            m.apply(rec);
            samples += usize::from(sample);
            if upto.is_some_and(|u| samples >= u) {
                break;
            }
        }
        m
    }

    const FOOT: Footer = Footer {
        keys: "q quit",
        prompt: None,
    };

    fn draw_trace(m: &TraceModel, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| trace(f, m, "depth.jsonl", None, &FOOT)).unwrap();
        screen(&t)
    }

    #[test]
    fn trace_while_running_and_ended_at_80x24_and_120x40() {
        let running = model_of("depth.jsonl", Some(6));
        assert!(!running.live.is_empty(), "a sample with live processes");
        insta::assert_snapshot!("trace_running_80x24", draw_trace(&running, 80, 24));
        insta::assert_snapshot!("trace_running_120x40", draw_trace(&running, 120, 40));
        let ended = model_of("depth.jsonl", None);
        assert!(ended.summary.is_some());
        insta::assert_snapshot!("trace_ended_80x24", draw_trace(&ended, 80, 24));
        insta::assert_snapshot!("trace_ended_120x40", draw_trace(&ended, 120, 40));
        let lines: Vec<String> = (1..=12).map(|i| format!("stderr line {i}")).collect();
        let panel = Panel {
            title: "stderr (last lines)",
            lines: &lines,
        };
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| trace(f, &running, "job align", Some(&panel), &FOOT))
            .unwrap();
        let s = screen(&t);
        assert!(
            s.contains("stderr (last lines)") && s.contains("stderr line 12"),
            "{s}"
        );
        assert!(
            !s.contains("stderr line 1\n"),
            "only the last lines that fit:\n{s}"
        );
        insta::assert_snapshot!("trace_with_stderr_80x24", s);
    }

    fn jobs_model() -> JobsModel {
        let mut failed = JobView::from_row(&conformance::row(
            "0001",
            "align-1",
            Status::Failed,
            2000,
            true,
        ));
        failed.user = "alice".into();
        let done = JobView::from_row(&conformance::row(
            "0002",
            "sort",
            Status::Succeeded,
            3000,
            false,
        ));
        let mut running = done.clone();
        running.id = "0003".into();
        running.name = "call-variants".into();
        running.status = Status::Running;
        running.stuck = true;
        running.resources = None;
        running.duration_s = Some(754.2);
        running.live = Some(Live {
            cpu_percent: 187.5,
            rss_kb: 3_500_000,
            memory_percent: Some(41.7),
            process_count: 12,
            read_bytes_per_s: Some(52_428_800.0),
            write_bytes_per_s: Some(1_048_576.0),
            ..Live::default()
        });
        let mut m = JobsModel::default();
        m.set(vec![failed, done, running]);
        m.runs = vec![crate::top::model::RunRow {
            pid: 4242,
            user: "bob".into(),
            command: "bwa mem ref.fa reads.fq".into(),
            elapsed_s: 61.5,
            memory_bytes: Some(3 << 30),
        }];
        m
    }

    fn draw_jobs(m: &JobsModel, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| jobs(f, m, "unix:/run/denet-agent/agent.sock", &FOOT))
            .unwrap();
        screen(&t)
    }

    #[test]
    fn jobs_list_at_80x24_and_120x40_sorted_and_filtered() {
        let mut m = jobs_model();
        insta::assert_snapshot!("jobs_80x24", draw_jobs(&m, 80, 24));
        insta::assert_snapshot!("jobs_120x40", draw_jobs(&m, 120, 40));
        m.sort = SortBy::Cpu;
        assert_eq!(m.shown()[0].name, "call-variants");
        m.filter = Filter::Failed;
        assert_eq!(m.shown().len(), 1);
        insta::assert_snapshot!("jobs_failed_by_cpu_80x24", draw_jobs(&m, 80, 24));
    }
}
