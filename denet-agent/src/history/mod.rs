//! Job history for `denet-agent serve`: one row per finished job, in SQLite (a
//! local file) or PostgreSQL (shared by many nodes). See docs/history.md.
//!
//! [`History::open`] picks the backend from the spec, applies the versioned
//! migrations ([`migrations`]) and returns a cheap-to-clone handle. Every call is
//! async; SQLite work runs on tokio's blocking pool.

pub mod migrations;
mod postgres;
pub mod resources;
mod sqlite;
pub mod tasks;

pub use tasks::{TaskQuery, TaskRow};

use std::sync::Arc;

/// Job statuses. `queued` and `running` are live; the others are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    StartupFailed,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::TimedOut,
        Status::Cancelled,
        Status::StartupFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::StartupFailed => "startup_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// One finished job.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryRow {
    /// Job id (unique, primary key).
    pub id: String,
    pub name: String,
    /// Stored as JSON text.
    pub cmd: Vec<String>,
    pub cwd: String,
    /// Node that ran it (many nodes share one PostgreSQL server).
    pub hostname: String,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub duration_s: f64,
    /// A final status (only finished jobs are stored).
    pub status: Status,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    /// (user+sys)/duration*100; 100 = one CPU.
    pub cpu_percent: f64,
    /// Largest single-process peak RSS, KiB.
    pub peak_rss_kb: i64,
    pub read_bytes: Option<i64>,
    pub write_bytes: Option<i64>,
    pub blk_read_bytes: Option<i64>,
    pub blk_write_bytes: Option<i64>,
    pub net_rx_bytes: Option<i64>,
    pub net_tx_bytes: Option<i64>,
    pub process_count: i64,
    pub lost_events: i64,
    /// The stuck flag was raised at some point.
    pub stuck: bool,
    pub trace_path: String,
    pub error: Option<String>,
    /// The local user the job ran as, and its uid (the service shows a user only
    /// their own rows; root sees all).
    pub user: String,
    pub uid: u32,
    /// The job cgroup's memory peak and limit, bytes (page cache included); null
    /// without a cgroup or a limit.
    pub memory_peak_bytes: Option<i64>,
    pub memory_limit_bytes: Option<i64>,
    /// Processes of the job the OOM killer chose.
    pub oom_kills: i64,
    /// The last lines of the job's stderr (at most 50 lines, 16 KiB).
    pub stderr_tail: Option<String>,
    /// What the failure excerpt is (`python_traceback`, `r_error`, `java_exception`,
    /// `rust_panic`, `signal`, `htslib_error`, `last_lines`) and its text: the last
    /// recognisable error block of the stderr tail. Only for jobs that did not
    /// succeed.
    pub failure_kind: Option<String>,
    pub failure_excerpt: Option<String>,
    /// The Slurm job the run was (`123`, or `120_4` for an array task), if any.
    pub slurm_job_id: Option<String>,
}

/// Who a row is about, before anything is measured.
pub struct RowIdentity {
    pub id: String,
    pub name: String,
    pub cmd: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    pub trace_path: String,
    pub user: String,
    pub uid: u32,
}

impl HistoryRow {
    /// A row with its identity and nothing measured yet (status `failed` until
    /// decided, times and numbers zero, the optional ones null).
    pub fn unmeasured(who: RowIdentity) -> HistoryRow {
        HistoryRow {
            id: who.id,
            name: who.name,
            cmd: who.cmd,
            cwd: who.cwd,
            hostname: who.hostname,
            start_unix_ms: 0,
            end_unix_ms: 0,
            duration_s: 0.0,
            status: Status::Failed,
            exit_code: None,
            signal: None,
            cpu_user_s: 0.0,
            cpu_sys_s: 0.0,
            cpu_percent: 0.0,
            peak_rss_kb: 0,
            read_bytes: None,
            write_bytes: None,
            blk_read_bytes: None,
            blk_write_bytes: None,
            net_rx_bytes: None,
            net_tx_bytes: None,
            process_count: 0,
            lost_events: 0,
            stuck: false,
            trace_path: who.trace_path,
            error: None,
            user: who.user,
            uid: who.uid,
            memory_peak_bytes: None,
            memory_limit_bytes: None,
            oom_kills: 0,
            stderr_tail: None,
            failure_kind: None,
            failure_excerpt: None,
            slurm_job_id: None,
        }
    }
}

/// Filters for [`History::query`]: exact name and status; `limit` 0 means
/// [`DEFAULT_LIMIT`] (the caller clamps large values).
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub name: Option<String>,
    /// Only the rows of this uid (a caller who is not root).
    pub uid: Option<u32>,
    pub status: Option<Status>,
    pub limit: u32,
}

/// Rows returned by a query whose `limit` is 0.
pub const DEFAULT_LIMIT: u32 = 100;

impl HistoryQuery {
    fn effective_limit(&self) -> i64 {
        i64::from(if self.limit == 0 {
            DEFAULT_LIMIT
        } else {
            self.limit
        })
    }
}

/// The `job_history` columns, in [`HistoryRow`] field order (both backends read
/// and write them in this order).
pub(crate) const COLUMNS: [&str; 35] = [
    "id",
    "name",
    "cmd",
    "cwd",
    "hostname",
    "start_unix_ms",
    "end_unix_ms",
    "duration_s",
    "status",
    "exit_code",
    "signal",
    "cpu_user_s",
    "cpu_sys_s",
    "cpu_percent",
    "peak_rss_kb",
    "read_bytes",
    "write_bytes",
    "blk_read_bytes",
    "blk_write_bytes",
    "net_rx_bytes",
    "net_tx_bytes",
    "process_count",
    "lost_events",
    "stuck",
    "trace_path",
    "error",
    "user_name",
    "uid",
    "memory_peak_bytes",
    "memory_limit_bytes",
    "oom_kills",
    "stderr_tail",
    "failure_kind",
    "failure_excerpt",
    "slurm_job_id",
];

/// `INSERT … ON CONFLICT (id) DO UPDATE` over all columns; `placeholder(i)` renders
/// parameter i (1-based) in the backend's syntax.
pub(crate) fn upsert_sql(placeholder: impl Fn(usize) -> String) -> String {
    let values: Vec<String> = (1..=COLUMNS.len()).map(placeholder).collect();
    let updates: Vec<String> = COLUMNS[1..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO job_history ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        COLUMNS.join(", "),
        values.join(", "),
        updates.join(", ")
    )
}

/// `SELECT` of all columns with the query's filters; parameters in order: name
/// (if set), status (if set), uid (if set), limit.
pub(crate) fn select_sql(q: &HistoryQuery, placeholder: impl Fn(usize) -> String) -> String {
    let mut n = 0;
    let mut next = || {
        n += 1;
        placeholder(n)
    };
    let mut filters = Vec::new();
    if q.name.is_some() {
        filters.push(format!("name = {}", next()));
    }
    if q.status.is_some() {
        filters.push(format!("status = {}", next()));
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
        "SELECT {} FROM job_history{filter} ORDER BY end_unix_ms DESC, id ASC LIMIT {}",
        COLUMNS.join(", "),
        next()
    )
}

pub(crate) fn get_sql(placeholder: &str) -> String {
    format!(
        "SELECT {} FROM job_history WHERE id = {placeholder}",
        COLUMNS.join(", ")
    )
}

/// Errors of the history store; each says which backend and what it was doing.
///
/// The message already ends with the cause's text, so the cause is kept as a plain
/// field, not as `source()`: error chains (`{:#}`) would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("job history (sqlite): {op}: {cause}")]
    Sqlite { op: String, cause: rusqlite::Error },
    /// `detail` is the full message (the server's error text included).
    #[error("job history (postgres): {op}: {detail}")]
    Postgres {
        op: String,
        detail: String,
        cause: tokio_postgres::Error,
    },
    #[error("job history ({backend}): {op}: {cause}")]
    Io {
        backend: &'static str,
        op: String,
        cause: std::io::Error,
    },
    #[error(
        "job history ({backend}): the database is at schema version {found}, newer than this \
         denet-agent knows (up to {supported}); it was left untouched: use a newer denet-agent \
         or another database"
    )]
    FutureSchema {
        backend: &'static str,
        found: i64,
        supported: i64,
    },
    /// A stored value that cannot be read back (e.g. `cmd` not a JSON array).
    #[error("job history ({backend}): {op}: {detail}")]
    Corrupt {
        backend: &'static str,
        op: String,
        detail: String,
    },
    /// A row this store refuses to write (e.g. a NaN duration).
    #[error("job history: invalid row {id:?}: {detail}")]
    InvalidRow { id: String, detail: String },
    /// The blocking task or the connection lock failed (a panic elsewhere).
    #[error("job history ({backend}): {op}: {detail}")]
    Internal {
        backend: &'static str,
        op: String,
        detail: String,
    },
}

/// A history given on the command line: `sqlite:PATH` is the file PATH, a
/// postgres:// URL is itself, anything else a path to a SQLite file.
pub fn db_spec(given: &str) -> &str {
    given.strip_prefix("sqlite:").unwrap_or(given)
}

/// The job-history store. Clone it freely: clones share one connection (SQLite)
/// or one client (PostgreSQL).
#[derive(Clone)]
pub struct History {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteHistory),
    Postgres(Arc<postgres::PgHistory>),
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the PostgreSQL URL: it may hold a password.
        f.debug_struct("History")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

impl History {
    /// `spec` starting with postgres:// or postgresql:// opens PostgreSQL; anything
    /// else is a SQLite file path (its directory must exist; the file is created
    /// owner-only). Applies the pending migrations before returning.
    pub async fn open(spec: &str) -> Result<History, HistoryError> {
        let backend = if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Backend::Postgres(Arc::new(postgres::PgHistory::open(spec).await?))
        } else {
            Backend::Sqlite(sqlite::SqliteHistory::open(spec).await?)
        };
        Ok(History { backend })
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The highest applied migration (equal to [`migrations::latest_version`] once open).
    pub async fn schema_version(&self) -> Result<i64, HistoryError> {
        match &self.backend {
            Backend::Sqlite(s) => s.schema_version().await,
            Backend::Postgres(p) => p.schema_version().await,
        }
    }

    /// Inserts, or replaces the row with the same id (a retry never duplicates).
    pub async fn insert(&self, row: &HistoryRow) -> Result<(), HistoryError> {
        validate(row)?;
        match &self.backend {
            Backend::Sqlite(s) => s.insert(row.clone()).await,
            Backend::Postgres(p) => p.insert(row).await,
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<HistoryRow>, HistoryError> {
        match &self.backend {
            Backend::Sqlite(s) => s.get(id.to_owned()).await,
            Backend::Postgres(p) => p.get(id).await,
        }
    }

    /// Writes a run's task rows, replacing any it had (one transaction).
    pub async fn insert_tasks(&self, run_id: &str, rows: &[TaskRow]) -> Result<(), HistoryError> {
        for r in rows {
            validate_task(r)?;
        }
        match &self.backend {
            Backend::Sqlite(s) => s.insert_tasks(run_id.to_owned(), rows.to_vec()).await,
            Backend::Postgres(p) => p.insert_tasks(run_id, rows).await,
        }
    }

    /// Task rows by name (bytewise, whatever the server's collation), then end time.
    pub async fn query_tasks(&self, q: &TaskQuery) -> Result<Vec<TaskRow>, HistoryError> {
        let mut rows = match &self.backend {
            Backend::Sqlite(s) => s.query_tasks(q.clone()).await,
            Backend::Postgres(p) => p.query_tasks(q).await,
        }?;
        rows.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(rows)
    }

    /// Newest first (end_unix_ms descending, then id ascending), filtered by exact
    /// name and status.
    pub async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryRow>, HistoryError> {
        match &self.backend {
            Backend::Sqlite(s) => s.query(q.clone()).await,
            Backend::Postgres(p) => p.query(q).await,
        }
    }
}

/// Both backends store the same thing: SQLite would turn a NaN into NULL (and fail
/// on NOT NULL) while PostgreSQL keeps it, so refuse non-finite numbers up front.
fn validate(row: &HistoryRow) -> Result<(), HistoryError> {
    for (field, v) in [
        ("duration_s", row.duration_s),
        ("cpu_user_s", row.cpu_user_s),
        ("cpu_sys_s", row.cpu_sys_s),
        ("cpu_percent", row.cpu_percent),
    ] {
        if !v.is_finite() {
            return Err(HistoryError::InvalidRow {
                id: row.id.clone(),
                detail: format!("{field} is {v}, not a finite number"),
            });
        }
    }
    Ok(())
}

fn validate_task(row: &TaskRow) -> Result<(), HistoryError> {
    for (field, v) in [("duration_s", row.duration_s), ("cpu_s", row.cpu_s)] {
        if !v.is_finite() {
            return Err(HistoryError::InvalidRow {
                id: format!("{}#{}", row.run_id, row.seq),
                detail: format!("{field} is {v}, not a finite number"),
            });
        }
    }
    Ok(())
}

fn cmd_to_json(cmd: &[String]) -> String {
    // Serializing a list of strings cannot fail.
    serde_json::to_string(cmd).unwrap_or_else(|_| String::from("[]"))
}

/// The rows of a query that can be read back; a row that cannot (say, a status a newer
/// agent wrote into a shared database) is left out with a warning instead of failing
/// the whole listing.
fn readable(rows: impl Iterator<Item = Result<HistoryRow, HistoryError>>) -> Vec<HistoryRow> {
    rows.filter_map(|r| match r {
        Ok(row) => Some(row),
        Err(e) => {
            eprintln!("denet-agent: warning: {e}; row left out");
            None
        }
    })
    .collect()
}

fn status_from_text(backend: &'static str, id: &str, text: &str) -> Result<Status, HistoryError> {
    Status::parse(text).ok_or_else(|| HistoryError::Corrupt {
        backend,
        op: format!("reading job {id:?}"),
        detail: format!("unknown status {text:?}"),
    })
}

fn cmd_from_json(backend: &'static str, id: &str, text: &str) -> Result<Vec<String>, HistoryError> {
    serde_json::from_str(text).map_err(|e| HistoryError::Corrupt {
        backend,
        op: format!("reading job {id:?}"),
        detail: format!("cmd is not a JSON array of strings: {e}"),
    })
}

#[doc(hidden)]
pub mod conformance;
