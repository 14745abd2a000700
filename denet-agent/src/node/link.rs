//! The `run` side of the node tracer: asks the daemon to track the held command,
//! then feeds the run loop the daemon's batches, answers the sampler's and the run
//! loop's questions through it, and says so when the daemon goes away.

use std::{
    io::BufReader,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::sync::mpsc::UnboundedSender;

use super::protocol::{self, Reply, Request, RunInfo, TrackRequest, MAX_REPLY_BYTES};
use crate::{
    kernel::counters::ProcDepth,
    process::{collector::CollectorMsg, sampler::LiveCounters},
};

/// How long an answer may take (the daemon answers from memory and its maps).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// How long the end of a run may take (the last records are drained first).
const FINISH_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the node tracer refused: {0}")]
    Refused(String),
    #[error("talking to the node tracer: {0}")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("the node tracer did not answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the node tracer went away: {0}")]
    Gone(String),
    #[error("the node tracer answered out of turn")]
    Unexpected,
}

/// What the daemon granted.
#[derive(Debug, Clone)]
pub struct Granted {
    pub files: bool,
    pub syscalls: bool,
    pub events: bool,
    /// The run's cgroup, or why it has none.
    pub cgroup: Result<String, String>,
}

pub use super::protocol::Finished;

struct Shared {
    writer: Mutex<UnixStream>,
    /// Answers to requests (batches go to the run loop directly).
    answers: Mutex<Option<mpsc::Receiver<Reply>>>,
    /// Why the link broke, once it has.
    broken: Mutex<Option<String>>,
    finishing: AtomicBool,
    syscalls: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Sends a request and waits for its answer.
    fn ask(&self, request: &Request, within: Duration) -> Result<Reply, LinkError> {
        if let Some(why) = lock(&self.broken).clone() {
            return Err(LinkError::Gone(why));
        }
        let answers = lock(&self.answers);
        let Some(answers) = answers.as_ref() else {
            return Err(LinkError::Unexpected);
        };
        protocol::send(&mut *lock(&self.writer), request)?;
        match answers.recv_timeout(within) {
            Ok(reply) => Ok(reply),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(LinkError::NoAnswer(within)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(LinkError::Gone(
                lock(&self.broken)
                    .clone()
                    .unwrap_or_else(|| "the connection closed".into()),
            )),
        }
    }
}

/// The runs the node daemon at `socket` traces that the caller may see (its own;
/// root's: all), as the kernel identifies the caller.
pub fn list_runs(socket: &Path) -> Result<Vec<RunInfo>, LinkError> {
    let mut stream = UnixStream::connect(socket).map_err(protocol::ProtocolError::from)?;
    let _ = stream.set_read_timeout(Some(ANSWER_WITHIN));
    protocol::send(&mut stream, &Request::ListRuns)?;
    let mut reader = BufReader::new(stream);
    match protocol::receive::<Reply>(&mut reader, MAX_REPLY_BYTES)? {
        Reply::Runs { runs } => Ok(runs),
        Reply::Refused { reason } => Err(LinkError::Refused(reason)),
        _ => Err(LinkError::Unexpected),
    }
}

/// A connection to the node tracer, for one run.
pub struct NodeLink {
    shared: Arc<Shared>,
    reader: Option<BufReader<UnixStream>>,
    thread: Option<JoinHandle<()>>,
    pub granted: Option<Granted>,
}

impl NodeLink {
    /// Connects to the daemon's socket; an error when no daemon listens there.
    pub fn connect(socket: &Path) -> std::io::Result<NodeLink> {
        let stream = UnixStream::connect(socket)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(NodeLink {
            shared: Arc::new(Shared {
                writer: Mutex::new(stream),
                answers: Mutex::new(None),
                broken: Mutex::new(None),
                finishing: AtomicBool::new(false),
                syscalls: false,
            }),
            reader: Some(reader),
            thread: None,
            granted: None,
        })
    }

    /// Asks the daemon to track `request.pid` (our child, held before exec).
    pub fn track(&mut self, request: TrackRequest) -> Result<Granted, LinkError> {
        let reader = self.reader.as_mut().ok_or(LinkError::Unexpected)?;
        protocol::send(
            &mut *lock(&self.shared.writer),
            &Request::Track(Box::new(request)),
        )?;
        let stream = reader.get_ref();
        let _ = stream.set_read_timeout(Some(ANSWER_WITHIN));
        let reply = protocol::receive::<Reply>(reader, MAX_REPLY_BYTES);
        let _ = reader.get_ref().set_read_timeout(None);
        match reply? {
            Reply::Tracked {
                files,
                syscalls,
                events,
                cgroup,
                ..
            } => {
                let granted = Granted {
                    files,
                    syscalls,
                    events,
                    cgroup,
                };
                if let Some(shared) = Arc::get_mut(&mut self.shared) {
                    shared.syscalls = syscalls;
                }
                self.granted = Some(granted.clone());
                Ok(granted)
            }
            Reply::Refused { reason } => Err(LinkError::Refused(reason)),
            _ => Err(LinkError::Unexpected),
        }
    }

    /// Starts passing the run's batches to `tx`; a broken link sends one last message
    /// with its `failure`.
    pub fn start(&mut self, tx: UnboundedSender<CollectorMsg>) -> std::io::Result<()> {
        let Some(mut reader) = self.reader.take() else {
            return Ok(());
        };
        let (answers_tx, answers_rx) = mpsc::channel();
        *lock(&self.shared.answers) = Some(answers_rx);
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("denet-node-link".into())
            .spawn(move || loop {
                match protocol::receive::<Reply>(&mut reader, MAX_REPLY_BYTES) {
                    Ok(Reply::Batch(msg)) => {
                        let _ = tx.send(*msg);
                    }
                    Ok(other) => {
                        let _ = answers_tx.send(other);
                    }
                    Err(e) => {
                        if !shared.finishing.load(Ordering::SeqCst) {
                            let why = e.to_string();
                            *lock(&shared.broken) = Some(why.clone());
                            let _ = tx.send(CollectorMsg {
                                failure: Some(why),
                                ..Default::default()
                            });
                        }
                        return;
                    }
                }
            })?;
        self.thread = Some(thread);
        Ok(())
    }

    /// The live counters, for the sampler.
    pub fn live_counters(&self) -> Box<dyn LiveCounters> {
        Box::new(NodeLive(self.shared.clone()))
    }

    /// The run's processes in the kernel's tracked set (none once the link broke).
    pub fn tracked_pids(&self) -> Vec<u32> {
        match self.shared.ask(&Request::TrackedPids, ANSWER_WITHIN) {
            Ok(Reply::TrackedPids { pids }) => pids,
            _ => Vec::new(),
        }
    }

    pub fn untrack(&self, pid: u32) {
        // No answer comes: a failure shows as a broken link on the next request.
        let _ = protocol::send(&mut *lock(&self.shared.writer), &Request::Untrack { pid });
    }

    /// Ends the run: the daemon sends the last batches, then the totals.
    pub fn finish(mut self) -> Result<Finished, LinkError> {
        self.shared.finishing.store(true, Ordering::SeqCst);
        let reply = self.shared.ask(&Request::Finish, FINISH_WITHIN);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match reply? {
            Reply::Finished(finished) => Ok(*finished),
            _ => Err(LinkError::Unexpected),
        }
    }
}

struct NodeLive(Arc<Shared>);

impl LiveCounters for NodeLive {
    fn read_live(&mut self, pids: &[u32], _now_mono_ns: u64) -> Vec<Option<ProcDepth>> {
        let request = Request::Live {
            pids: pids.to_vec(),
        };
        let mut by_pid: std::collections::HashMap<u32, ProcDepth> =
            match self.0.ask(&request, ANSWER_WITHIN) {
                Ok(Reply::Live { readings }) => readings.into_iter().collect(),
                _ => Default::default(),
            };
        pids.iter().map(|pid| by_pid.remove(pid)).collect()
    }

    fn counts_syscalls(&self) -> bool {
        self.0.syscalls
    }
}
