//! How a job ended: its final status from what the run recorded, its history row
//! (the trace's numbers, computed by `report`), and the end of its stream.

use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    identity::Identity,
    job::{unix_ms, Job, JobFile, LogStream, Status, StreamMsg},
    Service,
};
use crate::{
    history::{HistoryRow, RowIdentity, TaskRow},
    report,
    run_history::{self, decide_status},
    trace,
};

/// What the supervisor saw of the run, beside the trace.
#[derive(Debug, Default)]
pub(super) struct Ending {
    pub(super) agent_status: Option<ExitStatus>,
    pub(super) error: Option<String>,
    /// The job never started (cancelled while queued, or the agent failed to start).
    pub(super) never_started: bool,
    /// The service killed an agent that overran the job's timeout.
    pub(super) killed_at_timeout: bool,
}

/// The history row from the job's trace (the numbers of `denet-agent stats`), and
/// the rows of its workflow tasks.
pub(super) async fn build_row(
    svc: &Service,
    job: &Job,
    ending: &Ending,
) -> (HistoryRow, Vec<TaskRow>) {
    let (mut row, tasks) = row_from_trace(svc, job, ending).await;
    let kept = job.state().stderr_tail.clone();
    let tail = if kept.is_empty() {
        // A job recovered after a restart: its stderr is only on disk, in a directory
        // its user owns, so no link is followed and only a regular file is read.
        let path = job.log_path(LogStream::Stderr);
        tokio::task::spawn_blocking(move || crate::failure::tail_of_file(&path, false))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    } else {
        kept
    };
    add_failure_context(&mut row, &tail);
    (row, tasks)
}

/// The tail of the job's stderr, and for a job that did not succeed the last error
/// block in it (`crate::failure`).
fn add_failure_context(row: &mut HistoryRow, tail: &crate::failure::Tail) {
    if tail.is_empty() {
        return;
    }
    if row.status != Status::Succeeded {
        if let Some(e) = tail.excerpt() {
            row.failure_kind = Some(e.kind.as_str().to_string());
            row.failure_excerpt = Some(e.text);
        }
    }
    row.stderr_tail = Some(tail.text());
}

/// The row as the trace (and what the supervisor saw) tells it, and the task rows.
async fn row_from_trace(svc: &Service, job: &Job, ending: &Ending) -> (HistoryRow, Vec<TaskRow>) {
    let (cancel_requested, cancel_reason, stuck_seen, start_ms) = {
        let st = job.state();
        (
            st.cancel_requested,
            st.cancel_reason.clone(),
            st.stuck_seen,
            st.start_unix_ms,
        )
    };
    let now = unix_ms();
    let mut row = HistoryRow::unmeasured(RowIdentity {
        id: job.id.clone(),
        name: job.spec.name.clone(),
        cmd: job.spec.cmd.clone(),
        cwd: job.spec.cwd.to_string_lossy().into_owned(),
        hostname: svc.hostname.clone(),
        trace_path: job.trace_path().to_string_lossy().into_owned(),
        user: job.owner.user.clone(),
        uid: job.owner.uid,
    });
    // Decided below from how the job ended.
    row.start_unix_ms = start_ms.unwrap_or(now);
    row.end_unix_ms = now;
    row.stuck = stuck_seen;
    row.error = ending.error.clone();
    if ending.never_started {
        row.status = if cancel_requested {
            Status::Cancelled
        } else {
            Status::StartupFailed
        };
        row.error = row
            .error
            .or(cancel_reason.map(|r| format!("cancelled: {r}")));
        return (row, Vec::new());
    }
    let path = job.trace_path();
    let analysis = tokio::task::spawn_blocking(move || {
        report::analyze(&path, Box::new(|_: &str| {})).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("trace analysis panicked: {e}")));
    let report = match analysis {
        Ok(r) if r.totals.from_summary => r,
        other => {
            // No command pid in the trace: the agent failed before the command ran.
            let command_ran = matches!(&other, Ok(r) if r.run.pid.is_some());
            let why = match other {
                Ok(_) => "the trace has no summary".to_string(),
                Err(e) => format!("the trace is unreadable: {e}"),
            };
            let agent = ending
                .agent_status
                .map(|s| format!(" (agent {s}; see agent.log)"))
                .unwrap_or_default();
            row.status = if cancel_requested {
                Status::Cancelled
            } else if ending.killed_at_timeout {
                Status::TimedOut
            } else if command_ran {
                Status::Failed
            } else {
                Status::StartupFailed
            };
            let earlier = ending
                .error
                .as_deref()
                .map(|e| format!("{e}; "))
                .unwrap_or_default();
            row.error = Some(format!("{earlier}{why}{agent}"));
            row.duration_s = (row.end_unix_ms - row.start_unix_ms).max(0) as f64 / 1e3;
            return (row, Vec::new());
        }
    };
    let start_error = run_history::fill_numbers(&mut row, &report);
    let t = &report.totals;
    let wall_s = row.duration_s;
    let cancelled = t.cancelled.unwrap_or(false);
    if cancelled {
        if let Some(r) = cancel_reason {
            row.error.get_or_insert(format!("cancelled: {r}"));
        }
    }
    row.status = decide_status(
        cancelled,
        t.timed_out.unwrap_or(false),
        t.exit_code,
        start_error,
        wall_s,
        svc.config.startup_window.as_secs_f64(),
    );
    // Said, not judged: the job itself may have gone well.
    if let Some(te) = &t.tracer_error {
        row.error = Some(match row.error.take() {
            Some(e) => format!("{e}; {te}"),
            None => te.clone(),
        });
    }
    let tasks = run_history::task_rows(&row, &report);
    (row, tasks)
}

/// The row of a job whose service died before recording it (found at the next
/// start: a job directory with a job.json, no spooled row and no database row). Its
/// agent saw the control pipe close and stopped the job; its trace is waited for
/// (up to the kill grace and a little more) and read like any other.
pub(super) async fn recover_row(svc: &Service, dir: &Path) -> Option<(HistoryRow, Vec<TaskRow>)> {
    let file: JobFile = serde_json::from_slice(&std::fs::read(dir.join("job.json")).ok()?).ok()?;
    let spec = super::spec::JobSpec {
        limits: Default::default(),
        name: file.name,
        cmd: file.cmd,
        env: Vec::new(),
        cwd: file.cwd,
        timeout: Duration::from_secs_f64(file.timeout_s.max(0.0)),
        stuck_after: Duration::from_secs_f64(file.stuck_after_s.max(0.0)),
    };
    // The user may be gone from the user database by now: the row keeps what the
    // job file says.
    let owner = Identity::of_uid(file.uid).unwrap_or_else(|_| Identity {
        uid: file.uid,
        gid: file.uid,
        user: file.user.clone(),
        home: PathBuf::from("/"),
        shell: PathBuf::from("/bin/sh"),
        groups: Vec::new(),
    });
    let job = Job::new(file.id, spec, owner, dir.to_path_buf());
    let until = Instant::now() + svc.config.kill_grace + Duration::from_secs(3);
    while Instant::now() < until && trace::reader::summary_at_end(&job.trace_path()).is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ending = Ending {
        error: Some("the service stopped while the job ran; recorded at its next start".into()),
        ..Default::default()
    };
    Some(build_row(svc, &job, &ending).await)
}

/// Records the row (spooled to the job directory first, so a database outage loses
/// nothing), ends the job's stream and frees its name.
pub(super) async fn finalize(svc: &Arc<Service>, job: &Arc<Job>, ending: Ending) {
    let (row, tasks) = build_row(svc, job, &ending).await;
    svc.record(job, &row, &tasks).await;
    {
        let mut st = job.state();
        let view = job.ended_view(&st, &row);
        st.status = row.status;
        st.stuck = false;
        st.paused = false;
        st.control = None;
        st.live = None;
        st.result = Some(row);
        Job::publish(&st, &StreamMsg::End { job: &view });
        // Subscribers still get what is buffered; the buffer is freed with them.
        st.events = None;
    }
    svc.job_ended(job);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules() {
        let d = |c, t, code, se, wall| decide_status(c, t, code, se, wall, 5.0);
        assert_eq!(d(false, false, Some(0), false, 0.1), Status::Succeeded);
        assert_eq!(d(false, false, Some(1), false, 0.1), Status::StartupFailed);
        assert_eq!(
            d(false, false, None, false, 0.1),
            Status::StartupFailed,
            "killed early"
        );
        assert_eq!(d(false, false, Some(1), false, 6.0), Status::Failed);
        assert_eq!(
            d(false, false, Some(127), true, 9.0),
            Status::StartupFailed,
            "exec failed"
        );
        assert_eq!(d(false, true, None, false, 9.0), Status::TimedOut);
        assert_eq!(d(true, false, None, false, 0.1), Status::Cancelled);
        assert_eq!(
            d(true, true, None, false, 9.0),
            Status::Cancelled,
            "stop wins"
        );
    }
}
