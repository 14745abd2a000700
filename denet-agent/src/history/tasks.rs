//! The task history: one row per workflow task (a Snakemake job, a Nextflow task, a
//! Slurm job) of a recorded run, what `history resources` learns from. Rows belong
//! to their run (`run_id`, a `job_history` id); writing a run's tasks replaces the
//! ones it had, so a retry never duplicates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One task instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub run_id: String,
    /// Its place in the run (by start), from 0.
    pub seq: i64,
    /// "snakemake", "nextflow" or "slurm".
    pub engine: String,
    /// The rule, Nextflow process or Slurm job name (the engine's name when unknown).
    pub name: String,
    /// The engine's id of the task (Snakemake job id, Nextflow hash, Slurm job id).
    pub task_id: Option<String>,
    pub wildcards: BTreeMap<String, String>,
    pub slurm_job_id: Option<String>,
    pub hostname: String,
    pub user: String,
    pub uid: u32,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub duration_s: f64,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Processes of the task the OOM killer chose.
    pub oom_kills: i64,
    /// The run's timeout stopped it.
    pub timed_out: bool,
    /// User + system CPU seconds of its processes.
    pub cpu_s: f64,
    /// Its largest process's peak RSS, KiB.
    pub peak_rss_kb: Option<i64>,
    /// Storage bytes read and written by its processes.
    pub read_bytes: i64,
    pub write_bytes: i64,
    pub process_count: i64,
}

impl TaskRow {
    /// Ended otherwise than with exit 0.
    pub fn failed(&self) -> bool {
        self.exit_code != Some(0)
    }
}

/// Filters of a task query: a name pattern (`*` matches any run of characters,
/// as in a shell), tasks that ended at or after a time, a user's rows only.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub name: Option<String>,
    pub since_unix_ms: Option<i64>,
    pub uid: Option<u32>,
}

/// The `task_history` columns, in [`TaskRow`] field order.
pub(crate) const TASK_COLUMNS: [&str; 22] = [
    "run_id",
    "seq",
    "engine",
    "name",
    "task_id",
    "wildcards",
    "slurm_job_id",
    "hostname",
    "user_name",
    "uid",
    "start_unix_ms",
    "end_unix_ms",
    "duration_s",
    "exit_code",
    "signal",
    "oom_kills",
    "timed_out",
    "cpu_s",
    "peak_rss_kb",
    "read_bytes",
    "write_bytes",
    "process_count",
];

/// `INSERT … ON CONFLICT (run_id, seq) DO UPDATE`: writing a run's tasks again
/// (a retry) overwrites them.
pub(crate) fn upsert_task_sql(placeholder: impl Fn(usize) -> String) -> String {
    let values: Vec<String> = (1..=TASK_COLUMNS.len()).map(placeholder).collect();
    let updates: Vec<String> = TASK_COLUMNS[2..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO task_history ({}) VALUES ({}) ON CONFLICT (run_id, seq) DO UPDATE SET {}",
        TASK_COLUMNS.join(", "),
        values.join(", "),
        updates.join(", ")
    )
}

/// Removes the rows of a run past its last task (parameters: run id, task count).
pub(crate) fn trim_tasks_sql(run: &str, count: &str) -> String {
    format!("DELETE FROM task_history WHERE run_id = {run} AND seq >= {count}")
}

/// `SELECT` with the query's filters; parameters in order: name pattern (as a
/// LIKE pattern), since, uid.
pub(crate) fn select_tasks_sql(q: &TaskQuery, placeholder: impl Fn(usize) -> String) -> String {
    let mut n = 0;
    let mut next = || {
        n += 1;
        placeholder(n)
    };
    let mut filters = Vec::new();
    if q.name.is_some() {
        filters.push(format!("name LIKE {} ESCAPE '\\'", next()));
    }
    if q.since_unix_ms.is_some() {
        filters.push(format!("end_unix_ms >= {}", next()));
    }
    if q.uid.is_some() {
        filters.push(format!("uid = {}", next()));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    format!(
        "SELECT {} FROM task_history{filter} ORDER BY end_unix_ms, run_id, seq",
        TASK_COLUMNS.join(", ")
    )
}

/// A shell-style name pattern (`*`) as a LIKE pattern, its own `%`, `_` and `\`
/// taken literally.
pub(crate) fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 2);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn wildcards_to_json(w: &BTreeMap<String, String>) -> String {
    // A map of strings always serializes.
    serde_json::to_string(w).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn wildcards_from_json(text: Option<String>) -> BTreeMap<String, String> {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(like_pattern("map*"), "map%");
        assert_eq!(like_pattern("a_b%c\\"), "a\\_b\\%c\\\\");
    }
}
