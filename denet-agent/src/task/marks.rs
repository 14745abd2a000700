//! The evidence of a task a process carries, found while it runs.

use serde::{Deserialize, Serialize};

use super::{nextflow, snakemake, SlurmJob};

/// Nested engine tasks kept per process; deeper nesting drops the outermost.
const MAX_NESTING: usize = 4;

/// What the engines left on a process or its ancestors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// The Slurm job the run is in (from the environment of the run's command).
    pub slurm: Option<SlurmJob>,
    /// Engine tasks, outermost first (a job shell inside a spawned Snakemake job);
    /// the innermost one the resolver can name wins.
    pub engine: Vec<EngineMark>,
}

/// Where an engine task starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineMark {
    /// The shell Snakemake runs a job's `shell:` command in: its `-c` script.
    SnakemakeShell { script: String },
    /// A job Snakemake spawned as `snakemake --target-jobs RULE:WILDCARDS` (`run:`
    /// rules, cluster and Slurm jobs).
    SnakemakeTarget { spec: String },
    /// The shell running a Nextflow task's `.command.run`, in its work directory.
    Nextflow { work_dir: String },
}

impl Marks {
    /// Whether there is anything to resolve.
    pub fn is_empty(&self) -> bool {
        self.slurm.is_none() && self.engine.is_empty()
    }

    /// At an exec: the new argv may start a task; `cwd` is asked only when it does
    /// and needs it (a relative `.command.run`).
    pub fn after_exec(&mut self, argv: &[String], cwd: impl FnOnce() -> Option<String>) {
        if let Some(mark) = snakemake::mark_of(argv).or_else(|| nextflow::mark_of(argv, cwd)) {
            // An exec replaces the image, not the task it runs in: a shell that execs
            // its only command keeps one mark, a nested task adds one.
            if self.engine.last() != Some(&mark) {
                if self.engine.len() == MAX_NESTING {
                    self.engine.remove(0);
                }
                self.engine.push(mark);
            }
        }
    }
}
