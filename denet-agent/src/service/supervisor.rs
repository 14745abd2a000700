//! Runs one job: waits for a free slot, starts `denet-agent run` for it (the same
//! engine as the CLI, in its own process so each job has its own subreaper, signal
//! handling and eBPF state), keeps its trace and output, streams them live, raises
//! the stuck flag, and at the end writes the history row.

use std::{
    fs::File,
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::value::RawValue;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::unix::pipe,
    process::Command,
};

use super::{
    act_as::Become,
    identity::Identity,
    job::{unix_ms, Job, Live, LogStream, Status, StreamMsg},
    Service,
};
use crate::{engine::Control, history::HistoryRow, report, trace};

/// The longest trace line the service follows (a sample of a huge tree is a few
/// MiB); longer ones are skipped, so a trace file grown by its user cannot grow the
/// service.
const MAX_TAILED_LINE: usize = 16 << 20;
/// Bytes of such lines skipped before the service stops following a trace.
const MAX_SKIPPED_BYTES: u64 = 1 << 30;

/// How often the stuck flag is checked.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(250);
/// After the agent exits, how long its pipes may stay open (a descendant that
/// escaped tracking could hold them forever).
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What the supervisor saw of the run, beside the trace.
#[derive(Debug, Default)]
struct Ending {
    agent_status: Option<ExitStatus>,
    error: Option<String>,
    /// The job never started (cancelled while queued, or the agent failed to start).
    never_started: bool,
    /// The service killed an agent that overran the job's timeout.
    killed_at_timeout: bool,
}

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

/// What a job was asked to do, next to its trace: lets a restarted service write the
/// history row of a job whose service died before recording it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct JobFile {
    pub id: String,
    pub name: String,
    pub cmd: Vec<String>,
    pub cwd: PathBuf,
    pub timeout_s: f64,
    pub stuck_after_s: f64,
    pub created_unix_ms: i64,
    /// Who submitted it (files from before users were recorded: root).
    #[serde(default)]
    pub uid: u32,
    #[serde(default = "root_name")]
    pub user: String,
}

fn root_name() -> String {
    "root".into()
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

/// CPU time or output: the job is alive; clears the stuck flag.
fn progress(job: &Job) {
    let mut st = job.state();
    st.last_progress = Instant::now();
    if st.stuck {
        st.stuck = false;
        job.publish_status(&st);
    }
}

/// How often the trace file is read for new records while the job runs.
const TAIL_PERIOD: Duration = Duration::from_millis(100);

/// Follows the trace file the agent writes and streams its samples and process
/// records; ends after the last record once the agent has exited.
async fn tail_trace(job: Arc<Job>, mut agent_done: tokio::sync::watch::Receiver<bool>) {
    use std::io::Read;
    let path = job.trace_path();
    let mut file: Option<File> = None;
    let mut pending: Vec<u8> = Vec::new();
    let mut skipped = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Read after checking: everything the agent wrote before exiting is then seen.
        let done = *agent_done.borrow_and_update();
        if file.is_none() {
            file = File::open(&path).ok();
        }
        let mut got = false;
        if let Some(f) = &mut file {
            // At most one buffer per turn: the file is the job's user's to write (or
            // to grow without end), and the service's workers are shared.
            if let Ok(n) = f.read(&mut buf) {
                if n > 0 {
                    got = true;
                    pending.extend_from_slice(&buf[..n]);
                    let mut start = 0;
                    while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
                        on_trace_line(&job, &pending[start..start + i]);
                        start += i + 1;
                    }
                    pending.drain(..start);
                    // No trace line is this long: whatever this is, it is dropped (its
                    // tail up to the next newline reads as no record), and after a
                    // while the file is not read any more.
                    if pending.len() > MAX_TAILED_LINE {
                        skipped += pending.len() as u64;
                        pending = Vec::new();
                        if skipped > MAX_SKIPPED_BYTES {
                            return;
                        }
                    }
                }
            }
            if got {
                tokio::task::yield_now().await;
            }
        }
        // Done once everything the agent wrote is read.
        if done && !got {
            return;
        }
        if !got {
            tokio::select! {
                _ = tokio::time::sleep(TAIL_PERIOD) => {}
                _ = agent_done.changed() => {}
            }
        }
    }
}

fn on_trace_line(job: &Job, line: &[u8]) {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let Some(kind) = trace::reader::line_kind(text) else {
        return;
    };
    // Only streamed kinds need the record as a whole (file and event records can be
    // a firehose).
    let raw = || serde_json::from_str::<&RawValue>(text).ok();
    match &*kind {
        "header" => {
            if let Ok(h) = serde_json::from_str::<trace::Header>(text) {
                job.state().pid = h.pid;
            }
        }
        "sample" => {
            let Ok(sample) = serde_json::from_str::<trace::Sample>(text) else {
                return;
            };
            let cpu = sample.cpu_percent.unwrap_or(0.0);
            if cpu > 0.0 || sample.oncpu_ns.unwrap_or(0) > 0 {
                progress(job);
            }
            let mut st = job.state();
            let rss_kb = sample.rss_kb.unwrap_or(0);
            st.live = Some(Live {
                cpu_percent: cpu,
                rss_kb,
                memory_percent: job.spec.limits.memory_bytes.map(|limit| {
                    (rss_kb as f64 * 1024.0 * 10_000.0 / limit.max(1) as f64).round() / 100.0
                }),
                process_count: u64::from(sample.process_count.unwrap_or(0)),
                sampled_unix_ms: unix_ms(),
            });
            if let Some(record) = raw() {
                Job::publish(&st, &StreamMsg::Sample { record });
            }
        }
        "process" => {
            if let Some(record) = raw() {
                Job::publish(&job.state(), &StreamMsg::Process { record });
            }
        }
        "summary" => {
            if let Some(record) = raw() {
                Job::publish(&job.state(), &StreamMsg::Summary { record });
            }
        }
        _ => {}
    }
}

/// Keeps one output stream of the command in its log file and streams it by line.
async fn read_output(job: Arc<Job>, stream: LogStream, mut from: pipe::Receiver, mut to: File) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes of an unfinished line, already in the file but not yet sent.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        progress(&job);
        let mut mark = job.output_mark();
        if to.write_all(&buf[..n]).is_err() {
            eprintln!(
                "denet-agent serve: job {}: cannot write its {}",
                job.id,
                stream.as_str()
            );
        }
        pending.extend_from_slice(&buf[..n]);
        let sent = send_lines(&job, stream, &mut pending, false);
        add_mark(&mut mark, stream, sent);
    }
    let mut mark = job.output_mark();
    let sent = send_lines(&job, stream, &mut pending, true);
    add_mark(&mut mark, stream, sent);
}

fn add_mark(mark: &mut super::job::OutputMark, stream: LogStream, n: u64) {
    match stream {
        LogStream::Stdout => mark.stdout += n,
        LogStream::Stderr => mark.stderr += n,
    }
}

/// Sends the complete lines in `pending` (all of it at the end of the stream) and
/// returns how many bytes were sent.
fn send_lines(job: &Job, stream: LogStream, pending: &mut Vec<u8>, at_end: bool) -> u64 {
    let st = job.state();
    let mut start = 0;
    while let Some((len, used)) = super::job::next_piece(&pending[start..], at_end) {
        let line = String::from_utf8_lossy(&pending[start..start + len]);
        let msg = StreamMsg::output(stream, &line);
        Job::publish(&st, &msg);
        start += used;
    }
    pending.drain(..start);
    start as u64
}

/// The agent's own messages, kept as agent.log.
async fn copy_log(mut from: impl AsyncRead + Unpin, mut to: File) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// The final status from what the run recorded.
pub fn decide_status(
    cancelled: bool,
    timed_out: bool,
    exit_code: Option<i32>,
    start_error: bool,
    wall_s: f64,
    startup_window_s: f64,
) -> Status {
    if cancelled {
        Status::Cancelled
    } else if timed_out {
        Status::TimedOut
    } else if exit_code == Some(0) && !start_error {
        Status::Succeeded
    } else if start_error || wall_s < startup_window_s {
        Status::StartupFailed
    } else {
        Status::Failed
    }
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|x| x.min(i64::MAX as u64) as i64)
}

/// The history row from the job's trace (the numbers of `denet-agent stats`).
async fn build_row(svc: &Service, job: &Job, ending: &Ending) -> HistoryRow {
    let (cancel_requested, cancel_reason, stuck_seen, start_ms) = {
        let st = job.state();
        (
            st.cancel_requested,
            st.cancel_reason.clone(),
            st.stuck_seen,
            st.start_unix_ms,
        )
    };
    let now = unix_ms();
    let mut row = HistoryRow {
        id: job.id.clone(),
        name: job.spec.name.clone(),
        cmd: job.spec.cmd.clone(),
        cwd: job.spec.cwd.to_string_lossy().into_owned(),
        hostname: svc.hostname.clone(),
        start_unix_ms: start_ms.unwrap_or(now),
        end_unix_ms: now,
        duration_s: 0.0,
        // Decided below from how the job ended.
        status: Status::Failed,
        exit_code: None,
        signal: None,
        cpu_user_s: 0.0,
        cpu_sys_s: 0.0,
        cpu_percent: 0.0,
        peak_rss_kb: 0,
        read_bytes: None,
        write_bytes: None,
        blk_read_bytes: None,
        blk_write_bytes: None,
        net_rx_bytes: None,
        net_tx_bytes: None,
        process_count: 0,
        lost_events: 0,
        stuck: stuck_seen,
        trace_path: job.trace_path().to_string_lossy().into_owned(),
        error: ending.error.clone(),
        user: job.owner.user.clone(),
        uid: job.owner.uid,
        memory_peak_bytes: None,
        memory_limit_bytes: None,
        oom_kills: 0,
    };
    if ending.never_started {
        row.status = if cancel_requested {
            Status::Cancelled
        } else {
            Status::StartupFailed
        };
        row.error = row
            .error
            .or(cancel_reason.map(|r| format!("cancelled: {r}")));
        return row;
    }
    let path = job.trace_path();
    let analysis = tokio::task::spawn_blocking(move || {
        report::analyze(&path, Box::new(|_: &str| {})).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("trace analysis panicked: {e}")));
    let report = match analysis {
        Ok(r) if r.totals.from_summary => r,
        other => {
            // No command pid in the trace: the agent failed before the command ran.
            let command_ran = matches!(&other, Ok(r) if r.run.pid.is_some());
            let why = match other {
                Ok(_) => "the trace has no summary".to_string(),
                Err(e) => format!("the trace is unreadable: {e}"),
            };
            let agent = ending
                .agent_status
                .map(|s| format!(" (agent {s}; see agent.log)"))
                .unwrap_or_default();
            row.status = if cancel_requested {
                Status::Cancelled
            } else if ending.killed_at_timeout {
                Status::TimedOut
            } else if command_ran {
                Status::Failed
            } else {
                Status::StartupFailed
            };
            let earlier = ending
                .error
                .as_deref()
                .map(|e| format!("{e}; "))
                .unwrap_or_default();
            row.error = Some(format!("{earlier}{why}{agent}"));
            row.duration_s = (row.end_unix_ms - row.start_unix_ms).max(0) as f64 / 1e3;
            return row;
        }
    };
    let t = &report.totals;
    let wall_s = t.wall_ns as f64 / 1e9;
    if let Some(start_ns) = report.run.start_unix_ns {
        row.start_unix_ms = (start_ns / 1_000_000) as i64;
    }
    row.end_unix_ms = row.start_unix_ms + (t.wall_ns / 1_000_000) as i64;
    row.duration_s = wall_s;
    row.exit_code = t.exit_code;
    row.signal = t.signal;
    row.cpu_user_s = t.cpu_user_ns as f64 / 1e9;
    row.cpu_sys_s = t.cpu_sys_ns as f64 / 1e9;
    row.cpu_percent = t.cpu_percent.unwrap_or(if wall_s > 0.0 {
        (row.cpu_user_s + row.cpu_sys_s) / wall_s * 100.0
    } else {
        0.0
    });
    if !row.cpu_percent.is_finite() {
        row.cpu_percent = 0.0;
    }
    row.peak_rss_kb = opt_i64(t.max_process_peak_rss_kb).unwrap_or(0);
    row.read_bytes = opt_i64(t.io.read_bytes);
    row.write_bytes = opt_i64(t.io.write_bytes);
    row.blk_read_bytes = opt_i64(t.depth.blk_read_bytes);
    row.blk_write_bytes = opt_i64(t.depth.blk_write_bytes);
    row.net_rx_bytes = opt_i64(t.depth.net_rx_bytes);
    row.net_tx_bytes = opt_i64(t.depth.net_tx_bytes);
    row.process_count = opt_i64(t.summary_process_count.or(Some(t.processes))).unwrap_or(0);
    row.lost_events = opt_i64(t.lost_events).unwrap_or(0);
    row.memory_peak_bytes = opt_i64(t.memory_peak_bytes);
    row.memory_limit_bytes = opt_i64(t.memory_limit_bytes);
    row.oom_kills = opt_i64(t.oom_kills).unwrap_or(0);
    let start_error = t.error.is_some();
    if let Some(e) = &t.error {
        row.error = Some(e.clone());
    }
    let cancelled = t.cancelled.unwrap_or(false);
    if cancelled {
        if let Some(r) = cancel_reason {
            row.error.get_or_insert(format!("cancelled: {r}"));
        }
    }
    row.status = decide_status(
        cancelled,
        t.timed_out.unwrap_or(false),
        t.exit_code,
        start_error,
        wall_s,
        svc.config.startup_window.as_secs_f64(),
    );
    // Said, not judged: the job itself may have gone well.
    if let Some(te) = &t.tracer_error {
        row.error = Some(match row.error.take() {
            Some(e) => format!("{e}; {te}"),
            None => te.clone(),
        });
    }
    row
}

/// The row of a job whose service died before recording it (found at the next
/// start: a job directory with a job.json, no spooled row and no database row). Its
/// agent saw the control pipe close and stopped the job; its trace is waited for
/// (up to the kill grace and a little more) and read like any other.
pub(super) async fn recover_row(svc: &Service, dir: &Path) -> Option<HistoryRow> {
    let file: JobFile = serde_json::from_slice(&std::fs::read(dir.join("job.json")).ok()?).ok()?;
    let spec = super::spec::JobSpec {
        limits: Default::default(),
        name: file.name,
        cmd: file.cmd,
        env: Vec::new(),
        cwd: file.cwd,
        timeout: Duration::from_secs_f64(file.timeout_s.max(0.0)),
        stuck_after: Duration::from_secs_f64(file.stuck_after_s.max(0.0)),
    };
    // The user may be gone from the user database by now: the row keeps what the
    // job file says.
    let owner = Identity::of_uid(file.uid).unwrap_or_else(|_| Identity {
        uid: file.uid,
        gid: file.uid,
        user: file.user.clone(),
        home: PathBuf::from("/"),
        shell: PathBuf::from("/bin/sh"),
        groups: Vec::new(),
    });
    let job = Job::new(file.id, spec, owner, dir.to_path_buf());
    let until = Instant::now() + svc.config.kill_grace + Duration::from_secs(3);
    while Instant::now() < until && trace::reader::summary_at_end(&job.trace_path()).is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ending = Ending {
        error: Some("the service stopped while the job ran; recorded at its next start".into()),
        ..Default::default()
    };
    Some(build_row(svc, &job, &ending).await)
}

/// Records the row (spooled to the job directory first, so a database outage loses
/// nothing), ends the job's stream and frees its name.
async fn finalize(svc: &Arc<Service>, job: &Arc<Job>, ending: Ending) {
    let row = build_row(svc, job, &ending).await;
    svc.record(job, &row).await;
    {
        let mut st = job.state();
        let view = job.ended_view(&st, &row);
        st.status = row.status;
        st.stuck = false;
        st.paused = false;
        st.control = None;
        st.live = None;
        st.result = Some(row);
        Job::publish(&st, &StreamMsg::End { job: &view });
        // Subscribers still get what is buffered; the buffer is freed with them.
        st.events = None;
    }
    svc.job_ended(job);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules() {
        let d = |c, t, code, se, wall| decide_status(c, t, code, se, wall, 5.0);
        assert_eq!(d(false, false, Some(0), false, 0.1), Status::Succeeded);
        assert_eq!(d(false, false, Some(1), false, 0.1), Status::StartupFailed);
        assert_eq!(
            d(false, false, None, false, 0.1),
            Status::StartupFailed,
            "killed early"
        );
        assert_eq!(d(false, false, Some(1), false, 6.0), Status::Failed);
        assert_eq!(
            d(false, false, Some(127), true, 9.0),
            Status::StartupFailed,
            "exec failed"
        );
        assert_eq!(d(false, true, None, false, 9.0), Status::TimedOut);
        assert_eq!(d(true, false, None, false, 0.1), Status::Cancelled);
        assert_eq!(
            d(true, true, None, false, 9.0),
            Status::Cancelled,
            "stop wins"
        );
    }
}
