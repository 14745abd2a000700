//! The run loop, one job: from the released command to the summary. It merges the
//! kernel's records and the samples into the trace, reaps, forwards signals, obeys
//! the driver's requests and the timeout, and writes the summary once the command
//! and every descendant are gone.
//!
//! One job, one file: every branch of the loop reads and writes the same run
//! state, so they are kept together.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use super::{
    attach::{launch_cwd, Kernel, RunCg, Tracer},
    clock,
    config::{RunConfig, RunOutcome},
    control::Control,
    say, warn,
};
use crate::{
    cgroup::Usage,
    kernel::tracer::STANDALONE_RUN,
    node::link::Finished,
    process::{
        collector::{self, CollectorMsg, RunCollector},
        files::FileTracker,
        proc_tree::ProcTree,
        procfs,
        sampler::{AdaptiveInterval, Sampler},
        tracker::Tracker,
    },
    task::{Marks, Resolver, RunTasks},
    trace::{writer::JsonlWriter, OomVictim, Process, Summary},
};

/// The signals the run loop handles, registered before the command starts.
pub(super) struct Signals {
    sigchld: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs the runtime entered.
    pub(super) fn new() -> Result<Self> {
        Ok(Signals {
            sigchld: signal(SignalKind::child()).context("SIGCHLD handler")?,
            sigint: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }
}

/// Escalation of a timeout: SIGTERM to the whole tree, SIGKILL after the grace period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum KillStage {
    None,
    Terminated { kill_at: Instant },
    Killed,
}

/// Waits for the next control request; never resolves without a channel.
async fn next_control(control: &mut Option<mpsc::UnboundedReceiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) struct RunState {
    pid: u32,
    start_ns: u64,
    tracer: Option<Tracer>,
    collector: Option<collector::CollectorHandle>,
    rx: mpsc::UnboundedReceiver<CollectorMsg>,
    proc_tree: Option<ProcTree>,
    /// The kernel records' channel still has a sender.
    feed_open: bool,
    live: HashSet<u32>,
    out: JsonlWriter,
    sampler: Sampler,
    interval: AdaptiveInterval,
    summary: Summary,
    root_status: Option<u32>,
    no_children: bool,
    kill_stage: KillStage,
    /// Grace between SIGTERM and SIGKILL of the escalation under way.
    grace: Duration,
    paused: bool,
    cgroup: RunCg,
    /// The file the command's stderr goes to (`--stderr FILE`): its failure excerpt
    /// goes in the summary when the run fails.
    stderr_file: Option<std::path::PathBuf>,
    /// Names each process record's task.
    tasks: Resolver,
    /// Following a process that is not our child (a Slurm task): never signalled,
    /// its exit taken from the kernel's record.
    adopted: bool,
    /// An adopted run asked to stop following (SIGTERM to the recorder).
    stop_following: bool,
    /// When an adopted root was first found gone without its exit record, and
    /// whether the wait for that record is over (it is then counted, once).
    root_vanished_at: Option<Instant>,
    root_exit_unseen: bool,
    /// The command's task marks (for a /proc fallback started late).
    root_marks: Marks,
}

/// How long an adopted run waits for the exit record of a root that is gone.
const ADOPTED_EXIT_RECORD_WAIT: Duration = Duration::from_secs(2);

impl RunState {
    pub(super) fn new(
        config: &RunConfig,
        pid: u32,
        start_ns: u64,
        mut kernel: Kernel,
        out: JsonlWriter,
        tasks: &RunTasks,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut live = HashSet::new();
        live.insert(pid);
        let mut collector = None;
        let mut proc_tree = None;
        let mut live_counters: Option<Box<dyn crate::process::sampler::LiveCounters>> = None;
        match kernel.tracer.as_mut() {
            Some(Tracer::Own(tracer)) => {
                let (Some(ring), Some((collector_stats, sampler_stats))) =
                    (tracer.take_events(), tracer.take_stats())
                else {
                    anyhow::bail!("the kernel programs' maps were handed out twice");
                };
                let mut tracker = Tracker::new(procfs::clock_ticks_and_page_kb().1);
                tracker.add_root(
                    pid,
                    std::process::id(),
                    start_ns,
                    config.launch.argv.clone(),
                    tasks.root.clone(),
                );
                let mut files = FileTracker::default();
                if let Some(cwd) = launch_cwd(config) {
                    files.set_cwd(pid, cwd);
                }
                let sink = Box::new(move |msg| tx.send(msg).is_ok());
                let run = RunCollector::new(tracker, files, sink);
                // The run is in from the start: the command was released already.
                let handle =
                    collector::spawn(ring, Some(collector_stats), vec![(STANDALONE_RUN, run)])
                        .context("starting the collector thread")?;
                collector = Some(handle);
                live_counters = Some(Box::new(sampler_stats));
            }
            Some(Tracer::Node(link)) => {
                link.start(tx)
                    .context("starting the node tracer's reader")?;
                live_counters = Some(link.live_counters());
            }
            None => proc_tree = Some(ProcTree::new(pid, std::process::id(), tasks.root.clone())),
        }
        Ok(Self {
            pid,
            start_ns,
            tracer: kernel.tracer,
            collector,
            rx,
            proc_tree,
            feed_open: true,
            live,
            out,
            sampler: Sampler::new(start_ns, live_counters),
            interval: AdaptiveInterval::new(config.interval_ms, config.max_interval_ms),
            summary: Summary::started_at(start_ns),
            root_status: None,
            no_children: false,
            kill_stage: KillStage::None,
            grace: config.kill_grace,
            paused: false,
            cgroup: kernel.cgroup,
            tasks: tasks.resolver(),
            adopted: config.adopt.is_some(),
            stop_following: false,
            root_vanished_at: None,
            root_exit_unseen: false,
            root_marks: tasks.root.clone(),
            stderr_file: match &config.launch.stderr {
                Some(super::launch::Redirect::Path(p)) => Some(p.clone()),
                _ => None,
            },
        })
    }

    pub(super) async fn main_loop(
        &mut self,
        config: &RunConfig,
        mut control: Option<mpsc::UnboundedReceiver<Control>>,
        signals: Signals,
    ) -> Result<()> {
        let Signals {
            mut sigchld,
            mut sigint,
            mut sigterm,
        } = signals;
        let deadline = config.timeout.map(|t| Instant::now() + t);
        let mut next_sample =
            tokio::time::Instant::now() + Duration::from_millis(self.interval.next_ms());
        loop {
            // Also catches children that exited before the SIGCHLD handler existed.
            self.reap();
            if self.stop_following || self.is_done() {
                return Ok(());
            }
            let timeout_check = self.next_timeout_check(deadline);
            tokio::select! {
                msg = self.rx.recv(), if self.feed_open => match msg {
                    Some(msg) => self.on_collector(msg)?,
                    // Every sender is gone (the node tracer's reader ended).
                    None => self.feed_open = false,
                },
                _ = sigchld.recv() => {}
                _ = sigint.recv() => self.forward(Signal::SIGINT),
                _ = sigterm.recv() => self.forward(Signal::SIGTERM),
                request = next_control(&mut control) => match request {
                    Some(request) => self.on_control(request),
                    // The driver is gone: nobody will collect this run, so end it.
                    None => {
                        control = None;
                        self.on_control(Control::Stop { grace: None });
                    }
                },
                _ = tokio::time::sleep_until(next_sample) => {
                    // A process forked while the tree was being stopped escaped the
                    // stop: catch it at every sample.
                    if self.paused {
                        self.signal_tree(Signal::SIGSTOP);
                    }
                    self.sample()?;
                    next_sample = tokio::time::Instant::now() + Duration::from_millis(self.interval.next_ms());
                }
                _ = tokio::time::sleep_until(timeout_check.into()),
                    if deadline.is_some() || self.kill_stage != KillStage::None => self.check_timeout(deadline),
            }
        }
    }

    fn on_control(&mut self, request: Control) {
        match request {
            Control::Stop { grace } => {
                if self.kill_stage != KillStage::None {
                    return; // already stopping
                }
                self.summary.cancelled = Some(true);
                if let Some(grace) = grace {
                    self.grace = grace;
                }
                self.terminate_tree(Instant::now());
            }
            // The tree is being stopped: stopping it as well would waste the grace.
            Control::Pause | Control::Resume if self.kill_stage != KillStage::None => {}
            Control::Pause => {
                self.paused = true;
                self.signal_tree(Signal::SIGSTOP);
            }
            Control::Resume => {
                self.paused = false;
                self.signal_tree(Signal::SIGCONT);
            }
        }
    }

    /// SIGTERM to the tree (continued, so stopped processes see it), SIGKILL after the grace.
    fn terminate_tree(&mut self, now: Instant) {
        self.paused = false;
        self.signal_tree(Signal::SIGTERM);
        self.signal_tree(Signal::SIGCONT);
        self.kill_stage = KillStage::Terminated {
            kill_at: now + self.grace,
        };
    }

    fn on_collector(&mut self, msg: CollectorMsg) -> Result<()> {
        if let Some(why) = &msg.failure {
            warn(&format!(
                "the node tracer went away ({why}): processes that end from now on are \
                 sampled from /proc"
            ));
            self.summary.tracer_error.get_or_insert_with(|| {
                format!(
                    "the node tracer went away during the run ({why}); processes that \
                     ended after that are sampled from /proc"
                )
            });
            // What is still running is followed the way a run without eBPF does it,
            // starting with a reading now.
            self.tracer = None;
            if self.proc_tree.is_none() {
                self.proc_tree = Some(ProcTree::new(
                    self.pid,
                    std::process::id(),
                    self.root_marks.clone(),
                ));
                self.sample()?;
            }
        }
        // Processes alive at once, counted from the kernel's own fork and exit records.
        let from_kernel = !msg.started.is_empty() || !msg.finished.is_empty();
        self.live.extend(msg.started);
        if from_kernel {
            let alive = self.live.len() as u64;
            let peak = self.summary.pids_peak.get_or_insert(0);
            *peak = (*peak).max(alive);
        }
        for info in &msg.finished {
            self.live.remove(&info.pid);
            if self.adopted && info.pid == self.pid {
                // Not our child: its exit status comes from the kernel's record.
                self.root_status = Some(info.exit_status_raw.unwrap_or(0));
            }
            if let Some(rss_kb) = info.oom_rss_kb {
                *self.summary.oom_kills.get_or_insert(0) += 1;
                self.summary.oom_victims.push(OomVictim {
                    pid: info.pid,
                    argv: info.argv.clone(),
                    rss_kb,
                });
            }
            let mut record = info.to_record();
            record.task = self.tasks.resolve(&info.marks);
            self.write_process(&record)?;
        }
        for e in &msg.events {
            self.summary.event_count += 1;
            self.out
                .write_line_unflushed(e)
                .context("writing an event record")?;
        }
        for f in &msg.files {
            self.summary.file_count += 1;
            self.out
                .write_line_unflushed(f)
                .context("writing a file record")?;
        }
        self.out.flush().context("writing process records")
    }

    fn write_process(&mut self, p: &Process) -> Result<()> {
        let s = &mut self.summary;
        s.process_count += 1;
        s.cpu_user_ns += p.cpu_user_ns.unwrap_or(0);
        s.cpu_sys_ns += p.cpu_sys_ns.unwrap_or(0);
        s.max_process_peak_rss_kb = s.max_process_peak_rss_kb.max(p.peak_rss_kb.unwrap_or(0));
        if p.source.as_deref() == Some("missing") {
            s.incomplete_processes += 1;
        }
        self.out
            .write_unflushed(p)
            .context("writing a process record")
    }

    fn sample(&mut self) -> Result<()> {
        let pids: Vec<u32> = match &self.proc_tree {
            Some(tree) => tree.discover(),
            None => self.live.iter().copied().collect(),
        };
        let now = clock::boottime_ns();
        let (sample, readings) = self.sampler.sample(&pids, now);
        self.summary.samples += 1;
        self.summary.peak_tree_rss_kb = self
            .summary
            .peak_tree_rss_kb
            .max(sample.rss_kb.unwrap_or(0));
        self.out.write(&sample).context("writing a sample")?;
        if let Some(tree) = &mut self.proc_tree {
            for (mut p, marks) in tree.update(&readings, now) {
                p.task = self.tasks.resolve(&marks);
                self.write_process(&p)?;
            }
            self.out.flush().context("writing process records")?;
        }
        Ok(())
    }

    /// Reaps every exited child (the command and adopted orphans) without blocking.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: plain wait4 on any child with out-pointers to locals.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, std::ptr::null_mut()) };
            if pid > 0 {
                if pid as u32 == self.pid {
                    self.root_status = Some(status as u32);
                }
                continue;
            }
            self.no_children = pid < 0 && nix::errno::Errno::last() == nix::errno::Errno::ECHILD;
            return;
        }
    }

    /// Done when the command is reaped and no descendant is left: no child of ours
    /// (orphans are adopted by us) and, with eBPF, nothing in the kernel's tracked set.
    fn is_done(&mut self) -> bool {
        if self.adopted && self.root_status.is_none() && !self.root_exit_unseen {
            if kill(Pid::from_raw(self.pid as i32), None) != Err(nix::errno::Errno::ESRCH) {
                return false;
            }
            // Gone (its parent reaped it): its exit record is on the way, unless
            // events were lost. Wait for it a while, then go on without it, once.
            let since = *self.root_vanished_at.get_or_insert_with(Instant::now);
            if since.elapsed() < ADOPTED_EXIT_RECORD_WAIT {
                return false;
            }
            self.root_exit_unseen = true;
            self.summary.ebpf_track_errors += 1;
        } else if !self.root_exit_unseen && (self.root_status.is_none() || !self.no_children) {
            return false;
        }
        if self.tracer.is_none() {
            return true;
        }
        // A tracked pid that no longer exists means its exit was missed (events
        // lost): forget it rather than wait for it forever. It is counted.
        let mut alive = 0;
        for pid in self.tracked_pids() {
            if kill(Pid::from_raw(pid as i32), None) == Err(nix::errno::Errno::ESRCH) {
                self.summary.ebpf_track_errors += 1;
                match &mut self.tracer {
                    Some(Tracer::Own(t)) => t.untrack(pid),
                    Some(Tracer::Node(link)) => link.untrack(pid),
                    None => {}
                }
            } else {
                alive += 1;
            }
        }
        alive == 0
    }

    /// What the run's cgroup counted: the memory peak and limit, and whose memory
    /// ran out when processes were OOM-killed.
    fn add_cgroup_usage(&mut self, u: &Usage) {
        let s = &mut self.summary;
        s.memory_peak_bytes = u.memory_peak_bytes;
        s.memory_limit_bytes = u.memory_limit_bytes;
        s.memory_peak_percent = match (u.memory_peak_bytes, u.memory_limit_bytes) {
            (Some(peak), Some(limit)) if limit > 0 => {
                Some((peak as f64 * 10_000.0 / limit as f64).round() / 100.0)
            }
            _ => None,
        };
        s.cgroup_cpu_ns = u.cpu_ns;
        s.cgroup_blk_read_bytes = u.blk_read_bytes;
        s.cgroup_blk_write_bytes = u.blk_write_bytes;
        if s.oom_kills.unwrap_or(0) > 0 {
            // The victims' cgroup counts kills of any cause; whether its own limit
            // was reached tells the cause.
            s.oom_scope = Some(if u.limit_reached == Some(true) {
                "run_limit".into()
            } else {
                "machine".into()
            });
        }
    }

    /// The run's processes in the kernel's tracked set.
    fn tracked_pids(&self) -> Vec<u32> {
        match &self.tracer {
            Some(Tracer::Own(t)) => t.tracked_pids(STANDALONE_RUN),
            Some(Tracer::Node(link)) => link.tracked_pids(),
            None => Vec::new(),
        }
    }

    /// Every process of the tree: the kernel's tracked set when there is one (it also
    /// holds processes whose fork event is still in flight), plus what we know here.
    fn tree_pids(&self) -> Vec<u32> {
        let mut pids: HashSet<u32> = self.live.clone();
        pids.extend(self.tracked_pids());
        if let Some(tree) = &self.proc_tree {
            pids.extend(tree.discover());
        }
        pids.into_iter().collect()
    }

    pub(super) fn signal_tree(&self, sig: Signal) {
        if self.adopted {
            // Not ours to stop: Slurm owns the job.
            return;
        }
        for pid in self.tree_pids() {
            // ESRCH: already gone.
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGINT/SIGTERM to the agent go to the command; once it is gone, to what is left.
    fn forward(&mut self, sig: Signal) {
        if self.adopted {
            // The recorder is asked to stop (its service stops): end the trace here,
            // never touching the job.
            self.stop_following = true;
            return;
        }
        if self.root_status.is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), sig);
        } else {
            self.signal_tree(sig);
        }
    }

    /// When the timeout escalation next needs attention (only called with a deadline).
    fn next_timeout_check(&self, deadline: Option<Instant>) -> Instant {
        let now = Instant::now();
        match self.kill_stage {
            KillStage::None => deadline.unwrap_or(now),
            KillStage::Terminated { kill_at } => kill_at,
            // Re-kill what may have forked in between, until the tree is gone.
            KillStage::Killed => now + Duration::from_millis(100),
        }
    }

    fn check_timeout(&mut self, deadline: Option<Instant>) {
        let now = Instant::now();
        match self.kill_stage {
            KillStage::None => {
                if deadline.is_some_and(|d| now >= d) {
                    say(format_args!(
                        "timeout reached, sending SIGTERM to the process tree"
                    ));
                    self.summary.timed_out = true;
                    self.terminate_tree(now);
                }
            }
            KillStage::Terminated { kill_at } if now >= kill_at => {
                self.signal_tree(Signal::SIGKILL);
                self.kill_stage = KillStage::Killed;
            }
            // Keep killing: a process may have forked between two rounds.
            KillStage::Killed => self.signal_tree(Signal::SIGKILL),
            KillStage::Terminated { .. } => {}
        }
    }

    pub(super) fn finish(mut self, start_error: Option<(String, i32)>) -> Result<RunOutcome> {
        let end_ns = clock::boottime_ns();
        let mut own = None;
        let finished = match self.tracer.take() {
            Some(Tracer::Own(tracer)) => {
                let mut f = Finished::default();
                if let Some(collector) = self.collector.take() {
                    f.report = collector.remove(STANDALONE_RUN);
                    collector.stop();
                }
                f.run = tracer
                    .run_counters(STANDALONE_RUN)
                    .context("reading kernel counters")?;
                f.node = tracer.counters().context("reading kernel counters")?;
                own = Some(*tracer);
                Some(f)
            }
            Some(Tracer::Node(link)) => match link.finish() {
                Ok(f) => Some(f),
                Err(e) => {
                    let why = format!(
                        "the node tracer went away before the run ended ({e}); the last \
                         records and the lost-event count are missing"
                    );
                    warn(&why);
                    self.summary.tracer_error.get_or_insert(why);
                    None
                }
            },
            None => None,
        };
        while let Ok(msg) = self.rx.try_recv() {
            self.on_collector(msg)?;
        }
        let usage = match std::mem::replace(&mut self.cgroup, RunCg::None) {
            RunCg::Own(cg) => {
                let usage = cg.usage();
                cg.remove();
                Some(usage)
            }
            RunCg::Node { .. } => finished.as_ref().and_then(|f| f.cgroup),
            RunCg::None => None,
        };
        if let Some(u) = usage {
            self.add_cgroup_usage(&u);
        }
        if let Some(f) = finished {
            let s = &mut self.summary;
            s.lost_events = f
                .run
                .emitted
                .saturating_sub(f.report.events_received)
                .max(f.run.drops)
                + f.report.malformed_events;
            s.ebpf_read_errors = f.node.read_errors;
            s.ebpf_track_errors += f.node.track_insert_errors;
            s.threads_created = f.node.threads_created;
            s.ebpf_stats_errors = f.node.stats_insert_errors;
        }
        if let Some(mut tree) = self.proc_tree.take() {
            for (mut p, marks) in tree.flush(self.root_status) {
                p.task = self.tasks.resolve(&marks);
                self.write_process(&p)?;
            }
            self.out.flush().context("writing process records")?;
        }
        let raw = self.root_status.unwrap_or(0);
        let (mut exit_code, signal, _) = crate::process::decode_wait_status(raw);
        if self.adopted && self.root_status.is_none() {
            // An adopted process whose exit record never came: not known.
            exit_code = None;
        }
        let mut exit_status = match (exit_code, signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => 1,
        };
        let s = &mut self.summary;
        s.exit_code = exit_code;
        s.signal = signal;
        s.end_boot_ns = end_ns;
        s.wall_ns = end_ns.saturating_sub(self.start_ns);
        if let Some((msg, status)) = start_error {
            s.error = Some(msg);
            exit_status = status;
        }
        let failed = exit_status != 0 || s.timed_out || s.cancelled == Some(true);
        if let (true, Some(path)) = (failed, &self.stderr_file) {
            if let Some(e) = crate::failure::tail_of_file(path, true)
                .ok()
                .and_then(|t| t.excerpt())
            {
                s.failure_kind = Some(e.kind.as_str().into());
                s.failure_excerpt = Some(e.text);
            }
        }
        if s.lost_events > 0 {
            warn(&format!(
                "{} kernel events were lost (see --ringbuf-mib)",
                s.lost_events
            ));
        }
        record_self_usage(s);
        let summary = self.summary.clone();
        self.out.write(&summary).context("writing the summary")?;
        Ok(RunOutcome {
            exit_status,
            summary,
            kernel: own,
        })
    }
}

/// The agent's own cost, so every trace says what tracing it took.
pub(super) fn record_self_usage(s: &mut Summary) {
    if let Ok(ru) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let ns = |tv: nix::sys::time::TimeVal| {
            (tv.tv_sec() as u64).saturating_mul(1_000_000_000) + tv.tv_usec() as u64 * 1000
        };
        s.agent_cpu_user_ns = ns(ru.user_time());
        s.agent_cpu_sys_ns = ns(ru.system_time());
        s.agent_peak_rss_kb = ru.max_rss() as u64;
    }
}
