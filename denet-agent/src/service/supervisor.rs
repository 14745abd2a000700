//! Runs one job: waits for a free slot, starts `denet-agent run` for it as the
//! job's user (the same engine as the CLI, in its own process so each job has its
//! own subreaper, signal handling and eBPF state), waits for it while raising the
//! stuck flag, and hands the ending to `outcome`; `follow` streams it meanwhile.

use std::{
    fs::File,
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    os::unix::fs::DirBuilderExt,
    path::Path,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{net::unix::pipe, process::Command};

use super::{
    act_as::Become,
    follow::{copy_log, read_output, tail_trace},
    identity::Identity,
    job::{unix_ms, Job, JobFile, LogStream, Status},
    outcome::{finalize, Ending},
    Service,
};
use crate::engine::Control;

/// How often the stuck flag is checked.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(250);
/// After the agent exits, how long its pipes may stay open (a descendant that
/// escaped tracking could hold them forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

pub(super) async fn supervise(svc: Arc<Service>, job: Arc<Job>) {
    let ending = match wait_for_slot(&svc, &job).await {
        None => Ending {
            never_started: true,
            ..Default::default()
        },
        Some(permit) => {
            let ending = match start(&svc, &job).await {
                Ok(running) => running.finish(&job).await,
                Err(e) => Ending {
                    error: Some(format!("cannot start the job's agent: {e:#}")),
                    never_started: true,
                    ..Default::default()
                },
            };
            drop(permit);
            ending
        }
    };
    finalize(&svc, &job, ending).await;
}

/// A running-slot permit, or `None` when the job was cancelled while queued.
async fn wait_for_slot(svc: &Service, job: &Job) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        if job.state().cancel_requested {
            return None;
        }
        tokio::select! {
            permit = svc.slots.clone().acquire_owned() => {
                // A stop that came in together with the slot still wins.
                if job.state().cancel_requested {
                    return None;
                }
                return permit.ok();
            }
            _ = job.cancelled.notified() => {}
        }
    }
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

struct Running {
    /// The job's own cgroup, with the job's limits: the agent itself runs in it, so
    /// whatever the agent is made to do, the job stays inside them.
    cgroup: Option<crate::cgroup::RunCgroup>,
    child: tokio::process::Child,
    readers: tokio::task::JoinSet<()>,
    /// Set once the agent has exited: the trace file is complete.
    agent_done: tokio::sync::watch::Sender<bool>,
    kill_grace: Duration,
}

/// How long past its timeout or stop (plus grace) an agent may take to end its job
/// before the service kills it and its process group: the agent enforces both, so
/// this only catches an agent that stopped working (e.g. the job SIGSTOPped it).
const AGENT_MARGIN: Duration = Duration::from_secs(10);

/// True when the job's agent should long have ended it.
fn overdue(job: &Job, kill_grace: Duration) -> bool {
    let st = job.state();
    let now = Instant::now();
    let timeout_due = st
        .started_at
        .map(|t| t + job.spec.timeout + kill_grace + AGENT_MARGIN);
    let stop_due = st
        .cancel_at
        .map(|t| t + st.cancel_grace.unwrap_or(kill_grace) + AGENT_MARGIN);
    [timeout_due, stop_due]
        .into_iter()
        .flatten()
        .any(|due| now >= due)
}

/// Starts the job's agent: `denet-agent run -o /dev/fd/6 --control-fd 3
/// --stdout-fd 4 --stderr-fd 5 ... -- CMD` as the job's owner (uid, gid, groups; no
/// capabilities), in the working directory it asked for, entered as that user; the
/// agent's own messages (fd 2) go to agent.log. The agent writes the trace itself (to
/// a file of the job directory the service opened for it), so the trace is complete
/// even if the service dies first.
async fn start(svc: &Arc<Service>, job: &Arc<Job>) -> anyhow::Result<Running> {
    use anyhow::Context;
    let owner = &job.owner;
    // Owner-only, and the owner's: traces and logs carry command lines and output.
    // The jobs directory above it is the service's alone, so nobody (the owner
    // included) can put a link where the service writes.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&job.dir)
        .with_context(|| format!("creating {}", job.dir.display()))?;
    chown(&job.dir, owner)?;
    write_job_file(job).context("writing job.json")?;
    let stdout_file = create_owned(&job.log_path(LogStream::Stdout), owner)?;
    let stderr_file = create_owned(&job.log_path(LogStream::Stderr), owner)?;
    let trace_file = create_owned(&job.trace_path(), owner)?;
    let agent_log = create_owned(&job.dir.join("agent.log"), owner)?;

    let (ctl_r, ctl_w) = pipe_pair().context("control pipe")?;
    let (out_r, out_w) = pipe_pair().context("stdout pipe")?;
    let (err_r, err_w) = pipe_pair().context("stderr pipe")?;
    let trace_fd = OwnedFd::from(trace_file);
    let spec = &job.spec;
    // Where the service may make cgroups (as root), the job's agent enters the job's
    // own before it execs; the run's cgroup is then made inside it.
    let (job_cgroup, procs) = if nix::unistd::geteuid().is_root() && spec.limits.any() {
        let cg = crate::cgroup::RunCgroup::create(
            &format!("denet-job-{}", job.id),
            std::process::id(),
            spec.limits,
        )
        .context("the job's cgroup")?;
        let files = cg.procs_files().context("the job's cgroup")?;
        (Some(cg), files)
    } else {
        (None, Vec::new())
    };
    let procs_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let become_owner = Become::new(owner, &spec.cwd).context("the working directory")?;
    let mut cmd = Command::new(&svc.agent_bin);
    cmd.arg("run")
        .args(["-o", "/dev/fd/6"])
        .args(["--control-fd", "3", "--stdout-fd", "4", "--stderr-fd", "5"])
        .arg("--timeout")
        .arg(format!("{}", spec.timeout.as_secs_f64()))
        .arg("--kill-grace")
        .arg(format!("{}", svc.config.kill_grace.as_secs_f64()))
        .args(&svc.config.run_flags)
        .args(limit_args(&spec.limits))
        .arg("--")
        .args(&spec.cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the service's terminal must not reach
        // the jobs directly; the service stops them itself.
        .process_group(0);
    if owner.uid != nix::unistd::geteuid().as_raw() {
        // Another user's job gets that user's environment, not the service's.
        cmd.env_clear();
        for keep in ["PATH", "LANG", "LC_ALL", "TZ"] {
            if let Some(v) = std::env::var_os(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.env("HOME", &owner.home)
            .env("USER", &owner.user)
            .env("LOGNAME", &owner.user)
            .env("SHELL", &owner.shell);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let fds = [
        ctl_r.as_raw_fd(),
        out_w.as_raw_fd(),
        err_w.as_raw_fd(),
        trace_fd.as_raw_fd(),
    ];
    // SAFETY: only async-signal-safe calls (fcntl, dup2, set*id, chdir) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            // First move every source above the targets, so that moving one into
            // place cannot clobber another; the copies are close-on-exec.
            let mut high = [0; 4];
            for (h, fd) in high.iter_mut().zip(fds) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, h) in (3..).zip(high) {
                // dup2 clears close-on-exec on the target: the agent inherits it.
                if libc::dup2(h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Into the job's cgroup while still root ("0": the writing process).
            for fd in &procs_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            become_owner.apply()
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", svc.agent_bin.display()))?;
    drop((ctl_r, out_w, err_w, trace_fd, procs));

    let agent_err = child.stderr.take().context("agent stderr")?;
    let out_rx = pipe::Receiver::from_owned_fd(out_r).context("stdout pipe")?;
    let err_rx = pipe::Receiver::from_owned_fd(err_r).context("stderr pipe")?;
    {
        let mut st = job.state();
        st.status = Status::Running;
        st.start_unix_ms = Some(unix_ms());
        st.agent_pid = child.id();
        st.started_at = Some(Instant::now());
        // Never block on it: an agent that stopped reading must not stall the service.
        nix::fcntl::fcntl(
            &ctl_w,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .context("control pipe")?;
        st.control = Some(File::from(ctl_w));
        st.last_progress = Instant::now();
        job.publish_status(&st);
        // A stop that raced with the start: pass it on now.
        if st.cancel_requested {
            let grace = st.cancel_grace.unwrap_or(svc.config.kill_grace);
            Job::control(&mut st, Control::Stop { grace: Some(grace) });
        }
    }
    let mut readers = tokio::task::JoinSet::new();
    let (agent_done, done_rx) = tokio::sync::watch::channel(false);
    readers.spawn(tail_trace(job.clone(), done_rx));
    readers.spawn(read_output(
        job.clone(),
        LogStream::Stdout,
        out_rx,
        stdout_file,
    ));
    readers.spawn(read_output(
        job.clone(),
        LogStream::Stderr,
        err_rx,
        stderr_file,
    ));
    readers.spawn(copy_log(agent_err, agent_log));
    Ok(Running {
        cgroup: job_cgroup,
        child,
        readers,
        agent_done,
        kill_grace: svc.config.kill_grace,
    })
}

/// The `run` flags of a job's limits.
fn limit_args(l: &crate::cgroup::Limits) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(b) = l.memory_bytes {
        args.extend(["--memory-limit".to_string(), b.to_string()]);
    }
    if let Some(c) = l.cpus {
        args.extend(["--cpus".to_string(), c.to_string()]);
    }
    if let Some(n) = l.max_pids {
        args.extend(["--max-pids".to_string(), n.to_string()]);
    }
    args
}

/// Creates a file of the job directory for the job's owner: never through a link,
/// never over an existing file, owner-only.
fn create_owned(path: &Path, owner: &Identity) -> anyhow::Result<File> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))
        .with_context(|| format!("giving {} to {}", path.display(), owner.user))?;
    Ok(file)
}

fn chown(path: &Path, owner: &Identity) -> anyhow::Result<()> {
    use anyhow::Context;
    std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid))
        .with_context(|| format!("giving {} to {}", path.display(), owner.user))
}

fn write_job_file(job: &Job) -> std::io::Result<()> {
    let file = JobFile {
        id: job.id.clone(),
        name: job.spec.name.clone(),
        cmd: job.spec.cmd.clone(),
        cwd: job.spec.cwd.clone(),
        timeout_s: job.spec.timeout.as_secs_f64(),
        stuck_after_s: job.spec.stuck_after.as_secs_f64(),
        created_unix_ms: job.created_unix_ms,
        uid: job.owner.uid,
        user: job.owner.user.clone(),
    };
    write_private(
        &job.dir.join("job.json"),
        &serde_json::to_vec_pretty(&file)?,
    )
}

/// Writes one of the service's own files in a job directory: owner-only, replacing
/// the file's content but never following a link.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(bytes)
}

impl Running {
    /// Waits for the agent and its pipes, checking the stuck flag meanwhile.
    async fn finish(mut self, job: &Job) -> Ending {
        let cgroup = self.cgroup.take();
        let ending = self.wait(job).await;
        if let Some(cg) = cgroup {
            cg.remove();
        }
        ending
    }

    async fn wait(mut self, job: &Job) -> Ending {
        let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
        let mut killed = false;
        let mut timed_out = false;
        let status = loop {
            tokio::select! {
                status = self.child.wait() => break status,
                _ = tick.tick() => {
                    watchdog(job);
                    if !killed && overdue(job, self.kill_grace) {
                        killed = true;
                        timed_out = job.state().cancel_at.is_none();
                        if let Some(pid) = self.child.id() {
                            // Its group holds the command too, unless it left it.
                            let _ = nix::sys::signal::killpg(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        let _ = self.child.start_kill();
                    }
                }
            }
        };
        let _ = self.agent_done.send(true);
        let drained = tokio::time::timeout(DRAIN_LIMIT, async {
            while self.readers.join_next().await.is_some() {}
        })
        .await;
        let mut ending = Ending {
            killed_at_timeout: timed_out,
            ..Default::default()
        };
        if killed {
            ending.error = Some(
                "the job's agent did not end the job after its timeout or stop: the service \
                 killed it and its process group"
                    .into(),
            );
        } else if drained.is_err() {
            self.readers.abort_all();
            ending.error = Some("output pipes still open after the agent exited".into());
        }
        match status {
            Ok(s) => ending.agent_status = Some(s),
            Err(e) => ending.error = Some(format!("waiting for the agent: {e}")),
        }
        ending
    }
}

/// Raises the stuck flag after `stuck_after` without CPU progress or output.
fn watchdog(job: &Job) {
    let mut st = job.state();
    if st.status != Status::Running || st.paused || st.stuck {
        return;
    }
    if st.last_progress.elapsed() >= job.spec.stuck_after {
        st.stuck = true;
        st.stuck_seen = true;
        job.publish_status(&st);
    }
}
