//! The daemon side of the node tracer: loads the programs once, listens on a Unix
//! socket every local user may connect to, and for each client tracks the one process
//! it asks for (its own child, held before exec) as a run of its own. The caller is
//! who the kernel says it is (`SO_PEERCRED`); nothing in a request can change that.

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

use super::protocol::{self, Reply, Request, TrackRequest, MAX_REQUEST_BYTES, PROTOCOL_VERSION};
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

/// Which runs exist, and how many of them need the syscall hooks.
#[derive(Default)]
struct Runs {
    used: BTreeSet<u32>,
    hook_users: usize,
}

/// The node's one set of kernel programs and the runs it serves.
pub struct NodeTracer {
    tracer: Mutex<KernelTracer>,
    collector: CollectorHandle,
    runs: Mutex<Runs>,
    connections: std::sync::atomic::AtomicUsize,
    socket: PathBuf,
    page_kb: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    pub fn start(socket: &Path, ringbuf_bytes: u32) -> Result<Arc<NodeTracer>, NodeError> {
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
        let listener = bind(socket)?;
        let node = Arc::new(NodeTracer {
            tracer: Mutex::new(tracer),
            collector,
            runs: Mutex::new(Runs::default()),
            connections: std::sync::atomic::AtomicUsize::new(0),
            socket: socket.to_path_buf(),
            page_kb: procfs::clock_ticks_and_page_kb().1,
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
            let Ok(mut stream) = stream else { continue };
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
        let mut reader = BufReader::new(read_half);
        let mut writer = stream;
        let _ = writer.set_read_timeout(Some(FIRST_REQUEST_WITHIN));
        let first = protocol::receive::<Request>(&mut reader, MAX_REQUEST_BYTES);
        let _ = writer.set_read_timeout(None);
        let track = match first {
            Ok(Request::Track(t)) => t,
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
        // One writer for answers and batches, so they reach the client in order.
        let writing = std::thread::Builder::new()
            .name("denet-node-write".into())
            .spawn(move || {
                for msg in rx {
                    if protocol::send(&mut writer, &msg).is_err() {
                        break;
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
        let finished = self.answer(&mut reader, &tx, run.id);
        let report = self.collector.remove(run.id);
        let (run_counters, node_now) = {
            let tracer = lock(&self.tracer);
            (
                tracer.run_counters(run.id).unwrap_or_default(),
                tracer.counters().unwrap_or_default(),
            )
        };
        let cgroup = run.cgroup.as_ref().ok().map(RunCgroup::usage);
        self.close_run(&run);
        if finished {
            let _ = tx.send(Reply::Finished {
                report,
                run: run_counters,
                node: node_now.since(&node_at_start),
                cgroup,
            });
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
        run: u32,
    ) -> bool {
        loop {
            let reply = match protocol::receive::<Request>(reader, MAX_REQUEST_BYTES) {
                Ok(Request::Finish) => return true,
                Ok(Request::Live { mut pids }) => {
                    pids.truncate(MAX_LIVE_PIDS);
                    let readings = lock(&self.tracer).read_live(run, &pids, clock::monotonic_ns());
                    Reply::Live { readings }
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
                Err(_) => return false,
            };
            if tx.send(reply).is_err() {
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
        check_owner(t.pid, peer)?;
        // The run's cgroup, inside the caller's (a manager's limits still hold), and
        // the held command in it before it execs.
        let cgroup =
            RunCgroup::create(&format!("denet-{}-{}", peer.pid, t.pid), peer.pid, t.limits)
                .and_then(|cg| match cg.enter(t.pid) {
                    Ok(()) => Ok(cg),
                    Err(e) => {
                        cg.remove();
                        Err(e)
                    }
                })
                .map_err(|e| e.to_string());
        if let Err(why) = &cgroup {
            if t.limits.any() {
                return Err(format!("the limits need a cgroup: {why}"));
            }
        }
        let hooks = t.files || t.syscalls;
        let id = {
            let mut runs = lock(&self.runs);
            let id = (1..MAX_RUNS)
                .find(|r| !runs.used.contains(r))
                .ok_or("the node tracer serves as many runs as it can")?;
            runs.used.insert(id);
            if hooks {
                runs.hook_users += 1;
            }
            id
        };
        let run = OpenRun { id, hooks, cgroup };
        let mut tracker = Tracker::new(self.page_kb);
        tracker.add_root(t.pid, peer.pid, t.start_boot_ns, t.argv.clone());
        let mut files = FileTracker::default();
        if let Some(cwd) = &t.cwd {
            files.set_cwd(t.pid, cwd.clone());
        }
        let sink = Box::new(move |msg| tx.try_send(Reply::Batch(msg)).is_ok());
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
                if tracer.run_of(t.pid) != 0 {
                    return Err(crate::kernel::tracer::TracerError::Btf(format!(
                        "process {} is tracked already",
                        t.pid
                    )));
                }
                tracer.track(t.pid, id, t.syscalls)
            })()
        };
        if let Err(e) = tracked {
            self.collector.remove(id);
            self.close_run(&run);
            return Err(e.to_string());
        }
        Ok(run)
    }

    fn close_run(&self, run: &OpenRun) {
        if let Ok(cg) = &run.cgroup {
            cg.remove();
        }
        let mut tracer = lock(&self.tracer);
        tracer.close_run(run.id);
        let mut runs = lock(&self.runs);
        runs.used.remove(&run.id);
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
    cgroup: Result<RunCgroup, String>,
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

/// Binds the socket with mode 0666 (set through the umask, so it never has
/// another), replacing a stale one; a live one is another daemon.
fn bind(path: &Path) -> Result<UnixListener, NodeError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let err = |what, source| NodeError::Socket {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
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
                "another node tracer listens on",
                std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        }
        std::fs::remove_file(path).map_err(|e| err("removing the stale", e))?;
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o111));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound.map_err(|e| err("binding", e))
}
