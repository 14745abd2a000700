//! Workflow tasks (docs/workflows.md): a real Snakemake from PyPI under one agent,
//! every job's processes attributed to its rule and wildcards, checked against the
//! job shells' own command lines; the Snakemake benchmark export against the trace;
//! a Nextflow task layout and a Slurm job's environment. Root (eBPF).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    process::Command,
};

use serde_json::Value;

use crate::helpers::{
    agent_bin, ebpf_ready, python::wheel_python, run_agent, scratch_dir, u, Trace, WORKLOAD,
};

const SAMPLES: [&str; 4] = ["s1", "s2", "s3", "s4"];
/// The `alloc` rule's sizes, MiB: each job allocates and touches that much.
const ALLOC_MIB: [u64; 2] = [40, 80];

/// Three rules over four samples (one a pipe of three tools), a rule allocating a
/// known amount, and a gathering rule: 4 * 3 + 2 + 1 = 15 jobs.
fn snakefile() -> String {
    format!(
        r#"SAMPLES = {samples:?}
SIZES = {sizes:?}

rule all:
    input: "summary.txt", expand("alloc/{{mb}}.txt", mb=SIZES)

rule make:
    output: "data/{{sample}}.txt"
    shell: "seq 1 300000 | awk '{{{{print $1*3}}}}' > {{output}}"

rule sort:
    input: "data/{{sample}}.txt"
    output: "sorted/{{sample}}.txt"
    shell: "sort -n {{input}} | gzip -c | gzip -dc > {{output}}"

rule count:
    input: "sorted/{{sample}}.txt"
    output: "counts/{{sample}}.txt"
    shell: "wc -l {{input}} > {{output}}"

rule alloc:
    output: "alloc/{{mb}}.txt"
    shell: "{workload} alloc {{wildcards.mb}} 100 && echo {{wildcards.mb}} > {{output}}"

rule summary:
    input: expand("counts/{{sample}}.txt", sample=SAMPLES)
    output: "summary.txt"
    shell: "cat {{input}} > {{output}}"
"#,
        samples = SAMPLES,
        sizes = ALLOC_MIB,
        workload = WORKLOAD,
    )
}

/// The rule and wildcards a job shell's script belongs to, read from the script
/// itself (the command line Snakemake formatted for the job).
fn expected_of_script(script: &str) -> (String, BTreeMap<String, String>) {
    let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    let sample = SAMPLES
        .iter()
        .find(|s| script.contains(&format!("/{s}.txt")));
    let rule = if script.contains("seq 1 300000") {
        "make"
    } else if script.contains("sort -n") {
        "sort"
    } else if script.contains("wc -l") {
        "count"
    } else if script.contains(" alloc ") {
        let mb = ALLOC_MIB
            .iter()
            .find(|mb| script.contains(&format!("alloc {mb} ")))
            .expect("alloc size");
        return ("alloc".into(), one("mb", &mb.to_string()));
    } else if script.contains("cat ") {
        return ("summary".into(), BTreeMap::new());
    } else {
        panic!("a job shell of no rule: {script}")
    };
    (rule.into(), one("sample", sample.expect("sample in path")))
}

fn snakemake_run(test: &str, logger: bool) -> Option<(Trace, std::path::PathBuf)> {
    if !ebpf_ready(test) {
        return None;
    }
    let python = wheel_python(test)?;
    let snakemake = python.with_file_name("snakemake");
    let dir = scratch_dir("snakemake");
    std::fs::write(dir.join("Snakefile"), snakefile()).unwrap();
    let mut cmd = vec![
        snakemake.to_str().unwrap().to_string(),
        "--snakefile".into(),
        dir.join("Snakefile").to_str().unwrap().into(),
        "--directory".into(),
        dir.to_str().unwrap().into(),
        "--cores".into(),
        "2".into(),
        "--quiet".into(),
    ];
    if logger {
        cmd.extend(["--logger".into(), "denet".into()]);
    }
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let t = run_agent(&[], &args);
    assert_eq!(t.exit_code(), 0, "snakemake failed: {}", t.stderr);
    Some((t, dir))
}

fn pid_index(t: &Trace) -> HashMap<u64, &Value> {
    t.processes()
        .into_iter()
        .map(|p| (u(&p["pid"]), p))
        .collect()
}

/// The nearest job shell at or above a process, if any.
fn job_shell<'a>(p: &'a Value, by_pid: &HashMap<u64, &'a Value>) -> Option<&'a Value> {
    let mut cur = Some(p);
    while let Some(c) = cur {
        if c["argv"][1] == "-c"
            && c["argv"][2]
                .as_str()
                .is_some_and(|s| s.starts_with("set -euo pipefail;"))
        {
            return Some(c);
        }
        cur = c["ppid"].as_u64().and_then(|pp| by_pid.get(&pp).copied());
    }
    None
}

#[test]
fn snakemake_jobs_are_attributed_to_their_rules_and_wildcards() {
    let test = "snakemake_jobs_are_attributed_to_their_rules_and_wildcards";
    let Some((t, dir)) = snakemake_run(test, true) else {
        return;
    };
    let by_pid = pid_index(&t);
    let mut jobs: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    let mut in_jobs = 0;
    for p in t.processes() {
        let task = &p["task"];
        match job_shell(p, &by_pid) {
            Some(shell) => {
                in_jobs += 1;
                let (rule, wildcards) = expected_of_script(shell["argv"][2].as_str().unwrap());
                assert_eq!(task["engine"], "snakemake", "{p}");
                assert_eq!(task["name"], rule.as_str(), "{p}");
                let got: BTreeMap<String, String> =
                    serde_json::from_value(task["wildcards"].clone()).unwrap();
                assert_eq!(got, wildcards, "{p}");
                let id = task["id"].as_str().expect("job id").to_string();
                let prev = jobs.insert(id.clone(), (rule.clone(), wildcards.clone()));
                assert!(
                    prev.is_none() || prev == Some((rule, wildcards)),
                    "job {id} is one job: {p}"
                );
            }
            // Snakemake itself (python, its solver) runs no job.
            None => assert!(task.is_null(), "outside any job: {p}"),
        }
    }
    // 4 samples x (make, sort, count) + 2 alloc + summary.
    assert_eq!(jobs.len(), 15, "{jobs:?}");
    // Each job is at least its shell; the pipe rules are a shell and their tools.
    assert!(in_jobs >= 15 + 4 * 2 + 4 * 3, "{in_jobs} processes in jobs");
    let sorts: Vec<_> = t
        .processes()
        .into_iter()
        .filter(|p| p["task"]["name"] == "sort")
        .collect();
    for tool in ["sort", "gzip"] {
        assert!(
            sorts
                .iter()
                .filter(|p| p["argv"][0].as_str().unwrap().ends_with(tool))
                .count()
                >= 4,
            "the pipe's {tool} processes belong to the sort jobs"
        );
    }

    // stats --by task: the rules and their job counts.
    let trace = dir.join("trace.jsonl");
    std::fs::write(
        &trace,
        t.records
            .iter()
            .map(|r| format!("{r}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out = Command::new(agent_bin())
        .args(["stats", "--by", "task", "--json"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts: BTreeMap<String, u64> = stats["task_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap().to_string(), u(&g["tasks"])))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("alloc".into(), 2),
            ("count".into(), 4),
            ("make".into(), 4),
            ("sort".into(), 4),
            ("summary".into(), 1)
        ])
    );
    check_benchmark_export(&t, &trace, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One row per job; `cpu_time` the job's processes' CPU summed, `max_rss` its
/// largest process's peak, both from the same trace (to the export's 2 decimals);
/// the `alloc` jobs' `max_rss` at least what they allocated (ground truth).
fn check_benchmark_export(t: &Trace, trace: &Path, dir: &Path) {
    let out_path = dir.join("bench.tsv");
    let out = Command::new(agent_bin())
        .args(["export", "-f", "snakemake-benchmark", "-o"])
        .arg(&out_path)
        .arg(trace)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&out_path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    assert_eq!(
        &header[..10],
        [
            "s",
            "h:m:s",
            "max_rss",
            "max_vms",
            "max_uss",
            "max_pss",
            "io_in",
            "io_out",
            "mean_load",
            "cpu_time"
        ]
    );
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 15, "{text}");
    for row in &rows {
        let jobid = row[col("jobid")];
        let procs: Vec<&Value> = t
            .processes()
            .into_iter()
            .filter(|p| p["task"]["id"] == jobid)
            .collect();
        let cpu_s: f64 = procs
            .iter()
            .map(|p| (u(&p["cpu_user_ns"]) + u(&p["cpu_sys_ns"])) as f64 / 1e9)
            .sum();
        let max_rss_mib = procs.iter().map(|p| u(&p["peak_rss_kb"])).max().unwrap() as f64 / 1024.0;
        let got_cpu: f64 = row[col("cpu_time")].parse().unwrap();
        let got_rss: f64 = row[col("max_rss")].parse().unwrap();
        assert!(
            (got_cpu - cpu_s).abs() <= 0.0051,
            "job {jobid}: cpu_time {got_cpu} vs {cpu_s}"
        );
        assert!(
            (got_rss - max_rss_mib).abs() <= 0.0051,
            "job {jobid}: max_rss {got_rss} vs {max_rss_mib}"
        );
        assert_eq!(row[col("max_uss")], "NA");
        if row[col("rule_name")] == "alloc" {
            let mb: f64 = row[col("wildcards")]
                .trim_matches(|c| "{}'".contains(c))
                .split("': '")
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            // The workload touches every page of its allocation; its binary and libc
            // add a few MiB.
            assert!(
                got_rss >= mb && got_rss <= mb + 16.0,
                "alloc {mb} MiB: max_rss {got_rss}"
            );
        }
    }
}

/// Without the logger plugin Snakemake's job shells are still found: every job's
/// processes carry a Snakemake task, its rule unknown.
#[test]
fn snakemake_without_the_plugin_still_marks_its_jobs() {
    let test = "snakemake_without_the_plugin_still_marks_its_jobs";
    let Some((t, dir)) = snakemake_run(test, false) else {
        return;
    };
    let by_pid = pid_index(&t);
    let mut marked = 0;
    for p in t.processes() {
        if job_shell(p, &by_pid).is_some() {
            marked += 1;
            assert_eq!(p["task"]["engine"], "snakemake", "{p}");
            assert!(p["task"]["name"].is_null(), "{p}");
        }
    }
    assert!(marked >= 15, "{marked}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A task in Nextflow's layout (`bash .command.run` in `work/ab/cdef…`, the task
/// named in the wrapper's comment), inside a Slurm job's environment: the
/// processes carry the Nextflow task and the Slurm job. Nextflow itself is not run
/// here (docs/workflows.md says why).
#[test]
fn a_nextflow_task_in_a_slurm_job_is_named_by_both() {
    if !ebpf_ready("a_nextflow_task_in_a_slurm_job_is_named_by_both") {
        return;
    }
    let dir = scratch_dir("nextflow");
    let work = dir.join("work/3f/a1b2c3d4e5f60718293a4b5c6d7e8f90");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join(".command.run"),
        "#!/bin/bash\n# NEXTFLOW TASK: ALIGN:bwa (sample 1)\nset -e\nbash .command.sh\n",
    )
    .unwrap();
    std::fs::write(
        work.join(".command.sh"),
        "seq 1 1000 | sort -n > out.txt\nsleep 0.3\n",
    )
    .unwrap();
    let script = format!("cd {} && bash .command.run", work.display());
    let out_file = dir.join("t.jsonl");
    let out = Command::new(agent_bin())
        .args(["run", "--standalone", "-o"])
        .arg(&out_file)
        .args(["--", "sh", "-c", &script])
        .env("SLURM_JOB_ID", "4242")
        .env("SLURM_JOB_NAME", "nf-run")
        .env("SLURM_JOB_USER", "alice")
        .env("SLURM_CLUSTER_NAME", "denet")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let records = crate::helpers::parse_jsonl(&std::fs::read_to_string(&out_file).unwrap());
    let procs: Vec<&Value> = records.iter().filter(|r| r["kind"] == "process").collect();
    let mut in_task = 0;
    for p in &procs {
        let task = &p["task"];
        assert_eq!(task["slurm"]["job_id"], 4242, "{p}");
        assert_eq!(task["slurm"]["user"], "alice", "{p}");
        if p["argv"][0] == "sh" {
            // Before the wrapper: the Slurm job itself.
            assert_eq!(task["engine"], "slurm", "{p}");
            assert_eq!(task["name"], "nf-run", "{p}");
            assert_eq!(task["id"], "4242", "{p}");
        } else {
            in_task += 1;
            assert_eq!(task["engine"], "nextflow", "{p}");
            assert_eq!(task["name"], "ALIGN:bwa", "{p}");
            assert_eq!(task["tag"], "sample 1", "{p}");
            assert_eq!(task["id"], "3f/a1b2c3", "{p}");
            assert_eq!(task["work_dir"], work.to_str().unwrap(), "{p}");
        }
    }
    // bash .command.run, bash .command.sh, seq, sort.
    assert!(in_task >= 4, "{procs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
