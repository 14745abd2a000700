//! Shared helpers of the report and export tests (stats, export, HTML, notebook).
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A recorded trace under tests/data.
pub fn data(name: &str) -> PathBuf {
    repo().join("tests/data").join(name)
}

/// Runs the agent with ARGS from the repository root (so relative paths in
/// reports are stable), local time in UTC (Nextflow dates).
pub fn agent(args: &[&str]) -> Output {
    Command::new(super::agent_bin())
        .args(args)
        .current_dir(repo())
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .expect("spawn denet-agent")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `stats --json` of a trace, asserting success.
pub fn stats_json(path: &Path) -> Value {
    let o = agent(&["stats", "--json", &path.to_string_lossy()]);
    assert!(o.status.success(), "stats failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("stats --json prints JSON")
}

/// The trace's records, parsed independently of the agent (ground truth).
pub fn records(path: &Path) -> Vec<Value> {
    super::parse_jsonl(&std::fs::read_to_string(path).expect("read trace"))
}

pub fn of_kind<'a>(recs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["kind"] == kind).collect()
}

/// Compares `got` with the golden file, or rewrites it with UPDATE_GOLDEN=1.
pub fn golden(name: &str, got: &str) {
    let path = repo().join("tests/golden/export").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("mkdir golden");
        std::fs::write(&path, got).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} ({e}); UPDATE_GOLDEN=1 creates it",
            path.display()
        )
    });
    if got != want {
        let line = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .map_or(got.lines().count().min(want.lines().count()) + 1, |i| i + 1);
        panic!(
            "{name} differs from tests/golden/export/{name} at line {line}:\n got: {:?}\nwant: {:?}\n(UPDATE_GOLDEN=1 regenerates after an intended change)",
            got.lines().nth(line - 1),
            want.lines().nth(line - 1)
        );
    }
}
