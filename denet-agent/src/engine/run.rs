//! One monitored run: start the command held, track it in the kernel, release it,
//! run the loop (`run_loop`) until the command and every descendant are gone.

use anyhow::{Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tokio::sync::mpsc;

use super::{
    attach::{header, open_kernel, own_cgroup, track_command, Kernel},
    clock,
    config::{RunConfig, RunOutcome},
    control::Control,
    launch::{self, HeldChild, LaunchError},
    run_loop::{record_self_usage, RunState, Signals},
    say,
};
use crate::{
    kernel::TracerOptions,
    task::RunTasks,
    trace::{writer::JsonlWriter, Summary},
};

/// Runs the command to completion. Errors are setup failures (output not writable,
/// eBPF required but missing); a command that fails to start is a normal outcome.
pub fn run(config: RunConfig) -> Result<RunOutcome> {
    run_controlled(config, None)
}

/// [`run`], also obeying `control` requests (stop, pause, resume the tree).
pub fn run_controlled(
    mut config: RunConfig,
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
    if let Some(adopt) = config.adopt.clone() {
        return follow_adopted(config, control, runtime, signals, kernel, out, adopt);
    }

    let mut tasks = RunTasks::new(
        &config.launch.argv,
        config.launch.env.as_deref(),
        config.launch.cwd.as_deref(),
    );
    config.launch.extra_env.extend(tasks.snakemake_job_list());
    let fork_ns = clock::boottime_ns();
    let held = match HeldChild::spawn(&config.launch) {
        Ok(h) => h,
        Err(e) => return start_failed(&config, &kernel, &mut out, fork_ns, &e),
    };
    let pid = held.pid();
    launch::shield_agent_from_oom_killer();
    // Must succeed before release, or the command would run untraced (or unlimited).
    if let Err(e) = track_command(&config, &mut kernel, pid, fork_ns, &tasks.root)
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
    let mut state = RunState::new(&config, pid, fork_ns, kernel, out, &tasks)?;
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

/// Follows a process the node daemon handed over (a Slurm task) until it and its
/// descendants are gone.
fn follow_adopted(
    config: RunConfig,
    control: Option<mpsc::UnboundedReceiver<Control>>,
    runtime: tokio::runtime::Runtime,
    signals: Signals,
    mut kernel: Kernel,
    mut out: JsonlWriter,
    adopt: super::config::Adoption,
) -> Result<RunOutcome> {
    if !matches!(kernel.tracer, Some(super::attach::Tracer::Node(_))) {
        anyhow::bail!("following a process that is not ours needs the node daemon");
    }
    let tasks = RunTasks::adopted(adopt.marks.clone());
    let start_ns = clock::boottime_ns();
    track_command(&config, &mut kernel, adopt.pid, start_ns, &tasks.root)?;
    if kernel.tracer.is_none() {
        anyhow::bail!(
            "the node daemon did not take process {}: {}",
            adopt.pid,
            kernel.unavailable.as_deref().unwrap_or("refused")
        );
    }
    out.write(&header(&config, &kernel, Some(adopt.pid), None))?;
    let mut state = RunState::new(&config, adopt.pid, start_ns, kernel, out, &tasks)?;
    runtime.block_on(state.main_loop(&config, control, signals))?;
    state.finish(None)
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
