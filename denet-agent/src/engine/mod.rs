//! One monitored run, from start to summary: the command is forked and held
//! (`launch`), the kernel programs attached, the command released, and the run loop
//! merges kernel records and samples into the trace until the command and every
//! descendant are gone (`run`). `control` is what a driver (the service) may ask of a
//! run while it goes; `clock` the clocks every timestamp uses.

pub mod clock;
pub mod control;
pub mod launch;
pub mod run;

pub use crate::cgroup::{check_cpus, parse_size, Limits, MAX_PIDS_LIMIT};
pub use control::Control;
pub use run::{run, run_controlled, EbpfMode, RunConfig, RunOutcome};
