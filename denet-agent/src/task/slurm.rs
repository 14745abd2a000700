//! Slurm: the variables it sets in a job's environment.

use super::SlurmJob;

/// The Slurm job of an environment, if it is one (`SLURM_JOB_ID` set).
pub fn slurm_job_from_env<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<SlurmJob> {
    let mut job = SlurmJob::default();
    let mut seen = false;
    for (k, v) in vars {
        match k {
            "SLURM_JOB_ID" => {
                job.job_id = v.parse().ok()?;
                seen = true;
            }
            "SLURM_ARRAY_JOB_ID" => job.array_job_id = v.parse().ok(),
            "SLURM_ARRAY_TASK_ID" => job.array_task_id = v.parse().ok(),
            "SLURM_STEP_ID" => job.step = Some(v.to_string()),
            "SLURM_JOB_NAME" => job.job_name = Some(v.to_string()),
            "SLURM_JOB_USER" => job.user = Some(v.to_string()),
            "SLURM_CLUSTER_NAME" => job.cluster = Some(v.to_string()),
            _ => {}
        }
    }
    seen.then_some(job)
}

impl SlurmJob {
    /// The id Slurm's tools show: `123`, or `120_4` for task 4 of array job 120.
    pub fn display_id(&self) -> String {
        match (self.array_job_id, self.array_task_id) {
            (Some(a), Some(t)) => format!("{a}_{t}"),
            _ => self.job_id.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_jobs_show_as_slurm_does() {
        let env = [
            ("SLURM_JOB_ID", "124"),
            ("SLURM_ARRAY_JOB_ID", "120"),
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_JOB_NAME", "align"),
            ("HOME", "/root"),
        ];
        let job = slurm_job_from_env(env).unwrap();
        assert_eq!(job.display_id(), "120_4");
        assert_eq!(job.job_name.as_deref(), Some("align"));
        assert!(slurm_job_from_env([("HOME", "/")]).is_none());
        assert!(slurm_job_from_env([("SLURM_JOB_ID", "x")]).is_none());
    }
}
