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

/// A seeded history: 20 good runs of `align` (wall i s, CPU 2i s, peak 10i MiB),
/// one OOM-killed (300 MiB) and one stopped by a timeout (100 s); 3 failed runs of
/// `index`. The statistics and recommendations are the ones worked out by hand here
/// (nearest-rank quantiles over the good runs; margins over the largest seen).
fn seeded_tasks() -> Vec<denet_agent::history::TaskRow> {
    use denet_agent::history::conformance::task_row;
    let mut rows = Vec::new();
    let mut seq = 0;
    let mut push =
        |name: &str, wall: f64, cpu: f64, mib: i64, exit: Option<i32>, oom: i64, t_o: bool| {
            let mut r = task_row("seeded", seq, name, 1_000_000 + seq * 1000, true);
            seq += 1;
            r.duration_s = wall;
            r.cpu_s = cpu;
            r.peak_rss_kb = Some(mib * 1024);
            r.exit_code = exit;
            r.signal = if exit.is_some() { None } else { Some(9) };
            r.oom_kills = oom;
            r.timed_out = t_o;
            rows.push(r);
        };
    for i in 1..=20 {
        push(
            "align",
            f64::from(i),
            2.0 * f64::from(i),
            10 * i64::from(i),
            Some(0),
            0,
            false,
        );
    }
    push("align", 3.0, 6.0, 300, None, 1, false);
    push("align", 100.0, 200.0, 50, None, 0, true);
    for wall in [5.0, 6.0, 7.0] {
        push("index", wall, wall / 2.0, 8, Some(1), 0, false);
    }
    rows
}

fn resources(db: &str, args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .args(["history", "resources", "--db", db])
        .args(args)
        .output()
        .unwrap()
}

fn check_seeded_resources(db: &str) {
    let out = resources(db, &["--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["margin_percent"], 20.0);
    let align = &v["tasks"][0];
    assert_eq!(align["name"], "align");
    assert_eq!(
        (
            u(&align["runs"]),
            u(&align["failures"]),
            u(&align["oom_killed"]),
            u(&align["timed_out"])
        ),
        (22, 2, 1, 1)
    );
    let spread = |k: &str| {
        let s = &align[k];
        (
            s["median"].as_f64().unwrap(),
            s["p95"].as_f64().unwrap(),
            s["max"].as_f64().unwrap(),
        )
    };
    // Good runs only: wall 1..20 (10th and 19th smallest), CPU twice that.
    assert_eq!(spread("wall_s"), (10.0, 19.0, 20.0));
    assert_eq!(spread("cpu_s"), (20.0, 38.0, 40.0));
    assert_eq!(spread("parallelism"), (2.0, 2.0, 2.0));
    assert_eq!(spread("peak_rss_mib"), (100.0, 190.0, 200.0));
    // Memory: the OOM-killed run's 300 MiB + 20% = 360; time: the timed-out run's
    // 100 s + 20% = 120 s = 2 min; threads: p95 parallelism 2.
    assert_eq!(
        align["recommendation"],
        serde_json::json!({"memory_mib": 360, "threads": 2, "runtime_minutes": 2})
    );
    let index = &v["tasks"][1];
    assert_eq!((u(&index["runs"]), u(&index["failures"])), (3, 3));
    // No good run: all three count; 2nd and 3rd smallest.
    assert_eq!(index["wall_s"]["median"], 6.0);
    assert_eq!(index["wall_s"]["p95"], 7.0);

    // A name pattern and a margin.
    let out = resources(
        db,
        &["--format", "json", "--name", "ind*", "--margin", "50"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["tasks"][0]["recommendation"]["memory_mib"], 12,
        "8 MiB + 50%"
    );

    // Slurm options, one line per name.
    let out = resources(db, &["--format", "slurm"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "align\t--mem=360M --cpus-per-task=2 --time=00:02:00"),
        "{text}"
    );
    // A Nextflow config: a withName block per process, balanced.
    let out = resources(db, &["--format", "nextflow"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("withName: 'align' {\n        memory = '360 MB'\n        cpus = 2\n        time = '2m'\n    }"), "{text}");
    assert_eq!(
        text.matches('{').count(),
        text.matches('}').count(),
        "{text}"
    );

    // Bad input: a clear message and a non-zero exit.
    let out = resources(db, &["--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since \"yesterday\""));
    let out = resources(db, &["--name", "nothing*"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task rows"));
}

/// The Snakemake profile is one real Snakemake takes: a dry run with it shows
/// the recommended resources and threads on the rules' jobs.
fn check_profile_with_snakemake(db: &str, test: &str) {
    let Some(python) = wheel_python(test) else {
        return;
    };
    let dir = scratch_dir("profile");
    let out = resources(db, &["--format", "snakemake"]);
    assert!(out.status.success(), "{out:?}");
    std::fs::create_dir_all(dir.join("profile")).unwrap();
    std::fs::write(dir.join("profile/config.yaml"), &out.stdout).unwrap();
    std::fs::write(
        dir.join("Snakefile"),
        "rule all:\n    input: \"a.bam\", \"ref.idx\"\n\
         rule align:\n    output: \"{s}.bam\"\n    shell: \"touch {output}\"\n\
         rule index:\n    output: \"ref.idx\"\n    shell: \"touch {output}\"\n",
    )
    .unwrap();
    let out = Command::new(python.with_file_name("snakemake"))
        .arg("--profile")
        .arg(dir.join("profile"))
        .args(["--dry-run", "--cores", "4", "--directory"])
        .arg(&dir)
        .args(["--snakefile"])
        .arg(dir.join("Snakefile"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("mem_mib=360"), "{text}");
    assert!(text.contains("runtime=2"), "{text}");
    assert!(text.contains("threads: 2"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn history_resources_of_a_seeded_sqlite_history() {
    let test = "history_resources_of_a_seeded_sqlite_history";
    let dir = scratch_dir("resources");
    let db = format!("sqlite:{}", dir.join("h.db").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = denet_agent::history::History::open(db.strip_prefix("sqlite:").unwrap())
            .await
            .unwrap();
        h.insert_tasks("seeded", &seeded_tasks()).await.unwrap();
    });
    check_seeded_resources(&db);
    check_profile_with_snakemake(&db, test);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_resources_of_a_seeded_postgres_history() {
    let Some(db) =
        crate::helpers::pg::TestDb::create("history_resources_of_a_seeded_postgres_history").await
    else {
        return;
    };
    let h = denet_agent::history::History::open(&db.url).await.unwrap();
    h.insert_tasks("seeded", &seeded_tasks()).await.unwrap();
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || check_seeded_resources(&url))
        .await
        .unwrap();
}
