//! The collector thread: reads the lifecycle ring buffer into the [`Tracker`] and
//! hands finished processes to the run loop.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};
use denet_common::{
    read_event, read_event_prefix, EventHeader, ExecEvent, ExitEvent, FileCloseEvent, FileDupEvent,
    FileOpenEvent, ForkEvent, EVENT_CHDIR, EVENT_EXEC, EVENT_EXIT, EVENT_FILE_CLOSE,
    EVENT_FILE_DUP, EVENT_FILE_OPEN, EVENT_FORK,
};
use denet_common::{
    BlockIoEvent, SchedSpanEvent, EVENT_RAW_BLOCK, EVENT_RAW_SCHED, TASK_BLOCKED_IO, TASK_RUNNABLE,
    TASK_RUNNING,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    files::FileTracker,
    kstats::StatsMaps,
    record::{EventRecord, FileRecord},
    tracker::{ProcessInfo, Tracker},
};

/// Bytes of an exec event before its variable-length argv.
const EXEC_FIXED_LEN: usize = std::mem::offset_of!(ExecEvent, argv);
/// Bytes of a file-open event before its variable-length path.
const FILE_OPEN_FIXED_LEN: usize = std::mem::offset_of!(FileOpenEvent, path);

/// What the collector tells the run loop, once per pass over the ring buffer.
#[derive(Debug, Default)]
pub struct CollectorMsg {
    /// Tracked processes that appeared (fork seen).
    pub started: Vec<u32>,
    /// Finished processes with complete records (or, at the end of the run, as
    /// complete as they will get).
    pub finished: Vec<ProcessInfo>,
    /// Files closed (or left open by exited processes).
    pub files: Vec<FileRecord>,
    /// Raw events (`--events`).
    pub events: Vec<EventRecord>,
}

/// How long the collector sleeps between passes when the kernel does not wake it
/// (it wakes the agent only when a lot is waiting, see the eBPF side): 10 ms while
/// events flow, doubling up to 160 ms while the tree is quiet.
const POLL_MIN_MS: u16 = 10;
const POLL_MAX_MS: u16 = 160;

/// Totals the collector reports when it stops.
#[derive(Debug, Default, Clone)]
pub struct CollectorReport {
    pub events_received: u64,
    pub malformed_events: u64,
}

pub struct CollectorHandle {
    stop: Arc<AtomicBool>,
    /// Write end of a pipe the collector polls, to wake it for the final drain.
    wake: OwnedFd,
    thread: Option<JoinHandle<CollectorReport>>,
}

impl CollectorHandle {
    /// Asks the collector to drain everything still queued, flush open processes and
    /// stop; returns its totals.
    pub fn finish(mut self) -> CollectorReport {
        self.stop.store(true, Ordering::SeqCst);
        // A failed write only means the collector is not sleeping in poll.
        let _ = nix::unistd::write(&self.wake, b"x");
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            _ => CollectorReport::default(),
        }
    }
}

struct Collector {
    ring: RingBuf<MapData>,
    wake: OwnedFd,
    tracker: Tracker,
    files: FileTracker,
    stats: Option<StatsMaps>,
    /// Processes finished in this pass, before their kernel counters are attached.
    exited: Vec<ProcessInfo>,
    tx: UnboundedSender<CollectorMsg>,
    report: CollectorReport,
    batch: CollectorMsg,
}

/// Starts the collector thread. `tracker` already holds the root process.
pub fn spawn(
    ring: RingBuf<MapData>,
    tracker: Tracker,
    files: FileTracker,
    stats: Option<StatsMaps>,
    tx: UnboundedSender<CollectorMsg>,
) -> std::io::Result<CollectorHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let (wake_r, wake_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let collector = Collector {
        ring,
        wake: wake_r,
        tracker,
        files,
        stats,
        exited: Vec::new(),
        tx,
        report: CollectorReport::default(),
        batch: CollectorMsg::default(),
    };
    let thread = std::thread::Builder::new()
        .name("denet-collector".into())
        .spawn(move || collector.run(&stop_flag))?;
    Ok(CollectorHandle {
        stop,
        wake: wake_w,
        thread: Some(thread),
    })
}

impl Collector {
    fn run(mut self, stop: &AtomicBool) -> CollectorReport {
        let mut poll_ms = POLL_MIN_MS;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if !stopping {
                let mut fds = [
                    PollFd::new(self.ring.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
                ];
                // EINTR or a poll error: the drain below reads whatever is there anyway.
                let _ = poll(&mut fds, PollTimeout::from(poll_ms));
            }
            let read = self.drain_ring();
            self.complete_exited();
            poll_ms = if read > 0 {
                POLL_MIN_MS
            } else {
                (poll_ms * 2).min(POLL_MAX_MS)
            };
            self.send_batch();
            if stopping && read == 0 {
                break;
            }
        }
        self.exited = self.tracker.flush();
        self.complete_exited();
        self.send_batch();
        self.report
    }

    /// Attaches the kernel counters of processes that exited in this pass and closes
    /// out the files they still had open.
    fn complete_exited(&mut self) {
        for mut p in std::mem::take(&mut self.exited) {
            if let Some(stats) = &mut self.stats {
                p.depth = stats.take(p.pid);
                let pid = p.pid;
                let files = self
                    .files
                    .on_exit(pid, p.end_boot_ns, |fd| stats.take_file(pid, fd));
                self.batch.files.extend(files);
            }
            self.batch.finished.push(p);
        }
    }

    fn send_batch(&mut self) {
        if !self.batch.started.is_empty()
            || !self.batch.finished.is_empty()
            || !self.batch.files.is_empty()
            || !self.batch.events.is_empty()
        {
            // The receiver is gone only when the run loop has ended.
            let _ = self.tx.send(std::mem::take(&mut self.batch));
        }
    }

    fn drain_ring(&mut self) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            let bytes: &[u8] = &item;
            let Some(header) = read_event::<EventHeader>(bytes) else {
                self.report.malformed_events += 1;
                continue;
            };
            self.report.events_received += 1;
            match header.kind {
                EVENT_FORK => match read_event::<ForkEvent>(bytes) {
                    Some(ev) => {
                        self.tracker.on_fork(&ev, &mut self.exited);
                        self.files
                            .on_fork(ev.parent_tgid, ev.header.tgid, ev.header.ts_ns);
                        self.batch.started.push(ev.header.tgid);
                    }
                    None => self.report.malformed_events += 1,
                },
                EVENT_EXEC => match read_event_prefix::<ExecEvent>(bytes, EXEC_FIXED_LEN) {
                    Some(ev) => self.tracker.on_exec(&ev),
                    None => self.report.malformed_events += 1,
                },
                EVENT_EXIT => match read_event::<ExitEvent>(bytes) {
                    Some(ev) => self.tracker.on_exit(&ev, &mut self.exited),
                    None => self.report.malformed_events += 1,
                },
                EVENT_FILE_OPEN => {
                    match read_event_prefix::<FileOpenEvent>(bytes, FILE_OPEN_FIXED_LEN) {
                        Some(ev) => self.files.on_open(&ev),
                        None => self.report.malformed_events += 1,
                    }
                }
                EVENT_CHDIR => match read_event_prefix::<FileOpenEvent>(bytes, FILE_OPEN_FIXED_LEN)
                {
                    Some(ev) => self.files.on_chdir(&ev),
                    None => self.report.malformed_events += 1,
                },
                EVENT_RAW_SCHED => match read_event::<SchedSpanEvent>(bytes) {
                    Some(ev) => self.batch.events.push(EventRecord {
                        kind: "event",
                        event_type: "sched",
                        ts_boot_ns: ev.header.ts_ns,
                        pid: ev.header.tgid,
                        tid: ev.header.pid,
                        cpu: ev.header.cpu,
                        state: Some(match ev.state {
                            TASK_RUNNING => "running",
                            TASK_RUNNABLE => "runnable",
                            TASK_BLOCKED_IO => "io_wait",
                            _ => "sleep",
                        }),
                        duration_ns: ev.duration_ns,
                        op: None,
                        bytes: None,
                    }),
                    None => self.report.malformed_events += 1,
                },
                EVENT_RAW_BLOCK => match read_event::<BlockIoEvent>(bytes) {
                    Some(ev) => self.batch.events.push(EventRecord {
                        kind: "event",
                        event_type: "block",
                        ts_boot_ns: ev.header.ts_ns,
                        pid: ev.header.tgid,
                        tid: ev.header.pid,
                        cpu: ev.header.cpu,
                        state: None,
                        duration_ns: ev.latency_ns,
                        op: Some(if ev.op == 0 { "read" } else { "write" }),
                        bytes: Some(ev.bytes),
                    }),
                    None => self.report.malformed_events += 1,
                },
                EVENT_FILE_DUP => match read_event::<FileDupEvent>(bytes) {
                    Some(ev) => self.files.on_dup(&ev),
                    None => self.report.malformed_events += 1,
                },
                EVENT_FILE_CLOSE => match read_event::<FileCloseEvent>(bytes) {
                    Some(ev) => self.batch.files.extend(self.files.on_close(&ev)),
                    None => self.report.malformed_events += 1,
                },
                _ => self.report.malformed_events += 1,
            }
        }
        n
    }
}
