//! What a run is asked to do (`RunConfig`) and what it hands back (`RunOutcome`).

use std::{path::PathBuf, time::Duration};

use super::launch::LaunchSpec;
use crate::{cgroup::Limits, kernel::KernelTracer, trace::Summary};

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
    /// Per-file accounting (`file` records): attaches the file trampolines where the
    /// kernel takes them, else the syscall hooks.
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
    /// Follow a process that is not ours instead of launching `launch` (the node
    /// daemon's Slurm recorder): it is tracked with the daemon's token, never
    /// signalled, and the run ends when it and its descendants are gone.
    pub adopt: Option<Adoption>,
}

/// A process the node daemon handed over to follow.
#[derive(Debug, Clone)]
pub struct Adoption {
    pub pid: u32,
    pub token: String,
    pub marks: crate::task::Marks,
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
