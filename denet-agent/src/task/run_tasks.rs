//! What one run keeps for task attribution: the marks of its command and the file
//! the Snakemake logger plugin writes the run's jobs to.

use std::{
    fs::OpenOptions,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{slurm_job_from_env, Marks, Resolver, SNAKEMAKE_JOBS_ENV};

pub struct RunTasks {
    /// The marks of the run's command, from its environment and argv.
    pub root: Marks,
    /// The plugin's job list (removed with the run).
    job_list: Option<PathBuf>,
}

impl RunTasks {
    /// `env`: the command's environment when it is not the agent's own.
    pub fn new(argv: &[String], env: Option<&[(String, String)]>, cwd: Option<&Path>) -> Self {
        let mut root = Marks {
            slurm: match env {
                Some(vars) => {
                    slurm_job_from_env(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                }
                None => {
                    let vars: Vec<(String, String)> = std::env::vars_os()
                        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                        .filter(|(k, _)| k.starts_with("SLURM_"))
                        .collect();
                    slurm_job_from_env(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                }
            },
            engine: Vec::new(),
        };
        root.after_exec(argv, || {
            cwd.map(Path::to_path_buf)
                .or_else(|| std::env::current_dir().ok())
                .map(|d| d.to_string_lossy().into_owned())
        });
        Self {
            root,
            job_list: None,
        }
    }

    /// A process followed, not launched: its marks were found by whoever handed it
    /// over; there is no job list.
    pub fn adopted(root: Marks) -> Self {
        Self {
            root,
            job_list: None,
        }
    }

    /// Creates the (empty, owner-only) file the plugin appends the run's jobs to, and
    /// returns the variable that tells the plugin where it is. Without it (no
    /// writable temporary directory), Snakemake jobs are still found, rules unnamed.
    pub fn snakemake_job_list(&mut self) -> Option<(String, String)> {
        let path = std::env::temp_dir().join(format!(
            "denet-agent-{}-snakemake-jobs.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        // create_new: never follow a link someone else left at the name.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .ok()?;
        let value = path.to_string_lossy().into_owned();
        self.job_list = Some(path);
        Some((SNAKEMAKE_JOBS_ENV.to_string(), value))
    }

    pub fn resolver(&self) -> Resolver {
        Resolver::new(self.job_list.clone())
    }
}

impl Drop for RunTasks {
    fn drop(&mut self) {
        if let Some(path) = &self.job_list {
            let _ = std::fs::remove_file(path);
        }
    }
}
