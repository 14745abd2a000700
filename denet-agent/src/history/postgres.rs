//! PostgreSQL backend: one `tokio_postgres` client shared by all calls (it
//! pipelines concurrent queries). If the connection dies (server restart, network)
//! the next call reconnects once and retries: every call is a read or an
//! idempotent upsert, so a retry is safe.

use std::{error::Error as _, sync::Arc, time::Duration};

use tokio::sync::Mutex;
use tokio_postgres::{types::ToSql, Client, Config, NoTls, Row};

use super::{
    cmd_from_json, cmd_to_json, get_sql, migrations, readable, select_sql, status_from_text,
    tasks::{
        like_pattern, select_tasks_sql, trim_tasks_sql, upsert_task_sql, wildcards_from_json,
        wildcards_to_json,
    },
    upsert_sql, HistoryError, HistoryQuery, HistoryRow, Status, TaskQuery, TaskRow,
};

const BACKEND: &str = "postgres";
/// Used when the URL has no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_advisory_xact_lock` key serializing migrations of one database across
/// every agent that opens it ("denethis" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6465_6e65_7468_6973;

pub(super) struct PgHistory {
    config: Config,
    /// The current client; replaced when its connection has died.
    client: Mutex<Arc<Client>>,
}

/// The full message of a tokio-postgres error: its own text is terse ("db
/// error"), the server's message is in the source chain.
fn render(e: &tokio_postgres::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn err(op: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> HistoryError {
    let op = op.into();
    move |cause| HistoryError::Postgres {
        op,
        detail: render(&cause),
        cause,
    }
}

/// True when the error means the connection is gone (worth one reconnect), not
/// that the statement was wrong.
fn is_connection_error(e: &tokio_postgres::Error, client: &Client) -> bool {
    if e.is_closed() || client.is_closed() {
        return true;
    }
    match e.as_db_error() {
        // 08: connection exception; 57P: admin/crash shutdown, cannot connect now.
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => e.source().is_some_and(|s| s.is::<std::io::Error>()),
    }
}

async fn connect(config: &Config) -> Result<Client, HistoryError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(err("connecting to the server"))?;
    // The connection future drives the socket; it ends when the client is dropped
    // or the server goes away (the next call then sees a closed client).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl PgHistory {
    pub(super) async fn open(spec: &str) -> Result<PgHistory, HistoryError> {
        let mut config: Config = spec.parse().map_err(err("parsing the connection URL"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut client = connect(&config).await?;
        migrate(&mut client).await?;
        Ok(PgHistory {
            config,
            client: Mutex::new(Arc::new(client)),
        })
    }

    /// The live client, reconnecting first if its connection has closed.
    async fn client(&self, stale: Option<&Arc<Client>>) -> Result<Arc<Client>, HistoryError> {
        let mut current = self.client.lock().await;
        let replace = current.is_closed() || stale.is_some_and(|s| Arc::ptr_eq(s, &current));
        if replace {
            *current = Arc::new(connect(&self.config).await?);
        }
        Ok(Arc::clone(&current))
    }

    /// Runs `f` with the client; on a connection error, reconnects and runs it once more.
    async fn call<T, F, Fut>(&self, op: &str, f: F) -> Result<T, HistoryError>
    where
        F: Fn(Arc<Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client(None).await?;
        match f(Arc::clone(&client)).await {
            Ok(v) => Ok(v),
            Err(e) if is_connection_error(&e, &client) => {
                let client = self.client(Some(&client)).await?;
                f(client).await.map_err(err(op))
            }
            Err(e) => Err(err(op)(e)),
        }
    }

    pub(super) async fn schema_version(&self) -> Result<i64, HistoryError> {
        self.call("reading the schema version", |c| async move {
            c.query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?
            .try_get(0)
        })
        .await
    }

    pub(super) async fn insert(&self, row: &HistoryRow) -> Result<(), HistoryError> {
        let sql = upsert_sql(|i| format!("${i}"));
        let cmd = cmd_to_json(&row.cmd);
        let uid = i64::from(row.uid);
        let params: [&(dyn ToSql + Sync); 35] = [
            &row.id,
            &row.name,
            &cmd,
            &row.cwd,
            &row.hostname,
            &row.start_unix_ms,
            &row.end_unix_ms,
            &row.duration_s,
            &row.status.as_str(),
            &row.exit_code,
            &row.signal,
            &row.cpu_user_s,
            &row.cpu_sys_s,
            &row.cpu_percent,
            &row.peak_rss_kb,
            &row.read_bytes,
            &row.write_bytes,
            &row.blk_read_bytes,
            &row.blk_write_bytes,
            &row.net_rx_bytes,
            &row.net_tx_bytes,
            &row.process_count,
            &row.lost_events,
            &row.stuck,
            &row.trace_path,
            &row.error,
            &row.user,
            &uid,
            &row.memory_peak_bytes,
            &row.memory_limit_bytes,
            &row.oom_kills,
            &row.stderr_tail,
            &row.failure_kind,
            &row.failure_excerpt,
            &row.slurm_job_id,
        ];
        let op = format!("inserting job {:?}", row.id);
        self.call(&op, |c| {
            let sql = &sql;
            let params = &params;
            async move { c.execute(sql.as_str(), params).await.map(drop) }
        })
        .await
    }

    pub(super) async fn get(&self, id: &str) -> Result<Option<HistoryRow>, HistoryError> {
        let sql = get_sql("$1");
        let op = format!("reading job {id:?}");
        let row = self
            .call(&op, |c| {
                let sql = &sql;
                async move { c.query_opt(sql.as_str(), &[&id]).await }
            })
            .await?;
        row.map(|r| from_row(&r, &op)).transpose()
    }

    /// Each row an upsert, then the rows past the last task removed: every step
    /// is idempotent, so the reconnect-and-retry of `call` is safe, and a second
    /// write of the run's tasks replaces the first.
    pub(super) async fn insert_tasks(
        &self,
        run_id: &str,
        rows: &[TaskRow],
    ) -> Result<(), HistoryError> {
        let op = format!("writing the tasks of run {run_id:?}");
        let upsert = upsert_task_sql(|i| format!("${i}"));
        let trim = trim_tasks_sql("$1", "$2");
        let count = rows.len() as i64;
        self.call(&op, |c| {
            let (upsert, trim) = (&upsert, &trim);
            async move {
                let stmt = c.prepare(upsert.as_str()).await?;
                for r in rows {
                    let wildcards = wildcards_to_json(&r.wildcards);
                    let uid = i64::from(r.uid);
                    let params: [&(dyn ToSql + Sync); 22] = [
                        &r.run_id,
                        &r.seq,
                        &r.engine,
                        &r.name,
                        &r.task_id,
                        &wildcards,
                        &r.slurm_job_id,
                        &r.hostname,
                        &r.user,
                        &uid,
                        &r.start_unix_ms,
                        &r.end_unix_ms,
                        &r.duration_s,
                        &r.exit_code,
                        &r.signal,
                        &r.oom_kills,
                        &r.timed_out,
                        &r.cpu_s,
                        &r.peak_rss_kb,
                        &r.read_bytes,
                        &r.write_bytes,
                        &r.process_count,
                    ];
                    c.execute(&stmt, &params).await?;
                }
                c.execute(trim.as_str(), &[&run_id, &count]).await.map(drop)
            }
        })
        .await
    }

    pub(super) async fn query_tasks(&self, q: &TaskQuery) -> Result<Vec<TaskRow>, HistoryError> {
        let sql = select_tasks_sql(q, |i| format!("${i}"));
        let name = q.name.as_deref().map(like_pattern);
        let uid = q.uid.map(i64::from);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(name) = &name {
            params.push(name);
        }
        if let Some(since) = &q.since_unix_ms {
            params.push(since);
        }
        if let Some(uid) = &uid {
            params.push(uid);
        }
        let op = "querying tasks";
        let rows = self
            .call(op, |c| {
                let sql = &sql;
                let params = &params;
                async move { c.query(sql.as_str(), params).await }
            })
            .await?;
        rows.iter().map(|r| task_from_row(r, op)).collect()
    }

    pub(super) async fn query(&self, q: &HistoryQuery) -> Result<Vec<HistoryRow>, HistoryError> {
        let sql = select_sql(q, |i| format!("${i}"));
        let limit = q.effective_limit();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        if let Some(name) = &q.name {
            params.push(name);
        }
        let status = q.status.map(Status::as_str);
        if let Some(status) = &status {
            params.push(status);
        }
        let uid = q.uid.map(i64::from);
        if let Some(uid) = &uid {
            params.push(uid);
        }
        params.push(&limit);
        let op = "querying jobs";
        let rows = self
            .call(op, |c| {
                let sql = &sql;
                let params = &params;
                async move { c.query(sql.as_str(), params).await }
            })
            .await?;
        Ok(readable(rows.iter().map(|r| from_row(r, op))))
    }
}

fn task_from_row(r: &Row, op: &str) -> Result<TaskRow, HistoryError> {
    let e = |source| err(op)(source);
    let uid: i64 = r.try_get(9).map_err(e)?;
    Ok(TaskRow {
        run_id: r.try_get(0).map_err(e)?,
        seq: r.try_get(1).map_err(e)?,
        engine: r.try_get(2).map_err(e)?,
        name: r.try_get(3).map_err(e)?,
        task_id: r.try_get(4).map_err(e)?,
        wildcards: wildcards_from_json(r.try_get(5).map_err(e)?),
        slurm_job_id: r.try_get(6).map_err(e)?,
        hostname: r.try_get(7).map_err(e)?,
        user: r.try_get(8).map_err(e)?,
        uid: u32::try_from(uid).map_err(|_| HistoryError::Corrupt {
            backend: BACKEND,
            op: op.to_string(),
            detail: format!("uid {uid} out of range"),
        })?,
        start_unix_ms: r.try_get(10).map_err(e)?,
        end_unix_ms: r.try_get(11).map_err(e)?,
        duration_s: r.try_get(12).map_err(e)?,
        exit_code: r.try_get(13).map_err(e)?,
        signal: r.try_get(14).map_err(e)?,
        oom_kills: r.try_get(15).map_err(e)?,
        timed_out: r.try_get(16).map_err(e)?,
        cpu_s: r.try_get(17).map_err(e)?,
        peak_rss_kb: r.try_get(18).map_err(e)?,
        read_bytes: r.try_get(19).map_err(e)?,
        write_bytes: r.try_get(20).map_err(e)?,
        process_count: r.try_get(21).map_err(e)?,
    })
}

fn from_row(r: &Row, op: &str) -> Result<HistoryRow, HistoryError> {
    let e = |source| err(op)(source);
    let id: String = r.try_get(0).map_err(e)?;
    let cmd_json: String = r.try_get(2).map_err(e)?;
    let status: String = r.try_get(8).map_err(e)?;
    Ok(HistoryRow {
        status: status_from_text(BACKEND, &id, &status)?,
        cmd: cmd_from_json(BACKEND, &id, &cmd_json)?,
        id,
        name: r.try_get(1).map_err(e)?,
        cwd: r.try_get(3).map_err(e)?,
        hostname: r.try_get(4).map_err(e)?,
        start_unix_ms: r.try_get(5).map_err(e)?,
        end_unix_ms: r.try_get(6).map_err(e)?,
        duration_s: r.try_get(7).map_err(e)?,
        exit_code: r.try_get(9).map_err(e)?,
        signal: r.try_get(10).map_err(e)?,
        cpu_user_s: r.try_get(11).map_err(e)?,
        cpu_sys_s: r.try_get(12).map_err(e)?,
        cpu_percent: r.try_get(13).map_err(e)?,
        peak_rss_kb: r.try_get(14).map_err(e)?,
        read_bytes: r.try_get(15).map_err(e)?,
        write_bytes: r.try_get(16).map_err(e)?,
        blk_read_bytes: r.try_get(17).map_err(e)?,
        blk_write_bytes: r.try_get(18).map_err(e)?,
        net_rx_bytes: r.try_get(19).map_err(e)?,
        net_tx_bytes: r.try_get(20).map_err(e)?,
        process_count: r.try_get(21).map_err(e)?,
        lost_events: r.try_get(22).map_err(e)?,
        stuck: r.try_get(23).map_err(e)?,
        trace_path: r.try_get(24).map_err(e)?,
        error: r.try_get(25).map_err(e)?,
        user: r.try_get(26).map_err(e)?,
        uid: {
            let uid: i64 = r.try_get(27).map_err(e)?;
            u32::try_from(uid).map_err(|_| HistoryError::Corrupt {
                backend: "postgres",
                op: op.to_string(),
                detail: format!("uid {uid} out of range"),
            })?
        },
        memory_peak_bytes: r.try_get(28).map_err(e)?,
        memory_limit_bytes: r.try_get(29).map_err(e)?,
        oom_kills: r.try_get(30).map_err(e)?,
        stderr_tail: r.try_get(31).map_err(e)?,
        failure_kind: r.try_get(32).map_err(e)?,
        failure_excerpt: r.try_get(33).map_err(e)?,
        slurm_job_id: r.try_get(34).map_err(e)?,
    })
}

/// Applies each pending migration in its own transaction, under a transaction-level
/// advisory lock taken before anything is read or created: agents on several nodes
/// starting together serialize here, and the later ones find nothing to do.
async fn migrate(client: &mut Client) -> Result<(), HistoryError> {
    let supported = migrations::latest_version();
    loop {
        let op = "migrating";
        let tx = client.transaction().await.map_err(err(op))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(err("taking the migration lock"))?;
        tx.batch_execute(migrations::POSTGRES_VERSION_TABLE)
            .await
            .map_err(err("creating schema_migrations"))?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(err("reading the schema version"))?;
        if current > supported {
            tx.rollback().await.map_err(err(op))?;
            return Err(HistoryError::FutureSchema {
                backend: BACKEND,
                found: current,
                supported,
            });
        }
        let Some(m) = migrations::pending(current).next() else {
            tx.commit().await.map_err(err(op))?;
            return Ok(());
        };
        let op = format!("applying migration {} ({})", m.version, m.description);
        tx.batch_execute(m.postgres)
            .await
            .map_err(err(op.clone()))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, description, applied_unix_ms) VALUES ($1, $2, $3)",
            &[&m.version, &m.description, &migrations::now_unix_ms()],
        )
        .await
        .map_err(err(op.clone()))?;
        tx.commit().await.map_err(err(op))?;
    }
}
