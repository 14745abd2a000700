//! Why a job or run failed: jobs that die of a Python exception, an R error, a
//! segfault and an OOM kill each get the right excerpt of their stderr in their view,
//! their stream's end and their history row, which `jobs errors` lists and which
//! survive a restart; `run --stderr FILE` puts the same excerpt in the summary.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{json, Value};

use crate::{
    helpers::{agent_bin, ebpf_ready, in_ci, parse_jsonl, scratch_dir},
    serve_api::{jobs_cli, Svc},
};

/// `denet-agent jobs --server SERVER ARGS`: exit status and stdout.
fn jobs(server: &str, args: &[&str]) -> (i32, String) {
    let (code, out, _) = jobs_cli(server, args);
    (code, out)
}

/// Rscript, installed by scripts/setup-tests.sh; in CI a missing one fails.
fn rscript(test: &str) -> Option<&'static str> {
    if Path::new("/usr/bin/Rscript").is_file() {
        return Some("/usr/bin/Rscript");
    }
    if in_ci() {
        panic!("{test}: /usr/bin/Rscript is missing (scripts/setup-tests.sh installs r-base-core)");
    }
    eprintln!("skipped {test}: no Rscript (run scripts/setup-tests.sh)");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_keep_the_right_excerpt_and_it_survives_a_restart() {
    let test = "failed_jobs_keep_the_right_excerpt_and_it_survives_a_restart";
    if !ebpf_ready(test) {
        return;
    }
    let Some(rscript) = rscript(test) else {
        return;
    };
    let dir = scratch_dir("failures");
    let data = dir.join("data");
    let svc = Svc::start(&data, &[]);
    let py =
        "import json\nprint('loading')\ndef parse(x):\n    return json.loads(x)\nparse('{bad')\n";
    let jobs_asked = [
        ("python", json!(["python3", "-c", py])),
        (
            "r",
            json!([
                rscript,
                "-e",
                "cat('step 1\\n'); f <- function(x) log(x); f('a')"
            ]),
        ),
        // bash reports a child killed by a signal on stderr, as a pipeline step would.
        (
            "segv",
            json!([
                "bash",
                "-c",
                "echo start >&2; python3 -c 'import ctypes; ctypes.string_at(0)'; exit 139"
            ]),
        ),
        (
            "oom",
            json!([
                "bash",
                "-c",
                "python3 -c 'x = bytearray(400 << 20); print(len(x))'; exit 137"
            ]),
        ),
        (
            "fine",
            json!(["sh", "-c", "echo warning: nothing wrong >&2"]),
        ),
    ];
    let mut ids = Vec::new();
    for (name, cmd) in &jobs_asked {
        let mut body = json!({"name": name, "cmd": cmd, "cwd": dir});
        if *name == "oom" {
            body["memory_limit"] = json!("64M");
        }
        ids.push(svc.spawn(body).await);
    }
    let mut rows = Vec::new();
    for id in &ids {
        let v = svc.wait_end(id, Duration::from_secs(60)).await;
        rows.push(v["resources"].clone());
    }
    let excerpt = |i: usize| -> (String, String) {
        let r = &rows[i];
        (
            r["failure_kind"]
                .as_str()
                .unwrap_or_else(|| panic!("no kind: {r}"))
                .to_string(),
            r["failure_excerpt"].as_str().unwrap().to_string(),
        )
    };
    let (kind, text) = excerpt(0);
    assert_eq!(kind, "python_traceback", "{text}");
    assert!(
        text.starts_with("Traceback (most recent call last):"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"), "{text}");
    assert!(!text.contains("loading"));
    let (kind, text) = excerpt(1);
    assert_eq!(kind, "r_error", "{text}");
    assert!(
        text.starts_with("Error in log(x) : non-numeric argument to mathematical function"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("Execution halted"), "{text}");
    let (kind, text) = excerpt(2);
    assert_eq!(kind, "signal", "{text}");
    assert!(text.contains("Segmentation fault"), "{text}");
    let (kind, text) = excerpt(3);
    assert_eq!(kind, "signal", "{text}");
    assert!(text.contains("Killed"), "{text}");
    assert!(rows[3]["oom_kills"].as_u64().unwrap() >= 1, "{}", rows[3]);
    // A job that succeeded keeps its stderr tail and no excerpt.
    assert_eq!(rows[4]["status"], "succeeded");
    assert_eq!(rows[4]["stderr_tail"], "warning: nothing wrong\n");
    assert!(rows[4]["failure_excerpt"].is_null());

    // `jobs errors` lists the four, newest first, with the line that says why.
    let (code, out) = jobs(&svc.server, &["errors"]);
    assert_eq!(code, 0, "{out}");
    for (i, id) in ids.iter().enumerate().take(4) {
        assert!(
            out.contains(id.as_str()),
            "{} not listed:\n{out}",
            jobs_asked[i].0
        );
    }
    assert!(!out.contains(ids[4].as_str()), "{out}");
    assert!(out.contains("  json.decoder.JSONDecodeError"), "{out}");
    let (_, tb) = jobs(&svc.server, &["errors", "--name", "python", "--traceback"]);
    assert!(
        tb.contains("    Traceback (most recent call last):"),
        "{tb}"
    );
    assert!(!tb.contains(ids[1].as_str()), "{tb}");
    // `jobs show` says it for people; `logs --grep` finds the line.
    let (_, show) = jobs(&svc.server, &["show", &ids[1]]);
    assert!(
        show.contains("status:   failed, exit 1")
            || show.contains("status:   startup_failed, exit 1"),
        "{show}"
    );
    assert!(
        show.contains("failure (r error):\n  Error in log(x)"),
        "{show}"
    );
    let (_, grep) = jobs(
        &svc.server,
        &["logs", &ids[0], "--grep", "Error", "--stream", "stderr"],
    );
    assert!(
        grep.starts_with("stderr:") && grep.contains("JSONDecodeError"),
        "{grep}"
    );
    drop(svc);

    // After a restart the rows, excerpts included, come from the database.
    let svc = Svc::start(&data, &[]);
    let h: Value = svc.client.get("/history").await.unwrap().json().unwrap();
    let back = h["rows"].as_array().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let r = back.iter().find(|r| r["id"] == id.as_str()).unwrap();
        assert_eq!(r["failure_excerpt"], rows[i]["failure_excerpt"]);
        assert_eq!(r["stderr_tail"], rows[i]["stderr_tail"]);
    }
    let (_, again) = jobs(&svc.server, &["errors"]);
    assert_eq!(again.lines().count(), out.lines().count(), "{again}");
}

#[test]
fn run_with_a_stderr_file_puts_the_excerpt_in_the_summary() {
    let dir = scratch_dir("run-excerpt");
    let (err, trace) = (dir.join("err.txt"), dir.join("t.jsonl"));
    let run = |cmd: &[&str]| {
        let out = Command::new(agent_bin())
            .args(["run", "--standalone", "--no-ebpf", "--stderr"])
            .arg(&err)
            .arg("-o")
            .arg(&trace)
            .arg("--")
            .args(cmd)
            .output()
            .unwrap();
        let recs = parse_jsonl(&std::fs::read_to_string(&trace).unwrap());
        (out.status.code(), recs.last().unwrap().clone())
    };
    let (code, s) = run(&["python3", "-c", "raise KeyError('sample_7')"]);
    assert_eq!(code, Some(1));
    assert_eq!(s["failure_kind"], "python_traceback", "{s}");
    assert!(
        s["failure_excerpt"]
            .as_str()
            .unwrap()
            .ends_with("KeyError: 'sample_7'\n"),
        "{s}"
    );
    // The file itself is the command's whole stderr, untouched.
    assert!(std::fs::read_to_string(&err)
        .unwrap()
        .contains("KeyError: 'sample_7'"));
    let (code, s) = run(&["sh", "-c", "echo all good >&2"]);
    assert_eq!(code, Some(0));
    assert!(
        s["failure_kind"].is_null() && s["failure_excerpt"].is_null(),
        "{s}"
    );
}
