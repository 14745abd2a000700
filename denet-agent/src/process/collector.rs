//! The collector thread: reads the lifecycle ring buffer, hands each event to the
//! run it belongs to (the run id in its header), and passes each run's finished
//! processes, files and raw events on in batches. A standalone `run` has one run; the
//! node daemon has one per client, all fed from one ring buffer.

use std::{
    collections::HashMap,
    os::fd::{AsFd, OwnedFd},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use denet_common::{KernelEvent, Malformed, TASK_BLOCKED_IO, TASK_RUNNABLE, TASK_RUNNING};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde_json::value::RawValue;

use super::{
    files::FileTracker,
    tracker::{ProcessInfo, Tracker},
};
use crate::{
    kernel::counters::StatsMaps,
    trace::{records::Kind, writer::to_line, EventRecord},
};

/// What the collector tells a run, once per pass over the ring buffer. Files and raw
/// events come as their finished trace lines, so the node daemon can pass them on
/// as they are.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CollectorMsg {
    /// Tracked processes that appeared (fork seen).
    pub started: Vec<u32>,
    /// Finished processes with complete records (or, at the end of the run, as
    /// complete as they will get).
    pub finished: Vec<ProcessInfo>,
    /// `file` records: files closed (or left open by exited processes).
    pub files: Vec<Box<RawValue>>,
    /// `event` records (`--events`).
    pub events: Vec<Box<RawValue>>,
    /// The source of these messages failed (the node daemon went away): nothing
    /// more will come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl CollectorMsg {
    fn is_empty(&self) -> bool {
        self.started.is_empty()
            && self.finished.is_empty()
            && self.files.is_empty()
            && self.events.is_empty()
            && self.failure.is_none()
    }
}

/// How long the collector sleeps between passes when the kernel does not wake it
/// (it wakes the agent only when a lot is waiting, see the eBPF side): 10 ms while
/// events flow, doubling up to 160 ms while the tree is quiet.
const POLL_MIN_MS: u16 = 10;
const POLL_MAX_MS: u16 = 160;

/// A run's totals when it leaves the collector.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct CollectorReport {
    pub events_received: u64,
    pub malformed_events: u64,
}

/// Where a run's batches go. False: nobody takes them any more (the run ended,
/// or its reader fell too far behind); the run is then dropped.
pub type Sink = Box<dyn FnMut(CollectorMsg) -> bool + Send>;

/// One run's share of the collector: its process table, its files, and its sink.
pub struct RunCollector {
    tracker: Tracker,
    files: FileTracker,
    /// Processes finished in this pass, before their kernel counters are attached.
    exited: Vec<ProcessInfo>,
    batch: CollectorMsg,
    report: CollectorReport,
    sink: Sink,
}

impl RunCollector {
    /// `tracker` already holds the run's root process.
    pub fn new(tracker: Tracker, files: FileTracker, sink: Sink) -> Self {
        RunCollector {
            tracker,
            files,
            exited: Vec::new(),
            batch: CollectorMsg::default(),
            report: CollectorReport::default(),
            sink,
        }
    }

    fn on_event(&mut self, event: KernelEvent) {
        match event {
            KernelEvent::Fork(ev) => {
                self.tracker.on_fork(&ev, &mut self.exited);
                self.files
                    .on_fork(ev.parent_tgid, ev.header.tgid, ev.header.ts_ns);
                self.batch.started.push(ev.header.tgid);
            }
            KernelEvent::Exec(ev) => self.tracker.on_exec(&ev),
            KernelEvent::Exit(ev) => self.tracker.on_exit(&ev, &mut self.exited),
            KernelEvent::OomKill(ev) => self.tracker.on_oom(&ev),
            KernelEvent::FileOpen(ev) => self.files.on_open(&ev),
            KernelEvent::Chdir(ev) => self.files.on_chdir(&ev),
            KernelEvent::FileDup(ev) => self.files.on_dup(&ev),
            KernelEvent::FileClose(ev) => {
                if let Some(f) = self.files.on_close(&ev) {
                    push_line(&mut self.batch.files, &f);
                }
            }
            KernelEvent::RawSched(ev) => push_line(
                &mut self.batch.events,
                &EventRecord {
                    event_type: "sched".into(),
                    ts_boot_ns: Some(ev.header.ts_ns),
                    pid: Some(ev.header.tgid),
                    tid: Some(ev.header.pid),
                    cpu: Some(ev.header.cpu),
                    state: Some(
                        match ev.state {
                            TASK_RUNNING => "running",
                            TASK_RUNNABLE => "runnable",
                            TASK_BLOCKED_IO => "io_wait",
                            _ => "sleep",
                        }
                        .into(),
                    ),
                    duration_ns: Some(ev.duration_ns),
                    op: None,
                    bytes: None,
                },
            ),
            KernelEvent::RawBlock(ev) => push_line(
                &mut self.batch.events,
                &EventRecord {
                    event_type: "block".into(),
                    ts_boot_ns: Some(ev.header.ts_ns),
                    pid: Some(ev.header.tgid),
                    tid: Some(ev.header.pid),
                    cpu: Some(ev.header.cpu),
                    state: None,
                    duration_ns: Some(ev.latency_ns),
                    op: Some(if ev.op == 0 { "read" } else { "write" }.into()),
                    bytes: Some(ev.bytes.into()),
                },
            ),
        }
    }

    /// Attaches the kernel counters of processes that exited in this pass and closes
    /// out the files they still had open.
    fn complete_exited(&mut self, stats: &mut Option<StatsMaps>) {
        for mut p in std::mem::take(&mut self.exited) {
            if let Some(stats) = stats {
                p.depth = stats.take(p.pid);
                let pid = p.pid;
                let files = self
                    .files
                    .on_exit(pid, p.end_boot_ns, |fd| stats.take_file(pid, fd));
                for f in &files {
                    push_line(&mut self.batch.files, f);
                }
            }
            self.batch.finished.push(p);
        }
    }

    /// Passes the batch on; false when the sink refused it.
    fn send_batch(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        (self.sink)(std::mem::take(&mut self.batch))
    }

    /// The end of the run: everything still open is flushed as it is.
    fn finish(mut self, stats: &mut Option<StatsMaps>) -> CollectorReport {
        self.complete_exited(stats);
        self.exited = self.tracker.flush();
        self.complete_exited(stats);
        self.send_batch();
        self.report
    }
}

/// A record as its finished trace line (serializing these types cannot fail).
fn push_line<T: Kind + serde::Serialize>(to: &mut Vec<Box<RawValue>>, record: &T) {
    // Serializing a record into memory fails only on a non-string map key, which
    // no record has.
    if let Ok(line) = to_line(record) {
        to.push(line);
    }
}

enum Command {
    /// Add the run and say so: its process may be tracked once it is in.
    Add(u32, Box<RunCollector>, mpsc::Sender<()>),
    /// Drain what the kernel has, flush the run and answer with its totals.
    Remove(u32, mpsc::Sender<CollectorReport>),
    Stop,
}

/// The collector thread, driven from outside.
pub struct CollectorHandle {
    commands: mpsc::Sender<Command>,
    /// Write end of a pipe the collector polls, to wake it for a command.
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

/// Starts the collector thread on the ring buffer with the runs it serves from the
/// start (what the kernel already sent for them is theirs); more are added with
/// [`CollectorHandle::add`].
pub fn spawn(
    ring: RingBuf<MapData>,
    stats: Option<StatsMaps>,
    runs: Vec<(u32, RunCollector)>,
) -> std::io::Result<CollectorHandle> {
    let (wake_r, wake_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let (tx, rx) = mpsc::channel();
    let collector = Collector {
        ring,
        wake: wake_r,
        stats,
        runs: runs.into_iter().collect(),
        commands: rx,
        unattributed: 0,
    };
    let thread = std::thread::Builder::new()
        .name("denet-collector".into())
        .spawn(move || collector.run())?;
    Ok(CollectorHandle {
        commands: tx,
        wake: wake_w,
        thread: Some(thread),
    })
}

impl CollectorHandle {
    fn send(&self, command: Command) {
        // The collector is gone only after a stop.
        let _ = self.commands.send(command);
        // A failed write only means the collector is not sleeping in poll.
        let _ = nix::unistd::write(&self.wake, b"x");
    }

    /// Events of `run` go to `collector` from now on; returns once the collector
    /// holds it, so no event of the run can come before.
    pub fn add(&self, run: u32, collector: RunCollector) {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Add(run, Box::new(collector), tx));
        let _ = rx.recv_timeout(Duration::from_secs(30));
    }

    /// Drains everything the kernel has sent so far, flushes `run` (processes still
    /// open are sent as they are) and returns its totals.
    pub fn remove(&self, run: u32) -> CollectorReport {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Remove(run, tx));
        rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default()
    }

    /// Stops the thread (runs still in it are flushed first).
    pub fn stop(mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Collector {
    ring: RingBuf<MapData>,
    wake: OwnedFd,
    stats: Option<StatsMaps>,
    runs: HashMap<u32, RunCollector>,
    commands: mpsc::Receiver<Command>,
    /// Records that named no known run, or had no readable header with several
    /// runs present.
    unattributed: u64,
}

impl Collector {
    fn run(mut self) {
        let mut poll_ms = POLL_MIN_MS;
        loop {
            let mut fds = [
                PollFd::new(self.ring.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            // EINTR or a poll error: the drain below reads whatever is there anyway.
            let _ = poll(&mut fds, PollTimeout::from(poll_ms));
            if fds[1].any().unwrap_or(false) {
                let mut buf = [0u8; 64];
                let _ = nix::unistd::read(&self.wake, &mut buf);
            }
            // Commands first: a run added now must get the events already waiting.
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    Command::Add(run, c, added) => {
                        self.runs.insert(run, *c);
                        let _ = added.send(());
                    }
                    Command::Remove(run, reply) => {
                        self.drain_for_a_while();
                        // A run dropped earlier (its sink refused) has nothing left:
                        // its totals say so (nothing received).
                        let report = match self.runs.remove(&run) {
                            Some(c) => c.finish(&mut self.stats),
                            None => CollectorReport::default(),
                        };
                        let _ = reply.send(report);
                    }
                    Command::Stop => {
                        self.drain_for_a_while();
                        for (_, c) in std::mem::take(&mut self.runs) {
                            c.finish(&mut self.stats);
                        }
                        if self.unattributed > 0 {
                            use std::io::Write;
                            let _ = writeln!(
                                std::io::stderr(),
                                "denet-agent: {} kernel records belonged to no run",
                                self.unattributed
                            );
                        }
                        return;
                    }
                }
            }
            let read = self.pass();
            poll_ms = if read > 0 {
                POLL_MIN_MS
            } else {
                (poll_ms * 2).min(POLL_MAX_MS)
            };
        }
    }

    /// Passes until the ring is empty, or for a bounded while: other runs' processes
    /// may keep it busy for good (a fork loop), and the other commands must not wait.
    fn drain_for_a_while(&mut self) {
        let until = std::time::Instant::now() + Duration::from_millis(200);
        while self.pass() > 0 && std::time::Instant::now() < until {}
    }

    /// One pass: drain the ring, complete exits, send every run's batch.
    fn pass(&mut self) -> usize {
        let read = self.drain_ring();
        let mut refused = Vec::new();
        for (run, c) in &mut self.runs {
            c.complete_exited(&mut self.stats);
            if !c.send_batch() {
                refused.push(*run);
            }
        }
        // Nobody reads these runs any more: stop keeping their state.
        for run in refused {
            self.runs.remove(&run);
        }
        read
    }

    /// The run a record belongs to. A record without a readable header goes to the
    /// only run when there is one (a standalone `run`).
    fn route(&mut self, run: Option<u32>) -> Option<&mut RunCollector> {
        match run {
            Some(run) => self.runs.get_mut(&run),
            None if self.runs.len() == 1 => self.runs.values_mut().next(),
            None => None,
        }
    }

    fn drain_ring(&mut self) -> usize {
        let mut n = 0;
        loop {
            // Decoded into owned values, so the ring slot is released before use.
            let decoded = match self.ring.next() {
                Some(item) => KernelEvent::decode(&item),
                None => break,
            };
            n += 1;
            let (run, event, malformed) = match decoded {
                Ok(event) => (Some(event.header().run), Some(event), false),
                // A record with a readable header was received (its sequence number
                // is accounted for), just not usable: counted once, as malformed.
                Err(Malformed::UnknownKind { run, .. } | Malformed::Short { run, .. }) => {
                    (Some(run), None, true)
                }
                Err(Malformed::NoHeader { .. }) => (None, None, true),
            };
            let Some(c) = self.route(run) else {
                self.unattributed += 1;
                continue;
            };
            if run.is_some() {
                c.report.events_received += 1;
            }
            if malformed {
                c.report.malformed_events += 1;
            }
            if let Some(event) = event {
                c.on_event(event);
            }
        }
        n
    }
}
