//! Slurm batch jobs traced by the node daemon (`serve --slurm`). Slurm runs the
//! TaskProlog (`denet-agent slurm task-prolog`) as the job's user, as a child of the
//! job's task process, which waits for it before it execs the batch script. The
//! prolog asks the daemon to trace its parent; the daemon checks, from the kernel,
//! that the parent is the caller's own and that its parent in turn is root's
//! `slurmstepd` of a batch step (whose command line names the job), and starts a
//! recorder (`denet-agent slurm record`, root, outside the job, so Slurm's end of the
//! job does not kill it) that takes the task over with a one-time token. The prolog
//! returns once the task is tracked: nothing of the script runs untraced.
//!
//! The recorder writes the trace with the user's file-system identity (where the
//! user asked, `DENET_AGENT_TRACE`, else under their home) and the history rows
//! with root's (the database is the service's).

use std::{
    collections::HashMap,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::protocol::SlurmTaskRequest;
use crate::{process::procfs, task::slurm_job_from_env, trace::SlurmJob};

/// How long the prolog's request waits for the recorder to take the task.
pub(super) const ADOPT_WITHIN: Duration = Duration::from_secs(20);

/// What `serve --slurm` gives the daemon.
#[derive(Debug, Clone)]
pub struct SlurmRecording {
    /// The agent binary the recorder runs.
    pub agent_bin: PathBuf,
    /// The history the recorder writes to (the service's), if any.
    pub db: Option<String>,
}

/// A task handed to a recorder, waiting for its `track`.
pub(super) struct Pending {
    pub(super) pid: u32,
    pub(super) uid: u32,
    pub(super) marks: crate::task::Marks,
    /// Told the run id once tracked, or why not.
    pub(super) done: mpsc::Sender<Result<u32, String>>,
}

pub(super) type PendingTasks = HashMap<String, Pending>;

/// A Slurm task checked against the kernel.
#[derive(Debug)]
pub(super) struct SlurmTask {
    pub(super) pid: u32,
    pub(super) uid: u32,
    pub(super) job: SlurmJob,
    pub(super) trace: PathBuf,
}

/// `slurmstepd: [123.batch]` (or `[123.0]`): job id and step.
fn parse_stepd(cmdline: &[String]) -> Option<(u64, String)> {
    let first = cmdline.first()?;
    let inner = first.strip_prefix("slurmstepd: [")?.split(']').next()?;
    let (job, step) = inner.split_once('.')?;
    Some((job.parse().ok()?, step.to_string()))
}

/// Checks the caller's parent is a Slurm batch task of the caller's, and gathers
/// what the recorder needs.
pub(super) fn check_task(
    caller_pid: u32,
    caller_uid: u32,
    req: &SlurmTaskRequest,
) -> Result<SlurmTask, String> {
    let caller = procfs::status(caller_pid).map_err(|_| "the caller is gone".to_string())?;
    let pid = caller.ppid;
    let task = procfs::status(pid).map_err(|_| format!("no process {pid}"))?;
    if task.uids.iter().any(|&u| u != caller_uid) {
        return Err(format!(
            "process {pid} (the caller's parent) does not belong to the caller (uid {caller_uid})"
        ));
    }
    let stepd = procfs::status(task.ppid).map_err(|_| "the task's parent is gone".to_string())?;
    let cmdline = crate::process::tracker::split_argv(
        &std::fs::read(format!("/proc/{}/cmdline", task.ppid)).unwrap_or_default(),
    );
    let stepd_is_roots = stepd.uids.iter().all(|&u| u == 0);
    let (job_id, step) = match parse_stepd(&cmdline) {
        Some(found) if stepd_is_roots => found,
        _ => {
            return Err(format!(
                "process {pid} is not a Slurm task: its parent is not root's slurmstepd"
            ))
        }
    };
    if step != "batch" {
        return Err(format!(
            "job {job_id} step {step}: only batch steps are traced (an srun step runs \
             under its own slurmstepd)"
        ));
    }
    let vars = || req.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let mut job = slurm_job_from_env(vars()).unwrap_or_default();
    if job.job_id != job_id {
        return Err(format!(
            "SLURM_JOB_ID {} does not match slurmstepd's job {job_id}",
            job.job_id
        ));
    }
    job.step = Some(step);
    let who = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(caller_uid))
        .ok()
        .flatten()
        .ok_or_else(|| format!("uid {caller_uid} has no entry in the user database"))?;
    // The user's name from the user database, not from the request.
    job.user = Some(who.name.clone());
    let asked = vars()
        .find(|(k, _)| *k == "DENET_AGENT_TRACE")
        .map(|(_, v)| PathBuf::from(v))
        .filter(|p| p.is_absolute());
    let trace = asked.unwrap_or_else(|| {
        who.dir
            .join(".local/share/denet-agent/slurm")
            .join(format!("{}.jsonl", job.display_id()))
    });
    Ok(SlurmTask {
        pid,
        uid: caller_uid,
        job,
        trace,
    })
}

/// A token nobody can guess: 128 bits from the kernel.
pub(super) fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom into a local buffer of the given length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err("no random bytes for a token".into());
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts the recorder of `task` (root, in its own process group, outside the
/// job), waits until it has the task tracked (`done` says so) or gives up, then
/// leaves a thread to reap it. A recorder that exits before (it could not create
/// the trace where the user asked, say) is an answer at once.
pub(super) fn start_recorder(
    cfg: &SlurmRecording,
    socket: &std::path::Path,
    task: &SlurmTask,
    token: &str,
    done: &mpsc::Receiver<Result<u32, String>>,
) -> Result<u32, String> {
    let job = serde_json::to_string(&task.job).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&cfg.agent_bin);
    cmd.args(["slurm", "record", "--socket"])
        .arg(socket)
        .arg("--pid")
        .arg(task.pid.to_string())
        .arg("--uid")
        .arg(task.uid.to_string())
        .arg("-o")
        .arg(&task.trace)
        // Secrets in the environment: /proc/PID/environ is the owner's (root's) only.
        .env("DENET_AGENT_ADOPT_TOKEN", token)
        .env("DENET_AGENT_SLURM_JOB", job)
        .env_remove("DENET_AGENT_DB")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    if let Some(db) = &cfg.db {
        cmd.env("DENET_AGENT_DB", db);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the recorder {}: {e}", cfg.agent_bin.display()))?;
    let deadline = std::time::Instant::now() + ADOPT_WITHIN;
    let answer = loop {
        match done.recv_timeout(Duration::from_millis(50)) {
            Ok(answer) => break answer,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err("the task's request went away".into())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "the recorder ended before taking the task ({status})"
            ));
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break Err("the recorder did not take the task in time".into());
        }
    };
    let _ = std::thread::Builder::new()
        .name("denet-slurm-reap".into())
        .spawn(move || {
            let _ = child.wait();
        });
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurmstepd_names_job_and_step() {
        let s = |a: &str| vec![a.to_string()];
        assert_eq!(
            parse_stepd(&s("slurmstepd: [19.batch]")),
            Some((19, "batch".into()))
        );
        assert_eq!(parse_stepd(&s("slurmstepd: [7.0]")), Some((7, "0".into())));
        assert_eq!(parse_stepd(&s("slurmd")), None);
        assert_eq!(parse_stepd(&s("slurmstepd: [x.batch]")), None);
        assert_eq!(parse_stepd(&[]), None);
    }
}
