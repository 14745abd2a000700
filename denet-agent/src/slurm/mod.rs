//! The two Slurm commands of the agent (docs/workflows.md): `slurm task-prolog`,
//! what a node's slurm.conf runs as its TaskProlog, and `slurm record`, the
//! recorder the node daemon starts for each batch task it was asked to trace (the
//! daemon's side, the checks, is `node::slurm`).

pub mod prolog;
pub mod recorder;
