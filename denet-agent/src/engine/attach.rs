//! Who traces a run in the kernel and where its cgroup is: the node daemon when one
//! listens, else programs of the run's own; the held command tracked and moved into
//! its cgroup before it is released; and the trace header that says what was set up.

use anyhow::{Context, Result};

use super::{
    clock,
    config::{EbpfMode, RunConfig},
    warn,
};
use crate::{
    cgroup::RunCgroup,
    kernel::{tracer::STANDALONE_RUN, KernelTracer, TracerOptions},
    node::{
        link::NodeLink,
        protocol::{TrackRequest, PROTOCOL_VERSION},
    },
    task::Marks,
    trace::{records::SCHEMA_VERSION, CgroupHeader, Header},
};

/// Who traces the run in the kernel.
pub(super) enum Tracer {
    /// Programs this run loaded itself.
    Own(Box<KernelTracer>),
    /// The node daemon's programs (this run is one of its runs).
    Node(NodeLink),
}

impl Tracer {
    /// The header's name for it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Tracer::Own(_) => "own",
            Tracer::Node(_) => "node",
        }
    }
}

/// The run's cgroup.
pub(super) enum RunCg {
    /// Made by this agent (it removes it at the end), or the one it was left in
    /// (read only; `RunCgroup::own` says which).
    Own(RunCgroup),
    /// Made by the node daemon (it reports the usage and removes it).
    Node {
        path: String,
    },
    None,
}

pub(super) struct Kernel {
    pub(super) tracer: Option<Tracer>,
    pub(super) unavailable: Option<String>,
    pub(super) cgroup: RunCg,
    pub(super) cgroup_unavailable: Option<String>,
    /// What the kernel side collects for this run (the node daemon may grant less).
    pub(super) files: bool,
    pub(super) syscalls: bool,
    pub(super) events: bool,
}

/// The node daemon when one listens (nothing to load), else programs of our own as
/// the mode asks, or why neither.
pub(super) fn open_kernel(config: &RunConfig, options: TracerOptions) -> Result<Kernel> {
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
pub(super) fn track_command(
    config: &RunConfig,
    kernel: &mut Kernel,
    pid: u32,
    fork_ns: u64,
    task_marks: &Marks,
) -> Result<()> {
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
                task_marks: task_marks.clone(),
                adopt_token: config.adopt.as_ref().map(|a| a.token.clone()),
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
pub(super) fn own_cgroup(config: &RunConfig, kernel: &mut Kernel, pid: u32) -> Result<()> {
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
            let why = if matches!(e, crate::cgroup::CgroupError::Io { .. }) && e.not_ours() {
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
            if e.not_ours() {
                if let Ok(cg) = RunCgroup::enclosing(std::process::id()) {
                    kernel.cgroup = RunCg::Own(cg);
                }
            }
        }
    }
    Ok(())
}

pub(super) fn launch_cwd(config: &RunConfig) -> Option<String> {
    config
        .launch
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .map(|p| p.to_string_lossy().into_owned())
}

pub(super) fn header(
    config: &RunConfig,
    kernel: &Kernel,
    pid: Option<u32>,
    hold_ns: Option<u64>,
) -> Header {
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
        kernel_hooks: match &kernel.tracer {
            Some(Tracer::Own(t)) => Some(t.hooks()),
            _ => None,
        },
        kernel_hooks_unavailable: match &kernel.tracer {
            Some(Tracer::Own(t)) => Some(t.unavailable()).filter(|m| !m.is_empty()),
            _ => None,
        },
        syscalls_counted: Some(kernel.tracer.is_some() && kernel.syscalls),
        files: Some(kernel.tracer.is_some() && kernel.files),
        events: Some(kernel.tracer.is_some() && kernel.events),
        interval_ms: Some(config.interval_ms),
        max_interval_ms: Some(config.max_interval_ms),
        argv_max_bytes: Some(denet_common::ARGV_MAX as u64),
        timeout_s: config.timeout.map(|t| t.as_secs_f64()),
        cgroup: match &kernel.cgroup {
            RunCg::Own(cg) => Some((cg.memory_path(), cg.own, cg.limits, Some(cg.version()))),
            RunCg::Node { path } => Some((path.clone(), true, config.limits, None)),
            RunCg::None => None,
        }
        .map(|(path, own, limits, version)| CgroupHeader {
            path,
            own,
            version,
            memory_limit_bytes: limits.memory_bytes,
            cpus: limits.cpus,
            max_pids: limits.max_pids,
        }),
        cgroup_unavailable_reason: kernel.cgroup_unavailable.clone(),
    }
}
