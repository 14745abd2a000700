//! `denet-agent serve`: the node's service. It starts monitored jobs as the user who
//! asked (identified by the kernel on its Unix socket, or by a token mapped to a
//! user over TCP), stops, pauses and streams them for that user only, refuses
//! duplicates, flags stuck jobs and keeps every run in a history database. Each job
//! is a `denet-agent run` (one engine) in its own process, running as its owner.

pub(crate) mod act_as;
pub mod api;
mod follow;
pub mod identity;
pub mod job;
mod outcome;
pub mod spec;
mod supervisor;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::sync::{Notify, Semaphore};

use crate::{
    engine::Control,
    history::{History, HistoryRow, TaskRow},
};
use identity::Identity;
use job::Job;
use spec::{JobSpec, SpecDefaults};

pub use crate::run_history::decide_status;

/// Task rows spooled beside a job's `row.json` until written.
const TASKS_SPOOL: &str = "tasks.json";

/// The Unix socket of the node's service (a service started as root).
pub const NODE_SOCKET: &str = "/run/denet-agent/agent.sock";

#[derive(Debug)]
pub struct ServeConfig {
    /// The Unix socket every local user may connect to (callers identified by the
    /// kernel). Mode 0666 when the service runs as root, else owner-only.
    pub socket: PathBuf,
    /// Also listen on TCP, for callers presenting one of `tokens`.
    pub listen: Option<SocketAddr>,
    /// Bearer tokens, each acting as a local user; required with `listen`.
    pub tokens: Option<identity::Tokens>,
    /// Load the node's kernel programs once and serve every run on the node (the
    /// jobs' and any user's `run`) from this tracer socket. None: each job's run
    /// loads its own (or samples /proc).
    pub node_socket: Option<PathBuf>,
    /// The node tracer's ring buffer, bytes.
    pub node_ringbuf_bytes: u32,
    /// The node tracer also traces and records Slurm batch jobs.
    pub slurm: Option<crate::node::slurm::SlurmRecording>,
    /// Job directories (trace, logs) live under `<data_dir>/jobs/<id>`.
    pub data_dir: PathBuf,
    /// `postgres://...` or a SQLite file path.
    pub db: String,
    /// Jobs running at once; more wait as `queued`.
    pub max_running: usize,
    /// Jobs queued or running at once; more get 429.
    pub max_jobs: usize,
    /// Ended jobs kept in memory for `GET /jobs` (older ones are in the history).
    pub keep_finished: usize,
    pub defaults: SpecDefaults,
    pub kill_grace: Duration,
    /// A job that fails within this time of its start is `startup_failed`.
    pub startup_window: Duration,
    /// Extra `run` flags for every job (`--no-ebpf`, `--files`, ...).
    pub run_flags: Vec<String>,
    /// The largest request body, bytes.
    pub max_body_bytes: usize,
}

/// The jobs in memory: live ones and the most recent ended ones.
#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Arc<Job>>,
    /// (owner uid, name) of queued and running jobs -> their id (a user's name runs
    /// once at a time; users do not share names).
    active: HashMap<(u32, String), String>,
    /// Ended jobs, oldest first, trimmed to `keep_finished`.
    ended: VecDeque<String>,
}

pub struct Service {
    pub config: ServeConfig,
    /// The node tracer, while the service runs.
    pub node: Option<Arc<crate::node::daemon::NodeTracer>>,
    pub history: History,
    pub hostname: String,
    agent_bin: PathBuf,
    jobs: Mutex<Jobs>,
    slots: Arc<Semaphore>,
    shutting_down: AtomicBool,
    /// Signalled whenever a job ends.
    job_ended: Notify,
}

/// Why a job could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("a job named {name:?} is already queued or running (id {id})")]
    Duplicate { name: String, id: String },
    #[error("too many jobs: {0} are queued or running (--max-jobs)")]
    TooMany(usize),
    #[error("the service is shutting down")]
    ShuttingDown,
}

impl Service {
    pub async fn new(config: ServeConfig) -> Result<Arc<Self>> {
        let jobs_dir = config.data_dir.join("jobs");
        std::fs::create_dir_all(&jobs_dir)
            .with_context(|| format!("creating {}", jobs_dir.display()))?;
        // Owner-only: job traces and logs carry command lines, paths and output.
        std::fs::set_permissions(
            &jobs_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .with_context(|| format!("making {} owner-only", jobs_dir.display()))?;
        let history = History::open(&config.db)
            .await
            .with_context(|| format!("opening the history database {}", redact(&config.db)))?;
        let agent_bin = std::env::current_exe().context("locating the denet-agent binary")?;
        let node = match &config.node_socket {
            Some(socket) => {
                let node = crate::node::daemon::NodeTracer::start(
                    socket,
                    config.node_ringbuf_bytes,
                    config.slurm.clone(),
                )
                .context("starting the node tracer")?;
                eprintln!(
                    "denet-agent serve: node tracer on unix:{} (one set of kernel programs for every run on this node)",
                    socket.display()
                );
                Some(node)
            }
            None => None,
        };
        let svc = Arc::new(Service {
            node,
            slots: Arc::new(Semaphore::new(config.max_running.max(1))),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            config,
            history,
            agent_bin,
            jobs: Mutex::new(Jobs::default()),
            shutting_down: AtomicBool::new(false),
            job_ended: Notify::new(),
        });
        // Only directories from before this start: jobs submitted from now on are ours.
        let earlier: Vec<PathBuf> = std::fs::read_dir(svc.config.data_dir.join("jobs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let recovering = svc.clone();
        tokio::spawn(async move { recovering.recover_spooled_rows(earlier).await });
        Ok(svc)
    }

    fn jobs(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn submit(
        self: &Arc<Self>,
        spec: JobSpec,
        owner: Identity,
    ) -> Result<Arc<Job>, SubmitError> {
        let job = {
            let mut jobs = self.jobs();
            // Checked under the jobs lock, which shutdown() sets it under: a job is
            // either refused or seen by the shutdown.
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(SubmitError::ShuttingDown);
            }
            let key = (owner.uid, spec.name.clone());
            if let Some(id) = jobs.active.get(&key) {
                return Err(SubmitError::Duplicate {
                    name: spec.name.clone(),
                    id: id.clone(),
                });
            }
            if jobs.active.len() >= self.config.max_jobs {
                return Err(SubmitError::TooMany(jobs.active.len()));
            }
            let id = job::new_id();
            let dir = self.config.data_dir.join("jobs").join(&id);
            let job = Arc::new(Job::new(id.clone(), spec, owner, dir));
            jobs.active.insert(key, id.clone());
            jobs.by_id.insert(id, job.clone());
            job
        };
        tokio::spawn(supervisor::supervise(self.clone(), job.clone()));
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs().by_id.get(id).cloned()
    }

    /// Jobs in memory, oldest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        let mut v: Vec<Arc<Job>> = self.jobs().by_id.values().cloned().collect();
        v.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        v
    }

    /// Jobs queued or running.
    pub fn active_count(&self) -> usize {
        self.jobs().active.len()
    }

    /// Asks a job to stop (a queued one never starts). False when it already ended.
    pub fn stop(&self, job: &Job, grace: Duration, reason: Option<&str>) -> bool {
        let mut st = job.state();
        if st.status.is_final() {
            return false;
        }
        if !st.cancel_requested {
            st.cancel_requested = true;
            st.cancel_reason = reason.map(str::to_string);
            st.cancel_grace = Some(grace);
            st.cancel_at = Some(std::time::Instant::now());
            // Once: the agent escalates by itself (a queued job gets it at its start).
            Job::control(&mut st, Control::Stop { grace: Some(grace) });
        }
        drop(st);
        job.cancelled.notify_one();
        true
    }

    /// Spools the row and its task rows next to the trace, then writes them to the
    /// database (retrying: the spool is replayed at the next start if the database
    /// stays down).
    async fn record(&self, job: &Job, row: &HistoryRow, tasks: &[TaskRow]) {
        let spool = job.dir.join("row.json");
        let tasks_spool = job.dir.join(TASKS_SPOOL);
        if let Err(e) = std::fs::create_dir_all(&job.dir).and_then(|()| {
            supervisor::write_private(&spool, &serde_json::to_vec(row).unwrap_or_default())?;
            if tasks.is_empty() {
                return Ok(());
            }
            supervisor::write_private(&tasks_spool, &serde_json::to_vec(tasks).unwrap_or_default())
        }) {
            eprintln!(
                "denet-agent serve: job {}: cannot spool its row: {e}",
                job.id
            );
        }
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            // Bounded: a stalled database must not keep the job (and its name) open;
            // the spooled row is replayed at the next start.
            let write = crate::run_history::insert_rows(&self.history, row, tasks);
            let result = match tokio::time::timeout(Duration::from_secs(10), write).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the database did not answer within 10 s".to_string()),
            };
            match result {
                Ok(()) => {
                    let _ = std::fs::remove_file(&spool);
                    let _ = std::fs::remove_file(&tasks_spool);
                    return;
                }
                Err(e) => {
                    eprintln!(
                        "denet-agent serve: job {}: writing its history row (attempt {attempt}): {e}",
                        job.id
                    );
                    if attempt < 5 {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                }
            }
        }
    }

    /// Rows an earlier service did not get into the database: spooled ones (the
    /// database write failed) and jobs it never recorded (it was killed).
    async fn recover_spooled_rows(&self, dirs: Vec<PathBuf>) {
        for dir in dirs {
            let spool = dir.join("row.json");
            let Ok(bytes) = std::fs::read(&spool) else {
                self.recover_unrecorded(&dir).await;
                continue;
            };
            match serde_json::from_slice::<HistoryRow>(&bytes) {
                Ok(row) => match self.insert_with_spooled_tasks(&row, &dir).await {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&spool);
                        eprintln!(
                            "denet-agent serve: recovered the history row of job {}",
                            row.id
                        );
                    }
                    Err(e) => eprintln!(
                        "denet-agent serve: {}: still cannot write it: {e}",
                        spool.display()
                    ),
                },
                Err(e) => eprintln!("denet-agent serve: {}: unreadable: {e}", spool.display()),
            }
        }
    }

    /// The row, then the task rows spooled beside it (if any; removed once written).
    async fn insert_with_spooled_tasks(
        &self,
        row: &HistoryRow,
        dir: &std::path::Path,
    ) -> Result<(), crate::history::HistoryError> {
        self.history.insert(row).await?;
        let tasks_spool = dir.join(TASKS_SPOOL);
        if let Ok(bytes) = std::fs::read(&tasks_spool) {
            match serde_json::from_slice::<Vec<TaskRow>>(&bytes) {
                Ok(tasks) => self.history.insert_tasks(&row.id, &tasks).await?,
                Err(e) => eprintln!(
                    "denet-agent serve: {}: unreadable: {e}",
                    tasks_spool.display()
                ),
            }
            let _ = std::fs::remove_file(&tasks_spool);
        }
        Ok(())
    }

    async fn recover_unrecorded(&self, dir: &std::path::Path) {
        let Some(id) = dir.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        if !job::valid_id(id) || !dir.join("job.json").exists() {
            return;
        }
        match self.history.get(id).await {
            Ok(None) => {}
            // Recorded, or the database cannot tell: leave it.
            _ => return,
        }
        if let Some((row, tasks)) = outcome::recover_row(self, dir).await {
            match crate::run_history::insert_rows(&self.history, &row, &tasks).await {
                Ok(()) => eprintln!(
                    "denet-agent serve: recorded job {} ({}), which ran when the service stopped: {}",
                    row.id,
                    row.name,
                    row.status.as_str()
                ),
                Err(e) => eprintln!("denet-agent serve: job {}: cannot record it: {e}", row.id),
            }
        }
    }

    fn job_ended(&self, job: &Job) {
        {
            let mut jobs = self.jobs();
            let key = (job.owner.uid, job.spec.name.clone());
            if jobs.active.get(&key) == Some(&job.id) {
                jobs.active.remove(&key);
            }
            jobs.ended.push_back(job.id.clone());
            while jobs.ended.len() > self.config.keep_finished {
                if let Some(old) = jobs.ended.pop_front() {
                    jobs.by_id.remove(&old);
                }
            }
        }
        self.job_ended.notify_waiters();
    }

    /// Stops every job (queued ones never start) and waits until all have ended and
    /// their rows are written.
    pub async fn shutdown(&self) {
        {
            let _jobs = self.jobs();
            self.shutting_down.store(true, Ordering::SeqCst);
        }
        loop {
            let ended = self.job_ended.notified();
            let live: Vec<Arc<Job>> = self
                .list()
                .into_iter()
                .filter(|j| !j.state().status.is_final())
                .collect();
            if live.is_empty() {
                return;
            }
            for job in &live {
                self.stop(job, self.config.kill_grace, Some("service shutdown"));
            }
            // Re-check now and then: a notification between list() and here is not lost.
            let _ = tokio::time::timeout(Duration::from_millis(500), ended).await;
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// A database spec without its password, for messages.
pub fn redact(db: &str) -> String {
    match (db.find("://"), db.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &db[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &db[..s + 3], &creds[..c], &db[at..]),
                None => db.to_string(),
            }
        }
        _ => db.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://denet:secret@127.0.0.1/db"),
            "postgres://denet:***@127.0.0.1/db"
        );
        assert_eq!(redact("/var/lib/x.sqlite"), "/var/lib/x.sqlite");
    }
}
