//! One monitored run, from start to summary: the command is forked and held
//! (`launch`), the kernel programs attached, the command released, and the run loop
//! merges kernel records and samples into the trace until the command and every
//! descendant are gone (`run`, `run_loop`; `attach` sets up the kernel side and
//! the cgroup, `config` is what a run is asked). `control` is what a driver (the service) may ask of a
//! run while it goes; `clock` the clocks every timestamp uses.

mod attach;
pub mod clock;
mod config;
pub mod control;
pub mod launch;
pub mod run;
mod run_loop;

pub use crate::cgroup::{check_cpus, parse_size, Limits, MAX_PIDS_LIMIT};
pub use config::{Adoption, EbpfMode, RunConfig, RunOutcome};
pub use control::Control;
pub use run::{run, run_controlled};

/// A message for whoever reads the agent's stderr. Never fails: a job's agent
/// whose service died (its stderr a broken pipe) must still stop and finish its run.
fn say(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "denet-agent: {msg}");
}

fn warn(msg: &str) {
    say(format_args!("warning: {msg}"));
}
