//! Slurm batch jobs on a real single-node Slurm (Debian's slurm-wlm and munge on
//! loopback, set up by scripts/setup-tests.sh with the project's TaskProlog): plain
//! `sbatch` jobs of an unprivileged user, traced by the node daemon
//! (`serve --slurm`) and recorded in its history with their job ids, exact numbers
//! and nothing lost; `run --db` inside jobs writing to the real PostgreSQL; and
//! what the prolog must not let a user do. Root (the daemon, the users).

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use denet_agent::history::{History, HistoryQuery, TaskQuery};
use serde_json::Value;

use crate::{
    helpers::{agent_bin, ebpf_ready, in_ci, parse_jsonl, scratch_dir, test_user, u, WORKLOAD},
    serve_api::Svc,
};

/// MiB each job's workload allocates and touches (the ground truth for its peak).
const ALLOC_MIB: u64 = 24;
/// The plain job that exits with a status of its own, and the status.
const FAILING_JOB: usize = 7;
const FAILING_STATUS: i32 = 3;

/// Slurm answers and runs the project's TaskProlog; else skip (fail in CI).
fn slurm_ready(test: &str) -> bool {
    if !ebpf_ready(test) {
        return false;
    }
    let why = if Command::new("sinfo")
        .arg("-h")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        Some("no Slurm answers (scripts/setup-tests.sh sets one up as root)")
    } else if !std::fs::read_to_string("/etc/slurm/slurm.conf")
        .unwrap_or_default()
        .contains("TaskProlog=/etc/slurm/denet-task-prolog")
    {
        Some("slurm.conf does not run the project's TaskProlog (scripts/setup-tests.sh)")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if in_ci() => panic!("{test}: {why}"),
        Some(why) => {
            eprintln!("skipped {test}: {why}");
            false
        }
    }
}

/// A directory the job user writes its job output to.
fn work_dir(dir: &Path, uid: u32) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&work, Some(uid), None).unwrap();
    work
}

/// `sbatch --parsable ARGS` as `user` from `work`; the job id it prints.
fn sbatch(user: &str, work: &Path, export: &str, args: &[&str]) -> String {
    let out = Command::new("runuser")
        .args(["-u", user, "--", "sbatch", "--parsable"])
        .arg(format!("--export=ALL,{export}"))
        .args(args)
        .current_dir(work)
        .output()
        .unwrap();
    assert!(out.status.success(), "sbatch {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// Waits until `user` has no job left in the queue.
fn wait_for_queue(user: &str, within: Duration) {
    let until = Instant::now() + within;
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-u", user])
            .output()
            .unwrap();
        if out.status.success() && out.stdout.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "{user}'s jobs still queued after {within:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Submits 10 plain jobs and an array of 10 as `user`, each running the workload
/// (`script` wraps it); returns the 20 job ids as Slurm shows them, and the plain
/// job ids (the failing one is `plain[FAILING_JOB]`).
fn submit_twenty(
    user: &str,
    work: &Path,
    export: &str,
    script: &dyn Fn(i32) -> String,
) -> (Vec<String>, Vec<String>) {
    let mut plain = Vec::new();
    for i in 0..10 {
        let status = if i == FAILING_JOB { FAILING_STATUS } else { 0 };
        let name = format!("plain-{i}");
        plain.push(sbatch(
            user,
            work,
            export,
            &["-J", &name, "-o", "%j.out", "--wrap", &script(status)],
        ));
    }
    let array = sbatch(
        user,
        work,
        export,
        &[
            "-J",
            "arr",
            "--array=1-10",
            "-o",
            "%A_%a.out",
            "--wrap",
            &script(0),
        ],
    );
    let mut ids = plain.clone();
    ids.extend((1..=10).map(|t| format!("{array}_{t}")));
    (ids, plain)
}

fn workload_script(status: i32) -> String {
    format!("echo trace=$DENET_AGENT_TRACE_FILE; {WORKLOAD} alloc {ALLOC_MIB} 300 && exit {status}")
}

#[test]
fn twenty_sbatch_jobs_are_traced_by_the_node_daemon_and_recorded() {
    let test = "twenty_sbatch_jobs_are_traced_by_the_node_daemon_and_recorded";
    if !slurm_ready(test) {
        return;
    }
    let user = "denet-slurm-a";
    let uid = test_user(user);
    let dir = scratch_dir("slurm20");
    let work = work_dir(&dir, uid);
    let db = dir.join("history.sqlite");
    let db_arg = db.to_str().unwrap().to_string();
    let svc = Svc::start(&dir.join("data"), &["--slurm", "--db", &db_arg]);
    let tracer = dir.join("data.tracer.sock");
    let export = format!(
        "DENET_AGENT_TRACER_SOCKET={},DENET_AGENT_BIN={}",
        tracer.display(),
        agent_bin().display()
    );
    let started = Instant::now();
    let (ids, plain) = submit_twenty(user, &work, &export, &workload_script);
    wait_for_queue(user, Duration::from_secs(240));
    eprintln!("20 jobs ran in {:?}", started.elapsed());

    // The recorders write their rows after the jobs end: wait for all 20.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let history = rt.block_on(History::open(&db_arg)).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = rt
            .block_on(history.query(&HistoryQuery {
                limit: 1000,
                ..HistoryQuery::default()
            }))
            .unwrap();
        if rows.len() >= ids.len() || Instant::now() > until {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        rows.len(),
        20,
        "0 lost: {:?}",
        rows.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    let tasks = rt
        .block_on(history.query_tasks(&TaskQuery::default()))
        .unwrap();
    let home = PathBuf::from(format!("/home/{user}"));
    for id in &ids {
        let row = rows
            .iter()
            .find(|r| r.slurm_job_id.as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no history row for job {id}"));
        assert_eq!(row.id, format!("slurm-denet-{id}"));
        assert_eq!((row.user.as_str(), row.uid), (user, uid), "{row:?}");
        let failing = *id == plain[FAILING_JOB];
        assert_eq!(
            row.exit_code,
            Some(if failing { FAILING_STATUS } else { 0 }),
            "{row:?}"
        );
        assert_eq!(row.lost_events, 0, "{row:?}");
        // The batch shell and the workload at least (echo is a builtin).
        assert!(row.process_count >= 2, "{row:?}");
        // Ground truth: the workload touched ALLOC_MIB; its binary adds a few MiB.
        let peak_mib = row.peak_rss_kb as u64 / 1024;
        assert!(
            (ALLOC_MIB..=ALLOC_MIB + 16).contains(&peak_mib),
            "job {id}: peak {peak_mib} MiB for {ALLOC_MIB} MiB allocated"
        );
        let task = tasks
            .iter()
            .find(|t| t.run_id == row.id)
            .unwrap_or_else(|| panic!("no task row for job {id}"));
        assert_eq!(task.engine, "slurm");
        assert_eq!(task.slurm_job_id.as_deref(), Some(id.as_str()));
        assert_eq!(task.name, row.name);
        // The trace: where the job was told it is, the user's own file.
        let trace = home.join(format!(".local/share/denet-agent/slurm/{id}.jsonl"));
        assert_eq!(row.trace_path, trace.display().to_string());
        assert_eq!(
            std::fs::metadata(&trace).unwrap().uid(),
            uid,
            "{}",
            trace.display()
        );
        let out_name = match id.split_once('_') {
            Some((a, t)) => format!("{a}_{t}.out"),
            None => format!("{id}.out"),
        };
        let job_out = std::fs::read_to_string(work.join(out_name)).unwrap();
        assert!(
            job_out.contains(&format!("trace={}", trace.display())),
            "{job_out}"
        );
        let records = parse_jsonl(&std::fs::read_to_string(&trace).unwrap());
        let header = &records[0];
        assert_eq!(header["tracer"], "node");
        let procs: Vec<&Value> = records.iter().filter(|r| r["kind"] == "process").collect();
        let script = procs
            .iter()
            .find(|p| u(&p["pid"]) == u(&header["pid"]))
            .expect("the batch script's record");
        assert!(
            script["argv"][1]
                .as_str()
                .unwrap()
                .ends_with("/slurm_script"),
            "{script}"
        );
        let workload = procs
            .iter()
            .find(|p| p["argv"][1] == "alloc")
            .expect("the workload's record");
        assert!(
            u(&workload["peak_rss_kb"]) >= ALLOC_MIB * 1024,
            "{workload}"
        );
        let (job, task) = match id.split_once('_') {
            Some((_, t)) => (None, Some(t.parse::<u64>().unwrap())),
            None => (Some(id.parse::<u64>().unwrap()), None),
        };
        let slurm = &workload["task"]["slurm"];
        if let Some(job) = job {
            assert_eq!(slurm["job_id"], job, "{workload}");
        }
        if let Some(task) = task {
            assert_eq!(slurm["array_task_id"], task, "{workload}");
        }
        assert_eq!(slurm["step"], "batch", "{workload}");
        assert_eq!(slurm["user"], user, "{workload}");
        let _ = std::fs::remove_file(&trace);
    }
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the prolog must not let a user do: have root write the trace where the user
/// may not (the job runs untraced, nothing is written there), claim a job id that is
/// not the task's, or have a process that is not a Slurm task traced as one; a job
/// that opts out is left alone.
#[test]
fn slurm_jobs_get_no_root_rights_and_no_other_task() {
    let test = "slurm_jobs_get_no_root_rights_and_no_other_task";
    if !slurm_ready(test) {
        return;
    }
    let user = "denet-slurm-b";
    let uid = test_user(user);
    let dir = scratch_dir("slurmno");
    let work = work_dir(&dir, uid);
    let db = dir.join("history.sqlite");
    let db_arg = db.to_str().unwrap().to_string();
    let svc = Svc::start(&dir.join("data"), &["--slurm", "--db", &db_arg]);
    let tracer = dir.join("data.tracer.sock");
    let base = format!(
        "DENET_AGENT_TRACER_SOCKET={},DENET_AGENT_BIN={}",
        tracer.display(),
        agent_bin().display()
    );
    let forbidden = "/root/denet-slurm-forbidden.jsonl";
    let _ = std::fs::remove_file(forbidden);
    let prolog = format!("{} slurm task-prolog", agent_bin().display());
    let started = Instant::now();
    // 1. A trace path only root may write.
    let root_path = sbatch(
        user,
        &work,
        &format!("{base},DENET_AGENT_TRACE={forbidden}"),
        &[
            "-J",
            "rootpath",
            "-o",
            "%j.out",
            "--wrap",
            "echo trace=$DENET_AGENT_TRACE_FILE",
        ],
    );
    // 2. Asking again from inside the job: another job id, then the right one.
    let again = sbatch(
        user,
        &work,
        &base,
        &[
            "-J",
            "again",
            "-o",
            "%j.out",
            "--wrap",
            &format!("SLURM_JOB_ID=999999 {prolog}; echo ---; {prolog}; echo done"),
        ],
    );
    // 3. Opted out.
    let off = sbatch(
        user,
        &work,
        &format!("{base},DENET_AGENT_SLURM=off"),
        &[
            "-J",
            "off",
            "-o",
            "%j.out",
            "--wrap",
            "echo trace=$DENET_AGENT_TRACE_FILE",
        ],
    );
    wait_for_queue(user, Duration::from_secs(120));
    let took = started.elapsed();
    let out = |id: &str| std::fs::read_to_string(work.join(format!("{id}.out"))).unwrap();
    assert!(
        !Path::new(forbidden).exists(),
        "root wrote the user's trace where the user may not"
    );
    assert_eq!(
        out(&root_path).trim(),
        "trace=",
        "untraced, so no trace file said"
    );
    // The recorder could not create the file: the job was not held for the 20 s
    // the daemon waits for a recorder at most.
    assert!(took < Duration::from_secs(60), "{took:?}");
    let text = out(&again);
    let (claim, second) = text.split_once("---").unwrap();
    assert!(
        !claim.contains("export"),
        "a forged job id is refused: {text}"
    );
    assert!(
        !second.contains("export"),
        "a traced task is not taken twice: {text}"
    );
    assert!(text.contains("done"));
    assert_eq!(out(&off).trim(), "trace=");
    // 4. Outside Slurm: the caller's parent (runuser) is not a task of the user's.
    let fake = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(agent_bin())
        .args(["slurm", "task-prolog", "--socket"])
        .arg(&tracer)
        .env("SLURM_JOB_ID", &again)
        .output()
        .unwrap();
    assert_eq!(fake.status.code(), Some(0), "never fails a job: {fake:?}");
    assert!(fake.stdout.is_empty(), "{fake:?}");
    assert!(
        String::from_utf8_lossy(&fake.stderr).contains("not traced"),
        "{fake:?}"
    );
    // Only the job traced as usual has a row.
    let rt = tokio::runtime::Runtime::new().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rows = rt
        .block_on(async {
            History::open(&db_arg)
                .await
                .unwrap()
                .query(&HistoryQuery::default())
                .await
        })
        .unwrap();
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r.slurm_job_id.as_deref()).collect();
    assert_eq!(ids, [Some(again.as_str())], "{rows:?}");
    drop(svc);
    let _ = std::fs::remove_file(format!(
        "/home/{user}/.local/share/denet-agent/slurm/{again}.jsonl"
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `run --db` inside 20 batch jobs (opted out of the daemon's own recording), each
/// through the node daemon, each writing its row to the real PostgreSQL of the test
/// set-up with the job id it ran in.
#[test]
fn run_db_inside_twenty_sbatch_jobs_writes_to_postgres() {
    let test = "run_db_inside_twenty_sbatch_jobs_writes_to_postgres";
    if !slurm_ready(test) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = rt.block_on(crate::helpers::pg::TestDb::create(test)) else {
        return;
    };
    let user = "denet-slurm-c";
    let uid = test_user(user);
    let dir = scratch_dir("slurmpg");
    let work = work_dir(&dir, uid);
    let svc = Svc::start(&dir.join("data"), &[]);
    let tracer = dir.join("data.tracer.sock");
    let export = "DENET_AGENT_SLURM=off".to_string();
    let url = pg.url.clone();
    let script = move |status: i32| {
        format!(
            "{} run --node-socket {} --require-ebpf --db '{url}' -o run-$SLURM_JOB_ID.jsonl -- {WORKLOAD} alloc {ALLOC_MIB} 300 && exit {status}",
            agent_bin().display(),
            tracer.display(),
        )
    };
    let (ids, plain) = submit_twenty(user, &work, &export, &script);
    wait_for_queue(user, Duration::from_secs(240));
    let history = rt.block_on(History::open(&pg.url)).unwrap();
    let rows = rt
        .block_on(history.query(&HistoryQuery {
            limit: 1000,
            ..HistoryQuery::default()
        }))
        .unwrap();
    assert_eq!(rows.len(), 20, "0 lost");
    let tasks = rt
        .block_on(history.query_tasks(&TaskQuery::default()))
        .unwrap();
    for id in &ids {
        let row = rows
            .iter()
            .find(|r| r.slurm_job_id.as_deref() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no row for job {id}: {rows:?}"));
        assert_eq!((row.user.as_str(), row.uid), (user, uid));
        // The run's command is the workload (its own status is 0 even in the
        // failing job, whose script exits afterwards).
        assert_eq!(row.exit_code, Some(0), "{row:?}");
        assert_eq!(row.lost_events, 0);
        let peak_mib = row.peak_rss_kb as u64 / 1024;
        assert!((ALLOC_MIB..=ALLOC_MIB + 16).contains(&peak_mib), "{row:?}");
        let task = tasks.iter().find(|t| t.run_id == row.id).expect("task row");
        assert_eq!(task.slurm_job_id.as_deref(), Some(id.as_str()));
        assert_eq!(task.engine, "slurm");
    }
    assert!(plain.len() == 10);
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}
