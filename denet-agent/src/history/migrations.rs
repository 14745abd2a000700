//! The versioned schema of the job-history store: one ordered list, one SQL text
//! per backend. A database records what it has applied in `schema_migrations`;
//! opening applies the pending ones, each in its own transaction.
//!
//! Never edit a migration that has shipped: append a new one with the next version.

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// All migrations, versions 1, 2, … in order (a unit test checks it).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "job_history table",
        sqlite: "
        CREATE TABLE job_history (
            id              TEXT    NOT NULL PRIMARY KEY,
            name            TEXT    NOT NULL,
            cmd             TEXT    NOT NULL, -- JSON array of strings
            cwd             TEXT    NOT NULL,
            hostname        TEXT    NOT NULL,
            start_unix_ms   INTEGER NOT NULL,
            end_unix_ms     INTEGER NOT NULL,
            duration_s      REAL    NOT NULL,
            status          TEXT    NOT NULL,
            exit_code       INTEGER,
            signal          INTEGER,
            cpu_user_s      REAL    NOT NULL,
            cpu_sys_s       REAL    NOT NULL,
            cpu_percent     REAL    NOT NULL,
            peak_rss_kb     INTEGER NOT NULL,
            read_bytes      INTEGER,
            write_bytes     INTEGER,
            blk_read_bytes  INTEGER,
            blk_write_bytes INTEGER,
            net_rx_bytes    INTEGER,
            net_tx_bytes    INTEGER,
            process_count   INTEGER NOT NULL,
            lost_events     INTEGER NOT NULL,
            stuck           INTEGER NOT NULL CHECK (stuck IN (0, 1)),
            trace_path      TEXT    NOT NULL,
            error           TEXT
        );
        CREATE INDEX job_history_name ON job_history (name);
        CREATE INDEX job_history_status ON job_history (status);
        CREATE INDEX job_history_end_unix_ms ON job_history (end_unix_ms);
    ",
        postgres: "
        CREATE TABLE job_history (
            id              TEXT             NOT NULL PRIMARY KEY,
            name            TEXT             NOT NULL,
            cmd             TEXT             NOT NULL, -- JSON array of strings
            cwd             TEXT             NOT NULL,
            hostname        TEXT             NOT NULL,
            start_unix_ms   BIGINT           NOT NULL,
            end_unix_ms     BIGINT           NOT NULL,
            duration_s      DOUBLE PRECISION NOT NULL,
            status          TEXT             NOT NULL,
            exit_code       INTEGER,
            signal          INTEGER,
            cpu_user_s      DOUBLE PRECISION NOT NULL,
            cpu_sys_s       DOUBLE PRECISION NOT NULL,
            cpu_percent     DOUBLE PRECISION NOT NULL,
            peak_rss_kb     BIGINT           NOT NULL,
            read_bytes      BIGINT,
            write_bytes     BIGINT,
            blk_read_bytes  BIGINT,
            blk_write_bytes BIGINT,
            net_rx_bytes    BIGINT,
            net_tx_bytes    BIGINT,
            process_count   BIGINT           NOT NULL,
            lost_events     BIGINT           NOT NULL,
            stuck           BOOLEAN          NOT NULL,
            trace_path      TEXT             NOT NULL,
            error           TEXT
        );
        CREATE INDEX job_history_name ON job_history (name);
        CREATE INDEX job_history_status ON job_history (status);
        CREATE INDEX job_history_end_unix_ms ON job_history (end_unix_ms);
    ",
    },
    Migration {
        version: 2,
        description: "the user each job ran as (rows from before were root's)",
        sqlite: "
        ALTER TABLE job_history ADD COLUMN user_name TEXT    NOT NULL DEFAULT 'root';
        ALTER TABLE job_history ADD COLUMN uid       INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX job_history_uid ON job_history (uid);
    ",
        postgres: "
        ALTER TABLE job_history ADD COLUMN user_name TEXT   NOT NULL DEFAULT 'root';
        ALTER TABLE job_history ADD COLUMN uid       BIGINT NOT NULL DEFAULT 0;
        CREATE INDEX job_history_uid ON job_history (uid);
    ",
    },
    Migration {
        version: 3,
        description: "the job cgroup's memory peak and limit, and its OOM kills",
        sqlite: "
        ALTER TABLE job_history ADD COLUMN memory_peak_bytes  INTEGER;
        ALTER TABLE job_history ADD COLUMN memory_limit_bytes INTEGER;
        ALTER TABLE job_history ADD COLUMN oom_kills          INTEGER NOT NULL DEFAULT 0;
    ",
        postgres: "
        ALTER TABLE job_history ADD COLUMN memory_peak_bytes  BIGINT;
        ALTER TABLE job_history ADD COLUMN memory_limit_bytes BIGINT;
        ALTER TABLE job_history ADD COLUMN oom_kills          BIGINT NOT NULL DEFAULT 0;
    ",
    },
    Migration {
        version: 4,
        description: "the tail of the job's stderr and its failure excerpt",
        sqlite: "
        ALTER TABLE job_history ADD COLUMN stderr_tail     TEXT;
        ALTER TABLE job_history ADD COLUMN failure_kind    TEXT;
        ALTER TABLE job_history ADD COLUMN failure_excerpt TEXT;
    ",
        postgres: "
        ALTER TABLE job_history ADD COLUMN stderr_tail     TEXT;
        ALTER TABLE job_history ADD COLUMN failure_kind    TEXT;
        ALTER TABLE job_history ADD COLUMN failure_excerpt TEXT;
    ",
    },
    Migration {
        version: 5,
        description: "workflow tasks: the Slurm job of a run, and a row per task",
        sqlite: "
        ALTER TABLE job_history ADD COLUMN slurm_job_id TEXT;
        CREATE INDEX job_history_slurm_job_id ON job_history (slurm_job_id);
        CREATE TABLE task_history (
            run_id          TEXT    NOT NULL,
            seq             INTEGER NOT NULL,
            engine          TEXT    NOT NULL,
            name            TEXT    NOT NULL,
            task_id         TEXT,
            wildcards       TEXT, -- JSON object of strings
            slurm_job_id    TEXT,
            hostname        TEXT    NOT NULL,
            user_name       TEXT    NOT NULL,
            uid             INTEGER NOT NULL,
            start_unix_ms   INTEGER NOT NULL,
            end_unix_ms     INTEGER NOT NULL,
            duration_s      REAL    NOT NULL,
            exit_code       INTEGER,
            signal          INTEGER,
            oom_kills       INTEGER NOT NULL,
            timed_out       INTEGER NOT NULL CHECK (timed_out IN (0, 1)),
            cpu_s           REAL    NOT NULL,
            peak_rss_kb     INTEGER,
            read_bytes      INTEGER NOT NULL,
            write_bytes     INTEGER NOT NULL,
            process_count   INTEGER NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE INDEX task_history_name ON task_history (name);
        CREATE INDEX task_history_end_unix_ms ON task_history (end_unix_ms);
        CREATE INDEX task_history_uid ON task_history (uid);
    ",
        postgres: "
        ALTER TABLE job_history ADD COLUMN slurm_job_id TEXT;
        CREATE INDEX job_history_slurm_job_id ON job_history (slurm_job_id);
        CREATE TABLE task_history (
            run_id          TEXT             NOT NULL,
            seq             BIGINT           NOT NULL,
            engine          TEXT             NOT NULL,
            name            TEXT             NOT NULL,
            task_id         TEXT,
            wildcards       TEXT, -- JSON object of strings
            slurm_job_id    TEXT,
            hostname        TEXT             NOT NULL,
            user_name       TEXT             NOT NULL,
            uid             BIGINT           NOT NULL,
            start_unix_ms   BIGINT           NOT NULL,
            end_unix_ms     BIGINT           NOT NULL,
            duration_s      DOUBLE PRECISION NOT NULL,
            exit_code       INTEGER,
            signal          INTEGER,
            oom_kills       BIGINT           NOT NULL,
            timed_out       BOOLEAN          NOT NULL,
            cpu_s           DOUBLE PRECISION NOT NULL,
            peak_rss_kb     BIGINT,
            read_bytes      BIGINT           NOT NULL,
            write_bytes     BIGINT           NOT NULL,
            process_count   BIGINT           NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE INDEX task_history_name ON task_history (name);
        CREATE INDEX task_history_end_unix_ms ON task_history (end_unix_ms);
        CREATE INDEX task_history_uid ON task_history (uid);
    ",
    },
];

/// The schema version this binary writes and reads.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The migrations after `current`, in order.
pub fn pending(current: i64) -> impl Iterator<Item = &'static Migration> {
    MIGRATIONS.iter().filter(move |m| m.version > current)
}

/// Version-table DDL (created before any migration, outside the list).
pub const SQLITE_VERSION_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version            INTEGER NOT NULL PRIMARY KEY,
        description        TEXT    NOT NULL,
        applied_unix_ms    INTEGER NOT NULL
    )";
pub const POSTGRES_VERSION_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version            BIGINT NOT NULL PRIMARY KEY,
        description        TEXT   NOT NULL,
        applied_unix_ms    BIGINT NOT NULL
    )";

/// Milliseconds since the Unix epoch, for `applied_unix_ms`.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_1_to_n_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.description);
        }
        assert_eq!(latest_version(), MIGRATIONS.len() as i64);
        assert_eq!(pending(0).count(), MIGRATIONS.len());
        assert_eq!(pending(latest_version()).count(), 0);
    }

    #[test]
    fn both_backends_define_every_column() {
        // A column is created by version 1's CREATE TABLE or a later ADD COLUMN.
        let defines = |sql: &str, col: &str| {
            sql.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.first() == Some(&col)
                    || words
                        .windows(3)
                        .any(|w| w[0] == "ADD" && w[1] == "COLUMN" && w[2] == col)
            })
        };
        for col in super::super::COLUMNS {
            for backend in [|m: &Migration| m.sqlite, |m: &Migration| m.postgres] {
                assert!(
                    MIGRATIONS.iter().any(|m| defines(backend(m), col)),
                    "column {col} missing"
                );
            }
        }
    }
}
