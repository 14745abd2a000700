//! The process table: kernel events become processes and files. `collector` reads
//! the ring buffer into `tracker` (processes) and `files` (open files); `sampler`
//! reads the live tree at every interval; `proc_tree` and `procfs` are the /proc
//! fallback when eBPF is unavailable. Produces the records of `crate::trace`.

pub mod collector;
pub mod files;
pub mod proc_tree;
pub mod procfs;
pub mod sampler;
pub mod tracker;
