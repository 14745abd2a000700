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
use denet_common::{KernelEvent, Malformed, TASK_BLOCKED_IO, TASK_RUNNABLE, TASK_RUNNING};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::mpsc::UnboundedSender;

use super::{
    files::FileTracker,
    tracker::{ProcessInfo, Tracker},
};
use crate::{
    kernel::counters::StatsMaps,
    trace::format::{EventRecord, FileRecord},
};

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
        loop {
            // Decoded into owned values, so the ring slot is released before use.
            let decoded = match self.ring.next() {
                Some(item) => KernelEvent::decode(&item),
                None => break,
            };
            n += 1;
            match decoded {
                Ok(event) => {
                    self.report.events_received += 1;
                    self.on_event(event);
                }
                // A record with a readable header was received (its sequence number
                // is accounted for), just not usable: count it once, as malformed.
                Err(Malformed::UnknownKind(_) | Malformed::Short { .. }) => {
                    self.report.events_received += 1;
                    self.report.malformed_events += 1;
                }
                Err(Malformed::NoHeader { .. }) => self.report.malformed_events += 1,
            }
        }
        n
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
            KernelEvent::FileOpen(ev) => self.files.on_open(&ev),
            KernelEvent::Chdir(ev) => self.files.on_chdir(&ev),
            KernelEvent::FileDup(ev) => self.files.on_dup(&ev),
            KernelEvent::FileClose(ev) => self.batch.files.extend(self.files.on_close(&ev)),
            KernelEvent::RawSched(ev) => self.batch.events.push(EventRecord {
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
            KernelEvent::RawBlock(ev) => self.batch.events.push(EventRecord {
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
        }
    }
}
