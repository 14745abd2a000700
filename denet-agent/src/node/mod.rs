//! The node tracer: one set of kernel programs for the whole machine, loaded by the
//! node daemon (`denet-agent serve` as root), that tracks every run on the node, each
//! run's processes under their own run id. A `run` by any user asks it over a Unix
//! socket to track the command it holds before exec, receives its run's records and
//! writes its trace itself, as that user.
//!
//! `protocol` is the one definition of the messages; `daemon` is the side that owns
//! the programs; `link` is the side a `run` uses; `slurm` the checks and the
//! recorder of the Slurm batch tasks the daemon traces (`serve --slurm`).

pub(crate) mod daemon;
pub(crate) mod link;
pub(crate) mod protocol;
pub mod slurm;

/// Where the node daemon's tracer listens (every local user may connect).
pub const TRACER_SOCKET: &str = "/run/denet-agent/tracer.sock";
