//! The daemon side of the node tracer: loads the programs once, listens on a Unix
//! socket every local user may connect to, and for each client tracks the one process
//! it asks for (its own child, held before exec) as a run of its own. The caller is
//! who the kernel says it is (`SO_PEERCRED`); nothing in a request can change that.
//!
//! One job, one file: the daemon's accept loop, the per-caller checks and the runs
//! it tracks share one state and one lock order, kept together to be read together.

use std::{
    collections::BTreeSet,
    io::BufReader,
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex, MutexGuard},
    time::Duration,
};

use denet_common::MAX_RUNS;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::{
    protocol::{
        self, Finished, Reply, Request, RunInfo, SlurmTaskRequest, TrackRequest, MAX_REQUEST_BYTES,
        PROTOCOL_VERSION,
    },
    slurm::{self, Pending, PendingTasks, SlurmRecording},
};
use crate::{
    cgroup::RunCgroup,
    engine::clock,
    kernel::{KernelTracer, TracerOptions},
    process::{
        collector::{self, CollectorHandle, RunCollector},
        files::FileTracker,
        procfs,
        tracker::Tracker,
    },
};

/// Messages queued for one client before the daemon gives up on it (a client that
/// stops reading must not make the daemon hold its records without bound).
const OUT_QUEUE: usize = 4096;
/// Longest a client may take to send its first request.
const FIRST_REQUEST_WITHIN: Duration = Duration::from_secs(10);
/// Most pids in one `Live` request.
const MAX_LIVE_PIDS: usize = 100_000;
/// Connections served at once: every run, plus some waiting for their first request
/// (a user opening connections by the thousand must not exhaust the daemon).
const MAX_CONNECTIONS: usize = MAX_RUNS as usize + 64;
/// Runs one user (root aside) may have at once, so others still find room.
const MAX_RUNS_PER_UID: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("loading the node's kernel programs: {0}")]
    Load(#[from] crate::kernel::tracer::TracerError),
    #[error("{what} {path}: {source}")]
    Socket {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the node tracer: {0}")]
    Thread(#[source] std::io::Error),
}

/// Which runs exist, whose they are, and how many need the syscall hooks.
#[derive(Default)]
struct Runs {
    used: BTreeSet<u32>,
    by_uid: std::collections::HashMap<u32, usize>,
    hook_users: usize,
    /// What `ListRuns` shows of each open run.
    info: std::collections::BTreeMap<u32, RunInfo>,
}

/// The node's one set of kernel programs and the runs it serves.
pub struct NodeTracer {
    tracer: Mutex<KernelTracer>,
    collector: CollectorHandle,
    runs: Mutex<Runs>,
    connections: std::sync::atomic::AtomicUsize,
    socket: PathBuf,
    page_kb: u64,
    /// Slurm batch tasks are traced and recorded (`serve --slurm`).
    slurm: Option<SlurmRecording>,
    /// Slurm tasks handed to a recorder, by token, until it tracks them.
    pending: Mutex<PendingTasks>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads from a socket until a deadline: each read gets the time that is left.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: std::time::Instant,
}

impl std::io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .until
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        std::io::Read::read(&mut s, buf)
    }
}

/// Who is at the other end of a connection, as the kernel recorded it.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: u32,
    uid: u32,
}

impl NodeTracer {
    /// Loads the programs, starts the collector and listens on `socket` (mode 0666:
    /// every local user may ask; each is checked by what the kernel says).
    pub fn start(
        socket: &Path,
        ringbuf_bytes: u32,
        slurm: Option<SlurmRecording>,
    ) -> Result<Arc<NodeTracer>, NodeError> {
        // Two descriptors per run and per waiting connection: room for all of them.
        if let Ok((_, hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
        let mut tracer = KernelTracer::load(TracerOptions {
            ringbuf_bytes,
            files: true,
            syscalls: true,
            events: true,
            shared: true,
        })?;
        let ring = tracer
            .take_events()
            .ok_or(crate::kernel::tracer::TracerError::Missing("EVENTS"))?;
        let (collector_stats, _) = tracer
            .take_stats()
            .ok_or(crate::kernel::tracer::TracerError::Missing("PROC_STATS"))?;
        let collector =
            collector::spawn(ring, Some(collector_stats), Vec::new()).map_err(NodeError::Thread)?;
        let listener = bind_socket(socket, true)?;
        let node = Arc::new(NodeTracer {
            tracer: Mutex::new(tracer),
            collector,
            runs: Mutex::new(Runs::default()),
            connections: std::sync::atomic::AtomicUsize::new(0),
            socket: socket.to_path_buf(),
            page_kb: procfs::clock_ticks_and_page_kb().1,
            slurm,
            pending: Mutex::new(PendingTasks::new()),
        });
        let accepting = node.clone();
        std::thread::Builder::new()
            .name("denet-node-accept".into())
            .spawn(move || accepting.accept(listener))
            .map_err(NodeError::Thread)?;
        Ok(node)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs being served now.
    pub fn active_runs(&self) -> usize {
        lock(&self.runs).used.len()
    }

    fn accept(self: Arc<Self>, listener: UnixListener) {
        use std::sync::atomic::Ordering;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else {
                // Out of descriptors or memory: give the runs a moment to end.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                let _ = protocol::send(
                    &mut stream,
                    &Reply::Refused {
                        reason: "the node tracer has too many connections".into(),
                    },
                );
                continue;
            }
            let node = self.clone();
            // A client whose thread cannot start is dropped (it sees the socket close).
            let spawned = std::thread::Builder::new()
                .name("denet-node-client".into())
                .spawn(move || {
                    node.serve_client(stream);
                    node.connections.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                self.connections.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn serve_client(&self, stream: UnixStream) {
        let Ok(creds) = getsockopt(&stream, PeerCredentials) else {
            return;
        };
        let peer = Peer {
            pid: creds.pid() as u32,
            uid: creds.uid(),
        };
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut writer = stream;
        // The whole first request within the deadline, however it trickles in.
        let first = {
            let mut first_reader = BufReader::new(Deadline {
                stream: &read_half,
                until: std::time::Instant::now() + FIRST_REQUEST_WITHIN,
            });
            let first = protocol::receive::<Request>(&mut first_reader, MAX_REQUEST_BYTES);
            if !first_reader.buffer().is_empty() {
                // A client that does not wait for its answer: not ours to serve.
                return;
            }
            first
        };
        let _ = read_half.set_read_timeout(None);
        let mut reader = BufReader::new(read_half);
        let track = match first {
            Ok(Request::Track(t)) => *t,
            Ok(Request::ListRuns) => {
                let runs = self.runs_of(peer.uid);
                let _ = protocol::send(&mut writer, &Reply::Runs { runs });
                return;
            }
            Ok(Request::SlurmTask(req)) => {
                let reply = match self.adopt_slurm_task(peer, &req) {
                    Ok((run, trace)) => Reply::Adopted { run, trace },
                    Err(reason) => Reply::Refused { reason },
                };
                let _ = protocol::send(&mut writer, &reply);
                return;
            }
            Ok(_) => {
                let _ = protocol::send(
                    &mut writer,
                    &Reply::Refused {
                        reason: "the first request must be `track`".into(),
                    },
                );
                return;
            }
            Err(_) => return,
        };
        let (tx, rx) = mpsc::sync_channel::<Reply>(OUT_QUEUE);
        let run = match self.open_run(peer, &track, tx.clone()) {
            Ok(run) => run,
            Err(reason) => {
                let _ = protocol::send(&mut writer, &Reply::Refused { reason });
                return;
            }
        };
        // One writer for answers and batches, so they reach the client in order; it
        // says when an answer is out.
        let (written_tx, written_rx) = mpsc::channel::<()>();
        let writing = std::thread::Builder::new()
            .name("denet-node-write".into())
            .spawn(move || {
                for msg in rx {
                    let answer = !matches!(msg, Reply::Batch(_));
                    if protocol::send(&mut writer, &msg).is_err() {
                        break;
                    }
                    if answer {
                        let _ = written_tx.send(());
                    }
                }
            });
        let node_at_start = lock(&self.tracer).counters().unwrap_or_default();
        let _ = tx.send(Reply::Tracked {
            run: run.id,
            files: track.files,
            syscalls: track.syscalls,
            events: track.events,
            cgroup: match &run.cgroup {
                Ok(cg) => Ok(cg.memory_path()),
                Err(why) => Err(why.clone()),
            },
        });
        let finished = self.answer(&mut reader, &tx, &written_rx, run.id);
        let report = self.collector.remove(run.id);
        let (run_counters, node_now) = {
            let tracer = lock(&self.tracer);
            (
                tracer.run_counters(run.id).unwrap_or_default(),
                tracer.counters().unwrap_or_default(),
            )
        };
        let cgroup = run.cgroup.as_ref().ok().map(RunCgroup::usage);
        self.close_run(run);
        if finished {
            let _ = tx.send(Reply::Finished(Box::new(Finished {
                report,
                run: run_counters,
                node: node_now.since(&node_at_start),
                cgroup,
            })));
        }
        drop(tx);
        if let Ok(w) = writing {
            let _ = w.join();
        }
    }

    /// Answers the run's requests until `finish` (true) or the client goes (false).
    fn answer(
        &self,
        reader: &mut BufReader<UnixStream>,
        tx: &mpsc::SyncSender<Reply>,
        written: &mpsc::Receiver<()>,
        run: u32,
    ) -> bool {
        loop {
            let reply = match protocol::receive::<Request>(reader, MAX_REQUEST_BYTES) {
                Ok(Request::Finish) => return true,
                Ok(Request::Live { mut pids }) => {
                    pids.truncate(MAX_LIVE_PIDS);
                    // Only the run's processes are answered for (the answer is as
                    // large as the run, whatever was asked).
                    let readings = lock(&self.tracer).read_live(run, &pids, clock::monotonic_ns());
                    Reply::Live {
                        readings: pids
                            .into_iter()
                            .zip(readings)
                            .filter_map(|(pid, r)| Some((pid, r?)))
                            .collect(),
                    }
                }
                Ok(Request::TrackedPids) => Reply::TrackedPids {
                    pids: lock(&self.tracer).tracked_pids(run),
                },
                Ok(Request::Untrack { pid }) => {
                    let mut tracer = lock(&self.tracer);
                    // Only a process of this run that is gone: nothing else can be
                    // taken out of anyone's run this way.
                    if tracer.run_of(pid) == run && !procfs::exists(pid) {
                        tracer.untrack(pid);
                    }
                    continue;
                }
                Ok(Request::Track(_)) => Reply::Refused {
                    reason: "one run per connection".into(),
                },
                Ok(Request::ListRuns) => Reply::Refused {
                    reason: "`list_runs` is a connection of its own".into(),
                },
                Ok(Request::SlurmTask(_)) => Reply::Refused {
                    reason: "`slurm_task` is a connection of its own".into(),
                },
                Err(_) => return false,
            };
            // The next request is read once this answer is out: a client that asks
            // without reading gets nothing queued for it.
            if tx.send(reply).is_err() || written.recv().is_err() {
                return false;
            }
        }
    }

    /// Checks the request, then opens a run for it and tracks its process.
    fn open_run(
        &self,
        peer: Peer,
        t: &TrackRequest,
        tx: mpsc::SyncSender<Reply>,
    ) -> Result<OpenRun, String> {
        if t.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} (this daemon speaks {PROTOCOL_VERSION}): use the \
                 denet-agent of the node",
                t.version
            ));
        }
        // Pinned before it is checked: if the process exits and its pid is reused,
        // the pidfd still names the one that was checked (and is found dead below).
        let pidfd = Pidfd::open(t.pid).ok_or_else(|| format!("no process {}", t.pid))?;
        // A Slurm task handed to the daemon's own recorder (root) with a token; the
        // run is the job's user's. Anything else: the caller's own held child.
        let adopted = match &t.adopt_token {
            Some(token) => Some(self.take_pending(peer, token, t.pid)?),
            None => {
                check_owner(t.pid, peer)?;
                None
            }
        };
        let result = self.open_checked_run(peer, t, tx, pidfd, adopted.as_ref());
        if let Some(p) = adopted {
            let _ = p
                .done
                .send(result.as_ref().map(|r| r.id).map_err(Clone::clone));
        }
        result
    }

    /// The pending Slurm task of `token`, for its recorder: root's, and the pid it
    /// was checked for.
    fn take_pending(&self, peer: Peer, token: &str, pid: u32) -> Result<Pending, String> {
        if peer.uid != 0 {
            return Err("only the daemon's own recorder takes a Slurm task over".into());
        }
        let pending = lock(&self.pending)
            .remove(token)
            .ok_or("no Slurm task waits for this token")?;
        if pending.pid != pid {
            let _ = pending
                .done
                .send(Err("the recorder asked for another pid".into()));
            return Err(format!(
                "the token is for process {}, not {pid}",
                pending.pid
            ));
        }
        Ok(pending)
    }

    /// A Slurm TaskProlog's request: checks the task, starts its recorder and waits
    /// until the recorder has it tracked (the task execs its script only after the
    /// prolog returns). Returns the run and where its trace goes.
    fn adopt_slurm_task(
        &self,
        peer: Peer,
        req: &SlurmTaskRequest,
    ) -> Result<(u32, String), String> {
        let Some(cfg) = &self.slurm else {
            return Err("this node's daemon does not trace Slurm jobs (serve --slurm)".into());
        };
        if req.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} (this daemon speaks {PROTOCOL_VERSION})",
                req.version
            ));
        }
        let task = slurm::check_task(peer.pid, peer.uid, req)?;
        if lock(&self.tracer).run_of(task.pid) != 0 {
            return Err(format!("process {} is tracked already", task.pid));
        }
        let token = slurm::new_token()?;
        let (done_tx, done_rx) = mpsc::channel();
        lock(&self.pending).insert(
            token.clone(),
            Pending {
                pid: task.pid,
                uid: task.uid,
                marks: crate::task::Marks {
                    slurm: Some(task.job.clone()),
                    engine: Vec::new(),
                },
                done: done_tx,
            },
        );
        let answer = slurm::start_recorder(cfg, &self.socket, &task, &token, &done_rx);
        lock(&self.pending).remove(&token);
        if let Err(why) = &answer {
            eprintln!(
                "denet-agent: node tracer: Slurm job {} not traced: {why}",
                task.job.display_id()
            );
        }
        answer.map(|run| (run, task.trace.display().to_string()))
    }

    fn open_checked_run(
        &self,
        peer: Peer,
        t: &TrackRequest,
        tx: mpsc::SyncSender<Reply>,
        pidfd: Pidfd,
        adopted: Option<&Pending>,
    ) -> Result<OpenRun, String> {
        // An adopted task's run is its user's (the recorder asking is root).
        let owner = adopted.map_or(peer.uid, |p| p.uid);
        if lock(&self.tracer).run_of(t.pid) != 0 {
            return Err(format!(
                "process {} is tracked already (inside a Slurm job the node daemon \
                 traces, the job's own trace has it: see DENET_AGENT_TRACE_FILE; submit \
                 with DENET_AGENT_SLURM=off to trace it with denet-agent run instead)",
                t.pid
            ));
        }
        let hooks = lock(&self.tracer).needs_syscall_hooks(t.files, t.syscalls);
        let id = {
            let mut runs = lock(&self.runs);
            let mine = runs.by_uid.get(&owner).copied().unwrap_or(0);
            if owner != 0 && mine >= MAX_RUNS_PER_UID {
                return Err(format!(
                    "uid {owner} has {mine} runs on this node, the most one user may have"
                ));
            }
            let id = (1..MAX_RUNS)
                .find(|r| !runs.used.contains(r))
                .ok_or("the node tracer serves as many runs as it can")?;
            runs.used.insert(id);
            *runs.by_uid.entry(owner).or_default() += 1;
            if hooks {
                runs.hook_users += 1;
            }
            id
        };
        // The run's cgroup, inside the caller's (a manager's limits still hold), and
        // the held command in it before it execs. A Slurm task stays in Slurm's.
        let cgroup = if adopted.is_some() {
            Err("a Slurm task stays in the cgroup Slurm gave it".to_string())
        } else {
            RunCgroup::create(&format!("denet-{}-{}", peer.pid, t.pid), peer.pid, t.limits)
                .and_then(|cg| match cg.enter(t.pid) {
                    Ok(()) => Ok(cg),
                    Err(e) => {
                        cg.remove();
                        Err(e)
                    }
                })
                .map_err(|e| e.to_string())
        };
        lock(&self.runs).info.insert(
            id,
            RunInfo {
                run: id,
                pid: t.pid,
                uid: owner,
                argv: t.argv.clone(),
                start_boot_ns: t.start_boot_ns,
                cgroup: cgroup.as_ref().ok().map(RunCgroup::memory_path),
            },
        );
        let run = OpenRun {
            id,
            hooks,
            uid: owner,
            cgroup,
        };
        if let Err(why) = &run.cgroup {
            if t.limits.any() {
                let why = format!("the limits need a cgroup: {why}");
                self.close_run(run);
                return Err(why);
            }
        }
        let mut tracker = Tracker::new(self.page_kb);
        tracker.add_root(
            t.pid,
            peer.pid,
            t.start_boot_ns,
            t.argv.clone(),
            // A Slurm task's marks are the daemon's checked ones, not the recorder's.
            adopted.map_or_else(|| t.task_marks.clone(), |p| p.marks.clone()),
        );
        let mut files = FileTracker::default();
        if let Some(cwd) = &t.cwd {
            files.set_cwd(t.pid, cwd.clone());
        }
        let sink = Box::new(move |msg| tx.try_send(Reply::Batch(Box::new(msg))).is_ok());
        self.collector
            .add(id, RunCollector::new(tracker, files, sink));
        let flags = TracerOptions {
            ringbuf_bytes: 0,
            files: t.files,
            syscalls: t.syscalls,
            events: t.events,
            shared: true,
        }
        .run_flags();
        let tracked = {
            let mut tracer = lock(&self.tracer);
            (|| {
                if hooks {
                    tracer.set_syscall_hooks(true)?;
                }
                tracer.open_run(id, flags)?;
                tracer.track(t.pid, id, t.syscalls)
            })()
        };
        // Still the process that was checked (alive: its pid was not reused).
        let tracked = tracked.map_err(|e| e.to_string()).and_then(|()| {
            if pidfd.alive() {
                Ok(())
            } else {
                Err(format!("process {} exited before it was tracked", t.pid))
            }
        });
        if let Err(e) = tracked {
            self.collector.remove(id);
            self.close_run(run);
            return Err(e);
        }
        Ok(run)
    }

    /// The open runs `uid` may see: its own; root's: all.
    fn runs_of(&self, uid: u32) -> Vec<RunInfo> {
        lock(&self.runs)
            .info
            .values()
            .filter(|r| uid == 0 || r.uid == uid)
            .cloned()
            .collect()
    }

    fn close_run(&self, run: OpenRun) {
        // Off the run's path: the kernel may take a moment to let go of a memory
        // cgroup whose last task just exited, and the client is waiting.
        if let Ok(cg) = run.cgroup {
            let background = std::thread::Builder::new()
                .name("denet-cgroup-rm".into())
                .spawn(move || cg.remove());
            if let Err(e) = background {
                eprintln!("denet-agent: node tracer: removing a run's cgroup: {e}");
            }
        }
        let mut tracer = lock(&self.tracer);
        tracer.close_run(run.id);
        let mut runs = lock(&self.runs);
        runs.used.remove(&run.id);
        runs.info.remove(&run.id);
        if let Some(n) = runs.by_uid.get_mut(&run.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                runs.by_uid.remove(&run.uid);
            }
        }
        if run.hooks {
            runs.hook_users = runs.hook_users.saturating_sub(1);
            if runs.hook_users == 0 {
                if let Err(e) = tracer.set_syscall_hooks(false) {
                    eprintln!("denet-agent: node tracer: detaching the syscall hooks: {e}");
                }
            }
        }
    }
}

struct OpenRun {
    id: u32,
    hooks: bool,
    uid: u32,
    cgroup: Result<RunCgroup, String>,
}

/// A pidfd: names one process for good, whatever happens to its pid number.
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> Option<Pidfd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open with no flags; a non-negative result is a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the descriptor was just returned to us and is owned here only.
        Some(Pidfd(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(fd as i32)
        }))
    }

    /// The process is still there (signal 0 through the pidfd).
    fn alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: signal 0 only checks; no siginfo; no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            ) == 0
        }
    }
}

/// A process the caller may have tracked: its own child (held before exec), and
/// its own by every uid (root's requests: any child of root's).
fn check_owner(pid: u32, peer: Peer) -> Result<(), String> {
    let status = procfs::status(pid).map_err(|_| format!("no process {pid}"))?;
    if status.tgid != pid {
        return Err(format!("{pid} is a thread, not a process"));
    }
    if status.ppid != peer.pid {
        return Err(format!(
            "process {pid} is not a child of the caller (pid {})",
            peer.pid
        ));
    }
    if peer.uid != 0 && status.uids.iter().any(|&u| u != peer.uid) {
        return Err(format!(
            "process {pid} does not belong to the caller (uid {})",
            peer.uid
        ));
    }
    Ok(())
}

/// Binds a Unix socket for local callers. `shared`: mode 0666 in a 0755 directory
/// (every local user may connect, each identified by the kernel); otherwise 0600 in
/// 0700. The mode is set through the umask, so the socket never has another, not even
/// briefly. A stale socket is replaced; a live one (another service) or a file that is
/// not a socket is an error.
pub(crate) fn bind_socket(path: &Path, shared: bool) -> Result<UnixListener, NodeError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let err = |what, source| NodeError::Socket {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(if shared { 0o755 } else { 0o700 })
            .create(dir)
            .map_err(|e| err("creating the directory of", e))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(
                "exists and is not a socket:",
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(err(
                "another service listens on",
                std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        }
        std::fs::remove_file(path).map_err(|e| err("removing the stale", e))?;
    }
    let mask = if shared { 0o111 } else { 0o177 };
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound.map_err(|e| err("binding", e))
}
