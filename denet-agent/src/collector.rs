//! The collector thread: reads the lifecycle ring buffer into the [`Tracker`] and
//! hands finished processes to the run loop.

use std::{
    os::fd::AsFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use aya::maps::{MapData, RingBuf};
use denet_common::{
    read_event, read_event_prefix, EventHeader, ExecEvent, ExitEvent, ForkEvent, EVENT_EXEC,
    EVENT_EXIT, EVENT_FORK,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::mpsc::UnboundedSender;

use crate::tracker::{ProcessInfo, Tracker};

/// Bytes of an exec event before its variable-length argv.
const EXEC_FIXED_LEN: usize = std::mem::offset_of!(ExecEvent, argv);

/// What the collector tells the run loop.
#[derive(Debug)]
pub enum CollectorMsg {
    /// A tracked process appeared (fork seen).
    Started { pid: u32 },
    /// A tracked process is finished and its record complete (or, at the end of the
    /// run, as complete as it will get).
    Finished(Box<ProcessInfo>),
}

/// Totals the collector reports when it stops.
#[derive(Debug, Default, Clone)]
pub struct CollectorReport {
    pub events_received: u64,
    pub malformed_events: u64,
    pub processes_started: u64,
}

pub struct CollectorHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<CollectorReport>>,
}

impl CollectorHandle {
    /// Asks the collector to drain everything still queued, flush open processes and
    /// stop; returns its totals.
    pub fn finish(mut self) -> CollectorReport {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(report)) => report,
            _ => CollectorReport::default(),
        }
    }
}

struct Collector {
    ring: RingBuf<MapData>,
    tracker: Tracker,
    tx: UnboundedSender<CollectorMsg>,
    report: CollectorReport,
    done: Vec<ProcessInfo>,
}

/// Starts the collector thread. `tracker` already holds the root process.
pub fn spawn(
    ring: RingBuf<MapData>,
    tracker: Tracker,
    tx: UnboundedSender<CollectorMsg>,
) -> std::io::Result<CollectorHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let collector = Collector {
        ring,
        tracker,
        tx,
        report: CollectorReport::default(),
        done: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("denet-collector".into())
        .spawn(move || collector.run(&stop_flag))?;
    Ok(CollectorHandle {
        stop,
        thread: Some(thread),
    })
}

impl Collector {
    fn run(mut self, stop: &AtomicBool) -> CollectorReport {
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if !stopping {
                let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
                // EINTR or a poll error: the drain below reads whatever is there anyway.
                let _ = poll(&mut fds, PollTimeout::from(50u16));
            }
            let read = self.drain_ring();
            for p in self.done.drain(..) {
                let _ = self.tx.send(CollectorMsg::Finished(Box::new(p)));
            }
            if stopping && read == 0 {
                break;
            }
        }
        for p in self.tracker.flush() {
            let _ = self.tx.send(CollectorMsg::Finished(Box::new(p)));
        }
        self.report.processes_started = self.tracker.started;
        self.report
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
                        self.tracker.on_fork(&ev, &mut self.done);
                        let _ = self.tx.send(CollectorMsg::Started {
                            pid: ev.header.tgid,
                        });
                    }
                    None => self.report.malformed_events += 1,
                },
                EVENT_EXEC => match read_event_prefix::<ExecEvent>(bytes, EXEC_FIXED_LEN) {
                    Some(ev) => self.tracker.on_exec(&ev),
                    None => self.report.malformed_events += 1,
                },
                EVENT_EXIT => match read_event::<ExitEvent>(bytes) {
                    Some(ev) => self.tracker.on_exit(&ev, &mut self.done),
                    None => self.report.malformed_events += 1,
                },
                _ => self.report.malformed_events += 1,
            }
        }
        n
    }
}
