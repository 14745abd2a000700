//! The job-history store (`denet_agent::history`) against a real PostgreSQL
//! server: the SQLite unit tests' behaviours, plus what only a shared server has
//! (several agents migrating one database at once, concurrent writers, a server
//! dropping the connection).
//!
//! `DENET_TEST_PG_URL` is an admin URL (a role with CREATEDB); each test creates
//! its own database `denet_t_<pid>_<n>` and drops it at the end, even on failure.
//! Unset: the tests skip, except in CI where they fail.

use denet_agent::history::{
    conformance::{self, row},
    migrations, History, HistoryError, HistoryQuery, Status,
};
use tokio_postgres::Client;

use crate::helpers::pg::{connect, with_dbname, TestDb};
use crate::helpers::pg_admin_url;

async fn version_rows(c: &Client) -> Vec<i64> {
    c.query(
        "SELECT version FROM schema_migrations ORDER BY version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn all_versions() -> Vec<i64> {
    migrations::MIGRATIONS.iter().map(|m| m.version).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_rows_survive_reopen() {
    let Some(db) = TestDb::create("migrations_are_idempotent_and_rows_survive_reopen").await else {
        return;
    };
    let h = History::open(&db.url).await.unwrap();
    assert_eq!(h.backend(), "postgres");
    assert_eq!(
        h.schema_version().await.unwrap(),
        migrations::latest_version()
    );
    h.insert(&row("a", "n", Status::Succeeded, 1000, true))
        .await
        .unwrap();
    drop(h);
    for _ in 0..2 {
        let h = History::open(&db.url).await.unwrap();
        assert_eq!(
            h.schema_version().await.unwrap(),
            migrations::latest_version()
        );
        assert_eq!(
            h.get("a").await.unwrap(),
            Some(row("a", "n", Status::Succeeded, 1000, true))
        );
    }
    let c = db.client().await;
    assert_eq!(version_rows(&c).await, all_versions());

    // Types as documented: BIGINT ms, DOUBLE PRECISION durations, BOOLEAN flags.
    let types: Vec<(String, String)> = c
        .query(
            "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns \
             WHERE table_name = 'job_history' AND column_name = ANY($1) ORDER BY column_name",
            &[&vec![
                "duration_s",
                "end_unix_ms",
                "exit_code",
                "stuck",
                "uid",
            ]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = [
        ("duration_s", "double precision"),
        ("end_unix_ms", "bigint"),
        ("exit_code", "integer"),
        ("stuck", "boolean"),
        ("uid", "bigint"),
    ];
    assert_eq!(
        types,
        expect.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
    );
    let indexes: Vec<String> = c
        .query(
            "SELECT indexname::TEXT FROM pg_indexes WHERE tablename = 'job_history' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        indexes,
        [
            "job_history_end_unix_ms",
            "job_history_name",
            "job_history_pkey",
            "job_history_slurm_job_id",
            "job_history_status",
            "job_history_uid"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_of_all_fields_some_and_none() {
    let Some(db) = TestDb::create("roundtrip_of_all_fields_some_and_none").await else {
        return;
    };
    conformance::roundtrip_of_all_fields_some_and_none(&History::open(&db.url).await.unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_by_id_does_not_duplicate() {
    let Some(db) = TestDb::create("upsert_by_id_does_not_duplicate").await else {
        return;
    };
    conformance::upsert_by_id_does_not_duplicate(&History::open(&db.url).await.unwrap()).await;
    // One row, also as the server counts it.
    let n: i64 = db
        .client()
        .await
        .query_one("SELECT COUNT(*) FROM job_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_limit_and_order() {
    let Some(db) = TestDb::create("query_filters_limit_and_order").await else {
        return;
    };
    conformance::query_filters_limit_and_order(&History::open(&db.url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_roundtrip_replace_and_filter() {
    let Some(db) = TestDb::create("tasks_roundtrip_replace_and_filter").await else {
        return;
    };
    conformance::tasks_roundtrip_replace_and_filter(&History::open(&db.url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limit_is_100() {
    let Some(db) = TestDb::create("default_limit_is_100").await else {
        return;
    };
    conformance::default_limit_is_100(&History::open(&db.url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_future_schema_and_leaves_it_untouched() {
    let Some(db) = TestDb::create("refuses_a_future_schema_and_leaves_it_untouched").await else {
        return;
    };
    drop(History::open(&db.url).await.unwrap());
    let future = migrations::latest_version() + 1;
    let c = db.client().await;
    c.execute(
        "INSERT INTO schema_migrations VALUES ($1, 'from the future', 0)",
        &[&future],
    )
    .await
    .unwrap();
    let e = History::open(&db.url).await.unwrap_err();
    match &e {
        HistoryError::FutureSchema {
            backend,
            found,
            supported,
        } => {
            assert_eq!(*backend, "postgres");
            assert_eq!(*found, future);
            assert_eq!(*supported, migrations::latest_version());
        }
        other => panic!("expected FutureSchema, got {other}"),
    }
    assert!(e.to_string().contains("newer than this denet-agent"), "{e}");
    let mut expect = all_versions();
    expect.push(future);
    assert_eq!(version_rows(&c).await, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_openers_migrate_once() {
    let Some(db) = TestDb::create("concurrent_openers_migrate_once").await else {
        return;
    };
    // Several agents starting together on one fresh database.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { History::open(&url).await })
        })
        .collect();
    let mut handles = Vec::new();
    for o in opens {
        handles.push(o.await.unwrap().unwrap());
    }
    for h in &handles {
        assert_eq!(
            h.schema_version().await.unwrap(),
            migrations::latest_version()
        );
    }
    assert_eq!(version_rows(&db.client().await).await, all_versions());
    // And they all work on the same table.
    handles[0]
        .insert(&row("x", "n", Status::Succeeded, 1, false))
        .await
        .unwrap();
    assert!(handles[3].get("x").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_are_all_present() {
    let Some(db) = TestDb::create("concurrent_inserts_are_all_present").await else {
        return;
    };
    let shared = History::open(&db.url).await.unwrap();
    let other = History::open(&db.url).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            // Half the tasks share one handle (one pipelined client), half another.
            let h = if t % 2 == 0 {
                shared.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                for i in 0..25 {
                    let mut r = row(
                        &format!("t{t}-{i:02}"),
                        &format!("task{t}"),
                        Status::Succeeded,
                        i,
                        i % 2 == 0,
                    );
                    r.hostname = format!("node-{t}");
                    h.insert(&r).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let q = HistoryQuery {
        limit: 1000,
        ..Default::default()
    };
    let rows = shared.query(&q).await.unwrap();
    assert_eq!(rows.len(), 200);
    for t in 0..8 {
        let q = HistoryQuery {
            name: Some(format!("task{t}")),
            limit: 1000,
            ..Default::default()
        };
        let rows = other.query(&q).await.unwrap();
        assert_eq!(rows.len(), 25);
        assert!(rows.iter().all(|r| r.hostname == format!("node-{t}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_drops_the_connection() {
    let Some(db) = TestDb::create("reconnects_after_the_server_drops_the_connection").await else {
        return;
    };
    let h = History::open(&db.url).await.unwrap();
    h.insert(&row("before", "n", Status::Succeeded, 1, false))
        .await
        .unwrap();
    let admin = connect(&db.admin_url).await;
    for round in 0..2 {
        // What a server restart does to the agent's session.
        let killed: i64 = admin
            .query_one(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()) t",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 1, "round {round}: no session to terminate");
        // The very next call works: reconnect and retry, no error surfaces.
        let id = format!("after-{round}");
        h.insert(&row(&id, "n", Status::Succeeded, 2 + round, false))
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: insert after the connection was killed: {e}")
            });
        assert!(h.get(&id).await.unwrap().is_some());
    }
    assert_eq!(h.query(&HistoryQuery::default()).await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_have_context_and_no_password() {
    let Some(admin_url) = pg_admin_url("connection_errors_have_context_and_no_password") else {
        return;
    };
    // A wrong password on the real server.
    let Some(at) = admin_url.rfind('@') else {
        return;
    };
    let bad = format!("postgres://denet:s3cret-wrong{}", &admin_url[at..]);
    let e = History::open(&bad).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("postgres") && msg.contains("connecting"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret-wrong"), "{msg}");
    assert!(!format!("{e:?}").contains("s3cret-wrong"), "{e:?}");
    // Nothing listening.
    let e = History::open("postgresql://denet:x@127.0.0.1:1/none?connect_timeout=5")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("connecting to the server"), "{e}");
}

#[test]
fn dbname_is_replaced_in_urls() {
    assert_eq!(
        with_dbname("postgres://u:p@h:5432/postgres", "d"),
        "postgres://u:p@h:5432/d"
    );
    assert_eq!(with_dbname("postgres://u@h", "d"), "postgres://u@h/d");
    assert_eq!(
        with_dbname("postgresql://h/x?sslmode=disable", "d"),
        "postgresql://h/d?sslmode=disable"
    );
}
