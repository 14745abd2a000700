//! What every history backend must do, checked the same way for SQLite (the unit
//! tests in `sqlite.rs`) and PostgreSQL (the integration tests, `tests/tests/it/
//! history_db.rs`). Test support: public for the integration tests, unused by the
//! agent itself.

// Assertion helpers: a failed call is a failed test.
#![allow(clippy::unwrap_used)]

use super::{History, HistoryQuery, HistoryRow, Status, TaskQuery, TaskRow};

/// A row with every optional field set (`full`) or empty.
pub fn row(id: &str, name: &str, status: Status, end_unix_ms: i64, full: bool) -> HistoryRow {
    let some = |v: i64| full.then_some(v);
    HistoryRow {
        id: id.to_owned(),
        name: name.to_owned(),
        cmd: vec!["sh".into(), "-c".into(), "echo 'a \"b\"' ünï".into()],
        cwd: "/tmp/work dir".into(),
        hostname: "node-1".into(),
        start_unix_ms: end_unix_ms - 1500,
        end_unix_ms,
        duration_s: 1.5,
        status,
        exit_code: full.then_some(-3),
        signal: full.then_some(9),
        cpu_user_s: 0.25,
        cpu_sys_s: 0.125,
        cpu_percent: 25.0,
        peak_rss_kb: 123_456,
        read_bytes: some(1 << 40),
        write_bytes: some(0),
        blk_read_bytes: some(4096),
        blk_write_bytes: some(i64::MAX),
        net_rx_bytes: some(17),
        net_tx_bytes: some(18),
        process_count: 3,
        lost_events: 0,
        stuck: full,
        trace_path: format!("/var/lib/denet/{id}.jsonl"),
        error: full.then(|| "boom: ünïcode".to_owned()),
        user: if full {
            "ünï user".into()
        } else {
            "root".into()
        },
        uid: if full { u32::MAX - 1 } else { 0 },
        memory_peak_bytes: some(104_857_600),
        memory_limit_bytes: some(i64::MAX),
        oom_kills: if full { 2 } else { 0 },
        stderr_tail: full.then(|| "line 1\nünï 2\n".to_owned()),
        failure_kind: full.then(|| "python_traceback".to_owned()),
        failure_excerpt: full
            .then(|| "Traceback (most recent call last):\nValueError: x\n".to_owned()),
        slurm_job_id: full.then(|| "120_4".to_owned()),
    }
}

/// Every field comes back as written, set or empty, and at its extremes.
pub async fn roundtrip_of_all_fields_some_and_none(h: &History) {
    let full = row("full", "n", Status::Failed, 2000, true);
    let empty = row("empty", "n", Status::Succeeded, 3000, false);
    h.insert(&full).await.unwrap();
    h.insert(&empty).await.unwrap();
    assert_eq!(h.get("full").await.unwrap().as_ref(), Some(&full));
    assert_eq!(h.get("empty").await.unwrap().as_ref(), Some(&empty));
    assert_eq!(h.get("nope").await.unwrap(), None);
    let mut r = row("big", "n", Status::Succeeded, i64::MAX, true);
    r.start_unix_ms = i64::MIN;
    r.exit_code = Some(i32::MIN);
    r.cmd = vec![];
    r.duration_s = 1e-300;
    h.insert(&r).await.unwrap();
    assert_eq!(h.get("big").await.unwrap(), Some(r));
}

/// Inserting the same id again replaces the row (a retried write never duplicates).
pub async fn upsert_by_id_does_not_duplicate(h: &History) {
    let first = row("j", "n", Status::Failed, 1000, false);
    h.insert(&first).await.unwrap();
    h.insert(&first).await.unwrap();
    let mut second = row("j", "other", Status::Succeeded, 5000, true);
    second.cmd = vec![];
    h.insert(&second).await.unwrap();
    assert_eq!(
        h.query(&HistoryQuery::default()).await.unwrap(),
        vec![second]
    );
}

/// Newest first (then by id), exact name/status filters, limits; values are never SQL.
pub async fn query_filters_limit_and_order(h: &History) {
    for (id, name, status, end) in [
        ("a", "build", Status::Succeeded, 100),
        ("b", "build", Status::Failed, 300),
        ("c", "test", Status::Succeeded, 200),
        ("d", "build", Status::Succeeded, 300),
        ("e", "test", Status::Failed, 50),
    ] {
        let mut r = row(id, name, status, end, false);
        // Two users: b and c belong to uid 1001.
        if matches!(id, "b" | "c") {
            r.uid = 1001;
            r.user = "alice".into();
        }
        h.insert(&r).await.unwrap();
    }
    let ids = |rows: Vec<HistoryRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let q = |name: Option<&str>, status: Option<Status>, limit| HistoryQuery {
        name: name.map(str::to_owned),
        status,
        limit,
        uid: None,
    };
    let of_uid = |uid, name: Option<&str>| HistoryQuery {
        name: name.map(str::to_owned),
        uid: Some(uid),
        ..Default::default()
    };
    assert_eq!(ids(h.query(&of_uid(1001, None)).await.unwrap()), ["b", "c"]);
    assert_eq!(
        ids(h.query(&of_uid(1001, Some("build"))).await.unwrap()),
        ["b"]
    );
    assert_eq!(
        ids(h.query(&of_uid(0, None)).await.unwrap()),
        ["d", "a", "e"]
    );
    assert!(h.query(&of_uid(1002, None)).await.unwrap().is_empty());
    assert_eq!(
        ids(h.query(&q(None, None, 0)).await.unwrap()),
        ["b", "d", "c", "a", "e"]
    );
    assert_eq!(ids(h.query(&q(None, None, 2)).await.unwrap()), ["b", "d"]);
    assert_eq!(
        ids(h.query(&q(Some("build"), None, 0)).await.unwrap()),
        ["b", "d", "a"]
    );
    assert_eq!(
        ids(h.query(&q(None, Some(Status::Failed), 0)).await.unwrap()),
        ["b", "e"]
    );
    assert_eq!(
        ids(h
            .query(&q(Some("build"), Some(Status::Succeeded), 1))
            .await
            .unwrap()),
        ["d"]
    );
    assert!(h.query(&q(Some("bui"), None, 0)).await.unwrap().is_empty());
    // Values that would break a query built by string pasting are just values.
    assert!(h
        .query(&q(Some("x' OR '1'='1"), None, 0))
        .await
        .unwrap()
        .is_empty());
}

/// A query without a limit returns the newest 100.
pub async fn default_limit_is_100(h: &History) {
    for i in 0..120 {
        h.insert(&row(&format!("j{i:03}"), "n", Status::Succeeded, i, false))
            .await
            .unwrap();
    }
    let rows = h.query(&HistoryQuery::default()).await.unwrap();
    assert_eq!(rows.len(), 100);
    assert_eq!(rows[0].id, "j119");
    let q = HistoryQuery {
        limit: 1000,
        ..Default::default()
    };
    assert_eq!(h.query(&q).await.unwrap().len(), 120);
}

/// A task row of run `run`, task `seq`; `full` sets every optional field.
pub fn task_row(run: &str, seq: i64, name: &str, end_unix_ms: i64, full: bool) -> TaskRow {
    TaskRow {
        run_id: run.to_owned(),
        seq,
        engine: "snakemake".into(),
        name: name.to_owned(),
        task_id: full.then(|| format!("{seq}")),
        wildcards: if full {
            [("sample".to_string(), "ünï,1".to_string())].into()
        } else {
            Default::default()
        },
        slurm_job_id: full.then(|| "120_4".into()),
        hostname: "node-1".into(),
        user: "ünï user".into(),
        uid: if full { u32::MAX - 1 } else { 0 },
        start_unix_ms: end_unix_ms - 2500,
        end_unix_ms,
        duration_s: 2.5,
        exit_code: full.then_some(0),
        signal: (!full).then_some(9),
        oom_kills: i64::from(!full),
        timed_out: !full,
        cpu_s: 1.25,
        peak_rss_kb: full.then_some(i64::MAX),
        read_bytes: 1 << 40,
        write_bytes: 0,
        process_count: 3,
    }
}

/// Task rows come back as written; writing a run's tasks again replaces them
/// (fewer rows: the rest go); the name pattern, since and uid filter.
pub async fn tasks_roundtrip_replace_and_filter(h: &History) {
    let a = [
        task_row("run-a", 0, "map_reads", 10_000, true),
        task_row("run-a", 1, "map_reads", 20_000, false),
        task_row("run-a", 2, "sort", 30_000, true),
    ];
    h.insert_tasks("run-a", &a).await.unwrap();
    h.insert_tasks("run-b", &[task_row("run-b", 0, "map%_x", 40_000, true)])
        .await
        .unwrap();
    let all = h.query_tasks(&TaskQuery::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["map%_x", "map_reads", "map_reads", "sort"],
        "bytewise by name"
    );
    assert_eq!(all[1], a[0], "every field as written");
    assert_eq!(all[2], a[1], "empty fields as written");
    // The name pattern: `*` is any text, `%` and `_` are themselves.
    let q = |name: &str| TaskQuery {
        name: Some(name.into()),
        ..TaskQuery::default()
    };
    assert_eq!(h.query_tasks(&q("map*")).await.unwrap().len(), 3);
    assert_eq!(h.query_tasks(&q("map%_x")).await.unwrap().len(), 1);
    assert_eq!(h.query_tasks(&q("map_reads")).await.unwrap().len(), 2);
    assert_eq!(h.query_tasks(&q("map_")).await.unwrap().len(), 0);
    let since = TaskQuery {
        since_unix_ms: Some(20_000),
        ..TaskQuery::default()
    };
    assert_eq!(h.query_tasks(&since).await.unwrap().len(), 3);
    let mine = TaskQuery {
        uid: Some(0),
        ..TaskQuery::default()
    };
    assert_eq!(h.query_tasks(&mine).await.unwrap().len(), 1);
    // Run a again, with one task now: the other two go.
    h.insert_tasks("run-a", &[task_row("run-a", 0, "sort", 50_000, true)])
        .await
        .unwrap();
    let all = h.query_tasks(&TaskQuery::default()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|t| t.name != "map_reads"));
}
