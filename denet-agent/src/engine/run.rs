//! One monitored run: start the command held, track it in the kernel, release it,
//! merge kernel records with /proc samples into the JSONL stream, and end with a
//! summary once the command and every descendant are gone.

use std::{
    collections::HashSet,
    path::PathBuf,
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
    clock,
    control::Control,
    launch::{HeldChild, LaunchError, LaunchSpec},
};
use crate::{
    cgroup::{Limits, RunCgroup, Usage},
    kernel::{tracer::STANDALONE_RUN, KernelTracer, TracerOptions},
    node::{
        link::{Finished, NodeLink},
        protocol::{TrackRequest, PROTOCOL_VERSION},
    },
    process::{
        collector::{self, CollectorMsg, RunCollector},
        files::FileTracker,
        proc_tree::ProcTree,
        procfs,
        sampler::{AdaptiveInterval, Sampler},
        tracker::Tracker,
    },
    trace::{
        records::SCHEMA_VERSION, writer::JsonlWriter, CgroupHeader, Header, OomVictim, Process,
        Summary,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbpfMode {
    /// Use eBPF when it loads, else fall back to /proc with a warning.
    Auto,
    /// Fail when eBPF cannot be used.
    Required,
    /// /proc sampling only.
    Off,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub launch: LaunchSpec,
    pub out: PathBuf,
    pub interval_ms: u64,
    pub max_interval_ms: u64,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    pub ebpf: EbpfMode,
    pub ringbuf_bytes: u32,
    /// Per-file accounting (`file` records): attaches the syscall hooks.
    pub files: bool,
    /// Per-process syscall counts: attaches the syscall hooks.
    pub syscalls: bool,
    /// Raw scheduler and block I/O `event` records.
    pub events: bool,
    /// The node tracer's socket: a run asks the node daemon there before loading
    /// programs of its own. `None`: always load its own (`--standalone`).
    pub node_socket: Option<PathBuf>,
    /// Limits of the run's cgroup.
    pub limits: Limits,
}

/// How the run ended, for the caller's exit status.
pub struct RunOutcome {
    /// The command's exit code, 128+N when killed by signal N, or 126/127 when it
    /// could not be started.
    pub exit_status: i32,
    pub summary: Summary,
    /// The kernel programs, still attached: dropping the outcome detaches them, so a
    /// caller reports first and detaching never delays what it prints.
    pub kernel: Option<KernelTracer>,
}

/// Who traces the run in the kernel.
enum Tracer {
    /// Programs this run loaded itself.
    Own(Box<KernelTracer>),
    /// The node daemon's programs (this run is one of its runs).
    Node(NodeLink),
}

impl Tracer {
    /// The header's name for it.
    fn name(&self) -> &'static str {
        match self {
            Tracer::Own(_) => "own",
            Tracer::Node(_) => "node",
        }
    }
}

/// The run's cgroup.
enum RunCg {
    /// Made by this agent (it removes it at the end), or the one it was left in
    /// (read only; `RunCgroup::own` says which).
    Own(RunCgroup),
    /// Made by the node daemon (it reports the usage and removes it).
    Node {
        path: String,
    },
    None,
}

struct Kernel {
    tracer: Option<Tracer>,
    unavailable: Option<String>,
    cgroup: RunCg,
    cgroup_unavailable: Option<String>,
    /// What the kernel side collects for this run (the node daemon may grant less).
    files: bool,
    syscalls: bool,
    events: bool,
}

/// A message for whoever reads the agent's stderr. Never fails: a job's agent
/// whose service died (its stderr a broken pipe) must still stop and finish its run.
fn say(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "denet-agent: {msg}");
}

fn warn(msg: &str) {
    say(format_args!("warning: {msg}"));
}

/// The node daemon when one listens (nothing to load), else programs of our own as
/// the mode asks, or why neither.
fn open_kernel(config: &RunConfig, options: TracerOptions) -> Result<Kernel> {
    let mode = config.ebpf;
    let kernel = |tracer, unavailable| Kernel {
        tracer,
        unavailable,
        cgroup: RunCg::None,
        cgroup_unavailable: None,
        files: options.files,
        syscalls: options.syscalls,
        events: options.events,
    };
    if mode == EbpfMode::Off {
        return Ok(kernel(None, Some("disabled with --no-ebpf".into())));
    }
    if let Some(socket) = &config.node_socket {
        if let Ok(link) = NodeLink::connect(socket) {
            return Ok(kernel(Some(Tracer::Node(link)), None));
        }
    }
    match KernelTracer::load(options) {
        Ok(tracer) => Ok(kernel(Some(Tracer::Own(Box::new(tracer))), None)),
        Err(e) => {
            let reason = if nix::unistd::geteuid().is_root() {
                e.to_string()
            } else {
                format!(
                    "{e} (without root, eBPF needs the node daemon, `denet-agent serve` \
                     as root, or file capabilities cap_bpf,cap_perfmon on the binary)"
                )
            };
            if mode == EbpfMode::Required {
                anyhow::bail!("eBPF is required (--require-ebpf) but unavailable: {reason}");
            }
            warn(&format!(
                "eBPF unavailable ({reason}); falling back to /proc sampling: processes \
                 shorter than the sampling interval will be missed and numbers are sampled, \
                 not exact"
            ));
            Ok(kernel(None, Some(reason)))
        }
    }
}

/// Puts the held command into the kernel's tracked set: our own programs' run, or a
/// run of the node daemon. A daemon that refuses leaves the run to /proc sampling
/// (or fails it, with --require-ebpf).
fn track_command(config: &RunConfig, kernel: &mut Kernel, pid: u32, fork_ns: u64) -> Result<()> {
    match kernel.tracer.as_mut() {
        None => Ok(()),
        Some(Tracer::Own(tracer)) => {
            let flags = TracerOptions {
                ringbuf_bytes: 0,
                files: kernel.files,
                syscalls: kernel.syscalls,
                events: kernel.events,
                shared: false,
            }
            .run_flags();
            tracer
                .open_run(STANDALONE_RUN, flags)
                .and_then(|()| tracer.track(pid, STANDALONE_RUN, kernel.syscalls))
                .context("adding the command to the tracked set")
        }
        Some(Tracer::Node(link)) => {
            let request = TrackRequest {
                version: PROTOCOL_VERSION,
                pid,
                start_boot_ns: fork_ns,
                argv: config.launch.argv.clone(),
                cwd: launch_cwd(config),
                files: kernel.files,
                syscalls: kernel.syscalls,
                events: kernel.events,
                limits: config.limits,
            };
            match link.track(request) {
                Ok(granted) => {
                    kernel.files = granted.files;
                    kernel.syscalls = granted.syscalls;
                    kernel.events = granted.events;
                    match granted.cgroup {
                        Ok(path) => kernel.cgroup = RunCg::Node { path },
                        Err(why) => kernel.cgroup_unavailable = Some(why),
                    }
                    Ok(())
                }
                Err(e) => {
                    if config.ebpf == EbpfMode::Required {
                        return Err(e).context("eBPF is required (--require-ebpf)");
                    }
                    warn(&format!(
                        "{e}; falling back to /proc sampling: processes shorter than the \
                         sampling interval will be missed and numbers are sampled, not exact"
                    ));
                    kernel.tracer = None;
                    kernel.unavailable = Some(e.to_string());
                    Ok(())
                }
            }
        }
    }
}

/// A cgroup of the run's own, made by this agent (the node daemon makes its runs'):
/// the held command is moved into it before it execs. Without the rights, the run
/// goes on without one, unless it asked for limits.
fn own_cgroup(config: &RunConfig, kernel: &mut Kernel, pid: u32) -> Result<()> {
    if matches!(kernel.tracer, Some(Tracer::Node(_))) {
        return Ok(());
    }
    let name = format!("denet-{}-{pid}", std::process::id());
    let made = RunCgroup::create(&name, std::process::id(), config.limits).and_then(|cg| match cg
        .enter(pid)
    {
        Ok(()) => Ok(cg),
        Err(e) => {
            cg.remove();
            Err(e)
        }
    });
    match made {
        Ok(cg) => kernel.cgroup = RunCg::Own(cg),
        Err(e) => {
            let why = if e.is_permission() {
                format!("{e} (a cgroup needs root, or the node daemon, which makes its runs')")
            } else {
                e.to_string()
            };
            if config.limits.any() {
                anyhow::bail!(
                    "the limits (--memory-limit, --cpus, --max-pids) need a cgroup: {why}"
                );
            }
            kernel.cgroup_unavailable = Some(why);
            // Not ours to make: the cgroup the run is in (a manager's) still counts
            // it, alongside whatever else runs there; read it, change nothing.
            if e.is_permission() {
                if let Ok(cg) = RunCgroup::enclosing(std::process::id()) {
                    kernel.cgroup = RunCg::Own(cg);
                }
            }
        }
    }
    Ok(())
}

fn launch_cwd(config: &RunConfig) -> Option<String> {
    config
        .launch
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .map(|p| p.to_string_lossy().into_owned())
}

fn header(config: &RunConfig, kernel: &Kernel, pid: Option<u32>, hold_ns: Option<u64>) -> Header {
    let uname = nix::sys::utsname::uname().ok();
    Header {
        schema_version: Some(SCHEMA_VERSION.into()),
        agent_version: Some(env!("CARGO_PKG_VERSION").into()),
        hostname: Some(
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        kernel: Some(
            uname
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        argv: config.launch.argv.clone(),
        cwd: Some(launch_cwd(config).unwrap_or_default()),
        agent_pid: Some(std::process::id()),
        pid,
        clock: Some(clock::anchor()),
        hold_ns,
        ebpf: Some(kernel.tracer.is_some()),
        tracer: kernel.tracer.as_ref().map(|t| t.name().into()),
        ebpf_unavailable_reason: kernel.unavailable.clone(),
        syscalls_counted: Some(kernel.tracer.is_some() && kernel.syscalls),
        files: Some(kernel.tracer.is_some() && kernel.files),
        events: Some(kernel.tracer.is_some() && kernel.events),
        interval_ms: Some(config.interval_ms),
        max_interval_ms: Some(config.max_interval_ms),
        argv_max_bytes: Some(denet_common::ARGV_MAX as u64),
        timeout_s: config.timeout.map(|t| t.as_secs_f64()),
        cgroup: match &kernel.cgroup {
            RunCg::Own(cg) => Some((cg.memory_path(), cg.own, cg.limits)),
            RunCg::Node { path } => Some((path.clone(), true, config.limits)),
            RunCg::None => None,
        }
        .map(|(path, own, limits)| CgroupHeader {
            path,
            own,
            memory_limit_bytes: limits.memory_bytes,
            cpus: limits.cpus,
            max_pids: limits.max_pids,
        }),
        cgroup_unavailable_reason: kernel.cgroup_unavailable.clone(),
    }
}

/// Runs the command to completion. Errors are setup failures (output not writable,
/// eBPF required but missing); a command that fails to start is a normal outcome.
pub fn run(config: RunConfig) -> Result<RunOutcome> {
    run_controlled(config, None)
}

/// [`run`], also obeying `control` requests (stop, pause, resume the tree).
pub fn run_controlled(
    config: RunConfig,
    control: Option<mpsc::UnboundedReceiver<Control>>,
) -> Result<RunOutcome> {
    // Orphaned descendants are re-parented to us, so we can follow and reap them.
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    // The signals are ours before the command exists: a SIGTERM that comes as soon as
    // the header is out is forwarded, never the end of the agent.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let signals = {
        let _entered = runtime.enter();
        Signals::new()?
    };
    let mut out = JsonlWriter::create(&config.out)
        .with_context(|| format!("cannot write trace to {}", config.out.display()))?;
    let options = TracerOptions {
        ringbuf_bytes: config.ringbuf_bytes,
        files: config.files,
        syscalls: config.syscalls,
        events: config.events,
        shared: false,
    };
    let mut kernel = open_kernel(&config, options)?;

    let fork_ns = clock::boottime_ns();
    let held = match HeldChild::spawn(&config.launch) {
        Ok(h) => h,
        Err(e) => return start_failed(&config, &kernel, &mut out, fork_ns, &e),
    };
    let pid = held.pid();
    // Must succeed before release, or the command would run untraced (or unlimited).
    if let Err(e) = track_command(&config, &mut kernel, pid, fork_ns)
        .and_then(|()| own_cgroup(&config, &mut kernel, pid))
    {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        return Err(e);
    }
    let released_ns = clock::boottime_ns();
    let exec_result = held.release();
    let hold_ns = released_ns.saturating_sub(fork_ns);
    out.write(&header(&config, &kernel, Some(pid), Some(hold_ns)))?;

    let mut start_error = None;
    if let Err(e) = &exec_result {
        say(format_args!("{e}"));
        start_error = Some((e.to_string(), e.exit_status()));
    }

    let driven = control.is_some();
    let mut state = RunState::new(&config, pid, fork_ns, kernel, out)?;
    if let Err(e) = runtime.block_on(state.main_loop(&config, control, signals)) {
        // A driven run (a `serve` job) must not outlive a failure of its agent: nobody
        // could see, stop or account for the tree any more.
        if driven {
            state.signal_tree(Signal::SIGKILL);
        }
        return Err(e);
    }
    state.finish(start_error)
}

/// The agent's own cost, so every trace says what tracing it took.
fn record_self_usage(s: &mut Summary) {
    if let Ok(ru) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let ns = |tv: nix::sys::time::TimeVal| {
            (tv.tv_sec() as u64).saturating_mul(1_000_000_000) + tv.tv_usec() as u64 * 1000
        };
        s.agent_cpu_user_ns = ns(ru.user_time());
        s.agent_cpu_sys_ns = ns(ru.system_time());
        s.agent_peak_rss_kb = ru.max_rss() as u64;
    }
}

/// The command could not be started at all: header and summary still get written.
fn start_failed(
    config: &RunConfig,
    kernel: &Kernel,
    out: &mut JsonlWriter,
    fork_ns: u64,
    e: &LaunchError,
) -> Result<RunOutcome> {
    say(format_args!("{e}"));
    out.write(&header(config, kernel, None, None))?;
    let now = clock::boottime_ns();
    let summary = Summary {
        exit_code: Some(e.exit_status()),
        end_boot_ns: now,
        wall_ns: now.saturating_sub(fork_ns),
        error: Some(e.to_string()),
        ..Summary::started_at(fork_ns)
    };
    let mut summary = summary;
    record_self_usage(&mut summary);
    out.write(&summary)?;
    Ok(RunOutcome {
        exit_status: e.exit_status(),
        summary,
        kernel: None,
    })
}

/// The signals the run loop handles, registered before the command starts.
struct Signals {
    sigchld: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs the runtime entered.
    fn new() -> Result<Self> {
        Ok(Signals {
            sigchld: signal(SignalKind::child()).context("SIGCHLD handler")?,
            sigint: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        })
    }
}

/// Escalation of a timeout: SIGTERM to the whole tree, SIGKILL after the grace period.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillStage {
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

struct RunState {
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
}

impl RunState {
    fn new(
        config: &RunConfig,
        pid: u32,
        start_ns: u64,
        mut kernel: Kernel,
        out: JsonlWriter,
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
            None => proc_tree = Some(ProcTree::new(pid, std::process::id())),
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
        })
    }

    async fn main_loop(
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
            if self.is_done() {
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
                self.proc_tree = Some(ProcTree::new(self.pid, std::process::id()));
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
            if let Some(rss_kb) = info.oom_rss_kb {
                *self.summary.oom_kills.get_or_insert(0) += 1;
                self.summary.oom_victims.push(OomVictim {
                    pid: info.pid,
                    argv: info.argv.clone(),
                    rss_kb,
                });
            }
            self.write_process(&info.to_record())?;
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
            for p in tree.update(&readings, now) {
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
        if self.root_status.is_none() || !self.no_children {
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
            s.oom_scope = Some(if u.oom_kills.unwrap_or(0) > 0 {
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

    fn signal_tree(&self, sig: Signal) {
        for pid in self.tree_pids() {
            // ESRCH: already gone.
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGINT/SIGTERM to the agent go to the command; once it is gone, to what is left.
    fn forward(&self, sig: Signal) {
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

    fn finish(mut self, start_error: Option<(String, i32)>) -> Result<RunOutcome> {
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
            for p in tree.flush(self.root_status) {
                self.write_process(&p)?;
            }
            self.out.flush().context("writing process records")?;
        }
        let raw = self.root_status.unwrap_or(0);
        let (exit_code, signal, _) = crate::process::decode_wait_status(raw);
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
