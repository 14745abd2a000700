//! Marks into the record's task, reading what the engines wrote.

use std::{collections::HashMap, path::PathBuf};

use super::{
    nextflow,
    snakemake::{self, JobInfo},
    EngineMark, Marks, Task,
};

/// Resolves marks for one run; caches what it read.
#[derive(Debug, Default)]
pub struct Resolver {
    /// The Snakemake logger plugin's job list, if the run gave it one.
    snakemake_jobs: Option<PathBuf>,
    jobs: Vec<JobInfo>,
    /// Bytes of the job list read so far (it only grows).
    jobs_read: usize,
    /// Name and tag per Nextflow work directory.
    nextflow: HashMap<String, Option<(String, Option<String>)>>,
}

impl Resolver {
    pub fn new(snakemake_jobs: Option<PathBuf>) -> Self {
        Self {
            snakemake_jobs,
            ..Self::default()
        }
    }

    /// The task of a process with these marks: the innermost engine task that can be
    /// named, else the Slurm job.
    pub fn resolve(&mut self, marks: &Marks) -> Option<Task> {
        if marks.is_empty() {
            return None;
        }
        let slurm = marks.slurm.clone();
        let named = marks.engine.iter().rev().find_map(|m| self.engine_task(m));
        let task = match named {
            Some(task) => task,
            // A job shell without the plugin's list: a Snakemake job, rule unknown.
            None if marks
                .engine
                .iter()
                .any(|m| matches!(m, EngineMark::SnakemakeShell { .. })) =>
            {
                Task {
                    engine: "snakemake".into(),
                    ..Task::default()
                }
            }
            None => {
                let job = slurm.as_ref()?;
                Task {
                    engine: "slurm".into(),
                    name: job.job_name.clone(),
                    id: Some(job.display_id()),
                    ..Task::default()
                }
            }
        };
        Some(Task { slurm, ..task })
    }

    fn engine_task(&mut self, mark: &EngineMark) -> Option<Task> {
        match mark {
            EngineMark::SnakemakeShell { script } => {
                let job = match snakemake::job_of_script(&self.jobs, script) {
                    Some(job) => job.clone(),
                    None => {
                        // The plugin wrote the job before its shell started; a miss
                        // means lines were added since the last read.
                        self.read_more_jobs();
                        snakemake::job_of_script(&self.jobs, script)?.clone()
                    }
                };
                Some(Task {
                    engine: "snakemake".into(),
                    name: Some(job.rule),
                    id: Some(job.jobid.to_string()),
                    wildcards: Some(job.wildcards),
                    ..Task::default()
                })
            }
            EngineMark::SnakemakeTarget { spec } => {
                let (rule, wildcards) = snakemake::parse_target(spec);
                // The job id is the submitting Snakemake's, known from its plugin list.
                let id = self
                    .jobs
                    .iter()
                    .find(|j| j.rule == rule && j.wildcards == wildcards)
                    .map(|j| j.jobid.to_string());
                Some(Task {
                    engine: "snakemake".into(),
                    name: Some(rule),
                    id,
                    wildcards: Some(wildcards),
                    ..Task::default()
                })
            }
            EngineMark::Nextflow { work_dir } => {
                let named = self
                    .nextflow
                    .entry(work_dir.clone())
                    .or_insert_with(|| {
                        std::fs::read_to_string(nextflow::wrapper_path(work_dir))
                            .ok()
                            .and_then(|text| nextflow::name_and_tag(&text))
                    })
                    .clone();
                let (name, tag) = named.map_or((None, None), |(n, t)| (Some(n), t));
                Some(Task {
                    engine: "nextflow".into(),
                    name,
                    id: nextflow::short_hash(work_dir),
                    tag,
                    work_dir: Some(work_dir.clone()),
                    ..Task::default()
                })
            }
        }
    }

    fn read_more_jobs(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let Some(path) = &self.snakemake_jobs else {
            return;
        };
        // Only what was added since the last read (the list only grows).
        let mut added = Vec::new();
        let read = std::fs::File::open(path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.jobs_read as u64))?;
            f.read_to_end(&mut added)
        });
        if read.is_err() {
            return;
        }
        // Only whole lines: the one being written is read next time.
        let end = added.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.jobs
            .extend(snakemake::read_jobs(&String::from_utf8_lossy(
                &added[..end],
            )));
        self.jobs_read += end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::SlurmJob;

    #[test]
    fn the_innermost_named_task_wins_and_keeps_the_slurm_job() {
        let dir = std::env::temp_dir().join(format!("denet-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("jobs.jsonl");
        std::fs::write(
            &list,
            "{\"jobid\":7,\"rule\":\"map\",\"wildcards\":{\"s\":\"A\"},\"shellcmd\":\"bwa mem A\"}\n",
        )
        .unwrap();
        let mut r = Resolver::new(Some(list));
        let slurm = SlurmJob {
            job_id: 9,
            job_name: Some("wf".into()),
            ..SlurmJob::default()
        };
        let marks = Marks {
            slurm: Some(slurm.clone()),
            engine: vec![
                EngineMark::SnakemakeTarget {
                    spec: "map:s=A".into(),
                },
                EngineMark::SnakemakeShell {
                    script: "set -euo pipefail;  bwa mem A".into(),
                },
            ],
        };
        let t = r.resolve(&marks).unwrap();
        assert_eq!(t.name.as_deref(), Some("map"));
        assert_eq!(t.id.as_deref(), Some("7"));
        assert_eq!(t.slurm, Some(slurm.clone()));
        // A shell the list does not know: the spawned job around it names the task.
        let other = Marks {
            engine: vec![
                EngineMark::SnakemakeTarget {
                    spec: "call:s=B".into(),
                },
                EngineMark::SnakemakeShell {
                    script: "set -euo pipefail;  unknown".into(),
                },
            ],
            ..marks.clone()
        };
        let t = r.resolve(&other).unwrap();
        assert_eq!((t.name.as_deref(), t.id), (Some("call"), None));
        // Only Slurm: the job itself.
        let t = r
            .resolve(&Marks {
                slurm: Some(slurm),
                engine: vec![],
            })
            .unwrap();
        assert_eq!(t.engine, "slurm");
        assert_eq!(
            (t.name.as_deref(), t.id.as_deref()),
            (Some("wf"), Some("9"))
        );
        assert!(r.resolve(&Marks::default()).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
