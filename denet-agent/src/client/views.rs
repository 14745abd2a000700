//! What `denet-agent jobs` prints for people: one job's view (`show`), the list of
//! failed jobs with their excerpts (`errors`), and matching log lines (`logs
//! --grep`). Pure functions of the service's types, so they are tested without one.

use std::fmt::Write as _;

use crate::{
    history::{HistoryRow, Status},
    report::{command, units},
    service::job::JobView,
};

/// `jobs show ID`: status and why, command, times, resources as `stats` words them,
/// and the failure excerpt.
pub fn job_text(j: &JobView) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "job {}  {}  (user {})", j.id, j.name, j.user);
    let mut status = j.status.as_str().to_string();
    match (j.exit_code, j.signal) {
        (Some(c), _) => {
            let _ = write!(status, ", exit {c}");
        }
        (None, Some(sig)) => {
            let _ = write!(status, ", killed by {}", units::signal_name(sig));
        }
        _ => {}
    }
    for (on, flag) in [(j.stuck, "stuck"), (j.paused, "paused")] {
        if on {
            let _ = write!(status, " [{flag}]");
        }
    }
    let _ = writeln!(o, "status:   {status}");
    if let Some(e) = &j.error {
        let _ = writeln!(o, "why:      {e}");
    }
    let _ = writeln!(o, "command:  {}", command::full(&j.cmd));
    let _ = writeln!(o, "cwd:      {}", j.cwd);
    let ms = |t: i64| units::utc_datetime((t.max(0) as u64).saturating_mul(1_000_000));
    if let Some(t) = j.start_unix_ms {
        let _ = write!(o, "started:  {}", ms(t));
        match (j.end_unix_ms, j.duration_s) {
            (Some(e), Some(d)) => {
                let _ = writeln!(o, ", ended {}, wall {:.3} s", ms(e), d);
            }
            (None, Some(d)) => {
                let _ = writeln!(o, ", running for {d:.1} s");
            }
            _ => o.push('\n'),
        }
    }
    if let Some(r) = &j.resources {
        resources(&mut o, r);
    } else if let Some(l) = &j.live {
        let _ = writeln!(
            o,
            "now:      {} CPU, RSS {}",
            units::percent(l.cpu_percent),
            units::kib(l.rss_kb)
        );
    }
    if let Some(r) = &j.resources {
        if let (Some(kind), Some(text)) = (&r.failure_kind, &r.failure_excerpt) {
            let _ = writeln!(o, "failure ({}):", kind.replace('_', " "));
            for l in text.lines() {
                let _ = writeln!(o, "  {l}");
            }
        }
    }
    o
}

fn resources(o: &mut String, r: &HistoryRow) {
    let ns = |s: f64| (s.max(0.0) * 1e9) as u64;
    let _ = writeln!(
        o,
        "CPU:      {} user + {} system ({} of one CPU), {} processes",
        units::duration_ns(ns(r.cpu_user_s)),
        units::duration_ns(ns(r.cpu_sys_s)),
        units::percent(r.cpu_percent),
        units::count(r.process_count.max(0) as u64)
    );
    let mut mem = format!(
        "peak RSS {} (largest process)",
        units::kib(r.peak_rss_kb.max(0) as u64)
    );
    if let Some(p) = r.memory_peak_bytes {
        let _ = write!(mem, ", cgroup peak {}", units::bytes(p.max(0) as u64));
        if let Some(l) = r.memory_limit_bytes {
            let _ = write!(mem, " of {} limit", units::bytes(l.max(0) as u64));
        }
    }
    if r.oom_kills > 0 {
        let _ = write!(mem, ", {} OOM kill(s)", r.oom_kills);
    }
    let _ = writeln!(o, "memory:   {mem}");
    if let (Some(rd), Some(wr)) = (r.read_bytes, r.write_bytes) {
        let _ = writeln!(
            o,
            "storage:  read {}, written {}",
            units::bytes(rd.max(0) as u64),
            units::bytes(wr.max(0) as u64)
        );
    }
}

/// A job `jobs errors` lists: it failed, timed out or lost a process to the OOM
/// killer.
pub fn is_error(r: &HistoryRow) -> bool {
    matches!(
        r.status,
        Status::Failed | Status::TimedOut | Status::StartupFailed
    ) || r.oom_kills > 0
}

/// `jobs errors`: one block per job, newest first; the excerpt's first line, or all
/// of it with `traceback`.
pub fn errors_text(rows: &[HistoryRow], traceback: bool) -> String {
    let mut o = String::new();
    for r in rows {
        let exit = match (r.exit_code, r.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => units::signal_name(sig),
            (None, None) => "-".into(),
        };
        let oom = if r.oom_kills > 0 {
            format!(", {} OOM kill(s)", r.oom_kills)
        } else {
            String::new()
        };
        let ended = units::utc_datetime((r.end_unix_ms.max(0) as u64).saturating_mul(1_000_000));
        let _ = writeln!(
            o,
            "{}  {}  {} ({exit}{oom})  ended {ended}",
            r.id,
            r.name,
            r.status.as_str()
        );
        match (&r.failure_kind, &r.failure_excerpt) {
            (Some(kind), Some(text)) if traceback => {
                let _ = writeln!(o, "  {}:", kind.replace('_', " "));
                for l in text.lines() {
                    let _ = writeln!(o, "    {l}");
                }
            }
            (Some(_), Some(text)) => {
                // The line that says what went wrong: a traceback's last, else the first.
                let line = match r.failure_kind.as_deref() {
                    Some("python_traceback") => text.lines().last(),
                    _ => text.lines().next(),
                };
                let _ = writeln!(o, "  {}", line.unwrap_or(""));
            }
            _ => {
                if let Some(e) = &r.error {
                    let _ = writeln!(o, "  {e}");
                }
            }
        }
    }
    o
}

/// The lines of `text` that contain `pattern`, numbered from 1, as
/// `STREAM:N: line`.
pub fn grep_lines(stream: &str, text: &str, pattern: &str) -> String {
    let mut o = String::new();
    for (i, l) in text.lines().enumerate() {
        if l.contains(pattern) {
            let _ = writeln!(o, "{stream}:{}: {l}", i + 1);
        }
    }
    o
}

/// A `--since` value: a duration before now (`90s`, `30m`, `2h`, `7d`) as the Unix
/// ms it starts at.
pub fn since_ms(value: &str, now_ms: i64) -> Result<i64, String> {
    let bad = || format!("--since {value:?}: a duration such as 90s, 30m, 2h or 7d");
    let (num, scale) = [
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ]
    .iter()
    .find_map(|(unit, scale)| value.strip_suffix(unit).map(|n| (n, *scale)))
    .ok_or_else(bad)?;
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(bad)?;
    Ok(now_ms - (n * f64::from(scale)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::conformance;

    fn failed_row() -> HistoryRow {
        let mut r = conformance::row("j1", "align", Status::Failed, 2000, true);
        r.exit_code = Some(1);
        r.signal = None;
        r.failure_kind = Some("python_traceback".into());
        r.failure_excerpt = Some(
            "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\n".into(),
        );
        r
    }

    #[test]
    fn show_says_status_why_command_resources_and_failure() {
        let r = failed_row();
        let v = JobView::from_row(&r);
        let t = job_text(&v);
        assert!(t.contains("status:   failed, exit 1"), "{t}");
        assert!(t.contains("why:      boom"), "{t}");
        assert!(t.contains("CPU:"), "{t}");
        assert!(
            t.contains("failure (python traceback):\n  Traceback"),
            "{t}"
        );
        assert!(t.contains("  ValueError: bad\n"), "{t}");
    }

    #[test]
    fn errors_show_the_exception_line_or_the_whole_block() {
        let rows = [failed_row()];
        let short = errors_text(&rows, false);
        assert!(
            short.contains("j1  align  failed (exit 1, 2 OOM kill(s))"),
            "{short}"
        );
        assert!(short.ends_with("  ValueError: bad\n"), "{short}");
        let long = errors_text(&rows, true);
        assert!(
            long.contains("    Traceback (most recent call last):"),
            "{long}"
        );
        let ok = conformance::row("j2", "n", Status::Succeeded, 1, false);
        assert!(!is_error(&ok));
        assert!(is_error(&rows[0]));
    }

    #[test]
    fn grep_numbers_lines_and_since_reads_durations() {
        let g = grep_lines("stderr", "a\nerror: x\nb\nerror: y\n", "error");
        assert_eq!(g, "stderr:2: error: x\nstderr:4: error: y\n");
        assert_eq!(since_ms("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(since_ms("90s", 100_000), Ok(10_000));
        assert!(since_ms("yesterday", 0).is_err());
        assert!(since_ms("-1h", 0).is_err());
        assert!(
            since_ms("5µ", 0).is_err(),
            "a multi-byte unit is refused, not a panic"
        );
    }
}
