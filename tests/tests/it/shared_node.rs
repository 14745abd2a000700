//! The node's service on a shared machine: jobs run as the user who asked, a user
//! reaches only their own jobs and history, and nobody gets root's rights through
//! it. Real unprivileged users (`useradd`), driven through `runuser` and the real
//! `jobs` client over the node socket; the service runs as root.

use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use serde_json::{json, Value};

use crate::{
    helpers::{agent_as, ebpf_ready, scratch_dir, test_user},
    serve_api::Svc,
};

/// `jobs --server unix:SOCK ARGS` as `user`.
fn jobs_as(user: &str, svc: &Svc, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["jobs", "--server", svc.server.as_str()];
    all.extend_from_slice(args);
    agent_as(user, &all)
}

fn owner_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .uid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_as_their_caller_and_nobody_reaches_another_users_jobs() {
    if !ebpf_ready("jobs_run_as_their_caller_and_nobody_reaches_another_users_jobs") {
        return;
    }
    let alice = test_user("denet-alice");
    let bob = test_user("denet-bob");
    let nobody = 65534;
    let dir = scratch_dir("shared-node");
    // A directory every user may write in (like /tmp), for the jobs' cwd.
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let w = work.to_string_lossy().into_owned();
    let data = dir.join("data");
    let svc = Svc::start(&data, &["--no-ebpf"]);

    // The exploit that used to work: `nobody` asks for a command; it runs as nobody.
    let (code, out, err) = jobs_as(
        "nobody",
        &svc,
        &[
            "spawn",
            "--name",
            "x",
            "--cwd",
            &w,
            "--",
            "sh",
            "-c",
            "id; touch made-by-job",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let x = out.trim().to_string();
    let v = svc.wait_end(&x, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        (v["user"].as_str(), v["uid"].as_u64()),
        (Some("nobody"), Some(nobody.into()))
    );
    let (code, logs, err) = jobs_as("nobody", &svc, &["logs", &x]);
    assert_eq!(code, 0, "{err}");
    assert!(logs.contains("uid=65534(nobody)"), "{logs}");
    assert!(!logs.contains("uid=0"), "{logs}");
    assert_eq!(owner_of(&work.join("made-by-job")), nobody);
    // Its directory, trace and logs are the user's.
    let job_dir = data.join("jobs").join(&x);
    for f in ["", "trace.jsonl", "stdout.log", "stderr.log"] {
        assert_eq!(owner_of(&job_dir.join(f)), nobody, "{f}");
    }
    let (code, trace, err) = jobs_as("nobody", &svc, &["trace", &x]);
    assert_eq!(code, 0, "{err}");
    assert!(
        trace.lines().last().unwrap_or("").contains("\"summary\""),
        "{trace}"
    );

    // A job of root's and one of alice's, still running.
    let root_job = svc
        .spawn(json!({"name": "sleeper", "cmd": ["sleep", "60"], "cwd": w}))
        .await;
    let (code, out, err) = jobs_as(
        "denet-alice",
        &svc,
        &[
            "spawn", "--name", "sleeper", "--cwd", &w, "--", "sleep", "60",
        ],
    );
    // Users do not share job names: alice's "sleeper" is not root's.
    assert_eq!(code, 0, "{err}");
    let alice_job = out.trim().to_string();
    svc.wait_running(&root_job).await;
    svc.wait_running(&alice_job).await;
    assert_eq!(svc.job(&alice_job).await["uid"], alice);

    // Nothing of root's or alice's is nobody's to see or touch: 403 every time.
    for target in [&root_job, &alice_job] {
        for action in [
            &["show", target.as_str()][..],
            &["stop", target],
            &["pause", target],
            &["resume", target],
            &["logs", target],
            &["logs", "--follow", target],
            &["trace", target],
        ] {
            let (code, out, err) = jobs_as("nobody", &svc, action);
            assert_ne!(code, 0, "{action:?} as nobody: {out}");
            assert!(err.contains("403"), "{action:?} as nobody: {err}");
        }
        // Bob is no more allowed than nobody.
        let (code, _, err) = jobs_as("denet-bob", &svc, &["stop", target]);
        assert_ne!(code, 0);
        assert!(err.contains("another user"), "{err}");
    }
    // Still running after all that.
    for id in [&root_job, &alice_job] {
        assert_eq!(svc.job(id).await["status"], "running");
    }

    // Each user lists their own jobs; root lists everyone's.
    let list = |user: &str| -> Vec<String> {
        let (code, out, err) = jobs_as(user, &svc, &["list", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(list("nobody"), std::slice::from_ref(&x));
    assert_eq!(list("denet-alice"), std::slice::from_ref(&alice_job));
    assert!(list("denet-bob").is_empty());
    let all = list("root");
    for id in [&x, &root_job, &alice_job] {
        assert!(all.contains(id), "{all:?}");
    }
    // The history too.
    let (code, out, err) = jobs_as("nobody", &svc, &["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let rows = rows["rows"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["uid"] == nobody), "{rows:?}");

    // A directory the caller may not enter is refused as the caller would be.
    let (code, _, err) = jobs_as(
        "nobody",
        &svc,
        &["spawn", "--name", "y", "--cwd", "/root", "--", "true"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("cwd") && err.contains("400"), "{err}");

    // Alice may stop her own job; root may stop anyone's.
    let (code, _, err) = jobs_as("denet-alice", &svc, &["stop", &alice_job]);
    assert_eq!(code, 0, "{err}");
    assert!(svc
        .post(&format!("/jobs/{root_job}/stop"))
        .await
        .status
        .is_success());
    for id in [&root_job, &alice_job] {
        let v = svc.wait_end(id, Duration::from_secs(30)).await;
        assert_eq!(v["status"], "cancelled", "{v}");
    }
    let _ = bob;
}
