//! What a finished run puts in the history: its row, with the numbers `stats`
//! computes from its trace, and a row per workflow task. Used by `run --db`, by the
//! job service for its jobs, and by the node daemon for the Slurm jobs it traces.

use crate::{
    history::{HistoryRow, RowIdentity, Status, TaskRow},
    report::stats::StatsReport,
};

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| x.min(i64::MAX as u64) as i64)
}

/// The run's final status from what it recorded. A run that did not exit 0 within
/// `startup_window_s` (or whose command could not start) failed to start.
pub fn decide_status(
    cancelled: bool,
    timed_out: bool,
    exit_code: Option<i32>,
    start_error: bool,
    wall_s: f64,
    startup_window_s: f64,
) -> Status {
    if cancelled {
        Status::Cancelled
    } else if timed_out {
        Status::TimedOut
    } else if exit_code == Some(0) && !start_error {
        Status::Succeeded
    } else if start_error || wall_s < startup_window_s {
        Status::StartupFailed
    } else {
        Status::Failed
    }
}

/// Sets the row's times, status inputs and numbers from the trace's report (a
/// report with a summary). Returns whether the command failed to start.
pub fn fill_numbers(row: &mut HistoryRow, report: &StatsReport) -> bool {
    let t = &report.totals;
    let wall_s = t.wall_ns as f64 / 1e9;
    if let Some(start_ns) = report.run.start_unix_ns {
        row.start_unix_ms = (start_ns / 1_000_000) as i64;
    }
    row.end_unix_ms = row.start_unix_ms + (t.wall_ns / 1_000_000) as i64;
    row.duration_s = wall_s;
    row.exit_code = t.exit_code;
    row.signal = t.signal;
    row.cpu_user_s = t.cpu_user_ns as f64 / 1e9;
    row.cpu_sys_s = t.cpu_sys_ns as f64 / 1e9;
    row.cpu_percent = t.cpu_percent.unwrap_or(if wall_s > 0.0 {
        (row.cpu_user_s + row.cpu_sys_s) / wall_s * 100.0
    } else {
        0.0
    });
    if !row.cpu_percent.is_finite() {
        row.cpu_percent = 0.0;
    }
    row.peak_rss_kb = opt_i64(t.max_process_peak_rss_kb).unwrap_or(0);
    row.read_bytes = opt_i64(t.io.read_bytes);
    row.write_bytes = opt_i64(t.io.write_bytes);
    row.blk_read_bytes = opt_i64(t.depth.blk_read_bytes);
    row.blk_write_bytes = opt_i64(t.depth.blk_write_bytes);
    row.net_rx_bytes = opt_i64(t.depth.net_rx_bytes);
    row.net_tx_bytes = opt_i64(t.depth.net_tx_bytes);
    row.process_count = opt_i64(t.summary_process_count.or(Some(t.processes))).unwrap_or(0);
    row.lost_events = opt_i64(t.lost_events).unwrap_or(0);
    row.memory_peak_bytes = opt_i64(t.memory_peak_bytes);
    row.memory_limit_bytes = opt_i64(t.memory_limit_bytes);
    row.oom_kills = opt_i64(t.oom_kills).unwrap_or(0);
    if let Some(e) = &t.error {
        row.error = Some(e.clone());
    }
    // The run's Slurm job: the one its tasks ran in.
    row.slurm_job_id = report
        .tasks
        .iter()
        .find_map(|t| t.task.slurm.as_ref().map(|s| s.display_id()));
    t.error.is_some()
}

/// The history row of a run recorded by `run --db` or the node daemon (no job
/// service around it): id, name and owner given, the rest from the report.
pub fn run_row(
    report: &StatsReport,
    id: String,
    name: String,
    trace_path: String,
    user: String,
    uid: u32,
) -> HistoryRow {
    let mut row = HistoryRow::unmeasured(RowIdentity {
        id,
        name,
        cmd: report.run.argv.clone(),
        cwd: report.run.cwd.clone().unwrap_or_default(),
        hostname: report.run.hostname.clone().unwrap_or_default(),
        trace_path,
        user,
        uid,
    });
    let start_error = fill_numbers(&mut row, report);
    let t = &report.totals;
    row.status = decide_status(
        t.cancelled.unwrap_or(false),
        t.timed_out.unwrap_or(false),
        t.exit_code,
        start_error,
        row.duration_s,
        0.0,
    );
    if let Some(te) = &t.tracer_error {
        row.error = Some(match row.error.take() {
            Some(e) => format!("{e}; {te}"),
            None => te.clone(),
        });
    }
    row
}

/// A row per workflow task of the run, in order of start. A task counts as timed
/// out when the run's timeout stopped the run and a signal ended the task.
pub fn task_rows(run: &HistoryRow, report: &StatsReport) -> Vec<TaskRow> {
    let t0_boot = report.run.start_boot_ns;
    let t0_unix_ms = report
        .run
        .start_unix_ns
        .map_or(run.start_unix_ms, |ns| (ns / 1_000_000) as i64);
    let to_unix_ms = |boot: u64| t0_unix_ms + (boot as i64 - t0_boot as i64) / 1_000_000;
    let run_timed_out = report.totals.timed_out == Some(true);
    report
        .tasks
        .iter()
        .enumerate()
        .map(|(seq, t)| {
            let start = t.start_boot_ns.unwrap_or(t0_boot);
            let end = t.end_boot_ns.unwrap_or(start);
            TaskRow {
                run_id: run.id.clone(),
                seq: seq as i64,
                engine: t.task.engine.to_string(),
                name: t.task.group_name().to_string(),
                task_id: t.task.id.clone(),
                wildcards: t.task.wildcards.clone().unwrap_or_default(),
                slurm_job_id: t.task.slurm.as_ref().map(|s| s.display_id()),
                hostname: run.hostname.clone(),
                user: run.user.clone(),
                uid: run.uid,
                start_unix_ms: to_unix_ms(start),
                end_unix_ms: to_unix_ms(end),
                duration_s: end.saturating_sub(start) as f64 / 1e9,
                exit_code: t.exit_code,
                signal: t.signal,
                oom_kills: t.oom_kills as i64,
                timed_out: run_timed_out && t.signal.is_some(),
                cpu_s: t.cpu_ns() as f64 / 1e9,
                peak_rss_kb: opt_i64(t.peak_rss_kb),
                read_bytes: t.read_bytes.min(i64::MAX as u64) as i64,
                write_bytes: t.write_bytes.min(i64::MAX as u64) as i64,
                process_count: t.processes as i64,
            }
        })
        .collect()
}

/// Why a run's rows could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("reading the trace {path}: {source}")]
    Trace {
        path: String,
        #[source]
        source: crate::trace::TraceError,
    },
    #[error("the trace {0} has no summary: the run did not finish")]
    Unfinished(String),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
}

/// Who a recorded run belongs to and what it is called.
pub struct RunIdentity {
    pub id: String,
    /// `None`: the Slurm job's name when the run was one, else the command.
    pub name: Option<String>,
    pub user: String,
    pub uid: u32,
}

/// Reads a finished trace and writes the run's row and its task rows. Returns the
/// row and the number of task rows.
pub async fn record_trace(
    db: &crate::history::History,
    trace: &std::path::Path,
    who: RunIdentity,
) -> Result<(HistoryRow, usize), RecordError> {
    let path = trace.to_path_buf();
    let shown = path.display().to_string();
    let report =
        tokio::task::spawn_blocking(move || crate::report::analyze(&path, Box::new(|_: &str| {})))
            .await
            .map_err(|e| crate::history::HistoryError::Internal {
                backend: db.backend(),
                op: "reading the trace".into(),
                detail: e.to_string(),
            })?
            .map_err(|source| RecordError::Trace {
                path: shown.clone(),
                source,
            })?;
    if !report.totals.from_summary {
        return Err(RecordError::Unfinished(shown));
    }
    let (row, tasks) = rows_of(&report, shown, who);
    insert_rows(db, &row, &tasks).await?;
    Ok((row, tasks.len()))
}

/// A finished run's row and task rows from its trace's report. Its name is
/// `who.name`, else the Slurm job's name when the run was one, else the command.
pub fn rows_of(
    report: &StatsReport,
    trace_path: String,
    who: RunIdentity,
) -> (HistoryRow, Vec<TaskRow>) {
    let name = who.name.unwrap_or_else(|| {
        report
            .tasks
            .iter()
            .find_map(|t| t.task.slurm.as_ref().and_then(|s| s.job_name.clone()))
            .unwrap_or_else(|| report.run.command.clone())
    });
    let row = run_row(report, who.id, name, trace_path, who.user, who.uid);
    let tasks = task_rows(&row, report);
    (row, tasks)
}

/// Writes a run's row, then its task rows.
pub async fn insert_rows(
    db: &crate::history::History,
    row: &HistoryRow,
    tasks: &[TaskRow],
) -> Result<(), crate::history::HistoryError> {
    db.insert(row).await?;
    db.insert_tasks(&row.id, tasks).await
}
