//! Which workflow task a process belongs to: a Snakemake job, a Nextflow task, a
//! Slurm job.
//!
//! Two steps, because they run in different places. While the run goes, the
//! collector keeps each process's [`Marks`] (what the engines leave where a task
//! starts: the argv of Snakemake's job shell or of a spawned `snakemake
//! --target-jobs`, Nextflow's `.command.run` and its directory, the run's Slurm
//! variables), inherited at fork and replaced at an exec that carries new ones. When
//! a process record is written, [`Resolver`] turns its marks into the record's
//! [`Task`], reading what the engines wrote (the Snakemake logger plugin's job list,
//! `.command.run`) with the rights of the process that writes the trace: the run's
//! own user, also when the node daemon traces it.

mod marks;
mod nextflow;
mod resolve;
mod run_tasks;
mod slurm;
pub mod snakemake;

pub use marks::{EngineMark, Marks};
pub use resolve::Resolver;
pub use run_tasks::RunTasks;
pub use slurm::slurm_job_from_env;

pub use crate::trace::{SlurmJob, Task};

/// The environment variable through which `denet-agent run` tells the Snakemake
/// logger plugin (`snakemake --logger denet`) where to write its job list.
pub const SNAKEMAKE_JOBS_ENV: &str = "DENET_AGENT_SNAKEMAKE_JOBS";
