//! SQLite backend: one connection behind a mutex; every call runs on tokio's
//! blocking pool so the async runtime never waits on disk or on a lock.
//!
//! One job, one file: the backend (about 330 lines) and its SQLite-only tests
//! (about 190; the shared ones are in `conformance`).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rusqlite::{
    params_from_iter, types::Value, Connection, OptionalExtension, TransactionBehavior,
};

use super::{
    cmd_from_json, cmd_to_json, get_sql, migrations, readable, select_sql, status_from_text,
    tasks::{
        like_pattern, select_tasks_sql, trim_tasks_sql, upsert_task_sql, wildcards_from_json,
        wildcards_to_json,
    },
    upsert_sql, HistoryError, HistoryQuery, HistoryRow, Status, TaskQuery, TaskRow,
};

const BACKEND: &str = "sqlite";
/// How long a writer waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(super) struct SqliteHistory {
    conn: Arc<Mutex<Connection>>,
}

fn err(op: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> HistoryError {
    let op = op.into();
    move |cause| HistoryError::Sqlite { op, cause }
}

impl SqliteHistory {
    pub(super) async fn open(spec: &str) -> Result<Self, HistoryError> {
        let path = PathBuf::from(spec);
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|e| HistoryError::Internal {
                backend: BACKEND,
                op: "opening the database".into(),
                detail: e.to_string(),
            })??;
        Ok(SqliteHistory {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in the blocking pool.
    async fn with_conn<T, F>(&self, op: &str, f: F) -> Result<T, HistoryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, HistoryError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let op_name = op.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| HistoryError::Internal {
                backend: BACKEND,
                op: op_name,
                detail: "the connection lock is poisoned (a previous call panicked)".into(),
            })?;
            f(&mut guard)
        })
        .await
        .map_err(|e| HistoryError::Internal {
            backend: BACKEND,
            op: op.to_owned(),
            detail: e.to_string(),
        })?
    }

    pub(super) async fn schema_version(&self) -> Result<i64, HistoryError> {
        self.with_conn("reading the schema version", |c| {
            current_version(c).map_err(err("reading the schema version"))
        })
        .await
    }

    pub(super) async fn insert(&self, row: HistoryRow) -> Result<(), HistoryError> {
        let op = format!("inserting job {:?}", row.id);
        self.with_conn(&op.clone(), move |c| {
            let sql = upsert_sql(|i| format!("?{i}"));
            let mut stmt = c.prepare_cached(&sql).map_err(err(op.clone()))?;
            stmt.execute(params_from_iter(to_values(&row)))
                .map_err(err(op))?;
            Ok(())
        })
        .await
    }

    pub(super) async fn get(&self, id: String) -> Result<Option<HistoryRow>, HistoryError> {
        let op = format!("reading job {id:?}");
        self.with_conn(&op.clone(), move |c| {
            let mut stmt = c.prepare_cached(&get_sql("?1")).map_err(err(op.clone()))?;
            let raw = stmt
                .query_row([&id], RawRow::read)
                .optional()
                .map_err(err(op))?;
            raw.map(RawRow::into_row).transpose()
        })
        .await
    }

    pub(super) async fn insert_tasks(
        &self,
        run_id: String,
        rows: Vec<TaskRow>,
    ) -> Result<(), HistoryError> {
        let op = format!("writing the tasks of run {run_id:?}");
        self.with_conn(&op.clone(), move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err(op.clone()))?;
            {
                let mut stmt = tx
                    .prepare_cached(&upsert_task_sql(|i| format!("?{i}")))
                    .map_err(err(op.clone()))?;
                for r in &rows {
                    stmt.execute(params_from_iter(task_values(r)))
                        .map_err(err(op.clone()))?;
                }
            }
            tx.execute(&trim_tasks_sql("?1", "?2"), (&run_id, rows.len() as i64))
                .map_err(err(op.clone()))?;
            tx.commit().map_err(err(op))
        })
        .await
    }

    pub(super) async fn query_tasks(&self, q: TaskQuery) -> Result<Vec<TaskRow>, HistoryError> {
        self.with_conn("querying tasks", move |c| {
            let op = "querying tasks";
            let sql = select_tasks_sql(&q, |i| format!("?{i}"));
            let mut params: Vec<Value> = Vec::new();
            params.extend(q.name.as_deref().map(|n| Value::Text(like_pattern(n))));
            params.extend(q.since_unix_ms.map(Value::Integer));
            params.extend(q.uid.map(|u| Value::Integer(i64::from(u))));
            let mut stmt = c.prepare_cached(&sql).map_err(err(op))?;
            let rows = stmt
                .query_map(params_from_iter(params), read_task)
                .map_err(err(op))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err(op))?;
            Ok(rows)
        })
        .await
    }

    pub(super) async fn query(&self, q: HistoryQuery) -> Result<Vec<HistoryRow>, HistoryError> {
        self.with_conn("querying jobs", move |c| {
            let op = "querying jobs";
            let sql = select_sql(&q, |i| format!("?{i}"));
            let mut params: Vec<Value> = Vec::new();
            params.extend(q.name.clone().map(Value::Text));
            params.extend(q.status.map(|s| Value::Text(s.as_str().into())));
            params.extend(q.uid.map(|u| Value::Integer(i64::from(u))));
            params.push(Value::Integer(q.effective_limit()));
            let mut stmt = c.prepare_cached(&sql).map_err(err(op))?;
            let raws = stmt
                .query_map(params_from_iter(params), RawRow::read)
                .map_err(err(op))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err(op))?;
            Ok(readable(raws.into_iter().map(RawRow::into_row)))
        })
        .await
    }
}

/// Creates the file owner-only if missing, opens it, sets WAL and the busy
/// timeout, and migrates.
fn open_blocking(path: &Path) -> Result<Connection, HistoryError> {
    let conn = if path.as_os_str() == ":memory:" {
        Connection::open_in_memory().map_err(err("opening an in-memory database"))?
    } else {
        create_owner_only(path)?;
        Connection::open(path).map_err(err(format!("opening {}", path.display())))?
    };
    let what = path.display().to_string();
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err(format!("setting the busy timeout on {what}")))?;
    // In-memory databases answer "memory": only a file can use WAL. Switching the
    // journal mode can answer SQLITE_BUSY at once, without the busy handler, while
    // another connection is opening the same new file: retry within the timeout.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r.map_err(err(format!("enabling WAL on {what}")))?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(HistoryError::Corrupt {
            backend: BACKEND,
            op: format!("enabling WAL on {what}"),
            detail: format!("journal_mode stayed {mode:?}"),
        });
    }
    // With WAL, NORMAL is durable across application crashes (not power loss).
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err(format!("setting synchronous=NORMAL on {what}")))?;
    let mut conn = conn;
    migrate(&mut conn)?;
    Ok(conn)
}

fn create_owner_only(path: &Path) -> Result<(), HistoryError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_err = |op: String| {
        move |cause| HistoryError::Io {
            backend: BACKEND,
            op,
            cause,
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(io_err(format!("opening {}", path.display()))(
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir.display()),
                ),
            ));
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(io_err(format!("creating {}", path.display())))
}

fn current_version(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )
}

/// Applies each pending migration in its own IMMEDIATE transaction (the write
/// lock is taken before reading the version, so concurrent openers of one file
/// serialize instead of both applying a step).
fn migrate(conn: &mut Connection) -> Result<(), HistoryError> {
    let supported = migrations::latest_version();
    loop {
        let op = "migrating";
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err(op))?;
        tx.execute_batch(migrations::SQLITE_VERSION_TABLE)
            .map_err(err("creating schema_migrations"))?;
        let current = current_version(&tx).map_err(err("reading the schema version"))?;
        if current > supported {
            // Dropping `tx` rolls back: nothing of ours is left behind.
            return Err(HistoryError::FutureSchema {
                backend: BACKEND,
                found: current,
                supported,
            });
        }
        let Some(m) = migrations::pending(current).next() else {
            tx.commit().map_err(err(op))?;
            return Ok(());
        };
        let op = format!("applying migration {} ({})", m.version, m.description);
        tx.execute_batch(m.sqlite).map_err(err(op.clone()))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, description, applied_unix_ms) VALUES (?1, ?2, ?3)",
            (m.version, m.description, migrations::now_unix_ms()),
        )
        .map_err(err(op.clone()))?;
        tx.commit().map_err(err(op))?;
    }
}

fn to_values(r: &HistoryRow) -> Vec<Value> {
    let opt = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
    vec![
        Value::Text(r.id.clone()),
        Value::Text(r.name.clone()),
        Value::Text(cmd_to_json(&r.cmd)),
        Value::Text(r.cwd.clone()),
        Value::Text(r.hostname.clone()),
        Value::Integer(r.start_unix_ms),
        Value::Integer(r.end_unix_ms),
        Value::Real(r.duration_s),
        Value::Text(r.status.as_str().into()),
        opt(r.exit_code.map(i64::from)),
        opt(r.signal.map(i64::from)),
        Value::Real(r.cpu_user_s),
        Value::Real(r.cpu_sys_s),
        Value::Real(r.cpu_percent),
        Value::Integer(r.peak_rss_kb),
        opt(r.read_bytes),
        opt(r.write_bytes),
        opt(r.blk_read_bytes),
        opt(r.blk_write_bytes),
        opt(r.net_rx_bytes),
        opt(r.net_tx_bytes),
        Value::Integer(r.process_count),
        Value::Integer(r.lost_events),
        Value::Integer(i64::from(r.stuck)),
        Value::Text(r.trace_path.clone()),
        r.error.clone().map_or(Value::Null, Value::Text),
        Value::Text(r.user.clone()),
        Value::Integer(i64::from(r.uid)),
        opt(r.memory_peak_bytes),
        opt(r.memory_limit_bytes),
        Value::Integer(r.oom_kills),
        r.stderr_tail.clone().map_or(Value::Null, Value::Text),
        r.failure_kind.clone().map_or(Value::Null, Value::Text),
        r.failure_excerpt.clone().map_or(Value::Null, Value::Text),
        r.slurm_job_id.clone().map_or(Value::Null, Value::Text),
    ]
}

fn task_values(r: &TaskRow) -> Vec<Value> {
    let opt = |v: Option<i64>| v.map_or(Value::Null, Value::Integer);
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    vec![
        Value::Text(r.run_id.clone()),
        Value::Integer(r.seq),
        Value::Text(r.engine.clone()),
        Value::Text(r.name.clone()),
        text(&r.task_id),
        Value::Text(wildcards_to_json(&r.wildcards)),
        text(&r.slurm_job_id),
        Value::Text(r.hostname.clone()),
        Value::Text(r.user.clone()),
        Value::Integer(i64::from(r.uid)),
        Value::Integer(r.start_unix_ms),
        Value::Integer(r.end_unix_ms),
        Value::Real(r.duration_s),
        opt(r.exit_code.map(i64::from)),
        opt(r.signal.map(i64::from)),
        Value::Integer(r.oom_kills),
        Value::Integer(i64::from(r.timed_out)),
        Value::Real(r.cpu_s),
        opt(r.peak_rss_kb),
        Value::Integer(r.read_bytes),
        Value::Integer(r.write_bytes),
        Value::Integer(r.process_count),
    ]
}

fn read_task(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        run_id: r.get(0)?,
        seq: r.get(1)?,
        engine: r.get(2)?,
        name: r.get(3)?,
        task_id: r.get(4)?,
        wildcards: wildcards_from_json(r.get(5)?),
        slurm_job_id: r.get(6)?,
        hostname: r.get(7)?,
        user: r.get(8)?,
        uid: r.get(9)?,
        start_unix_ms: r.get(10)?,
        end_unix_ms: r.get(11)?,
        duration_s: r.get(12)?,
        exit_code: r.get(13)?,
        signal: r.get(14)?,
        oom_kills: r.get(15)?,
        timed_out: r.get(16)?,
        cpu_s: r.get(17)?,
        peak_rss_kb: r.get(18)?,
        read_bytes: r.get(19)?,
        write_bytes: r.get(20)?,
        process_count: r.get(21)?,
    })
}

/// A row as read, before `cmd` is parsed (parsing errors are ours, not rusqlite's).
struct RawRow {
    row: HistoryRow,
    cmd_json: String,
    status_text: String,
}

impl RawRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            cmd_json: r.get(2)?,
            status_text: r.get(8)?,
            row: HistoryRow {
                id: r.get(0)?,
                name: r.get(1)?,
                cmd: Vec::new(),
                cwd: r.get(3)?,
                hostname: r.get(4)?,
                start_unix_ms: r.get(5)?,
                end_unix_ms: r.get(6)?,
                duration_s: r.get(7)?,
                // Parsed in `into_row`, where a bad value is our error.
                status: Status::Failed,
                exit_code: r.get(9)?,
                signal: r.get(10)?,
                cpu_user_s: r.get(11)?,
                cpu_sys_s: r.get(12)?,
                cpu_percent: r.get(13)?,
                peak_rss_kb: r.get(14)?,
                read_bytes: r.get(15)?,
                write_bytes: r.get(16)?,
                blk_read_bytes: r.get(17)?,
                blk_write_bytes: r.get(18)?,
                net_rx_bytes: r.get(19)?,
                net_tx_bytes: r.get(20)?,
                process_count: r.get(21)?,
                lost_events: r.get(22)?,
                stuck: r.get(23)?,
                trace_path: r.get(24)?,
                error: r.get(25)?,
                user: r.get(26)?,
                uid: r.get(27)?,
                memory_peak_bytes: r.get(28)?,
                memory_limit_bytes: r.get(29)?,
                oom_kills: r.get(30)?,
                stderr_tail: r.get(31)?,
                failure_kind: r.get(32)?,
                failure_excerpt: r.get(33)?,
                slurm_job_id: r.get(34)?,
            },
        })
    }

    fn into_row(self) -> Result<HistoryRow, HistoryError> {
        let mut row = self.row;
        row.cmd = cmd_from_json(BACKEND, &row.id, &self.cmd_json)?;
        row.status = status_from_text(BACKEND, &row.id, &self.status_text)?;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::super::{conformance, conformance::row, History, HistoryQuery, Status};
    use super::*;

    /// A fresh directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "denet-history-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn db(&self) -> String {
            self.0.join("history.db").to_str().unwrap().to_owned()
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_rows_survive_reopen() {
        let dir = TempDir::new();
        let h = History::open(&dir.db()).await.unwrap();
        assert_eq!(h.backend(), "sqlite");
        assert_eq!(
            h.schema_version().await.unwrap(),
            migrations::latest_version()
        );
        h.insert(&row("a", "n", Status::Succeeded, 1000, true))
            .await
            .unwrap();
        drop(h);
        for _ in 0..2 {
            let h = History::open(&dir.db()).await.unwrap();
            assert_eq!(
                h.schema_version().await.unwrap(),
                migrations::latest_version()
            );
            assert_eq!(
                h.get("a").await.unwrap(),
                Some(row("a", "n", Status::Succeeded, 1000, true))
            );
        }
        let c = Connection::open(dir.db()).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, migrations::MIGRATIONS.len() as i64);
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn file_is_owner_only_and_directory_must_exist() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        History::open(&dir.db()).await.unwrap();
        let mode = std::fs::metadata(dir.db()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let missing = dir.0.join("no/such/dir/h.db");
        let e = History::open(missing.to_str().unwrap()).await.unwrap_err();
        assert!(matches!(e, HistoryError::Io { .. }), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[tokio::test]
    async fn roundtrip_of_all_fields_some_and_none() {
        let dir = TempDir::new();
        conformance::roundtrip_of_all_fields_some_and_none(
            &History::open(&dir.db()).await.unwrap(),
        )
        .await;
    }

    #[tokio::test]
    async fn upsert_by_id_does_not_duplicate() {
        let dir = TempDir::new();
        conformance::upsert_by_id_does_not_duplicate(&History::open(&dir.db()).await.unwrap())
            .await;
    }

    #[tokio::test]
    async fn query_filters_limit_and_order() {
        let dir = TempDir::new();
        conformance::query_filters_limit_and_order(&History::open(&dir.db()).await.unwrap()).await;
    }

    #[tokio::test]
    async fn tasks_roundtrip_replace_and_filter() {
        let dir = TempDir::new();
        conformance::tasks_roundtrip_replace_and_filter(&History::open(&dir.db()).await.unwrap())
            .await;
    }

    #[tokio::test]
    async fn default_limit_is_100() {
        let dir = TempDir::new();
        conformance::default_limit_is_100(&History::open(&dir.db()).await.unwrap()).await;
    }

    #[tokio::test]
    async fn refuses_a_future_schema_and_leaves_it_untouched() {
        let dir = TempDir::new();
        drop(History::open(&dir.db()).await.unwrap());
        let future = migrations::latest_version() + 1;
        {
            let c = Connection::open(dir.db()).unwrap();
            c.execute(
                "INSERT INTO schema_migrations VALUES (?1, 'from the future', 0)",
                [future],
            )
            .unwrap();
        }
        let e = History::open(&dir.db()).await.unwrap_err();
        match &e {
            HistoryError::FutureSchema {
                backend,
                found,
                supported,
            } => {
                assert_eq!(*backend, "sqlite");
                assert_eq!(*found, future);
                assert_eq!(*supported, migrations::latest_version());
            }
            other => panic!("expected FutureSchema, got {other}"),
        }
        assert!(e.to_string().contains("newer than this denet-agent"), "{e}");
        let c = Connection::open(dir.db()).unwrap();
        assert_eq!(current_version(&c).unwrap(), future);
    }

    #[tokio::test]
    async fn refuses_non_finite_numbers() {
        let dir = TempDir::new();
        let h = History::open(&dir.db()).await.unwrap();
        let mut r = row("nan", "n", Status::Succeeded, 1, false);
        r.cpu_percent = f64::NAN;
        let e = h.insert(&r).await.unwrap_err();
        assert!(e.to_string().contains("cpu_percent"), "{e}");
        assert_eq!(h.get("nan").await.unwrap(), None);
    }

    #[tokio::test]
    async fn corrupt_cmd_is_reported_with_context() {
        let dir = TempDir::new();
        let h = History::open(&dir.db()).await.unwrap();
        h.insert(&row("x", "n", Status::Succeeded, 1, false))
            .await
            .unwrap();
        Connection::open(dir.db())
            .unwrap()
            .execute("UPDATE job_history SET cmd = 'not json'", [])
            .unwrap();
        let e = h.get("x").await.unwrap_err();
        assert!(e.to_string().contains("cmd is not a JSON array"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_openers_and_inserts() {
        let dir = TempDir::new();
        let db = dir.db();
        let (a, b) = tokio::join!(History::open(&db), History::open(&db));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut tasks = Vec::new();
        for t in 0..8 {
            let h = if t % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    h.insert(&row(&format!("t{t}-{i}"), "n", Status::Succeeded, i, false))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let q = HistoryQuery {
            limit: 1000,
            ..Default::default()
        };
        assert_eq!(a.query(&q).await.unwrap().len(), 200);
    }
}
