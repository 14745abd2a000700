//! Snakemake: the job shells it starts, the jobs it spawns, and the job list its
//! logger plugin (`snakemake --logger denet`, in the Python package) writes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::EngineMark;

/// What Snakemake puts before a job's shell command when the shell is bash
/// (`snakemake.shell`, the default).
const STRICT_PREFIX: &str = "set -euo pipefail;";

/// The engine mark an argv carries, if it starts a Snakemake job.
pub(super) fn mark_of(argv: &[String]) -> Option<EngineMark> {
    if let Some(i) = argv.iter().position(|a| a == "--target-jobs") {
        let spec = argv.get(i + 1)?;
        return Some(EngineMark::SnakemakeTarget { spec: spec.clone() });
    }
    match argv {
        [shell, c, script, ..]
            if c == "-c" && is_shell(shell) && script.starts_with(STRICT_PREFIX) =>
        {
            Some(EngineMark::SnakemakeShell {
                script: script.clone(),
            })
        }
        _ => None,
    }
}

fn is_shell(arg0: &str) -> bool {
    matches!(
        arg0.rsplit('/').next().unwrap_or(arg0),
        "bash" | "sh" | "zsh" | "dash"
    )
}

/// A `--target-jobs` item, `RULE:NAME=VALUE,NAME="VALUE,WITH,COMMAS"`, as rule and
/// wildcards.
pub(super) fn parse_target(spec: &str) -> (String, BTreeMap<String, String>) {
    let (rule, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let mut wildcards = BTreeMap::new();
    let mut item = String::new();
    let mut quoted = false;
    let mut push = |item: &mut String| {
        if let Some((k, v)) = item.split_once('=') {
            wildcards.insert(k.to_string(), v.trim_matches('"').to_string());
        }
        item.clear();
    };
    for ch in rest.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                item.push(ch);
            }
            ',' if !quoted => push(&mut item),
            _ => item.push(ch),
        }
    }
    push(&mut item);
    (rule.to_string(), wildcards)
}

/// One line of the plugin's job list: a job Snakemake is about to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct JobInfo {
    pub jobid: u64,
    pub rule: String,
    pub wildcards: BTreeMap<String, String>,
    /// The job's shell command as Snakemake formatted it (null for `run:` rules).
    pub shellcmd: Option<String>,
}

/// Reads the plugin's job list; lines that do not parse are skipped (a line being
/// written is incomplete).
pub(super) fn read_jobs(text: &str) -> Vec<JobInfo> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<JobInfo>(l).ok())
        .collect()
}

/// The job whose shell command a job shell's `-c` script runs. Equal commands of
/// several jobs (rare: the wildcards are usually in the command) go to the first.
pub(super) fn job_of_script<'a>(jobs: &'a [JobInfo], script: &str) -> Option<&'a JobInfo> {
    let body = script.strip_prefix(STRICT_PREFIX).unwrap_or(script).trim();
    jobs.iter().find(|j| {
        j.shellcmd.as_deref().is_some_and(|cmd| {
            let cmd = cmd.trim();
            // A long script is cut at the captured argv size: its start must match.
            cmd == body || (body.len() >= 1024 && cmd.starts_with(body))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn job_shells_and_spawned_jobs_are_marked() {
        assert_eq!(
            mark_of(&argv(&[
                "/bin/bash",
                "-c",
                "set -euo pipefail;  sort a > b"
            ])),
            Some(EngineMark::SnakemakeShell {
                script: "set -euo pipefail;  sort a > b".into()
            })
        );
        assert_eq!(
            mark_of(&argv(&[
                "python",
                "-m",
                "snakemake",
                "--target-jobs",
                "map:s=A",
                "--x"
            ])),
            Some(EngineMark::SnakemakeTarget {
                spec: "map:s=A".into()
            })
        );
        assert_eq!(mark_of(&argv(&["/bin/bash", "-c", "sort a > b"])), None);
        assert_eq!(
            mark_of(&argv(&["python", "-c", "set -euo pipefail;"])),
            None
        );
        assert_eq!(mark_of(&argv(&["snakemake", "--target-jobs"])), None);
    }

    #[test]
    fn target_specs_give_rule_and_wildcards() {
        let (rule, w) = parse_target(r#"map:sample=A,region="chr1,chr2""#);
        assert_eq!(rule, "map");
        assert_eq!(w["sample"], "A");
        assert_eq!(w["region"], "chr1,chr2");
        let (rule, w) = parse_target("all:");
        assert_eq!((rule.as_str(), w.len()), ("all", 0));
    }

    #[test]
    fn a_script_finds_its_job_by_the_command() {
        let jobs = read_jobs(concat!(
            r#"{"jobid":1,"rule":"a","wildcards":{"s":"1"},"shellcmd":"echo 1 > x"}"#,
            "\n",
            r#"{"jobid":2,"rule":"a","wildcards":{"s":"2"},"shellcmd":"echo 2 > y"}"#,
            "\n",
            r#"{"jobid":3,"rule":"b","#,
        ));
        assert_eq!(jobs.len(), 2, "the line being written is skipped");
        let j = job_of_script(&jobs, "set -euo pipefail;  echo 2 > y").unwrap();
        assert_eq!(j.jobid, 2);
        assert!(job_of_script(&jobs, "set -euo pipefail;  echo 3 > z").is_none());
    }
}
